"""npgrad.compile: a replayed step gives the eager step's numbers, or runs eagerly and says why."""

import tracemalloc
import warnings

import numpy as np
import pytest

import npgrad
from npgrad import nn, optim
from npgrad.autodiff import apply
from npgrad.checking.gradcheck import all_ops, op_case
from npgrad.compiler import CompiledStep
from npgrad.errors import CompileWarning
from npgrad.ops import dense

RNG = np.random.default_rng(0)


def mlp(seed=0, dropout=0.0):
    layers = [nn.Linear(20, 16, rng=seed), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout, rng=seed + 10))
    return nn.Sequential(*layers, nn.Linear(16, 4, rng=seed + 1))


def cnn(seed=0):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=seed), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, rng=seed + 1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3, rng=seed + 2), nn.Linear(24, 3, rng=seed),
    )  # fmt: skip


def trainer_step(net, opt, clip=0.0, image=None):
    def step(x, y):
        t = npgrad.tensor(x)
        if image is not None:
            t = t.reshape(len(x), *image)
        logits = net(t)
        loss = npgrad.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        if clip:
            optim.clip_grad_norm(opt.params, clip)
        opt.step()
        return loss, logits

    return step


def pair(make_net, make_opt, **kw):
    """The same network and optimizer twice: one stepped eagerly, one compiled."""
    (a, b) = make_net(), make_net()
    oa, ob = make_opt(a.parameters()), make_opt(b.parameters())
    return (a, oa, trainer_step(a, oa, **kw)), (b, ob, npgrad.compile(trainer_step(b, ob, **kw)))


def assert_same_state(a, oa, b, ob):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert np.array_equal(p, q), name
    for (name, s), t in zip(oa.state_dict().items(), ob.state_dict().values()):
        assert np.array_equal(s, t), name


def batches(n, shape, classes, sizes):
    rng = np.random.default_rng(n)
    for size in sizes:
        yield rng.standard_normal((size, *shape)).astype(np.float32), rng.integers(0, classes, size)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: optim.SGD(ps, 0.1),
        lambda ps: optim.SGD(ps, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda ps: optim.Adam(ps, 1e-2),
        lambda ps: optim.AdamW(ps, 1e-2),
    ],
)
def test_compiled_mlp_steps_equal_eager_bit_for_bit(make_opt):
    (a, oa, eager), (b, ob, compiled) = pair(lambda: mlp(dropout=0.25), make_opt, clip=0.5)
    for x, y in batches(1, (20,), 4, [32, 32, 32, 32, 7, 32, 7]):  # a smaller last batch
        la, ga = eager(x, y)
        lb, gb = compiled(x, y)
        assert np.array_equal(la.data, lb.data) and np.array_equal(ga.data, gb.data)
    assert_same_state(a, oa, b, ob)
    assert compiled.replays == 5  # recorded at the first 32 and the first 7
    assert len(compiled.plans) == 2


def test_compiled_cnn_with_batch_norm_and_dropout_equals_eager():
    (a, oa, eager), (b, ob, compiled) = pair(cnn, lambda ps: optim.Adam(ps, 1e-2), image=(1, 8, 8))
    for x, y in batches(2, (64,), 3, [16] * 5):
        la, _ = eager(x, y)
        lb, _ = compiled(x, y)
        assert np.array_equal(la.data, lb.data)
    assert_same_state(a, oa, b, ob)  # running statistics included
    assert compiled.replays == 4
    # both relus after their pooling, and then over its output; both batch norms over
    # their convolution's output
    plan = compiled.plan(x, y)
    assert plan.rewrites == {"relu_after_max_pool": 2, "over_dead_input": 4, "vjp_over_gradient": 4}
    # the relus' and batch norms' vjps wrote over a gradient that nothing else held, on
    # every replay (4 replays)
    assert plan.wrote_over_g == 4 * 4
    text = compiled.plan(x, y).describe()
    assert text.count("= batch_norm(") == 2 and text.count(", out=v") == 4


def test_dropout_draws_a_fresh_mask_on_every_replay():
    net = nn.Sequential(nn.Dropout(0.5, rng=3))

    @npgrad.compile
    def step(x):
        return net(npgrad.tensor(x))

    x = np.ones((4, 50), dtype=np.float32)
    masks = [step(x).data for _ in range(4)]
    assert step.replays == 3
    assert all(not np.array_equal(masks[0], m) for m in masks[1:])
    eager = nn.Sequential(nn.Dropout(0.5, rng=3))
    assert all(np.array_equal(eager(npgrad.tensor(x)).data, m) for m in masks)


def test_eval_mode_gets_a_plan_of_its_own():
    net = mlp(dropout=0.5)

    @npgrad.compile
    def forward(x):
        return net(npgrad.tensor(x))

    x = RNG.standard_normal((5, 20)).astype(np.float32)
    with npgrad.no_grad():  # with gradients on, it would return a graph: it runs eagerly
        train_out = [forward(x).data for _ in range(2)]
        net.eval()
        eval_out = [forward(x).data for _ in range(2)]
        want = net(npgrad.tensor(x)).data
    assert all(np.array_equal(e, want) for e in eval_out)
    assert not np.array_equal(train_out[0], train_out[1])  # dropout in training mode
    assert len(next(iter(forward.plans.values()))) == 2  # one per mode, same signature


def test_the_replay_of_every_op_equals_its_eager_form():
    """Each op's replay is its own forward and vjp: a wrong replay of any op fails here."""
    for name, op in sorted(all_ops().items()):
        case = op_case(name, np.random.default_rng(5))
        # array parameters (labels, running statistics) are the step's keyword arguments
        arrays = {k: v for k, v in case.params.items() if isinstance(v, np.ndarray)}

        def run(*ts, case=case, op=op, **arrays):
            out = apply(op, *ts[:-1], **{**case.params, **arrays})
            (out * ts[-1]).sum().backward()
            return out

        compiled = npgrad.compile(run)
        g = npgrad.tensor(np.random.default_rng(6).standard_normal(op_case_out(op, case).shape))
        results = []
        for _ in range(3):
            ts = [npgrad.tensor(a.copy(), requires_grad=True) for a in case.inputs]
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                out = compiled(*ts, g, **arrays)
            results.append((out.data, [t.grad for t in ts]))
        assert compiled.replays == 2, name
        ts = [npgrad.tensor(a.copy(), requires_grad=True) for a in case.inputs]
        want = run(*ts, g, **arrays)
        for out, grads in results[1:]:
            np.testing.assert_array_equal(out, want.data, err_msg=name)
            for got, t in zip(grads, ts):
                np.testing.assert_array_equal(got, t.grad, err_msg=name)


def test_an_op_that_writes_over_its_input_gives_its_own_values():
    """The replay form ``f(x, out=x)`` of each op that has one equals ``f(x)``, vjp too."""
    ops = {name: op for name, op in all_ops().items() if op.writes_over_input}
    assert {"relu", "batch_norm"} <= set(ops)
    wrote_over = set()
    for name, op in sorted(ops.items()):
        for seed in range(4):
            case = op_case(name, np.random.default_rng(seed))
            want, saved = op.forward(*case.inputs, **case.params)
            x = case.inputs[0]
            layouts = [x.copy()]  # and channels-last, as a convolution leaves it
            if x.ndim > 2:
                layouts.append(np.moveaxis(np.moveaxis(x, 1, -1).copy(), -1, 1))
            for xi in layouts:
                got, saved_over = op.forward(xi, *case.inputs[1:], **case.params, out=xi)
                np.testing.assert_array_equal(got, want, err_msg=name)
                # it did write over x (batch norm: in training, where x is channels-last)
                layout_fits = xi.ndim == 2 or not xi.flags.c_contiguous
                if name == "relu" or (layout_fits and case.params.get("training", True)):
                    assert np.shares_memory(got, xi), name
                    wrote_over.add(name)
                g = np.random.default_rng(9).standard_normal(want.shape)
                for a, b in zip(op.vjp(saved, g), op.vjp(saved_over, g)):
                    np.testing.assert_array_equal(a, b, err_msg=name)
                if op.vjp_writes_over_g:  # and its vjp's replay form, over g
                    g_over = g.copy()
                    got_g = op.vjp(saved, g_over, out=g_over)
                    for a, b in zip(op.vjp(saved, g), got_g):
                        np.testing.assert_array_equal(a, b, err_msg=name)
    assert wrote_over == set(ops)  # each was seen writing over its input


@pytest.mark.parametrize(
    "between, applies",
    [
        (lambda h: npgrad.relu(h), True),  # linear -> relu: over the product
        (lambda h: npgrad.relu(h) + h, False),  # h is read again
        (lambda h: npgrad.relu(npgrad.exp(h * 0.01)), False),  # exp saves its output
        (
            lambda h: npgrad.relu(h.reshape(-1, 16)),
            False,
        ),  # a reshape may return a view: not declared
    ],
)
def test_writing_over_an_input_only_where_nothing_else_needs_it(between, applies):
    def build():
        lin, out = nn.Linear(20, 16, rng=0), nn.Linear(16, 4, rng=1)
        opt = optim.SGD([*lin.parameters(), *out.parameters()], 0.1)

        def step(x, y):
            loss = npgrad.cross_entropy(out(between(lin(npgrad.tensor(x)))), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return lin, out, step

    (la, oa, eager), (lb, ob, step) = build(), build()
    compiled = npgrad.compile(step)
    for x, y in batches(3, (20,), 4, [8] * 4):
        assert np.array_equal(eager(x, y).data, compiled(x, y).data)
    for p, q in zip([*la.parameters(), *oa.parameters()], [*lb.parameters(), *ob.parameters()]):
        assert np.array_equal(p.data, q.data)
    assert compiled.plan(x, y).rewrites["over_dead_input"] == int(applies)


def op_case_out(op, case):
    return op.forward(*case.inputs, **case.params)[0]


# --------------------------------------------------------------------------- fallback


def fallback(step, *args):
    """Call ``step`` three times; the CompileWarning it gave and its results."""
    compiled = npgrad.compile(step)
    with pytest.warns(CompileWarning) as caught:
        out = [compiled(*args) for _ in range(3)]
    assert len(caught) == 1  # once, not on every call
    assert compiled.replays == 0
    return str(caught[0].message), out


def test_reading_values_in_python_runs_eagerly():
    w = npgrad.tensor(np.ones(3, dtype=np.float32), requires_grad=True)

    def step(x):
        y = (npgrad.tensor(x) * w).sum()
        return y * 2.0 if y.item() > 0 else y  # data-dependent control flow

    pos, neg = np.ones(3, np.float32), -np.ones(3, np.float32)
    message, _ = fallback(step, pos)
    assert "item()" in message and "another path" in message
    compiled = npgrad.compile(step)
    with pytest.warns(CompileWarning):
        compiled(pos)
    assert compiled(neg).item() == -3.0  # eager, so the other branch is taken


def test_an_array_made_inside_the_step_is_refused_not_frozen():
    rng = np.random.default_rng(0)

    def step(x):
        noise = npgrad.tensor(rng.standard_normal(x.shape).astype(np.float32))
        return npgrad.tensor(x) + noise

    message, outs = fallback(step, np.zeros(4, np.float32))
    assert "made inside the step from ndarray data that is no argument" in message
    assert not np.array_equal(outs[1].data, outs[2].data)  # fresh noise every call


class FrozenClockOp(dense.NegOp):
    """A user's op that reads state no replay could know of."""

    name = ""  # not registered in the op table
    replayable = False


def test_an_op_without_a_replay_form_runs_eagerly_and_is_named():
    FrozenClockOp.name = "frozen_clock"
    try:
        message, outs = fallback(lambda x: apply(FrozenClockOp, npgrad.tensor(x)), np.ones(2))
    finally:
        FrozenClockOp.name = ""
    assert "op 'frozen_clock'" in message
    assert np.array_equal(outs[2].data, -np.ones(2))


W = npgrad.tensor(np.ones(3), requires_grad=True)


@pytest.mark.parametrize(
    "step, words",
    [
        (lambda x: float(npgrad.tensor(x).sum().data), "returns a float"),
        (lambda x: npgrad.tensor(x) * float((npgrad.tensor(x) > 0).sum()), "comparison (>)"),
        (lambda x: npgrad.grad((W * npgrad.tensor(x)).sum(), W)[0], "npgrad.grad()"),
        (lambda x: npgrad.tensor(x).numpy(), "numpy()"),
    ],
)
def test_other_unreplayable_steps(step, words):
    message, _ = fallback(step, np.ones(3))
    assert words in message


def test_create_graph_runs_eagerly():
    w = npgrad.tensor(np.ones(3), requires_grad=True)

    def step(x):
        y = (npgrad.tensor(x) * w * w).sum()
        y.backward(create_graph=True)
        return y

    message, _ = fallback(step, np.ones(3))
    assert "create_graph" in message


def test_a_python_side_effect_between_ops_is_documented_as_running_once():
    """What replays is ops and recorded calls: a plain Python counter runs at the record only."""
    calls = []

    @npgrad.compile
    def step(x):
        calls.append(1)
        return npgrad.tensor(x) * 2.0

    for _ in range(3):
        out = step(np.ones(2))
    assert len(calls) == 1 and np.array_equal(out.data, [2.0, 2.0])


def test_disabled_runs_eagerly_every_time():
    step = CompiledStep(lambda x: npgrad.tensor(x) * 2.0, enabled=False)
    for _ in range(3):
        step(np.ones(2))
    assert step.replays == 0 and not step.plans


# --------------------------------------------------------------------------- memory


def test_a_compiled_step_never_holds_more_memory_than_the_eager_one():
    (_, _, eager), (_, _, compiled) = pair(
        lambda: nn.Sequential(nn.Linear(200, 300, rng=0), nn.ReLU(), nn.Linear(300, 10, rng=1)),
        lambda ps: optim.Adam(ps, 1e-3),
    )
    x = RNG.standard_normal((512, 200)).astype(np.float32)
    y = RNG.integers(0, 10, 512)
    peaks = {}
    for name, step in (("eager", eager), ("compiled", compiled)):
        step(x, y)
        step(x, y)  # the compiled one replays from here
        tracemalloc.start()
        step(x, y)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert compiled.replays == 2
    assert peaks["compiled"] <= peaks["eager"], peaks


def test_a_buffer_replaced_by_assignment_gets_a_new_record():
    """Batch norm's running statistics are op parameters, held by reference: assigning a
    new array to the buffer must not leave the replay updating the old one."""
    net = nn.Sequential(nn.BatchNorm2d(2))

    @npgrad.compile
    def forward(x):
        return net(npgrad.tensor(x))

    x = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    with npgrad.no_grad():  # training mode: batch statistics, running ones updated
        forward(x)
        forward(x)
        net._modules["0"].running_mean = np.zeros(2, np.float32)  # a new array, not in place
        forward(x)
    assert not np.array_equal(net._modules["0"].running_mean, np.zeros(2))  # updated
    assert len(next(iter(forward.plans.values()))) == 2


def test_the_same_array_passed_twice_is_a_signature_of_its_own():
    @npgrad.compile
    def step(a, b):
        return npgrad.tensor(a) - npgrad.tensor(b)

    x, y = np.ones(3), np.zeros(3)
    step(x, x)
    step(x, x)
    assert np.array_equal(step(x, y).data, np.ones(3))  # not the (x, x) plan: 0
    assert np.array_equal(step(x, y).data, np.ones(3))
