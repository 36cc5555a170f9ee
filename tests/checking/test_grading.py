"""npgrad grade: a class's submissions, one broken in every way a student's can be."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from npgrad.checking.grading import Rubric, find_submissions, notebook_source
from npgrad.cli import main
from npgrad.errors import GradingError

GOOD = """import numpy as np


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, b = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    return dx, dw, dout.sum(axis=0)


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    return dout * (cache > 0)
"""


def notebook(cells):
    return json.dumps({
        "cells": [{"cell_type": kind, "source": text, "metadata": {}, "outputs": []}
                  for kind, text in cells],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
    })  # fmt: skip


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    (subs / "alice.py").write_text(GOOD)
    (subs / "bob.py").write_text(GOOD.replace("return dout * (cache > 0)", "return dout"))
    (subs / "carol.ipynb").write_text(
        notebook(
            [("markdown", "# mine"), ("code", "%matplotlib inline\n!pip install x"), ("code", GOOD)]
        )  # fmt: skip
    )
    (subs / "dave").mkdir()
    (subs / "dave" / "a.py").write_text(GOOD.split("def relu_forward")[0])
    (subs / "dave" / "b.py").write_text(
        "import numpy as np\n\ndef relu_forward" + GOOD.split("def relu_forward")[1]
    )
    (subs / "eve.py").write_text("def affine_forward(x, w, b) return x\n")
    (subs / "frank.py").write_text("while True:\n    pass\n" + GOOD)
    (subs / "gina.py").write_text("print('spam' * 2_000_000)\n" + GOOD)
    (subs / "hank.py").write_text("import numpy\nbig = numpy.ones(10**10)\n" + GOOD)
    pid_file = tmp_path_factory.mktemp("pids") / "ivan.pid"
    (subs / "ivan.py").write_text(
        "import os, time\nif os.fork() == 0:\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n    time.sleep(600)\n" + GOOD
    )
    (subs / ".hidden").write_text("not a student")
    rubric = tmp_path_factory.mktemp("r") / "rubric.toml"
    rubric.write_text(
        "[points]\naffine_forward = 2\nrelu_forward = 1\n\n"
        '[hidden.relu_forward]\nshapes = ["3x7"]\n\n'
        "[limits]\nseconds = 6\nmemory_mb = 1024\n"
    )
    out = tmp_path_factory.mktemp("out")
    r = subprocess.run(
        [sys.executable, "-m", "npgrad", "grade", str(subs), "--rubric", str(rubric), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return r, out, pid_file


def test_every_submission_gets_its_own_grade(graded):
    r, out, _ = graded
    assert r.returncode == 0, r.stderr
    rows = {row["student"]: row for row in csv.DictReader((out / "grades.csv").open())}
    totals = {name: float(row["total"]) for name, row in rows.items()}
    assert totals == {"alice": 3, "bob": 2, "carol": 3, "dave": 3, "eve": 0, "frank": 0,
                      "gina": 3, "hank": 0, "ivan": 3}  # fmt: skip
    assert rows["bob"]["relu_forward"] == "0" and rows["bob"]["affine_forward"] == "2"


def test_broken_submissions_say_why_in_one_line_each(graded):
    r, out, _ = graded
    summary = (out / "summary.md").read_text()
    assert "eve: error while importing: eve.py:1: SyntaxError" in summary
    assert "frank: timed out after 6 s" in summary and "the rubric's [limits] seconds" in summary
    assert "hank: error while importing" in summary and "MemoryError" in summary
    assert "spam" not in r.stdout + r.stderr  # a student's prints never reach the grader
    assert "relu_forward: dx: gradient ignores the mask" in summary  # the class's mistakes


def test_feedback_per_student_in_markdown_and_html(graded):
    _, out, _ = graded
    bob = (out / "feedback" / "bob.md").read_text()
    assert bob.startswith("# bob: 2 of 3 points") and "ignores the mask" in bob
    assert "(3, 7)" in bob  # the hidden geometry was checked
    assert "<table" in (out / "feedback" / "bob.html").read_text()
    assert (out / "summary.png").stat().st_size > 5000


def test_a_forking_submission_leaves_no_process_behind(graded):
    pid = int(graded[2].read_text())  # the child that ivan's file forked
    assert not Path(f"/proc/{pid}").exists()


def test_without_a_rubric_every_item_found_is_one_point(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    seen = tmp_path / "threads"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "ann.py").write_text(
        f"import os\nopen({str(seen)!r}, 'w').write(os.environ['OPENBLAS_NUM_THREADS'])\n" + GOOD
    )
    (tmp_path / "s" / "ben.py").write_text(GOOD.split("def relu_forward")[0])
    assert main(["grade", str(tmp_path / "s"), "-o", str(tmp_path / "o"), "-q"]) == 0
    text = (tmp_path / "o" / "grades.csv").read_text().splitlines()
    assert text == ["student,affine_forward,relu_forward,total", "ann,1,1,2", "ben,1,0,1"]
    # the children graded side by side had one BLAS thread each; the caller keeps its own
    assert seen.read_text() == "1" and "OPENBLAS_NUM_THREADS" not in os.environ


@pytest.mark.parametrize(
    "toml, words",
    [
        ("[points]\nRelu = 'two'\n", "[points] gives each item a number"),
        ("[score]\nRelu = 1\n", "unknown section(s) score"),
        ("[limits]\nseconds = 0\n", "seconds must be in (0, 3600]"),
        ("[rules]\nwarnings = 'maybe'\n", '[rules] warnings is "pass" or "fail"'),
        ("[hidden.conv]\nstride = 2\n", "[hidden.conv] takes params"),
        ("[points\n", "is not valid TOML"),
    ],
)
def test_a_bad_rubric_is_one_line(tmp_path, capsys, toml, words):
    path = tmp_path / "r.toml"
    path.write_text(toml)
    with pytest.raises(GradingError, match=None) as exc:
        Rubric.load(path)
    assert words in str(exc.value)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.py").write_text(GOOD)
    assert (
        main(["grade", str(tmp_path / "s"), "--rubric", str(path), "-o", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_no_submissions_folder_is_one_line(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "missing")]) == 2
    assert "is not a folder of submissions" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(GradingError, match="holds no .py file"):
        find_submissions(tmp_path / "empty")


def test_a_notebook_is_its_code_cells_with_magics_commented_out(tmp_path):
    path = tmp_path / "n.ipynb"
    path.write_text(notebook([("code", ["%time x = 1\n", "y = 2\n"]), ("markdown", "z = 3")]))
    assert notebook_source(path) == "# %time x = 1\ny = 2\n"
    path.write_text("{not json")
    with pytest.raises(GradingError, match="not a readable notebook"):
        notebook_source(path)


def test_student_names_cannot_inject_into_the_spreadsheet(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "=cmd.py").write_text(GOOD)
    assert main(["grade", str(tmp_path / "s"), "-o", str(tmp_path / "o"), "-q"]) == 0
    assert '"=cmd",1,1,2' in (tmp_path / "o" / "grades.csv").read_text()
    assert os.path.exists(tmp_path / "o" / "feedback" / "_cmd.md")
