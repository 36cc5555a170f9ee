"""Graph export: DOT text for a small MLP, parsed back into nodes and edges."""

import re
import shutil

import numpy as np
import pytest

import npgrad
from npgrad import nn
from npgrad.graph import GraphvizMissing, render, to_dot


@pytest.fixture
def mlp_loss():
    net = nn.MLP([4, 3, 2], rng=0)
    x = npgrad.tensor(np.ones((5, 4), np.float32))
    return net, npgrad.cross_entropy(net(x), np.zeros(5, dtype=int))


def parse(dot):
    nodes = dict(re.findall(r'^\s+(t\d+) \[label="([^"]*)"', dot, flags=re.M))
    edges = re.findall(r"^\s+(t\d+) -> (t\d+);", dot, flags=re.M)
    return nodes, edges


def test_dot_structure_of_a_small_mlp(mlp_loss):
    net, loss = mlp_loss
    dot = to_dot(loss, dict(net.named_parameters()))
    assert dot.startswith("digraph npgrad {") and dot.rstrip().endswith("}")
    nodes, edges = parse(dot)
    labels = {k: v.split("\\n")[0] for k, v in nodes.items()}
    ops = sorted(v for v in labels.values() if v in ("linear", "relu", "cross_entropy"))
    assert ops == ["cross_entropy", "linear", "linear", "relu"]
    assert {"0.weight", "0.bias", "2.weight", "2.bias", "input"} <= set(labels.values())
    assert len(nodes) == 9 and len(edges) == 8  # a tree: every node but the root feeds one op
    by_label = {v: k for k, v in labels.items()}
    first_linear = next(b for a, b in edges if a == by_label["input"])
    assert {(by_label["0.weight"], first_linear), (by_label["0.bias"], first_linear)} <= set(edges)
    assert "4x3 float32" in nodes[by_label["0.weight"]]
    assert 'fillcolor="#cfe8ff"' in dot  # parameters are marked
    root = [line for line in dot.splitlines() if "peripheries=2" in line]
    assert len(root) == 1 and "cross_entropy" in root[0]


def test_dot_after_backward_still_works(mlp_loss):
    _, loss = mlp_loss
    loss.backward()
    assert len(parse(to_dot(loss))[0]) == 9


def test_render_without_graphviz_says_how_to_get_it(mlp_loss, monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GraphvizMissing, match="apt-get install graphviz"):
        render(mlp_loss[1], tmp_path / "g.svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")
def test_render_svg(mlp_loss, tmp_path):
    path = render(mlp_loss[1], tmp_path / "g.svg")
    assert "<svg" in path.read_text()
