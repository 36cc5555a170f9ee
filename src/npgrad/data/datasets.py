"""Named datasets: where npgrad looks for them, and how it downloads them safely.

``load_dataset(name_or_dir)`` resolves, in this order (the first hit wins):

1. a directory given by the user (``load_dataset("path/to/dir")`` or
   ``data_dir=...``): any directory holding the four standard IDX file names
   (gzip or not) is a dataset, official or not;
2. ``digits``: the small dataset embedded in the package (no file access);
3. npgrad's cache, ``$NPGRAD_DATA/<name>`` or ``$XDG_CACHE_HOME/npgrad/<name>``
   (``~/.cache/npgrad/<name>``), verified by SHA-256;
4. copies other tools keep: Keras' ``~/.keras/datasets/mnist.npz`` (read
   without pickle) or ``~/.keras/datasets/fashion-mnist/``, and torchvision's
   ``MNIST/raw`` / ``FashionMNIST/raw`` under ``./data``, ``~/data`` or
   ``$TORCHVISION_DATA``;
5. Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``
   (Debian re-compresses the files, so their *decompressed* content is verified);
6. download from the mirrors (``$NPGRAD_MIRRORS`` or ``mirrors=...`` override
   the built-in list; a mirror may be a URL or a local directory) into the cache:
   to a temporary file, SHA-256 verified, then moved into place atomically.

When everything fails, one :class:`DatasetError` says what was tried and how
to supply the files.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import ChecksumError, DatasetError, DownloadError, IDXFormatError
from ..fileio import atomic_write
from .idx import parse_idx, read_bytes

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")  # fmt: skip


@dataclass(frozen=True)
class FileSpec:
    """One official file: the .gz name, its size and SHA-256, and the SHA-256 of its content."""

    name: str
    size: int
    sha256: str
    raw_sha256: str | None = None  # of the decompressed content (None: not known here)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: tuple[FileSpec, FileSpec, FileSpec, FileSpec]  # in the order of FILES
    mirrors: tuple[str, ...]
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))
    keras_npz: str | None = None
    keras_npz_sha256: str | None = None
    torchvision_dir: str | None = None
    system_dirs: tuple[str, ...] = ()


MNIST = DatasetSpec(
    name="mnist",
    files=(
        FileSpec("train-images-idx3-ubyte.gz", 9912422,
                 "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        FileSpec("train-labels-idx1-ubyte.gz", 28881,
                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                 "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        FileSpec("t10k-images-idx3-ubyte.gz", 1648877,
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                 "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        FileSpec("t10k-labels-idx1-ubyte.gz", 4542,
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                 "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TFDS
        "http://yann.lecun.com/exdb/mnist/",  # the original
    ),
    keras_npz="mnist.npz",
    keras_npz_sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    torchvision_dir="MNIST",
)  # fmt: skip

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    files=(
        FileSpec("train-images-idx3-ubyte.gz", 26421880,
                 "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                 "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        FileSpec("train-labels-idx1-ubyte.gz", 29515,
                 "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                 "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        FileSpec("t10k-images-idx3-ubyte.gz", 4422102,
                 "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                 "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        FileSpec("t10k-labels-idx1-ubyte.gz", 5148,
                 "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                 "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # torchvision, official
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras
    ),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"),
    torchvision_dir="FashionMNIST",
    system_dirs=("/usr/share/datasets/fashion-mnist",),
)  # fmt: skip

DATASETS: dict[str, DatasetSpec] = {MNIST.name: MNIST, FASHION_MNIST.name: FASHION_MNIST}
ALIASES = {"fashion": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist"}
NAMES = ("digits", *DATASETS)


@dataclass
class Dataset:
    """Train and test images (uint8, N x H x W) with integer labels, and where they came from."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    pixel_max: float = 255.0
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))
    notes: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, image={self.image_shape}, source={self.source!r})"
        )


# --------------------------------------------------------------------------- locations


def cache_root() -> Path:
    """npgrad's data cache: ``$NPGRAD_DATA``, else ``$XDG_CACHE_HOME/npgrad``, else ~/.cache/npgrad."""
    if os.environ.get("NPGRAD_DATA"):
        return Path(os.environ["NPGRAD_DATA"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "npgrad"


def _keras_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


def _torchvision_roots() -> list[Path]:
    roots = [Path("data"), Path.home() / "data"]
    if os.environ.get("TORCHVISION_DATA"):
        roots.insert(0, Path(os.environ["TORCHVISION_DATA"]).expanduser())
    return roots


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    # torchvision and some unpackers write "train-images.idx3-ubyte"
    dotted = directory / stem.replace("-idx", ".idx")
    return dotted if dotted.is_file() else None


def is_idx_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and all(_find_file(p, stem) for stem in FILES)


def _verify(path: Path, spec: FileSpec) -> None:
    """Check a local file against the official gzip SHA-256, or its content's SHA-256."""
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() == spec.sha256:
        return
    if spec.raw_sha256 is None:
        raise ChecksumError(
            f"{path}: SHA-256 differs from the official {spec.name} and its decompressed "
            "content cannot be verified here"
        )
    content = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    if hashlib.sha256(content).hexdigest() != spec.raw_sha256:
        raise ChecksumError(f"{path}: content differs from the official {spec.name}")


def _load_idx_dir(directory: Path, name: str, spec: DatasetSpec | None, source: str) -> Dataset:
    paths = []
    for stem in FILES:
        found = _find_file(directory, stem)
        if found is None:
            raise DatasetError(f"{directory}: missing {stem}.gz (or {stem})")
        paths.append(found)
    if spec is not None:
        for p, fs in zip(paths, spec.files):
            _verify(p, fs)
    arrays = [parse_idx(read_bytes(p), str(p), ndim=3 if "images" in p.name else 1) for p in paths]
    return _assemble(name, arrays, paths, source, spec)


def _assemble(
    name: str,
    arrays: list[np.ndarray],
    paths: Sequence[object],
    source: str,
    spec: DatasetSpec | None,
) -> Dataset:
    tri, trl, tei, tel = arrays
    for images, labels, pi, pl in ((tri, trl, paths[0], paths[1]), (tei, tel, paths[2], paths[3])):
        if len(images) != len(labels):
            raise IDXFormatError(
                f"{pi} holds {len(images)} images but {pl} holds {len(labels)} labels"
            )
    if tri.shape[1:] != tei.shape[1:]:
        raise IDXFormatError(f"train images are {tri.shape[1:]} but test images {tei.shape[1:]}")
    n_classes = int(max(trl.max(initial=0), tel.max(initial=0))) + 1
    classes = spec.classes if spec else tuple(str(i) for i in range(max(n_classes, 2)))
    return Dataset(name, tri, trl.astype(np.int64), tei, tel.astype(np.int64), source,
                   classes=classes)  # fmt: skip


def _load_keras_npz(path: Path, spec: DatasetSpec) -> Dataset:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if spec.keras_npz_sha256 and digest != spec.keras_npz_sha256:
        raise ChecksumError(f"{path}: SHA-256 differs from Keras' official {spec.keras_npz}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z["x_train"], z["y_train"], z["x_test"], z["y_test"]]
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a readable Keras dataset file ({exc})") from None
    names = [f"{path}[{k}]" for k in ("x_train", "y_train", "x_test", "y_test")]
    return _assemble(spec.name, arrays, names, f"keras: {path}", spec)


def digits() -> Dataset:
    """The UCI optical-recognition digits (8x8, 1,797 samples, CC BY 4.0), embedded.

    Fixed split: the first 1,437 samples (80%) train, the last 360 test.
    Pixels are counts from 0 to 16.
    """
    from importlib import resources

    raw = resources.files("npgrad.data").joinpath("digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.uint8)
    images, labels = table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    return Dataset("digits", images[:1437], labels[:1437], images[1437:], labels[1437:],
                   source="embedded in npgrad (UCI ML digits, CC BY 4.0)", pixel_max=16.0)  # fmt: skip


# --------------------------------------------------------------------------- download


def mirrors_for(spec: DatasetSpec, mirrors: Sequence[str] | None = None) -> list[str]:
    """The mirror list: the argument, else ``$NPGRAD_MIRRORS`` (space or comma separated), else built-in."""
    if mirrors is not None:
        return list(mirrors)
    env = os.environ.get("NPGRAD_MIRRORS", "").replace(",", " ").split()
    return env or list(spec.mirrors)


def _open_source(mirror: str, filename: str, timeout: float) -> tuple[IO[bytes], int | None]:
    if "://" not in mirror or mirror.startswith("file://"):
        local = Path(mirror.removeprefix("file://")).expanduser() / filename
        f = open(local, "rb")  # noqa: SIM115 - closed by the caller
        return f, local.stat().st_size
    url = mirror if mirror.endswith("/") else mirror + "/"
    req = urllib.request.Request(url + filename, headers={"User-Agent": "npgrad"})
    resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) only
    length = resp.headers.get("Content-Length")
    return resp, int(length) if length else None


def download_file(
    spec: FileSpec,
    dest_dir: Path,
    mirrors: Sequence[str],
    timeout: float = 30.0,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fetch one file into ``dest_dir``, trying ``mirrors`` in order.

    Each attempt streams to a temporary file in ``dest_dir`` while hashing; the
    file is moved into place only if its size and SHA-256 are the official ones.
    A failing or corrupt mirror is reported through ``log`` and the next is
    tried. Nothing partial is left behind, even on Ctrl-C.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    dest = dest_dir / spec.name
    dest_dir.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    for k, mirror in enumerate(mirrors):
        try:
            with atomic_write(dest) as out:  # moved into place only if verified
                digest = _copy_hashing(mirror, spec, out, timeout, progress)
                size = out.tell()
                if size != spec.size or digest != spec.sha256:
                    raise ChecksumError(
                        f"corrupt download ({size} bytes, SHA-256 {digest[:12]}..., "
                        f"expected {spec.size} bytes, {spec.sha256[:12]}...)"
                    )
            return dest
        except (
            OSError,
            urllib.error.URLError,
            http.client.HTTPException,
            ChecksumError,
            ValueError,
        ) as exc:
            reason = str(getattr(exc, "reason", None) or exc)
            failures.append((mirror, reason))
            more = "; trying the next mirror" if k + 1 < len(mirrors) else ""
            log(f"npgrad: {spec.name} from {mirror} failed: {reason}{more}")
    raise DownloadError(
        f"could not download {spec.name}: " + "; ".join(f"{m}: {r}" for m, r in failures),
        failures,
    )


def _copy_hashing(
    mirror: str, spec: FileSpec, out: IO[bytes], timeout: float, progress: bool | None
) -> str:
    src, total = _open_source(mirror, spec.name, timeout)
    h = hashlib.sha256()
    bar = _progress_bar(total or spec.size, spec.name, progress)
    try:
        while chunk := src.read(1 << 16):
            out.write(chunk)
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        src.close()
        if bar is not None:
            bar.close()
    return h.hexdigest()


def _progress_bar(total: int, desc: str, enabled: bool | None):  # noqa: ANN202
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False, file=sys.stderr)


# --------------------------------------------------------------------------- resolution


@dataclass
class Attempt:
    where: str
    result: str  # "found", or why not


def locate(
    name: str,
    data_dir: str | os.PathLike | None = None,
) -> tuple[Dataset | None, list[Attempt]]:
    """Look for ``name`` locally, in the documented order; no network."""
    attempts: list[Attempt] = []
    if Path(name).expanduser().is_dir() or os.sep in name:
        directory = Path(name).expanduser()
        if not directory.is_dir():
            raise DatasetError(f"{directory}: no such directory")
        return _load_idx_dir(directory, directory.name, None, str(directory)), [
            Attempt(str(directory), "found")
        ]
    key = ALIASES.get(name.lower(), name.lower())
    if key == "digits":
        return digits(), [Attempt("embedded", "found")]
    if key not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}: use one of {', '.join(NAMES)} or a directory "
            "holding the four IDX files"
        )
    spec = DATASETS[key]

    def try_dir(directory: Path, label: str, verify: bool) -> Dataset | None:
        if not directory.is_dir():
            attempts.append(Attempt(f"{label} {directory}", "no such directory"))
            return None
        if not is_idx_dir(directory):
            attempts.append(Attempt(f"{label} {directory}", "does not hold all four files"))
            return None
        try:
            ds = _load_idx_dir(directory, key, spec if verify else None, f"{label}: {directory}")
        except DatasetError as exc:
            attempts.append(Attempt(f"{label} {directory}", str(exc)))
            return None
        attempts.append(Attempt(f"{label} {directory}", "found"))
        return ds

    def try_npz(path: Path, label: str) -> Dataset | None:
        if not path.is_file():
            attempts.append(Attempt(f"{label} {path}", "no such file"))
            return None
        try:
            ds = _load_keras_npz(path, spec)
        except DatasetError as exc:
            attempts.append(Attempt(f"{label} {path}", str(exc)))
            return None
        attempts.append(Attempt(f"{label} {path}", "found"))
        return ds

    # Each candidate is tried in the documented order; the first that loads wins.
    candidates: list[tuple[Path, str, bool]] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        candidates += [(d, "data dir", False), (d / key, "data dir", False)]
    candidates.append((cache_root() / key, "npgrad cache", True))
    keras_dir = _keras_dir()
    if spec.keras_npz:
        candidates.append((keras_dir / spec.keras_npz, "keras", True))
    else:
        candidates.append((keras_dir / key, "keras", True))
    if spec.torchvision_dir:
        for root in _torchvision_roots():
            candidates.append((root / spec.torchvision_dir / "raw", "torchvision", True))
    for system in spec.system_dirs:
        candidates.append((Path(system), "system package", True))
    for path, label, verify in candidates:
        ds = try_npz(path, label) if path.suffix == ".npz" else try_dir(path, label, verify)
        if ds is not None:
            return ds, attempts
    return None, attempts


def fetch(
    name: str,
    mirrors: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download every missing or corrupt file of dataset ``name`` into the cache."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise DatasetError(f"{name!r} cannot be downloaded: known are {', '.join(DATASETS)}")
    spec = DATASETS[key]
    target = Path(cache) if cache is not None else cache_root() / key
    for fs in spec.files:
        path = target / fs.name
        if path.is_file():
            try:
                _verify(path, fs)
                continue
            except ChecksumError:
                pass  # replaced below, atomically
        download_file(fs, target, mirrors_for(spec, mirrors), timeout, progress, log)
    return target


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """Find ``name`` locally (see the module docstring for the order) or download it."""
    ds, attempts = locate(name, data_dir)
    if ds is not None:
        return ds
    key = ALIASES.get(name.lower(), name.lower())
    looked = "; ".join(f"{a.where} ({a.result})" for a in attempts)
    failed = ""
    if download:
        try:
            fetch(key, mirrors=mirrors, log=log)
            ds, more = locate(key, data_dir)
            if ds is not None:
                return ds
            looked += "; " + "; ".join(f"{a.where} ({a.result})" for a in more)
        except DownloadError as exc:
            hosts = ", ".join(
                f"{urllib.parse.urlsplit(m).netloc or m} ({r})" for m, r in exc.failures
            )
            failed = f" Download failed from every mirror: {hosts}."
        except DatasetError as exc:
            failed = f" Download failed: {exc}."
    raise DatasetError(
        f"{key} not found. Looked in: {looked}.{failed} Put the four .gz files in "
        f"{cache_root() / key}, pass --dataset DIR (any folder with the four IDX files), or "
        "set NPGRAD_MIRRORS to a mirror you can reach; '--dataset digits' works offline"
    )
