"""The compiled step against the eager one and PyTorch: the rows of issue 21's targets.

Each workload is trained three ways in one process, in interleaved rounds (medians,
a pause between contestants so that no thread pool spins into the next): npgrad
eager, npgrad compiled (``npgrad.compile``), PyTorch. Then the replayed steps of the
small CNN and of the MLP with SGD are profiled kernel by kernel (the plan's own timer),
beside PyTorch's step profiled op by op (``torch.profiler``) and the CNN's products-alone
ceiling, so that where a target is missed, the time is accounted for by measurement.

Every contestant runs with subnormal floats flushed to zero, as ``npgrad train`` runs
(the calling thread's mode, what ``torch.set_flush_denormal`` sets for PyTorch; its
worker threads and OpenBLAS's keep theirs); ``--keep-denormals`` runs them all without.
The Adam row is also run with subnormals kept, npgrad and PyTorch, in the same rounds:
PyTorch's default.

    python benchmarks/bench_compile.py --out benchmarks/results-compile.md
    python benchmarks/bench_compile.py --tiny        # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.threads import set_blas_threads

set_blas_threads(sys.argv[1:])

import numpy as np  # noqa: E402

import npgrad  # noqa: E402
from benchmarks import bench_cnn, peers_mlp  # noqa: E402
from benchmarks.machine import (  # noqa: E402
    add_denormals_option,
    denormals_line,
    describe,
)
from benchmarks.report import add_out_option, write_report  # noqa: E402
from npgrad import fpenv, nn, optim  # noqa: E402
from npgrad.app.allocator import keep_freed_memory  # noqa: E402

Step = Callable[[], None]


def npgrad_steps(
    net: nn.Module, opt: optim.Optimizer, x: np.ndarray, y: np.ndarray
) -> tuple[Step, Step]:
    """The same step eager and compiled (each on its own copy of the network)."""

    def step(xb: np.ndarray, yb: np.ndarray) -> npgrad.Tensor:
        loss = npgrad.cross_entropy(net(npgrad.tensor(xb)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return step, npgrad.compile(step)


def workloads(tiny: bool) -> list[dict]:
    """(name, batch, make npgrad net+opt, make torch net+opt, input shape)."""

    def mlp(opt_name: str) -> Callable[[], tuple[nn.Module, optim.Optimizer]]:
        def make() -> tuple[nn.Module, optim.Optimizer]:
            net = nn.MLP([784, 100, 10], rng=0)
            ps = net.parameters()
            return net, optim.SGD(ps, 0.05) if opt_name == "sgd" else optim.Adam(ps, 1e-3)

        return make

    def torch_mlp(opt_name: str):
        def make(torch):
            net = torch.nn.Sequential(
                torch.nn.Linear(784, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10)
            ).float()
            ps = net.parameters()
            opt = torch.optim.SGD(ps, 0.05) if opt_name == "sgd" else torch.optim.Adam(ps, 1e-3)
            return net, opt

        return make

    def cnn(name: str):
        def make() -> tuple[nn.Module, optim.Optimizer]:
            net = bench_cnn.npgrad_net(name, np.random.default_rng(0))
            return net, optim.Adam(net.parameters(), 1e-3)

        return make

    def torch_cnn(name: str):
        def make(torch):
            net = bench_cnn.torch_net(torch, name).float()
            return net, torch.optim.Adam(net.parameters(), 1e-3)

        return make

    scale = 4 if tiny else 1
    return [
        dict(name="784-100-10, SGD", batch=128, steps=400 // scale, make=mlp("sgd"),
             torch=torch_mlp("sgd"), shape=(784,), peers=True, profile="784-100-10 SGD"),
        dict(name="784-100-10, Adam", batch=32, steps=800 // scale, make=mlp("adam"),
             torch=torch_mlp("adam"), shape=(784,), denormals=True),
        dict(name="small CNN, Adam", batch=16 if tiny else 128, steps=2 if tiny else 10,
             make=cnn("small"), torch=torch_cnn("small"), shape=(1, 28, 28), net="small",
             profile="small CNN"),
        dict(name="lenet-like CNN, Adam", batch=16 if tiny else 128, steps=2 if tiny else 6,
             make=cnn("lenet"), torch=torch_cnn("lenet"), shape=(1, 28, 28), net="lenet"),
    ]  # fmt: skip


def torch_step(torch, net, opt, x: np.ndarray, y: np.ndarray) -> Step:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> None:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()

    return step


# npgrad's kernels (the plan's timer) and the aten ops that do the same work in PyTorch's
# step (each op's time includes what it calls: a backward's zero fill, relu's clamp_min)
TORCH_OPS = {
    "conv2d": ("aten::convolution",),
    "conv2d vjp": ("aten::convolution_backward",),
    "batch_norm": ("aten::native_batch_norm",),
    "batch_norm vjp": ("aten::native_batch_norm_backward",),
    "max_pool2d": ("aten::max_pool2d_with_indices",),
    "max_pool2d vjp": ("aten::max_pool2d_with_indices_backward",),
    "relu": ("aten::relu",),
    "relu vjp": ("aten::threshold_backward",),
    "linear": ("aten::linear",),
    "linear vjp": ("aten::mm", "aten::sum"),
    "cross_entropy": ("aten::cross_entropy_loss",),
    "cross_entropy vjp": ("aten::_log_softmax_backward_data", "aten::nll_loss_backward"),
    "Optimizer.step": ("Optimizer.step#SGD.step",),
    "Adam.step": ("Optimizer.step#Adam.step",),
    "Optimizer.zero_grad": ("Optimizer.zero_grad#SGD.zero_grad", "Optimizer.zero_grad#Adam.zero_grad"),
}  # fmt: skip


def torch_profile(torch, step: Step, steps: int) -> dict[str, float]:
    """PyTorch's step op by op (seconds per step, keyed by npgrad's kernel names), and
    ``(whole step, profiled)``: its wall time under the profiler, which adds a little to each op
    (as the plan's timer does to npgrad's)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    # the profiler's first steps cost it more: they are run and not counted
    every = schedule(wait=0, warmup=steps, active=steps, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], schedule=every) as prof:
        for i in range(2 * steps):
            if i == steps:
                t = time.perf_counter()
            step()
            if i == 2 * steps - 1:  # before the last prof.step(), which stops and parses
                wall = time.perf_counter() - t
            prof.step()
    totals = {e.key: e.cpu_time_total * 1e-6 / steps for e in prof.key_averages()}
    out = {k: sum(totals.get(op, 0.0) for op in ops) for k, ops in TORCH_OPS.items()}
    out = {k: v for k, v in out.items() if v}
    out["(whole step, profiled)"] = wall / steps
    return out


def profile_table(title: str, ours: dict[str, float], theirs: dict[str, float]) -> list[str]:
    """Our replayed step's kernels beside PyTorch's ops for the same work (ms per step)."""
    total = sum(v for k, v in ours.items() if not k.startswith("("))
    lines = [
        f"Where the replayed {title} step spends its time: npgrad's kernels (the plan's timer) "
        "beside the PyTorch ops that do the same work (torch.profiler, the same steps), ms "
        "per step:",
        "",
        "| kernel | npgrad ms | share | PyTorch ms |",
        "|---|---|---|---|",
    ]
    for k, v in sorted(ours.items(), key=lambda kv: (kv[0].startswith("("), -kv[1])):
        share = f"{v / total:.0%}" if total and not k.startswith("(") else "-"
        other = f"{theirs[k] * 1e3:.2f}" if k in theirs else "-"
        lines.append(f"| {k} | {v * 1e3:.2f} | {share} | {other} |")
    return lines + [""]


def run(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows, profiles, peer_lines, memory, denormal_lines = [], [], [], [], []
    for w in workloads(args.tiny):
        b = w["batch"]
        x = rng.random((b, *w["shape"]), dtype=np.float32)
        y = rng.integers(0, 10, b)
        eager_net, eager_opt = w["make"]()
        eager, _ = npgrad_steps(eager_net, eager_opt, x, y)
        comp_net, comp_opt = w["make"]()
        _, compiled = npgrad_steps(comp_net, comp_opt, x, y)
        tnet, topt = w["torch"](torch)
        contestants: dict[str, Step] = {
            "eager": lambda eager=eager, x=x, y=y: eager(x, y),
            "compiled": lambda compiled=compiled, x=x, y=y: compiled(x, y),
            "pytorch": torch_step(torch, tnet, topt, x, y),
        }
        if "net" in w:
            contestants["products"] = bench_cnn.products_step(w["net"], b, rng)
        peers, missing = peers_mlp.load(x, y) if w.get("peers") and args.peers else ({}, [])
        contestants.update(peers)
        # the Adam row again with subnormals kept, and each one's optimizer state to count them
        states: dict[str, Any] = {}
        if w.get("denormals") and args.flush and fpenv.available():
            kept_net, kept_opt = w["make"]()
            _, kept_step = npgrad_steps(kept_net, kept_opt, x, y)
            contestants["compiled, kept"] = lambda f=kept_step, x=x, y=y: f(x, y)
            tnet2, topt2 = w["torch"](torch)
            contestants["pytorch, kept"] = torch_step(torch, tnet2, topt2, x, y)
            states = {"compiled": comp_opt.state, "compiled, kept": kept_opt.state,
                      "pytorch": topt.state, "pytorch, kept": topt2.state}  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in contestants}

        def mode(k: str) -> AbstractContextManager[None]:
            return fpenv.flushed_denormals(False) if k.endswith(", kept") else nullcontext()

        for k, fn in contestants.items():
            with mode(k):
                for _ in range(args.warmup):
                    fn()
        for _ in range(args.rounds):
            for k, fn in contestants.items():
                time.sleep(args.pause)
                with mode(k):
                    t = time.perf_counter()
                    for _ in range(w["steps"]):
                        fn()
                    times[k].append(w["steps"] * b / (time.perf_counter() - t))
        memory.append(
            f"| {w['name']} | {b} | {peak_mib(contestants['eager']):.1f} | "
            f"{peak_mib(contestants['compiled']):.1f} |"
        )
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {
            k: statistics.median(a / p for a, p in zip(times[k], times["pytorch"]))
            for k in ("eager", "compiled")
        }
        speedup = statistics.median(c / e for c, e in zip(times["compiled"], times["eager"]))
        ceiling = (
            f"{med['compiled'] / med['products']:.0%} (eager {med['eager'] / med['products']:.0%})"
            if "products" in med
            else "-"
        )
        rows.append(
            f"| {w['name']} | {b} | {med['eager']:,.0f} | {med['compiled']:,.0f} | "
            f"{med['pytorch']:,.0f} | {ratio['eager']:.2f}x | **{ratio['compiled']:.2f}x** | "
            f"{speedup:.2f}x | {ceiling} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
        if w.get("peers") and args.peers:
            peer_lines = _peer_table(w, times, list(peers), missing)
        if states:
            counts = {k: _subnormals(s, torch) for k, s in states.items()}
            denormal_lines = _denormal_table(w, times, counts)
        if w.get("profile"):
            plan = compiled.plan(x, y)
            plan.profile = {}
            t = time.perf_counter()
            for _ in range(w["steps"]):
                compiled(x, y)
            wall = time.perf_counter() - t
            profile = {k: sum(v) / w["steps"] for k, v in plan.profile.items()}
            profile["(whole step, profiled)"] = wall / w["steps"]
            plan.profile = None
            if "products" in contestants:
                t = time.perf_counter()
                for _ in range(w["steps"]):
                    contestants["products"]()
                profile["(products alone)"] = (time.perf_counter() - t) / w["steps"]
            time.sleep(args.pause)
            theirs = torch_profile(torch, contestants["pytorch"], w["steps"])
            profile["(the step unprofiled, median)"] = b / med["compiled"]
            theirs["(the step unprofiled, median)"] = b / med["pytorch"]
            profiles += profile_table(w["profile"], profile, theirs)
    return rows, profiles, peer_lines + denormal_lines + memory_table(memory)


def _subnormals(state: list | dict, torch) -> int:
    """How many of an optimizer's float32 state values are subnormal (npgrad's state, a list
    of dicts, or PyTorch's, a dict of them).

    Read off the bits (exponent 0, mantissa not): a float comparison would see none in a
    thread that treats subnormal inputs as zero, as this one does.
    """
    count = 0
    for s in state.values() if isinstance(state, dict) else state:
        for a in s.values():
            a = a.numpy() if isinstance(a, torch.Tensor) else a
            if isinstance(a, np.ndarray) and a.dtype == np.float32:
                bits = a.view(np.uint32)
                count += int(np.count_nonzero((bits & 0x7F800000 == 0) & (bits & 0x7FFFFF != 0)))
    return count


def _denormal_table(w: dict, times: dict[str, list[float]], counts: dict[str, int]) -> list[str]:
    """The Adam row with subnormals flushed and kept, npgrad and PyTorch, in the same rounds."""
    names = {
        "compiled": "npgrad compiled, flushed (npgrad train's default)",
        "compiled, kept": "npgrad compiled, subnormals kept",
        "pytorch": "PyTorch, flushed (torch.set_flush_denormal(True))",
        "pytorch, kept": "PyTorch, subnormals kept (its default)",
    }
    lines = [
        f"{w['name']}, batch {w['batch']}, with subnormal floats flushed to zero and kept "
        "(same rounds; subnormals: in the optimizer's state after the last round):",
        "",
        "| contestant | samples/s | subnormals | npgrad compiled, flushed / it |",
        "|---|---|---|---|",
    ]
    for k, name in names.items():
        ratio = statistics.median(c / o for c, o in zip(times["compiled"], times[k]))
        lines.append(
            f"| {name} | {statistics.median(times[k]):,.0f} | {counts[k]:,} | {ratio:.2f}x |"
        )
    both = statistics.median(c / o for c, o in zip(times["compiled"], times["pytorch, kept"]))
    kept = statistics.median(c / o for c, o in zip(times["compiled, kept"], times["pytorch, kept"]))
    lines += [
        "",
        f"Each with its default (npgrad flushed, PyTorch not): **{both:.2f}x**; both keeping "
        f"subnormals: {kept:.2f}x.",
        "",
    ]
    return lines


def peak_mib(step: Step) -> float:
    """The most memory one step holds at once beyond what existed before it (tracemalloc)."""
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def memory_table(rows: list[str]) -> list[str]:
    return [
        "Peak memory of one step beyond what was allocated before it (tracemalloc, MiB; "
        "the compiled step is a replay):",
        "",
        "| workload | batch | eager | compiled |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _peer_table(
    w: dict, times: dict[str, list[float]], peers: list[str], missing: list[str]
) -> list[str]:
    """The first target row in full: the compiled step against every peer and PyTorch."""
    others = ["pytorch", *peers]
    med = {k: statistics.median(times[k]) for k in ["compiled", *others]}
    fastest = max(others, key=lambda k: med[k])
    lines = [
        f"{w['name']}, batch {w['batch']}, against the NumPy autodiff peers (same rounds):",
        "",
        "| contestant | samples/s | npgrad compiled / it |",
        "|---|---|---|",
    ]
    for k in others:
        ratio = statistics.median(c / o for c, o in zip(times["compiled"], times[k]))
        name = "PyTorch" if k == "pytorch" else k
        lines.append(
            f"| {name}{' (fastest)' if k == fastest else ''} | {med[k]:,.0f} | "
            f"{'**' if k == fastest else ''}{ratio:.2f}x{'**' if k == fastest else ''} |"
        )
    lines += [f"- {m}" for m in missing]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.3, help="seconds between contestants")
    ap.add_argument("--tiny", action="store_true", help="seconds: 1 round, small batches")
    ap.add_argument(
        "--no-peers",
        dest="peers",
        action="store_false",
        help="leave out the NumPy autodiff peers (benchmarks/peers_mlp.py) from the MLP SGD row",
    )
    add_denormals_option(ap)
    add_out_option(ap, "the Markdown report")
    args = ap.parse_args(argv)
    if args.tiny:
        args.rounds, args.warmup, args.pause = 1, 1, 0.0
    keep_freed_memory()  # as npgrad train does
    with fpenv.flushing(args.flush):
        rows, profiles, peer_lines = run(args)
    lines = [
        f"Machine: {describe()}.",
        "",
        denormals_line(args.flush),
        "",
        f"{args.rounds} interleaved rounds (medians); ratios are per round, to PyTorch in the "
        "same round.",
        "",
        "| workload | batch | eager samples/s | compiled samples/s | PyTorch samples/s | "
        "eager / PyTorch | compiled / PyTorch | compiled / eager | share of products-alone "
        "ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *peer_lines,
        *profiles,
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
