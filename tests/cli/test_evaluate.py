"""``npgrad evaluate``."""

import json

import numpy as np
import pytest

from npgrad.cli import main
from tests.cli.helpers import run, run_catching_exit


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(["train", "--dataset", "digits", "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    )
    return out


def test_evaluate_reports_per_class_and_confusion(capsys, digits_run, tmp_path):
    from PIL import Image

    code, out, _ = run(
        capsys, "evaluate", str(digits_run / "checkpoint.npz"), "--plot", "-o", str(tmp_path)
    )
    assert code == 0
    assert "accuracy" in out and "per-class accuracy" in out and "confusion matrix" in out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) >= 20  # 10 per-class lines + 10 matrix rows
    img = np.asarray(Image.open(tmp_path / "misclassified.png").convert("L"), dtype=float)
    assert img.std() > 10
    code, out, _ = run(capsys, "evaluate", str(digits_run), "--json")
    data = json.loads(out)
    assert np.array(data["confusion"]).sum() == 360


def test_incompatible_checkpoint(capsys, digits_run, shared_data):
    code, _, err = run_catching_exit(
        capsys, ["evaluate", str(digits_run), "-d", str(shared_data / "mnist-10k")]
    )
    assert code == 2 and "expects [8, 8] images" in err and len(err.strip().splitlines()) == 1


def test_corrupted_checkpoint_after_training_is_refused_and_left_intact(
    capsys, digits_run, tmp_path
):
    bad = tmp_path / "checkpoint.npz"
    data = bytearray((digits_run / "checkpoint.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    code, _, err = run_catching_exit(capsys, ["evaluate", str(bad)])
    assert code == 2 and "npgrad: error:" in err
    assert bad.read_bytes() == bytes(data)


def test_evaluate_on_labels_the_model_does_not_know(capsys, digits_run, tmp_path):
    from npgrad.data import digits, write_idx

    ds = digits()
    labels = ds.test_labels.copy()
    labels[7] = 12  # a class the checkpoint's 10-class model has never seen
    for split, images, lab in (
        ("train", ds.train_images, ds.train_labels),
        ("t10k", ds.test_images, labels),
    ):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", lab.astype(np.uint8))
    code, _, err = run_catching_exit(capsys, ["evaluate", str(digits_run), "-d", str(tmp_path)])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "7" in err and "12" in err


def test_a_nan_weight_is_refused_not_reported_as_a_nan_loss(capsys, digits_run, tmp_path):
    from npgrad.app import checkpoint as ckpt

    params, optim, meta = ckpt.load(digits_run)
    name = next(iter(params))
    params[name] = params[name].copy()
    params[name].flat[0] = np.nan
    ckpt.save(tmp_path / "checkpoint.npz", params, optim, meta)
    code, out, err = run_catching_exit(capsys, ["evaluate", str(tmp_path)])
    assert code == 2 and out == "" and "non-finite test loss" in err
    assert len(err.strip().splitlines()) == 1


def test_a_plot_folder_that_cannot_be_made_is_one_line(capsys, digits_run, tmp_path):
    (tmp_path / "afile").write_text("in the way")
    code, _, err = run_catching_exit(
        capsys, ["evaluate", str(digits_run), "--plot", "-o", str(tmp_path / "afile")]
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("npgrad: error: ")
    assert "Traceback" not in err and (tmp_path / "afile").read_text() == "in the way"
