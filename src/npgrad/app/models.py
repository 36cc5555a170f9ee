"""The kinds of network the trainer can train, behind one small protocol.

A model takes flattened float images ``(N, D)`` and integer labels, and offers:

* ``train_step(x, y) -> (mean loss, number correct)``: one optimisation step;
* ``log_probs(x)``: log-probabilities for evaluation and prediction;
* ``params()``/``load_params()`` and ``optim_state()``/``load_optim_state()``:
  everything a checkpoint must hold to continue bit-exactly;
* ``prepare(x)``: a one-off transformation of a whole input set (the exercise
  appends its ones column here, once, not every step);
* ``lr``: the learning rate of the last step, ``describe()``: one line for logs.

:data:`MODELS` maps each value of the ``model`` option to its class; a new
kind of network is one more class here and one more value there.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from .. import layers, nn, optim
from ..autodiff import Tensor, cross_entropy, no_grad
from ..compiler import compile as compile_step
from ..distributed import Communicator, GradientBuffer, allreduce_gradients, shard
from ..errors import CheckpointError, ConfigError
from ..ops import dense as ops
from ..ops.device import to_device, to_host
from . import checkpoint as ckpt
from .config import Config, config_from_dict


class Model(Protocol):
    kind: str

    @property
    def lr(self) -> float: ...

    def prepare(self, x: np.ndarray) -> np.ndarray: ...
    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]: ...
    def use_compiled(self, on: bool) -> None: ...
    def log_probs(self, x: np.ndarray) -> np.ndarray: ...
    def params(self) -> dict[str, np.ndarray]: ...
    def load_params(self, state: dict[str, np.ndarray]) -> None: ...
    def optim_state(self) -> dict[str, np.ndarray]: ...
    def load_optim_state(self, state: dict[str, np.ndarray]) -> None: ...
    def describe(self) -> str: ...


class NetModel:
    """A network of :mod:`npgrad.nn` modules on the Tensor engine, with an optimizer and a
    learning-rate schedule. Subclasses say how to build the network and shape its input."""

    kind = ""

    def __init__(
        self,
        cfg: Config,
        image_shape: tuple[int, ...],
        classes: int,
        steps_per_epoch: int,
        rng: np.random.Generator,
    ) -> None:
        self.cfg = cfg
        self.image_shape = tuple(int(n) for n in image_shape)
        self.net = self.build(cfg, self.image_shape, classes, np.random.default_rng(cfg.seed))
        self.net.set_rng(rng)  # dropout masks come from the run's generator (saved in checkpoints)
        params = self.net.parameters()
        name = cfg.optimizer
        if name in ("adam", "adamw"):
            cls = optim.Adam if name == "adam" else optim.AdamW
            self.opt: optim.Optimizer = cls(params, cfg.lr, weight_decay=cfg.weight_decay)
        else:
            momentum = 0.0 if name == "sgd" else cfg.momentum
            self.opt = optim.SGD(
                params,
                cfg.lr,
                momentum=momentum,
                nesterov=name == "nesterov",
                weight_decay=cfg.weight_decay,
            )
        steps_total = steps_per_epoch * max(cfg.epochs, 1)
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        self.schedule = optim.make_schedule(cfg.schedule, cfg.lr, steps_total, warmup)
        # recorded at the first batch of each shape, replayed after (npgrad.compile)
        self._step = compile_step(self._eager_step)

    def build(
        self, cfg: Config, image_shape: tuple[int, ...], classes: int, init: np.random.Generator
    ) -> nn.Module:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def inputs(self, x: np.ndarray) -> Tensor:
        """Flattened images (N, D) as the network's input."""
        return Tensor(x)

    @property
    def lr(self) -> float:
        return self.opt.lr

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x

    device = "cpu"

    def to(self, device: str) -> None:
        """Train and evaluate on ``device``: the network moves; each batch is copied there
        before the step (the step's arguments, so that a compiled step replays on them)."""
        self.net.to(device)
        self.device = device

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self.opt.lr = self.schedule(self.opt.steps)  # outside the step: a plan replays ops only
        if self.comm is not None:
            return self._shard_step(x, y)
        if self.device != "cpu":
            x, y = to_device(x, self.device), to_device(y, self.device)
        loss, logits = self._step(x, y)
        return float(loss.data), int((logits.data.argmax(axis=1) == y).sum())

    # ------------------------------------------------------------------ data-parallel
    comm: Communicator | None = None
    stop_vote = False  # this rank's wish to stop, agreed on in the next step's reduction
    stop_agreed = False  # whether any rank wished to stop, as of the last step

    def use_comm(self, comm: Communicator) -> None:
        """Train data-parallel on ``comm``'s ranks: each step on this rank's shard of the
        global batch, gradients summed over the ranks (npgrad.distributed)."""
        self.comm = comm
        self.grads = GradientBuffer(self.opt.params)
        # dropout masks from a stream of this rank's own, derived from the seed
        self.rank_rng = np.random.default_rng([self.cfg.seed, 2, comm.rank])
        self.net.set_rng(self.rank_rng)
        if self.cfg.sync_bn:  # batch norm over the whole batch: its sums added up over the ranks
            for m in self.net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reduce = comm.sum_
        self._sum_step = compile_step(self._eager_sum_step, enabled=self._step.enabled)

    def _shard_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        assert self.comm is not None
        part = shard(len(y), self.comm.rank, self.comm.size)
        xs, ys = x[part], y[part]
        if len(ys):
            loss, logits = self._sum_step(xs, ys, 1.0 / len(y))
            local = [float(loss.data) * len(y), float((logits.data.argmax(axis=1) == ys).sum())]
        else:  # fewer samples than ranks: this one adds nothing but still takes part
            self.opt.zero_grad()
            allreduce_gradients(self.grads, self.comm)
            self.opt.step()
            local = [0.0, 0.0]
        # the losses, the hits and the stop votes of all ranks, in one more reduction
        total = self.comm.sum_(np.array([*local, float(self.stop_vote)]))
        self.stop_agreed = bool(total[2])
        return float(total[0]) / len(y), int(total[1])

    def _eager_sum_step(self, x: np.ndarray, y: np.ndarray, scale: float) -> tuple[Tensor, Tensor]:
        assert self.comm is not None
        logits = self.net(self.inputs(x))
        # this shard's part of the batch's mean: its summed loss over the global batch size,
        # scaled before the backward pass as the one-process mean is (the same roundings)
        loss = cross_entropy(logits, y, reduction="sum") * scale
        self.opt.zero_grad()
        loss.backward()
        allreduce_gradients(self.grads, self.comm)  # the shards' gradients add up to the batch's
        if self.cfg.clip:
            optim.clip_grad_norm(self.opt.params, self.cfg.clip)
        self.opt.step()
        return loss, logits

    def buffers(self) -> list[np.ndarray]:
        return [b for _, b in self.net.named_buffers()]

    def _eager_step(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        logits = self.net(self.inputs(x))
        loss = cross_entropy(logits, y)
        self.opt.zero_grad()
        loss.backward()
        if self.cfg.clip:
            optim.clip_grad_norm(self.opt.params, self.cfg.clip)
        self.opt.step()
        return loss, logits

    def use_compiled(self, on: bool) -> None:
        self._step.enabled = on
        if self.comm is not None:
            self._sum_step.enabled = on

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        try:
            with no_grad():
                logits = self.net(self.inputs(to_device(x, self.device))).data
        finally:
            self.net.train()
        return to_host(ops.LogSoftmaxOp.forward(logits, axis=1)[0])

    def params(self) -> dict[str, np.ndarray]:
        return self.net.state_dict()

    def load_params(self, state: dict[str, np.ndarray]) -> None:
        self.net.load_state_dict(state)

    def optim_state(self) -> dict[str, np.ndarray]:
        return self.opt.state_dict()

    def load_optim_state(self, state: dict[str, np.ndarray]) -> None:
        self.opt.load_state_dict(state)


class MLPModel(NetModel):
    """A fully connected network, :class:`~npgrad.nn.MLP`."""

    kind = "mlp"
    net: nn.MLP  # what build returns

    def build(
        self, cfg: Config, image_shape: tuple[int, ...], classes: int, init: np.random.Generator
    ) -> nn.MLP:
        return nn.MLP(
            [int(np.prod(image_shape)), *cfg.hidden, classes],
            activation=cfg.activation,
            dropout=cfg.dropout,
            init=cfg.init,
            rng=init,
            dtype=np.dtype(cfg.dtype),
        )

    def describe(self) -> str:
        sizes = "-".join(str(s) for s in self.net.sizes)
        return f"MLP {sizes} ({self.net.size_text()}), {self.cfg.optimizer}"


class CNNModel(NetModel):
    """A convolutional network: per entry of ``channels`` a block conv (``kernel`` x
    ``kernel``, same padding) -> batch norm -> activation -> 2x2 max pooling, then
    flatten, dropout and a fully connected head with ``hidden`` layers."""

    kind = "cnn"

    def build(
        self, cfg: Config, image_shape: tuple[int, ...], classes: int, init: np.random.Generator
    ) -> nn.Module:
        dtype = np.dtype(cfg.dtype)
        act = nn.ACTIVATIONS[cfg.activation]
        h, w = image_shape
        layers: list[nn.Module] = []
        c_in = 1
        for c in cfg.channels:
            layers += [
                nn.Conv2d(
                    c_in,
                    c,
                    cfg.kernel,
                    padding=cfg.kernel // 2,
                    bias=False,
                    init=cfg.init,
                    rng=init,
                    dtype=dtype,
                ),
                nn.BatchNorm2d(c, dtype=dtype),
                act(),
            ]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c
        layers.append(nn.Flatten())
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout, rng=init))
        head = nn.MLP(
            [c_in * h * w, *cfg.hidden, classes],
            activation=cfg.activation,
            dropout=cfg.dropout,
            init=cfg.init,
            rng=init,
            dtype=dtype,
        )
        return nn.Sequential(*layers, *head.layers)

    def inputs(self, x: np.ndarray) -> Tensor:
        # reshaped by the op, not before: the step's argument is x itself (npgrad.compile)
        return Tensor(x).reshape(len(x), 1, *self.image_shape)

    def describe(self) -> str:
        blocks = "-".join(
            f"conv{self.cfg.kernel}x{self.cfg.kernel}({c})" for c in self.cfg.channels
        )
        head = "-".join(str(s) for s in [*self.cfg.hidden, "out"])
        return (
            f"CNN {blocks} with batch norm and pooling, head {head} "
            f"({self.net.size_text()}), {self.cfg.optimizer}"
        )


class ExerciseModel:
    """The exercise's ``myModel``, built from npgrad's layer classes.

    W1 (D+1, h) and W2 (h, c) from N(0, 1); the inputs carry a ones column so
    that W1's last row is the bias; the gradient is that of the loss summed
    over the batch, and each step is ``W -= lr * grad``.
    """

    kind = "exercise"

    def __init__(
        self,
        cfg: Config,
        image_shape: tuple[int, ...],
        classes: int,
        steps_per_epoch: int = 1,
        rng: np.random.Generator | None = None,
    ) -> None:
        in_features = int(np.prod(image_shape))
        init = np.random.default_rng(cfg.seed)
        dtype = np.dtype(cfg.dtype)
        self.cfg = cfg
        self.lr = cfg.lr
        self.W1 = init.normal(size=(in_features + 1, cfg.hidden[0])).astype(dtype)
        self.W2 = init.normal(size=(cfg.hidden[0], classes)).astype(dtype)
        self.matmul1, self.relu, self.matmul2 = layers.Matmul(), layers.Relu(), layers.Matmul()
        self.softmax, self.log = layers.Softmax(), layers.Log()
        # The input is data: its gradient is never used, so the first Matmul skips it.
        self.matmul1.input_grad = False
        self.steps = 0

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return add_ones_column(x.reshape(len(x), -1))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        h = self.relu.forward(self.matmul1.forward(x, self.W1))
        return self.log.forward(self.softmax.forward(self.matmul2.forward(h, self.W2)))

    def use_compiled(self, on: bool) -> None:
        pass  # the exercise's layer classes always run eagerly, as the exercise wrote them

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        log_prob = self._forward(x)
        rows = np.arange(len(y))
        onehot = np.zeros_like(log_prob)
        onehot[rows, y] = 1
        loss = -float(log_prob[rows, y].sum()) / len(y)
        g = self.softmax.backward(self.log.backward(-onehot))
        g, W2_grad = self.matmul2.backward(g)
        assert g is not None  # matmul2.input_grad is True
        _, W1_grad = self.matmul1.backward(self.relu.backward(g))
        self.W1 -= self.lr * W1_grad
        self.W2 -= self.lr * W2_grad
        self.steps += 1
        return loss, int((log_prob.argmax(axis=1) == y).sum())

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        # log(softmax + 1e-12), as the exercise computes it; argmax is the prediction.
        return self._forward(self.prepare(x))

    def params(self) -> dict[str, np.ndarray]:
        return {"W1": self.W1.copy(), "W2": self.W2.copy()}

    def load_params(self, state: dict[str, np.ndarray]) -> None:
        for name in ("W1", "W2"):
            if name not in state:
                raise CheckpointError(f"state does not fit the exercise model: missing {name}")
            own = getattr(self, name)
            if state[name].shape != own.shape:
                raise CheckpointError(
                    f"{name} has shape {state[name].shape}, the model expects {own.shape}"
                )
            own[...] = state[name]

    def optim_state(self) -> dict[str, np.ndarray]:
        return {"steps": np.array(self.steps)}

    def load_optim_state(self, state: dict[str, np.ndarray]) -> None:
        self.steps = int(state.get("steps", 0))

    def describe(self) -> str:
        n = self.W1.size + self.W2.size
        return (
            f"exercise network {self.W1.shape[0]}-{self.W1.shape[1]}-{self.W2.shape[1]} "
            f"({n:,} weights), full-batch gradient descent"
        )


def add_ones_column(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D + 1) with a last column of ones: the exercise's bias."""
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=x.dtype)
    out[:, :-1] = x
    out[:, -1] = 1
    return out


MODELS: dict[str, type[NetModel] | type[ExerciseModel]] = {
    "mlp": MLPModel,
    "cnn": CNNModel,
    "exercise": ExerciseModel,
}


# --------------------------------------------------------------------------- memory


def estimate_bytes(cfg: Config, image_shape: tuple[int, ...], classes: int, batch: int) -> int:
    """A lower bound on the memory one training step needs: weights, gradients,
    optimizer state (Adam: two moments) and the activations of one batch."""
    item = np.dtype(cfg.dtype).itemsize
    pixels = int(np.prod(image_shape))
    weights = activations = 0
    features = pixels + (cfg.model == "exercise")
    if cfg.model == "cnn":
        k2, c_in, area = cfg.kernel**2, 1, pixels
        for c in cfg.channels:
            weights += c_in * c * k2 + 2 * c
            # unfolded patches, convolution, normalised and activated outputs
            activations += area * (c_in * k2 + 3 * c)
            c_in, area = c, max(area // 4, 1)
        features = c_in * area
    sizes = [features, *cfg.hidden, classes]
    weights += sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    activations += 3 * sum(sizes[1:])  # output, saved input and gradient per layer
    copies = 2 + (2 if cfg.model != "exercise" and cfg.optimizer.startswith("adam") else 1)
    return item * (copies * weights + batch * activations)


def available_memory() -> int | None:
    """Physical memory available now (Linux /proc/meminfo), else total, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def build_model(
    cfg: Config,
    image_shape: tuple[int, ...],
    classes: int,
    steps_per_epoch: int = 1,
    rng: np.random.Generator | None = None,
    batch: int = 0,
) -> Model:
    """The model ``cfg.model`` names, refusing one that could not fit in memory."""
    need = estimate_bytes(cfg, image_shape, classes, batch or 1)
    have = available_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"this network needs at least {_gib(need)} to train, {_gib(have)} is available; "
            "choose a smaller network or --batch-size"
        )
    rng = rng if rng is not None else np.random.default_rng(cfg.seed + 1)
    return MODELS[cfg.model](cfg, tuple(image_shape), classes, steps_per_epoch, rng)


# --------------------------------------------------------------------------- loading for use


def load_for_inference(path: str | os.PathLike) -> tuple[Model, dict]:
    """Rebuild the model stored in a checkpoint (a file or a run directory): (model, meta)."""
    params, _, meta = ckpt.load(path)
    try:
        cfg = config_from_dict(meta["config"])
        shape = [int(n) for n in meta["image_shape"]]
        classes = len(meta["classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete ({exc})") from None
    model = build_model(cfg, tuple(shape), classes)
    model.load_params(params)
    return model, meta
