"""A ReLU backward that writes into its upstream gradient (right values: a warning)."""

import numpy as np


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    dout[cache <= 0] = 0
    return dout
