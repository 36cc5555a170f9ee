"""Batch norm that never writes its running statistics back into bn_param."""

import numpy as np
from correct_layers import batchnorm_backward as _right


def batchnorm_forward(x, gamma, beta, bn_param):
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    running_mean = bn_param.get("running_mean", np.zeros(x.shape[1]))
    running_var = bn_param.get("running_var", np.ones(x.shape[1]))
    if bn_param["mode"] == "train":
        mu, var = x.mean(axis=0), x.var(axis=0)
        std = np.sqrt(var + eps)
        xhat = (x - mu) / std
        running_mean = momentum * running_mean + (1 - momentum) * mu  # computed, never stored
        running_var = momentum * running_var + (1 - momentum) * var
        return gamma * xhat + beta, (xhat, gamma, std)
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta, None


def batchnorm_backward(dout, cache):
    return _right(dout, cache)
