"""The trainer: epochs over a loader, evaluation, metrics and checkpoints, exact resume.

A :class:`Trainer` is complete when constructed: the data are loaded and the
model built (or restored from a checkpoint by :meth:`Trainer.resume`) before
anything is written, so a run that cannot start leaves nothing behind.
:meth:`Trainer.fit` then takes the run directory's lock, trains, and writes
``checkpoint.npz`` and ``metrics.jsonl`` after every epoch.

Determinism: every random draw after initialisation (shuffling, shifts,
dropout) comes from one generator whose state is saved with each checkpoint,
so a resumed run continues bit-for-bit as an uninterrupted one would. Ctrl-C
stops after the current step and saves mid-epoch; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import fpenv
from ..data import DataLoader, Dataset, load_dataset, split_validation, to_float
from ..distributed import Communicator, broadcast_buffers
from ..errors import CheckpointError, ConfigError, Interrupted, RunLocked, TrainingDiverged
from ..fileio import check_target, write_text
from ..ops.device import check_device
from . import checkpoint as ckpt
from .config import Config, config_from_dict, resume_config, validate
from .models import Model, NetModel, build_model

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
LOCK = ".npgrad.lock"

# --------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """A dataset as the trainer feeds it: float images, labels, flattened test inputs."""

    dataset: Dataset
    x_train: np.ndarray  # (N, H, W): the loader augments images, then flattens
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray  # (N, D)
    y_test: np.ndarray

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identifies the dataset's content (labels and sizes), for resuming on the same data."""
        ds = self.dataset
        h = hashlib.sha256()
        for a in (ds.train_labels, ds.test_labels):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(repr((ds.image_shape, len(ds.train_labels), len(ds.test_labels))).encode())
        return h.hexdigest()[:16]


def prepare_data(cfg: Config, dataset: Dataset | None = None, train: bool = True) -> Prepared:
    """The dataset as floats; ``train=False`` (evaluation) leaves the training split unconverted."""
    ds = dataset or load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    dtype = np.dtype(cfg.dtype).type
    if train:
        x = to_float(ds.train_images, ds.pixel_max, dtype)
    else:
        x = np.zeros((0, *ds.image_shape), dtype=dtype)
    y = ds.train_labels if train else ds.train_labels[:0]
    xv = yv = None
    if cfg.val_fraction and train:
        x, y, xv, yv = split_validation(x, y, cfg.val_fraction, cfg.seed)
        xv = xv.reshape(len(xv), -1)
    xt = to_float(ds.test_images, ds.pixel_max, dtype)
    return Prepared(ds, x, y, xv, yv, xt.reshape(len(xt), -1), ds.test_labels)


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray

    def confusion(self, classes: int) -> np.ndarray:
        """Rows: true class, columns: predicted class."""
        cells = np.bincount(self.labels * classes + self.predictions, minlength=classes**2)
        return cells.reshape(classes, classes)


def evaluate(model: Model, x: np.ndarray, y: np.ndarray, batch_size: int = 2000) -> Evaluation:
    """Mean cross-entropy and accuracy on flattened float inputs, in chunks (bounded memory)."""
    total, preds = 0.0, []
    for start in range(0, len(y), batch_size):
        lp = model.log_probs(x[start : start + batch_size])
        yb = y[start : start + batch_size]
        total -= float(lp[np.arange(len(yb)), yb].sum())
        preds.append(lp.argmax(axis=1))
    p = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    return Evaluation(total / max(len(y), 1), float((p == y).mean()) if len(y) else 0.0, p, y)


def evaluate_checkpoint(
    path: str | os.PathLike, dataset: str | None = None, data_dir: str | None = None
) -> tuple[Evaluation, Prepared, dict]:
    """Evaluate a trained checkpoint on its dataset's test set, or on ``dataset``.

    Refuses a dataset whose images have another shape or whose labels the
    model does not know. Returns (evaluation, the prepared data, the checkpoint's meta).
    """
    from ..data import check_labels
    from .models import load_for_inference

    model, meta = load_for_inference(path)
    cfg = config_from_dict(meta["config"])
    if dataset:
        cfg.dataset = dataset
    if data_dir:
        cfg.data_dir = data_dir
    data = prepare_data(cfg, train=False)
    if list(data.dataset.image_shape) != list(meta["image_shape"]):
        raise CheckpointError(
            f"the checkpoint expects {meta['image_shape']} images, {data.dataset.name} has "
            f"{list(data.dataset.image_shape)}"
        )
    known = len(meta["classes"])
    where = f"{data.dataset.name} test labels (the checkpoint's model knows {known} classes)"
    check_labels(data.y_test, known, where)
    # in the run's subnormal mode, so that its figures are the ones its training reported
    with fpenv.flushing(not cfg.keep_denormals):
        ev = evaluate(model, data.x_test, data.y_test)
    return ev, data, meta


# --------------------------------------------------------------------------- Ctrl-C


class StopRequest:
    """Set by the first Ctrl-C (or :meth:`Trainer.request_stop`): stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self.saving = False  # a second Ctrl-C now would split the checkpoint from its metrics
        self.pending = False  # ... so it waits here until the save is done

    @contextlib.contextmanager
    def protect(self) -> Iterator[None]:
        """Write the checkpoint and the metrics whole: a second Ctrl-C takes effect after."""
        self.saving = True
        try:
            yield
        finally:  # on a failed save, its error is the one reported: the Ctrl-C is dropped
            self.saving, pending, self.pending = False, self.pending, False
        if pending:
            raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, log: Callable[[str], None]) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM, as a job scheduler or ``kill`` sends): set ``stop``, so the
    run saves at the next step. Second: KeyboardInterrupt. The caller's handlers are restored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be caught in the main thread
        return
    signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {}
    for sig in signals:
        before = signal.getsignal(sig)
        previous[sig] = signal.SIG_DFL if before is None else before  # None: set outside Python

    def handler(signum: int, _frame: Any) -> None:
        if stop.requested:
            if stop.saving:
                stop.pending = True
                return
            raise KeyboardInterrupt
        stop.requested = True
        what = "terminated" if signum != signal.SIGINT else "Ctrl-C"
        log(f"{what}: stopping after this step to save; press Ctrl-C again to stop at once")

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


# --------------------------------------------------------------------------- the run lock


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock: one trainer per run directory.

    An OS file lock (``flock``), so a killed trainer's lock disappears with its
    process and a stale lock file is simply taken over. The file records the
    holder's PID for the message the next trainer gets.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking rather than a wrong one
        yield
        return
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise RunLocked(
                f"{out} is in use by another npgrad train (PID {holder}); wait for it to finish "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- the trainer


@dataclass
class EpochProgress:
    """Where an interrupted epoch stands; saved in the checkpoint as ``partial``."""

    epoch: int
    step: int  # batches completed
    loss_sum: float
    correct: int
    seen: int
    seconds: float
    rng_epoch_start: Mapping[str, Any]  # generator state before this epoch's permutation


class Trainer:
    """Train according to a configuration, writing metrics and checkpoints to ``out``.

    ``log`` receives one human-readable line per epoch; ``step_hook(epoch, step)``
    is called before every step (tests use it to simulate an interruption).
    """

    def __init__(
        self,
        cfg: Config,
        out: str | os.PathLike,
        dataset: Dataset | None = None,
        log: Callable[[str], None] | None = None,
        progress: bool | None = None,
        step_hook: Callable[[int, int], None] | None = None,
        compile: bool = True,
        comm: Communicator | None = None,
        device: str = "cpu",
    ) -> None:
        validate(cfg)
        self.device = check_device(device)
        self.cfg = cfg
        self.out = Path(out)
        self.log = log or (lambda line: print(line, file=sys.stderr))
        # None: a bar on a terminal, a plain line every few seconds in a log or CI
        self.progress = progress
        # data-parallel: every rank trains, rank 0 alone speaks and writes
        self.comm = comm
        self.writes = comm is None or comm.root
        if not self.writes:
            self.log, self.progress = (lambda line: None), False
        self.step_hook = step_hook
        self.stop = StopRequest()
        self.data = prepare_data(cfg, dataset)
        self.rng = np.random.default_rng([cfg.seed, 1])
        classes = self.data.dataset.num_classes
        # a batch larger than the training set is the whole set (as the loader makes it)
        batch = min(cfg.batch_size or len(self.data.y_train), len(self.data.y_train))
        steps_per_epoch = -(-len(self.data.y_train) // batch)
        self.model = build_model(
            cfg, self.data.dataset.image_shape, classes, steps_per_epoch, self.rng, batch=batch
        )
        if comm is not None:
            if not isinstance(self.model, NetModel):
                raise ConfigError(
                    "the exercise preset trains in one process (the exercise's full-batch "
                    "gradient descent): run it without --workers or mpiexec"
                )
            if batch < comm.size:
                raise ConfigError(
                    f"a batch of {batch} cannot be shared by {comm.size} workers: use "
                    f"--batch-size {comm.size} or more, or fewer workers"
                )
            self.model.use_comm(comm)
        if device != "cpu":
            if not isinstance(self.model, NetModel):
                raise ConfigError(
                    "the exercise preset runs the exercise's NumPy layer classes: train it "
                    "without --device (on the CPU)"
                )
            if comm is not None:
                raise ConfigError(
                    "data-parallel training (--workers, mpiexec) runs on the CPU: train on "
                    "one GPU in one process, or without --device"
                )
            self.model.to(device)  # a missing CuPy or GPU: DeviceError, naming the extra
        # replayed training steps (npgrad.compile): the same numbers as eager, faster
        self.model.use_compiled(compile)
        self.loader = DataLoader(
            self.model.prepare(self.data.x_train),
            self.data.y_train,
            batch,
            shuffle=self.model.kind != "exercise",
            rng=self.rng,
            shift=cfg.shift,
        )
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.partial: dict[str, Any] | None = None
        self.resumed = False

    @classmethod
    def resume(
        cls,
        out: str | os.PathLike,
        changes: dict[str, Any] | None = None,
        dataset: Dataset | None = None,
        **kwargs: Any,
    ) -> Trainer:
        """Continue the run in ``out`` from its checkpoint.

        ``changes`` may give options that a resumed run can change (``epochs``,
        where the dataset is found); any other option must equal its stored value.
        """
        path = Path(out) / CHECKPOINT
        if not path.exists():
            raise CheckpointError(
                f"no checkpoint in {out} to resume from; drop --resume to start fresh"
            )
        params, opt_state, meta = ckpt.load(path)
        partial = meta.get("partial")
        try:
            stored = config_from_dict(meta["config"])
            start_epoch, history = int(meta["epoch"]), list(meta["history"])
            reached = int(partial["epoch"]) if partial is not None else start_epoch
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: checkpoint metadata is incomplete ({exc})") from None
        cfg = resume_config(stored, changes or {})
        if cfg.epochs < reached:  # the loop would not run, and the summary would contradict it
            into = f" and is in epoch {reached}" if reached > start_epoch else ""
            raise ConfigError(
                f"the run in {out} has trained {start_epoch} epoch"
                f"{'' if start_epoch == 1 else 's'}{into}: --epochs "
                f"{cfg.epochs} ends before that; give at least {reached} to continue it "
                "(npgrad evaluate reads its checkpoint as it is)"
            )
        trainer = cls(cfg, out, dataset=dataset, **kwargs)
        fingerprint = meta.get("dataset_fingerprint")
        if fingerprint is not None and fingerprint != trainer.data.fingerprint:
            raise ConfigError(
                f"{trainer.data.dataset.name} is not the dataset this run was trained on "
                f"({meta['config'].get('dataset')}); resume with that dataset or start a new run"
            )
        trainer.model.load_params(params)
        trainer.model.load_optim_state(opt_state)
        trainer.rng.bit_generator.state = meta["rng"]
        rank_rngs = meta.get("rank_rngs")
        if trainer.comm is not None and isinstance(rank_rngs, list):
            if len(rank_rngs) == trainer.comm.size and isinstance(trainer.model, NetModel):
                # as many ranks as when saved: each one's dropout stream goes on exactly
                trainer.model.rank_rng.bit_generator.state = rank_rngs[trainer.comm.rank]
        trainer.start_epoch = start_epoch
        trainer.history = history[:start_epoch]
        trainer.partial = partial
        trainer.resumed = True
        return trainer

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS

    def request_stop(self) -> None:
        """Stop after the current step, save, and raise :class:`Interrupted` (what Ctrl-C does)."""
        self.stop.requested = True

    def fit(self, force: bool = False) -> dict[str, Any]:
        """Train (or continue) to ``cfg.epochs`` and return the final metrics record."""
        if not self.writes:  # another rank: trains alongside rank 0, writes nothing
            with stop_on_signals(self.stop, self.log):
                self._train()
            return self.history[-1] if self.history else self._evaluate_only()
        created = not self.out.exists()
        try:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                with run_lock(self.out):
                    if self.checkpoint_path.is_dir():  # no save could ever replace it
                        raise ConfigError(
                            f"{self.checkpoint_path} is a directory: move it away, the run "
                            "writes its checkpoint there"
                        )
                    # a FIFO, device or link there is refused now, not after an epoch's work
                    check_target(self.checkpoint_path)
                    if not self.resumed and self.checkpoint_path.exists() and not force:
                        raise ConfigError(
                            f"{self.out} already holds a checkpoint: pass --resume to continue "
                            "it or --force to start over"
                        )
                    self._write_metrics()
                    with stop_on_signals(self.stop, self.log):
                        self._train()
            except OSError as exc:
                raise ConfigError(
                    f"cannot write to {exc.filename or self.out}: {exc.strerror or exc}; "
                    "choose another --out"
                ) from None
        except BaseException:
            if created:  # a run that never saved anything leaves no directory behind
                _remove_if_only(self.out, {LOCK, METRICS})
            raise
        return self.history[-1] if self.history else self._evaluate_only()

    def _train(self) -> None:
        # Subnormal floats (Adam's moments of pixels that are never lit decay into them) are
        # slow on some processors (npgrad.fpenv has the figures): training flushes them to
        # zero, as TensorFlow does, where this platform lets it, unless the run keeps them.
        # Either way the caller's thread gets its mode back after.
        with fpenv.flushing(not self.cfg.keep_denormals):
            self._epochs()

    def _epochs(self) -> None:
        cfg, loader = self.cfg, self.loader
        where = ""
        if self.partial:
            where = f", resuming in epoch {self.partial['epoch']} after step {self.partial['step']}"
        elif self.start_epoch >= cfg.epochs:
            where = ", all trained already: nothing to do (give more --epochs to go on)"
        elif self.start_epoch:
            where = f", resuming after epoch {self.start_epoch}"
        self.log(
            f"{self.model.describe()} on {self.data.dataset.name} "
            f"({len(self.data.y_train)} train, {len(self.data.y_test)} test), {cfg.epochs} "
            f"epochs, batch {cfg.batch_size or 'full'}{where}"
            + (f", on {self.device}" if self.device != "cpu" else "")
        )
        partial, self.partial = self.partial, None
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            resume_at = EpochProgress(**partial) if partial and partial["epoch"] == epoch else None
            partial = None
            try:
                outcome = self._epoch(epoch, resume_at)
            except KeyboardInterrupt:  # a second Ctrl-C, mid-step: nothing consistent to save
                kept = f"epoch {epoch - 1}" if epoch > 1 else "none yet"
                raise Interrupted(
                    f"interrupted in epoch {epoch}; checkpoint kept: {kept} in {self.out}; "
                    "continue with --resume"
                ) from None
            if isinstance(outcome, EpochProgress):  # asked to stop mid-epoch
                with contextlib.suppress(KeyboardInterrupt), self.stop.protect():
                    self._save(epoch - 1, partial=dataclasses.asdict(outcome))
                raise Interrupted(
                    f"stopped in epoch {epoch} after step {outcome.step} of {len(loader)}; "
                    f"saved to {self.checkpoint_path}; continue with --resume"
                )
            record = outcome
            self.history.append(record)
            try:
                with self.stop.protect():
                    self._save(epoch)
                    self._write_metrics()
            except KeyboardInterrupt:  # a second Ctrl-C during the save: it finished first
                raise Interrupted(
                    f"interrupted after epoch {epoch}; saved to {self.checkpoint_path}; "
                    "continue with --resume"
                ) from None
            self.log(_epoch_line(record, cfg.epochs))
            if self._stop_agreed() and epoch < cfg.epochs:
                raise Interrupted(
                    f"stopped after epoch {epoch}; saved to {self.checkpoint_path}; "
                    "continue with --resume"
                )

    def _stop_agreed(self) -> bool:
        if self.comm is None:
            return self.stop.requested
        return bool(getattr(self.model, "stop_agreed", False))

    def _save(self, epochs_done: int, partial: dict[str, Any] | None = None) -> None:
        rank_rngs = None
        if self.comm is not None:  # collective: every rank takes part, rank 0 writes
            self._sync_buffers()
            assert isinstance(self.model, NetModel)
            rank_rngs = self.comm.gather_object(self.model.rank_rng.bit_generator.state)
            if not self.writes:
                return
        ds = self.data.dataset
        meta: dict[str, Any] = {
            "config": self.cfg.to_dict(),
            "epoch": epochs_done,
            "history": self.history,
            "rng": self.rng.bit_generator.state,
            "model": self.model.kind,
            "classes": list(ds.classes),
            "image_shape": list(ds.image_shape),
            "pixel_max": ds.pixel_max,
            "dataset_fingerprint": self.data.fingerprint,
        }
        if partial is not None:
            meta["partial"] = partial
        if rank_rngs is not None:  # each rank's dropout stream: resumed exactly with as many
            meta["rank_rngs"] = rank_rngs
        ckpt.save(self.checkpoint_path, self.model.params(), self.model.optim_state(), meta)

    def _sync_buffers(self) -> None:
        """Rank 0's batch-norm statistics into every rank's (as PyTorch's DDP broadcasts its
        buffers): every rank then holds the network that rank 0 saves and evaluates."""
        if self.comm is not None and isinstance(self.model, NetModel):
            broadcast_buffers(self.model.buffers(), self.comm)

    def _write_metrics(self) -> None:
        """metrics.jsonl holds exactly the checkpoint's history (rewritten atomically)."""
        if not self.writes:
            return
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.history))

    def _evaluate_only(self) -> dict[str, Any]:
        ev = evaluate(self.model, self.data.x_test, self.data.y_test)
        return {"epoch": 0, "test_loss": ev.loss, "test_accuracy": ev.accuracy}

    def _batches(
        self, epoch: int, resume_at: EpochProgress | None
    ) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], Mapping[str, Any], int]:
        """This epoch's batches, the generator state it started from, and the first step."""
        loader = self.loader
        if resume_at is None:
            return loader.batches(), copy.deepcopy(loader.rng.bit_generator.state), 0
        # Same permutation as the interrupted epoch: replay it from the saved state.
        order = None
        if loader.shuffle:
            replay = np.random.default_rng()
            replay.bit_generator.state = resume_at.rng_epoch_start
            order = replay.permutation(len(loader.labels))
        start = resume_at.step
        return loader.batches(order=order, start_batch=start), resume_at.rng_epoch_start, start

    def _epoch(self, epoch: int, resume_at: EpochProgress | None) -> dict[str, Any] | EpochProgress:
        """Train one epoch: its metrics record, or where it stands when asked to stop."""
        t0 = time.perf_counter()
        batches, rng_start, start = self._batches(epoch, resume_at)
        r = resume_at or EpochProgress(epoch, 0, 0.0, 0, 0, 0.0, rng_start)
        bar, lines = None, None
        terminal = sys.stderr.isatty()
        if self.progress or (self.progress is None and terminal):
            bar = _progress_bar(batches, len(self.loader), start, epoch, self.cfg.epochs)
        if self.progress is not False and bar is None:
            lines = ProgressLines(self.log, epoch, self.cfg.epochs, len(self.loader), r.seen)
        for step, (xb, yb) in enumerate(bar if bar is not None else batches, start=start):
            if self.step_hook is not None:
                self.step_hook(epoch, step)
            if isinstance(self.model, NetModel) and self.comm is not None:
                self.model.stop_vote = self.stop.requested  # ranks stop together: all vote
            loss, ok = self.model.train_step(xb, yb)
            if not math.isfinite(loss):
                kept = f"epoch {epoch - 1}" if epoch > 1 else "none"
                raise TrainingDiverged(
                    f"loss became {loss} at epoch {epoch}, step {step + 1}; training stopped, "
                    f"last good checkpoint: {kept} in {self.out}; try a smaller learning rate "
                    f"(now {self.cfg.lr:g})"
                )
            r.loss_sum += loss * len(yb)
            r.correct += ok
            r.seen += len(yb)
            if bar is not None and step % 20 == 0:
                bar.set_postfix(loss=f"{r.loss_sum / r.seen:.4f}", acc=f"{r.correct / r.seen:.2%}")
            if lines is not None:
                lines.update(step + 1, r)
            if self._stop_agreed() and step + 1 < len(self.loader):
                # Between steps, before the next batch is drawn: everything is consistent.
                if bar is not None:
                    bar.close()
                r.step, r.seconds = step + 1, r.seconds + time.perf_counter() - t0
                return r
        seconds = r.seconds + time.perf_counter() - t0
        self._sync_buffers()
        test = evaluate(self.model, self.data.x_test, self.data.y_test)
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": r.loss_sum / max(r.seen, 1),
            "train_accuracy": r.correct / max(r.seen, 1),
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
        }
        if self.data.x_val is not None and self.data.y_val is not None:  # set together
            val = evaluate(self.model, self.data.x_val, self.data.y_val)
            record["val_loss"], record["val_accuracy"] = val.loss, val.accuracy
        record["lr"] = float(self.model.lr)
        record["seconds"] = seconds
        record["samples_per_second"] = r.seen / seconds if seconds > 0 else 0.0
        return record


PROGRESS_EVERY = 10.0  # seconds between plain progress lines


class ProgressLines:
    """Progress where no bar can be drawn (a log file, CI): a plain line every few seconds.

    A short epoch prints nothing; a CNN epoch of minutes shows that it is alive and how
    far it is, as one line each time, never a carriage-return animation.
    """

    def __init__(
        self, log: Callable[[str], None], epoch: int, epochs: int, total: int, seen: int
    ) -> None:
        self.log, self.epoch, self.epochs, self.total = log, epoch, epochs, total
        self.seen = seen  # a resumed epoch's samples were not seen in this process
        self.start = self.last = time.perf_counter()

    def update(self, step: int, r: EpochProgress) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY or step >= self.total:
            return
        self.last = now
        rate = (r.seen - self.seen) / max(now - self.start, 1e-9)
        self.log(
            f"epoch {self.epoch}/{self.epochs}  step {step}/{self.total} "
            f"({step / self.total:.0%})  loss {r.loss_sum / r.seen:.4f} "
            f"acc {r.correct / r.seen:.2%}  {rate:,.0f} samples/s"
        )


def _progress_bar(batches: Any, total: int, initial: int, epoch: int, epochs: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        batches,
        total=total,
        initial=initial,
        desc=f"epoch {epoch}/{epochs}",
        leave=False,
        unit="batch",
        file=sys.stderr,
    )


def _remove_if_only(folder: Path, names: set[str]) -> None:
    """Remove ``folder`` if it holds nothing but ``names`` (what a failed start wrote)."""
    try:
        entries = {p.name for p in folder.iterdir()}
        if entries <= names:
            for name in entries:
                (folder / name).unlink()
            folder.rmdir()
    except OSError:
        pass


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    val = f"  val {r['val_accuracy']:.2%}" if "val_accuracy" in r else ""
    secs = f"{r['seconds']:.{2 if r['seconds'] < 10 else 1}f}s"
    return (
        f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} "
        f"acc {r['train_accuracy']:.2%}  test loss {r['test_loss']:.4f} "
        f"acc {r['test_accuracy']:.2%}{val}  {secs} "
        f"({r['samples_per_second']:,.0f} samples/s)"
    )


# --------------------------------------------------------------------------- starting a run


def default_out(dataset: str, preset: str) -> Path:
    """``runs/<dataset name>-<preset>``: where a run goes when no directory is given."""
    return Path("runs") / f"{Path(dataset).name}-{preset}"


def open_run(
    preset: str | None = None,
    options: dict[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    **kwargs: Any,
) -> Trainer:
    """A :class:`Trainer` for a new run, or for continuing one: what ``npgrad train`` does.

    ``options`` are the explicitly given options (see :mod:`npgrad.app.config`). A
    new run loads its dataset first, so that the default preset adapts to the
    dataset's family whatever it was called; a resumed run keeps its stored
    configuration except for what :func:`~npgrad.app.config.resume_config` allows.
    """
    from .config import BY_NAME, make_config

    options = dict(options or {})
    if resume and force:
        raise ConfigError("--resume continues a run and --force starts it over: give one of them")
    dataset_name = str(options.get("dataset") or BY_NAME["dataset"].default)
    out = Path(out) if out is not None else default_out(dataset_name, preset or "default")
    if resume:
        if preset is not None:
            options["preset"] = preset  # may be repeated, not changed (resume_config)
        return Trainer.resume(out, changes=options, **kwargs)
    ds = load_dataset(dataset_name, data_dir=options.get("data_dir"))
    cfg = make_config(preset or "default", family=getattr(ds, "family", None), **options)
    return Trainer(cfg, out, dataset=ds, **kwargs)


def summary(trainer: Trainer, final: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The one-line JSON summary of a finished run."""
    out = {
        "dataset": trainer.data.dataset.name,
        "preset": trainer.cfg.preset,
        "model": trainer.cfg.model,
        "epochs": final.get("epoch", 0),
        "test_accuracy": final.get("test_accuracy"),
        "test_loss": final.get("test_loss"),
        "train_accuracy": final.get("train_accuracy"),
        "train_loss": final.get("train_loss"),
        "train_seconds": round(sum(r.get("seconds", 0.0) for r in trainer.history), 3),
        "total_seconds": round(elapsed, 3),
        "checkpoint": str(trainer.checkpoint_path),
        "device": trainer.device,
    }
    if "val_accuracy" in final:
        out["val_accuracy"] = final["val_accuracy"]
    return out
