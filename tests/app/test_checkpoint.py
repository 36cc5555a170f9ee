"""Checkpoint files: round trip, refusals, and fuzzing: only CheckpointError may escape load()."""

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from npgrad.app import checkpoint as ckpt
from npgrad.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[2]
# Mutations per CI run (the whole file stays under ~10 s); NPGRAD_FUZZ_EXAMPLES=30000 (and
# NPGRAD_FUZZ_SEED) for a longer local run.
EXAMPLES = int(os.environ.get("NPGRAD_FUZZ_EXAMPLES", "600"))
SEED = os.environ.get("NPGRAD_FUZZ_SEED", "0")


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """A checkpoint written by the trainer: weights, Adam state, RNG state, config, history."""
    from npgrad.cli import main

    out = tmp_path_factory.mktemp("ckpt") / "run"
    argv = ["train", "-d", "digits", "--hidden", "16", "-e", "1", "-o", str(out), "--quiet"]
    assert main(argv) == 0
    return out / "checkpoint.npz"


# ----------------------------------------------------------------- round trip and refusals


def test_round_trip(tmp_path):
    p = {"w": np.arange(6.0).reshape(2, 3), "f": np.asfortranarray(np.eye(3, dtype=np.float32))}
    o = {"steps": np.array(4)}
    path = ckpt.save(tmp_path / "c.npz", p, o, {"epoch": 2, "config": {"a": 1}})
    params, opt, meta = ckpt.load(path)
    assert np.array_equal(params["w"], p["w"]) and params["f"].dtype == np.float32
    assert np.array_equal(params["f"], p["f"]) and int(opt["steps"]) == 4
    assert meta == {"epoch": 2, "config": {"a": 1}}
    params["w"][0, 0] = 7  # writable, as the trainer updates weights in place
    assert not list(tmp_path.glob("*.part"))


def test_a_run_directory_stands_for_its_checkpoint(real_checkpoint):
    params, _, meta = ckpt.load(real_checkpoint.parent)
    assert meta["image_shape"] == [8, 8] and params


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        **{"meta/format": np.array(ckpt.FORMAT), "param/w": np.array([{"x": 1}], dtype=object)},
    )
    with pytest.raises(CheckpointError, match="pickled objects"):
        ckpt.load(path)


def test_tampered_checkpoint_is_refused(tmp_path):
    path = ckpt.save(tmp_path / "c.npz", {"w": np.zeros(3)}, {}, {"epoch": 1})
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["param/w"] = np.ones(3)  # same shape, different weights, digest not updated
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="does not match its digest"):
        ckpt.load(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a zip archive"),
        (b"hello", "not a zip archive"),
        (b"PK\x05\x06" + bytes(18), "not an npgrad checkpoint"),
    ],
)
def test_corrupt_checkpoint_files(tmp_path, content, match):
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        ckpt.load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        ckpt.load(tmp_path / "none.npz")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        ckpt.load(tmp_path)  # a directory without checkpoint.npz


def test_a_missing_run_names_the_runs_beside_it_or_how_to_make_one(tmp_path):
    with pytest.raises(CheckpointError, match="train one first: npgrad train -o RUN"):
        ckpt.load(tmp_path / "runs" / "mnist-default")
    for name in ("b-run", "a-run"):
        ckpt.save(tmp_path / "runs" / name / "checkpoint.npz", {"w": np.zeros(1)}, {}, {})
    (tmp_path / "runs" / "not-a-run").mkdir()
    for missing in ("mnist-default", "mnist-default/checkpoint.npz"):
        with pytest.raises(CheckpointError) as info:
            ckpt.load(tmp_path / "runs" / missing)
        runs = tmp_path / "runs"
        assert str(info.value).endswith(f"; runs in {runs}: {runs / 'a-run'}, {runs / 'b-run'}")


def test_truncated_checkpoint(tmp_path):
    path = ckpt.save(tmp_path / "c.npz", {"w": np.zeros(1000)}, {}, {"epoch": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        ckpt.load(path)


def test_foreign_npz_is_not_a_checkpoint(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match="not an npgrad checkpoint"):
        ckpt.load(tmp_path / "x.npz")


def _entries(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_compressed_entries_are_refused_before_inflating(real_checkpoint, tmp_path):
    """A decompression bomb: 16 MB of zeros in a 40 kB file, digest and all valid."""
    arrays = _entries(real_checkpoint)
    arrays["optim/bomb"] = np.zeros(2_000_000)
    del arrays["meta/digest"]
    arrays["meta/digest"] = np.array(ckpt._digest(arrays))
    np.savez_compressed(tmp_path / "bomb.npz", **arrays)
    assert (tmp_path / "bomb.npz").stat().st_size < 100_000
    with pytest.raises(CheckpointError, match="is compressed .zip method 8.; npgrad stores"):
        ckpt.load(tmp_path / "bomb.npz")


def test_a_huge_declared_size_is_refused_before_reading(real_checkpoint, tmp_path):
    data = bytearray(real_checkpoint.read_bytes())
    for sig, field in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size
        at = data.find(sig)
        struct.pack_into("<I", data, at + field, 0xFFFFFFF0)
    (tmp_path / "c.npz").write_bytes(bytes(data))
    info = zipfile.ZipFile(tmp_path / "c.npz").infolist()[0]
    assert info.file_size == 0xFFFFFFF0
    with pytest.raises(CheckpointError, match="declares 4294967280 bytes"):
        ckpt.load(tmp_path / "c.npz")


def test_an_npy_header_promising_more_than_the_entry_holds(tmp_path):
    """Read without allocating: a header of 10**12 float64 in a 200-byte entry (CRC valid)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    with zipfile.ZipFile(tmp_path / "c.npz", "w") as zf:
        zf.writestr("param/w.npy", header.getvalue() + bytes(80))
    with pytest.raises(CheckpointError, match=r"declares shape \(1000000000000,\) of float64"):
        ckpt.load(tmp_path / "c.npz")


@pytest.mark.parametrize(
    "text",
    [
        b"{b'descr': '<f8', 'fortran_order': False, 'shape': (10,), }",  # TypeError in NumPy
        b"{'descr': '<f8', 'fortran_order': False, 'shape': ((10,), }",  # tokenize.TokenError
    ],
)
def test_npy_headers_numpy_fails_to_parse_with_other_errors(tmp_path, text):
    """Found by the long fuzz runs (seed 1, example 11463; the image fuzz)."""
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + text.ljust(117) + b"\n" + bytes(80)
    with zipfile.ZipFile(tmp_path / "c.npz", "w") as zf:
        zf.writestr("param/w.npy", npy)
    with pytest.raises(CheckpointError, match="unreadable .npy header"):
        ckpt.load(tmp_path / "c.npz")


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("param/w", np.array(["text"]), "holds <U4 values, not numbers"),
        ("meta/epoch", np.array(1.5), "metadata meta/epoch is not valid JSON text"),
        ("meta/epoch", np.array("[" * 100_000), "metadata meta/epoch is not valid JSON text"),
    ],
)
def test_well_signed_but_wrong_entries_are_refused(tmp_path, name, value, match):
    """The digest is no signature: anyone can write one, so types are checked too."""
    arrays = {"meta/format": np.array(ckpt.FORMAT), "param/w": np.zeros(2)}
    arrays[name] = value
    arrays["meta/digest"] = np.array(ckpt._digest(arrays))
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(CheckpointError, match=match):
        ckpt.load(tmp_path / "c.npz")


# ----------------------------------------------------------------- fuzzing

LOCAL = {"version": (4, "<H"), "flags": (6, "<H"), "method": (8, "<H"), "crc": (14, "<I"),
         "compressed": (18, "<I"), "size": (22, "<I"), "name length": (26, "<H"),
         "extra length": (28, "<H")}  # fmt: skip
CENTRAL = {"method": (10, "<H"), "flags": (8, "<H"), "crc": (16, "<I"), "compressed": (20, "<I"),
           "size": (24, "<I"), "name length": (28, "<H"), "extra length": (30, "<H"),
           "comment length": (32, "<H"), "offset": (42, "<I")}  # fmt: skip
END = {"entries": (10, "<H"), "directory size": (12, "<I"), "directory offset": (16, "<I")}
RECORDS = {b"PK\x03\x04": ("local", LOCAL), b"PK\x01\x02": ("central", CENTRAL),
           b"PK\x05\x06": ("end", END)}  # fmt: skip
SPECIAL = [0, 1, 2, 8, 12, 14, 99, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
OLD_TOKENS = [b"'<f4'", b"'<f8'", b"'<i8'", b"'<U", b"False", b"True", b"(", b")", b",",
              b"'descr'", b"'shape'", b"'fortran_order'", b"{", b"}"]  # fmt: skip
NEW_TOKENS = [b"'|O'", b"'<U99999999'", b"'<f16'", b"(99999999999999999999,)", b"(-1,)",
              b"(10**9, 10**9)", b"'V8'", b"None", b"", b"'<c16'", b"[", b"'<f4", b"((",
              b"1e9", b"(4294967296, 4294967296)", b"'|S0'"]  # fmt: skip


def find_all(data, token):
    at, out = data.find(token), []
    while at >= 0:
        out.append(at)
        at = data.find(token, at + 1)
    return out


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One seeded mutation of header or payload bytes; returns the bytes and what was done."""
    b = bytearray(data)
    kind = str(rng.choice(["bit flips", "overwrite", "truncate", "insert", "delete",
                           "zip field", "npy header byte", "npy header token"]))  # fmt: skip
    if kind == "bit flips":
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
    elif kind == "overwrite":
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(len(b))] = int(rng.choice([0, 0xFF, 0x7F, 0x80, rng.integers(256)]))
    elif kind == "truncate":
        b = b[: rng.integers(len(b))]
    elif kind == "insert":
        at = rng.integers(len(b) + 1)
        b[at:at] = rng.bytes(int(rng.integers(1, 9)))
    elif kind == "delete":
        at = rng.integers(len(b))
        del b[at : at + rng.integers(1, 9)]
    elif kind == "zip field":
        records = [(sig, at) for sig in RECORDS for at in find_all(data, sig)]
        sig, at = records[rng.integers(len(records))]
        record, fields = RECORDS[sig]
        field = list(fields)[rng.integers(len(fields))]
        offset, fmt = fields[field]
        bits = 8 * struct.calcsize(fmt)
        value = int(rng.choice(SPECIAL)) if rng.random() < 0.7 else int(rng.integers(0, 1 << bits))
        struct.pack_into(fmt, b, at + offset, value & ((1 << bits) - 1))
        kind = f"{record} {field} = {value}"
    elif kind == "npy header byte":
        headers = find_all(data, b"\x93NUMPY")
        at = headers[rng.integers(len(headers))] + rng.integers(128)
        b[min(at, len(b) - 1)] = rng.integers(32, 127)
    else:
        at = find_all(data, b"\x93NUMPY")
        start = at[rng.integers(len(at))]
        header = data[start : data.find(b"\n", start)]
        old, new = (
            OLD_TOKENS[rng.integers(len(OLD_TOKENS))],
            NEW_TOKENS[rng.integers(len(NEW_TOKENS))],
        )
        if old in header:
            i = start + header.index(old)
            b[i : i + len(old)] = new
        kind = f"npy header {old!r} -> {new!r}"
    return bytes(b), kind


def fuzz(checkpoint: str, workdir: str, examples: str, seed: str) -> None:
    """Child process: load ``examples`` mutations under a memory and a time bound.

    Prints a JSON summary; any exception other than CheckpointError (MemoryError
    from the address-space limit, TimeoutError from the alarm included) is
    printed with the mutation that caused it, and the exit status is 1.
    """
    import resource
    import signal
    import traceback

    def timeout(signum, frame):
        raise TimeoutError("load took more than 10 s")

    signal.signal(signal.SIGALRM, timeout)
    data = Path(checkpoint).read_bytes()
    original = ckpt.load(checkpoint)
    with open("/proc/self/statm") as f:  # address space in use now, in pages
        used = int(f.read().split()[0]) * resource.getpagesize()
    limit = used + 256 * 2**20  # 256 MiB more: a 25 kB checkpoint needs a few kB
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    rng = np.random.default_rng(int(seed))
    path = Path(workdir) / "mutated.npz"
    counts = {"loaded": 0, "refused": 0}
    for i in range(int(examples)):
        mutated, kind = mutate(data, rng)
        path.write_bytes(mutated)
        signal.alarm(10)
        try:
            loaded = ckpt.load(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc), str(exc)
            counts["refused"] += 1
            continue
        except BaseException:
            print(f"example {i} (seed {seed}): {kind}: only CheckpointError may escape")
            traceback.print_exc(file=sys.stdout)
            sys.exit(1)
        finally:
            signal.alarm(0)
        # Whatever loads is exactly the original: the mutation touched nothing that counts.
        for got, want in zip(loaded[:2], original[:2]):
            assert got.keys() == want.keys()
            assert all(np.array_equal(got[k], want[k]) for k in got), kind
        assert loaded[2] == original[2], kind
        counts["loaded"] += 1
    print(json.dumps({"examples": int(examples), **counts}))


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="memory bound needs Linux")
def test_mutated_checkpoints_raise_only_checkpoint_error(real_checkpoint, tmp_path):
    code = "import sys; from tests.app.test_checkpoint import fuzz; fuzz(*sys.argv[1:])"
    args = [str(real_checkpoint), str(tmp_path), str(EXAMPLES), SEED]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60 + EXAMPLES // 10)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["examples"] == EXAMPLES and summary["refused"] > EXAMPLES // 2, summary


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p, o, m: m.update(rng="x"), "metadata rng"),
        (lambda p, o, m: m.update(history="x"), "metadata history"),
        (lambda p, o, m: m.update(image_shape=[0, 28]), "metadata image_shape"),
        (lambda p, o, m: m.update(image_shape=[28]), "metadata image_shape"),
        (lambda p, o, m: m.update(pixel_max="x"), "metadata pixel_max"),
        (lambda p, o, m: o.update(steps=np.array(-1)), "step count"),
        (lambda p, o, m: o.update(steps=np.array(np.nan)), "step count"),
        (lambda p, o, m: m.update(pixel_max=10**400), "metadata pixel_max"),
    ],
)
def test_metadata_of_the_wrong_kind_is_refused_even_with_a_valid_digest(tmp_path, edit, match):
    from npgrad.cli import main

    run = tmp_path / "run"
    assert main(["train", "-d", "digits", "-e", "1", "-o", str(run), "-q"]) == 0
    params, optim, meta = ckpt.load(run)
    edit(params, optim, meta)
    ckpt.save(tmp_path / "checkpoint.npz", params, optim, meta)  # a digest that matches
    with pytest.raises(CheckpointError, match=match):
        ckpt.load(tmp_path)


def test_a_run_folder_named_checkpoint_npz_reads_back(tmp_path):
    from npgrad.cli import main

    run = tmp_path / "checkpoint.npz"
    assert main(["train", "-d", "digits", "-e", "1", "-o", str(run), "-q"]) == 0
    assert ckpt.load(run)[2]["epoch"] == 1
