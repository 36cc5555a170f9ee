"""``npgrad check``: whatever the student's file does, one clear line and the right exit code.

The file runs in a child process, whose own output goes straight to the
terminal: these tests read both through ``capfd``.
"""

import os
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npgrad.cli import main
from tests.cli.helpers import assert_one_line_error

HERE = Path(__file__).resolve().parents[1] / "fixtures" / "layers"  # the student-style files
PAIRS = Path(__file__).resolve().parents[1] / "fixtures" / "pairs"  # the same, as function pairs
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


def test_each_class_that_exits_or_crashes_fails_alone_with_one_error_line(capfd):
    code, out, _ = check(capfd, str(HERE / "misbehaving_layers.py"), "--no-torch")
    assert code == 1 and "Relu: PASS" in out and "Tanh: PASS" in out
    assert "2 of 8 layer classes passed" in out
    assert error_lines(out) == [
        "error: the code called sys.exit(3) during backward",
        "error: the code called sys.exit('done') during forward",
        "error: the code called sys.exit(1) during the constructor",
        "error: ended the process (exit status 0: os._exit?) during backward",
        "error: crashed the Python interpreter (SIGSEGV) during backward",
        error_lines(out)[5],
    ]
    assert error_lines(out)[5].startswith("error: forward failed: ")
    assert "MemoryError: Unable to allocate" in error_lines(out)[5]


def test_a_hanging_class_is_reported_within_the_time_limit(capfd):
    start = time.monotonic()
    code, out, _ = check(capfd, str(HERE / "hangs_in_backward.py"), "--timeout", "3", "--no-torch")
    assert time.monotonic() - start < 30  # not a speed test: the hang was cut off
    assert code == 1 and "Relu: PASS" in out
    first, second = error_lines(out)
    assert first.startswith("error: timed out after 3 s during backward") and "--timeout" in first
    assert second == "error: not checked: no time left after HangsInBackward"


def test_wrong_return_types_are_one_error_line_each(capfd):
    code, out, _ = check(capfd, str(HERE / "wrong_returns.py"), "--no-torch")
    assert code == 1 and "0 of 10 layer classes passed" in out
    lines = error_lines(out)
    assert len(lines) == 10
    expected = [
        "backward returned None (a missing return?); expected a NumPy array of shape (5, 6)",
        "backward returned a str; expected a NumPy array of shape (5, 6)",
        "backward returned a list of 5; expected a NumPy array of shape (5, 6)",
        "backward returned a list of 2; expected a tuple of 2 NumPy arrays (one per input)",
        "backward returned, as the gradient of input 1, None (a missing return?)",
        "backward returned a NumPy array of shape (5, 6); expected a tuple of 2 NumPy arrays",
        "forward returned None (a missing return?)",
        "forward returned a str",
        "forward returned a tuple of 2",
        "forward returned an array of dtype object",
    ]
    for line, start in zip(lines, expected):
        assert line.startswith(f"error: {start}"), line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shape", "Relu=0x5"], "bad --shape 'Relu=0x5': give NAME=SIZES with positive"),
        (["--shape", "Relu=-1x5"], "bad --shape 'Relu=-1x5'"),
        (["--shape", "Relu=5xx6"], "bad --shape 'Relu=5xx6'"),
        (["--shape", "Matmul=axb"], "bad --shape 'Matmul=axb'"),
        (["--shape", "Relu"], "bad --shape 'Relu'"),
        (["--shape", "Relu=5x6,"], "bad --shape 'Relu=5x6,'"),
        (["--shape", "Relu=2000x2000"], "at most 1,000,000 elements per input"),
        (["--shape", "Rleu=5x6"], "no layer class or function pair named Rleu (given a shape)"),
        (["--class", "Nope"], "no layer class or function pair named Nope"),
        (["--pair", "Relu"], "no layer class or function pair named Relu"),
        (["--param", "Relu"], "bad --param 'Relu': give NAME=KEY:VALUE"),
        (["--param", "Relu=stride"], "bad --param 'Relu=stride'"),
        (["--param", "Relu=stride:"], "bad --param 'Relu=stride:'"),
        (["--param", "Relu=1x:2"], "bad --param 'Relu=1x:2'"),
        (
            ["--param", "Relu=mode:test"],
            "Relu: the constructor takes no parameter 'mode' (it takes nothing)",
        ),
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


# --------------------------------------------------------------------------- function pairs


def test_one_line_per_pair_then_the_details(capfd):
    code, out, _ = check(capfd, str(PAIRS / "conv_padding_kept.py"))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == (
        "conv_forward_naive/conv_backward_naive: FAIL  stride=2 pad=1: dx: padding not removed: "
        "dx has the padded shape (2, 3, 9, 11) (inside, its values are right); return "
        "dx_pad[:, :, pad:pad + H, pad:pad + W], shape (2, 3, 7, 9)"
    )
    assert lines[2] == "conv_forward_naive/conv_backward_naive: FAIL"
    assert "    dw (4, 3, 3, 5): max abs err" in out
    assert lines[-1] == "0 of 1 function pairs passed"


def test_correct_pairs_pass_and_warnings_do_not_fail(capfd):
    code, out, _ = check(capfd, str(PAIRS / "correct_layers.py"), "--pair", "relu_forward")
    assert code == 0 and out.splitlines() == [
        "relu_forward/relu_backward: PASS",
        "",
        "1 of 1 function pairs passed",
    ]
    code, out, _ = check(capfd, str(PAIRS / "dout_in_place.py"))
    assert code == 0 and "relu_forward/relu_backward: PASS  (warning: backward modifies" in out


def test_params_and_shapes_reach_the_pair(capfd):
    stride_ignored = str(PAIRS / "conv_stride_ignored.py")
    code, out, _ = check(capfd, stride_ignored, "--shape", "conv_forward_naive=1x2x5x5,3x2x3x3,3")
    assert code == 1 and "stride ignored in backward" in out and "inputs 1x2x5x5, 3x2x3x3, 3" in out
    # with stride 1 and padding 1 pinned (the file's dx_pad[:, :, pad:-pad] is wrong at pad 0,
    # which the checks' own geometries include), the mistake cannot show: the options did reach
    code, out, _ = check(
        capfd, stride_ignored, "--param", "conv_forward_naive=stride:1",
        "--param", "conv_forward_naive=conv_param.pad:1",
    )  # fmt: skip
    assert code == 0, out
    pad = ["--param", "conv_forward_naive=conv_param.pad:0"]
    code, out, _ = check(capfd, stride_ignored, "--param", "conv_forward_naive=stride:1", *pad)
    assert code == 1 and "dx: dx is empty: with pad = 0, dx_pad[:, :, pad:-pad, pad:-pad]" in out


def test_a_file_mixing_classes_and_pairs_is_checked_completely(capfd):
    code, out, _ = check(capfd, str(PAIRS / "mixed.py"), "--no-torch")
    assert code == 1
    assert "affine_forward/affine_backward: PASS" in out and "Relu: PASS" in out
    assert "relu_forward/relu_backward: FAIL  dx: gradient ignores the mask" in out
    assert "Tanh: FAIL" in out and "sign error" in out
    assert out.splitlines()[-1] == (
        "1 of 2 layer classes passed (--no-torch: numerical checks only); "
        "1 of 2 function pairs passed"
    )
    code, out, _ = check(capfd, str(PAIRS / "mixed.py"), "--class", "Relu", "--no-torch")
    assert code == 0 and "affine_forward" not in out


def test_wrong_returns_of_pairs_are_named(capfd):
    code, out, _ = check(capfd, str(PAIRS / "wrong_returns.py"))
    assert code == 1
    assert out.splitlines()[:4] == [
        "relu_forward/relu_backward: FAIL  forward returned a NumPy array of shape (4, 6); "
        "expected a tuple (out, cache)",
        "affine_forward/affine_backward: FAIL  backward returned 2 gradient(s); "
        "expected a tuple of 3 arrays (dx, dw, db)",
        "tanh_forward/tanh_backward: FAIL  backward returned None (a missing return?); "
        "expected a NumPy array (dx) of shape (4, 6)",
        "svm_loss: FAIL  the loss returned a float; expected a tuple (loss, gradient)",
    ]
    assert "nan" not in out.lower()


def test_a_pair_that_exits_is_one_error_line(capfd):
    argv = ["--pair", "affine_forward", "--pair", "relu_forward"]
    code, out, _ = check(capfd, str(PAIRS / "misbehaving_pairs.py"), *argv)
    assert code == 1 and "relu_forward/relu_backward: PASS" in out
    assert error_lines(out) == [
        "error: ended the process (exit status 0: os._exit?) during backward"
    ]


CONV = str(HERE / "wrong_conv_layers.py")


def test_image_layer_classes_are_checked_with_their_mistakes_named(capfd):
    code, out, _ = check(
        capfd, CONV, "--class", "Conv2d", "--class", "StrideIgnoredConv2d", "--no-torch"
    )
    assert code == 1
    assert "Conv2d: PASS  (inputs 2x3x7x9, 4x3x3x5, 4)" in out
    assert "built as Conv2d(stride=2, padding=1); compared with conv2d(stride=2" in out
    assert "StrideIgnoredConv2d: FAIL" in out
    assert "diagnosis: stride ignored in backward" in out
    assert "1 of 2 layer classes passed" in out


def test_shapes_and_constructor_arguments_of_a_class_from_the_command_line(capfd):
    argv = ["--class", "Conv2d", "--class", "MaxPool2d", "--no-torch"]
    argv += ["--shape", "Conv2d=2x3x8x8,4x3x3x3,4", "--param", "Conv2d=stride:1"]
    argv += ["--param", "MaxPool2d=kernel_size:3,2"]
    code, out, _ = check(capfd, CONV, *argv)
    assert code == 0, out
    assert "Conv2d: PASS  (inputs 2x3x8x8, 4x3x3x3, 4)" in out
    assert "built as Conv2d(stride=1, padding=1)" in out
    assert "built as MaxPool2d(kernel_size=(3, 2), stride=2)" in out


CONV = str(HERE / "wrong_conv_layers.py")


@pytest.mark.parametrize(
    "param, message",
    [
        ("Conv2d=stride:0", "stride must be an int or a pair of ints >= 1, got 0"),
        ("Conv2d=padding:-1", "padding must be an int or a pair of ints >= 0, got -1"),
        ("MaxPool2d=kernel_size:2,3,4", "kernel_size must be an int or a pair"),
    ],
)
def test_a_bad_geometry_param_is_the_options_error_not_the_layers(capfd, param, message):
    code, out, err = check(capfd, CONV, "--class", param.split("=")[0], "--param", param)
    assert out == ""
    assert_one_line_error(code, err, message)


def test_inputs_that_leave_nothing_to_compare_fail_instead_of_passing(capfd):
    # a wrong pooling backward "passes" when the window does not fit: the output is empty
    code, out, _ = check(
        capfd,
        CONV,
        "--class",
        "SpreadMaxPool2d",
        "--shape",
        "SpreadMaxPool2d=2x3x1x1",
        "--no-torch",
    )
    assert code == 1 and "is empty: nothing to check" in out


# --------------------------------------------------------------------------- hostile files


def test_a_syntax_error_is_one_clean_line(capfd, tmp_path):
    file = tmp_path / "broken.py"
    file.write_text('import numpy as np\npattern = "\\d+"\n\ndef relu_forward(x)\n    return x\n')
    code, out, err = check(capfd, str(file))
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"{file}: error while importing: {file}:4: SyntaxError: expected ':'"
    ]


def test_a_parameter_naming_an_input_is_a_usage_error(capfd):
    code, out, err = check(capfd, str(PAIRS / "correct_layers.py"), "--param", "svm_loss=y:3")
    assert_one_line_error(code, err, "svm_loss: y is the labels, drawn by npgrad, not a parameter")
    assert out == ""
    code, out, err = check(
        capfd, str(PAIRS / "correct_layers.py"), "--param", "conv_forward_naive=stride:a"
    )
    assert_one_line_error(code, err, "conv_param.stride must be a whole number >= 1")


def test_a_keyboard_interrupt_from_the_code_is_its_units_failure_not_a_crash(capfd, tmp_path):
    file = tmp_path / "interrupts.py"
    file.write_text(
        "def relu_forward(x):\n    raise KeyboardInterrupt\n\n"
        "def relu_backward(dout, cache):\n    return dout\n"
    )
    code, out, err = check(capfd, str(file))
    assert code == 1 and "SIGINT" not in out + err and err == ""
    assert out.splitlines()[0] == (
        f"relu_forward/relu_backward: FAIL  forward failed: {file}:2: KeyboardInterrupt"
    )


def _marked(mark):
    """PIDs of live processes whose environment holds ``mark`` (what a test's children inherit)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# Statements a hostile file may run, at import or in a method; {pid} is a file for PIDs.
HOSTILE = {
    "exit": "os._exit(3)",
    "sys.exit": "sys.exit(4)",
    "raise": "raise ValueError('hostile')",
    "interrupt": "raise KeyboardInterrupt",
    "base exception": "raise Custom('hostile')",
    "segfault": "os.kill(os.getpid(), signal.SIGSEGV)",
    "fork": "if os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)",
    "daemon": (
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
        "    os._exit(0)"
    ),
    "process": "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])",
    "loop": "while True:\n    pass",
    "kill the supervisor": (
        "if os.getppid() != TESTER:\n    os.kill(os.getppid(), signal.SIGKILL)\n    time.sleep(0.2)"
    ),
    "patch the check": (
        "import npgrad.checking.function_pairs, npgrad.checking.layer_classes\n"
        "npgrad.checking.function_pairs.mismatches = npgrad.checking.layer_classes.mismatches = lambda *a: np.zeros(1, bool)"
    ),
    "patch numpy": "np.allclose = np.array_equal = lambda *a, **k: True",
    "patch the recording": "import npgrad.checking.sandbox\nnpgrad.sandbox.encode = lambda value: None",
}
PLACES = ["import", "Relu.forward", "Relu.backward", "relu_forward", "relu_backward"]


def _hostile_file(statements, wrong=False):
    def at(place, indent):
        body = [HOSTILE[s] for p, s in statements if p == place]
        return "".join(textwrap.indent(b, " " * indent) + "\n" for b in body)

    return f"""import os, signal, subprocess, sys, time
import numpy as np

TESTER = {os.getpid()}

class Custom(BaseException):
    pass

{at("import", 0)}
class Relu:
    def forward(self, x):
{at("Relu.forward", 8)}        self.x = x
        return np.maximum(x, 0)

    def backward(self, g):
{at("Relu.backward", 8)}        return g * (self.x > 0)

def relu_forward(x):
{at("relu_forward", 4)}    return np.maximum(x, 0), x

def relu_backward(dout, cache):
{at("relu_backward", 4)}    return dout * (cache > 0){" * 0" if wrong else ""}
"""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    statements=st.lists(
        st.tuples(st.sampled_from(PLACES), st.sampled_from(sorted(HOSTILE))), max_size=3
    ),
    wrong=st.booleans(),
)
def test_hostile_files_end_in_one_line_each_and_leave_no_process(
    capfd, tmp_path, monkeypatch, statements, wrong
):
    mark = f"NPGRAD_TEST_MARK={uuid.uuid4().hex}"
    monkeypatch.setenv(*mark.split("="))
    file = tmp_path / f"hostile_{uuid.uuid4().hex[:8]}.py"
    file.write_text(_hostile_file(statements, wrong))
    code, out, err = check(capfd, str(file), "--timeout", "0.7", "--no-torch")
    assert code in (0, 1), (code, out, err)
    if wrong:  # whatever else the file does (patch npgrad, its recording...), never a PASS
        assert code == 1 and "relu_forward/relu_backward: PASS" not in out, out
    if out == "":  # the file could not be imported: that is the one line
        assert len(err.splitlines()) == 1 and err.startswith(f"{file}: "), err
    else:
        lines = out.splitlines()
        assert lines[0].startswith("relu_forward/relu_backward: ")  # its one line, first
        assert len([line for line in lines if line.startswith("Relu: ")]) == 1
        assert all(len(e.splitlines()) == 1 for e in error_lines(out))
        assert (
            "of 1 layer classes passed" in lines[-1] and "of 1 function pairs passed" in lines[-1]
        )
    assert "Traceback" not in out + err
    assert _marked(mark.encode()) == [], "a process the file started outlived the check"
