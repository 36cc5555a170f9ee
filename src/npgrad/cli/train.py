"""``npgrad train``: the main job."""

from __future__ import annotations

import argparse
import sys

from .common import formatter

TRAIN_EPILOG = """\
examples:
  npgrad train --dataset digits                      first run: embedded data, no download
  npgrad train                                       MNIST with the default preset (96%+)
  npgrad train --dataset ../shared/data/mnist-10k    any directory with the four IDX files
  npgrad train --dataset fashion-mnist --epochs 15 --plot
  npgrad train --preset exercise --dataset DIR       the exercise, exactly (50 full-batch epochs)
  npgrad train --hidden 512,256 --optimizer sgd --lr 0.05 --schedule cosine --seed 3
  npgrad train --out runs/a --resume                 continue an interrupted run exactly
  npgrad train --json --quiet                        one JSON summary line on stdout

presets (explicit options override them):
  default   784-256-10 ReLU, He init, Adam 3e-3 with a one-cycle schedule, batch 128,
            random 1-pixel shifts, dropout 0.2, 10 epochs, float32 (on fashion-mnist:
            no shifts; on digits: no shifts, batch 32, 20 epochs)
  plain     784-100-10, Adam 1e-3 constant, no augmentation or dropout
  exercise  the exercise: layer classes, W1 (785,100) and W2 (100,10) from N(0,1), ones
            column as bias, full-batch gradient descent, lr 1e-5 on the summed loss,
            50 epochs, float64

output: OUT/metrics.jsonl (one JSON line per epoch), OUT/checkpoint.npz (after every
epoch, atomically), and with --plot OUT/curves.png and OUT/confusion.png."""


def _batch_size(text: str) -> int:
    if text.lower() in ("full", "0"):
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'full', got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"batch size must be positive, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from ..train import Trainer, make_config, parse_hidden

    overrides = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "hidden": parse_hidden(args.hidden) if args.hidden is not None else None,
        "activation": args.activation,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "warmup_epochs": args.warmup,
        "dropout": args.dropout,
        "shift": args.shift,
        "val_fraction": args.val,
        "init": args.init,
        "clip": args.clip,
        "seed": args.seed,
        "dtype": args.dtype,
    }
    cfg = make_config(args.preset, **overrides)
    name = Path(cfg.dataset).name if "/" in cfg.dataset else cfg.dataset
    out = Path(args.out or f"runs/{name}-{cfg.preset}")
    log = (
        (lambda line: None)
        if args.quiet
        else (lambda line: print(line, file=sys.stderr if args.json else sys.stdout, flush=True))
    )
    trainer = Trainer(cfg, out, log=log, progress=None if not args.quiet else False)
    t0 = time.perf_counter()
    if args.resume:
        ignored = [
            k
            for k, v in overrides.items()
            if v is not None and k not in ("epochs", "dataset", "data_dir")
        ]
        if ignored or args.preset != "default":
            log(
                f"note: resuming with the checkpoint's configuration; ignoring {', '.join(ignored) or 'preset'}"
            )
    final = trainer.fit(
        resume=args.resume, force=args.force, epochs=args.epochs if args.resume else None
    )
    elapsed = time.perf_counter() - t0
    if args.plot:
        _plot_run(trainer, out)
        log(f"plots: {out / 'curves.png'}, {out / 'confusion.png'}")
    train_seconds = sum(r.get("seconds", 0.0) for r in trainer.history)
    summary = {
        "dataset": trainer.data.dataset.name,
        "preset": trainer.cfg.preset,
        "epochs": final.get("epoch", 0),
        "test_accuracy": final.get("test_accuracy"),
        "test_loss": final.get("test_loss"),
        "train_accuracy": final.get("train_accuracy"),
        "train_loss": final.get("train_loss"),
        "train_seconds": round(train_seconds, 3),
        "total_seconds": round(elapsed, 3),
        "checkpoint": str(trainer.checkpoint_path),
    }
    if "val_accuracy" in final:
        summary["val_accuracy"] = final["val_accuracy"]
    if args.json:
        print(json.dumps(summary))
    else:
        log(f"done: test accuracy {summary['test_accuracy']:.2%} after {summary['epochs']} epochs "
            f"({train_seconds:.1f}s training); checkpoint {trainer.checkpoint_path}")  # fmt: skip
    return 0


def _plot_run(trainer, out) -> None:  # noqa: ANN001
    from .. import plots
    from ..train import evaluate

    if trainer.history:
        plots.curves(trainer.history, out / "curves.png",
                     title=f"{trainer.data.dataset.name}: {trainer.model.describe()}")  # fmt: skip
    ev = evaluate(trainer.model, trainer.data.x_test, trainer.data.y_test)
    plots.confusion(ev.confusion(trainer.data.dataset.num_classes), trainer.data.dataset.classes,
                    out / "confusion.png")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a fully connected network (the main job)",
        description="Train a fully connected network on MNIST-like data, evaluating on the\n"
        "test set after every epoch, with checkpoints you can resume exactly.",
        epilog=TRAIN_EPILOG,
        formatter_class=formatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", "-d", metavar="NAME|DIR",
                   help="mnist (default), fashion-mnist, digits, or a directory with the four IDX files")  # fmt: skip
    g.add_argument(
        "--data-dir", metavar="DIR", help="look for named datasets in DIR (and DIR/NAME) first"
    )
    g.add_argument(
        "--val",
        type=float,
        metavar="FRACTION",
        help="hold out this fraction of the training set for validation",
    )
    g.add_argument(
        "--shift",
        type=int,
        metavar="PIXELS",
        help="random shift augmentation, 0 to 4 pixels (default 2)",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--preset", default="default", metavar="NAME", help="default, plain or exercise (see below)"
    )
    g.add_argument(
        "--hidden",
        metavar="SIZES",
        help="hidden layer sizes, e.g. 256 or 512,256 ('none' for none)",
    )
    g.add_argument("--activation", metavar="NAME", help="relu (default), sigmoid or tanh")
    g.add_argument(
        "--dropout", type=float, metavar="P", help="dropout after each hidden layer (default 0.2)"
    )
    g.add_argument("--init", metavar="NAME", help="he (default), glorot or normal")
    g.add_argument("--dtype", metavar="TYPE", help="float32 (default) or float64")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", "-e", type=int, metavar="N", help="number of epochs (default 10)")
    g.add_argument(
        "--batch-size",
        "-b",
        type=_batch_size,
        metavar="N|full",
        help="minibatch size (default 128)",
    )
    g.add_argument(
        "--optimizer", metavar="NAME", help="adam (default), adamw, sgd, momentum, nesterov, gd"
    )
    g.add_argument("--lr", type=float, metavar="RATE", help="(peak) learning rate (default 3e-3)")
    g.add_argument(
        "--momentum", type=float, metavar="M", help="momentum for sgd variants (default 0.9)"
    )
    g.add_argument("--weight-decay", type=float, metavar="WD", help="weight decay (default 0)")
    g.add_argument(
        "--schedule", metavar="NAME", help="onecycle (default), cosine, step or constant"
    )
    g.add_argument(
        "--warmup",
        type=float,
        metavar="EPOCHS",
        help="linear warm-up epochs (cosine, step, constant)",
    )
    g.add_argument("--clip", type=float, metavar="NORM", help="clip the gradient norm to NORM")
    g.add_argument(
        "--seed", type=int, metavar="N", help="random seed (default 0); same seed, same bits"
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", "-o", metavar="DIR", help="output directory (default runs/DATASET-PRESET)"
    )
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    g.add_argument("--force", action="store_true", help="start over even if OUT holds a checkpoint")
    g.add_argument(
        "--json", action="store_true", help="print one JSON summary line on stdout at the end"
    )
    g.add_argument("--plot", action="store_true", help="write OUT/curves.png and OUT/confusion.png")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress or epoch lines")
    p.set_defaults(func=run)
