"""A true convolution (kernel flipped) where CS231n means cross-correlation; backward consistent."""

from correct_layers import conv_backward_naive as _right
from correct_layers import conv_forward_naive as _forward


def conv_forward_naive(x, w, b, conv_param):
    out, _ = _forward(x, w[:, :, ::-1, ::-1], b, conv_param)
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    dx, dw, db = _right(dout, (x, w[:, :, ::-1, ::-1], b, conv_param))
    return dx, dw[:, :, ::-1, ::-1], db
