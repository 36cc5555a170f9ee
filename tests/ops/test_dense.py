"""Every op in the table: numerical gradcheck in float64 and agreement with PyTorch.

Second order too: every op's recorded backward pass (``create_graph``) checked
by :func:`npgrad.gradgradcheck` and against PyTorch's double backward, driven
by the same table, so a new op is covered (or listed as pending) at once.

Inputs come from each op's own ``spec`` (the declaration ``npgrad gradcheck``
uses too). The PyTorch oracle is ``TORCH_REFERENCE`` below, written here and
independently of the ``spec.torch`` twins that npgrad ships: the tests compare
npgrad with it, and the shipped twins with it, so a wrong mapping on either
side shows. An op registered without a spec or without a reference here fails.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npgrad
from npgrad.autodiff import apply
from npgrad.checking.gradcheck import all_ops, gradcheck, gradgradcheck, op_case
from npgrad.ops import dense as ops
from npgrad.ops.base import OPS
from npgrad.ops.specs import OpSpec

SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
SEEDS = st.integers(0, 2**32 - 1)
ALL_OPS = sorted(all_ops())


# --------------------------------------------------------------------------- the oracle


def _dims(axis, ndim):
    """NumPy's axis argument as PyTorch's dim tuple."""
    if axis is None:
        return tuple(range(ndim))
    return axis if isinstance(axis, tuple) else (axis,)


def _cross_entropy(t, x, target, reduction):
    logp = t.log_softmax(x, dim=1)
    target = t.as_tensor(target)
    if target.ndim == 1:
        per_row = -logp[t.arange(x.shape[0]), target]
    else:
        per_row = -(target * logp).sum(dim=1)
    return per_row.mean() if reduction == "mean" else per_row.sum()


def _getitem(t, x, index):
    if isinstance(index, np.ndarray):
        return t.index_select(x, 0, t.as_tensor(index))
    return x[index]


def _index_add(t, x, shape, index):
    """Scatter-add as one accumulating index_put with the index spelled out per axis."""
    per_axis = [index] if isinstance(index, np.ndarray) else list(index)
    per_axis += [slice(None)] * (len(shape) - len(per_axis))
    grid = np.ix_(*[np.arange(n)[i] for n, i in zip(shape, per_axis)])
    where = tuple(t.as_tensor(i) for i in grid)
    return t.zeros(shape, dtype=x.dtype).index_put(
        where, x.reshape(grid_shape(grid)), accumulate=True
    )


def grid_shape(grid):
    return np.broadcast_shapes(*[g.shape for g in grid])


def _batch_norm(t, x, gamma, beta, training, eps, running_mean=None, running_var=None):
    per_channel = [1, -1] + [1] * (x.ndim - 2)
    if training:
        dims = [0, *range(2, x.ndim)]
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    else:
        mean = t.as_tensor(running_mean).reshape(per_channel)
        var = t.as_tensor(running_var).reshape(per_channel)
    xhat = (x - mean) / t.sqrt(var + eps)
    return gamma.reshape(per_channel) * xhat + beta.reshape(per_channel)


def _conv2d_input_grad(t, g, w, size, stride, padding, dilation):
    """The transposed convolution, with the output padding that restores the input size."""
    k, s, p, d = w.shape[2:], _pair(stride), _pair(padding), _pair(dilation)
    extra = [
        size[i] - ((g.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in (0, 1)
    ]
    return t.nn.functional.conv_transpose2d(
        g, w, stride=s, padding=p, output_padding=extra, dilation=d
    )


def _conv2d_weight_grad(t, x, g, kernel, stride, padding, dilation):
    """PyTorch's own gradient of conv2d with respect to its weight, kept differentiable."""
    w = t.zeros((g.shape[1], x.shape[1], *kernel), dtype=x.dtype, requires_grad=True)
    y = t.nn.functional.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    return t.autograd.grad(y, w, g, create_graph=True)[0]


def _global_argmax(t, routing):
    """Each window's arg-max as an index into the whole flattened input."""
    n, c, h, w = routing.in_shape
    planes = np.arange(n * c).reshape(n, c, 1, 1) * (h * w)
    return t.as_tensor((routing.flat() + planes).reshape(-1))


def _max_pool2d_scatter(t, g, routing):
    out = t.zeros(int(np.prod(routing.in_shape)), dtype=g.dtype)
    return out.index_add(0, _global_argmax(t, routing), g.reshape(-1)).reshape(routing.in_shape)


def _max_pool2d_gather(t, u, routing):
    return u.reshape(-1)[_global_argmax(t, routing)].reshape(routing.out_shape)


def _avg_pool2d_input_grad(t, g, kernel, size, stride=None, padding=0):
    """PyTorch's own gradient of avg_pool2d, kept differentiable."""
    x = t.zeros((*g.shape[:2], *size), dtype=g.dtype, requires_grad=True)
    y = t.nn.AvgPool2d(kernel_size=kernel, stride=stride, padding=padding)(x)
    return t.autograd.grad(y, x, g, create_graph=True)[0]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# fn(torch, *input tensors, **the op's keyword parameters), as the op's forward takes them
TORCH_REFERENCE = {
    "matmul": lambda t, a, b: t.matmul(a, b),
    "linear": lambda t, x, w, b: t.nn.functional.linear(x, w.T, b),
    "add": lambda t, a, b: t.add(a, b),
    "sub": lambda t, a, b: t.sub(a, b),
    "mul": lambda t, a, b: t.mul(a, b),
    "div": lambda t, a, b: t.div(a, b),
    "neg": lambda t, x: t.neg(x),
    "pow": lambda t, x, p: t.pow(x, p),
    "exp": lambda t, x: t.exp(x),
    "log": lambda t, x: t.log(x),
    "relu": lambda t, x: t.nn.functional.relu(x),
    # the mask by a generator of its own, so that this checks the op's arithmetic
    "dropout": lambda t, x, p, rng: (
        x
        * t.as_tensor(
            (np.random.default_rng(rng).random(tuple(x.shape), dtype=np.float32) >= p) / (1 - p)
        ).to(x.dtype)
    ),
    "sigmoid": lambda t, x: t.special.expit(x),
    "tanh": lambda t, x: t.tanh(x),
    "softmax": lambda t, x, axis: t.nn.functional.softmax(x, dim=axis),
    "log_softmax": lambda t, x, axis: t.nn.functional.log_softmax(x, dim=axis),
    "cross_entropy": _cross_entropy,
    "sum": lambda t, x, axis, keepdims: t.sum(x, dim=_dims(axis, x.ndim), keepdim=keepdims),
    "mean": lambda t, x, axis, keepdims: t.mean(x, dim=_dims(axis, x.ndim), keepdim=keepdims),
    "max": lambda t, x, axis, keepdims: t.amax(x, dim=_dims(axis, x.ndim), keepdim=keepdims),
    "reshape": lambda t, x, shape: t.reshape(x, shape),
    "broadcast_to": lambda t, x, shape: x.expand(shape),
    "index_add": _index_add,
    "transpose": lambda t, x, axes: t.permute(x, axes or tuple(reversed(range(x.ndim)))),
    "concatenate": lambda t, *xs, axis: t.cat(xs, dim=axis),
    "getitem": _getitem,
    "conv2d": lambda t, x, w, b=None, stride=1, padding=0, dilation=1: t.conv2d(
        x, w, bias=b, stride=stride, padding=padding, dilation=dilation
    ),
    "conv2d_input_grad": _conv2d_input_grad,
    "conv2d_weight_grad": _conv2d_weight_grad,
    "max_pool2d": lambda t, x, kernel, stride=None, padding=0, dilation=1: t.nn.MaxPool2d(
        kernel_size=kernel, stride=stride, padding=padding, dilation=dilation
    )(x),
    "avg_pool2d": lambda t, x, kernel, stride=None, padding=0: t.nn.AvgPool2d(
        kernel_size=kernel, stride=stride, padding=padding
    )(x),
    "batch_norm": _batch_norm,
    "max_pool2d_scatter": _max_pool2d_scatter,
    "max_pool2d_gather": _max_pool2d_gather,
    "avg_pool2d_input_grad": _avg_pool2d_input_grad,
}


def test_every_op_has_a_spec_and_a_test_reference():
    for name, op in all_ops().items():
        assert isinstance(op.spec, OpSpec), f"{name}: declare spec = OpSpec(...) in its class"
        assert name in TORCH_REFERENCE, f"{name}: add a PyTorch reference to TORCH_REFERENCE"
    assert set(TORCH_REFERENCE) == set(all_ops()), "a reference for an op that does not exist"


def test_table_has_every_op_the_brief_names():
    wanted = {
        "matmul", "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "relu",
        "sigmoid", "tanh", "softmax", "log_softmax", "sum", "mean", "max", "reshape",
        "transpose", "concatenate", "getitem", "cross_entropy", "linear",
    }  # fmt: skip
    assert wanted <= set(all_ops())


@pytest.mark.parametrize("name", ALL_OPS)
@settings(max_examples=15, deadline=None)
@given(shape=SHAPES, seed=SEEDS)
def test_numerical_gradcheck(name, shape, seed):
    case = op_case(name, np.random.default_rng(seed), shape)
    assert all(np.isfinite(a).all() for a in case.inputs)
    report = gradcheck(case.fn, *case.inputs, atol=1e-6, rtol=1e-5)
    assert report.passed, f"{case.label}\n{report}"


def _run_torch(torch, fn, arrays, params, g):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(torch, *ts, **params)
    out.backward(torch.as_tensor(g))
    return out.detach().numpy(), [t.grad.numpy() for t in ts]


def _assert_close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= 1e-10 * scale, f"{what}: max abs error {err:.3g}"


@pytest.mark.parametrize("name", ALL_OPS)
@settings(max_examples=15, deadline=None)
@given(shape=SHAPES, seed=SEEDS)
def test_npgrad_and_the_shipped_torch_twin_agree_with_the_test_reference(name, shape, seed, torch):
    rng = np.random.default_rng(seed)
    arrays, params = all_ops()[name].spec.sample(rng, shape)
    ts = [npgrad.tensor(a, requires_grad=True) for a in arrays]
    out = apply(all_ops()[name], *ts, **params)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    want_y, want_grads = _run_torch(torch, TORCH_REFERENCE[name], arrays, params, g)
    label = f"{name} {[a.shape for a in arrays]} {params}"
    _assert_close(out.data, want_y, f"npgrad forward {label}")
    for i, (t, want) in enumerate(zip(ts, want_grads)):
        _assert_close(t.grad, want, f"npgrad grad {i} {label}")
    twin_y, twin_grads = _run_torch(torch, all_ops()[name].spec.torch, arrays, params, g)
    _assert_close(twin_y, want_y, f"spec.torch forward {label}")
    for i, (got, want) in enumerate(zip(twin_grads, want_grads)):
        _assert_close(got, want, f"spec.torch grad {i} {label}")


@settings(max_examples=40, deadline=None)
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    op=st.sampled_from(["add", "sub", "mul", "div"]),
    seed=SEEDS,
)
def test_broadcasting_binary_ops_against_torch(shapes, op, seed, torch):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shapes.input_shapes[0])
    b = rng.standard_normal(shapes.input_shapes[1]) + (3.0 if op == "div" else 0.0)
    fn = getattr(npgrad, op)
    report = gradcheck(fn, a, b, atol=1e-6, rtol=1e-5)
    assert report.passed, str(report)
    ta = torch.tensor(a, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    tfn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[op]
    tfn(ta, tb).sum().backward()
    x, y = npgrad.tensor(a, requires_grad=True), npgrad.tensor(b, requires_grad=True)
    fn(x, y).sum().backward()
    np.testing.assert_allclose(x.grad, ta.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(y.grad, tb.grad.numpy(), rtol=1e-12, atol=1e-14)
    assert x.grad.shape == a.shape and y.grad.shape == b.shape


def test_softmax_and_log_softmax_do_not_overflow():
    x = npgrad.tensor(np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]]), requires_grad=True)
    s = npgrad.softmax(x)
    assert np.all(np.isfinite(s.data))
    np.testing.assert_allclose(s.data[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(s.data[1], [1 / 3] * 3)
    ls = npgrad.log_softmax(x)
    assert np.all(np.isfinite(ls.data))
    np.testing.assert_allclose(ls.data[0], [0.0, -1000.0, -2000.0])


def test_cross_entropy_is_stable_and_matches_its_definition(torch):
    logits = np.array([[1000.0, 0.0, -1000.0], [0.1, 0.2, 0.3]])
    y = np.array([2, 1])
    ce = npgrad.cross_entropy(npgrad.tensor(logits), y, reduction="sum")
    assert np.isfinite(ce.item())
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(y), reduction="sum")
    assert ce.item() == pytest.approx(ref.item(), rel=1e-14)
    onehot = np.eye(3)[y]
    ce2 = npgrad.cross_entropy(npgrad.tensor(logits), onehot, reduction="sum")
    assert ce2.item() == pytest.approx(ce.item(), rel=1e-14)


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n():
    rng = np.random.default_rng(0)
    x = npgrad.tensor(rng.standard_normal((6, 4)), requires_grad=True)
    y = rng.integers(0, 4, 6)
    npgrad.cross_entropy(x, y).backward()
    expected = (npgrad.softmax(x.detach()).data - np.eye(4)[y]) / 6
    np.testing.assert_allclose(x.grad, expected, rtol=1e-13)


@pytest.mark.parametrize(
    "target, match",
    [
        (np.array([0, 5]), "labels must lie"),
        (np.array([0, 1, 2]), "2 rows of logits but 3 labels"),
        (np.array([0.5, 0.5]), "integer class indices"),
        (np.ones((2, 4)), "fits neither"),
    ],
)
def test_cross_entropy_rejects_bad_targets(target, match):
    with pytest.raises(npgrad.ShapeError, match=match):
        npgrad.cross_entropy(npgrad.tensor(np.zeros((2, 3))), target)


def test_log_of_nonpositive_is_nan_or_inf_like_numpy():
    x = npgrad.tensor(np.array([0.0, -1.0, 2.0]), requires_grad=True)
    y = npgrad.log(x)
    assert y.data[0] == -np.inf and np.isnan(y.data[1])
    y.sum().backward()
    assert x.grad[0] == np.inf and x.grad[2] == 0.5


def test_max_splits_gradient_at_ties(torch):
    a = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]])
    x = npgrad.tensor(a, requires_grad=True)
    x.max(axis=1).sum().backward()
    t = torch.tensor(a, requires_grad=True)
    t.amax(dim=1).sum().backward()
    np.testing.assert_allclose(x.grad, t.grad.numpy())
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])


def test_matmul_shape_error_is_clear():
    with pytest.raises(npgrad.ShapeError, match=r"\(2, 3\) and \(4, 5\) do not align"):
        npgrad.tensor(np.zeros((2, 3))) @ np.zeros((4, 5))


@pytest.mark.parametrize(
    "sa, sb", [((3,), (3, 2)), ((2, 3), (3,)), ((3,), (3,)), ((4, 2, 3), (3, 5))]
)
def test_matmul_vector_and_batched_forms(sa, sb, torch):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    assert gradcheck(npgrad.matmul, a, b).passed
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (ta @ tb).sum().backward()
    x, y = npgrad.tensor(a, requires_grad=True), npgrad.tensor(b, requires_grad=True)
    (x @ y).sum().backward()
    np.testing.assert_allclose(x.grad, ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(y.grad, tb.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_docstring_derives_its_gradient(name):
    doc = OPS[name].__doc__ or ""
    summary, _, derivation = doc.strip().partition("\n\n")
    assert summary and "\n" not in summary.strip(), f"{name}: a one-line summary comes first"
    assert "$" in derivation, f"{name}: the derivation is written in math"
    assert "df" in derivation or r"d\ell" in derivation, f"{name}: the differential of the loss"


# --------------------------------------------------------------------------- second order


def _second_order(name):
    op = all_ops()[name]
    if not op.differentiable_vjp:
        reason = f"{name} declares differentiable_vjp = False"
        return pytest.param(name, marks=pytest.mark.skip(reason=reason))
    return name


SECOND_ORDER_OPS = [_second_order(name) for name in ALL_OPS]


def test_every_registered_op_records_its_vjp():
    # A new op whose vjp computes on NumPy only must say so (differentiable_vjp = False).
    assert all(all_ops()[name].differentiable_vjp for name in ALL_OPS)


@pytest.mark.parametrize("name", SECOND_ORDER_OPS)
@settings(max_examples=8, deadline=None)
@given(shape=SHAPES, seed=SEEDS)
def test_second_order_numerical(name, shape, seed):
    case = op_case(name, np.random.default_rng(seed), shape)
    report = gradgradcheck(case.fn, *case.inputs, atol=1e-6, rtol=1e-5, seed=seed % 1000)
    assert report.passed, f"{case.label}\n{report}"


def _torch_twice(torch, fn, arrays, params, v, us):
    """grad(out, x, v, create_graph=True), then grad(sum <grad_i, u_i>, x): PyTorch's double backward."""
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(torch, *ts, **params)
    first = torch.autograd.grad(out, ts, torch.as_tensor(v), create_graph=True, allow_unused=True)
    first = [torch.zeros_like(t) if g is None else g for g, t in zip(first, ts)]
    mixed = sum((g * torch.as_tensor(u)).sum() for g, u in zip(first, us))
    if not mixed.requires_grad:  # the op is linear: every second derivative is 0
        return [g.detach().numpy() for g in first], [np.zeros_like(a) for a in arrays]
    second = torch.autograd.grad(mixed, ts, allow_unused=True)
    second = [np.zeros_like(a) if h is None else h.numpy() for h, a in zip(second, arrays)]
    return [g.detach().numpy() for g in first], second


def _npgrad_twice(op, arrays, params, v, us):
    ts = [npgrad.tensor(a, requires_grad=True) for a in arrays]
    out = apply(op, *ts, **params)
    first = npgrad.grad(out, ts, npgrad.tensor(v), create_graph=True)
    mixed = (first[0] * us[0]).sum()
    for g, u in zip(first[1:], us[1:]):
        mixed = mixed + (g * u).sum()
    if not mixed.requires_grad:
        return [g.data for g in first], [np.zeros_like(a) for a in arrays]
    return [g.data for g in first], [h.data for h in npgrad.grad(mixed, ts)]


def _second_order_against_torch(torch, name, arrays, params, rng):
    op = all_ops()[name]
    with npgrad.no_grad():
        out_shape = apply(op, *[npgrad.tensor(a) for a in arrays], **params).shape
    v = rng.standard_normal(out_shape)
    us = [rng.standard_normal(a.shape) for a in arrays]
    first, second = _npgrad_twice(op, arrays, params, v, us)
    want_first, want_second = _torch_twice(torch, TORCH_REFERENCE[name], arrays, params, v, us)
    label = f"{name} {[a.shape for a in arrays]} {params}"
    for i, (got, want) in enumerate(zip(first, want_first)):
        _assert_close(got, want, f"recorded first order {i} {label}")
    for i, (got, want) in enumerate(zip(second, want_second)):
        _assert_close(got, want, f"second order {i} {label}")


@pytest.mark.parametrize("name", SECOND_ORDER_OPS)
@settings(max_examples=10, deadline=None)
@given(shape=SHAPES, seed=SEEDS)
def test_second_order_against_torch_double_backward(name, shape, seed, torch):
    rng = np.random.default_rng(seed)
    arrays, params = all_ops()[name].spec.sample(rng, shape)
    _second_order_against_torch(torch, name, arrays, params, rng)


@settings(max_examples=25, deadline=None)
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    op=st.sampled_from(["add", "sub", "mul", "div"]),
    seed=SEEDS,
)
def test_second_order_of_broadcasting_binary_ops(shapes, op, seed, torch):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shapes.input_shapes[0])
    b = rng.standard_normal(shapes.input_shapes[1]) + (3.0 if op == "div" else 0.0)
    _second_order_against_torch(torch, op, [a, b], {}, rng)
    assert gradgradcheck(getattr(npgrad, op), a, b, atol=1e-6, rtol=1e-5).passed


def test_recorded_first_order_equals_the_fast_path():
    """The same vjp on Tensors gives the same numbers as on arrays."""
    rng = np.random.default_rng(3)
    for name in ALL_OPS:
        if not all_ops()[name].differentiable_vjp:
            continue
        arrays, params = all_ops()[name].spec.sample(rng, (3, 4))
        ts = [npgrad.tensor(a, requires_grad=True) for a in arrays]
        out = apply(all_ops()[name], *ts, **params)
        v = rng.standard_normal(out.shape)
        recorded = npgrad.grad(out, ts, v, create_graph=True)
        fast = npgrad.grad(out, ts, v)
        for r, f in zip(recorded, fast):
            np.testing.assert_allclose(r.data, f.data, rtol=1e-14, atol=1e-15, err_msg=name)


def test_relu_and_max_second_derivatives_treat_mask_and_routing_as_constants():
    a = np.array([[-1.5, 0.5, 2.0], [0.3, -0.2, 1.1]])
    v = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = a > 0
    # relu(x)^2 = x^2 where x > 0: H = diag(2 * mask)
    hv = npgrad.hvp(lambda t: (npgrad.relu(t) ** 2.0).sum(), a, v)
    np.testing.assert_array_equal(hv, 2 * mask * v)
    # max(row)^2 = x_k^2 at the arg-max k: H v is 2 v_k there, 0 elsewhere
    hv = npgrad.hvp(lambda t: (t.max(axis=1) ** 2.0).sum(), a, v)
    np.testing.assert_array_equal(hv, [[0, 0, 6.0], [0, 0, 12.0]])
    # relu alone is piecewise linear: its Hessian is 0
    np.testing.assert_array_equal(npgrad.hvp(lambda t: npgrad.relu(t).sum(), a, v), 0 * v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "make",
    [
        # 12,600 elements: past the fast path's threshold, not a multiple of its zero row
        lambda a: a.reshape(2, 3, 2100),  # C-contiguous
        lambda a: a.reshape(2, 350, 6, 3).transpose(0, 3, 1, 2),  # NCHW view of NHWC memory
        lambda a: a.reshape(1260, 10)[:, ::2],  # gaps in memory: the plain path
        lambda a: np.asfortranarray(a.reshape(126, 100)),
    ],
)
def test_relu_array_is_maximum_with_zero_in_the_input_layout(dtype, make):
    rng = np.random.default_rng(0)
    x = make(rng.standard_normal(12600).astype(dtype))
    fast = ops._memory_flat(x) is not None  # else the plain np.maximum path
    assert not fast or (x.size > 2 * ops._ZERO_ROW and x.size % ops._ZERO_ROW)
    x[(0,) * x.ndim] = np.nan
    x[(-1,) * x.ndim] = -np.inf
    y = ops.relu_array(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))  # NaN stays NaN, -inf becomes 0
    assert y.dtype == dtype and np.isnan(y[(0,) * x.ndim]) and y[(-1,) * x.ndim] == 0
    if fast:
        assert np.argsort(y.strides).tolist() == np.argsort(x.strides).tolist()


def test_relu_array_small_and_integer_inputs_take_the_plain_path():
    for x in (np.array([-1.5, 0.0, 2.0], np.float32), np.arange(-5000, 5000)):
        np.testing.assert_array_equal(ops.relu_array(x), np.maximum(x, 0))
        assert ops.relu_array(x).dtype == x.dtype
