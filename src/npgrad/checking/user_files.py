"""Check a user's file (``npgrad check FILE.py``): its layer classes and its function pairs.

The file runs in a child process with a time limit (:mod:`npgrad.checking.sandbox`):
whatever its code does (loop forever, exit, crash the interpreter, start
processes), the checker survives and says which class or pair was in which
phase. The units after one that took the child down are checked in a fresh
child while time is left. Layer classes are checked by :mod:`npgrad.checking.layer_classes`,
function pairs (``X_forward``/``X_backward``, losses) by :mod:`npgrad.checking.function_pairs`.

The child only *asks*: it runs each check with a recording
:class:`~npgrad.checking.layer_classes.Tape`, which keeps what the user's code answered
(outputs, gradients, the forward's values at the points of the numerical
gradient). The verdicts are made here: each check runs again in this process
with those answers in place of the calls, so every comparison is this
process's npgrad's, which the file cannot patch. A file that changes npgrad in
the child changes what the child asks, and a replay asked anything else stops:
the unit fails as "not checked". The file is also read here, without running
it: a syntax error is one line, parameters that cannot apply are refused
before it runs, and a class or pair it plainly defines but the child did not
report fails instead of vanishing. What cannot be told apart from honest work
is a child that forges the user's answers themselves, consistently: a checker
that runs the code has to take its outputs; the forward of a pair the course
defines is held to the definition, and so is its numerical gradient (along a
direction the child cannot foresee), as the gradients of classes named after
npgrad's layers are to npgrad's.

:func:`check_functions` is the same for the function pairs alone, from Python:
a path is checked in a child, a module or a notebook's ``globals()`` in this
process.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import LayerCheckError, ReplayDiverged
from .function_pairs import (
    Pair,
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
from .gradcheck import torch_available
from .layer_classes import (
    LayerReport,
    Tape,
    _user_frame,
    check_layer,
    constructor_args,
)
from .sandbox import DEFAULT_TIMEOUT, ChildRun, decode, encode, run_child

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
    except SyntaxError as exc:  # the file's own, or a helper's it imports
        return None, "error while importing: " + _syntax_error(exc)
    except Exception as exc:  # the user's code, reported not crashed on
        return None, "error while importing: " + _user_frame(exc, str(path))
    except SystemExit as exc:
        return None, f"the file called sys.exit({exc.code}) while importing"
    except BaseException as exc:  # KeyboardInterrupt, GeneratorExit... raised by the file
        if isinstance(exc, KeyboardInterrupt) and not _in_child:
            raise
        return None, "error while importing: " + _user_frame(exc, str(path))
    finally:
        sys.modules.pop(module_name, None)
        if folder in sys.path:
            sys.path.remove(folder)
    return module, None


_in_child = False  # set in the child of check_file: no Ctrl-C reaches it, only the file's own


def _syntax_error(exc: SyntaxError) -> str:
    """'FILE:LINE: SyntaxError: what' (not the importer's frame, which says nothing)."""
    where = f"{exc.filename}:{exc.lineno}: " if exc.filename and exc.lineno else ""
    return f"{where}{type(exc).__name__}: {exc.msg}"


def layer_classes(module: ModuleType) -> list[type[Any]]:
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
    """What to check, in order, with what the checking process needs to know of each (names,
    signatures); raises :class:`LayerCheckError` for names not in the file."""
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
            resolve_params(
                kind,
                arg_names(kind, functions[pair.forward]),
                raw,
                pair.forward,
                job["shapes"].get(pair.forward),
            )
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
    units: list[dict[str, Any]] = [
        {
            "type": "class",
            "name": c.__name__,
            "init": "object" if c.__init__ is object.__init__ else _signature_data(c.__init__),
            "forward": _signature_data(getattr(c, "forward", None)),
        }
        for c in classes
    ]
    units += [
        {
            "type": "pair",
            "name": p.name,
            "forward": p.forward,
            "backward": p.backward,
            "base": p.base,
            "plain": p.plain,
            "signature": _signature_data(functions[p.forward]),
        }
        for p in pairs
    ]
    return units


# --------------------------------------------------------------------------- in the child


def _check_file_here(job: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    """The child's side of :func:`check_file`: import, list the units, then run each unit's
    check with a recording :class:`Tape` (the answers of the user's code go to ``emit``);
    the reports made here are thrown away: :func:`check_file` judges."""
    global _in_child
    _in_child = True
    path = job["path"]
    emit({"event": "phase", "unit": None, "phase": "importing the file"})
    try:
        module, error = load_user_file(path)
        if module is None:
            emit({"event": "import_error", "message": error})
            return
        units = _units(module, job)
        classes = {c.__name__: c for c in layer_classes(module)}
        functions = user_functions(vars(module), module.__name__)
        pairs = {p.name: p for p in find_pairs(functions)}
    except LayerCheckError as exc:
        emit({"event": "refused", "message": str(exc)})
        return
    except BaseException as exc:  # the file's objects misbehaving while looked at
        emit(
            {"event": "import_error", "message": "error while importing: " + _user_frame(exc, path)}
        )
        return
    emit({"event": "units", "units": units})
    for unit in units:
        name = unit["name"]
        last = ["starting"]

        def progress(phase: str, name: str = name, last: list[str] = last) -> None:
            last[0] = phase
            emit({"event": "phase", "unit": name, "phase": phase})

        def record(entry: dict[str, Any], name: str = name) -> None:
            emit({"event": "answer", "unit": name, **entry})

        tape = Tape(record=record)
        try:
            if unit["type"] == "class":
                check_layer(
                    classes[name],
                    job["shapes"].get(name),
                    job["seed"],
                    False,  # PyTorch is only ever compared with where the verdicts are made
                    source=path,
                    progress=progress,
                    params=job["params"].get(name),
                    tape=tape,
                )
            else:
                pair = pairs[name]
                check_pair(
                    functions[pair.forward],
                    functions[pair.backward] if pair.backward else None,
                    pair,
                    job["shapes"].get(pair.forward),
                    job["params"].get(pair.forward),
                    job["seed"],
                    functions[pair.plain] if pair.plain else None,
                    path,
                    progress,
                    tape=tape,
                )
        except BaseException as exc:  # the check itself failed on what the code gave it
            try:
                text = str(exc).strip().splitlines()
            except Exception:  # the user's exception, which cannot say what it is
                text = []
            message = type(exc).__name__ + (f": {text[0]}" if text else "")
            emit({"event": "unit_error", "unit": name, "message": f"{message} during {last[0]}"})
            continue
        emit({"event": "checked", "unit": name})


# --------------------------------------------------------------------------- in this process


def check_file(
    path: str | Path,
    shapes: dict[str, list[tuple[int, ...]]] | None = None,
    only: Sequence[str] | None = None,
    use_torch: bool | None = None,
    seed: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    params: dict[str, dict[str, Any]] | None = None,
    what: Sequence[str] = ("classes", "pairs"),
    memory_mb: int | None = None,
    quiet: bool = False,
) -> tuple[list[Report], str | None]:
    """Check every layer class and function pair in a file (or those named in ``only``).

    ``memory_mb`` limits the child's memory, ``quiet`` discards what the file prints
    (both for grading a class: :mod:`npgrad.checking.grading`).

    Returns one report per class (:class:`LayerReport`) and per pair
    (:class:`PairReport`), in that order, or no reports and the reason when the
    file cannot be imported. ``shapes`` and ``params`` are keyed by class or
    forward-function name: a pair's parameters (``{"conv_forward_naive": {"stride": 1}}``,
    see :func:`npgrad.checking.function_pairs.resolve_params`), a class's constructor arguments
    (``{"Conv": {"stride": 1}}``, see :func:`npgrad.checking.layer_classes.constructor_args`). ``timeout`` bounds the whole check in
    seconds: a unit whose code hangs, exits or crashes the interpreter fails with
    what it was doing; those after it are checked in a fresh process while time
    is left. The file's code runs only in child processes; the verdicts are made
    here (see the module's docstring). Raises :class:`LayerCheckError` for a missing
    file, names not in it, or parameters that cannot apply.
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
    if memory_mb:
        job["memory_mb"] = int(memory_mb)
    tree, error = _parse(path)
    if error:
        return [], error
    if tree is not None:
        _refuse_statically(tree, job)
    # What the child gets, tuples become lists: the replay must ask exactly what it asked.
    judged = json.loads(json.dumps(job))
    deadline = time.monotonic() + timeout
    units: list[dict[str, Any]] | None = None
    reports: dict[str, Report] = {}
    while True:
        run = run_child(
            "npgrad.checking.user_files:_check_file_here",
            job,
            deadline - time.monotonic(),
            quiet=quiet,
        )
        answers: dict[str, list[dict[str, Any]]] = {}
        for event in run.events:
            kind = event.get("event")
            if kind == "refused":
                raise LayerCheckError(str(event.get("message")))
            if kind == "import_error":
                return [], str(event.get("message"))
            if kind == "units" and units is None:
                units = _valid_units(event.get("units"))
            if units is None or kind not in ("answer", "unit_error", "checked"):
                continue
            name = event.get("unit")
            unit = next((u for u in units if u["name"] == name), None)
            if unit is None or name is None or name in reports:  # (a unit found has a name)
                continue
            if kind == "answer":
                answers.setdefault(name, []).append(event)
            elif kind == "unit_error":
                reports[name] = _failed(unit, f"could not be checked: {event.get('message')}")
            else:
                reports[name] = _judge(unit, answers.pop(name, []), judged, use_torch)
        if run.finished:
            break
        where = run.last("phase") or {}
        if units is None or where.get("unit") is None:
            return [], f"{run.how_it_ended(timeout)} while importing the file" + _hint(run)
        stopped = where["unit"]
        if stopped not in reports and any(u["name"] == stopped for u in units):
            reports[stopped] = _failed(
                _unit(units, stopped),
                f"{run.how_it_ended(timeout)} during {where.get('phase')}" + _hint(run),
            )
        rest = [u["name"] for u in units if u["name"] not in reports]
        if not rest:
            break
        if time.monotonic() >= deadline - 0.5:  # a fresh interpreter needs a moment to start
            for n in rest:
                reports[n] = _failed(_unit(units, n), f"not checked: no time left after {stopped}")
            break
        job["only"] = rest
    if units is None:  # finished without a word on what it found: not the child's own doing
        return [], "not checked: the file's process reported nothing (does it change npgrad?)"
    silent = "not checked: the file's process did not report on it (does the file change npgrad?)"
    out = [reports.get(u["name"]) or _failed(u, silent) for u in units]
    listed = {u["name"] for u in units}
    for unit in _expected_units(tree, job) if tree is not None else []:
        if unit["name"] not in listed:
            out.append(
                _failed(
                    unit,
                    "not checked: the file defines it, but it was not found when the file ran "
                    "(replaced or deleted while importing, or npgrad changed by the file?)",
                )
            )
    if not out:  # what the child refuses, unless it was made to say otherwise
        raise LayerCheckError(
            f"{path}: no class with forward and backward methods, and no function pairs "
            "(X_forward with X_backward) or losses (X_loss) found"
        )
    return out, None


def _valid_units(data: Any) -> list[dict[str, Any]]:
    """The child's list of units, as far as it is well formed (no duplicates)."""
    units: list[dict[str, Any]] = []
    for u in data if isinstance(data, list) else []:
        if not (isinstance(u, dict) and isinstance(u.get("name"), str)):
            continue
        if u.get("type") == "pair" and not (
            isinstance(u.get("forward"), str) and isinstance(u.get("backward"), (str, type(None)))
        ):
            continue
        if u.get("type") in ("class", "pair") and all(v["name"] != u["name"] for v in units):
            units.append(u)
    return units


def _judge(
    unit: dict[str, Any], answers: list[dict[str, Any]], job: dict[str, Any], use_torch: bool
) -> Report:
    """The unit's check, run here on the answers its code gave in the child: the verdict."""
    name = unit["name"]
    tape = Tape(answers=answers)
    try:
        if unit["type"] == "class":
            init = unit.get("init")
            layer = _stand_in_class(
                name,
                None if init == "object" else _StandIn("__init__", _signature_from(init)),
                _StandIn("forward", _signature_from(unit.get("forward"))),
            )
        else:
            pair = Pair(unit["forward"], unit["backward"], str(unit.get("base") or ""))
            plain = unit.get("plain")
            pair.plain = plain if isinstance(plain, str) else None
            forward = _StandIn(pair.forward, _signature_from(unit.get("signature")))
    except (ValueError, TypeError, KeyError) as exc:
        return _failed(unit, f"not checked: the file's process described it wrongly ({exc})")
    try:
        report: Report
        if unit["type"] == "class":
            report = check_layer(
                layer,
                job["shapes"].get(name),
                job["seed"],
                use_torch,
                source=job["path"],
                params=job["params"].get(name),
                tape=tape,
            )
        else:
            report = check_pair(
                forward,
                None if pair.backward is None else _StandIn(pair.backward, None),
                pair,
                job["shapes"].get(pair.forward),
                job["params"].get(pair.forward),
                job["seed"],
                None if pair.plain is None else _StandIn(pair.plain, None),
                job["path"],
                tape=tape,
            )
        tape.finish()
    except ReplayDiverged as exc:
        return _failed(
            unit,
            f"not checked: what the file's process reported does not follow npgrad's check "
            f"({exc}): does the file change npgrad or NumPy?",
        )
    return report


def _unit(units: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(u for u in units if u["name"] == name)


def _failed(unit: dict[str, Any], error: str) -> Report:
    if unit["type"] == "class":
        return LayerReport(unit["name"], False, error=error)
    return PairReport(unit["forward"], unit["backward"], False, error=error)


def _hint(run: ChildRun) -> str:
    return " (an endless loop? --timeout SECONDS allows more)" if run.timed_out else ""


# --------------------------------------------------------------------------- stand-ins


class _StandIn:
    """A function or method of the user's in this process: its name and signature, never its
    code (what checks read of it: :func:`inspect.signature`, ``__name__``)."""

    def __init__(self, name: str, signature: inspect.Signature | None) -> None:
        self.__name__ = self.__qualname__ = name
        self._signature = signature

    @property
    def __signature__(self) -> inspect.Signature:
        if self._signature is None:  # as inspect.signature says of a builtin without one
            raise ValueError(f"no signature found for {self.__name__}")
        return self._signature

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ReplayDiverged(f"{self.__name__} was to be called where its code does not run")


def _stand_in_class(name: str, init: _StandIn | None, forward: _StandIn) -> type:
    """A class like the user's to the checks (name, constructor and forward signatures);
    ``init`` None: the class keeps ``object.__init__``."""
    namespace: dict[str, Any] = {
        "forward": forward,
        "backward": _StandIn("backward", None),
        "__module__": __name__,
    }
    if init is not None:
        namespace["__init__"] = init
    return type(name, (), namespace)


def _signature_data(fn: Any) -> list[list[Any]] | None:
    """``fn``'s parameters as JSON: [name, kind, has a default, the default (encoded)]."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except Exception:  # a builtin without one, or the user's object refusing to tell
        return None
    return [
        [
            p.name,
            int(p.kind),
            p.default is not p.empty,
            None if p.default is p.empty else encode(p.default),
        ]
        for p in parameters
    ]


def _signature_from(data: Any) -> inspect.Signature | None:
    """The signature :func:`_signature_data` described."""
    if data is None:
        return None
    kinds = {int(k): k for k in _PARAMETER_KINDS}
    parameters = [
        inspect.Parameter(
            str(name), kinds[int(kind)], default=decode(default) if has else inspect.Parameter.empty
        )
        for name, kind, has, default in data
    ]
    return inspect.Signature(parameters)


_PARAMETER_KINDS = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
    inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD,
)


# --------------------------------------------------------------------------- the file, read


def _parse(path: Path) -> tuple[ast.Module | None, str | None]:
    """The file's syntax tree, or why it is not Python in one line naming the line (none of
    the two when Python cannot parse it here: nested too deeply; the child will say)."""
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise LayerCheckError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with warnings.catch_warnings():  # its SyntaxWarnings are the file's business, not output
        warnings.simplefilter("ignore")
        try:
            return ast.parse(source, filename=str(path)), None
        except SyntaxError as exc:
            return None, "error while importing: " + _syntax_error(exc)
        except ValueError as exc:  # null bytes, in some Pythons
            return None, f"error while importing: {path}: {exc}"
        except (RecursionError, MemoryError):
            return None, None


def _declared(tree: ast.Module) -> tuple[dict[str, ast.FunctionDef], dict[str, ast.ClassDef]]:
    """The functions and layer classes the file plainly defines: an undecorated ``def`` or
    ``class`` at its top level and nothing else in the file binding the name; a class with
    undecorated ``forward`` and ``backward`` methods in its body."""
    bound: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound[node.name] += 1
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound[node.id] += 1
        elif isinstance(node, ast.alias):
            bound[(node.asname or node.name).partition(".")[0]] += 1
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update({n: 2 for n in node.names})
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            bound[node.name] += 1
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound[node.rest] += 1

    def plain(node: ast.FunctionDef | ast.ClassDef) -> bool:
        return not node.decorator_list and bound[node.name] == 1

    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and plain(n)}
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and plain(node) and not node.keywords:
            methods = {
                m.name for m in node.body if isinstance(m, ast.FunctionDef) and not m.decorator_list
            }
            if {"forward", "backward"} <= methods:
                classes[node.name] = node
    return functions, classes


def _expected_units(tree: ast.Module, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The units the file plainly defines (:func:`_declared`) that ``job`` asks to check."""
    functions, classes = _declared(tree)
    units: list[dict[str, Any]] = []
    if "classes" in job["what"]:
        units += [{"type": "class", "name": n} for n in classes]
    if "pairs" in job["what"]:
        units += [
            {"type": "pair", "name": p.name, "forward": p.forward, "backward": p.backward}
            for p in find_pairs(dict.fromkeys(functions))
        ]
    only = job["only"]
    return [u for u in units if not only or u["name"] in only or u.get("forward") in only]


def _refuse_statically(tree: ast.Module, job: dict[str, Any]) -> None:
    """Refuse, before the file runs, parameters that cannot apply to what it plainly defines.

    The child refuses the rest the same way once the file is imported."""
    functions, classes = _declared(tree)
    if "pairs" in job["what"]:
        for pair in find_pairs(dict.fromkeys(functions)):
            raw = job["params"].get(pair.forward)
            if raw:
                forward = _StandIn(pair.forward, _ast_signature(functions[pair.forward]))
                kind, _ = kind_for(pair, forward)
                shapes = job["shapes"].get(pair.forward)
                resolve_params(kind, arg_names(kind, forward), raw, pair.forward, shapes)
    if "classes" in job["what"]:
        for name, node in classes.items():
            raw = job["params"].get(name)
            inits = [m for m in node.body if _binds(m, "__init__")]
            if not raw or node.bases or len(inits) > 1:
                continue  # a base class's constructor: only the child can tell
            init = None
            if inits:
                first = inits[0]
                if not isinstance(first, ast.FunctionDef) or first.decorator_list:
                    continue
                init = _StandIn("__init__", _ast_signature(first))
            constructor_args(_stand_in_class(name, init, _StandIn("forward", None)), raw, name)


def _binds(node: ast.stmt, name: str) -> bool:
    """Whether a statement of a class body binds ``name``."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    return any(
        isinstance(n, ast.Name) and n.id == name and not isinstance(n.ctx, ast.Load)
        for n in ast.walk(node)
    )


_DEFAULT = object()  # stands for a default value the file's text gives


def _ast_signature(node: ast.FunctionDef) -> inspect.Signature:
    """The signature a ``def`` statement gives its function (defaults only as present)."""
    a, p = node.args, inspect.Parameter
    positional = [(x, p.POSITIONAL_ONLY) for x in a.posonlyargs] + [
        (x, p.POSITIONAL_OR_KEYWORD) for x in a.args
    ]
    first_default = len(positional) - len(a.defaults)
    params = [
        p(x.arg, kind, default=_DEFAULT if i >= first_default else p.empty)
        for i, (x, kind) in enumerate(positional)
    ]
    if a.vararg:
        params.append(p(a.vararg.arg, p.VAR_POSITIONAL))
    for x, d in zip(a.kwonlyargs, a.kw_defaults):
        params.append(p(x.arg, p.KEYWORD_ONLY, default=p.empty if d is None else _DEFAULT))
    if a.kwarg:
        params.append(p(a.kwarg.arg, p.VAR_KEYWORD))
    return inspect.Signature(params)


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
