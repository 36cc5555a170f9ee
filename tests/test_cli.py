"""The npgrad command line: the main job, every user error as one line, help with examples."""

import json
import subprocess
import sys

import numpy as np
import pytest

from npgrad import checkpoint as ckpt
from npgrad.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(["train", "--dataset", "digits", "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    )
    return out


def test_train_json_summary(capsys, tmp_path):
    code, out, err = run(
        capsys, "train", "-d", "digits", "-e", "2", "-o", str(tmp_path), "--json", "-q"
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["epochs"] == 2 and 0.5 < summary["test_accuracy"] <= 1.0
    assert summary["dataset"] == "digits" and summary["checkpoint"].endswith("checkpoint.npz")


def test_train_prints_epoch_lines_and_plots(capsys, tmp_path):
    from PIL import Image

    code, out, _ = run(capsys, "train", "-d", "digits", "-e", "3", "-o", str(tmp_path), "--plot")
    assert code == 0
    assert "epoch   3/3" in out and "test accuracy" in out
    for name in ("curves.png", "confusion.png"):
        img = np.asarray(Image.open(tmp_path / name).convert("L"), dtype=float)
        assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 10  # not blank


def test_exercise_preset_from_the_command_line(capsys, tmp_path, shared_data):
    code, out, _ = run(capsys, "train", "--preset", "exercise", "-d", str(shared_data / "mnist-10k"),
                       "-e", "2", "-o", str(tmp_path), "--json", "-q")  # fmt: skip
    summary = json.loads(out)
    assert code == 0 and summary["preset"] == "exercise"
    meta = ckpt.load(tmp_path / "checkpoint.npz")[2]
    assert 23 <= meta["history"][0]["train_loss"] <= 24
    assert meta["config"]["dtype"] == "float64" and meta["config"]["batch_size"] == 0


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


def test_predict_npy_and_png(capsys, digits_run, tmp_path):
    from PIL import Image

    from npgrad.data import digits

    ds = digits()
    np.save(tmp_path / "a.npy", ds.test_images[0])
    # the same digit as dark ink on white paper, upscaled, as a user would draw it
    img = Image.fromarray((255 - ds.test_images[0] * 15).astype(np.uint8)).resize((64, 64))
    img.save(tmp_path / "a.png")
    code, out, _ = run(capsys, "predict", str(digits_run), str(tmp_path / "a.npy"), str(tmp_path / "a.png"),
                       "--json")  # fmt: skip
    assert code == 0
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 2
    assert abs(sum(results[0]["probabilities"].values()) - 1) < 1e-6
    assert results[0]["prediction"] == str(ds.test_labels[0])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "-d", "cifar"], "unknown dataset 'cifar'"),
        (["train", "-d", "/no/such/dir"], "no such directory"),
        (["train", "-d", "digits", "--hidden", "256,abc"], "bad architecture"),
        (["train", "-d", "digits", "--epochs", "-3"], "epochs must be zero or more"),
        (["train", "-d", "digits", "--epochs", "three"], "invalid int value"),
        (["train", "-d", "digits", "--lr", "-1"], "learning rate must be positive"),
        (["train", "-d", "digits", "--batch-size", "0.5"], "positive integer or 'full'"),
        (["train", "-d", "digits", "--optimizer", "rmsprop"], "unknown optimizer"),
        (["train", "-d", "digits", "--preset", "turbo"], "unknown preset"),
        (["train", "-d", "digits", "--activation", "gelu"], "unknown activation"),
        (["train", "-d", "digits", "--dropout", "1.5"], "dropout must be in"),
        (["train", "-d", "digits", "--init", "zeros"], "unknown init 'zeros'"),
        (["train", "-d", "digits", "--schedule", "linear"], "unknown schedule"),
        (["train", "-d", "digits", "--dtype", "float16"], "float32 or float64"),
        (["train", "-d", "digits", "--resume", "-o", "{tmp}/none"], "no checkpoint"),
        (["train", "-d", "digits", "-o", "{tmp}/file.txt/sub"], "cannot write to output directory"),
        (["evaluate", "{tmp}/missing.npz"], "no such checkpoint file"),
        (["evaluate", "{tmp}/file.txt"], "corrupt or not an npz"),
        (["predict", "{tmp}/file.txt", "x.png"], "corrupt or not an npz"),
        (["data", "fetch", "cifar"], "cannot be downloaded"),
        (["bogus"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_and_non_zero(capsys, tmp_path, argv, message):
    (tmp_path / "file.txt").write_text("not a checkpoint")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run_catching_exit(capsys, argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0] and lines[0].startswith("npgrad")
    assert "Traceback" not in err


def run_catching_exit(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


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


def test_predict_bad_image(capsys, digits_run, tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    np.save(tmp_path / "big.npy", np.zeros((28, 28)))
    bad = np.zeros((8, 8))
    bad[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    for name, msg in (("x.png", "not a readable image"), ("big.npy", "model expects 8x8"),
                      ("nan.npy", "NaN or infinite"),
                      ("none.png", "no such image file")):  # fmt: skip
        code, _, err = run_catching_exit(capsys, ["predict", str(digits_run), str(tmp_path / name)])
        assert code == 2 and msg in err, err


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "gradcheck", "data", "check"])
def test_every_command_has_help_with_examples(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "examples:" in out and f"npgrad {command}" in out


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "npgrad", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("npgrad ")


def test_resume_keeps_the_stored_epochs_unless_given(capsys, tmp_path):
    out = str(tmp_path)
    assert main(["train", "-d", "digits", "-e", "2", "-o", out, "-q"]) == 0
    assert main(["train", "-d", "digits", "-o", out, "--resume", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2  # not the preset's 20
    assert (
        main(["train", "-d", "digits", "-o", out, "--resume", "-e", "3", "--lr", "0.1", "--json"])
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["epochs"] == 3
    assert "ignoring lr" in captured.err
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_validation_split_is_reported(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "train",
        "-d",
        "digits",
        "-e",
        "2",
        "--val",
        "0.2",
        "-o",
        str(tmp_path),
        "--json",
        "-q",
    )
    summary = json.loads(out)
    assert code == 0 and 0 < summary["val_accuracy"] <= 1
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_loss" in record and "val_accuracy" in record


def test_zero_epochs_still_writes_a_usable_checkpoint(capsys, tmp_path):
    code, out, _ = run(
        capsys, "train", "-d", "digits", "-e", "0", "-o", str(tmp_path), "--json", "-q"
    )
    summary = json.loads(out)
    assert code == 0 and summary["epochs"] == 0 and (tmp_path / "checkpoint.npz").is_file()
    assert main(["evaluate", str(tmp_path)]) == 0
