"""dgamma and dbeta of shape (1, D) where gamma is (D,): right values, a warning."""

from correct_layers import batchnorm_backward as _right
from correct_layers import batchnorm_forward as _forward


def batchnorm_forward(x, gamma, beta, bn_param):
    return _forward(x, gamma, beta, bn_param)


def batchnorm_backward(dout, cache):
    dx, dgamma, dbeta = _right(dout, cache)
    return dx, dgamma.reshape(1, -1), dbeta.reshape(1, -1)
