"""Check a student's own layer classes: is the backward right, where is it wrong, and why?

A layer follows the exercise's protocol: ``forward(*inputs)`` returns the
output array (and may remember things in ``self.mem``), ``backward(grad_y)``
returns the gradient of each input (a tuple when there are several).

:func:`check_layer` runs forward on random float64 inputs, backward with a
random upstream gradient, and compares with central differences. When the
gradient is wrong it tries to say why: wrong shape, transposed, missing sum
over the batch, sign error, ignoring the mask, not multiplying by the upstream
gradient, off by a constant factor. Inputs keep clear of the kinks and poles of
the op a class is named after (``Log`` gets positive inputs, ``Relu`` none
near 0), as that op's spec declares. Classes named like npgrad's own layers
(``Matmul``, ``Relu``, ``Softmax``, ``Log``, ``Sigmoid``, ``Tanh``) are also
compared with those and, when installed, with PyTorch.

Convolution, pooling and batch-norm classes (told by their name, else by their
signatures: :func:`image_kinds`) are checked as such: NCHW inputs (a 2x3x7x9
input with a non-square 4x3x3x5 kernel; pooling inputs without ties), their
constructor's stride, padding and window arguments found by name
(:data:`ROLES`) and set so that they matter (stride 2, padding 1, a 2x3
window), or given (``params``, ``--param``); settings the class keeps to
itself are read from its output. Their forward and backward are compared with
the op table's op of their kind (:mod:`npgrad.ops.conv`) and PyTorch's, and a
wrong gradient is matched against the classic mistakes of
:mod:`npgrad.checking.mistake_models` (kernel flipped, padding not removed, stride ignored,
pooling gradient spread over the window, batch statistics taken as constants).

:func:`npgrad.checking.user_files.check_file` (``npgrad check FILE.py``) checks every
such class in a file, with its function pairs (:mod:`npgrad.checking.function_pairs`), in a child
process with a time limit.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import layers as reference_layers
from ..errors import LayerCheckError, NpgradError, ReplayDiverged, UserCodeFailed
from ..ops import conv as ops_conv
from ..ops.specs import KINK, POSITIVE, REAL, Domain, OpSpec
from .gradcheck import agrees, all_ops, mismatches, perturbed_projections, torch_available
from .mistake_models import (
    ATOL,
    AVG_POOL_HYPOTHESES,
    CONV_HYPOTHESES,
    EPS,
    FORWARD_ATOL,
    FORWARD_RTOL,
    MAX_POOL_HYPOTHESES,
    RTOL,
    Hypothesis,
    Trial,
    conv_forward_problem,
    distinct,
    name_mistake,
    norm_hypotheses,
    zero_gradient,
)

DEFAULT_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "matmul": [(5, 6), (6, 4)],
    "linear": [(5, 6), (6, 4)],
}
CANDIDATE_SHAPES: list[list[tuple[int, ...]]] = [
    [(5, 6)],
    [(5, 6), (6, 4)],
    [(5, 6), (5, 6)],
    [(5, 6), (6,)],
    [(5, 6), (6, 4), (4,)],
]
# Functions students write that npgrad has no op for, and where their inputs must stay.
OTHER_DOMAINS = {"sqrt": POSITIVE, "abs": KINK}


@dataclass
class InputResult:
    index: int
    shape: tuple[int, ...]
    max_abs_error: float = float("nan")
    max_rel_error: float = float("nan")
    passed: bool = False
    mismatches: list[tuple[tuple[int, ...], float, float]] = field(default_factory=list)
    diagnosis: str | None = None
    name: str = ""  # "dx", "dw"...: function pairs name their gradients
    tolerance: float = float("nan")  # function pairs: the absolute tolerance the check used

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputResult:
        return cls(
            d["index"],
            tuple(d["shape"]),
            d["max_abs_error"],
            d["max_rel_error"],
            d["passed"],
            [(tuple(i), got, want) for i, got, want in d["mismatches"]],
            d["diagnosis"],
            d.get("name", ""),
            d.get("tolerance", float("nan")),
        )


@dataclass
class LayerReport:
    """Verdict for one layer class."""

    name: str
    passed: bool
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    inputs: list[InputResult] = field(default_factory=list)
    error: str | None = None
    reference: dict[str, str] = field(default_factory=dict)  # "npgrad"/"pytorch" -> "ok" or problem
    setup: str = ""  # how an image layer was built, and the op it was compared with

    @property
    def diagnoses(self) -> list[str]:
        out = [f"input {r.index}: {r.diagnosis}" for r in self.inputs if r.diagnosis]
        return out + [f"against {k}: {v}" for k, v in self.reference.items() if "differs" in v]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, to cross a process boundary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerReport:
        return cls(
            d["name"],
            d["passed"],
            [tuple(s) for s in d["shapes"]],
            [InputResult.from_dict(r) for r in d["inputs"]],
            d["error"],
            dict(d["reference"]),
            d.get("setup", ""),
        )

    def __str__(self) -> str:
        head = f"{self.name}: {'PASS' if self.passed else 'FAIL'}"
        if self.shapes:
            head += "  (inputs " + ", ".join("x".join(map(str, s)) for s in self.shapes) + ")"
        lines = [head] + ([f"  {self.setup}"] if self.setup else [])
        if self.error:
            lines.append(f"  error: {self.error}")
        for r in self.inputs:
            if np.isnan(r.max_abs_error):  # shapes differ: no element-wise error to show
                lines.append(f"  grad of input {r.index} {r.shape}: WRONG")
            else:
                lines.append(
                    f"  grad of input {r.index} {r.shape}: max abs err {r.max_abs_error:.2e}, "
                    f"max rel err {r.max_rel_error:.2e}  {'ok' if r.passed else 'WRONG'}"
                )
            if r.diagnosis:
                lines.append(f"    diagnosis: {r.diagnosis}")
            for idx, got, want in r.mismatches:
                lines.append(f"    at {idx}: backward gives {got:.6g}, numerically {want:.6g}")
        for who, verdict in self.reference.items():
            lines.append(f"  against {who}: {verdict}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        rows = "".join(
            f"<tr><td>input {r.index} {r.shape}</td><td>{r.max_abs_error:.2e}</td>"
            f"<td>{r.max_rel_error:.2e}</td><td>{'ok' if r.passed else 'wrong'}</td>"
            f"<td>{r.diagnosis or ''}</td></tr>"
            for r in self.inputs
        )
        extra = "".join(f"<li>against {k}: {v}</li>" for k, v in self.reference.items())
        err = f"<p>error: <code>{self.error}</code></p>" if self.error else ""
        return (
            f"<div><b>{self.name}</b>: <span style='color:{colour}'><b>"
            f"{'PASS' if self.passed else 'FAIL'}</b></span>{err}"
            "<table><tr><th>gradient</th><th>max abs err</th><th>max rel err</th><th></th>"
            f"<th>diagnosis</th></tr>{rows}</table><ul>{extra}</ul></div>"
        )


# --------------------------------------------------------------------------- the user's code


def _user_frame(exc: BaseException, filename: str | None) -> str:
    """'file:line: Type: message' pointing at the user's code if possible."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [
        f for f in frames if filename and Path(f.filename).resolve() == Path(filename).resolve()
    ]
    where = mine[-1] if mine else (frames[-1] if frames else None)
    loc = f"{where.filename}:{where.lineno}: " if where else ""
    try:
        message = str(exc).strip()
    except Exception:  # the user's exception class cannot say what it is
        message = "(its message could not be read)"
    return f"{loc}{type(exc).__name__}" + (f": {message}" if message else "")


def _shape_hint(exc: BaseException, phase: str) -> str:
    """For a backward pass whose matrix product does not fit: the usual cause, named."""
    message = str(exc) if isinstance(exc, ValueError) else ""
    if phase.startswith("backward") and (
        "mismatch in its core dimension" in message or "not aligned" in message
    ):
        return (
            " (the factors of a product do not fit: is one transposed, W where the "
            "gradient needs W.T, or x where it needs x.T?)"
        )
    return ""


def _describe(value: Any) -> str:
    """'None', 'a str', 'a list of 2', ... for messages about wrong return values."""
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"a NumPy array of shape {value.shape}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _shape_words(shapes: Sequence[tuple[int, ...]]) -> str:
    if len(shapes) == 1:
        return f"a NumPy array of shape {shapes[0]}"
    listed = ", ".join(str(s) for s in shapes[:-1]) + f" and {shapes[-1]}"
    return f"a tuple of {len(shapes)} NumPy arrays (one per input) of shapes {listed}"


# The checked inputs are small (--shape refuses over a million elements); an output or a
# gradient this large is a mistake, and converting it would only exhaust the memory.
_MAX_RETURNED = 1 << 24


def _real_array(value: Any, what: str, expected: str) -> np.ndarray:
    """``value`` as float64 if it is a NumPy array (or number) of real numbers."""
    if isinstance(value, (np.ndarray, np.generic, int, float)) and not isinstance(value, bool):
        arr = np.asarray(value)
        if arr.size > _MAX_RETURNED:  # converting it to float64 could exhaust the memory
            raise UserCodeFailed(
                f"{what} an array of shape {arr.shape}, far larger than anything checked here "
                f"({arr.size:,} elements); expected {expected}: a wrong shape?"
            )
        if arr.dtype.kind in "biuf":
            return arr.astype(np.float64)
        raise UserCodeFailed(
            f"{what} an array of dtype {arr.dtype}; expected {expected} of real numbers"
        )
    hint = " (a missing return?)" if value is None else ""
    raise UserCodeFailed(f"{what} {_describe(value)}{hint}; expected {expected}")


def _digest(value: Any) -> str:
    """A short fingerprint of the arguments of a question to the user's code (arrays by content)."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, np.ndarray):
            h.update(f"a{v.dtype.str}{v.shape}".encode())
            h.update(v.tobytes() if v.dtype.kind in "biuf" else b"?")
        elif isinstance(v, dict):
            h.update(b"{")
            for k, item in v.items():
                feed(k)
                feed(item)
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"(" if isinstance(v, tuple) else b"[")
            for item in v:
                feed(item)
            h.update(b")")
        elif v is None or isinstance(v, (bool, int, float, str, np.generic)):
            h.update(f"{type(v).__name__}:{v!r};".encode())
        else:
            h.update(f"<{type(v).__name__}>".encode())

    feed(value)
    return h.hexdigest()[:24]


class Tape:
    """What the user's code answered, in order: recorded where it runs, replayed where it is judged.

    ``npgrad check`` runs the user's file in a child process that the file controls: it may
    patch npgrad there. So the child only records the answers of the user's code (outputs,
    gradients, the forward's values at the points of the numerical gradient, each already
    read into plain arrays), and the checking process runs the very same check again with
    those answers in place of the calls: every comparison and verdict is made there, by an
    npgrad the file never touched. Each answer carries its question (what was asked and a
    digest of the arguments): a replay asked anything else stops with :class:`ReplayDiverged`.

    ``record(entry)`` receives ``{"key", "value"}`` or ``{"key", "error", "retry"}`` with
    the value as :func:`npgrad.checking.sandbox.encode` writes it; ``answers`` are such entries.
    """

    def __init__(
        self,
        record: Callable[[dict[str, Any]], None] | None = None,
        answers: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.record = record
        self.answers = list(answers or [])
        self.replaying = answers is not None
        self.position = 0

    def keep(self, key: list[str], value: Any) -> Any:
        """Record ``value`` and return it as the replay will see it (decoded from the record)."""
        from .sandbox import decode, encode

        encoded = encode(value)
        if self.record is not None:
            self.record({"key": key, "value": encoded})
        return decode(encoded)

    def keep_failure(self, key: list[str], stop: UserCodeFailed) -> None:
        if self.record is not None:
            self.record({"key": key, "error": str(stop), "retry": stop.retry})

    def next(self, key: list[str]) -> Any:
        """The answer to ``key``, or its failure raised again."""
        from .sandbox import decode

        if self.position >= len(self.answers):
            raise ReplayDiverged(f"no answer recorded for {key[0]}")
        entry = self.answers[self.position]
        self.position += 1
        if not isinstance(entry, dict) or entry.get("key") != key:
            raise ReplayDiverged(f"the answer recorded next is not for {key[0]}")
        if "error" in entry:
            raise UserCodeFailed(str(entry["error"]), retry=bool(entry.get("retry")))
        try:
            return decode(entry.get("value"))
        except ValueError as exc:
            raise ReplayDiverged(f"the answer recorded for {key[0]} is not data: {exc}") from None

    def finish(self) -> None:
        """Raise :class:`ReplayDiverged` if answers are left: the child asked more than the replay."""
        if self.position != len(self.answers):
            raise ReplayDiverged(
                f"{len(self.answers) - self.position} answers recorded beyond the check"
            )


class _UserCode:
    """Calls into the user's class, each call in a named phase, failures made into messages.

    Every question to the user's code goes through :meth:`answer`, which records the
    answer on a recording :class:`Tape` or takes it from a replaying one instead of
    calling anything.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        source: str | None,
        progress: Callable[[str], None] | None,
        tape: Tape | None = None,
    ) -> None:
        self.factory = factory
        self.source = source
        self.progress = progress or (lambda phase: None)
        self.phase: str | None = None
        self.tape = tape
        self.built = ""  # how the factory builds the instance, when a check changes it

    @property
    def sandboxed(self) -> bool:
        """Running in the child of ``npgrad check``: no Ctrl-C can reach it, only the code's own."""
        return self.tape is not None and not self.tape.replaying

    def call(self, phase: str, fn: Callable[..., Any], *args: Any) -> Any:
        if phase != self.phase:  # the numerical gradient calls forward hundreds of times
            self.phase = phase
            self.progress(phase)
        try:
            return fn(*args)
        except SystemExit as exc:
            code = "" if exc.code is None else repr(exc.code)
            raise UserCodeFailed(f"the code called sys.exit({code}) during {phase}") from None
        except Exception as exc:
            raise UserCodeFailed(
                f"{phase} failed: " + _user_frame(exc, self.source) + _shape_hint(exc, phase),
                retry=True,
            ) from None
        except BaseException as exc:  # KeyboardInterrupt, GeneratorExit, the user's own...
            if isinstance(exc, KeyboardInterrupt) and not self.sandboxed:
                raise  # Ctrl-C in this process: whoever pressed it wants the check stopped
            raise UserCodeFailed(f"{phase} failed: " + _user_frame(exc, self.source)) from None

    def answer(self, what: str, args: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``: the user's code asked (through :meth:`call`) and its answer read into
        plain values; recorded on the tape, or taken from it when replaying."""
        if self.tape is None:
            return self._guarded(compute)
        key = [what, _digest(args)]
        if self.tape.replaying:
            return self.tape.next(key)
        try:
            value = self._guarded(compute)
        except UserCodeFailed as stop:
            self.tape.keep_failure(key, stop)
            raise
        return self.tape.keep(key, value)

    def _guarded(self, compute: Callable[[], Any]) -> Any:
        """``compute()``, with whatever escapes it while reading the answer (the methods of a
        returned object run the user's code too) made into a failure of the phase."""
        try:
            return compute()
        except UserCodeFailed:
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and not self.sandboxed:
                raise
            phase = self.phase or "the check"
            raise UserCodeFailed(f"{phase} failed: " + _user_frame(exc, self.source)) from None

    def rebuild(self, factory: Callable[[], Any], built: str) -> None:
        """Build the instances with ``factory`` from now on (``built`` says how, for the tape)."""
        self.factory, self.built = factory, built

    def arity(self) -> int | None:
        """How many inputs a fresh instance's forward takes (None: any number)."""
        return self.answer(
            "arity",
            [self.built],
            lambda: _n_inputs(self.call("the constructor", self.factory).forward),
        )

    def forward(self, xs: Sequence[np.ndarray], phase: str = "forward") -> np.ndarray:
        """A fresh instance's output on copies of ``xs`` (the constructor counts as ``phase``)."""
        return self.answer(
            "forward", [self.built, phase, list(xs)], lambda: self._forward(xs, phase)[1]
        )

    def built_forward(self, xs: Sequence[np.ndarray]) -> tuple[list[list[Any]], np.ndarray]:
        """As :meth:`forward`, with the settings the fresh instance keeps as attributes (stride,
        padding...), as (role, value) pairs in the order of its attributes."""

        def compute() -> list[Any]:
            layer, y = self._forward(xs, "forward")
            return [_attribute_settings(layer), y]

        settings, y = self.answer("built forward", [self.built, list(xs)], compute)
        return [list(s) for s in settings], y

    def backward(
        self, xs: Sequence[np.ndarray], g: np.ndarray, phase: str = "backward"
    ) -> list[np.ndarray]:
        """A fresh instance's gradients: forward on copies of ``xs``, then backward of ``g``."""
        return self.answer(
            "backward", [self.built, phase, list(xs), g], lambda: self._backward(xs, g, phase)
        )

    def perturbed(
        self, xs: list[np.ndarray], i: int, g: np.ndarray, eps: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`npgrad.checking.gradcheck.perturbed_projections` of the forward for input ``i``."""
        phase = "numerical gradient: forward on perturbed inputs"

        def compute() -> list[np.ndarray]:
            return list(perturbed_projections(lambda: self._forward(xs, phase)[1], xs[i], g, eps))

        plus, minus = self.answer("perturbed", [self.built, list(xs), i, g, eps], compute)
        return plus, minus

    def _forward(self, xs: Sequence[np.ndarray], phase: str) -> tuple[Any, np.ndarray]:
        layer = self.call(phase, self.factory)
        y = self.call(phase, layer.forward, *[x.copy() for x in xs])
        if isinstance(y, tuple):
            raise UserCodeFailed(
                f"forward returned {_describe(y)}; return only the output array "
                "(keep what backward needs in self.mem)"
            )
        return layer, _real_array(y, "forward returned", "a NumPy array (the output)")

    def _backward(self, xs: Sequence[np.ndarray], g: np.ndarray, phase: str) -> list[np.ndarray]:
        layer, _ = self._forward(xs, "forward")
        result = self.call(phase, layer.backward, g.copy())
        shapes = [x.shape for x in xs]
        expected = _shape_words(shapes)
        if len(xs) == 1 and not isinstance(result, tuple):
            return [_real_array(result, "backward returned", expected)]
        if isinstance(result, tuple):
            items = result
        else:
            hint = " (a missing return?)" if result is None else ""
            raise UserCodeFailed(
                f"backward returned {_describe(result)}{hint}; expected {expected}"
            )
        if len(items) != len(xs):
            raise UserCodeFailed(
                f"forward takes {len(xs)} input(s) but backward returned {len(items)} "
                f"gradient(s); expected {expected}"
            )
        return [
            _real_array(
                item,
                f"backward returned, as the gradient of input {i},",
                f"an array of shape {shape}",
            )
            for i, (item, shape) in enumerate(zip(items, shapes))
        ]


# --------------------------------------------------------------------------- one class


def _n_inputs(forward: Any) -> int | None:
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        for p in params
    )


def domains_for(name: str) -> tuple[Domain, ...]:
    """Where the inputs of a class named ``name`` may lie: those of the op it is named after.

    The longest op name inside the class name wins (``LogSoftmax`` is log-softmax,
    not log); a class named after no op gets real inputs.
    """
    key = name.lower().replace("_", "")
    named: list[tuple[str, OpSpec | None]] = [
        (op_name, op.spec) for op_name, op in all_ops().items() if op.spec is not None
    ]
    named += [(word, None) for word in OTHER_DOMAINS]
    found = [(n, s) for n, s in named if n.replace("_", "") in key]
    if not found:
        return (REAL,)
    word, spec = max(found, key=lambda item: len(item[0]))
    return spec.domains if spec is not None else (OTHER_DOMAINS[word],)


def _inputs_for(
    name: str, shapes: Sequence[tuple[int, ...]], rng: np.random.Generator
) -> list[np.ndarray]:
    domains = domains_for(name)
    return [domains[min(i, len(domains) - 1)].sample(rng, s) for i, s in enumerate(shapes)]


def _diagnose(
    got: np.ndarray,
    want: np.ndarray,
    x: np.ndarray,
    g: np.ndarray,
    y: np.ndarray,
    local: np.ndarray | None,
    batch: int = 0,
) -> str | None:
    """Name the mistake when the wrong gradient has a recognisable shape."""

    def close(a: np.ndarray, b: np.ndarray) -> bool:
        return agrees(a, b, ATOL, RTOL)

    zero = zero_gradient(got, want)
    if zero:
        return zero
    if got.shape != want.shape:
        if got.ndim == 2 and got.T.shape == want.shape:
            if close(got.T, want):
                return f"transposed gradient: backward returns shape {got.shape}, the input is {want.shape}; transpose it"
            return f"wrong shape: {got.shape} looks transposed (the input is {want.shape})"
        if got.ndim == want.ndim + 1 and got.shape[1:] == want.shape:
            return (
                f"missing sum over the batch: backward returns one gradient per sample, shape "
                f"{got.shape}; sum over axis 0 to get {want.shape}"
            )
        if got.size == want.size:
            return f"wrong shape: {got.shape} instead of {want.shape} (right number of elements: a reshape or transpose?)"
        return f"wrong shape: backward returns {got.shape}, the input has shape {want.shape}"
    if got.ndim == 2 and got.shape[0] == got.shape[1] and close(got.T, want):
        return "transposed gradient: the values are right but transposed"
    if close(-got, want):
        return "sign error: the gradient has the right size but the opposite sign"
    if g.shape == got.shape and close(got, g) and not close(want, g):
        return (
            "gradient ignores the mask: it passes the upstream gradient everywhere, "
            "also where the input was not active (multiply by the mask)"
        )
    if g.shape == got.shape:
        blocked = np.isclose(want, 0, atol=ATOL) & ~np.isclose(g, 0, atol=ATOL)
        if blocked.any() and close(got[~blocked], want[~blocked]):
            return (
                "gradient ignores the mask: it is non-zero where the forward blocked the input "
                f"({int(blocked.sum())} elements)"
            )
    if local is not None and close(got, local):
        return (
            "forgot to multiply by the upstream gradient: backward returns the local derivative "
            "(right for grad_y = ones), not grad_y times it"
        )
    ratio = got[np.abs(want) > 1e-8] / want[np.abs(want) > 1e-8]
    if ratio.size and np.allclose(ratio, ratio[0], rtol=1e-4) and not np.isclose(ratio[0], 1):
        c = float(ratio[0])
        hint = ""
        if batch > 1 and np.isclose(c * batch, 1, rtol=1e-4):
            hint = f" (1/{batch}: divided by the batch size?)"
        elif batch > 1 and np.isclose(c, batch, rtol=1e-4):
            hint = f" ({batch}x: summed where a mean was meant?)"
        return f"off by a constant factor: backward is {c:.4g} times the true gradient{hint}"
    return None


def _reference_class(name: str) -> type[reference_layers.Layer] | None:
    ref = getattr(reference_layers, name, None)
    if (
        inspect.isclass(ref)
        and issubclass(ref, reference_layers.Layer)
        and ref is not reference_layers.Layer
    ):
        return ref
    return None


def _reference_compare(
    name: str, user: _UserCode, xs: list[np.ndarray], g: np.ndarray, use_torch: bool
) -> dict[str, str]:
    ref_cls = _reference_class(name)
    if ref_cls is None:
        return {}
    y = user.forward(xs, "comparing with npgrad: forward")
    grads = user.backward(xs, g, "comparing with npgrad: backward")
    ref = ref_cls()

    def npgrad_backward() -> tuple:
        rg = ref.backward(g.copy())
        return rg if isinstance(rg, tuple) else (rg,)

    out = {
        "npgrad": _verdict(y, grads, lambda: ref.forward(*[x.copy() for x in xs]), npgrad_backward)
    }
    spec = ref_cls.op.spec  # every op has one (a test holds them to it)
    if use_torch and spec is not None and not out["npgrad"].startswith("not compared"):
        try:
            import torch
        except ImportError:
            return out
        ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
        ty: list[Any] = []

        def torch_forward() -> np.ndarray:
            ty.append(spec.torch(torch, *ts))  # the layers use the ops' defaults
            return ty[0].detach().numpy()

        def torch_backward() -> tuple:
            ty[0].backward(torch.tensor(g))
            return tuple(t.grad.numpy() if t.grad is not None else np.zeros(t.shape) for t in ts)

        out["pytorch"] = _verdict(y, grads, torch_forward, torch_backward)
    return out


def _verdict(
    y: np.ndarray,
    grads: Sequence[np.ndarray],
    forward: Callable[[], Any],
    backward: Callable[[], Sequence[Any]],
    tol: tuple[float, float] = (1e-9, 1e-7),
    forward_problem: Callable[[np.ndarray], str] | None = None,
) -> str:
    """Compare the user's output and gradients with a reference's, computed by the callables;
    ``forward_problem(reference output)`` says how a differing forward differs."""
    try:
        ref = forward()
        if not agrees(y, ref, *tol):
            return "forward differs" + (f": {forward_problem(ref)}" if forward_problem else "")
        rgrads = backward()
    except Exception as exc:  # the reference does not take these inputs: nothing to compare
        return f"not compared: it takes other inputs ({type(exc).__name__}: {exc})"
    for i, (a, b) in enumerate(zip(grads, rgrads)):
        if not agrees(a, b, *tol):
            return f"backward differs for input {i}"
    return f"ok (forward and backward agree to {tol[1]:g})"


# --------------------------------------------------------------------------- image layers
# Convolution, pooling and batch-norm classes get 4-D inputs, constructor arguments
# that make stride and padding matter, the op table's op of their kind as the
# reference, and the classic mistakes of npgrad.checking.mistake_models named.

Shape = tuple[int, ...]

# Constructor parameters and attributes by what they mean, under the names students give them.
ROLES: dict[str, tuple[str, ...]] = {
    "stride": ("stride", "strides", "s", "step"),
    "padding": ("padding", "pad", "p", "pad_size", "padding_size", "zero_padding"),
    "dilation": ("dilation", "dilation_rate"),
    "kernel": (
        "kernel", "kernel_size", "ksize", "k", "pool_size", "pool", "size", "window",
        "window_size", "filter_size", "field",
    ),
    "kernel_h": ("pool_height", "pool_h", "kernel_height", "kernel_h", "kh", "hh"),
    "kernel_w": ("pool_width", "pool_w", "kernel_width", "kernel_w", "kw", "ww"),
    "in_channels": ("in_channels", "in_ch", "c_in", "cin", "input_channels", "channels_in"),
    "out_channels": (
        "out_channels", "out_ch", "c_out", "cout", "output_channels", "channels_out",
        "num_filters", "n_filters", "filters",
    ),
    "num_features": (
        "num_features", "n_features", "features", "num_channels", "n_channels", "channels",
        "dim", "c",
    ),
    "eps": ("eps", "epsilon"),
}  # fmt: skip
_ROLE_OF = {n: role for role, names in ROLES.items() for n in names}


def _role(name: str) -> str | None:
    return _ROLE_OF.get(name.lower().lstrip("_"))


def _distinct_inputs(rng: np.random.Generator, shapes: Sequence[Shape]) -> list[np.ndarray]:
    return [distinct(rng, s) for s in shapes]


def _normal_inputs(rng: np.random.Generator, shapes: Sequence[Shape]) -> list[np.ndarray]:
    return [REAL.sample(rng, s) for s in shapes]


def _norm_inputs(rng: np.random.Generator, shapes: Sequence[Shape]) -> list[np.ndarray]:
    # a batch mean away from 0, a variance away from 1 (the mistakes then differ), gamma away from 0
    domains = (Domain("shifted", scale=2.0), Domain("scale", gap=0.5), REAL)
    xs = [d.sample(rng, s) for d, s in zip(domains, shapes)]
    xs[0] += 1.0
    return xs


@dataclass(frozen=True)
class ImageKind:
    """A kind of image layer: its reference op, inputs, and the constructor settings to try."""

    op: Any  # the op table's class: forward(*inputs, **settings), vjp, spec.torch
    inputs: tuple[str, ...]  # the forward's inputs, by the course's names
    candidates: tuple[tuple[dict[str, Any], tuple[Shape, ...]], ...]  # settings, shapes; in turn
    grid: dict[str, tuple[Any, ...]]  # the op's settings, with values to try when nothing tells
    sample: Callable[[np.random.Generator, Sequence[Shape]], list[np.ndarray]]
    fixed: dict[str, Any] = field(default_factory=dict)  # further arguments of the op


_X = (2, 3, 7, 9)
_CONV = {"stride": 2, "padding": 1}  # channels and kernel size follow from the shapes
_POOL = ((2, 3, 8, 9),)
IMAGE_KINDS: dict[str, ImageKind] = {
    "conv2d": ImageKind(
        ops_conv.Conv2dOp,
        ("x", "w", "b"),
        (
            # a non-square kernel first; a square one for classes that take one kernel size
            (_CONV, (_X, (4, 3, 3, 5), (4,))),
            (_CONV, (_X, (4, 3, 3, 5))),
            (_CONV, (_X, (4, 3, 3, 3), (4,))),
            (_CONV, (_X, (4, 3, 3, 3))),
        ),
        {"stride": (1, 2, 3), "padding": (0, 1, 2), "dilation": (1, 2)},
        _normal_inputs,
    ),
    "max_pool2d": ImageKind(
        ops_conv.MaxPool2dOp,
        ("x",),
        (
            ({"kernel": (2, 3), "stride": 2, "padding": 1}, _POOL),
            ({"kernel": 3, "stride": 2, "padding": 1}, _POOL),
            ({"kernel": 2, "stride": 2, "padding": 0}, _POOL),
        ),
        {"kernel": (2, 3), "stride": (None, 1, 2, 3), "padding": (0, 1), "dilation": (1,)},
        _distinct_inputs,
    ),
    "avg_pool2d": ImageKind(
        ops_conv.AvgPool2dOp,
        ("x",),
        (
            ({"kernel": (2, 3), "stride": 2, "padding": 1}, _POOL),
            ({"kernel": 3, "stride": 2, "padding": 1}, _POOL),
            ({"kernel": 2, "stride": 2, "padding": 0}, _POOL),
        ),
        {"kernel": (2, 3), "stride": (None, 1, 2, 3), "padding": (0, 1)},
        _distinct_inputs,
    ),
    "batch_norm": ImageKind(
        ops_conv.BatchNormOp,
        ("x", "gamma", "beta"),
        (
            ({}, ((2, 3, 4, 5), (3,), (3,))),
            ({}, ((2, 3, 4, 5), (1, 3, 1, 1), (1, 3, 1, 1))),
            ({}, ((6, 5), (5,), (5,))),
        ),
        {"eps": (1e-5, 1e-8, 1e-3, 1e-4, 1e-6, 1e-7, 1e-12, 0.0)},
        _norm_inputs,
        {"training": True},
    ),
}
_OTHER_NORMS = {"layer", "group", "instance", "weight", "spectral", "l2", "local"}


def _words(name: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)]


def _signature(fn: Any, drop_self: bool) -> list[inspect.Parameter] | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    return params[1:] if drop_self and params else params


def _positional(params: list[inspect.Parameter] | None) -> tuple[int, float]:
    """How many positional arguments a function takes: at least, at most."""
    if params is None or any(p.kind == p.VAR_POSITIONAL for p in params):
        return 0, float("inf")
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return sum(p.default is p.empty for p in pos), len(pos)


def _forward_params(layer: Any) -> list[inspect.Parameter] | None:
    if inspect.isclass(layer):
        return _signature(getattr(layer, "forward", None), drop_self=True)
    return None


def _init_params(layer: Any) -> list[inspect.Parameter]:
    """The constructor's named parameters (none for a factory or an instance)."""
    if not inspect.isclass(layer) or layer.__init__ is object.__init__:
        return []
    params = _signature(layer.__init__, drop_self=True) or []
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def image_kinds(name: str, layer: Any = None) -> list[str]:
    """The kinds of image layer (keys of :data:`IMAGE_KINDS`) a class may be, most likely first.

    The class name decides (``Conv2d``, ``MaxPool``, ``AvgPooling``, ``BatchNorm2d``,
    ``SpatialBN``...; a ``Pool`` that says neither max nor average may be either); a
    name that says nothing, the signatures (``gamma`` and ``beta`` inputs, a
    ``momentum``, a pooling window). A name that says two kinds (``ConvBnRelu``) is
    none: such a layer gets the ordinary check.
    """
    words = _words(name)
    joined = "".join(words)
    found = []
    if any(re.fullmatch(r"conv(olution(al)?|olve[dr]?|net|layer)?", w) for w in words):
        found.append(["conv2d"])
    if "pool" in joined:
        if {"avg", "average", "mean"} & set(words) or "avgpool" in joined:
            found.append(["avg_pool2d"])
        else:
            found.append(["max_pool2d"] if "max" in joined else ["max_pool2d", "avg_pool2d"])
    if (
        "bn" in words
        or "batchnorm" in joined
        or (any(w.startswith("norm") for w in words) and not _OTHER_NORMS & set(words))
    ):
        found.append(["batch_norm"])
    if found:
        return found[0] if len(found) == 1 else []
    init = {p.name.lower() for p in _init_params(layer)}
    fwd = {p.name.lower() for p in _forward_params(layer) or []}
    if {"gamma", "beta"} <= fwd or "momentum" in init:
        return ["batch_norm"]
    if _positional(_forward_params(layer))[1] == 1 and init & set(
        ROLES["kernel"] + ROLES["kernel_h"]
    ):
        return ["max_pool2d", "avg_pool2d"]
    if len(fwd) >= 2 and init & set(ROLES["stride"] + ROLES["padding"]):
        return ["conv2d"]
    return []


def constructor_args(layer: Any, raw: dict[str, Any], who: str | None = None) -> dict[str, Any]:
    """``--param`` values for a class's constructor, keyed by its own parameter names.

    A key is a parameter's name or what it means (``stride`` for a parameter
    ``s``). Raises :class:`LayerCheckError` for a key that names no parameter.
    """
    who = who or getattr(layer, "__name__", "the layer")
    if not raw:
        return {}
    if not inspect.isclass(layer):
        raise LayerCheckError(f"{who}: constructor arguments need a class")
    params = _init_params(layer)
    takes_any = any(
        p.kind == p.VAR_KEYWORD for p in _signature(layer.__init__, drop_self=True) or []
    )
    out = {}
    for key, value in raw.items():
        value = tuple(value) if isinstance(value, list) else value  # a pair, through JSON
        named = [p.name for p in params if p.name == key]
        meant = [p.name for p in params if _role(p.name) == key]
        if named or len(meant) == 1:
            out[(named or meant)[0]] = value
        elif takes_any:
            out[key] = value
        else:
            takes = ", ".join(p.name for p in params) or "nothing"
            raise LayerCheckError(
                f"{who}: the constructor takes no parameter {key!r} (it takes {takes})"
            )
    return out


def _derived(kind: str, settings: dict[str, Any], shapes: Sequence[Shape]) -> dict[str, Any]:
    """The settings that follow from the input shapes (channels, the kernel of W)."""
    out = dict(settings)
    x = shapes[0]
    if kind == "conv2d" and len(x) == 4:
        out["in_channels"] = x[1]
        if len(shapes) > 1 and len(shapes[1]) == 4:
            kh, kw = shapes[1][2:]
            out["out_channels"], out["kernel"] = shapes[1][0], kh if kh == kw else (kh, kw)
    if kind == "batch_norm" and len(x) >= 2:
        out["num_features"] = x[1]
    if "kernel" in out:
        out["kernel_h"], out["kernel_w"] = _pair_of(out["kernel"])
    return out


def _pair_of(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def _setting_like(role: str, value: Any) -> bool:
    if value is None:
        return role == "stride"  # pooling: the kernel's
    if isinstance(value, (list, tuple)):
        return len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value)
    if role == "eps":
        return isinstance(value, (float, int)) and not isinstance(value, bool)
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _attribute_settings(layer: Any) -> list[list[Any]]:
    """The settings an instance keeps as attributes: [role, value] in the attributes' order."""
    out = []
    for attr, value in getattr(layer, "__dict__", {}).items():
        role = _role(attr) if isinstance(attr, str) else None
        if role and _setting_like(role, value):
            out.append([role, value])
    return out


def _known_settings(
    params: list[inspect.Parameter], kwargs: dict[str, Any], attributes: list[list[Any]]
) -> dict[str, Any]:
    """What the class was built with: the arguments passed, its attributes
    (:func:`_attribute_settings`), its defaults."""
    known: dict[str, Any] = {}
    for p in params:
        role = _role(p.name)
        if role and p.name in kwargs:
            known[role] = kwargs[p.name]
    for role, value in attributes:
        if role not in known:
            known[role] = value
    for p in params:
        role = _role(p.name)
        if role and role not in known and p.default is not p.empty:
            if _setting_like(role, p.default):
                known[role] = p.default
    if "kernel" not in known and "kernel_h" in known and "kernel_w" in known:
        known["kernel"] = (known["kernel_h"], known["kernel_w"])
    return known


def _op_inputs(xs: Sequence[np.ndarray], kind: str) -> list[np.ndarray]:
    if kind == "batch_norm":  # gamma and beta may come as (1, C, 1, 1)
        return [xs[0]] + [a.reshape(-1) for a in xs[1:]]
    return list(xs)


def _reference(kind: str, settings: dict[str, Any], xs: Sequence[np.ndarray]) -> tuple[Any, Any]:
    """The op's output and saved state on ``xs`` with ``settings``."""
    spec = IMAGE_KINDS[kind]
    kw = {r: settings[r] for r in spec.grid} | spec.fixed
    return spec.op.forward(*_op_inputs(xs, kind), **kw)


def _resolve(
    kinds: Sequence[str], known: dict[str, Any], xs: Sequence[np.ndarray], y: np.ndarray
) -> tuple[str, dict[str, Any], list[str]]:
    """The kind and the op's settings the class computes: those known, the rest found by
    matching its output (exactly if possible, then to the forward's tolerance), else the
    first that gives its output's shape. Also which settings were found by matching."""
    shaped: tuple[str, dict[str, Any], list[str]] | None = None
    for tol in ((1e-9, 1e-7), (FORWARD_ATOL, FORWARD_RTOL)):
        for kind in kinds:
            grid = IMAGE_KINDS[kind].grid
            unknown = [r for r in grid if r not in known]
            for combo in itertools.product(*(grid[r] for r in unknown)):
                settings = {**known, **dict(zip(unknown, combo))}
                try:
                    ref = np.asarray(_reference(kind, settings, xs)[0])
                except (NpgradError, ValueError, TypeError, IndexError):
                    continue
                if agrees(y, ref, *tol):
                    return kind, settings, unknown
                if shaped is None and ref.shape == y.shape:
                    shaped = (kind, settings, [])
    if shaped is not None:
        return shaped
    grid = IMAGE_KINDS[kinds[0]].grid
    return kinds[0], {r: known.get(r, values[0]) for r, values in grid.items()}, []


def _course_values(
    kind: str, settings: dict[str, Any], xs: Sequence[np.ndarray]
) -> tuple[dict[str, Any], tuple[Hypothesis, ...]]:
    """The inputs and settings by the course's names, and the mistakes to test them for."""
    x = xs[0]
    if kind == "conv2d":
        b = xs[2] if len(xs) > 2 else None
        p = {"stride": settings["stride"], "pad": settings["padding"]}
        p["dilation"] = settings["dilation"]
        return {"x": x, "w": xs[1], "b": b, "conv_param": p}, CONV_HYPOTHESES
    if kind == "batch_norm":
        values = dict(zip(("x", "gamma", "beta"), xs)) | {"bn_param": {"eps": settings["eps"]}}
        return values, norm_hypotheses("spatial" if x.ndim == 4 else "batch", "bn_param")
    if _pair_of(settings.get("dilation", 1)) != (1, 1):
        return {"x": x}, ()  # the plain references have no dilated pooling
    kh, kw = _pair_of(settings["kernel"])
    stride = (kh, kw) if settings["stride"] is None else settings["stride"]
    p = {"pool_height": kh, "pool_width": kw, "stride": stride, "pad": settings["padding"]}
    hyps = MAX_POOL_HYPOTHESES if kind == "max_pool2d" else AVG_POOL_HYPOTHESES
    return {"x": x, "pool_param": p}, hyps


def _call(name: str, kwargs: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def _image_reference(
    kind: str,
    settings: dict[str, Any],
    xs: list[np.ndarray],
    y: np.ndarray,
    grads: list[np.ndarray],
    g: np.ndarray,
    values: dict[str, Any],
    use_torch: bool,
) -> dict[str, str]:
    spec = IMAGE_KINDS[kind]
    try:
        tight = agrees(y, np.asarray(_reference(kind, settings, xs)[0]), 1e-9, 1e-7)
    except (NpgradError, ValueError, TypeError, IndexError):
        tight = False  # _verdict says why
    tol = (1e-9, 1e-7) if tight else (FORWARD_ATOL, FORWARD_RTOL)  # batch norm's eps, unknown
    saved: list[Any] = []

    def forward() -> np.ndarray:
        out, state = _reference(kind, settings, xs)
        saved.append(state)
        return out

    def problem(ref: np.ndarray) -> str:
        why = conv_forward_problem(values, y) if kind == "conv2d" else None
        if why:
            return why
        if ref.shape != y.shape:
            return f"output shape {y.shape}, the op's is {ref.shape}"
        return f"by up to {float(np.max(np.abs(y - ref))):.3g}"

    def shaped(grads: Sequence[Any]) -> tuple:
        return tuple(np.reshape(r, x.shape) for r, x in zip(grads, xs))

    out = {
        "npgrad": _verdict(
            y,
            grads,
            forward,
            lambda: shaped(spec.op.vjp(saved[0], g.copy(), (True,) * 3)),
            tol,
            problem,
        )
    }
    if use_torch and not out["npgrad"].startswith("not compared"):
        try:
            import torch
        except ImportError:
            return out
        ts = [
            torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in _op_inputs(xs, kind)
        ]
        kw = {r: settings[r] for r in spec.grid} | spec.fixed
        ty: list[Any] = []

        def torch_forward() -> np.ndarray:
            ty.append(spec.op.spec.torch(torch, *ts, **kw))
            return ty[0].detach().numpy()

        def torch_backward() -> tuple:
            ty[0].backward(torch.tensor(g))
            return shaped([t.grad.numpy() if t.grad is not None else np.zeros(t.shape) for t in ts])

        out["pytorch"] = _verdict(y, grads, torch_forward, torch_backward, tol, problem)
    return out


def _check_image(
    report: LayerReport,
    user: _UserCode,
    layer: Any,
    kinds: list[str],
    shapes: Sequence[Shape] | None,
    args: dict[str, Any],
    rng: np.random.Generator,
    use_torch: bool,
) -> bool:
    """Fill ``report`` for an image layer; False when its forward takes no inputs of ``kinds``."""
    params = _init_params(layer)
    low, high = _positional(_forward_params(layer))
    tries: list[tuple[dict[str, Any], tuple[Shape, ...]]] = []
    flat = "1" in _words(report.name)  # BatchNorm1d: (N, C) input first
    for kind in kinds:
        spec = IMAGE_KINDS[kind]
        for settings, cand in spec.candidates[:: -1 if flat else 1]:
            cand = tuple(shapes) if shapes is not None else cand
            if not low <= len(cand) <= min(high, len(spec.inputs)):
                continue
            settings = _derived(kind, settings, cand)
            kwargs = {
                p.name: settings[role]
                for p in params
                if (role := _role(p.name)) is not None and role in settings
            }
            kwargs |= args
            if (kwargs, cand) not in tries:
                tries.append((kwargs, cand))
    if not tries and kinds == ["conv2d"] and shapes is None:
        raise UserCodeFailed(
            "forward takes the input only: a convolution class is checked with its weights as "
            f"inputs, forward(x, W, b) or forward(x, W); to check dx alone, give --shape "
            f"{report.name}=2x3x7x9"
        )
    if not tries:
        return False
    missing = [p.name for p in params if p.default is p.empty and p.name not in tries[0][0]]
    if missing:
        raise UserCodeFailed(
            f"the constructor needs {', '.join(missing)}, whose meaning npgrad cannot tell: "
            f"give {'them' if len(missing) > 1 else 'it'} with --param {report.name}="
            f"{missing[0]}:VALUE"
        )
    first: UserCodeFailed | None = None
    for kwargs, cand in tries:
        if inspect.isclass(layer):
            user.rebuild(_builder(layer, kwargs), _call(layer.__name__, kwargs))
        xs = IMAGE_KINDS[kinds[0]].sample(rng, cand)
        try:
            attributes, y = user.built_forward(xs)
            break
        except UserCodeFailed as stop:
            if not stop.retry:
                raise
            first = first or stop
    else:
        assert first is not None
        raise first
    report.shapes = [x.shape for x in xs]
    if np.size(y) == 0:  # every gradient would be empty, and every comparison vacuous
        raise UserCodeFailed(
            f"its output for inputs {', '.join('x'.join(map(str, s)) for s in report.shapes)} is "
            "empty: nothing to check; give inputs its window fits with --shape"
        )
    built_as = f"built as {_call(layer.__name__, kwargs)}" if inspect.isclass(layer) else ""
    if len(xs) < (2 if kinds == ["conv2d"] else len(IMAGE_KINDS[kinds[0]].inputs)):
        # its parameters inside (a --shape of x alone): the gradients it has, nothing to compare
        report.setup = built_as

        def plain(
            i: int, got: np.ndarray, want: np.ndarray, g: np.ndarray, local: Any
        ) -> str | None:
            return _diagnose(got, want, xs[i], g, y, local, batch=xs[0].shape[0])

        _gradients(report, user, xs, y, rng, plain)
        report.reference = {"npgrad": "not compared: its parameters are not among its inputs"}
        return True
    kind, settings, found = _resolve(kinds, _known_settings(params, kwargs, attributes), xs, y)
    shown = {r: settings[r] for r in IMAGE_KINDS[kind].grid}
    report.setup = "; ".join(filter(None, [built_as, f"compared with {_call(kind, shown)}"]))
    found = [r for r in found if settings[r] != IMAGE_KINDS[kind].grid[r][0]]  # not the default
    if found:
        report.setup += f" ({', '.join(found)} read from its output)"
    try:
        values, hyps = _course_values(kind, settings, xs)
    except (ValueError, TypeError, KeyError):  # settings the plain references cannot take
        values, hyps = {"x": xs[0]}, ()
    diff = list(IMAGE_KINDS[kind].inputs[: len(xs)])

    def explain(i: int, got: np.ndarray, want: np.ndarray, g: np.ndarray, local: Any) -> str | None:
        why = name_mistake(Trial(values, diff, g), hyps, i, got, want)
        return why or _diagnose(got, want, xs[i], g, y, local, batch=xs[0].shape[0])

    g, grads = _gradients(report, user, xs, y, rng, explain)
    report.reference = _image_reference(kind, settings, xs, y, grads, g, values, use_torch)
    if any("differs" in v for v in report.reference.values()):
        report.passed = False
    refused = ("(ShapeError", "(ConfigError")
    if shapes is not None and any(r in report.reference["npgrad"] for r in refused):
        report.passed = False  # inputs the op itself refuses (--shape): no real check was made
    return True


# --------------------------------------------------------------------------- checking


def check_layer(
    layer: Any,
    shapes: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    use_torch: bool | None = None,
    name: str | None = None,
    source: str | None = None,
    progress: Callable[[str], None] | None = None,
    params: dict[str, Any] | None = None,
    *,
    tape: Tape | None = None,
) -> LayerReport:
    """Check a layer class (or a zero-argument factory) following the exercise's protocol.

    ``shapes`` gives the input shapes; by default they are guessed (``Matmul``:
    (5, 6) and (6, 4); one input: (5, 6); otherwise the first candidate for which
    ``forward`` runs). Convolution, pooling and batch-norm classes (:func:`image_kinds`)
    get 4-D inputs, are built with stride 2 and padding 1 where their constructor
    takes them (non-square windows without ties for pooling), compared with the
    op table's op of their kind, and their classic mistakes named. ``params``
    are constructor arguments (:func:`constructor_args`), e.g. ``{"stride": 1}``.
    ``source`` is the user's file, so errors point at its lines.
    ``progress(phase)`` is called before each call into the user's code.
    Raises :class:`LayerCheckError` for ``params`` the constructor does not take.
    ``tape`` records the answers of the class's code, or replays them instead of calling
    it (:class:`Tape`: ``npgrad check`` judges in its own process what its child recorded).
    """
    name = name or _name_of(layer)
    args = constructor_args(layer, params or {}, name)
    if inspect.isclass(layer):
        factory: Callable[[], Any] = lambda: layer(**args)  # noqa: E731
    else:
        factory = layer if callable(layer) else (lambda: layer)
    if use_torch is None:
        use_torch = torch_available()
    report = LayerReport(name, False)
    user = _UserCode(factory, source, progress, tape)
    try:
        rng = np.random.default_rng(seed)
        given = None if shapes is None else [tuple(int(n) for n in s) for s in shapes]
        kinds = image_kinds(name, layer)
        if not (kinds and _check_image(report, user, layer, kinds, given, args, rng, use_torch)):
            _check(report, user, given, rng, use_torch)
    except UserCodeFailed as stop:
        report.passed, report.error = False, str(stop)
    return report


def _builder(cls: Any, kwargs: dict[str, Any]) -> Callable[[], Any]:
    return lambda: cls(**kwargs)


def _name_of(layer: Any) -> str:
    return getattr(layer, "__name__", type(layer).__name__)


def _check(
    report: LayerReport,
    user: _UserCode,
    shapes: list[Shape] | None,
    rng: np.random.Generator,
    use_torch: bool,
) -> None:
    """Fill ``report``; raises :class:`UserCodeFailed` when the user's code ends the check early."""
    name = report.name
    if shapes is not None:
        candidates = [shapes]
    else:
        n = user.arity()
        default = DEFAULT_SHAPES.get(name.lower())
        candidates = ([default] if default else []) + [
            c for c in CANDIDATE_SHAPES if n is None or len(c) == n
        ]
    xs: list[np.ndarray] = []
    y = None
    first_error: UserCodeFailed | None = None
    for cand in candidates:
        xs = _inputs_for(name, cand, rng)
        try:
            y = user.forward(xs)
            break
        except UserCodeFailed as stop:  # a wrong guess of shapes, or a bug in forward
            if not stop.retry:
                raise
            first_error = first_error or stop
    if y is None:
        raise first_error or UserCodeFailed("forward failed: no input shapes fit")
    report.shapes = [x.shape for x in xs]
    batch = xs[0].shape[0] if xs[0].ndim > 1 else 0

    def explain(i: int, got: np.ndarray, want: np.ndarray, g: np.ndarray, local: Any) -> str | None:
        return _diagnose(got, want, xs[i], g, y, local, batch=batch)

    g, _ = _gradients(report, user, xs, y, rng, explain)
    report.reference = _reference_compare(name, user, xs, g, use_torch)
    if any("differs" in v for v in report.reference.values()):
        report.passed = False


def _gradients(
    report: LayerReport,
    user: _UserCode,
    xs: list[np.ndarray],
    y: np.ndarray,
    rng: np.random.Generator,
    explain: Callable[..., str | None],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each gradient of the user's backward against central differences, into ``report``;
    ``explain(i, got, want, g, local)`` names a mistake. Returns the upstream and the gradients."""
    if not np.all(np.isfinite(y)):
        raise UserCodeFailed("forward returned NaN or infinity on random inputs")
    g = rng.standard_normal(y.shape)
    grads = user.backward(xs, g)
    try:
        local: Sequence[np.ndarray | None] = user.backward(xs, np.ones_like(y))
    except UserCodeFailed:
        local = [None] * len(xs)

    for i, (x, got) in enumerate(zip(xs, grads)):
        plus, minus = user.perturbed(xs, i, g, EPS)
        want = (plus - minus) / (2 * EPS)  # judged here, from the forward's values
        r = InputResult(i, x.shape)
        if got.shape == want.shape:
            diff = np.abs(got - want)
            r.max_abs_error = float(np.max(diff))
            r.max_rel_error = float(
                np.max(diff / np.maximum(np.maximum(np.abs(want), np.abs(got)), 1e-12))
            )
            bad = mismatches(got, want, ATOL, RTOL)
            r.passed = not bool(bad.any())
            for idx in itertools.islice(zip(*np.nonzero(bad)), 3):
                r.mismatches.append((tuple(int(k) for k in idx), float(got[idx]), float(want[idx])))
        if not r.passed:
            loc = local[i]
            r.diagnosis = explain(
                i, got, want, g, loc if loc is not None and loc.shape == want.shape else None
            )
        report.inputs.append(r)
    report.passed = all(r.passed for r in report.inputs)
    return g, grads
