"""What every sub-command shares: the argument parser with one-line errors, the help layout."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import NoReturn

INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what was wrong and where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def nonempty(hint: str):
    """An argparse type refusing the empty string (``-o ''`` would mean the current directory)."""

    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"must not be empty: {hint}")
        return text

    return check


def int_between(lo: int, hi: int):
    """An argparse type for a whole number in ``lo..hi``."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {lo} to {hi}, not {text!r}"
            )
        return value

    return check


def readable(message: str, width: int = 100, longest_line: int = 240) -> str:
    """A short message stays one line; a long one is wrapped into a few indented lines."""
    # a file name's control characters (escape codes, tabs) must not reach the terminal raw
    message = "".join(c if c == "\n" or c.isprintable() else repr(c)[1:-1] for c in message)
    if len(message) <= longest_line or "\n" in message:
        return message
    return textwrap.fill(message, width=width, subsequent_indent="  ", break_on_hyphens=False)


def print_error(exc: BaseException | str) -> None:
    """A user error as the command line reports it: ``npgrad: error: ...`` on stderr."""
    print(readable(f"npgrad: error: {exc}"), file=sys.stderr)
