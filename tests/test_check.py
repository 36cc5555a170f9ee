"""gradcheck as a tool, and the ``npgrad gradcheck`` command."""

import numpy as np
import pytest

import npgrad
from npgrad import GradcheckError, ops
from npgrad.cli import main


def test_full_mode_passes_on_a_correct_function():
    rng = np.random.default_rng(0)
    report = npgrad.gradcheck(
        lambda a, b: npgrad.tanh(a @ b), rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    )
    assert report.passed and report.mode == "full"
    assert len(report.inputs) == 2 and report.max_abs_error < 1e-8
    assert "PASS" in str(report)


def test_directional_mode_for_large_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 50))
    report = npgrad.gradcheck(lambda a: npgrad.softmax(a).log().sum(axis=0), x)
    assert report.passed and report.mode == "directional"


class WrongSigmoidOp(ops.Op):
    """A sigmoid whose backward forgets a factor (not registered: no name)."""

    @staticmethod
    def forward(x):
        y = 1 / (1 + np.exp(-x))
        return y, y

    @staticmethod
    def vjp(saved, g, needs=(True,)):
        return (g * saved,)


def wrong_sigmoid(x):
    from npgrad.autodiff import apply

    return apply(WrongSigmoidOp, x)


@pytest.mark.parametrize("shape", [(3, 2), (100, 60)])
def test_detects_a_wrong_backward_in_both_modes(shape):
    x = np.random.default_rng(1).standard_normal(shape)
    report = npgrad.gradcheck(wrong_sigmoid, x)
    assert not report.passed and "MISMATCH" in str(report)
    with pytest.raises(GradcheckError, match="FAIL"):
        npgrad.gradcheck(wrong_sigmoid, x, raise_on_failure=True)


def test_full_mode_names_the_worst_element():
    x = np.array([[0.1, 5.0], [0.2, 0.3]])
    report = npgrad.gradcheck(wrong_sigmoid, x)
    # the error is s - s(1 - s) = s**2, largest where x is largest
    assert report.inputs[0].worst == (0, 1)


def test_float32_is_cast_with_a_note_and_integers_are_refused():
    report = npgrad.gradcheck(npgrad.exp, np.ones(3, dtype=np.float32))
    assert report.passed and any("float32" in n for n in report.notes)
    with pytest.raises(GradcheckError, match="dtype int64"):
        npgrad.gradcheck(npgrad.exp, np.arange(3))


def test_function_must_return_a_tensor():
    with pytest.raises(GradcheckError, match="must return an npgrad Tensor"):
        npgrad.gradcheck(lambda a: a.data * 2, np.ones(2))


def test_cli_gradcheck_passes_and_prints_one_row_per_case(capsys):
    assert main(["gradcheck", "--cases", "1"]) == 0
    out = capsys.readouterr().out
    for name in ops.OPS:
        assert f"\n{name} " in out
    assert "23/23 cases of 23 ops passed" in out


def test_cli_gradcheck_fails_when_an_op_backward_is_wrong(monkeypatch, capsys):
    def broken_vjp(saved, g, needs=(True,)):
        return (g * (1 - saved),)  # tanh' is 1 - y**2, not 1 - y

    monkeypatch.setattr(ops.Tanh, "vjp", staticmethod(broken_vjp))
    assert main(["gradcheck", "--op", "tanh", "--op", "exp"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "FAILED: tanh" in captured.err


def test_cli_gradcheck_unknown_op_is_one_line_error(capsys):
    assert main(["gradcheck", "--op", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npgrad: error: unknown op 'nope'") and err.count("\n") == 1
