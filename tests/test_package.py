"""The package as a whole: no import cycles, a light ``import npgrad``, no shadowed builtins."""

import ast
import subprocess
import sys
from pathlib import Path

import npgrad

SRC = Path(npgrad.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every module's imports of other npgrad modules, at any depth (function bodies too)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                for alias in node.names:  # "from . import ops" imports the module npgrad.ops.dense
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m] if m in path else [n, m]
            if m not in state:
                found = visit(m, [*path, m])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "npgrad.app.trainer" in graph and "npgrad.app.config" in graph["npgrad.app.models"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# Which part of npgrad may import which (docs/architecture.md draws it): each only from
# the parts below it, so the op table stays NumPy only and the library never needs the
# application, the checking tools or the command line.
LAYERS = {
    "errors": set(),
    "rng": set(),
    "fpenv": {"errors"},
    "fileio": {"errors"},
    "tracing": set(),
    "mpienv": set(),
    "ops": {"errors", "fpenv"},  # fpenv: the worker threads take their caller's mode
    "autodiff": {"ops", "errors", "tracing"},
    "layers": {"ops", "errors"},
    "nn": {"autodiff", "ops", "errors", "rng", "tracing"},
    "optim": {"autodiff", "ops", "errors", "tracing"},
    "compiler": {"autodiff", "ops", "tracing", "errors"},
    "graph": {"autodiff", "nn", "errors"},
    "data": {"errors", "fileio", "rng"},
    "checking": {"ops", "autodiff", "layers", "errors", "fileio", "rng"},
    "distributed": {"autodiff", "tracing", "errors", "mpienv"},
    "app": {"npgrad", "ops", "autodiff", "layers", "nn", "optim", "compiler", "distributed", "data", "errors",
            "fileio", "fpenv", "rng"},  # "npgrad": its __version__
    "cli": {"npgrad", "app", "checking", "data", "distributed", "ops", "errors", "fileio"},
    "npgrad": {"ops", "autodiff", "layers", "nn", "optim", "compiler", "data", "errors", "mpienv"},
    "__main__": {"cli"},
}  # fmt: skip


def part(module: str) -> str:
    """``npgrad.app.trainer`` -> ``app``; ``npgrad`` (the package itself) -> ``npgrad``."""
    return module.split(".")[1] if "." in module else module


def test_each_part_imports_only_the_parts_below_it():
    graph = import_graph()
    assert {part(m) for m in graph} == set(LAYERS), "a new part: place it in LAYERS"
    wrong = sorted(
        f"{m} imports {t}"
        for m, targets in graph.items()
        for t in targets
        if part(t) != part(m) and part(t) not in LAYERS[part(m)]
    )
    assert not wrong, wrong


def test_the_op_table_imports_nothing_but_numpy_and_errors():
    for path in (SRC / "ops").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top in {"numpy", "__future__", "collections", "dataclasses", "typing",
                               "math", "functools", "os", "threading",
                               "concurrent", "importlib"}, f"{path.name} imports {name}"  # fmt: skip


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_npgrad_does_not_load_the_checking_tools_or_torch():
    code = "import sys, npgrad; print(sorted(m for m in sys.modules if m.startswith(('npgrad.checking.gradcheck', 'npgrad.checking.layer_classes', 'torch', 'matplotlib', 'tqdm'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(npgrad.gradcheck) and callable(npgrad.check_layer)  # loaded on first use


def test_star_import_does_not_shadow_builtins():
    namespace: dict = {}
    exec("from npgrad import *", namespace)
    assert not {"sum", "max", "min", "pow", "abs"} & set(namespace)
    assert npgrad.sum is not sum and npgrad.max is not max  # still reachable as attributes


def test_submodules_are_reachable_after_a_plain_import():
    import subprocess
    import sys

    code = "import npgrad; print(npgrad.export.load_safetensors.__name__, npgrad.checkpoint.load.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["load_safetensors", "load"], out.stderr
