r"""The image ops of the op table: convolution, pooling, batch normalisation, flatten.

Arrays are NCHW at the interface, with PyTorch's argument names and semantics
(an ``int`` or a pair for kernel, stride, padding and dilation), so every check
against PyTorch is direct. Inside, the ops work channels-last (NHWC): the
unfolded patches, the matrix products and the per-channel reductions are then
contiguous. Their outputs are NCHW-shaped *views* of NHWC memory (PyTorch's
``channels_last`` memory format): a chain conv, batch norm, relu, pool never
copies to change layout, and an NCHW-contiguous input works too, at the cost of
one transposing copy.

Each op registers itself in :data:`npgrad.ops.base.OPS` with its derivation (the
docstring) and its check spec; their Tensor-level entry points (``conv2d``,
``max_pool2d``, ``avg_pool2d``, ``batch_norm``, ``flatten``) are in
:mod:`npgrad.autodiff` with the others'. Arguments are checked by
:mod:`npgrad.ops.geometry`.

Higher order: every vjp here runs on Tensors too (``create_graph``), as the
module docstring of :mod:`npgrad.ops.dense` asks. The ones that need fast NumPy code
on the gradient call it as an op of its own through :func:`npgrad.ops.base.call`:
conv2d's two products (``conv2d_input_grad``, ``conv2d_weight_grad``), max
pooling's scatter by its constant routing (``max_pool2d_scatter``, whose vjp is
``max_pool2d_gather``) and average pooling's spread (``avg_pool2d_input_grad``).
Each of these ops is in the table with its derivation and check spec, and
each one's vjp is made of the others, so the tape closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError, ShapeError
from . import dense, parallel
from .base import Array, Grads, Op, call
from .device import namespace
from .geometry import IntOrPair, as_pair, check_eps
from .specs import REAL, Case, Domain, Draw, OpSpec

__all__ = [
    "Conv2dOp",
    "Conv2dInputGradOp",
    "Conv2dWeightGradOp",
    "MaxPool2dOp",
    "MaxRouting",
    "MaxPool2dScatterOp",
    "MaxPool2dGatherOp",
    "AvgPool2dOp",
    "AvgPool2dInputGradOp",
    "BatchNormOp",
]

# Patches are unfolded a slice of the batch at a time, about this many bytes at
# once: the copy then stays in cache for the matrix product that reads it.
CHUNK_BYTES = 4 << 20

FLIPPED_MIN_CHANNELS = 32
"""The input gradient of a stride-1 convolution is computed as a convolution of the
gradient with the flipped kernel (one product) from this many input channels on, and as
one product per kernel offset and a fold below it: the flipped convolution's product has
one output column per input channel, which BLAS runs slowly when they are few. Measured
on an Intel Xeon host (OpenBLAS SkylakeX, batch 128, 3x3 kernels): 1 channel (16 out)
8.5 against 2.3 ms, 16 channels (32 out) 5.4 against 5.0 ms; 32 channels (64 out, 5x5)
33.2 against 33.5 ms, a tie."""


# --------------------------------------------------------------------------- geometry


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Windows of extent ``d(k-1)+1`` at stride ``s`` that fit in ``size + 2p``."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _taps(n_out: int, k: int, s: int, d: int) -> list[slice]:
    """For each kernel offset t, the input positions ``t*d + s*o`` (o < n_out) it reads."""
    return [slice(t * d, t * d + s * (n_out - 1) + 1, s) for t in range(k)]


def _nhwc(x: Array) -> Array:
    return x.transpose(0, 2, 3, 1)


def _nchw(x: Array) -> Array:
    return x.transpose(0, 3, 1, 2)


def _padded(x: Array, ph: int, pw: int, value: float) -> Array:
    """NCHW ``x`` as NHWC with a border of ``value`` (a view when there is none)."""
    xt = _nhwc(x)
    if not ph and not pw:
        return xt
    n, h, w, c = xt.shape
    out = namespace(x).empty((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)

    def part(lo: int, hi: int) -> None:  # the border alone, then the inside: one pass
        o = out[lo:hi]
        o[:, :ph] = o[:, ph + h :] = value
        o[:, ph : ph + h, :pw] = o[:, ph : ph + h, pw + w :] = value
        o[:, ph : ph + h, pw : pw + w] = xt[lo:hi]

    parallel.sweep(part, out)
    return out


def _check_4d(x: Array, what: str) -> None:
    if x.ndim != 4:
        raise ShapeError(f"{what} expects input of shape (N, C, H, W), got {x.shape}")


# The helpers below that a vjp calls use only methods and call, so they run on
# Tensors too (the recording path of create_graph) as well as on arrays.


def _per_channel_sum(a: Array, c: int) -> Array:
    """Sums over everything but the last (channel) axis of a C-contiguous array.

    Summed as ``(rows, rest * c)`` first: a column sum over ``c`` narrow columns
    would run NumPy's inner loop ``c`` elements at a time.
    """
    return a.reshape(a.shape[0], -1).sum(axis=0).reshape(-1, c).sum(axis=0)


def _per_channel_dot(a: Array, b: Array, c: int) -> Array:
    """Per-channel sums of ``a * b`` (both C-contiguous, channels last).

    On arrays without a temporary (``einsum``); on Tensors, where the sum is
    recorded, as the product and :func:`_per_channel_sum`: the same value.
    """
    xp = namespace(a)
    if not (isinstance(a, xp.ndarray) and isinstance(b, xp.ndarray)):
        return _per_channel_sum(a * b, c)
    n = a.shape[0]
    return xp.einsum("ij,ij->j", a.reshape(n, -1), b.reshape(n, -1)).reshape(-1, c).sum(axis=0)


def _tiled(v: Array, reps: int) -> Array:
    """A per-channel vector repeated to the width of a ``(rows, reps * c)`` view (``np.tile``)."""
    return call(dense.BroadcastToOp, v.reshape(1, -1), shape=(reps, v.shape[0])).reshape(-1)


# --------------------------------------------------------------------------- convolution


def _unfold(xpad: Array, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int) -> Array:
    """The im2col matrix ``(N*H'*W', kh*kw*C)`` of NHWC ``xpad``: one patch per row.

    Columns are ordered (i, j, c). The window view costs nothing; one copy makes
    it a matrix. With few channels the copy runs faster along the output width,
    so the matrix is then built transposed (a Fortran-ordered result).
    """
    n, hp, wp, c = xpad.shape
    xp = namespace(xpad)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # a window's extent
    s0, s1, s2, s3 = xpad.strides
    # sliding_window_view's view, made directly (CuPy's checks its arguments on the device)
    win = xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, hp - eh + 1, wp - ew + 1, c, eh, ew), strides=(s0, s1, s2, s3, s1, s2)
    )
    win = win[:, ::sh, ::sw, :, ::dh, ::dw]  # (N, H', W', C, kh, kw)
    ho, wo = win.shape[1:3]
    if c * kw < wo:
        cols = xp.empty((kh, kw, c, n, ho, wo), dtype=xpad.dtype)

        def part(lo: int, hi: int) -> None:
            cols[:, :, :, lo:hi] = win[lo:hi].transpose(4, 5, 3, 0, 1, 2)

        parallel.rows(part, n, cols.nbytes)
        return cols.reshape(-1, n * ho * wo).T
    return parallel.copy(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * ho * wo, -1)


def _fold(gxp: Array, d: Array, sh: int, sw: int, dh: int, dw: int) -> None:
    """Add patch gradients ``d`` (kh, kw, N, H', W', C) back where the patches came from.

    The adjoint of :func:`_unfold` (col2im): one vectorised slice-add per
    kernel offset, each moving a whole contiguous (N, H', W', C) block.
    """
    kh, kw, n, ho, wo, _ = d.shape
    rows, cols = _taps(ho, kh, sh, dh), _taps(wo, kw, sw, dw)

    def part(lo: int, hi: int) -> None:
        for i in range(kh):
            for j in range(kw):
                gxp[lo:hi, rows[i], cols[j]] += d[i, j, lo:hi]

    parallel.sweep(part, gxp, passes=kh * kw)


def _conv_case(d: Draw) -> Case:
    n, c, o = d.size(1, 2), d.size(1, 3), d.size(1, 3)
    kh, kw = d.size(1, 3), d.size(1, 3)
    stride = d.choice([1, 2, (1, 2), 3])
    padding = d.choice([0, 1, (0, 2)])
    dilation = d.choice([1, 1, 2, (2, 1)])
    dh, dw = as_pair(dilation, "dilation", 1)
    # sizes from "just fits" to a few extra, so the last window sometimes does not fit
    h, w = dh * (kh - 1) + d.size(1, 4), dw * (kw - 1) + d.size(1, 4)
    shapes: list[tuple[int, ...]] = [(n, c, h, w), (o, c, kh, kw)] + ([(o,)] if d.flag() else [])
    return Case(shapes, {"stride": stride, "padding": padding, "dilation": dilation})


class Conv2dOp(Op):
    r"""2-D convolution (cross-correlation, as in PyTorch): $Y = X \star W + b$, NCHW.

    `x` is $(N, C, H, W)$, `w` is $(O, C, k_h, k_w)$, `b` (optional) is $(O,)$;
    `stride` $s$, `padding` $p$ and `dilation` $d$ are ints or pairs. Output
    position $(h', w')$ of channel $o$ is

    $$Y_{n o h' w'} = b_o + \sum_{c, i, j} W_{o c i j}\, X^{p}_{n,\, c,\, h' s_h + i d_h,\, w' s_w + j d_w},$$

    where $X^p$ is $X$ with $p$ zeros around it, and $H' = \lfloor (H + 2p_h - d_h(k_h-1) - 1)/s_h \rfloor + 1$
    (likewise $W'$): a last window that does not fit is dropped.

    **As a matrix product (im2col).** Copy every patch into one row of the
    unfolded matrix $U = \mathcal{U}(X)$ of shape $(N H' W',\ k_h k_w C)$, and
    reshape the kernel into $\bar W$ of shape $(k_h k_w C,\ O)$ with matching
    column order. Then, rows of $\bar Y$ being output positions,

    $$\bar Y = U \bar W + \mathbf{1} b^T.$$

    $\mathcal{U}$ only copies entries, so it is linear: $dU = \mathcal{U}(dX)$. Hence

    $$d\bar Y = \mathcal{U}(dX)\,\bar W + U\, d\bar W + \mathbf{1}\, db^T$$

    and, exactly as for [matmul](#matmul) and [add](#add), with $G$ the
    upstream gradient reshaped like $\bar Y$:

    $$df = \mathrm{tr}\big((G \bar W^T)^T \mathcal{U}(dX)\big) + \mathrm{tr}\big((U^T G)^T d\bar W\big) + \mathrm{tr}\big((G^T\mathbf{1})^T db\big).$$

    So $\partial f/\partial \bar W = U^T G$ (reshaped back to $(O, C, k_h, k_w)$) and
    $\partial f/\partial b = G^T \mathbf{1}$, the sum of $G$ over batch and positions.

    **The input gradient: the fold (col2im).** Write $G_U = G \bar W^T$, a
    gradient for every entry of every patch. Then
    $\mathrm{tr}(G_U^T\, \mathcal{U}(dX)) = \mathrm{tr}\big(\mathcal{U}^*(G_U)^T dX\big)$, where
    $\mathcal{U}^*$ is the adjoint of the copy: since $\mathcal{U}$ puts
    $X^p_{n,c,h' s_h + i d_h, w' s_w + j d_w}$ into entry $((n, h', w'), (i, j, c))$,
    $\mathcal{U}^*$ *adds* that entry of $G_U$ back onto that same input position.
    So $\partial f/\partial X = \mathcal{U}^*(G U)$ follows the forward's indexing
    backwards, and that is why stride, padding and dilation enter the fold:

    * stride and dilation decide where each patch entry is added ($h' s_h + i d_h$);
      where windows overlap (stride smaller than the window) a position
      receives the sum of its copies; positions no window reached (the rows
      and columns after the last window that fits) receive $0$;
    * padding: the fold runs on the padded grid, whose border entries are
      constants, not inputs, so their gradient is dropped by cropping $p$ from
      every side.

    npgrad unfolds with a strided window view and one copy, folds with one
    vectorised slice-add per kernel offset (never `np.add.at`),
    and does both a slice of the batch at a time so the patch matrix stays in
    cache; the backward pass unfolds again rather than keep $U$ (memory
    $k_h k_w$ times the input's).

    *Second order.* The two products are ops of their own,
    [conv2d_input_grad](#conv2d_input_grad) ($\mathcal{U}^*(G \bar W^T)$, a
    transposed convolution of $G$ with $W$) and
    [conv2d_weight_grad](#conv2d_weight_grad) ($U^T G$), and the vjp applies them
    with `call`: on arrays that is their forward, the fast code above, and
    when the backward pass records (`create_graph`) they go on the tape. Each is
    bilinear, and each one's vjp is made of conv2d and the other (as PyTorch's
    double backward for convolution), so the three close under
    differentiation: $\partial^2 f/\partial X^2$ and $\partial^2 f/\partial W^2$
    come only through what follows the convolution, and the mixed term
    $\partial^2/\partial X\,\partial W$ through these ops. The bias gradient is a
    sum, written with methods that Tensors have too.
    """

    name = "conv2d"
    saves_output = False
    spec = OpSpec(
        draw=_conv_case,
        torch=lambda t, x, w, b=None, **p: t.nn.functional.conv2d(x, w, b, **p),
    )

    @staticmethod
    def forward(
        x: Array,
        w: Array,
        b: Array | None = None,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
    ) -> tuple[Array, Any]:
        _check_4d(x, "conv2d")
        if w.ndim != 4 or w.shape[1] != x.shape[1]:
            raise ShapeError(
                f"conv2d: weight of shape {w.shape} does not fit input {x.shape}; "
                f"expected (out_channels, {x.shape[1]}, kh, kw)"
            )
        o, c, kh, kw = w.shape
        if min(w.shape) == 0:
            raise ShapeError(f"conv2d: weight of shape {w.shape} has an empty axis")
        if b is not None and b.shape != (o,):
            raise ShapeError(f"conv2d: bias of shape {b.shape}, expected ({o},)")
        sh, sw = as_pair(stride, "stride", 1)
        ph, pw = as_pair(padding, "padding", 0)
        dh, dw = as_pair(dilation, "dilation", 1)
        n, _, h, wd = x.shape
        ho, wo = _out_size(h, kh, sh, ph, dh), _out_size(wd, kw, sw, pw, dw)
        if ho < 1 or wo < 1:
            raise ShapeError(
                f"conv2d: a {kh}x{kw} kernel (dilation {dilation}) does not fit input "
                f"{h}x{wd} with padding {padding}"
            )
        xpad = _padded(x, ph, pw, 0.0)
        wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)
        xp = namespace(x)
        dtype = np.result_type(x.dtype, w.dtype)
        y = xp.empty((n, ho, wo, o), dtype=dtype)
        step = _chunk(ho * wo * kh * kw * c * dtype.itemsize)
        geo = (kh, kw, sh, sw, dh, dw)
        bias = None if b is None else _tiled(b.astype(dtype, copy=False), ho * wo)
        for s in range(0, n, step):
            cols = _unfold(xpad[s : s + step], *geo)
            ys = y[s : s + step]
            xp.matmul(cols, wm, out=ys.reshape(-1, o))
            if bias is not None:  # while this slice of the output is still in the cache
                yr = ys.reshape(ys.shape[0], -1)
                parallel.ufunc(xp.add, yr, bias, out=yr)
        geometry = {"stride": stride, "padding": padding, "dilation": dilation}
        return _nchw(y), (x, w, b is not None, geometry)

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True, True, True)) -> Grads:
        x, w, has_bias, geometry = saved
        gx = gw = gb = None
        if needs[0]:
            gx = call(Conv2dInputGradOp, g, w, size=tuple(x.shape[2:]), **geometry)
        if needs[1]:
            gw = call(Conv2dWeightGradOp, x, g, kernel=tuple(w.shape[2:]), **geometry)
        if has_bias and needs[2]:
            gb = _per_channel_sum(_nhwc(g).reshape(g.shape[0], -1), g.shape[1])
        return (gx, gw, gb)[: 3 if has_bias else 2]


def _conv_geometry(
    what: str,
    size: Sequence[int],
    kernel: Sequence[int],
    out: Sequence[int],
    stride: IntOrPair,
    padding: IntOrPair,
    dilation: IntOrPair,
) -> tuple[int, ...]:
    """Stride, padding and dilation as pairs, checked against the output size ``out``."""
    (h, wd), (kh, kw) = size, kernel
    sh, sw = as_pair(stride, "stride", 1)
    ph, pw = as_pair(padding, "padding", 0)
    dh, dw = as_pair(dilation, "dilation", 1)
    expected = (_out_size(h, kh, sh, ph, dh), _out_size(wd, kw, sw, pw, dw))
    if expected != tuple(out) or min(expected) < 1:
        raise ShapeError(
            f"{what}: a gradient of spatial size {tuple(out)} does not fit a convolution of "
            f"input {h}x{wd} with a {kh}x{kw} kernel (stride {stride}, padding {padding}, "
            f"dilation {dilation}), which gives {expected}"
        )
    return sh, sw, ph, pw, dh, dw


def _conv_grad_case(d: Draw, which: str) -> Case:
    """A conv2d case, turned into the inputs of its input or weight gradient."""
    case = _conv_case(d)
    (n, c, h, w), (o, _, kh, kw) = case.shapes[:2]
    sh, sw = as_pair(case.params["stride"], "stride", 1)
    ph, pw = as_pair(case.params["padding"], "padding", 0)
    dh, dw = as_pair(case.params["dilation"], "dilation", 1)
    g = (n, o, _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw))
    if which == "input":
        return Case([g, (o, c, kh, kw)], {**case.params, "size": (h, w)})
    return Case([(n, c, h, w), g], {**case.params, "kernel": (kh, kw)})


class Conv2dInputGradOp(Op):
    r"""The input gradient of [conv2d](#conv2d) (a transposed convolution): $\mathcal{U}^*(G \bar W^T)$.

    `g` is $(N, O, H', W')$, `w` is $(O, C, k_h, k_w)$, `size` is the input's
    $(H, W)$; stride, padding and dilation are those of the convolution. This is
    conv2d's vjp with respect to $X$, made an op so that it can be
    differentiated again: its forward is the fold described under
    [conv2d](#conv2d), npgrad's fast NumPy code.

    **Stride 1: a convolution.** Entry $(h', i)$ of the fold lands on input row
    $h = h' + i d_h - p_h$, so with $i' = k_h - 1 - i$ and $q_h = d_h(k_h-1) - p_h$,
    $h' = h + i' d_h - q_h$: row $h$ reads $G$ at $h + i' d_h$ on $G$ padded by $q_h$
    (likewise the width). Hence, when $q_h, q_w \ge 0$,

    $$\mathcal{U}^*(G \bar W^T)_{n c h w} = \sum_{o, i', j'} \tilde W_{c o i' j'}\, G^{q}_{n,\, o,\, h + i' d_h,\, w + j' d_w},
    \qquad \tilde W_{c o i' j'} = W_{o,\, c,\, k_h-1-i',\, k_w-1-j'},$$

    the [conv2d](#conv2d) of $G$ with the kernel flipped and its channel axes
    swapped, padding $q$, dilation $d$. npgrad computes it so where $C$ is large
    (`FLIPPED_MIN_CHANNELS`): one product of depth $k_h k_w O$ rather than $k_h k_w$
    narrow ones and a fold. With few input channels that product has few output
    columns, which BLAS runs slowly, and the fold is faster.

    It is linear in $G$ and in $W$. Write $Z = \mathrm{conv}(\cdot, W)$ for the
    convolution without bias; the op is its adjoint, $\mathcal{A}_W(G) = Z^*(G)$,
    defined by $\mathrm{tr}\big(\mathcal{A}_W(G)^T X\big) = \mathrm{tr}\big(G^T \mathrm{conv}(X, W)\big)$
    for every $X$. With upstream $U$ (shaped like $X$) and both factors varying,

    $$df = \mathrm{tr}\big(U^T \mathcal{A}_{W}(dG)\big) + \mathrm{tr}\big(U^T \mathcal{A}_{dW}(G)\big)
         = \mathrm{tr}\big(\mathrm{conv}(U, W)^T dG\big) + \mathrm{tr}\big(G^T \mathrm{conv}(U, dW)\big),$$

    applying the defining identity to each term. The first gives
    $\partial f/\partial G = \mathrm{conv}(U, W)$, a [conv2d](#conv2d) of $U$; the
    second is conv2d's weight term with $U$ as the input, so
    $\partial f/\partial W = $ [conv2d_weight_grad](#conv2d_weight_grad)$(U, G)$.
    The three ops close under differentiation: each one's vjp is made of the
    other two.
    """

    name = "conv2d_input_grad"
    spec = OpSpec(
        draw=lambda d: _conv_grad_case(d, "input"),
        torch=lambda t, g, w, size=(1, 1), **p: t.nn.grad.conv2d_input(
            (g.shape[0], w.shape[1], *size), w, g, **p
        ),
    )

    @staticmethod
    def forward(
        g: Array,
        w: Array,
        size: Sequence[int] = (1, 1),
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
    ) -> tuple[Array, Any]:
        _check_4d(g, "conv2d_input_grad")
        if w.ndim != 4 or w.shape[0] != g.shape[1]:
            raise ShapeError(
                f"conv2d_input_grad: weight of shape {w.shape} does not fit gradient {g.shape}"
            )
        o, c, kh, kw = w.shape
        n, _, ho, wo = g.shape
        h, wd = size
        sh, sw, ph, pw, dh, dw = _conv_geometry(
            "conv2d_input_grad", size, (kh, kw), (ho, wo), stride, padding, dilation
        )
        geometry = {"stride": stride, "padding": padding, "dilation": dilation}
        fh, fw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
        if sh == sw == 1 and min(fh, fw) >= 0 and c >= FLIPPED_MIN_CHANNELS:
            # stride 1: a convolution of G with the kernel flipped, O and C swapped
            flipped = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
            gx = Conv2dOp.forward(g, flipped, padding=(fh, fw), dilation=(dh, dw))[0]
            return gx, (g, w, geometry)
        g2 = parallel.copy(_nhwc(g)).reshape(-1, o)
        xp = namespace(g)
        dtype = np.result_type(w.dtype, g.dtype)
        gxp = xp.zeros((n, h + 2 * ph, wd + 2 * pw, c), dtype=dtype)
        wt = xp.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw, o, c)
        step = _chunk(ho * wo * kh * kw * c * dtype.itemsize)
        rows = ho * wo
        for s in range(0, n, step):
            # one product per kernel offset, so each offset's block comes out contiguous
            d = xp.matmul(g2[s * rows : (s + step) * rows], wt).reshape(kh, kw, -1, ho, wo, c)
            _fold(gxp[s : s + step], d, sh, sw, dh, dw)
        return _nchw(gxp[:, ph : ph + h, pw : pw + wd]), (g, w, geometry)

    @staticmethod
    def vjp(saved: Any, u: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        g, w, geometry = saved
        gg = call(Conv2dOp, u, w, **geometry) if needs[0] else None
        gw = (
            call(Conv2dWeightGradOp, u, g, kernel=tuple(w.shape[2:]), **geometry)
            if needs[1]
            else None
        )
        return gg, gw


class Conv2dWeightGradOp(Op):
    r"""The weight gradient of [conv2d](#conv2d): $U^T G$ with $U = \mathcal{U}(X)$, as $(O, C, k_h, k_w)$.

    `x` is $(N, C, H, W)$, `g` is $(N, O, H', W')$, `kernel` is $(k_h, k_w)$;
    stride, padding and dilation are those of the convolution. This is
    conv2d's vjp with respect to $W$, made an op so that it can be
    differentiated again: its forward unfolds $X$ a slice of the batch at a
    time and multiplies, as described under [conv2d](#conv2d).

    It is linear in $X$ and in $G$, and it is defined by
    $\mathrm{tr}\big(\mathcal{B}(X, G)^T W\big) = \mathrm{tr}\big(G^T \mathrm{conv}(X, W)\big)$
    for every $W$ (the convolution without bias). With upstream $V$ (shaped like $W$),

    $$df = \mathrm{tr}\big(V^T \mathcal{B}(dX, G)\big) + \mathrm{tr}\big(V^T \mathcal{B}(X, dG)\big)
         = \mathrm{tr}\big(G^T \mathrm{conv}(dX, V)\big) + \mathrm{tr}\big(\mathrm{conv}(X, V)^T dG\big).$$

    The second term gives $\partial f/\partial G = \mathrm{conv}(X, V)$, a
    [conv2d](#conv2d) with $V$ as the kernel. In the first, $dX$ enters a
    convolution with kernel $V$, paired with $G$: that is conv2d's input term,
    so $\partial f/\partial X = $ [conv2d_input_grad](#conv2d_input_grad)$(G, V)$.
    """

    name = "conv2d_weight_grad"
    spec = OpSpec(
        draw=lambda d: _conv_grad_case(d, "weight"),
        torch=lambda t, x, g, kernel=(1, 1), **p: t.nn.grad.conv2d_weight(
            x, (g.shape[1], x.shape[1], *kernel), g, **p
        ),
    )

    @staticmethod
    def forward(
        x: Array,
        g: Array,
        kernel: Sequence[int] = (1, 1),
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
    ) -> tuple[Array, Any]:
        _check_4d(x, "conv2d_weight_grad")
        _check_4d(g, "conv2d_weight_grad")
        if g.shape[0] != x.shape[0]:
            raise ShapeError(
                f"conv2d_weight_grad: input {x.shape} and gradient {g.shape} differ in N"
            )
        n, c, h, wd = x.shape
        o, ho, wo = g.shape[1:]
        kh, kw = as_pair(kernel, "kernel size", 1)
        sh, sw, ph, pw, dh, dw = _conv_geometry(
            "conv2d_weight_grad", (h, wd), (kh, kw), (ho, wo), stride, padding, dilation
        )
        xpad = _padded(x, ph, pw, 0.0)
        g2 = parallel.copy(_nhwc(g)).reshape(-1, o)
        gwm = namespace(x).zeros((kh * kw * c, o), dtype=np.result_type(x.dtype, g.dtype))
        geo = (kh, kw, sh, sw, dh, dw)
        step = _chunk(ho * wo * kh * kw * c * xpad.dtype.itemsize)
        rows = ho * wo
        for s in range(0, n, step):
            gwm += _unfold(xpad[s : s + step], *geo).T @ g2[s * rows : (s + step) * rows]
        geometry = {"stride": stride, "padding": padding, "dilation": dilation}
        return gwm.reshape(kh, kw, c, o).transpose(3, 2, 0, 1), (x, g, geometry)

    @staticmethod
    def vjp(saved: Any, v: Array, needs: tuple[bool, ...] = (True, True)) -> Grads:
        x, g, geometry = saved
        gx = (
            call(Conv2dInputGradOp, g, v, size=tuple(x.shape[2:]), **geometry) if needs[0] else None
        )
        gg = call(Conv2dOp, x, v, **geometry) if needs[1] else None
        return gx, gg


def _chunk(bytes_per_sample: int) -> int:
    return max(1, CHUNK_BYTES // max(1, bytes_per_sample))


# --------------------------------------------------------------------------- pooling


def _pool_geometry(
    size: Sequence[int],
    kernel: IntOrPair,
    stride: IntOrPair | None,
    padding: IntOrPair,
    dilation: IntOrPair,
) -> tuple[int, ...]:
    """Kernel, stride, padding, dilation as pairs, and the output size, for input ``size`` (H, W)."""
    kh, kw = as_pair(kernel, "kernel size", 1)
    sh, sw = as_pair(kernel if stride is None else stride, "stride", 1)
    ph, pw = as_pair(padding, "padding", 0)
    dh, dw = as_pair(dilation, "dilation", 1)
    if ph > kh // 2 or pw > kw // 2:
        raise ConfigError(
            f"pooling padding {padding} is more than half the kernel size {kernel} "
            "(PyTorch's limit): a window could hold padding only"
        )
    ho, wo = _out_size(size[0], kh, sh, ph, dh), _out_size(size[1], kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ShapeError(f"pooling window {kernel} does not fit input {tuple(size)}")
    return kh, kw, sh, sw, ph, pw, dh, dw, ho, wo


def _along(a: Array, axis: int, sl: slice) -> Array:
    return a[(slice(None),) * axis + (sl,)]


def _max_along(a: Array, axis: int, taps: list[slice]) -> tuple[Array, Array]:
    """Windowed max along one axis and, per window, the first offset that attains it.

    Offset t wins when it is strictly greater than the maximum of the offsets
    before it, so the winner is the largest t that won: a running ``maximum`` of
    ``t * won`` tracks it without masked assignment (which is far slower).
    """
    first = _along(a, axis, taps[0])
    xp = namespace(a)
    m = xp.empty_like(first)  # the layout of a
    idx = xp.empty_like(first, dtype=np.uint8 if len(taps) < 256 else np.int32)

    def part(lo: int, hi: int) -> None:  # along the batch axis (axis > 0)
        ai, mi, ii = a[lo:hi], m[lo:hi], idx[lo:hi]
        if len(taps) == 1:
            mi[...] = _along(ai, axis, taps[0])
            ii[...] = 0
            return
        v0, v1 = _along(ai, axis, taps[0]), _along(ai, axis, taps[1])
        xp.greater(v1, v0, out=ii, casting="unsafe")  # strictly: a tie keeps the earlier offset
        xp.maximum(v0, v1, out=mi)  # NaN propagates, as in PyTorch
        for t, sl in enumerate(taps[2:], start=2):
            v = _along(ai, axis, sl)
            won = (v > mi).astype(ii.dtype)
            won *= ii.dtype.type(t)
            xp.maximum(ii, won, out=ii)
            xp.maximum(mi, v, out=mi)

    parallel.sweep(part, m, passes=len(taps))
    return m, idx


def _spread(g: Array, idx: Array | None, axis: int, taps: list[slice], size: int) -> Array:
    """Adjoint of a one-axis window reduction: send each window's gradient to its taps.

    With ``idx`` (max) only the chosen offset receives it; without (sum) every
    offset does. Overlapping windows add; when they do not overlap (stride at
    least the window, the usual pooling) each tap is written once, in place.
    """
    shape = list(g.shape)
    shape[axis] = size
    extent = taps[-1].start - taps[0].start + 1
    disjoint = len(taps) == 1 or (taps[0].step or 1) >= extent
    # windows that tile the axis exactly write every entry below: no zeros needed
    step = taps[0].step or 1
    tiled = step == extent == len(taps) and step * g.shape[axis] == size
    xp = namespace(g)
    out = (xp.empty if tiled else xp.zeros)(shape, dtype=g.dtype)

    def part(lo: int, hi: int) -> None:  # along the batch axis (axis > 0)
        gi, oi = g[lo:hi], out[lo:hi]
        ii = None if idx is None else idx[lo:hi]
        for t, sl in enumerate(taps):
            dst = _along(oi, axis, sl)
            if ii is None:
                src = gi
            elif disjoint:
                xp.multiply(gi, ii == t, out=dst)  # multiplying by a mask beats np.where
                continue
            else:
                src = gi * (ii == t)
            if disjoint:
                dst[...] = src
            else:
                dst += src

    parallel.sweep(part, out, passes=len(taps))
    return out


def _pool_case(d: Draw, dilation: bool) -> Case:
    n, c = d.size(1, 2), d.size(1, 3)
    kh, kw = d.size(1, 3), d.size(1, 3)
    params: dict[str, Any] = {"kernel": (kh, kw) if d.flag() else kh}
    kh, kw = as_pair(params["kernel"], "kernel", 1)
    if d.flag(0.7):
        params["stride"] = d.choice([1, 2, (2, 1), 3])
    dil = d.choice([1, 1, 2]) if dilation else 1
    if dilation:
        params["dilation"] = dil
    ekh, ekw = dil * (kh - 1) + 1, dil * (kw - 1) + 1
    params["padding"] = d.choice([0, (min(1, kh // 2), min(1, kw // 2))])
    h, w = ekh + d.size(0, 4), ekw + d.size(0, 4)
    return Case([(n, c, h, w)], params)


class MaxPool2dOp(Op):
    r"""2-D max pooling over windows of `kernel` (NCHW), PyTorch's `max_pool2d`.

    `stride` defaults to the kernel; `padding` adds $-\infty$ around the input
    (at most half the kernel size, as in PyTorch); `dilation` spaces the window. For
    each window $\mathcal{W}$, $Y_{\mathcal{W}} = \max_{k \in \mathcal{W}} X_k$.

    Locally (no ties) $Y_{\mathcal{W}} = X_{k(\mathcal{W})}$ for the position
    $k(\mathcal{W})$ of the window's maximum, a selection like
    [getitem](#getitem): $dY_{\mathcal{W}} = dX_{k(\mathcal{W})}$, so

    $$df = \sum_{\mathcal{W}} G_{\mathcal{W}}\, dX_{k(\mathcal{W})} = \mathrm{tr}\big(\mathcal{S}^*(G)^T dX\big),$$

    and $\partial f/\partial X = \mathcal{S}^*(G)$: each window's gradient goes to
    its arg-max, added up where overlapping windows share one; every other
    input gets $0$; padding positions are dropped.

    **Ties.** At a tie the max is not differentiable. npgrad sends the whole
    gradient to *one* element, the first in the window in row-major order,
    which is PyTorch's choice too (unlike [max](#max), which splits it): the
    gradient then stays a selection, and a sum of window gradients never
    counts a window twice.

    The max is computed separably, along the width and then along the
    height ($\max_{\mathcal{W}} = \max_i \max_j$), keeping the arg-max offset
    of each stage (first along the row, then the first row): that is the
    row-major first arg-max, and the backward pass undoes the two stages in
    reverse, each a selection.

    *Second order.* The routing (which element of each window is the maximum,
    `MaxRouting`) is piecewise constant in $X$, like [max](#max)'s: the vjp is
    the [max_pool2d_scatter](#max_pool2d_scatter) of $G$ by that constant
    routing, linear in $G$. Differentiating it again gives the
    [max_pool2d_gather](#max_pool2d_gather) for $G$ and $0$ for $X$, exact
    everywhere but at ties, where max pooling is not differentiable anyway.
    """

    name = "max_pool2d"
    saves_output = False
    # Ties would make the numerical gradient meaningless; normal draws have none.
    spec = OpSpec(
        draw=lambda d: _pool_case(d, dilation=True),
        torch=lambda t, x, kernel=2, stride=None, padding=0, dilation=1: t.nn.functional.max_pool2d(
            x, kernel, stride, padding, dilation
        ),
    )

    @staticmethod
    def forward(
        x: Array,
        kernel: IntOrPair = 2,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
    ) -> tuple[Array, Any]:
        _check_4d(x, "max_pool2d")
        kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = _pool_geometry(
            x.shape[2:], kernel, stride, padding, dilation
        )
        xpad = _padded(x, ph, pw, -np.inf)
        wtaps, htaps = _taps(wo, kw, sw, dw), _taps(ho, kh, sh, dh)
        m1, i1 = _max_along(xpad, 2, wtaps)
        m2, i2 = _max_along(m1, 1, htaps)
        return _nchw(m2), MaxRouting(i1, i2, wtaps, htaps, xpad.shape, (ph, pw, *x.shape[2:]))

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (call(MaxPool2dScatterOp, g, routing=saved),)


@dataclass(frozen=True, eq=False, repr=False)
class MaxRouting:
    """Where each window of a max_pool2d found its maximum: a constant of the forward pass.

    ``i1`` and ``i2`` are the arg-max offsets of the two separable stages (along
    the width on the padded grid, then along the height), ``wtaps`` and
    ``htaps`` their taps, ``pshape`` the padded NHWC shape, ``crop`` the
    padding and the input size ``(ph, pw, h, w)``.
    """

    i1: Array
    i2: Array
    wtaps: list[slice]
    htaps: list[slice]
    pshape: tuple[int, ...]
    crop: tuple[int, ...]

    @property
    def in_shape(self) -> tuple[int, int, int, int]:
        n, _, _, c = self.pshape
        return n, c, self.crop[2], self.crop[3]

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        n, ho, wo, c = self.i2.shape
        return n, c, ho, wo

    def flat(self) -> Array:
        """Each window's arg-max as a flat index into its channel's ``H*W`` (N, C, H', W').

        PyTorch's ``return_indices`` convention; for the checks against PyTorch.
        """
        n, ho, wo, c = self.i2.shape
        ph, pw, _, w = self.crop
        (sh, dh), (sw, dw) = (
            (t[0].step, t[1].start if len(t) > 1 else 0) for t in (self.htaps, self.wtaps)
        )
        xp = namespace(self.i2)
        ni, hi, wi, ci = (
            xp.arange(k).reshape([-1 if j == i else 1 for j in range(4)])
            for i, k in enumerate((n, ho, wo, c))
        )  # np.ogrid, on the indices' device
        rows = hi * sh + self.i2.astype(np.intp) * dh
        cols = wi * sw + self.i1[ni, rows, wi, ci].astype(np.intp) * dw
        return ((rows - ph) * w + (cols - pw)).transpose(0, 3, 1, 2)

    def __repr__(self) -> str:
        return f"MaxRouting{list(self.in_shape)}->{list(self.out_shape)}"


def _pick(a: Array, idx: Array, axis: int, taps: list[slice]) -> Array:
    """Adjoint of :func:`_spread` with ``idx``: each window reads its chosen tap of ``a``."""
    out = _along(a, axis, taps[0]) * (idx == 0)
    for t, sl in enumerate(taps[1:], start=1):
        out += _along(a, axis, sl) * (idx == t)
    return out


def _routing_case(d: Draw, which: str) -> Case:
    """The routing of a max_pool2d of normal draws (no ties), and a gradient or input for it."""
    case = _pool_case(d, dilation=True)
    routing = MaxPool2dOp.forward(d.rng.standard_normal(case.shapes[0]), **case.params)[1]
    return Case(
        [routing.out_shape if which == "scatter" else routing.in_shape], {"routing": routing}
    )


def _torch_flat(t: Any, routing: MaxRouting) -> Any:
    n, c = routing.out_shape[:2]
    return t.as_tensor(routing.flat().reshape(n, c, -1))


def _torch_scatter(t: Any, g: Any, routing: MaxRouting) -> Any:
    n, c, h, w = routing.in_shape
    out = t.zeros((n, c, h * w), dtype=g.dtype)
    return out.scatter_add(2, _torch_flat(t, routing), g.reshape(n, c, -1)).reshape(n, c, h, w)


def _torch_gather(t: Any, u: Any, routing: MaxRouting) -> Any:
    n, c = u.shape[:2]
    return u.reshape(n, c, -1).gather(2, _torch_flat(t, routing)).reshape(routing.out_shape)


def _routing_of(
    routing: MaxRouting | None, what: str, shape: tuple[int, ...], want: str
) -> MaxRouting:
    if not isinstance(routing, MaxRouting):
        raise ConfigError(f"{what} needs the routing=... of a max_pool2d forward pass")
    expected = getattr(routing, want)
    if tuple(shape) != expected:
        raise ShapeError(
            f"{what}: input of shape {tuple(shape)}, but the routing is for {expected}"
        )
    return routing


class MaxPool2dScatterOp(Op):
    r"""Max pooling's vjp: each window's $G_{\mathcal{W}}$ added at its arg-max, $\mathcal{S}^*(G)$.

    `g` is $(N, C, H', W')$; `routing` (a `MaxRouting`, what a
    [max_pool2d](#max_pool2d) forward pass saves) says where each window's
    maximum was. The output has the pooled input's shape. This is
    [max_pool2d](#max_pool2d)'s vjp, made an op so that it can be
    differentiated again; its forward is npgrad's fast two-stage spread.

    With the routing fixed it is linear: $Y = \mathcal{S}^*(G)$ with
    $\mathcal{S}$ the selection $X \mapsto (X_{k(\mathcal{W})})_{\mathcal{W}}$, so
    $df = \mathrm{tr}\big(U^T \mathcal{S}^*(dG)\big) = \mathrm{tr}\big(\mathcal{S}(U)^T dG\big)$
    and $\partial f/\partial G = \mathcal{S}(U)$: each window reads $U$ at its
    arg-max, the [max_pool2d_gather](#max_pool2d_gather). A scatter and its
    gather are adjoint, as [index_add](#index_add) and [getitem](#getitem) are.
    """

    name = "max_pool2d_scatter"
    spec = OpSpec(draw=lambda d: _routing_case(d, "scatter"), torch=_torch_scatter)

    @staticmethod
    def forward(g: Array, routing: MaxRouting | None = None) -> tuple[Array, Any]:
        r = _routing_of(routing, "max_pool2d_scatter", g.shape, "out_shape")
        ph, pw, h, w = r.crop
        g1 = _spread(_nhwc(g), r.i2, 1, r.htaps, r.pshape[1])
        gxp = _spread(g1, r.i1, 2, r.wtaps, r.pshape[2])
        return _nchw(gxp[:, ph : ph + h, pw : pw + w]), r

    @staticmethod
    def vjp(saved: Any, u: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (call(MaxPool2dGatherOp, u, routing=saved),)


class MaxPool2dGatherOp(Op):
    r"""Each max-pooling window's arg-max entry of `u`: $\mathcal{S}(U)$, for a fixed `routing`.

    `u` has the shape of the pooled input, $(N, C, H, W)$; the output is
    $(N, C, H', W')$, $Y_{\mathcal{W}} = U_{k(\mathcal{W})}$ with $k(\mathcal{W})$ the
    arg-max that `routing` recorded. On the pooled input itself it is the max
    pool. A selection, linear in $U$: $df = \sum_{\mathcal{W}} G_{\mathcal{W}}\, dU_{k(\mathcal{W})}
    = \mathrm{tr}\big(\mathcal{S}^*(G)^T dU\big)$, so the gradient is the
    [max_pool2d_scatter](#max_pool2d_scatter) of $G$. It exists as the vjp of that
    scatter, so that max pooling can be differentiated to any order.
    """

    name = "max_pool2d_gather"
    spec = OpSpec(draw=lambda d: _routing_case(d, "gather"), torch=_torch_gather)

    @staticmethod
    def forward(u: Array, routing: MaxRouting | None = None) -> tuple[Array, Any]:
        r = _routing_of(routing, "max_pool2d_gather", u.shape, "in_shape")
        ph, pw = r.crop[:2]
        m1 = _pick(_padded(u, ph, pw, 0.0), r.i1, 2, r.wtaps)
        return _nchw(_pick(m1, r.i2, 1, r.htaps)), r

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (call(MaxPool2dScatterOp, g, routing=saved),)


class AvgPool2dOp(Op):
    r"""2-D average pooling over windows of `kernel` (NCHW), PyTorch's `avg_pool2d`.

    `stride` defaults to the kernel; `padding` adds zeros, which count in the
    average (PyTorch's default `count_include_pad=True`): every window is
    divided by $k_h k_w$. Each output is a fixed linear combination,
    $Y_{\mathcal{W}} = \frac{1}{k_h k_w}\sum_{k \in \mathcal{W}} X_k$, so
    $dY_{\mathcal{W}} = \frac{1}{k_h k_w}\sum_{k\in\mathcal{W}} dX_k$ and

    $$df = \sum_{\mathcal{W}} \frac{G_{\mathcal{W}}}{k_h k_w} \sum_{k \in \mathcal{W}} dX_k:$$

    every input receives $G_{\mathcal{W}}/(k_h k_w)$ from each window that contains
    it (overlaps add, padding positions are dropped). Like the max, the sum is
    taken separably, along the width and then the height, and spread back in
    reverse.

    *Second order.* The op is linear, and so is its vjp: the spread is the op
    [avg_pool2d_input_grad](#avg_pool2d_input_grad) (the adjoint, a transposed
    pooling), whose own vjp is avg_pool2d. Differentiating the gradient again
    therefore gives avg_pool2d for $G$ and $0$ for $X$.
    """

    name = "avg_pool2d"
    saves_output = False
    spec = OpSpec(
        draw=lambda d: _pool_case(d, dilation=False),
        torch=lambda t, x, kernel=2, stride=None, padding=0: t.nn.functional.avg_pool2d(
            x, kernel, stride, padding
        ),
    )

    @staticmethod
    def forward(
        x: Array, kernel: IntOrPair = 2, stride: IntOrPair | None = None, padding: IntOrPair = 0
    ) -> tuple[Array, Any]:
        _check_4d(x, "avg_pool2d")
        kh, kw, sh, sw, ph, pw, _, _, ho, wo = _pool_geometry(
            x.shape[2:], kernel, stride, padding, 1
        )
        xpad = _padded(x, ph, pw, 0.0)
        wtaps, htaps = _taps(wo, kw, sw, 1), _taps(ho, kh, sh, 1)
        s1 = _along(xpad, 2, wtaps[0]).copy()
        for sl in wtaps[1:]:
            s1 += _along(xpad, 2, sl)
        s2 = _along(s1, 1, htaps[0]).copy()
        for sl in htaps[1:]:
            s2 += _along(s1, 1, sl)
        s2 *= s2.dtype.type(1.0 / (kh * kw))
        return _nchw(s2), {
            "kernel": kernel,
            "stride": stride,
            "padding": padding,
            "size": x.shape[2:],
        }

    @staticmethod
    def vjp(saved: Any, g: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (call(AvgPool2dInputGradOp, g, **saved),)


def _avg_grad_case(d: Draw) -> Case:
    case = _pool_case(d, dilation=False)
    n, c, h, w = case.shapes[0]
    p = case.params
    ho, wo = _pool_geometry((h, w), p["kernel"], p.get("stride"), p["padding"], 1)[-2:]
    return Case([(n, c, ho, wo)], {**p, "size": (h, w)})


def _torch_avg_pool2d_backward(
    t: Any,
    g: Any,
    kernel: IntOrPair = 2,
    stride: Any = None,
    padding: IntOrPair = 0,
    size: Any = (),
) -> Any:
    like = t.zeros((*g.shape[:2], *size), dtype=g.dtype)
    k = as_pair(kernel, "kernel", 1)
    s = k if stride is None else as_pair(stride, "stride", 1)
    p = as_pair(padding, "padding", 0)
    return t.ops.aten.avg_pool2d_backward(g, like, k, s, p, False, True, None)


class AvgPool2dInputGradOp(Op):
    r"""Average pooling's vjp: every window's $G_{\mathcal{W}}/(k_h k_w)$ spread over the window.

    `g` is $(N, C, H', W')$, `size` the pooled input's $(H, W)$; kernel, stride
    and padding are those of the [avg_pool2d](#avg_pool2d). It is that op's vjp,
    made an op so that it can be differentiated again; its forward is npgrad's
    two-stage spread. Writing avg_pool2d as the linear map $Y = \mathcal{P}(X)$, this
    op is its adjoint $\mathcal{P}^*$: $\mathrm{tr}\big(\mathcal{P}^*(G)^T X\big) = \mathrm{tr}\big(G^T \mathcal{P}(X)\big)$.
    So, with upstream $U$,

    $$df = \mathrm{tr}\big(U^T \mathcal{P}^*(dG)\big) = \mathrm{tr}\big(\mathcal{P}(U)^T dG\big),$$

    and $\partial f/\partial G = \mathcal{P}(U)$: the [avg_pool2d](#avg_pool2d) of $U$.
    """

    name = "avg_pool2d_input_grad"
    spec = OpSpec(draw=_avg_grad_case, torch=_torch_avg_pool2d_backward)

    @staticmethod
    def forward(
        g: Array,
        kernel: IntOrPair = 2,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        size: Sequence[int] = (2, 2),
    ) -> tuple[Array, Any]:
        _check_4d(g, "avg_pool2d_input_grad")
        kh, kw, sh, sw, ph, pw, _, _, ho, wo = _pool_geometry(size, kernel, stride, padding, 1)
        if (ho, wo) != g.shape[2:]:
            raise ShapeError(
                f"avg_pool2d_input_grad: a gradient of spatial size {g.shape[2:]} does not fit "
                f"pooling input {tuple(size)} with kernel {kernel}, which gives {(ho, wo)}"
            )
        h, w = size
        wtaps, htaps = _taps(wo, kw, sw, 1), _taps(ho, kh, sh, 1)
        gs = _nhwc(g) * g.dtype.type(1.0 / (kh * kw))
        gxp = _spread(_spread(gs, None, 1, htaps, h + 2 * ph), None, 2, wtaps, w + 2 * pw)
        return _nchw(gxp[:, ph : ph + h, pw : pw + w]), {
            "kernel": kernel,
            "stride": stride,
            "padding": padding,
        }

    @staticmethod
    def vjp(saved: Any, u: Array, needs: tuple[bool, ...] = (True,)) -> Grads:
        return (call(AvgPool2dOp, u, **saved),)


# --------------------------------------------------------------------------- batch norm


def _channels_last_2d(x: Array) -> Array:
    """``(N, C, *S)`` as a C-contiguous ``(N, prod(S) * C)`` matrix, channels fastest.

    A view when ``x`` is channels-last in memory; otherwise the reshape copies.
    """
    return x.transpose((0, *range(2, x.ndim), 1)).reshape(x.shape[0], -1)


def _back_to(y2: Array, like: tuple[int, ...]) -> Array:
    """Inverse of :func:`_channels_last_2d` for an input of shape ``like`` (a view)."""
    n, c, *rest = like
    return y2.reshape(n, *rest, c).transpose((0, len(like) - 1, *range(1, len(like) - 1)))


def _each(f: str, a: Array, b: Array) -> Array:
    """``xp.f(a, b)`` for a ``(rows, width)`` array and a row, cut across threads (forward only)."""
    xp = namespace(a)
    out = xp.empty(a.shape, dtype=np.result_type(a.dtype, b.dtype))
    return parallel.ufunc(getattr(xp, f), a, b, out=out)


def _affine(a: Array, scale: Array, *shifts: Array, out: Array | None = None) -> Array:
    """``a * scale + shifts[0] + shifts[1] ...`` for a ``(rows, width)`` array and rows of
    its width, added in that order, into ``out`` if given; a block of rows at a time (each
    add reads the product from the cache), cut across threads (forward only)."""
    xp = namespace(a)
    y = xp.empty(a.shape, dtype=np.result_type(a.dtype, scale.dtype)) if out is None else out

    def part(lo: int, hi: int) -> None:
        yi = y[lo:hi]
        xp.multiply(a[lo:hi], scale, out=yi)
        for t in shifts:
            xp.add(yi, t, out=yi)

    parallel.sweep(part, y, passes=1 + len(shifts))
    return y


def _over(a2: Array, out: Array | None) -> Array | None:
    """``a2`` (the 2-D view of ``out``) when an op may write over ``out`` and ``a2`` is its
    memory, else None (``out``'s channels-last reshape had to copy)."""
    if out is None or not namespace(a2).may_share_memory(a2, out):
        return None
    return a2


def _batch_norm_dx(
    g2: Array, xs: Array, t1: Array, t2: Array, t3: Array, out: Array | None = None
) -> Array:
    """``g2 * t1 - t2 - xs * t3``, batch norm's input gradient (rows of ``(rows, width)``).

    On arrays in one pass per row block, cut across threads, into ``out`` if given (``g2``
    itself: each row block is read before it is written); on Tensors (recording a
    second-order graph) with the same operations in the same order, so the same value.
    """
    xp = namespace(g2)
    if not (isinstance(g2, xp.ndarray) and isinstance(xs, xp.ndarray)):
        gx = g2 * t1
        gx -= t2
        gx -= xs * t3
        return gx
    dtype = np.result_type(g2.dtype, t1.dtype)
    gx = xp.empty(g2.shape, dtype=dtype) if out is None or out.dtype != dtype else out

    def part(lo: int, hi: int) -> None:
        out = gx[lo:hi]
        xp.multiply(g2[lo:hi], t1, out=out)
        out -= t2
        out -= xs[lo:hi] * t3

    parallel.sweep(part, gx, passes=3)
    return gx


def _update_running(
    running_mean: Array, running_var: Array, mean: Array, var: Array, m: int, momentum: float
) -> None:
    """PyTorch's update, in place: an exponential average with the *unbiased* batch variance."""
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += momentum * var * (m / (m - 1))


def _batch_norm_case(d: Draw) -> Case:
    n, c = d.size(2, 4), d.size(1, 3)
    shape: tuple[int, ...] = (n, c) if d.flag() else (n, c, d.size(1, 3), d.size(1, 3))
    params: dict[str, Any] = {"training": d.flag(0.6), "eps": d.choice([1e-5, 1e-3])}
    if not params["training"]:
        params["running_mean"] = d.rng.standard_normal(c)
        params["running_var"] = np.abs(d.rng.standard_normal(c)) + 0.5
    return Case([shape, (c,), (c,)], params)


def _torch_batch_norm(
    t: Any,
    x: Any,
    gamma: Any,
    beta: Any,
    running_mean: Array | None = None,
    running_var: Array | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Any:
    rm = None if running_mean is None else t.tensor(running_mean, dtype=x.dtype)
    rv = None if running_var is None else t.tensor(running_var, dtype=x.dtype)
    return t.nn.functional.batch_norm(x, rm, rv, gamma, beta, training, momentum, eps)


class BatchNormSaved(NamedTuple):
    """What batch norm's vjp reads, the same fields in both modes."""

    training: bool
    xs: Array  # channels-last (rows, C * reps): x - batch mean (training) or x itself (eval)
    inv: Array  # 1 / sqrt(var + eps), of the batch (training) or the running variance (eval)
    gamma: Array
    reps: int  # values per channel in one row of xs
    shape: tuple[int, ...]  # the input's (NCHW) shape
    eps: float
    running_mean: Array | None  # eval mode: the mean it subtracted; None in training mode
    reduce: Any = None  # synchronised batch norm: sums over every process (see the op)
    m: int = 0  # the values per channel the statistics were taken over (all processes')


class BatchNormOp(Op):
    r"""Batch normalisation of `x` $(N, C)$ or $(N, C, H, W)$ per channel, PyTorch's `batch_norm`.

    For one channel, let $x$ be its $m$ values ($m = N$, or $N H W$ for 4-D input).
    In training mode, with batch statistics

    $$\mu = \tfrac{1}{m}\mathbf{1}^T x, \qquad \sigma^2 = \tfrac{1}{m}(x - \mu\mathbf{1})^T (x - \mu\mathbf{1}), \qquad s = \sqrt{\sigma^2 + \epsilon},$$

    $\hat x = (x - \mu\mathbf{1})/s$ and $y = \gamma \hat x + \beta \mathbf{1}$. The running
    statistics are updated as PyTorch does, in place, a side effect of the
    forward pass (they are buffers, not inputs: nothing flows back into them):
    $r_\mu \leftarrow (1-\alpha) r_\mu + \alpha\mu$ and
    $r_{\sigma^2} \leftarrow (1-\alpha) r_{\sigma^2} + \alpha \tfrac{m}{m-1}\sigma^2$
    (momentum $\alpha$, default $0.1$; the *unbiased* variance). In eval mode
    $\mu, \sigma^2$ are the running statistics instead, constants.

    **Differentials.** The mean and the variance depend on $x$ too, which is
    the whole point of the derivation. Write $c = x - \mu\mathbf{1}$ and
    $P = I - \tfrac{1}{m}\mathbf{1}\mathbf{1}^T$, so $c = Px$ and $dc = P\,dx$. Then

    $$d\mu = \tfrac{1}{m}\mathbf{1}^T dx, \qquad d(\sigma^2) = \tfrac{2}{m} c^T dc = \tfrac{2}{m} c^T dx,$$

    because $c^T P = c^T$ ($c$ sums to zero), and $ds = d(\sigma^2)/(2s) = \tfrac{1}{m s}c^T dx$.
    For $\hat x = c/s$:

    $$d\hat x = \frac{dc}{s} - \frac{c}{s^2} ds = \frac{1}{s}\Big(dx - \tfrac{1}{m}\mathbf{1}\mathbf{1}^T dx - \tfrac{1}{m}\hat x \hat x^T dx\Big).$$

    The three terms are the direct path, the path through the mean and the path
    through the variance. With $dy = \gamma\, d\hat x + \hat x\, d\gamma + \mathbf{1}\, d\beta$
    and upstream $g$,

    $$df = g^T dy = \frac{\gamma}{s}\Big(g - \tfrac{1}{m}\mathbf{1}(\mathbf{1}^T g) - \tfrac{1}{m}\hat x (\hat x^T g)\Big)^T dx + (\hat x^T g)\, d\gamma + (\mathbf{1}^T g)\, d\beta,$$

    using the symmetry of $\mathbf{1}\mathbf{1}^T$ and $\hat x \hat x^T$ inside the
    trace. Reading off, with the sums over the channel's $m$ values,

    $$\frac{\partial f}{\partial x} = \frac{\gamma}{s\,m}\Big(m\,g - \textstyle\sum g - \hat x \sum (g \odot \hat x)\Big), \quad
    \frac{\partial f}{\partial \gamma} = \textstyle\sum g \odot \hat x, \quad
    \frac{\partial f}{\partial \beta} = \textstyle\sum g:$$

    two reductions per channel and one element-wise pass. In eval mode the mean
    and variance terms vanish ($d\mu = ds = 0$) and $\partial f/\partial x = \gamma g / s$.
    Treating the batch statistics as constants in training mode gives that
    eval formula, the classic mistake; it is wrong, since every $x$ moves
    $\mu$ and $\sigma^2$.

    *Synchronised* (`reduce`, data-parallel training with `--sync-bn`). When the
    batch is cut into shards, one per process, the statistics of the whole batch are
    sums over the shards: $\mu = \frac{1}{m}\sum_r \sum_{i \in S_r} x_i$ with $m$ the
    total count, and $\sigma^2$ likewise from the centred values. Every sum above is
    a sum over all of $x$, so it is the sum of the shards' sums: the forward pass
    adds up $\sum x$ (with the counts), then $\sum (x - \mu)^2$, and the vjp adds up
    $\sum g$ and $\sum g \odot \hat x$ over the processes (`reduce` adds an array up
    over them) before forming $\partial f/\partial x$ for its own shard, which is then
    exactly the rows of the whole batch's gradient. The gradients of $\gamma$ and
    $\beta$ are returned as this shard's sums: the data-parallel step adds them up
    with every other parameter's.

    *Second order.* The vjp is written with element-wise products and
    per-channel sums (methods and ops that Tensors have too), on the saved
    $x - \mu$ and $1/s$. Those are computed from $x$, so when the backward pass
    records (`create_graph`), `on_tape` recomputes them from the input Tensor
    with the same ops: the gradient's own dependence on $x$ through $\mu$ and
    $\sigma^2$ is then differentiated as well, which is what makes batch norm's
    Hessian differ from an affine map's. The running statistics are updated by
    the forward pass only; the recorded backward pass never touches them. In
    eval mode the op is affine in $x$: the gradient $\gamma g / s$ depends on
    $g$ and $\gamma$ only, and the second derivatives are the mixed ones.
    """

    name = "batch_norm"
    saves_output = False
    writes_over_input = True  # in training mode; it saves x - mean, not x
    vjp_writes_over_g = True  # in training mode
    # gamma must stay away from 0 only for readable relative errors; any value is valid.
    spec = OpSpec(
        draw=_batch_norm_case,
        domains=(REAL, Domain("scale", gap=0.5), REAL),
        torch=_torch_batch_norm,
    )

    @staticmethod
    def forward(
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array | None = None,
        running_var: Array | None = None,
        training: bool = True,
        momentum: float = 0.1,
        eps: float = 1e-5,
        reduce: Any = None,
        out: Array | None = None,
    ) -> tuple[Array, Any]:
        if x.ndim < 2:
            raise ShapeError(f"batch_norm expects input of shape (N, C, ...), got {x.shape}")
        c = x.shape[1]
        if x.size == 0:
            raise ShapeError(f"batch_norm: input of shape {x.shape} is empty")
        for a, what in ((gamma, "weight"), (beta, "bias")):
            if a.shape != (c,):
                raise ShapeError(f"batch_norm: {what} of shape {a.shape}, expected ({c},)")
        check_eps(eps, "batch_norm: eps")
        eps = float(eps)  # a Python float: an np.float64 eps must not widen float32 data
        for stat, what in ((running_mean, "running_mean"), (running_var, "running_var")):
            if stat is not None and (stat.shape != (c,) or stat.dtype.kind != "f"):
                raise ShapeError(
                    f"batch_norm: {what} must be a float array of shape ({c},), got "
                    f"{stat.dtype} {stat.shape}"
                )
        xp = namespace(x)
        x2 = _channels_last_2d(x)
        reps = x2.shape[1] // c
        m = x2.shape[0] * reps
        if training:
            if m < 2:
                raise ShapeError(
                    f"batch_norm in training mode needs more than one value per channel, "
                    f"got input of shape {x.shape}"
                )
            if reduce is None:
                mean = _per_channel_sum(x2, c) / m
                xc = _each("subtract", x2, _tiled(mean, reps))
                var = _per_channel_dot(xc, xc, c) / m
            else:  # the whole batch's statistics: every process's sums added up
                total = reduce(np.append(_per_channel_sum(x2, c).astype(np.float64), m))
                m = int(total[-1])
                mean = (total[:-1] / m).astype(x2.dtype)
                xc = _each("subtract", x2, _tiled(mean, reps))
                var = (reduce(_per_channel_dot(xc, xc, c).astype(np.float64)) / m).astype(x2.dtype)
            inv = 1.0 / xp.sqrt(var + eps)
            # over x if given it, whose values are in xc now (eval mode saves x: never there)
            y2 = None if out is None else _over(_channels_last_2d(out), out)
            y = _affine(xc, _tiled(gamma * inv, reps), _tiled(beta, reps), out=y2)
            if running_mean is not None and running_var is not None:
                _update_running(running_mean, running_var, mean, var, m, momentum)
            saved = BatchNormSaved(True, xc, inv, gamma, reps, x.shape, eps, None, reduce, m)
        else:
            if running_mean is None or running_var is None:
                raise ConfigError("batch_norm in eval mode needs running_mean and running_var")
            inv = (1.0 / xp.sqrt(running_var + eps)).astype(x2.dtype, copy=False)
            a = gamma * inv
            y = _affine(x2, _tiled(a, reps), _tiled(-running_mean * a, reps), _tiled(beta, reps))
            saved = BatchNormSaved(False, x2, inv, gamma, reps, x.shape, eps, running_mean)
        return _back_to(y, x.shape), saved

    @staticmethod
    def on_tape(saved: Any, inputs: tuple[Any, ...], out: Any) -> Any:
        """The saved statistics recomputed from the input Tensors, so that they are differentiated."""
        x, gamma = inputs[:2]
        x2 = _channels_last_2d(x)
        if saved.training:
            c, m = saved.shape[1], x2.shape[0] * saved.reps
            xc = x2 - _tiled(_per_channel_sum(x2, c) / m, saved.reps)
            inv = (_per_channel_sum(xc * xc, c) / m + saved.eps) ** -0.5
            return saved._replace(xs=xc, inv=inv, gamma=gamma)
        return saved._replace(xs=x2, gamma=gamma)

    @staticmethod
    def vjp(
        saved: BatchNormSaved,
        g: Array,
        needs: tuple[bool, ...] = (True, True, True),
        out: Array | None = None,
    ) -> Grads:
        training, xs, inv, gamma, reps, shape = saved[:6]
        c = shape[1]
        g2 = _channels_last_2d(g)
        sum_g = _per_channel_sum(g2, c)
        sum_gx = _per_channel_dot(g2, xs, c)  # xs is x - mean (training) or x (eval)
        if training:
            m = g2.shape[0] * reps
            gamma_hat = sum_gx * inv  # sum(g * x_hat)
            if saved.reduce is not None:  # synchronised: the whole batch's sums for dx
                both = saved.reduce(np.concatenate([sum_g, sum_gx]).astype(np.float64))
                sum_g_local, m = sum_g, saved.m
                sum_g = both[:c].astype(g2.dtype)
                gamma_hat_local, gamma_hat = gamma_hat, both[c:].astype(g2.dtype) * inv
            gx = None
            if needs[0]:
                k = gamma * inv
                gx = _batch_norm_dx(
                    g2, xs, _tiled(k, reps), _tiled(k * sum_g / m, reps),
                    _tiled(k * inv * gamma_hat / m, reps), _over(g2, out),
                )  # fmt: skip
            if saved.reduce is not None:  # this shard's part of the parameters' gradients
                gamma_hat, sum_g = gamma_hat_local, sum_g_local
        else:
            assert saved.running_mean is not None  # eval mode always saves it
            running_mean = saved.running_mean.astype(xs.dtype, copy=False)  # a constant
            gamma_hat = (sum_gx - running_mean * sum_g) * inv
            gx = g2 * _tiled(gamma * inv, reps) if needs[0] else None
        return (
            None if gx is None else _back_to(gx, shape),
            gamma_hat if needs[1] else None,
            sum_g if needs[2] else None,
        )
