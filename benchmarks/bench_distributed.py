"""Data-parallel training steps on K = 1, 2 ranks: samples/s and the allreduce's share.

For each network and K, ``mpiexec -n K`` runs this file as a worker: the network of a
preset, a global batch cut into K shards, the trainer's data-parallel step (summed-loss
backward, one Allreduce of the flat gradient buffer, Adam), timed over ``--steps``
steps after a warm-up, with the allreduce timed on its own. BLAS threads per rank =
cores / K (as npgrad sets them under any launcher). Rank 0 prints one JSON line.

    python benchmarks/bench_distributed.py --out benchmarks/results-distributed.md
    python benchmarks/bench_distributed.py --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import add_out_option, write_report  # noqa: E402


def worker(net: str, batch: int, steps: int) -> None:
    import numpy as np

    import npgrad
    from npgrad import distributed, optim
    from npgrad.app.config import make_config
    from npgrad.app.models import build_model

    comm = distributed.Communicator()
    cfg = make_config("cnn" if net == "cnn" else "plain", dataset="mnist-10k", dropout=0.0)
    model = build_model(cfg, (28, 28), 10, 1)
    opt = optim.Adam(model.net.parameters(), 1e-3)
    grads = distributed.GradientBuffer(opt.params)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    part = distributed.shard(batch, comm.rank, comm.size)
    xs, ys = x[part], y[part]
    reduce_time = [0.0]

    def step() -> None:
        loss = npgrad.cross_entropy(model.net(model.inputs(xs)), ys, reduction="sum") * (1 / batch)
        opt.zero_grad()
        loss.backward()
        t = time.perf_counter()
        distributed.allreduce_gradients(grads, comm)
        reduce_time[0] += time.perf_counter() - t
        opt.step()

    for _ in range(2):
        step()
    comm.comm.Barrier()
    reduce_time[0] = 0.0
    t = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t
    if comm.root:
        print(json.dumps({
            "samples_per_second": steps * batch / seconds,
            "step_ms": seconds / steps * 1e3,
            "allreduce_ms": reduce_time[0] / steps * 1e3,
            "gradient_mb": grads.nbytes / 1e6,
        }))  # fmt: skip


def run(net: str, k: int, batch: int, steps: int) -> dict:
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // k))}
    cmd = [mpiexec, "-n", str(k), sys.executable, __file__, "--worker", net,
           "--batch", str(batch), "--steps", str(steps)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=["mlp", "cnn"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--tiny", action="store_true")
    add_out_option(ap, "the Markdown report")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.batch, args.steps)
        return 0
    from benchmarks.machine import describe

    rows = []
    for net, batch, steps in (("mlp", 128, 300), ("cnn", 64, 20)):
        if args.tiny:
            batch, steps = 16, 2
        r1, r2 = run(net, 1, batch, steps), run(net, 2, batch, steps)
        rows.append(
            f"| {net} (batch {batch}) | {r1['gradient_mb']:.2f} MB | {r1['samples_per_second']:,.0f} | "
            f"{r2['samples_per_second']:,.0f} | **{r2['samples_per_second'] / r1['samples_per_second']:.2f}x** | "
            f"{r2['step_ms']:.2f} ms | {r2['allreduce_ms']:.3f} ms ({r2['allreduce_ms'] / r2['step_ms']:.0%}) |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    report = "\n".join([
        f"Machine: {describe()}; MPICH (the mpich wheel) over shared memory.",
        "",
        "| network | gradient | K = 1 samples/s | K = 2 samples/s | speed-up | K = 2 step | "
        "allreduce per step (share) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]) + "\n"  # fmt: skip
    print(report)
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
