"""Checking a student's own layers: each mistake caught with the right diagnosis.

In the same process, as in a notebook; files (in a child process) are
``tests/checking/test_user_files.py``'s.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgrad
from npgrad.checking.layer_classes import LayerReport, check_layer, domains_for
from npgrad.ops.specs import KINK, NONZERO, POSITIVE, REAL, WIDE

HERE = Path(__file__).parents[1] / "fixtures" / "layers"
sys.path.insert(0, str(HERE))  # wrong_layers imports its sibling helper, as a student's would
from tests.fixtures.layers import misbehaving_layers as bad  # noqa: E402
from tests.fixtures.layers import wrong_layers as w  # noqa: E402
from tests.fixtures.layers import wrong_returns as r  # noqa: E402


@pytest.mark.parametrize(
    "cls, diagnosis",
    [
        (w.TransposedMatmul, "transposed gradient"),
        (w.NoBatchSumMatmul, "missing sum over the batch"),
        (w.SignErrorRelu, "sign error"),
        (w.MasklessRelu, "ignores the mask"),
        (w.NoUpstreamSigmoid, "forgot to multiply by the upstream gradient"),
        (w.WrongShapeTanh, "wrong shape"),
        (w.HalvedSquare, "off by a constant factor: backward is 0.5 times"),
    ],
)
def test_each_mistake_is_caught_and_named(cls, diagnosis):
    report = check_layer(cls, use_torch=False)
    assert not report.passed
    assert any(diagnosis in d for d in report.diagnoses), report
    assert "FAIL" in str(report) and diagnosis in str(report)


@pytest.mark.parametrize("cls", [w.Relu, w.Softmax, w.Matmul])
def test_correct_layers_pass_including_reference_checks(cls, torch):
    report = check_layer(cls, use_torch=True)
    assert report.passed, report
    assert report.reference["npgrad"].startswith("ok")
    assert report.reference["pytorch"].startswith("ok")


def test_npgrad_own_layers_pass():
    for cls in (npgrad.layers.Matmul, npgrad.layers.Relu, npgrad.layers.Softmax, npgrad.layers.Log):
        assert check_layer(cls, use_torch=False).passed


class Sigmoid:
    """Right gradient for the wrong function: only the comparison with npgrad's Sigmoid sees it."""

    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, g):
        return g * (1 - self.y**2)


def test_a_class_named_like_an_npgrad_layer_is_compared_with_it():
    report = check_layer(Sigmoid, use_torch=False)
    assert report.inputs[0].passed  # consistent with itself...
    assert report.reference == {"npgrad": "forward differs"} and not report.passed


class Log:
    """Named like the exercise's Log but with two inputs: nothing to compare it with."""

    def forward(self, x, shift):
        self.x = x
        return np.log(x) + shift

    def backward(self, g):
        return g / self.x, g


def test_a_namesake_with_other_inputs_is_not_compared_and_not_failed_for_it(torch):
    report = check_layer(Log, use_torch=True)
    assert report.passed, report
    assert list(report.reference) == ["npgrad"]
    assert report.reference["npgrad"].startswith("not compared: it takes other inputs")


def test_forward_exception_is_reported_with_the_users_line():
    report = check_layer(w.CrashingForward, use_torch=False, source=w.__file__)
    assert not report.passed and "NameError" in report.error
    assert "wrong_layers.py:" in report.error


def test_mismatching_elements_are_listed():
    report = check_layer(w.SignErrorRelu, use_torch=False)
    assert report.inputs[0].mismatches and "backward gives" in str(report)


def test_html_for_notebooks():
    html = check_layer(w.MasklessRelu, use_torch=False)._repr_html_()
    assert "<table>" in html and "FAIL" in html and "mask" in html


class MeanNotSumMatmul:
    """grad_W divided by the batch size: a classic when the loss is a sum."""

    def forward(self, x, W):
        self.x, self.W = x, W
        return x @ W

    def backward(self, g):
        return g @ self.W.T, self.x.T @ g / self.x.shape[0]


def test_batch_size_factor_is_named():
    report = check_layer(MeanNotSumMatmul, use_torch=False)
    assert any("1/5: divided by the batch size" in d for d in report.diagnoses), report
    assert "nan" not in str(check_layer(w.WrongShapeTanh, use_torch=False))


@pytest.mark.parametrize(
    "cls, error",
    [
        (r.BackwardReturnsNone, "backward returned None (a missing return?); expected a NumPy array of shape (5, 6)"),
        (r.BackwardReturnsStr, "backward returned a str; expected a NumPy array of shape (5, 6)"),
        (r.BackwardReturnsList, "backward returned a list of 5; expected a NumPy array of shape (5, 6)"),
        (r.MatmulReturnsList, "backward returned a list of 2; expected a tuple of 2 NumPy arrays (one per input) of shapes (5, 6) and (6, 4)"),
        (r.MatmulReturnsNoneForW, "backward returned, as the gradient of input 1, None (a missing return?); expected an array of shape (6, 4)"),
        (r.MatmulReturnsOneGradient, "backward returned a NumPy array of shape (5, 6); expected a tuple of 2 NumPy arrays"),
        (r.ForwardReturnsNone, "forward returned None (a missing return?); expected a NumPy array (the output)"),
        (r.ForwardReturnsStr, "forward returned a str; expected a NumPy array (the output)"),
        (r.ForwardReturnsTuple, "forward returned a tuple of 2; return only the output array"),
        (r.ForwardReturnsObjects, "forward returned an array of dtype object"),
    ],
)  # fmt: skip
def test_wrong_return_types_are_named_with_what_was_expected(cls, error):
    report = check_layer(cls, use_torch=False)
    assert not report.passed and report.error.startswith(error), report.error
    assert "nan" not in str(report)


@pytest.mark.parametrize(
    "cls, error",
    [
        (bad.ExitsInBackward, "the code called sys.exit(3) during backward"),
        (bad.ExitsInForward, "the code called sys.exit('done') during forward"),
        (bad.ExitsInConstructor, "the code called sys.exit(1) during the constructor"),
    ],
)
def test_sys_exit_in_a_layer_fails_it_without_leaving_the_process(cls, error):
    report = check_layer(cls, use_torch=False)  # a SystemExit escaping would end pytest here
    assert not report.passed and report.error == error


def test_memory_error_is_a_failure_of_the_layer():
    report = check_layer(bad.OutOfMemoryInForward, use_torch=False)
    assert not report.passed and "forward failed" in report.error and "MemoryError" in report.error


def test_progress_names_each_phase_once_in_order():
    phases = []
    check_layer(w.Relu, use_torch=False, progress=phases.append)
    assert phases[:3] == ["the constructor", "forward", "backward"]
    assert phases.count("numerical gradient: forward on perturbed inputs") == 1


@pytest.mark.parametrize(
    "name, domains",
    [
        ("Relu", (KINK,)),
        ("LeakyReLU", (KINK,)),
        ("Log", (POSITIVE,)),
        ("LogSoftmax", (WIDE,)),
        ("Softmax", (WIDE,)),
        ("Div", (REAL, NONZERO)),
        ("Sqrt", (POSITIVE,)),
        ("HalvedSquare", (REAL,)),
    ],
)
def test_inputs_keep_clear_of_the_kinks_and_poles_of_the_op_named(name, domains):
    assert domains_for(name) == domains


class LogWithoutEpsilon:
    """log at 0 or below would be NaN: the check must not draw such inputs."""

    def forward(self, x):
        self.x = x
        return np.log(x)

    def backward(self, g):
        return g / self.x


def test_a_log_layer_gets_positive_inputs():
    report = check_layer(LogWithoutEpsilon, use_torch=False)
    assert report.passed, report


def test_reports_survive_a_round_trip_through_plain_data():
    import json

    for cls in (w.NoBatchSumMatmul, w.SignErrorRelu, r.BackwardReturnsStr):
        report = check_layer(cls, use_torch=False)
        again = LayerReport.from_dict(json.loads(json.dumps(report.to_dict())))
        assert str(again) == str(report) and again.diagnoses == report.diagnoses
        assert again.shapes == report.shapes and isinstance(again.shapes[0], tuple)
        assert [i.mismatches for i in again.inputs] == [i.mismatches for i in report.inputs]


class UnfinishedMatmul:
    """grad_W left as the zeros the template made."""

    def forward(self, x, W):
        self.x, self.W = x, W
        return x @ W

    def backward(self, g):
        return g @ self.W.T, np.zeros_like(self.W)


def test_a_gradient_left_at_zero_is_called_unimplemented():
    report = check_layer(UnfinishedMatmul, use_torch=False)
    assert report.inputs[0].passed and not report.passed
    assert (
        report.inputs[1].diagnosis == "the gradient is identically zero: backward not implemented?"
    )


# --------------------------------------------------------------------------- image layers

from npgrad.checking.layer_classes import image_kinds  # noqa: E402
from npgrad.errors import LayerCheckError  # noqa: E402
from tests.fixtures.layers import wrong_conv_layers as cw  # noqa: E402


@pytest.mark.parametrize(
    "cls, diagnosis",
    [
        (cw.FlippedKernelConv2d, "against npgrad: forward differs: kernel flipped: forward computes a true convolution"),
        (cw.FlippedBackwardConv2d, "input 0: kernel flipped: this is the gradient of a true convolution"),
        (cw.PaddingKeptConv2d, "input 0: padding not removed: dx has the padded shape (2, 3, 9, 11) (inside, its values are right)"),
        (cw.StrideIgnoredConv2d, "input 0: stride ignored in backward"),
        (cw.SpreadMaxPool2d, "input 0: pooling gradient spread over the whole window (as average pooling would)"),
        (cw.OverlapAssignedMaxPool2d, "input 0: wrong only where windows overlap (stride smaller than the window)"),
        (cw.PaddingKeptAvgPool2d, "input 0: padding not removed: dx has the padded shape (2, 3, 10, 11)"),
        (cw.StrideIgnoredAvgPool2d, "input 0: stride ignored in backward"),
        (cw.ConstantStatsBatchNorm, "input 0: treats the mean and variance as constants"),
    ],
)  # fmt: skip
def test_each_image_layer_mistake_is_caught_and_named(cls, diagnosis):
    report = check_layer(cls, use_torch=False)
    assert not report.passed and report.error is None
    assert report.diagnoses[0].startswith(diagnosis), report
    assert diagnosis.split(": ", 1)[1] in str(report) and "nan" not in str(report)


@pytest.mark.parametrize("cls", [cw.Conv2d, cw.MaxPool2d, cw.AvgPool2d, cw.BatchNorm])
def test_correct_image_layers_pass_against_npgrad_and_pytorch(cls, torch):
    report = check_layer(cls, use_torch=True)
    assert report.passed, report
    assert report.reference == {
        "npgrad": "ok (forward and backward agree to 1e-07)",
        "pytorch": "ok (forward and backward agree to 1e-07)",
    }


@pytest.mark.parametrize(
    "cls, shapes, setup",
    [
        (cw.Conv2d, [(2, 3, 7, 9), (4, 3, 3, 5), (4,)], "built as Conv2d(stride=2, padding=1); compared with conv2d(stride=2, padding=1, dilation=1)"),
        (cw.MaxPool2d, [(2, 3, 8, 9)], "built as MaxPool2d(kernel_size=(2, 3), stride=2); compared with max_pool2d(kernel=(2, 3), stride=2, padding=0, dilation=1)"),
        (cw.AvgPool2d, [(2, 3, 8, 9)], "built as AvgPool2d(kernel_size=3, stride=2, padding=1); compared with avg_pool2d(kernel=3, stride=2, padding=1)"),
        (cw.BatchNorm, [(2, 3, 4, 5), (3,), (3,)], "built as BatchNorm(); compared with batch_norm(eps=1e-05)"),
        (npgrad.layers.MaxPool2d, [(2, 3, 8, 9)], "built as MaxPool2d(kernel=(2, 3), stride=2, padding=1); compared with max_pool2d(kernel=(2, 3), stride=2, padding=1, dilation=1)"),
    ],
)  # fmt: skip
def test_image_layers_get_4d_inputs_and_a_stride_and_padding_that_matter(cls, shapes, setup):
    """Stride 2 and padding 1 where the constructor takes them; a 2x3 window for pooling (a
    square 3x3 one where it takes one size only: AvgPool2d's kernel_size is an int)."""
    report = check_layer(cls, use_torch=False)
    assert report.passed, report
    assert report.shapes == shapes and report.setup == setup


class HiddenSettingsConv(cw.Conv2d):
    """Built without arguments, its stride and padding where npgrad cannot read them."""

    def __init__(self):
        self.mem, self.hidden = {}, (2, 1)

    stride = property(lambda self: self.hidden[0])
    padding = property(lambda self: self.hidden[1])


class Pool(cw.AvgPool2d):
    """A name that says pooling but not which: the output says average, window 3, stride 2."""

    def __init__(self):
        self.mem = {}

    k, stride, padding = 3, 2, 0  # the class's, not the instance's


def test_settings_nothing_tells_are_read_from_the_output():
    report = check_layer(HiddenSettingsConv, use_torch=False)
    assert report.passed, report
    assert report.setup.endswith(
        "compared with conv2d(stride=2, padding=1, dilation=1) (stride, padding read from its output)"
    )
    report = check_layer(Pool, use_torch=False)
    assert report.passed, report
    assert "compared with avg_pool2d(kernel=3, stride=2, padding=0)" in report.setup


def test_a_flipped_kernel_is_named_even_when_stride_and_padding_are_read_from_the_output():
    class HiddenFlippedConv(HiddenSettingsConv, cw.FlippedKernelConv2d):
        pass

    report = check_layer(HiddenFlippedConv, use_torch=False, name="Conv")
    assert not report.passed
    assert "forward differs: kernel flipped" in report.reference["npgrad"]


class StridedConv(cw.Conv2d):
    """Its own names for stride and padding."""

    def __init__(self, s, pad=0):
        super().__init__(s, pad)


def test_constructor_arguments_by_their_names_or_their_meaning():
    report = check_layer(cw.Conv2d, params={"padding": 0}, use_torch=False)
    assert report.passed and report.setup.startswith("built as Conv2d(stride=2, padding=0);")
    report = check_layer(StridedConv, params={"stride": 1}, use_torch=False)
    assert report.passed and report.setup.startswith("built as StridedConv(s=1, pad=1);")
    with pytest.raises(LayerCheckError, match=r"takes no parameter 'strid' \(it takes s, pad\)"):
        check_layer(StridedConv, params={"strid": 1})


class NeedsAlpha(cw.Conv2d):
    def __init__(self, alpha, stride=1):
        super().__init__(stride)


def test_a_constructor_argument_of_unknown_meaning_must_be_given():
    report = check_layer(NeedsAlpha, use_torch=False)
    assert report.error == (
        "the constructor needs alpha, whose meaning npgrad cannot tell: "
        "give it with --param NeedsAlpha=alpha:VALUE"
    )
    assert check_layer(NeedsAlpha, params={"alpha": 0.5}, use_torch=False).passed


class BatchNorm1d(cw.ConstantStatsBatchNorm):
    pass


def test_batch_norm_on_2d_input_by_name_or_by_shape():
    report = check_layer(BatchNorm1d, use_torch=False)
    assert report.shapes == [(6, 5), (5,), (5,)]
    assert "treats the mean and variance as constants" in report.diagnoses[0]
    report = check_layer(cw.BatchNorm, shapes=[(6, 5), (5,), (5,)], use_torch=False)
    assert report.passed, report


@pytest.mark.parametrize(
    "name, kinds",
    [
        ("Conv2d", ["conv2d"]),
        ("conv_layer", ["conv2d"]),
        ("MyConvolution", ["conv2d"]),
        ("MaxPool2D", ["max_pool2d"]),
        ("maxpool", ["max_pool2d"]),
        ("AvgPooling", ["avg_pool2d"]),
        ("MeanPool", ["avg_pool2d"]),
        ("Pool", ["max_pool2d", "avg_pool2d"]),
        ("BatchNorm1d", ["batch_norm"]),
        ("SpatialBN", ["batch_norm"]),
        ("Norm", ["batch_norm"]),
        ("LayerNorm", []),
        ("ConvBnRelu", []),  # two kinds: the ordinary check
        ("Relu", []),
        ("LogSoftmax", []),
    ],
)
def test_image_kinds_from_the_class_name(name, kinds):
    assert image_kinds(name) == kinds


class Whitening:
    def forward(self, x, gamma, beta): ...


class Window:
    def __init__(self, pool_height=2, pool_width=2, stride=2): ...

    def forward(self, x): ...


class Filter:
    def __init__(self, stride=1, pad=0): ...

    def forward(self, x, w, b): ...


@pytest.mark.parametrize(
    "cls, kinds",
    [(Whitening, ["batch_norm"]), (Window, ["max_pool2d", "avg_pool2d"]), (Filter, ["conv2d"])],
)
def test_image_kinds_from_the_signatures_when_the_name_says_nothing(cls, kinds):
    assert image_kinds(cls.__name__, cls) == kinds


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_image_verdicts_do_not_depend_on_the_drawn_inputs(seed):
    """No pooling window holds a tie: correct never fails, wrong never passes."""
    assert check_layer(cw.MaxPool2d, seed=seed, use_torch=False).passed
    assert check_layer(cw.BatchNorm, seed=seed, use_torch=False).passed
    for cls in (cw.SpreadMaxPool2d, cw.ConstantStatsBatchNorm):
        report = check_layer(cls, seed=seed, use_torch=False)
        assert not report.passed and report.inputs[0].diagnosis


def test_image_layer_reports_survive_a_round_trip_through_plain_data():
    import json

    report = check_layer(cw.PaddingKeptAvgPool2d, use_torch=False)
    again = LayerReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert str(again) == str(report) and again.setup == report.setup


class InternalConv(cw.Conv2d):
    """Its weights inside: forward(x)."""

    def forward(self, x):
        return super().forward(x, np.ones((2, 3, 3, 3)), np.zeros(2))

    def backward(self, grad_y):
        return super().backward(grad_y)[0]


def test_a_convolution_with_its_weights_inside_is_told_how_to_check_dx():
    report = check_layer(InternalConv, use_torch=False)
    assert report.error.startswith("forward takes the input only: a convolution class is checked")
    assert report.error.endswith("give --shape InternalConv=2x3x7x9")
    report = check_layer(InternalConv, shapes=[(2, 3, 7, 9)], use_torch=False)
    assert report.passed and report.inputs[0].shape == (2, 3, 7, 9), report
    assert report.reference == {"npgrad": "not compared: its parameters are not among its inputs"}


def test_a_gigantic_returned_gradient_is_named_not_converted():
    class Relu:
        def forward(self, x):
            return np.maximum(x, 0)

        def backward(self, g):
            return np.broadcast_to(np.uint8(0), (10**5, 10**5))  # 10 GB as float64

    report = check_layer(Relu, use_torch=False)
    assert not report.passed and "far larger than anything checked here" in str(report)
