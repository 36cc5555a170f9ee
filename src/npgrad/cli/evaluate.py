"""``npgrad evaluate``: accuracy, per-class accuracy and confusion matrix."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from .common import formatter


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..app.config import existing_dir
    from ..app.trainer import evaluate_checkpoint
    from ..errors import CheckpointError

    data_dir = existing_dir(args.data_dir)
    ev, data, meta = evaluate_checkpoint(args.checkpoint, args.dataset, data_dir)
    if not np.isfinite(ev.loss):
        raise CheckpointError(
            f"{args.checkpoint}: the model gives a non-finite test loss (weights overflow or "
            "NaN?); retrain it or use another checkpoint"
        )
    classes = list(meta["classes"])
    cm = ev.confusion(len(classes))
    per_class = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    if args.json:
        result = {
            "dataset": data.dataset.name,
            "test_accuracy": ev.accuracy,
            "test_loss": ev.loss,
            "per_class_accuracy": dict(zip(classes, per_class.tolist())),
            "confusion": cm.tolist(),
        }
        print(json.dumps(result))
    else:
        print(_report(data.dataset.name, ev, classes, cm, per_class))
    if args.plot:
        from ..app import plots

        ck = Path(args.checkpoint).resolve()
        out = Path(args.out) if args.out else (ck if ck.is_dir() else ck.parent)
        p1 = plots.confusion(cm, classes, out / "confusion.png")
        p2 = plots.misclassified(
            data.dataset.test_images, ev.labels, ev.predictions, classes, out / "misclassified.png"
        )
        print(f"\nplots: {p1}, {p2}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _report(name: str, ev: Any, classes: list[str], cm: np.ndarray, per_class: np.ndarray) -> str:
    """Accuracy, per-class accuracy and the confusion matrix as text."""
    lines = [
        f"{name} test set, {len(ev.labels)} images: accuracy {ev.accuracy:.2%}, loss {ev.loss:.4f}",
        "",
        "per-class accuracy:",
    ]
    width = max(len(c) for c in classes)
    for c, a, n in zip(classes, per_class, cm.sum(axis=1)):
        lines.append(f"  {c:>{width}}  {a:7.2%}  of {n}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    labels = [str(i) for i in range(len(classes))]
    named = classes != labels  # Fashion-MNIST: show names beside the column indices
    cw = max(5, len(str(cm.max())) + 1)
    lead = width + 5 if named else 4
    lines.append(" " * lead + "".join(f"{lab:>{cw}}" for lab in labels))
    for i, c in enumerate(classes):
        head = f"  {c:>{width}} {i:>1}" if named else f"  {i:>2}"
        lines.append(head + "".join(f"{v:>{cw}}" for v in cm[i]))
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy, per-class accuracy and confusion matrix of a checkpoint",
        description="Evaluate a trained checkpoint on its dataset's test set (or another one).",
        epilog="""\
examples:
  npgrad evaluate runs/digits-default/checkpoint.npz
  npgrad evaluate runs/digits-default                     a run directory works too
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
