"""npgrad.data: IDX parsing, verified downloads from a local HTTP server, local copies, batching."""

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from npgrad import DatasetError, IDXFormatError
from npgrad.cli import main
from npgrad.data import (
    MNIST,
    DataLoader,
    DatasetSpec,
    FileSpec,
    datasets,
    digits,
    download_file,
    fetch,
    load_dataset,
    one_hot,
    random_shift,
    read_idx,
    split_validation,
    to_float,
    write_idx,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------- a local mirror server


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    requests: list

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        self.requests.append(self.path)
        _, kind, *rest = self.path.split("/")
        name = "/".join(rest)
        path = self.root / name
        if kind == "missing" or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if kind == "corrupt":
            data = bytearray(data)
            data[100] ^= 0xFF
            data = bytes(data)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if kind == "truncate":  # promise everything, send half, hang up
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(data)


@pytest.fixture
def mirror(shared_data):
    handler = type("H", (MirrorHandler,), {"root": shared_data, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield base, handler.requests
    server.shutdown()
    server.server_close()


def spec_10k(shared_data):
    """A dataset spec for the mnist-10k split, so a whole dataset can be 'downloaded'."""
    files = []
    for stem in datasets.FILES:
        data = (shared_data / "mnist-10k" / f"{stem}.gz").read_bytes()
        files.append(FileSpec(f"{stem}.gz", len(data), hashlib.sha256(data).hexdigest()))
    return DatasetSpec("mnist10k", tuple(files), mirrors=())


def no_partials(directory: Path):
    return not directory.exists() or not [p for p in directory.iterdir() if ".part" in p.name]


def test_download_tries_mirrors_in_order_and_verifies(mirror, shared_data, tmp_path, monkeypatch):
    base, requests = mirror
    monkeypatch.setitem(datasets.DATASETS, "mnist10k", spec_10k(shared_data))
    logs = []
    mirrors = [f"{base}/missing/mnist-10k", f"{base}/corrupt/mnist-10k", f"{base}/good/mnist-10k"]
    cache = tmp_path / "cache"
    fetch("mnist10k", mirrors=mirrors, cache=cache, log=logs.append, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in datasets.FILES)
    assert any("404" in m or "Not Found" in m for m in logs)
    assert any("corrupt download" in m for m in logs)
    assert no_partials(cache)
    # Cached: the next load needs no network at all.
    n_requests = len(requests)
    monkeypatch.setenv("NPGRAD_DATA", str(tmp_path))
    cache.rename(tmp_path / "mnist10k")
    ds = load_dataset("mnist10k", mirrors=["http://127.0.0.1:9/"])
    assert len(requests) == n_requests
    assert len(ds.train_labels) == 10000 and ds.source.startswith("npgrad cache")


def test_real_mnist_file_downloads_with_official_checksum(mirror, tmp_path):
    base, _ = mirror
    spec = MNIST.files[3]  # t10k-labels, byte-identical to the official file
    path = download_file(spec, tmp_path, [f"{base}/good/mnist"], progress=False, log=lambda m: None)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_failures_leave_nothing_partial(mirror, tmp_path):
    base, _ = mirror
    logs = []
    with pytest.raises(DatasetError, match="could not download t10k-labels"):
        download_file(MNIST.files[3], tmp_path, [f"{base}/missing/mnist", f"{base}/truncate/mnist",
                                                 f"{base}/corrupt/mnist"], log=logs.append)  # fmt: skip
    assert len(logs) == 3 and not list(tmp_path.iterdir())


def test_interrupted_download_leaves_nothing(mirror, tmp_path, monkeypatch):
    base, _ = mirror

    def interrupted(mirror, spec, out, timeout, progress):
        out.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "_copy_hashing", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_file(MNIST.files[3], tmp_path, [f"{base}/good/mnist"], log=lambda m: None)
    assert not list(tmp_path.iterdir())


def test_local_directory_as_mirror(shared_data, tmp_path):
    path = download_file(MNIST.files[2], tmp_path, [str(shared_data / "mnist")], log=print)
    assert path.stat().st_size == MNIST.files[2].size


def test_offline_message_lists_what_was_tried():
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist")
    msg = str(info.value)
    assert "npgrad cache" in msg and "keras" in msg and "127.0.0.1:9" in msg
    assert "Put the four .gz files" in msg and "digits" in msg and "\n" not in msg


def test_unknown_dataset_and_missing_directory():
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(DatasetError, match="no such directory"):
        load_dataset("/no/such/dir")


# ----------------------------------------------------------------- real files


def test_official_mnist_test_set(shared_data):
    d = shared_data / "mnist"
    for spec in MNIST.files[1:]:
        assert hashlib.sha256((d / spec.name).read_bytes()).hexdigest() == spec.sha256
        assert (d / spec.name).stat().st_size == spec.size
    images = read_idx(d / "t10k-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz", ndim=1)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert len(read_idx(d / "train-labels-idx1-ubyte.gz")) == 60000


def test_mnist_10k_split_as_a_directory(shared_data):
    ds = load_dataset(str(shared_data / "mnist-10k"))
    assert ds.train_images.shape == (10000, 28, 28) and len(ds.test_labels) == 10000
    assert np.bincount(ds.train_labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070,
                                                     944, 978]  # fmt: skip


def test_cache_copy_is_verified(shared_data, tmp_path, monkeypatch):
    # A cache holding the 10k split under the name "mnist" is *not* the official MNIST.
    monkeypatch.setenv("NPGRAD_DATA", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    for f in (shared_data / "mnist-10k").iterdir():
        (tmp_path / "mnist" / f.name).write_bytes(f.read_bytes())
    ds, attempts = datasets.locate("mnist")
    assert ds is None
    assert any("differs from the official" in a.result for a in attempts)


def test_keras_npz_is_read_without_pickle(tmp_path, monkeypatch):
    keras = tmp_path / ".keras" / "datasets"
    keras.mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / ".keras"))
    rng = np.random.default_rng(0)
    np.savez(keras / "mnist.npz", x_train=rng.integers(0, 255, (5, 28, 28), dtype=np.uint8),
             y_train=np.arange(5), x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.arange(2))  # fmt: skip
    monkeypatch.setitem(datasets.DATASETS, "mnist", datasets.DatasetSpec(
        "mnist", MNIST.files, (), keras_npz="mnist.npz", keras_npz_sha256=None))  # fmt: skip
    ds, _ = datasets.locate("mnist")
    assert ds is not None and ds.source.startswith("keras") and len(ds.train_labels) == 5
    obj = np.array([{"a": 1}], dtype=object)
    np.savez(keras / "mnist.npz", x_train=obj, y_train=obj, x_test=obj, y_test=obj)
    ds, attempts = datasets.locate("mnist")
    assert ds is None and any("not a readable Keras dataset" in a.result for a in attempts)


def test_torchvision_raw_directory(shared_data, tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "mnist").iterdir():  # no train images: incomplete
        (raw / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("TORCHVISION_DATA", str(tmp_path))
    ds, attempts = datasets.locate("mnist")
    assert ds is None and any("does not hold all four" in a.result for a in attempts)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_verified_by_content():
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.source.startswith("system package")
    assert ds.train_images.shape == (60000, 28, 28) and len(ds.test_labels) == 10000
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert ds.classes[9] == "Ankle boot"


def test_embedded_digits():
    ds = digits()
    assert ds.train_images.shape == (1437, 8, 8) and ds.test_images.shape == (360, 8, 8)
    assert ds.pixel_max == 16 and ds.train_images.max() == 16
    assert set(np.unique(ds.test_labels)) == set(range(10))
    assert load_dataset("digits").name == "digits"


# ----------------------------------------------------------------- broken files


def write_raw(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def good_labels():
    return bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])


@pytest.mark.parametrize(
    "name, data, gz, match",
    [
        ("empty.gz", b"", False, "file is empty"),
        ("empty", b"", False, "file is empty"),
        ("plain.gz", good_labels(), False, "named .gz but is not gzip-compressed"),
        ("truncated", good_labels()[:-1], False, r"truncated: dimensions \(3,\) need 11 bytes"),
        ("trailing", good_labels() + b"x", False, "has trailing bytes"),
        ("magic", b"\x12\x34\x08\x01" + good_labels()[4:], False, "not an IDX file"),
        ("type", bytes([0, 0, 0x42, 1]) + good_labels()[4:], False, "unknown IDX data type"),
        ("header", bytes([0, 0, 8, 3, 0, 0]), False, "truncated header"),
        ("short", b"\x00\x00", False, "too short for an IDX header"),
    ],
)
def test_broken_file_catalogue(tmp_path, name, data, gz, match):
    path = write_raw(tmp_path / name, data, gz)
    with pytest.raises(IDXFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip(tmp_path):
    full = gzip.compress(good_labels() * 100)
    path = write_raw(tmp_path / "cut.gz", full[: len(full) // 2])
    with pytest.raises(IDXFormatError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_wrong_dimension_count(tmp_path):
    path = write_raw(tmp_path / "labels-as-images", good_labels())
    with pytest.raises(
        IDXFormatError, match=r"has 1 dimension\(s\) \(magic 2049\), expected images"
    ):
        read_idx(path, ndim=3)


def test_count_mismatch_between_images_and_labels(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 4, 4), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(IDXFormatError, match="holds 5 images but .* holds 4 labels"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, a)
        b = read_idx(tmp_path / name)
        assert b.dtype == np.dtype(dtype) and np.array_equal(a, b)
    assert (tmp_path / "a.idx.gz").read_bytes()[:2] == b"\x1f\x8b"


# ----------------------------------------------------------------- batching


def test_loader_batches_shuffle_and_drop_last():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    batches = list(DataLoader(x, y, batch_size=4, shuffle=True, rng=0))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for xb, yb in batches:
        assert np.array_equal(xb[:, 0], yb)
    assert [len(b[1]) for b in DataLoader(x, y, 4, drop_last=True)] == [4, 4]
    assert len(DataLoader(x, y, 4, drop_last=True)) == 2
    again = list(DataLoader(x, y, batch_size=4, shuffle=True, rng=0))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))


def test_loader_epochs_differ_but_are_seeded():
    y = np.arange(100)
    loader = DataLoader(np.zeros((100, 2), np.float32), y, 100, rng=1)
    e1, e2 = next(iter(loader))[1], next(iter(loader))[1]
    assert not np.array_equal(e1, e2)


def test_scaling_standardising_and_one_hot():
    x = to_float(np.array([[0, 255], [51, 102]], dtype=np.uint8))
    assert x.dtype == np.float32 and x.max() == 1.0
    xb, _ = next(iter(DataLoader(x, np.array([0, 1]), 2, shuffle=False, mean=0.5, std=0.5)))
    np.testing.assert_allclose(xb[0], [-1.0, 1.0])
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])


def test_random_shift_moves_pixels_without_wrapping():
    img = np.zeros((1, 5, 5), np.float32)
    img[0, 2, 2] = 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = random_shift(img, 2, rng)
        assert out.sum() == 1 and out.shape == img.shape
    edge = np.zeros((1, 3, 3), np.float32)
    edge[0, 0, 0] = 1
    sums = {float(random_shift(edge, 1, rng).sum()) for _ in range(50)}
    assert sums == {0.0, 1.0}  # shifted off the edge: gone, not wrapped around


def test_validation_split_is_disjoint_and_seeded():
    x, y = np.arange(100).reshape(100, 1), np.arange(100)
    xt, yt, xv, yv = split_validation(x, y, 0.2, seed=3)
    assert len(yv) == 20 and len(yt) == 80 and not set(yt) & set(yv)
    assert np.array_equal(split_validation(x, y, 0.2, seed=3)[3], yv)


# ----------------------------------------------------------------- command line


def test_cli_data_list(capsys, shared_data):
    assert main(["data", "list", "--data-dir", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "embedded" in out
    assert "mnist" in out and "not found" in out


def test_cli_data_fetch_from_local_mirror(capsys, mirror, monkeypatch, tmp_path, shared_data):
    base, _ = mirror
    monkeypatch.setitem(datasets.DATASETS, "mnist10k", spec_10k(shared_data))
    monkeypatch.setenv("NPGRAD_DATA", str(tmp_path))
    argv = ["data", "fetch", "mnist10k", "--mirror", f"{base}/missing/mnist-10k",
            "--mirror", f"{base}/good/mnist-10k"]  # fmt: skip
    assert main(argv) == 0
    assert "mnist10k" in capsys.readouterr().out
    assert (tmp_path / "mnist10k" / "train-images-idx3-ubyte.gz").is_file()


def test_cli_data_fetch_offline_is_one_line_error(capsys):
    assert main(["data", "fetch", "mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("npgrad: error: could not download")
