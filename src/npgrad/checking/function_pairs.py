"""Check function pairs in the CS231n convention: ``X_forward(...) -> (out, cache)``, ``X_backward(dout, cache)``.

The most widely used backprop course writes layers as pairs of functions:
``affine_forward(x, w, b)`` returns ``(out, cache)`` and
``affine_backward(dout, cache)`` returns ``(dx, dw, db)``, one gradient per
floating-point array argument, in order. Losses are single functions
``svm_loss(x, y) -> (loss, dx)``. :func:`find_pairs` finds them by name
(``X_forward``/``X_backward``, with any suffix such as ``_naive``; a
``X_backward_alt`` is checked against ``X_forward`` and compared with
``X_backward``; ``*_loss`` and ``*_loss_naive``/``*_vectorized``).

Names only choose the inputs (:data:`KINDS`: shapes, parameter dicts, where
the values lie); the verdicts are numerical facts. :func:`check_pair` runs
forward on float64 inputs, backward with a random upstream gradient, and
compares each gradient with central differences of the forward. Inputs keep
clear of non-differentiable points (ReLU inputs away from 0, pooling windows
without ties, SVM margins away from 0) so that a correct pair never fails and
a wrong one is not hidden. For the kinds the course defines, the forward is
also compared with its definition (cross-correlation, not convolution; batch
norm's running statistics; inverted dropout), and a wrong gradient is matched
against the gradients the classic mistakes would give (kernel flipped,
padding not removed, stride ignored, pooling gradient spread over the window,
mean and variance treated as constants, loss not divided by N, dropout mask
drawn anew; the first five are :mod:`npgrad.checking.mistake_models`', shared with the check
of layer classes). The global NumPy generator is seeded before every forward call,
so a forward that draws from it (dropout) is the same function each time.

Kinds and their inputs (``--shape``/``--param`` override them):

============================  ==================================================
``affine``                    x (4, 2, 3) [or (4, 6)], w (6, 5), b (5,)
``relu``, ``sigmoid``,        x (4, 6); ReLU inputs at least 0.1 from 0
``tanh``
``batchnorm``                 x (6, 5), gamma, beta (5,); bn_param mode train and
                              test (forward only: the course's backward is for
                              training), eps 1e-5, momentum 0.9, running stats
``spatial_batchnorm``         x (2, 3, 4, 5), gamma, beta (3,); as batchnorm
``layernorm``                 x (4, 6), gamma, beta (6,); ln_param eps 1e-5
``spatial_groupnorm``         x (2, 4, 3, 5), gamma, beta (1, 4, 1, 1) [or (4,)],
                              G 2, gn_param eps 1e-5
``dropout``                   x (6, 8); dropout_param p 0.3, seed 123, mode train
                              and test (whether p keeps or drops is measured)
``conv``                      x (2, 3, 7, 9), w (4, 3, 3, 5), b (4,);
                              conv_param stride 2, pad 1
``max_pool``                  x (2, 3, 8, 9) without ties; pool_param
                              pool_height 2, pool_width 3, stride 2
``svm``, ``softmax`` (loss)   x (6, 5), y (6,) in 0..4; or W (5, 4), X (6, 5), y,
                              reg 0.1 for ``(W, X, y, reg)``
other names                   arguments by name (x, w, b, gamma, beta and the
                              ``*_param`` dicts): x (4, 6), w (6, 5); when the
                              name says conv, x (2, 3, 6, 6), w (3, 3, 3, 3),
                              stride 1, pad 1, 2x2 pooling with stride 2;
                              else shapes tried in turn (as for classes)
============================  ==================================================
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import math
import re
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any

import numpy as np

from ..errors import LayerCheckError, NotCheckable, UserCodeFailed
from ..ops.specs import KINK, REAL, Domain
from .gradcheck import agrees, mismatches, perturbed_projections
from .layer_classes import (
    CANDIDATE_SHAPES,
    InputResult,
    Tape,
    _describe,
    _diagnose,
    _real_array,
    _UserCode,
    domains_for,
)
from .mistake_models import (
    ATOL,
    CONV_HYPOTHESES,
    EPS,
    FORWARD_ATOL,
    FORWARD_RTOL,
    MAX_POOL_HYPOTHESES,
    RTOL,
    TEMPORAL_SOFTMAX_HYPOTHESES,
    Hypothesis,
    Trial,
    columns,
    conv_forward_problem,
    distinct,
    embedding_not_accumulated,
    lstm_cell,
    name_mistake,
    norm_hypotheses,
    norm_ref,
    normalise,
    recurrent_hypotheses,
    ref_conv,
    ref_lstm,
    ref_lstm_step,
    ref_pool,
    ref_rnn,
    ref_rnn_step,
    ref_temporal_affine,
    ref_word_embedding,
    rnn_cell,
    temporal_softmax,
    temporal_softmax_problem,
)

Shape = tuple[int, ...]
GLOBAL_SEED = 0  # np.random.seed(GLOBAL_SEED) before every forward call
ALT_ATOL, ALT_RTOL = 1e-9, 1e-7  # X_backward_alt against X_backward: both analytic
# The tolerance of a gradient follows from the noise of its numerical value (see _tolerance):
NOISE_MARGIN = 50.0  # how many times the estimated noise a difference may be
GRAD_RTOL = 1e-7  # and what the analytic gradient's own rounding may add, relatively
FLOAT32_STEP = 1e-3  # central differences of a forward computing in float32


# --------------------------------------------------------------------------- references
# The course's definitions of convolution, pooling and normalisation, and the
# classic mistakes modelled, are npgrad.checking.mistake_models' (layer classes share them).


def _svm(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    margins = np.maximum(0, x - x[np.arange(n), y][:, None] + 1)
    margins[np.arange(n), y] = 0
    return float(margins.sum() / n)


def _softmax_loss(x: np.ndarray, y: np.ndarray) -> float:
    z = x - x.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(x.shape[0]), y].mean())


# --------------------------------------------------------------------------- kinds


@dataclass
class Case:
    """One call of a pair: the arguments by the course's names, and which are differentiated."""

    label: str
    names: list[str]
    values: list[Any]
    diff: list[int]  # positions of the floating-point arrays, in order: one gradient each
    backward: bool = True  # False: forward only (batch norm in test mode)


@dataclass
class Kind:
    """What the course's layer of this name takes, and how it may go wrong."""

    args: tuple[str, ...]
    shapes: tuple[tuple[Shape, ...], ...]  # candidate shapes of the array arguments
    params: dict[str, Any] = field(default_factory=dict)  # the other arguments
    cases: tuple[tuple[str, dict[str, Any]], ...] = (("", {}),)  # label, dict-key overrides
    domains: dict[str, Domain] = field(default_factory=dict)
    reference: Callable[[dict[str, Any]], Any] | None = None  # an array, or a list of those allowed
    hypotheses: tuple[Hypothesis, ...] = ()
    loss: bool = False
    prepare: Callable[[dict[str, Any], np.random.Generator], None] | None = None
    extra: Callable[[_Ctx], list[str]] | None = None  # further problems (running stats, ...)
    forward_only: tuple[str, ...] = ()  # case labels whose backward is not the course's
    forward_problem: Callable[[dict[str, Any], np.ndarray], str | None] | None = None
    constants: tuple[str, ...] = ()  # array arguments that get no gradient (the data X)


def _ref_affine(v: dict[str, Any]) -> np.ndarray:
    return v["x"].reshape(v["x"].shape[0], -1) @ v["w"] + v["b"]


def _loss_ref(
    fn: Callable[[np.ndarray, np.ndarray], float],
) -> Callable[..., np.ndarray | list[np.ndarray]]:
    def ref(v: dict[str, Any]) -> np.ndarray | list[np.ndarray]:
        if "W" in v:  # (W, X, y, reg): a linear classifier; the course wrote reg or reg / 2
            data, l2 = fn(v["X"] @ v["W"], v["y"]), float(np.sum(v["W"] ** 2))
            return [np.array(data + v["reg"] * l2), np.array(data + 0.5 * v["reg"] * l2)]
        return np.array(fn(v["x"], v["y"]))

    return ref


# ---- preparing inputs


def _running_stats(v: dict[str, Any], rng: np.random.Generator) -> None:
    c = v["gamma"].size
    p = v["bn_param"]
    p.setdefault("running_mean", rng.standard_normal(c))
    p.setdefault("running_var", rng.uniform(0.5, 2.0, c))
    v["x"] *= 2.0
    v["x"] += 1.0  # a batch mean away from 0 and variance away from 1: distinguishable


def _svm_margins(v: dict[str, Any], rng: np.random.Generator) -> None:
    """Keep every SVM margin s_j - s_y + 1 at least 0.05 away from the kink at 0.

    Scores x are redrawn row by row; a linear classifier's W is redrawn whole.
    """
    linear = "W" in v
    target = v["W"] if linear else v["x"]
    for _ in range(1000):
        s = v["X"] @ v["W"] if linear else v["x"]
        y = v["y"]
        m = s - s[np.arange(len(y)), y][:, None] + 1
        m[np.arange(len(y)), y] = 1.0
        near = np.any(np.abs(m) <= 0.05, axis=1)
        if not near.any():
            return
        if linear:
            target[...] = rng.standard_normal(target.shape)
        else:
            target[near] = rng.standard_normal((int(near.sum()), target.shape[1]))
    raise UserCodeFailed(
        "could not draw SVM scores away from the margin's kink: give other --shape"
    )


# ---- hypotheses: the gradient a classic mistake would give (more in npgrad.checking.mistake_models)


def _loss_not_divided(trial: Trial, i: int, got: np.ndarray, want: np.ndarray) -> str | None:
    n = len(trial.values["y"])
    if got.shape == want.shape and agrees(got, n * want, ATOL, RTOL):
        return f"dx is not divided by N: the loss is a mean over the N = {n} samples, so is dx"
    return None


def _new_mask(trial: Trial, i: int, got: np.ndarray, want: np.ndarray) -> str | None:
    g = trial.g
    if got.shape != g.shape or np.any(np.isclose(g, 0)):
        return None
    ratio = got / g
    kept = ~np.isclose(ratio, 0, atol=1e-9)
    scale = ratio[kept]
    same_scale = scale.size > 0 and np.allclose(scale, scale[0], rtol=1e-6)
    if same_scale and np.any(kept != ~np.isclose(want, 0, atol=1e-9)):
        return (
            "backward does not use the forward's mask (it draws a new one): keep the mask "
            "in the cache and multiply dout by it"
        )
    return None


# ---- further checks


def _check_running_stats(ctx: _Ctx) -> list[str]:
    p, v = ctx.used_params["bn_param"], ctx.values
    rm0, rv0 = ctx.values["bn_param"]["running_mean"], ctx.values["bn_param"]["running_var"]
    mom = float(v["bn_param"].get("momentum", 0.9))
    z, _ = columns("spatial" if v["x"].ndim == 4 else "batch", v["x"])
    mean, var, uvar = z.mean(0), z.var(0), z.var(0, ddof=1)
    if v["bn_param"].get("mode") == "test":
        for key, before in (("running_mean", rm0), ("running_var", rv0)):
            if key in p and not agrees(np.asarray(p[key], dtype=float), before, 1e-12, 1e-12):
                return [
                    f"test mode changed bn_param[{key!r}]: running statistics change only in training"
                ]
        return []
    problems = []
    for key, before, now in (("running_mean", rm0, [mean]), ("running_var", rv0, [var, uvar])):
        after = p.get(key)
        if after is None or (np.shape(after) == before.shape and np.allclose(after, before)):
            problems.append(
                f"running statistics not updated in train mode: bn_param[{key!r}] is unchanged "
                f"after forward; set it to momentum * {key} + (1 - momentum) * the batch's"
            )
            continue
        after = np.asarray(after, dtype=float).reshape(-1)
        if any(agrees(after, mom * before + (1 - mom) * s, 1e-9, 1e-7) for s in now):
            continue
        if any(agrees(after, (1 - mom) * before + mom * s, 1e-9, 1e-7) for s in now):
            problems.append(
                f"bn_param[{key!r}] gives momentum to the batch, not to the running value: "
                f"the course's rule is momentum * {key} + (1 - momentum) * batch value"
            )
        else:
            problems.append(
                f"bn_param[{key!r}] after forward is not momentum * {key} + (1 - momentum) * "
                "the batch's value"
            )
    return problems


def _bn_forward_problem(v: dict[str, Any], out: np.ndarray) -> str | None:
    p = v["bn_param"]
    if p.get("mode") != "test":
        return None
    batch = normalise(
        "spatial" if v["x"].ndim == 4 else "batch",
        v["x"],
        v["gamma"],
        v["beta"],
        float(p.get("eps", 1e-5)),
    )
    if agrees(out, batch, FORWARD_ATOL, FORWARD_RTOL):
        return "test mode normalises with the batch statistics: it must use the running ones"
    return None


def _check_dropout(ctx: _Ctx) -> list[str]:
    """p's meaning is measured; train mode must be inverted dropout, test mode the identity."""
    v = ctx.values
    p = float(v["dropout_param"]["p"])
    x, out = v["x"], ctx.outs[0]
    if v["dropout_param"].get("mode") == "test":
        if agrees(out, x, FORWARD_ATOL, FORWARD_RTOL):
            return []
        hint = ""
        if agrees(out, p * x, FORWARD_ATOL, FORWARD_RTOL) or agrees(out, (1 - p) * x, 1e-7, 1e-5):
            hint = " (scaled: inverted dropout scales in training, so test mode returns x as is)"
        return ["test mode must return x unchanged" + hint]
    big = ctx.call_forward(
        [
            np.ones((100, 100)) if n == "x" else copy.deepcopy(val)
            for n, val in zip(ctx.case.names, ctx.case.values)
        ]
    )[0][0]
    kept = float(np.mean(big != 0))
    keep = p if abs(kept - p) < abs(kept - (1 - p)) else 1 - p
    ctx.notes.append(
        f"dropout_param['p'] = {p:g} is the {'keep' if keep == p else 'drop'} probability here "
        f"({kept:.0%} of the inputs kept): the course's current meaning is keep, older years' drop"
    )
    on = out != 0
    if on.any() and agrees(out[on], x[on], FORWARD_ATOL, FORWARD_RTOL) and keep < 1:
        return [
            "not inverted dropout: in train mode, divide the kept values by the keep probability"
        ]
    if on.any() and not agrees(out[on], x[on] / keep, FORWARD_ATOL, FORWARD_RTOL):
        return [f"train mode: the kept values are not x / {keep:g} (inverted dropout)"]
    return []


_BN = {"mode": "train", "eps": 1e-5, "momentum": 0.9}
_BN_CASES = (
    ("mode=train", {"bn_param": {"mode": "train"}}),
    ("mode=test", {"bn_param": {"mode": "test"}}),
)


_SMALL = Domain("small", scale=0.3)  # recurrent weights: pre-activations away from saturation


def _word_indices(v: dict[str, Any], rng: np.random.Generator) -> None:
    """Word indices for an embedding: integers in the vocabulary, one word used twice (so
    that a gradient assigned instead of accumulated shows)."""
    x = rng.integers(0, v["W"].shape[0], size=np.shape(v["x"]))
    x.reshape(-1)[-1] = x.reshape(-1)[0]
    v["x"] = x


def _temporal_targets(v: dict[str, Any], rng: np.random.Generator) -> None:
    """Targets (N, T) in the vocabulary and a mask with both kinds of positions."""
    n, t, c = v["x"].shape
    v["y"] = rng.integers(0, c, size=(n, t))
    mask = rng.random((n, t)) < 0.7
    mask.reshape(-1)[:2] = (True, False)
    v["mask"] = mask


def _elementwise(fn: Callable[[np.ndarray], np.ndarray], domain: Domain = REAL) -> Kind:
    return Kind(("x",), (((4, 6),),), domains={"x": domain}, reference=lambda v: fn(v["x"]))


KINDS: dict[str, Kind] = {
    "affine": Kind(("x", "w", "b"), (((4, 2, 3), (6, 5), (5,)), ((4, 6), (6, 5), (5,))), reference=_ref_affine),
    "relu": _elementwise(lambda x: np.maximum(x, 0), KINK),
    "sigmoid": _elementwise(lambda x: 1 / (1 + np.exp(-x))),
    "tanh": _elementwise(np.tanh),
    "batchnorm": Kind(
        ("x", "gamma", "beta", "bn_param"), (((6, 5), (5,), (5,)),), {"bn_param": _BN}, _BN_CASES,
        reference=norm_ref("batch", "bn_param"), hypotheses=norm_hypotheses("batch", "bn_param"),
        prepare=_running_stats, extra=_check_running_stats, forward_only=("mode=test",),
        forward_problem=_bn_forward_problem,
    ),
    "spatial_batchnorm": Kind(
        ("x", "gamma", "beta", "bn_param"), (((2, 3, 4, 5), (3,), (3,)),), {"bn_param": _BN}, _BN_CASES,
        reference=norm_ref("spatial", "bn_param"), hypotheses=norm_hypotheses("spatial", "bn_param"),
        prepare=_running_stats, extra=_check_running_stats, forward_only=("mode=test",),
        forward_problem=_bn_forward_problem,
    ),
    "layernorm": Kind(
        ("x", "gamma", "beta", "ln_param"), (((4, 6), (6,), (6,)),), {"ln_param": {"eps": 1e-5}},
        reference=norm_ref("layer", "ln_param"), hypotheses=norm_hypotheses("layer", "ln_param"),
    ),
    "spatial_groupnorm": Kind(
        ("x", "gamma", "beta", "G", "gn_param"),
        # N, C, G and C // G all different: grouping by C // G instead of G cannot pass
        (((2, 6, 3, 5), (1, 6, 1, 1), (1, 6, 1, 1)), ((2, 6, 3, 5), (6,), (6,))),
        {"G": 3, "gn_param": {"eps": 1e-5}},
        reference=norm_ref("group", "gn_param"), hypotheses=norm_hypotheses("group", "gn_param"),
    ),
    "dropout": Kind(
        ("x", "dropout_param"), (((6, 8),),), {"dropout_param": {"p": 0.3, "mode": "train", "seed": 123}},
        (("mode=train", {"dropout_param": {"mode": "train"}}), ("mode=test", {"dropout_param": {"mode": "test"}})),
        domains={"x": KINK}, hypotheses=(_new_mask,), extra=_check_dropout,
    ),
    "conv": Kind(
        ("x", "w", "b", "conv_param"), (((2, 3, 7, 9), (4, 3, 3, 5), (4,)),),
        {"conv_param": {"stride": 2, "pad": 1}},
        # padding 0, 1 and 2, strides 1 and 2: a backward right for one geometry only fails
        (("stride=2 pad=1", {}), ("stride=1 pad=0", {"conv_param": {"stride": 1, "pad": 0}}),
         ("stride=1 pad=2", {"conv_param": {"stride": 1, "pad": 2}})),
        reference=ref_conv, hypotheses=CONV_HYPOTHESES, forward_problem=conv_forward_problem,
    ),
    "max_pool": Kind(
        ("x", "pool_param"), (((2, 3, 8, 9),),), {"pool_param": {"pool_height": 2, "pool_width": 3, "stride": 2}},
        domains={"x": Domain("distinct")}, reference=ref_pool, hypotheses=MAX_POOL_HYPOTHESES,
    ),
    # the third assignment: recurrent layers, word embeddings, temporal layers (N, T, D)
    "rnn_step": Kind(
        ("x", "prev_h", "Wx", "Wh", "b"), (((3, 4), (3, 5), (4, 5), (5, 5), (5,)),),
        domains={"Wx": _SMALL, "Wh": _SMALL}, reference=ref_rnn_step,
    ),
    "rnn": Kind(
        ("x", "h0", "Wx", "Wh", "b"), (((2, 4, 3), (2, 5), (3, 5), (5, 5), (5,)),),
        domains={"Wx": _SMALL, "Wh": _SMALL}, reference=ref_rnn,
        hypotheses=recurrent_hypotheses(rnn_cell),
    ),
    "lstm_step": Kind(
        ("x", "prev_h", "prev_c", "Wx", "Wh", "b"),
        (((3, 4), (3, 5), (3, 5), (4, 20), (5, 20), (20,)),),
        domains={"Wx": _SMALL, "Wh": _SMALL}, reference=ref_lstm_step,
    ),
    "lstm": Kind(
        ("x", "h0", "Wx", "Wh", "b"), (((2, 4, 3), (2, 5), (3, 20), (5, 20), (20,)),),
        domains={"Wx": _SMALL, "Wh": _SMALL}, reference=ref_lstm,
        hypotheses=recurrent_hypotheses(lstm_cell),
    ),
    "word_embedding": Kind(
        ("x", "W"), (((2, 5), (7, 4)),), reference=ref_word_embedding, constants=("x",),
        prepare=_word_indices, hypotheses=(embedding_not_accumulated,),
    ),
    "temporal_affine": Kind(
        ("x", "w", "b"), (((2, 3, 4), (4, 5), (5,)),), reference=ref_temporal_affine,
    ),
    "temporal_softmax": Kind(
        ("x", "y", "mask"), (((2, 4, 5), (2, 4)),), reference=temporal_softmax, loss=True,
        constants=("mask",), prepare=_temporal_targets, hypotheses=TEMPORAL_SOFTMAX_HYPOTHESES,
        forward_problem=temporal_softmax_problem,
    ),
    "svm": Kind(("x", "y"), (((6, 5),),), reference=_loss_ref(_svm), loss=True, prepare=_svm_margins, hypotheses=(_loss_not_divided,)),
    "softmax": Kind(("x", "y"), (((6, 5),),), reference=_loss_ref(_softmax_loss), loss=True, hypotheses=(_loss_not_divided,)),
}  # fmt: skip
_LINEAR_LOSS: dict[str, Any] = {
    "args": ("W", "X", "y", "reg"),
    "shapes": (((5, 4), (6, 5)),),
    "params": {"reg": 0.1},
    "constants": ("X",),
}
ALIASES = {
    "batch_norm": "batchnorm",
    "layer_norm": "layernorm",
    "spatial_group_norm": "spatial_groupnorm",
    "spatial_batch_norm": "spatial_batchnorm",
    "maxpool": "max_pool",
    "fc": "affine",
    "linear": "affine",
}


def _by_names(base: str, names: Sequence[str]) -> Kind | None:
    """A layer the table does not name (``affine_relu``, ``conv_bn_relu_pool``...), built from
    its argument names, when it uses only the course's usual ones."""
    conv = "conv" in base
    x = (2, 3, 6, 6) if conv else (4, 6)
    w = (3, 3, 3, 3) if conv else (6, 5)
    width = w[0] if conv else w[1]
    sizes = {"x": x, "w": w, "b": (width,)}
    channels = width if "w" in names else x[1]
    sizes |= {"gamma": (channels,), "beta": (channels,)}
    params = {
        "bn_param": dict(_BN),
        "ln_param": {"eps": 1e-5},
        "conv_param": {"stride": 1, "pad": 1},
        "pool_param": {"pool_height": 2, "pool_width": 2, "stride": 2},
        "dropout_param": {"p": 0.7, "mode": "train", "seed": 123},
    }
    if not names or names[0] != "x" or not set(names) <= set(sizes) | set(params):
        return None
    shapes = tuple(sizes[n] for n in names if n in sizes)
    return Kind(tuple(names), (shapes,), {n: params[n] for n in names if n in params})


# --------------------------------------------------------------------------- discovery


@dataclass
class Pair:
    """A forward, its backward (None for a loss), and the plain backward an ``_alt`` answers to."""

    forward: str
    backward: str | None
    base: str
    plain: str | None = None

    @property
    def name(self) -> str:
        return self.forward if self.backward is None else f"{self.forward}/{self.backward}"


_FORWARD = re.compile(r"^(?P<base>[A-Za-z0-9_]+?)_forward(?P<suffix>_[A-Za-z0-9_]+)?$")
_LOSS = re.compile(r"^(?P<base>[A-Za-z0-9_]+?)_loss(_[A-Za-z0-9_]+)?$")


def find_pairs(functions: Collection[str]) -> list[Pair]:
    """Function pairs and losses among ``functions`` (their names: a dict name -> function
    will do), in definition order."""
    pairs = []
    for name in functions:
        m = _FORWARD.match(name)
        if m:
            base, suffix = m["base"], m["suffix"] or ""
            back = f"{base}_backward{suffix}"
            if back in functions:
                pairs.append(Pair(name, back, base))
            alt = f"{base}_backward{suffix}_alt"
            if alt in functions:
                pairs.append(Pair(name, alt, base, back if back in functions else None))
        elif (loss := _LOSS.match(name)) is not None:
            pairs.append(Pair(name, None, loss["base"]))
    return pairs


def _required(fn: Callable[..., Any]) -> list[str] | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]


def kind_for(pair: Pair, fn: Callable[..., Any]) -> tuple[Kind | None, str]:
    """The table's kind for this pair (matched by name and argument count), and its name."""
    names = _required(fn)
    base = ALIASES.get(pair.base.lower(), pair.base.lower())
    if pair.backward is None:
        kind = KINDS.get(base)
        if kind is not None and names is not None and len(names) == 4:
            kind = dataclasses.replace(kind, **_LINEAR_LOSS)  # (W, X, y, reg)
        if kind is not None and names is not None and len(names) == len(kind.args):
            return kind, base
        return None, base
    kind = KINDS.get(base)
    if kind is not None and names is not None and len(names) == len(kind.args):
        return kind, base
    if names is not None:
        return _by_names(base, names), base
    return None, base


def arg_names(kind: Kind | None, fn: Callable[..., Any]) -> list[str] | None:
    """The arguments by the course's names (the user's own names for kinds not in the table)."""
    return list(kind.args) if kind is not None else _required(fn)


def resolve_params(
    kind: Kind | None,
    names: Sequence[str] | None,
    raw: dict[str, Any],
    who: str,
    shapes: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Overrides of the arguments that are not arrays, as ``{argument: value or {key: value}}``.

    Keys may be an argument (``"G"``, ``"conv_param"`` with a dict), ``"dict.key"``
    (``"pool_param.stride"``), or a key of the one parameter dict that has it
    (``"stride"`` for ``conv_forward_naive``; ``"mode"`` for ``batchnorm_forward``).
    Raises :class:`LayerCheckError` for a key that names nothing, or more than one thing,
    for an input array or the labels (npgrad draws those: ``--shape`` sets their shapes),
    and, for the layers the course defines, for a value of the wrong type (``stride:"a"``,
    ``mode:3``) or a dict's key it does not take, and for a window larger than the input
    (``shapes``, or the kind's own): such a parameter would make the check itself fail, or
    allocate without bound, not the user's code.
    """
    names = list(names or [])
    defaults = kind.params if kind is not None else {}
    dicts = [n for n in names if n.endswith("_param") or isinstance(defaults.get(n), dict)]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        arg, dot, sub = key.partition(".")
        if not dot and key in names:
            if key in dicts and (isinstance(value, dict) or kind is not None):
                if not isinstance(value, dict):
                    example = next(iter(defaults.get(key) or {"KEY": 0}))
                    raise LayerCheckError(
                        f"{who}: {key} is a dict of parameters, not {value!r}: set its keys, "
                        f"e.g. {key}.{example}:VALUE"
                    )
                for k, v in value.items():
                    _check_param(kind, key, str(k), v, who)
                out.setdefault(key, {}).update(value)
            else:
                if kind is not None and key not in defaults:
                    what = "the labels" if key == "y" else "an input array"
                    raise LayerCheckError(
                        f"{who}: {key} is {what}, drawn by npgrad, not a parameter "
                        f"(its parameters: {', '.join(defaults) or 'none'}; --shape sets the "
                        "input shapes)"
                    )
                _check_param(kind, None, key, value, who)
                out[key] = value
            continue
        if dot:
            target: str | None = arg if arg in dicts else None
        else:
            having = [n for n in dicts if key in defaults.get(n, {})]
            # a dict the table knows nothing about may hold any key
            open_dicts = [n for n in dicts if n not in defaults]
            target = having[0] if len(having) == 1 else None
            if not having and len(dicts) == 1 and open_dicts:
                target = dicts[0]
            sub = key
        if target is None:
            takes = ", ".join(names) or "nothing known"
            raise LayerCheckError(
                f"{who}: no single argument or parameter named {key!r} (it takes {takes}; "
                "name a dict's key as DICT.KEY, e.g. pool_param.stride)"
            )
        _check_param(kind, target, sub, value, who)
        out.setdefault(target, {})[sub] = value
    _check_window(kind, out, shapes, who)
    return out


def _check_window(
    kind: Kind | None, out: dict[str, Any], shapes: Sequence[Sequence[int]] | None, who: str
) -> None:
    """Refuse padding beyond the image's size and pooling windows larger than the image."""
    if kind is None:
        return
    images = [tuple(shapes[0])] if shapes else [tuple(c[0]) for c in kind.shapes]
    for table, default in kind.params.items():
        if not isinstance(default, dict):
            continue
        merged = {**default, **out.get(table, {})}
        for h, w in (s[2:] for s in images if len(s) == 4):
            for key, limit, what in (
                ("pad", max(h, w), f"the input's {h}x{w}"),
                ("pool_height", h, f"the input's height {h}"),
                ("pool_width", w, f"the input's width {w}"),
            ):
                value = merged.get(key)
                if value is None:
                    continue
                sizes = value if isinstance(value, (list, tuple)) else [value]
                if any(v > limit for v in sizes):
                    raise LayerCheckError(
                        f"{who}: {table}.{key} {value!r} is larger than {what}: at most {limit}"
                    )


# Keys of the course's parameter dicts holding window geometry, and their least values.
_GEOMETRY = {"stride": 1, "pad": 0, "pool_height": 1, "pool_width": 1}
_RUNNING = ("running_mean", "running_var")  # bn_param may start with them: arrays


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: finite
        return True


def _check_param(kind: Kind | None, table: str | None, key: str, value: Any, who: str) -> None:
    """Refuse a value the course's layer cannot take where the table knows its type.

    ``table`` is the parameter dict holding ``key``, None for an argument of its own.
    """
    if kind is None:
        return
    known = kind.params.get(table, {}) if table is not None else kind.params
    if not isinstance(known, dict) or (table is not None and table not in kind.params):
        return  # a dict the table knows nothing about may hold anything
    name = f"{table}.{key}" if table is not None else key
    if key not in known:
        if table == "bn_param" and key in _RUNNING:
            return
        raise LayerCheckError(f"{who}: {table} has no key {key!r} (it takes {', '.join(known)})")
    default = known[key]

    def whole(v: Any, least: int) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and bool(v >= least)

    problem = None
    if key == "mode":
        if not (isinstance(value, str) and value in ("train", "test")):
            problem = "must be 'train' or 'test'"
    elif key in _GEOMETRY:
        least = _GEOMETRY[key]
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        if not (whole(value, least) or (pair and all(whole(v, least) for v in value))):
            problem = f"must be a whole number >= {least} or a pair of them"
    elif isinstance(default, bool) or isinstance(default, str):
        if type(value) is not type(default):
            problem = f"must be a {type(default).__name__}"
    elif isinstance(default, int):
        if not whole(value, 1 if key == "G" else 0):
            problem = f"must be a whole number >= {1 if key == 'G' else 0}"
    elif isinstance(default, float):
        number = isinstance(value, (int, float, np.integer, np.floating))
        if not number or isinstance(value, bool) or not _finite(value):
            problem = "must be a number"
        elif key == "p" and not 0 < value <= 1:
            problem = "must be a probability in (0, 1]"
        elif value < 0:
            problem = "must be >= 0"
    if problem:
        raise LayerCheckError(f"{who}: {name} {problem}, not {value!r}")


# --------------------------------------------------------------------------- reports


@dataclass
class CaseResult:
    """One call of a pair (one mode), with a result per gradient."""

    label: str
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    inputs: list[InputResult] = field(default_factory=list)
    forward: str | None = None  # None: nothing to compare with; "ok"; else what differs
    problems: list[str] = field(default_factory=list)  # failures beyond the gradients
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        ok_forward = self.forward is None or self.forward.startswith("ok")
        return ok_forward and not self.problems and all(r.passed for r in self.inputs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseResult:
        return cls(
            d["label"],
            [tuple(s) for s in d["shapes"]],
            [InputResult.from_dict(r) for r in d["inputs"]],
            d["forward"],
            list(d["problems"]),
            list(d["notes"]),
        )


@dataclass
class PairReport:
    """Verdict for one function pair (or loss)."""

    forward: str
    backward: str | None
    passed: bool
    cases: list[CaseResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # why npgrad cannot check this pair at all: neither a pass nor a failure (exit status 0)
    not_checked: str | None = None

    @property
    def name(self) -> str:
        return self.forward if self.backward is None else f"{self.forward}/{self.backward}"

    @property
    def diagnoses(self) -> list[str]:
        """Every reason for failing, most telling first."""
        out = [self.error] if self.error else []
        for c in self.cases:
            at = f"{c.label}: " if c.label else ""
            if c.forward and not c.forward.startswith("ok"):
                out.append(f"{at}forward: {c.forward}")
            out += [at + p for p in c.problems]
            for r in c.inputs:
                if not r.passed:
                    why = r.diagnosis or _wrong_at(r)
                    out.append(f"{at}{r.name or f'input {r.index}'}: {why}")
        return out

    @property
    def summary(self) -> str:
        """The one line: 'affine_forward/affine_backward: PASS', or FAIL and the first reason."""
        if self.passed:
            warn = f"  (warning: {self.warnings[0]})" if self.warnings else ""
            return f"{self.name}: PASS{warn}"
        if self.not_checked:
            return f"{self.name}: NOT CHECKED  {self.not_checked}"
        first = (self.diagnoses or ["wrong"])[0]
        return f"{self.name}: FAIL  {first}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairReport:
        return cls(
            d["forward"],
            d["backward"],
            d["passed"],
            [CaseResult.from_dict(c) for c in d["cases"]],
            list(d["warnings"]),
            d["error"],
            d.get("not_checked"),
        )

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "NOT CHECKED" if self.not_checked else "FAIL"
        lines = [f"{self.name}: {verdict}"]
        if self.not_checked:
            lines.append(f"  not checked: {self.not_checked}")
        if self.error:
            lines.append(f"  error: {self.error}")
        for c in self.cases:
            head = "  " + (c.label + ": " if c.label else "")
            head += "inputs " + ", ".join("x".join(map(str, s)) or "scalar" for s in c.shapes)
            lines.append(head)
            if c.forward:
                lines.append(f"    forward against the definition: {c.forward}")
            lines += [f"    problem: {p}" for p in c.problems]
            for r in c.inputs:
                label = f"{r.name or f'input {r.index}'} {r.shape}"
                if np.isnan(r.max_abs_error):
                    lines.append(f"    {label}: {'ok' if r.passed else 'WRONG'}")
                else:
                    within = ""
                    if not np.isnan(r.tolerance):  # the margin: how far below the tolerance
                        within = f" (tolerance {r.tolerance:.1e}, from the numerical noise)"
                    lines.append(
                        f"    {label}: max abs err {r.max_abs_error:.2e}, max rel err "
                        f"{r.max_rel_error:.2e}{within}  {'ok' if r.passed else 'WRONG'}"
                    )
                if r.diagnosis:
                    lines.append(f"      diagnosis: {r.diagnosis}")
                for idx, got, want in r.mismatches:
                    lines.append(
                        f"      at {idx}: backward gives {got:.6g}, numerically {want:.6g}"
                    )
            lines += [f"    note: {n}" for n in c.notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return PairReports([self])._repr_html_()


def _wrong_at(r: InputResult) -> str:
    if r.mismatches:
        return f"wrong (first at {r.mismatches[0][0]}); no known mistake matches"
    return "wrong"


class PairReports(list):
    """The reports of :func:`check_pairs`: printed one line per pair then the details; a table in
    notebooks."""

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self)

    def __str__(self) -> str:
        lines = [r.summary for r in self]
        details = [str(r) for r in self if not r.passed or r.warnings]
        return "\n".join(lines + ([""] + details if details else []))

    def _repr_html_(self) -> str:
        rows = []
        for r in self:
            colour = "#1a7f37" if r.passed else "#cf222e"
            why = r.warnings if r.passed else r.diagnoses
            notes = [n for c in r.cases for n in c.notes]
            items = "".join(f"<li>{escape(w)}</li>" for w in (why or []) + notes)
            rows.append(
                f"<tr><td><code>{escape(r.name)}</code></td><td style='color:{colour}'><b>"
                f"{'PASS' if r.passed else 'FAIL'}</b></td><td><ul>{items}</ul></td></tr>"
            )
        return (
            "<table><tr><th>function pair</th><th>verdict</th><th>diagnosis, warnings, notes"
            f"</th></tr>{''.join(rows)}</table>"
        )


# --------------------------------------------------------------------------- checking


class _Ctx:
    """One case being checked: the user's functions, the arguments, outputs and upstream."""

    def __init__(self, user: _UserCode, fwd: Callable, kind: Kind | None, case: Case) -> None:
        self.user, self.fwd, self.kind, self.case = user, fwd, kind, case
        self.values = dict(zip(case.names, case.values))
        self.outs: list[np.ndarray] = []
        self.g: list[np.ndarray] = []
        self.used_params: dict[str, Any] = {}
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.out_dtypes: list[str] = []  # the dtypes the forward returned, as it returned them
        self._raw_dtypes: list[str] = []

    def call_forward(
        self, values: list[Any], phase: str = "forward", keep: bool = False
    ) -> tuple[list[np.ndarray], Any]:
        """Outputs and cache of the user's forward on ``values``.

        The cache is None when replaying (:class:`npgrad.checking.layer_classes.Tape`): only calls into
        the user's code use it. With ``keep``, ``values`` become the arguments as the call left
        them (a forward may update ``bn_param`` in place), as recorded.
        """
        live: list[Any] = []

        def compute() -> list[Any]:
            outs, cache = self._forward_raw(values, phase)
            live.append(cache)
            return [outs, list(values) if keep else None, self._raw_dtypes]

        outs, after, dtypes = self.user.answer("forward", [phase, keep, values], compute)
        self.out_dtypes = list(dtypes)
        if keep and self.user.tape is not None:
            values[:] = after
        return outs, (live[0] if live else None)

    def _forward_raw(self, values: list[Any], phase: str) -> tuple[list[np.ndarray], Any]:
        np.random.seed(GLOBAL_SEED)
        result = self.user.call(phase, self.fwd, *values)
        if self.kind is not None and self.kind.loss:
            return [self._loss_value(result)], result
        if not isinstance(result, tuple) or len(result) < 2:
            raise UserCodeFailed(
                f"forward returned {_describe(result)}; expected a tuple (out, cache)"
            )
        if any(o is None for o in result[:-1]):
            raise UserCodeFailed("forward returned None as its output (not implemented yet?)")
        # the dtype it computes in (the checks work in float64 from here on)
        self._raw_dtypes = [str(getattr(o, "dtype", "float64")) for o in result[:-1]]
        outs = [
            _real_array(o, "forward returned, as its output,", "a NumPy array") for o in result[:-1]
        ]
        return outs, result[-1]

    def _loss_value(self, result: Any) -> np.ndarray:
        if not isinstance(result, tuple) or len(result) != 2:
            raise UserCodeFailed(
                f"the loss returned {_describe(result)}; expected a tuple (loss, gradient)"
            )
        loss = _real_array(result[0], "the loss returned, as the loss,", "a number")
        if loss.size != 1:
            raise UserCodeFailed(
                f"the loss returned, as the loss, an array of shape {loss.shape}; expected a number"
            )
        return loss.reshape(())

    def fresh(self) -> list[Any]:
        return [copy.deepcopy(v) for v in self.case.values]

    def trial(self) -> Trial:
        """This call, for the hypotheses of :mod:`npgrad.checking.mistake_models`."""
        return Trial(self.values, [self.case.names[i] for i in self.case.diff], self.g[0])


def _build(
    kind: Kind | None,
    names: list[str],
    shapes: Sequence[Shape],
    params: dict[str, Any],
    rng: np.random.Generator,
    base: str,
) -> tuple[list[Any], list[int]]:
    """Arguments for one call: arrays drawn for ``shapes``, the other arguments from ``params``."""
    values: dict[str, Any] = {}
    diff: list[int] = []
    arrays = iter(shapes)
    domains = kind.domains if kind else {}
    fallback = domains_for(base)
    for pos, name in enumerate(names):
        if name in params:
            values[name] = copy.deepcopy(params[name])
        elif name == "y":
            scores = values.get("x", values.get("X"))
            n = scores.shape[0] if scores is not None else 4
            c = (
                values["W"].shape[1]
                if "W" in values
                else scores.shape[-1]
                if scores is not None
                else 3
            )
            values[name] = rng.integers(0, c, size=n)
        elif name.endswith("_param"):
            values[name] = {}
        else:
            shape = next(arrays, None)
            if shape is None:
                raise UserCodeFailed(
                    f"no shape for argument {name!r}: give one with --shape", retry=True
                )
            dom = domains.get(name) or (
                fallback[min(len(diff), len(fallback) - 1)] if not kind else REAL
            )
            values[name] = (
                distinct(rng, shape) if dom.name == "distinct" else dom.sample(rng, shape)
            )
            if not (kind and name in kind.constants):
                diff.append(pos)
    if next(arrays, None) is not None:
        raise UserCodeFailed(f"more shapes than array arguments ({', '.join(names)})", retry=True)
    if kind is not None and kind.prepare is not None:
        kind.prepare(values, rng)
    return [values[n] for n in names], diff


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _cases(
    kind: Kind | None, names: list[str], overrides: dict[str, Any]
) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, parameters, backward checked) for each case; overrides replace the defaults."""
    params = _merge(kind.params if kind else {}, {})
    out: list[tuple[str, dict[str, Any], bool]] = []
    for label, over in kind.cases if kind else (("", {}),):
        merged = _merge(_merge(params, over), overrides)
        if any(m[0] != label and m[1] == merged for m in out):  # an override made them equal
            continue
        label = _label(label, overrides, merged)
        out.append((label, merged, not (kind and label in kind.forward_only)))
    return out


def _label(label: str, overrides: dict[str, Any], merged: dict[str, Any]) -> str:
    if not overrides:
        return label
    for d in merged.values():
        if isinstance(d, dict) and "mode" in d:
            return f"mode={d['mode']}"
    return label


def check_pair(
    forward: Callable[..., Any],
    backward: Callable[..., Any] | None,
    pair: Pair | None = None,
    shapes: Sequence[Sequence[int]] | None = None,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    plain_backward: Callable[..., Any] | None = None,
    source: str | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    tape: Tape | None = None,
) -> PairReport:
    """Check one function pair (``backward=None``: a loss returning ``(loss, grad)``).

    ``shapes`` gives the shapes of the floating-point array arguments, in order;
    ``params`` overrides arguments that are not arrays: ``{"conv_param": {"stride": 1}}``,
    ``{"stride": 1}`` or ``{"G": 4}`` (see :func:`resolve_params`). ``plain_backward`` is the ``X_backward`` an ``X_backward_alt``
    must agree with. ``source`` is the user's file, so errors point at its lines.
    ``tape`` records the answers of the user's functions, or replays them instead of calling
    them (:class:`npgrad.checking.layer_classes.Tape`). Raises :class:`LayerCheckError` for ``params``
    that cannot apply.
    """
    pair = pair or Pair(forward.__name__, None if backward is None else backward.__name__, "")
    if not pair.base:
        m = _FORWARD.match(pair.forward) or _LOSS.match(pair.forward)
        pair.base = m["base"] if m else pair.forward
    report = PairReport(pair.forward, pair.backward, False)
    user = _UserCode(lambda: None, source, progress, tape)
    kind, base = kind_for(pair, forward)
    names = arg_names(kind, forward)
    overrides = resolve_params(kind, names, params or {}, pair.forward, shapes)
    try:
        if names is None:
            raise UserCodeFailed("forward takes *args: say what it takes with named arguments")
        _check_pair(
            report,
            user,
            forward,
            backward,
            kind,
            base,
            names,
            shapes,
            overrides,
            seed,
            plain_backward,
        )
    except NotCheckable as why:
        report.not_checked = str(why)
    except UserCodeFailed as stop:
        report.error = str(stop)
    report.passed = (
        report.error is None and bool(report.cases) and all(c.passed for c in report.cases)
    )
    return report


def _check_pair(
    report: PairReport,
    user: _UserCode,
    forward: Callable,
    backward: Callable | None,
    kind: Kind | None,
    base: str,
    names: list[str],
    shapes: Sequence[Sequence[int]] | None,
    params: dict[str, Any],
    seed: int,
    plain: Callable | None,
) -> None:
    if kind is None and backward is None:
        raise NotCheckable(
            f"no loss named {base!r} is known (svm_loss, softmax_loss, temporal_softmax_loss); "
            "its gradient cannot be told from its value alone"
        )
    if shapes is not None:
        candidates = [[tuple(int(n) for n in s) for s in shapes]]
    elif kind is not None:
        candidates = [list(c) for c in kind.shapes]
    else:
        n_arrays = sum(not (n.endswith("_param") or n == "y") for n in names)
        candidates = [c for c in CANDIDATE_SHAPES if len(c) == n_arrays]
        if not candidates:
            raise NotCheckable(
                f"{len(names)} arguments and no known shapes: give them with --shape"
            )
    for label, merged, with_backward in _cases(kind, names, params):
        rng = np.random.default_rng(seed)
        first: UserCodeFailed | None = None
        for cand in candidates:
            values, diff = _build(kind, names, cand, merged, rng, base)
            case = Case(
                label,
                names,
                values,
                diff,
                with_backward and backward is not None or bool(kind and kind.loss),
            )
            ctx = _Ctx(user, forward, kind, case)
            try:
                ctx.outs, cache = ctx.call_forward(ctx.fresh())
                break
            except UserCodeFailed as stop:
                if not stop.retry:
                    raise
                first = first or stop
        else:
            raise first or UserCodeFailed("forward failed: no input shapes fit")
        result = CaseResult(label, [np.shape(v) for v in (values[i] for i in diff)])
        if first is not None and kind is not None:  # the course's own shapes failed
            tried = ", ".join("x".join(map(str, s)) for s in candidates[0])
            _warn(report, f"not checked with inputs {tried} (the course's): {first}")
        report.cases.append(result)
        _check_case(ctx, result, report, backward, cache, rng, plain)


def _check_case(
    ctx: _Ctx,
    result: CaseResult,
    report: PairReport,
    backward: Callable | None,
    cache: Any,
    rng: np.random.Generator,
    plain: Callable | None,
) -> None:
    case, kind = ctx.case, ctx.kind
    names = case.names
    at = f" ({case.label})" if case.label else ""
    if not all(np.all(np.isfinite(o)) for o in ctx.outs):
        raise UserCodeFailed(f"forward returned NaN or infinity on random inputs{at}")
    # what forward did to its arguments
    again = ctx.fresh()
    outs2, _ = ctx.call_forward(again, keep=True)
    ctx.used_params = {n: v for n, v in zip(names, again) if isinstance(v, dict)}
    for i in case.diff:
        if not np.array_equal(again[i], case.values[i]):
            _warn(
                report,
                f"forward modifies its argument {names[i]} in place: the caller's array changes",
            )
    if any(not np.array_equal(a, b) for a, b in zip(outs2, ctx.outs)):
        raise UserCodeFailed(
            "forward gives different outputs for the same inputs (random without the seed "
            "in its parameters?)" + at
        )
    # the forward against the course's definition
    definition: Callable[[dict[str, Any]], Any] | None = None  # the output's, when it is right
    if kind is not None and kind.reference is not None:
        reference = kind.reference
        allowed = _as_list(reference(ctx.values))
        f_atol, f_rtol = FORWARD_ATOL, FORWARD_RTOL
        if _in_float32(ctx):  # float32's rounding, at the output's scale
            top = max((float(np.max(np.abs(w), initial=0.0)) for w in allowed), default=1.0)
            f_atol, f_rtol = 100 * float(np.finfo(np.float32).eps) * max(top, 1.0), 1e-5
        match = next(
            (i for i, w in enumerate(allowed) if agrees(ctx.outs[0], w, f_atol, f_rtol)),
            None,
        )
        if match is not None:
            result.forward = "ok"
            if len(ctx.outs) == 1:
                definition = lambda v, i=match: _as_list(reference(v))[i]  # noqa: E731
        else:
            why = kind.forward_problem(ctx.values, ctx.outs[0]) if kind.forward_problem else None
            result.forward = why or _differs(ctx.outs[0], allowed[0])
    if kind is not None and kind.extra is not None:
        result.problems += kind.extra(ctx)
    result.notes += ctx.notes
    if not case.backward:
        result.notes.append("forward only: the course's backward is for training mode")
        return
    # the gradients
    ctx.g = [np.ones(()) if kind and kind.loss else rng.standard_normal(o.shape) for o in ctx.outs]
    grads = _backward(ctx, backward, cache, report)
    atol = _tolerance(ctx)
    if _in_float32(ctx):
        result.notes.append(
            f"the forward computes in float32: gradients checked at float32's precision "
            f"(step {FLOAT32_STEP:g}, tolerance {atol:.1e}); compute in float64 for a finer check"
        )
    for k, (pos, got) in enumerate(zip(case.diff, grads)):
        x = ctx.values[names[pos]]
        want = _numeric(ctx, pos)
        r = InputResult(k, x.shape, name="d" + names[pos])
        if got.shape != want.shape and _broadcast_only(got, want):
            _warn(
                report,
                f"d{names[pos]} has shape {got.shape} where {names[pos]} has {want.shape}: the "
                f"values are right, but return d{names[pos]}.reshape({names[pos]}.shape)",
            )
            got = got.reshape(want.shape)
        if got.shape == want.shape:
            diff = np.abs(got - want)
            r.max_abs_error = float(np.max(diff, initial=0.0))
            r.max_rel_error = float(
                np.max(diff / np.maximum(np.maximum(np.abs(want), np.abs(got)), 1e-12), initial=0.0)
            )
            bad = mismatches(got, want, atol, GRAD_RTOL)
            r.tolerance = atol
            r.passed = not bool(bad.any())
            for idx in itertools.islice(zip(*np.nonzero(bad)), 3):
                r.mismatches.append((tuple(int(j) for j in idx), float(got[idx]), float(want[idx])))
        if r.passed and definition is not None and not _fits(ctx, pos, want, definition):
            r.passed = False
            r.diagnosis = (
                "the numerical gradient disagrees with the definition's, though the forward's "
                "output agrees with it: the values from the file's process do not fit together "
                "(does the file change npgrad or NumPy?)"
            )
            r.mismatches = []
        elif not r.passed:
            r.diagnosis = _explain(ctx, k, got, want, backward, x)
        result.inputs.append(r)
    if plain is not None:
        _compare_alt(ctx, result, report, plain, grads)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _fits(
    ctx: _Ctx, pos: int, want: np.ndarray, definition: Callable[[dict[str, Any]], Any]
) -> bool:
    """Whether the numerical gradient for argument ``pos`` is the definition's, along a direction
    drawn here, unforeseeably.

    The forward's values at the perturbed points come from the process that ran the user's
    code, which the code controls; where the forward's output is the definition's, its
    numerical gradient must be the definition's too. Two calls of the definition tell.
    """
    name = ctx.case.names[pos]
    x = np.asarray(ctx.values[name], dtype=np.float64)
    u = np.random.default_rng(secrets.randbits(64)).standard_normal(x.shape)
    norm = float(np.linalg.norm(u))
    if want.shape != x.shape or norm == 0:
        return True
    u /= norm
    g = np.concatenate([gk.ravel() for gk in ctx.g])

    def along(t: float) -> float:
        moved = dict(ctx.values)
        moved[name] = x + t * u
        return float(np.sum(g * np.asarray(definition(moved), dtype=np.float64).ravel()))

    slope = (along(EPS) - along(-EPS)) / (2 * EPS)
    # the numerical gradient's own noise, summed along u (a float32 forward's is large)
    atol = max(1e-5, _tolerance(ctx) * math.sqrt(x.size))
    return agrees(float(np.sum(want * u)), slope, atol, 1e-3)


def _warn(report: PairReport, message: str) -> None:
    if message not in report.warnings:
        report.warnings.append(message)


def _differs(got: np.ndarray, want: np.ndarray) -> str:
    if got.shape != want.shape:
        return f"output shape {got.shape}, the definition's is {want.shape}"
    return f"differs from the definition by up to {float(np.max(np.abs(got - want))):.3g}"


def _broadcast_only(got: np.ndarray, want: np.ndarray) -> bool:
    """(1, D) for (D,) and the like: same values, shape differing only by axes of length 1."""
    squeeze = tuple(n for n in got.shape if n != 1) == tuple(n for n in want.shape if n != 1)
    return squeeze and agrees(got.reshape(want.shape), want, ATOL, RTOL)


def _backward(
    ctx: _Ctx, backward: Callable | None, cache: Any, report: PairReport
) -> list[np.ndarray]:
    """The user's gradients, one per array argument, checked for type and count."""

    def compute() -> list[Any]:
        return _read_gradients(ctx, backward, cache)

    grads, dout_changed = ctx.user.answer("gradients", [ctx.case.values, ctx.g], compute)
    if dout_changed:
        _warn(
            report,
            "backward modifies its upstream gradient dout in place: in a network, "
            "that corrupts the gradients of the layers after it (copy it first)",
        )
    return grads


def _read_gradients(ctx: _Ctx, backward: Callable | None, cache: Any) -> list[Any]:
    """[the gradients, whether backward changed its dout] (:func:`_backward`'s question)."""
    names = [ctx.case.names[i] for i in ctx.case.diff]
    dout_changed = False
    expected = (
        f"a NumPy array (d{names[0]})"
        if len(names) == 1
        else f"a tuple of {len(names)} arrays ({', '.join('d' + n for n in names)})"
    )
    if backward is None:  # a loss: the gradient came with the value
        np.random.seed(GLOBAL_SEED)
        result = ctx.user.call("forward", ctx.fwd, *ctx.fresh())
        items: Any = result[1]
        what = "the loss returned, as the gradient,"
    else:
        douts = [g.copy() for g in ctx.g]
        items = ctx.user.call("backward", backward, *douts, cache)
        dout_changed = any(not np.array_equal(a, b) for a, b in zip(douts, ctx.g))
        what = "backward returned"
    if len(names) == 1 and not isinstance(items, (tuple, list)):
        shape = np.shape(ctx.values[names[0]])
        got = _real_array(items, what, f"a NumPy array (d{names[0]}) of shape {shape}")
        return [[got], dout_changed]
    if not isinstance(items, tuple):
        hint = " (a missing return?)" if items is None else ""
        raise UserCodeFailed(f"{what} {_describe(items)}{hint}; expected {expected}")
    if len(items) != len(names):
        raise UserCodeFailed(f"{what} {len(items)} gradient(s); expected {expected}")
    unset = [f"d{n}" for item, n in zip(items, names) if item is None]
    if unset:
        raise UserCodeFailed(f"{what} None as {', '.join(unset)} (not implemented yet?)")
    grads = [
        _real_array(item, f"{what}, as d{n},", f"an array of shape {np.shape(ctx.values[n])}")
        for item, n in zip(items, names)
    ]
    return [grads, dout_changed]


def _step(ctx: _Ctx) -> float:
    """The central differences' step: float64's, or float32's where the forward computes in it."""
    return FLOAT32_STEP if _in_float32(ctx) else EPS


def _in_float32(ctx: _Ctx) -> bool:
    return any(d in ("float32", "float16") for d in ctx.out_dtypes)


def _tolerance(ctx: _Ctx) -> float:
    r"""The absolute tolerance of a gradient: ``NOISE_MARGIN`` times the numerical one's noise.

    Each projection $g \cdot f(x \pm h e_j)$ carries the forward's rounding, about
    $\epsilon \sum_k |g_k| |f_k|$ with $\epsilon$ the machine epsilon of the forward's
    dtype; the central difference divides it by $h$. Truncation ($h^2 f^{(3)}/6$) is far
    below that at $h = 10^{-6}$ in float64. So a correct float64 pair differs by about
    1e-10 here, and a gradient that is off by 1e-4 (eps dropped in batch norm) fails,
    where a fixed relative tolerance of 1e-4 let it pass.
    """
    eps = np.finfo(np.float32 if _in_float32(ctx) else np.float64).eps
    scale = sum(float(np.sum(np.abs(g) * np.abs(o))) for g, o in zip(ctx.g, ctx.outs))
    return NOISE_MARGIN * float(eps) * max(scale, 1.0) / _step(ctx)


def _numeric(ctx: _Ctx, pos: int) -> np.ndarray:
    """The numerical gradient for argument ``pos``: the forward runs where the user's code does,
    the differences are taken here."""
    values = ctx.fresh()
    g = np.concatenate([gk.ravel() for gk in ctx.g])
    step = _step(ctx)

    def compute() -> list[np.ndarray]:
        def f() -> np.ndarray:
            outs, _ = ctx._forward_raw(
                [copy.deepcopy(v) for v in values],
                "numerical gradient: forward on perturbed inputs",
            )
            return np.concatenate([o.ravel() for o in outs])

        return list(perturbed_projections(f, values[pos], g, step))

    plus, minus = ctx.user.answer("perturbed", [values, pos, g, step], compute)
    return (plus - minus) / (2 * step)


def _explain(
    ctx: _Ctx, k: int, got: np.ndarray, want: np.ndarray, backward: Callable | None, x: np.ndarray
) -> str | None:
    why = name_mistake(ctx.trial(), ctx.kind.hypotheses if ctx.kind else (), k, got, want)
    if why:
        return why
    local = None
    if backward is not None and len(ctx.g) == 1:

        def compute() -> np.ndarray | None:
            try:
                outs, cache = ctx._forward_raw(ctx.fresh(), "forward")
                ones = ctx.user.call("backward", backward, np.ones_like(outs[0]), cache)
                ones = ones if isinstance(ones, tuple) else (ones,)
                loc = np.asarray(ones[k], dtype=np.float64)
                return loc if loc.shape == want.shape else None
            except (UserCodeFailed, IndexError, TypeError, ValueError):
                return None

        local = ctx.user.answer("local", [ctx.case.values, k, want.shape], compute)
    batch = x.shape[0] if x.ndim > 1 else 0
    return _diagnose(got, want, x, ctx.g[0], ctx.outs[0], local, batch=batch)


def _compare_alt(
    ctx: _Ctx, result: CaseResult, report: PairReport, plain: Callable, grads: list[np.ndarray]
) -> None:
    name = getattr(plain, "__name__", "the plain backward")

    def compute() -> list[np.ndarray] | str:
        try:
            _, cache = ctx._forward_raw(ctx.fresh(), "forward")
            got = ctx.user.call(f"{name} (to compare)", plain, *[g.copy() for g in ctx.g], cache)
            got = got if isinstance(got, tuple) else (got,)
            return [np.asarray(t, dtype=np.float64) for t in got]
        except (UserCodeFailed, TypeError, ValueError) as exc:
            return f"not compared with {name}: {exc}"

    theirs = ctx.user.answer("alternative", [name, ctx.case.values, ctx.g], compute)
    if isinstance(theirs, str):
        result.notes.append(theirs)
        return
    for r, mine, other in zip(result.inputs, grads, theirs):
        if mine.shape != other.shape or agrees(mine, other, ALT_ATOL, ALT_RTOL):
            continue
        gap = float(np.max(np.abs(mine - other)))
        if not r.passed:
            right = (
                "which matches the numerical gradient"
                if _plain_right(ctx, r, other)
                else "which is wrong too"
            )
            r.diagnosis = f"disagrees with {name} (by up to {gap:.3g}), {right}" + (
                f"; {r.diagnosis}" if r.diagnosis else ""
            )
        else:
            _warn(
                report,
                f"{r.name} differs from {name}'s by up to {gap:.3g}, within the numerical "
                "check's tolerance: one of them is slightly off",
            )


def _plain_right(ctx: _Ctx, r: InputResult, other: np.ndarray) -> bool:
    return agrees(other, _numeric(ctx, ctx.case.diff[r.index]), ATOL, RTOL)


# --------------------------------------------------------------------------- many


def user_functions(
    namespace: dict[str, Any], module_name: str | None = None
) -> dict[str, Callable]:
    """The functions defined in ``namespace`` (a module's, or a notebook's globals())."""
    return {
        k: v
        for k, v in namespace.items()
        if inspect.isfunction(v) and (module_name is None or v.__module__ == module_name)
    }


def check_pairs(
    functions: dict[str, Callable[..., Any]],
    shapes: dict[str, list[Shape]] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    only: Sequence[str] | None = None,
    seed: int = 0,
    source: str | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> PairReports:
    """Check every pair and loss among ``functions`` (in this process); ``shapes`` and
    ``params`` are keyed by the forward's name (or the loss's)."""
    reports = PairReports()
    for pair in find_pairs(functions):
        if only and pair.forward not in only and pair.name not in only:
            continue

        def step(phase: str, name: str = pair.name) -> None:
            if progress:
                progress(name, phase)

        reports.append(
            check_pair(
                functions[pair.forward],
                functions[pair.backward] if pair.backward else None,
                pair,
                (shapes or {}).get(pair.forward),
                (params or {}).get(pair.forward),
                seed,
                functions[pair.plain] if pair.plain else None,
                source,
                step,
            )
        )
    return reports
