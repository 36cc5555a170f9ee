import numpy as np

raise ValueError("oops at import")


class Relu:
    def forward(self, x):
        return np.maximum(x, 0)

    def backward(self, g):
        return g
