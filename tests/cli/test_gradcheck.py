"""``npgrad gradcheck``: one row per case, exit 1 on a wrong op, 2 on a usage error."""

import numpy as np
import pytest

from npgrad.checking.gradcheck import all_ops
from npgrad.ops import dense as ops
from tests.cli.helpers import assert_one_line_error, run, run_catching_exit


def test_passes_and_prints_one_row_per_case(capsys):
    code, out, err = run(capsys, "gradcheck", "--cases", "1", "--no-torch")
    assert code == 0, err
    n = len(all_ops())
    for name in all_ops():
        assert f"\n{name} " in out
    assert f"{n}/{n} cases of {n} ops passed" in out and "numerical checks only" in out


def test_compares_with_torch_when_installed(capsys, torch):
    code, out, _ = run(capsys, "gradcheck", "--op", "matmul", "--cases", "2")
    assert code == 0 and "2/2 cases of 1 ops passed" in out and "against PyTorch" in out


def test_fails_when_an_op_backward_is_wrong(monkeypatch, capsys):
    def broken_vjp(saved, g, needs=(True,)):
        return (g * (1 - saved),)  # tanh' is 1 - y**2, not 1 - y

    monkeypatch.setattr(ops.TanhOp, "vjp", staticmethod(broken_vjp))
    code, out, err = run(capsys, "gradcheck", "--op", "tanh", "--op", "exp", "--no-torch")
    assert code == 1
    assert "FAIL" in out and "3/6 cases of 2 ops passed" in out
    assert err.strip() == "FAILED: tanh"


def test_order_2_checks_second_derivatives_numerically(capsys):
    code, out, err = run(
        capsys, "gradcheck", "--order", "2", "--op", "tanh", "--op", "max", "--no-torch"
    )
    assert code == 0, err
    assert "torch 2nd" in out and "\ntanh " in out and "\nmax " in out
    assert "6/6 cases of 2 ops passed (second order), numerically (--no-torch: numerical" in out


def test_order_2_compares_with_torch_double_backward(capsys, torch):
    code, out, _ = run(capsys, "gradcheck", "--order", "2", "--op", "softmax", "--cases", "1")
    assert code == 0 and "1/1 cases of 1 ops passed (second order)" in out
    assert "against PyTorch" in out


def test_order_2_fails_a_vjp_right_only_to_first_order(monkeypatch, capsys):
    def first_order_only(saved, g, needs=(True,)):
        y = saved if isinstance(saved, np.ndarray) else saved.data  # y as a constant
        return (g * (1 - y * y),)

    monkeypatch.setattr(ops.TanhOp, "vjp", staticmethod(first_order_only))
    code, _, _ = run(capsys, "gradcheck", "--op", "tanh", "--no-torch")
    assert code == 0
    code, out, err = run(capsys, "gradcheck", "--order", "2", "--op", "tanh", "--no-torch")
    assert code == 1 and "FAIL" in out and err.strip() == "FAILED: tanh"


def test_order_2_skips_and_names_an_op_whose_vjp_is_numpy_only(monkeypatch, capsys):
    monkeypatch.setattr(ops.ExpOp, "differentiable_vjp", False)
    code, out, _ = run(
        capsys, "gradcheck", "--order", "2", "--op", "exp", "--op", "neg", "--no-torch"
    )
    assert code == 0
    assert "exp skipped: its vjp computes on NumPy arrays only" in out
    assert "3/3 cases of 1 ops passed" in out and "skipped (vjp not differentiable): exp" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--order", "3"], "argument --order: invalid choice: 3 (choose from 1, 2)"),
        (["--op", "nope"], "unknown op 'nope'; 'npgrad gradcheck' without --op lists every op"),
        (["--op", "sofmax"], "unknown op 'sofmax'; did you mean 'softmax' or"),
        (["--cases", "0"], "argument --cases: must be a whole number from 1 to 1000, not '0'"),
        (["--cases", "-2"], "argument --cases: must be a whole number from 1 to 1000, not '-2'"),
        (["--cases", "1001"], "argument --cases: must be a whole number from 1 to 1000"),
        (["--seed", "-1"], "the seed must be a whole number >= 0, not -1"),
        (
            ["--cases", "many"],
            "argument --cases: must be a whole number from 1 to 1000, not 'many'",
        ),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    code, out, err = run_catching_exit(capsys, ["gradcheck", *argv])
    assert_one_line_error(code, err, message)
    assert out == ""


def test_a_device_without_cupy_is_one_line_before_any_case(capsys):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    code, out, err = run_catching_exit(capsys, ["gradcheck", "--device", "cuda"])
    assert_one_line_error(code, err, "pip install 'npgrad[cuda12]'")
    assert "FAIL" not in out
