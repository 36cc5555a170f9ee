"""The autodiff engine: tape, broadcasting, accumulation, depth, dtypes, no_grad."""

import threading

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


def test_no_grad_holds_for_its_own_thread_only():
    """A server's no_grad() prediction in one thread must not stop another from training."""
    inside, done = threading.Event(), threading.Event()
    modes = []  # the other thread's, read here: an assert in a thread cannot fail the test

    def predict() -> None:
        with npgrad.no_grad():
            inside.set()
            done.wait(10)
            modes.append(npgrad.is_grad_enabled())
        modes.append(npgrad.is_grad_enabled())

    other = threading.Thread(target=predict)
    other.start()
    try:
        assert inside.wait(10)
        x = npgrad.tensor(np.ones(2), requires_grad=True)
        (x * 3.0).sum().backward()  # while the other thread is inside no_grad()
        assert npgrad.is_grad_enabled()
        np.testing.assert_array_equal(x.grad, [3.0, 3.0])
    finally:
        done.set()
        other.join()
    assert modes == [False, True]
    seen = []
    with npgrad.no_grad():  # and a thread started inside no_grad() records
        t = threading.Thread(target=lambda: seen.append(npgrad.is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


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


# --------------------------------------------------------------------------- higher order


def _mlp_loss(x, y):
    """A 784-32-10 style network's loss as a function of its four parameters."""

    def loss(w1, b1, w2, b2):
        h = npgrad.relu(npgrad.linear(x, w1, b1))
        return npgrad.cross_entropy(npgrad.linear(h, w2, b2), y)

    return loss


def test_third_order_of_tanh_matmul_against_torch(torch):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    u, v = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))

    def third(lib_grad, x, w, wrap):
        y = (x @ w).tanh().sum()
        gx, gw = lib_grad(y, [x, w], create_graph=True)
        hx, hw = lib_grad((gx * wrap(u)).sum() + (gw * wrap(v)).sum(), [x, w], create_graph=True)
        return lib_grad((hx * hx).sum() + hw.sum(), [x, w]), (gx, gw, hx, hw)

    x, w = npgrad.tensor(a, requires_grad=True), npgrad.tensor(b, requires_grad=True)
    ours, ours_lower = third(npgrad.grad, x, w, lambda z: z)
    tx, tw = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    theirs, theirs_lower = third(torch.autograd.grad, tx, tw, torch.as_tensor)
    for got, want in zip(ours + ours_lower, theirs + theirs_lower):
        np.testing.assert_allclose(got.data, want.detach().numpy(), rtol=1e-11, atol=1e-13)
    assert np.abs(ours[0].data).max() > 1e-3  # the third derivative is not trivially 0


def test_hvp_of_a_784_32_10_mlp_loss_against_torch(torch):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((64, 784)), rng.integers(0, 10, 64)
    params = [
        rng.standard_normal((784, 32)) * 0.05,
        rng.standard_normal(32) * 0.1,
        rng.standard_normal((32, 10)) * 0.2,
        rng.standard_normal(10) * 0.1,
    ]
    v = [rng.standard_normal(p.shape) for p in params]
    ours = npgrad.hvp(_mlp_loss(x, y), params, v)

    def torch_loss(w1, b1, w2, b2):
        h = torch.relu(torch.as_tensor(x) @ w1 + b1)
        return torch.nn.functional.cross_entropy(h @ w2 + b2, torch.as_tensor(y))

    tp = tuple(torch.tensor(p) for p in params)
    _, theirs = torch.autograd.functional.hvp(torch_loss, tp, tuple(torch.tensor(u) for u in v))
    for got, want in zip(ours, theirs):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-9, atol=1e-12)


def test_hvp_through_a_small_cnn_against_torch(torch):
    """Convolution, batch norm, relu, both poolings: every image op's second order at once."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 4)
    shapes = [(4, 2, 9, 9), (3, 2, 3, 3), (3,), (3,), (4, 3, 2, 2), (4,), (48, 3), (3,)]
    inputs = [rng.standard_normal(s) * (0.5 if len(s) > 1 else 1.0) for s in shapes]
    v = [rng.standard_normal(s) for s in shapes]

    def ours(x, w1, gamma, beta, w2, b2, w3, b3):
        h = npgrad.conv2d(x, w1, padding=1)  # no bias: batch norm would remove it
        h = npgrad.max_pool2d(npgrad.relu(npgrad.batch_norm(h, gamma, beta)), 3, 2)
        h = npgrad.avg_pool2d(npgrad.conv2d(h, w2, b2, padding=1, dilation=(1, 2)), 2, 1)
        return npgrad.cross_entropy(npgrad.linear(npgrad.flatten(h), w3, b3), y)

    def theirs(x, w1, gamma, beta, w2, b2, w3, b3):
        f = torch.nn.functional
        h = f.conv2d(x, w1, padding=1)
        h = f.max_pool2d(f.relu(f.batch_norm(h, None, None, gamma, beta, training=True)), 3, 2)
        h = f.avg_pool2d(f.conv2d(h, w2, b2, padding=1, dilation=(1, 2)), 2, 1)
        return f.cross_entropy(torch.flatten(h, 1) @ w3 + b3, torch.as_tensor(y))

    got = npgrad.hvp(ours, inputs, v)
    as_t = lambda arrays: tuple(torch.tensor(a) for a in arrays)  # noqa: E731
    _, want = torch.autograd.functional.hvp(theirs, as_t(inputs), as_t(v))
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == tuple(w.shape), i
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-8, atol=1e-10, err_msg=f"input {i}")
    assert all(np.abs(g).max() > 1e-4 for g in got)  # no input's curvature is trivially 0


def test_full_hessian_of_a_tiny_network_against_numerical_differences():
    from npgrad.checking.gradcheck import numeric_jacobian

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    sizes = [(3, 4), (4,), (4, 2), (2,)]
    flat = rng.standard_normal(sum(int(np.prod(s)) for s in sizes)) * 0.7

    def unflatten(theta):
        out, k = [], 0
        for s in sizes:
            n = int(np.prod(s))
            out.append(theta[k : k + n].reshape(s))
            k += n
        return out

    def loss(theta):  # tanh instead of relu: a Hessian that is nowhere piecewise 0
        w1, b1, w2, b2 = unflatten(theta)
        return npgrad.cross_entropy(npgrad.linear(npgrad.linear(x, w1, b1).tanh(), w2, b2), y)

    n = flat.size
    hessian = np.stack([npgrad.hvp(loss, flat, np.eye(n)[i]) for i in range(n)])

    def gradient():  # the first-order fast path, differenced numerically
        theta = npgrad.tensor(flat, requires_grad=True)
        loss(theta).backward()
        return theta.grad

    numeric = numeric_jacobian(gradient, flat)
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-12)
    np.testing.assert_allclose(hessian, numeric, rtol=1e-5, atol=1e-7)


def test_backward_with_create_graph_gives_differentiable_grad():
    x = npgrad.tensor(np.array([1.0, 2.0, -1.5]), requires_grad=True)
    (x**3.0).sum().backward(create_graph=True)
    g = x.grad
    assert isinstance(g, Tensor) and g.requires_grad
    np.testing.assert_allclose(g.data, 3 * x.data**2)
    x.grad = None
    g.sum().backward()
    np.testing.assert_allclose(x.grad, 6 * x.data)


def test_grad_returns_without_touching_dot_grad():
    a = npgrad.tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = npgrad.tensor(np.array([3.0, 4.0]), requires_grad=True)
    unused = npgrad.tensor(np.ones(3), requires_grad=True)
    h = a * b
    out = (h * h).sum()
    ga, gh, gu = npgrad.grad(out, [a, h, unused])
    np.testing.assert_allclose(ga.data, 2 * a.data * b.data**2)
    np.testing.assert_allclose(gh.data, 2 * h.data)  # a non-leaf input
    np.testing.assert_array_equal(gu.data, np.zeros(3))  # not used: zeros
    assert a.grad is None and b.grad is None and not ga.requires_grad


def test_grad_of_several_outputs_with_grad_outputs():
    x = npgrad.tensor(np.array([1.0, 2.0]), requires_grad=True)
    (g,) = npgrad.grad([x * 2.0, x * x], x, [np.array([1.0, 1.0]), np.array([10.0, 0.0])])
    np.testing.assert_allclose(g.data, [2.0 + 20.0, 2.0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, c: npgrad.grad((x * 2.0).sum(), c), "input 0 does not require grad"),
        (lambda x, c: npgrad.grad(c * 2.0, x), "no output requires grad"),
        (lambda x, c: npgrad.grad(x * 2.0, x), "one-element output"),
        (lambda x, c: npgrad.grad([x.sum()], x, [1.0, 2.0]), "2 grad_outputs for 1 outputs"),
        (lambda x, c: npgrad.grad([], x), "outputs must be a Tensor"),
        (lambda x, c: npgrad.hvp(lambda t: t * 2.0, x.data, x.data), "one-element Tensor"),
        (lambda x, c: npgrad.hvp(lambda t: t.sum(), x.data, np.ones(3)), r"direction 0 has shape"),
    ],
)
def test_grad_and_hvp_mistakes_are_clear(call, match):
    x = npgrad.tensor(np.ones(2), requires_grad=True)
    with pytest.raises(GradError, match=match):
        call(x, npgrad.tensor(np.ones(2)))


def test_hvp_of_a_quadratic_is_the_matrix_times_v_and_of_a_linear_function_zero():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 3))
    x, v = rng.standard_normal(3), rng.standard_normal(3)
    hv = npgrad.hvp(lambda t: (t * (npgrad.tensor(a) @ t)).sum(), x, v)
    np.testing.assert_allclose(hv, (a + a.T) @ v, rtol=1e-13)
    np.testing.assert_array_equal(npgrad.hvp(lambda t: (t * 3.0).sum(), x, v), np.zeros(3))


def test_backward_without_create_graph_frees_every_saved_array():
    import gc
    import weakref

    from npgrad.autodiff import _FREED, topological_order

    rng = np.random.default_rng(5)
    w = npgrad.tensor(rng.standard_normal((4, 3)), requires_grad=True)

    def loss():
        return npgrad.cross_entropy(
            npgrad.tensor(rng.standard_normal((6, 4))) @ w, np.arange(6) % 3
        )

    out = loss()
    probs = weakref.ref(out._node.saved[0])  # the softmax the forward saved, held by nothing else
    nodes = [t._node for t in topological_order(out) if t._node is not None]
    out.backward()
    gc.collect()
    assert probs() is None and all(n.saved is _FREED for n in nodes)
    kept = loss()
    probs = weakref.ref(kept._node.saved[0])
    kept.backward(create_graph=True)  # retain_graph defaults to create_graph
    gc.collect()
    assert probs() is not None and kept._node.saved is not _FREED


def test_create_graph_refuses_an_op_whose_vjp_is_numpy_only():
    class NumpyOnly(npgrad.ops.base.Op):  # no name: not registered in the op table
        differentiable_vjp = False

        @staticmethod
        def forward(x):
            return np.sin(x), x

        @staticmethod
        def vjp(saved, g, needs=(True,)):
            return (g * np.cos(saved),)

    x = npgrad.tensor(np.ones(2), requires_grad=True)
    y = npgrad.autodiff.apply(NumpyOnly, x).sum()
    with pytest.raises(GradError, match="op '' computes on NumPy arrays only"):
        y.backward(create_graph=True)
    y.backward()  # the first order still works
    np.testing.assert_allclose(x.grad, np.cos(1.0) * np.ones(2))


def test_a_vjp_that_cannot_take_tensors_is_named_not_a_traceback_from_numpy():
    class Sloppy(npgrad.ops.base.Op):
        @staticmethod
        def forward(x):
            return np.sin(x), x

        @staticmethod
        def vjp(saved, g, needs=(True,)):
            return (g * np.cos(saved),)  # np.cos of a Tensor: not Tensor-capable

    x = npgrad.tensor(np.ones(2), requires_grad=True)
    with pytest.raises(GradError, match="computes on NumPy arrays only.*TypeError"):
        npgrad.grad(npgrad.autodiff.apply(Sloppy, x).sum(), x, create_graph=True)


def test_gradient_inside_no_grad_records_nothing_and_enable_grad_records_again():
    x = npgrad.tensor(np.array([2.0]), requires_grad=True)
    y = (x * x).sum()
    with npgrad.no_grad():
        (g,) = npgrad.grad(y, x, create_graph=True)
        assert not g.requires_grad
        with npgrad.enable_grad():
            assert (x * 2.0).requires_grad
    np.testing.assert_allclose(g.data, [4.0])


def test_swapaxes_and_transpose_forms():
    a = np.arange(24.0).reshape(2, 3, 4)
    x = npgrad.tensor(a)
    np.testing.assert_array_equal(x.swapaxes(-1, -2).data, a.swapaxes(-1, -2))
    np.testing.assert_array_equal(x.transpose(None).data, a.transpose())
    np.testing.assert_array_equal(x.transpose(np.array([2, 0, 1])).data, a.transpose(2, 0, 1))
    np.testing.assert_array_equal(npgrad.broadcast_to(np.ones(4), (3, 4)).data, np.ones((3, 4)))


@pytest.mark.parametrize("data", ["abc", np.array([object()]), [None, 1.0]])
def test_a_tensor_of_non_numbers_is_refused_when_made(data):
    with pytest.raises(npgrad.ConfigError, match="a Tensor holds numbers"):
        npgrad.tensor(data)
