"""The README's Python example runs as written; its commands name real options."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in README and "python -m pytest" in ci
    assert "pip install torch==2.13.0" in README and "torch==2.13.0" in ci


def test_the_examples_use_the_run_the_quick_start_makes():
    # an offline newcomer has runs/digits-default and nothing else
    assert "npgrad train --dataset digits" in README
    used = re.findall(r"^npgrad (?:evaluate|predict|export|serve) (\S+)", README, flags=re.M)
    assert used and set(used) == {"runs/digits-default"}


def test_the_notebook_runner_named_is_installed_by_an_extra():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert 'pip install -e ".[notebooks]"' in README and "jupyter nbconvert" in README
    names = {re.split(r"[<>=\[ ]", req)[0] for req in extras["notebooks"]}
    assert {"notebook", "nbconvert", "ipykernel"} <= names


def test_the_opening_is_what_npgrad_does_then_the_two_commands():
    opening, _, rest = README.partition("## Quick start")
    assert rest, "a Quick start section"
    for per_host in ("AVX", "OpenBLAS", "kernel", "0.55", "x PyTorch"):
        assert per_host not in opening, per_host  # the speed story lives in benchmarks/
    quick_start = rest.split("\n## ")[0]
    assert "npgrad train --dataset digits" in quick_start and "python -m pytest" in quick_start
