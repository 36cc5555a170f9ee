"""Deliberately wrong convolution, pooling and batch-norm layer classes, one per diagnosis.

Written as a student writes them for the exercise: ``forward(x, W, b)`` returns the
output and keeps what backward needs in ``self.mem``; ``backward(grad_y)`` returns
one gradient per input. Each family shares one correct forward; each wrong class
differs only in its mistake. ``Conv2d``, ``MaxPool2d``, ``AvgPool2d`` and
``BatchNorm`` are correct and must pass.
"""

import numpy as np


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def _pad(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def _window(i, j, step, kh, kw):
    """The index of window (i, j) of an NCHW array: rows i * step.., columns j * step.."""
    return np.s_[:, :, i * step : i * step + kh, j * step : j * step + kw]


class Conv2d:
    """Cross-correlation, as in PyTorch: out[n, f, i, j] = sum(x_window * W[f]) + b[f]."""

    def __init__(self, stride=1, padding=0):
        self.stride, self.padding = stride, padding
        self.mem = {}

    def forward(self, x, W, b):
        s = self.stride
        xp = _pad(x, self.padding)
        F, _, HH, WW = W.shape
        Ho, Wo = 1 + (xp.shape[2] - HH) // s, 1 + (xp.shape[3] - WW) // s
        out = np.zeros((x.shape[0], F, Ho, Wo))
        for i in range(Ho):
            for j in range(Wo):
                out[:, :, i, j] = np.einsum("nchw,fchw->nf", xp[_window(i, j, s, HH, WW)], W)
        self.mem = {"xp": xp, "W": W, "x_shape": x.shape}
        return out + b[None, :, None, None]

    def _padded_grads(self, grad_y, step, W):
        """Gradients of the padded input and of W, windows taken every ``step``."""
        xp = self.mem["xp"]
        _, _, HH, WW = W.shape
        dxp, dW = np.zeros_like(xp), np.zeros_like(W)
        for i in range(grad_y.shape[2]):
            for j in range(grad_y.shape[3]):
                win = _window(i, j, step, HH, WW)
                dxp[win] += np.einsum("nf,fchw->nchw", grad_y[:, :, i, j], W)
                dW += np.einsum("nf,nchw->fchw", grad_y[:, :, i, j], xp[win])
        return dxp, dW

    def _unpad(self, dxp):
        p, (H, W) = self.padding, self.mem["x_shape"][2:]
        return dxp[:, :, p : p + H, p : p + W]

    def backward(self, grad_y):
        dxp, dW = self._padded_grads(grad_y, self.stride, self.mem["W"])
        return self._unpad(dxp), dW, grad_y.sum(axis=(0, 2, 3))


class FlippedKernelConv2d(Conv2d):
    """A true convolution (the kernel flipped), with its consistent backward."""

    def forward(self, x, W, b):
        return super().forward(x, W[:, :, ::-1, ::-1], b)

    def backward(self, grad_y):
        dx, dW, db = super().backward(grad_y)
        return dx, dW[:, :, ::-1, ::-1], db


class FlippedBackwardConv2d(Conv2d):
    """The right forward; backward flips the kernel (the gradient of a true convolution)."""

    def backward(self, grad_y):
        dxp, dW = self._padded_grads(grad_y, self.stride, self.mem["W"][:, :, ::-1, ::-1])
        return self._unpad(dxp), dW[:, :, ::-1, ::-1], grad_y.sum(axis=(0, 2, 3))


class PaddingKeptConv2d(Conv2d):
    def backward(self, grad_y):
        dxp, dW = self._padded_grads(grad_y, self.stride, self.mem["W"])
        return dxp, dW, grad_y.sum(axis=(0, 2, 3))  # forgot to cut the padding off


class StrideIgnoredConv2d(Conv2d):
    def backward(self, grad_y):
        dxp, dW = self._padded_grads(grad_y, 1, self.mem["W"])  # windows at i, not i * stride
        return self._unpad(dxp), dW, grad_y.sum(axis=(0, 2, 3))


class MaxPool2d:
    """Max pooling in CS231n's style: no padding; the stride is the window's unless given."""

    def __init__(self, kernel_size=2, stride=None):
        self.kh, self.kw = _pair(kernel_size)
        self.stride = self.kh if stride is None else stride
        self.mem = {}

    def _windows(self, shape):
        s, (Ho, Wo) = self.stride, self.out_size(shape)
        for i in range(Ho):
            for j in range(Wo):
                yield i, j, _window(i, j, s, self.kh, self.kw)

    def out_size(self, shape):
        return 1 + (shape[2] - self.kh) // self.stride, 1 + (shape[3] - self.kw) // self.stride

    def forward(self, x):
        out = np.zeros(x.shape[:2] + self.out_size(x.shape))
        for i, j, win in self._windows(x.shape):
            out[:, :, i, j] = x[win].max(axis=(2, 3))
        self.mem = {"x": x}
        return out

    def backward(self, grad_y):
        x = self.mem["x"]
        dx = np.zeros_like(x)
        for i, j, win in self._windows(x.shape):
            mask = x[win] == x[win].max(axis=(2, 3), keepdims=True)
            dx[win] += mask * grad_y[:, :, i, j][:, :, None, None]
        return dx


class SpreadMaxPool2d(MaxPool2d):
    def backward(self, grad_y):
        x = self.mem["x"]
        dx = np.zeros_like(x)
        for i, j, win in self._windows(x.shape):  # as average pooling would
            dx[win] += grad_y[:, :, i, j][:, :, None, None] / (self.kh * self.kw)
        return dx


class OverlapAssignedMaxPool2d(MaxPool2d):
    def backward(self, grad_y):
        x = self.mem["x"]
        dx = np.zeros_like(x)
        for i, j, win in self._windows(x.shape):
            mask = x[win] == x[win].max(axis=(2, 3), keepdims=True)
            dx[win] = mask * grad_y[:, :, i, j][:, :, None, None]  # = where windows overlap
        return dx


class AvgPool2d:
    """Average pooling with zero padding counted in the average (PyTorch's default)."""

    def __init__(self, kernel_size=2, stride=2, padding=0):
        self.k, self.stride, self.padding = kernel_size, stride, padding
        self.mem = {}

    def forward(self, x):
        k, s = self.k, self.stride
        xp = _pad(x, self.padding)
        Ho, Wo = 1 + (xp.shape[2] - k) // s, 1 + (xp.shape[3] - k) // s
        out = np.zeros(x.shape[:2] + (Ho, Wo))
        for i in range(Ho):
            for j in range(Wo):
                out[:, :, i, j] = xp[:, :, i * s : i * s + k, j * s : j * s + k].mean(axis=(2, 3))
        self.mem = {"xp_shape": xp.shape, "x_shape": x.shape}
        return out

    def _padded_grad(self, grad_y, step):
        k = self.k
        dxp = np.zeros(self.mem["xp_shape"])
        for i in range(grad_y.shape[2]):
            for j in range(grad_y.shape[3]):
                dxp[:, :, i * step : i * step + k, j * step : j * step + k] += (
                    grad_y[:, :, i, j][:, :, None, None] / k**2
                )
        return dxp

    def backward(self, grad_y):
        p, (H, W) = self.padding, self.mem["x_shape"][2:]
        return self._padded_grad(grad_y, self.stride)[:, :, p : p + H, p : p + W]


class PaddingKeptAvgPool2d(AvgPool2d):
    def backward(self, grad_y):
        return self._padded_grad(grad_y, self.stride)


class StrideIgnoredAvgPool2d(AvgPool2d):
    def backward(self, grad_y):
        p, (H, W) = self.padding, self.mem["x_shape"][2:]
        return self._padded_grad(grad_y, 1)[:, :, p : p + H, p : p + W]


class BatchNorm:
    """Batch norm in training mode over (N, C) or, per channel, (N, C, H, W) input."""

    def __init__(self, eps=1e-5, momentum=0.9):
        self.eps, self.momentum = eps, momentum
        self.mem = {}

    def forward(self, x, gamma, beta):
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        s = np.sqrt(x.var(axis=axes, keepdims=True) + self.eps)
        xhat = (x - x.mean(axis=axes, keepdims=True)) / s
        self.mem = {"xhat": xhat, "s": s, "gamma": gamma.reshape(shape), "axes": axes}
        return gamma.reshape(shape) * xhat + beta.reshape(shape)

    def backward(self, grad_y):
        xhat, s, gamma, axes = (self.mem[k] for k in ("xhat", "s", "gamma", "axes"))
        m = grad_y.size // gamma.size
        dxhat = grad_y * gamma
        dx = (
            m * dxhat
            - dxhat.sum(axis=axes, keepdims=True)
            - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)
        ) / (m * s)
        return dx, (grad_y * xhat).sum(axis=axes), grad_y.sum(axis=axes)


class ConstantStatsBatchNorm(BatchNorm):
    def backward(self, grad_y):
        xhat, s, gamma, axes = (self.mem[k] for k in ("xhat", "s", "gamma", "axes"))
        dx = grad_y * gamma / s  # as if the batch mean and variance did not depend on x
        return dx, (grad_y * xhat).sum(axis=axes), grad_y.sum(axis=axes)
