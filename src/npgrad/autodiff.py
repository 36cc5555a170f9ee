"""Reverse-mode automatic differentiation over the op table.

A :class:`Tensor` wraps a NumPy array. Every operation on tensors that require
gradients records one :class:`Node` (the op, what its forward saved, the input
tensors). :meth:`Tensor.backward` walks those nodes in reverse topological order
with an explicit stack, never recursion, so graphs of any depth work, and
calls each op's ``vjp`` from :mod:`npgrad.ops`. Gradients of inputs that were
broadcast are summed back to their shapes here, once, by
:func:`npgrad.ops.unbroadcast`.

Gradient accumulation: ``backward`` *adds* into ``.grad`` of leaf tensors, as
PyTorch does, so gradients of several backward calls accumulate until you
reset them with ``t.grad = None``, ``t.zero_grad()`` or an optimizer's /
module's ``zero_grad()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import ops
from .errors import GradError

_GRAD_ENABLED = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context in which operations record no graph (evaluation, optimizer updates)."""
    global _GRAD_ENABLED
    previous, _GRAD_ENABLED = _GRAD_ENABLED, False
    try:
        yield
    finally:
        _GRAD_ENABLED = previous


def is_grad_enabled() -> bool:
    return _GRAD_ENABLED


class Node:
    """One recorded op application: what backward needs, nothing more."""

    __slots__ = ("op", "saved", "parents", "needs")

    def __init__(
        self, op: type[ops.Op], saved: Any, parents: tuple[Tensor, ...], needs: tuple[bool, ...]
    ) -> None:
        self.op = op
        self.saved = saved
        self.parents = parents
        self.needs = needs  # which parents want a gradient, so vjps can skip work


class Tensor:
    """An n-dimensional array that can record operations for differentiation."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "_retain", "name", "__weakref__")
    # Make ``ndarray <op> Tensor`` defer to Tensor's reflected operators.
    __array_ufunc__ = None

    def __init__(
        self,
        data: Any,
        requires_grad: bool = False,
        dtype: Any = None,
        name: str | None = None,
    ) -> None:
        arr = np.array(data, dtype=dtype) if dtype is not None else np.asarray(data)
        if requires_grad and not np.issubdtype(arr.dtype, np.floating):
            raise GradError(
                f"only floating-point tensors can require gradients, got dtype {arr.dtype}; "
                "pass dtype=np.float32 or np.float64"
            )
        self.data: np.ndarray = arr
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self._node: Node | None = None
        self._retain = False
        self.name = name

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def op_name(self) -> str | None:
        """Name of the op that produced this tensor (None for leaves)."""
        return self._node.op.name if self._node is not None else None

    @property
    def parents(self) -> tuple[Tensor, ...]:
        return self._node.parents if self._node is not None else ()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        extra = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.data.dtype}{extra})"

    def numpy(self) -> np.ndarray:
        """The underlying array (not a copy)."""
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        """A new leaf tensor sharing the data, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype: Any) -> Tensor:
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    def zero_grad(self) -> None:
        self.grad = None

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this non-leaf tensor after backward (for inspection)."""
        self._retain = True
        return self

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and not np.issubdtype(self.data.dtype, np.floating):
            raise GradError(f"only floating-point tensors can require gradients ({self.dtype})")
        self.requires_grad = flag
        return self

    # ------------------------------------------------------------------ autodiff
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires it.

        ``grad`` is the upstream gradient (defaults to 1 for a one-element tensor).
        The graph's saved arrays are freed afterwards unless ``retain_graph``.
        """
        if not self.requires_grad:
            raise GradError(
                "backward() on a tensor that does not require grad: create the inputs "
                "with requires_grad=True (and not inside no_grad())"
            )
        if grad is None:
            if self.data.size != 1:
                raise GradError(
                    f"backward() without a gradient needs a one-element output, got shape "
                    f"{self.shape}; pass grad=... of that shape or reduce with .sum()/.mean()"
                )
            seed = np.ones_like(self.data)
        else:
            seed = np.array(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if seed.shape != self.shape:
                raise GradError(f"backward(grad): grad has shape {seed.shape}, output {self.shape}")

        order = topological_order(self)
        grads: dict[int, np.ndarray] = {id(self): seed}
        handed_out: set[int] = set()
        for t in reversed(order):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            node = t._node
            if node is None or t._retain:
                _accumulate_leaf(t, g, handed_out)
                if node is None:
                    continue
            if node.saved is _FREED:
                raise GradError(
                    "backward through a graph whose saved arrays were freed by an earlier "
                    "backward(); pass retain_graph=True to the first call"
                )
            in_grads = node.op.vjp(node.saved, g, node.needs)
            for p, gi in zip(node.parents, in_grads):
                if gi is None or not p.requires_grad:
                    continue
                if gi.shape != p.data.shape:
                    gi = ops.unbroadcast(gi, p.data.shape)
                k = id(p)
                prev = grads.get(k)
                # Never in place: gi may alias an array that another input also received.
                grads[k] = gi if prev is None else prev + gi
            if not retain_graph:
                node.saved = _FREED

    # ------------------------------------------------------------------ operators
    def __add__(self, other: Any) -> Tensor:
        return apply(ops.Add, self, _lift(other, self))

    def __radd__(self, other: Any) -> Tensor:
        return apply(ops.Add, _lift(other, self), self)

    def __sub__(self, other: Any) -> Tensor:
        return apply(ops.Sub, self, _lift(other, self))

    def __rsub__(self, other: Any) -> Tensor:
        return apply(ops.Sub, _lift(other, self), self)

    def __mul__(self, other: Any) -> Tensor:
        return apply(ops.Mul, self, _lift(other, self))

    def __rmul__(self, other: Any) -> Tensor:
        return apply(ops.Mul, _lift(other, self), self)

    def __truediv__(self, other: Any) -> Tensor:
        return apply(ops.Div, self, _lift(other, self))

    def __rtruediv__(self, other: Any) -> Tensor:
        return apply(ops.Div, _lift(other, self), self)

    def __matmul__(self, other: Any) -> Tensor:
        return apply(ops.Matmul, self, _lift(other, self))

    def __rmatmul__(self, other: Any) -> Tensor:
        return apply(ops.Matmul, _lift(other, self), self)

    def __pow__(self, p: float) -> Tensor:
        if isinstance(p, Tensor) or np.ndim(p) != 0:
            raise GradError("only a constant scalar exponent is supported: x ** 2.0")
        return apply(ops.Pow, self, p=float(p))

    def __neg__(self) -> Tensor:
        return apply(ops.Neg, self)

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        return apply(ops.GetItem, self, index=index)

    # Comparisons give plain boolean arrays: they have no gradient.
    def __gt__(self, other: Any) -> np.ndarray:
        return self.data > _data(other)

    def __lt__(self, other: Any) -> np.ndarray:
        return self.data < _data(other)

    def __ge__(self, other: Any) -> np.ndarray:
        return self.data >= _data(other)

    def __le__(self, other: Any) -> np.ndarray:
        return self.data <= _data(other)

    __hash__ = object.__hash__

    # ------------------------------------------------------------------ methods
    @property
    def T(self) -> Tensor:
        return apply(ops.Transpose, self, axes=None)

    def transpose(self, *axes: int) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return apply(ops.Transpose, self, axes=tuple(axes) if axes else None)

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return apply(ops.Reshape, self, shape=tuple(shape))

    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return apply(ops.Sum, self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return apply(ops.Mean, self, axis=axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return apply(ops.Max, self, axis=axis, keepdims=keepdims)

    def exp(self) -> Tensor:
        return apply(ops.Exp, self)

    def log(self) -> Tensor:
        return apply(ops.Log, self)

    def relu(self) -> Tensor:
        return apply(ops.Relu, self)

    def sigmoid(self) -> Tensor:
        return apply(ops.Sigmoid, self)

    def tanh(self) -> Tensor:
        return apply(ops.Tanh, self)

    def softmax(self, axis: int = -1) -> Tensor:
        return apply(ops.Softmax, self, axis=axis)

    def log_softmax(self, axis: int = -1) -> Tensor:
        return apply(ops.LogSoftmax, self, axis=axis)


_FREED = object()


def topological_order(root: Tensor, grad_only: bool = True) -> list[Tensor]:
    """Post-order of the graph below ``root`` (inputs before outputs), iteratively.

    The one graph walk in npgrad: backward follows only inputs that require
    gradients (``grad_only``); drawing a graph (:mod:`npgrad.graph`) follows all.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        node = t._node
        if node is not None:
            for p in node.parents:
                if (p.requires_grad or not grad_only) and id(p) not in visited:
                    stack.append((p, False))
    return order


def _accumulate_leaf(t: Tensor, g: np.ndarray, handed_out: set[int]) -> None:
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    elif not g.flags.owndata or not g.flags.writeable or id(g) in handed_out:
        # g is a view or was given to another tensor: copy, so that in-place
        # edits of one .grad (clipping, accumulation) never reach another.
        g = g.copy()
    if t.grad is None:
        t.grad = g
        handed_out.add(id(g))
    else:
        t.grad += g


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _lift(x: Any, like: Tensor) -> Tensor:
    """Wrap a constant operand; Python scalars take the tensor's dtype (no upcast)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float)) and np.issubdtype(like.data.dtype, np.floating):
        return Tensor(np.asarray(x, dtype=like.data.dtype))
    return Tensor(np.asarray(x))


def apply(op: type[ops.Op], *inputs: Tensor, **params: Any) -> Tensor:
    """Run ``op`` forward on tensors and, if any input requires grad, record it."""
    out_data, saved = op.forward(*[t.data for t in inputs], **params)
    out = Tensor.__new__(Tensor)
    out.data = out_data
    out.grad = None
    out._retain = False
    out.name = None
    needs = tuple([t.requires_grad for t in inputs])
    if _GRAD_ENABLED and True in needs:
        out.requires_grad = True
        out._node = Node(op, saved, inputs, needs)
    else:
        out.requires_grad = False
        out._node = None
    return out


def as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Create a leaf tensor. NumPy arrays keep their dtype unless ``dtype`` is given."""
    if isinstance(data, Tensor):
        data = data.data
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


# ---------------------------------------------------------------------- module-level functions


def matmul(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(ops.Matmul, a, _lift(b, a))


def linear(x: Any, w: Any, b: Any) -> Tensor:
    """``x @ w + b`` as one fused node (see :class:`npgrad.ops.Linear`)."""
    x = as_tensor(x)
    return apply(ops.Linear, x, _lift(w, x), _lift(b, x))


def add(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(ops.Add, a, _lift(b, a))


def sub(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(ops.Sub, a, _lift(b, a))


def mul(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(ops.Mul, a, _lift(b, a))


def div(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(ops.Div, a, _lift(b, a))


def neg(x: Any) -> Tensor:
    return apply(ops.Neg, as_tensor(x))


def pow(x: Any, p: float) -> Tensor:  # noqa: A001 - mirrors the op's name
    return as_tensor(x) ** p


def exp(x: Any) -> Tensor:
    return apply(ops.Exp, as_tensor(x))


def log(x: Any) -> Tensor:
    return apply(ops.Log, as_tensor(x))


def relu(x: Any) -> Tensor:
    return apply(ops.Relu, as_tensor(x))


def sigmoid(x: Any) -> Tensor:
    return apply(ops.Sigmoid, as_tensor(x))


def tanh(x: Any) -> Tensor:
    return apply(ops.Tanh, as_tensor(x))


def softmax(x: Any, axis: int = -1) -> Tensor:
    return apply(ops.Softmax, as_tensor(x), axis=axis)


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    return apply(ops.LogSoftmax, as_tensor(x), axis=axis)


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return as_tensor(x).sum(axis=axis, keepdims=keepdims)


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    return as_tensor(x).mean(axis=axis, keepdims=keepdims)


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return as_tensor(x).max(axis=axis, keepdims=keepdims)


def reshape(x: Any, shape: Sequence[int]) -> Tensor:
    return as_tensor(x).reshape(tuple(shape))


def transpose(x: Any, axes: Sequence[int] | None = None) -> Tensor:
    return apply(ops.Transpose, as_tensor(x), axes=None if axes is None else tuple(axes))


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    ts = [as_tensor(t) for t in tensors]
    if not ts:
        raise GradError("concatenate needs at least one tensor")
    return apply(ops.Concatenate, *ts, axis=axis)


def getitem(x: Any, index: Any) -> Tensor:
    return as_tensor(x)[index]


def cross_entropy(logits: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Stable fused softmax cross-entropy; ``target`` is class indices (N,) or (N, C)."""
    target = target.data if isinstance(target, Tensor) else np.asarray(target)
    return apply(ops.CrossEntropy, as_tensor(logits), target=target, reduction=reduction)
