"""A right batchnorm_backward and a batchnorm_backward_alt that forgot the variance's term."""

from correct_layers import batchnorm_backward as _right
from correct_layers import batchnorm_forward as _forward


def batchnorm_forward(x, gamma, beta, bn_param):
    return _forward(x, gamma, beta, bn_param)


def batchnorm_backward(dout, cache):
    return _right(dout, cache)


def batchnorm_backward_alt(dout, cache):
    xhat, gamma, std = cache
    N = dout.shape[0]
    dxhat = dout * gamma
    dx = (N * dxhat - dxhat.sum(axis=0)) / (N * std)
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)
