"""Pictures of a run: learning curves, confusion matrix, misclassified digits.

matplotlib is an optional extra (``pip install 'npgrad[cli]'``); the headless
Agg backend is used so that plots work on machines without a display. Files
are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_path


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plots need matplotlib: pip install 'npgrad[cli]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def curves(history: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and test (and validation if recorded)."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (
        ("train", "train", "-o"),
        ("test", "test", "-s"),
        ("val", "validation", "-^"),
    ):
        if f"{key}_loss" in history[0]:
            ax_loss.plot(epochs, [r[f"{key}_loss"] for r in history], style, label=label, ms=3)
            ax_acc.plot(
                epochs, [100 * r[f"{key}_accuracy"] for r in history], style, label=label, ms=3
            )
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    best = max(history, key=lambda r: r["test_accuracy"])
    ax_acc.annotate(
        f"test {100 * history[-1]['test_accuracy']:.2f}%",
        (epochs[-1], 100 * history[-1]["test_accuracy"]),
        textcoords="offset points",
        xytext=(-60, -18),
    )
    ax_acc.axhline(100 * best["test_accuracy"], color="grey", lw=0.5, ls=":")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def confusion(
    matrix: np.ndarray,
    classes: list[str] | tuple[str, ...],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Confusion matrix (rows true, columns predicted) with counts in the cells."""
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    row = matrix.sum(axis=1, keepdims=True)
    frac = matrix / np.maximum(row, 1)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black",
                )
    short = [c if len(c) <= 11 else c[:10] + "." for c in classes]
    ax.set_xticks(range(n), short, rotation=45, ha="right")
    ax.set_yticks(range(n), short)
    ax.set(xlabel="predicted", ylabel="true")
    acc = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(title or f"confusion matrix (accuracy {acc:.2%})")
    return _save(fig, Path(path))


def misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    classes: list[str] | tuple[str, ...],
    path: str | os.PathLike,
    limit: int = 36,
) -> Path:
    """A grid of misclassified images titled 'pred X / true Y'."""
    plt = _pyplot()
    wrong = np.flatnonzero(predictions != labels)[:limit]
    cols = 6
    rows = max(-(-len(wrong) // cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(
            f"pred {classes[predictions[i]]}\ntrue {classes[labels[i]]}",
            fontsize=8,
            color="firebrick",
        )
    total = int((predictions != labels).sum())
    fig.suptitle(f"{min(total, limit)} of {total} misclassified test images")
    return _save(fig, Path(path))


def class_summary(rows: list[tuple[str, int, int]], path: str | os.PathLike) -> Path:
    """A class's results per item (``npgrad grade``): how many of the submissions pass each."""
    plt = _pyplot()
    names = [r[0] for r in rows]
    passed = [r[1] for r in rows]
    total = max((r[2] for r in rows), default=0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), passed, color="#4c72b0")
    ax.set_xticks(range(len(rows)), names, rotation=40, ha="right")
    ax.set(ylabel="submissions passing", ylim=(0, max(total, 1)), title=f"{total} submissions")
    return _save(fig, Path(path))
