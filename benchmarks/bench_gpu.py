"""npgrad on an NVIDIA GPU (CuPy) beside PyTorch CUDA: the op table's checks, then the cnn preset.

1. Every op's forward and vjp (first and second order) on CuPy against PyTorch on the
   GPU: ``npgrad gradcheck --device cuda``'s cases, the same as on the CPU, with the
   CPU's tolerances.
2. The cnn preset on the 10k MNIST split, trained by npgrad on the GPU and by PyTorch
   CUDA on the same network, initial weights and batches (``bench_preset.py --device
   cuda``), and by npgrad on the CPU for the accuracy within seed noise.

Writes one Markdown file. On the device tool's machine (no network; CuPy and PyTorch
there already), with the data carried along, one command does it all::

    mkdir -p .gpu-data && cp -r ../shared/data/mnist-10k .gpu-data/   # once, here
    # device tool, carry [".gpu-data"]:
    bash benchmarks/gpu.sh .gpu-data/mnist-10k
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_preset  # sets BLAS threads before NumPy loads
from npgrad.checking.gradcheck import TORCH_RTOL, check_ops
from npgrad.errors import NpgradError
from npgrad.fileio import write_text
from npgrad.ops.device import module as device_module


def op_checks(order: int, cases: int, torch_device: str) -> tuple[list[str], bool]:
    t = time.perf_counter()
    results = check_ops(cases_per_op=cases, order=order, device="cuda", torch_device=torch_device)
    checked = [r for r in results if not r.skipped]
    failed = [r for r in checked if not r.passed]
    fwd = max(r.torch_forward_error or 0.0 for r in checked)
    bwd = max(r.torch_backward_error or 0.0 for r in checked)
    what = "gradients" if order == 1 else "second derivatives (double backward)"
    lines = [
        f"- {what}: {len(checked) - len(failed)}/{len(checked)} cases of "
        f"{len({r.op for r in checked})} ops passed (relative tolerance {TORCH_RTOL:g}); "
        f"largest relative error against PyTorch CUDA: forward {fwd:.1e}, "
        f"{'backward' if order == 1 else 'second order'} {bwd:.1e} "
        f"({time.perf_counter() - t:.0f} s)"
    ]
    for r in failed:
        lines.append(f"  - FAILED {r.op} {r.label}: {r.error or 'mismatch'}")
    return lines, not failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=str(bench_preset.SHARED / "mnist-10k"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cases", type=int, default=3, help="cases per op (default 3)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results-gpu.md")
    ap.add_argument("--torch-device", default="cuda", help=argparse.SUPPRESS)  # tests: cpu
    args = ap.parse_args(argv)
    try:
        cupy = device_module("cuda")
    except NpgradError as exc:  # a missing CuPy or GPU: its one line
        print(f"bench_gpu: error: {exc}", file=sys.stderr)
        return 2
    lines = ["# npgrad on a GPU", "", "## The op table on CuPy against PyTorch CUDA", ""]
    ok = True
    for order in (1, 2):
        more, passed = op_checks(order, args.cases, args.torch_device)
        lines += more
        ok = ok and passed
        print("\n".join(more), flush=True)
    lines += ["", f"## The cnn preset, {args.epochs} epochs", ""]
    preset = bench_preset.main(
        ["--device", "cuda", "--cpu-too", "--dataset", args.dataset, "--epochs",
         str(args.epochs), "--threads", "8", "--out", str(args.out) + ".preset",
         "--torch-device", args.torch_device]
    )  # fmt: skip
    if preset != 0:
        return preset
    lines.append(Path(str(args.out) + ".preset").read_text())
    lines.append(f"CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}.")
    write_text(args.out, "\n".join(lines) + "\n")
    Path(str(args.out) + ".preset").unlink()
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
