"""The safetensors file format, written and read with NumPy alone.

A safetensors file is an 8-byte little-endian unsigned header length ``n``,
``n`` bytes of UTF-8 JSON, then the tensors' raw little-endian bytes. The
header maps each tensor's name to ``{"dtype", "shape", "data_offsets"}``
(offsets relative to the end of the header) and may hold string metadata
under ``"__metadata__"``. The format holds no code, so reading one is safe if
the reader believes nothing it has not checked: :func:`load` checks the
header's size against the file before reading it, every dtype, shape and
offset, that each tensor's bytes are exactly its shape's, and that the tensors
tile the data section with no overlap, no gap and nothing after the last one
(as the reference implementation requires). Any defect is a
:class:`~npgrad.errors.SafetensorsError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import SafetensorsError
from ..fileio import write_bytes

__all__ = ["DTYPES", "dumps", "loads", "save", "load", "MAX_HEADER"]

# The format's dtype names and NumPy's little-endian types. BF16 and the FP8
# types have no NumPy equivalent: refused with a clear message, never misread.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}
MAX_HEADER = 100_000_000  # the reference implementation's limit on the JSON header
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def dumps(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors bytes of ``tensors`` (stored in the given order) and string ``metadata``."""
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise SafetensorsError(f"metadata keys and values must be strings: {bad[:3]}")
        header["__metadata__"] = dict(metadata)
    chunks, offset = [], 0
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise SafetensorsError(f"tensor name {name!r} is not allowed")
        a = np.asarray(value)
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dtype not in _NAMES:
            raise SafetensorsError(f"tensor {name!r}: {a.dtype} has no safetensors dtype")
        raw = np.ascontiguousarray(a, dtype=dtype).tobytes()
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data then starts 8-byte aligned, as the reference pads
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save(
    path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` and ``metadata`` to ``path`` atomically."""
    return write_bytes(path, dumps(tensors, metadata))


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, every part of it checked first."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(
                    f"{p}: {size} bytes is too short for a safetensors file (8-byte header length)"
                )
            n = struct.unpack("<Q", head)[0]
            _check_header_size(p, n, size)
            header = f.read(n)
            data = f.read(size - 8 - n + 1)
    except FileNotFoundError:
        raise SafetensorsError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise SafetensorsError(f"{p}: is a directory, not a safetensors file") from None
    except OSError as exc:
        raise SafetensorsError(f"{p}: cannot read this file ({exc.strerror})") from None
    return _parse(str(p), header, data)


def loads(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` from safetensors bytes, checked as :func:`load` checks a file."""
    if len(blob) < 8:
        raise SafetensorsError(f"{len(blob)} bytes is too short for safetensors data")
    n = struct.unpack("<Q", blob[:8])[0]
    _check_header_size("safetensors data", n, len(blob))
    return _parse("safetensors data", blob[8 : 8 + n], blob[8 + n :])


def _check_header_size(name: object, n: int, size: int) -> None:
    if n == 0 or n > MAX_HEADER:
        raise SafetensorsError(
            f"{name}: header length {n} is outside 1..{MAX_HEADER} bytes (not a safetensors file?)"
        )
    if n > size - 8:
        raise SafetensorsError(
            f"{name}: header length {n} is more than the {size - 8} bytes after it "
            "(truncated, or not a safetensors file)"
        )


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise SafetensorsError(f"key {key!r} appears twice in the header")
        out[key] = value
    return out


def _parse(name: str, header: bytes, data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        parsed = json.loads(header.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError as exc:
        raise SafetensorsError(f"{name}: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SafetensorsError(f"{name}: header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise SafetensorsError(f"{name}: header is JSON {type(parsed).__name__}, not an object")
    metadata = parsed.pop("__metadata__", None)
    if metadata is None:  # null is no metadata, as the reference reads it; [] or 0 is refused
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{name}: __metadata__ must map strings to strings")
    entries = []
    for key, entry in parsed.items():
        entries.append((_entry(name, key, entry), key))
    entries.sort(key=lambda e: (e[0][0], e[0][1]))
    end = 0
    for (begin, stop, _, _), key in entries:
        if begin < end:
            raise SafetensorsError(f"{name}: tensor {key!r} overlaps the one before it")
        if begin > end:
            raise SafetensorsError(f"{name}: {begin - end} unused bytes before tensor {key!r}")
        end = stop
    if len(data) != end:
        what = "missing" if len(data) < end else "left over"
        raise SafetensorsError(
            f"{name}: the tensors need {end} bytes of data, the file has {len(data)} "
            f"({abs(len(data) - end)} {what}; truncated or damaged)"
        )
    tensors = {}
    for (begin, stop, dtype, shape), key in entries:
        a = np.frombuffer(data, dtype, count=(stop - begin) // dtype.itemsize, offset=begin)
        tensors[key] = a.reshape(shape).astype(dtype.newbyteorder("="), copy=True)
    order = {key: i for i, key in enumerate(parsed)}
    return dict(sorted(tensors.items(), key=lambda kv: order[kv[0]])), dict(metadata)


def _entry(name: str, key: str, entry: object) -> tuple[int, int, np.dtype, tuple[int, ...]]:
    where = f"{name}: tensor {key!r}"
    # Other keys are ignored, as the reference implementation ignores them.
    if not isinstance(entry, dict) or not _ENTRY_KEYS <= set(entry):
        raise SafetensorsError(f"{where}: entry must have dtype, shape and data_offsets")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:  # a list is not hashable
        raise SafetensorsError(
            f"{where}: dtype {dtype_name!r} is not supported (use one of {', '.join(DTYPES)})"
        )
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise SafetensorsError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise SafetensorsError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
    begin, stop = offsets
    if stop < begin:
        raise SafetensorsError(f"{where}: data_offsets {offsets} end before they begin")
    dtype = DTYPES[dtype_name]
    need = math.prod(shape) * dtype.itemsize
    if stop - begin != need:
        raise SafetensorsError(
            f"{where}: data_offsets {offsets} hold {stop - begin} bytes, but shape {shape} "
            f"of {dtype_name} needs {need}"
        )
    return begin, stop, dtype, tuple(shape)


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
