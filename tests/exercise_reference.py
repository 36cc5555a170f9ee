"""The exercise's original formulation, as its students wrote it.

Kept only as an independent reference: tests compare npgrad's exercise preset
with it, and the benchmarks time it. It is deliberately *not* npgrad code: the
softmax has no max-subtraction and its backward builds the (N, c, c) Jacobian,
everything is float64, and ``Matmul.backward`` always computes both gradients.
"""

from __future__ import annotations

import numpy as np


class Matmul:
    def __init__(self):
        self.mem = {}

    def forward(self, x, W):
        self.mem = {"x": x, "W": W}
        return x @ W

    def backward(self, grad_y):
        x, W = self.mem["x"], self.mem["W"]
        return grad_y @ W.T, x.T @ grad_y


class Relu:
    def __init__(self):
        self.mem = {}

    def forward(self, x):
        self.mem = {"x": x}
        return np.where(x > 0, x, np.zeros_like(x))

    def backward(self, grad_y):
        return np.where(self.mem["x"] > 0, grad_y, np.zeros_like(grad_y))


class Softmax:
    def __init__(self):
        self.mem = {}
        self.epsilon = 1e-12

    def forward(self, x):
        e = np.exp(x)
        s = e / (np.sum(e, axis=-1, keepdims=True) + self.epsilon)
        self.mem = {"s": s}
        return s

    def backward(self, grad_y):
        s = self.mem["s"]
        outer = np.einsum("ij,ik->ijk", s, s)  # (N, c, c)
        diag = np.einsum("ij,jk->ijk", s, np.eye(s.shape[1]))
        jacobian = diag - outer
        return np.einsum("ijk,ik->ij", jacobian, grad_y)


class Log:
    def __init__(self):
        self.mem = {}
        self.epsilon = 1e-12

    def forward(self, x):
        self.mem = {"x": x}
        return np.log(x + self.epsilon)

    def backward(self, grad_y):
        return grad_y / (self.mem["x"] + self.epsilon)


def add_ones_column(images):
    """(N, 28, 28) pixels in [0, 1] -> (N, 785) with the bias column of ones."""
    x = images.reshape(images.shape[0], -1).astype(np.float64)
    return np.hstack([x, np.ones((x.shape[0], 1))])


def make_model(layers):
    """The exercise's ``myModel`` built over a namespace of layer classes."""

    class MyModel:
        def __init__(self, W1=None, W2=None, seed=None):
            rng = np.random.default_rng(seed)
            self.W1 = rng.normal(size=(785, 100)) if W1 is None else W1
            self.W2 = rng.normal(size=(100, 10)) if W2 is None else W2
            self.matmul1 = layers.Matmul()
            self.relu = layers.Relu()
            self.matmul2 = layers.Matmul()
            self.softmax = layers.Softmax()
            self.log = layers.Log()

        def forward(self, x):
            h1 = self.matmul1.forward(x, self.W1)
            h1_ = self.relu.forward(h1)
            h2 = self.matmul2.forward(h1_, self.W2)
            h2_ = self.softmax.forward(h2)
            return self.log.forward(h2_)

        def backward(self, label):
            g = self.log.backward(-label)
            g = self.softmax.backward(g)
            g, self.W2_grad = self.matmul2.backward(g)
            g = self.relu.backward(g)
            _, self.W1_grad = self.matmul1.backward(g)

    return MyModel


def train_one_step(model, x, y, lr):
    """One full-batch step: forward, loss and accuracy, backward, update."""
    out = model.forward(x)
    loss = np.mean(-np.sum(y * out, axis=1))
    acc = np.mean(np.argmax(out, axis=1) == np.argmax(y, axis=1))
    model.backward(y)
    model.W1 -= lr * model.W1_grad
    model.W2 -= lr * model.W2_grad
    return loss, acc
