"""Gradient checking as a tool.

* :func:`gradcheck` compares the gradients the engine computes for any
  function of tensors with central differences, in float64: the full Jacobian
  for small problems, random-direction vector-Jacobian products for large ones.
* :func:`op_case` builds, for every op in :data:`npgrad.ops.OPS`, inputs and the
  matching npgrad and PyTorch calls; :func:`check_ops` runs them all (this is
  ``npgrad gradcheck``, and the test suite is driven by the same table, so an
  op cannot be registered without being checked).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import autodiff as T
from .autodiff import Tensor
from .errors import GradcheckError
from .ops import OPS

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
    with T.no_grad():
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


def numeric_jacobian(f: Callable[[], Any], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences: the (out.size, x.size) Jacobian of ``f()`` with respect to ``x``.

    ``f`` takes no arguments and reads ``x``, which is perturbed in place one
    element at a time and restored afterwards.
    """
    flat = x.reshape(-1)  # a view: writing it perturbs x
    columns = []
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        plus = np.array(f(), dtype=np.float64)
        flat[j] = old - eps
        minus = np.array(f(), dtype=np.float64)
        flat[j] = old
        columns.append(((plus - minus) / (2 * eps)).ravel())
    return np.stack(columns, axis=1) if columns else np.zeros((0, 0))


def gradcheck(
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
    """Check ``fn``'s backward against central differences, in float64.

    ``fn`` takes one Tensor per input and returns a Tensor of any shape.
    When (input elements) x (output elements) is at most ``max_full``, the whole
    Jacobian is compared element by element; otherwise ``directions`` random
    vector-Jacobian products ``v^T J u`` are. An element passes when
    ``|numeric - analytic| <= atol + rtol * |numeric|``.

    Inputs in other floating dtypes are cast to float64 (noted in the report);
    non-floating inputs are refused with :class:`GradcheckError`.
    Returns a :class:`GradcheckReport`; raises instead when ``raise_on_failure``.
    """
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
            results.append(_compare(i, a.shape, numeric, analytic[i], atol, rtol, full=True))
    else:
        rng = np.random.default_rng(seed)
        num = np.zeros((len(arrays), directions))
        ana = np.zeros((len(arrays), directions))
        for d in range(directions):
            v = rng.standard_normal(y0.shape)
            grads = _backward(fn, arrays, v)
            for i, a in enumerate(arrays):
                u = rng.standard_normal(a.shape)
                ana[i, d] = float(np.sum(grads[i] * u))
                old = a.copy()
                a += eps * u
                plus = _evaluate(fn, arrays)
                a[...] = old - eps * u
                minus = _evaluate(fn, arrays)
                a[...] = old
                num[i, d] = float(np.sum((plus - minus) / (2 * eps) * v))
        for i, a in enumerate(arrays):
            results.append(_compare(i, a.shape, num[i], ana[i], atol, rtol, full=False))
    report = GradcheckReport(
        passed=all(r.passed for r in results),
        mode="full" if full else "directional",
        inputs=results,
        notes=notes,
    )
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _compare(
    index: int,
    shape: tuple[int, ...],
    numeric: np.ndarray,
    analytic: np.ndarray,
    atol: float,
    rtol: float,
    full: bool,
) -> InputCheck:
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(numeric - analytic)
        scale = np.maximum(np.abs(numeric), np.abs(analytic))
        rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1), 0.0)
    bad = ~(diff <= atol + rtol * np.abs(numeric))  # NaN counts as a mismatch
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
    )


# --------------------------------------------------------------------------- op cases


@dataclass
class OpCase:
    """One check of an op: float64 inputs, the npgrad call, the equivalent PyTorch call."""

    op: str
    label: str
    inputs: list[np.ndarray]
    fn: Callable[..., Tensor]
    torch_fn: Callable[..., Any]


def _away_from_zero(x: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """Keep finite differences away from kinks and poles at 0."""
    return np.where(x >= 0, x + margin, x - margin)


def _broadcast_partner(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A random shape that broadcasts against ``shape``: some axes set to 1, maybe dropped."""
    partner = [1 if rng.random() < 0.4 else n for n in shape]
    drop = int(rng.integers(0, len(partner) + 1)) if partner else 0
    return tuple(partner[drop:]) if rng.random() < 0.5 else tuple(partner)


def op_case(name: str, rng: np.random.Generator, shape: Sequence[int] = (3, 4)) -> OpCase:
    """Build a check case for op ``name`` around a base ``shape`` (at least 1-D)."""
    shape = tuple(int(n) for n in shape) or (3,)
    x = rng.standard_normal(shape)
    two = shape if len(shape) >= 2 else (2, shape[0])

    def binary(fn: Callable, tfn: Callable, positive_b: bool = False) -> OpCase:
        other = _broadcast_partner(rng, shape)
        if rng.random() < 0.5:
            sa, sb = shape, other
        else:
            sa, sb = other, shape
        a, b = rng.standard_normal(sa), rng.standard_normal(sb)
        if positive_b:
            b = _away_from_zero(b, 0.5)
        return OpCase(name, f"{sa} {name} {sb}", [a, b], fn, tfn)

    def unary(fn: Callable, tfn: Callable, arr: np.ndarray, label: str = "") -> OpCase:
        return OpCase(name, label or str(arr.shape), [arr], fn, tfn)

    if name == "matmul":
        n, k = two[-2], two[-1]
        m = int(rng.integers(1, 5))
        a = rng.standard_normal(two[:-2] + (n, k))
        b = rng.standard_normal((k, m))
        return OpCase(name, f"{a.shape} @ {b.shape}", [a, b], T.matmul, lambda a, b: a @ b)
    if name == "linear":
        n, k = two[-2], two[-1]
        m = int(rng.integers(1, 5))
        a = rng.standard_normal(two[:-2] + (n, k))
        w, b = rng.standard_normal((k, m)), rng.standard_normal((m,))
        return OpCase(name, f"{a.shape} @ {w.shape} + {b.shape}", [a, w, b], T.linear,
                      lambda a, w, b: a @ w + b)  # fmt: skip
    if name == "add":
        return binary(lambda a, b: a + b, lambda a, b: a + b)
    if name == "sub":
        return binary(lambda a, b: a - b, lambda a, b: a - b)
    if name == "mul":
        return binary(lambda a, b: a * b, lambda a, b: a * b)
    if name == "div":
        return binary(lambda a, b: a / b, lambda a, b: a / b, positive_b=True)
    if name == "neg":
        return unary(lambda a: -a, lambda a: -a, x)
    if name == "pow":
        p = float(rng.choice([2.0, 3.0, -1.0, 0.5, 1.5]))
        base = np.abs(x) + 0.5
        return unary(lambda a: a**p, lambda a: a**p, base, f"{shape} ** {p}")
    if name == "exp":
        return unary(T.exp, lambda a: a.exp(), x)
    if name == "log":
        return unary(T.log, lambda a: a.log(), np.abs(x) + 0.5)
    if name == "relu":
        return unary(T.relu, lambda a: a.relu(), _away_from_zero(x))
    if name == "sigmoid":
        return unary(T.sigmoid, lambda a: a.sigmoid(), 3 * x)
    if name == "tanh":
        return unary(T.tanh, lambda a: a.tanh(), x)
    if name in ("softmax", "log_softmax"):
        axis = int(rng.integers(-len(shape), len(shape)))
        fn = T.softmax if name == "softmax" else T.log_softmax
        tname = name

        def tfn(a: Any) -> Any:
            return getattr(a, tname)(dim=axis)

        return unary(lambda a: fn(a, axis=axis), tfn, 3 * x, f"{shape} axis={axis}")
    if name in ("sum", "mean", "max"):
        axis = _random_axes(rng, len(shape))
        keep = bool(rng.random() < 0.5)
        tname = {"sum": "sum", "mean": "mean", "max": "amax"}[name]

        def fn(a: Tensor) -> Tensor:
            return getattr(a, name)(axis=axis, keepdims=keep)

        def tfn(a: Any) -> Any:
            dims = tuple(range(a.ndim)) if axis is None else axis
            return getattr(a, tname)(dim=dims, keepdim=keep)

        return unary(fn, tfn, x, f"{shape} axis={axis} keepdims={keep}")
    if name == "reshape":
        new = (-1,) if len(shape) == 1 else (shape[0], -1)
        if rng.random() < 0.5:
            new = tuple(reversed(shape))
        return unary(lambda a: a.reshape(new), lambda a: a.reshape(new), x, f"{shape} -> {new}")
    if name == "transpose":
        perm = tuple(int(i) for i in rng.permutation(len(shape)))
        return unary(
            lambda a: a.transpose(perm), lambda a: a.permute(*perm), x, f"{shape} perm={perm}"
        )
    if name == "concatenate":
        axis = int(rng.integers(0, len(shape)))
        other = list(shape)
        other[axis] = int(rng.integers(1, 4))
        b = rng.standard_normal(other)
        return OpCase(
            name,
            f"{shape} ++ {tuple(other)} axis={axis}",
            [x, b],
            lambda a, b: T.concatenate([a, b], axis=axis),
            lambda a, b: __import__("torch").cat([a, b], dim=axis),
        )
    if name == "getitem":
        if rng.random() < 0.5:
            idx: Any = (slice(None, None, 2),) + (slice(1, None),) * (len(shape) > 1)
        else:
            idx = rng.integers(0, shape[0], size=shape[0] + 2)  # repeats on purpose

        def tfn(a: Any) -> Any:
            if isinstance(idx, np.ndarray):
                return a[__import__("torch").as_tensor(idx)]
            return a[idx]

        return unary(lambda a: a[idx], tfn, x, f"{shape}[{_index_label(idx)}]")
    if name == "cross_entropy":
        n, c = two[0], max(two[-1], 2)
        logits = 3 * rng.standard_normal((n, c))
        reduction = str(rng.choice(["mean", "sum"]))
        if rng.random() < 0.5:
            target: np.ndarray = rng.integers(0, c, size=n)
            label = f"({n}, {c}) indices {reduction}"
        else:
            target = rng.dirichlet(np.ones(c), size=n)
            label = f"({n}, {c}) probabilities {reduction}"

        def tfn(a: Any) -> Any:
            import torch

            tt = torch.as_tensor(target)
            return torch.nn.functional.cross_entropy(a, tt, reduction=reduction)

        return unary(lambda a: T.cross_entropy(a, target, reduction=reduction), tfn, logits, label)
    raise KeyError(f"no check case for op {name!r}: add one to npgrad.check.op_case")


def _random_axes(rng: np.random.Generator, ndim: int) -> Any:
    r = rng.random()
    if r < 0.25:
        return None
    if r < 0.75 or ndim < 2:
        return int(rng.integers(-ndim, ndim))
    k = int(rng.integers(1, ndim + 1))
    return tuple(int(a) for a in sorted(rng.choice(ndim, size=k, replace=False)))


def _index_label(idx: Any) -> str:
    if isinstance(idx, np.ndarray):
        return f"int array of {idx.size}"
    return ", ".join(f"{s.start or ''}:{s.stop or ''}:{s.step or ''}" for s in idx)


@dataclass
class OpCheckResult:
    op: str
    label: str
    numeric: GradcheckReport
    torch_forward_error: float | None  # max relative error, None when torch is absent
    torch_backward_error: float | None

    @property
    def passed(self) -> bool:
        torch_ok = all(e is None or e <= TORCH_RTOL for e in self._torch_errors)
        return self.numeric.passed and torch_ok

    @property
    def _torch_errors(self) -> tuple[float | None, float | None]:
        return self.torch_forward_error, self.torch_backward_error


TORCH_RTOL = 1e-10


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


def compare_with_torch(case: OpCase, rng: np.random.Generator) -> tuple[float, float]:
    """Max relative errors of forward and backward (random upstream) against PyTorch."""
    import torch

    ts = [Tensor(a.copy(), requires_grad=True) for a in case.inputs]
    out = case.fn(*ts)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    tt = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in case.inputs]
    tout = case.torch_fn(*tt)
    tout.backward(torch.as_tensor(g))
    fwd = _rel_err(out.data, tout.detach().numpy())
    bwd = max(
        _rel_err(t.grad if t.grad is not None else np.zeros_like(t.data), u.grad.numpy())
        for t, u in zip(ts, tt)
    )
    return fwd, bwd


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def check_ops(
    names: Sequence[str] | None = None,
    seed: int = 0,
    use_torch: bool | None = None,
    cases_per_op: int = 3,
) -> list[OpCheckResult]:
    """Check every registered op (or ``names``) numerically and against PyTorch."""
    if use_torch is None:
        use_torch = torch_available()
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (2, 3, 4), (5,)]
    results = []
    for name in names or sorted(OPS):
        if name not in OPS:
            raise GradcheckError(f"unknown op {name!r}; known: {', '.join(sorted(OPS))}")
        for k in range(cases_per_op):
            case = op_case(name, rng, shapes[k % len(shapes)])
            report = gradcheck(case.fn, *case.inputs, atol=1e-6, rtol=1e-5)
            fwd = bwd = None
            if use_torch:
                fwd, bwd = compare_with_torch(case, rng)
            results.append(OpCheckResult(name, case.label, report, fwd, bwd))
    return results
