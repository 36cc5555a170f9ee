"""``npgrad check``: check a student's own layer classes."""

from __future__ import annotations

import argparse
import math
import re
import sys

from .common import formatter

MAX_ELEMENTS = 1_000_000  # per input: central differences run forward twice per element
_SIZES = re.compile(r"[1-9][0-9]*(x[1-9][0-9]*)*")


def _parse_shape_option(items: list[str] | None) -> dict[str, list[tuple[int, ...]]]:
    from ..errors import ConfigError

    out: dict[str, list[tuple[int, ...]]] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        parts = spec.split(",")
        if not sep or not name.isidentifier() or not all(_SIZES.fullmatch(p) for p in parts):
            raise ConfigError(
                f"bad --shape {item!r}: give CLASS=SIZES with positive whole sizes, "
                "e.g. Relu=5x6 or Matmul=5x6,6x4"
            )
        shapes = [tuple(int(n) for n in p.split("x")) for p in parts]
        if any(math.prod(s) > MAX_ELEMENTS for s in shapes):
            raise ConfigError(
                f"bad --shape {item!r}: at most {MAX_ELEMENTS:,} elements per input "
                "(the numerical gradient runs forward twice per element)"
            )
        out[name] = shapes
    return out


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    from ..check import torch_available
    from ..layercheck import check_file

    shapes = _parse_shape_option(args.shape)
    use_torch = torch_available() and not args.no_torch
    reports, error = check_file(args.file, shapes, args.cls, use_torch, args.seed, args.timeout)
    if error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 1
    for r in reports:
        print(r)
    passed = sum(r.passed for r in reports)
    why = "--no-torch" if args.no_torch else "PyTorch not installed"
    print(
        f"\n{passed} of {len(reports)} layer classes passed"
        + ("" if use_torch else f" ({why}: numerical checks only)")
    )
    return 0 if passed == len(reports) else 1


def register(sub: argparse._SubParsersAction) -> None:
    from ..sandbox import DEFAULT_TIMEOUT

    p = sub.add_parser(
        "check",
        help="check the backward passes of your own layer classes",
        description="Import FILE.py, find every class with forward() and backward(), and check\n"
        "each backward against numerical gradients (and, for classes named like npgrad's\n"
        "layers Matmul/Relu/Softmax/Log/Sigmoid/Tanh, against npgrad's and PyTorch's). When a\n"
        "gradient is wrong, npgrad says where and, if it can tell, why. Your file runs in a\n"
        "separate process: if it hangs, exits or crashes, npgrad says which class was doing what.",
        epilog="""\
examples:
  npgrad check my_layers.py
  npgrad check my_layers.py --class Softmax
  npgrad check my_layers.py --shape Matmul=8x3,3x5 --shape Relu=4x7
  npgrad check slow_layers.py --timeout 300

exit status: 0 if every class passes; 1 if one fails, hangs or crashes, or the file
cannot be imported; 2 for a usage error (no such file or class, a bad option).""",
        formatter_class=formatter,
    )
    p.add_argument("file", help="a Python file defining layer classes")
    p.add_argument(
        "--class",
        dest="cls",
        action="append",
        metavar="NAME",
        help="check only this class (repeatable)",
    )
    p.add_argument(
        "--shape", action="append", metavar="CLASS=SHAPES", help="input shapes, e.g. Matmul=5x6,6x4"
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"time limit for checking the whole file (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed for the random inputs (default 0)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.set_defaults(func=run)
