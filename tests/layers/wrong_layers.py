"""Deliberately wrong layer implementations, one per diagnosis ``npgrad check`` makes.

Each family shares one correct forward; each class differs only in the mistake
its backward makes. ``Relu``, ``Softmax`` and ``Matmul`` are correct (the
exercise's own formulation) and must pass.
"""

import numpy as np
from helpers import softmax_jacobian  # a sibling module, as students often have


class _MatmulForward:
    def __init__(self):
        self.mem = {}

    def forward(self, x, W):
        self.mem = {"x": x, "W": W}
        return x @ W


class _ReluForward:
    def __init__(self):
        self.mem = {}

    def forward(self, x):
        self.mem = {"x": x}
        return np.maximum(x, 0)


class _Elementwise:
    """forward(x) = fn(x); mem keeps x and the output."""

    def __init__(self):
        self.mem = {}

    def forward(self, x):
        y = self.fn(x)
        self.mem = {"x": x, "y": y}
        return y


class TransposedMatmul(_MatmulForward):
    def backward(self, g):
        return g @ self.mem["W"].T, (self.mem["x"].T @ g).T  # grad_W transposed


class NoBatchSumMatmul(_MatmulForward):
    def backward(self, g):
        x = self.mem["x"]
        return g @ self.mem["W"].T, x[:, :, None] * g[:, None, :]  # per-sample outer products


class SignErrorRelu(_ReluForward):
    def backward(self, g):
        return -g * (self.mem["x"] > 0)


class MasklessRelu(_ReluForward):
    def backward(self, g):
        return g  # forgot the mask


class NoUpstreamSigmoid(_Elementwise):
    fn = staticmethod(lambda x: 1 / (1 + np.exp(-x)))

    def backward(self, g):
        s = self.mem["y"]
        return s * (1 - s)  # forgot to multiply by g


class WrongShapeTanh(_Elementwise):
    fn = staticmethod(np.tanh)

    def backward(self, g):
        return (g * (1 - self.mem["y"] ** 2)).sum(axis=0)  # summed away a dimension


class HalvedSquare(_Elementwise):
    fn = staticmethod(np.square)

    def backward(self, g):
        return g * self.mem["x"]  # the 2 is missing


class Relu(_ReluForward):
    """Correct."""

    def backward(self, g):
        return np.where(self.mem["x"] > 0, g, 0.0)


class Softmax:
    """Correct: the exercise's Softmax, with its (N, c, c) Jacobian."""

    def __init__(self):
        self.mem = {}
        self.epsilon = 1e-12

    def forward(self, x):
        e = np.exp(x)
        s = e / (e.sum(axis=-1, keepdims=True) + self.epsilon)
        self.mem = {"s": s}
        return s

    def backward(self, g):
        return np.einsum("ijk,ik->ij", softmax_jacobian(self.mem["s"]), g)


class Matmul(_MatmulForward):
    """Correct."""

    def backward(self, g):
        return g @ self.mem["W"].T, self.mem["x"].T @ g


class CrashingForward:
    def forward(self, x):
        return x @ undefined_name  # noqa: F821

    def backward(self, g):
        return g
