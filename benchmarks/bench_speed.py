"""Training throughput, side by side in one process: npgrad vs PyTorch vs NumPy by hand.

For each architecture and batch size, one epoch of ``--samples`` samples is
trained with

  (a) npgrad through its public API (``nn.MLP``, ``optim.Adam``, ``cross_entropy``),
  (b) PyTorch on the CPU (``torch.nn``, ``torch.optim.Adam``), threads = cores,
  (c) a hand-written float32 NumPy loop with Adam (the floor of what NumPy can do),
  (d) the exercise's own formulation (float64, ones column, softmax backward
      through its (N, c, c) Jacobian, plain gradient descent; one hidden layer only).

Samples per second are the median of ``--repeats`` timed epochs after a warm-up,
taken in interleaved rounds so that machine noise hits every contestant alike;
the npgrad/PyTorch ratio is the median of the per-round ratios. The roofline
share is (samples/s x FLOPs per sample) / peak, with the peak measured on a
large float32 GEMM in the same run.

It then times the exercise preset (``--exercise-epochs`` full-batch epochs)
against the exercise's naive code from the same initial weights, checks they
end with the same weights, and measures the peak memory of a full-batch epoch.

    python benchmarks/bench_speed.py                  # the full table (several minutes)
    python benchmarks/bench_speed.py --out benchmarks/results.md
    python benchmarks/bench_speed.py --tiny           # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npgrad
from benchmarks.machine import describe
from benchmarks.report import add_out_option, write_report
from npgrad import nn, optim
from npgrad.app.config import make_config
from npgrad.app.models import ExerciseModel
from tests import exercise_reference as naive

LR = 1e-3


# --------------------------------------------------------------------------- contestants


def npgrad_trainer(sizes: list[int], x: np.ndarray, y: np.ndarray, bs: int) -> Callable[[], None]:
    net = nn.MLP(sizes, rng=0)
    opt = optim.Adam(net.parameters(), LR)

    def epoch() -> None:
        for s in range(0, len(y), bs):
            loss = npgrad.cross_entropy(net(npgrad.Tensor(x[s : s + bs])), y[s : s + bs])
            opt.zero_grad()
            loss.backward()
            opt.step()

    return epoch


def torch_trainer(sizes: list[int], x: np.ndarray, y: np.ndarray, bs: int) -> Callable[[], None]:
    import torch

    mods: list = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        mods += [torch.nn.Linear(a, b, dtype=torch.float32), torch.nn.ReLU()]
    net = torch.nn.Sequential(*mods[:-1])
    opt = torch.optim.Adam(net.parameters(), LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def epoch() -> None:
        for s in range(0, len(y), bs):
            loss = torch.nn.functional.cross_entropy(net(xt[s : s + bs]), yt[s : s + bs])
            opt.zero_grad()
            loss.backward()
            opt.step()

    return epoch


def numpy_trainer(sizes: list[int], x: np.ndarray, y: np.ndarray, bs: int) -> Callable[[], None]:
    """Forward, backward and Adam written out by hand in float32: the NumPy floor."""
    rng = np.random.default_rng(0)
    Ws = [
        (rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)
        for a, b in zip(sizes[:-1], sizes[1:])
    ]
    bs_ = [np.zeros(b, np.float32) for b in sizes[1:]]
    params = Ws + bs_
    M = [np.zeros_like(p) for p in params]
    V = [np.zeros_like(p) for p in params]
    buf = [np.empty_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    t = [0]

    def epoch() -> None:
        for s in range(0, len(y), bs):
            xb, yb = x[s : s + bs], y[s : s + bs]
            n = len(yb)
            acts = [xb]
            h = xb
            for i, (W, b) in enumerate(zip(Ws, bs_)):
                h = h @ W
                h += b
                if i < len(Ws) - 1:
                    np.maximum(h, 0, out=h)
                acts.append(h)
            h -= h.max(axis=1, keepdims=True)
            np.exp(h, out=h)
            h /= h.sum(axis=1, keepdims=True)
            h[np.arange(n), yb] -= 1
            h *= np.float32(1 / n)
            g = h
            grads_w, grads_b = [None] * len(Ws), [None] * len(Ws)
            for i in range(len(Ws) - 1, -1, -1):
                grads_w[i] = acts[i].T @ g
                grads_b[i] = g.sum(axis=0)
                if i:
                    g = g @ Ws[i].T
                    g *= acts[i] > 0
            t[0] += 1
            c2 = np.sqrt((1 - b2) / (1 - b2 ** t[0]))
            c1 = LR * (1 - b1) / ((1 - b1 ** t[0]) * c2)
            for p, gr, m, v, bf in zip(params, grads_w + grads_b, M, V, buf):
                m *= b1
                m += gr
                np.multiply(gr, gr, out=bf)
                v *= b2
                v += bf
                np.sqrt(v, out=bf)
                bf += eps / c2
                np.divide(m, bf, out=bf)
                bf *= c1
                p -= bf

    return epoch


def exercise_trainer(
    sizes: list[int], x: np.ndarray, y: np.ndarray, bs: int
) -> Callable[[], None] | None:
    if len(sizes) != 3:
        return None
    rng = np.random.default_rng(0)
    model = naive.make_model(naive)(
        rng.normal(size=(sizes[0] + 1, sizes[1])), rng.normal(size=(sizes[1], sizes[2]))
    )
    x64 = naive.add_ones_column(x.astype(np.float64))
    onehot = np.eye(sizes[2])[y]

    def epoch() -> None:
        for s in range(0, len(y), bs):
            naive.train_one_step(model, x64[s : s + bs], onehot[s : s + bs], 1e-5)

    return epoch


CONTESTANTS = {
    "npgrad": npgrad_trainer,
    "pytorch": torch_trainer,
    "numpy": numpy_trainer,
    "exercise": exercise_trainer,
}


# --------------------------------------------------------------------------- measurement


def peak_gflops(n: int = 2048) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    times = []
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def flops_per_sample(sizes: list[int]) -> float:
    """2 per multiply-add: forward x@W, backward x.T@g for every layer, g@W.T except the first."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    macs = sum(a * b for a, b in pairs)
    return 2 * (3 * macs - pairs[0][0] * pairs[0][1])


def bench(
    sizes: list[int], x: np.ndarray, y: np.ndarray, bs: int, repeats: int, who: list[str]
) -> dict:
    epochs = {}
    for name in who:
        fn = CONTESTANTS[name](sizes, x, y, bs)
        if fn is not None:
            fn()  # warm-up
            epochs[name] = fn
    times: dict[str, list[float]] = {k: [] for k in epochs}
    for _ in range(repeats):  # interleaved rounds
        for name, fn in epochs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    n = len(y)
    result = {k: n / statistics.median(v) for k, v in times.items()}
    if "npgrad" in times and "pytorch" in times:
        result["ratio"] = statistics.median(
            p / q for p, q in zip(times["pytorch"], times["npgrad"])
        )
    return result


def exercise_preset_vs_naive(x: np.ndarray, y: np.ndarray, epochs: int) -> dict:
    """The exercise preset's training step against the exercise's own code, same start."""
    cfg = make_config("exercise")
    ours = ExerciseModel(cfg, (x.shape[1],), 10)
    theirs = naive.make_model(naive)(ours.W1.copy(), ours.W2.copy())
    x1 = naive.add_ones_column(x.astype(np.float64))
    onehot = np.eye(10)[y]
    t = time.perf_counter()
    for _ in range(epochs):
        naive.train_one_step(theirs, x1, onehot, 1e-5)
    t_naive = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(epochs):
        ours.train_step(x1, y)
    t_ours = time.perf_counter() - t
    rel = max(
        float(np.max(np.abs(ours.W1 - theirs.W1)) / np.max(np.abs(theirs.W1))),
        float(np.max(np.abs(ours.W2 - theirs.W2)) / np.max(np.abs(theirs.W2))),
    )
    return {
        "naive_s": t_naive,
        "npgrad_s": t_ours,
        "speedup": t_naive / t_ours,
        "weights_rel_diff": rel,
    }


def peak_memory(sizes: list[int], x: np.ndarray, y: np.ndarray) -> dict:
    """Peak traced allocation of one full-batch npgrad step (the data itself is pre-allocated)."""
    net = nn.MLP(sizes, rng=0)
    opt = optim.Adam(net.parameters(), LR)

    def one() -> None:
        loss = npgrad.cross_entropy(net(npgrad.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    one()
    tracemalloc.start()
    one()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    data = x.nbytes
    acts = len(y) * sum(sizes[1:]) * 4
    return {
        "peak_mb": peak / 2**20,
        "data_mb": data / 2**20,
        "acts_mb": acts / 2**20,
        "ratio": peak / (data + acts),
    }


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--batches", default="32,128,512,full")
    ap.add_argument("--sizes", default="784-100-10,784-256-128-10")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--exercise-epochs", type=int, default=50)
    add_out_option(ap, "the Markdown report")
    ap.add_argument(
        "--data",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
        help="folder holding mnist-10k, for the exercise comparison on real images",
    )
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, to check that the script runs")
    args = ap.parse_args(argv)
    if args.tiny:
        args.samples, args.repeats, args.exercise_epochs = 512, 1, 2
        args.batches, args.sizes = "32,full", "784-16-10"

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.samples)
    peak = peak_gflops(512 if args.tiny else 2048)
    lines = [
        "## Training throughput (one epoch, samples/second, float32 unless noted)",
        "",
        f"Machine: {describe()}. Peak float32 GEMM measured in this run: {peak:.0f} GFLOP/s.",
        "",
        "| network | batch | npgrad | PyTorch | npgrad / PyTorch | NumPy by hand | exercise (float64) | npgrad % of roofline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in args.sizes.split(","):
        sizes = [int(s) for s in spec.split("-")]
        for b in args.batches.split(","):
            bs = args.samples if b == "full" else int(b)
            r = bench(sizes, x, y, bs, args.repeats, ["npgrad", "pytorch", "numpy", "exercise"])
            roof = r["npgrad"] * flops_per_sample(sizes) / (peak * 1e9)
            ex = f"{r['exercise']:,.0f}" if "exercise" in r else "-"
            lines.append(
                f"| {spec} | {b} | {r['npgrad']:,.0f} | {r['pytorch']:,.0f} | **{r['ratio']:.2f}x** | "
                f"{r['numpy']:,.0f} | {ex} | {roof:.0%} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    ex_x, ex_y, ex_src = x, y, "synthetic pixels"
    real = Path(args.data) / "mnist-10k"
    if real.is_dir() and not args.tiny:
        from npgrad.data import load_dataset

        ds = load_dataset(str(real))
        reps = -(-args.samples // len(ds.train_labels))
        ex_x = np.tile(ds.train_images.reshape(len(ds.train_labels), -1), (reps, 1))[
            : args.samples
        ] / np.float32(255)
        ex_y = np.tile(ds.train_labels, reps)[: args.samples]
        ex_src = "real MNIST images (the 10k split, tiled)"
    ex = exercise_preset_vs_naive(ex_x, ex_y, args.exercise_epochs)
    ex10k = None
    if real.is_dir() and not args.tiny:  # the same comparison on the untiled 10k split
        ex10k = exercise_preset_vs_naive(
            ds.train_images.reshape(len(ds.train_labels), -1) / 255.0,
            ds.train_labels,
            args.exercise_epochs,
        )
    mem = peak_memory([int(s) for s in args.sizes.split(",")[0].split("-")], x, y)
    lines += [
        "",
        f"Exercise preset, {args.exercise_epochs} full-batch epochs on {args.samples:,} {ex_src}: naive code "
        f"{ex['naive_s']:.2f} s, npgrad {ex['npgrad_s']:.2f} s (**{ex['speedup']:.2f}x faster**); final weights "
        f"differ by {ex['weights_rel_diff']:.1e} relative"
        + (
            f" (on the untiled 10k split itself: {ex10k['weights_rel_diff']:.1e})."
            if ex10k
            else "."
        ),
        "",
        f"Peak memory of a full-batch npgrad step ({args.sizes.split(',')[0]}): {mem['peak_mb']:.0f} MiB traced "
        f"beyond the {mem['data_mb']:.0f} MiB float32 training set; training set + activations = "
        f"{mem['data_mb'] + mem['acts_mb']:.0f} MiB; ratio **{mem['ratio']:.2f}x**.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
