"""Checking a student's own layers: each mistake caught with the right diagnosis."""

import sys
from pathlib import Path

import pytest

import npgrad
from npgrad.cli import main
from npgrad.layercheck import check_file, check_layer

sys.path.insert(0, str(Path(__file__).parent / "layers"))  # wrong_layers imports its sibling helper
from tests.layers import wrong_layers as w  # noqa: E402

HERE = Path(__file__).parent / "layers"


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
    assert report.reference["npgrad"].startswith("ok") and report.reference["pytorch"].startswith(
        "ok"
    )


def test_npgrad_own_layers_pass():
    for cls in (npgrad.layers.Matmul, npgrad.layers.Relu, npgrad.layers.Softmax, npgrad.layers.Log):
        assert check_layer(cls, use_torch=False).passed


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


def test_file_that_raises_at_import_is_reported_not_crashed(capsys):
    reports, error = check_file(HERE / "raises_at_import.py")
    assert reports == [] and "raises_at_import.py:3" in error and "oops at import" in error
    assert main(["check", str(HERE / "raises_at_import.py")]) == 1
    assert "oops at import" in capsys.readouterr().err


def test_cli_check_exit_codes(capsys):
    file = str(HERE / "wrong_layers.py")
    assert main(["check", file, "--class", "Relu", "--class", "Matmul", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "Relu: PASS" in out and "2 of 2 layer classes passed" in out
    assert main(["check", file, "--class", "MasklessRelu"]) == 1
    assert "ignores the mask" in capsys.readouterr().out
    assert (
        main(["check", file, "--shape", "Matmul=3x2,2x7", "--class", "Matmul", "--no-torch"]) == 0
    )
    assert "inputs 3x2, 2x7" in capsys.readouterr().out


def test_cli_check_user_errors(capsys):
    assert main(["check", "no_such_file.py"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["check", str(HERE / "wrong_layers.py"), "--class", "Nope"]) == 2
    assert "no layer class named Nope" in capsys.readouterr().err
    assert main(["check", str(HERE / "wrong_layers.py"), "--shape", "Matmul=axb"]) == 2
    assert "bad --shape" in capsys.readouterr().err


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
