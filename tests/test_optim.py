"""Optimizers and schedules against torch.optim, step by step."""

import numpy as np
import pytest

import npgrad
from npgrad import ConfigError, optim


def run_both(torch, make_ours, make_theirs, steps=6):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((5, 3))
    grads = [rng.standard_normal((5, 3)) for _ in range(steps)]
    p = npgrad.tensor(w0.copy(), requires_grad=True)
    tp = torch.tensor(w0.copy(), requires_grad=True)
    ours, theirs = make_ours([p]), make_theirs([tp])
    for g in grads:
        p.grad = g.copy()
        tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    return p.data, tp.detach().numpy()


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda p: optim.SGD(p, lr=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
        (
            lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
            lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9),
        ),
        (
            lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
            lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        ),
        (
            lambda p: optim.SGD(p, lr=0.1, weight_decay=0.1),
            lambda t, p: t.optim.SGD(p, lr=0.1, weight_decay=0.1),
        ),
        (lambda p: optim.Adam(p, lr=0.01), lambda t, p: t.optim.Adam(p, lr=0.01)),
        (
            lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1),
            lambda t, p: t.optim.Adam(p, lr=0.01, weight_decay=0.1),
        ),
        (
            lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
            lambda t, p: t.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        ),
    ],
)
def test_optimizers_match_torch(torch, ours, theirs):
    a, b = run_both(torch, ours, lambda p: theirs(torch, p))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_updates_are_in_place_and_allocation_free():
    p = npgrad.tensor(np.ones(4, np.float32), requires_grad=True)
    buf = p.data
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones(4, np.float32)
    opt.step()
    assert p.data is buf and p.data.dtype == np.float32 and np.all(p.data < 1)


def test_state_dict_round_trip_continues_identically():
    def make():
        p = npgrad.tensor(np.arange(4.0), requires_grad=True)
        return p, optim.Adam([p], lr=0.1)

    p1, o1 = make()
    for _ in range(3):
        p1.grad = np.ones(4)
        o1.step()
    p2, o2 = make()
    p2.data[...] = p1.data
    o2.load_state_dict(o1.state_dict())
    for p, o in ((p1, o1), (p2, o2)):
        p.grad = np.full(4, 0.5)
        o.step()
    np.testing.assert_array_equal(p1.data, p2.data)


def test_clip_grad_norm_matches_torch(torch):
    g = np.array([3.0, 4.0])
    p = npgrad.tensor(np.zeros(2), requires_grad=True)
    p.grad = g.copy()
    norm = optim.clip_grad_norm([p], 1.0)
    tp = torch.zeros(2, requires_grad=True)
    tp.grad = torch.tensor(g)
    tnorm = torch.nn.utils.clip_grad_norm_([tp], 1.0)
    assert norm == pytest.approx(float(tnorm)) == 5.0
    np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-9)


def test_onecycle_matches_torch(torch):
    total = 100
    sched = optim.OneCycle(0.01, total)
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.01)
    ts = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.01, total_steps=total, anneal_strategy="cos", cycle_momentum=False
    )
    for step in range(total):
        assert sched(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step
        opt.step()
        ts.step()


def test_cosine_with_warmup_and_step_decay():
    c = optim.make_schedule("cosine", 1.0, 110, warmup_steps=10)
    assert c(0) == pytest.approx(0.1) and c(9) == pytest.approx(1.0)
    assert (
        c(10) == pytest.approx(1.0) and c(60) == pytest.approx(0.5) and c(110) == pytest.approx(0.0)
    )
    s = optim.make_schedule("step", 1.0, 90, step_size=30, gamma=0.1)
    assert [s(0), s(30), s(89)] == pytest.approx([1.0, 0.1, 0.01])
    with pytest.raises(ConfigError, match="unknown schedule"):
        optim.make_schedule("linear", 1.0, 10)


def test_bad_learning_rate_is_refused():
    p = npgrad.tensor(np.zeros(1), requires_grad=True)
    with pytest.raises(ConfigError, match="learning rate"):
        optim.SGD([p], lr=-1)
