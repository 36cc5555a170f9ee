"""Checking a student's own layers: each mistake caught with the right diagnosis.

In the same process, as in a notebook; files (in a child process) are
``tests/test_filecheck.py``'s.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

import npgrad
from npgrad.layercheck import LayerReport, check_layer, domains_for
from npgrad.opspecs import KINK, NONZERO, POSITIVE, REAL, WIDE

HERE = Path(__file__).parent / "layers"
sys.path.insert(0, str(HERE))  # wrong_layers imports its sibling helper, as a student's would
from tests.layers import misbehaving_layers as bad  # noqa: E402
from tests.layers import wrong_layers as w  # noqa: E402
from tests.layers import wrong_returns as r  # noqa: E402


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
