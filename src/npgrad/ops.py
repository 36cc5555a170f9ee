r"""The op table: every differentiable operation, defined exactly once.

An op is a class with two static methods and a docstring:

* ``forward(*arrays, **params) -> (out, saved)`` computes the output from NumPy
  arrays and returns whatever the backward pass needs as ``saved``;
* ``vjp(saved, g, needs) -> tuple`` maps the upstream gradient ``g`` (shape of
  ``out``) to one gradient per array input (``None`` where ``needs`` says the
  input does not want one);
* the docstring derives the vjp with differentials and the trace trick, the
  method of the exercise (see ``docs/derivations.md``, one section per op).

Conventions that keep each op small:

* For a scalar loss :math:`f`, the gradient :math:`G = \partial f/\partial Y`
  is defined by :math:`df = \mathrm{tr}(G^T dY)`. A vjp rewrites
  :math:`\mathrm{tr}(G^T dY)` as :math:`\sum_i \mathrm{tr}(G_i^T dX_i)` and
  reads off :math:`G_i`.
* Element-wise ops return gradients in the *broadcast* shape of their output.
  Summing a gradient back to the shape of an input that was broadcast is done
  once, by the engine (:func:`unbroadcast`), not in every op.

Both :mod:`npgrad.layers` (the exercise's classes) and :mod:`npgrad.autodiff`
(the autodiff tape) call these methods; there is no other copy of any
gradient formula in npgrad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .errors import ShapeError

Array = np.ndarray
Grads = tuple[Array | None, ...]

OPS: dict[str, type[Op]] = {}
"""Registry of every op by name; tests and ``npgrad gradcheck`` iterate over it."""


class Op:
    """Base class of all ops. Subclasses set ``name`` and are registered."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            OPS[cls.name] = cls

    # Each op defines these two as static methods, with its own argument list:
    # forward(*arrays, **params) -> (out, saved); vjp(saved, g, needs) -> grads.
    forward: ClassVar[Callable[..., tuple[Array, Any]]]
    vjp: ClassVar[Callable[..., Grads]]


def unbroadcast(g: Array, shape: tuple[int, ...]) -> Array:
    r"""Sum ``g`` (shape of a broadcast result) back to ``shape``.

    If :math:`Y = X` broadcast along an axis, then
    :math:`\mathrm{tr}(G^T dY) = \sum_{\text{copies}} \mathrm{tr}(G_k^T dX)`:
    every copy of :math:`dX` meets its own slice of :math:`G`, so the gradient
    of :math:`X` is the sum of those slices. This is the only place npgrad
    implements that rule.
    """
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _swap(a: Array) -> Array:
    return a.swapaxes(-1, -2)


def _norm_axes(axis: int | tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(sorted(a % ndim if ndim else 0 for a in axis))


def _expand_reduced(g: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    """Re-insert the reduced axes into ``g`` so it broadcasts against the input."""
    if keepdims or not axes:
        return g
    return np.expand_dims(g, axes)


# --------------------------------------------------------------------------- linear algebra


class Matmul(Op):
    r"""Matrix product :math:`Y = AB` (NumPy ``@`` semantics, batched and 1-D too).

    Derivation (docs/derivations.md#matmul):
    :math:`dY = dA\,B + A\,dB`, so

    .. math::
        df = \mathrm{tr}(G^T dA\,B) + \mathrm{tr}(G^T A\,dB)
           = \mathrm{tr}((G B^T)^T dA) + \mathrm{tr}((A^T G)^T dB),

    using :math:`\mathrm{tr}(XY) = \mathrm{tr}(YX)`. Hence
    :math:`\partial f/\partial A = G B^T` and :math:`\partial f/\partial B = A^T G`.
    Batch dimensions that were broadcast are summed by the engine.
    """

    name = "matmul"

    @staticmethod
    def forward(a: Array, b: Array) -> tuple[Array, Any]:
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError("matmul needs arrays with at least one dimension, got a scalar")
        ka, kb = a.shape[-1], b.shape[0] if b.ndim == 1 else b.shape[-2]
        if ka != kb:
            raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} do not align ({ka} != {kb})")
        return a @ b, (a, b)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        a, b = saved
        # Promote 1-D operands to matrices the way NumPy does, so one formula serves all.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g[..., None] if b.ndim == 1 else g
        if a.ndim == 1:
            g2 = g2[..., None, :]
        ga = gb = None
        if needs[0]:
            ga = g2 @ _swap(b2)
            if a.ndim == 1:
                ga = ga[..., 0, :]
        if needs[1]:
            gb = _swap(a2) @ g2
            if b.ndim == 1:
                gb = gb[..., 0]
        return ga, gb


class Linear(Op):
    r"""Affine map :math:`Y = XW + \mathbf{1} b^T` (a dense layer), fused into one node.

    Derivation (docs/derivations.md#linear): it is a matmul followed by a
    broadcast add, :math:`dY = dX\,W + X\,dW + \mathbf{1}\,db^T`, so the gradients
    are :math:`G W^T`, :math:`X^T G` (:class:`Matmul`'s vjp, called, not restated)
    and :math:`G^T\mathbf{1}` (:class:`Add`'s :math:`G`, summed over the batch by the
    engine's single broadcasting rule). Fusing saves a graph node and adds the
    bias in place into the fresh product, which matters at small batch sizes.
    """

    name = "linear"

    @staticmethod
    def forward(x: Array, w: Array, b: Array) -> tuple[Array, Any]:
        y, saved = Matmul.forward(x, w)
        if np.result_type(y, b) == y.dtype:
            y += b  # y is a fresh product: nobody else holds it
        else:
            y = y + b
        return y, saved

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True, True)) -> Grads:
        gx, gw = Matmul.vjp(saved, g, needs[:2])
        return gx, gw, (g if needs[2] else None)


# --------------------------------------------------------------------------- element-wise binary


class Add(Op):
    r"""Sum :math:`Y = A + B` with broadcasting.

    Derivation (docs/derivations.md#add-and-sub): :math:`dY = dA + dB`, so
    :math:`df = \mathrm{tr}(G^T dA) + \mathrm{tr}(G^T dB)` and both gradients
    are :math:`G` (summed over broadcast axes by the engine).
    """

    name = "add"

    @staticmethod
    def forward(a: Array, b: Array) -> tuple[Array, Any]:
        return a + b, None

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        return g, g


class Sub(Op):
    r"""Difference :math:`Y = A - B` with broadcasting.

    Derivation (docs/derivations.md#add-and-sub): :math:`dY = dA - dB`, so the
    gradients are :math:`G` and :math:`-G`.
    """

    name = "sub"

    @staticmethod
    def forward(a: Array, b: Array) -> tuple[Array, Any]:
        return a - b, None

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        return g, (-g if needs[1] else None)


class Mul(Op):
    r"""Element-wise product :math:`Y = A \odot B` with broadcasting.

    Derivation (docs/derivations.md#mul): :math:`dY = dA \odot B + A \odot dB`;
    with :math:`\mathrm{tr}(G^T(X \odot Y)) = \mathrm{tr}((G \odot X)^T Y)`,

    .. math:: df = \mathrm{tr}((G \odot B)^T dA) + \mathrm{tr}((G \odot A)^T dB).
    """

    name = "mul"

    @staticmethod
    def forward(a: Array, b: Array) -> tuple[Array, Any]:
        return a * b, (a, b)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        a, b = saved
        return (g * b if needs[0] else None), (g * a if needs[1] else None)


class Div(Op):
    r"""Element-wise quotient :math:`Y = A \oslash B` with broadcasting.

    Derivation (docs/derivations.md#div): :math:`dY = dA \oslash B - A \odot dB \oslash B^{2}`,
    so :math:`\partial f/\partial A = G \oslash B` and
    :math:`\partial f/\partial B = -G \odot A \oslash B^{2} = -G \odot Y \oslash B`.
    """

    name = "div"

    @staticmethod
    def forward(a: Array, b: Array) -> tuple[Array, Any]:
        y = a / b
        return y, (b, y)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        b, y = saved
        ga = g / b
        return (ga if needs[0] else None), (-ga * y if needs[1] else None)


# --------------------------------------------------------------------------- element-wise unary


class Neg(Op):
    r"""Negation :math:`Y = -X`: :math:`dY = -dX`, so the gradient is :math:`-G`
    (docs/derivations.md#neg)."""

    name = "neg"

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        return -x, None

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (-g,)


class Pow(Op):
    r"""Power with a constant exponent :math:`Y = X^{p}` (element-wise).

    Derivation (docs/derivations.md#pow): :math:`dY = p X^{p-1} \odot dX`, so
    :math:`\partial f/\partial X = p\, G \odot X^{p-1}`.
    """

    name = "pow"

    @staticmethod
    def forward(x: Array, p: float = 2.0) -> tuple[Array, Any]:
        return x**p, (x, p)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        x, p = saved
        return (g * (p * x ** (p - 1)),)


class Exp(Op):
    r"""Exponential :math:`Y = \exp(X)`.

    Derivation (docs/derivations.md#exp): :math:`dY = \exp(X) \odot dX = Y \odot dX`,
    so :math:`\partial f/\partial X = G \odot Y`. The output is saved, not recomputed.
    """

    name = "exp"

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        y = np.exp(x)
        return y, y

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g * saved,)


class Log(Op):
    r"""Natural logarithm :math:`Y = \log(X + \epsilon)` (``eps`` defaults to 0).

    Derivation (docs/derivations.md#log): :math:`dY = dX \oslash (X + \epsilon)`, so
    :math:`\partial f/\partial X = G \oslash (X + \epsilon)`.

    Non-positive inputs give ``nan``/``-inf`` without raising, as NumPy, PyTorch
    and TensorFlow do, so checks against frameworks compare like with like. The
    exercise's ``Log`` layer uses ``eps = 1e-12``.
    """

    name = "log"

    @staticmethod
    def forward(x: Array, eps: float = 0.0) -> tuple[Array, Any]:
        xe = x + eps if eps else x
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(xe), xe

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (g / saved,)


class Relu(Op):
    r"""Rectifier :math:`Y = \max(X, 0)` (element-wise).

    Derivation (docs/derivations.md#relu): :math:`dY = \mathbb{1}[X>0] \odot dX`, so
    :math:`\partial f/\partial X = G \odot \mathbb{1}[X>0]`. The mask is read off the
    output (:math:`Y>0 \iff X>0`), so nothing beyond the output is kept.
    """

    name = "relu"

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        y = np.maximum(x, 0)
        return y, y

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g * (saved > 0),)


class Sigmoid(Op):
    r"""Logistic function :math:`Y = 1/(1+\exp(-X))`, computed without overflow.

    Derivation (docs/derivations.md#sigmoid): :math:`dY = Y \odot (1-Y) \odot dX`, so
    :math:`\partial f/\partial X = G \odot Y \odot (1 - Y)`.
    """

    name = "sigmoid"

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        # exp(-|x|) never overflows; pick the algebraically equal form per sign.
        e = np.exp(-np.abs(x))
        y = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return y, y

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g * saved * (1 - saved),)


class Tanh(Op):
    r"""Hyperbolic tangent :math:`Y = \tanh(X)`.

    Derivation (docs/derivations.md#tanh): :math:`dY = (1 - Y^{2}) \odot dX`, so
    :math:`\partial f/\partial X = G \odot (1 - Y^{2})`.
    """

    name = "tanh"

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        y = np.tanh(x)
        return y, y

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g * (1 - saved * saved),)


# --------------------------------------------------------------------------- normalisations


class Softmax(Op):
    r"""Softmax over ``axis``: :math:`s = e^{x} / (\sum_j e^{x_j} + \epsilon)` per row.

    Computed as :math:`e^{x-m} / (\sum_j e^{x_j-m} + \epsilon e^{-m})` with
    :math:`m` the row maximum: algebraically identical (so the exercise's
    ``eps = 1e-12`` version is reproduced wherever it is finite) but it never
    overflows.

    Derivation (docs/derivations.md#softmax): for one row, with
    :math:`S = \sum_j e^{x_j} + \epsilon`,
    :math:`ds = s \odot dx - s\,(s^T dx)` (the :math:`\epsilon` only enters through
    :math:`s`). Then

    .. math::
        df = g^T ds = (g \odot s)^T dx - (g^T s)(s^T dx)
           = \big(s \odot (g - (g^T s)\mathbf{1})\big)^T dx,

    so :math:`\partial f/\partial x = s \odot (g - \langle g, s \rangle)`. This is the
    product of the Jacobian :math:`\mathrm{diag}(s) - s s^T` with :math:`g`, computed
    in :math:`O(c)` per row instead of building the :math:`(N, c, c)` Jacobian.
    """

    name = "softmax"

    @staticmethod
    def forward(x: Array, axis: int = -1, eps: float = 0.0) -> tuple[Array, Any]:
        m = x.max(axis=axis, keepdims=True)
        e = np.exp(x - m)
        denom = e.sum(axis=axis, keepdims=True)
        if eps:
            # eps * e^{-m} overflows to inf only where e^x underflows to 0 anyway,
            # giving 0 as the unstabilised formula does.
            with np.errstate(over="ignore"):
                denom = denom + eps * np.exp(-m)
        e /= denom
        return e, (e, axis)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        s, axis = saved
        gs = g * s
        return (gs - s * gs.sum(axis=axis, keepdims=True),)


class LogSoftmax(Op):
    r"""Log-softmax over ``axis``: :math:`y = x - m - \log\sum_j e^{x_j - m}` (stable).

    Derivation (docs/derivations.md#log_softmax): :math:`y = x - \mathbf{1}\,\mathrm{lse}(x)`
    and :math:`d\,\mathrm{lse}(x) = s^T dx` with :math:`s = \mathrm{softmax}(x)`, so
    :math:`dy = dx - \mathbf{1}\, s^T dx` and

    .. math:: df = g^T dx - (g^T\mathbf{1})(s^T dx) = (g - s\, \textstyle\sum_j g_j)^T dx.
    """

    name = "log_softmax"

    @staticmethod
    def forward(x: Array, axis: int = -1) -> tuple[Array, Any]:
        z = x - x.max(axis=axis, keepdims=True)
        y = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
        return y, (y, axis)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        y, axis = saved
        return (g - np.exp(y) * g.sum(axis=axis, keepdims=True),)


class CrossEntropy(Op):
    r"""Fused, stable softmax cross-entropy of logits ``x`` (N, C) against ``target``.

    ``target`` is either integer class indices (N,) or a one-hot/probability
    matrix T (N, C). Per row, :math:`\ell = -\sum_j T_j \log s_j` with
    :math:`s = \mathrm{softmax}(x)`; ``reduction="mean"`` divides the sum over rows
    by N, ``"sum"`` does not.

    Derivation (docs/derivations.md#cross_entropy): :math:`\log s = x - \mathbf{1}\,\mathrm{lse}(x)`,
    so :math:`\ell = -T^T x + (T^T\mathbf{1})\,\mathrm{lse}(x)` and, with
    :math:`d\,\mathrm{lse} = s^T dx`,

    .. math:: d\ell = \big(-T + (T^T \mathbf{1})\, s\big)^T dx.

    For a one-hot or probability row :math:`T^T\mathbf{1} = 1` and the gradient is
    :math:`s - T`; with the mean over N rows it is :math:`(S - T)/N`. Fusing avoids
    both the :math:`\log 0` of a separate softmax and log and the Jacobian of softmax.
    The upstream gradient :math:`g` is a scalar and simply scales the result.
    """

    name = "cross_entropy"

    @staticmethod
    def forward(
        x: Array, target: Array | None = None, reduction: str = "mean"
    ) -> tuple[Array, Any]:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if x.ndim != 2:
            raise ShapeError(f"cross_entropy expects logits of shape (N, C), got {x.shape}")
        if target is None:
            raise ShapeError("cross_entropy needs a target")
        target = np.asarray(target)
        n = x.shape[0]
        z = x - x.max(axis=1, keepdims=True)
        e = np.exp(z)
        sumexp = e.sum(axis=1, keepdims=True)
        lse = np.log(sumexp)  # log p = z - lse, never formed for integer labels
        if target.ndim == 1:
            if not np.issubdtype(target.dtype, np.integer):
                raise ShapeError("1-D cross_entropy targets must be integer class indices")
            if target.shape[0] != n:
                raise ShapeError(f"cross_entropy: {n} rows of logits but {target.shape[0]} labels")
            if n and (target.min() < 0 or target.max() >= x.shape[1]):
                raise ShapeError(f"cross_entropy: labels must lie in [0, {x.shape[1]})")
            loss = lse.sum() - z[np.arange(n), target].sum()
        elif target.shape == x.shape:
            loss = -(target * (z - lse)).sum()
        else:
            raise ShapeError(
                f"cross_entropy: target of shape {target.shape} fits neither (N,) indices "
                f"nor (N, C) probabilities for logits {x.shape}"
            )
        scale = 1.0 / n if reduction == "mean" and n else 1.0
        e /= sumexp
        out = np.asarray(loss * scale, dtype=x.dtype)
        return out, (e, target, scale)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        s, target, scale = saved
        if target.ndim == 1:
            d = s.copy()
            d[np.arange(d.shape[0]), target] -= 1
        else:
            # in the logits' dtype: a float64 target must not upcast the whole backward pass
            d = (s * target.sum(axis=1, keepdims=True) - target).astype(s.dtype, copy=False)
        d *= g * scale
        return (d,)


# --------------------------------------------------------------------------- reductions


class Sum(Op):
    r"""Sum over ``axis`` (all axes when None), optionally keeping dims.

    Derivation (docs/derivations.md#sum): :math:`y = \mathbf{1}^T X` gives
    :math:`df = g^T \mathbf{1}^T dX = \mathrm{tr}((\mathbf{1} g^T)^T dX)`: every input
    element receives the gradient of the sum it fell into (a broadcast of :math:`g`).
    """

    name = "sum"

    @staticmethod
    def forward(
        x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> tuple[Array, Any]:
        axes = _norm_axes(axis, x.ndim)
        return np.asarray(x.sum(axis=axes, keepdims=keepdims)), (x.shape, axes, keepdims)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        shape, axes, keepdims = saved
        return (np.broadcast_to(_expand_reduced(g, axes, keepdims), shape),)


class Mean(Op):
    r"""Mean over ``axis``: the sum divided by the number :math:`n` of reduced elements.

    Derivation (docs/derivations.md#mean): :math:`y = \tfrac{1}{n}\mathbf{1}^T X`, so
    :math:`df = \tfrac{1}{n} g^T \mathbf{1}^T dX = \mathrm{tr}((\tfrac{1}{n}\mathbf{1} g^T)^T dX)`:
    each element receives :math:`g/n`.
    """

    name = "mean"

    @staticmethod
    def forward(
        x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> tuple[Array, Any]:
        axes = _norm_axes(axis, x.ndim)
        n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        return np.asarray(x.mean(axis=axes, keepdims=keepdims)), (x.shape, axes, keepdims, n)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        shape, axes, keepdims, n = saved
        return (np.broadcast_to(_expand_reduced(g, axes, keepdims) / n, shape),)


class Max(Op):
    r"""Maximum over ``axis`` (all axes when None), optionally keeping dims.

    Derivation (docs/derivations.md#max): locally :math:`y = x_k` for the arg-max
    :math:`k`, so :math:`dy = dx_k` and the gradient is :math:`g` at the arg-max and 0
    elsewhere. At ties the max is not differentiable; npgrad splits :math:`g`
    equally among the tied elements (the subgradient ``torch.amax`` uses), which
    is the average of the one-sided derivatives.
    """

    name = "max"

    @staticmethod
    def forward(
        x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> tuple[Array, Any]:
        axes = _norm_axes(axis, x.ndim)
        ykd = x.max(axis=axes, keepdims=True)
        y = ykd if keepdims else np.squeeze(ykd, axis=axes)
        return np.asarray(y), (x, ykd, axes, keepdims)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        x, ykd, axes, keepdims = saved
        mask = (x == ykd).astype(g.dtype)
        mask /= mask.sum(axis=axes, keepdims=True)
        return (mask * _expand_reduced(g, axes, keepdims),)


# --------------------------------------------------------------------------- shape ops


class Reshape(Op):
    r"""Reshape: :math:`\mathrm{vec}(Y) = \mathrm{vec}(X)`, so :math:`df = \mathrm{vec}(G)^T \mathrm{vec}(dX)`
    and the gradient is :math:`G` reshaped back (docs/derivations.md#reshape)."""

    name = "reshape"

    @staticmethod
    def forward(x: Array, shape: tuple[int, ...] = (-1,)) -> tuple[Array, Any]:
        try:
            return x.reshape(shape), x.shape
        except ValueError as exc:
            raise ShapeError(f"cannot reshape array of shape {x.shape} into {shape}") from exc

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g.reshape(saved),)


class Transpose(Op):
    r"""Axis permutation (reversal when ``axes`` is None). For matrices
    :math:`d(X^T) = (dX)^T` and :math:`\mathrm{tr}(G^T dX^T) = \mathrm{tr}(G\, dX) = \mathrm{tr}((G^T)^T dX)`:
    the gradient is :math:`G` permuted back by the inverse permutation
    (docs/derivations.md#transpose)."""

    name = "transpose"

    @staticmethod
    def forward(x: Array, axes: tuple[int, ...] | None = None) -> tuple[Array, Any]:
        return x.transpose(axes), axes

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g.transpose(None if saved is None else np.argsort(saved)),)


class Concatenate(Op):
    r"""Concatenation along ``axis``: :math:`Y = [X_1, \dots, X_k]`, so
    :math:`df = \sum_i \mathrm{tr}(G_i^T dX_i)` where :math:`G_i` is the block of
    :math:`G` that :math:`X_i` occupies: the gradient is :math:`G` split back
    (docs/derivations.md#concatenate)."""

    name = "concatenate"

    @staticmethod
    def forward(*xs: Array, axis: int = 0) -> tuple[Array, Any]:
        out = np.concatenate(xs, axis=axis)
        return out, (np.cumsum([x.shape[axis] for x in xs])[:-1], axis)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = ()) -> Grads:
        cuts, axis = saved
        return tuple(np.split(g, cuts, axis=axis))


class GetItem(Op):
    r"""Indexing and slicing :math:`Y = X[\mathrm{idx}]` (basic and advanced NumPy indices).

    Derivation (docs/derivations.md#getitem): :math:`Y = P X` for a 0/1 selection
    matrix :math:`P`, so :math:`\partial f/\partial X = P^T G`: scatter :math:`G` back
    into zeros, *adding* where an index repeats (``np.add.at``).
    """

    name = "getitem"

    @staticmethod
    def forward(x: Array, index: Any = ()) -> tuple[Array, Any]:
        return np.asarray(x[index]), (x.shape, x.dtype, index)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        shape, dtype, index = saved
        gx = np.zeros(shape, dtype=np.result_type(dtype, g.dtype))
        if _is_basic_index(index):
            gx[index] += g  # a basic index never selects an element twice
        else:
            np.add.at(gx, index, g)
        return (gx,)


def _is_basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)
