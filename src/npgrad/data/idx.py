"""The IDX file format of MNIST and Fashion-MNIST: strict, bounded reading and writing.

An IDX file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, then ``NDIM``
big-endian uint32 dimensions, then the payload in C order. MNIST uses type
0x08 (unsigned byte): labels are 1-D (magic 2049), images 3-D (magic 2051).
Files may be gzip-compressed (detected from the content, not the name).

Nothing in a file is trusted before it is checked. The header is read first
and the payload size computed with Python integers (no overflow), then
compared with what the file can hold: the exact length of a plain file, or at
most :data:`GZIP_MAX_RATIO` times the length of a gzip file (deflate cannot
compress more than that). A gzip stream is then inflated only up to the
promised payload plus one byte, which detects trailing data: a small file that
inflates to gigabytes is refused after a few kilobytes. Memory grows with the
data actually read, never with what a header merely claims.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path
from typing import IO, Protocol

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
# Deflate emits at best 2 bits per 258-byte match, so no gzip file inflates to
# more than 1032 times its own length.
GZIP_MAX_RATIO = 1032
# Refuse payloads above this unless the caller raises it: 21 times full MNIST.
MAX_BYTES = 1 << 30
_CHUNK = 1 << 20  # inflate and copy in 1 MiB steps
_FIRST_BUFFER = 16 << 20  # grown by doubling beyond this, as data really arrives
_MAX_DIMS = 32


class _Reader(Protocol):
    """What the parser reads from: a file, a GzipFile over one, or BytesIO."""

    def read(self, size: int, /) -> bytes: ...


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise IDXFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise IDXFormatError(f"{path}: is a directory, expected an IDX file") from None
    except PermissionError:
        raise IDXFormatError(f"{path}: permission denied") from None
    except OSError as exc:
        raise IDXFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read(f: _Reader, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the data)."""
    parts, got = [], 0
    while got < n:
        part = f.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _header(f: _Reader, name: str, ndim: int | None) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read and check the magic number and dimensions: (dtype, shape, header length)."""
    magic = _read(f, 4)
    if not magic:
        raise IDXFormatError(f"{name}: file is empty")
    if len(magic) < 4:
        raise IDXFormatError(f"{name}: {len(magic)} bytes is too short for an IDX header")
    if magic[0] != 0 or magic[1] != 0:
        raise IDXFormatError(
            f"{name}: not an IDX file (magic number starts with {magic[:2].hex()}, expected 0000)"
        )
    type_byte, nd = magic[2], magic[3]
    if type_byte not in IDX_TYPES:
        raise IDXFormatError(f"{name}: unknown IDX data type byte 0x{type_byte:02x}")
    if ndim is not None and nd != ndim:
        kind = {1: "labels (magic 2049)", 3: "images (magic 2051)"}.get(ndim, f"{ndim}-D")
        raise IDXFormatError(
            f"{name}: has {nd} dimension(s) (magic {int.from_bytes(magic, 'big')}), expected {kind}"
        )
    if nd > _MAX_DIMS:
        raise IDXFormatError(f"{name}: {nd} dimensions in the header; at most {_MAX_DIMS} are read")
    header = 4 + 4 * nd
    dims = _read(f, 4 * nd)
    if len(dims) < 4 * nd:
        raise IDXFormatError(f"{name}: truncated header ({4 + len(dims)} of {header} bytes)")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(nd))
    return IDX_TYPES[type_byte], shape, header


def _payload_size(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
    """(payload bytes, the same with zero dimensions counted as 1) in Python ints: no overflow.

    The second is what NumPy needs to address, even for an array with no elements.
    """
    return dtype.itemsize * math.prod(shape), dtype.itemsize * math.prod(max(d, 1) for d in shape)


def _read_payload(
    f: _Reader, nbytes: int, name: str, shape: tuple[int, ...], header: int
) -> np.ndarray:
    """Exactly ``nbytes`` from ``f`` into a uint8 array that grows only as data arrives.

    The array starts at 16 MiB at most and doubles as needed, so memory follows
    the data actually inflated, not the size a header claims.
    """
    buf = np.empty(min(nbytes, _FIRST_BUFFER), np.uint8)
    got = 0
    while got < nbytes:
        part = f.read(min(_CHUNK, nbytes - got))
        if not part:
            raise IDXFormatError(
                f"{name}: truncated: dimensions {shape} need {header + nbytes} bytes, "
                f"content has {header + got}"
            )
        if got + len(part) > len(buf):
            # realloc, which large blocks do in place (mremap): no second copy
            buf.resize(min(nbytes, 2 * len(buf)), refcheck=False)
        buf[got : got + len(part)] = np.frombuffer(part, np.uint8)
        got += len(part)
    if f.read(1):
        raise IDXFormatError(
            f"{name}: has trailing bytes: dimensions {shape} need {header + nbytes} bytes, "
            "content is longer"
        )
    return buf


def _parse_stream(
    f: _Reader,
    name: str,
    ndim: int | None,
    length: int,
    compressed: bool,
    max_bytes: int,
) -> np.ndarray:
    """Parse IDX from ``f``; ``length`` is the stored length (compressed or not)."""
    dtype, shape, header = _header(f, name, ndim)
    nbytes, span = _payload_size(shape, dtype)
    expected = header + nbytes
    if not compressed and expected != length:
        what = "truncated" if length < expected else "has trailing bytes"
        raise IDXFormatError(
            f"{name}: {what}: dimensions {shape} need {expected} bytes, file has {length}"
        )
    if compressed and expected > GZIP_MAX_RATIO * length:
        raise IDXFormatError(
            f"{name}: truncated or corrupt header: dimensions {shape} need {expected} bytes, "
            f"more than a {length}-byte gzip file can hold"
        )
    if span > max_bytes:
        raise IDXFormatError(
            f"{name}: dimensions {shape} need {span:,} bytes, above the limit of "
            f"{max_bytes:,} (pass max_bytes= to read_idx to allow more)"
        )
    raw = _read_payload(f, nbytes, name, shape, header)
    native = dtype.newbyteorder("=")
    if native != dtype:
        raw.view(dtype).byteswap(inplace=True)  # in place: no second copy of the payload
    return raw.view(native).reshape(shape)


def parse_idx(
    data: bytes, name: str = "<bytes>", ndim: int | None = None, max_bytes: int = MAX_BYTES
) -> np.ndarray:
    """Parse IDX bytes (not compressed) into an array, validating header, dimensions, length."""
    return _parse_stream(io.BytesIO(data), name, ndim, len(data), False, max_bytes)


def read_idx(
    path: str | os.PathLike, ndim: int | None = None, max_bytes: int = MAX_BYTES
) -> np.ndarray:
    """Read an IDX file (gzip or not). ``ndim`` (1 labels, 3 images) is enforced if given.

    Every defect is an :class:`IDXFormatError` naming the file; memory use is
    bounded by the data really present (and by ``max_bytes`` for the payload).
    """
    path = Path(path)
    name = str(path)
    with _open(path) as f:
        try:
            length = os.fstat(f.fileno()).st_size
            compressed = f.read(2) == GZIP_MAGIC
            f.seek(0)
        except OSError as exc:
            raise IDXFormatError(f"{name}: cannot be read ({exc.strerror or exc})") from None
        if not compressed:
            if path.suffix == ".gz":
                if not length:
                    raise IDXFormatError(f"{name}: file is empty")
                raise IDXFormatError(f"{name}: named .gz but is not gzip-compressed")
            try:
                return _parse_stream(f, name, ndim, length, False, max_bytes)
            except OSError as exc:
                raise IDXFormatError(f"{name}: cannot be read ({exc.strerror or exc})") from None
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                return _parse_stream(gz, name, ndim, length, True, max_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{name}: corrupt or truncated gzip data ({exc})") from None


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise an array as IDX bytes."""
    array = np.asarray(array)
    return idx_header(array) + np.ascontiguousarray(array, dtype=_idx_dtype(array)[1]).tobytes()


def _idx_dtype(array: np.ndarray) -> tuple[int, np.dtype]:
    for code, dt in IDX_TYPES.items():
        if dt.kind == array.dtype.kind and dt.itemsize == array.dtype.itemsize:
            return code, dt
    raise IDXFormatError(f"IDX cannot store dtype {array.dtype}")


def idx_header(array: np.ndarray) -> bytes:
    """The magic number and dimensions ``array`` would have as an IDX file."""
    code, _ = _idx_dtype(array)
    return bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as IDX, gzip-compressed if ``compress`` (default: name ends in .gz).

    The file is written to a temporary name and moved into place, so a reader
    never sees half a file.
    """
    path = Path(path)
    data = idx_bytes(np.asarray(array))
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    return write_bytes(path, data)
