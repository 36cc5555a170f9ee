"""How an op is checked: what valid inputs look like, declared once per op.

Every op class carries ``spec = OpSpec(...)`` beside its forward and vjp (see
the :mod:`npgrad.ops.dense` docstring). ``npgrad gradcheck``, ``npgrad check`` and
the test suite all draw their inputs from these declarations, so an op is
checked the moment it is registered, and no checker knows any op by name.

This module only describes inputs; it imports nothing from npgrad, so any
module that defines ops can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Domain:
    """Where an input's values may lie so that central differences are meaningful.

    Values are standard normal draws, scaled by ``scale``, then kept at least
    ``gap`` away from 0 (``positive`` folds them onto the positive side first).
    A step of 1e-6 across a kink or pole would measure the jump, not the slope.
    """

    name: str
    scale: float = 1.0
    gap: float = 0.0
    positive: bool = False

    def place(self, x: np.ndarray) -> np.ndarray:
        """Map standard normal values ``x`` into this domain."""
        x = self.scale * np.asarray(x, dtype=np.float64)
        if self.positive:
            return np.abs(x) + self.gap
        if self.gap:
            return np.where(x >= 0, x + self.gap, x - self.gap)
        return x

    def sample(self, rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
        return self.place(rng.standard_normal(tuple(shape)))


REAL = Domain("real")
WIDE = Domain("wide", scale=3.0)  # saturating functions: reach their flat tails too
POSITIVE = Domain("positive", gap=0.5, positive=True)  # pole or branch point at 0 (log, x**p)
NONZERO = Domain("nonzero", gap=0.5)  # a pole at 0 (a divisor)
KINK = Domain("away from the kink at 0", gap=0.1)  # not differentiable at 0 (relu, abs)


@dataclass
class Case:
    """One drawn check: the shape of each array input and the op's keyword parameters."""

    shapes: list[Shape]
    params: dict[str, Any] = field(default_factory=dict)


class Draw:
    """The random choices a spec's ``draw`` function makes, around a base ``shape``."""

    def __init__(self, rng: np.random.Generator, shape: Sequence[int] = (3, 4)) -> None:
        self.rng = rng
        self.shape: Shape = tuple(int(n) for n in shape) or (3,)

    def flag(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)

    def choice(self, options: Sequence[Any]) -> Any:
        """One of ``options``, keeping its Python type (``rng.choice`` would not)."""
        return options[int(self.rng.integers(len(options)))]

    def size(self, low: int = 1, high: int = 4) -> int:
        return int(self.rng.integers(low, high + 1))

    def matrix(self) -> Shape:
        """The base shape with at least two axes: ``(2, n)`` for a 1-D base."""
        return self.shape if len(self.shape) >= 2 else (2, self.shape[0])

    def axis(self) -> int:
        """An axis of the base shape, negative half the time."""
        n = len(self.shape)
        return int(self.rng.integers(-n, n))

    def axes(self) -> int | tuple[int, ...] | None:
        """Reduction axes: None (all), one axis, or a sorted tuple of several."""
        n, r = len(self.shape), self.rng.random()
        if r < 0.25:
            return None
        if r < 0.75 or n < 2:
            return self.axis()
        k = self.size(1, n)
        return tuple(int(a) for a in sorted(self.rng.choice(n, size=k, replace=False)))

    def permutation(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.rng.permutation(len(self.shape)))

    def partner(self) -> Shape:
        """A shape that broadcasts against the base shape: some axes 1, leading ones maybe dropped."""
        shape = [1 if self.flag(0.4) else n for n in self.shape]
        drop = int(self.rng.integers(0, len(shape) + 1))
        return tuple(shape[drop:]) if self.flag() else tuple(shape)


@dataclass(frozen=True)
class OpSpec:
    """How to check one op.

    * ``draw(d) -> Case``: shapes of the array inputs and keyword parameters,
      drawn with the :class:`Draw` helper ``d`` around ``d.shape``;
    * ``domains``: the :class:`Domain` of each array input (the last one
      repeats for the rest);
    * ``torch(torch, *tensors, **params)``: the same computation in PyTorch,
      given the module so that nothing here imports it.
    """

    torch: Callable[..., Any]
    draw: Callable[[Draw], Case] = lambda d: Case([d.shape])
    domains: tuple[Domain, ...] = (REAL,)

    def domain(self, i: int) -> Domain:
        return self.domains[min(i, len(self.domains) - 1)]

    def sample(
        self, rng: np.random.Generator, shape: Sequence[int] = (3, 4)
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Float64 inputs in their domains and the keyword parameters, for one check."""
        case = self.draw(Draw(rng, shape))
        arrays = [self.domain(i).sample(rng, s) for i, s in enumerate(case.shapes)]
        return arrays, case.params


# --------------------------------------------------------------------------- draw functions
# The patterns of the built-in ops. An op with needs of its own (a convolution's
# kernel, stride and padding, say) writes its draw function beside its class.


def with_params(**options: Sequence[Any]) -> Callable[[Draw], Case]:
    """One input of the base shape; each keyword parameter drawn from its options."""

    def draw(d: Draw) -> Case:
        return Case([d.shape], {k: d.choice(v) for k, v in options.items()})

    return draw


def broadcast_pair(d: Draw) -> Case:
    """Two inputs, the base shape and a partner broadcasting against it, in either order."""
    a, b = d.shape, d.partner()
    return Case([a, b] if d.flag() else [b, a])


def matmul_operands(d: Draw) -> Case:
    """``(..., n, k)`` and ``(k, m)``: batched on the left when the base shape has 3 axes."""
    left = d.matrix()
    return Case([left, (left[-1], d.size())])


def linear_operands(d: Draw) -> Case:
    """``x (..., n, k)``, ``w (k, m)`` and a bias ``b (m,)``."""
    left, m = d.matrix(), d.size()
    return Case([left, (left[-1], m), (m,)])


def one_axis(d: Draw) -> Case:
    return Case([d.shape], {"axis": d.axis()})


def reduction(d: Draw) -> Case:
    return Case([d.shape], {"axis": d.axes(), "keepdims": d.flag()})


def new_shape(d: Draw) -> Case:
    """A shape with as many elements: reversed, or flattened after the first axis."""
    s = d.shape
    target = tuple(reversed(s)) if d.flag() else ((-1,) if len(s) == 1 else (s[0], -1))
    return Case([s], {"shape": target})


def permutation(d: Draw) -> Case:
    return Case([d.shape], {"axes": None if d.flag(0.25) else d.permutation()})


def concat_partner(d: Draw) -> Case:
    """The base shape and one that differs from it only along ``axis``."""
    axis = d.axis()
    other = list(d.shape)
    other[axis] = d.size(1, 3)
    return Case([d.shape, tuple(other)], {"axis": axis})


def index(d: Draw) -> Case:
    """Strided slices, or an integer array with repeats (their gradients must add up)."""
    s = d.shape
    if d.flag():
        idx: Any = (slice(None, None, 2),) + (slice(1, None),) * (len(s) > 1)
    else:
        idx = d.rng.integers(0, s[0], size=s[0] + 2)
    return Case([s], {"index": idx})


def class_targets(d: Draw) -> Case:
    """Logits ``(n, c)`` with integer labels or probability rows, mean or sum."""
    n, c = d.matrix()[0], max(d.matrix()[-1], 2)
    target: np.ndarray  # integer labels or float probability rows
    if d.flag():
        target = d.rng.integers(0, c, size=n)
    else:
        target = d.rng.dirichlet(np.ones(c), size=n)
    return Case([(n, c)], {"target": target, "reduction": d.choice(["mean", "sum"])})
