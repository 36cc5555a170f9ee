"""Batch norm whose test mode normalises with the batch's statistics, not the running ones."""

import numpy as np
from correct_layers import batchnorm_backward as _right
from correct_layers import batchnorm_forward as _forward


def batchnorm_forward(x, gamma, beta, bn_param):
    if bn_param["mode"] == "test":
        eps = bn_param.get("eps", 1e-5)
        return gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps) + beta, None
    return _forward(x, gamma, beta, bn_param)


def batchnorm_backward(dout, cache):
    return _right(dout, cache)
