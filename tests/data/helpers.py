"""What the data tests share: a local mirror server, small IDX datasets, unprivileged runs.

The fixtures here are imported by `tests/data/conftest.py` and by `tests/cli/test_data.py`.
"""

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from npgrad.data import DatasetSpec, FileSpec, datasets, write_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under ``root`` at /<kind>/<path>: good, missing (404), corrupt, truncate."""

    root: Path
    requests: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        _, kind, *rest = self.path.split("/")
        path = self.root / "/".join(rest)
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
    """(base URL on 127.0.0.1, list of request paths) serving /work/shared/data."""
    handler = type("H", (MirrorHandler,), {"root": shared_data, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


def spec_10k(shared_data):
    """A dataset spec for the mnist-10k split, so a whole dataset can be 'downloaded'."""
    files = []
    for stem in datasets.FILES:
        data = (shared_data / "mnist-10k" / f"{stem}.gz").read_bytes()
        files.append(FileSpec(f"{stem}.gz", len(data), hashlib.sha256(data).hexdigest()))
    return DatasetSpec("mnist10k", tuple(files), mirrors=())


def write_dataset(directory: Path, train=None, train_labels=None, test=None, test_labels=None):
    """Four IDX files in ``directory`` (gzip); defaults: 6 train and 4 test 3x3 images, 3 classes."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": np.arange(54, dtype=np.uint8).reshape(6, 3, 3)
        if train is None
        else train,
        "train-labels-idx1-ubyte.gz": np.array([0, 1, 2, 0, 1, 2], np.uint8)
        if train_labels is None
        else train_labels,
        "t10k-images-idx3-ubyte.gz": np.zeros((4, 3, 3), np.uint8) if test is None else test,
        "t10k-labels-idx1-ubyte.gz": np.array([2, 1, 0, 1], np.uint8)
        if test_labels is None
        else test_labels,
    }
    for name, array in arrays.items():
        write_idx(directory / name, array)
    return directory


def with_official_test_set(directory: Path, test_dir: Path, train_labels=None):
    """A small training split beside symbolic links to an official test set."""
    n = 20 if train_labels is None else len(train_labels)
    labels = np.arange(n, dtype=np.uint8) % 10 if train_labels is None else train_labels
    write_idx(directory / "train-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels)
    for stem in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (directory / stem).symlink_to(test_dir / stem)
    return directory


@pytest.fixture
def short_tmp():
    """A temporary directory with a short path, for messages that must stay one line."""
    path = Path(tempfile.mkdtemp(prefix="npg"))
    yield path
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path)


@pytest.fixture
def unprivileged():
    """A command prefix under which file permissions apply, even when the tests run as root.

    Root ignores permission bits; ``setpriv`` runs the command as root without
    the capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH).
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be denied")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def run_python(prefix, code, *args, timeout=60):
    """Run ``code`` in a fresh interpreter (behind ``prefix``); (exit code, stdout, stderr)."""
    proc = subprocess.run([*prefix, sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr
