"""``npgrad.compile``: record a training step once, replay it without the engine.

::

    @npgrad.compile
    def step(x, y):
        loss = npgrad.cross_entropy(net(npgrad.tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    for x, y in batches:
        loss = step(x, y)  # the first call runs eagerly and records; later ones replay

The first call with a given *signature* (each argument's shape and dtype, the other
arguments' values, whether gradients are enabled) runs the function eagerly and
records what it did (:mod:`npgrad.compiler.trace`); the record becomes a
:class:`~npgrad.compiler.plan.Plan`. Later calls with that signature replay the
plan: the same op forwards and vjps, in the same order, on this call's arrays
(positional and keyword), with no Tensor, tape or graph walk, and the recorded calls
(``opt.step()``, ``opt.zero_grad()``, clipping) made again. Another signature (the
last, smaller batch) gets a plan of its own; so does a change of a module that ran
(``net.eval()``, a parameter assigned anew, dropout's ``p``) or of which parameters
require grad.

What replays is the ops and the recorded calls, nothing else: Python code between
them ran once, at the record. So a step must take what changes from call to call as
arguments (the batch) or from state that the recorded calls read (parameters,
gradients, ``opt.lr``), and return Tensors. A step that cannot be replayed exactly
(it reads a tensor's values in Python, makes an array inside from something that is
no argument, uses ``create_graph``...) is run eagerly, every time, after one
:class:`CompileWarning` that says why: slower, never wrong. Python that decides without
reading a tensor (a counter kept in the step) is not seen: ``docs/compile.md`` lists
what is.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import tracing
from ..autodiff import Tensor, is_grad_enabled
from ..errors import CompileWarning
from ..ops.device import is_ndarray
from .plan import REWRITES, Guards, Plan, Refused
from .trace import PLAIN, bound_arguments, plain_key, record

__all__ = ["compile", "CompiledStep", "CompileWarning", "Plan", "REWRITES"]

MAX_PLANS = 16  # recordings per step before it stops recording new ones

# One recording at a time in the process (the engine's hook, tracing.current, is one): a
# step that another thread would record meanwhile runs eagerly instead.
_recording = threading.Lock()


def _signature(
    args: tuple[Any, ...], kwargs: dict[str, Any], pinned: list[Any] | None = None
) -> tuple[Any, ...]:
    """What a plan is recorded for: each array's shape, dtype and type, every other value.

    Plain values count by value (a float by its bits: ``0.0`` and ``-0.0`` differ), tuples
    and lists by their items. Any other object counts by identity, and ``pinned`` keeps it
    alive: CPython gives a freed object's identity to the next one made.
    """

    def one(a: Any) -> Any:
        if isinstance(a, Tensor):  # with a graph or not: one from outside the step is refused
            return (
                "T",
                a.data.shape,
                a.data.dtype.str,
                a.requires_grad,
                type(a.data),
                a._node is None,
            )
        if is_ndarray(a):  # its type too: a plan made on the CPU never replays on a GPU
            return ("A", a.shape, a.dtype.str, type(a))
        if type(a) in PLAIN:
            return ("V", plain_key(a))
        if isinstance(a, np.generic):
            return ("S", a.dtype.str, a.tobytes())
        if isinstance(a, (tuple, list)):
            return ("L", type(a).__name__, tuple(one(x) for x in a))
        if pinned is not None:
            pinned.append(a)
        return ("O", type(a).__name__, id(a))

    # Which arguments are the same Tensor, or the same array: a plan binds each by position,
    # so step(x, x) and step(x1, x2) need plans of their own, as do step(t, t) and step(t, u)
    # for two Tensors over one array.
    first: dict[int, int] = {}
    aliases = tuple(
        (
            first.setdefault(id(a), k),
            first.setdefault(id(a.data if isinstance(a, Tensor) else a), k),
        )
        if isinstance(a, Tensor) or is_ndarray(a)
        else -1
        for k, a in enumerate(bound_arguments(args, kwargs))
    )
    return (
        tuple(one(a) for a in args),
        tuple((k, one(v)) for k, v in sorted(kwargs.items())),
        is_grad_enabled(),
        aliases,
    )


class CompiledStep:
    """A step function with its plans, one per signature (see the module docstring).

    ``enabled=False`` runs it eagerly (the trainer's ``--no-compile``); ``rewrite=False``
    replays the recorded ops exactly as recorded, without :data:`REWRITES`.
    """

    def __init__(self, fn: Callable[..., Any], enabled: bool = True, rewrite: bool = True) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.enabled = enabled
        self.rewrite = rewrite
        self.plans: dict[Any, list[Plan | Refused]] = {}
        self.replays = 0
        self.recorded = 0  # recordings so far, refused ones included: at most MAX_PLANS
        self._warned: set[str] = set()  # each reason is told once
        self._pinned: list[Any] = []  # objects that signatures name by identity

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled or tracing.current is not None:
            # inside another step's recording, its ops are recorded there, as eager ones
            return self.fn(*args, **kwargs)
        key = _signature(args, kwargs)
        bound = bound_arguments(args, kwargs)
        for entry in self.plans.get(key, ()):
            if entry.guards_hold(bound):
                if isinstance(entry, Refused):  # this signature and state do not replay
                    return self.fn(*args, **kwargs)
                self.replays += 1
                return entry.run(bound)
        if self.recorded >= MAX_PLANS:  # every new signature or module state runs eagerly
            self._warn(
                f"more than {MAX_PLANS} recordings (argument shapes or values, or module "
                "attributes, changed): new ones run eagerly"
            )
            return self.fn(*args, **kwargs)
        if not _recording.acquire(blocking=False):
            return self.fn(*args, **kwargs)
        try:
            key = _signature(args, kwargs, self._pinned)
            result, trace, structure = record(self.fn, args, kwargs)
        finally:
            _recording.release()
        self.recorded += 1
        made: Plan | Refused
        if trace.problem is not None:
            self._warn(trace.problem)
            made = Refused(trace.problem, Guards(trace))
        else:
            made = Plan(trace, structure, rewrite=self.rewrite)
        self.plans.setdefault(key, []).append(made)
        return result

    def _warn(self, why: str) -> None:
        if why in self._warned:
            return
        self._warned.add(why)
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        warnings.warn(f"npgrad.compile: {name} runs eagerly: {why}", CompileWarning, stacklevel=4)

    def plan(self, *args: Any, **kwargs: Any) -> Plan | None:
        """The plan that a call with these arguments would replay (None: eager or not yet)."""
        for entry in self.plans.get(_signature(args, kwargs), ()):
            if entry.guards_hold(bound_arguments(args, kwargs)):
                return entry if isinstance(entry, Plan) else None
        return None


def compile(
    fn: Callable[..., Any] | None = None, *, enabled: bool = True, rewrite: bool = True
) -> Any:
    """Wrap a training step so that it is recorded once and replayed (a decorator too).

    ``npgrad.compile(step)`` or ``@npgrad.compile``; ``npgrad.compile(step,
    enabled=False)`` is the eager step behind the same interface.
    """
    if fn is None:
        return lambda f: CompiledStep(f, enabled=enabled, rewrite=rewrite)
    return CompiledStep(fn, enabled=enabled, rewrite=rewrite)
