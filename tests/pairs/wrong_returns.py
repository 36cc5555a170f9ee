"""Pairs that return the wrong things: each named precisely, never a traceback or a NaN."""

import numpy as np


def relu_forward(x):
    return np.maximum(0, x)  # no cache


def relu_backward(dout, cache):
    return dout


def affine_forward(x, w, b):
    return x.reshape(x.shape[0], -1) @ w + b, (x, w)


def affine_backward(dout, cache):
    x, w = cache
    return (dout @ w.T).reshape(x.shape), x.reshape(x.shape[0], -1).T @ dout  # no db


def tanh_forward(x):
    y = np.tanh(x)
    return y, y


def tanh_backward(dout, cache):
    dx = dout * (1 - cache**2)  # noqa: F841  (the deliberate mistake: no return)


def svm_loss(x, y):
    return 1.0  # no gradient
