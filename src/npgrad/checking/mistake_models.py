"""The classic mistakes of hand-written convolution, pooling and normalisation backward passes.

A wrong gradient is named by modelling the mistake: the gradient a backward
pass with that mistake returns is the gradient of some *other* forward (a true
convolution instead of a cross-correlation, windows taken at ``(i, j)`` instead
of ``(i * stride, j * stride)``, average instead of max pooling, batch
statistics frozen as constants). Its gradient is taken numerically and compared
with the user's: a match is a numerical fact, not a guess.

Both checkers use these models: :mod:`npgrad.checking.function_pairs` for function pairs
(``conv_forward_naive``...) and :mod:`npgrad.checking.layer_classes` for layer classes
(``Conv2d``...). The arguments are named as the course names them (``x``,
``w``, ``b``, ``gamma``, ``beta``, and ``conv_param``, ``pool_param``,
``bn_param`` dicts); a layer class's inputs and constructor arguments are
translated into those names. The references here are small and plain on
purpose: they define, they are not fast.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .gradcheck import agrees, numeric_vjp

EPS = 1e-6  # the step of the central differences
ATOL, RTOL = 1e-6, 1e-4  # a gradient against the numerical one
FORWARD_ATOL, FORWARD_RTOL = 1e-7, 1e-5  # a forward against its definition


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


# --------------------------------------------------------------------------- references


def conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: Any,
    pad: Any,
    step: int | None = None,
    dilation: Any = 1,
) -> np.ndarray:
    """Cross-correlation; windows start at ``i * step`` (``step`` != stride models a mistake)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(pad), _pair(dilation)
    th, tw = (sh, sw) if step is None else (step, step)
    n, _, h, wd = x.shape
    f, _, hh, ww = w.shape
    eh, ew = dh * (hh - 1) + 1, dw * (ww - 1) + 1
    ho, wo = 1 + (h + 2 * ph - eh) // sh, 1 + (wd + 2 * pw - ew) // sw
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.empty((n, f, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * th : i * th + eh : dh, j * tw : j * tw + ew : dw]
            out[:, :, i, j] = np.tensordot(win, w, axes=([1, 2, 3], [1, 2, 3]))
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def pool(
    x: np.ndarray,
    ph: int,
    pw: int,
    stride: Any,
    how: str = "max",
    step: int | None = None,
    pad: Any = 0,
) -> np.ndarray:
    """Max (or mean, or sum) pooling; padding is -inf for the max, zeros (counted) otherwise."""
    (sh, sw), (qh, qw) = _pair(stride), _pair(pad)
    th, tw = (sh, sw) if step is None else (step, step)
    fill = -np.inf if how == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (qh, qh), (qw, qw)), constant_values=fill)
    n, c, h, w = xp.shape
    ho, wo = 1 + (h - ph) // sh, 1 + (w - pw) // sw
    out = np.empty((n, c, ho, wo))
    reducers: dict[str, Callable[..., Any]] = {"max": np.max, "mean": np.mean, "sum": np.sum}
    reduce = reducers[how]
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * th : i * th + ph, j * tw : j * tw + pw]
            out[:, :, i, j] = reduce(win, axis=(2, 3))
    return out


def columns(layout: str, x: np.ndarray, groups: int = 1) -> tuple[np.ndarray, Callable]:
    """``x`` as a 2-D array whose columns are normalised over axis 0, and the way back."""
    if layout == "batch":
        return x, lambda z: z
    if layout == "layer":
        return x.T, lambda z: z.T
    n, c, h, w = x.shape
    if layout == "spatial":
        z = x.transpose(0, 2, 3, 1).reshape(-1, c)
        return z, lambda z: z.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    z = x.reshape(n * groups, -1).T  # group norm: one column per (sample, group)
    return z, lambda z: z.T.reshape(n, c, h, w)


def normalise(
    layout: str,
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    groups: int = 1,
    frozen: tuple[str, ...] = (),
    x0: np.ndarray | None = None,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Batch/layer/group norm. ``frozen`` statistics come from ``x0`` (treated as constants);
    ``stats`` = (running mean, running var) is test-mode batch norm."""
    z, back = columns(layout, x, groups)
    z0 = columns(layout, x if x0 is None else x0, groups)[0]
    mean = z0.mean(0) if "mean" in frozen else z.mean(0)
    var = z0.var(0) if "var" in frozen else z.var(0)
    if stats is not None:
        mean, var = stats
    xhat = back((z - mean) / np.sqrt(var + eps))
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    return gamma.reshape(shape) * xhat + beta.reshape(shape)


def distinct(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Values at least 0.05 apart: no pooling window has a tie."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * 0.05 - size * 0.025).reshape(shape) + rng.uniform(0, 0.01)


# The references by the course's argument names: what the hypotheses below differentiate.


def ref_conv(v: dict[str, Any], **kw: Any) -> np.ndarray:
    p = v["conv_param"]
    return conv(v["x"], v["w"], v["b"], p["stride"], p["pad"], dilation=p.get("dilation", 1), **kw)


def ref_pool(v: dict[str, Any], **kw: Any) -> np.ndarray:
    p = v["pool_param"]
    ph, pw = int(p["pool_height"]), int(p["pool_width"])
    return pool(v["x"], ph, pw, p["stride"], pad=p.get("pad", 0), **kw)


def norm_ref(layout: str, key: str) -> Callable[..., np.ndarray]:
    def ref(v: dict[str, Any], **kw: Any) -> np.ndarray:
        p = v[key]
        eps = float(p.get("eps", 1e-5))
        if key == "bn_param" and p.get("mode", "train") == "test" and "stats" not in kw:
            kw["stats"] = (p["running_mean"], p["running_var"])
        return normalise(layout, v["x"], v["gamma"], v["beta"], eps, int(v.get("G", 1)), **kw)

    return ref


# --------------------------------------------------------------------------- hypotheses


@dataclass
class Trial:
    """One call whose gradient is wrong: its arguments by the course's names, which of them
    were differentiated (in the order of their gradients), and the upstream gradient."""

    values: dict[str, Any]
    diff: list[str]
    g: np.ndarray

    def vjp_of(self, i: int, fn: Callable[[dict[str, Any]], np.ndarray]) -> np.ndarray:
        """The gradient a forward ``fn`` (of the arguments by name) would give for input ``i``."""
        values = copy.deepcopy(self.values)
        values["_x0"] = self.values["x"]  # the unperturbed input, for frozen statistics
        values["_orig"] = copy.deepcopy(self.values)  # every unperturbed argument
        x = values[self.diff[i]]
        return numeric_vjp(lambda: np.asarray(fn(values), dtype=np.float64), x, self.g, EPS)


# The mistake's name for gradient i of a trial, or None when its gradient is another.
Hypothesis = Callable[[Trial, int, np.ndarray, np.ndarray], "str | None"]


def zero_gradient(got: np.ndarray, want: np.ndarray) -> str | None:
    """The diagnosis for a gradient left at zeros where the true one is not."""
    if got.shape == want.shape and not got.any() and want.size and np.abs(want).max() > ATOL:
        return "the gradient is identically zero: backward not implemented?"
    return None


def name_mistake(
    trial: Trial, hypotheses: Sequence[Hypothesis], i: int, got: np.ndarray, want: np.ndarray
) -> str | None:
    """The first mistake whose gradient is ``got``: unimplemented, then ``hypotheses`` in order."""
    zero = zero_gradient(got, want)
    if zero:
        return zero
    for hyp in hypotheses:
        why = hyp(trial, i, got, want)
        if why:
            return why
    return None


def model(
    message: str, args: Sequence[str], fn: Callable[[dict[str, Any]], np.ndarray]
) -> Hypothesis:
    """The mistake whose gradient (for arguments ``args``) is that of the forward ``fn``."""

    def hyp(trial: Trial, i: int, got: np.ndarray, want: np.ndarray) -> str | None:
        if trial.diff[i] not in args or got.shape != want.shape:
            return None
        try:
            mistaken = trial.vjp_of(i, fn)
        except (ValueError, TypeError, IndexError, KeyError):  # inputs this model does not take
            return None
        return message if agrees(got, mistaken, ATOL, RTOL) else None

    return hyp


def padding_kept(trial: Trial, i: int, got: np.ndarray, want: np.ndarray) -> str | None:
    """dx of the padded input returned as it is (or, with no padding, sliced away to nothing)."""
    p = trial.values.get("conv_param") or trial.values.get("pool_param") or {}
    ph, pw = _pair(p.get("pad", 0))
    if trial.diff[i] != "x" or got.ndim != 4 or got.shape[:2] != want.shape[:2]:
        return None
    if ph == pw == 0 and got.shape[2:] == (0, 0):
        return (
            "dx is empty: with pad = 0, dx_pad[:, :, pad:-pad, pad:-pad] is [0:0], nothing; "
            "slice pad:pad + H and pad:pad + W instead"
        )
    if (ph, pw) == (0, 0) or got.shape[2:] != (want.shape[2] + 2 * ph, want.shape[3] + 2 * pw):
        return None
    inner = got[:, :, ph : got.shape[2] - ph, pw : got.shape[3] - pw]
    right = " (inside, its values are right)" if agrees(inner, want, ATOL, RTOL) else ""
    # pad:pad + H, not pad:-pad, which is empty when pad is 0
    cut = "pad:pad + H, pad:pad + W" if ph == pw else f"{ph}:{ph} + H, {pw}:{pw} + W"
    return (
        f"padding not removed: dx has the padded shape {got.shape}{right}; "
        f"return dx_pad[:, :, {cut}], shape {want.shape}"
    )


def _coverage(values: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """How many windows of the forward cover each input position (H, W)."""
    if "conv_param" in values:
        p, (kh, kw) = values["conv_param"], values["w"].shape[2:]
        dh, dw = _pair(p.get("dilation", 1))
        kh, kw = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # a dilated window's span
    else:
        p = values["pool_param"]
        kh, kw = int(p["pool_height"]), int(p["pool_width"])
    (sh, sw), (ph, pw) = _pair(p["stride"]), _pair(p.get("pad", 0))
    h, w = shape[2] + 2 * ph, shape[3] + 2 * pw
    count = np.zeros((h, w), dtype=int)
    for i in range(0, h - kh + 1, sh):
        for j in range(0, w - kw + 1, sw):
            count[i : i + kh, j : j + kw] += 1
    return count[ph : h - ph, pw : w - pw]


def overlap_overwritten(trial: Trial, i: int, got: np.ndarray, want: np.ndarray) -> str | None:
    """dx right except where windows overlap: assigned (=) where it should be added (+=)."""
    if trial.diff[i] != "x" or got.shape != want.shape or got.ndim != 4:
        return None
    shared = np.broadcast_to(_coverage(trial.values, got.shape) > 1, got.shape)
    if agrees(got[shared], want[shared], ATOL, RTOL):
        return None
    if not agrees(got[~shared], want[~shared], ATOL, RTOL):
        return None
    return (
        "wrong only where windows overlap (stride smaller than the window): the gradients "
        "of overlapping windows must be added (dx[window] += ...), not assigned (=)"
    )


_STRIDE = (
    "stride ignored in backward: windows are taken at (i, j) instead of (i * stride, j * stride)"
)

CONV_HYPOTHESES: tuple[Hypothesis, ...] = (
    padding_kept,
    model(
        "kernel flipped: this is the gradient of a true convolution; the forward is a "
        "cross-correlation (no flip), so backward must not flip w either",
        ["x", "w"],
        lambda v: ref_conv({**v, "w": v["w"][:, :, ::-1, ::-1]}),
    ),
    model(_STRIDE, ["x", "w"], lambda v: ref_conv(v, step=1)),
    overlap_overwritten,
)
MAX_POOL_HYPOTHESES: tuple[Hypothesis, ...] = (
    padding_kept,
    model(
        "pooling gradient spread over the whole window (as average pooling would): "
        "it belongs to the maximum of each window only",
        ["x"],
        lambda v: ref_pool(v, how="mean"),
    ),
    model(
        "pooling gradient spread over the whole window (every element gets the window's "
        "upstream gradient): it belongs to the maximum of each window only",
        ["x"],
        lambda v: ref_pool(v, how="sum"),
    ),
    model(_STRIDE, ["x"], lambda v: ref_pool(v, step=1)),
    overlap_overwritten,
)
AVG_POOL_HYPOTHESES: tuple[Hypothesis, ...] = (
    padding_kept,
    model(_STRIDE, ["x"], lambda v: ref_pool(v, how="mean", step=1)),
    overlap_overwritten,
)


def norm_hypotheses(layout: str, key: str) -> tuple[Hypothesis, ...]:
    """Normalisation whose backward treats the mean, the variance or both as constants."""

    def frozen(what: tuple[str, ...]) -> Callable[[dict[str, Any]], np.ndarray]:
        ref = norm_ref(layout, key)
        return lambda v: ref(v, frozen=what, x0=v["_x0"])

    const = "treats the {} as {}: {} on x too, so dx has terms through {}"
    return (
        model(
            const.format("mean and variance", "constants", "they depend", "them"),
            ["x"],
            frozen(("mean", "var")),
        ),
        model(const.format("mean", "a constant", "it depends", "it"), ["x"], frozen(("mean",))),
        model(const.format("variance", "a constant", "it depends", "it"), ["x"], frozen(("var",))),
        model(
            "eps left out of the backward: it divides by sqrt(var) where the forward divides "
            "by sqrt(var + eps); the difference is small (about eps / var) but the gradient "
            "is not the forward's",
            ["x", "gamma"],
            lambda v: norm_ref(layout, key)({**v, key: {**v[key], "eps": 0.0}}),
        ),
    )


def conv_forward_problem(v: dict[str, Any], out: np.ndarray) -> str | None:
    """What a convolution forward that differs from the definition computes instead, if known."""
    flipped = ref_conv({**v, "w": v["w"][:, :, ::-1, ::-1]})
    if agrees(out, flipped, FORWARD_ATOL, FORWARD_RTOL):
        return (
            "kernel flipped: forward computes a true convolution; CS231n (and PyTorch) "
            "compute a cross-correlation, out = sum(x_window * w), with no flip"
        )
    if agrees(out, ref_conv(v, step=1), FORWARD_ATOL, FORWARD_RTOL):
        return "stride ignored in forward: windows start at (i, j), not (i * stride, j * stride)"
    return None


# --------------------------------------------------------------------------- recurrent layers
# The course's third assignment: word embeddings, vanilla RNN and LSTM, temporal layers.
# Each recurrence is written once (_unroll), with the two classic backward mistakes as
# variants of its forward whose gradients they are: the hidden state's gradient not carried
# back from step t + 1 (each step's previous state a constant), and the weights' gradient
# not accumulated over the steps (assigned, so only step 0's contribution is left).


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def rnn_cell(
    x: np.ndarray, h: np.ndarray, c: Any, wx: np.ndarray, wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, Any]:
    return np.tanh(x @ wx + h @ wh + b), None


def lstm_cell(
    x: np.ndarray, h: np.ndarray, c: np.ndarray, wx: np.ndarray, wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    a = x @ wx + h @ wh + b
    n = h.shape[1]
    i, f, o = _sigmoid(a[:, :n]), _sigmoid(a[:, n : 2 * n]), _sigmoid(a[:, 2 * n : 3 * n])
    c = f * c + i * np.tanh(a[:, 3 * n :])
    return o * np.tanh(c), c


def ref_rnn_step(v: dict[str, Any]) -> np.ndarray:
    return rnn_cell(v["x"], v["prev_h"], None, v["Wx"], v["Wh"], v["b"])[0]


def ref_lstm_step(v: dict[str, Any]) -> np.ndarray:
    return lstm_cell(v["x"], v["prev_h"], v["prev_c"], v["Wx"], v["Wh"], v["b"])[0]


def _unroll(cell: Callable[..., Any], v: dict[str, Any], mistake: str = "") -> np.ndarray:
    """The hidden states (N, T, H) of ``cell`` over ``v["x"]`` from ``v["h0"]`` (c0 = 0).

    ``mistake="carried"``: each step's previous state is the unperturbed run's, a constant;
    ``mistake="accumulated"``: the weights act through step 0 only (later steps use the
    unperturbed ones). Both need ``v["_orig"]``, the values before any perturbation.
    """
    x, h = v["x"], v["h0"]
    c = np.zeros_like(h)
    orig = v.get("_orig")
    before = _unroll(cell, orig) if mistake == "carried" and orig is not None else None
    out = []
    for t in range(x.shape[1]):
        w = v if t == 0 or mistake != "accumulated" or orig is None else orig
        prev = h if before is None or t == 0 else before[:, t - 1]
        h, c = cell(x[:, t], prev, c, w["Wx"], w["Wh"], w["b"])
        out.append(h)
    return np.stack(out, axis=1)


def recurrent_hypotheses(cell: Callable[..., Any]) -> tuple[Hypothesis, ...]:
    return (
        model(
            "the hidden state's gradient is not carried back: step t's dprev_h must be added "
            "to dh[:, t - 1] before step t - 1's backward (only the upstream dh reaches each step)",
            ["x", "h0", "Wx", "Wh", "b"],
            lambda v: _unroll(cell, v, "carried"),
        ),
        model(
            "the weights' gradient is not accumulated over the time steps: dWx, dWh and db must "
            "be summed (+=) over t, here only one step's contribution is left",
            ["Wx", "Wh", "b"],
            lambda v: _unroll(cell, v, "accumulated"),
        ),
    )


def ref_rnn(v: dict[str, Any]) -> np.ndarray:
    return _unroll(rnn_cell, v)


def ref_lstm(v: dict[str, Any]) -> np.ndarray:
    return _unroll(lstm_cell, v)


def ref_temporal_affine(v: dict[str, Any]) -> np.ndarray:
    return v["x"] @ v["w"] + v["b"]


def ref_word_embedding(v: dict[str, Any]) -> np.ndarray:
    return v["W"][np.asarray(v["x"], dtype=int)]


def embedding_not_accumulated(
    trial: Trial, i: int, got: np.ndarray, want: np.ndarray
) -> str | None:
    """dW[x] = dout (an assignment): a word used twice keeps one of its gradients."""
    if trial.diff[i] != "W" or got.shape != want.shape:
        return None
    idx = np.asarray(trial.values["x"], dtype=int).reshape(-1)
    g = np.asarray(trial.g).reshape(idx.size, -1)
    assigned = np.zeros_like(want)
    assigned[idx] = g  # the last of each repeated index wins, as in NumPy's assignment
    if agrees(got, assigned, ATOL, RTOL):
        return (
            "dW is assigned, not accumulated: a word that occurs twice keeps one gradient; "
            "use np.add.at(dW, x, dout)"
        )
    return None


def temporal_softmax(v: dict[str, Any], masked: bool = True, per: str = "N") -> np.ndarray:
    """The course's temporal softmax loss: masked cross-entropy summed over N x T, over N."""
    x = v["x"]
    n, t, c = x.shape
    flat = x.reshape(n * t, c)
    z = flat - flat.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = np.asarray(v["y"], dtype=int).reshape(-1)
    m = np.asarray(v["mask"], dtype=float).reshape(-1) if masked else np.ones(n * t)
    return np.array(-(m * logp[np.arange(n * t), y]).sum() / (n * t if per == "NT" else n))


TEMPORAL_SOFTMAX_HYPOTHESES: tuple[Hypothesis, ...] = (
    model(
        "the mask is not applied: padded positions (mask False) must add nothing to the loss "
        "or to dx",
        ["x"],
        lambda v: temporal_softmax(v, masked=False),
    ),
    model(
        "the loss is divided by N * T: the course's loss is a sum over the time steps, a mean "
        "over the N sequences only",
        ["x"],
        lambda v: temporal_softmax(v, per="NT"),
    ),
)


def temporal_softmax_problem(v: dict[str, Any], out: np.ndarray) -> str | None:
    """What a temporal softmax loss that differs from the definition computes instead."""
    if agrees(out, temporal_softmax(v, masked=False), FORWARD_ATOL, FORWARD_RTOL):
        return "the mask is not applied: padded positions (mask False) add to the loss"
    if agrees(out, temporal_softmax(v, per="NT"), FORWARD_ATOL, FORWARD_RTOL):
        return "the loss is divided by N * T; the course's is divided by N (a sum over time)"
    return None
