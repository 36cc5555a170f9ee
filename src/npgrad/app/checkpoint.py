"""Checkpoints: one ``.npz`` of plain arrays, written atomically, read without pickle.

Layout: ``param/<name>`` (weights), ``optim/<key>`` (optimizer state) and
``meta/<key>`` (epoch, configuration and history as JSON text, RNG state).
``meta/digest`` is a SHA-256 over every other entry's name, dtype, shape and
bytes, so a modified or damaged file is refused rather than half-loaded.
Entries are stored uncompressed and every declared size is checked against
the file before anything is allocated, so no damaged or hostile file can make
:func:`load` use more memory than the file's size, or raise anything but
:class:`~npgrad.errors.CheckpointError` (fuzzed in ``tests/app/test_checkpoint.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tokenize
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..fileio import atomic_write

FORMAT = "npgrad-checkpoint-1"


# Everything the zip and .npy readers raise on damaged bytes (the fuzz tests in
# tests/app/test_checkpoint.py find these): turned into CheckpointError by load().
_DAMAGE = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    SyntaxError,
    OverflowError,
    struct.error,
    zipfile.BadZipFile,
)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(
    path: str | os.PathLike,
    params: dict[str, np.ndarray],
    optim: dict[str, np.ndarray],
    meta: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically: a reader sees the old file or the new, never half."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optim.items()})
    arrays["meta/format"] = np.array(FORMAT)
    for k, v in meta.items():
        arrays[f"meta/{k}"] = np.array(json.dumps(v))
    arrays["meta/digest"] = np.array(_digest(arrays))
    with atomic_write(path) as f:
        # allow_pickle=True is the default: named, NumPy's stubs cannot take **arrays for it
        np.savez(f, allow_pickle=True, **arrays)
    return path


def _runs_beside(path: Path) -> str:
    """What to do instead of a run that is not there: the runs that are, or how to make one."""
    folder = path.parent.parent if path.name == "checkpoint.npz" else path.parent
    try:
        runs = sorted(str(d) for d in folder.iterdir() if (d / "checkpoint.npz").is_file())
    except OSError:
        runs = []
    if runs:
        shown = ", ".join(runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
        return f"runs in {folder}: {shown}"
    return "train one first: npgrad train -o RUN (offline: npgrad train -d digits)"


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Read ``(params, optim, meta)``; any defect raises :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        if path.name == "checkpoint.npz" and not (path / "checkpoint.npz").is_file():
            raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
        path = path / "checkpoint.npz"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; {_runs_beside(path)}")
    try:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: corrupt or not an npz checkpoint (not a zip archive)")
        arrays = _read_arrays(path)
    except CheckpointError:
        raise
    except _DAMAGE as exc:
        reason = _printable(str(exc))[:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or not an npz checkpoint ({reason})") from None
    if arrays.get("meta/format") is None or str(arrays["meta/format"]) != FORMAT:
        raise CheckpointError(f"{path}: not an npgrad checkpoint (no {FORMAT} marker)")
    digest = arrays.pop("meta/digest", None)
    if digest is None or str(digest) != _digest(arrays):
        raise CheckpointError(f"{path}: content does not match its digest (modified or damaged)")
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    optim = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    for name, a in arrays.items():
        if not name.startswith("meta/") and a.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: entry {name} holds {a.dtype} values, not numbers")
    meta = {}
    for k, v in arrays.items():
        if k.startswith("meta/") and k != "meta/format":
            try:
                if v.dtype.kind != "U" or v.shape != ():
                    raise ValueError(f"{v.dtype} array of shape {v.shape}")
                meta[k[5:]] = json.loads(str(v))
            except (ValueError, RecursionError):
                raise CheckpointError(f"{path}: metadata {k} is not valid JSON text") from None
    _check_meta(path, meta, optim)
    return params, optim, meta


def _is_count(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) < 2**63  # JSON ints have no bound; a float of 10**400 overflows
    return isinstance(v, float) and math.isfinite(v)


def _check_meta(path: Path, meta: dict, optim: dict[str, np.ndarray]) -> None:
    """The metadata the commands read, each of the type they expect: a file that passes its
    digest but was written by other code must still fail here, in one line, not deep inside."""
    checks = {
        "image_shape": lambda v: (
            isinstance(v, list)
            and len(v) == 2  # (height, width)
            and all(_is_count(n, 1) for n in v)
        ),
        "classes": lambda v: isinstance(v, list) and len(v) >= 1,
        "pixel_max": lambda v: _is_number(v) and v > 0,
        "epoch": _is_count,
        "history": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
        "rng": lambda v: isinstance(v, dict),
        "config": lambda v: isinstance(v, dict),
        "partial": lambda v: isinstance(v, dict),
        "rank_rngs": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
    }
    for key, ok in checks.items():
        if key in meta and not ok(meta[key]):
            raise CheckpointError(
                f"{path}: metadata {key} = {_printable(repr(meta[key]))[:80]} is not what npgrad "
                "writes; use a checkpoint written by 'npgrad train'"
            )
    steps = optim.get("steps")
    if steps is not None and (steps.size != 1 or steps.dtype.kind not in "iu" or steps.item() < 0):
        raise CheckpointError(f"{path}: optimizer step count {steps.tolist()} is not a count >= 0")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every entry of the archive, its size checked before anything is allocated.

    npgrad (``numpy.savez``) stores entries uncompressed, so each entry's data
    is at most the file's own size: nothing is ever inflated, no decompression
    bomb can pass, and a declared size that does not fit the file is damage.
    """
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            name = _printable(info.filename)
            if info.flag_bits & 0x1:
                raise CheckpointError(
                    f"{path}: entry {name} is encrypted; not an npgrad checkpoint"
                )
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(
                    f"{path}: entry {name} is compressed (zip method {info.compress_type}); npgrad "
                    "stores checkpoints uncompressed: damaged, or not written by npgrad"
                )
            if info.file_size != info.compress_size or info.file_size > size:
                raise CheckpointError(
                    f"{path}: entry {name} declares {info.file_size} bytes, "
                    f"{info.compress_size} stored, in a file of {size} (damaged)"
                )
            if not info.filename.endswith(".npy"):
                raise CheckpointError(f"{path}: entry {name} is not an array; not a checkpoint")
        if sum(info.compress_size for info in infos) > size:
            raise CheckpointError(
                f"{path}: entries declare more bytes than the file holds (damaged)"
            )
        return {info.filename[:-4]: _read_entry(path, zf, info) for info in infos}


def _printable(text: str) -> str:
    """A name or reason from a damaged file, safe to print on one line of a terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the .npy stream ``f``; ValueError if damaged.

    NumPy's parser raises TypeError, SyntaxError or tokenize.TokenError, not
    ValueError, on some damaged headers (found by the fuzz tests: a key written
    as bytes, an unclosed bracket); they all mean the same here.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
    except (TypeError, SyntaxError, tokenize.TokenError) as exc:
        raise ValueError(f"unreadable .npy header ({exc})") from None
    raise ValueError(f".npy format version {version} is not supported")


def _read_entry(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy entry: header parsed, object arrays refused, data length checked, then read."""
    with zf.open(info) as f:
        shape, fortran, dtype = npy_header(f)
        if dtype.hasobject:
            raise CheckpointError(
                f"{path}: contains pickled objects; npgrad never loads pickles (unsafe)"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if min(shape, default=0) < 0 or nbytes > info.file_size:
            raise ValueError(f"an entry declares shape {shape} of {dtype}, more than it holds")
        data = f.read(nbytes + 1)  # one more: reaches the end, so zipfile checks the CRC
    if len(data) != nbytes:
        raise ValueError(f"an entry holds {len(data)} bytes, its header says {nbytes}")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy(order="K")
