"""Dropout whose backward draws a new mask instead of reusing the forward's."""

import numpy as np


def dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    if mode == "train":
        return x * (np.random.rand(*x.shape) < p) / p, dropout_param
    return x, dropout_param


def dropout_backward(dout, cache):
    p = cache["p"]
    if cache["mode"] == "train":
        return dout * (np.random.rand(*dout.shape) < p) / p
    return dout
