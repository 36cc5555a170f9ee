"""``npgrad gradcheck``: one row per case, exit 1 on a wrong op, 2 on a usage error."""

import pytest

from npgrad import ops
from npgrad.check import all_ops
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

    monkeypatch.setattr(ops.Tanh, "vjp", staticmethod(broken_vjp))
    code, out, err = run(capsys, "gradcheck", "--op", "tanh", "--op", "exp", "--no-torch")
    assert code == 1
    assert "FAIL" in out and "3/6 cases of 2 ops passed" in out
    assert err.strip() == "FAILED: tanh"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--op", "nope"], "unknown op 'nope'; 'npgrad gradcheck' without --op lists every op"),
        (["--op", "sofmax"], "unknown op 'sofmax'; did you mean 'softmax' or"),
        (["--cases", "0"], "cases per op must be a whole number >= 1, not 0"),
        (["--cases", "-2"], "cases per op must be a whole number >= 1, not -2"),
        (["--seed", "-1"], "the seed must be a whole number >= 0, not -1"),
        (["--cases", "many"], "argument --cases: invalid int value: 'many'"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    code, out, err = run_catching_exit(capsys, ["gradcheck", *argv])
    assert_one_line_error(code, err, message)
    assert out == ""
