"""Every op in the table: numerical gradcheck in float64 and agreement with PyTorch.

Driven by ``npgrad.ops.OPS`` itself, so an op cannot be registered untested
(``op_case`` raises for an op it does not know).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npgrad import ops
from npgrad.check import compare_with_torch, gradcheck, op_case

SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
SEEDS = st.integers(0, 2**32 - 1)
ALL_OPS = sorted(ops.OPS)


def test_table_has_every_op_the_brief_names():
    wanted = {
        "matmul", "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "relu",
        "sigmoid", "tanh", "softmax", "log_softmax", "sum", "mean", "max", "reshape",
        "transpose", "concatenate", "getitem", "cross_entropy", "linear",
    }  # fmt: skip
    assert wanted <= set(ops.OPS)


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_has_a_derivation(name):
    doc = ops.OPS[name].__doc__ or ""
    assert "docs/derivations.md#" in doc, f"{name}'s docstring must point to its derivation"
    assert "Derivation" in doc or "derivations.md" in doc
    assert ":math:" in doc, f"{name}'s docstring must write its derivation out"


@pytest.mark.parametrize("name", ALL_OPS)
@settings(max_examples=15, deadline=None)
@given(shape=SHAPES, seed=SEEDS)
def test_numerical_gradcheck(name, shape, seed):
    case = op_case(name, np.random.default_rng(seed), shape)
    report = gradcheck(case.fn, *case.inputs, atol=1e-6, rtol=1e-5)
    assert report.passed, f"{case.label}\n{report}"


@pytest.mark.parametrize("name", ALL_OPS)
@settings(max_examples=15, deadline=None)
@given(shape=SHAPES, seed=SEEDS)
def test_agrees_with_pytorch(name, shape, seed, torch):
    rng = np.random.default_rng(seed)
    case = op_case(name, rng, shape)
    fwd, bwd = compare_with_torch(case, rng)
    assert fwd <= 1e-12, f"forward {case.label}: {fwd}"
    assert bwd <= 1e-10, f"backward {case.label}: {bwd}"


@settings(max_examples=40, deadline=None)
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    op=st.sampled_from(["add", "sub", "mul", "div"]),
    seed=SEEDS,
)
def test_broadcasting_binary_ops_against_torch(shapes, op, seed, torch):
    import npgrad

    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shapes.input_shapes[0])
    b = rng.standard_normal(shapes.input_shapes[1]) + (3.0 if op == "div" else 0.0)
    fn = getattr(npgrad, op)
    report = gradcheck(fn, a, b, atol=1e-6, rtol=1e-5)
    assert report.passed, str(report)
    ta = torch.tensor(a, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    tfn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[op]
    tfn(ta, tb).sum().backward()
    x, y = npgrad.tensor(a, requires_grad=True), npgrad.tensor(b, requires_grad=True)
    fn(x, y).sum().backward()
    np.testing.assert_allclose(x.grad, ta.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(y.grad, tb.grad.numpy(), rtol=1e-12, atol=1e-14)
    assert x.grad.shape == a.shape and y.grad.shape == b.shape


def test_unknown_op_has_no_case():
    with pytest.raises(KeyError, match="add one"):
        op_case("no_such_op", np.random.default_rng(0))


def test_softmax_and_log_softmax_do_not_overflow():
    import npgrad

    x = npgrad.tensor(np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]]), requires_grad=True)
    s = npgrad.softmax(x)
    assert np.all(np.isfinite(s.data))
    np.testing.assert_allclose(s.data[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(s.data[1], [1 / 3] * 3)
    ls = npgrad.log_softmax(x)
    assert np.all(np.isfinite(ls.data))
    np.testing.assert_allclose(ls.data[0], [0.0, -1000.0, -2000.0])


def test_cross_entropy_is_stable_and_matches_its_definition(torch):
    import npgrad

    logits = np.array([[1000.0, 0.0, -1000.0], [0.1, 0.2, 0.3]])
    y = np.array([2, 1])
    ce = npgrad.cross_entropy(npgrad.tensor(logits), y, reduction="sum")
    assert np.isfinite(ce.item())
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(y), reduction="sum")
    assert ce.item() == pytest.approx(ref.item(), rel=1e-14)
    onehot = np.eye(3)[y]
    ce2 = npgrad.cross_entropy(npgrad.tensor(logits), onehot, reduction="sum")
    assert ce2.item() == pytest.approx(ce.item(), rel=1e-14)


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n():
    import npgrad

    rng = np.random.default_rng(0)
    x = npgrad.tensor(rng.standard_normal((6, 4)), requires_grad=True)
    y = rng.integers(0, 4, 6)
    npgrad.cross_entropy(x, y).backward()
    expected = (npgrad.softmax(x.detach()).data - np.eye(4)[y]) / 6
    np.testing.assert_allclose(x.grad, expected, rtol=1e-13)


@pytest.mark.parametrize(
    "target, match",
    [
        (np.array([0, 5]), "labels must lie"),
        (np.array([0, 1, 2]), "2 rows of logits but 3 labels"),
        (np.array([0.5, 0.5]), "integer class indices"),
        (np.ones((2, 4)), "fits neither"),
    ],
)
def test_cross_entropy_rejects_bad_targets(target, match):
    import npgrad

    with pytest.raises(npgrad.ShapeError, match=match):
        npgrad.cross_entropy(npgrad.tensor(np.zeros((2, 3))), target)


def test_log_of_nonpositive_is_nan_or_inf_like_numpy():
    import npgrad

    x = npgrad.tensor(np.array([0.0, -1.0, 2.0]), requires_grad=True)
    y = npgrad.log(x)
    assert y.data[0] == -np.inf and np.isnan(y.data[1])
    y.sum().backward()
    assert x.grad[0] == np.inf and x.grad[2] == 0.5


def test_max_splits_gradient_at_ties(torch):
    import npgrad

    a = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]])
    x = npgrad.tensor(a, requires_grad=True)
    x.max(axis=1).sum().backward()
    t = torch.tensor(a, requires_grad=True)
    t.amax(dim=1).sum().backward()
    np.testing.assert_allclose(x.grad, t.grad.numpy())
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])


def test_matmul_shape_error_is_clear():
    import npgrad

    with pytest.raises(npgrad.ShapeError, match=r"\(2, 3\) and \(4, 5\) do not align"):
        npgrad.tensor(np.zeros((2, 3))) @ np.zeros((4, 5))


@pytest.mark.parametrize(
    "sa, sb", [((3,), (3, 2)), ((2, 3), (3,)), ((3,), (3,)), ((4, 2, 3), (3, 5))]
)
def test_matmul_vector_and_batched_forms(sa, sb, torch):
    import npgrad

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    assert gradcheck(npgrad.matmul, a, b).passed
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (ta @ tb).sum().backward()
    x, y = npgrad.tensor(a, requires_grad=True), npgrad.tensor(b, requires_grad=True)
    (x @ y).sum().backward()
    np.testing.assert_allclose(x.grad, ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(y.grad, tb.grad.numpy(), rtol=1e-12)


def _slug(heading: str) -> str:
    # GitHub's anchor rule for our plain headings: lower case, spaces to hyphens.
    return heading.strip().lower().replace(" ", "-")


def test_derivations_document_has_a_section_for_every_op():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "derivations.md").read_text()
    anchors = {_slug(h) for h in re.findall(r"^## (.+)$", doc, flags=re.M)}
    for name, op in ops.OPS.items():
        linked = re.findall(r"docs/derivations\.md#([\w-]+)", op.__doc__ or "")
        assert linked, f"{name}: docstring links no section"
        for anchor in linked:
            assert anchor in anchors, f"{name}: docs/derivations.md has no section #{anchor}"
        section = doc.split(f"## {linked[0].replace('-', ' ')}\n", 1)
        assert len(section) == 2 and "$" in section[1].split("\n## ", 1)[0], name
