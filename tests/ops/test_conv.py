"""The image ops: numerical gradchecks in float64, and PyTorch forward and backward.

The PyTorch calls here are written independently of the ops' ``spec.torch``,
so each checks the other.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgrad
from npgrad import autodiff
from npgrad.autodiff import apply
from npgrad.checking.gradcheck import gradcheck
from npgrad.errors import ConfigError, ShapeError
from npgrad.ops import conv as ops_conv
from npgrad.ops.base import OPS

CONV_OPS = ["conv2d", "max_pool2d", "avg_pool2d", "batch_norm"]
SEEDS = st.integers(0, 2**32 - 1)


def test_ops_are_registered_with_spec_and_derivation():
    for name in CONV_OPS:
        op = OPS[name]
        assert op.__module__ == "npgrad.ops.conv"
        assert op.spec is not None, name
        assert "$$" in (op.__doc__ or ""), f"{name}: the docstring must derive the vjp"


@pytest.mark.parametrize("name", CONV_OPS)
@settings(max_examples=12, deadline=None)
@given(seed=SEEDS)
def test_numerical_gradcheck_on_spec_draws(name, seed):
    op = OPS[name]
    arrays, params = op.spec.sample(np.random.default_rng(seed))
    report = gradcheck(lambda *xs: apply(op, *xs, **params), *arrays, atol=1e-6, rtol=1e-5)
    assert report.passed, f"{[a.shape for a in arrays]} {params}\n{report}"


def _torch_pair(torch, arrays, g, fn, tfn):
    """Run npgrad's ``fn`` and PyTorch's ``tfn`` forward and backward; return both results."""
    ts = [npgrad.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(g)
    tt = [torch.tensor(a, requires_grad=True) for a in arrays]
    tout = tfn(*tt)
    tout.backward(torch.as_tensor(g))
    return out, ts, tout, tt


def _assert_same(out, ts, tout, tt):
    assert out.shape == tuple(tout.shape)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    for t, u in zip(ts, tt):
        np.testing.assert_allclose(t.grad, u.grad.numpy(), rtol=1e-10, atol=1e-12)


def _geometry(draw, k_max=4, dilate=True):
    k = (draw(st.integers(1, k_max)), draw(st.integers(1, k_max)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilate else (1, 1)
    extent = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    # sizes from "just fits" to several extra, so the last window often does not fit
    size = [e + draw(st.integers(0, 5)) for e in extent]
    return k, s, d, size, extent


@st.composite
def conv_cases(draw):
    k, s, d, size, _ = _geometry(draw)
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    as_int = draw(st.booleans()) and k[0] == k[1] and d[0] == d[1]
    return (n, c, *size), (o, c, *k), s, p, d, draw(st.booleans()), as_int


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), seed=SEEDS)
def test_conv2d_matches_torch(case, seed, torch):
    xs, ws, s, p, d, bias, as_int = case
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws)]
    if bias:
        arrays.append(rng.standard_normal(ws[0]))
    kw = {"stride": s, "padding": p, "dilation": d}
    if as_int:
        kw = {"stride": s[0], "padding": p[0], "dilation": d[0]}
    out = autodiff.conv2d(*arrays, **kw)
    g = rng.standard_normal(out.shape)
    _assert_same(
        *_torch_pair(
            torch,
            arrays,
            g,
            lambda *t: autodiff.conv2d(*t, **kw),
            lambda *t: torch.nn.functional.conv2d(*t, **kw),
        )
    )


@st.composite
def pool_cases(draw, dilate):
    k, s, d, size, _ = _geometry(draw, k_max=3, dilate=dilate)
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size), k, s, p, d


@settings(max_examples=25, deadline=None)
@given(case=pool_cases(dilate=True), seed=SEEDS)
def test_max_pool2d_matches_torch(case, seed, torch):
    shape, k, s, p, d = case
    rng = np.random.default_rng(seed)
    x = rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape)  # no ties
    out = autodiff.max_pool2d(x, k, s, p, d)
    g = rng.standard_normal(out.shape)
    _assert_same(
        *_torch_pair(
            torch,
            [x],
            g,
            lambda t: autodiff.max_pool2d(t, k, s, p, d),
            lambda t: torch.nn.functional.max_pool2d(t, k, s, p, d),
        )
    )


@settings(max_examples=25, deadline=None)
@given(case=pool_cases(dilate=True), seed=SEEDS)
def test_max_pool2d_routing_is_torchs_return_indices(case, seed, torch):
    shape, k, s, p, d = case
    x = np.random.default_rng(seed).permutation(np.arange(np.prod(shape), dtype=np.float64))
    x = x.reshape(shape)
    routing = ops_conv.MaxPool2dOp.forward(x, k, s, p, d)[1]
    _, want = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, d, return_indices=True)
    np.testing.assert_array_equal(routing.flat(), want.numpy())
    assert routing.in_shape == shape and routing.out_shape == tuple(want.shape)


@settings(max_examples=25, deadline=None)
@given(case=pool_cases(dilate=False), seed=SEEDS)
def test_avg_pool2d_matches_torch(case, seed, torch):
    shape, k, s, p, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    out = autodiff.avg_pool2d(x, k, s, p)
    g = rng.standard_normal(out.shape)
    _assert_same(
        *_torch_pair(
            torch,
            [x],
            g,
            lambda t: autodiff.avg_pool2d(t, k, s, p),
            lambda t: torch.nn.functional.avg_pool2d(t, k, s, p),
        )
    )


def test_max_pool_ties_send_the_gradient_to_one_element_as_torch(torch):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 0, 1] = x[0, 0, 1, 0] = 1.0  # three tied maxima in the first window
    t = npgrad.tensor(x, requires_grad=True)
    autodiff.max_pool2d(t, 2).sum().backward()
    assert t.grad.sum() == 4.0  # one unit of gradient per window, never split
    assert t.grad[0, 0, 0, 1] == 1.0 and t.grad[0, 0, 1, 0] == 0.0 == t.grad[0, 0, 1, 1]
    tt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(tt, 2).sum().backward()
    np.testing.assert_array_equal(t.grad, tt.grad.numpy())


@st.composite
def bn_cases(draw):
    n, c = draw(st.integers(2, 5)), draw(st.integers(1, 4))
    shape = (
        (n, c) if draw(st.booleans()) else (n, c, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    )
    return shape, draw(st.booleans()), draw(st.sampled_from([1e-5, 1e-3]))


@settings(max_examples=25, deadline=None)
@given(case=bn_cases(), seed=SEEDS)
def test_batch_norm_matches_torch_in_both_modes(case, seed, torch):
    shape, training, eps = case
    rng = np.random.default_rng(seed)
    c = shape[1]
    arrays = [3 * rng.standard_normal(shape) + 1, rng.standard_normal(c), rng.standard_normal(c)]
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    rm_n, rv_n = rm.copy(), rv.copy()
    out = autodiff.batch_norm(*arrays, rm_n.copy(), rv_n.copy(), training, 0.1, eps)
    g = rng.standard_normal(out.shape)
    _assert_same(
        *_torch_pair(
            torch,
            arrays,
            g,
            lambda x, w, b: autodiff.batch_norm(x, w, b, rm_n, rv_n, training, 0.1, eps),
            lambda x, w, b: torch.nn.functional.batch_norm(x, rm_t, rv_t, w, b, training, 0.1, eps),
        )
    )
    # both running estimates moved by two identical steps (or not at all in eval mode)
    np.testing.assert_allclose(rm_n, rm_t.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv_n, rv_t.numpy(), rtol=1e-12, atol=1e-14)
    assert training or (np.array_equal(rm_n, rm) and np.array_equal(rv_n, rv))


def test_batch_norm_running_statistics_follow_torch_over_many_float32_steps(torch):
    rng = np.random.default_rng(0)
    tbn = torch.nn.BatchNorm2d(3, momentum=0.2).float()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    for _ in range(6):
        x = (2 * rng.standard_normal((4, 3, 5, 5)) + 3).astype(np.float32)
        autodiff.batch_norm(x, None, None, rm, rv, training=True, momentum=0.2)
        tbn(torch.from_numpy(x))
    assert rm.dtype == rv.dtype == np.float32
    np.testing.assert_allclose(rm, tbn.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(rv, tbn.running_var.numpy(), rtol=1e-5)


def test_float32_stays_float32_and_outputs_are_nchw_views_of_channels_last_memory():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = autodiff.conv2d(x, w, padding=1)
    assert y.dtype == np.float32 and y.shape == (2, 4, 8, 8)
    assert y.data.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last underneath
    z = autodiff.max_pool2d(npgrad.relu(autodiff.batch_norm(y)), 2)
    assert z.dtype == np.float32 and z.data.transpose(0, 2, 3, 1).flags.c_contiguous
    # and an NCHW-contiguous input gives the same numbers as a channels-last one
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(autodiff.conv2d(x_cl, w, padding=1).data, y.data)


def test_result_does_not_depend_on_the_batch_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((5, 2, 7, 6)), rng.standard_normal((3, 2, 3, 2)), np.ones(3)
    g = rng.standard_normal((5, 3, 4, 7))

    def run():
        ts = [npgrad.tensor(a, requires_grad=True) for a in (x, w, b)]
        y = autodiff.conv2d(*ts, stride=(2, 1), padding=1)
        y.backward(g)
        return [y.data] + [t.grad for t in ts]

    whole = run()
    monkeypatch.setattr(ops_conv, "CHUNK_BYTES", 1)  # one sample at a time
    for a, b_ in zip(whole, run()):
        np.testing.assert_allclose(a, b_, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("flipped_from", [1, 10**9], ids=["flipped convolution", "fold"])
@pytest.mark.parametrize(
    "kernel, padding, dilation",
    [(3, 1, 1), ((3, 2), (2, 0), 1), (2, 1, (2, 1)), ((3, 2), 1, (1, 2)), (1, 0, 1)],
)  # each with padding at most dilation * (kernel - 1): the flipped way applies to all
def test_both_ways_to_a_stride_1_input_gradient_match_torch(
    monkeypatch, torch, flipped_from, kernel, padding, dilation
):
    """Which way is faster depends on the channels (``FLIPPED_MIN_CHANNELS``): both must
    be right for every geometry."""
    monkeypatch.setattr(ops_conv, "FLIPPED_MIN_CHANNELS", flipped_from)
    rng = np.random.default_rng(7)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x, w = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, kh, kw))
    kw_ = {"padding": padding, "dilation": dilation}
    out = autodiff.conv2d(x, w, **kw_)
    g = rng.standard_normal(out.shape)
    _assert_same(
        *_torch_pair(
            torch,
            [x, w],
            g,
            lambda *t: autodiff.conv2d(*t, **kw_),
            lambda *t: torch.nn.functional.conv2d(*t, **kw_),
        )
    )


def test_flatten_keeps_nchw_order_like_torch(torch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 4))
    cl = npgrad.tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    cl.requires_grad_()
    f = autodiff.flatten(cl)
    np.testing.assert_array_equal(f.data, torch.flatten(torch.tensor(x), 1).numpy())
    g = rng.standard_normal(f.shape)
    f.backward(g)
    np.testing.assert_array_equal(cl.grad, g.reshape(x.shape))
    assert autodiff.flatten(x, start_dim=2).shape == (2, 3, 16)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: autodiff.conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 4, 3, 3))), ShapeError, "weight"),
        (lambda: autodiff.conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3))), ShapeError, "fit"),
        (lambda: autodiff.conv2d(np.ones((2, 5, 5)), np.ones((1, 1, 3, 3))), ShapeError, "N, C"),
        (lambda: autodiff.conv2d(np.ones((1, 1, 5, 5)), np.ones((2, 1, 3, 3)), np.ones(3)), ShapeError, "bias"),
        (lambda: autodiff.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), stride=0), ConfigError, "stride"),
        (lambda: autodiff.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), padding=(1, 2, 3)), ConfigError, "padding"),
        (lambda: autodiff.max_pool2d(np.ones((1, 1, 5, 5)), 2, padding=2), ConfigError, "half"),
        (lambda: autodiff.avg_pool2d(np.ones((1, 1, 2, 2)), 3), ShapeError, "fit"),
        (lambda: autodiff.batch_norm(np.ones((1, 3))), ShapeError, "more than one value"),
        (lambda: autodiff.batch_norm(np.ones((4, 3)), training=False), ConfigError, "running"),
        (lambda: autodiff.batch_norm(np.ones((4, 3)), np.ones(2)), ShapeError, "weight"),
        (lambda: autodiff.batch_norm(np.ones((4, 3)), None, None, [0, 0, 0]), ShapeError, "in place"),
        (lambda: autodiff.batch_norm(np.ones((4, 3)), momentum=None), ConfigError, "momentum"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_clear_typed_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_first_layer_skips_the_input_gradient():
    rng = np.random.default_rng(3)
    w = npgrad.tensor(rng.standard_normal((2, 1, 3, 3)), requires_grad=True)
    y = autodiff.conv2d(rng.standard_normal((2, 1, 6, 6)), w)  # data: no gradient wanted
    grads = OPS["conv2d"].vjp(y._node.saved, np.ones(y.shape), (False, True))
    assert grads[0] is None and grads[1].shape == w.shape


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, w: autodiff.conv2d(x, w, stride=2.9), "ConfigError", "stride must be an int"),
        (lambda x, w: autodiff.conv2d(x, w, padding="1"), "ConfigError", "padding must be an int"),
        (lambda x, w: autodiff.max_pool2d(x, 2.9), "ConfigError", "kernel size must be an int"),
        (lambda x, w: autodiff.conv2d(x, w[:, :, :0]), "ShapeError", "has an empty axis"),
        (lambda x, w: autodiff.conv2d(x, w[:0]), "ShapeError", "has an empty axis"),
        (lambda x, w: autodiff.batch_norm(x[:0], np.ones(3), np.zeros(3)), "ShapeError", "empty"),
        (
            lambda x, w: autodiff.batch_norm(x, np.ones(3), np.zeros(3), eps=-1.0),
            "ConfigError",
            "eps must be a positive number",
        ),
        (
            lambda x, w: autodiff.batch_norm(
                x, np.ones(3), np.zeros(3), np.zeros(3, int), np.ones(3, int)
            ),
            "ShapeError",
            "running_mean must be a float array",
        ),
        (lambda x, w: autodiff.flatten(x, start_dim=5), "ShapeError", "start_dim 5 is not an axis"),
        (lambda x, w: autodiff.flatten(x, start_dim=-9), "ShapeError", "start_dim -9"),
    ],
)
def test_bad_geometry_and_empty_inputs_are_typed_errors(call, error, match):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 7, 9)), rng.standard_normal((4, 3, 3, 3))
    with pytest.raises(getattr(npgrad, error), match=match):
        call(x, w)
