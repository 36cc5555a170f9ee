"""What a recording binds anew on every replay, and what it refuses (eager, one warning).

Each case runs the same step eagerly and compiled on twin models, several calls (so that
several replays happen), and compares everything the step changed, bit for bit. The cases
come from a hostile trial of ``npgrad.compile``: each one replayed a wrong result before.
"""

import math
import types
import warnings
from collections import namedtuple

import numpy as np
import pytest

import npgrad
from npgrad import nn, optim
from npgrad.errors import CompileWarning

RS = np.random.default_rng(0)
X = [RS.standard_normal((4, 3)).astype(np.float32) for _ in range(5)]
Y = [RS.integers(0, 2, 4) for _ in range(5)]


def twins(build, calls=5):
    """``build(enabled)`` -> ``run(i)`` returning arrays; (eager runs, compiled runs, warnings)."""
    eager = build(False)
    e = [[np.array(a) for a in eager(i)] for i in range(calls)]  # copies: parameters move on
    compiled = build(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = [[np.array(a) for a in compiled(i)] for i in range(calls)]
    said = [str(w.message) for w in caught if issubclass(w.category, CompileWarning)]
    return e, c, said


def assert_same(e, c):
    for i, (a, b) in enumerate(zip(e, c)):
        for j, (u, v) in enumerate(zip(a, b)):
            assert np.array_equal(u, v, equal_nan=True), f"call {i}, result {j}: {u} != {v}"


def same_and_told(build, words=None, calls=5):
    """The eager and compiled runs agree; the compiled one was told ``words`` once (a refusal),
    or nothing when ``words`` is None (it replayed)."""
    e, c, said = twins(build, calls)
    assert_same(e, c)
    if words is None:
        assert not said, said
    else:
        assert len(said) == 1 and words in said[0], said


def trained(enabled, opt, loss_of, returns=None):
    """A training step: the loss ``loss_of`` gives for the step's arguments, backward,
    ``opt``'s update; returns the loss or ``returns(loss)``."""

    @npgrad.compile(enabled=enabled)
    def step(*args, **kwargs):
        loss = loss_of(*args, **kwargs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss if returns is None else returns(loss)

    return step


def mlp_step(enabled, body=None, opt_cls=optim.SGD, returns=None):
    """The usual step on a small MLP; ``body(net, opt, x, y)`` -> loss replaces its middle,
    ``returns(net, loss)`` what it returns."""
    net = nn.MLP([3, 5, 2], rng=0)
    opt = opt_cls(net.parameters(), 0.1)

    def default(net, opt, x, y):
        return npgrad.cross_entropy(net(npgrad.tensor(x)), y)

    def loss_of(x, y):
        return (body or default)(net, opt, x, y)

    return net, opt, trained(enabled, opt, loss_of, returns and (lambda loss: returns(net, loss)))


def state(net):
    return [p.data for p in net.parameters()]


# ----------------------------------------------------------------------- bound anew


def test_keyword_arguments_are_bound_on_every_replay():
    def build(enabled):
        net, _, step = mlp_step(enabled)
        return lambda i: [step(x=X[i], y=Y[i]).data, *state(net)]

    same_and_told(build)


def test_a_recorded_call_on_an_argument_tensor_gets_this_calls_tensor():
    def build(enabled):
        net = nn.MLP([3, 5, 2], rng=0)
        xs = [npgrad.tensor(x, requires_grad=True) for x in X[:3]]

        @npgrad.compile(enabled=enabled)
        def input_grad(xt, y):
            xt.zero_grad()  # recorded before xt is used: bound to the argument, not its object
            net.zero_grad()
            npgrad.cross_entropy(net(xt), y).backward()

        def run(i):
            input_grad(xs[i % 3], Y[0])
            return [xs[i % 3].grad]

        return run

    same_and_told(build, None, calls=6)


def test_returned_parameters_and_namedtuples_are_what_the_eager_step_returns():
    Out = namedtuple("Out", "loss bias")

    def build(enabled):
        net, opt, step = mlp_step(enabled, returns=lambda net, loss: Out(loss, net[0].bias))

        def run(i):
            out = step(X[i], Y[i])
            assert isinstance(out, Out) and out.bias is net[0].bias
            return [out.loss.data, out.bias.grad]

        return run

    same_and_told(build)


def test_a_compiled_step_called_inside_another_is_recorded_there():
    def build(enabled):
        net, _, inner = mlp_step(enabled)
        outer = npgrad.compile(lambda x, y: inner(x, y), enabled=enabled)
        return lambda i: [outer(X[i], Y[i]).data, *state(net)]

    same_and_told(build)


def test_an_optimizer_of_ones_own_is_replayed_whatever_its_step_does():
    class SignSGD(optim.Optimizer):
        def step(self):  # not marked replayable: the class makes it so
            for p in self.params:
                p.data -= self.lr * np.sign(p.grad)

    def build(enabled):
        net, _, step = mlp_step(enabled, opt_cls=SignSGD)
        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    same_and_told(build)


def test_a_detached_value_is_that_value_without_its_graph():
    """``detach()`` in a step (a stop-gradient, a returned copy of the loss) replays."""

    def body(net, opt, x, y):
        h = net[0](npgrad.tensor(x))
        return npgrad.cross_entropy(net[2](npgrad.relu(h.detach()) + npgrad.relu(h)), y)

    def build(enabled):
        net, opt, _ = mlp_step(enabled)

        step = trained(
            enabled, opt, lambda x, y: body(net, opt, x, y), returns=lambda loss: loss.detach()
        )

        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    same_and_told(build)


def test_a_recorded_call_given_an_argument_array_gets_this_calls_array():
    seen = []

    @npgrad.tracing.replayable
    def log_batch(a):
        seen.append(float(a.sum()))

    def build(enabled):
        net, opt, _ = mlp_step(enabled)

        @npgrad.compile(enabled=enabled)
        def step(x, y):
            log_batch(x)
            loss = npgrad.cross_entropy(net(npgrad.tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    e, c, said = twins(build)
    assert_same(e, c)
    assert not said and seen[:5] == seen[5:] and len(set(seen)) == 5


# ----------------------------------------------------------------------- guards


def change_between_calls(change):
    """A dropout-and-batch-norm step; ``change(net, opt)`` runs before the third call."""

    def build(enabled):
        net = nn.Sequential(
            nn.Linear(3, 6, rng=0),
            nn.BatchNorm1d(6),
            nn.Dropout(0.5, rng=1),
            nn.Linear(6, 2, rng=2),
        )
        opt = optim.SGD(net.parameters(), 0.1)

        step = trained(enabled, opt, lambda x, y: npgrad.cross_entropy(net(npgrad.tensor(x)), y))

        def run(i):
            if i == 2:
                change(net, opt)
            return [step(X[i], Y[i]).data, *state(net), net[1].running_mean]

        return run

    return build


@pytest.mark.parametrize(
    "change",
    [
        lambda net, opt: setattr(net[2], "p", 0.0),
        lambda net, opt: net.set_rng(np.random.default_rng(7)),
        lambda net, opt: setattr(net[1], "momentum", 0.9),
        lambda net, opt: setattr(net[1], "training", False),
        lambda net, opt: setattr(net[0].bias, "requires_grad", False),  # a frozen layer
    ],
    ids=["dropout p", "generator", "momentum", "one module's mode", "requires_grad"],
)
def test_a_module_attribute_changed_between_calls_gets_a_new_record(change):
    e, c, said = twins(change_between_calls(change))
    assert_same(e, c)
    assert not said


def test_a_parameter_replaced_by_assignment_gets_a_new_record():
    def build(enabled):
        net, opt, step = mlp_step(enabled)

        def run(i):
            if i == 2:
                net[0].weight = nn.Parameter(np.ones((3, 5), np.float32))
                opt.params[0] = net[0].weight
            return [step(X[i], Y[i]).data, *state(net)]

        return run

    e, c, said = twins(build)
    assert_same(e, c)


def test_a_parameter_whose_data_changes_dtype_gets_a_new_record():
    def build(enabled):
        net = nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 3, rng=1))
        opt = optim.SGD(net.parameters(), 0.1)

        step = trained(enabled, opt, lambda x, y: npgrad.cross_entropy(net(npgrad.tensor(x)), y))

        rng = np.random.default_rng(0)

        def run(i):
            if i == 2:
                for p in net.parameters():
                    p.data = p.data.astype(np.float64)
            x = rng.normal(size=(5, 4)).astype(np.float32)
            return [step(x, rng.integers(0, 3, 5)).data, *state(net)]

        return run

    e, c, said = twins(build)
    assert_same(e, c)


class Scaled:
    """A mixin whose forward reads an attribute: the module it is mixed into is guarded."""

    def forward(self, x):
        return (x @ self.weight + self.bias) * self.scale


class ScaledLinear(Scaled, nn.Linear):
    scale = 1.0


def test_a_forward_from_a_mixin_is_guarded_too():
    def build(enabled):
        lin = ScaledLinear(3, 2, rng=0)
        f = npgrad.compile(lambda x: lin(npgrad.tensor(x)), enabled=enabled)

        def run(i):
            if i == 2:
                lin.scale = 3.0
            with npgrad.no_grad():
                return [f(X[i]).data]

        return run

    same_and_told(build)


def test_a_refused_state_keeps_the_plans_of_the_others():
    """An eval-mode step that cannot replay runs eagerly; back in training mode, the
    training plan replays again."""
    net = nn.MLP([3, 5, 2], rng=0)
    calls = []

    @npgrad.compile
    def f(x):
        out = net(npgrad.tensor(x))
        if not net.training:
            out.sum().item()  # read in Python: refused, in this mode only
        calls.append(net.training)
        return out

    with npgrad.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(X[0])
        f(X[0])
        net.eval()
        f(X[0])
        f(X[0])
        net.train()
        f(X[0])
    assert f.replays == 2 and calls == [True, False, False]  # the last call replayed
    assert len(caught) == 1


def test_a_module_called_through_forward_is_guarded_too():
    def build(enabled):
        lin, bn = nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4)

        @npgrad.compile(enabled=enabled)
        def f(x):
            return bn.forward(lin.forward(npgrad.tensor(x)))

        def run(i):
            if i == 2:
                bn.eval()
            with npgrad.no_grad():
                return [f(X[i]).data]

        return run

    same_and_told(build)


# ----------------------------------------------------------------------- signatures


class Factor:
    def __init__(self, value):
        self.value = value


@pytest.mark.parametrize(
    "value",
    [
        lambda i: [0.0, -0.0][i % 2],  # equal, and hashed alike: 1 / v tells them apart
        lambda i: np.float32(1.0 / (i + 1)),  # made anew each call: CPython reuses the id
        lambda i: (i % 4, 1),
        lambda i: Factor(i + 1.0),  # an object: by identity, kept alive so it is not reused
    ],
    ids=["signed zeros", "numpy scalars", "tuples", "objects"],
)
def test_plain_values_count_by_value_not_by_identity(value):
    x = np.arange(1, 13, dtype=np.float32).reshape(4, 3)

    def build(enabled):
        w = nn.Parameter(np.ones(3, np.float32))

        @npgrad.compile(enabled=enabled)
        def f(x, v):
            t = npgrad.tensor(x) * w
            if isinstance(v, Factor):
                return t * v.value  # Python reads it at the record: it is in the plan
            return t[v] if isinstance(v, tuple) else 1.0 / (t * v)

        def run(i):
            with npgrad.no_grad():
                return [f(x, value(i)).data]

        return run

    with np.errstate(divide="ignore"):
        e, c, said = twins(build, calls=8)
    assert_same(e, c)


def test_too_many_recordings_warn_once_and_run_eagerly():
    from npgrad.compiler import MAX_PLANS

    step = npgrad.compile(lambda x, v: (npgrad.tensor(x) * v).sum())
    x = np.ones(3, np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with npgrad.no_grad():
            results = [float(step(x, float(v)).data) for v in range(MAX_PLANS + 10)]
    assert results == [3.0 * v for v in range(MAX_PLANS + 10)]
    assert len(caught) == 1 and f"more than {MAX_PLANS} recordings" in str(caught[0].message)
    assert len(step.plans) == MAX_PLANS


# ----------------------------------------------------------------------- refused


def labels(fn):
    return lambda net, opt, x, y: npgrad.cross_entropy(net(npgrad.tensor(x)), fn(y))


REFUSED = {
    "labels converted": (labels(lambda y: y.astype(np.int32)), "is an array that is no argument"),
    "labels raveled": (labels(lambda y: y.ravel()), "is an array that is no argument"),
    "fancy index": (
        lambda net, opt, x, y: -npgrad.log_softmax(net(npgrad.tensor(x)))[np.arange(4), y].mean(),
        "holds arrays",
    ),
    "labels in a Tensor": (
        lambda net, opt, x, y: npgrad.cross_entropy(
            net(npgrad.tensor(x)), npgrad.tensor(y.astype(np.int64))
        ),
        "from ndarray data that is no argument",
    ),
    "a number computed with NumPy": (
        lambda net, opt, x, y: npgrad.cross_entropy(net(npgrad.tensor(x) - x.mean()), y),
        "from float32 data that is no argument",
    ),
    "a converted one-element argument": (
        lambda net, opt, x, y: (
            npgrad.cross_entropy(net(npgrad.tensor(x)), y)
            * npgrad.tensor(y[:1], dtype=np.float32).sum()
        ),
        "conversion of argument 1",
    ),
    "a leaf made inside": (
        lambda net, opt, x, y: (
            npgrad.cross_entropy(net(npgrad.tensor(x)), y)
            * npgrad.tensor(np.float32(2.0), requires_grad=True)
        ),
        "requires grad is made inside",
    ),
    "a part of an argument": (
        lambda net, opt, x, y: (
            npgrad.cross_entropy(net(npgrad.tensor(x)), y) * npgrad.tensor(y[:1]).sum()
        ),
        "a part or a conversion of argument 1",
    ),
}


def clipped(net, opt, x, y, params, then):
    """A step that clips between backward and the update; ``then(norm)`` after clipping."""
    opt.zero_grad()
    loss = npgrad.cross_entropy(net(npgrad.tensor(x)), y)
    loss.backward()
    then(optim.clip_grad_norm(params(net), 0.01), opt)
    return loss


REFUSED_CLIPPED = {
    "math.isfinite on the norm": (
        lambda net: net.parameters(),
        lambda norm, opt: math.isfinite(norm) and opt.step(),
        "uses what clip_grad_norm() returned",
    ),
    "a generator to a recorded call": (
        lambda net: (p for p in net.parameters()),
        lambda norm, opt: opt.step(),
        "given an iterator",
    ),
    "a branch on a recorded call's value": (
        lambda net: net.parameters(),
        lambda norm, opt: norm < 1.0 and opt.step(),
        "uses what clip_grad_norm() returned",
    ),
}


@pytest.mark.parametrize("case", REFUSED_CLIPPED)
def test_a_recorded_call_that_a_replay_could_not_repeat_runs_eagerly(case):
    params, then, words = REFUSED_CLIPPED[case]

    def build(enabled):
        net = nn.MLP([3, 5, 2], rng=0)
        opt = optim.SGD(net.parameters(), 0.1)
        step = npgrad.compile(lambda x, y: clipped(net, opt, x, y, params, then), enabled=enabled)
        return lambda i: [step(X[i], 10 * Y[i] % 2).data, *state(net)]

    same_and_told(build, words)


@pytest.mark.parametrize("case", REFUSED)
def test_what_a_replay_could_not_reproduce_runs_eagerly_after_one_warning(case):
    body, words = REFUSED[case]

    def build(enabled):
        net, _, step = mlp_step(enabled, body)
        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    same_and_told(build, words)


def test_an_optimizer_step_given_a_closure_is_refused():
    class ClosureSGD(optim.SGD):
        def step(self, closure=None):
            if closure is not None:
                closure()
            super().step()

    def build(enabled):
        net, opt, _ = mlp_step(enabled, opt_cls=ClosureSGD)

        @npgrad.compile(enabled=enabled)
        def step(x, y):
            def closure():
                opt.zero_grad()
                npgrad.cross_entropy(net(npgrad.tensor(x)), y).backward()

            opt.step(closure)

        def run(i):
            step(X[i], Y[i])
            return state(net)

        return run

    same_and_told(build, "given a function")


def test_an_argument_with_a_graph_from_outside_the_step_is_refused():
    def build(enabled):
        enc, head = nn.Linear(3, 5, rng=0), nn.Linear(5, 2, rng=1)
        opt = optim.SGD(enc.parameters() + head.parameters(), 0.1)

        step = trained(enabled, opt, lambda feats, y: npgrad.cross_entropy(head(feats), y))

        return lambda i: [step(enc(npgrad.tensor(X[i])), Y[i]).data, enc.bias.data]

    same_and_told(build, "computed before the step")


def test_a_tensor_returned_with_a_graph_to_differentiate_outside_is_refused():
    def build(enabled):
        net = nn.MLP([3, 5, 2], rng=0)
        forward = npgrad.compile(lambda x: net(npgrad.tensor(x)), enabled=enabled)

        def run(i):
            net.zero_grad()
            npgrad.cross_entropy(forward(X[i]), Y[i]).backward()
            return [p.grad for p in net.parameters()]

        return run

    same_and_told(build, "returns a Tensor with a graph that no backward() in it went")


def test_a_returned_container_of_another_kind_is_refused_not_a_traceback():
    class Record(dict):
        pass

    def build(enabled):
        net, opt, step = mlp_step(enabled, returns=lambda net, loss: Record(loss=loss))

        return lambda i: [step(X[i], Y[i])["loss"].data, *state(net)]

    same_and_told(build, "returns a Record")


# ----------------------------------------------------------------------- rewrites


def test_relu_and_a_padded_pooling_are_not_swapped():
    """A window of padding alone pools to -inf after the relu, to 0 before it."""
    x = RS.standard_normal((2, 1, 3, 3)).astype(np.float32)

    def build(enabled):
        net = nn.Sequential(
            nn.Conv2d(1, 2, 2, rng=0), nn.ReLU(), nn.MaxPool2d(2, stride=1, padding=1, dilation=3)
        )

        @npgrad.compile(enabled=enabled)
        def step(x):
            out = net(npgrad.tensor(x))
            net.zero_grad()
            out.sum().backward()
            return out

        return lambda i: [step(x).data, *(p.grad for p in net.parameters())]

    e, c, said = twins(build)
    assert_same(e, c)
    assert np.isneginf(e[0][0]).all()


def test_an_activation_of_a_scalar_product_is_not_written_over_it():
    """``x @ w`` of two vectors is a NumPy scalar, which no op can write into."""
    rs = np.random.default_rng(1)
    xs = [rs.standard_normal(3).astype(np.float32) for _ in range(5)]
    w0 = rs.standard_normal(3).astype(np.float32)

    def build(enabled):
        w = nn.Parameter(w0.copy())
        opt = optim.SGD([w], 0.1)

        step = trained(enabled, opt, lambda x: npgrad.relu(npgrad.tensor(x) @ w))

        return lambda i: [step(xs[i]).data, w.data]

    same_and_told(build)


# ----------------------------------------------------------------------- a second trial


def test_tensors_or_arrays_inside_a_container_argument_are_refused():
    def build(enabled):
        net, opt, _ = mlp_step(enabled)

        @npgrad.compile(enabled=enabled)
        def step(batch):
            x, y = batch
            loss = npgrad.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return lambda i: [step((npgrad.tensor(X[i]), Y[i])).data, *state(net)]

    same_and_told(build, "holds Tensors or arrays in a tuple")


def test_a_parameter_passed_as_an_argument_is_refused():
    def build(enabled):
        net = nn.Sequential(nn.Linear(3, 3, rng=0), nn.ReLU(), nn.Linear(3, 3, rng=1))
        opt = optim.SGD(net.parameters(), 0.1)

        step = trained(
            enabled,
            opt,
            lambda x, y, p: npgrad.cross_entropy(net(npgrad.tensor(x)), y) + 0.01 * (p * p).sum(),
        )  # a penalty on one chosen weight

        chosen = [net[0].weight, net[2].weight]
        return lambda i: [step(X[i], Y[i], chosen[i % 2]).data, *state(net)]

    same_and_told(build, "is a parameter of a module the step runs")


def test_two_tensors_over_one_array_are_not_the_same_tensor_twice():
    def build(enabled):
        f = npgrad.compile(lambda a, b: (a * b * b).sum().backward(), enabled=enabled)

        def run(i):
            t = npgrad.tensor(np.full(2, i + 1.0, np.float32), requires_grad=True)
            u = t if i == 0 else npgrad.tensor(t, requires_grad=True)
            f(t, u)
            return [t.grad, u.grad if u is not t else t.grad]

        return run

    e, c, said = twins(build, calls=4)
    assert_same(e, c)


@pytest.mark.parametrize("where", ["closed over", "an argument"])
def test_a_tensor_with_a_graph_from_before_the_step_is_refused(where):
    def build(enabled):
        enc, head = nn.Linear(3, 3, rng=0), nn.Linear(3, 2, rng=1)
        prompt = enc(npgrad.tensor(np.ones((1, 3), np.float32)))

        @npgrad.compile(enabled=enabled)
        def step(x, y, extra):
            enc.zero_grad()
            head.zero_grad()
            feats = npgrad.tensor(x) + (prompt if where == "closed over" else extra)
            npgrad.cross_entropy(head(feats), y).backward(retain_graph=True)

        def run(i):
            extra = npgrad.tensor(np.ones((1, 3), np.float32), requires_grad=True)
            if i > 0 and where == "an argument":  # recorded with a leaf, then one with a graph
                extra = enc(npgrad.tensor(np.ones((1, 3), np.float32)))
            step(X[i], Y[i], extra)
            return [enc.weight.grad if enc.weight.grad is not None else np.zeros(1)]

        return run

    same_and_told(build, "computed before")


def test_ops_after_an_optimizer_that_gives_parameters_new_arrays_read_the_new_ones():
    class PlainSGD(optim.Optimizer):
        def step(self):
            for p in self.params:
                p.data = p.data - self.lr * p.grad  # a new array

    def build(enabled):
        net = nn.MLP([3, 5, 2], rng=0)
        opt = PlainSGD(net.parameters(), 0.1)

        @npgrad.compile(enabled=enabled)
        def step(x1, y1, x2, y2):  # two micro-batches, an update after each
            for x, y in ((x1, y1), (x2, y2)):
                loss = npgrad.cross_entropy(net(npgrad.tensor(x)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            return loss

        return lambda i: [step(X[i], Y[i], X[i - 1], Y[i - 1]).data, *state(net)]

    same_and_told(build)


def test_signed_zeros_in_a_module_attribute_differ():
    class Scale(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.s = s

        def forward(self, x):
            return 1.0 / (x * self.s)

    def build(enabled):
        m = Scale(0.0)
        f = npgrad.compile(lambda x: m(npgrad.tensor(x)), enabled=enabled)

        def run(i):
            object.__setattr__(m, "s", [0.0, -0.0][i // 2 % 2])  # unseen by the write count
            with npgrad.no_grad(), np.errstate(divide="ignore"):
                return [f(X[0]).data]

        return run

    e, c, said = twins(build, calls=6)
    assert_same(e, c)


def test_a_detached_argument_is_returned_as_a_new_tensor():
    w = nn.Parameter(np.ones(3, np.float32))

    @npgrad.compile
    def step(xt):
        (xt * w).sum().backward()
        return {"input": xt.detach()}

    for i in range(3):
        xt = npgrad.tensor(np.full(3, i, np.float32), requires_grad=True)
        r = step(xt)["input"]
        assert r is not xt and not r.requires_grad and np.array_equal(r.data, xt.data)
    assert step.replays == 2


def test_a_reason_to_run_eagerly_is_told_once_whatever_the_signature():
    net = nn.MLP([3, 5, 2], rng=0)

    @npgrad.compile
    def f(x):
        out = net(npgrad.tensor(x))
        out.sum().item()
        return out.detach()

    with warnings.catch_warnings(record=True) as caught, npgrad.no_grad():
        warnings.simplefilter("always")
        for n in (4, 4, 3, 4, 3):
            f(RS.standard_normal((n, 3)).astype(np.float32))
    assert len(caught) == 1


def test_a_step_may_return_what_its_backward_went_through_or_detached_values():
    """The loss and logits replay; probabilities computed from them replay detached, and
    without detach() they might be differentiated afterwards: refused, as is a kept graph."""

    def build(enabled, detach=True, retain=False):
        net, opt, _ = mlp_step(enabled)

        @npgrad.compile(enabled=enabled)
        def step(x, y):
            logits = net(npgrad.tensor(x))
            loss = npgrad.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward(retain_graph=retain)
            opt.step()
            probs = logits.softmax()
            return loss, logits, probs.detach() if detach else probs

        return lambda i: [t.data for t in step(X[i], Y[i])]

    same_and_told(build)
    told = "returns a Tensor with a graph that no backward() in it went through"
    same_and_told(lambda enabled: build(enabled, detach=False), told)
    same_and_told(lambda enabled: build(enabled, retain=True), told)


def test_an_attribute_read_through_a_method_other_than_forward_is_guarded():
    class AE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(3, 2, rng=0)
            self.temperature = 1.0

        def forward(self, x):
            return self.encode(x)

        def encode(self, x):
            return self.enc(x) * self.temperature

    def build(enabled):
        ae = AE()
        opt = optim.SGD(ae.parameters(), 0.1)

        step = trained(
            enabled, opt, lambda x, y: npgrad.cross_entropy(ae.encode(npgrad.tensor(x)), y)
        )

        def run(i):
            ae.temperature = 1.0 / (i + 1)  # annealed between steps
            return [step(X[i], Y[i]).data, *state(ae)]

        return run

    e, c, said = twins(build)
    assert_same(e, c)


def test_another_threads_tensors_are_no_part_of_the_step():
    """Another thread reads a tensor (and runs ops) while the step is being recorded."""
    import threading

    other = nn.MLP([3, 5, 2], rng=1)
    go, done = threading.Event(), threading.Event()

    def elsewhere():
        while go.wait() and not done.is_set():
            other(npgrad.tensor(X[0])).sum().item()  # (no_grad() is process-wide: not here)
            go.clear()
            done.set()

    def body(net, opt, x, y):
        done.clear()
        go.set()
        done.wait()  # Python in the step: at the record only
        return npgrad.cross_entropy(net(npgrad.tensor(x)), y)

    def build(enabled):
        net, _, step = mlp_step(enabled, body)
        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    thread = threading.Thread(target=elsewhere, daemon=True)
    thread.start()
    same_and_told(build)


# ----------------------------------------------------------------------- a third trial


def test_a_recorded_calls_result_is_refused_whenever_the_step_keeps_it():
    class SkipSGD(optim.SGD):  # says when it skipped an update, else returns None
        def step(self):
            if max(float(np.abs(p.grad).max()) for p in self.params) > 1.0:
                return "skipped"
            super().step()

    def build(enabled):
        net, opt, _ = mlp_step(enabled, opt_cls=SkipSGD)

        @npgrad.compile(enabled=enabled)
        def step(x, y):
            loss = npgrad.cross_entropy(net(npgrad.tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            skipped = opt.step()  # None at the record
            return loss if skipped is None else loss * 0.0

        return lambda i: [step(X[i] * (1 + 20 * (i % 2)), Y[i]).data, *state(net)]

    same_and_told(build, "SkipSGD.step() returned")


def test_a_detached_parameter_passed_as_an_argument_is_refused():
    def build(enabled):
        net, opt, _ = mlp_step(enabled)
        step = trained(
            enabled,
            opt,
            lambda x, y, anchor: (
                npgrad.cross_entropy(net(npgrad.tensor(x)), y) + (anchor * anchor).sum()
            ),
        )
        return lambda i: [step(X[i], Y[i], net[0].weight.detach()).data, *state(net)]

    same_and_told(build, "is a parameter of a module the step runs (or its array)")


def test_ops_after_a_recorded_call_read_argument_tensors_anew():
    class PlainSGD(optim.Optimizer):
        def step(self):
            for p in self.params:
                p.data = p.data - self.lr * p.grad

    w = RS.standard_normal((3, 2)).astype(np.float32)

    def build(enabled):
        z = npgrad.tensor(np.ones((4, 3), np.float32), requires_grad=True)  # an input, optimised
        opt = PlainSGD([z], 0.1)

        @npgrad.compile(enabled=enabled)
        def step(z, w):
            loss = npgrad.matmul(z, npgrad.tensor(w)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return npgrad.matmul(z, npgrad.tensor(w)).sum().detach()  # after the update

        return lambda i: [step(z, w).data, z.data]

    same_and_told(build)


@pytest.mark.parametrize(
    "change",
    [lambda m: m.eval(), lambda m: m.__dict__.update(temperature=2.0)],
    ids=["eval()", "__dict__"],
)
def test_a_module_that_owns_a_parameter_the_step_used_is_guarded(change):
    class AE(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.ones((3, 2), np.float32))
            self.temperature = 1.0

        def encode(self, x):  # a method other than forward
            h = npgrad.matmul(x, self.w) * self.temperature
            return h * 0.5 if self.training else h

    def build(enabled):
        ae = AE()
        f = npgrad.compile(lambda x: ae.encode(npgrad.tensor(x)).sum(), enabled=enabled)

        def run(i):
            if i == 2:
                change(ae)
            with npgrad.no_grad():
                return [f(X[i]).data]

        return run

    same_and_told(build)


def test_a_module_attribute_assigned_inside_the_step_is_refused():
    class Probe(nn.Module):  # keeps its last activations (a feature hook)
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2, rng=0)

        def forward(self, x):
            self.features = self.lin(x)
            return self.features

    def build(enabled):
        net = Probe()
        opt = optim.SGD(net.parameters(), 0.1)
        step = trained(enabled, opt, lambda x, y: npgrad.cross_entropy(net(npgrad.tensor(x)), y))

        def run(i):
            step(X[i], Y[i])
            return [net.features.data]

        return run

    same_and_told(build, "attribute is assigned inside the step")


def test_ops_another_thread_runs_for_the_step_are_refused():
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(2)

    def build(enabled):
        a, b = nn.Linear(3, 2, rng=0), nn.Linear(3, 2, rng=1)

        @npgrad.compile(enabled=enabled)
        def predict(x):  # two towers at once, on the pool's threads
            t = npgrad.tensor(x)
            fa, fb = pool.submit(a, t), pool.submit(b, t)
            return fa.result() + fb.result()

        def run(i):
            with npgrad.no_grad():
                return [predict(X[i]).data]

        return run

    try:
        same_and_told(build, "another thread made while it was being recorded")
    finally:
        pool.shutdown()


def test_a_returned_graph_that_reaches_leaves_no_backward_of_the_step_did_is_refused():
    """A GAN's discriminator step returns the fakes, for the generator's step after it."""
    rs = np.random.default_rng(4)
    Z = [rs.standard_normal((4, 3)).astype(np.float32) for _ in range(5)]
    R = [rs.standard_normal((4, 2)).astype(np.float32) for _ in range(5)]

    def build(enabled):
        G, D = nn.Linear(3, 2, rng=0), nn.Linear(2, 1, rng=1)
        g_opt, d_opt = optim.SGD(G.parameters(), 0.1), optim.SGD(D.parameters(), 0.1)

        @npgrad.compile(enabled=enabled)
        def d_step(z, real):
            fake = G(npgrad.tensor(z))
            d_loss = (D(fake.detach()) - D(npgrad.tensor(real))).mean()
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
            return fake

        def run(i):
            g_loss = -D(d_step(Z[i], R[i])).mean()
            g_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
            return [*state(G), *state(D)]

        return run

    same_and_told(build, "returns a Tensor with a graph that no backward() in it went")


def test_a_generator_made_inside_the_step_is_refused():
    x = np.ones((2, 4), np.float32)

    def build(enabled):
        @npgrad.compile(enabled=enabled)
        def step(x):  # the same mask on every call: a generator seeded inside the step
            return npgrad.dropout(npgrad.tensor(x), 0.5, rng=np.random.default_rng(0))

        def run(i):
            with npgrad.no_grad():
                return [step(x).data]

        return run

    same_and_told(build, "a generator that nothing outside the step holds")


def test_a_step_compiled_in_another_thread_during_a_recorded_call_runs_eagerly():
    import threading

    started, go = threading.Event(), threading.Event()

    class SlowSGD(optim.SGD):
        def step(self):
            started.set()
            go.wait()  # the other thread's step runs meanwhile
            super().step()

    net_b = nn.MLP([3, 5, 2], rng=2)
    opt_b = optim.SGD(net_b.parameters(), 0.1)
    step_b = trained(True, opt_b, lambda x, y: npgrad.cross_entropy(net_b(npgrad.tensor(x)), y))
    net_a = nn.MLP([3, 5, 2], rng=0)
    step_a = trained(True, SlowSGD(net_a.parameters(), 0.1),
                     lambda x, y: npgrad.cross_entropy(net_a(npgrad.tensor(x)), y))  # fmt: skip

    def other():
        started.wait()
        step_b(X[0], Y[0])  # while a's recording is in a recorded call: eager
        go.set()

    thread = threading.Thread(target=other)
    thread.start()
    step_a(X[0], Y[0])
    thread.join()
    assert not step_b.plans and step_b.replays == 0


# ----------------------------------------------------------------------- a fourth trial


def test_common_steps_still_replay():
    """What the trials made the recording refuse must not catch these: a scalar result
    detached, a generator and a constant array that live outside the step, a module made
    inline in a forward, modules made between steps."""
    G = np.random.default_rng(3)  # a generator of the program, not of a module
    W = np.array([1.0, 2.0], np.float32)  # class weights, closed over

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2, rng=0)

        def forward(self, x):
            return nn.Flatten()(self.lin(x))  # a module made inline

    def build(enabled):
        net = Net()
        opt = optim.SGD(net.parameters(), 0.1)

        def loss_of(x, y):
            h = npgrad.dropout(net(npgrad.tensor(x)), 0.3, rng=G)
            return npgrad.cross_entropy(h * W, y)

        step = trained(enabled, opt, loss_of, returns=lambda loss: (loss / 2.0).detach())

        def run(i):
            nn.Linear(2, 2)  # a module made between steps (a probe, an eval model)
            return [step(X[i], Y[i]).data, *state(net)]

        return run

    G_state = G.bit_generator.state
    e, c, said = twins(
        lambda enabled: (G.bit_generator.__setattr__("state", G_state), build(enabled))[1]
    )
    assert_same(e, c)
    assert not said


def test_a_constant_array_closed_over_is_read_as_it_is_now():
    W = np.array([1.0, 2.0], np.float32)

    def build(enabled):
        net, opt, step = mlp_step(
            enabled, lambda net, opt, x, y: npgrad.cross_entropy(net(npgrad.tensor(x)) * W, y)
        )

        def run(i):
            W[:] = [1.0 + i, 2.0]  # changed in place between steps
            return [step(X[i], Y[i]).data, *state(net)]

        return run

    same_and_told(build)


def test_a_loss_computed_after_the_steps_update_is_refused():
    """An inner update, then the query loss that the caller differentiates (meta-learning)."""

    def build(enabled):
        net = nn.Linear(3, 2, rng=0)
        opt = optim.SGD(net.parameters(), 0.1)

        @npgrad.compile(enabled=enabled)
        def inner(x, y, xq, yq):
            loss = npgrad.cross_entropy(net(npgrad.tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return npgrad.cross_entropy(net(npgrad.tensor(xq)), yq)

        def run(i):
            outer = inner(X[i], Y[i], X[i - 1], Y[i - 1]) + 1e-3 * (net.weight * net.weight).sum()
            net.zero_grad()
            outer.backward()
            return [net.weight.grad]

        return run

    same_and_told(build, "returns a Tensor with a graph that no backward() in it went")


def test_a_deep_copied_module_that_owns_a_used_parameter_is_guarded():
    import copy

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.arange(6, dtype=np.float32).reshape(3, 2) / 10)

        def score(self, x):  # a method other than forward: halves in eval mode
            z = x @ self.w
            return z if self.training else z * 0.5

    def build(enabled):
        head = copy.deepcopy(Head())
        f = npgrad.compile(lambda x: head.score(npgrad.tensor(x)), enabled=enabled)

        def run(i):
            head.train(i < 2)
            with npgrad.no_grad():
                return [f(X[i]).data]

        return run

    same_and_told(build)


def test_a_step_another_thread_records_meanwhile_runs_eagerly():
    """Two threads compiling at once: one records, the other runs eagerly."""
    import threading

    events = {k: threading.Event() for k in ("b_waits", "a_mid", "b_in", "a_stepped", "b_done")}

    class Settings(dict):  # read while B's signature is computed: B pauses there
        def values(self):
            events["b_waits"].set()
            events["a_mid"].wait()
            return super().values()

    @npgrad.compile
    def step_b(x, settings):
        events["b_in"].set()
        events["a_stepped"].wait()
        return npgrad.tensor(x) * 2.0

    def build(enabled):
        net = nn.Linear(4, 2, rng=0)
        opt = optim.SGD(net.parameters(), 0.1)

        @npgrad.compile(enabled=enabled)
        def step_a(x):
            loss = (net(npgrad.tensor(x)) ** 2.0).mean()
            opt.zero_grad()
            loss.backward()
            if enabled and not events["a_mid"].is_set():
                events["a_mid"].set()
                events["b_in"].wait()
            opt.step()
            if enabled and not events["a_stepped"].is_set():
                events["a_stepped"].set()
                events["b_done"].wait()
            return loss

        return net, step_a

    (ne, se), (nc, sc) = build(False), build(True)
    other = threading.Thread(
        target=lambda: (step_b(np.ones(2), Settings(k=1)), events["b_done"].set())
    )
    other.start()
    events["b_waits"].wait()
    x = np.ones((3, 4), np.float32)
    for _ in range(4):
        le, lc = se(x).data, sc(x).data
        assert np.array_equal(le, lc)
    other.join()
    # its first call ran eagerly while the other thread recorded: recorded at the second
    assert np.array_equal(ne.weight.data, nc.weight.data) and sc.replays == 2
    assert npgrad.tracing.current is None


# --------------------------------------------------------------------------- fifth trial


def test_an_array_closed_over_that_was_the_first_calls_argument_stays_that_array():
    """The step reads ``anchor`` through its closure; at the record it was also argument 0.
    A replay that bound it as the argument would read each new batch instead."""
    anchor = X[0]
    anchor_t = npgrad.tensor(X[1])

    def body(net, opt, x, y):
        drift = (net(npgrad.tensor(anchor)) ** 2).mean() + (net(anchor_t) ** 2).mean()
        return npgrad.cross_entropy(net(npgrad.tensor(x)), y) + drift * 0.1

    def build(enabled):
        net, _, step = mlp_step(enabled, body)
        order = [0, 1, 2, 3, 4, 2, 3]  # the first call passes anchor, the second anchor_t's array
        return lambda i: [step(X[order[i]], Y[i % 5]).data, *state(net)]

    same_and_told(build, calls=7)


CURRENT = None  # a script's loop variable: a global that holds each call's argument


def test_a_global_that_holds_each_calls_argument_lets_the_step_replay():
    net, _, step = mlp_step(True)
    global CURRENT
    for i in range(5):
        CURRENT = X[i]
        step(CURRENT, Y[i])
    assert step.replays == 4 and step.recorded == 1


def test_noise_drawn_inside_and_kept_in_a_nonlocal_is_refused():
    def build(enabled):
        rng = np.random.default_rng(0)
        last_noise = None

        def body(net, opt, x, y):
            nonlocal last_noise  # kept for logging: it lives on, but it was made in the step
            last_noise = rng.standard_normal(x.shape).astype(np.float32)
            return npgrad.cross_entropy(net(npgrad.tensor(x) + npgrad.tensor(last_noise)), y)

        net, _, step = mlp_step(enabled, body)
        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    same_and_told(build, "nothing outside the step holds")


@pytest.mark.parametrize("made", ["detached", "under no_grad", "a number"])
def test_a_value_of_the_step_made_a_leaf_that_requires_grad_is_refused(made):
    def body(net, opt, x, y):
        h = net.layers[0](npgrad.tensor(x))
        if made == "detached":
            z = h.detach().requires_grad_()
        elif made == "under no_grad":
            with npgrad.no_grad():
                z = net.layers[0](npgrad.tensor(x))
            z.requires_grad_()
        else:
            z = h + npgrad.tensor(1.0).requires_grad_()
        return npgrad.cross_entropy(net.layers[2](net.layers[1](z)), y) + (h * h).mean() * 0.1

    def build(enabled):
        net, _, step = mlp_step(enabled, body)
        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    same_and_told(build, "gives a .grad to a Tensor computed or made inside the step")


SCALE: object = 0.5  # a global the step reads, rebound between calls


@pytest.mark.parametrize("kind", [float, np.float32, np.float64, lambda v: np.array(v, np.float32)])
def test_a_global_number_or_array_rebound_between_calls_is_read_anew(kind):
    def body(net, opt, x, y):
        return npgrad.cross_entropy(net(npgrad.tensor(x)) * SCALE, y)

    def build(enabled):
        net, _, step = mlp_step(enabled, body)

        def run(i):
            global SCALE
            SCALE = kind(0.5 + i // 2)  # the same value twice, then another
            return [step(X[i % 5], Y[i % 5]).data, *state(net)]

        return run

    same_and_told(build, calls=6)


def test_a_global_number_that_stays_lets_the_step_replay():
    def body(net, opt, x, y):
        return npgrad.cross_entropy(net(npgrad.tensor(x)) * SCALE, y)

    global SCALE
    SCALE = 0.25
    net, _, step = mlp_step(True, body)
    for i in range(5):
        SCALE = 0.125 * 2  # an equal float, another object
        step(X[i], Y[i])
    assert step.replays == 4 and step.recorded == 1


def test_a_numpy_number_argument_a_generator_argument_and_an_array_on_self_replay():
    class Holder:  # a trainer-like object whose method is the step
        def __init__(self, net, opt):
            self.net, self.opt, self.w = net, opt, np.array([1.0, 2.0], np.float32)

        def step(self, x, y, s, g):
            h = npgrad.dropout(self.net(npgrad.tensor(x)), 0.5, g) * s * npgrad.tensor(self.w)
            loss = npgrad.cross_entropy(h, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            return loss

    def build(enabled):
        net = nn.Linear(3, 2, rng=0)
        holder = Holder(net, optim.SGD(net.parameters(), 0.1))
        step = npgrad.compile(holder.step, enabled=enabled)
        g = np.random.default_rng(0)
        return lambda i: [step(X[i], Y[i], np.float32(0.5), g).data, *state(net)]

    same_and_told(build)


def test_a_parameters_detach_is_that_parameter_without_its_graph():
    def body(net, opt, x, y):
        w = net.layers[0].weight.detach()  # a penalty that does not train the weight
        return npgrad.cross_entropy(net(npgrad.tensor(x)), y) + (w * w).sum() * 0.01

    def build(enabled):
        net, _, step = mlp_step(enabled, body)
        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    same_and_told(build)


# --------------------------------------------------------------------------- sixth trial


def test_noise_drawn_in_place_into_an_array_outside_the_step_is_refused():
    def build(enabled):
        rng = np.random.default_rng(1)
        noise = np.empty((4, 3), np.float32)  # preallocated, lives outside the step

        def body(net, opt, x, y):
            rng.standard_normal(out=noise, dtype=np.float32)  # a replay would not draw again
            return npgrad.cross_entropy(net(npgrad.tensor(x) + npgrad.tensor(noise)), y)

        net, _, step = mlp_step(enabled, body)
        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    same_and_told(build, "writes into an array that lives outside it")


class _Trainer:
    def __init__(self):
        self.net = nn.MLP([3, 5, 2], rng=0)
        self.opt = optim.SGD(self.net.parameters(), 0.1)
        self.temperature = 1.0

    def step(self, x, y):
        loss = npgrad.cross_entropy(self.net(npgrad.tensor(x)) / self.temperature, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss

    __call__ = step


@pytest.mark.parametrize("how", ["bound", "partial", "lambda", "callable"])
def test_a_trainers_attribute_changed_between_calls_is_read_anew(how):
    import functools

    def build(enabled):
        tr = _Trainer()
        fn = {
            "bound": tr.step,
            "partial": functools.partial(_Trainer.step, tr),
            "lambda": lambda x, y: tr.step(x, y),
            "callable": tr,
        }[how]
        step = npgrad.compile(fn, enabled=enabled)

        def run(i):
            tr.temperature = 1.0 + i // 2  # annealed: the same twice, then another
            return [step(X[i], Y[i]).data, *state(tr.net)]

        return run

    same_and_told(build)


CLASS_WEIGHTS = np.ones(2, np.float32)


def test_defaults_rebound_between_calls_are_read_anew():
    def build(enabled):
        net = nn.MLP([3, 5, 2], rng=0)
        opt = optim.SGD(net.parameters(), 0.1)

        def step(x, y, w=CLASS_WEIGHTS):
            loss = npgrad.cross_entropy(net(npgrad.tensor(x)) * npgrad.tensor(w), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        compiled = npgrad.compile(step, enabled=enabled)

        def run(i):
            step.__defaults__ = (np.full(2, 1.0 + i // 2, np.float32),)  # class weights
            return [compiled(X[i], Y[i]).data, *state(net)]

        return run

    same_and_told(build)


EPOCH = 0  # a script's loop counters, beside a step with small-int constants
BATCH = 0
SCHEDULED: object = None


def test_loop_counters_and_equal_numpy_numbers_beside_the_step_record_it_once():
    def body(net, opt, x, y):
        return npgrad.cross_entropy(net(npgrad.tensor(x) * 2 - 1) * 3 * SCHEDULED, y)

    net, _, step = mlp_step(True, body)
    global EPOCH, BATCH, SCHEDULED
    schedule = np.full(4, 0.5, np.float32)
    for EPOCH in range(1, 5):
        for BATCH in range(1, 6):
            SCHEDULED = schedule[EPOCH - 1]  # np.float32(0.5): an equal number, a new object
            step(X[BATCH - 1], Y[BATCH - 1])
    assert step.recorded == 1 and step.replays == 19


# --------------------------------------------------------------------------- seventh trial

POWER, INDEX, MAX_NORM = 2.0, 0, 0.05  # numbers a step gives ops and recorded calls


def test_numbers_named_by_the_step_as_op_parameters_or_call_arguments_are_read_anew():
    def build(enabled):
        net = nn.MLP([3, 5, 2], rng=0)
        opt = optim.SGD(net.parameters(), 0.1)

        @npgrad.compile(enabled=enabled)
        def step(x):
            loss = (net(npgrad.tensor(x))[INDEX] ** POWER).sum()
            opt.zero_grad()
            loss.backward()
            optim.clip_grad_norm(net.parameters(), MAX_NORM)
            opt.step()
            return loss

        def run(i):
            global POWER, INDEX, MAX_NORM
            POWER, INDEX, MAX_NORM = 2.0 + i % 2, i % 3, 0.05 * (i + 1)
            return [step(X[i]).data, *state(net)]

        return run

    same_and_told(build)


class _Scaler:
    def __init__(self):
        self.s = 1.0

    def __call__(self, loss):
        return loss * self.s


class _Base:
    scale = 1.0  # a class attribute

    def __init__(self):
        self._s = 1.0

    def scaled(self, loss):
        return loss * self._s * self.scale * self.factor

    @property
    def factor(self):
        return self._s

    @classmethod
    def shifted(cls, loss):
        return loss + cls.scale


class _Child(_Base):
    def scaled(self, loss):
        return super().scaled(loss) * 1.0


SCALER, CHILD, INNER_SCALE = _Scaler(), _Child(), 1.0
SETTINGS = types.ModuleType("settings")  # a settings module the step reads
SETTINGS.scale = 1.0


def test_callables_inherited_methods_properties_class_attributes_and_modules_are_looked_into():
    def build(enabled):
        net = nn.MLP([3, 5, 2], rng=0)
        opt = optim.SGD(net.parameters(), 0.1)
        inner = npgrad.compile(
            lambda h, y: npgrad.cross_entropy(h, y) * INNER_SCALE, enabled=enabled
        )

        @npgrad.compile(enabled=enabled)
        def step(x, y):
            h = net(npgrad.tensor(x))
            loss = SCALER(inner(h, y)) * SETTINGS.scale
            loss = _Child.shifted(CHILD.scaled(loss))
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        def run(i):
            global INNER_SCALE
            SCALER.s = CHILD._s = 1.0 + i // 2
            INNER_SCALE = SETTINGS.scale = _Base.scale = 2.0 - i // 2
            return [step(X[i], Y[i]).data, *state(net)]

        return run

    same_and_told(build, calls=5)


class _Proxy:  # a lazy proxy: even its __dict__ refuses to be read
    a = 1.5

    def __getattribute__(self, name):
        if name == "__dict__":
            raise RuntimeError("not loaded")
        return object.__getattribute__(self, name)

    def __hash__(self):
        raise ValueError("no hash")


PROXY = _Proxy()


def test_an_object_that_cannot_show_its_attributes_does_not_break_a_recording():
    def body(net, opt, x, y):
        return npgrad.cross_entropy(net(npgrad.tensor(x)) * PROXY.a, y)

    def build(enabled):
        net, _, step = mlp_step(enabled, body)
        return lambda i: [step(X[i], Y[i]).data, *state(net)]

    same_and_told(build)


class _Config:
    def __init__(self):
        self.temperature = 1.0


class _Nested:
    def __init__(self):
        self.cfg = _Config()


NESTED = _Nested()


def test_an_attribute_two_objects_away_is_read_anew():
    def body(net, opt, x, y):
        return npgrad.cross_entropy(net(npgrad.tensor(x)) / NESTED.cfg.temperature, y)

    def build(enabled):
        net, _, step = mlp_step(enabled, body)

        def run(i):
            NESTED.cfg.temperature = 1.0 + i // 2
            return [step(X[i], Y[i]).data, *state(net)]

        return run

    same_and_told(build)
