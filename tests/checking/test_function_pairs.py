"""Checking function pairs (CS231n's convention): each classic mistake caught and named, correct
pairs passing, whatever the seed of the inputs.

One file per diagnosis lives in ``tests/fixtures/pairs``; they import the correct forms from
``correct_layers.py`` beside them, as students' files import their helpers.
"""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgrad.checking.function_pairs import (
    KINDS,
    Pair,
    PairReport,
    check_pair,
    check_pairs,
    find_pairs,
    resolve_params,
    user_functions,
)
from npgrad.errors import LayerCheckError

PAIRS = Path(__file__).parents[1] / "fixtures" / "pairs"
sys.path.insert(0, str(PAIRS))
import correct_layers as ok  # noqa: E402


def check_module(name, **kwargs):
    module = importlib.import_module(name)
    return check_pairs(user_functions(vars(module), module.__name__), **kwargs)


def test_correct_pairs_pass_in_every_mode():
    reports = check_module("correct_layers")
    assert reports.passed, reports
    assert not any(r.warnings for r in reports), reports
    by_name = {r.name: r for r in reports}
    assert len(by_name) == 14
    labels = [c.label for c in by_name["batchnorm_forward/batchnorm_backward"].cases]
    assert labels == ["mode=train", "mode=test"]
    assert [c.label for c in by_name["dropout_forward/dropout_backward"].cases] == labels
    conv = by_name["conv_forward_naive/conv_backward_naive"].cases[0]
    assert conv.forward == "ok" and [r.name for r in conv.inputs] == ["dx", "dw", "db"]


@pytest.mark.parametrize(
    "file, pair, diagnosis",
    [
        ("zero_gradient", "affine_forward/affine_backward", "dw: the gradient is identically zero: backward not implemented?"),
        ("bn_constant_stats", "batchnorm_forward/batchnorm_backward", "mode=train: dx: treats the mean and variance as constants"),
        ("alt_disagrees", "batchnorm_forward/batchnorm_backward_alt", "mode=train: dx: disagrees with batchnorm_backward (by up to"),
        ("loss_not_divided", "softmax_loss", "dx: dx is not divided by N: the loss is a mean over the N = 6 samples"),
        ("dropout_new_mask", "dropout_forward/dropout_backward", "mode=train: dx: backward does not use the forward's mask"),
        ("running_stats_not_updated", "batchnorm_forward/batchnorm_backward", "mode=train: running statistics not updated in train mode: bn_param['running_mean']"),
        ("running_stats_not_used", "batchnorm_forward/batchnorm_backward", "mode=test: forward: test mode normalises with the batch statistics"),
        ("conv_kernel_flipped", "conv_forward_naive/conv_backward_naive", "stride=2 pad=1: forward: kernel flipped: forward computes a true convolution"),
        ("conv_padding_kept", "conv_forward_naive/conv_backward_naive", "stride=2 pad=1: dx: padding not removed: dx has the padded shape (2, 3, 9, 11) (inside, its values are right)"),
        ("conv_stride_ignored", "conv_forward_naive/conv_backward_naive", "stride=2 pad=1: dx: stride ignored in backward"),
        ("pool_spread", "max_pool_forward_naive/max_pool_backward_naive", "dx: pooling gradient spread over the whole window"),
        ("pool_overlap_assigned", "max_pool_forward_naive/max_pool_backward_naive", "dx: wrong only where windows overlap"),
        ("pool_raises", "max_pool_forward_naive/max_pool_backward_naive", "backward failed: "),
    ],
)  # fmt: skip
def test_each_mistake_is_caught_with_its_diagnosis(file, pair, diagnosis):
    reports = check_module(file)
    report = next(r for r in reports if r.name == pair)
    assert not report.passed
    assert report.diagnoses[0].startswith(diagnosis), report.diagnoses
    assert report.summary == f"{pair}: FAIL  {report.diagnoses[0]}"
    assert diagnosis in str(reports) and "nan" not in str(report)


def test_the_plain_form_beside_a_wrong_alt_passes():
    reports = check_module("alt_disagrees")
    assert [r.passed for r in reports] == [True, False]
    assert "which matches the numerical gradient" in reports[1].diagnoses[0]


def test_a_raising_backward_points_at_the_users_line():
    report = check_module("pool_raises", source=str(PAIRS / "pool_raises.py"))[0]
    assert "pool_raises.py:17: ValueError: operands could not be broadcast" in report.error
    assert not report.error.endswith(" ")


@pytest.mark.parametrize(
    "file, warning",
    [
        ("dout_in_place", "backward modifies its upstream gradient dout in place"),
        ("broadcast_shape", "dgamma has shape (1, 5) where gamma has (5,): the values are right"),
    ],
)
def test_right_values_with_a_flaw_pass_with_a_warning(file, warning):
    (report,) = check_module(file)
    assert report.passed and report.warnings[0].startswith(warning)
    assert report.summary.startswith(f"{report.name}: PASS  (warning: {warning}")


def test_a_forward_that_modifies_its_input_is_warned_about():
    def relu_forward(x):
        x[x < 0] = 0
        return x, x > 0

    def relu_backward(dout, mask):
        return dout * mask

    report = check_pair(relu_forward, relu_backward)
    assert report.passed
    assert report.warnings == [
        "forward modifies its argument x in place: the caller's array changes"
    ]


def dropout_forward(x, dropout_param):
    """Older years' dropout: p is the probability of dropping."""
    p = dropout_param["p"]
    np.random.seed(dropout_param["seed"])
    if dropout_param["mode"] == "train":
        mask = (np.random.rand(*x.shape) >= p) / (1 - p)
        return x * mask, mask
    return x, None


def dropout_backward(dout, mask):
    return dout if mask is None else dout * mask


def test_dropout_meaning_of_p_is_measured_not_assumed():
    report = check_pair(dropout_forward, dropout_backward)
    assert report.passed, report
    assert "is the drop probability here" in report.cases[0].notes[0]
    report = check_pair(ok.dropout_forward, ok.dropout_backward)
    assert "is the keep probability here" in report.cases[0].notes[0]


def test_dropout_that_is_not_inverted_fails():
    def dropout_forward(x, dropout_param):
        np.random.seed(dropout_param["seed"])
        if dropout_param["mode"] == "train":
            mask = np.random.rand(*x.shape) < dropout_param["p"]
            return x * mask, mask
        return x * dropout_param["p"], None

    def dropout_backward(dout, mask):
        return dout * mask if mask is not None else dout

    report = check_pair(dropout_forward, dropout_backward)
    assert report.diagnoses[0].startswith("mode=train: not inverted dropout")
    assert "scaled: inverted dropout scales in training" in report.diagnoses[1]


def test_a_forward_random_without_its_seed_is_refused_a_verdict():
    def dropout_forward(x, dropout_param):
        mask = np.random.default_rng().random(x.shape) < 0.5  # ignores the seed
        return x * mask, mask

    report = check_pair(dropout_forward, lambda dout, mask: dout * mask)
    assert report.error.startswith("forward gives different outputs for the same inputs")


@pytest.mark.parametrize(
    "params",
    [
        {"conv_forward_naive": {"stride": 1, "pad": 0}},
        {"conv_forward_naive": {"conv_param": {"stride": 3, "pad": 2}}},
        {"max_pool_forward_naive": {"pool_height": 2, "pool_width": 2, "stride": 2}},
        {"batchnorm_forward": {"mode": "test", "momentum": 0.5}},
        {"dropout_forward": {"p": 0.8}},
        {"spatial_groupnorm_forward": {"G": 2}},  # C = 6: another grouping
    ],
)
def test_correct_pairs_pass_with_other_parameters(params):
    reports = check_module("correct_layers", params=params, only=list(params))
    assert reports and reports.passed, reports


def test_shapes_can_be_given():
    shapes = {"conv_forward_naive": [(1, 2, 5, 5), (3, 2, 3, 3), (3,)]}
    (report,) = check_module("correct_layers", shapes=shapes, only=list(shapes))
    assert report.passed and report.cases[0].shapes == shapes["conv_forward_naive"]


def test_the_users_own_argument_names_do_not_matter():
    def affine_forward(X, W, bias):
        return X.reshape(len(X), -1) @ W + bias, (X, W)

    def affine_backward(dout, cache):
        X, W = cache
        return (dout @ W.T).reshape(X.shape), X.reshape(len(X), -1).T @ dout, dout.sum(0)

    assert check_pair(affine_forward, affine_backward).passed


def test_layers_the_table_does_not_name_are_built_from_their_argument_names():
    def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
        a, conv_cache = ok.conv_forward_naive(x, w, b, conv_param)
        r, relu_cache = ok.relu_forward(a)
        out, pool_cache = ok.max_pool_forward_naive(r, pool_param)
        return out, (conv_cache, relu_cache, pool_cache)

    def conv_relu_pool_backward(dout, cache):
        conv_cache, relu_cache, pool_cache = cache
        da = ok.relu_backward(ok.max_pool_backward_naive(dout, pool_cache), relu_cache)
        return ok.conv_backward_naive(da, conv_cache)

    report = check_pair(conv_relu_pool_forward, conv_relu_pool_backward)
    assert report.passed, report
    assert report.cases[0].shapes == [(2, 3, 6, 6), (3, 3, 3, 3), (3,)]
    assert report.cases[0].forward is None  # nothing to compare with: numerical verdict only


def test_a_pair_of_unknown_kind_gets_shapes_tried_in_turn():
    def scale_forward(x, s):
        return x * s, (x, s)

    def scale_backward(dout, cache):
        x, s = cache
        return dout * s, dout * x

    report = check_pair(scale_forward, scale_backward)
    assert report.passed and report.cases[0].shapes == [(5, 6), (5, 6)]


# --------------------------------------------------------------------------- inputs


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_verdicts_do_not_depend_on_the_drawn_inputs(seed):
    """Where kinks and ties lie (ReLU, max pooling, SVM margins), correct never fails and
    wrong never passes."""
    cheap = ["relu_forward", "max_pool_forward_naive", "svm_loss", "batchnorm_forward"]
    assert check_module("correct_layers", seed=seed, only=cheap).passed
    for file in ("pool_spread", "bn_constant_stats"):
        (report,) = check_module(file, seed=seed)
        assert not report.passed and report.cases[0].inputs[0].diagnosis


def test_pooling_windows_hold_no_ties_and_relu_inputs_no_kink():
    from npgrad.checking.function_pairs import _build

    rng = np.random.default_rng(0)
    (x, _), _ = _build(
        KINDS["max_pool"], ["x", "pool_param"], [(2, 3, 8, 9)], {"pool_param": {}}, rng, ""
    )
    gaps = np.diff(np.sort(x.ravel()))
    assert gaps.min() > 0.049  # >> the finite-difference step 1e-6
    (x,), _ = _build(KINDS["relu"], ["x"], [(40, 50)], {}, rng, "")
    assert np.abs(x).min() >= 0.1


def test_svm_margins_keep_clear_of_the_hinge():
    from npgrad.checking.function_pairs import _build

    rng = np.random.default_rng(0)
    x, y = _build(KINDS["svm"], ["x", "y"], [(50, 10)], {}, rng, "")[0]
    margins = x - x[np.arange(50), y][:, None] + 1
    margins[np.arange(50), y] = 1
    assert np.abs(margins).min() > 0.05


# --------------------------------------------------------------------------- discovery, options


def test_pairs_are_found_by_name():
    def f(*args):
        pass

    names = [
        "affine_forward", "affine_backward", "conv_forward_naive", "conv_backward_naive",
        "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
        "conv_forward_fast", "svm_loss", "svm_loss_naive", "relu_backward", "helper",
    ]  # fmt: skip
    found = find_pairs(dict.fromkeys(names, f))
    assert [(p.name, p.plain) for p in found] == [
        ("affine_forward/affine_backward", None),
        ("conv_forward_naive/conv_backward_naive", None),
        ("batchnorm_forward/batchnorm_backward", None),
        ("batchnorm_forward/batchnorm_backward_alt", "batchnorm_backward"),
        ("svm_loss", None),
        ("svm_loss_naive", None),
    ]


def test_only_functions_defined_in_the_module_count():
    import tests.fixtures.pairs.broadcast_shape as module

    assert list(user_functions(vars(module), module.__name__)) == [
        "batchnorm_forward",
        "batchnorm_backward",
    ]


@pytest.mark.parametrize(
    "kind, names, raw, resolved",
    [
        ("conv", None, {"stride": 1}, {"conv_param": {"stride": 1}}),
        ("conv", None, {"conv_param.pad": 0}, {"conv_param": {"pad": 0}}),
        ("batchnorm", None, {"mode": "test"}, {"bn_param": {"mode": "test"}}),
        ("spatial_groupnorm", None, {"G": 4, "eps": 1e-3}, {"G": 4, "gn_param": {"eps": 1e-3}}),
        (None, ["x", "lrelu_param"], {"alpha": 0.1}, {"lrelu_param": {"alpha": 0.1}}),
    ],
)
def test_parameters_resolve_to_their_argument(kind, names, raw, resolved):
    kind = KINDS.get(kind)
    assert resolve_params(kind, names or list(kind.args), raw, "f") == resolved


@pytest.mark.parametrize(
    "kind, raw",
    [("conv", {"strid": 1}), ("max_pool", {"pad": 1}), (None, {"stride": 1})],
)
def test_parameters_naming_nothing_are_refused(kind, raw):
    kind = KINDS.get(kind)
    with pytest.raises(LayerCheckError, match="no single argument or parameter named"):
        resolve_params(kind, list(kind.args) if kind else ["x", "y"], raw, "f")


def test_reports_survive_a_round_trip_through_plain_data():
    for file in ("conv_padding_kept", "dropout_new_mask", "dout_in_place"):
        for report in check_module(file):
            again = PairReport.from_dict(json.loads(json.dumps(report.to_dict())))
            assert str(again) == str(report) and again.diagnoses == report.diagnoses
            assert again.cases[0].shapes == report.cases[0].shapes


def test_html_for_notebooks():
    html = check_module("pool_spread")._repr_html_()
    assert "<table>" in html and "FAIL" in html and "spread over the whole window" in html
    assert check_module("pool_spread")[0]._repr_html_() == html


def test_a_loss_of_an_unknown_name_is_not_guessed_at():
    report = check_pair(lambda x, y: (0.0, x), None, Pair("hinge_loss", None, "hinge"))
    assert not report.passed and report.error is None
    assert report.not_checked.startswith("no loss named 'hinge' is known")  # not a failure


def test_a_forward_that_takes_fewer_shapes_than_the_course_asks_is_warned_about():
    def affine_forward(x, w, b):  # the course's x is (N, d_1, ..., d_k)
        return x @ w + b, (x, w)

    def affine_backward(dout, cache):
        x, w = cache
        return dout @ w.T, x.T @ dout, dout.sum(0)

    report = check_pair(affine_forward, affine_backward)
    assert report.passed and report.cases[0].shapes == [(4, 6), (6, 5), (5,)]
    assert report.warnings[0].startswith("not checked with inputs 4x2x3, 6x5, 5 (the course's)")
    assert "ValueError" in report.warnings[0]


def test_the_course_starter_code_is_called_unimplemented():
    def affine_forward(x, w, b):
        out = None
        return out, (x, w, b)

    def relu_forward(x):
        return np.maximum(0, x), x

    def relu_backward(dout, cache):
        dx = None
        return dx

    report = check_pair(affine_forward, ok.affine_backward)
    assert report.error == "forward returned None as its output (not implemented yet?)"
    report = check_pair(relu_forward, relu_backward)  # a None alone may be a missing return
    assert report.error.startswith("backward returned None (a missing return?)")
    report = check_pair(ok.affine_forward, lambda dout, cache: (None, None, dout.sum(0)))
    assert report.error == "backward returned None as dx, dw (not implemented yet?)"


# --------------------------------------------------------------------------- what cannot apply


@pytest.mark.parametrize(
    "forward, params, match",
    [
        (ok.svm_loss, {"y": 3}, "svm_loss: y is the labels, drawn by npgrad, not a parameter"),
        (ok.affine_forward, {"b": 0.5}, "affine_forward: b is an input array"),
        (ok.conv_forward_naive, {"conv_param": {"stride": "2"}}, "conv_param.stride must be a whole number"),
        (ok.conv_forward_naive, {"pad": (1, -1)}, "conv_param.pad must be a whole number >= 0 or a pair"),
        (ok.max_pool_forward_naive, {"pool_param.pool_height": 0}, "pool_param.pool_height must be"),
        (ok.batchnorm_forward, {"momentum": True}, "bn_param.momentum must be a number, not True"),
        (ok.dropout_forward, {"seed": 1.5}, "dropout_param.seed must be a whole number >= 0"),
    ],
)  # fmt: skip
def test_parameters_that_cannot_apply_are_refused_not_crashed_on(forward, params, match):
    backward = getattr(ok, forward.__name__.replace("forward", "backward"), None)
    with pytest.raises(LayerCheckError, match=match):
        check_pair(forward, None if backward is forward else backward, params=params)


def test_parameters_of_the_right_type_still_apply():
    kind = KINDS["conv"]
    assert resolve_params(kind, kind.args, {"stride": [1, 2], "pad": 0}, "conv") == {
        "conv_param": {"stride": [1, 2], "pad": 0}
    }
    kind = KINDS["batchnorm"]
    raw = {"bn_param": {"mode": "test", "running_mean": np.zeros(5)}, "eps": 1}
    assert resolve_params(kind, kind.args, raw, "bn")["bn_param"]["eps"] == 1


def test_a_numerical_gradient_that_does_not_fit_the_definition_fails(monkeypatch):
    # What a child whose npgrad was patched would report: a flat forward around the inputs.
    import npgrad.checking.function_pairs

    monkeypatch.setattr(
        npgrad.checking.function_pairs,
        "perturbed_projections",
        lambda f, x, g, eps: (np.zeros(x.shape),) * 2,
    )
    report = check_pair(ok.relu_forward, lambda dout, cache: np.zeros_like(dout))
    assert not report.passed
    assert report.diagnoses[0].startswith(
        "dx: the numerical gradient disagrees with the definition's, though the forward's output"
    )


def test_base_exceptions_of_the_code_fail_the_pair_but_ctrl_c_stops_the_check():
    def relu_forward(x):
        raise GeneratorExit("closed")

    report = check_pair(relu_forward, ok.relu_backward)
    assert not report.passed and report.error.endswith("GeneratorExit: closed")
    assert report.error.startswith("forward failed: ")

    def interrupted(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # in this process, it may be the user's Ctrl-C
        check_pair(interrupted, ok.relu_backward, Pair("relu_forward", "relu_backward", "relu"))
