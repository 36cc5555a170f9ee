"""``npgrad check``: whatever the student's file does, one clear line and the right exit code.

The file runs in a child process, whose own output goes straight to the
terminal: these tests read both through ``capfd``.
"""

import time

import pytest

from npgrad.cli import main
from tests.cli.helpers import assert_one_line_error
from tests.test_layercheck import HERE

WRONG = str(HERE / "wrong_layers.py")


def check(capfd, *argv):
    try:
        code = main(["check", *argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_lines(out):
    return [line.strip() for line in out.splitlines() if line.strip().startswith("error:")]


def test_exit_codes_and_summary(capfd):
    code, out, _ = check(capfd, WRONG, "--class", "Relu", "--class", "Matmul", "--no-torch")
    assert code == 0 and "Relu: PASS" in out and "2 of 2 layer classes passed" in out
    code, out, _ = check(capfd, WRONG, "--class", "MasklessRelu", "--no-torch")
    assert code == 1 and "ignores the mask" in out and "0 of 1 layer classes passed" in out
    code, out, _ = check(
        capfd, WRONG, "--shape", "Matmul=3x2,2x7", "--class", "Matmul", "--no-torch"
    )
    assert code == 0 and "inputs 3x2, 2x7" in out


def test_compares_with_pytorch_in_the_child(capfd, torch):
    code, out, _ = check(capfd, WRONG, "--class", "Softmax")
    assert code == 0 and "against pytorch: ok" in out


@pytest.mark.parametrize(
    "file, argv, message",
    [
        ("hangs_at_import.py", ["--timeout", "1"], "timed out after 1 s while importing the file"),
        ("exits_at_import.py", [], "ended the process (exit status 0: os._exit?) while importing"),
        ("sys_exit_at_import.py", [], "the file called sys.exit(3) while importing"),
        ("raises_at_import.py", [], "ValueError: oops at import"),
    ],
)
def test_a_file_that_cannot_be_imported_fails_in_one_line(capfd, file, argv, message):
    start = time.monotonic()
    code, out, err = check(capfd, str(HERE / file), "--no-torch", *argv)
    assert time.monotonic() - start < 30  # not a speed test: a hang was cut off
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(HERE / file)) and message in lines[0]


@pytest.mark.parametrize(
    "cls, message",
    [
        ("ExitsInBackward", "the code called sys.exit(3) during backward"),
        ("OsExitInBackward", "ended the process (exit status 0: os._exit?) during backward"),
        ("SegfaultInBackward", "crashed the Python interpreter (SIGSEGV) during backward"),
        ("OutOfMemoryInForward", "MemoryError: Unable to allocate"),
    ],
)
def test_a_class_that_exits_or_crashes_fails_alone(capfd, cls, message):
    file = str(HERE / "misbehaving_layers.py")
    code, out, _ = check(capfd, file, "--class", cls, "--class", "Tanh", "--no-torch")
    assert code == 1
    assert f"{cls}: FAIL" in out and "Tanh: PASS" in out and "1 of 2 layer classes passed" in out
    (line,) = error_lines(out)
    assert message in line


def test_a_hanging_class_is_reported_within_the_time_limit(capfd):
    start = time.monotonic()
    code, out, _ = check(capfd, str(HERE / "hangs_in_backward.py"), "--timeout", "3", "--no-torch")
    assert time.monotonic() - start < 30  # not a speed test: the hang was cut off
    assert code == 1 and "Relu: PASS" in out
    first, second = error_lines(out)
    assert first.startswith("error: timed out after 3 s during backward") and "--timeout" in first
    assert second == "error: not checked: no time left after HangsInBackward"


@pytest.mark.parametrize(
    "cls, message",
    [
        ("BackwardReturnsNone", "backward returned None (a missing return?)"),
        ("BackwardReturnsStr", "backward returned a str; expected a NumPy array of shape (5, 6)"),
        ("MatmulReturnsList", "backward returned a list of 2; expected a tuple of 2 NumPy arrays"),
        ("ForwardReturnsNone", "forward returned None (a missing return?)"),
    ],
)
def test_wrong_return_types_are_one_error_line_each(capfd, cls, message):
    code, out, _ = check(capfd, str(HERE / "wrong_returns.py"), "--class", cls, "--no-torch")
    assert code == 1
    (line,) = error_lines(out)
    assert line.startswith(f"error: {message}")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shape", "Relu=0x5"], "bad --shape 'Relu=0x5': give CLASS=SIZES with positive"),
        (["--shape", "Relu=-1x5"], "bad --shape 'Relu=-1x5'"),
        (["--shape", "Relu=5xx6"], "bad --shape 'Relu=5xx6'"),
        (["--shape", "Matmul=axb"], "bad --shape 'Matmul=axb'"),
        (["--shape", "Relu"], "bad --shape 'Relu'"),
        (["--shape", "Relu=5x6,"], "bad --shape 'Relu=5x6,'"),
        (["--shape", "Relu=2000x2000"], "at most 1,000,000 elements per input"),
        (["--shape", "Rleu=5x6"], "no layer class named Rleu (given a shape)"),
        (["--class", "Nope"], "no layer class named Nope"),
        (["--timeout", "0"], "argument --timeout: must be a positive number of seconds, not '0'"),
        (["--timeout", "-5"], "argument --timeout: must be a positive number of seconds"),
        (["--timeout", "nan"], "argument --timeout: must be a positive number of seconds"),
        (["--seed", "-1"], "argument --seed: must be a whole number >= 0, not '-1'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capfd, argv, message):
    code, out, err = check(capfd, WRONG, "--no-torch", *argv)
    assert_one_line_error(code, err, message)
    assert out == ""


@pytest.mark.parametrize(
    "path, message", [("no_such_file.py", "no_such_file.py: no such file"), (".", "is a folder")]
)
def test_missing_file_or_a_folder_is_a_usage_error(capfd, path, message):
    code, out, err = check(capfd, path)
    assert_one_line_error(code, err, message)
