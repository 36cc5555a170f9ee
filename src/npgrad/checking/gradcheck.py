"""Gradient checking as a tool.

* :func:`gradcheck` compares the gradients the engine computes for any
  function of tensors with central differences, in float64: the full Jacobian
  for small problems, random-direction vector-Jacobian products for large ones.
  ``gradcheck(..., order=2)`` does the same for the second order: the
  gradient that ``grad(..., create_graph=True)`` records, checked by central
  differences of itself (:func:`gradgradcheck` is its older name).
* :func:`check_ops` checks every op in :data:`npgrad.ops.base.OPS` that way and
  against PyTorch, on inputs drawn from the op's own ``spec`` (this is
  ``npgrad gradcheck``, ``--order 2`` for second derivatives; :func:`op_case`
  draws one case).
* :func:`mismatches` is the pass rule and :func:`numeric_jacobian` /
  :func:`numeric_vjp` the central differences of every check in npgrad
  (:func:`perturbed_projections` their raw material, for the checks of a user's
  code that runs in another process).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import autodiff
from ..autodiff import Tensor, apply
from ..errors import GradcheckError, GradError
from ..ops.base import OPS, Op
from ..ops.device import module as device_module
from ..ops.device import to_device, to_host, tree_to_device
from ..ops.specs import OpSpec

# --------------------------------------------------------------------------- gradcheck


@dataclass
class InputCheck:
    """Result of checking the gradient with respect to one input."""

    index: int
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    passed: bool
    worst: tuple[int, ...] | None = None  # index of the worst element (full mode)
    # Entries (Jacobian elements, or directions) that disagree only because the input lies
    # within the step of a kink (relu at 0, a max's tie): inconclusive there, not failures.
    kinks: int = 0
    kink_at: tuple[int, ...] | None = None  # the first such input element (full mode)


@dataclass
class GradcheckReport:
    """What :func:`gradcheck` found: overall verdict and errors per input."""

    passed: bool
    mode: str  # "full" (whole Jacobian) or "directional" (random VJPs)
    inputs: list[InputCheck]
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.inputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.inputs), default=0.0)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        lines = [f"gradcheck ({self.mode}): {'PASS' if self.passed else 'FAIL'}"]
        for c in self.inputs:
            where = f" worst at {c.worst}" if c.worst is not None and not c.passed else ""
            lines.append(
                f"  input {c.index} {c.shape}: max abs {c.max_abs_error:.2e}, "
                f"max rel {c.max_rel_error:.2e} {'ok' if c.passed else 'MISMATCH'}{where}"
            )
            if c.kinks:
                at = f", e.g. at {c.kink_at}" if c.kink_at is not None else ""
                what = "Jacobian entries" if self.mode.endswith("full") else "elements"
                lines.append(
                    f"    inconclusive at a kink: {c.kinks} {what}{at}, within the step of a "
                    "non-differentiable point, where central differences say nothing (left "
                    "out of the errors above)"
                )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def raise_if_failed(self) -> GradcheckReport:
        if not self.passed:
            raise GradcheckError(str(self))
        return self


def _as_float64(inputs: Sequence[Any], notes: list[str]) -> list[np.ndarray]:
    arrays = []
    for i, x in enumerate(inputs):
        a = np.asarray(x.data if isinstance(x, Tensor) else x)
        if not np.issubdtype(a.dtype, np.floating):
            raise GradcheckError(
                f"gradcheck input {i} has dtype {a.dtype}: only floating inputs have "
                "gradients; pass integer arguments (labels, indices) through a closure"
            )
        if a.dtype != np.float64:
            notes.append(
                f"input {i} cast from {a.dtype} to float64 (finite differences need float64)"
            )
        arrays.append(np.array(a, dtype=np.float64))
    return arrays


def _evaluate(fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> np.ndarray:
    with autodiff.no_grad():
        out = fn(*[Tensor(a) for a in arrays])
    # Copy: the output may be a view of the input that the caller perturbs next.
    return np.array(out.data if isinstance(out, Tensor) else out, dtype=np.float64)


def _backward(
    fn: Callable[..., Any], arrays: Sequence[np.ndarray], seed: np.ndarray
) -> list[np.ndarray]:
    ts = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    if not isinstance(out, Tensor):
        raise GradcheckError("gradcheck: the function must return an npgrad Tensor")
    if out.dtype != np.float64:
        raise GradcheckError(
            f"gradcheck: the function returned {out.dtype}; it must keep float64 throughout"
        )
    if out.requires_grad:
        out.backward(seed)
    return [t.grad if t.grad is not None else np.zeros_like(t.data) for t in ts]


def _central_differences(f: Callable[[], Any], x: np.ndarray, eps: float) -> Iterator[np.ndarray]:
    """For each element of ``x`` in turn, ``(f(x + eps e_j) - f(x - eps e_j)) / 2 eps``.

    ``x`` is perturbed in place and restored before the next element.
    """
    flat = x.reshape(-1)  # a view: writing it perturbs x
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        plus = np.array(f(), dtype=np.float64)
        flat[j] = old - eps
        minus = np.array(f(), dtype=np.float64)
        flat[j] = old
        yield (plus - minus) / (2 * eps)


def numeric_jacobian(f: Callable[[], Any], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences: the (out.size, x.size) Jacobian of ``f()`` with respect to ``x``.

    ``f`` takes no arguments and reads ``x``, which is perturbed in place one
    element at a time and restored afterwards.
    """
    columns = [c.ravel() for c in _central_differences(f, x, eps)]
    return np.stack(columns, axis=1) if columns else np.zeros((np.size(f()), 0))


def numeric_vjp(
    f: Callable[[], Any], x: np.ndarray, g: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central differences of ``sum(g * f())`` with respect to ``x``: ``g^T J``, shaped like ``x``.

    Never forms the Jacobian, so it needs no more memory than one output.
    """
    out = np.empty(x.size)
    for j, column in enumerate(_central_differences(f, x, eps)):
        out[j] = float(np.sum(g * column))
    return out.reshape(x.shape)


def perturbed_projections(
    f: Callable[[], Any], x: np.ndarray, g: np.ndarray, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """The raw material of :func:`numeric_vjp`, for a ``f`` that runs elsewhere than the verdict.

    For each element j of ``x``: ``sum(g * (f(x + eps e_j) - f(x)))`` and the same at
    ``x - eps e_j``, two arrays shaped like ``x``; ``(plus - minus) / (2 * eps)`` is the
    numerical vector-Jacobian product. ``npgrad check`` has the user's forward evaluated at
    the perturbed points in the child process and draws the conclusions in its own (the
    differences from ``f(x)`` keep the projections exact to the last digits).
    """
    base = np.array(f(), dtype=np.float64)
    flat = x.reshape(-1)  # a view: writing it perturbs x
    plus, minus = np.empty(flat.size), np.empty(flat.size)

    def moved() -> np.ndarray:
        out = np.array(f(), dtype=np.float64)
        if out.shape != base.shape:
            raise ValueError(f"the output's shape changed from {base.shape} to {out.shape}")
        return out - base

    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        plus[j] = float(np.sum(g * moved()))
        flat[j] = old - eps
        minus[j] = float(np.sum(g * moved()))
        flat[j] = old
    return plus.reshape(x.shape), minus.reshape(x.shape)


def mismatches(got: Any, want: Any, atol: float, rtol: float) -> np.ndarray:
    """The pass rule of every check: True where ``|got - want| > atol + rtol * |want|``.

    ``want`` is the trusted value (the numerical gradient, the reference); NaN
    anywhere counts as a mismatch.
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~(np.abs(got - want) <= atol + rtol * np.abs(want))


def agrees(got: Any, want: Any, atol: float, rtol: float) -> bool:
    """Same shape, and no element :func:`mismatches`."""
    return np.shape(got) == np.shape(want) and not mismatches(got, want, atol, rtol).any()


def gradcheck(
    fn: Callable[..., Any],
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    max_full: int = 4096,
    directions: int = 8,
    seed: int = 0,
    order: int = 1,
    raise_on_failure: bool = False,
) -> GradcheckReport:
    """Check ``fn``'s backward against central differences, in float64.

    ``fn`` takes one Tensor per input and returns a Tensor of any shape.
    When (input elements) x (output elements) is at most ``max_full``, the whole
    Jacobian is compared element by element; otherwise ``directions`` random
    vector-Jacobian products ``v^T J u`` are. An element passes when
    ``|numeric - analytic| <= atol + rtol * |numeric|``.

    ``order=2`` checks the second order instead: with ``v`` a random upstream
    gradient for ``fn``'s output (drawn from ``seed``), the first-order
    vector-Jacobian product ``h(x, v) = grad(fn(x), x, v, create_graph=True)``
    is a function whose own backward pass is the second order, and it is
    checked as above with respect to every input and to ``v`` (the last input
    of the report): every second derivative when the Jacobian of ``h`` has at
    most ``max_full`` elements, ``directions`` random directions otherwise.

    Inputs in other floating dtypes are cast to float64 (noted in the report);
    non-floating inputs are refused with :class:`GradcheckError`.
    Returns a :class:`GradcheckReport`; raises instead when ``raise_on_failure``.
    """
    if isinstance(order, bool) or order not in (1, 2):
        raise GradcheckError(f"the order must be 1 or 2, not {order!r}")
    check = _first_order if order == 1 else _second_order
    report = check(fn, inputs, eps, atol, rtol, max_full, directions, seed)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def gradgradcheck(
    fn: Callable[..., Any],
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    max_full: int = 4096,
    directions: int = 8,
    seed: int = 0,
    raise_on_failure: bool = False,
) -> GradcheckReport:
    """``gradcheck(fn, *inputs, order=2)``, under its older name (same arguments, same report)."""
    return gradcheck(
        fn,
        *inputs,
        eps=eps,
        atol=atol,
        rtol=rtol,
        max_full=max_full,
        directions=directions,
        seed=seed,
        order=2,
        raise_on_failure=raise_on_failure,
    )


def _first_order(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    eps: float,
    atol: float,
    rtol: float,
    max_full: int,
    directions: int,
    seed: int,
) -> GradcheckReport:
    notes: list[str] = []
    arrays = _as_float64(inputs, notes)
    y0 = _evaluate(fn, arrays)
    n_in = sum(a.size for a in arrays)
    full = n_in * max(y0.size, 1) <= max_full
    results: list[InputCheck] = []
    if full:
        # Analytic Jacobian: one backward per output element (row of J).
        analytic = [np.zeros((y0.size, a.size)) for a in arrays]
        for k in range(y0.size):
            e = np.zeros(y0.size)
            e[k] = 1.0
            for i, g in enumerate(_backward(fn, arrays, e.reshape(y0.shape))):
                analytic[i][k] = g.ravel()
        for i, a in enumerate(arrays):
            numeric = numeric_jacobian(lambda: _evaluate(fn, arrays), a, eps)

            def along(j: int, a: np.ndarray = a) -> np.ndarray:
                unit = np.zeros(a.shape)
                unit.reshape(-1)[j] = 1.0
                return _fourth_difference(lambda: _evaluate(fn, arrays), a, unit, eps).ravel()

            results.append(
                _compare(i, a.shape, numeric, analytic[i], atol, rtol, full=True, probe=along)
            )
    else:
        # Elements at a kink are found first and left out of every direction: a direction
        # through one would say nothing, and directions are all there is here.
        scan = np.random.default_rng([seed, 1])
        kinks = [_find_kinks(lambda: _evaluate(fn, arrays), a, eps, scan) for a in arrays]
        rng = np.random.default_rng(seed)
        num = np.zeros((len(arrays), directions))
        ana = np.zeros((len(arrays), directions))
        for d in range(directions):
            v = rng.standard_normal(y0.shape)
            grads = _backward(fn, arrays, v)
            for i, a in enumerate(arrays):
                u = rng.standard_normal(a.shape)
                u.reshape(-1)[kinks[i]] = 0.0
                ana[i, d] = float(np.sum(grads[i] * u))
                old = a.copy()
                a += eps * u
                plus = _evaluate(fn, arrays)
                a[...] = old - eps * u
                minus = _evaluate(fn, arrays)
                a[...] = old
                num[i, d] = float(np.sum((plus - minus) / (2 * eps) * v))
        for i, a in enumerate(arrays):
            result = _compare(i, a.shape, num[i], ana[i], atol, rtol, full=False)
            if kinks[i].size:
                result.kinks = int(kinks[i].size)
                result.kink_at = tuple(int(k) for k in np.unravel_index(kinks[i][0], a.shape))
            results.append(result)
    return GradcheckReport(
        passed=all(r.passed for r in results),
        mode="full" if full else "directional",
        inputs=results,
        notes=notes,
    )


def _second_order(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    eps: float,
    atol: float,
    rtol: float,
    max_full: int,
    directions: int,
    seed: int,
) -> GradcheckReport:
    """The first-order check of ``h(x, v)``, the vjp ``fn``'s backward records (see gradcheck)."""
    notes: list[str] = []
    arrays = _as_float64(inputs, notes)
    y0 = _evaluate(fn, arrays)
    v = np.random.default_rng(seed).standard_normal(y0.shape)

    def first_order(*tensors: Tensor) -> Tensor:
        *xs, g = tensors
        with autodiff.enable_grad():  # the numerical side evaluates under no_grad
            leaves = [x if x.requires_grad else Tensor(x.data, requires_grad=True) for x in xs]
            out = fn(*leaves)
            if not isinstance(out, Tensor):
                raise GradcheckError(
                    "gradcheck(order=2): the function must return an npgrad Tensor"
                )
            if not out.requires_grad:
                return Tensor(np.zeros(sum(x.size for x in xs)))
            grads = autodiff.grad(out, leaves, g, create_graph=True)
            return autodiff.concatenate([d.reshape(-1) for d in grads])

    report = _first_order(first_order, [*arrays, v], eps, atol, rtol, max_full, directions, seed)
    report.mode = f"second order, {report.mode}"
    report.notes = notes + [f"input {len(arrays)} is the upstream gradient of the output"]
    return report


def _fourth_difference(
    f: Callable[[], Any], x: np.ndarray, u: np.ndarray, eps: float
) -> np.ndarray:
    """``f``'s fourth difference along ``u`` at steps of ``eps``, divided by ``eps``.

    For a smooth ``f`` it is the fourth derivative times ``eps**3``: nothing. Where a
    kink (a jump of the slope by ``s``) lies within two steps of ``x``, it is ``s`` times
    the cubic B-spline of the kink's offset, between ``s/6`` and ``2s/3`` inside one
    step: the size of the error the kink gives central differences (at most ``s/2``).
    So it tells a kink from a wrong gradient, which leaves it at rounding noise
    (Chainer's ``detect_nondifferentiable`` asks the same of a polynomial fit).
    """
    old = x.copy()
    ys = []
    for k in (-2, -1, 0, 1, 2):
        x[...] = old + k * eps * u
        ys.append(np.array(f(), dtype=np.float64))
    x[...] = old
    return (ys[0] - 4 * ys[1] + 6 * ys[2] - 4 * ys[3] + ys[4]) / eps


def _find_kinks(
    f: Callable[[], Any], x: np.ndarray, eps: float, rng: np.random.Generator
) -> np.ndarray:
    """The flat indices of the elements of ``x`` within two steps of a kink of ``f``.

    Group testing: the fourth difference (:func:`_fourth_difference`) along a random
    direction, projected on a random output weight, is rounding noise unless a kink lies
    in the direction's support; a support that shows one is halved until single elements
    remain, so k kinks among n elements cost about 2 k log2(n) probes of five
    evaluations. Two independent draws make a cancellation between kinks negligible.
    """
    y = np.array(f(), dtype=np.float64)
    found: set[int] = set()
    for _ in range(2):
        u, v = rng.standard_normal(x.shape), rng.standard_normal(y.shape)
        noise = 1e-7 * (1.0 + float(np.sum(np.abs(y * v))))

        def signal(idx: np.ndarray, u: np.ndarray = u, v: np.ndarray = v) -> float:
            w = np.zeros(x.shape)
            w.reshape(-1)[idx] = u.reshape(-1)[idx]
            return abs(float(np.sum(_fourth_difference(f, x, w, eps) * v)))

        stack = [np.setdiff1d(np.arange(x.size), sorted(found))]
        while stack:
            idx = stack.pop()
            if idx.size == 0 or signal(idx) <= noise:
                continue
            if idx.size == 1:
                found.add(int(idx[0]))
            else:
                stack += [idx[: idx.size // 2], idx[idx.size // 2 :]]
    return np.array(sorted(found), dtype=np.intp)


def _compare(
    index: int,
    shape: tuple[int, ...],
    numeric: np.ndarray,
    analytic: np.ndarray,
    atol: float,
    rtol: float,
    full: bool,
    probe: Callable[[int], np.ndarray] | None = None,
) -> InputCheck:
    """Errors and verdict for one input; in full mode ``probe(j)`` gives the fourth
    differences along input element ``j`` (a column), asked only where an entry fails."""
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(numeric - analytic)
    bad = mismatches(analytic, numeric, atol, rtol)
    kinked = np.zeros(bad.shape, dtype=bool)
    if probe is not None and bad.any():
        for j in np.flatnonzero(bad.any(axis=0)):
            d4 = np.abs(probe(int(j)))
            noise = 1e-7 * (1.0 + np.abs(numeric[:, j]))  # rounding, far below a kink
            kink = bad[:, j] & (d4 > np.maximum(noise, 0.1 * diff[:, j]))
            kinked[:, j] = kink
    bad &= ~kinked
    diff = np.where(kinked, 0.0, diff)  # a kink's entry says nothing of the gradient
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.maximum(np.abs(numeric), np.abs(analytic))
        rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1), 0.0)
    kink_at = None
    if full and kinked.any():
        first = int(np.flatnonzero(kinked.any(axis=0))[0])
        kink_at = tuple(int(i) for i in np.unravel_index(first, shape))
    worst = None
    if full and diff.size:
        k = int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)))
        worst = tuple(int(i) for i in np.unravel_index(k % analytic.shape[1], shape))
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    if np.isnan(diff).any():
        max_abs = math.nan
    return InputCheck(
        index=index,
        shape=tuple(shape),
        max_abs_error=max_abs,
        max_rel_error=float(np.max(rel)) if rel.size else 0.0,
        passed=not bool(bad.any()),
        worst=worst,
        kinks=int(kinked.sum()),
        kink_at=kink_at,
    )


# --------------------------------------------------------------------------- op cases


@dataclass
class OpCase:
    """One check of an op: float64 inputs and keyword parameters drawn from its spec."""

    op: str
    label: str
    inputs: list[np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)

    def fn(self, *tensors: Tensor) -> Tensor:
        """The npgrad call: the op itself, through the engine."""
        return apply(OPS[self.op], *tensors, **self.params)

    def torch_fn(self, *tensors: Any) -> Any:
        """The PyTorch twin the op's spec declares."""
        import torch

        return _spec(self.op).torch(torch, *tensors, **self.params)


def all_ops() -> dict[str, type[Op]]:
    """The op table: every op of every op module, which ``npgrad.ops`` imports by name
    (importing ``npgrad.ops.base`` here ran that), so no checker or doc misses one."""
    return OPS


def _spec(name: str) -> OpSpec:
    if name not in all_ops():
        close = difflib.get_close_matches(name, list(OPS), n=3)
        hint = "did you mean " + " or ".join(map(repr, close)) + "?"
        if not close:
            hint = "'npgrad gradcheck' without --op lists every op"
        raise GradcheckError(f"unknown op {name!r}; {hint}")
    spec = OPS[name].spec
    if spec is None:
        raise GradcheckError(
            f"op {name!r} declares no spec: add spec = OpSpec(...) to its class "
            "(see the npgrad.ops.dense docstring)"
        )
    return spec


def op_case(name: str, rng: np.random.Generator, shape: Sequence[int] = (3, 4)) -> OpCase:
    """Draw a check case for op ``name`` around a base ``shape`` (at least 1-D)."""
    inputs, params = _spec(name).sample(rng, shape)
    return OpCase(name, _label(inputs, params), inputs, params)


def _label(inputs: Sequence[np.ndarray], params: dict[str, Any]) -> str:
    words = [", ".join(str(a.shape) for a in inputs)]
    words += [f"{k}={_show(v)}" for k, v in params.items()]
    return " ".join(words)


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        kind = "int" if value.dtype.kind in "iu" else "float"
        return f"{kind}{list(value.shape)}"
    if isinstance(value, tuple) and any(isinstance(v, slice) for v in value):
        return "[" + ",".join(f"{s.start or ''}:{s.stop or ''}:{s.step or ''}" for s in value) + "]"
    return str(value)


@dataclass
class OpCheckResult:
    op: str
    label: str
    numeric: GradcheckReport | None  # None when skipped
    torch_forward_error: float | None  # max relative error, None when torch is absent
    torch_backward_error: float | None  # of the second-order gradient for order 2
    order: int = 1
    skipped: str | None = None  # why this case was not checked
    error: str | None = None  # why the check could not run (a vjp that cannot record)

    @property
    def passed(self) -> bool:
        if self.skipped:
            return True
        if self.error:
            return False
        torch_ok = all(e is None or e <= TORCH_RTOL for e in self._torch_errors)
        return self.numeric is not None and self.numeric.passed and torch_ok

    @property
    def _torch_errors(self) -> tuple[float | None, float | None]:
        return self.torch_forward_error, self.torch_backward_error


TORCH_RTOL = 1e-10
OP_ATOL, OP_RTOL = 1e-6, 1e-5  # the numerical check of the ops: float64 throughout
SHAPES = [(3, 4), (2, 3, 4), (5,)]  # the base shapes of check_ops' cases, in turn


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


def _on(case: OpCase, device: str) -> tuple[list[Tensor], OpCase]:
    """The case's inputs as leaf Tensors on ``device``, and the case with its parameters'
    arrays (labels, indices, routing) there too."""
    ts = [Tensor(to_device(a.copy(), device), requires_grad=True) for a in case.inputs]
    if device == "cpu":
        return ts, case
    return ts, OpCase(case.op, case.label, case.inputs, tree_to_device(case.params, device))


def _torch_run(torch: Any, device: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` with PyTorch making its tensors on ``device`` (the twins' own constants too)."""
    with torch.device(device):
        return fn()


def compare_with_torch(
    case: OpCase, rng: np.random.Generator, device: str = "cpu", torch_device: str | None = None
) -> tuple[float, float]:
    """Max relative errors of forward and backward (random upstream) against PyTorch.

    npgrad computes on ``device`` and PyTorch on ``torch_device`` (by default the same):
    ``"cuda"`` compares npgrad on CuPy with PyTorch on the GPU.
    """
    import torch

    tdev = torch_device or device
    ts, dcase = _on(case, device)
    out = dcase.fn(*ts)
    g = rng.standard_normal(out.shape)
    out.backward(to_device(g, device))

    def theirs() -> tuple[list[Any], Any]:
        tt = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in case.inputs]
        tout = case.torch_fn(*tt)
        tout.backward(torch.as_tensor(g))
        return tt, tout

    tt, tout = _torch_run(torch, tdev, theirs)
    fwd = _rel_err(to_host(out.data), tout.detach().cpu().numpy())
    bwd = max(
        _rel_err(
            to_host(t.grad) if t.grad is not None else np.zeros(t.shape),
            u.grad.cpu().numpy() if u.grad is not None else np.zeros(t.shape),
        )
        for t, u in zip(ts, tt)
    )
    return fwd, bwd


def compare_second_order_with_torch(
    case: OpCase, rng: np.random.Generator, device: str = "cpu", torch_device: str | None = None
) -> tuple[float, float]:
    """Max relative errors of forward and second-order gradients against PyTorch.

    Both sides differentiate twice: ``h = grad(out, x, v, create_graph=True)``,
    then ``grad(sum_i <h_i, u_i>, x)`` for random ``v`` and ``u_i``. Devices as in
    :func:`compare_with_torch`.
    """
    import torch

    tdev = torch_device or device
    ts, dcase = _on(case, device)
    out = dcase.fn(*ts)
    v = rng.standard_normal(out.shape)
    us = [rng.standard_normal(a.shape) for a in case.inputs]
    vd, usd = Tensor(to_device(v, device)), [to_device(u, device) for u in us]
    mixed = _dot(autodiff.grad(out, ts, vd, create_graph=True), usd)
    ours = [to_host(h.data) for h in autodiff.grad(mixed, ts)] if mixed.requires_grad else None

    def theirs_run() -> tuple[Any, list[np.ndarray]]:
        tt = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in case.inputs]
        tout = case.torch_fn(*tt)
        th1 = torch.autograd.grad(
            tout, tt, torch.as_tensor(v), create_graph=True, allow_unused=True
        )
        tg = [g if g is not None else torch.zeros_like(t) for g, t in zip(th1, tt)]
        tmixed = _dot(tg, [torch.as_tensor(u) for u in us])
        theirs = [np.zeros_like(a) for a in case.inputs]
        if tmixed.requires_grad:
            th = torch.autograd.grad(tmixed, tt, allow_unused=True)
            theirs = [
                np.zeros_like(a) if h is None else h.cpu().numpy() for h, a in zip(th, case.inputs)
            ]
        return tout, theirs

    tout, theirs = _torch_run(torch, tdev, theirs_run)
    ours = ours or [np.zeros_like(a) for a in case.inputs]
    fwd = _rel_err(to_host(out.data), tout.detach().cpu().numpy())
    return fwd, max(_rel_err(a, b) for a, b in zip(ours, theirs))


def _dot(grads: Sequence[Any], us: Sequence[Any]) -> Any:
    """``sum_i <grads_i, u_i>`` on npgrad or PyTorch tensors alike."""
    total = (grads[0] * us[0]).sum()
    for g, u in zip(grads[1:], us[1:]):
        total = total + (g * u).sum()
    return total


def torch_available() -> bool:
    """Whether PyTorch is installed (found without importing it: that takes a second)."""
    return importlib.util.find_spec("torch") is not None


def check_ops(
    names: Sequence[str] | None = None,
    seed: int = 0,
    use_torch: bool | None = None,
    cases_per_op: int = 3,
    order: int = 1,
    device: str = "cpu",
    torch_device: str | None = None,
) -> list[OpCheckResult]:
    """Check every registered op (or ``names``) numerically and against PyTorch.

    ``order=2`` checks second derivatives instead (``gradcheck(..., order=2)``
    and PyTorch's double backward); an op whose vjp declares
    ``differentiable_vjp = False`` gets one skipped row saying so.

    ``device="cuda"``: the comparison with PyTorch runs npgrad on CuPy and PyTorch on
    the GPU (or on ``torch_device``), the same cases as on the CPU; the numerical
    check stays on the host, in float64 (it checks the formula, not the device).
    """
    if isinstance(cases_per_op, bool) or not isinstance(cases_per_op, int) or cases_per_op < 1:
        raise GradcheckError(f"cases per op must be a whole number >= 1, not {cases_per_op!r}")
    if order not in (1, 2):
        raise GradcheckError(f"the order must be 1 or 2, not {order!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GradcheckError(f"the seed must be a whole number >= 0, not {seed!r}")
    names = list(names or all_ops())
    for name in names:
        _spec(name)  # unknown ops and missing specs are refused before any work
    if use_torch is None:
        use_torch = torch_available()
    device_module(device)  # a device it cannot use (no CuPy, no GPU): one error, before any case
    if device != "cpu" and not use_torch:
        raise GradcheckError(
            f"checking on {device} compares npgrad with PyTorch there: install torch "
            "(and drop --no-torch)"
        )
    rng = np.random.default_rng(seed)
    results = []
    compare = compare_with_torch if order == 1 else compare_second_order_with_torch
    for name in names:
        if order == 2 and not OPS[name].differentiable_vjp:
            why = "its vjp computes on NumPy arrays only (differentiable_vjp = False)"
            results.append(OpCheckResult(name, "-", None, None, None, order, why))
            continue
        for k in range(cases_per_op):
            case = op_case(name, rng, SHAPES[k % len(SHAPES)])
            try:
                report = gradcheck(case.fn, *case.inputs, atol=OP_ATOL, rtol=OP_RTOL, order=order)
            except GradError as exc:  # a vjp that cannot record: this op fails, the rest go on
                results.append(
                    OpCheckResult(name, case.label, None, None, None, order, None, str(exc))
                )
                continue
            fwd = bwd = None
            if use_torch and device != "cpu":
                try:
                    fwd, bwd = compare(case, rng, device, torch_device)
                except Exception as exc:  # one case failing on a device: a FAIL row, not the end
                    why = f"on {device} against PyTorch: {type(exc).__name__}: {exc}"
                    results.append(
                        OpCheckResult(name, case.label, report, None, None, order, None, why)
                    )
                    continue
            elif use_torch:
                fwd, bwd = compare(case, rng)
            results.append(OpCheckResult(name, case.label, report, fwd, bwd, order))
    return results
