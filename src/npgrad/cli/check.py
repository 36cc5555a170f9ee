"""``npgrad check``: check a student's own layer classes."""

from __future__ import annotations

import argparse
import sys

from .common import formatter


def _parse_shape_option(items: list[str] | None) -> dict[str, list[tuple[int, ...]]]:
    from ..errors import ConfigError

    out: dict[str, list[tuple[int, ...]]] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = [tuple(int(n) for n in part.split("x")) for part in spec.split(",")]
        except ValueError:
            raise ConfigError(f"bad --shape {item!r}: use CLASS=5x6 or CLASS=5x6,6x4") from None
    return out


def run(args: argparse.Namespace) -> int:
    from ..check import torch_available
    from ..layercheck import check_file

    use_torch = torch_available() and not args.no_torch
    reports, error = check_file(
        args.file, _parse_shape_option(args.shape), args.cls, use_torch, args.seed
    )
    if error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 1
    for r in reports:
        print(r)
    passed = sum(r.passed for r in reports)
    why = "--no-torch" if args.no_torch else "PyTorch not installed"
    print(f"\n{passed} of {len(reports)} layer classes passed"
          + ("" if use_torch else f" ({why}: numerical checks only)"))  # fmt: skip
    return 0 if passed == len(reports) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="check the backward passes of your own layer classes",
        description="Import FILE.py, find every class with forward() and backward(), and check\n"
        "each backward against numerical gradients (and, for classes named like the\n"
        "exercise's Matmul/Relu/Softmax/Log, against npgrad's and PyTorch's). When a\n"
        "gradient is wrong, npgrad says where and, if it can tell, why.",
        epilog="""\
examples:
  npgrad check my_layers.py
  npgrad check my_layers.py --class Softmax
  npgrad check my_layers.py --shape Matmul=8x3,3x5 --shape Relu=4x7

exit status: 0 if every class passes, 1 if one fails or the file cannot be imported.""",
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
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.set_defaults(func=run)
