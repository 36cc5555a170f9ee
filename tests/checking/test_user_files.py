"""Checking a file in a child process with a time limit: its layer classes and function pairs.

Code that hangs, exits or crashes the interpreter fails its class or pair and
nothing else; the results equal those of the same checks in this process.
"""

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import npgrad
from npgrad.checking.function_pairs import PairReport, PairReports
from npgrad.checking.layer_classes import LayerReport, check_layer
from npgrad.checking.user_files import check_file, check_functions
from npgrad.errors import LayerCheckError

HERE = Path(__file__).parents[1] / "fixtures" / "layers"
PAIRS = Path(__file__).parents[1] / "fixtures" / "pairs"
sys.path.insert(0, str(HERE))  # wrong_layers imports its sibling helper, as a student's would
sys.path.insert(0, str(PAIRS))
from tests.fixtures.layers import wrong_layers as w  # noqa: E402
from tests.fixtures.pairs import correct_layers  # noqa: E402


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
    from tests.fixtures.layers import wrong_conv_layers as cw

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


# --------------------------------------------------------------------------- hostile files


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


RELU_PAIR = """
def relu_forward(x):
    return np.maximum(x, 0), x

def relu_backward(dout, cache):
    return dout * (cache > 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreapers are Linux's")
def test_a_file_that_daemonises_leaves_no_process_behind(tmp_path):
    pidfile = tmp_path / "daemon.pid"
    file = tmp_path / "daemon.py"
    file.write_text(
        f"""import os, time
import numpy as np
if os.fork() == 0:  # fork, leave the session, fork again: a daemon
    os.setsid()
    if os.fork() == 0:
        with open({str(pidfile)!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
        time.sleep(60)
    os._exit(0)
while not os.path.exists({str(pidfile)!r}):
    time.sleep(0.005)
"""
        + RELU_PAIR
    )
    reports, error = check_file(file)
    assert error is None and [r.passed for r in reports] == [True]
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid), f"process {pid}, started by the file, outlived the check"


ZERO_BACKWARDS = """
def relu_forward(x):
    return np.maximum(x, 0), x

def relu_backward(dout, cache):
    return np.zeros_like(dout)

def conv_forward_naive(x, w, b, conv_param):
    return correct.conv_forward_naive(x, w, b, conv_param)

def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    return np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)

class Relu:
    def forward(self, x):
        return np.maximum(x, 0)

    def backward(self, g):
        return np.zeros_like(g)

class Square:
    def forward(self, x):
        return x * x

    def backward(self, g):
        return np.zeros_like(g)
"""
# Each patches npgrad (or NumPy) in the child, where the file runs, to forge a PASS.
FORGERIES = {
    "the comparisons and tolerances": """
import npgrad.checking.gradcheck, npgrad.checking.layer_classes, npgrad.checking.mistake_models, npgrad.checking.function_pairs
for m in (npgrad.checking.gradcheck, npgrad.checking.layer_classes, npgrad.checking.mistake_models, npgrad.checking.function_pairs):
    if hasattr(m, "mismatches"):
        m.mismatches = lambda got, want, atol, rtol: np.zeros(np.shape(got), bool)
    if hasattr(m, "agrees"):
        m.agrees = lambda *args, **kwargs: True
    for name in ("ATOL", "RTOL", "ALT_ATOL", "FORWARD_ATOL"):
        if hasattr(m, name):
            setattr(m, name, 1e300)
np.allclose = lambda *args, **kwargs: True
""",
    "the reports": """
import npgrad.checking.layer_classes, npgrad.checking.function_pairs
npgrad.checking.function_pairs.PairReport.summary = property(lambda self: self.name + ": PASS")
npgrad.checking.function_pairs.CaseResult.passed = property(lambda self: True)
npgrad.checking.layer_classes.LayerReport.to_dict = lambda self: dict(
    __import__("dataclasses").asdict(self), passed=True, inputs=[], error=None)
""",
    "the numerical gradient": """
import npgrad.checking.gradcheck, npgrad.checking.layer_classes, npgrad.checking.function_pairs
def _flat(f, x, g, eps=1e-6):
    return np.zeros(x.shape), np.zeros(x.shape)
npgrad.checking.gradcheck.perturbed_projections = npgrad.checking.layer_classes.perturbed_projections = _flat
npgrad.checking.function_pairs.perturbed_projections = _flat
npgrad.checking.gradcheck.numeric_vjp = lambda f, x, g, eps=1e-6: np.zeros(x.shape)
""",
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_file_patching_npgrad_in_its_process_cannot_forge_a_pass(tmp_path, forgery):
    file = tmp_path / "forger.py"
    file.write_text(
        "import numpy as np\nimport correct_layers as correct\n"
        + FORGERIES[forgery]
        + ZERO_BACKWARDS
    )
    (tmp_path / "correct_layers.py").write_text((PAIRS / "correct_layers.py").read_text())
    reports, error = check_file(file, use_torch=False)
    verdicts = {r.name: r.passed for r in reports}
    expected = ["Relu", "Square", "relu_forward/relu_backward"]
    expected += ["conv_forward_naive/conv_backward_naive"]
    if forgery == "the numerical gradient":
        # Taken from the child, the forward's values at the perturbed points can only be held
        # to a definition: a class named after none (Square) has nothing to be held to.
        del verdicts["Square"]
        expected.remove("Square")
    assert error is None and sorted(verdicts) == sorted(expected)
    assert not any(verdicts.values()), verdicts


def test_a_file_hiding_a_unit_from_the_check_fails_it(tmp_path):
    file = tmp_path / "hider.py"
    file.write_text(
        """import numpy as np
import npgrad.checking.user_files
_units = npgrad.checking.user_files._units
npgrad.checking.user_files._units = lambda module, job: [
    u for u in _units(module, job) if u["name"] != "relu_forward/relu_backward"]

def relu_forward(x):
    return np.maximum(x, 0), x

def relu_backward(dout, cache):
    return np.zeros_like(dout)

def tanh_forward(x):
    return np.tanh(x), np.tanh(x)

def tanh_backward(dout, cache):
    return dout * (1 - cache**2)
"""
    )
    reports, error = check_file(file)
    assert error is None
    assert [(r.name, r.passed) for r in reports] == [
        ("tanh_forward/tanh_backward", True),
        ("relu_forward/relu_backward", False),
    ]
    assert reports[1].error.startswith("not checked: the file defines it, but it was not found")


def test_a_replay_asked_what_the_child_did_not_record_fails_as_not_checked(tmp_path):
    file = tmp_path / "shuffles.py"
    file.write_text(
        """import numpy as np
import npgrad.checking.layer_classes
_answer = npgrad.checking.layer_classes._UserCode.answer
def answer(self, what, args, compute):  # asks one question twice: the replay asks it once
    if what == "backward":
        _answer(self, what, args, compute)
    return _answer(self, what, args, compute)
npgrad.checking.layer_classes._UserCode.answer = answer

class Tanh:
    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, g):
        return g * (1 - self.y**2)
"""
    )
    reports, error = check_file(file, use_torch=False)
    assert error is None and not reports[0].passed
    assert reports[0].error.startswith(
        "not checked: what the file's process reported does not follow npgrad's check"
    )


BASE_EXCEPTIONS = """import numpy as np

class Custom(BaseException):
    pass

class RaisesKeyboardInterrupt:
    def forward(self, x):
        raise KeyboardInterrupt

    def backward(self, g):
        return g

class RaisesGeneratorExit:
    def forward(self, x):
        return x

    def backward(self, g):
        raise GeneratorExit("closed")

class RaisesCustom:
    def forward(self, x):
        raise Custom("mine")

    def backward(self, g):
        return g

class ExitsInForward:
    def forward(self, x):
        raise SystemExit(5)

    def backward(self, g):
        return g

class Relu:
    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)

    def backward(self, g):
        return g * (self.x > 0)

def relu_forward(x):
    raise KeyboardInterrupt("stop")

def relu_backward(dout, cache):
    return dout
"""


def test_base_exceptions_of_the_code_fail_their_unit_in_one_line(tmp_path, capfd):
    file = tmp_path / "base.py"
    file.write_text(BASE_EXCEPTIONS)
    reports, error = check_file(file, use_torch=False)
    assert error is None
    assert {r.name: r.error for r in reports} == {
        "RaisesKeyboardInterrupt": f"forward failed: {file}:8: KeyboardInterrupt",
        "RaisesGeneratorExit": f"backward failed: {file}:18: GeneratorExit: closed",
        "RaisesCustom": f"forward failed: {file}:22: Custom: mine",
        "ExitsInForward": "the code called sys.exit(5) during forward",
        "Relu": None,
        "relu_forward/relu_backward": f"forward failed: {file}:43: KeyboardInterrupt: stop",
    }
    assert "Traceback" not in "".join(capfd.readouterr())


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "GeneratorExit", "Custom('x')"])
def test_a_base_exception_at_import_is_an_import_error(tmp_path, raised):
    file = tmp_path / "raises.py"
    file.write_text(f"class Custom(BaseException):\n    pass\n\nraise {raised}\n")
    reports, error = check_file(file)
    name = raised.partition("(")[0]
    assert reports == [] and error.startswith(f"error while importing: {file}:4: {name}")


def test_a_syntax_error_is_named_with_its_line_even_in_a_helper(tmp_path):
    file = tmp_path / "broken.py"
    file.write_text('import numpy as np\npattern = "\\d+"\ndef relu_forward(x)\n    return x\n')
    assert check_file(file) == ([], f"error while importing: {file}:3: SyntaxError: expected ':'")
    (tmp_path / "helper.py").write_text("def f(:\n    pass\n")
    file.write_text("import helper\n" + RELU_PAIR)
    reports, error = check_file(file)
    assert (
        error == f"error while importing: {tmp_path / 'helper.py'}:1: SyntaxError: invalid syntax"
    )


@pytest.mark.parametrize(
    "param, match",
    [
        ({"svm_loss": {"y": 3}}, "svm_loss: y is the labels, drawn by npgrad, not a parameter"),
        ({"affine_forward": {"x": 1}}, "affine_forward: x is an input array, drawn by npgrad"),
        ({"softmax_loss_vectorized": {"X": 1}}, "softmax_loss_vectorized: X is an input array"),
        ({"conv_forward_naive": {"conv_param": 3}}, "conv_param is a dict of parameters, not 3"),
        ({"conv_forward_naive": {"stride": "a"}}, r"conv_param.stride must be a whole number >= 1 or a pair of them, not 'a'"),
        ({"conv_forward_naive": {"conv_param": {"pad": -1}}}, "conv_param.pad must be a whole number >= 0"),
        ({"batchnorm_forward": {"mode": 3}}, "bn_param.mode must be 'train' or 'test', not 3"),
        ({"batchnorm_forward": {"bn_param.moment": 0.9}}, r"bn_param has no key 'moment' \(it takes mode, eps, momentum\)"),
        ({"batchnorm_forward": {"eps": "small"}}, "bn_param.eps must be a number, not 'small'"),
        ({"spatial_groupnorm_forward": {"G": 2.5}}, "G must be a whole number >= 1, not 2.5"),
        ({"dropout_forward": {"p": 2}}, r"dropout_param.p must be a probability in \(0, 1\], not 2"),
        ({"softmax_loss_vectorized": {"reg": None}}, "reg must be a number, not None"),
        ({"conv_forward_naive": {"pad": 1000000}}, "conv_param.pad 1000000 is larger than the input's 7x9: at most 9"),
        ({"max_pool_forward_naive": {"pool_height": 99}}, "pool_param.pool_height 99 is larger than the input's height 8"),
    ],
)  # fmt: skip
def test_parameters_that_cannot_apply_are_refused_before_the_file_runs(tmp_path, param, match):
    file = tmp_path / "layers.py"
    ran = tmp_path / "ran"
    file.write_text(
        f"open({str(ran)!r}, 'w').close()\n" + (PAIRS / "correct_layers.py").read_text()
    )
    with pytest.raises(LayerCheckError, match=match):
        check_file(file, params=param)
    assert not ran.exists()


def test_records_a_file_forges_into_the_event_stream_are_not_verdicts(tmp_path):
    file = tmp_path / "writes_events.py"
    name = "relu_forward/relu_backward"
    forged = [
        {"event": "units", "units": [{"type": "pair", "name": name, "forward": "relu_forward",
                                      "backward": "relu_backward", "base": "relu"}]},
        {"event": "report", "type": "pair", "report": PairReport(
            "relu_forward", "relu_backward", True).to_dict()},
        {"event": "checked", "unit": name},
        {"event": "done"},
    ]  # fmt: skip
    file.write_text(
        f"""import json, os, sys
import numpy as np
with open(sys.argv[3], "a") as events:  # where the child writes what it found
    for record in {forged!r}:
        events.write(json.dumps(record) + "\\n")

def relu_forward(x):
    return np.maximum(x, 0), x

def relu_backward(dout, cache):
    os._exit(0)  # before the child could say anything else
"""
    )
    reports, error = check_file(file)
    assert error is None and [(r.name, r.passed) for r in reports] == [(name, False)]


def test_constructor_arguments_a_plain_class_cannot_take_are_refused_before_it_runs(tmp_path):
    file = tmp_path / "layers.py"
    ran = tmp_path / "ran"
    file.write_text(
        f"""open({str(ran)!r}, "w").close()

class Scale:
    def __init__(self, factor=2.0):
        self.factor = factor

    def forward(self, x):
        return self.factor * x

    def backward(self, g):
        return self.factor * g
"""
    )
    with pytest.raises(LayerCheckError, match="Scale: the constructor takes no parameter 'fact'"):
        check_file(file, params={"Scale": {"fact": 3}})
    assert not ran.exists()
    reports, _ = check_file(file, params={"Scale": {"factor": 3}}, use_torch=False)
    assert ran.exists() and reports[0].passed


def test_a_backward_whose_product_does_not_fit_is_told_the_usual_cause(tmp_path):
    file = tmp_path / "matmul.py"
    file.write_text(
        "class Matmul:\n"
        "    def forward(self, x, W):\n"
        "        self.x, self.W = x, W\n"
        "        return x @ W\n"
        "    def backward(self, grad):\n"
        "        return grad @ self.W, self.x.T @ grad\n"
    )
    reports, error = check_file(file, use_torch=False)
    assert error is None
    (report,) = reports
    assert report.error.startswith(f"backward failed: {file}:6: ValueError: matmul")
    assert report.error.endswith(
        "is one transposed, W where the gradient needs W.T, or x where it needs x.T?)"
    )
