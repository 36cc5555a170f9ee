"""Checking a file in a child process with a time limit: its layer classes and function pairs.

Code that hangs, exits or crashes the interpreter fails its class or pair and
nothing else; the results equal those of the same checks in this process.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import npgrad
from npgrad.errors import LayerCheckError
from npgrad.filecheck import check_file, check_functions
from npgrad.layercheck import LayerReport, check_layer
from npgrad.pairs import PairReport, PairReports

HERE = Path(__file__).parent / "layers"
PAIRS = Path(__file__).parent / "pairs"
sys.path.insert(0, str(HERE))  # wrong_layers imports its sibling helper, as a student's would
sys.path.insert(0, str(PAIRS))
from tests.layers import wrong_layers as w  # noqa: E402
from tests.pairs import correct_layers  # noqa: E402


def test_file_that_raises_at_import_is_reported_not_crashed():
    reports, error = check_file(HERE / "raises_at_import.py", use_torch=False)
    assert reports == [] and "raises_at_import.py:3" in error and "oops at import" in error


@pytest.mark.parametrize(
    "file, error",
    [
        ("exits_at_import.py", "ended the process (exit status 0: os._exit?) while importing"),
        ("sys_exit_at_import.py", "the file called sys.exit(3) while importing"),
    ],
)
def test_file_that_exits_at_import_is_not_a_pass(file, error):
    reports, message = check_file(HERE / file, use_torch=False)
    assert reports == [] and message.startswith(error)


def test_each_misbehaving_class_fails_alone_and_the_rest_are_checked():
    reports, error = check_file(HERE / "misbehaving_layers.py", use_torch=False)
    assert error is None
    verdicts = {rep.name: (rep.passed, rep.error) for rep in reports}
    assert verdicts == {
        "Relu": (True, None),
        "ExitsInBackward": (False, "the code called sys.exit(3) during backward"),
        "ExitsInForward": (False, "the code called sys.exit('done') during forward"),
        "ExitsInConstructor": (False, "the code called sys.exit(1) during the constructor"),
        "OsExitInBackward": (False, "ended the process (exit status 0: os._exit?) during backward"),
        "SegfaultInBackward": (False, "crashed the Python interpreter (SIGSEGV) during backward"),
        "OutOfMemoryInForward": (False, verdicts["OutOfMemoryInForward"][1]),
        "Tanh": (True, None),
    }
    assert "MemoryError" in verdicts["OutOfMemoryInForward"][1]


def test_file_results_equal_the_in_process_ones():
    reports, _ = check_file(HERE / "wrong_layers.py", only=["MasklessRelu"], use_torch=False)
    assert [str(rep) for rep in reports] == [str(check_layer(w.MasklessRelu, use_torch=False))]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"path": HERE / "nope.py"}, "no such file"),
        ({"path": HERE}, "is a folder"),
        ({"only": ["Nope"]}, "no layer class or function pair named Nope"),
        ({"shapes": {"Rleu": [(5, 6)]}}, "no layer class or function pair named Rleu"),
        ({"timeout": 0}, "time limit must be a positive number"),
        ({"timeout": math.nan}, "time limit must be a positive number"),
    ],
)
def test_check_file_refuses_what_it_cannot_check(kwargs, match):
    kwargs = {"path": HERE / "wrong_layers.py", **kwargs}
    with pytest.raises(LayerCheckError, match=match):
        check_file(use_torch=False, **kwargs)


def test_a_file_without_layer_classes_is_refused(tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(LayerCheckError, match="no class with forward and backward methods, and no"):
        check_file(empty, use_torch=False)


def test_a_file_mixing_classes_and_pairs_is_checked_completely():
    reports, error = check_file(PAIRS / "mixed.py", use_torch=False)
    assert error is None
    verdicts = {r.name: (type(r), r.passed) for r in reports}
    assert verdicts == {
        "Relu": (LayerReport, True),
        "Tanh": (LayerReport, False),
        "affine_forward/affine_backward": (PairReport, True),
        "relu_forward/relu_backward": (PairReport, False),
    }
    assert "sign error" in reports[1].diagnoses[0]
    assert "ignores the mask" in reports[3].diagnoses[0]


def test_each_misbehaving_pair_fails_alone_and_the_rest_are_checked():
    reports, error = check_file(PAIRS / "misbehaving_pairs.py", only=None, timeout=3)
    assert error is None
    verdicts = {r.name: (r.passed, r.error) for r in reports}
    assert verdicts == {
        "relu_forward/relu_backward": (True, None),
        "affine_forward/affine_backward": (
            False,
            "ended the process (exit status 0: os._exit?) during backward",
        ),
        "sigmoid_forward/sigmoid_backward": (
            False,
            "the code called sys.exit('stop') during forward",
        ),
        "tanh_forward/tanh_backward": (
            False,
            "timed out after 3 s during backward (an endless loop? --timeout SECONDS allows more)",
        ),
        "softmax_loss": (False, "not checked: no time left after tanh_forward/tanh_backward"),
    }


def test_pair_results_in_a_child_equal_those_in_this_process():
    reports, _ = check_file(PAIRS / "correct_layers.py", only=["conv_forward_naive"])
    here = check_functions(correct_layers, only=["conv_forward_naive"])
    assert [str(r) for r in reports] == [str(r) for r in here]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"params": {"conv_forward_naive": {"strid": 1}}}, "no single argument or parameter named 'strid'"),
        ({"params": {"conv_forward": {"stride": 1}}}, "no layer class or function pair named conv_forward"),
        ({"shapes": {"relu_fwd": [(5, 6)]}}, "no layer class or function pair named relu_fwd"),
    ],
)  # fmt: skip
def test_parameters_and_shapes_for_nothing_are_refused(kwargs, match):
    with pytest.raises(LayerCheckError, match=match):
        check_file(PAIRS / "correct_layers.py", **kwargs)


def test_check_functions_takes_a_path_a_module_or_a_namespace():
    from_path = check_functions(PAIRS / "mixed.py")  # classes are not its business
    assert isinstance(from_path, PairReports)
    assert [r.name for r in from_path] == [
        "affine_forward/affine_backward",
        "relu_forward/relu_backward",
    ]

    def relu_forward(x):
        return np.maximum(x, 0), x

    def relu_backward(dout, cache):
        return dout * (cache > 0)

    from_namespace = npgrad.check_functions(
        {"relu_forward": relu_forward, "relu_backward": relu_backward}
    )
    assert from_namespace.passed and str(from_namespace).startswith(
        "relu_forward/relu_backward: PASS"
    )
    html = from_namespace._repr_html_()
    assert "<table>" in html and "relu_forward/relu_backward" in html and "PASS" in html


@pytest.mark.parametrize(
    "source, match",
    [
        (HERE / "wrong_layers.py", "no function pairs"),
        (HERE / "raises_at_import.py", "error while importing"),
        ({"f": len}, "no function pairs"),
        (3, "takes a path, a module or a dict of functions, not int"),
    ],
)
def test_check_functions_refuses_what_holds_no_pairs(source, match):
    with pytest.raises(LayerCheckError, match=match):
        check_functions(source)


def test_image_layer_classes_in_a_child_equal_those_in_this_process():
    from tests.layers import wrong_conv_layers as cw

    names = ["Conv2d", "PaddingKeptConv2d", "SpreadMaxPool2d", "ConstantStatsBatchNorm"]
    reports, error = check_file(HERE / "wrong_conv_layers.py", only=names, use_torch=False)
    assert error is None and [r.passed for r in reports] == [True, False, False, False]
    here = [check_layer(getattr(cw, n), use_torch=False, source=cw.__file__) for n in names]
    assert [str(r) for r in reports] == [str(r) for r in here]


def test_constructor_arguments_reach_the_class_in_the_child():
    reports, _ = check_file(
        HERE / "wrong_conv_layers.py",
        only=["Conv2d", "MaxPool2d"],
        use_torch=False,
        params={"Conv2d": {"padding": 0}, "MaxPool2d": {"kernel_size": (3, 2)}},
    )
    assert [r.passed for r in reports] == [True, True]
    assert reports[0].setup.startswith("built as Conv2d(stride=2, padding=0);")
    assert reports[1].setup.startswith("built as MaxPool2d(kernel_size=(3, 2), stride=2);")


def test_constructor_arguments_a_class_does_not_take_are_refused():
    with pytest.raises(
        LayerCheckError, match=r"Conv2d: the constructor takes no parameter 'strid'"
    ):
        check_file(HERE / "wrong_conv_layers.py", params={"Conv2d": {"strid": 1}})
