"""The building blocks of op specs: domains keep inputs clear of kinks and poles, draws are valid."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npgrad.ops import specs as opspecs
from npgrad.ops.specs import KINK, NONZERO, POSITIVE, REAL, WIDE, Case, Domain, Draw, OpSpec

SHAPES = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
SEEDS = st.integers(0, 2**32 - 1)
NORMALS = hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3))


@given(x=NORMALS)
def test_domains_place_values_where_they_promise(x):
    np.testing.assert_array_equal(REAL.place(x), x)
    np.testing.assert_allclose(WIDE.place(x), 3 * x)
    assert (POSITIVE.place(x) >= 0.5).all()
    assert (np.abs(NONZERO.place(x)) >= 0.5).all()
    assert (np.abs(KINK.place(x)) >= 0.1).all()
    # the sign survives a gap, so both sides of the kink are still checked
    np.testing.assert_array_equal(np.sign(KINK.place(x)), np.where(x >= 0, 1, -1))


def test_sample_draws_each_input_from_its_domain_and_the_last_repeats():
    spec = OpSpec(
        torch=lambda t, *xs: xs[0],
        draw=lambda d: Case([(50,), (50,), (50,)], {"k": 1}),
        domains=(REAL, Domain("big", scale=0.0, gap=7.0)),
    )
    arrays, params = spec.sample(np.random.default_rng(0))
    assert params == {"k": 1} and [a.shape for a in arrays] == [(50,)] * 3
    assert (arrays[0] < 0).any() and (np.abs(arrays[0]) < 7).all()
    assert (np.abs(arrays[1]) == 7).all() and (np.abs(arrays[2]) == 7).all()
    assert all(a.dtype == np.float64 for a in arrays)


@settings(max_examples=50)
@given(shape=SHAPES, seed=SEEDS)
def test_draw_choices_are_valid_for_the_base_shape(shape, seed):
    d = Draw(np.random.default_rng(seed), shape)
    nd = len(shape)
    assert -nd <= d.axis() < nd
    axes = d.axes()
    assert axes is None or isinstance(axes, int) or list(axes) == sorted(set(axes))
    np.sum(np.zeros(shape), axis=axes)  # NumPy accepts it
    assert sorted(d.permutation()) == list(range(nd))
    assert np.broadcast_shapes(shape, d.partner()) == shape
    assert len(d.matrix()) >= 2
    assert 1 <= d.size() <= 4 and d.choice([2.5]) == 2.5 and isinstance(d.choice([1, 2]), int)


@settings(max_examples=50)
@given(shape=SHAPES, seed=SEEDS)
def test_the_shared_draw_patterns_give_inputs_the_ops_accept(shape, seed):
    d = Draw(np.random.default_rng(seed), shape)
    a, b = opspecs.concat_partner(d).shapes
    axis = opspecs.concat_partner(Draw(np.random.default_rng(seed), shape)).params["axis"]
    np.concatenate([np.zeros(a), np.zeros(b)], axis=axis)
    case = opspecs.new_shape(d)
    assert np.zeros(shape).reshape(case.params["shape"]).size == np.prod(shape)
    np.zeros(shape)[opspecs.index(d).params["index"]]  # in bounds
    x, w, bias = opspecs.linear_operands(d).shapes
    assert (np.zeros(x) @ np.zeros(w) + np.zeros(bias)).shape[-1] == bias[0]
    targets = opspecs.class_targets(d)
    (n, c), t = targets.shapes[0], targets.params["target"]
    assert c >= 2 and len(t) == n
    if t.ndim == 1:
        assert t.dtype.kind == "i" and ((0 <= t) & (t < c)).all()
    else:
        np.testing.assert_allclose(t.sum(axis=1), 1.0)


def test_a_base_shape_is_never_zero_dimensional():
    assert Draw(np.random.default_rng(0), ()).shape == (3,)


@pytest.mark.parametrize("p", [(2.0,), (0.5, 3)])
def test_with_params_draws_each_parameter_from_its_options(p):
    draw = opspecs.with_params(p=p)
    values = {draw(Draw(np.random.default_rng(s))).params["p"] for s in range(20)}
    assert values == set(p)
