"""Check a user's file (``npgrad check FILE.py``): its layer classes and its function pairs.

The file runs in a child process with a time limit (:mod:`npgrad.sandbox`):
whatever its code does (loop forever, exit, crash the interpreter), the
checker survives and says which class or pair was in which phase. The units
after one that took the child down are checked in a fresh child while time
is left. Layer classes are checked by :mod:`npgrad.layercheck`, function pairs
(``X_forward``/``X_backward``, losses) by :mod:`npgrad.pairs`.

:func:`check_functions` is the same for the function pairs alone, from Python:
a path is checked in a child, a module or a notebook's ``globals()`` in this
process.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .check import torch_available
from .errors import LayerCheckError
from .layercheck import LayerReport, _user_frame, check_layer, constructor_args
from .pairs import (
    PairReport,
    PairReports,
    arg_names,
    check_pair,
    check_pairs,
    find_pairs,
    kind_for,
    resolve_params,
    user_functions,
)
from .sandbox import DEFAULT_TIMEOUT, ChildRun, run_child

Report = LayerReport | PairReport


def load_user_file(path: str | Path) -> tuple[ModuleType | None, str | None]:
    """Import the user's file here; return the module, or None and why it could not be imported.

    This runs the file's code in the calling process: :func:`check_file` calls
    it in a child process.
    """
    path = Path(path)
    if not path.is_file():
        raise LayerCheckError(f"{path}: no such file")
    module_name = f"_npgrad_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LayerCheckError(f"{path}: cannot be imported as Python (name it *.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # As 'python FILE.py' would: the file's folder is importable, so helpers beside it load.
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code, reported not crashed on
        return None, "error while importing: " + _user_frame(exc, str(path))
    except SystemExit as exc:
        return None, f"the file called sys.exit({exc.code}) while importing"
    finally:
        sys.modules.pop(module_name, None)
        if folder in sys.path:
            sys.path.remove(folder)
    return module, None


def layer_classes(module: ModuleType) -> list[type]:
    """The classes defined in ``module`` that have ``forward`` and ``backward`` methods."""
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and obj.__module__ == module.__name__
        and callable(getattr(obj, "forward", None))
        and callable(getattr(obj, "backward", None))
    ]


def _units(module: ModuleType, job: dict[str, Any]) -> list[dict[str, Any]]:
    """What to check, in order; raises :class:`LayerCheckError` for names not in the file."""
    path = job["path"]
    classes = layer_classes(module) if "classes" in job["what"] else []
    functions = user_functions(vars(module), module.__name__)
    pairs = find_pairs(functions) if "pairs" in job["what"] else []
    forwards = {p.forward for p in pairs}
    names = {c.__name__ for c in classes} | forwards | {p.name for p in pairs}
    unknown = sorted(set(job["shapes"]) - names)
    if unknown:
        raise LayerCheckError(
            f"{path}: no layer class or function pair named {', '.join(unknown)} (given a shape)"
        )
    unknown = sorted(set(job["params"]) - forwards - {c.__name__ for c in classes})
    if unknown:
        raise LayerCheckError(
            f"{path}: no layer class or function pair named {', '.join(unknown)} "
            "(given a parameter)"
        )
    for cls in classes:
        constructor_args(cls, job["params"].get(cls.__name__, {}))
    for pair in pairs:
        raw = job["params"].get(pair.forward)
        if raw:
            kind, _ = kind_for(pair, functions[pair.forward])
            resolve_params(kind, arg_names(kind, functions[pair.forward]), raw, pair.forward)
    only = job["only"]
    if only:
        missing = set(only) - names
        if missing:
            raise LayerCheckError(
                f"{path}: no layer class or function pair named {', '.join(sorted(missing))}"
            )
        classes = [c for c in classes if c.__name__ in only]
        pairs = [p for p in pairs if p.name in only or p.forward in only]
    if not classes and not pairs:
        raise LayerCheckError(
            f"{path}: no class with forward and backward methods, and no function pairs "
            "(X_forward with X_backward) or losses (X_loss) found"
        )
    units: list[dict[str, Any]] = [{"type": "class", "name": c.__name__} for c in classes]
    units += [
        {"type": "pair", "name": p.name, "forward": p.forward, "backward": p.backward}
        for p in pairs
    ]
    return units


def _check_file_here(job: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    """The child's side of :func:`check_file`: import, check each unit, emit each report."""
    path = job["path"]
    emit({"event": "phase", "unit": None, "phase": "importing the file"})
    try:
        module, error = load_user_file(path)
        if module is None:
            emit({"event": "import_error", "message": error})
            return
        units = _units(module, job)
    except LayerCheckError as exc:
        emit({"event": "refused", "message": str(exc)})
        return
    emit({"event": "units", "units": units})
    classes = {c.__name__: c for c in layer_classes(module)}
    functions = user_functions(vars(module), module.__name__)
    pairs = {p.name: p for p in find_pairs(functions)}
    for unit in units:
        name = unit["name"]

        def progress(phase: str, name: str = name) -> None:
            emit({"event": "phase", "unit": name, "phase": phase})

        report: Report
        if unit["type"] == "class":
            shapes = job["shapes"].get(name)
            report = check_layer(
                classes[name],
                shapes,
                job["seed"],
                job["use_torch"],
                source=path,
                progress=progress,
                params=job["params"].get(name),
            )
        else:
            pair = pairs[name]
            report = check_pair(
                functions[pair.forward],
                functions[pair.backward] if pair.backward else None,
                pair,
                job["shapes"].get(pair.forward),
                job["params"].get(pair.forward),
                job["seed"],
                functions[pair.plain] if pair.plain else None,
                path,
                progress,
            )
        emit({"event": "report", "type": unit["type"], "report": report.to_dict()})


def check_file(
    path: str | Path,
    shapes: dict[str, list[tuple[int, ...]]] | None = None,
    only: Sequence[str] | None = None,
    use_torch: bool | None = None,
    seed: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    params: dict[str, dict[str, Any]] | None = None,
    what: Sequence[str] = ("classes", "pairs"),
) -> tuple[list[Report], str | None]:
    """Check every layer class and function pair in a file (or those named in ``only``).

    Returns one report per class (:class:`LayerReport`) and per pair
    (:class:`PairReport`), in that order, or no reports and the reason when the
    file cannot be imported. ``shapes`` and ``params`` are keyed by class or
    forward-function name: a pair's parameters (``{"conv_forward_naive": {"stride": 1}}``,
    see :func:`npgrad.pairs.resolve_params`), a class's constructor arguments
    (``{"Conv": {"stride": 1}}``, see :func:`npgrad.layercheck.constructor_args`). ``timeout`` bounds the whole check in
    seconds: a unit whose code hangs, exits or crashes the interpreter fails with
    what it was doing; those after it are checked in a fresh process while time
    is left. Raises :class:`LayerCheckError` for a missing file or names not in it.
    """
    path = Path(path)
    if path.is_dir():
        raise LayerCheckError(f"{path} is a folder: give a Python file")
    if not path.is_file():
        raise LayerCheckError(f"{path}: no such file")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise LayerCheckError(f"the time limit must be a positive number of seconds, not {timeout}")
    if use_torch is None:
        use_torch = torch_available()
    job = {
        "path": str(path),
        "shapes": {k: [list(s) for s in v] for k, v in (shapes or {}).items()},
        "params": dict(params or {}),
        "only": list(only or []),
        "use_torch": use_torch,
        "seed": seed,
        "what": list(what),
    }
    deadline = time.monotonic() + timeout
    units: list[dict[str, Any]] | None = None
    reports: dict[str, Report] = {}
    while True:
        run = run_child("npgrad.filecheck:_check_file_here", job, deadline - time.monotonic())
        for event in run.events:
            kind = event.get("event")
            if kind == "refused":
                raise LayerCheckError(event["message"])
            if kind == "import_error":
                return [], event["message"]
            if kind == "units" and units is None:
                units = list(event["units"])
            if kind == "report":
                cls = LayerReport if event["type"] == "class" else PairReport
                report = cls.from_dict(event["report"])
                reports[report.name] = report
        if run.finished:
            break
        where = run.last("phase") or {}
        if units is None or where.get("unit") is None:
            return [], f"{run.how_it_ended(timeout)} while importing the file" + _hint(run)
        stopped = where["unit"]
        reports[stopped] = _failed(
            _unit(units, stopped),
            f"{run.how_it_ended(timeout)} during {where['phase']}" + _hint(run),
        )
        rest = [u["name"] for u in units if u["name"] not in reports]
        if not rest:
            break
        if time.monotonic() >= deadline - 0.5:  # a fresh interpreter needs a moment to start
            for n in rest:
                reports[n] = _failed(_unit(units, n), f"not checked: no time left after {stopped}")
            break
        job["only"] = rest
    assert units is not None
    return [reports[u["name"]] for u in units], None


def _unit(units: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(u for u in units if u["name"] == name)


def _failed(unit: dict[str, Any], error: str) -> Report:
    if unit["type"] == "class":
        return LayerReport(unit["name"], False, error=error)
    return PairReport(unit["forward"], unit["backward"], False, error=error)


def _hint(run: ChildRun) -> str:
    return " (an endless loop? --timeout SECONDS allows more)" if run.timed_out else ""


def check_functions(
    source: str | Path | ModuleType | dict[str, Any],
    shapes: dict[str, list[tuple[int, ...]]] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    only: Sequence[str] | None = None,
    seed: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
) -> PairReports:
    """Check the function pairs (``X_forward``/``X_backward``) and losses of a file or module.

    ``source`` is a path (checked in a child process with a time limit, as
    ``npgrad check``), an imported module or a namespace such as a notebook's
    ``globals()`` (checked in this process). ``shapes`` and ``params`` are keyed
    by the forward function's name. The result prints one line per pair, then
    the details, and renders as a table in notebooks.
    """
    if isinstance(source, (str, Path)):
        reports, error = check_file(
            source, shapes, only, False, seed, timeout, params, what=("pairs",)
        )
        if error:
            raise LayerCheckError(f"{source}: {error}")
        return PairReports(r for r in reports if isinstance(r, PairReport))
    if isinstance(source, ModuleType):
        functions = user_functions(vars(source), source.__name__)
        where = getattr(source, "__file__", None)
    elif isinstance(source, dict):
        functions, where = user_functions(source), None
    else:
        raise LayerCheckError(
            f"check_functions takes a path, a module or a dict of functions, not {type(source).__name__}"
        )
    if not find_pairs(functions):
        raise LayerCheckError(
            "no function pairs (X_forward with X_backward) or losses (X_loss) found"
        )
    return check_pairs(functions, shapes, params, only, seed, where)
