"""npgrad.export: ONNX graphs and safetensors files that other runtimes read as npgrad computes.

The oracles are other people's code: onnxruntime runs the ONNX graphs, PyTorch
loads the safetensors files into ``torch.nn.Sequential`` built from their
metadata (with the README's lines), and the exercise's logits are computed
here from W1 and W2 as the exercise does.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from npgrad import data, nn
from npgrad import safetensors as st
from npgrad.autodiff import Tensor, no_grad
from npgrad.cli import main
from npgrad.errors import ExportError, SafetensorsError
from npgrad.export import (
    LAYERS,
    as_sequential,
    export_run,
    format_for,
    load_safetensors,
    load_safetensors_into,
    onnx_model,
    safetensors_bytes,
    torch_state,
)
from npgrad.models import load_for_inference

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
    assert "input (N, 1, 28, 28)" in export_run(run, path)
    x, labels = test_set
    model, _ = load_for_inference(run)
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
