"""The NumPy autodiff peers' 784-100-10 SGD step, for issue 21's first target row.

Each peer trains the same network as npgrad's row (784-100-10, ReLU, softmax
cross-entropy, plain SGD at 0.05, float32; the same initial weights for all peers)
on the same batch, written the way its own documentation writes a training step. They are never
dependencies of npgrad: install them in a separate venv (benchmarks/README.md).
tinygrad runs its CPU backend under ``TinyJit``, which needs ``clang`` on the PATH.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.bench_cnn import import_peer, peer_version

LR = 0.05
PEERS = {
    "mygrad": "MyGrad",
    "dezero": "DeZero",
    "autograd": "HIPS autograd",
    "tinygrad": "tinygrad (TinyJit, CPU)",
}
INSTALL = {
    "mygrad": "pip install mygrad",
    "dezero": "pip install dezero matplotlib",
    "autograd": "pip install autograd",
    "tinygrad": "pip install tinygrad; apt-get install clang",
}


def initial_weights() -> list[np.ndarray]:
    """He-initialised float32 weights and zero biases, the same for every peer."""
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((784, 100)) * np.sqrt(2 / 784)).astype(np.float32),
        np.zeros(100, np.float32),
        (rng.standard_normal((100, 10)) * np.sqrt(2 / 100)).astype(np.float32),
        np.zeros(10, np.float32),
    ]


def mygrad_step(mg, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    from mygrad.nnet import relu, softmax_crossentropy

    w1, b1, w2, b2 = params = [mg.Tensor(a) for a in initial_weights()]

    def step() -> None:
        loss = softmax_crossentropy(relu(x @ w1 + b1) @ w2 + b2, y)
        loss.backward()
        for p in params:
            p.data -= LR * p.grad

    return step


def dezero_step(dezero, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    F, L = dezero.functions, dezero.layers
    l1, l2 = L.Linear(100, in_size=784), L.Linear(10, in_size=100)
    l1.W.data, l1.b.data, l2.W.data, l2.b.data = initial_weights()
    model = dezero.models.Sequential(l1, F.relu, l2)
    opt = dezero.optimizers.SGD(LR).setup(model)

    def step() -> None:
        model.cleargrads()
        F.softmax_cross_entropy(model(x), y).backward()
        opt.update()

    return step


def autograd_step(autograd, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    import autograd.numpy as anp

    params = initial_weights()
    rows = np.arange(len(y))

    def loss(ps: list, xb: np.ndarray, yb: np.ndarray):
        z = anp.dot(anp.maximum(anp.dot(xb, ps[0]) + ps[1], 0), ps[2]) + ps[3]
        m = anp.max(z, axis=1, keepdims=True)  # autograd.scipy needs SciPy: logsumexp by hand
        lse = m[:, 0] + anp.log(anp.sum(anp.exp(z - m), axis=1))
        return anp.mean(lse - z[rows, yb])

    gradient = autograd.grad(loss)

    def step() -> None:
        for p, g in zip(params, gradient(params, x, y)):
            p -= LR * g

    return step


def tinygrad_step(tinygrad, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    from tinygrad import Tensor, TinyJit
    from tinygrad.helpers import Context
    from tinygrad.nn.optim import SGD

    w1, b1, w2, b2 = params = [Tensor(a).realize() for a in initial_weights()]
    opt = SGD(params, lr=LR)
    xt, yt = Tensor(x).realize(), Tensor(y.astype(np.int32)).realize()

    @TinyJit
    def jitted(xb, yb):
        with Context(TRAINING=1):
            opt.zero_grad()
            loss = ((xb @ w1 + b1).relu() @ w2 + b2).sparse_categorical_crossentropy(yb)
            loss.backward()
            opt.step()
        return loss.realize()

    def step() -> None:
        jitted(xt, yt).numpy()  # waits for the step's kernels

    return step


STEPS = {
    "mygrad": mygrad_step,
    "dezero": dezero_step,
    "autograd": autograd_step,
    "tinygrad": tinygrad_step,
}


def load(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, Callable[[], None]], list[str]]:
    """Each importable peer's step (run once, so that one that fails is left out), and a
    sentence for each peer left out."""
    steps, missing = {}, []
    for module, label in PEERS.items():
        lib = import_peer(module)
        if lib is None:
            missing.append(f"{label} is not installed (`{INSTALL[module]}`)")
            continue
        try:
            step = STEPS[module](lib, x, y)
            step()
        except Exception as e:  # a peer that cannot run here (no compiler...) has no row
            missing.append(f"{label} did not run: {type(e).__name__}: {str(e)[:120]}")
            continue
        steps[f"{label} {peer_version(module)}"] = step
    return steps, missing
