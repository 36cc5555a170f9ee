"""The ``npgrad`` command line.

Every user error is an :class:`~npgrad.errors.NpgradError`: the command prints
it as one line (``npgrad: error: ...``) and exits with status 2. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import NpgradError

EPILOG_GRADCHECK = """\
examples:
  npgrad gradcheck                     check every built-in op
  npgrad gradcheck --op softmax --op matmul
  npgrad gradcheck --no-torch --cases 5 --seed 1
"""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what was wrong and where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from .check import TORCH_RTOL, check_ops, torch_available

    use_torch = torch_available() and not args.no_torch
    results = check_ops(
        args.op or None, seed=args.seed, use_torch=use_torch, cases_per_op=args.cases
    )
    header = f"{'op':<14} {'case':<42} {'numeric abs err':>15} {'torch fwd':>10} {'torch bwd':>10}  result"
    print(header)
    print("-" * len(header))

    def fmt(e: float | None) -> str:
        return "-" if e is None else f"{e:.1e}"

    for r in results:
        print(
            f"{r.op:<14} {r.label[:42]:<42} {r.numeric.max_abs_error:>15.1e} "
            f"{fmt(r.torch_forward_error):>10} {fmt(r.torch_backward_error):>10}  "
            f"{'ok' if r.passed else 'FAIL'}"
        )
    failed = [r for r in results if not r.passed]
    ops = len({r.op for r in results})
    torch_note = (
        f"and against PyTorch autograd (relative tolerance {TORCH_RTOL:g})"
        if use_torch
        else "(PyTorch not installed: numerical checks only)"
    )
    print(
        f"\n{len(results) - len(failed)}/{len(results)} cases of {ops} ops passed, numerically {torch_note}"
    )
    if failed:
        print("FAILED: " + ", ".join(sorted({r.op for r in failed})), file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(
        prog="npgrad",
        formatter_class=_formatter,
        description="Neural networks in NumPy with hand-derived, checked gradients.",
        epilog="run 'npgrad COMMAND --help' for the options and examples of each command",
    )
    parser.add_argument("--version", action="version", version=f"npgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "gradcheck",
        help="check every built-in op's gradient numerically and against PyTorch",
        description=(
            "Check the backward pass of every op in the op table: against central\n"
            "differences in float64 and, when PyTorch is installed, against PyTorch\n"
            "autograd (forward and backward). One row per case; exit status 1 if any fails."
        ),
        epilog=EPILOG_GRADCHECK,
        formatter_class=_formatter,
    )
    p.add_argument("--op", action="append", metavar="NAME", help="check only this op (repeatable)")
    p.add_argument("--cases", type=int, default=3, help="random cases per op (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the inputs (default 0)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.set_defaults(func=cmd_gradcheck)

    for register in _REGISTRARS:
        register(sub)
    return parser


# Other modules add their sub-commands here (kept out of this file so that each
# command's code lives with its concern).
_REGISTRARS: list = []


def main(argv: Sequence[str] | None = None) -> int:
    from .train import Interrupted

    _load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Interrupted as exc:
        print(f"npgrad: {exc}", file=sys.stderr)
        return 130
    except NpgradError as exc:
        print(f"npgrad: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("npgrad: interrupted", file=sys.stderr)
        return 130


def _load_commands() -> None:
    if _REGISTRARS:
        return
    from . import commands

    _REGISTRARS.extend(commands.REGISTRARS)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
