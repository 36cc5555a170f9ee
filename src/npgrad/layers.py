"""The exercise's layer classes, as drop-in replacements.

Code written for the exercise runs unchanged with::

    from npgrad.layers import Matmul, Relu, Softmax, Log

Each class keeps the exercise's protocol: a ``mem`` dict filled by
``forward``, ``backward(grad_y)`` returning the input gradient (``Matmul``
returns ``(grad_x, grad_W)``), and an ``epsilon`` attribute on ``Softmax`` and
``Log`` (1e-12, as in the exercise). They hold no formulas of their own: the
forward and backward passes are the op table's (:mod:`npgrad.ops`), the same
code the :class:`~npgrad.Tensor` engine runs.

What differs from the exercise's own classes, always without changing a
finite result: ``Softmax`` subtracts the row maximum (no overflow) and never
builds the (N, c, c) Jacobian; arrays keep their dtype (float64 stays float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import ops

__all__ = ["Layer", "Matmul", "Relu", "Softmax", "Log", "Sigmoid", "Tanh"]


class Layer:
    """A layer over one op: ``forward`` stores the op's saved state in ``mem``."""

    op: type[ops.Op]

    def __init__(self) -> None:
        self.mem: dict[str, Any] = {}

    def _params(self) -> dict[str, Any]:
        return {}

    def forward(self, *inputs: np.ndarray) -> np.ndarray:
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

    op = ops.Matmul

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
        return self.op.vjp(self.mem["saved"], np.asarray(grad_y), (self.input_grad, True))


class Relu(Layer):
    """``forward(x) = max(x, 0)``; ``backward(g) = g * (x > 0)``."""

    op = ops.Relu

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = super().forward(x)
        self.mem["x"] = x
        return out


class Softmax(Layer):
    """Softmax over the last axis, ``exp(x) / (sum(exp(x)) + epsilon)``, computed stably."""

    op = ops.Softmax

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

    op = ops.Log

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

    op = ops.Sigmoid


class Tanh(Layer):
    """Hyperbolic tangent, in the same protocol (not part of the exercise)."""

    op = ops.Tanh
