"""Mutated IDX files for the fuzz tests, and a runner that loads them under time and memory bounds.

``mutate(rng)`` draws a valid IDX file (labels or images, several dtypes, plain
or gzip) and damages it in its header or payload: bit flips, truncation,
inserted or deleted bytes, dimensions or type changed, gzip members altered or
appended (including members that inflate to megabytes of zeros). Loading the
result may succeed or raise an :class:`~npgrad.errors.NpgradError`; anything
else escaping (ValueError, OverflowError, MemoryError, zlib.error, EOFError...)
is a bug.

Run as a script (``python idx_mutations.py SEED COUNT DIR``), it loads COUNT
mutated files (and mutated four-file datasets) with the address space limited
to what the interpreter already uses plus :data:`MEMORY_BOUND`, each load under
:data:`TIME_BOUND` seconds, and prints one JSON line of counts and failures.
"""

from __future__ import annotations

import gzip
import json
import random
import resource
import signal
import sys
import traceback
from pathlib import Path

import numpy as np

MEMORY_BOUND = 256 << 20  # bytes of address space beyond the interpreter's own
# The payload limit passed to read_idx: an honest header may promise up to this much (and
# the bombs below really inflate to 384 MiB), so with it nothing legitimate needs more than
# MEMORY_BOUND and any MemoryError is a bug.
PAYLOAD_LIMIT = 64 << 20
TIME_BOUND = 5.0  # seconds per load: generous, only a hang or a huge inflate exceeds it

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")  # fmt: skip


def base_arrays(rng: random.Random) -> np.ndarray:
    """A small valid array of one of the IDX types and shapes."""
    kind = rng.choice(["labels", "images", "int32", "int16", "float32", "float64", "int8", "4d"])
    g = np.random.default_rng(rng.randrange(1 << 30))
    if kind == "labels":
        return g.integers(0, 10, rng.randrange(0, 60), dtype=np.uint8)
    if kind == "images":
        return g.integers(0, 256, (rng.randrange(0, 6), 5, 4), dtype=np.uint8)
    if kind == "int32":
        return g.integers(-(2**31), 2**31, rng.randrange(1, 12), dtype=np.int32)
    if kind == "int16":
        return g.integers(-(2**15), 2**15, (3, rng.randrange(1, 5)), dtype=np.int16)
    if kind == "int8":
        return g.integers(-128, 128, (2, 3, 2), dtype=np.int8)
    if kind == "float32":
        return g.standard_normal((rng.randrange(1, 5), 3)).astype(np.float32)
    if kind == "4d":
        return g.integers(0, 256, (2, 2, 3, 2), dtype=np.uint8)
    return g.standard_normal(rng.randrange(1, 7))


def _idx_bytes(array: np.ndarray) -> bytes:
    from npgrad.data import idx_bytes

    return idx_bytes(array)


def mutate_bytes(data: bytes, rng: random.Random, header_bias: bool = True) -> tuple[bytes, str]:
    """One damage to ``data``: (new bytes, what was done)."""
    b = bytearray(data)
    op = rng.choice(["flip", "truncate", "insert", "delete", "dim", "ndim", "type", "extend"])
    if not b and op not in ("insert", "extend"):
        op = "insert"
    header = min(len(b), 16) if header_bias and rng.random() < 0.5 else len(b)
    if op == "flip":
        i = rng.randrange(max(header, 1))
        bit = rng.randrange(8)
        b[i] ^= 1 << bit
        return bytes(b), f"flip bit {bit} of byte {i}"
    if op == "truncate":
        n = rng.randrange(len(b))
        return bytes(b[:n]), f"truncate to {n}"
    if op == "insert":
        i = rng.randrange(len(b) + 1)
        extra = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 17)))
        return bytes(b[:i] + extra + b[i:]), f"insert {extra.hex()} at {i}"
    if op == "delete":
        i = rng.randrange(len(b))
        n = rng.randrange(1, 9)
        return bytes(b[:i] + b[i + n :]), f"delete {n} at {i}"
    if op == "extend":
        n = rng.choice([1, 7, 1000, 1 << 20])
        return bytes(b) + bytes(n), f"append {n} zero bytes"
    if op == "dim" and len(b) >= 8:
        k = rng.randrange(max(1, (min(len(b), 4 + 4 * b[3]) - 4) // 4))
        value = rng.choice([0, 1, 2, 255, 2**16, 2**31, 2**32 - 1, rng.randrange(2**32)])
        b[4 + 4 * k : 8 + 4 * k] = value.to_bytes(4, "big")
        return bytes(b), f"dimension {k} set to {value}"
    if op == "ndim" and len(b) >= 4:
        b[3] = rng.choice([0, 1, 2, 3, 4, 33, 64, 255, rng.randrange(256)])
        return bytes(b), f"ndim byte set to {b[3]}"
    if op == "type" and len(b) >= 3:
        b[2] = rng.choice([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x0A, 0xFF])
        return bytes(b), f"type byte set to 0x{b[2]:02x}"
    return mutate_bytes(data, rng, header_bias)


def mutate_gzip(gz: bytes, rng: random.Random, bombs: bool = True) -> tuple[bytes, str]:
    """Damage a gzip file: its stream, its header or trailer, or what follows the member."""
    b = bytearray(gz)
    ops = ["stream", "flags", "trailer", "member", "garbage", "method"] + ["bomb"] * bombs
    op = rng.choice(ops)
    if op == "stream":
        return mutate_bytes(gz, rng, header_bias=False)
    if op == "flags":
        b[3] = rng.randrange(256)
        return bytes(b), f"gzip FLG byte set to {b[3]}"
    if op == "method":
        b[2] = rng.choice([0, 7, 9, 255])
        return bytes(b), f"gzip method byte set to {b[2]}"
    if op == "trailer":
        i = len(b) - rng.randrange(1, 9)
        b[i] ^= 1 << rng.randrange(8)
        return bytes(b), f"gzip CRC/ISIZE byte {i} flipped"
    if op == "member":
        extra = gzip.compress(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 50))))
        return bytes(b) + extra, "second gzip member appended"
    if op == "bomb":
        n = rng.choice([1, 2, 24])  # 24 x 16 MiB: more than MEMORY_BOUND, if it were inflated
        return bytes(b) + ZEROS_MEMBER * n, f"{n} members of 16 MiB of zeros appended"
    garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
    return bytes(b) + garbage, f"garbage {garbage.hex()} appended"


ZEROS_MEMBER = gzip.compress(bytes(16 << 20), compresslevel=9, mtime=0)


def mutate(rng: random.Random, bombs: bool = True) -> tuple[bytes, bool, str]:
    """A damaged IDX file: (content as stored, gzip?, description)."""
    data = _idx_bytes(base_arrays(rng))
    steps = []
    for _ in range(rng.randrange(1, 4)):
        data, what = mutate_bytes(data, rng)
        steps.append(what)
    compressed = rng.random() < 0.5
    if compressed:
        data = gzip.compress(data, mtime=0)
        if rng.random() < 0.7:
            data, what = mutate_gzip(data, rng, bombs)
            steps.append(what)
    return data, compressed, "; ".join(steps)


class TookTooLong(BaseException):
    """Raised by the alarm: a BaseException, so no ``except Exception`` in npgrad hides it."""


def _alarm(signum, frame):
    raise TookTooLong


def run(seed: int, count: int, directory: Path) -> dict:
    """Load ``count`` mutated files and datasets; count outcomes, collect failures."""
    from npgrad.data import load_dataset, read_idx
    from npgrad.errors import NpgradError

    rng = random.Random(seed)
    counts = {"loaded": 0, "refused": 0}
    failures = []
    signal.signal(signal.SIGALRM, _alarm)
    dataset_dir = directory / "dataset"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        whole_dataset = rng.random() < 0.25
        # load_dataset reads up to read_idx's default limit (1 GiB): no bombs there, as a
        # mutated header may honestly promise what a bomb holds
        data, compressed, what = mutate(rng, bombs=not whole_dataset)
        if whole_dataset:  # one damaged file among four good ones
            g = np.random.default_rng(i)
            good = [g.integers(0, 256, (8, 4, 4), dtype=np.uint8), g.integers(0, 3, 8, np.uint8),
                    g.integers(0, 256, (5, 4, 4), dtype=np.uint8), g.integers(0, 3, 5, np.uint8)]  # fmt: skip
            for stem, array in zip(STEMS, good):  # no fsync: thousands of files
                (dataset_dir / f"{stem}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
            target = dataset_dir / f"{STEMS[i % 4]}.gz"
            target.write_bytes(data if compressed else gzip.compress(data, mtime=0))
        else:
            target = directory / ("case.gz" if compressed else "case")
            target.write_bytes(data)
        signal.setitimer(signal.ITIMER_REAL, TIME_BOUND)
        try:
            if whole_dataset:
                load_dataset(str(dataset_dir), download=False)
            else:
                read_idx(target, ndim=rng.choice([None, 1, 3]), max_bytes=PAYLOAD_LIMIT)
            counts["loaded"] += 1
        except NpgradError:
            counts["refused"] += 1
        except (Exception, TookTooLong) as exc:
            failures.append({"case": i, "mutation": what, "gzip": compressed,
                             "dataset": whole_dataset, "error": repr(exc)[:300],
                             "where": traceback.format_exc().splitlines()[-3:],
                             "head": data[:48].hex()})  # fmt: skip
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return {"seed": seed, "count": count, **counts, "failures": failures[:20],
            "n_failures": len(failures)}  # fmt: skip


def _limit_memory() -> None:
    status = Path("/proc/self/status").read_text()
    vm_kb = int(status.split("VmSize:")[1].split()[0])
    limit = vm_kb * 1024 + MEMORY_BOUND
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


if __name__ == "__main__":
    import npgrad.data  # noqa: F401  (imported before the limit: its size is the baseline)

    ZEROS_MEMBER = ZEROS_MEMBER  # built before the limit too
    _limit_memory()
    seed, count, out_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    print(json.dumps(run(seed, count, out_dir)))
