"""``npgrad gradcheck``: every built-in op checked numerically and against PyTorch.

``--order 2`` checks second derivatives: :func:`npgrad.checking.gradcheck.gradcheck` with
``order=2`` and PyTorch's double backward.
"""

from __future__ import annotations

import argparse
import sys

from ..ops.device import DEVICES
from .common import formatter, int_between

EPILOG_GRADCHECK = """\
examples:
  npgrad gradcheck                     check every built-in op
  npgrad gradcheck --op softmax --op matmul
  npgrad gradcheck --no-torch --cases 5 --seed 1
  npgrad gradcheck --order 2           second derivatives (double backward)
  npgrad gradcheck --device cuda       npgrad on CuPy against PyTorch on the GPU
"""


def run(args: argparse.Namespace) -> int:
    from ..checking.gradcheck import TORCH_RTOL, check_ops, torch_available

    use_torch = torch_available() and not args.no_torch
    results = check_ops(
        args.op or None,
        seed=args.seed,
        use_torch=use_torch,
        cases_per_op=args.cases,
        order=args.order,
        device=args.device,
    )
    bwd = "torch bwd" if args.order == 1 else "torch 2nd"
    w = max([len("op"), *(len(r.op) for r in results)])  # the longest op name sets the column
    header = f"{'op':<{w}} {'case':<42} {'numeric abs err':>15} {'torch fwd':>10} {bwd:>10}  result"
    print(header)
    print("-" * len(header))

    def fmt(e: float | None) -> str:
        return "-" if e is None else f"{e:.1e}"

    for r in results:
        if r.skipped:
            print(f"{r.op:<{w}} skipped: {r.skipped}")
            continue
        numeric = "-" if r.numeric is None else f"{r.numeric.max_abs_error:.1e}"
        print(
            f"{r.op:<{w}} {r.label[:42]:<42} {numeric:>15} "
            f"{fmt(r.torch_forward_error):>10} {fmt(r.torch_backward_error):>10}  "
            f"{'ok' if r.passed else 'FAIL'}"
        )
        if r.error:
            print(f"{'':<{w}} {r.error}")
    checked = [r for r in results if not r.skipped]
    failed = [r for r in checked if not r.passed]
    ops = len({r.op for r in checked})
    what = "" if args.order == 1 else " (second order)"
    torch_note = (
        f"and against PyTorch autograd (relative tolerance {TORCH_RTOL:g})"
        + (f", npgrad and PyTorch on {args.device}" if args.device != "cpu" else "")
        if use_torch
        else f"({'--no-torch' if args.no_torch else 'PyTorch not installed'}: numerical checks only)"
    )
    print(
        f"\n{len(checked) - len(failed)}/{len(checked)} cases of {ops} ops passed{what}, "
        f"numerically {torch_note}"
    )
    skipped = sorted(r.op for r in results if r.skipped)
    if skipped:
        print(f"skipped (vjp not differentiable): {', '.join(skipped)}")
    if failed:
        print("FAILED: " + ", ".join(sorted({r.op for r in failed})), file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gradcheck",
        help="check every built-in op's gradient numerically and against PyTorch",
        description=(
            "Check the backward pass of every op in the op table: against central\n"
            "differences in float64 and, when PyTorch is installed, against PyTorch\n"
            "autograd (forward and backward). With --order 2, the second derivatives:\n"
            "the recorded backward pass differentiated again, against central\n"
            "differences and PyTorch's double backward. One row per case; exit status\n"
            "1 if any fails."
        ),
        epilog=EPILOG_GRADCHECK,
        formatter_class=formatter,
    )
    p.add_argument("--op", action="append", metavar="NAME", help="check only this op (repeatable)")
    p.add_argument(
        "--cases", type=int_between(1, 1000), default=3, help="random cases per op (default 3)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for the inputs (default 0)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument(
        "--order",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: gradients (default); 2: second derivatives, by double backward",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cuda: compare npgrad on CuPy with PyTorch on the GPU (the same cases)",
    )
    p.set_defaults(func=run)
