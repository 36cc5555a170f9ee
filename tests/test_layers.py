"""The exercise's layer classes: drop-in, exercise's checks against PyTorch (section 4)."""

import types

import numpy as np
import pytest

import npgrad
from npgrad import layers
from npgrad.layers import Log, Matmul, Relu, Softmax
from tests import exercise_reference as naive


def rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return types.SimpleNamespace(
        x=rng.standard_normal((5, 6)),
        W=rng.standard_normal((6, 4)),
        labels=np.eye(6)[rng.integers(0, 6, 5)],
        W1=rng.standard_normal((6, 5)),
        W2=rng.standard_normal((5, 6)),
    )


# ----------------------------------------------------------------- section 4 of exercise.md


def test_matmul_check(data, torch):
    mm = Matmul()
    out = mm.forward(data.x, data.W)
    gx, gW = mm.backward(np.ones_like(out))
    tx = torch.tensor(data.x, requires_grad=True)
    tW = torch.tensor(data.W, requires_grad=True)
    (tx @ tW).backward(torch.ones(5, 4))
    np.testing.assert_allclose(out, (tx @ tW).detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-13)
    np.testing.assert_allclose(gW, tW.grad.numpy(), rtol=1e-13)
    assert set(mm.mem) >= {"x", "W"}


def test_relu_check(data, torch):
    r = Relu()
    out = r.forward(data.x)
    g = r.backward(np.ones_like(out))
    tx = torch.tensor(data.x, requires_grad=True)
    torch.relu(tx).backward(torch.ones(5, 6))
    np.testing.assert_array_equal(out, torch.relu(tx).detach().numpy())
    np.testing.assert_array_equal(g, tx.grad.numpy())


def test_softmax_check(data, torch):
    s = Softmax()
    assert s.epsilon == 1e-12
    out = s.forward(data.x)
    g = s.backward(data.labels)
    tx = torch.tensor(data.x, requires_grad=True)
    torch.softmax(tx, dim=-1).backward(torch.tensor(data.labels))
    assert rel(out, torch.softmax(tx, -1).detach().numpy()) < 1e-10
    assert rel(g, tx.grad.numpy()) < 1e-10


def test_log_check(data, torch):
    lg = Log()
    p = np.abs(data.x) + 0.1
    out = lg.forward(p)
    g = lg.backward(data.labels)
    tp = torch.tensor(p, requires_grad=True)
    torch.log(tp).backward(torch.tensor(data.labels))
    assert rel(out, torch.log(tp).detach().numpy()) < 1e-10
    assert rel(g, tp.grad.numpy()) < 1e-10


def final_check_torch(torch, d):
    tx = torch.tensor(d.x)
    tW1 = torch.tensor(d.W1, requires_grad=True)
    tW2 = torch.tensor(d.W2, requires_grad=True)
    prob = torch.softmax(torch.relu(tx @ tW1) @ tW2, dim=-1)
    prob.retain_grad()
    loss = torch.sum(torch.tensor(d.labels) * torch.log(prob))
    loss.backward()
    return tW1.grad.numpy(), tW2.grad.numpy(), prob.grad.numpy()


def test_final_gradient_check_layers(data, torch):
    gW1_t, gW2_t, gprob_t = final_check_torch(torch, data)
    m1, r, m2, s, lg = Matmul(), Relu(), Matmul(), Softmax(), Log()
    prob = s.forward(m2.forward(r.forward(m1.forward(data.x, data.W1)), data.W2))
    lg.forward(prob)
    g_prob = lg.backward(data.labels)
    g = s.backward(g_prob)
    g, gW2 = m2.backward(g)
    _, gW1 = m1.backward(r.backward(g))
    assert rel(gW1, gW1_t) < 1e-7 and rel(gW2, gW2_t) < 1e-7 and rel(g_prob, gprob_t) < 1e-7


def test_final_gradient_check_tensor_engine(data, torch):
    gW1_t, gW2_t, gprob_t = final_check_torch(torch, data)
    W1 = npgrad.tensor(data.W1, requires_grad=True)
    W2 = npgrad.tensor(data.W2, requires_grad=True)
    prob = npgrad.softmax(npgrad.relu(npgrad.tensor(data.x) @ W1) @ W2).retain_grad()
    (data.labels * npgrad.log(prob)).sum().backward()
    assert rel(W1.grad, gW1_t) < 1e-12 and rel(W2.grad, gW2_t) < 1e-12
    assert rel(prob.grad, gprob_t) < 1e-12


# ----------------------------------------------------------------- the exercise's code, unchanged


def test_exercise_model_runs_unchanged_and_matches_the_original():
    rng = np.random.default_rng(3)
    x = naive.add_ones_column(rng.random((64, 28, 28)))
    y = np.eye(10)[rng.integers(0, 10, 64)]
    W1, W2 = rng.normal(size=(785, 100)), rng.normal(size=(100, 10))
    ours = naive.make_model(layers)(W1.copy(), W2.copy())
    theirs = naive.make_model(naive)(W1.copy(), W2.copy())
    for _ in range(5):
        l1, a1 = naive.train_one_step(ours, x, y, 1e-5)
        l2, a2 = naive.train_one_step(theirs, x, y, 1e-5)
        assert l1 == pytest.approx(l2, rel=1e-12) and a1 == a2
    assert rel(ours.W1, theirs.W1) < 1e-12 and rel(ours.W2, theirs.W2) < 1e-12


def test_softmax_agrees_with_exercise_formula_where_finite():
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1.0, 10.0, 100.0, 300.0):
        x = scale * rng.standard_normal((50, 10))
        ref = naive.Softmax().forward(x)
        ok = np.isfinite(ref).all(axis=1)
        ours = Softmax().forward(x)
        assert np.all(np.isfinite(ours))
        nz = ref[ok] > 1e-300
        r = np.abs(ours[ok][nz] - ref[ok][nz]) / ref[ok][nz]
        assert r.max() < 1e-12, scale
        np.testing.assert_array_equal(ours[ok][~nz] < 1e-290, True)


def test_softmax_tiny_logits_keep_the_epsilon_effect():
    # All logits -40: exp sums to ~4e-17 * 10, comparable to epsilon; the stable form must agree.
    x = np.full((2, 10), -40.0)
    ref = naive.Softmax().forward(x)
    np.testing.assert_allclose(Softmax().forward(x), ref, rtol=1e-12)


def test_softmax_large_logits_do_not_overflow():
    s = Softmax()
    out = s.forward(np.array([[1000.0, 999.0, -5.0]]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(), 1.0)
    g = s.backward(np.array([[1.0, 0.0, 0.0]]))
    assert np.isfinite(g).all()


def test_softmax_backward_builds_no_ncc_tensor(monkeypatch):
    calls = []
    original = np.einsum
    monkeypatch.setattr(np, "einsum", lambda *a, **k: calls.append(a) or original(*a, **k))
    s = Softmax()
    s.forward(np.random.default_rng(0).standard_normal((1000, 10)))
    g = s.backward(np.ones((1000, 10)))
    assert not calls and g.shape == (1000, 10)


def test_log_nonpositive_gives_nan_or_inf_without_exception():
    lg = Log()
    lg.epsilon = 0.0
    with np.errstate(all="raise"):
        out = lg.forward(np.array([0.0, -1.0]))
    assert out[0] == -np.inf and np.isnan(out[1])


def test_layers_and_engine_share_the_op_formulas():
    from npgrad.ops import dense as ops

    assert Matmul.op is ops.MatmulOp and Relu.op is ops.ReluOp
    assert Softmax.op is ops.SoftmaxOp and Log.op is ops.LogOp


# ----------------------------------------------------------------- convolutional layers


def test_conv2d_layer_matches_torch_and_keeps_the_protocol(torch):
    rng = np.random.default_rng(0)
    x, W, b = (
        rng.standard_normal((2, 3, 7, 6)),
        rng.standard_normal((4, 3, 3, 2)),
        rng.standard_normal(4),
    )
    conv = layers.Conv2d(stride=(2, 1), padding=1)
    out = conv.forward(x, W, b)
    assert conv.mem["x"] is x and conv.mem["W"] is W
    g = rng.standard_normal(out.shape)
    gx, gW, gb = conv.backward(g)
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    tout = torch.nn.functional.conv2d(tx, tW, tb, stride=(2, 1), padding=1)
    tout.backward(torch.tensor(g))
    assert rel(out, tout.detach().numpy()) < 1e-12
    for mine, theirs in ((gx, tx), (gW, tW), (gb, tb)):
        assert rel(mine, theirs.grad.numpy()) < 1e-12
    nobias = layers.Conv2d()
    nobias.forward(x, W)
    nobias.input_grad = False
    gx2, gW2 = nobias.backward(np.ones((2, 4, 5, 5)))
    assert gx2 is None and gW2.shape == W.shape


def test_pooling_layers_match_torch(torch):
    rng = np.random.default_rng(1)
    x = rng.permutation(np.arange(2 * 3 * 7 * 7, dtype=np.float64)).reshape(2, 3, 7, 7)
    for layer, tfn in (
        (
            layers.MaxPool2d(3, stride=2, padding=1),
            lambda t: torch.nn.functional.max_pool2d(t, 3, 2, 1),
        ),
        (layers.AvgPool2d(2), lambda t: torch.nn.functional.avg_pool2d(t, 2)),
    ):
        out = layer.forward(x)
        g = rng.standard_normal(out.shape)
        tx = torch.tensor(x, requires_grad=True)
        tout = tfn(tx)
        tout.backward(torch.tensor(g))
        assert rel(out, tout.detach().numpy()) < 1e-12
        assert rel(layer.backward(g), tx.grad.numpy()) < 1e-12


def test_batch_norm_layer_training_then_eval_matches_torch(torch):
    rng = np.random.default_rng(2)
    bn, tbn = layers.BatchNorm(momentum=0.1), torch.nn.BatchNorm2d(3).double()
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    tbn.weight.data, tbn.bias.data = torch.tensor(gamma), torch.tensor(beta)
    for training in (True, True, False):
        bn.training = training
        tbn.train(training)
        x = rng.standard_normal((4, 3, 5, 5)) * 3 + 1
        out = bn.forward(x, gamma, beta)
        tx = torch.tensor(x, requires_grad=True)
        tbn.zero_grad()
        tout = tbn(tx)
        g = rng.standard_normal(out.shape)
        tout.backward(torch.tensor(g))
        gx, ggamma, gbeta = bn.backward(g)
        assert rel(out, tout.detach().numpy()) < 1e-12
        assert rel(gx, tx.grad.numpy()) < 1e-10
        assert rel(ggamma, tbn.weight.grad.numpy()) < 1e-10
        assert rel(gbeta, tbn.bias.grad.numpy()) < 1e-12
        assert rel(bn.running_var, tbn.running_var.numpy()) < 1e-12


def test_convolutional_layers_refuse_backward_before_forward():
    for layer in (layers.Conv2d(), layers.MaxPool2d(), layers.AvgPool2d(), layers.BatchNorm()):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.ones((1, 1, 2, 2)))
