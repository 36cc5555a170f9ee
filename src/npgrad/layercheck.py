"""Check a student's own layer classes: is the backward right, where is it wrong, and why?

A layer follows the exercise's protocol: ``forward(*inputs)`` returns the
output (and may remember things in ``self.mem``), ``backward(grad_y)`` returns
the gradient of each input (a tuple when there are several).

:func:`check_layer` runs forward on random float64 inputs, backward with a
random upstream gradient, and compares with central differences. When the
gradient is wrong it tries to say why: wrong shape, transposed, missing sum
over the batch, sign error, ignoring the mask, not multiplying by the upstream
gradient, off by a constant factor. Classes named like the exercise's
(``Matmul``, ``Relu``, ``Softmax``, ``Log``) are also compared with npgrad's
reference layers and, when installed, PyTorch.

``npgrad check FILE.py`` runs this on every such class in a file.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import layers as reference_layers
from .check import numeric_jacobian
from .errors import LayerCheckError

EPS = 1e-6
ATOL, RTOL = 1e-6, 1e-4
DEFAULT_SHAPES = {
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


@dataclass
class InputResult:
    index: int
    shape: tuple[int, ...]
    max_abs_error: float = float("nan")
    max_rel_error: float = float("nan")
    passed: bool = False
    mismatches: list[tuple[tuple[int, ...], float, float]] = field(default_factory=list)
    diagnosis: str | None = None


@dataclass
class LayerReport:
    """Verdict for one layer class."""

    name: str
    passed: bool
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    inputs: list[InputResult] = field(default_factory=list)
    error: str | None = None
    reference: dict[str, str] = field(default_factory=dict)  # "npgrad"/"pytorch" -> "ok" or problem

    @property
    def diagnoses(self) -> list[str]:
        return [f"input {r.index}: {r.diagnosis}" for r in self.inputs if r.diagnosis]

    def __str__(self) -> str:
        head = f"{self.name}: {'PASS' if self.passed else 'FAIL'}"
        if self.shapes:
            head += "  (inputs " + ", ".join("x".join(map(str, s)) for s in self.shapes) + ")"
        lines = [head]
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


def _user_frame(exc: BaseException, filename: str | None) -> str:
    """'file:line: Type: message' pointing at the user's code if possible."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [
        f for f in frames if filename and Path(f.filename).resolve() == Path(filename).resolve()
    ]
    where = mine[-1] if mine else (frames[-1] if frames else None)
    loc = f"{where.filename}:{where.lineno}: " if where else ""
    return f"{loc}{type(exc).__name__}: {exc}"


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


def _inputs_for(
    name: str, shapes: Sequence[tuple[int, ...]], rng: np.random.Generator
) -> list[np.ndarray]:
    key = name.lower()
    xs = [rng.standard_normal(s) for s in shapes]
    if "log" in key or "sqrt" in key:
        xs = [np.abs(x) + 0.5 for x in xs]
    elif "relu" in key or "abs" in key:
        xs = [np.where(x >= 0, x + 0.1, x - 0.1) for x in xs]  # keep clear of the kink
    return xs


def _as_tuple(g: Any) -> tuple:
    """backward's result as a tuple: one gradient per input."""
    return tuple(g) if isinstance(g, (tuple, list)) else (g,)


def _run(instance_factory: Any, xs: list[np.ndarray], g: np.ndarray | None = None) -> Any:
    layer = instance_factory()
    y = np.asarray(layer.forward(*[x.copy() for x in xs]), dtype=np.float64)
    if g is None:
        return y, None
    return y, layer.backward(g.copy())


def _numeric(factory: Any, xs: list[np.ndarray], i: int, g: np.ndarray) -> np.ndarray:
    """Central-difference gradient of sum(g * forward(xs)) with respect to xs[i]."""
    jacobian = numeric_jacobian(lambda: _run(factory, xs)[0], xs[i], EPS)
    return (g.ravel() @ jacobian).reshape(xs[i].shape)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=ATOL, rtol=RTOL))


def _diagnose(got: np.ndarray, want: np.ndarray, x: np.ndarray, g: np.ndarray, y: np.ndarray,
              local: np.ndarray | None, batch: int = 0) -> str | None:  # fmt: skip
    """Name the mistake when the wrong gradient has a recognisable shape."""
    if got.shape != want.shape:
        if got.ndim == 2 and got.T.shape == want.shape:
            if _close(got.T, want):
                return f"transposed gradient: backward returns shape {got.shape}, the input is {want.shape}; transpose it"
            return f"wrong shape: {got.shape} looks transposed (the input is {want.shape})"
        if got.ndim == want.ndim + 1 and got.shape[1:] == want.shape:
            return (f"missing sum over the batch: backward returns one gradient per sample, shape "
                    f"{got.shape}; sum over axis 0 to get {want.shape}")  # fmt: skip
        if got.size == want.size:
            return f"wrong shape: {got.shape} instead of {want.shape} (right number of elements: a reshape or transpose?)"
        return f"wrong shape: backward returns {got.shape}, the input has shape {want.shape}"
    if got.ndim == 2 and got.shape[0] == got.shape[1] and _close(got.T, want):
        return "transposed gradient: the values are right but transposed"
    if _close(-got, want):
        return "sign error: the gradient has the right size but the opposite sign"
    if g.shape == got.shape and _close(got, g) and not _close(want, g):
        return ("gradient ignores the mask: it passes the upstream gradient everywhere, "
                "also where the input was not active (multiply by the mask)")  # fmt: skip
    if g.shape == got.shape:
        blocked = np.isclose(want, 0, atol=ATOL) & ~np.isclose(g, 0, atol=ATOL)
        if blocked.any() and np.allclose(got[~blocked], want[~blocked], atol=ATOL, rtol=RTOL):
            return ("gradient ignores the mask: it is non-zero where the forward blocked the input "
                    f"({int(blocked.sum())} elements)")  # fmt: skip
    if local is not None and _close(got, local):
        return ("forgot to multiply by the upstream gradient: backward returns the local derivative "
                "(right for grad_y = ones), not grad_y times it")  # fmt: skip
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


def _reference_compare(name: str, factory: Any, xs: list[np.ndarray], g: np.ndarray,
                       use_torch: bool) -> dict[str, str]:  # fmt: skip
    ref_cls = getattr(reference_layers, name, None)
    if ref_cls not in (
        reference_layers.Matmul,
        reference_layers.Relu,
        reference_layers.Softmax,
        reference_layers.Log,
    ):
        return {}
    out: dict[str, str] = {}
    y, grads = _run(factory, xs, g)
    grads = _as_tuple(grads)
    ref = ref_cls()
    ry = ref.forward(*[x.copy() for x in xs])
    rg = _as_tuple(ref.backward(g.copy()))
    out["npgrad"] = _verdict(y, ry, grads, rg)
    if use_torch:
        try:
            import torch
        except ImportError:
            return out
        ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
        if name == "Matmul":
            ty = ts[0] @ ts[1]
        elif name == "Relu":
            ty = torch.relu(ts[0])
        elif name == "Softmax":
            ty = torch.softmax(ts[0], dim=-1)
        else:
            ty = torch.log(ts[0])
        ty.backward(torch.tensor(g))
        out["pytorch"] = _verdict(y, ty.detach().numpy(), grads, tuple(t.grad.numpy() for t in ts))
    return out


def _verdict(y: np.ndarray, ry: np.ndarray, grads: tuple, rgrads: tuple) -> str:
    if np.shape(y) != np.shape(ry) or not np.allclose(y, ry, rtol=1e-7, atol=1e-9):
        return "forward differs"
    for i, (a, b) in enumerate(zip(grads, rgrads)):
        if np.shape(a) != np.shape(b) or not np.allclose(a, b, rtol=1e-7, atol=1e-9):
            return f"backward differs for input {i}"
    return "ok (forward and backward agree to 1e-7)"


def check_layer(
    layer: Any,
    shapes: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    use_torch: bool | None = None,
    name: str | None = None,
    source: str | None = None,
) -> LayerReport:
    """Check a layer class (or a zero-argument factory) following the exercise's protocol.

    ``shapes`` gives the input shapes; by default they are guessed (``Matmul``:
    (5, 6) and (6, 4); one input: (5, 6); otherwise the first candidate for which
    ``forward`` runs). ``source`` is the user's file, so errors point at its lines.
    """
    name = name or getattr(layer, "__name__", type(layer).__name__)
    factory = layer if inspect.isclass(layer) or callable(layer) else (lambda: layer)
    if use_torch is None:
        from .check import torch_available

        use_torch = torch_available()
    rng = np.random.default_rng(seed)
    try:
        factory()
    except Exception as exc:  # the user's constructor
        return LayerReport(name, False, error="could not construct: " + _user_frame(exc, source))

    if shapes is not None:
        candidates = [[tuple(int(n) for n in s) for s in shapes]]
    else:
        n = _n_inputs(factory().forward)
        default = DEFAULT_SHAPES.get(name.lower())
        candidates = ([default] if default else []) + [
            c for c in CANDIDATE_SHAPES if n is None or len(c) == n
        ]
    xs: list[np.ndarray] = []
    y = None
    first_error: str | None = None
    for cand in candidates:
        xs = _inputs_for(name, cand, rng)
        try:
            y = _run(factory, xs)[0]
            break
        except Exception as exc:  # wrong guess of shapes, or a bug in forward
            first_error = first_error or _user_frame(exc, source)
    if y is None:
        return LayerReport(
            name, False, error="forward failed: " + (first_error or "no input shapes fit")
        )
    shape_list = [x.shape for x in xs]
    if not np.all(np.isfinite(y)):
        return LayerReport(
            name, False, shape_list, error="forward returned NaN or infinity on random inputs"
        )
    g = rng.standard_normal(y.shape)
    try:
        _, grads = _run(factory, xs, g)
    except Exception as exc:
        return LayerReport(
            name, False, shape_list, error="backward failed: " + _user_frame(exc, source)
        )
    grads = _as_tuple(grads)
    if len(grads) != len(xs):
        return LayerReport(name, False, shape_list,
                           error=f"forward takes {len(xs)} input(s) but backward returned {len(grads)} gradient(s)")  # fmt: skip
    try:
        _, local = _run(factory, xs, np.ones_like(y))
        local = _as_tuple(local)
    except Exception:
        local = (None,) * len(xs)
    results = []
    for i, (x, got) in enumerate(zip(xs, grads)):
        want = _numeric(factory, xs, i, g)
        got = np.asarray(got, dtype=np.float64) if got is not None else np.full(x.shape, np.nan)
        r = InputResult(i, x.shape)
        if got.shape == want.shape:
            diff = np.abs(got - want)
            r.max_abs_error = float(np.max(diff))
            r.max_rel_error = float(
                np.max(diff / np.maximum(np.maximum(np.abs(want), np.abs(got)), 1e-12))
            )
            bad = ~(diff <= ATOL + RTOL * np.abs(want))
            r.passed = not bool(bad.any())
            for idx in itertools.islice(zip(*np.nonzero(bad)), 3):
                r.mismatches.append((tuple(int(k) for k in idx), float(got[idx]), float(want[idx])))
        if not r.passed:
            loc = np.asarray(local[i], dtype=np.float64) if local[i] is not None else None
            r.diagnosis = _diagnose(
                got, want, x, g, y, loc if loc is not None and loc.shape == want.shape else None,
                batch=xs[0].shape[0] if xs[0].ndim > 1 else 0,
            )  # fmt: skip
        results.append(r)
    report = LayerReport(name, all(r.passed for r in results), shape_list, results)
    report.reference = _reference_compare(name, factory, xs, g, use_torch)
    if any(not v.startswith("ok") for v in report.reference.values()):
        report.passed = False
    return report


def load_layer_classes(path: str | Path) -> tuple[list[type], str | None]:
    """Import the user's file; return its layer classes and an import error, if any."""
    path = Path(path)
    if not path.is_file():
        raise LayerCheckError(f"{path}: no such file")
    module_name = f"_npgrad_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LayerCheckError(f"{path}: cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # As 'python FILE.py' would: the file's folder is importable, so helpers beside it load.
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code, reported not crashed on
        return [], "error while importing: " + _user_frame(exc, str(path))
    except SystemExit as exc:
        return [], f"the file called exit({exc.code}) while importing"
    finally:
        sys.modules.pop(module_name, None)
        if folder in sys.path:
            sys.path.remove(folder)
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and obj.__module__ == module_name
        and callable(getattr(obj, "forward", None)) and callable(getattr(obj, "backward", None))
    ]  # fmt: skip
    return classes, None


def check_file(path: str | Path, shapes: dict[str, list[tuple[int, ...]]] | None = None,
               only: Sequence[str] | None = None, use_torch: bool | None = None,
               seed: int = 0) -> tuple[list[LayerReport], str | None]:  # fmt: skip
    classes, error = load_layer_classes(path)
    if error:
        return [], error
    if only:
        missing = set(only) - {c.__name__ for c in classes}
        if missing:
            raise LayerCheckError(f"{path}: no layer class named {', '.join(sorted(missing))}")
        classes = [c for c in classes if c.__name__ in only]
    if not classes:
        raise LayerCheckError(f"{path}: no class with forward and backward methods found")
    shapes = shapes or {}
    return [
        check_layer(c, shapes.get(c.__name__), seed, use_torch, source=str(path)) for c in classes
    ], None
