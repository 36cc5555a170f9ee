"""Layers that return the wrong kind of thing from forward or backward."""

import numpy as np


class _Relu:
    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)


class BackwardReturnsNone(_Relu):
    def backward(self, g):
        g * (self.x > 0)  # forgot the return


class BackwardReturnsStr(_Relu):
    def backward(self, g):
        return "gradient"


class BackwardReturnsList(_Relu):
    def backward(self, g):
        return (g * (self.x > 0)).tolist()


class MatmulReturnsList:
    def forward(self, x, W):
        self.x, self.W = x, W
        return x @ W

    def backward(self, g):
        return [g @ self.W.T, self.x.T @ g]


class MatmulReturnsNoneForW(MatmulReturnsList):
    def backward(self, g):
        return g @ self.W.T, None


class MatmulReturnsOneGradient(MatmulReturnsList):
    def backward(self, g):
        return g @ self.W.T


class ForwardReturnsNone:
    def forward(self, x):
        self.x = x

    def backward(self, g):
        return g


class ForwardReturnsStr(ForwardReturnsNone):
    def forward(self, x):
        return "output"


class ForwardReturnsTuple(ForwardReturnsNone):
    def forward(self, x):
        return np.maximum(x, 0), x > 0


class ForwardReturnsObjects(ForwardReturnsNone):
    def forward(self, x):
        return np.array([object()] * 3)
