"""npgrad.nn: registration, state dicts, initialisation, dropout, and agreement with torch.nn."""

import numpy as np
import pytest

import npgrad
from npgrad import CheckpointError, ConfigError, nn


def test_parameters_are_registered_in_order_with_dotted_names():
    net = nn.MLP([4, 3, 2], rng=0)
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert net.num_parameters() == 4 * 3 + 3 + 3 * 2 + 2
    assert all(p.requires_grad for p in net.parameters())


def test_state_dict_round_trip_and_clear_errors():
    a, b = nn.MLP([4, 3, 2], rng=0), nn.MLP([4, 3, 2], rng=1)
    b.load_state_dict(a.state_dict())
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(p.data, q.data)
    state = a.state_dict()
    state["0.weight"] = np.zeros((5, 3))
    with pytest.raises(
        CheckpointError, match=r"0.weight has shape \(5, 3\), the model expects \(4, 3\)"
    ):
        b.load_state_dict(state)
    state = a.state_dict()
    del state["2.bias"]
    state["extra"] = np.zeros(1)
    with pytest.raises(
        CheckpointError, match=r"missing keys \['2.bias'\].*unexpected keys \['extra'\]"
    ):
        b.load_state_dict(state)


def test_he_and_glorot_initialisation_statistics():
    w = nn.Linear(1000, 500, init="he", rng=0).weight.data
    assert w.dtype == np.float32
    assert abs(w.std() - np.sqrt(2 / 1000)) < 0.002
    g = nn.Linear(1000, 500, init="glorot", rng=0).weight.data
    assert abs(g.max() - np.sqrt(6 / 1500)) < 1e-3 and abs(g.mean()) < 1e-3
    assert np.array_equal(nn.Linear(3, 2, rng=5).weight.data, nn.Linear(3, 2, rng=5).weight.data)
    with pytest.raises(ConfigError, match="unknown init"):
        nn.Linear(3, 2, init="zeros")


def test_dropout_train_and_eval():
    d = nn.Dropout(0.5, rng=0)
    x = npgrad.tensor(np.ones((1000, 100), np.float32), requires_grad=True)
    y = d(x)
    kept = y.data != 0
    assert 0.45 < kept.mean() < 0.55 and np.allclose(y.data[kept], 2.0)
    y.sum().backward()
    assert np.array_equal(x.grad, y.data)  # gradient flows only through kept units, scaled
    d.eval()
    assert d(x) is x
    with pytest.raises(ConfigError):
        nn.Dropout(1.0)


def test_train_eval_propagates():
    net = nn.MLP([4, 3, 2], dropout=0.5, rng=0)
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_mlp_matches_torch_forward_and_backward(torch):
    rng = np.random.default_rng(0)
    net = nn.MLP([6, 5, 4, 3], activation="tanh", rng=0, dtype=np.float64)
    tnet = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4),
                               torch.nn.Tanh(), torch.nn.Linear(4, 3))  # fmt: skip
    with torch.no_grad():
        for (name, p), tl in zip(net.named_parameters(), [0, 0, 2, 2, 4, 4]):
            target = tnet[tl].weight if name.endswith("weight") else tnet[tl].bias
            target.copy_(torch.tensor(p.data.T if name.endswith("weight") else p.data))
    x = rng.standard_normal((7, 6))
    y = rng.integers(0, 3, 7)
    loss = npgrad.cross_entropy(net(npgrad.tensor(x)), y)
    loss.backward()
    tloss = torch.nn.functional.cross_entropy(tnet(torch.tensor(x)), torch.tensor(y))
    tloss.backward()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(net[0].weight.grad, tnet[0].weight.grad.numpy().T, rtol=1e-10)
    np.testing.assert_allclose(net[4].bias.grad, tnet[4].bias.grad.numpy(), rtol=1e-10)


def test_mlp_rejects_bad_sizes_and_activation():
    with pytest.raises(ConfigError, match="at least two positive sizes"):
        nn.MLP([784])
    with pytest.raises(ConfigError, match="unknown activation"):
        nn.MLP([4, 2], activation="gelu")


def test_module_zero_grad():
    net = nn.MLP([3, 2], rng=0)
    npgrad.cross_entropy(
        net(npgrad.tensor(np.ones((2, 3), np.float32))), np.array([0, 1])
    ).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
