"""Convolutional training throughput, npgrad beside PyTorch in one process.

Two networks on 28x28 single-channel input (the issue's "small" and
"lenet-like"), one Adam training step per batch:

  small   conv3x3(16)+BN+ReLU+pool, conv3x3(32)+BN+ReLU+pool, linear 1568-10
  lenet   conv5x5(32)+ReLU+pool, conv5x5(64)+ReLU+pool, dropout 0.5, linear 3136-128-10

Both libraries get the same thread count (``--threads``: NumPy's BLAS through
``OPENBLAS_NUM_THREADS``, set before NumPy loads, and ``torch.set_num_threads``).
Rounds are interleaved, the order alternating, with a pause between
contestants, so machine noise hits both alike; the ratio is the median of the
per-round ratios. Both run with glibc told to keep freed memory
(:func:`npgrad.app.allocator.keep_freed_memory`, one process, so both alike;
``--default-malloc`` to compare without). Also reported: npgrad's peak traced memory for one step
(``tracemalloc`` sees NumPy's allocations), the roofline share (the
network's GEMM FLOPs per second over the peak of a large float32 GEMM measured
in the same run), and "products alone": the step's matrix products by
themselves, at the shapes npgrad multiplies, on operands made once, timed in
the same rounds. No unfolding, element-wise op or optimizer runs there, so it
is the ceiling of npgrad's im2col convolutions with this BLAS; its ratio to
PyTorch says how far that ceiling is from PyTorch's whole step.

The NumPy autodiff libraries with convolution, DeZero and MyGrad, run the small
network in the same rounds as extra rows, where they import; each is timed for
only ``--peer-steps`` steps a round, being much slower. They are never npgrad's
dependencies: install them beside torch in a separate venv,

    python3 -m venv .venv-bench && . .venv-bench/bin/activate
    pip install torch==2.13.0 && pip install -e . dezero matplotlib mygrad

    python benchmarks/bench_cnn.py                # the table (a minute or two)
    python benchmarks/bench_cnn.py --profile small  # where npgrad's time goes
    python benchmarks/bench_cnn.py --tiny         # seconds; a smoke test (no peers)
    python benchmarks/bench_cnn.py --no-peers     # npgrad and PyTorch only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.threads import set_blas_threads

set_blas_threads(sys.argv)  # before NumPy loads: BLAS reads its thread count once

import statistics  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import npgrad  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from benchmarks.report import add_out_option, write_report  # noqa: E402
from npgrad import nn, optim  # noqa: E402
from npgrad.app.allocator import keep_freed_memory  # noqa: E402
from npgrad.ops.conv import FLIPPED_MIN_CHANNELS  # noqa: E402

LR = 1e-3

# (kind, in channels, out channels, kernel, output side) of every conv and linear layer,
# for the FLOP count: a conv is an (N*H'*W', C*k*k) x (C*k*k, O) GEMM.
SHAPES = {
    "small": [("conv", 1, 16, 3, 28), ("conv", 16, 32, 3, 14), ("linear", 1568, 10, 1, 1)],
    "lenet": [
        ("conv", 1, 32, 5, 28),
        ("conv", 32, 64, 5, 14),
        ("linear", 3136, 128, 1, 1),
        ("linear", 128, 10, 1, 1),
    ],
}


def products(name: str, batch: int) -> list[tuple[int, int, int, bool]]:
    """Every matrix product of one npgrad training step, as (m, k, n, a transposed).

    The shapes npgrad multiplies (im2col): a conv's forward is an (N*H'*W', C*k*k) x
    (C*k*k, O) product, its weight gradient the unfolded input transposed times the
    output gradient, its input gradient (stride 1) the convolution of the output
    gradient with the flipped kernel, (N*H*W, O*k*k) x (O*k*k, C), from
    ``conv.FLIPPED_MIN_CHANNELS`` input channels on, else one (N*H*W, O) x (O, C)
    product per kernel offset; the first layer needs no input gradient.
    """
    out = []
    for i, (kind, cin, cout, k, side) in enumerate(SHAPES[name]):
        rows = batch * side * side if kind == "conv" else batch
        depth = k * k * cin if kind == "conv" else cin
        out += [(rows, depth, cout, False), (depth, rows, cout, True)]
        if not i:
            continue
        if kind != "conv":
            out.append((rows, cout, cin, False))
        elif cin >= FLIPPED_MIN_CHANNELS:
            out.append((rows, k * k * cout, cin, False))
        else:
            out += [(rows, cout, cin, False)] * (k * k)
    return out


def gemm_flops_per_sample(name: str) -> float:
    """Forward and backward GEMM FLOPs per sample (no input gradient for the first layer)."""
    return sum(2 * m * k * n for m, k, n, _ in products(name, 1))


def products_step(name: str, batch: int, rng: np.random.Generator) -> Callable[[], None]:
    """The step's matrix products alone, on operands made once: npgrad's floor under im2col.

    No unfolding, folding, element-wise op or optimizer runs, so its samples/s
    bounds what npgrad's im2col convolutions can reach with this BLAS.
    """
    pairs = []
    for m, k, n, transposed in products(name, batch):
        a = rng.random((k, m) if transposed else (m, k), dtype=np.float32)
        pairs.append((a.T if transposed else a, rng.random((k, n), dtype=np.float32)))

    def step() -> None:
        for a, b in pairs:
            a @ b

    return step


def npgrad_net(name: str, rng: np.random.Generator) -> nn.Module:
    if name == "small":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, rng=rng), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, rng=rng), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(1568, 10, rng=rng),
        )  # fmt: skip
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5, rng=rng),
        nn.Linear(3136, 128, rng=rng), nn.ReLU(), nn.Linear(128, 10, rng=rng),
    )  # fmt: skip


def torch_net(torch, name: str):
    t = torch.nn
    if name == "small":
        return t.Sequential(
            t.Conv2d(1, 16, 3, padding=1), t.BatchNorm2d(16), t.ReLU(), t.MaxPool2d(2),
            t.Conv2d(16, 32, 3, padding=1), t.BatchNorm2d(32), t.ReLU(), t.MaxPool2d(2),
            t.Flatten(), t.Linear(1568, 10),
        )  # fmt: skip
    return t.Sequential(
        t.Conv2d(1, 32, 5, padding=2), t.ReLU(), t.MaxPool2d(2),
        t.Conv2d(32, 64, 5, padding=2), t.ReLU(), t.MaxPool2d(2),
        t.Flatten(), t.Dropout(0.5), t.Linear(3136, 128), t.ReLU(), t.Linear(128, 10),
    )  # fmt: skip


def npgrad_step(name: str, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    net = npgrad_net(name, np.random.default_rng(0))
    opt = optim.Adam(net.parameters(), LR)
    xt = npgrad.tensor(x)

    def step() -> None:
        opt.zero_grad()
        loss = npgrad.cross_entropy(net(xt), y)
        loss.backward()
        opt.step()

    return step


def torch_step(torch, name: str, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    torch.manual_seed(0)
    net = torch_net(torch, name).float()  # float32 whatever the default dtype
    opt = torch.optim.Adam(net.parameters(), LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> None:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()

    return step


# The NumPy autodiff peers: the "small" network only, each as close to the others as its
# library allows. They are never dependencies of npgrad: install them in a separate venv.
PEERS = {"dezero": "DeZero", "mygrad": "MyGrad"}
PEER_INSTALL = {"dezero": "pip install dezero matplotlib", "mygrad": "pip install mygrad"}


def import_peer(module: str):
    """The peer's module, or None when it is missing or does not import."""
    import importlib

    # DeZero 0.0.13 (2020) uses np.int, gone since NumPy 1.24, in a default argument
    # evaluated at import; the alias exists only while it imports.
    shim = module == "dezero" and "int" not in np.__dict__
    if shim:
        np.int = int
    try:
        return importlib.import_module(module)
    except Exception:  # a broken peer (old code, new NumPy) is skipped, never fatal
        return None
    finally:
        if shim:
            del np.int


def peer_version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


def dezero_step(dezero, x: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], str]:
    F, L = dezero.functions, dezero.layers
    np.random.seed(0)  # DeZero initialises from NumPy's global generator
    model = dezero.models.Sequential(
        L.Conv2d(16, 3, pad=1, in_channels=1), L.BatchNorm(), F.relu,
        lambda h: F.pooling(h, 2, stride=2),
        L.Conv2d(32, 3, pad=1, in_channels=16), L.BatchNorm(), F.relu,
        lambda h: F.pooling(h, 2, stride=2),
        F.flatten, L.Linear(10, in_size=1568),
    )  # fmt: skip
    for p in model.params():
        if p.data is not None:  # under NumPy 2 DeZero's init scale promotes them to float64
            p.data = p.data.astype(np.float32)
    opt = dezero.optimizers.Adam(LR).setup(model)

    def step() -> None:
        model.cleargrads()
        loss = F.softmax_cross_entropy(model(x), y)
        loss.backward()
        opt.update()

    return step, "Adam; batch norm eps 2e-5 (DeZero's)"


def mygrad_step(mg, x: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], str]:
    from mygrad.nnet import batchnorm, conv_nd, max_pool, relu, softmax_crossentropy

    rng = np.random.default_rng(0)

    def param(*shape: int, fan_in: int = 0) -> object:
        scale = np.sqrt(2 / fan_in) if fan_in else 0.0
        return mg.Tensor((rng.standard_normal(shape) * scale).astype(np.float32))

    def ones(n: int) -> object:
        return mg.Tensor(np.ones(n, np.float32))

    w1, b1, g1, c1 = param(16, 1, 3, 3, fan_in=9), param(16), ones(16), param(16)
    w2, b2, g2, c2 = param(32, 16, 3, 3, fan_in=144), param(32), ones(32), param(32)
    w3, b3 = param(1568, 10, fan_in=1568), param(10)
    params = [w1, b1, g1, c1, w2, b2, g2, c2, w3, b3]

    def block(h, w, b, gamma, beta):
        h = conv_nd(h, w, stride=1, padding=1) + b.reshape(1, -1, 1, 1)
        h = relu(batchnorm(h, gamma=gamma, beta=beta, eps=1e-5))
        return max_pool(h, (2, 2), 2)

    def step() -> None:
        h = block(block(x, w1, b1, g1, c1), w2, b2, g2, c2)
        loss = softmax_crossentropy(h.reshape(len(x), -1) @ w3 + b3, y)
        loss.backward()  # sets each parameter's .grad and frees the graph
        for p in params:
            p.data -= LR * p.grad

    return step, "plain SGD (MyGrad has no optimizers); batch norm without running statistics"


PEER_STEPS = {"dezero": dezero_step, "mygrad": mygrad_step}


def samples_per_second(step: Callable[[], None], steps: int, batch: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def peak_memory_mb(step: Callable[[], None]) -> float:
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def peak_gflops() -> float:
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    a @ a
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t) / 1e9)
    return best


def load_peers(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """The importable peers by module name, and a row for each missing one."""
    if not args.peers or "small" not in args.networks:
        return {}, []
    found, missing = {}, []
    for module, label in PEERS.items():
        lib = import_peer(module)
        if lib is None:
            missing.append({"network": "small", "peer": label, "missing": module})
        else:
            found[module] = lib
    return found, missing


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        keep_freed_memory()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    peers, missing = load_peers(args)
    rows, peer_rows = [], []
    peak = peak_gflops()
    for name in args.networks:
        # contestant -> (step, steps per round); the peers are slow, so they get fewer steps
        contestants = {
            "npgrad": (npgrad_step(name, x, y), args.steps),
            "pytorch": (torch_step(torch, name, x, y), args.steps),
            "products": (products_step(name, args.batch, rng), args.steps),
        }
        notes = {}
        if name == "small":
            for module, lib in peers.items():
                step, notes[module] = PEER_STEPS[module](lib, x, y)
                contestants[module] = (step, args.peer_steps)
        for k, (step, _) in contestants.items():
            for _ in range(args.warmup if k in ("npgrad", "pytorch", "products") else 1):
                step()
        speeds: dict[str, list[float]] = {k: [] for k in contestants}
        ratios: dict[str, list[float]] = {k: [] for k in contestants}
        for r in range(args.rounds):
            order = list(contestants) if r % 2 == 0 else list(reversed(contestants))
            got = {}
            for k in order:
                time.sleep(args.pause)
                got[k] = samples_per_second(contestants[k][0], contestants[k][1], args.batch)
                speeds[k].append(got[k])
            for k in contestants:
                ratios[k].append(got[k] / got["pytorch"])
        np_speed = statistics.median(speeds["npgrad"])
        rows.append(
            {
                "network": name,
                "npgrad": np_speed,
                "pytorch": statistics.median(speeds["pytorch"]),
                "ratio": statistics.median(ratios["npgrad"]),
                "ratio_range": (min(ratios["npgrad"]), max(ratios["npgrad"])),
                "peak_mb": peak_memory_mb(contestants["npgrad"][0]),
                "roofline": np_speed * gemm_flops_per_sample(name) / 1e9 / peak,
                "products": statistics.median(speeds["products"]),
                "products_ratio": statistics.median(ratios["products"]),
            }
        )
        for module in notes:  # the peers that ran on this network
            peer_rows.append(
                {
                    "network": name,
                    "peer": f"{PEERS[module]} {peer_version(module)}",
                    "speed": statistics.median(speeds[module]),
                    "ratio": statistics.median(ratios[module]),
                    "ratio_range": (min(ratios[module]), max(ratios[module])),
                    "steps": args.rounds * args.peer_steps,
                    "note": notes[module],
                }
            )
    return rows + peer_rows + missing


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {describe()}.",
        "",
        f"batch {args.batch}, {args.threads} threads, Adam, {args.rounds} interleaved rounds "
        f"of {args.steps} steps (medians)" + (", default malloc" if args.default_malloc else ""),
        "",
        "| network | npgrad samples/s | PyTorch samples/s | ratio (min-max) "
        "| npgrad peak memory | roofline share | products alone samples/s (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "peer" in r:
            continue
        lo, hi = r["ratio_range"]
        lines.append(
            f"| {r['network']} | {r['npgrad']:,.0f} | {r['pytorch']:,.0f} | "
            f"**{r['ratio']:.2f}x** ({lo:.2f}-{hi:.2f}) | {r['peak_mb']:.0f} MiB | "
            f"{100 * r['roofline']:.0f}% | {r['products']:,.0f} ({r['products_ratio']:.2f}x) |"
        )
    peers = [r for r in rows if "peer" in r and not r.get("missing")]
    if peers:
        lines += [
            "",
            f"NumPy autodiff peers, timed in the same rounds ({args.peer_steps} "
            f"step{'s' if args.peer_steps != 1 else ''} a round each; "
            "ratio to PyTorch's samples/s in the same round):",
            "",
            "| network | samples/s | ratio to PyTorch (min-max) | steps timed | as built |",
            "|---|---|---|---|---|",
        ]
        for r in peers:
            lo, hi = r["ratio_range"]
            lines.append(
                f"| {r['network']} ({r['peer']}) | {r['speed']:,.0f} | "
                f"**{r['ratio']:.3f}x** ({lo:.3f}-{hi:.3f}) | {r['steps']} | {r['note']} |"
            )
    for r in rows:
        if r.get("missing"):
            lines.append(
                f"\n{r['peer']} is not installed, so it has no row: `{PEER_INSTALL[r['missing']]}` "
                "in a separate venv (never in npgrad's) adds it."
            )
    return "\n".join(lines)


def profile(name: str, batch: int, steps: int) -> None:
    import cProfile
    import pstats

    rng = np.random.default_rng(0)
    step = npgrad_step(
        name, rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch)
    )
    step()
    prof = cProfile.Profile()
    prof.runcall(lambda: [step() for _ in range(steps)])
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=["small", "lenet"], choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between contestants")
    parser.add_argument("--tiny", action="store_true", help="seconds: 1 round, 2 steps, batch 16")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        help="time DeZero and MyGrad on the small network where installed "
        "(default: on, off with --tiny)",
    )
    parser.add_argument(
        "--peer-steps", type=int, default=2, help="training steps per round for each peer"
    )
    parser.add_argument("--profile", choices=sorted(SHAPES), help="profile npgrad instead")
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's malloc thresholds alone"
    )
    add_out_option(parser, "the table (Markdown)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rounds, args.steps, args.warmup, args.batch, args.pause = 1, 2, 1, 16, 0.0
        args.peer_steps = 1
    if args.peers is None:
        args.peers = not args.tiny
    if args.profile:
        profile(args.profile, args.batch, args.steps)
        return
    text = table(run(args), args)
    print(text)
    if args.out:
        write_report(args.out, text)


if __name__ == "__main__":
    main()
