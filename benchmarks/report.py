"""Where a benchmark writes its report: checked when the command line is read, written atomically.

A benchmark runs for minutes before it writes; a ``--out`` whose folder does not exist
must fail at once, in one line, not in a traceback after the work (and the numbers) are
lost. :func:`add_out_option` declares the option with that check; :func:`write_report`
writes through npgrad's atomic writer, so an interrupted write leaves the old file whole.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def out_path(text: str) -> Path:
    """An argparse type: a file path whose folder exists and that is not itself a folder."""
    path = Path(text)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name in it")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(
            f"folder {folder} does not exist; create it or write the report elsewhere"
        )
    return path


def add_out_option(
    ap: argparse.ArgumentParser, what: str, flag: str = "--out", default: Path | None = None
) -> None:
    """``--out FILE`` (or ``flag``): where to write ``what``, checked before any work."""
    ap.add_argument(flag, type=out_path, default=default, help=f"also write {what} to this file")


def write_report(path: Path, text: str) -> None:
    """``text`` into ``path``, atomically, ending in one newline."""
    from npgrad.fileio import write_text  # on use: a worker process sets its BLAS up first

    write_text(path, text.rstrip("\n") + "\n")
