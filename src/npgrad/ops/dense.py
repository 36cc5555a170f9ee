r"""The dense ops: matrix products, element-wise functions, losses, reductions and shapes.

Each is a class registered in :data:`npgrad.ops.base.OPS` (see :mod:`npgrad.ops.base`
for what an op is and the conventions that keep each one small), with its derivation
in its docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from . import parallel
from . import specs as opspecs
from .base import Array, Grads, Op, call, unbroadcast
from .device import namespace, on_host, uniform
from .specs import KINK, NONZERO, POSITIVE, REAL, WIDE, OpSpec


def _swap(a: Array) -> Array:
    return a.swapaxes(-1, -2)


def _unsqueeze(a: Array, axis: int) -> Array:
    """``a`` with a new axis of length 1 at ``axis`` (a view, by reshape: Tensors have it too)."""
    shape = list(a.shape)
    shape.insert(axis % (len(shape) + 1), 1)
    return a.reshape(tuple(shape))


def _squeeze(a: Array, axis: int) -> Array:
    shape = list(a.shape)
    del shape[axis]
    return a.reshape(tuple(shape))


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
    shape = list(g.shape)
    for a in axes:  # sorted, so each lands at its final position
        shape.insert(a, 1)
    return g.reshape(tuple(shape))


# --------------------------------------------------------------------------- linear algebra


class MatmulOp(Op):
    r"""Matrix product $Y = AB$ (NumPy `@` semantics, batched and 1-D too).

    With $A$ of shape $(n, k)$ and $B$ of shape $(k, m)$, the product rule gives

    $$dY = dA\,B + A\,dB,$$

    so

    $$df = \mathrm{tr}(G^T dA\,B) + \mathrm{tr}(G^T A\,dB)
         = \mathrm{tr}(B\,G^T dA) + \mathrm{tr}(G^T A\,dB)
         = \mathrm{tr}\big((G B^T)^T dA\big) + \mathrm{tr}\big((A^T G)^T dB\big),$$

    using $\mathrm{tr}(XY) = \mathrm{tr}(YX)$ to move $B$ to the front. Reading off:

    $$\frac{\partial f}{\partial A} = G B^T, \qquad \frac{\partial f}{\partial B} = A^T G.$$

    This is the exercise's composition rule $Y = AXB \Rightarrow \partial f/\partial X = A^T G B^T$
    with one factor the identity. Shapes check: $G B^T$ is $(n,m)(m,k) = (n,k)$. For
    a batch of matrices the same formula applies to each, and a matrix that was
    broadcast across the batch receives the sum over the batch (see
    [broadcasting](#broadcasting)). A 1-D operand is treated as a one-row or
    one-column matrix. When $A$ is data (the first layer), its gradient is not
    needed and npgrad skips that product.
    """

    name = "matmul"
    saves_output = False
    spec = OpSpec(draw=opspecs.matmul_operands, torch=lambda t, a, b: a @ b)

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
        a2 = _unsqueeze(a, 0) if a.ndim == 1 else a
        b2 = _unsqueeze(b, -1) if b.ndim == 1 else b
        g2 = _unsqueeze(g, -1) if b.ndim == 1 else g
        if a.ndim == 1:
            g2 = _unsqueeze(g2, -2)
        ga = gb = None
        if needs[0]:
            ga = g2 @ _swap(b2)
            if a.ndim == 1:
                ga = _squeeze(ga, -2)
        if needs[1]:
            gb = _swap(a2) @ g2
            if b.ndim == 1:
                gb = _squeeze(gb, -1)
        return ga, gb


class LinearOp(Op):
    r"""Affine map $Y = XW + \mathbf{1} b^T$ (a dense layer), fused into one node.

    It is a [matmul](#matmul) followed by a broadcast [add](#add), so its
    differential is the sum of theirs:

    $$dY = dX\,W + X\,dW + \mathbf{1}\,db^T,$$

    $$df = \mathrm{tr}\big((G W^T)^T dX\big) + \mathrm{tr}\big((X^T G)^T dW\big) + \mathrm{tr}\big((G^T \mathbf{1})^T db\big),$$

    giving $G W^T$, $X^T G$ and the column sums $G^T \mathbf{1}$. The op computes
    nothing new: its vjp calls matmul's and hands $G$ to the engine for the bias,
    which sums it over the batch by the [broadcasting](#broadcasting) rule. It
    exists because one graph node instead of two, and adding $b$ in place into the
    fresh product $XW$, make small-batch training about 15% faster.
    """

    name = "linear"
    saves_output = False
    spec = OpSpec(draw=opspecs.linear_operands, torch=lambda t, x, w, b: x @ w + b)

    @staticmethod
    def forward(x: Array, w: Array, b: Array) -> tuple[Array, Any]:
        y, saved = MatmulOp.forward(x, w)
        if np.result_type(y.dtype, b.dtype) == y.dtype:
            y += b  # y is a fresh product: nobody else holds it
        else:
            y = y + b
        return y, saved

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True, True)) -> Grads:
        gx, gw = MatmulOp.vjp(saved, g, needs[:2])
        return gx, gw, (g if needs[2] else None)


# --------------------------------------------------------------------------- element-wise binary


class AddOp(Op):
    r"""Sum $Y = A + B$, with broadcasting.

    $dY = dA + dB$, so $df = \mathrm{tr}(G^T dA) + \mathrm{tr}(G^T dB)$ and both
    gradients are $G$, summed over the axes along which an input was broadcast
    (see [broadcasting](#broadcasting)).
    """

    name = "add"
    spec = OpSpec(draw=opspecs.broadcast_pair, torch=lambda t, a, b: a + b)

    @staticmethod
    def forward(a: Array, b: Array) -> tuple[Array, Any]:
        return a + b, None

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        return g, g


class SubOp(Op):
    r"""Difference $Y = A - B$, with broadcasting.

    $dY = dA - dB$, so $df = \mathrm{tr}(G^T dA) + \mathrm{tr}\big((-G)^T dB\big)$
    and the gradients are $G$ and $-G$ (summed over broadcast axes, as for [add](#add)).
    """

    name = "sub"
    spec = OpSpec(draw=opspecs.broadcast_pair, torch=lambda t, a, b: a - b)

    @staticmethod
    def forward(a: Array, b: Array) -> tuple[Array, Any]:
        return a - b, None

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        return g, (-g if needs[1] else None)


class MulOp(Op):
    r"""Element-wise product $Y = A \odot B$, with broadcasting.

    $dY = dA \odot B + A \odot dB$. With
    $\mathrm{tr}(G^T (X \odot Y)) = \mathrm{tr}((G \odot X)^T Y)$:

    $$df = \mathrm{tr}\big((G \odot B)^T dA\big) + \mathrm{tr}\big((G \odot A)^T dB\big),$$

    so $\partial f/\partial A = G \odot B$ and $\partial f/\partial B = G \odot A$
    (summed over broadcast axes by the engine).
    """

    name = "mul"
    spec = OpSpec(draw=opspecs.broadcast_pair, torch=lambda t, a, b: a * b)

    @staticmethod
    def forward(a: Array, b: Array) -> tuple[Array, Any]:
        return a * b, (a, b)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        a, b = saved
        return (g * b if needs[0] else None), (g * a if needs[1] else None)


class DivOp(Op):
    r"""Element-wise quotient $Y = A \oslash B$, with broadcasting.

    Since $d(1/B) = -dB \oslash B^{2}$,

    $$dY = dA \oslash B - A \odot dB \oslash B^{2},$$

    $$df = \mathrm{tr}\big((G \oslash B)^T dA\big) - \mathrm{tr}\big((G \odot A \oslash B^{2})^T dB\big),$$

    so $\partial f / \partial A = G \oslash B$ and
    $\partial f / \partial B = -G \odot A \oslash B^{2} = -(G \oslash B) \odot Y$. npgrad
    saves $Y$ and reuses $G \oslash B$ for both.
    """

    name = "div"
    spec = OpSpec(draw=opspecs.broadcast_pair, domains=(REAL, NONZERO), torch=lambda t, a, b: a / b)

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


class NegOp(Op):
    r"""Negation $Y = -X$.

    $dY = -dX$, so $df = \mathrm{tr}\big((-G)^T dX\big)$ and the gradient is $-G$.
    """

    name = "neg"
    spec = OpSpec(torch=lambda t, x: -x)

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        return -x, None

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (-g,)


class PowOp(Op):
    r"""Power with a constant exponent, $Y = X^{p}$ element-wise.

    $dY = p X^{p-1} \odot dX$, so $df = \mathrm{tr}\big((p\, G \odot X^{p-1})^T dX\big)$
    and $\partial f/\partial X = p\, G \odot X^{p-1}$.
    """

    name = "pow"
    spec = OpSpec(
        draw=opspecs.with_params(p=(2.0, 3.0, -1.0, 0.5, 1.5)),
        domains=(POSITIVE,),
        torch=lambda t, x, p=2.0: x**p,
    )

    @staticmethod
    def forward(x: Array, p: float = 2.0) -> tuple[Array, Any]:
        return x**p, (x, p)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        x, p = saved
        return (g * (p * x ** (p - 1)),)


class ExpOp(Op):
    r"""Exponential $Y = \exp(X)$, element-wise.

    $dY = \exp(X) \odot dX = Y \odot dX$, so $df = \mathrm{tr}\big((G \odot Y)^T dX\big)$
    and $\partial f/\partial X = G \odot Y$. The forward's output is saved and
    reused, not recomputed. (The exercise's worked example $f = a^T \exp(Xb)$
    follows: $df = a^T (\exp(Xb) \odot dX\,b) = \mathrm{tr}(b\,(a \odot \exp(Xb))^T dX)$,
    so $\partial f/\partial X = (a \odot \exp(Xb))\, b^T$.)
    """

    name = "exp"
    spec = OpSpec(torch=lambda t, x: t.exp(x))

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        y = namespace(x).exp(x)
        return y, y

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g * saved,)


class LogOp(Op):
    r"""Natural logarithm $Y = \log(X + \epsilon)$, element-wise (`eps` defaults to 0).

    $dY = dX \oslash (X + \epsilon)$, so $df = \mathrm{tr}\big((G \oslash (X + \epsilon))^T dX\big)$
    and $\partial f/\partial X = G \oslash (X + \epsilon)$. The exercise's `Log`
    layer uses $\epsilon = 10^{-12}$. Non-positive inputs give NaN or $-\infty$ (and
    gradients $\pm\infty$) without raising, as NumPy, PyTorch and TensorFlow do, so
    checks against frameworks compare like with like.
    """

    name = "log"
    spec = OpSpec(domains=(POSITIVE,), torch=lambda t, x, eps=0.0: t.log(x + eps))

    @staticmethod
    def forward(x: Array, eps: float = 0.0) -> tuple[Array, Any]:
        with np.errstate(divide="ignore", invalid="ignore"):
            return namespace(x).log(x + eps if eps else x), (x, eps)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        x, eps = saved  # x itself, not x + eps: the recording path differentiates through x
        with np.errstate(divide="ignore", invalid="ignore"):
            return (g / (x + eps if eps else x),)


# NumPy's maximum against a scalar runs 2-3x slower than against an array
# (measured on float32 with NumPy 2.4: the array-array loop is the vectorised
# one), so max(x, 0) is taken row by row against a short row of zeros, which
# stays in the first-level cache. The rows are a flat view of x's memory, so the
# output keeps x's memory layout (an NCHW view of channels-last memory stays one).
class ReluOp(Op):
    r"""Rectifier $Y = \max(X, 0)$, element-wise.

    $dY = \mathbb{1}[X > 0] \odot dX$, so $df = \mathrm{tr}\big((G \odot \mathbb{1}[X > 0])^T dX\big)$
    and $\partial f/\partial X = G \odot \mathbb{1}[X > 0]$: the upstream gradient
    passes where the unit was active and is blocked where it was not. The mask
    equals $\mathbb{1}[Y > 0]$, so only the output is kept. At exactly $0$ the
    derivative is taken as $0$ (as in PyTorch).

    *Second order.* The vjp is linear in $G$ with a constant mask, so differentiating
    it again gives the mask for $G$ and $0$ for $X$: relu's second derivative is $0$
    wherever it exists, everywhere but the kink. The mask is a comparison, which
    gives a constant boolean array on Tensors too, so the recording path treats it
    as the constant it is.
    """

    name = "relu"
    writes_over_input = True  # it saves its output, never its input
    vjp_writes_over_g = True
    spec = OpSpec(domains=(KINK,), torch=lambda t, x: t.relu(x))

    @staticmethod
    def forward(x: Array, out: Array | None = None) -> tuple[Array, Any]:
        y = relu_array(x, out)  # np.maximum(x, 0), faster on large arrays (below)
        return y, y

    @staticmethod
    def vjp(
        saved: Any, g: Array, needs: tuple[bool, ...] = (True,), out: Array | None = None
    ) -> Grads:
        if (
            type(g) is np.ndarray
            and type(saved) is np.ndarray
            and g.shape == saved.shape
            and g.ndim
        ):
            return (_masked(g, saved, out),)  # the same product, cut across threads
        if out is not None:
            return (namespace(g).multiply(g, saved > 0, out=out),)
        return (g * (saved > 0),)


# relu's fast path, after the op a learner reads first: the same max(x, 0), cache-tuned.
_ZERO_ROW = 4096
_zero_rows: dict[np.dtype, Array] = {}


def _memory_flat(a: Array) -> Array | None:
    """``a``'s elements as a 1-D view in memory order, or None when its memory has gaps."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    t = a.transpose(np.argsort([-s for s in a.strides], kind="stable"))
    return t.reshape(-1) if t.flags.c_contiguous else None


def relu_array(x: Array, out: Array | None = None) -> Array:
    """``np.maximum(x, 0)``, NaN propagating, in ``x``'s memory layout; faster on large floats.

    ``out`` (``x`` itself, say) receives the result; it must be laid out like ``x``.
    """
    if x.size < 2 * _ZERO_ROW or x.dtype.kind != "f" or not on_host(x):
        return namespace(x).maximum(x, 0, out=out)
    y = np.empty_like(x) if out is None else out  # order "K": the same layout as x
    fx, fy = _memory_flat(x), _memory_flat(y)
    if fx is None or fy is None:
        return np.maximum(x, 0, out=y)
    zeros = _zero_rows.get(x.dtype)
    if zeros is None:
        zeros = _zero_rows[x.dtype] = np.zeros(_ZERO_ROW, dtype=x.dtype)
        zeros.flags.writeable = False
    whole = fx.size - fx.size % _ZERO_ROW
    parallel.ufunc(
        np.maximum, fx[:whole].reshape(-1, _ZERO_ROW), zeros, out=fy[:whole].reshape(-1, _ZERO_ROW)
    )
    np.maximum(fx[whole:], zeros[: fx.size - whole], out=fy[whole:])
    return y


def _masked(g: Array, y: Array, out: Array | None = None) -> Array:
    """``g * (y > 0)`` in ``g``'s memory layout (or into ``out``), cut along the first axis
    across threads."""
    if out is None:
        out = np.empty_like(g)

    def part(lo: int, hi: int) -> None:
        np.multiply(g[lo:hi], y[lo:hi] > 0, out=out[lo:hi])

    parallel.rows(part, g.shape[0], out.nbytes)
    return out


def dropout_mask(shape: tuple[int, ...], p: float, rng: Any, dtype: Any, xp: Any = np) -> Array:
    """The scaled keep mask of inverted dropout: ``1/(1-p)`` where kept, ``0`` where dropped.

    ``rng`` is a NumPy Generator, drawn from (a fresh mask per call), or an int
    seed, which makes the mask a function of the seed (for checking the op). On a device
    the draws are made there (:func:`npgrad.ops.device.uniform`).
    """
    keep = uniform(rng, tuple(shape), xp) >= p
    mask = keep.astype(dtype)
    mask *= mask.dtype.type(1.0 / (1.0 - p))
    return mask


class DropoutOp(Op):
    r"""Inverted dropout $Y = X \odot M$, $M$ a fresh random mask of $0$ and $1/(1-p)$.

    Each element is kept with probability $1 - p$ and scaled by $1/(1-p)$, so
    $\mathbb{E}[Y] = X$ and evaluation needs no rescaling. The mask is drawn by the
    forward pass from the generator `rng` (a new one every call, also when a compiled
    step replays it) and is a constant of the differential:
    $dY = M \odot dX$, so $df = \mathrm{tr}\big(G^T (M \odot dX)\big) = \mathrm{tr}\big((M \odot G)^T dX\big)$
    and $\partial f/\partial X = M \odot G$: the gradient passes where the unit was
    kept, scaled the same way, and is blocked where it was dropped.

    *Second order.* The vjp is linear in $G$ with the constant mask, like
    [relu](#relu)'s, so its derivative is $M$ for $G$ and $0$ for $X$.
    """

    name = "dropout"
    spec = OpSpec(
        draw=opspecs.with_params(p=[0.0, 0.25, 0.5], rng=[0, 1, 2]),
        torch=lambda t, x, p=0.5, rng=None: (
            x * t.as_tensor(dropout_mask(tuple(x.shape), p, rng, np.float64)).to(x.dtype)
        ),
    )

    @staticmethod
    def forward(x: Array, p: float = 0.5, rng: Any = None) -> tuple[Array, Any]:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        mask = dropout_mask(x.shape, p, rng, x.dtype, namespace(x))
        return x * mask, mask

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g * saved,)


class SigmoidOp(Op):
    r"""Logistic function $Y = \sigma(X) = 1/(1 + e^{-X})$, element-wise.

    From $\sigma' = \sigma(1-\sigma)$: $dY = Y \odot (1 - Y) \odot dX$, so
    $df = \mathrm{tr}\big((G \odot Y \odot (1 - Y))^T dX\big)$ and
    $\partial f/\partial X = G \odot Y \odot (1 - Y)$. The forward computes
    $e^{-|x|}$ and picks the algebraically equal form for each sign, so it never
    overflows.
    """

    name = "sigmoid"
    spec = OpSpec(domains=(WIDE,), torch=lambda t, x: t.sigmoid(x))

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        # exp(-|x|) never overflows; pick the algebraically equal form per sign.
        xp = namespace(x)
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return y, y

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g * saved * (1 - saved),)


class TanhOp(Op):
    r"""Hyperbolic tangent $Y = \tanh(X)$, element-wise.

    From $\tanh' = 1 - \tanh^2$: $dY = (1 - Y \odot Y) \odot dX$, so
    $df = \mathrm{tr}\big((G \odot (1 - Y \odot Y))^T dX\big)$ and
    $\partial f/\partial X = G \odot (1 - Y \odot Y)$.
    """

    name = "tanh"
    spec = OpSpec(torch=lambda t, x: t.tanh(x))

    @staticmethod
    def forward(x: Array) -> tuple[Array, Any]:
        y = namespace(x).tanh(x)
        return y, y

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g * (1 - saved * saved),)


# --------------------------------------------------------------------------- normalisations


class SoftmaxOp(Op):
    r"""Softmax over `axis`: $s = e^{x} / (\mathbf{1}^T e^{x} + \epsilon)$ for each row $x$.

    Take one row $x \in \mathbb{R}^c$ and $s = e^{x} / S$ with $S = \mathbf{1}^T e^{x} + \epsilon$
    ($\epsilon = 0$ for the op, $10^{-12}$ in the exercise's layer). Then
    $dS = \mathbf{1}^T (e^x \odot dx) = e^{xT} dx$ and

    $$ds = \frac{e^x \odot dx}{S} - \frac{e^x}{S^2}\, dS = s \odot dx - s\,(s^T dx).$$

    With upstream gradient $g$ for the row:

    $$df = g^T ds = (g \odot s)^T dx - (g^T s)(s^T dx) = \big(s \odot g - (g^T s)\, s\big)^T dx,$$

    so

    $$\frac{\partial f}{\partial x} = s \odot \big(g - \langle g, s\rangle \mathbf{1}\big).$$

    In matrix form this is $J^T g$ with the Jacobian $J = \mathrm{diag}(s) - s s^T$. The
    exercise built $J$ for every row, an $(N, c, c)$ tensor, and multiplied; the
    formula above never forms it: two element-wise products and one row sum,
    $O(Nc)$ time and memory instead of $O(Nc^2)$.

    *Stability.* npgrad computes $e^{x - m} / (\mathbf{1}^T e^{x-m} + \epsilon e^{-m})$ with $m$
    the row maximum. Multiplying numerator and denominator by $e^{-m}$ changes
    nothing mathematically, so results agree with the exercise's formula wherever
    that is finite, but $e^{x-m} \le 1$ cannot overflow.
    """

    name = "softmax"
    spec = OpSpec(
        draw=opspecs.one_axis, domains=(WIDE,), torch=lambda t, x, axis=-1: t.softmax(x, dim=axis)
    )

    @staticmethod
    def forward(x: Array, axis: int = -1, eps: float = 0.0) -> tuple[Array, Any]:
        xp = namespace(x)
        m = x.max(axis=axis, keepdims=True)
        e = xp.exp(x - m)
        denom = e.sum(axis=axis, keepdims=True)
        if eps:
            # eps * e^{-m} overflows to inf only where e^x underflows to 0 anyway,
            # giving 0 as the unstabilised formula does.
            with np.errstate(over="ignore"):
                denom = denom + eps * xp.exp(-m)
        e /= denom
        return e, (e, axis)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        s, axis = saved
        gs = g * s
        return (gs - s * gs.sum(axis=axis, keepdims=True),)


class LogSoftmaxOp(Op):
    r"""Log-softmax over `axis`: $y = x - \mathbf{1}\,\mathrm{lse}(x)$ for each row $x$, computed stably.

    Here $\mathrm{lse}(x) = \log \mathbf{1}^T e^{x}$. Since
    $d\,\mathrm{lse} = e^{xT} dx / \mathbf{1}^T e^x = s^T dx$ (with $s$ the [softmax](#softmax)),

    $$dy = dx - \mathbf{1}\, s^T dx, \qquad df = g^T dx - (g^T \mathbf{1})(s^T dx) = \big(g - s \textstyle\sum_j g_j\big)^T dx,$$

    so $\partial f/\partial x = g - s \sum_j g_j$. Computed with the row maximum $m$
    subtracted: $y = (x - m) - \log \mathbf{1}^T e^{x - m}$.
    """

    name = "log_softmax"
    spec = OpSpec(
        draw=opspecs.one_axis,
        domains=(WIDE,),
        torch=lambda t, x, axis=-1: t.log_softmax(x, dim=axis),
    )

    @staticmethod
    def forward(x: Array, axis: int = -1) -> tuple[Array, Any]:
        xp = namespace(x)
        z = x - x.max(axis=axis, keepdims=True)
        y = z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
        return y, (y, axis)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        y, axis = saved
        return (g - call(ExpOp, y) * g.sum(axis=axis, keepdims=True),)


class CrossEntropyOp(Op):
    r"""Fused, stable softmax cross-entropy of logits $X$ $(N, C)$ against targets $T$.

    `target` is either integer class indices $(N,)$, meaning one-hot rows, or a
    one-hot or probability matrix $(N, C)$. With $s_i = \mathrm{softmax}(x_i)$ for row $i$,

    $$\ell = -\sum_i t_i^T \log s_i, \qquad \log s_i = x_i - \mathbf{1}\,\mathrm{lse}(x_i),$$

    and `reduction="mean"` divides $\ell$ by $N$ (`"sum"` does not). Per row,
    $\ell_i = -t_i^T x_i + (t_i^T \mathbf{1})\,\mathrm{lse}(x_i)$ and with
    $d\,\mathrm{lse} = s^T dx$ (see [log_softmax](#log_softmax)):

    $$d\ell_i = \big(-t_i + (t_i^T\mathbf{1})\, s_i\big)^T dx_i.$$

    For one-hot or probability rows $t_i^T \mathbf{1} = 1$, so the gradient is $s_i - t_i$.
    Stacked, $\partial \ell/\partial X = S - T$, and with `reduction="mean"`

    $$\frac{\partial \ell}{\partial X} = \frac{S - T}{N}.$$

    The upstream gradient $g$ is a scalar, $df = g\, d\ell$, and simply scales the result.

    **Why fuse.** Chaining softmax, log and a dot product computes the same
    gradient through $\log(s)$ and the softmax Jacobian: $g_s = -t \oslash s$, then
    $s \odot (g_s - \langle g_s, s\rangle) = -t + s\,(t^T\mathbf{1})$. The terms
    cancel analytically, but numerically $t \oslash s$ overflows when $s$
    underflows to $0$, which is why the exercise needed $\epsilon = 10^{-12}$ in both
    `Softmax` and `Log` (and why its loss is capped near $-\log 10^{-12} \approx 27.6$).
    The fused op computes $\log s$ by the stable log-softmax and the gradient as
    $S - T$ directly: no division, no $\epsilon$, no Jacobian.

    *Second order.* The vjp reads the softmax $S$ that the forward saved, an
    array computed from $X$ rather than $X$ itself, so when the backward pass
    records (`create_graph`), `on_tape` recomputes $S$ from the input Tensor with
    the [softmax](#softmax) op: the gradient $g\,(S - T)/N$ is then differentiated
    through the softmax's own vjp, the Hessian $\big(\mathrm{diag}(s) - s s^T\big)/N$ per row.
    """

    name = "cross_entropy"
    spec = OpSpec(
        draw=opspecs.class_targets,
        domains=(WIDE,),
        torch=lambda t, x, target, reduction="mean": t.nn.functional.cross_entropy(
            x, t.as_tensor(target), reduction=reduction
        ),
    )

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
        xp = namespace(x)
        target = xp.asarray(target)  # host labels move to the logits' device
        n = x.shape[0]
        z = x - x.max(axis=1, keepdims=True)
        e = xp.exp(z)
        sumexp = e.sum(axis=1, keepdims=True)
        lse = xp.log(sumexp)  # log p = z - lse, never formed for integer labels
        if target.ndim == 1:
            if not np.issubdtype(target.dtype, np.integer):
                raise ShapeError("1-D cross_entropy targets must be integer class indices")
            if target.shape[0] != n:
                raise ShapeError(f"cross_entropy: {n} rows of logits but {target.shape[0]} labels")
            if n and (target.min() < 0 or target.max() >= x.shape[1]):
                raise ShapeError(f"cross_entropy: labels must lie in [0, {x.shape[1]})")
            loss = lse.sum() - z[xp.arange(n), target].sum()
        elif target.shape == x.shape:
            loss = -(target * (z - lse)).sum()
        else:
            raise ShapeError(
                f"cross_entropy: target of shape {target.shape} fits neither (N,) indices "
                f"nor (N, C) probabilities for logits {x.shape}"
            )
        scale = 1.0 / n if reduction == "mean" and n else 1.0
        e /= sumexp
        out = xp.asarray(loss * scale, dtype=x.dtype)
        return out, (e, target, scale)

    @staticmethod
    def on_tape(saved: Any, inputs: tuple[Any, ...], out: Any) -> Any:
        _, target, scale = saved
        return call(SoftmaxOp, inputs[0], axis=1), target, scale

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        s, target, scale = saved
        if target.ndim == 1:
            xp = namespace(s)
            onehot = xp.zeros(s.shape, dtype=s.dtype)  # a constant: labels have no gradient
            onehot[xp.arange(s.shape[0]), target] = 1
            d = s - onehot
        else:
            # in the logits' dtype: a float64 target must not upcast the whole backward pass
            t = target.astype(s.dtype, copy=False)
            d = s * t.sum(axis=1, keepdims=True) - t
        d *= g * scale  # in place on arrays; a Tensor has no *=, so Python rebinds d
        return (d,)


# --------------------------------------------------------------------------- reductions


class SumOp(Op):
    r"""Sum over `axis` (all axes when None), optionally keeping the reduced axes.

    For a full sum $y = \mathbf{1}^T X \mathbf{1}$,
    $dy = \mathbf{1}^T dX\, \mathbf{1} = \mathrm{tr}\big((\mathbf{1}\mathbf{1}^T)^T dX\big)$,
    and with upstream $g$ the gradient is $g\,\mathbf{1}\mathbf{1}^T$: every element
    receives $g$. For a sum over rows, $y^T = \mathbf{1}^T X$ and
    $df = \mathbf{1}^T dX\, g = \mathrm{tr}(g\,\mathbf{1}^T dX) = \mathrm{tr}\big((\mathbf{1} g^T)^T dX\big)$:
    each element receives the $g$ of the column sum it fell into. In general:
    re-insert the reduced axes and broadcast $g$ back to the input's shape. (Sum
    and broadcasting are adjoint: each one's vjp is the other.)
    """

    name = "sum"
    spec = OpSpec(
        draw=opspecs.reduction,
        torch=lambda t, x, axis=None, keepdims=False: x.sum(dim=axis, keepdim=keepdims),
    )

    @staticmethod
    def forward(
        x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> tuple[Array, Any]:
        axes = _norm_axes(axis, x.ndim)
        y = namespace(x).asarray(x.sum(axis=axes, keepdims=keepdims))
        return y, (x.shape, axes, keepdims)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        shape, axes, keepdims = saved
        return (call(BroadcastToOp, _expand_reduced(g, axes, keepdims), shape=shape),)


class MeanOp(Op):
    r"""Mean over `axis`: the sum divided by the number $n$ of reduced elements.

    For a mean over rows, $y^T = \tfrac{1}{n}\mathbf{1}^T X$ and
    $df = \tfrac{1}{n}\mathbf{1}^T dX\, g = \mathrm{tr}\big((\tfrac{1}{n}\mathbf{1} g^T)^T dX\big)$:
    as for [sum](#sum) with a factor $1/n$, each element receives $g/n$.
    """

    name = "mean"
    spec = OpSpec(
        draw=opspecs.reduction,
        torch=lambda t, x, axis=None, keepdims=False: x.mean(dim=axis, keepdim=keepdims),
    )

    @staticmethod
    def forward(
        x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> tuple[Array, Any]:
        axes = _norm_axes(axis, x.ndim)
        n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        y = namespace(x).asarray(x.mean(axis=axes, keepdims=keepdims))
        return y, (x.shape, axes, keepdims, n)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        shape, axes, keepdims, n = saved
        return (call(BroadcastToOp, _expand_reduced(g, axes, keepdims) / n, shape=shape),)


class MaxOp(Op):
    r"""Maximum over `axis` (all axes when None), optionally keeping the reduced axes.

    Locally (no ties) $y = x_k$ for the position $k$ of the maximum, so $dy = dx_k$,
    $df = g\, dx_k$, and the gradient is $g$ at the arg-max and $0$ elsewhere: a
    mask, like relu's. At a tie the max is not differentiable; npgrad divides $g$
    equally among the tied positions, the average of the one-sided derivatives and
    what `torch.amax` does.

    *Second order.* The routing (which position is the maximum) is piecewise
    constant in $X$: differentiating the vjp gives the mask for $G$ and $0$ for
    $X$, exact everywhere but at ties, where the max is not differentiable
    anyway. The mask is computed as $X \ge Y$ (equal to $X = Y$ since $Y$ is the
    maximum), a comparison that gives a constant boolean array on Tensors too.
    """

    name = "max"
    spec = OpSpec(
        draw=opspecs.reduction,
        torch=lambda t, x, axis=None, keepdims=False: x.amax(dim=axis, keepdim=keepdims),
    )

    @staticmethod
    def forward(
        x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> tuple[Array, Any]:
        axes = _norm_axes(axis, x.ndim)
        ykd = x.max(axis=axes, keepdims=True)
        xp = namespace(x)
        y = ykd if keepdims else ykd.squeeze(axis=axes)
        return xp.asarray(y), (x, ykd, axes, keepdims)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        x, ykd, axes, keepdims = saved
        mask = (x >= ykd).astype(g.dtype)  # >= not ==: a Tensor's == is identity
        mask /= mask.sum(axis=axes, keepdims=True)
        return (mask * _expand_reduced(g, axes, keepdims),)


# --------------------------------------------------------------------------- shape ops


class ReshapeOp(Op):
    r"""Reshape: the same elements under a new shape.

    $\mathrm{vec}(Y) = \mathrm{vec}(X)$: reshaping only relabels elements, so
    $df = \mathrm{vec}(G)^T \mathrm{vec}(dX)$ and the gradient is $G$ reshaped to
    $X$'s shape.
    """

    name = "reshape"
    spec = OpSpec(draw=opspecs.new_shape, torch=lambda t, x, shape=(-1,): x.reshape(shape))

    @staticmethod
    def forward(x: Array, shape: tuple[int, ...] = (-1,)) -> tuple[Array, Any]:
        try:
            return x.reshape(shape), x.shape
        except ValueError as exc:
            raise ShapeError(f"cannot reshape array of shape {x.shape} into {shape}") from exc

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g.reshape(saved),)


def _broadcast_source(d: opspecs.Draw) -> opspecs.Case:
    """A shape that broadcasts to the base shape, and the base shape as the target."""
    return opspecs.Case([d.partner()], {"shape": d.shape})


class BroadcastToOp(Op):
    r"""Broadcast to `shape`: copies of $X$ along new leading axes and along its axes of length 1.

    The copies are linear in $X$: for a row $b$ repeated $n$ times, $Y = \mathbf{1} b^T$
    and $df = \mathrm{tr}(G^T \mathbf{1}\, db^T) = \mathrm{tr}\big((G^T \mathbf{1})^T db\big)$,
    so the gradient sums $G$ over the copies: exactly the
    [broadcasting](#broadcasting) rule, `unbroadcast`. The op is the vjp of
    [sum](#sum) and [mean](#mean) (sum and broadcast are adjoint), so it exists
    for the gradients: a gradient that was broadcast can be differentiated again.
    """

    name = "broadcast_to"
    spec = OpSpec(draw=_broadcast_source, torch=lambda t, x, shape=(): x.broadcast_to(shape))

    @staticmethod
    def forward(x: Array, shape: tuple[int, ...] = ()) -> tuple[Array, Any]:
        try:
            return namespace(x).broadcast_to(x, shape), x.shape
        except ValueError as exc:
            raise ShapeError(f"cannot broadcast shape {x.shape} to {shape}") from exc

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (unbroadcast(g, saved),)


class TransposeOp(Op):
    r"""Axis permutation (reversal when `axes` is None).

    For a matrix, $Y = X^T$: $dY = dX^T$, and
    $df = \mathrm{tr}(G^T dX^T) = \mathrm{tr}(dX\, G) = \mathrm{tr}(G\, dX) = \mathrm{tr}\big((G^T)^T dX\big)$,
    so the gradient is $G^T$. For a general axis permutation $\pi$, the gradient
    is $G$ permuted by $\pi^{-1}$.
    """

    name = "transpose"
    spec = OpSpec(
        draw=opspecs.permutation,
        torch=lambda t, x, axes=None: x.permute(*(axes or reversed(range(x.ndim)))),
    )

    @staticmethod
    def forward(x: Array, axes: tuple[int, ...] | None = None) -> tuple[Array, Any]:
        return (x.transpose() if axes is None else x.transpose(axes)), axes

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        if saved is None:
            return (g.transpose(),)
        return (g.transpose(tuple(int(i) for i in np.argsort(saved))),)


class ConcatenateOp(Op):
    r"""Concatenation along `axis`: $Y = [X_1, X_2, \dots]$.

    $df = \mathrm{tr}(G^T dY) = \sum_i \mathrm{tr}(G_i^T dX_i)$, where $G_i$ is the
    block of $G$ in $X_i$'s position: the gradient of each input is its slice of $G$.
    """

    name = "concatenate"
    spec = OpSpec(draw=opspecs.concat_partner, torch=lambda t, *xs, axis=0: t.cat(xs, dim=axis))

    @staticmethod
    def forward(*xs: Array, axis: int = 0) -> tuple[Array, Any]:
        out = namespace(*xs).concatenate(xs, axis=axis)
        return out, (np.cumsum([x.shape[axis] for x in xs])[:-1], axis)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = ()) -> Grads:
        cuts, axis = saved
        lead = (slice(None),) * (axis % g.ndim)
        bounds = [0, *(int(c) for c in cuts), None]
        return tuple(g[lead + (slice(lo, hi),)] for lo, hi in zip(bounds, bounds[1:]))


class GetItemOp(Op):
    r"""Indexing and slicing $Y = X[\text{idx}]$ (basic and advanced NumPy indices).

    The selection is linear: $\mathrm{vec}(Y) = P\,\mathrm{vec}(X)$ with $P$ a 0/1
    selection matrix. So $df = \mathrm{vec}(G)^T P\, d\,\mathrm{vec}(X)$ and the
    gradient is $P^T \mathrm{vec}(G)$, reshaped: scatter $G$ back into a zero array
    at the selected positions, *adding* where an index is selected more than once
    (NumPy's `np.add.at`), because each selection contributes to $f$ separately.
    That scatter is itself an op, [index_add](#index_add), so the gradient can
    be differentiated again.
    """

    name = "getitem"
    spec = OpSpec(
        draw=opspecs.index,
        torch=lambda t, x, index=(): x[
            t.as_tensor(index) if isinstance(index, np.ndarray) else index
        ],
    )

    @staticmethod
    def forward(x: Array, index: Any = ()) -> tuple[Array, Any]:
        return namespace(x).asarray(x[index]), (x.shape, x.dtype, index)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        shape, dtype, index = saved
        return (call(IndexAddOp, g, shape=shape, index=index, dtype=dtype),)


def _scatter_case(d: opspecs.Draw) -> opspecs.Case:
    """The shape that getitem's draw selects from the base shape, the index, and the base shape."""
    index = opspecs.index(d).params["index"]
    selected = np.empty(d.shape)[index].shape
    return opspecs.Case([selected], {"shape": d.shape, "index": index})


def _torch_index_add(t: Any, x: Any, shape: tuple[int, ...] = (), index: Any = ()) -> Any:
    out = t.zeros(shape, dtype=x.dtype)
    if isinstance(index, np.ndarray):
        return out.index_add(0, t.as_tensor(index), x)
    out[index] = x  # a basic index never selects an element twice
    return out


class IndexAddOp(Op):
    r"""Scatter-add into zeros: $Y$ of shape `shape` is $0$ except $Y[\text{idx}] \mathrel{+}= X$.

    The adjoint of [getitem](#getitem) and its vjp: with the selection matrix
    $P$ of getitem, $\mathrm{vec}(Y) = P^T \mathrm{vec}(X)$, so
    $df = \mathrm{vec}(G)^T P^T d\,\mathrm{vec}(X) = \big(P\,\mathrm{vec}(G)\big)^T d\,\mathrm{vec}(X)$
    and the gradient is $G[\text{idx}]$: getitem of $G$. An index selected twice
    adds twice in the forward and reads the same $G$ twice in the gradient. The
    op exists so that getitem's gradient can be differentiated again.
    """

    name = "index_add"
    spec = OpSpec(draw=_scatter_case, torch=_torch_index_add)

    @staticmethod
    def forward(
        x: Array, shape: tuple[int, ...] = (), index: Any = (), dtype: Any = None
    ) -> tuple[Array, Any]:
        xp = namespace(x)
        out = xp.zeros(shape, dtype=x.dtype if dtype is None else np.result_type(dtype, x.dtype))
        if _is_basic_index(index):
            out[index] += x  # a basic index never selects an element twice
        else:
            xp.add.at(out, index, x)
        return out, index

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (g[saved],)


def _is_basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)
