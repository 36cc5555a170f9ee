"""The library on a device namespace: tensors, autodiff (higher order too), modules,
optimizers and the compiled step on the CuPy stand-in (``tests/fakecupy.py``), which
refuses every NumPy call on its arrays. NumPy computes underneath, so a device run
must give the host run's numbers exactly (same kernels, same order)."""

import numpy as np
import pytest

import npgrad
from npgrad import nn, optim
from npgrad.errors import DeviceError
from tests import fakecupy


@pytest.fixture
def cuda():
    yield fakecupy.install()
    fakecupy.uninstall()


def test_tensor_to_and_back(cuda):
    t = npgrad.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    d = t.to("cuda")
    assert d.device == "cuda" and isinstance(d.data, fakecupy.ndarray) and d.requires_grad
    assert d.to("cuda") is d and t.to("cpu") is t
    back = d.to("cpu")
    assert back.device == "cpu" and np.array_equal(back.data, t.data)
    assert isinstance(d.numpy(), np.ndarray) and "device='cuda'" in repr(d)


def test_mixing_devices_is_an_error_not_a_silent_copy(cuda):
    a = npgrad.tensor(np.ones(3)).to("cuda")
    with pytest.raises(DeviceError, match=r"different devices \(cpu and cuda\): move them"):
        a + npgrad.tensor(np.ones(3))


def _mlp_loss(x, w1, w2):
    h = npgrad.tanh(x @ w1)
    return npgrad.cross_entropy(npgrad.relu(h) @ w2 + h.sum(axis=1, keepdims=True), LABELS)


LABELS = np.array([0, 2, 1, 2])


def _inputs():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s) for s in ((4, 5), (5, 6), (6, 3))]


def test_backward_on_the_device_equals_the_host(cuda):
    host = [npgrad.tensor(a, requires_grad=True) for a in _inputs()]
    dev = [t.to("cuda") for t in host]
    _mlp_loss(*host).backward()
    loss = _mlp_loss(*dev)
    loss.backward()
    assert loss.device == "cuda"
    for h, d in zip(host, dev):
        assert isinstance(d.grad, fakecupy.ndarray)
        np.testing.assert_array_equal(d.grad.get(), h.grad)


def test_higher_order_on_the_device_equals_the_host(cuda):
    xs = _inputs()
    vs = [np.random.default_rng(1).standard_normal(a.shape) for a in xs]
    want = npgrad.hvp(_mlp_loss, xs, vs)
    got = npgrad.hvp(_mlp_loss, [cuda.asarray(a) for a in xs], [cuda.asarray(v) for v in vs])
    for g, w in zip(got, want):
        assert isinstance(g, fakecupy.ndarray)
        np.testing.assert_allclose(g.get(), w, rtol=1e-12, atol=1e-12)
    x = npgrad.tensor(np.array([0.3, -1.2, 2.0])).to("cuda").requires_grad_()
    (g,) = npgrad.grad(npgrad.sigmoid(x).sum(), [x], create_graph=True)
    (gg,) = npgrad.grad(g.sum(), [x])
    s = 1 / (1 + np.exp(-np.array([0.3, -1.2, 2.0])))
    np.testing.assert_allclose(gg.numpy(), s * (1 - s) * (1 - 2 * s), rtol=1e-12)


def _cnn(dropout=0.0):
    layers = [
        nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, rng=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(),
    ]  # fmt: skip
    if dropout:
        layers.append(nn.Dropout(dropout, rng=3))
    return nn.Sequential(*layers, nn.Linear(24, 3, rng=2))


def _mlp(dropout=0.0):
    return nn.MLP([64, 16, 3], dropout=dropout, rng=0)


MODELS = {"mlp": _mlp, "cnn": _cnn}
OPTIMS = {
    "sgd": lambda ps: optim.SGD(ps, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda ps: optim.Adam(ps, 1e-2),
    "adamw": lambda ps: optim.AdamW(ps, 1e-2),
}


def _train(kind, opt_name, device, compiled, dropout=0.0, steps=4):
    net = MODELS[kind](dropout)
    if device != "cpu":
        net.to(device)
    opt = OPTIMS[opt_name](net.parameters())
    x = np.random.default_rng(5).random((8, 1, 8, 8), dtype=np.float32)
    y = np.arange(8) % 3
    if device != "cpu":
        x, y = npgrad.ops.device.to_device(x, device), npgrad.ops.device.to_device(y, device)

    def step(xb, yb):
        inp = npgrad.tensor(xb)
        logits = net(inp.reshape(len(xb), -1) if kind == "mlp" else inp)
        loss = npgrad.cross_entropy(logits, yb)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm(opt.params, 5.0)
        opt.step()
        return loss

    run = npgrad.compile(step) if compiled else step
    losses = [float(run(x, y).data) for _ in range(steps)]
    net.eval()
    with npgrad.no_grad():
        inp = npgrad.tensor(x)
        out = net(inp.reshape(len(x), -1) if kind == "mlp" else inp).numpy()
    return losses, net.state_dict(), opt.state_dict(), out


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("opt_name", sorted(OPTIMS))
@pytest.mark.filterwarnings("error::npgrad.CompileWarning")  # the device step replays
def test_a_training_step_on_the_device_equals_the_host(cuda, kind, opt_name):
    want = _train(kind, opt_name, "cpu", compiled=False)
    for compiled in (False, True):
        got = _train(kind, opt_name, "cuda", compiled)
        assert got[0] == want[0]
        for part in (1, 2):  # the model's and the optimizer's state: host arrays, equal
            assert got[part].keys() == want[part].keys()
            for k in want[part]:
                assert isinstance(got[part][k], np.ndarray), k
                np.testing.assert_array_equal(got[part][k], want[part][k])
        np.testing.assert_array_equal(got[3], want[3])


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.filterwarnings("error::npgrad.CompileWarning")
def test_dropout_draws_on_the_device_and_compiled_equals_eager(cuda, kind):
    eager = _train(kind, "adam", "cuda", compiled=False, dropout=0.3)
    compiled = _train(kind, "adam", "cuda", compiled=True, dropout=0.3)
    assert eager[0] == compiled[0]
    assert eager[0] != _train(kind, "adam", "cuda", compiled=False, dropout=0.0)[0]


def test_a_model_moved_after_its_optimizer_was_made_carries_the_state(cuda):
    net = _mlp()
    opt = optim.Adam(net.parameters(), 1e-2)
    x, y = np.random.default_rng(0).random((4, 64)), np.array([0, 1, 2, 0])
    for device in ("cpu", "cuda", "cpu"):
        net.to(device)
        xd = npgrad.ops.device.to_device(x, device)
        yd = npgrad.ops.device.to_device(y, device)
        loss = npgrad.cross_entropy(net(npgrad.tensor(xd)), yd)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert all(p.device == device for p in net.parameters())
    assert opt.steps == 3 and all(isinstance(v, np.ndarray) for v in opt.state_dict().values())


def test_load_state_dict_moves_host_arrays_to_the_device(cuda):
    src = _cnn()
    dst = _cnn().to("cuda")
    for p in src.parameters():
        p.data += 1
    dst.load_state_dict(src.state_dict())
    assert dst.device == "cuda"
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_an_unknown_device_is_a_clear_error():
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        npgrad.tensor([1.0]).to("gpu")


@pytest.mark.filterwarnings("error::npgrad.CompileWarning")
def test_a_device_plan_describes_itself_and_keeps_cpu_and_gpu_plans_apart(cuda):
    net = _mlp()
    opt = optim.SGD(net.parameters(), 0.1)

    def step(xb, yb):
        loss = npgrad.cross_entropy(net(npgrad.tensor(xb) * 0.5), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    run = npgrad.compile(step)
    x, y = np.random.default_rng(0).random((4, 64)), np.array([0, 1, 2, 0])
    run(x, y)  # records a CPU plan
    net.to("cuda")
    xd, yd = cuda.asarray(x), cuda.asarray(y)
    for _ in range(2):
        loss = run(xd, yd)  # records, then replays, a plan of its own
    assert loss.device == "cuda" and run.replays == 1
    assert "0.5" in run.plan(xd, yd).describe()
