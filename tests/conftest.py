import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from npgrad.app.allocator import keep_freed_memory

# As `npgrad train` does: this process is ours, so freed activations are reused instead of
# page-faulted back in (a training test runs 2-5x faster with it).
keep_freed_memory()

ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """NPGRAD_SHARED_DATA; else ``../shared/data`` beside this checkout; else beside the
    checkout this one was cloned from (a clean clone made elsewhere, as CI's is)."""
    if "NPGRAD_SHARED_DATA" in os.environ:
        return Path(os.environ["NPGRAD_SHARED_DATA"])
    beside = ROOT.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        url = ""
    if url.startswith("/"):  # a clone of a local checkout
        origin = Path(url).parent / "shared" / "data"
        if origin.is_dir():
            return origin
    return beside


SHARED_DATA = _shared_data()


@pytest.fixture(scope="session")
def torch():
    """PyTorch for cross-checks; in CI its absence is a failure, never a skip."""
    try:
        import torch as _torch
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(
                "PyTorch is required for the cross-checks in CI (pip install torch==2.13.0)"
            )
        pytest.skip("PyTorch not installed")
    _torch.set_default_dtype(_torch.float64)
    return _torch


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist-10k").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data expected at {SHARED_DATA} (set NPGRAD_SHARED_DATA)")
        pytest.skip(f"no shared data at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def isolated_data_locations(tmp_path_factory, monkeypatch):
    """Never touch the real cache, home directory or internet mirrors from a test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NPGRAD_DATA", str(home / "npgrad-cache"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.delenv("TORCHVISION_DATA", raising=False)
    # Port 9 (discard) on loopback refuses at once: no real mirror is ever contacted.
    monkeypatch.setenv("NPGRAD_MIRRORS", "http://127.0.0.1:9/")
    monkeypatch.setenv("MPLCONFIGDIR", str(home / "mpl"))
