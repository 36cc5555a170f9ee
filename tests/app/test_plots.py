"""Pictures of a run: each a real, non-blank PNG, written atomically; a clear error without matplotlib."""

import builtins
import os

import numpy as np
import pytest

from npgrad.app import plots
from npgrad.errors import ConfigError

PIL = pytest.importorskip("PIL.Image")


def looks_drawn(path, min_side=200):
    img = np.asarray(PIL.open(path).convert("L"), dtype=float)
    return min(img.shape) >= min_side and img.std() > 10


HISTORY = [
    {
        "epoch": e,
        "train_loss": 1 / e,
        "test_loss": 1.2 / e,
        "train_accuracy": 1 - 0.5 / e,
        "test_accuracy": 1 - 0.6 / e,
        "val_accuracy": 1 - 0.55 / e,
        "val_loss": 1.1 / e,
    }
    for e in range(1, 6)
]


def test_curves_confusion_and_misclassified_are_real_pictures(tmp_path):
    assert looks_drawn(plots.curves(HISTORY, tmp_path / "c.png", title="t"))
    cm = np.diag([50, 40, 30]) + 2
    assert looks_drawn(plots.confusion(cm, ["a", "b", "a long class name"], tmp_path / "m.png"))
    rng = np.random.default_rng(0)
    images = (rng.random((20, 8, 8)) * 16).astype(np.uint8)
    labels, preds = rng.integers(0, 3, 20), rng.integers(0, 3, 20)
    assert looks_drawn(
        plots.misclassified(images, labels, preds, ["0", "1", "2"], tmp_path / "x.png")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.png",
        "m.png",
        "x.png",
    ]  # no temporaries


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = plots.curves(HISTORY, tmp_path / "c.png")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"pip install 'npgrad\[cli\]'"):
        plots.curves(HISTORY, tmp_path / "c.png")
    assert not list(tmp_path.iterdir())
