"""Time to accuracy: npgrad vs PyTorch on real data, everything else held equal.

Both train the same 784-H-10 ReLU network from the same initial weights (npgrad's
He initialisation, copied into torch), on the same minibatches in the same order
(one NumPy permutation per epoch shared by both), with Adam at the same constant
learning rate, in float32 on the CPU with the same number of threads. After every
epoch both are evaluated on the test set. Reported: cumulative training seconds
until the test accuracy first reaches the target, and both accuracy curves.

    python benchmarks/bench_accuracy.py                       # Fashion-MNIST (Debian) and mnist-10k
    python benchmarks/bench_accuracy.py --plot benchmarks/accuracy.png
    python benchmarks/bench_accuracy.py --tiny                # digits, seconds; what the tests run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npgrad
from benchmarks.report import add_out_option, write_report
from npgrad import nn, optim
from npgrad.data import load_dataset, to_float

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(
    ds, hidden: int, epochs: int, lr: float, bs: int, seed: int = 0, opt_name: str = "adam"
) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x = to_float(ds.train_images, ds.pixel_max).reshape(len(ds.train_labels), -1)
    xt = to_float(ds.test_images, ds.pixel_max).reshape(len(ds.test_labels), -1)
    y, yt = ds.train_labels, ds.test_labels
    d = x.shape[1]
    net = nn.MLP([d, hidden, 10], rng=seed)
    if opt_name == "adam":
        opt: optim.Optimizer = optim.Adam(net.parameters(), lr)
    else:  # SGD with momentum 0.9
        opt = optim.SGD(net.parameters(), lr, momentum=0.9)
    f32 = torch.float32
    tnet = torch.nn.Sequential(
        torch.nn.Linear(d, hidden, dtype=f32),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10, dtype=f32),
    )
    with torch.no_grad():
        tnet[0].weight.copy_(torch.from_numpy(net[0].weight.data.T.copy()))
        tnet[0].bias.copy_(torch.from_numpy(net[0].bias.data))
        tnet[2].weight.copy_(torch.from_numpy(net[2].weight.data.T.copy()))
        tnet[2].bias.copy_(torch.from_numpy(net[2].bias.data))
    if opt_name == "adam":
        topt = torch.optim.Adam(tnet.parameters(), lr)
    else:
        topt = torch.optim.SGD(tnet.parameters(), lr, momentum=0.9)
    tx, ty, txt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt)
    rng = np.random.default_rng(seed)
    curves: dict[str, list[tuple[float, float]]] = {"npgrad": [], "pytorch": []}
    elapsed = {"npgrad": 0.0, "pytorch": 0.0}
    for _ in range(epochs):
        order = rng.permutation(len(y))
        batches = [order[s : s + bs] for s in range(0, len(y), bs)]
        # npgrad
        t = time.perf_counter()
        for idx in batches:
            loss = npgrad.cross_entropy(net(npgrad.Tensor(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        elapsed["npgrad"] += time.perf_counter() - t
        with npgrad.no_grad():
            acc = float((net(npgrad.Tensor(xt)).data.argmax(1) == yt).mean())
        curves["npgrad"].append((elapsed["npgrad"], acc))
        # PyTorch, same batches
        tidx = [torch.from_numpy(i) for i in batches]
        t = time.perf_counter()
        for idx in tidx:
            loss = torch.nn.functional.cross_entropy(tnet(tx[idx]), ty[idx])
            topt.zero_grad()
            loss.backward()
            topt.step()
        elapsed["pytorch"] += time.perf_counter() - t
        with torch.no_grad():
            acc = float((tnet(txt).argmax(1).numpy() == yt).mean())
        curves["pytorch"].append((elapsed["pytorch"], acc))
    return curves


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, a in curve if a >= target), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's rate (SGD uses --sgd-lr)")
    ap.add_argument("--sgd-lr", type=float, default=0.05, help="rate of the SGD-with-momentum rows")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument(
        "--data", default=str(SHARED), help="folder holding mnist-10k (default ../shared/data)"
    )
    add_out_option(ap, "the Markdown report")
    add_out_option(ap, "the accuracy curves (PNG)", flag="--plot")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    jobs = []
    if args.tiny:
        jobs.append(("digits", load_dataset("digits"), 0.80, 3))
    else:
        try:
            jobs.append(("fashion-mnist", load_dataset("fashion-mnist", download=False), 0.85, 5))
        except npgrad.DatasetError as exc:
            print(f"skipping Fashion-MNIST: {exc}", file=sys.stderr)
        mnist = Path(args.data) / "mnist-10k"
        if mnist.is_dir():
            jobs.append(("mnist-10k", load_dataset(str(mnist)), 0.95, 12))
    lines = [
        "## Time to accuracy (same network, initial weights, batches and optimizer; training seconds)",
        "",
        f"D-{args.hidden}-10 ReLU (D = 784 for MNIST-like data, 64 for digits), batch {args.batch_size}, "
        "float32; each framework timed on the same minibatches.",
        "",
        "| dataset, optimizer | target | npgrad s | PyTorch s | npgrad / PyTorch time | final acc npgrad | final acc PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    curves_all = {}
    for name, ds, target, epochs in jobs:
        for opt_name, lr in (("adam", args.lr), ("sgd", args.sgd_lr)):
            c = run(ds, args.hidden, epochs, lr, args.batch_size, opt_name=opt_name)
            label = f"{name}, {'Adam' if opt_name == 'adam' else 'SGD+momentum'} {lr:g}"
            curves_all[label] = (c, target)
            a, b = time_to(c["npgrad"], target), time_to(c["pytorch"], target)
            ratio = f"**{a / b:.2f}x**" if a and b else "-"
            fmt = lambda v: f"{v:.2f}" if v is not None else "not reached"  # noqa: E731
            lines.append(
                f"| {label} | {target:.0%} | {fmt(a)} | {fmt(b)} | {ratio} | "
                f"{c['npgrad'][-1][1]:.2%} | {c['pytorch'][-1][1]:.2%} |"
            )
    for name, (c, _) in curves_all.items():
        lines += [
            "",
            f"{name}, test accuracy after each epoch (cumulative training seconds):",
            "",
            "| epoch | npgrad | PyTorch |",
            "|---|---|---|",
        ]
        for i, ((ta, aa), (tb, ab)) in enumerate(zip(c["npgrad"], c["pytorch"]), 1):
            lines.append(f"| {i} | {aa:.2%} ({ta:.2f} s) | {ab:.2%} ({tb:.2f} s) |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        write_report(args.out, report)
    if args.plot and curves_all:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(
            1, len(curves_all), figsize=(5 * len(curves_all), 4), squeeze=False
        )
        for ax, (name, (c, target)) in zip(axes[0], curves_all.items()):
            for who, style in (("npgrad", "-o"), ("pytorch", "-s")):
                ax.plot([t for t, _ in c[who]], [100 * a for _, a in c[who]], style, label=who)
            ax.axhline(100 * target, color="grey", ls=":", lw=1)
            ax.set(title=name, xlabel="training seconds", ylabel="test accuracy (%)")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.savefig(args.plot, dpi=100, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
