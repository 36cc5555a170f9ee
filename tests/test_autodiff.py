"""The autodiff engine: tape, broadcasting, accumulation, depth, dtypes, no_grad."""

import numpy as np
import pytest

import npgrad
from npgrad import GradError, Tensor


def test_chain_rule_through_shared_subexpressions():
    x = npgrad.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = x * x  # used twice below: gradients must add
    z = (y + y * 2.0).sum()
    z.backward()
    np.testing.assert_allclose(x.grad, 6 * x.data)


def test_broadcast_gradient_is_summed_to_input_shape():
    a = npgrad.tensor(np.ones((4, 3)), requires_grad=True)
    b = npgrad.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    c = npgrad.tensor(np.ones((4, 1)), requires_grad=True)
    ((a * b) + c).sum().backward()
    assert b.grad.shape == (3,) and c.grad.shape == (4, 1)
    np.testing.assert_allclose(b.grad, [4.0, 4.0, 4.0])
    np.testing.assert_allclose(c.grad, np.full((4, 1), 3.0))
    np.testing.assert_allclose(a.grad, np.tile([1.0, 2.0, 3.0], (4, 1)))


def test_gradients_accumulate_until_reset():
    w = npgrad.tensor(np.array([2.0]), requires_grad=True)
    for _ in range(3):
        (w * 3.0).sum().backward()
    np.testing.assert_allclose(w.grad, [9.0])
    w.zero_grad()
    assert w.grad is None
    (w * 3.0).sum().backward()
    np.testing.assert_allclose(w.grad, [3.0])


def test_leaf_grads_never_alias_each_other():
    a = npgrad.tensor(np.ones(3), requires_grad=True)
    b = npgrad.tensor(np.ones(3), requires_grad=True)
    (a + b).sum().backward()  # add's vjp hands the same array to both inputs
    a.grad *= 10
    np.testing.assert_allclose(b.grad, np.ones(3))


def test_deep_chain_does_not_recurse():
    x = npgrad.tensor(np.array([0.5]), requires_grad=True)
    y = x
    for _ in range(2000):
        y = npgrad.tanh(y) * 1.0 + 0.0
    assert y.parents  # 6000 nodes deep
    y.sum().backward()
    assert np.isfinite(x.grad).all() and x.grad[0] != 0


def test_deeper_than_recursion_limit():
    import sys

    x = npgrad.tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(sys.getrecursionlimit() * 3):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0])


def test_no_grad_records_nothing():
    x = npgrad.tensor(np.ones(2), requires_grad=True)
    with npgrad.no_grad():
        y = x * 2.0
        assert not npgrad.is_grad_enabled()
    assert npgrad.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(GradError, match="does not require grad"):
        y.sum().backward()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    x = npgrad.tensor(np.ones((3, 4), dtype=dtype), requires_grad=True)
    w = npgrad.tensor(np.ones((4, 2), dtype=dtype), requires_grad=True)
    y = npgrad.relu(x @ w * 0.5 + 1.0).softmax().log()
    loss = npgrad.cross_entropy(x @ w / 2.0 - 1.0, np.array([0, 1, 0]))
    assert y.dtype == dtype and loss.dtype == dtype
    loss.backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


def test_backward_needs_scalar_or_explicit_grad():
    x = npgrad.tensor(np.ones((2, 2)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(GradError, match="one-element output"):
        y.backward()
    y.backward(np.ones((2, 2)))
    np.testing.assert_allclose(x.grad, 2 * np.ones((2, 2)))


def test_second_backward_needs_retain_graph():
    x = npgrad.tensor(np.ones(2), requires_grad=True)
    y = (x.exp() * 2.0).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * np.e * np.ones(2))
    with pytest.raises(GradError, match="retain_graph=True"):
        y.backward()


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(GradError, match="floating-point"):
        npgrad.tensor([1, 2, 3], requires_grad=True)


def test_operators_and_methods_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4))
    b = rng.standard_normal((4,)) + 3
    x = npgrad.tensor(a)
    np.testing.assert_allclose((x + b).data, a + b)
    np.testing.assert_allclose((2.0 - x).data, 2.0 - a)
    np.testing.assert_allclose((x / b).data, a / b)
    np.testing.assert_allclose((1.0 / (x + 10.0)).data, 1.0 / (a + 10.0))
    np.testing.assert_allclose((-x).data, -a)
    np.testing.assert_allclose((x**2).data, a**2)
    np.testing.assert_allclose(x.T.data, a.T)
    np.testing.assert_allclose(x[1:, ::2].data, a[1:, ::2])
    np.testing.assert_allclose(x.reshape(4, 3).data, a.reshape(4, 3))
    np.testing.assert_allclose(x.transpose(1, 0).data, a.T)
    np.testing.assert_allclose(x.mean(axis=0).data, a.mean(axis=0))
    np.testing.assert_allclose(x.max(axis=1, keepdims=True).data, a.max(axis=1, keepdims=True))
    np.testing.assert_allclose((a @ npgrad.tensor(a.T)).data, a @ a.T)  # ndarray @ Tensor
    assert isinstance(np.ones(4) + x, Tensor)
    np.testing.assert_allclose(x.numpy(), a)
    np.testing.assert_allclose(x.sigmoid().data, 1 / (1 + np.exp(-a)))


def test_retain_grad_keeps_intermediate_gradient():
    x = npgrad.tensor(np.array([[1.0, 2.0]]), requires_grad=True)
    p = x.softmax().retain_grad()
    (p * np.array([[1.0, 0.0]])).sum().backward()
    np.testing.assert_allclose(p.grad, [[1.0, 0.0]])
    assert x.grad is not None


def test_detach_cuts_the_graph():
    x = npgrad.tensor(np.ones(2), requires_grad=True)
    y = (x * 2.0).detach()
    assert not y.requires_grad and y.is_leaf


def test_scalar_constants_do_not_upcast_float32():
    x = npgrad.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    assert (x * 0.1 + 1).dtype == np.float32
    assert (0.5 / (x + 1.0)).dtype == np.float32


def test_float64_probability_targets_keep_float32_backward():
    x = npgrad.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    h = x * 2.0
    h.retain_grad()
    npgrad.cross_entropy(h, np.full((2, 3), 1 / 3)).backward()
    assert h.grad.dtype == np.float32 and x.grad.dtype == np.float32
