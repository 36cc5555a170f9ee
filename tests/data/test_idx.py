"""npgrad.data.idx: strict IDX reading, sizes checked before they are trusted, and fuzzing."""

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgrad.data import MNIST, idx_bytes, parse_idx, read_idx, write_idx
from npgrad.errors import IDXFormatError, NpgradError
from tests.data import idx_mutations

# NPGRAD_FUZZ_EXAMPLES=20000 for a longer local run; CI runs the default.
FUZZ_EXAMPLES = int(os.environ.get("NPGRAD_FUZZ_EXAMPLES", "1000"))


def write_raw(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def good_labels():
    return bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])


def header(type_byte, *dims):
    return bytes([0, 0, type_byte, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


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
    # the same bytes as a one-shot decompression
    raw = gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert images.tobytes() == raw[16:]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, a)
        b = read_idx(tmp_path / name)
        assert b.dtype == np.dtype(dtype) and b.dtype.isnative and np.array_equal(a, b)
        assert b.flags.writeable and b.flags.c_contiguous
    assert (tmp_path / "a.idx.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert np.array_equal(parse_idx(idx_bytes(a)), a)


def test_empty_arrays_round_trip(tmp_path):
    for shape in [(0,), (0, 28, 28), (5, 0, 3)]:
        write_idx(tmp_path / "e.gz", np.zeros(shape, np.uint8))
        assert read_idx(tmp_path / "e.gz").shape == shape


# ----------------------------------------------------------------- broken files


@pytest.mark.parametrize(
    "name, data, gz, match",
    [
        ("empty.gz", b"", False, "file is empty"),
        ("empty", b"", False, "file is empty"),
        ("empty-inside.gz", b"", True, "file is empty"),
        ("plain.gz", good_labels(), False, "named .gz but is not gzip-compressed"),
        ("truncated", good_labels()[:-1], False, r"truncated: dimensions \(3,\) need 11 bytes"),
        ("truncated-gz", good_labels()[:-1], True, r"truncated: dimensions \(3,\) need 11 bytes"),
        ("trailing", good_labels() + b"x", False, "has trailing bytes"),
        ("trailing-gz", good_labels() + b"x", True, "has trailing bytes"),
        ("magic", b"\x12\x34\x08\x01" + good_labels()[4:], False, "not an IDX file"),
        ("type", bytes([0, 0, 0x42, 1]) + good_labels()[4:], False, "unknown IDX data type"),
        ("header", bytes([0, 0, 8, 3, 0, 0]), False, "truncated header"),
        ("short", b"\x00\x00", False, "too short for an IDX header"),
        ("ndim", bytes([0, 0, 8, 200]) + bytes(800), False, "200 dimensions"),
        # dimension products beyond 64 bits: computed exactly, compared with the length
        ("overflow", header(0x0E, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(8), False,
         f"need {(2**32 - 1) ** 3 * 8 + 16} bytes, file has 24"),
        ("overflow-gz", header(0x0E, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(8), True,
         "more than a .*-byte gzip file can hold"),
        ("wraps-to-zero", header(0x08, 2**32 - 1, 0, 2**32 - 1), False, "above the limit"),
    ],
    ids=lambda v: v if isinstance(v, str) and "/" not in v and len(v) < 20 else "",
)  # fmt: skip
def test_broken_file_catalogue(tmp_path, name, data, gz, match):
    path = write_raw(tmp_path / name, data, gz)
    with pytest.raises(IDXFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path):
    full = gzip.compress(good_labels() * 100)
    path = write_raw(tmp_path / "cut.gz", full[: len(full) // 2])
    with pytest.raises(IDXFormatError, match="corrupt or truncated gzip"):
        read_idx(path)
    bad_crc = bytearray(gzip.compress(good_labels()))
    bad_crc[-8] ^= 1
    with pytest.raises(IDXFormatError, match="CRC check failed"):
        read_idx(write_raw(tmp_path / "crc.gz", bytes(bad_crc)))


def test_wrong_dimension_count(tmp_path):
    path = write_raw(tmp_path / "labels-as-images", good_labels())
    with pytest.raises(
        IDXFormatError, match=r"has 1 dimension\(s\) \(magic 2049\), expected images"
    ):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("what", ["directory", "missing"])
def test_unreadable_paths(tmp_path, what):
    path = tmp_path / "x"
    if what == "directory":
        path.mkdir()
    with pytest.raises(
        IDXFormatError, match="is a directory" if what == "directory" else "not found"
    ):
        read_idx(path)


def test_payload_limit_is_the_callers(tmp_path):
    path = tmp_path / "big"
    write_idx(path, np.zeros((4, 10), np.uint8))
    with pytest.raises(IDXFormatError, match=r"need 40 bytes, above the limit of 39"):
        read_idx(path, max_bytes=39)
    assert read_idx(path, max_bytes=40).shape == (4, 10)


# ----------------------------------------------------------------- gzip bombs


ZEROS_16M = gzip.compress(bytes(16 << 20), compresslevel=9, mtime=0)


def peak_allocation(fn):
    """(exception raised by fn or None, peak bytes allocated while it ran)."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except Exception as exc:
        raised = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return raised, peak


def test_gzip_bomb_after_a_small_header_is_refused_without_inflating_it(tmp_path):
    # A valid 3-label file followed by 128 members of 16 MiB of zeros: 2 GiB inflated, 2 MB stored.
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(good_labels()) + ZEROS_16M * 128)
    assert path.stat().st_size < 3 << 20
    raised, peak = peak_allocation(lambda: read_idx(path))
    assert isinstance(raised, IDXFormatError) and "has trailing bytes" in str(raised)
    assert peak < 4 << 20  # the stored file is ~2 MB: nothing like the 2 GiB it inflates to


def test_gzip_header_promising_more_than_the_file_can_hold(tmp_path):
    # 60000 x 28 x 28 promised by a 2 kB file: refused before reading the payload.
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header(0x08, 60000, 28, 28) + bytes(1000)))
    raised, peak = peak_allocation(lambda: read_idx(path))
    assert isinstance(raised, IDXFormatError) and "gzip file can hold" in str(raised)
    assert peak < 1 << 20


def test_plausible_header_with_too_little_data_allocates_what_arrives(tmp_path):
    # 200 MB promised by a 200 kB gzip file (incompressible data): plausible for its length,
    # so reading starts; 200 kB arrive, and memory follows them, not the promise.
    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(header(0x08, 200_000_000) + payload))
    raised, peak = peak_allocation(lambda: read_idx(path))
    assert isinstance(raised, IDXFormatError)
    assert "truncated: dimensions (200000000,) need 200000008 bytes, content has 200008" in str(
        raised
    )
    assert peak < 20 << 20  # the first buffer (16 MiB), not the 200 MB promised


# ----------------------------------------------------------------- fuzzing


def test_fuzz_mutated_files_under_time_and_memory_bounds(tmp_path):
    """Seeded mutations, loaded in a child process with RLIMIT_AS: only npgrad errors escape.

    ``NPGRAD_FUZZ_EXAMPLES`` sets the count (``NPGRAD_FUZZ_SEED`` the seed).
    """
    seed = int(os.environ.get("NPGRAD_FUZZ_SEED", "0"))
    script = Path(idx_mutations.__file__)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(seed), str(FUZZ_EXAMPLES), str(tmp_path)],
                          capture_output=True, text=True, env=env,
                          timeout=60 + FUZZ_EXAMPLES * idx_mutations.TIME_BOUND)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["n_failures"] == 0, json.dumps(report["failures"], indent=1)
    assert report["loaded"] + report["refused"] == FUZZ_EXAMPLES
    assert report["refused"] > FUZZ_EXAMPLES // 2  # the mutations do damage


@settings(max_examples=max(50, FUZZ_EXAMPLES // 10), deadline=None)
@given(rng=st.randoms(use_true_random=False), compressed=st.booleans(),
       ndim=st.sampled_from([None, 1, 3]))  # fmt: skip
def test_fuzz_memory_is_bounded_by_the_file(tmp_path_factory, rng, compressed, ndim):
    """Whatever the header claims, reading allocates at most what the stored bytes can hold."""
    data = idx_bytes(idx_mutations.base_arrays(rng))
    for _ in range(rng.randrange(1, 4)):
        data, _ = idx_mutations.mutate_bytes(data, rng)
    if compressed:
        data = gzip.compress(data, mtime=0)
        if rng.random() < 0.5:
            data, _ = idx_mutations.mutate_gzip(data, rng)
    path = tmp_path_factory.mktemp("fuzz") / ("f.gz" if compressed else "f")
    path.write_bytes(data)
    raised, peak = peak_allocation(lambda: read_idx(path, ndim=ndim))
    assert raised is None or isinstance(raised, NpgradError), repr(raised)
    # gzip cannot hold more than 1032 times its length; a plain file holds exactly its length
    holds = 1032 * len(data) if compressed else len(data)
    assert peak <= 2 * holds + (2 << 20)
