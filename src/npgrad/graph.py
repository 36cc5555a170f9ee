"""See the graph: export a Tensor's computation graph as Graphviz DOT text.

``to_dot(loss)`` needs nothing installed: it returns DOT text with one node per
tensor (op name or leaf name, shape, dtype) and an edge from every input to the
output it feeds; parameters are drawn as filled boxes. ``render(loss, "g.svg")``
runs Graphviz's ``dot`` program when it is present and says how to get it when
it is not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .autodiff import Tensor, topological_order
from .errors import GraphvizMissing, NpgradError


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace(chr(10), "\\n") + '"'


def to_dot(
    root: Tensor, names: Mapping[str, Tensor] | None = None, title: str | None = None
) -> str:
    """DOT text of the graph that produced ``root``.

    ``names`` maps names to tensors (e.g. ``dict(model.named_parameters())``) so
    that parameters are labelled; otherwise a tensor's ``.name`` is used.
    """
    from .nn import Parameter

    labels = {id(t): n for n, t in (names or {}).items()}
    nodes = topological_order(root, grad_only=False)
    ids = {id(t): f"t{i}" for i, t in enumerate(nodes)}
    lines = ["digraph npgrad {", "  rankdir=BT;", '  node [fontname="Helvetica", fontsize=10];']
    if title:
        lines.append(f"  label={_quote(title)};")
    for t in nodes:
        shape = "x".join(str(n) for n in t.shape) or "scalar"
        desc = f"{shape} {t.dtype}"
        if t.op_name is not None:
            attrs = f"label={_quote(t.op_name + chr(10) + desc)}, shape=ellipse"
        elif isinstance(t, Parameter) or (t.requires_grad and t.is_leaf):
            name = labels.get(id(t)) or t.name or "parameter"
            attrs = (
                f"label={_quote(name + chr(10) + desc)}, shape=box, style=filled, "
                'fillcolor="#cfe8ff"'
            )
        else:
            name = labels.get(id(t)) or t.name or "input"
            attrs = f"label={_quote(name + chr(10) + desc)}, shape=box"
        if t is root:
            attrs += ", peripheries=2"
        lines.append(f"  {ids[id(t)]} [{attrs}];")
    for t in nodes:
        for p in t.parents:
            lines.append(f"  {ids[id(p)]} -> {ids[id(t)]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(
    root: Tensor, path: str | os.PathLike, names: Mapping[str, Tensor] | None = None
) -> Path:
    """Write the graph as SVG, PNG or PDF (by the file's suffix) using Graphviz's ``dot``."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "svg"
    if fmt not in ("svg", "png", "pdf"):
        raise NpgradError(f"cannot render to .{fmt}: use .svg, .png or .pdf")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing(
            "rendering needs Graphviz's 'dot' program (apt-get install graphviz, brew install "
            "graphviz); npgrad.graph.to_dot() gives the DOT text without it"
        )
    result = subprocess.run(
        [dot, f"-T{fmt}", "-o", str(path)],
        input=to_dot(root, names),
        text=True,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise NpgradError(f"dot failed: {result.stderr.strip()}")
    return path
