"""A preset's network trained by npgrad and by PyTorch, side by side: seconds and accuracy.

npgrad trains exactly as ``npgrad train --preset P`` does: the trainer's data
pipeline (the preset's shifts, its batch size, the run's seeded generator), its
model, optimizer and learning-rate schedule. PyTorch trains the same network,
built from npgrad's own layer table (:func:`npgrad.app.export.torch_layers`) with
npgrad's initial weights copied in, on the very same minibatches in the same
order, with Adam (or SGD) at the learning rate npgrad's schedule gives at each
step; only the dropout masks differ. Epochs alternate between the two, with a
pause, so machine noise hits both alike. Reported: training seconds (evaluation
not included) and the test accuracy after every epoch.

    python benchmarks/bench_preset.py                    # the cnn preset on ../shared/data/mnist-10k
    python benchmarks/bench_preset.py --dataset /usr/share/datasets/fashion-mnist --seed 1
    python benchmarks/bench_preset.py --tiny             # a small CNN on digits; what the tests run
    python benchmarks/bench_preset.py --device cuda --epochs 2 --cpu-too   # on a GPU: see gpu.sh

With ``--device cuda`` both train on the GPU (npgrad through CuPy), each first warmed up
on a throwaway copy (CuPy compiles its kernels on first use, PyTorch sets up its backward
pass), every timed epoch ends with the device synchronised, PyTorch reads its loss and
hits every step as npgrad's trainer does, and its TF32 products are off (CuPy's are full
float32). ``--cpu-too`` adds npgrad
on the CPU, the same configuration, for the accuracy within seed noise and the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.threads import set_blas_threads

set_blas_threads(sys.argv)  # before NumPy loads: BLAS reads its thread count once

import numpy as np  # noqa: E402

from benchmarks.machine import (  # noqa: E402
    add_denormals_option,
    denormals_line,
    describe,
)
from benchmarks.report import add_out_option, write_report  # noqa: E402
from npgrad import fpenv  # noqa: E402
from npgrad.app.allocator import keep_freed_memory  # noqa: E402
from npgrad.app.config import make_config  # noqa: E402
from npgrad.app.export import torch_layers, torch_state  # noqa: E402
from npgrad.app.trainer import Trainer, evaluate  # noqa: E402
from npgrad.errors import ConfigError, NpgradError  # noqa: E402
from npgrad.ops.device import DEVICES  # noqa: E402
from npgrad.ops.device import module as device_module  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EVAL_CHUNK = 1000


def torch_twin(torch, net):
    """The PyTorch network with npgrad's layers and weights (float32)."""
    layers = []
    for spec in torch_layers(net):
        spec = dict(spec)
        layers.append(getattr(torch.nn, spec.pop("type"))(**spec))
    twin = torch.nn.Sequential(*layers).float()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in torch_state(net).items()}
    twin.load_state_dict(state, strict=True)
    return twin


def torch_optimizer(torch, cfg, params):
    if cfg.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return cls(params, cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        cfg.lr,
        momentum=0.0 if cfg.optimizer == "sgd" else cfg.momentum,
        nesterov=cfg.optimizer == "nesterov",
        weight_decay=cfg.weight_decay,
    )


def torch_accuracy(
    torch, twin, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], device: str = "cpu"
) -> float:
    twin.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(x), EVAL_CHUNK):
            xb = torch.from_numpy(x[s : s + EVAL_CHUNK].reshape(-1, *shape)).to(device)
            correct += int((twin(xb).argmax(1).cpu().numpy() == y[s : s + EVAL_CHUNK]).sum())
    twin.train()
    return correct / len(y)


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if (args.torch_device or args.device) != "cpu":  # full float32 products, as CuPy's
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    keep_freed_memory()  # as `npgrad train` does; one process, so both alike
    overrides = {"seed": args.seed}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.tiny:
        overrides.update(channels=[4, 8], hidden=[16], batch_size=64)
    cfg = make_config(args.preset, dataset=args.dataset, **overrides)
    dev = args.device
    tdev = args.torch_device or dev

    def new_trainer(device: str) -> Trainer:
        with tempfile.TemporaryDirectory() as out:
            return Trainer(cfg, out, log=lambda line: None, progress=False, device=device)

    trainer = new_trainer(dev)
    model, data = trainer.model, trainer.data

    def sync() -> None:  # a GPU's work is queued: a timer stops when it is done
        if tdev != "cpu":
            torch.cuda.synchronize()
        if dev != "cpu":
            device_module(dev).cuda.runtime.deviceSynchronize()

    if model.kind == "exercise":
        raise ConfigError(
            "the exercise preset trains layer classes, not a network PyTorch can mirror"
        )
    shape = (1, *data.dataset.image_shape) if model.kind == "cnn" else (-1,)
    twin = torch_twin(torch, new_trainer("cpu").model.net).to(tdev)  # npgrad's initial weights
    opt = torch_optimizer(torch, cfg, twin.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()

    # the same network: equal outputs before any training (eval mode: no dropout)
    probe = data.x_test[:64]
    probe_t = torch.from_numpy(probe.reshape(-1, *shape)).to(tdev)
    twin.eval()
    with torch.no_grad():
        theirs = torch.log_softmax(twin(probe_t), 1).cpu().numpy()
    twin.train()
    start_gap = float(np.abs(model.log_probs(probe) - theirs).max())
    # PyTorch's first backward pass sets itself up for seconds: not training time
    loss_fn(twin(probe_t), torch.from_numpy(data.y_test[:64]).to(tdev)).backward()
    opt.zero_grad()
    if dev != "cpu":  # CuPy compiles each kernel on first use: warm up on a throwaway copy
        spare = new_trainer(dev)
        for xb, yb in list(spare.loader)[:3]:
            spare.model.train_step(xb, yb)
        evaluate(spare.model, data.x_test[:EVAL_CHUNK], data.y_test[:EVAL_CHUNK])
        sync()

    seconds = {"npgrad": 0.0, "pytorch": 0.0}
    curves: dict[str, list[float]] = {"npgrad": [], "pytorch": []}
    step = 0
    for epoch in range(cfg.epochs):
        batches = list(trainer.loader)  # one epoch's batches (shifts included), for both
        order = ("npgrad", "pytorch") if epoch % 2 == 0 else ("pytorch", "npgrad")
        for who in order:
            time.sleep(args.pause)
            t = time.perf_counter()
            if who == "npgrad":
                for xb, yb in batches:
                    model.train_step(xb, yb)
            else:
                for i, (xb, yb) in enumerate(batches):
                    for group in opt.param_groups:
                        group["lr"] = model.schedule(step + i)  # npgrad's schedule, step by step
                    opt.zero_grad()
                    xt = torch.from_numpy(xb.reshape(-1, *shape)).to(tdev)
                    yt = torch.from_numpy(yb).to(tdev)
                    logits = twin(xt)
                    loss = loss_fn(logits, yt)
                    loss.backward()
                    opt.step()
                    if tdev != "cpu":  # what npgrad's trainer reads every step (a sync each)
                        loss.item()
                        int((logits.argmax(1) == yt).sum())
            sync()
            seconds[who] += time.perf_counter() - t
        step += len(batches)
        curves["npgrad"].append(evaluate(model, data.x_test, data.y_test).accuracy)
        curves["pytorch"].append(torch_accuracy(torch, twin, data.x_test, data.y_test, shape, tdev))
    if args.cpu_too:  # npgrad on the CPU: the same configuration, batches and schedule
        cpu = new_trainer("cpu")
        seconds["npgrad-cpu"], curves["npgrad-cpu"] = 0.0, []
        for _ in range(cfg.epochs):
            batches = list(cpu.loader)  # drawn first, as above (the masks of the device's
            # dropout take one seed a call from the run's generator, the CPU's whole arrays: the
            # two runs' shuffles part after the first epoch)
            t = time.perf_counter()
            for xb, yb in batches:
                cpu.model.train_step(xb, yb)
            seconds["npgrad-cpu"] += time.perf_counter() - t
            curves["npgrad-cpu"].append(evaluate(cpu.model, data.x_test, data.y_test).accuracy)
    return {
        "describe": model.describe(),
        "dataset": data.dataset.name,
        "cfg": cfg,
        "seconds": seconds,
        "curves": curves,
        "start_gap": start_gap,
        "samples": len(data.y_train) * cfg.epochs,
    }


def table(r: dict, args: argparse.Namespace) -> str:
    cfg, s, c = r["cfg"], r["seconds"], r["curves"]
    where = "" if args.device == "cpu" else f", both on {gpu_name(args.device, args.torch_device)}"
    lines = [
        f"Machine: {describe()}{where}.",
        "",
        denormals_line(args.flush),
        "",
        f"Preset {args.preset} on {r['dataset']}, seed {cfg.seed}: {r['describe']}; "
        f"batch {cfg.batch_size}, {cfg.epochs} epochs, {args.threads} threads. Same initial "
        f"weights (log-probabilities within {r['start_gap']:.1e} before training), same batches, "
        "npgrad's learning-rate schedule in both.",
        "",
        "| framework | device | training seconds | samples/s | final test accuracy | best test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("npgrad", "npgrad", args.device), ("pytorch", "PyTorch", args.device)]
    if "npgrad-cpu" in s:
        rows.append(("npgrad-cpu", "npgrad", "cpu"))
    for who, label, device in rows:
        lines.append(
            f"| {label} | {device} | {s[who]:.2f} | {r['samples'] / s[who]:,.0f} | "
            f"{100 * c[who][-1]:.2f}% | {100 * max(c[who]):.2f}% |"
        )
    lines += ["", f"npgrad / PyTorch training time: **{s['npgrad'] / s['pytorch']:.2f}x**"]
    if args.device != "cpu":
        lines[-1] += f" (npgrad at {s['pytorch'] / s['npgrad']:.2f}x PyTorch's samples/s)"
    if "npgrad-cpu" in s and args.device != "cpu":
        lines.append(
            f"npgrad {args.device} / npgrad cpu speed-up: **{s['npgrad-cpu'] / s['npgrad']:.1f}x**"
        )
    lines += ["", "| epoch | " + " | ".join(f"{label} ({d})" for _, label, d in rows) + " |"]
    lines.append("|---" * (len(rows) + 1) + "|")
    for e in range(len(c["npgrad"])):
        lines.append(
            f"| {e + 1} | " + " | ".join(f"{100 * c[w][e]:.2f}%" for w, _, _ in rows) + " |"
        )
    return "\n".join(lines)


def gpu_name(device: str, torch_device: str | None) -> str:
    import torch

    if (torch_device or device) == "cpu":  # the tests' CuPy stand-in
        return "no GPU (a test run: npgrad on a CuPy stand-in, PyTorch on the CPU)"
    return f"{torch.cuda.get_device_name(0)} (CuPy {device_module(device).__version__}, PyTorch {torch.__version__})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cnn")
    ap.add_argument("--dataset", default=str(SHARED / "mnist-10k"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=0, help="default: the preset's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between contestants")
    ap.add_argument("--tiny", action="store_true", help="a small CNN on digits, 1 epoch")
    ap.add_argument("--device", choices=DEVICES, default="cpu", help="cuda: both on the GPU")
    ap.add_argument("--cpu-too", action="store_true", help="also npgrad on the CPU (with cuda)")
    ap.add_argument("--torch-device", help=argparse.SUPPRESS)  # tests: cpu beside a stand-in
    add_denormals_option(ap)
    add_out_option(ap, "the table (Markdown)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.dataset, args.epochs, args.pause = "digits", args.epochs or 1, 0.0
    try:
        with fpenv.flushing(args.flush):
            result = run(args)
    except NpgradError as exc:  # a preset, dataset or option npgrad refuses: its one line
        print(f"bench_preset: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # nothing was written: --out is written whole, at the end
        print("bench_preset: interrupted; no table written", file=sys.stderr)
        return 130
    text = table(result, args)
    print(text)
    if args.out:
        write_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
