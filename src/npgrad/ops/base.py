r"""The op table: every differentiable operation, defined exactly once.

An op is a class that registers itself in :data:`OPS` by subclassing :class:`Op`,
in :mod:`npgrad.ops.dense`, :mod:`npgrad.ops.conv` or a new module of this package that
:func:`npgrad.checking.gradcheck.all_ops` imports by name (so that the checkers and the
docs see it). This module holds what every op shares and nothing else; it imports no
engine: NumPy in, NumPy out.
It has four parts:

* ``forward(*arrays, **params) -> (out, saved)``, a static method, computes the
  output from NumPy arrays and returns whatever the backward pass needs as ``saved``;
* ``vjp(saved, g, needs) -> tuple``, a static method, maps the upstream gradient
  ``g`` (shape of ``out``) to one gradient per array input (``None`` where
  ``needs`` says the input does not want one);
* the docstring: a first line saying what the op computes, then the derivation
  of the vjp with differentials and the trace trick, the method of the
  exercise, in Markdown with GitHub math (``$...$``, ``$$...$$``). It is the only
  copy: ``docs/derivations.md`` is generated from the docstrings by
  ``python -m npgrad.checking.derivations docs/derivations.md``, and a test fails when
  that file is stale;
* ``spec = OpSpec(...)`` (:mod:`npgrad.ops.specs`): how to draw valid inputs for
  checking it, and the same computation in PyTorch. ``npgrad gradcheck``,
  ``npgrad check`` and the test suite use it; a test fails for an op without one.

Conventions that keep each op small:

* For a scalar loss :math:`f`, the gradient :math:`G = \partial f/\partial Y`
  is defined by :math:`df = \mathrm{tr}(G^T dY)`. A vjp rewrites
  :math:`\mathrm{tr}(G^T dY)` as :math:`\sum_i \mathrm{tr}(G_i^T dX_i)` and
  reads off :math:`G_i`.
* Element-wise ops return gradients in the *broadcast* shape of their output.
  Summing a gradient back to the shape of an input that was broadcast is done
  once, by the engine (:func:`unbroadcast`), not in every op.

Both :mod:`npgrad.layers` (the exercise's classes) and :mod:`npgrad.autodiff`
(the autodiff tape) call these methods; there is no other copy of any
gradient formula in npgrad.

Each vjp runs on NumPy arrays (the fast path) *and* on Tensors (the recording
path of ``backward(create_graph=True)``, which makes gradients differentiable
again; see ``docs/higher-order.md``). So a vjp uses only operators and methods
that both support (``+ - * / @ **``, comparisons, ``.sum``, ``.reshape``,
``.transpose``, ``.swapaxes``, indexing, ``.shape``, ``.dtype``), and where it
needs a function it applies another op with :func:`call`. Masks and indices
(relu, max) come from comparisons, which give constant boolean arrays on both.
What the vjp reads when it records is ``Op.on_tape(saved, inputs, out)``: by
default ``saved`` with each input's and the output's array replaced by its
Tensor. An op whose vjp is not written this way sets ``differentiable_vjp = False``
and ``create_graph`` refuses it with a clear error.

Declaring the checks of a new op (a sketch; ``x`` and ``w`` are its array
inputs, ``stride`` a keyword parameter of its ``forward``)::

    from npgrad.ops.specs import KINK, REAL, Case, OpSpec

    def _conv_case(d):  # d is a specs.Draw: d.rng, d.shape, d.size(), d.flag(), ...
        n, c, o, k = d.size(1, 2), d.size(1, 3), d.size(1, 3), d.choice([1, 3])
        return Case([(n, c, 6, 6), (o, c, k, k)], {"stride": d.choice([1, 2])})

    class Conv2dOp(Op):  # an op-table class's name ends in Op
        # the docstring: what it computes, then the derivation; forward and vjp as above
        name = "conv2d"
        spec = OpSpec(
            draw=_conv_case,  # array shapes and forward's keyword parameters
            domains=(REAL, REAL),  # per array input: REAL, WIDE, POSITIVE, NONZERO, KINK
            torch=lambda t, x, w, stride=1: t.nn.functional.conv2d(x, w, stride=stride),
        )

* ``draw(d)`` returns a :class:`~npgrad.ops.specs.Case`: the shape of each array
  input and the keyword parameters for ``forward``. Without ``draw`` the op gets
  one input of the base shape ``d.shape``; :mod:`npgrad.ops.specs` has the shared
  patterns (``broadcast_pair``, ``reduction``, ``one_axis``, ``with_params``...).
  Non-differentiable arguments (labels, indices) are parameters, not arrays.
* ``domains`` keeps each array input where central differences are meaningful,
  away from kinks and poles: ``REAL`` (standard normal), ``WIDE`` (times 3,
  saturating functions), ``POSITIVE``, ``NONZERO``, ``KINK`` (at least 0.1 from
  0), or your own :class:`~npgrad.ops.specs.Domain`. The last one repeats.
* ``torch(torch, *tensors, **params)`` is the PyTorch twin, called with the
  module so that nothing imports PyTorch before it is needed.

The tests compare every op with a PyTorch reference of their own
(``TORCH_REFERENCE`` in ``tests/ops/test_dense.py``, written independently of
``spec.torch``, so each checks the other): add the new op there too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .device import is_array
from .specs import OpSpec

Array = np.ndarray
Grads = tuple[Array | None, ...]

OPS: dict[str, type[Op]] = {}
"""Registry of every op by name; tests and ``npgrad gradcheck`` iterate over it."""


class Op:
    """Base class of all ops. Subclasses set ``name`` and are registered."""

    name: ClassVar[str] = ""
    spec: ClassVar[OpSpec | None] = None  # how to check it; see the module docstring
    # False for an op whose vjp computes on NumPy arrays only: create_graph refuses it.
    differentiable_vjp: ClassVar[bool] = True
    # Whether forward's saved values may hold its output array. A compiled step lets a
    # later op write over an output only where its producer says False.
    saves_output: ClassVar[bool] = True
    # Whether forward takes ``out=``: an array shaped and laid out like its first input,
    # which it may write its output over (a compiled step gives it that input's own
    # buffer where nothing reads the input afterwards). Its saved values then never
    # hold the input.
    writes_over_input: ClassVar[bool] = False
    # Whether vjp takes ``out=``: the upstream gradient ``g`` itself, which it may write
    # the gradient of its first input over (a compiled step gives it ``g`` where nothing
    # else holds that array).
    vjp_writes_over_g: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            OPS[cls.name] = cls

    # Each op defines these two as static methods, with its own argument list:
    # forward(*arrays, **params) -> (out, saved); vjp(saved, g, needs) -> grads.
    forward: ClassVar[Callable[..., tuple[Array, Any]]]
    vjp: ClassVar[Callable[..., Grads]]

    @staticmethod
    def on_tape(saved: Any, inputs: tuple[Any, ...], out: Any) -> Any:
        """What the vjp reads when it records (``create_graph``): ``saved`` in Tensors.

        Every array in ``saved`` (through nested tuples) that *is* an input's or
        the output's array is replaced by that Tensor, so the gradient formula's
        dependence on it is differentiated too; every other value stays a
        constant. An op that saves an array it computed from its inputs
        overrides this to recompute it from the Tensors (see cross_entropy).
        """
        tensors = {id(out.data): out}
        for t in reversed(inputs):  # the first input wins when two share one array
            if t.requires_grad or id(t.data) not in tensors:
                tensors[id(t.data)] = t
        return _replace(saved, tensors)


def _replace(saved: Any, tensors: dict[int, Any]) -> Any:
    if isinstance(saved, tuple):
        return tuple(_replace(s, tensors) for s in saved)
    if is_array(saved):  # a 0-d result can be a NumPy scalar
        return tensors.get(id(saved), saved)
    return saved


_recorder: Callable[..., Any] | None = None


def set_recorder(record: Callable[..., Any]) -> None:
    """The engine's hook: ``record(op, *xs, **params)`` applies ``op`` on the tape.

    The one place the op table learns of an engine, set by :mod:`npgrad.autodiff`
    when it is imported; the op table itself never imports it.
    """
    global _recorder
    _recorder = record


def call(op: type[Op], *xs: Any, **params: Any) -> Any:
    """Apply ``op`` to ``xs`` inside a vjp: the one way a vjp uses a function.

    On NumPy arrays (and scalars) this is the op's forward, nothing recorded:
    the fast path. When any of ``xs`` is something else (a Tensor: the vjp is
    being recorded, ``create_graph``), it goes to the engine's recorder
    (:func:`set_recorder`), so the gradient that the vjp computes can be
    differentiated again.
    """
    for x in xs:
        if not is_array(x):
            if _recorder is None:
                raise TypeError(f"{op.name}: a {type(x).__name__} input, and no engine recording")
            return _recorder(op, *xs, **params)
    return op.forward(*xs, **params)[0]


def unbroadcast(g: Array, shape: tuple[int, ...]) -> Array:
    r"""The gradient of a broadcast input: sum `g` (the shape of the result) back to `shape`.

    If $b$ is a bias row added to every row of $A$ (shape $(n, m)$), write the
    broadcast as $\mathbf{1} b^T$ with $\mathbf{1}$ the ones vector of length $n$. Then

    $$df = \mathrm{tr}(G^T \mathbf{1}\, db^T) = \mathbf{1}^T G\, db = \mathrm{tr}\big((G^T \mathbf{1})^T db\big),$$

    so $\partial f / \partial b = G^T \mathbf{1}$: the column sums of $G$. In words:
    every copy of $b$ contributes to $f$, so its gradient adds up over the copies.
    The same holds for any axis a tensor was broadcast along. npgrad applies this
    rule in exactly one place, `npgrad.ops.base.unbroadcast`, which the engine calls
    for every op; the ops themselves return gradients in the broadcast shape of
    their output.
    """
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g
