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
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.threads import set_blas_threads

THREADS = "8"  # the CPU row's BLAS threads (and PyTorch's): the GPU machines have 16 cores
set_blas_threads(["--threads", THREADS])  # before NumPy loads; bench_preset keeps it

from benchmarks import bench_preset  # noqa: E402
from benchmarks.report import add_out_option, write_report  # noqa: E402
from npgrad.checking.gradcheck import TORCH_RTOL, check_ops  # noqa: E402
from npgrad.data import load_dataset  # noqa: E402
from npgrad.errors import NpgradError  # noqa: E402
from npgrad.ops.device import module as device_module  # noqa: E402


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
    add_out_option(ap, "the report", default=Path(__file__).parent / "results-gpu.md")
    ap.add_argument("--torch-device", default="cuda", help=argparse.SUPPRESS)  # tests: cpu
    args = ap.parse_args(argv)
    try:
        cupy = device_module("cuda")
        load_dataset(args.dataset)  # a wrong path fails now, not after the op checks
    except NpgradError as exc:  # a missing CuPy, GPU or dataset: its one line
        print(f"bench_gpu: error: {exc}", file=sys.stderr)
        return 2
    version = cupy.cuda.runtime.runtimeGetVersion()
    lines = ["# npgrad on a GPU", "", f"CuPy {cupy.__version__}, CUDA runtime {version}.", ""]
    ok = True

    def section(title: str, run: Any) -> None:
        """One part of the run, written out as soon as it is done: a later failure (or the
        device's time limit) keeps what came before."""
        nonlocal ok
        lines.extend([f"## {title}", ""])
        try:
            more, passed = run()
        except Exception:
            more, passed = ["```", traceback.format_exc().rstrip(), "```"], False
        lines.extend([*more, ""])
        ok = ok and passed
        print("\n".join(more), flush=True)
        write_report(args.out, "\n".join(lines))

    def preset() -> tuple[list[str], bool]:
        table = Path(str(args.out) + ".preset")
        code = bench_preset.main(
            ["--device", "cuda", "--cpu-too", "--dataset", args.dataset, "--epochs",
             str(args.epochs), "--threads", THREADS, "--out", str(table),
             "--torch-device", args.torch_device]
        )  # fmt: skip
        if code != 0:
            return [f"bench_preset exited with {code}"], False
        text = table.read_text().rstrip().splitlines()
        table.unlink()
        return text, True

    section("The op table on CuPy against PyTorch CUDA: gradients",
            lambda: op_checks(1, args.cases, args.torch_device))  # fmt: skip
    section(f"The cnn preset, {args.epochs} epochs", preset)
    section("The op table on CuPy against PyTorch CUDA: second derivatives",
            lambda: op_checks(2, args.cases, args.torch_device))  # fmt: skip
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
