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

Nothing read is trusted. Every :class:`Dataset` checks itself when built
(:meth:`Dataset.validate`): both splits non-empty, images and labels in equal
numbers, train and test images of one shape, integer labels within the
classes, pixels within ``[0, pixel_max]``; a refusal names the file, the first
bad index and its value.

Where the classes come from: a standard dataset recognised by content (below)
has its official 10 classes and names. Any other directory has the classes
``0 .. K-1`` with ``K`` the highest *training* label plus one (at least 2);
the test labels must fall within them. ``K`` above :data:`MAX_CLASSES` (1000),
or a ``K`` of which fewer than half the classes occur in training (one corrupt
label byte of 255 among the digits 0-9), is refused as a corrupt label; pass
``num_classes=`` to :func:`load_dataset` to state the count instead.

:attr:`Dataset.family` names the standard dataset the data *is*, whatever it
was called: ``"mnist"`` or ``"fashion-mnist"`` when the test split is
byte-for-byte the official test set (the SHA-256 of its decompressed labels,
then images: about 10 ms), so Debian's Fashion-MNIST given as a directory, or
the 10k subset of MNIST's training set with the official test set, are
recognised; ``"digits"`` for the embedded set; ``None`` otherwise.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import (
    ChecksumError,
    DatasetContentError,
    DatasetError,
    DownloadError,
)
from ..fileio import atomic_write
from .idx import idx_header, read_idx

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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


MAX_CLASSES = 1000
SPLIT_PARTS = ("training images", "training labels", "test images", "test labels")


@dataclass
class Dataset:
    """Train and test images (N x H x W) with integer labels, and where they came from.

    ``family`` is the standard dataset recognised by content (``"mnist"``,
    ``"fashion-mnist"``, ``"digits"``) or None; ``files`` names the four
    sources (train images, train labels, test images, test labels) for error
    messages. The dataset validates itself when built (:meth:`validate`).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    pixel_max: float = 255.0
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))
    notes: list[str] = field(default_factory=list)
    family: str | None = None
    files: tuple[str, ...] = SPLIT_PARTS

    def __post_init__(self) -> None:
        self.validate()

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> None:
        """Refuse data that is well-formed but cannot be right (:class:`DatasetContentError`).

        Each split non-empty with as many labels as images; images 3-D (N, H, W),
        train and test of one shape; labels integers in ``0 .. num_classes-1``;
        pixels finite and within ``[0, pixel_max]``. Costs one pass over the labels
        (and over the pixels unless they are bytes with ``pixel_max >= 255``).
        """
        f = self.files
        splits = (
            (self.train_images, self.train_labels, f[0], f[1], "training"),
            (self.test_images, self.test_labels, f[2], f[3], "test"),
        )
        for images, labels, fi, fl, split in splits:
            if np.ndim(images) != 3:
                raise DatasetContentError(
                    f"{fi}: images must be 3-D (count, height, width), got shape {np.shape(images)}"
                )
            if np.ndim(labels) != 1:
                raise DatasetContentError(f"{fl}: labels must be 1-D, got shape {np.shape(labels)}")
            if len(images) != len(labels):
                raise DatasetContentError(
                    f"{fi} holds {len(images)} images but {fl} holds {len(labels)} labels"
                )
            if not len(labels):
                raise DatasetContentError(f"{fl}: the {split} split is empty (0 examples)")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DatasetContentError(
                f"{f[0]} holds {_hw(self.train_images)} images but {f[2]} holds "
                f"{_hw(self.test_images)} images: train and test must have one shape"
            )
        if 0 in self.image_shape:
            raise DatasetContentError(
                f"{f[0]}: images of {_hw(self.train_images)} pixels are empty"
            )
        if len(self.classes) < 1:
            raise DatasetContentError(f"{self.name}: no classes")
        for labels, fl in ((self.train_labels, f[1]), (self.test_labels, f[3])):
            check_labels(labels, self.num_classes, fl)
        for images, fi in ((self.train_images, f[0]), (self.test_images, f[2])):
            _check_pixels(images, self.pixel_max, fi)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, image={self.image_shape}, source={self.source!r})"
        )


def _hw(images: np.ndarray) -> str:
    return "x".join(str(d) for d in images.shape[1:])


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_labels(labels: np.ndarray, num_classes: int, where: str = "labels") -> None:
    """Refuse labels that are not integers in ``0 .. num_classes-1``, naming the first bad one.

    For callers holding labels from elsewhere (a checkpoint's class count, an
    evaluation set): ``where`` names their source in the message.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DatasetContentError(f"{where}: labels must be integers, got {labels.dtype}")
    if not labels.size:
        return
    if labels.dtype.kind == "i" and labels.min() < 0:
        i = _first(labels < 0)
        raise DatasetContentError(
            f"{where}: label {labels[i]} at index {i} is negative; class labels count from 0"
        )
    bad = labels >= num_classes
    if bad.any():
        i = _first(bad)
        raise DatasetContentError(
            f"{where}: label {labels[i]} at index {i} is outside the {num_classes} classes "
            f"(0..{num_classes - 1})"
        )


def _check_pixels(images: np.ndarray, pixel_max: float, where: str) -> None:
    if images.dtype.kind not in "uif":
        raise DatasetContentError(f"{where}: pixels must be numbers, got {images.dtype}")
    if images.dtype == np.uint8 and pixel_max >= 255:
        return  # bytes cannot be out of range: skip the pass over the pixels
    if images.dtype.kind == "f":
        finite = np.isfinite(images)
        if not finite.all():
            i = _first(~finite.ravel())
            raise DatasetContentError(
                f"{where}: pixel {images.ravel()[i]} (image {i // _per_image(images)}) "
                "is not a finite number"
            )
    bad = (images < 0) | (images > pixel_max)
    if bad.any():
        i = _first(bad.ravel())
        raise DatasetContentError(
            f"{where}: pixel value {images.ravel()[i]:g} (image {i // _per_image(images)}) "
            f"is outside 0..{pixel_max:g}"
        )


def _per_image(images: np.ndarray) -> int:
    return max(1, int(np.prod(images.shape[1:])))


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
    """Whether ``path`` is a directory holding the four IDX files (False if unreadable)."""
    try:
        return _holds_idx_files(Path(path))
    except OSError:
        return False


def _holds_idx_files(p: Path) -> bool:
    return p.is_dir() and all(_find_file(p, stem) for stem in FILES)


def _sha256_hex(f: IO[bytes]) -> str:
    """The SHA-256 of an open binary file, read in chunks (``hashlib.file_digest``)."""
    if sys.version_info >= (3, 11):
        return hashlib.file_digest(f, "sha256").hexdigest()
    h = hashlib.sha256()  # Python 3.10 has no file_digest
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, spec: FileSpec, content: np.ndarray) -> None:
    """Check a local file against the official gzip SHA-256, or its content's SHA-256.

    ``content`` is the array already read from ``path`` (bounded, exact length):
    its IDX serialisation is the file's decompressed content, so a re-compressed
    copy (Debian's) is verified without inflating the file a second time.
    """
    try:
        with open(path, "rb") as f:
            if _sha256_hex(f) == spec.sha256:
                return
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if spec.raw_sha256 is None:
        raise ChecksumError(
            f"{path}: SHA-256 differs from the official {spec.name} and its decompressed "
            "content cannot be verified here"
        )
    if _content_sha256(content) != spec.raw_sha256:
        raise ChecksumError(f"{path}: content differs from the official {spec.name}")


def _content_sha256(array: np.ndarray) -> str | None:
    """SHA-256 of ``array`` as a byte IDX file's content (None if it is not bytes)."""
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iu" or not array.size or array.min() < 0 or array.max() > 255:
            return None
        array = array.astype(np.uint8)
    h = hashlib.sha256(idx_header(array))
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def recognise(test_images: np.ndarray, test_labels: np.ndarray) -> str | None:
    """The standard dataset whose official test set this is, by content, or None.

    Hashes the labels first (10 kB) and the images only when those match.
    """
    labels = _content_sha256(np.asarray(test_labels))
    for spec in DATASETS.values():
        if labels is not None and labels == spec.files[3].raw_sha256:
            if _content_sha256(np.asarray(test_images)) == spec.files[2].raw_sha256:
                return spec.name
    return None


def _load_idx_dir(
    directory: Path,
    name: str,
    spec: DatasetSpec | None,
    source: str,
    num_classes: int | None = None,
) -> Dataset:
    paths = []
    for stem in FILES:
        found = _find_file(directory, stem)
        if found is None:
            raise DatasetError(f"{directory}: missing {stem}.gz (or {stem})")
        paths.append(found)
    arrays = [read_idx(p, ndim=3 if "images" in p.name else 1) for p in paths]
    if spec is not None:
        for p, fs, a in zip(paths, spec.files, arrays):
            _verify(p, fs, a)
    return _assemble(name, arrays, [str(p) for p in paths], source, num_classes)


def _infer_classes(labels: np.ndarray, where: str) -> int:
    """The class count of a dataset of unknown origin: highest training label + 1 (see above)."""
    check_labels(labels, np.iinfo(np.int64).max, where)  # integers, none negative
    k = int(labels.max()) + 1
    if k > MAX_CLASSES:
        i = int(np.argmax(labels >= MAX_CLASSES))
        raise DatasetContentError(
            f"{where}: label {labels[i]} at index {i} would make more than {MAX_CLASSES} "
            "classes: a corrupt label? (from Python, pass num_classes= to load_dataset if intended)"
        )
    present = np.count_nonzero(np.bincount(labels.astype(np.int64), minlength=k))
    if k > 2 and 2 * present < k:
        i = int(np.argmax(labels))
        raise DatasetContentError(
            f"{where}: label {labels[i]} at index {i} would make {k} classes, but only "
            f"{present} of them occur in training: a corrupt label? (from Python, pass "
            "num_classes= to load_dataset if this is intended)"
        )
    return max(k, 2)


def _refuse_unit_floats(train: np.ndarray, test: np.ndarray, where: str) -> None:
    """Float IDX images whose pixels all lie in 0..1, both splits: already scaled, surely.

    IDX pixels are read on MNIST's 0..255 scale, so these would be divided by 255 again
    and train to chance, silently.
    """
    if train.dtype.kind == test.dtype.kind == "f" and train.size and test.size:
        if max(train.max(), test.max()) <= 1:
            raise DatasetContentError(
                f"{where}: float pixels all within 0..1 (both splits), but IDX pixels are read "
                "on MNIST's 0..255 scale (they would be divided by 255 again): store them as "
                "0..255, e.g. uint8"
            )


def _assemble(
    name: str,
    arrays: list[np.ndarray],
    files: Sequence[str],
    source: str,
    num_classes: int | None = None,
) -> Dataset:
    """A validated :class:`Dataset` from the four arrays, its classes and family found."""
    tri, trl, tei, tel = (np.asarray(a) for a in arrays)
    family = recognise(tei, tel)
    if family is not None:
        classes = DATASETS[family].classes
    else:
        if num_classes is None and trl.ndim == 1 and trl.size:
            num_classes = _infer_classes(trl, files[1])
        classes = tuple(str(i) for i in range(2 if num_classes is None else num_classes))
    ds = Dataset(
        name, tri, trl, tei, tel, source, classes=classes, family=family, files=tuple(files)
    )
    _refuse_unit_floats(tri, tei, files[0])
    # widened once validated, so that a bad dtype is reported as it was stored
    ds.train_labels, ds.test_labels = trl.astype(np.int64), tel.astype(np.int64)
    return ds


def _load_keras_npz(path: Path, spec: DatasetSpec) -> Dataset:
    try:
        with open(path, "rb") as f:
            digest = _sha256_hex(f)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if spec.keras_npz_sha256 and digest != spec.keras_npz_sha256:
        raise ChecksumError(f"{path}: SHA-256 differs from Keras' official {spec.keras_npz}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z["x_train"], z["y_train"], z["x_test"], z["y_test"]]
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a readable Keras dataset file ({exc})") from None
    except MemoryError:  # NumPy allocates what an array's header declares before reading it
        raise DatasetError(f"{path}: declares arrays too large to load") from None
    names = [f"{path}[{k}]" for k in ("x_train", "y_train", "x_test", "y_test")]
    return _assemble(spec.name, arrays, names, f"keras: {path}")


def digits() -> Dataset:
    """The UCI optical-recognition digits (8x8, 1,797 samples, CC BY 4.0), embedded.

    Fixed split: the first 1,437 samples (80%) train, the last 360 test.
    Pixels are counts from 0 to 16.
    """
    from importlib import resources

    raw = resources.files("npgrad.data").joinpath("digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.uint8)
    images, labels = table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    return Dataset(
        "digits",
        images[:1437],
        labels[:1437],
        images[1437:],
        labels[1437:],
        source="embedded in npgrad (UCI ML digits, CC BY 4.0)",
        pixel_max=16.0,
        family="digits",
    )


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
        f = open(local, "rb")
        return f, local.stat().st_size
    import urllib.request  # the network stack loads only when something is downloaded

    url = mirror if mirror.endswith("/") else mirror + "/"
    req = urllib.request.Request(url + filename, headers={"User-Agent": "npgrad"})
    resp = urllib.request.urlopen(req, timeout=timeout)
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
    import http.client
    import urllib.error

    log = log or (lambda msg: print(msg, file=sys.stderr))
    dest_dir = Path(dest_dir)
    dest = dest_dir / spec.name
    _writable_dir(dest_dir)
    if not mirrors:
        raise DownloadError(
            f"could not download {spec.name}: no mirror to try (pass --mirror URL_OR_DIR or "
            "set NPGRAD_MIRRORS)"
        )
    failures: list[tuple[str, str]] = []
    for mirror in mirrors:
        try:
            with atomic_write(dest) as out:  # moved into place only if verified
                digest = _copy_hashing(mirror, spec, out, timeout, progress)
                size = out.tell()
                if size != spec.size or digest != spec.sha256:
                    raise ChecksumError(
                        f"corrupt download ({size} bytes, SHA-256 {digest[:12]}..., "
                        f"expected {spec.size} bytes, {spec.sha256[:12]}...)"
                    )
        except (
            OSError,
            urllib.error.URLError,
            http.client.HTTPException,
            ChecksumError,
            ValueError,
        ) as exc:
            # Told only at the end: offline, one line says it all; online, the mirror
            # that worked is named with those that did not.
            reason = str(getattr(exc, "reason", None) or exc)
            failures.append((mirror, re.sub(r"^\[Errno -?\d+\] ", "", reason)))
            continue
        if failures:
            log(f"npgrad: {spec.name} from {mirror}; {failure_list(failures)}")
        return dest
    raise DownloadError(f"could not download {spec.name}: {failure_list(failures)}", failures)


def failure_list(failures: Sequence[tuple[str, str]]) -> str:
    """Failed mirrors grouped by reason, on one line: offline, every mirror fails alike."""
    from urllib.parse import urlsplit

    by_reason: dict[str, list[str]] = {}
    for mirror, reason in failures:
        by_reason.setdefault(reason, []).append(urlsplit(mirror).netloc or mirror)
    return "; ".join(f"{', '.join(where)} failed ({why})" for why, where in by_reason.items())


def _writable_dir(directory: Path) -> None:
    """Refuse at once, in one line, a download directory that cannot take files."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise DatasetError(
            f"cannot write to {directory} ({exc.strerror or exc}): choose a writable "
            "directory with --cache DIR or $NPGRAD_DATA"
        ) from None


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


def _progress_bar(total: int, desc: str, enabled: bool | None):
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


def _user_dir(name: str, num_classes: int | None) -> Dataset:
    """A directory the user named: any four IDX files, no checksum (official or not)."""
    directory = Path(name).expanduser()
    try:
        if not directory.is_dir():
            if directory.exists():
                raise DatasetError(
                    f"{directory}: is a file; give the directory holding the four IDX files"
                )
            raise DatasetError(f"{directory}: no such directory")
        return _load_idx_dir(directory, directory.name, None, str(directory), num_classes)
    except PermissionError:
        raise DatasetError(
            f"{directory}: permission denied (cannot look inside); fix its permissions or "
            "copy the files somewhere readable"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{directory}: cannot be read ({exc.strerror or exc})") from None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return True  # exists but cannot be inspected: say so when loading it


def locate(
    name: str,
    data_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> tuple[Dataset | None, list[Attempt]]:
    """Look for ``name`` locally, in the documented order; no network.

    ``num_classes`` states the class count of a directory of unknown origin
    (otherwise inferred from its labels: see the module docstring).
    """
    attempts: list[Attempt] = []
    if os.sep in name or (os.altsep and os.altsep in name) or _is_dir(Path(name).expanduser()):
        return _user_dir(name, num_classes), [Attempt(str(Path(name).expanduser()), "found")]
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
        where = f"{label} {directory}"
        try:
            if not directory.is_dir():
                attempts.append(Attempt(where, "no such directory"))
                return None
            if not _holds_idx_files(directory):
                attempts.append(Attempt(where, "does not hold all four files"))
                return None
            ds = _load_idx_dir(
                directory, key, spec if verify else None, f"{label}: {directory}", num_classes
            )
        except DatasetError as exc:
            attempts.append(Attempt(where, str(exc)))
            return None
        except OSError as exc:
            attempts.append(Attempt(where, f"cannot be read ({exc.strerror or exc})"))
            return None
        attempts.append(Attempt(where, "found"))
        return ds

    def try_npz(path: Path, label: str) -> Dataset | None:
        where = f"{label} {path}"
        try:
            if not path.is_file():
                attempts.append(Attempt(where, "no such file"))
                return None
            ds = _load_keras_npz(path, spec)
        except DatasetError as exc:
            attempts.append(Attempt(where, str(exc)))
            return None
        except OSError as exc:
            attempts.append(Attempt(where, f"cannot be read ({exc.strerror or exc})"))
            return None
        attempts.append(Attempt(where, "found"))
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


def _is_verified(path: Path, spec: FileSpec) -> bool:
    try:
        _verify(path, spec, read_idx(path, ndim=3 if "images" in spec.name else 1))
    except DatasetError:
        return False
    return True


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
        why = " (it is embedded in npgrad: nothing to download)" if key == "digits" else ""
        raise DatasetError(f"{name!r} cannot be downloaded{why}: known are {', '.join(DATASETS)}")
    spec = DATASETS[key]
    target = Path(cache).expanduser() if cache is not None else cache_root() / key
    existed = _is_dir(target)
    try:
        for fs in spec.files:
            path = target / fs.name
            if _is_file(path) and _is_verified(path, fs):
                continue  # otherwise replaced below, atomically
            download_file(fs, target, mirrors_for(spec, mirrors), timeout, progress, log)
    except BaseException:
        if not existed:  # a download that got nothing leaves no empty cache folder behind
            with contextlib.suppress(OSError):
                target.rmdir()  # only when empty: a file already fetched stays
        raise
    return target


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Find ``name`` locally (see the module docstring for the order) or download it.

    The result is validated (:meth:`Dataset.validate`) and knows its
    :attr:`~Dataset.family`. ``num_classes`` states the class count of a
    directory of unknown origin instead of inferring it from the labels.
    """
    ds, attempts = locate(name, data_dir, num_classes)
    if ds is not None:
        return ds
    key = ALIASES.get(name.lower(), name.lower())
    failed = ""
    if download:
        try:
            fetch(key, mirrors=mirrors, log=log)
            ds, more = locate(key, data_dir, num_classes)
            if ds is not None:
                return ds
            attempts += more
        except DownloadError as exc:
            reasons = {r for _, r in exc.failures}
            failed = f"every mirror failed ({reasons.pop()})" if len(reasons) == 1 else ""
            failed = failed or failure_list(exc.failures)
        except DatasetError as exc:
            failed = f"download failed: {exc}"
    # One line: what went wrong, then what to do; `npgrad data list` shows every place looked.
    absent = ("no such directory", "no such file", "does not hold all four files")
    unusable = "".join(f"; {a.where}: {a.result}" for a in attempts if a.result not in absent)
    why = f" and {failed}" if failed else ""
    raise DatasetError(
        f"{key} is not on this machine{why}{unusable}: pass --dataset DIR (a folder of the four "
        "IDX files) or --dataset digits, which works offline; 'npgrad data list' shows where "
        "npgrad looked"
    )
