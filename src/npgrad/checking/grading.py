"""Grading a class: every submission checked as ``npgrad check`` checks one, points from a rubric.

A submissions folder holds one entry per student: a Python file, a notebook (its code
cells, as students hand in the exercise notebook) or a folder (its Python files, in
name order). Each is checked in the sandbox of :mod:`npgrad.checking.user_files`, with
a time and a memory limit and its prints discarded, several at once up to the cores:
a submission that does not parse, loops forever, allocates without end, prints
megabytes, forks or crashes fails its own items and nobody else's.

The rubric (TOML) says what counts::

    [points]            # item = points; an item is a layer class or a pair's forward
    Relu = 1
    affine_forward = 2
    conv_forward_naive = 3

    [hidden.conv_forward_naive]     # geometries the starter's tests never showed
    params = { stride = 2, pad = 0 }

    [limits]
    seconds = 60        # per submission
    memory_mb = 2048

    [rules]
    warnings = "pass"   # an item that passes with warnings earns its points ("fail": none)

Without a rubric every item found in any submission is worth one point.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import html
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GradingError, NpgradError
from ..fileio import write_text
from .user_files import check_file

DEFAULT_SECONDS = 60.0
DEFAULT_MEMORY_MB = 2048


@dataclass
class Rubric:
    """Points per item, hidden geometries, limits and what a warning counts as."""

    points: dict[str, float] = field(default_factory=dict)  # empty: every item found, 1 point
    hidden: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = DEFAULT_SECONDS
    memory_mb: int = DEFAULT_MEMORY_MB
    warnings_pass: bool = True

    @classmethod
    def load(cls, path: str | os.PathLike) -> Rubric:
        import importlib

        toml: Any = None
        for name in ("tomllib", "tomli"):  # the standard library's from 3.11; tomli before
            try:
                toml = importlib.import_module(name)
                break
            except ImportError:
                continue
        if toml is None:
            raise GradingError("reading a rubric needs Python 3.11, or pip install tomli")
        path = Path(path)
        try:
            data = toml.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise GradingError(f"cannot read the rubric {path}: {exc.strerror or exc}") from None
        except (toml.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise GradingError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "the rubric") -> Rubric:
        unknown = set(data) - {"points", "hidden", "limits", "rules"}
        if unknown:
            raise GradingError(
                f"{where}: unknown section(s) {', '.join(sorted(unknown))}; "
                "use [points], [hidden.NAME], [limits], [rules]"
            )
        points = data.get("points", {})
        if not isinstance(points, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for v in points.values()
        ):
            raise GradingError(f"{where}: [points] gives each item a number of points >= 0")
        hidden = data.get("hidden", {})
        for name, h in hidden.items() if isinstance(hidden, dict) else [("", None)]:
            if not isinstance(h, dict) or set(h) - {"params", "shapes"}:
                raise GradingError(
                    f"{where}: [hidden.{name}] takes params = {{...}} and shapes = [...] only"
                )
        limits = data.get("limits", {})
        seconds = limits.get("seconds", DEFAULT_SECONDS)
        memory = limits.get("memory_mb", DEFAULT_MEMORY_MB)
        if not (isinstance(seconds, (int, float)) and 0 < seconds <= 3600):
            raise GradingError(f"{where}: [limits] seconds must be in (0, 3600], got {seconds!r}")
        if not (isinstance(memory, int) and 256 <= memory <= 1 << 20):
            raise GradingError(f"{where}: [limits] memory_mb must be at least 256, got {memory!r}")
        warnings = data.get("rules", {}).get("warnings", "pass")
        if warnings not in ("pass", "fail"):
            raise GradingError(f'{where}: [rules] warnings is "pass" or "fail", got {warnings!r}')
        return cls(
            {str(k): float(v) for k, v in points.items()},
            dict(hidden),
            float(seconds),
            memory,
            warnings == "pass",
        )


@dataclass
class ItemResult:
    name: str  # the layer class, or the pair's forward function
    passed: bool
    warnings: list[str]
    diagnoses: list[str]
    text: str  # what npgrad check prints for it
    html: str


@dataclass
class Submission:
    student: str
    source: Path
    items: dict[str, ItemResult] = field(default_factory=dict)
    error: str | None = None  # why nothing could be checked (one line)
    points: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.points.values())


def find_submissions(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """(student, path) for each Python file, notebook or folder in ``folder``, by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GradingError(f"{folder} is not a folder of submissions (one entry per student)")
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.suffix in (".py", ".ipynb"):
            found.append((entry.stem if entry.is_file() else entry.name, entry))
    if not found:
        raise GradingError(f"{folder} holds no .py file, notebook or folder to grade")
    return found


def notebook_source(path: Path) -> str:
    """A notebook's code cells as one Python file; IPython's ``%``/``!`` lines commented out."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GradingError(f"{path.name} is not a readable notebook ({exc})") from None
    parts = []
    for cell in cells:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        text = "".join(src) if isinstance(src, list) else str(src)
        lines = [
            ("# " + ln) if ln.lstrip().startswith(("%", "!")) else ln for ln in text.splitlines()
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _source(path: Path, tmp: Path) -> Path:
    """The one Python file to check for a submission (a notebook's or a folder's, written out)."""
    if path.suffix == ".py" and path.is_file():
        return path
    if path.suffix == ".ipynb":
        text = notebook_source(path)
    else:
        files = sorted(path.rglob("*.py")) + sorted(path.rglob("*.ipynb"))
        if not files:
            raise GradingError(f"{path.name}/ holds no .py file or notebook")
        text = "\n\n".join(
            notebook_source(f)
            if f.suffix == ".ipynb"
            else f.read_text(encoding="utf-8", errors="replace")
            for f in files
        )
    out = tmp / f"{path.stem}.py"
    out.write_text(text, encoding="utf-8")
    return out


def _item_name(report: Any) -> str:
    return str(report.name).split("/")[0]


def grade_one(student: str, path: Path, rubric: Rubric, seed: int = 0) -> Submission:
    """Check one submission in the sandbox; never raises for what the submission does."""
    sub = Submission(student, path)
    params = {k: dict(v.get("params", {})) for k, v in rubric.hidden.items() if v.get("params")}
    shapes: dict[str, list[tuple[int, ...]]] = {
        k: [tuple(int(n) for n in str(s).split("x")) for s in v["shapes"]]
        for k, v in rubric.hidden.items()
        if v.get("shapes")
    }
    with tempfile.TemporaryDirectory(prefix="npgrad-grade-") as tmp:
        try:
            source = _source(path, Path(tmp))
            reports, error = check_file(
                source,
                shapes=shapes or None,
                params=params or None,
                seed=seed,
                timeout=rubric.seconds,
                memory_mb=rubric.memory_mb,
                quiet=True,
            )
        except NpgradError as exc:
            reports, error = [], str(exc)
        except (OSError, UnicodeDecodeError) as exc:
            reports, error = [], f"cannot read it: {exc}"
    if error:  # said of the file checked, in the grader's terms
        error = error.replace(str(source) if "source" in locals() else str(path), path.name)
        error = error.replace("--timeout SECONDS allows more", "the rubric's [limits] seconds")
    sub.error = error
    for r in reports:
        warnings = list(getattr(r, "warnings", []) or [])
        item = ItemResult(
            _item_name(r), bool(r.passed), warnings, list(r.diagnoses), str(r), r._repr_html_()
        )
        sub.items[item.name] = item
    return sub


def score(subs: Sequence[Submission], rubric: Rubric) -> list[str]:
    """Fill each submission's points; returns the graded items, in order."""
    if rubric.points:
        items = list(rubric.points)
    else:
        items = sorted({name for s in subs for name in s.items})
    for s in subs:
        for name in items:
            it = s.items.get(name)
            ok = it is not None and it.passed and (rubric.warnings_pass or not it.warnings)
            s.points[name] = rubric.points.get(name, 1.0) if ok else 0.0
    return items


@contextlib.contextmanager
def _blas_threads_of_children(n: str) -> Iterator[None]:
    """Children started meanwhile run ``n`` BLAS threads each (several share the cores),
    unless the caller chose; the caller's environment is as it was after."""
    chosen = "OPENBLAS_NUM_THREADS" in os.environ
    if not chosen:
        os.environ["OPENBLAS_NUM_THREADS"] = n
    try:
        yield
    finally:
        if not chosen:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)


def grade_folder(
    folder: str | os.PathLike,
    rubric: Rubric | None = None,
    jobs: int | None = None,
    seed: int = 0,
    progress: Callable[[Submission], None] | None = None,
) -> tuple[list[Submission], list[str]]:
    """Grade every submission in ``folder``, ``jobs`` at a time (default: the cores)."""
    rubric = rubric or Rubric()
    found = find_submissions(folder)
    jobs = max(1, jobs or os.cpu_count() or 1)
    results: dict[str, Submission] = {}
    with _blas_threads_of_children("1"), concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(grade_one, st, p, rubric, seed): st for st, p in found}
        for fut in concurrent.futures.as_completed(futures):
            sub = fut.result()
            results[sub.student] = sub
            if progress is not None:
                progress(sub)
    subs = [results[st] for st, _ in found]
    return subs, score(subs, rubric)


# --------------------------------------------------------------------------- writing it down


def _csv_field(v: Any) -> str:
    text = str(v)
    if any(c in text for c in ',"\n') or text[:1] in "=+-@":  # no formula injection either
        text = '"' + text.replace('"', '""') + '"'
    return text


def _number(x: float) -> str:
    return f"{x:g}"


def summary(
    subs: Sequence[Submission], items: Sequence[str]
) -> tuple[list[tuple[str, int, int]], Counter]:
    """Per item (name, passed, submitted), and the most common diagnoses over the class."""
    rows = []
    mistakes: Counter = Counter()
    for name in items:
        have = [s.items[name] for s in subs if name in s.items]
        rows.append((name, sum(it.passed for it in have), len(subs)))
        for it in have:
            if not it.passed:
                for d in dict.fromkeys(it.diagnoses[:1]):  # the most telling reason, once
                    mistakes[f"{name}: {d.splitlines()[0][:160]}"] += 1
    return rows, mistakes


def write_results(
    subs: Sequence[Submission], items: Sequence[str], rubric: Rubric, out: str | os.PathLike
) -> dict[str, Path]:
    """grades.csv, feedback/STUDENT.md and .html, summary.md; returns the paths written."""
    out = Path(out)
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    header = ["student", *items, "total"]
    lines = [",".join(map(_csv_field, header))]
    for s in subs:
        row = [s.student, *(_number(s.points.get(n, 0.0)) for n in items), _number(s.total)]
        lines.append(",".join(map(_csv_field, row)))
    written = {"grades": out / "grades.csv"}
    write_text(written["grades"], "\n".join(lines) + "\n")
    possible = sum(rubric.points.get(n, 1.0) for n in items)
    for s in subs:
        md = [f"# {s.student}: {_number(s.total)} of {_number(possible)} points", ""]
        htm = [
            f"<h1>{html.escape(s.student)}: {_number(s.total)} of {_number(possible)} points</h1>"
        ]
        if s.error:
            md += [f"Nothing could be checked: {s.error}", ""]
            htm.append(f"<p>Nothing could be checked: {html.escape(s.error)}</p>")
        for name in items:
            it = s.items.get(name)
            got = _number(s.points.get(name, 0.0))
            worth = _number(rubric.points.get(name, 1.0))
            md.append(f"## {name}: {got} of {worth}")
            htm.append(f"<h2>{html.escape(name)}: {got} of {worth}</h2>")
            if it is None:
                md += ["", "Not found in the submission.", ""]
                htm.append("<p>Not found in the submission.</p>")
                continue
            md += ["", "```", it.text, "```", ""]
            htm.append(it.html)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.student) or "student"
        write_text(out / "feedback" / f"{safe}.md", "\n".join(md) + "\n")
        page = "<!doctype html><meta charset='utf-8'><title>feedback</title>" + "\n".join(htm)
        write_text(out / "feedback" / f"{safe}.html", page + "\n")
    rows, mistakes = summary(subs, items)
    md = [
        "# Class summary",
        "",
        f"{len(subs)} submissions.",
        "",
        "| item | passed | of |",
        "|---|---|---|",
    ]
    md += [f"| {n} | {p} | {t} |" for n, p, t in rows]
    md += ["", "## Most common mistakes", ""]
    md += [f"- {count} x {what}" for what, count in mistakes.most_common(10)] or ["- none"]
    failed = [s for s in subs if s.error]
    if failed:
        md += ["", "## Not checked at all", ""]
        md += [f"- {s.student}: {s.error}" for s in failed]
    written["summary"] = out / "summary.md"
    write_text(written["summary"], "\n".join(md) + "\n")
    return written
