"""The ``npgrad`` command as a whole: one-line errors, help with examples, entry point."""

import subprocess
import sys

import pytest

from npgrad.cli import main
from tests.cli.helpers import assert_one_line_error, run_catching_exit


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "-d", "cifar"], "unknown dataset 'cifar'"),
        (["train", "-d", "/no/such/dir"], "no such directory"),
        (["train", "-d", "digits", "--hidden", "256,abc"], "bad architecture"),
        (["train", "-d", "digits", "--hidden", "-5"], "hidden sizes must be positive"),
        (["train", "-d", "digits", "--hidden", "100000000"], "this network needs at least"),
        (["train", "-d", "digits", "--epochs", "0"], "must be an integer between 1"),
        (["train", "-d", "digits", "--epochs", "three"], "expected an integer, got 'three'"),
        (["train", "-d", "digits", "--lr", "-1"], "--lr: must be a number in (0, 1000]"),
        (["train", "-d", "digits", "--lr", "1e30"], "--lr: must be a number in (0, 1000]"),
        (["train", "-d", "digits", "--batch-size", "0.5"], "positive integer or 'full'"),
        (["train", "-d", "digits", "--optimizer", "rmsprop"], "unknown value 'rmsprop'"),
        (["train", "-d", "digits", "--preset", "turbo"], "invalid choice: 'turbo'"),
        (["train", "-d", "digits", "--activation", "gelu"], "unknown value 'gelu'"),
        (["train", "-d", "digits", "--dropout", "1.5"], "must be a probability in [0, 1)"),
        (["train", "-d", "digits", "--init", "zeros"], "unknown value 'zeros'"),
        (["train", "-d", "digits", "--schedule", "linear"], "unknown value 'linear'"),
        (["train", "-d", "digits", "--dtype", "float16"], "use float32, float64"),
        (["train", "-d", "digits", "--seed", "-1"], "--seed: must be an integer between 0"),
        (["train", "-d", "digits", "--val", "0.9999", "-o", "{tmp}/r"], "leaves 0 for training"),
        (["train", "-d", "digits", "--warmup", "nan"], "--warmup: must be a number"),
        (["train", "-d", "digits", "--warmup", "-5"], "--warmup: must be a number at least 0"),
        (["train", "-d", "digits", "--clip", "-1"], "--clip: must be a number at least 0"),
        (["train", "-d", "digits", "--momentum", "nan"], "--momentum: must be a number"),
        (
            ["train", "-d", "digits", "--preset", "exercise", "--dropout", "0.1"],
            "--dropout is not used by the exercise model",
        ),
        (["train", "-d", "digits", "--resume", "--force", "-o", "{tmp}/r"], "give one of them"),
        (["train", "-d", "digits", "--resume", "-o", "{tmp}/none"], "no checkpoint"),
        (["train", "-d", "digits", "-o", "{tmp}/file.txt/sub"], "cannot write to"),
        (["evaluate", "{tmp}/missing.npz"], "no such checkpoint file"),
        (["evaluate", "{tmp}/file.txt"], "corrupt or not an npz"),
        (["predict", "{tmp}/file.txt", "x.png"], "corrupt or not an npz"),
        (["data", "fetch", "cifar"], "cannot be downloaded"),
        (["bogus"], "invalid choice"),
        (["train", "-d", "digits", "--data-dir", "{tmp}/nowhere"], "no such directory"),
        (["evaluate", "{tmp}/r", "--data-dir", "{tmp}/nowhere"], "--data-dir"),
        (["data", "list", "--data-dir", "{tmp}/nowhere"], "no such directory"),
        (["train", "-d", "digits", "-o", ""], "--out/-o: must not be empty"),
        (["serve", "{tmp}/r", "--host", ""], "--host: must not be empty"),
        (["train", "-d", "digits", "--channels", ","], "give channel counts as integers"),
        (["train", "-d", "digits", "-b", "-1"], "must be an integer >= 0, got -1"),
        (["gradcheck", "--cases", "100000000"], "must be a whole number from 1 to 1000"),
        (["predict", "{tmp}/r\x1b[31m", "x.png"], "r\\x1b[31m: no such checkpoint"),
    ],
)
def test_user_errors_are_one_line_and_non_zero(capsys, tmp_path, argv, message):
    (tmp_path / "file.txt").write_text("not a checkpoint")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run_catching_exit(capsys, argv)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "r").exists() and not (tmp_path / "none").exists()


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


def test_long_messages_are_wrapped_into_a_few_lines(capsys, monkeypatch):
    from npgrad.cli import train as train_command
    from npgrad.errors import ConfigError

    def fail(args):
        raise ConfigError("a very long explanation " * 20)

    monkeypatch.setattr(train_command, "run", fail)
    code, _, err = run_catching_exit(capsys, ["train"])
    lines = err.rstrip("\n").splitlines()
    assert code == 2 and 3 <= len(lines) <= 6
    assert lines[0].startswith("npgrad: error: a very long") and all(len(x) <= 100 for x in lines)
    assert all(x.startswith("  ") for x in lines[1:])


def test_running_out_of_memory_is_one_line(capsys, monkeypatch):
    from npgrad.cli import gradcheck

    def exhausted(args):
        raise MemoryError

    monkeypatch.setattr(gradcheck, "run", exhausted)
    code, _, err = run_catching_exit(capsys, ["gradcheck"])
    assert_one_line_error(code, err, "out of memory")
