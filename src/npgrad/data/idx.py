"""The IDX file format of MNIST and Fashion-MNIST: strict reading and writing.

An IDX file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, then ``NDIM``
big-endian uint32 dimensions, then the payload in C order. MNIST uses type
0x08 (unsigned byte): labels are 1-D (magic 2049), images 3-D (magic 2051).
Files may be gzip-compressed (detected from the content, not the name).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import IDXFormatError
from ..fileio import write_bytes

# type byte -> big-endian dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, decompressed when it is gzip (judged by its first bytes)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IDXFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise IDXFormatError(f"{path}: is a directory, expected an IDX file") from None
    except PermissionError:
        raise IDXFormatError(f"{path}: permission denied") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    if path.suffix == ".gz":
        if not raw:
            raise IDXFormatError(f"{path}: file is empty")
        raise IDXFormatError(f"{path}: named .gz but is not gzip-compressed")
    return raw


def parse_idx(data: bytes, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into an array, validating header, dimensions and length."""
    if not data:
        raise IDXFormatError(f"{name}: file is empty")
    if len(data) < 4:
        raise IDXFormatError(f"{name}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise IDXFormatError(
            f"{name}: not an IDX file (magic number starts with {data[:2].hex()}, expected 0000)"
        )
    type_byte, nd = data[2], data[3]
    if type_byte not in IDX_TYPES:
        raise IDXFormatError(f"{name}: unknown IDX data type byte 0x{type_byte:02x}")
    if ndim is not None and nd != ndim:
        kind = {1: "labels (magic 2049)", 3: "images (magic 2051)"}.get(ndim, f"{ndim}-D")
        raise IDXFormatError(
            f"{name}: has {nd} dimension(s) (magic {int.from_bytes(data[:4], 'big')}), "
            f"expected {kind}"
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise IDXFormatError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    dtype = IDX_TYPES[type_byte]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise IDXFormatError(
            f"{name}: {what}: dimensions {shape} need {expected} bytes, file has {len(data)}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True) if dtype.itemsize > 1 else arr.copy()


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip or not). ``ndim`` (1 labels, 3 images) is enforced if given."""
    return parse_idx(read_bytes(path), str(path), ndim)


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise an array as IDX bytes."""
    array = np.asarray(array)
    matches = [
        (code, dt)
        for code, dt in IDX_TYPES.items()
        if dt.kind == array.dtype.kind and dt.itemsize == array.dtype.itemsize
    ]
    if not matches:
        raise IDXFormatError(f"IDX cannot store dtype {array.dtype}")
    code, dt = matches[0]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=dt).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as IDX, gzip-compressed if ``compress`` (default: name ends in .gz).

    The file is written to a temporary name and moved into place, so a reader
    never sees half a file.
    """
    path = Path(path)
    data = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    return write_bytes(path, data)
