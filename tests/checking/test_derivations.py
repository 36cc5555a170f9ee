"""docs/derivations.md is generated from the op docstrings and must not go stale."""

import re
from pathlib import Path

from npgrad.checking import derivations
from npgrad.checking.gradcheck import all_ops
from npgrad.ops.dense import unbroadcast

DOC = Path(__file__).resolve().parents[2] / "docs" / "derivations.md"


def test_the_derivations_page_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == derivations.render(), (
        "docs/derivations.md is stale: run python -m npgrad.checking.derivations docs/derivations.md"
    )


def test_every_op_has_its_docstring_as_a_section():
    page = derivations.render()
    sections = dict(re.findall(r"^## (.+?)\n\n(.*?)(?=^## |\Z)", page, flags=re.M | re.S))
    assert set(all_ops()) <= set(sections)
    for name, op in all_ops().items():
        first_line = op.__doc__.strip().splitlines()[0]
        assert sections[name].startswith(first_line), name
    assert "npgrad.ops.base.unbroadcast" in sections["broadcasting"]
    assert unbroadcast.__doc__.strip().splitlines()[0] in sections["broadcasting"]


def test_every_link_inside_the_page_has_a_target():
    page = derivations.render()
    # GitHub's anchors for these plain headings: lower case, spaces to hyphens
    anchors = {h.strip().lower().replace(" ", "-") for h in re.findall(r"^#+ (.+)$", page, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", page))
    assert links and links <= anchors, links - anchors


def test_the_command_writes_checks_and_prints(tmp_path, capsys):
    target = tmp_path / "derivations.md"
    target.write_text("# old\n")
    assert derivations.main([str(target), "--check"]) == 1
    assert "is stale: run python -m npgrad.checking.derivations" in capsys.readouterr().err
    assert derivations.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == derivations.render()
    assert derivations.main([str(target), "--check"]) == 0
    assert derivations.main([str(tmp_path / "missing.md"), "--check"]) == 1
    capsys.readouterr()
    assert derivations.main([]) == 0
    assert capsys.readouterr().out == derivations.render()
