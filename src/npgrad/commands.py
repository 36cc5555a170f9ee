"""Sub-commands of ``npgrad`` beyond ``gradcheck``; each registers its parser here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from .cli import _formatter

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = []


def registrar(fn: Callable[[argparse._SubParsersAction], None]) -> Callable:
    REGISTRARS.append(fn)
    return fn


# --------------------------------------------------------------------------- data


def cmd_data_list(args: argparse.Namespace) -> int:
    from .data import NAMES, cache_root, locate

    print(f"npgrad cache: {cache_root()}")
    for name in NAMES:
        ds, attempts = locate(name, args.data_dir)
        if ds is not None:
            print(f"{name:<14} found  {ds.source}  ({len(ds.train_labels)} train, "
                  f"{len(ds.test_labels)} test, {ds.image_shape[0]}x{ds.image_shape[1]})")  # fmt: skip
        else:
            print(f"{name:<14} not found: 'npgrad data fetch {name}' downloads it")
            for a in attempts:
                print(f"{'':<16}- {a.where}: {a.result}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from .data import fetch

    path = fetch(args.name, mirrors=args.mirror, cache=args.cache, progress=None)
    print(f"{args.name}: verified files in {path}")
    return 0


@registrar
def _register_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="list, locate and download datasets",
        description="Find datasets on this machine or download and verify them.",
        formatter_class=_formatter,
        epilog="""\
examples:
  npgrad data list                          where each dataset was found, or why not
  npgrad data list --data-dir ~/datasets
  npgrad data fetch mnist                   download into the cache, SHA-256 verified
  npgrad data fetch fashion-mnist --mirror https://my.org/mirror/fashion/
  NPGRAD_MIRRORS=/mnt/share/mnist npgrad data fetch mnist

search order: a directory you give; 'digits' (embedded); the npgrad cache
($NPGRAD_DATA or $XDG_CACHE_HOME/npgrad); Keras' ~/.keras/datasets; torchvision's
MNIST/raw under ./data, ~/data or $TORCHVISION_DATA; Debian's
/usr/share/datasets/fashion-mnist; then the mirrors.""",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    pl = dsub.add_parser(
        "list", help="show where each dataset is found", formatter_class=_formatter
    )
    pl.add_argument("--data-dir", metavar="DIR", help="also look in DIR and DIR/<name>")
    pl.set_defaults(func=cmd_data_list)
    pf = dsub.add_parser(
        "fetch",
        help="download a dataset into the cache and verify it",
        formatter_class=_formatter,
        epilog="example:\n  npgrad data fetch mnist --mirror https://ossci-datasets.s3.amazonaws.com/mnist/",
    )
    pf.add_argument("name", help="mnist or fashion-mnist")
    pf.add_argument(
        "--mirror",
        action="append",
        metavar="URL_OR_DIR",
        help="mirror to try (repeatable, in order); overrides $NPGRAD_MIRRORS and the built-in list",
    )
    pf.add_argument("--cache", metavar="DIR", help="download into DIR instead of the npgrad cache")
    pf.set_defaults(func=cmd_data_fetch)


# --------------------------------------------------------------------------- train

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


def cmd_train(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from .train import Trainer, make_config, parse_hidden

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
    from . import plots
    from .train import evaluate

    if trainer.history:
        plots.curves(trainer.history, out / "curves.png",
                     title=f"{trainer.data.dataset.name}: {trainer.model.describe()}")  # fmt: skip
    ev = evaluate(trainer.model, trainer.data.x_test, trainer.data.y_test)
    plots.confusion(ev.confusion(trainer.data.dataset.num_classes), trainer.data.dataset.classes,
                    out / "confusion.png")  # fmt: skip


@registrar
def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a fully connected network (the main job)",
        description="Train a fully connected network on MNIST-like data, evaluating on the\n"
        "test set after every epoch, with checkpoints you can resume exactly.",
        epilog=TRAIN_EPILOG,
        formatter_class=_formatter,
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
    p.set_defaults(func=cmd_train)


# --------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .train import Config, evaluate, load_for_inference, prepare_data

    model, meta = load_for_inference(args.checkpoint)
    cfg = Config.from_dict(meta["config"])
    if args.dataset:
        cfg.dataset = args.dataset
    if args.data_dir:
        cfg.data_dir = args.data_dir
    data = prepare_data(cfg)
    if data.x_test.shape[1] != int(np.prod(meta["image_shape"])):
        from .errors import CheckpointError

        raise CheckpointError(
            f"the checkpoint expects {meta['image_shape']} images, {data.dataset.name} has "
            f"{list(data.dataset.image_shape)}"
        )
    ev = evaluate(model, data.x_test, data.y_test)
    classes = list(meta["classes"])
    cm = ev.confusion(len(classes))
    per_class = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    if args.json:
        print(json.dumps({"dataset": data.dataset.name, "test_accuracy": ev.accuracy,
                          "test_loss": ev.loss, "per_class_accuracy": dict(zip(classes, per_class.tolist())),
                          "confusion": cm.tolist()}))  # fmt: skip
    else:
        print(f"{data.dataset.name} test set, {len(ev.labels)} images: accuracy {ev.accuracy:.2%}, "
              f"loss {ev.loss:.4f}")  # fmt: skip
        print("\nper-class accuracy:")
        width = max(len(c) for c in classes)
        for c, a, n in zip(classes, per_class, cm.sum(axis=1)):
            print(f"  {c:>{width}}  {a:7.2%}  of {n}")
        print("\nconfusion matrix (rows: true class, columns: predicted):")
        labels = [str(i) for i in range(len(classes))]
        named = classes != labels  # Fashion-MNIST: show names beside the column indices
        cw = max(5, len(str(cm.max())) + 1)
        lead = width + 5 if named else 4
        print(" " * lead + "".join(f"{lab:>{cw}}" for lab in labels))
        for i, c in enumerate(classes):
            head = f"  {c:>{width}} {i:>1}" if named else f"  {i:>2}"
            print(head + "".join(f"{v:>{cw}}" for v in cm[i]))
    if args.plot:
        from . import plots

        ck = Path(args.checkpoint).resolve()
        out = Path(args.out) if args.out else (ck if ck.is_dir() else ck.parent)
        images = data.dataset.test_images
        p1 = plots.confusion(cm, classes, out / "confusion.png")
        p2 = plots.misclassified(
            images, ev.labels, ev.predictions, classes, out / "misclassified.png"
        )
        print(f"\nplots: {p1}, {p2}", file=sys.stderr if args.json else sys.stdout)
    return 0


@registrar
def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy, per-class accuracy and confusion matrix of a checkpoint",
        description="Evaluate a trained checkpoint on its dataset's test set (or another one).",
        epilog="""\
examples:
  npgrad evaluate runs/mnist-default/checkpoint.npz
  npgrad evaluate runs/mnist-default                     a run directory works too
  npgrad evaluate runs/a/checkpoint.npz --plot           also confusion.png, misclassified.png
  npgrad evaluate runs/a/checkpoint.npz --dataset ../shared/data/mnist-10k --json""",
        formatter_class=_formatter,
    )
    p.add_argument("checkpoint", help="checkpoint.npz written by 'npgrad train' (or its directory)")
    p.add_argument("--dataset", "-d", metavar="NAME|DIR", help="evaluate on this dataset instead")
    p.add_argument("--data-dir", metavar="DIR", help="look for named datasets in DIR first")
    p.add_argument("--plot", action="store_true", help="write confusion.png and misclassified.png")
    p.add_argument(
        "--out",
        "-o",
        metavar="DIR",
        help="where --plot writes (default: the checkpoint's directory)",
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON line")
    p.set_defaults(func=cmd_evaluate)


# --------------------------------------------------------------------------- predict


def load_image(path: str, shape: tuple[int, int], pixel_max: float) -> np.ndarray:
    """An image file as floats in [0, 1] of ``shape``, light digit on dark background."""
    from pathlib import Path

    from .errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such image file")
    if p.suffix.lower() == ".npy":
        try:
            raw = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: not a plain .npy array ({exc})") from None
        if raw.size != shape[0] * shape[1]:
            raise ConfigError(
                f"{path}: array of shape {raw.shape}, the model expects {shape[0]}x{shape[1]}"
            )
        a = raw.reshape(shape).astype(np.float64)
        if not np.isfinite(a).all():
            raise ConfigError(f"{path}: contains NaN or infinite pixel values")
        if np.issubdtype(raw.dtype, np.integer) or a.max() > 1.0:
            # integer pixels count 0..pixel_max as in training (0..255 if larger)
            a = a / (pixel_max if a.max() <= pixel_max else 255.0)
        return a
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ConfigError(
            f"{path}: reading images needs Pillow: pip install 'npgrad[cli]' (or use .npy)"
        ) from None
    try:
        with Image.open(p) as img:
            g = img.convert("L").resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
            a = np.asarray(g, dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable image ({exc})") from None
    if a.mean() > 0.5:  # dark ink on light paper: invert to MNIST's convention
        a = 1.0 - a
    return a


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from . import ops
    from .train import load_for_inference

    model, meta = load_for_inference(args.checkpoint)
    shape = tuple(meta["image_shape"])
    classes = list(meta["classes"])
    x = np.stack([load_image(p, shape, meta.get("pixel_max", 255.0)) for p in args.images])
    dtype = np.dtype(meta["config"]["dtype"])
    lp = model.log_probs(x.reshape(len(x), -1).astype(dtype))
    probs = ops.Softmax.forward(lp, axis=1)[0]  # renormalises the exercise's log(s + eps) too
    for path, pr in zip(args.images, probs):
        order = np.argsort(-pr)[: args.top]
        if args.json:
            print(json.dumps({"image": path, "prediction": classes[order[0]], "class_index": int(order[0]),
                              "probabilities": {classes[i]: float(pr[i]) for i in range(len(classes))}}))  # fmt: skip
        else:
            top = ", ".join(f"{classes[i]} {pr[i]:.1%}" for i in order)
            print(f"{path}: {classes[order[0]]}   ({top})")
    return 0


@registrar
def _register_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a trained checkpoint",
        description="Predict the class of PNG/JPEG images (needs Pillow) or .npy arrays.\n"
        "Images are converted to grey, resized to the model's input and, if they are\n"
        "dark on light, inverted to MNIST's light-on-dark convention.",
        epilog="""\
examples:
  npgrad predict runs/mnist-default/checkpoint.npz seven.png
  npgrad predict runs/mnist-default digit1.png digit2.jpg --top 3
  npgrad predict runs/digits-default/checkpoint.npz sample.npy --json""",
        formatter_class=_formatter,
    )
    p.add_argument("checkpoint", help="checkpoint.npz written by 'npgrad train' (or its directory)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG image or .npy array")
    p.add_argument(
        "--top", type=int, default=3, metavar="K", help="show the K most likely classes (default 3)"
    )
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.set_defaults(func=cmd_predict)


# --------------------------------------------------------------------------- check (your own layers)


def _parse_shape_option(items: list[str] | None) -> dict[str, list[tuple[int, ...]]]:
    from .errors import ConfigError

    out: dict[str, list[tuple[int, ...]]] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = [tuple(int(n) for n in part.split("x")) for part in spec.split(",")]
        except ValueError:
            raise ConfigError(f"bad --shape {item!r}: use CLASS=5x6 or CLASS=5x6,6x4") from None
    return out


def cmd_check(args: argparse.Namespace) -> int:
    from .check import torch_available
    from .layercheck import check_file

    use_torch = torch_available() and not args.no_torch
    reports, error = check_file(
        args.file, _parse_shape_option(args.shape), args.cls, use_torch, args.seed
    )
    if error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 1
    for r in reports:
        print(r)
    passed = sum(r.passed for r in reports)
    why = "--no-torch" if args.no_torch else "PyTorch not installed"
    print(f"\n{passed} of {len(reports)} layer classes passed"
          + ("" if use_torch else f" ({why}: numerical checks only)"))  # fmt: skip
    return 0 if passed == len(reports) else 1


@registrar
def _register_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="check the backward passes of your own layer classes",
        description="Import FILE.py, find every class with forward() and backward(), and check\n"
        "each backward against numerical gradients (and, for classes named like the\n"
        "exercise's Matmul/Relu/Softmax/Log, against npgrad's and PyTorch's). When a\n"
        "gradient is wrong, npgrad says where and, if it can tell, why.",
        epilog="""\
examples:
  npgrad check my_layers.py
  npgrad check my_layers.py --class Softmax
  npgrad check my_layers.py --shape Matmul=8x3,3x5 --shape Relu=4x7

exit status: 0 if every class passes, 1 if one fails or the file cannot be imported.""",
        formatter_class=_formatter,
    )
    p.add_argument("file", help="a Python file defining layer classes")
    p.add_argument(
        "--class",
        dest="cls",
        action="append",
        metavar="NAME",
        help="check only this class (repeatable)",
    )
    p.add_argument(
        "--shape", action="append", metavar="CLASS=SHAPES", help="input shapes, e.g. Matmul=5x6,6x4"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.set_defaults(func=cmd_check)
