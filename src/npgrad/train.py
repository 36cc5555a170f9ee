"""The trainer: epochs over a loader, evaluation, metrics, checkpoints, exact resume.

Two kinds of model share the loop:

* :class:`NetModel`: an :class:`~npgrad.nn.MLP` on the Tensor engine with an
  optimizer and a learning-rate schedule (the default preset);
* :class:`ExerciseModel`: the exercise's network built from its layer classes
  (:mod:`npgrad.layers`), the ones column as bias, full-batch gradient descent
  on the summed loss (``--preset exercise``).

Determinism: every random draw after initialisation (shuffling, shifts,
dropout) comes from one generator whose state is saved with each epoch's
checkpoint, so ``--resume`` continues bit-for-bit as an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint as ckpt
from . import layers, nn, ops, optim
from .autodiff import Tensor, cross_entropy, no_grad
from .data import DataLoader, Dataset, load_dataset, split_validation, to_float
from .errors import CheckpointError, ConfigError, Interrupted, TrainingDiverged

# --------------------------------------------------------------------------- configuration


@dataclass
class Config:
    """Everything that defines a run; stored in every checkpoint."""

    preset: str = "default"
    dataset: str = "mnist"
    data_dir: str | None = None
    hidden: list[int] = field(default_factory=lambda: [256])
    activation: str = "relu"
    epochs: int = 10
    batch_size: int = 128  # 0 means the full training set (one step per epoch)
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    warmup_epochs: float = 0.0
    dropout: float = 0.2
    shift: int = 1
    val_fraction: float = 0.0
    init: str = "he"
    clip: float = 0.0
    seed: int = 0
    dtype: str = "float32"
    loss_reduction: str = "mean"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"configuration has unknown keys {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # What we recommend: He init, Adam with a one-cycle schedule, 1-pixel random
    # shifts and dropout 0.2, minibatches of 128.
    "default": {},
    # Plain Adam, no augmentation or regularisation: the baseline the default beats.
    "plain": {"hidden": [100], "dropout": 0.0, "shift": 0, "schedule": "constant", "lr": 1e-3},
    # The exercise, exactly: layer classes, N(0,1) weights, ones column, full-batch
    # gradient descent at lr 1e-5 on the summed loss, 50 epochs, float64.
    "exercise": {
        "hidden": [100],
        "activation": "relu",
        "epochs": 50,
        "batch_size": 0,
        "optimizer": "gd",
        "lr": 1e-5,
        "schedule": "constant",
        "dropout": 0.0,
        "shift": 0,
        "init": "normal",
        "dtype": "float64",
        "loss_reduction": "sum",
    },
}
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "gd")

# Where the default preset adapts to a named dataset (measured, see README):
# the embedded 8x8 digits, where a shift is a large part of the image and 1,437
# samples make few steps per epoch; Fashion-MNIST's 60k centred garments, which
# lose accuracy with shifts (88.9% without, 88.0% with 1 pixel, 10 epochs).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"shift": 0, "batch_size": 32, "epochs": 20},
    "fashion-mnist": {"shift": 0},
}


def make_config(preset: str = "default", **overrides: Any) -> Config:
    """A preset's configuration with explicit ``overrides`` (None values are ignored)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}")
    extra = DATASET_DEFAULTS.get(str(overrides.get("dataset")), {}) if preset == "default" else {}
    values = {**PRESETS[preset], **extra, **{k: v for k, v in overrides.items() if v is not None}}
    cfg = Config(preset=preset, **values)
    validate(cfg)
    return cfg


def parse_hidden(text: str) -> list[int]:
    """``"256,128"`` or ``"256-128"`` -> [256, 128]; ``""``/``"none"`` -> [] (no hidden layer)."""
    text = text.strip().lower()
    if text in ("", "none", "0"):
        return []
    parts = [p.strip() for p in text.replace("-", ",").replace("x", ",").split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"bad architecture {text!r}: give hidden sizes as integers, e.g. --hidden 256,128"
        ) from None
    if any(s <= 0 for s in sizes):
        raise ConfigError(f"bad architecture {text!r}: hidden sizes must be positive")
    return sizes


def validate(cfg: Config) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.epochs >= 0, f"epochs must be zero or more, got {cfg.epochs}")
    need(cfg.batch_size >= 0, f"batch size must be positive (0 = full batch), got {cfg.batch_size}")
    need(cfg.lr > 0 and math.isfinite(cfg.lr), f"learning rate must be positive, got {cfg.lr}")
    need(cfg.weight_decay >= 0, f"weight decay must be zero or more, got {cfg.weight_decay}")
    need(0 <= cfg.dropout < 1, f"dropout must be in [0, 1), got {cfg.dropout}")
    need(0 <= cfg.shift <= 4, f"shift must be between 0 and 4 pixels, got {cfg.shift}")
    need(
        0 <= cfg.val_fraction < 1, f"validation fraction must be in [0, 1), got {cfg.val_fraction}"
    )
    need(
        cfg.optimizer in OPTIMIZERS,
        f"unknown optimizer {cfg.optimizer!r}: use {', '.join(OPTIMIZERS)}",
    )
    need(
        cfg.schedule in optim.SCHEDULES,
        f"unknown schedule {cfg.schedule!r}: use {', '.join(optim.SCHEDULES)}",
    )
    need(
        cfg.activation in nn.ACTIVATIONS,
        f"unknown activation {cfg.activation!r}: use {', '.join(nn.ACTIVATIONS)}",
    )
    need(
        cfg.dtype in ("float32", "float64"), f"dtype must be float32 or float64, got {cfg.dtype!r}"
    )
    need(all(h > 0 for h in cfg.hidden), f"hidden sizes must be positive, got {cfg.hidden}")
    inits = ("he", "kaiming", "glorot", "xavier", "normal")
    need(cfg.init in inits, f"unknown init {cfg.init!r}: use he, glorot or normal")
    if cfg.preset == "exercise" or cfg.optimizer == "gd":
        need(len(cfg.hidden) == 1, "the exercise's network has exactly one hidden layer")
        need(cfg.activation == "relu", "the exercise's network uses relu")  # fmt: skip


# --------------------------------------------------------------------------- models


class NetModel:
    """An MLP trained with an optimizer on the Tensor engine."""

    kind = "mlp"

    def __init__(self, cfg: Config, in_features: int, classes: int, steps_total: int,
                 rng: np.random.Generator) -> None:  # fmt: skip
        dtype = np.dtype(cfg.dtype)
        self.cfg = cfg
        self.net = nn.MLP([in_features, *cfg.hidden, classes], activation=cfg.activation,
                          dropout=cfg.dropout, init=cfg.init, rng=np.random.default_rng(cfg.seed),
                          dtype=dtype)  # fmt: skip
        self.net.set_rng(rng)
        params = self.net.parameters()
        name = cfg.optimizer
        if name == "adam":
            self.opt: optim.Optimizer = optim.Adam(params, cfg.lr, weight_decay=cfg.weight_decay)
        elif name == "adamw":
            self.opt = optim.AdamW(params, cfg.lr, weight_decay=cfg.weight_decay)
        else:
            momentum = 0.0 if name == "sgd" else cfg.momentum
            self.opt = optim.SGD(params, cfg.lr, momentum=momentum, nesterov=name == "nesterov",
                                 weight_decay=cfg.weight_decay)  # fmt: skip
        steps_per_epoch = max(steps_total // max(cfg.epochs, 1), 1)
        self.schedule = optim.make_schedule(cfg.schedule, cfg.lr, steps_total,
                                            int(cfg.warmup_epochs * steps_per_epoch))  # fmt: skip

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self.opt.lr = self.schedule(self.opt.steps)
        logits = self.net(Tensor(x))
        loss = cross_entropy(logits, y, reduction=self.cfg.loss_reduction)
        self.opt.zero_grad()
        loss.backward()
        if self.cfg.clip:
            optim.clip_grad_norm(self.opt.params, self.cfg.clip)
        self.opt.step()
        mean_loss = float(loss.data) / (len(y) if self.cfg.loss_reduction == "sum" else 1)
        return mean_loss, int((logits.data.argmax(axis=1) == y).sum())

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        try:
            with no_grad():
                return self.net(Tensor(x)).data
        finally:
            self.net.train()

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        return ops.LogSoftmax.forward(self.logits(x), axis=1)[0]

    def params(self) -> dict[str, np.ndarray]:
        return self.net.state_dict()

    def load_params(self, state: dict[str, np.ndarray]) -> None:
        self.net.load_state_dict(state)

    def optim_state(self) -> dict[str, np.ndarray]:
        return self.opt.state_dict()

    def load_optim_state(self, state: dict[str, np.ndarray]) -> None:
        self.opt.load_state_dict(state)

    def describe(self) -> str:
        sizes = "-".join(str(s) for s in self.net.sizes)
        return f"MLP {sizes} ({self.net.num_parameters():,} parameters), {self.cfg.optimizer}"


class ExerciseModel:
    """The exercise's ``myModel`` on npgrad's layer classes (inputs carry the ones column)."""

    kind = "exercise"

    def __init__(self, cfg: Config, in_features: int, classes: int, steps_total: int = 0,
                 rng: np.random.Generator | None = None) -> None:  # fmt: skip
        init = np.random.default_rng(cfg.seed)
        dtype = np.dtype(cfg.dtype)
        self.cfg = cfg
        self.W1 = init.normal(size=(in_features + 1, cfg.hidden[0])).astype(dtype)
        self.W2 = init.normal(size=(cfg.hidden[0], classes)).astype(dtype)
        self.classes = classes
        self.matmul1, self.relu, self.matmul2 = layers.Matmul(), layers.Relu(), layers.Matmul()
        self.softmax, self.log = layers.Softmax(), layers.Log()
        # The input is data: its gradient is never used, so the first Matmul skips it.
        self.matmul1.input_grad = False
        self.steps = 0

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = self.relu.forward(self.matmul1.forward(x, self.W1))
        return self.log.forward(self.softmax.forward(self.matmul2.forward(h, self.W2)))

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        log_prob = self.forward(x)
        onehot = np.zeros_like(log_prob)
        onehot[np.arange(len(y)), y] = 1
        loss = -float(log_prob[np.arange(len(y)), y].sum()) / len(y)
        g = self.softmax.backward(self.log.backward(-onehot))
        g, W2_grad = self.matmul2.backward(g)
        _, W1_grad = self.matmul1.backward(self.relu.backward(g))
        self.W1 -= self.cfg.lr * W1_grad
        self.W2 -= self.cfg.lr * W2_grad
        self.steps += 1
        return loss, int((log_prob.argmax(axis=1) == y).sum())

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        return self.forward(add_ones_column(x))

    logits = log_probs  # argmax and softmax are the same on log-probabilities

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
        return (f"exercise network {self.W1.shape[0]}-{self.W1.shape[1]}-{self.W2.shape[1]} "
                f"({n:,} weights), full-batch gradient descent")  # fmt: skip


def add_ones_column(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D + 1) with a last column of ones: the exercise's bias."""
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=x.dtype)
    out[:, :-1] = x
    out[:, -1] = 1
    return out


def build_model(cfg: Config, in_features: int, classes: int, steps_total: int = 1,
                rng: np.random.Generator | None = None) -> NetModel | ExerciseModel:  # fmt: skip
    rng = rng if rng is not None else np.random.default_rng(cfg.seed + 1)
    if cfg.optimizer == "gd":
        return ExerciseModel(cfg, in_features, classes, steps_total, rng)
    return NetModel(cfg, in_features, classes, steps_total, rng)


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray

    def confusion(self, classes: int) -> np.ndarray:
        """Rows: true class, columns: predicted class."""
        return np.bincount(self.labels * classes + self.predictions,
                           minlength=classes * classes).reshape(classes, classes)  # fmt: skip


def evaluate(model: NetModel | ExerciseModel, x: np.ndarray, y: np.ndarray,
             batch_size: int = 2000) -> Evaluation:  # fmt: skip
    """Mean cross-entropy and accuracy of ``model`` on flattened float inputs ``x``."""
    total, preds = 0.0, []
    for start in range(0, len(y), batch_size):
        lp = model.log_probs(x[start : start + batch_size])
        yb = y[start : start + batch_size]
        total -= float(lp[np.arange(len(yb)), yb].sum())
        preds.append(lp.argmax(axis=1))
    p = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    n = max(len(y), 1)
    return Evaluation(total / n, float((p == y).mean()) if len(y) else 0.0, p, y)


# --------------------------------------------------------------------------- trainer


@dataclass
class EpochProgress:
    """Where an interrupted epoch stands; saved in the checkpoint as ``partial``."""

    epoch: int
    step: int  # batches completed
    loss_sum: float
    correct: int
    seen: int
    seconds: float
    rng_epoch_start: dict  # generator state before this epoch's permutation


_NOT_INSTALLED = object()


class _Pause(Exception):
    def __init__(self, progress: EpochProgress) -> None:
        self.progress = progress


@dataclass
class Prepared:
    dataset: Dataset
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray


def prepare_data(cfg: Config, dataset: Dataset | None = None) -> Prepared:
    ds = dataset or load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    dtype = np.dtype(cfg.dtype).type
    x = to_float(ds.train_images, ds.pixel_max, dtype)
    y = ds.train_labels
    xv = yv = None
    if cfg.val_fraction:
        x, y, xv, yv = split_validation(x, y, cfg.val_fraction, cfg.seed)
    xt = to_float(ds.test_images, ds.pixel_max, dtype)

    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(len(a), -1)

    return Prepared(ds, x, y, None if xv is None else flat(xv), yv, flat(xt), ds.test_labels)


class Trainer:
    """Train according to a :class:`Config`, writing metrics and checkpoints to ``out``.

    ``log`` receives one human-readable line per epoch; ``step_hook(epoch, step)``
    is called before every step (tests use it to simulate an interruption).
    """

    def __init__(self, cfg: Config, out: str | os.PathLike, dataset: Dataset | None = None,
                 log: Callable[[str], None] | None = None, progress: bool | None = None,
                 step_hook: Callable[[int, int], None] | None = None) -> None:  # fmt: skip
        validate(cfg)
        self.cfg = cfg
        self.out = Path(out)
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.step_hook = step_hook
        self._dataset = dataset
        self._stop = False
        self.history: list[dict[str, Any]] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.npz"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _check_out(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".npgrad-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"cannot write to output directory {self.out}: {exc.strerror or exc}; "
                "choose another --out"
            ) from None

    def fit(
        self, resume: bool = False, force: bool = False, epochs: int | None = None
    ) -> dict[str, Any]:
        """Train (or continue) and return the final metrics record.

        With ``resume``, the checkpoint's configuration is used as stored; only
        ``epochs`` (when given) changes, to extend or shorten the run.
        """
        cfg = self.cfg
        if not resume and self.checkpoint_path.exists() and not force:
            raise ConfigError(
                f"{self.out} already holds a checkpoint: pass --resume to continue it or "
                "--force to start over"
            )
        self._check_out()
        state = None
        if resume:
            if not self.checkpoint_path.exists():
                raise CheckpointError(
                    f"no checkpoint in {self.out} to resume from; drop --resume to start fresh"
                )
            params, opt_state, meta = ckpt.load(self.checkpoint_path)
            stored = Config.from_dict(meta["config"])
            if epochs is not None:
                stored.epochs = epochs
            validate(stored)
            self.cfg = cfg = stored
            state = (params, opt_state, meta)

        data = prepare_data(cfg, self._dataset)
        rng = np.random.default_rng([cfg.seed, 1])
        x_train = data.x_train
        exercise = cfg.optimizer == "gd"
        if exercise:  # the exercise feeds (N, 785) rows with the ones column, built once
            x_train = add_ones_column(x_train.reshape(len(x_train), -1))
        batch = cfg.batch_size or len(data.y_train)
        loader = DataLoader(x_train, data.y_train, batch, shuffle=not exercise, rng=rng,
                            shift=cfg.shift)  # fmt: skip
        in_features = int(np.prod(data.x_train.shape[1:]))
        classes = data.dataset.num_classes
        model = build_model(cfg, in_features, classes, len(loader) * max(cfg.epochs, 1), rng)
        start_epoch = 0
        partial = None
        if state is not None:
            params, opt_state, meta = state
            model.load_params(params)
            model.load_optim_state(opt_state)
            rng.bit_generator.state = meta["rng"]
            start_epoch = int(meta["epoch"])
            self.history = list(meta["history"])[:start_epoch]
            partial = meta.get("partial")
        self._rewrite_metrics()
        self.model, self.data = model, data
        where = ""
        if partial:
            where = f", resuming in epoch {partial['epoch']} after step {partial['step']}"
        elif start_epoch:
            where = f", resuming after epoch {start_epoch}"
        self.log(f"{model.describe()} on {data.dataset.name} ({len(data.y_train)} train, "
                 f"{len(data.y_test)} test), {cfg.epochs} epochs, batch "
                 f"{'full' if not cfg.batch_size else cfg.batch_size}{where}")  # fmt: skip

        previous_handler = self._catch_sigint()
        try:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                resume_at = (
                    EpochProgress(**partial) if partial and partial["epoch"] == epoch else None
                )
                partial = None
                try:
                    record = self._epoch(epoch, model, loader, data, resume_at)
                except _Pause as pause:
                    self._save(
                        epoch - 1, model, rng, data, partial=dataclasses.asdict(pause.progress)
                    )
                    raise Interrupted(
                        f"stopped in epoch {epoch} after step {pause.progress.step} of {len(loader)}; "
                        f"saved to {self.checkpoint_path}; continue with --resume"
                    ) from None
                except KeyboardInterrupt:  # a second Ctrl-C, mid-step: nothing consistent to save
                    kept = f"epoch {epoch - 1}" if epoch > 1 else "none yet"
                    raise Interrupted(
                        f"interrupted in epoch {epoch}; checkpoint kept: {kept} in {self.out}; "
                        "continue with --resume"
                    ) from None
                self.history.append(record)
                self._save(epoch, model, rng, data)
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                self.log(_epoch_line(record, cfg.epochs))
                if self._stop and epoch < cfg.epochs:
                    raise Interrupted(
                        f"stopped after epoch {epoch}; saved to {self.checkpoint_path}; "
                        "continue with --resume"
                    )
        finally:
            self._restore_sigint(previous_handler)
        if not self.checkpoint_path.exists():  # zero epochs: keep the initial model usable
            self._save(0, model, rng, data)
        final = self.history[-1] if self.history else self._evaluate_only(model, data)
        return final

    def request_stop(self) -> None:
        """Stop after the current step, save, and raise :class:`Interrupted` (what Ctrl-C does)."""
        self._stop = True

    def _catch_sigint(self) -> Any:
        """First Ctrl-C: stop cleanly after the current step. Second: stop at once."""
        self._stop = False
        if threading.current_thread() is not threading.main_thread():
            return _NOT_INSTALLED  # signals can only be caught in the main thread
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # installed outside Python: restore the default afterwards
            previous = signal.SIG_DFL

        def handler(_signum: int, _frame: Any) -> None:
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
            self.log("stopping after this step to save; press Ctrl-C again to stop at once")

        signal.signal(signal.SIGINT, handler)
        return previous

    def _restore_sigint(self, previous: Any) -> None:
        if previous is not _NOT_INSTALLED:
            signal.signal(signal.SIGINT, previous)

    def _save(self, epochs_done: int, model: Any, rng: np.random.Generator, data: Prepared,
              partial: dict[str, Any] | None = None) -> None:  # fmt: skip
        meta: dict[str, Any] = {
            "config": self.cfg.to_dict(),
            "epoch": epochs_done,
            "history": self.history,
            "rng": rng.bit_generator.state,
            "model": model.kind,
            "classes": list(data.dataset.classes),
            "image_shape": list(data.dataset.image_shape),
            "pixel_max": data.dataset.pixel_max,
        }
        if partial is not None:
            meta["partial"] = partial
        ckpt.save(self.checkpoint_path, model.params(), model.optim_state(), meta)

    def _evaluate_only(self, model: Any, data: Prepared) -> dict[str, Any]:
        ev = evaluate(model, data.x_test, data.y_test)
        return {"epoch": 0, "test_loss": ev.loss, "test_accuracy": ev.accuracy}

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl holds exactly the checkpoint's history (atomic rewrite)."""
        tmp = self.metrics_path.with_suffix(".jsonl.part")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        os.replace(tmp, self.metrics_path)

    def _epoch(self, epoch: int, model: Any, loader: DataLoader, data: Prepared,
               resume_at: EpochProgress | None = None) -> dict[str, Any]:  # fmt: skip
        t0 = time.perf_counter()
        if resume_at is None:
            rng_start = copy.deepcopy(loader.rng.bit_generator.state)
            start, loss_sum, correct, seen, before = 0, 0.0, 0, 0, 0.0
            batches: Iterable = loader.batches()
        else:
            # Same permutation as the interrupted epoch: replay it from the saved state.
            rng_start = resume_at.rng_epoch_start
            order = None
            if loader.shuffle:
                replay = np.random.default_rng()
                replay.bit_generator.state = rng_start
                order = replay.permutation(len(loader.labels))
            start, loss_sum, correct = resume_at.step, resume_at.loss_sum, resume_at.correct
            seen, before = resume_at.seen, resume_at.seconds
            batches = loader.batches(order=order, start_batch=start)
        bar = None
        if self.progress:
            try:
                from tqdm import tqdm

                bar = tqdm(batches, total=len(loader), initial=start, desc=f"epoch {epoch}/{self.cfg.epochs}",
                           leave=False, unit="batch", file=sys.stderr)  # fmt: skip
                batches = bar
            except ImportError:
                pass
        for step, (xb, yb) in enumerate(batches, start=start):
            if self.step_hook is not None:
                self.step_hook(epoch, step)
            loss, ok = model.train_step(xb, yb)
            if not math.isfinite(loss):
                kept = f"epoch {epoch - 1}" if epoch > 1 else "none"
                raise TrainingDiverged(
                    f"loss became {loss} at epoch {epoch}, step {step + 1}; training stopped, "
                    f"last good checkpoint: {kept} in {self.out}; try a smaller learning rate "
                    f"(now {self.cfg.lr:g})"
                )
            loss_sum += loss * len(yb)
            correct += ok
            seen += len(yb)
            if bar is not None and step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}")
            if self._stop and step + 1 < len(loader):
                # Between steps, before the next batch is drawn: everything is consistent.
                if bar is not None:
                    bar.close()
                raise _Pause(EpochProgress(epoch, step + 1, loss_sum, correct, seen,
                                           before + time.perf_counter() - t0, rng_start))  # fmt: skip
        seconds = before + time.perf_counter() - t0
        test = evaluate(model, data.x_test, data.y_test)
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
        }
        if data.x_val is not None:
            val = evaluate(model, data.x_val, data.y_val)
            record["val_loss"], record["val_accuracy"] = val.loss, val.accuracy
        record["lr"] = float(getattr(getattr(model, "opt", None), "lr", self.cfg.lr))
        record["seconds"] = seconds
        record["samples_per_second"] = seen / seconds if seconds > 0 else 0.0
        return record


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    val = f"  val {r['val_accuracy']:.2%}" if "val_accuracy" in r else ""
    return (f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.2%}  test loss {r['test_loss']:.4f} "
            f"acc {r['test_accuracy']:.2%}{val}  {r['seconds']:.{2 if r['seconds'] < 10 else 1}f}s "
            f"({r['samples_per_second']:,.0f} samples/s)")  # fmt: skip


# --------------------------------------------------------------------------- loading for use


def load_for_inference(path: str | os.PathLike) -> tuple[NetModel | ExerciseModel, dict]:
    """Rebuild the model stored in a checkpoint; returns (model, meta)."""
    params, _, meta = ckpt.load(path)
    try:
        cfg = Config.from_dict(meta["config"])
        shape = meta["image_shape"]
        classes = len(meta["classes"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete ({exc})") from None
    model = build_model(cfg, int(np.prod(shape)), classes)
    model.load_params(params)
    return model, meta
