"""The engine's one hook for the compiled step: who is recording a trace right now.

:mod:`npgrad.compiler` records a training step the first time it runs (a *trace*)
and replays it afterwards without the engine. To record, it needs to hear of four
things, and the parts that do them call into this module, which imports nothing:

* every op applied (:func:`npgrad.autodiff.apply`) and every backward pass;
* every Tensor made inside the step (and what from), every Module that runs (its
  attributes are guards of the plan) and every read of a Tensor's values by Python
  (``item()``, a comparison), which would make the step's path depend on data;
* the calls that change state without being ops: an optimizer's ``step`` and
  ``zero_grad``, gradient clipping. They are marked :func:`replayable`: recorded with
  their arguments, and called again, the same function, on every replay.

When no trace is being recorded (always, outside ``npgrad.compile``), each hook costs
one test of a module global.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar


class Tracer(Protocol):
    """What a recorder answers (:class:`npgrad.compiler.trace.Trace` is the one)."""

    def op(self, op: Any, inputs: tuple[Any, ...], params: dict[str, Any], out: Any) -> None: ...
    def backward(self, root: Any, grad: Any, retain: bool, create: bool) -> None: ...
    def created(self, tensor: Any, source: Any) -> None: ...
    def module(self, module: Any) -> None: ...
    def read(self, tensor: Any, how: str) -> None: ...
    def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...


current: Tracer | None = None
"""The recorder of the trace in progress, or None (set only by :mod:`npgrad.compiler`)."""

modules: weakref.WeakSet[Any] = weakref.WeakSet()
"""Every Module alive (``Module.__new__`` adds it, copies and unpickled ones too): a
recording guards the ones that own a parameter the step used, and those that hold them,
whichever method of theirs ran."""


def set_current(tracer: Tracer | None) -> Tracer | None:
    """Make ``tracer`` the recorder; returns the previous one, to be restored."""
    global current
    previous, current = current, tracer
    return previous


F = TypeVar("F", bound=Callable[..., Any])


def replayable(fn: F) -> F:
    """Mark a state-changing call that is no op (an optimizer step, zero_grad, clipping).

    While a trace is recorded, the call is recorded with its arguments (and run); a
    replay calls ``fn`` again with the same arguments, so it must read what changes
    between steps (gradients, the learning rate) from its arguments' attributes, as
    the optimizers do. Calls made inside a recorded call are not recorded again.
    """

    if getattr(fn, "replayable", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current is not None:
            return current.call(fn, args, kwargs)
        return fn(*args, **kwargs)

    wrapper.replayable = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
