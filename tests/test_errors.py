"""The exception hierarchy: every class in errors.py, each a typed NpgradError users can act on."""

import ast
import inspect

import npgrad
from npgrad import errors
from tests.test_package import SRC


def test_every_exception_class_is_defined_in_errors_py():
    elsewhere = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if any(b.endswith(("Error", "Exception", "Interrupted")) for b in bases):
                    elsewhere.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not elsewhere, elsewhere


def test_every_error_a_user_can_fix_is_an_npgrad_error_with_a_docstring():
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    assert len(classes) > 10
    for cls in classes:
        assert issubclass(cls, errors.NpgradError), cls
        assert (cls.__doc__ or "").strip(), (
            f"{cls.__name__} needs a docstring saying when it is raised"
        )


def test_typed_errors_keep_their_builtin_meaning():
    # Library callers may catch ValueError for bad values, as with NumPy.
    assert issubclass(errors.ShapeError, ValueError) and issubclass(errors.ConfigError, ValueError)
    assert issubclass(npgrad.NpgradError, Exception) and not issubclass(
        npgrad.NpgradError, ValueError
    )
