"""Taking a trained network elsewhere: ONNX graphs, safetensors files, and safetensors back in.

Every kind of model is first seen as an :class:`npgrad.nn.Sequential`
(:func:`as_sequential`): an MLP run's network as it is; the exercise's W1 and
W2 as ``Linear(D, h)`` (W1's last row, which multiplies the ones column,
becomes the bias), ``ReLU``, ``Linear(h, c, bias=False)``. Each layer type then
has one entry in :data:`LAYERS` saying

* which PyTorch layer it is (``torch.nn`` class name and constructor arguments),
* its tensors under PyTorch's names and layouts, and back (npgrad's ``Linear``
  weight is (in, out), PyTorch's is (out, in)),
* its ONNX nodes (dropout none, batch norm in inference form),
* how to build it again in npgrad from the PyTorch description.

Supporting a new layer type is one more entry there. Dropout layers stay in
the PyTorch description (identity in eval mode), so PyTorch's parameter names
are npgrad's: ``"3.weight"`` is the same layer in both.

A ``.safetensors`` file holds the weights under PyTorch's names plus, in its
metadata, ``npgrad.layers`` (the architecture as a JSON list of
``{"type": ..., **arguments}``), ``npgrad.input`` (shape, scale, layout,
preprocessing) and ``npgrad.classes``; a few lines of PyTorch rebuild the
network from that (README). Writing and reading it needs NumPy only
(:mod:`npgrad.app.safetensors`). ONNX needs the ``onnx`` package (the ``export``
extra), imported only when an ONNX file is written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import nn
from ..errors import ExportError, SafetensorsError
from ..fileio import check_target, write_bytes
from ..ops.geometry import as_pair
from . import safetensors as st

__all__ = [
    "FORMATS",
    "OPSET",
    "LAYERS",
    "as_sequential",
    "torch_layers",
    "torch_state",
    "input_spec",
    "onnx_model",
    "safetensors_bytes",
    "export_run",
    "load_safetensors_into",
    "load_safetensors",
    "format_for",
]

FORMATS = ("onnx", "safetensors")
OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: runtimes that know opset 17 read it

Tensors = dict[str, np.ndarray]


# --------------------------------------------------------------------------- ONNX graph building


class OnnxGraph:
    """Nodes and initializers of one graph being built; names are unique by construction."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def constant(self, name: str, array: np.ndarray) -> str:
        a = np.ascontiguousarray(array, dtype=np.float32)
        self.initializers.append(self.onnx.numpy_helper.from_array(a, name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        self._count += 1
        output = output or f"{op.lower()}_{self._count}"
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], **attrs))
        return output


# --------------------------------------------------------------------------- the layer table


def _own(m: nn.Module) -> Tensors:
    return m.state_dict()


def _own_back(m: nn.Module, t: Tensors) -> Tensors:
    return dict(t)


def _no_tensors(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {}


# A file's architecture is JSON anyone could have written: each argument is checked by one of
# these (it returns the value, pairs as [h, w], or raises ValueError saying what it must be).
REQUIRED = object()  # the default of an argument PyTorch's constructor requires too
Check = Callable[[Any], Any]


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_from(low: int | None) -> Check:
    def check(v: Any) -> int:
        if _whole(v) and (low is None or v >= low):
            return v
        raise ValueError("an int" if low is None else f"an int >= {low}")

    return check


def _flag(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError("true or false")


def _pair(low: int, null: bool = False) -> Check:
    def check(v: Any) -> list[int] | None:
        if v is None and null:
            return None
        pair = v if isinstance(v, list) else [v, v]
        if len(pair) == 2 and all(_whole(i) and i >= low for i in pair):
            return list(pair)
        raise ValueError(f"an int or a pair of ints >= {low}" + (", or null" if null else ""))

    return check


def _number(
    low: float, high: float, low_open: bool = False, high_open: bool = False, what: str = ""
) -> Check:
    what = (
        what
        or f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    )

    def check(v: Any) -> float:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        finite = number and (_whole(v) or math.isfinite(v))  # a huge int is finite, not a float
        if (
            finite
            and (low < v if low_open else low <= v)
            and (v < high if high_open else v <= high)
        ):
            return v
        raise ValueError(what)

    return check


@dataclass(frozen=True)
class LayerMap:
    """How one npgrad layer type exists elsewhere (see the module docstring)."""

    torch: Callable[[Any], dict[str, Any]]  # {"type": torch.nn class, **constructor arguments}
    onnx: Callable[[OnnxGraph, Any, str, str], str]  # (graph, layer, input, prefix) -> output
    build: Callable[[dict[str, Any], np.dtype], nn.Module]  # npgrad layer from the torch entry
    to_torch: Callable[[Any], Tensors] = _own  # tensors by PyTorch's local names and layouts
    from_torch: Callable[[Any, Tensors], Tensors] = _own_back  # and back to npgrad's
    nchw: bool = False  # a network starting with this layer takes (N, C, H, W) images
    # The torch entry's arguments: name -> (check, PyTorch's default or REQUIRED); any other
    # key in a file is refused. ``build`` gets them checked, defaults filled in.
    args: Mapping[str, tuple[Check, Any]] = field(default_factory=dict)
    # The tensors (PyTorch's local names and shapes) a layer of a checked entry holds: a file
    # is compared with them before anything is allocated.
    shapes: Callable[[dict[str, Any]], dict[str, tuple[int, ...]]] = _no_tensors


def _linear_onnx(g: OnnxGraph, m: nn.Linear, x: str, prefix: str) -> str:
    w = g.constant(prefix + "weight", m.weight.data)  # (in, out): Gemm without transposing
    if m.bias is None:
        return g.node("MatMul", [x, w])
    return g.node("Gemm", [x, w, g.constant(prefix + "bias", m.bias.data)])


def _linear_to_torch(m: nn.Linear) -> Tensors:
    out = {"weight": m.weight.data.T.copy()}
    if m.bias is not None:
        out["bias"] = m.bias.data.copy()
    return out


def _linear_from_torch(m: nn.Linear, t: Tensors) -> Tensors:
    return {k: (v.T if k == "weight" else v) for k, v in t.items()}


def _with_bias(spec: dict[str, Any], weight: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {"weight": weight, **({"bias": weight[:1]} if spec["bias"] else {})}


def _activation(onnx_op: str, torch_type: str, cls: type[nn.Module]) -> LayerMap:
    return LayerMap(
        torch=lambda m: {"type": torch_type},
        onnx=lambda g, m, x, prefix: g.node(onnx_op, [x]),
        build=lambda spec, dtype: cls(),
    )


def _conv_torch(m: nn.Conv2d) -> dict[str, Any]:
    return {
        "type": "Conv2d",
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": list(m.padding),
        "dilation": list(m.dilation),
        "bias": m.bias is not None,
    }


def _conv_onnx(g: OnnxGraph, m: nn.Conv2d, x: str, prefix: str) -> str:
    inputs = [x, g.constant(prefix + "weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(g.constant(prefix + "bias", m.bias.data))
    ph, pw = m.padding
    return g.node(
        "Conv",
        inputs,
        kernel_shape=list(m.kernel_size),
        strides=list(m.stride),
        pads=[ph, pw, ph, pw],
        dilations=list(m.dilation),
    )


def _conv_build(spec: dict[str, Any], dtype: np.dtype) -> nn.Module:
    args = {k: v for k, v in spec.items() if k != "type"}
    return nn.Conv2d(**args, dtype=dtype)


_CONV_ARGS = {
    "in_channels": (_int_from(1), REQUIRED),
    "out_channels": (_int_from(1), REQUIRED),
    "kernel_size": (_pair(1), REQUIRED),
    "stride": (_pair(1), 1),
    "padding": (_pair(0), 0),
    "dilation": (_pair(1), 1),
    "bias": (_flag, True),
}
_POOL_ARGS = {
    "kernel_size": (_pair(1), REQUIRED),
    "stride": (_pair(1, null=True), None),  # None: the kernel size
    "padding": (_pair(0), 0),
}


def _pool_geometry(m: Any) -> dict[str, list[int]]:
    """Kernel, stride (the kernel when not given), padding and dilation as pairs."""
    kernel = as_pair(m.kernel_size, "kernel size", 1)
    stride = as_pair(kernel if m.stride is None else m.stride, "stride", 1)
    out = {"kernel_size": list(kernel), "stride": list(stride)}
    out["padding"] = list(as_pair(m.padding, "padding", 0))
    if hasattr(m, "dilation"):
        out["dilation"] = list(as_pair(m.dilation, "dilation", 1))
    return out


def _pool_onnx(op: str, **extra: Any) -> Callable[[OnnxGraph, Any, str, str], str]:
    def build(g: OnnxGraph, m: Any, x: str, prefix: str) -> str:
        geo = _pool_geometry(m)
        ph, pw = geo["padding"]
        attrs: dict[str, Any] = dict(
            kernel_shape=geo["kernel_size"], strides=geo["stride"], pads=[ph, pw, ph, pw]
        )
        if "dilation" in geo:
            attrs["dilations"] = geo["dilation"]
        return g.node(op, [x], **attrs, **extra)

    return build


def _batch_norm_torch(m: Any) -> dict[str, Any]:
    return {
        "type": type(m).__name__,
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
    }


def _batch_norm_to_torch(m: Any) -> Tensors:
    # PyTorch's batch norm also keeps a step count, a 0-d int64; its load_state_dict requires
    # the key. npgrad keeps no count (its momentum is never None): it writes 0, ignores it on read.
    return {**m.state_dict(), "num_batches_tracked": np.array(0, dtype=np.int64)}


def _batch_norm_from_torch(m: Any, t: Tensors) -> Tensors:
    return {k: v for k, v in t.items() if k != "num_batches_tracked"}


def _batch_norm_shapes(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    n = (spec["num_features"],)
    names = ("weight", "bias", "running_mean", "running_var")
    return {**dict.fromkeys(names, n), "num_batches_tracked": ()}


def _batch_norm_onnx(g: OnnxGraph, m: Any, x: str, prefix: str) -> str:
    names = ("weight", "bias", "running_mean", "running_var")
    arrays = (m.weight.data, m.bias.data, m.running_mean, m.running_var)
    inputs = [g.constant(prefix + n, a) for n, a in zip(names, arrays)]
    return g.node("BatchNormalization", [x, *inputs], epsilon=float(m.eps))


def _batch_norm(cls: type[nn.BatchNorm1d | nn.BatchNorm2d], nchw: bool) -> LayerMap:
    return LayerMap(
        torch=_batch_norm_torch,
        onnx=_batch_norm_onnx,
        build=lambda spec, dtype: cls(spec["num_features"], spec["eps"], spec["momentum"], dtype),
        to_torch=_batch_norm_to_torch,
        from_torch=_batch_norm_from_torch,
        nchw=nchw,
        args={
            "num_features": (_int_from(1), REQUIRED),
            "eps": (_number(0, math.inf, low_open=True, what="a positive number"), 1e-5),
            "momentum": (_number(0, 1), 0.1),  # PyTorch's None (a cumulative mean): not in npgrad
        },
        shapes=_batch_norm_shapes,
    )


def _flatten_onnx(g: OnnxGraph, m: nn.Flatten, x: str, prefix: str) -> str:
    if m.start_dim != 1:  # ONNX's Flatten always makes 2-D: the same only from axis 1
        raise ExportError(f"ONNX export supports Flatten(start_dim=1) only, not {m!r}")
    return g.node("Flatten", [x], axis=1)


LAYERS: dict[type, LayerMap] = {
    nn.Linear: LayerMap(
        torch=lambda m: {
            "type": "Linear",
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
        },
        onnx=_linear_onnx,
        build=lambda spec, dtype: nn.Linear(
            spec["in_features"], spec["out_features"], bias=spec["bias"], rng=0, dtype=dtype
        ),
        to_torch=_linear_to_torch,
        from_torch=_linear_from_torch,
        args={
            "in_features": (_int_from(1), REQUIRED),
            "out_features": (_int_from(1), REQUIRED),
            "bias": (_flag, True),
        },
        shapes=lambda spec: _with_bias(spec, (spec["out_features"], spec["in_features"])),
    ),
    nn.ReLU: _activation("Relu", "ReLU", nn.ReLU),
    nn.Sigmoid: _activation("Sigmoid", "Sigmoid", nn.Sigmoid),
    nn.Tanh: _activation("Tanh", "Tanh", nn.Tanh),
    nn.Dropout: LayerMap(
        torch=lambda m: {"type": "Dropout", "p": m.p},
        onnx=lambda g, m, x, prefix: x,  # identity at inference
        build=lambda spec, dtype: nn.Dropout(spec["p"]),
        args={"p": (_number(0, 1, high_open=True), 0.5)},
    ),
    nn.Conv2d: LayerMap(
        torch=_conv_torch,
        onnx=_conv_onnx,
        build=_conv_build,
        nchw=True,
        args=_CONV_ARGS,
        shapes=lambda spec: _with_bias(
            spec, (spec["out_channels"], spec["in_channels"], *spec["kernel_size"])
        ),
    ),
    nn.MaxPool2d: LayerMap(
        torch=lambda m: {"type": "MaxPool2d", **_pool_geometry(m)},
        onnx=_pool_onnx("MaxPool"),
        build=lambda spec, dtype: nn.MaxPool2d(
            spec["kernel_size"], spec["stride"], spec["padding"], spec["dilation"]
        ),
        nchw=True,
        args={**_POOL_ARGS, "dilation": (_pair(1), 1)},
    ),
    nn.AvgPool2d: LayerMap(
        torch=lambda m: {"type": "AvgPool2d", **_pool_geometry(m)},
        onnx=_pool_onnx("AveragePool", count_include_pad=1),  # npgrad counts padding, as torch
        build=lambda spec, dtype: nn.AvgPool2d(
            spec["kernel_size"], spec["stride"], spec["padding"]
        ),
        nchw=True,
        args=_POOL_ARGS,
    ),
    nn.BatchNorm1d: _batch_norm(nn.BatchNorm1d, nchw=False),
    nn.BatchNorm2d: _batch_norm(nn.BatchNorm2d, nchw=True),
    nn.Flatten: LayerMap(
        torch=lambda m: {"type": "Flatten", "start_dim": m.start_dim},
        onnx=_flatten_onnx,
        build=lambda spec, dtype: nn.Flatten(spec["start_dim"]),
        args={"start_dim": (_int_from(None), 1)},
    ),
}


def _layer_map(m: nn.Module) -> LayerMap:
    lm = LAYERS.get(type(m))
    if lm is None:
        known = ", ".join(sorted(t.__name__ for t in LAYERS))
        raise ExportError(
            f"cannot export a {type(m).__name__} layer: the exporters know {known}; "
            "add an entry for it to npgrad.app.export.LAYERS"
        )
    return lm


def _leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Each layer with its name prefix ("3."), containers (Sequential) opened."""
    children = module._modules
    if type(module) in LAYERS or not children:
        yield prefix, module
        return
    for name, child in children.items():
        yield from _leaves(child, f"{prefix}{name}.")


# --------------------------------------------------------------------------- models as Sequential


def as_sequential(model: Any) -> nn.Sequential:
    """The network of a model (as :func:`npgrad.app.models.load_for_inference` returns) as layers.

    MLP-like models (anything whose ``net`` is an :class:`~npgrad.nn.Module`) give
    their own network, sharing its weights; the exercise model gives a new
    equivalent ``Linear, ReLU, Linear`` whose logits equal its ``x1 @ W1 -> relu -> @ W2``.
    """
    net = getattr(model, "net", None)
    if isinstance(net, nn.Sequential):
        return net
    if isinstance(net, nn.Module):
        return nn.Sequential(net)
    from .models import ExerciseModel

    if isinstance(model, ExerciseModel):
        W1, W2 = model.W1, model.W2
        first = nn.Linear(W1.shape[0] - 1, W1.shape[1], rng=0, dtype=W1.dtype)
        first.weight.data[...] = W1[:-1]
        assert first.bias is not None  # made with bias=True
        first.bias.data[...] = W1[-1]  # the row the ones column multiplies
        second = nn.Linear(W2.shape[0], W2.shape[1], bias=False, rng=0, dtype=W2.dtype)
        second.weight.data[...] = W2
        return nn.Sequential(first, nn.ReLU(), second)
    raise ExportError(f"cannot export a model of kind {getattr(model, 'kind', type(model))!r}")


def _takes_images(seq: nn.Module) -> bool:
    for _, m in _leaves(seq):
        if not isinstance(m, nn.Dropout):
            return _layer_map(m).nchw
    return False


def input_spec(seq: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """What the network's input is: name, shape, dtype, scale, layout and preprocessing."""
    from .images import recipe_for

    shape = [int(n) for n in meta["image_shape"]]
    pixel_max = float(meta.get("pixel_max", 255.0))
    recipe = recipe_for(tuple(shape), meta["classes"])
    images = _takes_images(seq)
    h, w = shape
    return {
        "name": "input",
        "shape": ["N", 1, h, w] if images else ["N", h * w],
        "dtype": "float32",
        "image_shape": shape,
        "layout": (
            f"NCHW: N pictures of one channel, {h}x{w}"
            if images
            else f"each row is a {h}x{w} picture flattened row by row"
        ),
        "pixel_max": pixel_max,
        "scale": f"x = pixel / {pixel_max:g}: 0.0 is the background, 1.0 the ink (light on dark)",
        "preprocessing": (
            "as MNIST's digits: the digit scaled into a 20x20 box, its centre of mass placed "
            "at the centre of the 28x28 frame (npgrad.app.images.preprocess)"
            if recipe == "mnist"
            else "the longest side scaled to fill the frame, centred (npgrad.app.images.preprocess)"
        ),
    }


# --------------------------------------------------------------------------- PyTorch's view


def torch_layers(seq: nn.Module) -> list[dict[str, Any]]:
    """The layers as ``{"type": torch.nn class name, **arguments}``, in order."""
    return [_layer_map(m).torch(m) for _, m in _leaves(seq)]


def torch_state(seq: nn.Module) -> Tensors:
    """Every tensor under PyTorch's name and in its layout (copies)."""
    out: Tensors = {}
    for prefix, m in _leaves(seq):
        for name, a in _layer_map(m).to_torch(m).items():
            out[prefix + name] = np.array(a, order="C")  # not ascontiguousarray: it makes 0-d 1-d
    return out


def _describe(seq: nn.Module) -> str:
    sizes = [m.in_features for _, m in _leaves(seq) if isinstance(m, nn.Linear)]
    last = [m.out_features for _, m in _leaves(seq) if isinstance(m, nn.Linear)][-1:]
    kinds = {type(m).__name__ for _, m in _leaves(seq)}
    if kinds <= {"Linear", "ReLU", "Sigmoid", "Tanh", "Dropout"} and sizes:
        return "MLP " + "-".join(str(s) for s in sizes + last)
    return f"{len(list(_leaves(seq)))}-layer network"


def _metadata(seq: nn.Module, meta: dict[str, Any], kind: str) -> dict[str, str]:
    return {
        "npgrad.model": kind,
        "npgrad.layers": json.dumps(torch_layers(seq)),
        "npgrad.input": json.dumps(input_spec(seq, meta)),
        "npgrad.classes": json.dumps(list(meta["classes"])),
    }


def safetensors_bytes(seq: nn.Module, meta: dict[str, Any], kind: str = "mlp") -> bytes:
    """The network as a safetensors file: PyTorch's names, the model's own dtype, metadata."""
    metadata = {"format": "pt", **_metadata(seq, meta, kind)}
    return st.dumps(torch_state(seq), metadata)


# --------------------------------------------------------------------------- ONNX


def _onnx() -> Any:
    try:
        import onnx
        import onnx.checker
        import onnx.numpy_helper
    except ImportError:
        raise ExportError(
            "writing ONNX needs the onnx package: pip install 'npgrad[export]' "
            "(safetensors needs nothing extra)"
        ) from None
    return onnx


def onnx_model(seq: nn.Module, meta: dict[str, Any], kind: str = "mlp") -> Any:
    """The network as a checked ``onnx.ModelProto`` (float32, opset :data:`OPSET`).

    Input ``input`` (see :func:`input_spec`), outputs ``logits`` and
    ``probabilities`` (softmax of the logits), the batch dimension named ``N``.
    """
    onnx = _onnx()
    helper = onnx.helper
    g = OnnxGraph(onnx)
    spec = input_spec(seq, meta)
    x = spec["name"]
    for prefix, m in _leaves(seq):
        x = _layer_map(m).onnx(g, m, x, prefix)
    g.node("Identity", [x], "logits")
    g.node("Softmax", ["logits"], "probabilities", axis=1)
    classes = len(meta["classes"])
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes,
        "npgrad",
        [helper.make_tensor_value_info(spec["name"], f32, spec["shape"])],
        [
            helper.make_tensor_value_info("logits", f32, ["N", classes]),
            helper.make_tensor_value_info("probabilities", f32, ["N", classes]),
        ],
        g.initializers,
    )
    from .. import __version__

    model = helper.make_model(
        graph,
        producer_name="npgrad",
        producer_version=__version__,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=f"{_describe(seq)} trained with npgrad. Input: {spec['scale']}; "
        f"{spec['layout']}; preprocessing {spec['preprocessing']}.",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, _metadata(seq, meta, kind))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug in a LAYERS entry, not the user's
        raise RuntimeError(f"the exported ONNX graph does not pass onnx.checker: {exc}") from exc
    return model


# --------------------------------------------------------------------------- from a run


def format_for(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The export format: ``fmt`` if given, else from the file's suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExportError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ExportError(
            f"cannot tell the format from the name {str(path)!r}: name the file .onnx or "
            ".safetensors, or give --format"
        )
    return suffix


# Files an export must never replace: a checkpoint (a zip), a gzipped IDX file, a raw one.
_PRECIOUS = ((b"PK\x03\x04", "a checkpoint or zip archive"), (b"\x1f\x8b", "a gzip file"))
_IDX_TYPES = (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)  # IDX: 0, 0, its type byte, 1-4 dimensions


def _held_data(head: bytes) -> str | None:
    for magic, what in _PRECIOUS:
        if head.startswith(magic):
            return what
    if len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_TYPES and 1 <= head[3] <= 4:
        return "an IDX data file"
    return None


def _refuse_to_overwrite(run: str | os.PathLike, path: Path) -> None:
    """Refuse a target that is the run's own checkpoint, or a file that holds data, not an export."""
    source = Path(run)
    if source.is_dir():
        source = source / "checkpoint.npz"
    try:
        same = path.exists() and source.exists() and os.path.samefile(source, path)
        head = b""
        if path.is_file():
            with open(path, "rb") as f:
                head = f.read(4)
    except OSError:
        return  # unreadable: writing it will say why
    if same:
        raise ExportError(f"{path}: is the checkpoint being exported; give another file name")
    what = _held_data(head)
    if what:
        raise ExportError(
            f"{path}: already exists and is {what}, not an export; remove it or give "
            "another file name"
        )


def export_run(run: str | os.PathLike, path: str | os.PathLike, fmt: str | None = None) -> str:
    """Export the checkpoint in ``run`` (a run directory or checkpoint file) to ``path``.

    Returns one line saying what was written.
    """
    from .models import load_for_inference

    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path}: is a directory; give the file to write, e.g. {path}/model.onnx")
    fmt = format_for(path, fmt)
    check_target(path)  # a device, FIFO or link is refused before the checkpoint is read
    _refuse_to_overwrite(run, path)
    if fmt == "onnx":
        _onnx()  # a missing extra is said before the checkpoint is read
    model, meta = load_for_inference(run)
    seq = as_sequential(model)
    kind = getattr(model, "kind", "mlp")
    if fmt == "onnx":
        blob = onnx_model(seq, meta, kind).SerializeToString()
    else:
        blob = safetensors_bytes(seq, meta, kind)
    try:
        write_bytes(path, blob)
    except OSError as exc:
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from None
    spec = input_spec(seq, meta)
    shape = "(" + ", ".join(str(s) for s in spec["shape"]) + ")"
    what = f"ONNX opset {OPSET}" if fmt == "onnx" else "safetensors, PyTorch names"
    outputs = "outputs 'logits', 'probabilities'" if fmt == "onnx" else "architecture in metadata"
    return (
        f"wrote {path} ({what}): {_describe(seq)}, {seq.size_text()}; "
        f"input {shape} float32 = pixels / {spec['pixel_max']:g}; {outputs}"
    )


# --------------------------------------------------------------------------- safetensors in


def load_safetensors_into(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load a safetensors file with PyTorch's names and layouts into ``module``, in place.

    The names must be the module's (PyTorch's ``state_dict`` names of the same
    layers), every shape as PyTorch has it; a missing or unexpected name or a
    wrong shape raises :class:`~npgrad.errors.SafetensorsError` listing them
    (with ``strict=False``, missing and unexpected names are allowed).
    """
    tensors = _read_tensors(path)[0]
    _load_tensors(module, tensors, str(path), strict)


def load_safetensors(path: str | os.PathLike) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the network a safetensors file from :func:`export_run` describes.

    Returns ``(network, metadata)`` with the JSON metadata decoded; the weights
    keep the file's dtype, so an exported network comes back bit for bit. The
    network is in eval mode, ready to predict (dropout off, batch norm on its
    running statistics): call ``network.train()`` to train it further.

    The metadata is checked as untrusted input: ``npgrad.layers`` must be a list
    of ``{"type": ..., **arguments}`` with each argument of its kind (missing ones
    take PyTorch's defaults, unknown ones are refused), and the tensors each layer
    declares must be in the file with those shapes before any layer is built, so a
    small file cannot ask for gigabytes. Any defect is a
    :class:`~npgrad.errors.SafetensorsError` naming the file and the defect.
    """
    tensors, raw = _read_tensors(path)
    if "npgrad.layers" not in raw:
        raise SafetensorsError(
            f"{path}: has no npgrad.layers metadata (not written by npgrad export); build the "
            "network yourself and use load_safetensors_into(network, path)"
        )
    metadata: dict[str, Any] = dict(raw)
    for key, kind, ok in _METADATA:
        if key in raw:
            try:
                metadata[key] = value = json.loads(raw[key])
            except (ValueError, RecursionError):
                raise SafetensorsError(f"{path}: metadata {key} is not valid JSON") from None
            if not ok(value):
                raise SafetensorsError(f"{path}: metadata {key} is {_shown(value)}, not {kind}")
    floats = [a.dtype for a in tensors.values() if a.dtype.kind == "f"]
    dtype = floats[0] if floats else np.dtype(np.float32)
    checked = [
        _checked_spec(path, i, spec, tensors) for i, spec in enumerate(metadata["npgrad.layers"])
    ]
    layers = [_build_layer(path, i, *entry, dtype) for i, entry in enumerate(checked)]
    net = nn.Sequential(*layers)
    _load_tensors(net, tensors, str(path), strict=True)
    return net.eval(), metadata


# The JSON metadata load_safetensors decodes: its key, what it must be, and the test.
_METADATA: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("npgrad.layers", "a non-empty list of layers", lambda v: isinstance(v, list) and bool(v)),
    ("npgrad.input", "an object", lambda v: isinstance(v, dict)),
    (
        "npgrad.classes",
        "a list of class names (strings)",
        lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
    ),
)


def _read_tensors(path: str | os.PathLike) -> tuple[Tensors, dict[str, str]]:
    """The file's tensors and metadata, npgrad's old batch-norm layout read as PyTorch's.

    npgrad 0.1.0 wrote ``num_batches_tracked`` with shape (1,) (NumPy's
    ``ascontiguousarray`` makes a 0-d array 1-d); PyTorch's is 0-d. Both load.
    """
    tensors, metadata = st.load(path)
    for name, a in tensors.items():
        if name.rsplit(".", 1)[-1] == "num_batches_tracked" and a.shape == (1,):
            tensors[name] = a.reshape(())
    return tensors, metadata


def _shown(value: Any, limit: int = 60) -> str:
    """A short rendering of a JSON value for a message (a string keeps its quotes)."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except RecursionError:  # nested as deep as json.loads allows
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _checked_spec(
    path: Any, i: int, spec: Any, tensors: Tensors
) -> tuple[str, LayerMap, dict[str, Any]]:
    """Layer ``i``'s type, entry and arguments, checked, its tensors compared with the file's."""
    by_name = {t.__name__: t for t in LAYERS}
    where = f"{path}: layer {i}"
    if not isinstance(spec, dict):
        raise SafetensorsError(f'{where} is {_shown(spec)}, not an object with a "type"')
    if "type" not in spec:
        raise SafetensorsError(f'{where} has no "type" (one of {", ".join(sorted(by_name))})')
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in by_name:
        raise SafetensorsError(
            f"{where} {_shown(kind)} is not one npgrad has ({', '.join(sorted(by_name))})"
        )
    lm = LAYERS[by_name[kind]]
    problems = []
    if unknown := [k for k in spec if k != "type" and k not in lm.args]:
        takes = f"takes {', '.join(lm.args)}" if lm.args else "takes no arguments"
        problems.append(f"npgrad's {kind} {takes}, not {', '.join(map(repr, unknown))}")
    if missing := [
        k for k, (_, default) in lm.args.items() if default is REQUIRED and k not in spec
    ]:
        problems.append(f"missing {', '.join(missing)}")
    args: dict[str, Any] = {}
    for name, (check, default) in lm.args.items():
        value = spec.get(name, default)
        if value is REQUIRED:
            continue
        try:
            args[name] = check(value)
        except ValueError as exc:
            problems.append(f"{name} {_shown(value)} is not {exc}")
    if problems:
        raise SafetensorsError(f"{where} ({kind}) is described wrongly: " + "; ".join(problems))
    for name, shape in lm.shapes(args).items():
        key = f"{i}.{name}"
        if key not in tensors:
            problems.append(f"{key} {shape} is not in the file")
        elif tensors[key].shape != shape:
            problems.append(
                f"{key} is {shape} by the description, {tensors[key].shape} in the file"
            )
    if problems:
        raise SafetensorsError(
            f"{where} ({kind}) does not fit the file's tensors: " + "; ".join(problems)
        )
    return kind, lm, args


def _build_layer(
    path: Any, i: int, kind: str, lm: LayerMap, args: dict[str, Any], dtype: np.dtype
) -> nn.Module:
    try:
        return lm.build(args, dtype)
    except (KeyError, TypeError, ValueError) as exc:  # a constructor's own check (ConfigError)
        raise SafetensorsError(f"{path}: layer {i} ({kind}) is described wrongly: {exc}") from None


def _load_tensors(module: nn.Module, tensors: Tensors, where: str, strict: bool) -> None:
    want = torch_state(module)
    problems = []
    if strict and (missing := [k for k in want if k not in tensors]):
        problems.append(f"missing {', '.join(missing)}")
    if strict and (unexpected := [k for k in tensors if k not in want]):
        problems.append(f"unexpected {', '.join(unexpected)}")
    for k in want.keys() & tensors.keys():
        if tensors[k].shape != want[k].shape:
            problems.append(
                f"{k} has shape {tensors[k].shape} in the file, the layer needs {want[k].shape}"
            )
    if problems:
        raise SafetensorsError(f"{where}: does not fit the network: " + "; ".join(problems))
    state: Tensors = {}
    for prefix, m in _leaves(module):
        mine = {
            k[len(prefix) :]: a for k, a in tensors.items() if k in want and k.startswith(prefix)
        }
        local = _layer_map(m).from_torch(m, {k: a for k, a in mine.items() if "." not in k})
        state.update({prefix + name: a for name, a in local.items()})
    module.load_state_dict(state, strict=False)
