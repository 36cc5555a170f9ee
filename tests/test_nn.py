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


# --------------------------------------------------------------------------- convolutional


def _small_cnn(dtype=np.float32, rng=0):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype),
        nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, rng=rng, dtype=dtype), nn.BatchNorm2d(6, dtype=dtype),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 3, rng=rng, dtype=dtype),
    )  # fmt: skip


def _torch_twin(torch, net):
    """The same network in torch.nn with npgrad's weights copied in (Linear's W transposed)."""
    layers = []
    for m in net.layers:
        if isinstance(m, nn.Conv2d):
            t = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding)
            t.weight.data, t.bias.data = torch.tensor(m.weight.data), torch.tensor(m.bias.data)
        elif isinstance(m, nn.BatchNorm2d):
            t = torch.nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum)
        elif isinstance(m, nn.Linear):
            t = torch.nn.Linear(m.in_features, m.out_features)
            t.weight.data, t.bias.data = torch.tensor(m.weight.data.T), torch.tensor(m.bias.data)
        else:
            t = {nn.ReLU: torch.nn.ReLU, nn.MaxPool2d: lambda: torch.nn.MaxPool2d(2),
                 nn.Flatten: torch.nn.Flatten}[type(m)]()  # fmt: skip
        layers.append(t)
    return torch.nn.Sequential(*layers).double()


def test_cnn_matches_torch_in_training_and_eval_including_running_statistics(torch):
    rng = np.random.default_rng(0)
    net = _small_cnn(np.float64)
    tnet = _torch_twin(torch, net)
    for _ in range(3):  # several training steps move the running statistics
        x = rng.standard_normal((5, 1, 8, 8)) * 2 + 1
        out = net(npgrad.tensor(x))
        tout = tnet(torch.tensor(x))
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
        g = rng.standard_normal(out.shape)
        net.zero_grad()
        out.backward(g)
        tnet.zero_grad()
        tout.backward(torch.tensor(g))
    tparams = [p for p in tnet.parameters()]
    for (name, p), q in zip(net.named_parameters(), tparams):
        want = q.grad.numpy().T if name.endswith("9.weight") else q.grad.numpy()
        np.testing.assert_allclose(p.grad, want, rtol=1e-9, atol=1e-12, err_msg=name)
    for name, b in net.named_buffers():
        np.testing.assert_allclose(b, tnet.state_dict()[name].numpy(), rtol=1e-12, err_msg=name)
    net.eval()
    tnet.eval()
    x = rng.standard_normal((2, 1, 8, 8))
    np.testing.assert_allclose(
        net(npgrad.tensor(x)).data, tnet(torch.tensor(x)).detach().numpy(), rtol=1e-10
    )


def test_buffers_are_state_but_not_parameters_and_round_trip():
    a, b = _small_cnn(rng=0), _small_cnn(rng=1)
    assert [n for n, _ in a.named_buffers()] == [
        "1.running_mean", "1.running_var", "5.running_mean", "5.running_var",
    ]  # fmt: skip
    params = {n for n, _ in a.named_parameters()}
    assert "1.running_mean" not in params and {"1.weight", "1.bias", "0.weight"} <= params
    a(npgrad.tensor(np.random.default_rng(0).standard_normal((4, 1, 8, 8)), dtype=np.float32))
    state = a.state_dict()
    assert set(state) == params | {n for n, _ in a.named_buffers()}
    assert not np.array_equal(state["1.running_mean"], 0)  # training moved them
    buf = b.layers[1].running_mean  # the live array: loading copies into it
    b.load_state_dict(state)
    assert b.layers[1].running_mean is buf
    for name, arr in b.state_dict().items():
        np.testing.assert_array_equal(arr, state[name], err_msg=name)
    state["5.running_var"] = np.ones(7)
    with pytest.raises(CheckpointError, match="5.running_var has shape"):
        b.load_state_dict(state)


def test_train_and_eval_switch_batch_norm_between_batch_and_running_statistics():
    bn = nn.BatchNorm1d(3)
    x = npgrad.tensor(np.random.default_rng(0).standard_normal((8, 3)) * 5 + 2, dtype=np.float32)
    y = bn(x).data
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)  # batch statistics
    moved = bn.running_mean.copy()
    np.testing.assert_allclose(moved, 0.1 * x.data.mean(axis=0), rtol=1e-5)
    bn.eval()
    y_eval = bn(x).data
    np.testing.assert_array_equal(bn.running_mean, moved)  # eval never updates them
    want = (x.data - moved) / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(y_eval, want, rtol=1e-5)
    bn.train()
    bn(x)
    assert not np.array_equal(bn.running_mean, moved)


def test_conv2d_initialisation_and_shapes():
    conv = nn.Conv2d(16, 32, 3, padding=1, rng=0)
    assert conv.weight.shape == (32, 16, 3, 3) and conv.bias.shape == (32,)
    assert conv.weight.dtype == np.float32 and not conv.bias.data.any()
    assert abs(conv.weight.data.std() - np.sqrt(2 / (16 * 9))) < 0.01
    g = nn.Conv2d(16, 32, 3, init="glorot", rng=0).weight.data
    assert g.max() <= np.sqrt(6 / (16 * 9 + 32 * 9)) and g.max() > 0.9 * np.sqrt(6 / 432)
    assert nn.Conv2d(2, 3, (1, 2), bias=False).bias is None
    assert "Conv2d(16, 32" in repr(conv) and "BatchNorm2d(32" in repr(nn.BatchNorm2d(32))
    x = npgrad.tensor(np.zeros((2, 16, 28, 28), np.float32))
    assert conv(x).shape == (2, 32, 28, 28)
    assert nn.MaxPool2d(2)(conv(x)).shape == (2, 32, 14, 14)
    assert nn.AvgPool2d(3, stride=2, padding=1)(conv(x)).shape == (2, 32, 14, 14)
    assert nn.Flatten()(nn.MaxPool2d(4)(conv(x))).shape == (2, 32 * 49)


def test_the_planned_cnn_preset_builds_and_trains_one_step():
    from npgrad import optim

    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, rng=0), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, rng=0), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1568, 10, rng=0),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 16)
    opt = optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = npgrad.cross_entropy(net(npgrad.tensor(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert all(p.grad.dtype == np.float32 for p in net.parameters())


@pytest.mark.parametrize(
    "build, shape, match",
    [
        (lambda: nn.BatchNorm2d(3), (4, 3), "4-D"),
        (lambda: nn.BatchNorm1d(3), (4, 2), "3 channels"),
        (lambda: nn.Conv2d(3, 2, 3), (1, 2, 5, 5), "weight"),
    ],
)
def test_cnn_modules_reject_wrong_input_shapes(build, shape, match):
    with pytest.raises(npgrad.ShapeError, match=match):
        build()(npgrad.tensor(np.zeros(shape, np.float32)))


def test_cnn_module_arguments_are_checked_when_built():
    with pytest.raises(ConfigError, match="stride"):
        nn.Conv2d(1, 2, 3, stride=0)
    with pytest.raises(ConfigError, match="kernel size"):
        nn.Conv2d(1, 2, (3, 3, 3))
    with pytest.raises(ConfigError, match="momentum"):
        nn.BatchNorm2d(3, momentum=2.0)
    with pytest.raises(ConfigError, match="in_channels must be an int >= 1, got 0"):
        nn.Conv2d(0, 2, 3)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: nn.Conv2d(3.5, 4, 3), "in_channels must be an int"),
        (lambda: nn.Conv2d("3", 4, 3), "in_channels must be an int"),
        (lambda: nn.Conv2d(3, 4, 2.5), "kernel size must be an int or a pair"),
        (lambda: nn.Conv2d(3, 4, 3, stride=True), "stride must be an int or a pair"),
        (lambda: nn.BatchNorm2d(2.5), "num_features must be an int"),
        (lambda: nn.BatchNorm2d(3, eps=0), "eps must be a positive number"),
        (lambda: nn.BatchNorm2d(3, eps=float("nan")), "eps must be a positive number"),
        (lambda: nn.Linear(784.0, 10), "in_features must be an int"),
    ],
)
def test_non_integer_sizes_and_bad_eps_are_refused_not_truncated(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_set_rng_reaches_dropout_in_any_module_tree():
    net = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Dropout(0.5)))
    rng = np.random.default_rng(7)
    net.set_rng(rng)
    assert net.layers[1].layers[0].rng is rng
