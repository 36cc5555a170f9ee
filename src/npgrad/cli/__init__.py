"""The ``npgrad`` command line: a thin adapter over library functions.

Each sub-command is one module here with ``register(sub)`` (its parser) and
``run(args)`` (parse, call the library, print). Every user error is an
:class:`~npgrad.errors.NpgradError`: the command prints it as one line
(``npgrad: error: ...``) and exits with status 2, and so is an ``OSError`` that
reaches it (a file name too long, a full or read-only disk: the file system's
answer, named with its path), and running out of memory. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Sequence

from ..errors import Interrupted, NpgradError
from . import check, data, evaluate, export, gradcheck, grade, predict, serve, train
from .common import INTERRUPTED, Parser, formatter, print_error, readable

COMMANDS = (train, evaluate, predict, export, serve, data, gradcheck, check, grade)
# What a user's paths and disks can answer; an OSError with any other errno is a bug.
FILE_SYSTEM_ERRORS = {
    getattr(errno, name)
    for name in ("ENAMETOOLONG", "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EEXIST",
                 "ENOTDIR", "EISDIR", "ENOENT", "ELOOP", "EFBIG", "EMLINK", "EXDEV")
    if hasattr(errno, name)
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="npgrad",
        formatter_class=formatter,
        description="Neural networks in NumPy with hand-derived, checked gradients.",
        epilog="run 'npgrad COMMAND --help' for the options and examples of each command",
    )
    parser.add_argument("--version", action="version", version=f"npgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to start workers with (--workers)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            # NumPy's overflow and invalid-value warnings name source lines a user cannot act
            # on; what matters (a diverged loss, a NaN pixel) is reported as an error instead.
            warnings.simplefilter("ignore", RuntimeWarning)
            return int(args.func(args) or 0)
    except Interrupted as exc:
        print(readable(f"npgrad: {exc}"), file=sys.stderr)
        return INTERRUPTED
    except NpgradError as exc:
        print_error(exc)
        return 2
    except BrokenPipeError:  # output piped into head & co.: not an error
        sys.stderr.close()
        return 0
    except MemoryError:  # an input far larger than this machine holds (a huge padding, a file)
        print_error("out of memory: the input or the network is too large for this machine")
        return 2
    except OSError as exc:  # the file system said no (name too long, disk full, read-only)
        if exc.errno not in FILE_SYSTEM_ERRORS:
            raise  # anything else is a bug: keep its traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print_error(f"{where}{exc.strerror or exc} (check the path and the disk)")
        return 2
    except KeyboardInterrupt:
        print("npgrad: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
