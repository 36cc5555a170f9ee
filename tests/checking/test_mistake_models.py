"""The plain references the mistakes are modelled on agree with the op table's ops, and each
modelled mistake is told apart from the right gradient."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgrad.checking import mistake_models as mistakes
from npgrad.ops import conv as ops_conv


@settings(max_examples=10, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 2, (1, 2), 3]),
    st.sampled_from([0, 1, (0, 2)]),
    st.sampled_from([1, 2, (2, 1)]),
)
def test_conv_reference_is_the_op_tables_conv2d(seed, stride, pad, dilation):
    rng = np.random.default_rng(seed)
    x, w, b = (
        rng.standard_normal((2, 3, 9, 8)),
        rng.standard_normal((4, 3, 3, 2)),
        rng.standard_normal(4),
    )
    want, _ = ops_conv.Conv2dOp.forward(x, w, b, stride=stride, padding=pad, dilation=dilation)
    got = mistakes.conv(x, w, b, stride, pad, dilation=dilation)
    np.testing.assert_allclose(got, want, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([(2, 2), (2, 3), (3, 3)]),
    st.sampled_from([1, 2, (2, 1), 3]),
    st.sampled_from([0, 1]),
)
def test_pool_references_are_the_op_tables_pooling(seed, kernel, stride, pad):
    x = mistakes.distinct(np.random.default_rng(seed), (2, 3, 8, 9))
    for how, op in (("max", ops_conv.MaxPool2dOp), ("mean", ops_conv.AvgPool2dOp)):
        want, _ = op.forward(x, kernel, stride, pad)
        got = mistakes.pool(x, *kernel, stride, how=how, pad=pad)
        np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4, 5)])
def test_batch_norm_reference_is_the_op_tables(shape):
    rng = np.random.default_rng(0)
    x, gamma, beta = (
        rng.standard_normal(shape),
        rng.standard_normal(shape[1]),
        rng.standard_normal(shape[1]),
    )
    want, _ = ops_conv.BatchNormOp.forward(x, gamma, beta, eps=1e-3)
    layout = "batch" if len(shape) == 2 else "spatial"
    np.testing.assert_allclose(mistakes.normalise(layout, x, gamma, beta, 1e-3), want, atol=1e-12)


def test_distinct_values_leave_no_ties_for_the_finite_differences():
    x = mistakes.distinct(np.random.default_rng(1), (2, 3, 8, 9))
    assert np.diff(np.sort(x.ravel())).min() > 0.049


def conv_trial(rng):
    x, w, b = (
        rng.standard_normal((2, 3, 7, 9)),
        rng.standard_normal((4, 3, 3, 5)),
        rng.standard_normal(4),
    )
    values = {"x": x, "w": w, "b": b, "conv_param": {"stride": 2, "pad": 1}}
    g = rng.standard_normal(mistakes.ref_conv(values).shape)
    return mistakes.Trial(values, ["x", "w", "b"], g)


def test_each_conv_mistake_is_its_own_and_the_right_gradient_none():
    trial = conv_trial(np.random.default_rng(0))
    right = trial.vjp_of(0, mistakes.ref_conv)
    assert mistakes.name_mistake(trial, mistakes.CONV_HYPOTHESES, 0, right, right) is None
    flipped = trial.vjp_of(0, lambda v: mistakes.ref_conv({**v, "w": v["w"][:, :, ::-1, ::-1]}))
    strided = trial.vjp_of(0, lambda v: mistakes.ref_conv(v, step=1))
    padded = np.pad(right, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for got, named in (
        (flipped, "kernel flipped"),
        (strided, "stride ignored"),
        (padded, "padding not removed"),
    ):
        assert mistakes.name_mistake(trial, mistakes.CONV_HYPOTHESES, 0, got, right).startswith(
            named
        )
    zero = mistakes.name_mistake(trial, mistakes.CONV_HYPOTHESES, 2, np.zeros(4), np.ones(4))
    assert zero == "the gradient is identically zero: backward not implemented?"


def test_frozen_statistics_use_the_unperturbed_input():
    """Treating mean and variance as constants: the model's gradient is gamma * g / s exactly."""
    rng = np.random.default_rng(0)
    x, gamma, beta = (
        2 * rng.standard_normal((6, 5)) + 1,
        rng.standard_normal(5),
        rng.standard_normal(5),
    )
    values = {"x": x, "gamma": gamma, "beta": beta, "bn_param": {"eps": 1e-5}}
    trial = mistakes.Trial(values, ["x", "gamma", "beta"], rng.standard_normal((6, 5)))
    constants = gamma * trial.g / np.sqrt(x.var(0) + 1e-5)
    right = trial.vjp_of(0, mistakes.norm_ref("batch", "bn_param"))
    assert not np.allclose(right, constants, atol=1e-3)
    hyps = mistakes.norm_hypotheses("batch", "bn_param")
    assert mistakes.name_mistake(trial, hyps, 0, constants, right).startswith(
        "treats the mean and variance as constants"
    )
