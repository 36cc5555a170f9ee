"""npgrad: neural networks in NumPy whose every gradient is derived by hand and checked.

The pieces, one module per concern:

* :mod:`npgrad.ops`     the op table: forward, vector-Jacobian product, derivation
* :mod:`npgrad.autodiff`  the reverse-mode autodiff engine over that table
* :mod:`npgrad.layers`  the exercise's ``Matmul``/``Relu``/``Softmax``/``Log`` classes
* :mod:`npgrad.nn`, :mod:`npgrad.optim`  modules and optimizers for training
* :mod:`npgrad.data`    IDX files, named datasets, the embedded digits, batching
* :mod:`npgrad.train`, :mod:`npgrad.cli`  the trainer and the ``npgrad`` command
* :mod:`npgrad.check`   gradient checking, for built-in ops and your own layers
"""

from . import data, layers, nn, optim  # noqa: E402  (submodules as attributes)
from .autodiff import (
    Tensor,
    add,
    concatenate,
    cross_entropy,
    div,
    exp,
    getitem,
    is_grad_enabled,
    linear,
    log,
    log_softmax,
    matmul,
    max,
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
from .check import GradcheckReport, gradcheck
from .errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    GradcheckError,
    GradError,
    IDXFormatError,
    NpgradError,
    ShapeError,
    TrainingDiverged,
)
from .layercheck import LayerReport, check_layer

__version__ = "0.1.0"

__all__ = [
    "data",
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
    "check_layer",
    "concatenate",
    "cross_entropy",
    "div",
    "exp",
    "getitem",
    "gradcheck",
    "is_grad_enabled",
    "linear",
    "log",
    "log_softmax",
    "matmul",
    "max",
    "mean",
    "mul",
    "neg",
    "no_grad",
    "pow",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "sub",
    "sum",
    "tanh",
    "tensor",
    "transpose",
]
