"""``npgrad evaluate``: accuracy, per-class accuracy and confusion matrix."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..errors import CheckpointError
from .common import formatter


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..config import config_from_dict
    from ..data import check_labels
    from ..models import load_for_inference
    from ..trainer import evaluate, prepare_data

    model, meta = load_for_inference(args.checkpoint)
    cfg = config_from_dict(meta["config"])
    if args.dataset:
        cfg.dataset = args.dataset
    if args.data_dir:
        cfg.data_dir = args.data_dir
    cfg.val_fraction = 0.0  # evaluation uses the whole test set; no split needed
    data = prepare_data(cfg)
    if list(data.dataset.image_shape) != list(meta["image_shape"]):
        raise CheckpointError(
            f"the checkpoint expects {meta['image_shape']} images, {data.dataset.name} has "
            f"{list(data.dataset.image_shape)}"
        )
    known = len(meta["classes"])
    where = f"{data.dataset.name} test labels (the checkpoint's model knows {known} classes)"
    check_labels(data.y_test, known, where)
    ev = evaluate(model, data.x_test, data.y_test)
    classes = list(meta["classes"])
    cm = ev.confusion(len(classes))
    per_class = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    if args.json:
        print(
            json.dumps(
                {
                    "dataset": data.dataset.name,
                    "test_accuracy": ev.accuracy,
                    "test_loss": ev.loss,
                    "per_class_accuracy": dict(zip(classes, per_class.tolist())),
                    "confusion": cm.tolist(),
                }
            )
        )
    else:
        print(
            f"{data.dataset.name} test set, {len(ev.labels)} images: accuracy {ev.accuracy:.2%}, "
            f"loss {ev.loss:.4f}"
        )
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
        from .. import plots

        ck = Path(args.checkpoint).resolve()
        out = Path(args.out) if args.out else (ck if ck.is_dir() else ck.parent)
        images = data.dataset.test_images
        p1 = plots.confusion(cm, classes, out / "confusion.png")
        p2 = plots.misclassified(
            images, ev.labels, ev.predictions, classes, out / "misclassified.png"
        )
        print(f"\nplots: {p1}, {p2}", file=sys.stderr if args.json else sys.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
        formatter_class=formatter,
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
    p.set_defaults(func=run)
