"""npgrad: neural networks in NumPy whose every gradient is derived by hand and checked.

The pieces, one module per concern:

* :mod:`npgrad.ops.dense`, :mod:`npgrad.ops.conv`  the op table: forward, vector-Jacobian product,
  derivation (dense ops; convolution, pooling, batch norm)
* :mod:`npgrad.autodiff`  the reverse-mode autodiff engine over that table
* :mod:`npgrad.layers`  the exercise's ``Matmul``/``Relu``/``Softmax``/``Log`` classes
* :mod:`npgrad.nn`, :mod:`npgrad.optim`  modules and optimizers for training
* :mod:`npgrad.data`    IDX files, named datasets, the embedded digits, batching
* :mod:`npgrad.app.config`, :mod:`npgrad.app.models`, :mod:`npgrad.app.trainer`  options, models, training
* :mod:`npgrad.cli`     the ``npgrad`` command, one module per sub-command
* :mod:`npgrad.checking.gradcheck`   gradient checking, for built-in ops and your own layers
"""

from .mpienv import share_cores

share_cores()  # under mpiexec: before NumPy's BLAS starts its threads

from . import data, layers, nn, optim

# npgrad.sum, npgrad.max, npgrad.pow: attributes, but not in __all__, so that
# 'from npgrad import *' does not shadow Python's builtins.
from .autodiff import (  # noqa: F401
    Tensor,
    add,
    avg_pool2d,
    batch_norm,
    broadcast_to,
    concatenate,
    conv2d,
    cross_entropy,
    div,
    dropout,
    enable_grad,
    exp,
    flatten,
    getitem,
    grad,
    hvp,
    is_grad_enabled,
    linear,
    log,
    log_softmax,
    matmul,
    max,
    max_pool2d,
    mean,
    mul,
    neg,
    no_grad,
    pow,
    relu,
    reshape,
    sigmoid,
    softmax,
    sub,
    sum,
    tanh,
    tensor,
    transpose,
)
from .compiler import CompiledStep, compile  # noqa: F401  (compile: not in __all__, a builtin)
from .errors import (
    CheckpointError,
    CompileWarning,
    ConfigError,
    DatasetError,
    DeviceError,
    GradcheckError,
    GradError,
    IDXFormatError,
    NpgradError,
    ShapeError,
    TrainingDiverged,
)
from .ops.parallel import get_threads, set_threads

__version__ = "0.1.0"

# The checking tools load on first use: most programs train and never check.
_LAZY = {
    "gradcheck": "checking.gradcheck",
    "gradgradcheck": "checking.gradcheck",
    "GradcheckReport": "checking.gradcheck",
    "check_layer": "checking.layer_classes",
    "LayerReport": "checking.layer_classes",
    "check_functions": "checking.user_files",
    "PairReport": "checking.function_pairs",
}
# Modules reached as attributes after a plain import (npgrad.export.load_safetensors, as
# before they moved into npgrad.app), loaded on first use.
_SUBMODULES = {
    "app": "app",
    "checking": "checking",
    "export": "app.export",
    "fpenv": "fpenv",
    "checkpoint": "app.checkpoint",
    "images": "app.images",
    "graph": "graph",
    "models": "app.models",
    "trainer": "app.trainer",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    raise AttributeError(f"module 'npgrad' has no attribute {name!r}")


__all__ = [
    "data",
    "CompiledStep",
    "CompileWarning",
    "DeviceError",
    "dropout",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "flatten",
    "max_pool2d",
    "layers",
    "nn",
    "optim",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "GradError",
    "GradcheckError",
    "GradcheckReport",
    "LayerReport",
    "IDXFormatError",
    "NpgradError",
    "ShapeError",
    "Tensor",
    "TrainingDiverged",
    "add",
    "broadcast_to",
    "check_layer",
    "concatenate",
    "cross_entropy",
    "div",
    "enable_grad",
    "get_threads",
    "set_threads",
    "exp",
    "getitem",
    "grad",
    "gradcheck",
    "gradgradcheck",
    "hvp",
    "is_grad_enabled",
    "linear",
    "log",
    "log_softmax",
    "matmul",
    "mean",
    "mul",
    "neg",
    "no_grad",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "sub",
    "tanh",
    "tensor",
    "transpose",
]
