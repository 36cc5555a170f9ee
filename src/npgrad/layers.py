"""The exercise's layer classes, as drop-in replacements.

Code written for the exercise runs unchanged with::

    from npgrad.layers import Matmul, Relu, Softmax, Log

Each class keeps the exercise's protocol: a ``mem`` dict filled by
``forward``, ``backward(grad_y)`` returning the input gradient (``Matmul``
returns ``(grad_x, grad_W)``), and an ``epsilon`` attribute on ``Softmax`` and
``Log`` (1e-12, as in the exercise). They hold no formulas of their own: the
forward and backward passes are the op table's (:mod:`npgrad.ops.dense`), the same
code the :class:`~npgrad.Tensor` engine runs.

What differs from the exercise's own classes, always without changing a
finite result: ``Softmax`` subtracts the row maximum (no overflow) and never
builds the (N, c, c) Jacobian; arrays keep their dtype (float64 stays float64).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from .ops import conv, dense
from .ops.base import Op
from .ops.geometry import IntOrPair

__all__ = [
    "Layer",
    "Matmul",
    "Relu",
    "Softmax",
    "Log",
    "Sigmoid",
    "Tanh",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "BatchNorm",
]


class Layer:
    """A layer over one op: ``forward`` stores the op's saved state in ``mem``."""

    op: type[Op]

    def __init__(self) -> None:
        self.mem: dict[str, Any] = {}

    def _params(self) -> dict[str, Any]:
        return {}

    # Any: each layer's own forward takes its own fixed arguments (x, W...).
    def forward(self, *inputs: Any) -> np.ndarray:
        out, saved = self.op.forward(*[np.asarray(x) for x in inputs], **self._params())
        self.mem = {"saved": saved}
        return out

    def backward(self, grad_y: np.ndarray) -> Any:
        if "saved" not in self.mem:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        grads = self.op.vjp(self.mem["saved"], np.asarray(grad_y), (True,) * 8)
        return grads[0] if len(grads) == 1 else grads


class Matmul(Layer):
    """``forward(x, W) = x @ W``; ``backward(g) = (g @ W.T, x.T @ g)``."""

    op = dense.MatmulOp

    def __init__(self) -> None:
        super().__init__()
        # Set to False when x is data (the first layer): backward then returns
        # (None, grad_W) and skips a whole matrix product. The exercise never sets it.
        self.input_grad = True

    def forward(self, x: np.ndarray, W: np.ndarray) -> np.ndarray:
        out = super().forward(x, W)
        self.mem["x"], self.mem["W"] = self.mem["saved"]
        return out

    def backward(self, grad_y: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        if "saved" not in self.mem:
            raise RuntimeError("Matmul.backward called before forward")
        # grad_W is always computed (needs[1] is True); the op's signature cannot say so.
        return cast(
            "tuple[np.ndarray | None, np.ndarray]",
            self.op.vjp(self.mem["saved"], np.asarray(grad_y), (self.input_grad, True)),
        )


class Relu(Layer):
    """``forward(x) = max(x, 0)``; ``backward(g) = g * (x > 0)``."""

    op = dense.ReluOp

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = super().forward(x)
        self.mem["x"] = x
        return out


class Softmax(Layer):
    """Softmax over the last axis, ``exp(x) / (sum(exp(x)) + epsilon)``, computed stably."""

    op = dense.SoftmaxOp

    def __init__(self) -> None:
        super().__init__()
        self.epsilon = 1e-12

    def _params(self) -> dict[str, Any]:
        return {"axis": -1, "eps": self.epsilon}

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = super().forward(x)
        self.mem["s"] = out
        return out


class Log(Layer):
    """``forward(x) = log(x + epsilon)``; ``backward(g) = g / (x + epsilon)``."""

    op = dense.LogOp

    def __init__(self) -> None:
        super().__init__()
        self.epsilon = 1e-12

    def _params(self) -> dict[str, Any]:
        return {"eps": self.epsilon}

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = super().forward(x)
        self.mem["x"] = x
        return out


class Sigmoid(Layer):
    """Logistic sigmoid, in the same protocol (not part of the exercise)."""

    op = dense.SigmoidOp


class Tanh(Layer):
    """Hyperbolic tangent, in the same protocol (not part of the exercise)."""

    op = dense.TanhOp


# --------------------------------------------------------------------------- convolutional
# The same protocol for the second half of the course: NCHW arrays, PyTorch's
# argument names, the formulas of npgrad.ops.conv.


class Conv2d(Layer):
    """``forward(x, W, b=None)``: cross-correlation of ``x`` (N, C, H, W) with ``W`` (O, C, kh, kw).

    ``backward(g)`` returns ``(grad_x, grad_W)``, or ``(grad_x, grad_W, grad_b)``
    when a bias was given. ``mem`` keeps ``x`` and ``W`` besides the op's state.
    """

    op = conv.Conv2dOp

    def __init__(
        self,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        # As Matmul's: False for a first layer, whose input gradient nobody needs.
        self.input_grad = True

    def _params(self) -> dict[str, Any]:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation}

    def forward(self, x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        out = super().forward(*((x, W) if b is None else (x, W, b)))
        self.mem["x"], self.mem["W"] = x, W
        return out

    def backward(self, grad_y: np.ndarray) -> tuple[np.ndarray | None, ...]:
        if "saved" not in self.mem:
            raise RuntimeError("Conv2d.backward called before forward")
        return self.op.vjp(self.mem["saved"], np.asarray(grad_y), (self.input_grad, True, True))


class MaxPool2d(Layer):
    """``forward(x)``: max over ``kernel`` windows; ``backward(g)`` routes g to each window's arg-max."""

    op = conv.MaxPool2dOp

    def __init__(
        self,
        kernel: IntOrPair = 2,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation

    def _params(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
        }


class AvgPool2d(Layer):
    """``forward(x)``: mean over ``kernel`` windows; ``backward(g)`` spreads g evenly over each."""

    op = conv.AvgPool2dOp

    def __init__(
        self,
        kernel: IntOrPair = 2,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def _params(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "stride": self.stride, "padding": self.padding}


class BatchNorm(Layer):
    """``forward(x, gamma, beta)``: batch norm per channel (axis 1) of (N, C) or (N, C, H, W) input.

    In training mode (``self.training = True``, the default) it normalises
    with the batch statistics and updates ``running_mean``/``running_var``
    (created at the first call) as PyTorch does; otherwise it uses them.
    ``backward(g)`` returns ``(grad_x, grad_gamma, grad_beta)``.
    """

    op = conv.BatchNormOp

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.training = True
        self.running_mean: np.ndarray | None = None
        self.running_var: np.ndarray | None = None

    def _params(self) -> dict[str, Any]:
        return {
            "running_mean": self.running_mean,
            "running_var": self.running_var,
            "training": self.training,
            "momentum": self.momentum,
            "eps": self.eps,
        }

    def forward(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if self.running_mean is None and x.ndim >= 2:
            self.running_mean = np.zeros(x.shape[1], dtype=x.dtype)
            self.running_var = np.ones(x.shape[1], dtype=x.dtype)
        return super().forward(x, gamma, beta)
