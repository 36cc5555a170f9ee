"""``npgrad train``: the main job from the command line."""

import json

import numpy as np
import pytest

from npgrad.app import checkpoint as ckpt
from npgrad.cli import main
from tests.cli.helpers import assert_one_line_error, run, run_catching_exit


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
    assert "epoch   3/3" in out and "after 3 epochs (" in out
    for name in ("curves.png", "confusion.png"):
        img = np.asarray(Image.open(tmp_path / name).convert("L"), dtype=float)
        assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 10  # not blank


def test_exercise_preset_from_the_command_line(capsys, tmp_path, shared_data):
    code, out, _ = run(
        capsys,
        "train",
        "--preset",
        "exercise",
        "-d",
        str(shared_data / "mnist-10k"),
        "-e",
        "2",
        "-o",
        str(tmp_path),
        "--json",
        "-q",
    )
    summary = json.loads(out)
    assert code == 0 and summary["preset"] == "exercise"
    meta = ckpt.load(tmp_path / "checkpoint.npz")[2]
    assert 23 <= meta["history"][0]["train_loss"] <= 24
    assert meta["config"]["dtype"] == "float64" and meta["config"]["batch_size"] == 0


def test_one_epoch_is_said_in_the_singular(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "-d", "digits", "-e", "1", "-o", str(tmp_path))
    assert code == 0 and "after 1 epoch (" in out


def test_resume_keeps_the_stored_epochs_unless_given(capsys, tmp_path):
    out = str(tmp_path)
    assert main(["train", "-d", "digits", "-e", "2", "-o", out, "-q"]) == 0
    assert main(["train", "-d", "digits", "-o", out, "--resume", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2  # not the preset's 20
    before = (tmp_path / "checkpoint.npz").read_bytes()
    code, _, err = run_catching_exit(capsys, ["train", "-o", out, "--resume", "--lr", "0.1"])
    assert_one_line_error(code, err, "--lr cannot change when resuming")
    assert (tmp_path / "checkpoint.npz").read_bytes() == before  # nothing of the run changed
    assert main(["train", "-d", "digits", "-o", out, "--resume", "-e", "3", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 3
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


def test_zero_epochs_is_refused_and_nothing_is_written(capsys, tmp_path):
    argv = ["train", "-d", "digits", "-e", "0", "-o", str(tmp_path / "r")]
    code, out, err = run_catching_exit(capsys, argv)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "between 1 and" in err
    assert not (tmp_path / "r").exists()


def test_a_run_on_a_relative_dataset_path_works_from_any_directory(
    capsys, tmp_path, shared_data, monkeypatch
):
    import shutil

    data = tmp_path / "work" / "data"
    shutil.copytree(shared_data / "mnist-10k", data)
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", "-d", "data", "-e", "1", "--hidden", "16", "-o", "run", "-q"]) == 0
    monkeypatch.chdir(tmp_path)  # elsewhere: the stored dataset path still leads to the data
    assert main(["evaluate", "work/run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] > 0.5  # trained, not random
    assert main(["train", "-o", "work/run", "--resume", "-e", "2", "-q"]) == 0


def test_a_batch_larger_than_the_training_set_is_the_whole_set_in_the_memory_check(tmp_path):
    assert (
        main(
            [
                "train",
                "-d",
                "digits",
                "-e",
                "1",
                "-b",
                "1000000000",
                "-o",
                str(tmp_path / "r"),
                "-q",
            ]
        )
        == 0
    )


@pytest.mark.parametrize("extra", [[], ["--force"], ["--resume"]])
def test_a_checkpoint_path_that_is_a_directory_is_named(capsys, tmp_path, extra):
    (tmp_path / "checkpoint.npz").mkdir()
    code = main(["train", "-d", "digits", "-e", "1", "-q", "-o", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "checkpoint.npz" in err
    assert "is a directory" in err and "checkpoint.npz/checkpoint.npz" not in err


def test_a_stored_data_dir_that_is_gone_is_only_a_place_not_searched(capsys, tmp_path):
    place = tmp_path / "datasets"
    place.mkdir()
    run_dir = tmp_path / "run"
    argv = ["train", "-d", "digits", "-e", "1", "-q", "-o", str(run_dir), "--data-dir", str(place)]
    assert main(argv) == 0
    place.rmdir()
    assert main(["evaluate", str(run_dir)]) == 0
    assert main(["train", "-o", str(run_dir), "--resume", "-e", "2", "-q"]) == 0


@pytest.mark.parametrize("name", ["checkpoint.npz", "metrics.jsonl"])
def test_a_run_file_that_is_a_link_or_fifo_is_refused_before_training(
    capsys, tmp_path, monkeypatch, name
):
    import os
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    for kind in ("fifo", "link"):
        run_dir = Path(kind)
        run_dir.mkdir()
        target = run_dir / name
        if kind == "fifo":
            os.mkfifo(target)
        else:
            Path("elsewhere").write_text("kept")
            target.symlink_to("../elsewhere")
        code, out, err = run(capsys, "train", "-d", "digits", "-e", "1", "-o", str(run_dir), "-q")
        assert_one_line_error(code, err, f"{target}: is a")
        assert "epoch" not in out + err  # refused before any training
        assert target.is_symlink() if kind == "link" else target.is_fifo()
    assert (tmp_path / "elsewhere").read_text() == "kept"


@pytest.mark.parametrize("flag, flushed", [((), True), (("--keep-denormals",), False)])
def test_training_flushes_subnormals_unless_keep_denormals(
    capsys, tmp_path, monkeypatch, flag, flushed
):
    from npgrad import fpenv
    from npgrad.app.trainer import Trainer

    if not fpenv.available():
        pytest.skip("no flush-to-zero control on this platform")
    seen = []
    epochs = Trainer._epochs
    monkeypatch.setattr(
        Trainer, "_epochs", lambda self: (seen.append(fpenv.denormals_flushed()), epochs(self))
    )
    code, _, _ = run(capsys, "train", "-d", "digits", "-e", "1", "-o", str(tmp_path), "-q", *flag)
    assert code == 0 and seen == [flushed] and not fpenv.denormals_flushed()


def test_a_resumed_run_keeps_its_subnormal_mode_and_refuses_another(capsys, tmp_path, monkeypatch):
    """The mode changes the optimizer's bits where subnormals occur: it is stored with the run,
    a resume continues in it, and asking for the other one is refused, the run untouched."""
    from npgrad import fpenv
    from npgrad.app.trainer import Trainer

    out = str(tmp_path)
    assert main(["train", "-d", "digits", "-e", "1", "-o", out, "-q", "--keep-denormals"]) == 0
    assert ckpt.load(tmp_path / "checkpoint.npz")[2]["config"]["keep_denormals"] is True
    code, _, _ = run(capsys, "train", "-o", out, "--resume", "-e", "2", "-q", "--keep-denormals")
    assert code == 0  # repeating the stored value is fine
    seen = []
    epochs = Trainer._epochs
    monkeypatch.setattr(
        Trainer, "_epochs", lambda self: (seen.append(fpenv.denormals_flushed()), epochs(self))
    )
    assert main(["train", "-o", out, "--resume", "-e", "3", "-q"]) == 0
    assert seen == [False]  # kept, as stored, without the flag
    before = (tmp_path / "checkpoint.npz").read_bytes()
    fresh = tmp_path / "flushed"
    assert main(["train", "-d", "digits", "-e", "1", "-o", str(fresh), "-q"]) == 0
    flushed_before = (fresh / "checkpoint.npz").read_bytes()
    code, _, err = run(capsys, "train", "-o", str(fresh), "--resume", "-e", "2", "--keep-denormals")
    assert_one_line_error(code, err, "--keep-denormals cannot change when resuming")
    assert (fresh / "checkpoint.npz").read_bytes() == flushed_before
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


class _Rank:
    """Rank 0 of two under mpiexec; its MPI_Abort is recorded (and returns, as it must not)."""

    rank, size, root, aborted = 0, 2, True, None

    def abort(self, code):
        self.aborted = code


@pytest.mark.parametrize("lost", [True, False])
def test_a_ranks_error_is_one_line_and_ends_every_rank(capsys, tmp_path, monkeypatch, lost):
    from npgrad import distributed
    from npgrad.cli import train
    from npgrad.errors import RankLost

    rank, slept = _Rank(), []

    def fails(args, comm):
        if lost:
            raise RankLost("rank 0: another rank stopped in the middle of a step (MPI: x)")
        raise ValueError("bad batch")

    monkeypatch.setattr(distributed, "world", lambda: rank)
    monkeypatch.setattr(train, "_train", fails)
    monkeypatch.setattr(train.time, "sleep", slept.append)
    code = main(["train", "-d", "digits", "-o", str(tmp_path)])
    # one line even if MPI_Abort returned; a rank that lost another gave mpiexec its chance
    # to end it (and name the rank that stopped) first
    said = "rank 0: another rank stopped" if lost else "rank 0: bad batch"
    assert_one_line_error(code, capsys.readouterr().err, said)
    assert rank.aborted == 2 and slept == ([train.LAUNCHER_GRACE] if lost else [])
