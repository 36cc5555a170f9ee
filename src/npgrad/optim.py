"""Optimizers (updates in place), learning-rate schedules and gradient clipping.

Optimizer state is plain NumPy arrays, exposed by ``state_dict()`` so that
checkpoints carry it and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import tracing
from .autodiff import Tensor
from .errors import CheckpointError, ConfigError
from .ops.device import device_of, host_copy, namespace, to_device

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "Schedule",
    "Constant",
    "StepDecay",
    "Cosine",
    "OneCycle",
    "make_schedule",
    "clip_grad_norm",
]


class Optimizer:
    """Base class: holds parameters, the learning rate and per-parameter state arrays.

    A subclass's own ``step`` and ``zero_grad`` are made replayable
    (:func:`npgrad.tracing.replayable`) as the class is defined: a compiled step calls
    them again on every replay, whatever they do inside.
    """

    state_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("step", "zero_grad"):
            if name in cls.__dict__:
                setattr(cls, name, tracing.replayable(cls.__dict__[name]))

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ConfigError("optimizer got no parameters")
        if not lr > 0 or not math.isfinite(lr):
            raise ConfigError(f"learning rate must be a positive number, got {lr}")
        self.lr = float(lr)
        self.steps = 0
        self.state = [{k: _zeros(p.data) for k in self.state_names} for p in self.params]
        # One scratch buffer per parameter: updates allocate nothing per step.
        self._buf = [_zeros(p.data) for p in self.params]

    @tracing.replayable
    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @tracing.replayable
    def step(self) -> None:
        self.steps += 1
        for i, p in enumerate(self.params):
            if type(self._buf[i]) is not type(p.data):  # the model moved (Module.to)
                self._follow(i, p.data)
            if p.grad is not None:
                self._update(p.data, p.grad, self.state[i], self._buf[i])

    def _follow(self, i: int, like: Any) -> None:
        """Move parameter ``i``'s state to the device of ``like``, values kept."""
        device = device_of(like)
        self.state[i] = {k: to_device(v, device) for k, v in self.state[i].items()}
        self._buf[i] = _zeros(like)

    def _update(self, w: np.ndarray, g: np.ndarray, s: dict, buf: np.ndarray) -> None:
        raise NotImplementedError  # pragma: no cover

    def state_dict(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"steps": np.array(self.steps), "lr": np.array(self.lr)}
        for i, s in enumerate(self.state):
            for k, v in s.items():
                out[f"{i}.{k}"] = host_copy(v)
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        try:
            self.steps = int(state["steps"])
            self.lr = float(state["lr"])
            for i, s in enumerate(self.state):
                for k in s:
                    src = state[f"{i}.{k}"]
                    if src.shape != s[k].shape:
                        raise CheckpointError(
                            f"optimizer state {i}.{k} has shape {src.shape}, expected {s[k].shape}"
                        )
                    s[k][...] = namespace(s[k]).asarray(src)  # to the state's device
        except KeyError as exc:
            raise CheckpointError(f"optimizer state lacks {exc.args[0]!r}") from None


def _zeros(like: Any) -> Any:
    return namespace(like).zeros_like(like)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and L2 weight decay.

    ``v = momentum * v + (g + wd * w)``; ``w -= lr * v`` (or, Nesterov,
    ``w -= lr * (g + momentum * v)``), PyTorch's convention.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        self.state_names = ("velocity",) if momentum else ()
        super().__init__(params, lr)
        if nesterov and not momentum:
            raise ConfigError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def _update(self, w: np.ndarray, g: np.ndarray, s: dict, buf: np.ndarray) -> None:
        xp = namespace(w)
        d = g
        if self.weight_decay:
            xp.multiply(w, self.weight_decay, out=buf)
            buf += g
            d = buf
        if not self.momentum:
            xp.multiply(d, self.lr, out=buf)
            w -= buf
            return
        v = s["velocity"]
        v *= self.momentum
        v += d
        if self.nesterov:  # w -= lr * (d + momentum * v), in two in-place passes
            xp.multiply(d, self.lr, out=buf)
            w -= buf
            xp.multiply(v, self.lr * self.momentum, out=buf)
        else:
            xp.multiply(v, self.lr, out=buf)
        w -= buf


class Adam(Optimizer):
    r"""Adam (Kingma & Ba). ``weight_decay`` adds ``wd * w`` to the gradient (L2, coupled).

    Same update as PyTorch's, computed with unscaled moment sums to save memory
    passes (this is memory-bound for MNIST-sized layers): with
    :math:`M_t = \beta_1 M_{t-1} + g` and :math:`V_t = \beta_2 V_{t-1} + g^2`, the usual
    :math:`m_t = (1-\beta_1) M_t`, :math:`v_t = (1-\beta_2) V_t` and

    .. math::
        w \mathrel{-}= \frac{lr}{1-\beta_1^t}\,
              \frac{m_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}
           = c_1 \frac{M_t}{\sqrt{V_t} + \epsilon / c_2},\quad
        c_2 = \sqrt{\tfrac{1-\beta_2}{1-\beta_2^t}},\;
        c_1 = \frac{lr\,(1-\beta_1)}{(1-\beta_1^t)\, c_2}.

    Ten in-place passes per parameter, no allocation.
    """

    state_names = ("M", "V")
    decoupled = False

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def step(self) -> None:
        b1, b2 = self.betas
        t = self.steps + 1
        c2 = math.sqrt((1 - b2) / (1 - b2**t))
        self._c1 = self.lr * (1 - b1) / ((1 - b1**t) * c2)
        self._eps = self.eps / c2
        super().step()

    def _update(self, w: np.ndarray, g: np.ndarray, s: dict, buf: np.ndarray) -> None:
        b1, b2 = self.betas
        m, v = s["M"], s["V"]
        if self.weight_decay:
            if self.decoupled:
                w *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * w
        xp = namespace(w)
        m *= b1
        m += g
        xp.multiply(g, g, out=buf)
        v *= b2
        v += buf
        xp.sqrt(v, out=buf)
        buf += self._eps
        xp.divide(m, buf, out=buf)
        buf *= self._c1
        w -= buf


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``w *= 1 - lr * wd`` each step."""

    decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)


@tracing.replayable
def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients in place so their joint L2 norm is at most ``max_norm``; return the norm."""
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float(namespace(g).vdot(g, g)) for g in grads))
    if total > max_norm > 0:
        scale = max_norm / (total + 1e-6)  # the same guard as torch.nn.utils.clip_grad_norm_
        for g in grads:
            g *= scale
    return total


# --------------------------------------------------------------------------- schedules


class Schedule:
    """Learning rate as a function of the global step (stateless: resumes exactly)."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0) -> None:
        self.base_lr, self.total, self.warmup = base_lr, max(total_steps, 1), warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        return self.after_warmup(step)

    def after_warmup(self, step: int) -> float:
        return self.base_lr


class Constant(Schedule):
    pass


class StepDecay(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` steps."""

    def __init__(
        self, base_lr: float, total_steps: int, step_size: int, gamma: float = 0.1, warmup_steps=0
    ) -> None:
        super().__init__(base_lr, total_steps, warmup_steps)
        self.step_size, self.gamma = max(step_size, 1), gamma

    def after_warmup(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class Cosine(Schedule):
    """Cosine decay from the base rate to 0 over the steps after warm-up."""

    def after_warmup(self, step: int) -> float:
        span = max(self.total - self.warmup, 1)
        frac = min((step - self.warmup) / span, 1.0)
        return 0.5 * self.base_lr * (1 + math.cos(math.pi * frac))


class OneCycle(Schedule):
    """One-cycle (Smith): cosine rise from base/25 to base over ``pct`` of training, then
    cosine fall to base/1e4 (PyTorch's ``OneCycleLR`` defaults)."""

    def __init__(self, base_lr: float, total_steps: int, pct: float = 0.3) -> None:
        super().__init__(base_lr, total_steps, 0)
        self.peak_step = max(int(pct * self.total) - 1, 1)

    def after_warmup(self, step: int) -> float:
        lo, hi, end = self.base_lr / 25, self.base_lr, self.base_lr / 25 / 1e4
        if step <= self.peak_step:
            frac = step / self.peak_step
            return hi + (lo - hi) * (1 + math.cos(math.pi * frac)) / 2
        frac = min((step - self.peak_step) / max(self.total - 1 - self.peak_step, 1), 1.0)
        return end + (hi - end) * (1 + math.cos(math.pi * frac)) / 2


SCHEDULES = ("constant", "step", "cosine", "onecycle")


def make_schedule(
    name: str, base_lr: float, total_steps: int, warmup_steps: int = 0, **kw: Any
) -> Schedule:
    if name == "constant":
        return Constant(base_lr, total_steps, warmup_steps)
    if name == "cosine":
        return Cosine(base_lr, total_steps, warmup_steps)
    if name == "step":
        return StepDecay(
            base_lr,
            total_steps,
            kw.get("step_size", max(total_steps // 3, 1)),
            kw.get("gamma", 0.1),
            warmup_steps,
        )
    if name == "onecycle":
        return OneCycle(base_lr, total_steps)
    raise ConfigError(f"unknown schedule {name!r}: use {', '.join(SCHEDULES)}")
