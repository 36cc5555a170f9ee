"""Layers whose code takes the process down: each must fail alone, saying which phase did it.

Each bad class sits between correct ones, so a test can see that the classes
after it are still checked.
"""

import os
import signal
import sys

import numpy as np


class Relu:
    """Correct."""

    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)

    def backward(self, g):
        return g * (self.x > 0)


class ExitsInBackward(Relu):
    def backward(self, g):
        sys.exit(3)


class ExitsInForward(Relu):
    def forward(self, x):
        sys.exit("done")


class ExitsInConstructor(Relu):
    def __init__(self):
        sys.exit(1)


class OsExitInBackward(Relu):
    def backward(self, g):
        os._exit(0)


class SegfaultInBackward(Relu):
    def backward(self, g):
        os.kill(os.getpid(), signal.SIGSEGV)


class OutOfMemoryInForward(Relu):
    def forward(self, x):
        return np.ones((10**7, 10**7))  # 800 TB: NumPy raises MemoryError at once


class Tanh:
    """Correct, and last in the file."""

    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, g):
        return g * (1 - self.y**2)
