"""Atomic file writes: the one place npgrad writes a file a reader may be watching.

A reader (another process, a resumed run, a user's viewer) sees either the old
file or the new one, never half of it: the content goes to a temporary file in
the same directory, is flushed to disk, gets the permissions an ordinary
``open()`` would have given it (the umask, not ``mkstemp``'s private 0600), and
is then moved over the target with ``os.replace``. On any failure, Ctrl-C
included, the temporary file is removed and the target is untouched.

``os.replace`` swaps whatever the target is for the new file, so the target
must be a regular file or not exist yet (:func:`check_target`): never a device
(as root, ``/dev/null`` itself), a FIFO or a symbolic link (``/dev/stdout``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import NotARegularFile

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _about(path: Path, exc: OSError) -> OSError:
    """``exc`` naming the file the caller asked for, not the temporary one beside it."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def check_target(path: str | os.PathLike) -> None:
    """Refuse a write to ``path`` unless it is a regular file or does not exist yet.

    Raises :class:`~npgrad.errors.NotARegularFile` for a device, FIFO, socket or
    directory, and for every symbolic link, even one to a regular file: replacing
    the link would silently cut it, and writing through it would let a link
    planted in a run or data folder aim a write anywhere (as root, at a system
    file). The user removes the link or names its target. A path that cannot be
    examined (a folder missing or not searchable) passes: the write then says why.
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL in the name, which open() reports
        return
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        try:
            what = f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            what = "a symbolic link"
    else:
        what = next((kind for test, kind in _KINDS if test(mode)), "not a regular file")
    raise NotARegularFile(
        f"{path}: is {what}, left alone: npgrad replaces only regular files (give another name)"
    )


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[Any]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). Yields the open file object.
    ``path`` must be new or a regular file (:func:`check_target`), checked before
    anything is written and again just before the replacement.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise _about(path, exc) from exc
    try:
        f: IO[Any]
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        check_target(path)  # a FIFO or link may have appeared while the content was written
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _about(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that need a file name (matplotlib).

    The suffix is kept, so format detection by extension still works. ``path``
    must be new or a regular file, as for :func:`atomic_write`.
    """
    path = Path(path)
    check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
        os.close(fd)
    except OSError as exc:
        raise _about(path, exc) from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        check_target(path)
        os.replace(tmp, path)
    except OSError as exc:
        raise _about(path, exc) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)
