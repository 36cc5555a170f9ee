"""``npgrad grade``: a class's submissions checked and scored, with feedback per student."""

from __future__ import annotations

import argparse
import sys

from .common import formatter, int_between, nonempty

GRADE_EPILOG = """\
examples:
  npgrad grade submissions/                       every item found is worth one point
  npgrad grade submissions/ --rubric rubric.toml -o grades/
  npgrad grade submissions/ --jobs 1              one submission at a time

SUBMISSIONS holds one entry per student: a .py file, a notebook (its code cells) or a
folder (its .py files). Each is checked as 'npgrad check' checks one, in a child process
with the rubric's time and memory limits (default 60 s, 2048 MB), its prints discarded.
output: DIR/grades.csv (student, points per item, total), DIR/feedback/STUDENT.md and
.html (each verdict and diagnosis, the text 'npgrad check' prints), DIR/summary.md (pass
counts per item, the most common mistakes) and, with matplotlib, DIR/summary.png.
The rubric is TOML: [points] ITEM = N; [hidden.ITEM] params = {...}, shapes = [...];
[limits] seconds, memory_mb; [rules] warnings = "pass" | "fail"."""


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checking.grading import Rubric, grade_folder, summary, write_results

    rubric = Rubric.load(args.rubric) if args.rubric else Rubric()
    out = Path(args.out)

    def progress(sub) -> None:
        if not args.quiet:
            how = f"not checked: {sub.error}" if sub.error else f"{len(sub.items)} items checked"
            print(f"  {sub.student}: {how}", file=sys.stderr, flush=True)

    subs, items = grade_folder(args.submissions, rubric, jobs=args.jobs, progress=progress)
    written = write_results(subs, items, rubric, out)
    rows, _ = summary(subs, items)
    try:
        from ..app.plots import class_summary

        written["chart"] = class_summary(rows, out / "summary.png")
    except Exception as exc:  # matplotlib missing: the tables are the result, the chart a bonus
        print(f"npgrad: no summary.png ({exc})", file=sys.stderr)
    possible = sum(rubric.points.get(n, 1.0) for n in items)
    for s in subs:
        print(f"{s.student}: {s.total:g} of {possible:g}")
    print(f"wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grade",
        help="check a class's submissions and score them (grades.csv, feedback per student)",
        description="Check every submission in a folder as 'npgrad check' does, score it by\n"
        "a rubric, and write grades, feedback for each student and a class summary.",
        epilog=GRADE_EPILOG,
        formatter_class=formatter,
    )
    p.add_argument("submissions", metavar="SUBMISSIONS", help="folder: one entry per student")
    p.add_argument("--rubric", metavar="FILE", help="points, hidden geometries, limits (TOML)")
    p.add_argument(
        "--out",
        "-o",
        default="grades",
        type=nonempty("give a directory, e.g. grades"),
        metavar="DIR",
        help="where to write the results (default: grades)",
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=int_between(1, 256),
        metavar="N",
        help="submissions checked at once (default: the cores)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no line per submission")
    p.set_defaults(func=run)
