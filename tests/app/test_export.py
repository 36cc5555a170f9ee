"""npgrad.app.export: ONNX graphs and safetensors files that other runtimes read as npgrad computes.

The oracles are other people's code: onnxruntime runs the ONNX graphs, PyTorch
loads the safetensors files into ``torch.nn.Sequential`` built from their
metadata (with the README's lines), and the exercise's logits are computed
here from W1 and W2 as the exercise does.
"""

import functools
import json
import os
import stat
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s

from npgrad import data, nn
from npgrad.app import safetensors as st
from npgrad.app.export import (
    LAYERS,
    REQUIRED,
    as_sequential,
    export_run,
    format_for,
    load_safetensors,
    load_safetensors_into,
    onnx_model,
    safetensors_bytes,
    torch_layers,
    torch_state,
)
from npgrad.app.models import load_for_inference
from npgrad.autodiff import Tensor, no_grad
from npgrad.cli import main
from npgrad.errors import ExportError, NotARegularFile, SafetensorsError

DIGITS = [str(i) for i in range(10)]
MNIST_META = {"image_shape": [28, 28], "classes": DIGITS, "pixel_max": 255.0}

_RUNS: dict[str, Path] = {}


def trained_run(tmp_path_factory, shared_data, preset: str = "default") -> Path:
    """A run trained for 2 epochs on mnist-10k (a few seconds), once per test session."""
    if preset not in _RUNS:
        out = tmp_path_factory.mktemp(f"run-{preset}")
        argv = ["train", "-d", str(shared_data / "mnist-10k"), "-e", "2", "-o", str(out), "-q"]
        if preset == "cnn":  # a small one: the test is about export, not accuracy
            argv += ["--channels", "8,16", "--hidden", "32"]
        assert main([*argv, "--preset", preset]) == 0
        _RUNS[preset] = out
    return _RUNS[preset]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, shared_data):
    return trained_run(tmp_path_factory, shared_data)


@pytest.fixture(scope="module")
def exercise_run(tmp_path_factory, shared_data):
    return trained_run(tmp_path_factory, shared_data, "exercise")


@pytest.fixture(scope="module")
def test_set(shared_data):
    ds = data.load_dataset(str(shared_data / "mnist-10k"))
    x = data.to_float(ds.test_images, ds.pixel_max, np.float64)
    return x.reshape(len(x), -1), ds.test_labels


def onnxruntime_session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def npgrad_logits(seq, x):
    seq.eval()
    with no_grad():
        return seq(Tensor(x)).data


def torch_network(path):
    """The README's lines that load an exported file into PyTorch."""
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        layers = json.loads(f.metadata()["npgrad.layers"])
    net = torch.nn.Sequential(*(getattr(torch.nn, l.pop("type"))(**l) for l in layers))
    net.load_state_dict(load_file(path))
    return net.eval()


def torch_logits(torch, path, x):
    net = torch_network(path)
    dtype = next(net.parameters()).dtype
    (file_dtype,) = {a.dtype for a in st.load(path)[0].values() if a.dtype.kind == "f"}
    net = net.to(getattr(torch, str(file_dtype)))  # the file's precision, not torch's default
    assert dtype in (torch.float32, torch.float64)
    with torch.no_grad():
        return net(torch.from_numpy(x.astype(file_dtype))).numpy()


# --------------------------------------------------------------------------- ONNX


def test_onnx_of_an_mlp_run_agrees_with_npgrad_on_the_whole_test_set(mlp_run, test_set, tmp_path):
    path = tmp_path / "mlp.onnx"
    line = export_run(mlp_run, path)
    assert line.startswith(f"wrote {path} (ONNX opset 17): MLP 784-256-10")
    x, labels = test_set
    model, _ = load_for_inference(mlp_run)
    logits, probs = onnxruntime_session(path).run(None, {"input": x.astype(np.float32)})
    ours = npgrad_logits(model.net, x.astype(np.float32))
    assert logits.dtype == np.float32 and logits.shape == (10000, 10)
    assert np.abs(logits - ours).max() < 1e-4
    np.testing.assert_array_equal(logits.argmax(1), model.log_probs(x).argmax(1))
    np.testing.assert_allclose(probs, np.exp(model.log_probs(x)), atol=1e-5)
    assert (logits.argmax(1) == labels).mean() > 0.9  # a trained network, not a constant one


def test_onnx_of_a_cnn_run_agrees_with_npgrad_on_the_whole_test_set(
    tmp_path_factory, shared_data, test_set, tmp_path
):
    run = trained_run(tmp_path_factory, shared_data, "cnn")
    path = tmp_path / "cnn.onnx"
    line = export_run(run, path)
    assert "input (N, 1, 28, 28)" in line
    x, labels = test_set
    model, _ = load_for_inference(run)
    # the size as train and serve state it: batch norm's statistics are not parameters
    size = model.net.size_text()
    assert f"({size})" in model.describe() and f", {size};" in line and "buffer values" in size
    x32 = x.astype(np.float32)
    logits, _ = onnxruntime_session(path).run(None, {"input": x32.reshape(-1, 1, 28, 28)})
    lp = model.log_probs(x32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    theirs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert np.abs(theirs - lp).max() < 1e-4
    np.testing.assert_array_equal(logits.argmax(1), lp.argmax(1))
    assert (logits.argmax(1) == labels).mean() > 0.9


def test_onnx_of_the_exercise_run_agrees_with_the_exercise_computation(
    exercise_run, test_set, tmp_path
):
    path = tmp_path / "exercise.onnx"
    export_run(exercise_run, path)
    x, _ = test_set
    model, _ = load_for_inference(exercise_run)
    W1, W2 = model.W1, model.W2
    assert W1.dtype == np.float64  # the exercise trains in float64; ONNX gets float32
    (logits, _) = onnxruntime_session(path).run(None, {"input": x.astype(np.float32)})
    # The exercise's own computation: the ones column, relu, no bias on the second layer.
    x1 = np.hstack([x, np.ones((len(x), 1))])
    ref32 = np.maximum(x1.astype(np.float32) @ W1.astype(np.float32), 0) @ W2.astype(np.float32)
    ref64 = np.maximum(x1 @ W1, 0) @ W2
    assert np.abs(ref64).max() > 50  # N(0, 1) weights: logits in the hundreds
    # 1e-4, relative where logits exceed 1: float32 itself resolves 3e-5 at 256..512.
    assert (np.abs(logits - ref32) <= 1e-4 * np.maximum(1.0, np.abs(ref32))).all()
    # Against float64: float32's rounding of logits this large, 1e-6 relative.
    assert np.abs(logits - ref64).max() < 1e-6 * np.abs(ref64).max()
    np.testing.assert_array_equal(logits.argmax(1), model.log_probs(x).argmax(1))


def test_onnx_model_declares_its_input_outputs_and_preprocessing(mlp_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "m.onnx"
    export_run(mlp_run, path)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    (inp,) = m.graph.input
    assert inp.name == "input"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 784]
    assert [o.name for o in m.graph.output] == ["logits", "probabilities"]
    assert not any(n.op_type == "Dropout" for n in m.graph.node)
    props = {p.key: p.value for p in m.metadata_props}
    spec = json.loads(props["npgrad.input"])
    assert spec["pixel_max"] == 255 and "pixel / 255" in spec["scale"]
    assert "centre of mass" in spec["preprocessing"]
    assert json.loads(props["npgrad.classes"]) == DIGITS
    assert "pixel / 255" in m.doc_string


def small_cnn(rng):
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2), rng=rng),
        nn.Tanh(),
        nn.AvgPool2d(2, stride=1, padding=1),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(6 * 7 * 7, 16, rng=rng),
        nn.Sigmoid(),
        nn.Linear(16, 10, rng=rng),
    )
    bn = net[1]
    bn.running_mean = rng.normal(size=4).astype(np.float32)
    bn.running_var = rng.uniform(0.5, 2, size=4).astype(np.float32)
    bn.weight.data[...] = rng.uniform(0.5, 2, size=4)
    bn.bias.data[...] = rng.normal(size=4)
    return net.eval()


def test_cnn_layers_export_to_onnx_and_pytorch(test_set, tmp_path, torch, rng):
    net = small_cnn(rng)
    x = test_set[0][:500].reshape(-1, 1, 28, 28).astype(np.float32)
    ours = npgrad_logits(net, x)
    path = tmp_path / "cnn.onnx"
    path.write_bytes(onnx_model(net, MNIST_META).SerializeToString())
    sess = onnxruntime_session(path)
    assert [d for d in sess.get_inputs()[0].shape] == ["N", 1, 28, 28]
    (logits, _) = sess.run(None, {"input": x})
    assert np.abs(logits - ours).max() < 1e-4
    path = tmp_path / "cnn.safetensors"
    path.write_bytes(safetensors_bytes(net, MNIST_META, "cnn"))
    assert np.abs(torch_logits(torch, path, x) - ours).max() < 1e-5
    back, meta = load_safetensors(path)
    assert meta["npgrad.input"]["shape"] == ["N", 1, 28, 28]
    for (k, a), (k2, b) in zip(back.state_dict().items(), net.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(npgrad_logits(back, x), ours)


def test_every_layer_type_of_npgrad_has_an_export_entry():
    layer_types = [getattr(nn, name) for name in nn.__all__ if isinstance(getattr(nn, name), type)]
    containers = (nn.Module, nn.Parameter, nn.Sequential, nn.MLP)
    for t in layer_types:
        if t not in containers:
            assert t in LAYERS, f"nn.{t.__name__} cannot be exported: add it to export.LAYERS"


def test_unsupported_layers_are_refused_with_their_name():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ExportError, match="cannot export a Custom layer"):
        torch_state(nn.Sequential(nn.Linear(2, 2, rng=0), Custom()))
    with pytest.raises(ExportError, match="Flatten"):
        onnx_model(nn.Sequential(nn.Flatten(2)), MNIST_META)


def test_onnx_without_the_onnx_package_says_how_to_install_it(mlp_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r"pip install 'npgrad\[export\]'"):
        export_run(mlp_run, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    export_run(mlp_run, tmp_path / "m.safetensors")  # needs nothing extra


# --------------------------------------------------------------------------- safetensors


@pytest.mark.parametrize("preset", ["default", "cnn", "exercise"])
def test_pytorch_loads_the_safetensors_file_and_gives_the_same_logits(
    preset, tmp_path_factory, shared_data, test_set, tmp_path, torch
):
    run = trained_run(tmp_path_factory, shared_data, preset)
    path = tmp_path / "m.safetensors"
    export_run(run, path)
    model, _ = load_for_inference(run)
    seq = as_sequential(model)
    dtype = seq[0].weight.dtype
    x = test_set[0].astype(dtype)
    if preset == "cnn":
        x = x.reshape(-1, 1, 28, 28)
    ours = npgrad_logits(seq, x)
    theirs = torch_logits(torch, path, x)
    scale = max(1.0, float(np.abs(ours).max()))
    assert np.abs(theirs - ours).max() < 1e-5 * scale
    np.testing.assert_array_equal(theirs.argmax(1), model.log_probs(test_set[0]).argmax(1))


@pytest.mark.parametrize("preset", ["default", "cnn", "exercise"])
def test_safetensors_round_trip_into_npgrad_is_exact(
    preset, tmp_path_factory, shared_data, tmp_path
):
    run = trained_run(tmp_path_factory, shared_data, preset)
    path = tmp_path / "m.safetensors"
    export_run(run, path)
    model, _ = load_for_inference(run)
    seq = as_sequential(model)
    back, meta = load_safetensors(path)
    assert not any(m.training for m in back.modules())  # ready to predict: dropout off
    assert meta["npgrad.model"] == {"default": "mlp"}.get(preset, preset)
    assert meta["npgrad.classes"] == DIGITS
    assert list(back.state_dict()) == list(seq.state_dict())
    for name, a in back.state_dict().items():
        b = seq.state_dict()[name]
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b)
    # into an existing network as well, e.g. a fresh one of the same shape
    fresh = load_safetensors(path)[0]
    for p in fresh.parameters():
        p.data[...] = 0
    load_safetensors_into(fresh, path)
    for a, b in zip(fresh.state_dict().values(), seq.state_dict().values()):
        np.testing.assert_array_equal(a, b)


def test_an_mlp_loads_a_file_written_by_pytorch(tmp_path, torch):
    from safetensors.torch import save_file

    tnet = torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(4, 3)
    ).float()
    save_file(tnet.state_dict(), str(tmp_path / "t.safetensors"))
    ours = nn.MLP([5, 4, 3], activation="tanh", dropout=0.1, rng=0)
    load_safetensors_into(ours, tmp_path / "t.safetensors")
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    with torch.no_grad():
        expected = tnet.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(npgrad_logits(ours, x), expected, atol=1e-6)


def test_loading_names_every_mismatch(tmp_path):
    net = nn.MLP([4, 3, 2], rng=0)
    good = torch_state(net)
    path = tmp_path / "f.safetensors"

    def refused(tensors, *patterns):
        st.save(path, tensors)
        before = [a.copy() for a in net.state_dict().values()]
        with pytest.raises(SafetensorsError) as info:
            load_safetensors_into(net, path)
        for pattern in patterns:
            assert pattern in str(info.value)
        for a, b in zip(before, net.state_dict().values()):  # nothing half-loaded
            np.testing.assert_array_equal(a, b)

    refused({k: v for k, v in good.items() if k != "2.bias"}, "missing 2.bias")
    refused({**good, "9.weight": np.zeros(2)}, "unexpected 9.weight")
    # npgrad's own (in, out) layout where PyTorch's (out, in) is expected
    refused({**good, "0.weight": good["0.weight"].T.copy()}, "0.weight has shape (4, 3)", "(3, 4)")
    st.save(path, {k: v for k, v in good.items() if k != "2.bias"})
    load_safetensors_into(net, path, strict=False)  # allowed when asked
    st.save(path, good)
    with pytest.raises(SafetensorsError, match="no npgrad.layers metadata"):
        load_safetensors(path)
    st.save(path, good, {"npgrad.layers": json.dumps([{"type": "Bogus"}])})
    with pytest.raises(SafetensorsError, match="layer 0 'Bogus' is not one npgrad has"):
        load_safetensors(path)
    st.save(path, good, {"npgrad.layers": json.dumps([{"type": "Linear", "in_features": 4}])})
    with pytest.raises(SafetensorsError, match=r"layer 0 \(Linear\) is described wrongly"):
        load_safetensors(path)


def test_the_layer_table_knows_each_layers_arguments_and_tensors(rng):
    # What load_safetensors checks a file against must be what the exporter writes.
    layers = [*small_cnn(rng).layers, nn.BatchNorm1d(5), nn.Linear(3, 2, bias=False, rng=rng)]
    assert {type(m) for m in layers} == set(LAYERS)
    for m in layers:
        lm = LAYERS[type(m)]
        spec = lm.torch(m)
        assert set(spec) - {"type"} == set(lm.args), spec
        checked = {name: check(spec[name]) for name, (check, _) in lm.args.items()}
        assert checked == {k: v for k, v in spec.items() if k != "type"}
        assert lm.shapes(checked) == {k: a.shape for k, a in lm.to_torch(m).items()}, spec
        for check, default in lm.args.values():  # PyTorch's defaults pass their own checks
            if default is not REQUIRED:
                check(default)


OWN = object()  # small_mlp_file's own npgrad.layers


@functools.cache
def small_mlp():
    return nn.Sequential(
        nn.Linear(4, 3, rng=0),
        nn.BatchNorm1d(3),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(3, 2, rng=0),
    )


def small_mlp_file(path, layers=OWN, **metadata):
    """An MLP with batch norm and dropout written as export_run writes it, ``layers`` replacing
    its npgrad.layers and ``metadata`` (JSON values) the rest."""
    net = small_mlp()
    meta = {
        "npgrad.layers": json.dumps(torch_layers(net) if layers is OWN else layers),
        "npgrad.classes": json.dumps(["a", "b"]),
        "npgrad.input": json.dumps({"shape": ["N", 4]}),
        **{k: json.dumps(v) for k, v in metadata.items()},
    }
    path.write_bytes(st.dumps(torch_state(net), meta))  # no fsync: fast enough to fuzz
    return net


LINEAR = {"type": "Linear", "in_features": 4, "out_features": 3, "bias": True}
WRONG_ARCHITECTURES = [
    (5, "metadata npgrad.layers is 5, not a non-empty list of layers"),
    (None, "metadata npgrad.layers is null, not a non-empty list of layers"),
    ([], "metadata npgrad.layers is [], not a non-empty list of layers"),
    ({"0": LINEAR}, 'npgrad.layers is {"0": {"type": "Linear", '),
    ("Linear", "metadata npgrad.layers is 'Linear', not a non-empty list"),
    ([7], 'layer 0 is 7, not an object with a "type"'),
    ([{"in_features": 4}], 'layer 0 has no "type" (one of AvgPool2d, '),
    ([{"type": ["Linear"]}], 'layer 0 ["Linear"] is not one npgrad has'),
    ([{"type": None}], "layer 0 null is not one npgrad has"),
    ([{"type": "Linear"}], "layer 0 (Linear) is described wrongly: missing in_features, out_f"),
    ([{**LINEAR, "in_features": "4"}], "in_features '4' is not an int >= 1"),
    ([{**LINEAR, "in_features": 4.0}], "in_features 4.0 is not an int >= 1"),
    ([{**LINEAR, "in_features": True}], "in_features true is not an int >= 1"),
    ([{**LINEAR, "bias": "yes"}], "bias 'yes' is not true or false"),
    ([{**LINEAR, "bias": 1}], "bias 1 is not true or false"),
    ([{**LINEAR, "device": "cuda"}], "npgrad's Linear takes in_features, out_features, bias, not 'device'"),
    ([{"type": "ReLU", "inplace": True}], "npgrad's ReLU takes no arguments, not 'inplace'"),
    ([LINEAR, {"type": "BatchNorm1d", "num_features": 3, "eps": float("nan")}], "eps NaN is not a positive number"),
    ([LINEAR, {"type": "BatchNorm1d", "num_features": 3, "eps": 0}], "eps 0 is not a positive number"),
    ([LINEAR, {"type": "BatchNorm1d", "num_features": 3, "momentum": None}], "momentum null is not a number in [0, 1]"),
    ([LINEAR, {"type": "Dropout", "p": 1}], "layer 1 (Dropout) is described wrongly: p 1 is not a number in [0, 1)"),
    ([{"type": "MaxPool2d", "kernel_size": [2, 2, 2]}], "kernel_size [2, 2, 2] is not an int or a pair of ints >= 1"),
    ([{"type": "MaxPool2d", "kernel_size": 2, "stride": 0}], "stride 0 is not an int or a pair of ints >= 1, or null"),
    ([{"type": "AvgPool2d", "kernel_size": [[2], 2]}], "kernel_size [[2], 2] is not an int or a pair"),
    ([{"type": "Flatten", "start_dim": "1"}], "start_dim '1' is not an int"),
]  # fmt: skip


@pytest.mark.parametrize("layers, message", WRONG_ARCHITECTURES)
def test_architecture_metadata_of_the_wrong_kind_is_named(tmp_path, layers, message):
    path = tmp_path / "m.safetensors"
    small_mlp_file(path, layers)
    with pytest.raises(SafetensorsError) as info:
        load_safetensors(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value) and "export" not in str(info.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("npgrad.classes", 5, "metadata npgrad.classes is 5, not a list of class names"),
        ("npgrad.classes", ["a", 1], 'npgrad.classes is ["a", 1], not a list of class names'),
        ("npgrad.input", [], "metadata npgrad.input is [], not an object"),
    ],
)
def test_the_other_metadata_of_the_wrong_kind_is_named(tmp_path, key, value, message):
    path = tmp_path / "m.safetensors"
    small_mlp_file(path, **{key: value})
    with pytest.raises(SafetensorsError, match=f"^{path}: ") as info:
        load_safetensors(path)
    assert message in str(info.value)


json_values = s.recursive(
    s.none()
    | s.booleans()
    | s.integers()
    | s.sampled_from([0, -1, 1, 2, 3, 4, 60000, 2**40, 2**70, 0.5, 1.0])
    | s.floats()
    | s.text(max_size=6)
    | s.sampled_from(sorted(t.__name__ for t in LAYERS)),
    lambda inner: (
        s.lists(inner, max_size=3) | s.dictionaries(s.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=s.data())
def test_random_architecture_metadata_raises_only_safetensors_errors(fuzz_dir, data):
    net = small_mlp()
    layers: object = torch_layers(net)
    extra = {}
    for _ in range(data.draw(s.integers(1, 3))):
        where = data.draw(s.sampled_from(["all", "layer", "key", "drop", "classes", "input"]))
        if where == "all":
            layers = data.draw(json_values)
        elif where in ("classes", "input"):
            extra[f"npgrad.{where}"] = data.draw(json_values)
        elif isinstance(layers, list) and layers:
            i = data.draw(s.integers(0, len(layers) - 1))
            if where == "layer" or not isinstance(layers[i], dict):
                layers[i] = data.draw(json_values)
            elif where == "key":
                key = data.draw(s.sampled_from([*layers[i], "type"]) | s.text(max_size=6))
                layers[i][key] = data.draw(json_values)
            elif layers[i]:
                del layers[i][data.draw(s.sampled_from(sorted(layers[i])))]
    path = fuzz_dir / "m.safetensors"
    small_mlp_file(path, layers, **extra)
    try:
        back, _ = load_safetensors(path)
    except SafetensorsError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        return
    assert sum(a.size for a in back.state_dict().values()) == net.num_parameters() + 6


def test_declared_sizes_are_checked_against_the_file_before_anything_is_allocated(
    tmp_path, monkeypatch
):
    # A 3 KB file describing Linear(60000, 60000): 26.8 GiB of float64 to initialise.
    def no_weights(*args, **kwargs):
        raise AssertionError("a layer was built before its size was checked against the file")

    huge = [
        ([{**LINEAR, "in_features": 60000, "out_features": 60000}], "0.weight is (60000, 60000) by the description, (3, 4) in the file"),
        ([{"type": "Conv2d", "in_channels": 10**6, "out_channels": 10**6, "kernel_size": 99}], "0.weight is (1000000, 1000000, 99, 99)"),
        ([LINEAR, {"type": "BatchNorm1d", "num_features": 10**12}], "1.weight is (1000000000000,) by the description, (3,) in the file"),
        ([LINEAR, {"type": "BatchNorm1d", "num_features": 3}, {"type": "ReLU"}, {"type": "Dropout"}, {"type": "Linear", "in_features": 3, "out_features": 2}, {"type": "Linear", "in_features": 2, "out_features": 2}], "layer 5 (Linear) does not fit the file's tensors: 5.weight (2, 2) is not in the file; 5.bias (2,) is not in the file"),
    ]  # fmt: skip
    paths = [tmp_path / f"huge{i}.safetensors" for i in range(len(huge))]
    for path, (layers, _) in zip(paths, huge):
        small_mlp_file(path, layers)
        assert path.stat().st_size < 3000
    monkeypatch.setattr(nn, "_init_weight", no_weights)
    tracemalloc.start()
    try:
        for path, (_, message) in zip(paths, huge):
            with pytest.raises(SafetensorsError) as info:
                load_safetensors(path)
            assert str(info.value).startswith(f"{path}: layer ") and message in str(info.value)
            assert "does not fit the file's tensors" in str(info.value)
        assert tracemalloc.get_traced_memory()[1] < 20 * 2**20
    finally:
        tracemalloc.stop()


def torch_bn_net(torch):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.BatchNorm2d(2, eps=1e-3, momentum=0.2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 4 * 4, 3),
    ).float()


def npgrad_bn_net():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, rng=0),
        nn.BatchNorm2d(2, eps=1e-3, momentum=0.2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3, rng=0),
    )


def test_pytorch_batch_norm_files_load_into_npgrad(tmp_path, torch):
    from safetensors.torch import save_file

    tnet = torch_bn_net(torch)
    x = np.random.default_rng(0).normal(size=(8, 1, 6, 6)).astype(np.float32)
    with torch.no_grad():
        tnet.train()(torch.from_numpy(x) * 3 + 1)  # running statistics away from 0 and 1
        expected = tnet.eval()(torch.from_numpy(x)).numpy()
    state = tnet.state_dict()
    assert state["1.num_batches_tracked"].shape == torch.Size([])  # PyTorch's 0-d int64
    save_file(state, str(tmp_path / "t.safetensors"))
    ours = npgrad_bn_net()
    load_safetensors_into(ours, tmp_path / "t.safetensors")
    np.testing.assert_allclose(npgrad_logits(ours, x), expected, atol=1e-5)


def test_npgrad_batch_norm_files_are_pytorchs_layout(tmp_path, torch):
    from safetensors.torch import load_file

    ours = npgrad_bn_net()
    ours[1].running_mean[...] = [0.5, -1]
    ours[1].running_var[...] = [2, 0.25]
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(ours, {**MNIST_META, "image_shape": [6, 6]}, "cnn"))
    tensors = load_file(str(path))
    assert tensors["1.num_batches_tracked"].shape == torch.Size([])
    assert tensors["1.num_batches_tracked"].dtype == torch.int64
    tnet = torch_bn_net(torch)
    tnet.load_state_dict(tensors, strict=True)
    x = np.random.default_rng(1).normal(size=(5, 1, 6, 6)).astype(np.float32)
    with torch.no_grad():
        expected = tnet.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(npgrad_logits(ours, x), expected, atol=1e-5)
    back, _ = load_safetensors(path)  # and back into npgrad, checked against its declared sizes
    np.testing.assert_array_equal(npgrad_logits(back, x), npgrad_logits(ours, x))


def test_files_from_npgrad_0_1_0_with_a_1_d_count_still_load(tmp_path):
    net = small_mlp_file(tmp_path / "new.safetensors")
    tensors, meta = st.load(tmp_path / "new.safetensors")
    assert tensors["1.num_batches_tracked"].shape == ()
    tensors["1.num_batches_tracked"] = np.zeros(1, np.int64)  # as npgrad 0.1.0 wrote it
    st.save(tmp_path / "old.safetensors", tensors, meta)
    back, _ = load_safetensors(tmp_path / "old.safetensors")
    load_safetensors_into(back, tmp_path / "old.safetensors")
    for a, b in zip(back.state_dict().values(), net.state_dict().values()):
        np.testing.assert_array_equal(a, b)


def test_export_run_refuses_what_is_not_a_regular_file(mlp_run, tmp_path):
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile, match="is a FIFO"):
        export_run(mlp_run, fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "out.onnx"
    link.symlink_to("/dev/null")
    with pytest.raises(NotARegularFile, match=r"is a symbolic link \(to /dev/null\)"):
        export_run(mlp_run, link)
    assert link.is_symlink()


# --------------------------------------------------------------------------- choosing the format


def test_format_comes_from_the_suffix_or_the_option(tmp_path, mlp_run):
    assert format_for("a/b.ONNX") == "onnx"
    assert format_for("m.safetensors") == "safetensors"
    assert format_for("m.bin", "safetensors") == "safetensors"
    with pytest.raises(ExportError, match="cannot tell the format"):
        format_for("m.bin")
    with pytest.raises(ExportError, match="unknown format 'pt'"):
        format_for("m.onnx", "pt")
    with pytest.raises(ExportError, match="is a directory"):
        export_run(mlp_run, tmp_path, "onnx")
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="cannot write"):
        export_run(mlp_run, tmp_path / "file" / "m.safetensors")
