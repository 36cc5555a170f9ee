"""Batch norm backward that treats the batch mean and variance as constants."""

from correct_layers import batchnorm_forward as _forward


def batchnorm_forward(x, gamma, beta, bn_param):
    return _forward(x, gamma, beta, bn_param)


def batchnorm_backward(dout, cache):
    xhat, gamma, std = cache
    return dout * gamma / std, (dout * xhat).sum(axis=0), dout.sum(axis=0)
