"""Deliberately wrong layer implementations, one per diagnosis ``npgrad check`` makes."""

import numpy as np


class TransposedMatmul:
    def __init__(self):
        self.mem = {}

    def forward(self, x, W):
        self.mem = {"x": x, "W": W}
        return x @ W

    def backward(self, g):
        return g @ self.mem["W"].T, (self.mem["x"].T @ g).T  # grad_W transposed


class NoBatchSumMatmul:
    def __init__(self):
        self.mem = {}

    def forward(self, x, W):
        self.mem = {"x": x, "W": W}
        return x @ W

    def backward(self, g):
        x = self.mem["x"]
        return g @ self.mem["W"].T, x[:, :, None] * g[:, None, :]  # per-sample outer products


class SignErrorRelu:
    def __init__(self):
        self.mem = {}

    def forward(self, x):
        self.mem = {"x": x}
        return np.maximum(x, 0)

    def backward(self, g):
        return -g * (self.mem["x"] > 0)


class MasklessRelu:
    def __init__(self):
        self.mem = {}

    def forward(self, x):
        self.mem = {"x": x}
        return np.maximum(x, 0)

    def backward(self, g):
        return g  # forgot the mask


class NoUpstreamSigmoid:
    def __init__(self):
        self.mem = {}

    def forward(self, x):
        s = 1 / (1 + np.exp(-x))
        self.mem = {"s": s}
        return s

    def backward(self, g):
        s = self.mem["s"]
        return s * (1 - s)  # forgot to multiply by g


class WrongShapeTanh:
    def __init__(self):
        self.mem = {}

    def forward(self, x):
        y = np.tanh(x)
        self.mem = {"y": y}
        return y

    def backward(self, g):
        return (g * (1 - self.mem["y"] ** 2)).sum(axis=0)  # summed away a dimension


class HalvedSquare:
    def __init__(self):
        self.mem = {}

    def forward(self, x):
        self.mem = {"x": x}
        return x**2

    def backward(self, g):
        return g * self.mem["x"]  # the 2 is missing


class Relu:
    """A correct exercise-style Relu."""

    def __init__(self):
        self.mem = {}

    def forward(self, x):
        self.mem = {"x": x}
        return np.where(x > 0, x, 0.0)

    def backward(self, g):
        return np.where(self.mem["x"] > 0, g, 0.0)


class Softmax:
    """A correct exercise-style Softmax (with the exercise's (N, c, c) Jacobian)."""

    def __init__(self):
        self.mem = {}
        self.epsilon = 1e-12

    def forward(self, x):
        e = np.exp(x)
        s = e / (e.sum(axis=-1, keepdims=True) + self.epsilon)
        self.mem = {"s": s}
        return s

    def backward(self, g):
        s = self.mem["s"]
        jac = np.einsum("ij,jk->ijk", s, np.eye(s.shape[1])) - np.einsum("ij,ik->ijk", s, s)
        return np.einsum("ijk,ik->ij", jac, g)


class Matmul:
    """A correct exercise-style Matmul."""

    def __init__(self):
        self.mem = {}

    def forward(self, x, W):
        self.mem = {"x": x, "W": W}
        return x @ W

    def backward(self, g):
        return g @ self.mem["W"].T, self.mem["x"].T @ g


class CrashingForward:
    def forward(self, x):
        return x @ undefined_name  # noqa: F821

    def backward(self, g):
        return g
