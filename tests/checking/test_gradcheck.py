"""gradcheck as a tool, the shared pass rule and central differences, and check_ops."""

import numpy as np
import pytest

import npgrad
from npgrad import GradcheckError
from npgrad.autodiff import apply
from npgrad.checking.gradcheck import (
    agrees,
    all_ops,
    check_ops,
    gradcheck,
    mismatches,
    numeric_jacobian,
    numeric_vjp,
    op_case,
    perturbed_projections,
    torch_available,
)
from npgrad.ops import dense as ops
from npgrad.ops.base import OPS, Op
from npgrad.ops.dense import ReluOp


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


class WrongSigmoidOp(Op):
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


# --------------------------------------------------------------------------- shared helpers


def test_the_pass_rule_is_relative_to_the_trusted_value_and_nan_fails():
    want = np.array([1.0, 100.0, 0.0, 1.0])
    got = np.array([1.0 + 2e-6, 100.0 + 5e-4, 1e-7, np.nan])
    # atol 1e-6 + rtol 1e-5 * |want|: 1.1e-5 for 1, 1.001e-3 for 100, 1e-6 for 0
    np.testing.assert_array_equal(mismatches(got, want, 1e-6, 1e-5), [False, False, False, True])
    assert mismatches(np.array([1.0 + 2e-5]), np.array([1.0]), 1e-6, 1e-5).all()
    assert agrees(got[:3], want[:3], 1e-6, 1e-5)
    assert not agrees(got[:3], want[:3, None], 1e-6, 1e-5)  # shapes differ


def test_numeric_vjp_is_g_times_the_jacobian_and_restores_x():
    rng = np.random.default_rng(0)
    a, x = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    before = x.copy()
    g = rng.standard_normal((4, 2))
    jac = numeric_jacobian(lambda: np.tanh(a @ x), x)
    assert jac.shape == (8, 6)
    vjp = numeric_vjp(lambda: np.tanh(a @ x), x, g)
    np.testing.assert_allclose(vjp, (g.ravel() @ jac).reshape(x.shape), rtol=1e-12)
    exact = a.T @ (g * (1 - np.tanh(a @ x) ** 2))
    np.testing.assert_allclose(vjp, exact, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(x, before)


def test_perturbed_projections_are_the_raw_material_of_the_vjp():
    rng = np.random.default_rng(1)
    a, x = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    before, g = x.copy(), rng.standard_normal((4, 2))
    plus, minus = perturbed_projections(lambda: np.tanh(a @ x), x, g, 1e-6)
    assert plus.shape == minus.shape == x.shape
    np.testing.assert_array_equal(x, before)
    vjp = numeric_vjp(lambda: np.tanh(a @ x), x, g)
    np.testing.assert_allclose((plus - minus) / 2e-6, vjp, rtol=1e-6, atol=1e-9)
    shapes = iter([(4, 2), (4, 3)])
    with pytest.raises(ValueError, match=r"shape changed from \(4, 2\) to \(4, 3\)"):
        perturbed_projections(lambda: np.zeros(next(shapes)), x, g)


# --------------------------------------------------------------------------- check_ops


def test_check_ops_checks_every_registered_op_with_each_case():
    results = check_ops(seed=3, use_torch=False, cases_per_op=2)
    assert [r.op for r in results] == [name for name in all_ops() for _ in range(2)]
    assert all(r.passed and r.torch_forward_error is None for r in results)


def test_check_ops_is_reproducible_from_its_seed():
    first = [r.label for r in check_ops(["getitem", "sum"], seed=5, use_torch=False)]
    again = [r.label for r in check_ops(["getitem", "sum"], seed=5, use_torch=False)]
    other = [r.label for r in check_ops(["getitem", "sum"], seed=6, use_torch=False)]
    assert first == again and first != other


def test_check_ops_compares_with_torch(torch):
    (result,) = check_ops(["softmax"], use_torch=True, cases_per_op=1)
    assert result.torch_forward_error is not None and result.torch_forward_error < 1e-12
    assert result.passed


def test_check_ops_fails_an_op_whose_backward_is_wrong(monkeypatch):
    monkeypatch.setattr(ops.TanhOp, "vjp", staticmethod(lambda saved, g, needs=(True,): (g,)))
    results = check_ops(["tanh", "exp"], use_torch=False, cases_per_op=1)
    assert [(r.op, r.passed) for r in results] == [("tanh", False), ("exp", True)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cases_per_op": 0}, "cases per op must be a whole number >= 1"),
        ({"cases_per_op": -3}, "cases per op must be a whole number >= 1"),
        ({"seed": -1}, "seed must be a whole number >= 0"),
        ({"names": ["nope"]}, "unknown op 'nope'"),
    ],
)
def test_check_ops_refuses_what_it_cannot_do(kwargs, match):
    with pytest.raises(GradcheckError, match=match):
        check_ops(use_torch=False, **kwargs)


class Unchecked(Op):
    """An op without a spec (not registered by name: the test registers it)."""

    @staticmethod
    def forward(x):
        return x, None

    @staticmethod
    def vjp(saved, g, needs=(True,)):
        return (g,)


def test_an_op_without_a_spec_is_refused_by_name(monkeypatch):
    monkeypatch.setitem(OPS, "unchecked", Unchecked)
    with pytest.raises(GradcheckError, match="'unchecked' declares no spec"):
        check_ops(use_torch=False)
    with pytest.raises(GradcheckError, match="declares no spec"):
        op_case("unchecked", np.random.default_rng(0))


def test_op_case_labels_say_shapes_and_parameters():
    rng = np.random.default_rng(0)
    labels = {op_case("getitem", rng).label for _ in range(20)}
    assert "(3, 4) index=int[5]" in labels and "(3, 4) index=[::2,1::]" in labels
    case = op_case("cross_entropy", np.random.default_rng(1), (2, 3))
    assert case.label.startswith("(2, 3) target=") and "reduction=" in case.label


def test_torch_available_says_whether_torch_is_installed():
    import importlib.util

    assert torch_available() == (importlib.util.find_spec("torch") is not None)


# --------------------------------------------------------------------------- second order


def _tanh_vjp_treating_y_as_constant(saved, g, needs=(True,)):
    """Right to first order, wrong to second: it reads tanh's output as a constant."""
    y = saved.data if isinstance(saved, npgrad.Tensor) else saved
    return (g * (1 - y * y),)


@pytest.mark.parametrize("max_full", [4096, 1])  # the whole Jacobian, then random directions
def test_gradgradcheck_passes_a_correct_function_in_both_modes(max_full):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    report = npgrad.gradgradcheck(
        lambda x, w: npgrad.tanh(x @ w), a, b, max_full=max_full, atol=1e-6, rtol=1e-5
    )
    assert report.passed, str(report)
    assert report.mode == f"second order, {'full' if max_full > 1 else 'directional'}"
    assert [c.shape for c in report.inputs] == [(3, 4), (4, 2), (3, 2)]  # x, w and v
    assert "input 2 is the upstream gradient" in str(report)


@pytest.mark.parametrize("max_full", [4096, 1])
def test_gradgradcheck_catches_a_vjp_right_only_to_first_order(monkeypatch, max_full):
    monkeypatch.setattr(ops.TanhOp, "vjp", staticmethod(_tanh_vjp_treating_y_as_constant))
    x = np.random.default_rng(1).standard_normal((2, 3))
    assert npgrad.gradcheck(npgrad.tanh, x).passed
    report = npgrad.gradgradcheck(npgrad.tanh, x, max_full=max_full)
    assert not report.passed and "MISMATCH" in str(report)
    with pytest.raises(GradcheckError, match="FAIL"):
        npgrad.gradgradcheck(npgrad.tanh, x, raise_on_failure=True)


@pytest.mark.parametrize("max_full", [4096, 1])
@pytest.mark.parametrize("vjp", ["right", "wrong to second order"])
def test_gradcheck_order_2_and_gradgradcheck_give_the_same_report(monkeypatch, max_full, vjp):
    if vjp != "right":
        monkeypatch.setattr(ops.TanhOp, "vjp", staticmethod(_tanh_vjp_treating_y_as_constant))
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)).astype(np.float32)
    report = npgrad.gradcheck(lambda x, w: npgrad.tanh(x @ w), a, b, order=2, max_full=max_full)
    old_name = npgrad.gradgradcheck(lambda x, w: npgrad.tanh(x @ w), a, b, max_full=max_full)
    assert report == old_name and str(report) == str(old_name)
    assert report.passed == (vjp == "right") and report.mode.startswith("second order")


@pytest.mark.parametrize("order", [0, 3, True])
def test_gradcheck_refuses_an_order_it_cannot_check(order):
    with pytest.raises(GradcheckError, match="the order must be 1 or 2"):
        npgrad.gradcheck(npgrad.tanh, np.ones(2), order=order)


def test_gradgradcheck_of_a_linear_function_and_a_non_tensor():
    x = np.ones((2, 2))
    assert npgrad.gradgradcheck(lambda t: t * 3.0, x).passed  # every second derivative is 0
    with pytest.raises(GradcheckError, match="must return an npgrad Tensor"):
        npgrad.gradgradcheck(lambda t: 1.0, x)


def test_check_ops_second_order_checks_and_compares_with_torch(torch):
    results = check_ops(["tanh", "softmax"], cases_per_op=2, order=2)
    assert [r.op for r in results] == ["tanh", "tanh", "softmax", "softmax"]
    for r in results:
        assert r.passed and r.order == 2 and r.numeric.mode.startswith("second order")
        assert r.torch_backward_error is not None and r.torch_backward_error < 1e-10


def test_check_ops_second_order_fails_a_wrong_second_derivative(monkeypatch):
    monkeypatch.setattr(ops.TanhOp, "vjp", staticmethod(_tanh_vjp_treating_y_as_constant))
    assert all(r.passed for r in check_ops(["tanh"], use_torch=False))
    assert not any(r.passed for r in check_ops(["tanh"], use_torch=False, order=2))


def test_check_ops_second_order_skips_an_op_that_says_its_vjp_is_numpy_only(monkeypatch):
    monkeypatch.setattr(ops.ExpOp, "differentiable_vjp", False)
    (row,) = check_ops(["exp"], use_torch=False, order=2)
    assert row.passed and row.numeric is None and "NumPy arrays only" in row.skipped


def test_check_ops_second_order_reports_a_vjp_that_cannot_record(monkeypatch):
    def numpy_only(saved, g, needs=(True,)):
        return (g * np.asarray(saved),)  # np.asarray of a Tensor: not Tensor-capable

    monkeypatch.setattr(ops.ExpOp, "vjp", staticmethod(numpy_only))
    rows = check_ops(["exp", "tanh"], use_torch=False, cases_per_op=1, order=2)
    assert [r.passed for r in rows] == [False, True]
    assert "the vjp of op 'exp' computes on NumPy arrays only" in rows[0].error


def test_check_ops_refuses_a_third_order():
    with pytest.raises(GradcheckError, match="the order must be 1 or 2, not 3"):
        check_ops(["tanh"], order=3)


def test_numeric_jacobian_of_an_empty_input_has_one_row_per_output():
    x = np.zeros((0, 2))
    assert numeric_jacobian(lambda: np.ones(3) * x.sum(), x).shape == (3, 0)


# --------------------------------------------------------------------------- kinks


class FlippedReluOp(ReluOp):
    """relu with the sign of its gradient wrong (not registered: no name)."""

    name = ""

    @staticmethod
    def vjp(saved, g, needs=(True,)):
        return (-g * (saved > 0),)


class WrongSquareOp(Op):
    """x**2 whose vjp forgets the 2: smooth, curved, and wrong everywhere but 0."""

    @staticmethod
    def forward(x):
        return x * x, x

    @staticmethod
    def vjp(saved, g, needs=(True,)):
        return (g * saved,)


def test_an_input_at_a_kink_is_inconclusive_there_never_a_failure():
    x = np.array([[0.0, 1.0, -2.0], [3e-7, -0.5, 0.0]])  # 3e-7: within the step of 0
    report = gradcheck(lambda t: npgrad.relu(t), x)
    assert report.passed, report
    (check,) = report.inputs
    assert check.kinks == 3 and check.kink_at == (0, 0) and check.max_abs_error < 1e-8
    assert "inconclusive at a kink: 3 Jacobian entries, e.g. at (0, 0)" in str(report)
    hinge = gradcheck(lambda t: npgrad.relu(1.0 - t).sum(), np.array([1.0, 0.3, 2.0]))
    assert hinge.passed and hinge.inputs[0].kinks == 1  # the hinge at its margin


def test_kinks_found_in_directional_mode_are_left_out_of_every_direction():
    x = np.random.default_rng(0).standard_normal((40, 150))
    x[0, :5] = 0.0
    report = gradcheck(lambda t: npgrad.relu(t).sum(), x)
    assert report.mode == "directional" and report.passed, report
    assert report.inputs[0].kinks == 5 and report.inputs[0].kink_at == (0, 0)
    smooth = gradcheck(lambda t: npgrad.tanh(t).sum(), x)
    assert smooth.passed and smooth.inputs[0].kinks == 0


@pytest.mark.parametrize("shape", [(2, 3), (40, 150)])  # full mode, directional mode
def test_a_wrong_gradient_still_fails_beside_kinks(shape):
    x = np.random.default_rng(1).standard_normal(shape)
    x.reshape(-1)[:3] = 0.0
    report = gradcheck(lambda t: apply(FlippedReluOp, t).sum(), x)
    assert not report.passed and report.inputs[0].kinks == 3, report


def test_a_curved_function_with_a_wrong_gradient_is_no_kink():
    x = np.array([0.5, -1.5, 2.0, 1e-3])
    report = gradcheck(lambda t: apply(WrongSquareOp, t) * 1000.0, x)
    assert not report.passed and report.inputs[0].kinks == 0, report


@pytest.mark.parametrize("order", [1, 2])
def test_the_op_checks_run_on_a_device_against_pytorch(order):
    """What ``npgrad gradcheck --device cuda`` runs on a GPU: npgrad on the device (here the
    CuPy stand-in, which refuses any NumPy call on its arrays), PyTorch beside it."""
    pytest.importorskip("torch")
    from tests import fakecupy

    fakecupy.install()
    try:
        results = check_ops(seed=2, cases_per_op=2, order=order, device="cuda", torch_device="cpu")
    finally:
        fakecupy.uninstall()
    checked = [r for r in results if not r.skipped]
    assert len({r.op for r in checked}) >= 20
    assert all(r.torch_backward_error is not None for r in checked)
    assert all(r.passed for r in checked), [
        (r.op, r.label, r.error) for r in checked if not r.passed
    ]


def test_an_error_on_the_device_is_a_failed_row_and_the_checks_go_on(monkeypatch):
    pytest.importorskip("torch")
    from npgrad.checking import gradcheck as gc
    from tests import fakecupy

    real = gc.compare_with_torch

    def broken(case, rng, *args):
        if case.op == "exp":
            raise RuntimeError("no kernel image is available")
        return real(case, rng, *args)

    monkeypatch.setattr(gc, "compare_with_torch", broken)
    fakecupy.install()
    try:
        results = check_ops(["exp", "tanh"], cases_per_op=1, device="cuda", torch_device="cpu")
    finally:
        fakecupy.uninstall()
    exp, tanh = results
    assert not exp.passed and "on cuda against PyTorch: RuntimeError: no kernel image" in exp.error
    assert tanh.passed and tanh.torch_backward_error is not None


def test_a_device_check_needs_pytorch():
    from tests import fakecupy

    fakecupy.install()
    try:
        with pytest.raises(GradcheckError, match="compares npgrad with PyTorch there"):
            check_ops(["exp"], use_torch=False, device="cuda")
    finally:
        fakecupy.uninstall()
