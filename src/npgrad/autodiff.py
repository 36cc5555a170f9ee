"""Reverse-mode automatic differentiation over the op table.

A :class:`Tensor` wraps a NumPy array. Every operation on tensors that require
gradients records one :class:`Node` (the op, what its forward saved, the input
tensors). :meth:`Tensor.backward` walks those nodes in reverse topological order
with an explicit stack, never recursion, so graphs of any depth work, and
calls each op's ``vjp`` from :mod:`npgrad.ops.dense`. Gradients of inputs that were
broadcast are summed back to their shapes here, once, by
:func:`npgrad.ops.base.unbroadcast`.

Gradient accumulation: ``backward`` *adds* into ``.grad`` of leaf tensors, as
PyTorch does, so gradients of several backward calls accumulate until you
reset them with ``t.grad = None``, ``t.zero_grad()`` or an optimizer's /
module's ``zero_grad()``.

Higher order: ``backward(create_graph=True)`` and :func:`grad` run the same
vjps on Tensors instead of arrays (the op table's vjps are written for both,
see :mod:`npgrad.ops.dense`), so the backward pass is itself recorded and its
gradients are Tensors that can be differentiated again, to any order.
:func:`hvp` builds Hessian-vector products on it. Without ``create_graph``
nothing of this runs: the vjps see NumPy arrays, as they always did.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import tracing
from .errors import ConfigError, GradError, ShapeError
from .ops import conv, dense
from .ops.base import Op, set_recorder, unbroadcast
from .ops.device import device_of, is_ndarray, namespace, same_device, to_device, to_host
from .ops.geometry import IntOrPair, is_int


class _GradMode(threading.local):
    """Whether ops record a graph, per thread (as in PyTorch): one thread's ``no_grad()``
    (a server's prediction, an evaluation) must not switch off another thread's training."""

    enabled = True  # the class attribute: every new thread starts recording


_mode = _GradMode()


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context in which operations record no graph (evaluation, optimizer updates).

    It holds for the calling thread only; other threads keep their own setting.
    """
    previous, _mode.enabled = _mode.enabled, False
    try:
        yield
    finally:
        _mode.enabled = previous


@contextlib.contextmanager
def enable_grad() -> Iterator[None]:
    """Context in which operations record again, even inside :func:`no_grad` (this thread)."""
    previous, _mode.enabled = _mode.enabled, True
    try:
        yield
    finally:
        _mode.enabled = previous


def is_grad_enabled() -> bool:
    """Whether ops called from this thread record a graph now."""
    return _mode.enabled


class Node:
    """One recorded op application: what backward needs, nothing more."""

    __slots__ = ("op", "saved", "parents", "needs")

    def __init__(
        self, op: type[Op], saved: Any, parents: tuple[Tensor, ...], needs: tuple[bool, ...]
    ) -> None:
        self.op = op
        self.saved = saved
        self.parents = parents
        self.needs = needs  # which parents want a gradient, so vjps can skip work


class Tensor:
    """An n-dimensional array that can record operations for differentiation."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "_retain", "name", "__weakref__")
    # Make ``ndarray <op> Tensor`` defer to Tensor's reflected operators: NumPy reads the
    # first, CuPy the second.
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(
        self,
        data: Any,
        requires_grad: bool = False,
        dtype: Any = None,
        name: str | None = None,
        *,
        made_from: Any = None,
    ) -> None:
        # made_from: what a trace being recorded is told the Tensor was made from, when that
        # is not ``data`` (a Python number that _lift turned into an array)
        xp = namespace(data)  # the data's device: NumPy, or CuPy for data on a GPU
        arr = xp.array(data, dtype=dtype) if dtype is not None else xp.asarray(data)
        if arr.dtype.kind not in "biufc":  # strings and objects would fail deep inside an op
            raise ConfigError(
                f"a Tensor holds numbers; got {arr.dtype} data ({type(data).__name__})"
            )
        if requires_grad and not np.issubdtype(arr.dtype, np.floating):
            raise GradError(
                f"only floating-point tensors can require gradients, got dtype {arr.dtype}; "
                "pass dtype=np.float32 or np.float64"
            )
        self.data: np.ndarray = arr
        # An array; a Tensor after backward(create_graph=True), so it can be differentiated.
        self.grad: Any = None
        self.requires_grad = bool(requires_grad)
        self._node: Node | None = None
        self._retain = False
        self.name = name
        if tracing.current is not None:
            tracing.current.created(self, data if made_from is None else made_from)

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def op_name(self) -> str | None:
        """Name of the op that produced this tensor (None for leaves)."""
        return self._node.op.name if self._node is not None else None

    @property
    def parents(self) -> tuple[Tensor, ...]:
        return self._node.parents if self._node is not None else ()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        extra = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(to_host(self.data), separator=", ", prefix="tensor(")
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        return f"tensor({body}, dtype={self.data.dtype}{extra})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array: the underlying array (not a copy) on the CPU, a
        host copy of a GPU tensor's."""
        if tracing.current is not None:
            tracing.current.read(self, "numpy()")
        return to_host(self.data)

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``: where the data lives."""
        return device_of(self.data)

    def to(self, device: str) -> Tensor:
        """This tensor on ``device`` (``"cpu"`` or ``"cuda"``): itself when it is there
        already, otherwise a copy there, a new leaf (``requires_grad`` kept). A missing CuPy
        or GPU raises :class:`~npgrad.errors.DeviceError` naming the extra to install."""
        data = to_device(self.data, device)
        if data is self.data:
            return self
        return Tensor(data, requires_grad=self.requires_grad, name=self.name)

    def item(self) -> float:
        if tracing.current is not None:
            tracing.current.read(self, "item()")
        return self.data.item()

    def detach(self) -> Tensor:
        """A new leaf tensor sharing the data, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype: Any) -> Tensor:
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    @tracing.replayable
    def zero_grad(self) -> None:
        self.grad = None

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this non-leaf tensor after backward (for inspection)."""
        self._retain = True
        return self

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and not np.issubdtype(self.data.dtype, np.floating):
            raise GradError(f"only floating-point tensors can require gradients ({self.dtype})")
        self.requires_grad = flag
        return self

    # ------------------------------------------------------------------ autodiff
    def backward(
        self, grad: Any = None, retain_graph: bool | None = None, create_graph: bool = False
    ) -> None:
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires it.

        ``grad`` is the upstream gradient (defaults to 1 for a one-element tensor).
        With ``create_graph`` the backward pass is recorded: ``.grad`` becomes a
        Tensor that can be differentiated again. The graph's saved arrays are
        freed afterwards unless ``retain_graph`` (which defaults to ``create_graph``).
        """
        if not self.requires_grad:
            raise GradError(
                "backward() on a tensor that does not require grad: create the inputs "
                "with requires_grad=True (and not inside no_grad())"
            )
        if retain_graph is None:
            retain_graph = create_graph
        if tracing.current is not None:
            tracing.current.backward(self, grad, retain_graph, create_graph)
        seed = _seed(self, grad, create_graph)
        _backprop([self], [seed], retain_graph, create_graph, None)

    # ------------------------------------------------------------------ operators
    def __add__(self, other: Any) -> Tensor:
        return apply(dense.AddOp, self, _lift(other, self))

    def __radd__(self, other: Any) -> Tensor:
        return apply(dense.AddOp, _lift(other, self), self)

    def __sub__(self, other: Any) -> Tensor:
        return apply(dense.SubOp, self, _lift(other, self))

    def __rsub__(self, other: Any) -> Tensor:
        return apply(dense.SubOp, _lift(other, self), self)

    def __mul__(self, other: Any) -> Tensor:
        return apply(dense.MulOp, self, _lift(other, self))

    def __rmul__(self, other: Any) -> Tensor:
        return apply(dense.MulOp, _lift(other, self), self)

    def __truediv__(self, other: Any) -> Tensor:
        return apply(dense.DivOp, self, _lift(other, self))

    def __rtruediv__(self, other: Any) -> Tensor:
        return apply(dense.DivOp, _lift(other, self), self)

    def __matmul__(self, other: Any) -> Tensor:
        return apply(dense.MatmulOp, self, _lift(other, self))

    def __rmatmul__(self, other: Any) -> Tensor:
        return apply(dense.MatmulOp, _lift(other, self), self)

    def __pow__(self, p: float) -> Tensor:
        if isinstance(p, Tensor) or np.ndim(to_host(p)) != 0:
            raise GradError("only a constant scalar exponent is supported: x ** 2.0")
        return apply(dense.PowOp, self, p=float(p))

    def __neg__(self) -> Tensor:
        return apply(dense.NegOp, self)

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        return apply(dense.GetItemOp, self, index=index)

    # Comparisons give plain boolean arrays: they have no gradient.
    def __gt__(self, other: Any) -> np.ndarray:
        if tracing.current is not None:
            tracing.current.read(self, "a comparison (>)")
        return self.data > _data(other)

    def __lt__(self, other: Any) -> np.ndarray:
        if tracing.current is not None:
            tracing.current.read(self, "a comparison (<)")
        return self.data < _data(other)

    def __ge__(self, other: Any) -> np.ndarray:
        if tracing.current is not None:
            tracing.current.read(self, "a comparison (>=)")
        return self.data >= _data(other)

    def __le__(self, other: Any) -> np.ndarray:
        if tracing.current is not None:
            tracing.current.read(self, "a comparison (<=)")
        return self.data <= _data(other)

    __hash__ = object.__hash__

    # ------------------------------------------------------------------ methods
    @property
    def T(self) -> Tensor:
        return apply(dense.TransposeOp, self, axes=None)

    def transpose(self, *axes: Any) -> Tensor:
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list, np.ndarray))):
            axes = () if axes[0] is None else tuple(axes[0])
        return apply(dense.TransposeOp, self, axes=tuple(int(a) for a in axes) if axes else None)

    def swapaxes(self, axis1: int, axis2: int) -> Tensor:
        axes = list(range(self.ndim))
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
        return apply(dense.TransposeOp, self, axes=tuple(axes))

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return apply(dense.ReshapeOp, self, shape=tuple(shape))

    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return apply(dense.SumOp, self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return apply(dense.MeanOp, self, axis=axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return apply(dense.MaxOp, self, axis=axis, keepdims=keepdims)

    def exp(self) -> Tensor:
        return apply(dense.ExpOp, self)

    def log(self) -> Tensor:
        return apply(dense.LogOp, self)

    def relu(self) -> Tensor:
        return apply(dense.ReluOp, self)

    def sigmoid(self) -> Tensor:
        return apply(dense.SigmoidOp, self)

    def tanh(self) -> Tensor:
        return apply(dense.TanhOp, self)

    def softmax(self, axis: int = -1) -> Tensor:
        return apply(dense.SoftmaxOp, self, axis=axis)

    def log_softmax(self, axis: int = -1) -> Tensor:
        return apply(dense.LogSoftmaxOp, self, axis=axis)


_FREED = object()


def topological_order(root: Tensor | Sequence[Tensor], grad_only: bool = True) -> list[Tensor]:
    """Post-order of the graph below ``root`` (inputs before outputs), iteratively.

    The one graph walk in npgrad: backward follows only inputs that require
    gradients (``grad_only``); drawing a graph (:mod:`npgrad.graph`) follows all.
    ``root`` may be several tensors (:func:`grad` of several outputs).
    """
    roots = [root] if isinstance(root, Tensor) else list(root)
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        node = t._node
        if node is not None:
            for p in node.parents:
                if (p.requires_grad or not grad_only) and id(p) not in visited:
                    stack.append((p, False))
    return order


def _seed(out: Tensor, grad: Any, create_graph: bool) -> Any:
    """The upstream gradient of ``out``: ``grad`` checked, or 1 for a one-element output."""
    if grad is None:
        if out.data.size != 1:
            raise GradError(
                f"backward() without a gradient needs a one-element output, got shape "
                f"{out.shape}; pass grad=... of that shape or reduce with .sum()/.mean()"
            )
        seed: np.ndarray | Tensor = namespace(out.data).ones_like(out.data)
    elif create_graph and isinstance(grad, Tensor):
        seed = grad  # kept: the gradient may itself be differentiated with respect to it
    else:
        seed = namespace(out.data).array(_data(grad), dtype=out.dtype)
    if seed.shape != out.shape:
        raise GradError(f"backward(grad): grad has shape {seed.shape}, output {out.shape}")
    return seed if not create_graph or isinstance(seed, Tensor) else Tensor(seed)


def _backprop(
    roots: Sequence[Tensor],
    seeds: Sequence[Any],
    retain_graph: bool,
    create_graph: bool,
    wanted: set[int] | None,
) -> dict[int, Any]:
    """The backward pass: the walk (:func:`_walk`), then the accumulation (:func:`_propagate`).

    ``wanted is None``: accumulate into ``.grad`` of the leaves (``backward``).
    Otherwise return the gradients of the tensors whose ids are in ``wanted``
    (:func:`grad`), touching no ``.grad``. ``create_graph`` runs the vjps on Tensors,
    so that they record.
    """
    order, reaches = _walk(roots, wanted)
    captured: dict[int, Any] = {}
    handed_out: set[int] = set()

    def deliver(t: Tensor, g: Any) -> None:
        if wanted is None:
            if t._node is None or t._retain:
                _accumulate_leaf(t, g, handed_out, create_graph)
        elif id(t) in wanted:
            captured[id(t)] = g

    _propagate(order, roots, seeds, reaches, retain_graph, create_graph, deliver)
    return captured


def _walk(roots: Sequence[Tensor], wanted: set[int] | None) -> tuple[list[Tensor], set[int] | None]:
    """Which tensors the pass visits: the graph below ``roots`` in topological order and,
    when only ``wanted`` gradients are asked for, the ids of the tensors from which a
    wanted one can be reached (None: every tensor is wanted)."""
    order = topological_order(roots)
    if wanted is None:
        return order, None
    reaches: set[int] = set()
    for t in order:  # inputs first: a tensor reaches a wanted one if one of its parents does
        if id(t) in wanted or any(id(p) in reaches for p in t.parents):
            reaches.add(id(t))
    return order, reaches


def _propagate(
    order: list[Tensor],
    roots: Sequence[Tensor],
    seeds: Sequence[Any],
    reaches: set[int] | None,
    retain_graph: bool,
    create_graph: bool,
    deliver: Callable[[Tensor, Any], None],
) -> None:
    """The accumulation: each tensor's gradient, complete once every consumer has added
    to it (reverse topological order), is handed to ``deliver`` and sent through its op's
    vjp to the inputs that need it (and reach a wanted tensor)."""
    grads: dict[int, Any] = {}
    for r, seed in zip(roots, seeds):
        grads[id(r)] = seed if id(r) not in grads else grads[id(r)] + seed
    for t in reversed(order):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        deliver(t, g)
        node = t._node
        if node is None:
            continue
        needs = node.needs
        if reaches is not None:
            needs = tuple([n and id(p) in reaches for n, p in zip(needs, node.parents)])
            if True not in needs:
                continue
        if node.saved is _FREED:
            raise GradError(
                "backward through a graph whose saved arrays were freed by an earlier "
                "backward(); pass retain_graph=True to the first call"
            )
        if create_graph:
            in_grads = _recorded_vjp(node, t, g, needs)
        else:
            in_grads = node.op.vjp(node.saved, g, needs)
        for p, gi, n in zip(node.parents, in_grads, needs):
            if gi is None or not n or not p.requires_grad:
                continue
            if gi.shape != p.data.shape:
                gi = unbroadcast(gi, p.data.shape)
            prev = grads.get(id(p))
            # Never in place: gi may alias an array that another input also received.
            grads[id(p)] = gi if prev is None else prev + gi
        if not retain_graph:
            node.saved = _FREED


def _recorded_vjp(node: Node, out: Tensor, g: Tensor, needs: tuple[bool, ...]) -> tuple[Any, ...]:
    """The op's vjp run on Tensors (``create_graph``): the same formula, recorded."""
    op = node.op
    why = (
        f"create_graph: the vjp of op {op.name!r} computes on NumPy arrays only, so its "
        "gradient cannot be differentiated again"
    )
    if not op.differentiable_vjp:
        raise GradError(why + " (it declares differentiable_vjp = False)")
    try:
        in_grads = op.vjp(op.on_tape(node.saved, node.parents, out), g, needs)
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise GradError(f"{why}: {type(exc).__name__}: {exc}") from exc
    for gi in in_grads:  # an np.* call on a Tensor can give an object array, not an error
        if gi is not None and (not isinstance(gi, Tensor) or gi.dtype == object):
            raise GradError(why + " (it returned arrays or objects, not Tensors of numbers)")
    return in_grads


def _accumulate_leaf(t: Tensor, g: Any, handed_out: set[int], create_graph: bool) -> None:
    if create_graph:
        t.grad = g if t.grad is None else t.grad + g  # out of place: g is on the tape
        return
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    elif not g.flags.owndata or not getattr(g.flags, "writeable", True) or id(g) in handed_out:
        # g is a view or was given to another tensor: copy, so that in-place
        # edits of one .grad (clipping, accumulation) never reach another.
        g = g.copy()
    if t.grad is None:
        t.grad = g
        handed_out.add(id(g))
    else:
        t.grad += g


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _lift(x: Any, like: Tensor) -> Tensor:
    """Wrap a constant operand; Python scalars take the tensor's dtype (no upcast)."""
    if isinstance(x, Tensor):
        return x
    xp = namespace(like.data)
    if isinstance(x, (int, float)) and np.issubdtype(like.data.dtype, np.floating):
        return Tensor(xp.asarray(x, dtype=like.data.dtype), made_from=x)
    return Tensor(xp.asarray(x), made_from=x)


def apply(op: type[Op], *inputs: Tensor, **params: Any) -> Tensor:
    """Run ``op`` forward on tensors and, if any input requires grad, record it."""
    arrays = [t.data for t in inputs]
    try:
        out_data, saved = op.forward(*arrays, **params)
    except TypeError:
        same_device(*arrays)  # arrays on two devices: say so (CuPy's own error does not)
        raise
    out = Tensor.__new__(Tensor)
    out.data = out_data
    out.grad = None
    out._retain = False
    out.name = None
    needs = tuple([t.requires_grad for t in inputs])
    if _mode.enabled and True in needs:
        out.requires_grad = True
        out._node = Node(op, saved, inputs, needs)
    else:
        out.requires_grad = False
        out._node = None
    if tracing.current is not None:
        tracing.current.op(op, inputs, params, out)
    return out


def as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


# The op table's one hook into the engine: a vjp's ops.base.call on Tensors is recorded, the
# constants it read entering as Tensors that need no gradient.
set_recorder(lambda op, *xs, **params: apply(op, *[as_tensor(x) for x in xs], **params))


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Create a leaf tensor. NumPy arrays keep their dtype unless ``dtype`` is given."""
    if isinstance(data, Tensor):
        data = data.data
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Any = None,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> tuple[Tensor, ...]:
    """The gradients of ``outputs`` with respect to ``inputs``, returned, not accumulated.

    ``grad_outputs`` holds one upstream gradient per output (default: 1 for each,
    which must then have one element). With ``create_graph`` the backward pass
    is recorded, so the returned Tensors can be differentiated again (second
    derivatives, :func:`hvp`); ``retain_graph`` defaults to ``create_graph``.
    Returns one Tensor per input, zeros for an input the outputs do not depend
    on. No ``.grad`` is touched. As ``torch.autograd.grad``.
    """
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    for what, ts in (("outputs", outs), ("inputs", ins)):
        if not ts or not all(isinstance(t, Tensor) for t in ts):
            raise GradError(f"grad(): {what} must be a Tensor or a non-empty sequence of Tensors")
    for i, x in enumerate(ins):
        if not x.requires_grad:
            raise GradError(
                f"grad(): input {i} does not require grad; create it with requires_grad=True"
            )
    if grad_outputs is None:
        gos: list[Any] = [None] * len(outs)
    else:
        gos = (
            [grad_outputs] if len(outs) == 1 and isinstance(outputs, Tensor) else list(grad_outputs)
        )
        if len(gos) != len(outs):
            raise GradError(f"grad(): {len(gos)} grad_outputs for {len(outs)} outputs")
    roots = [(o, go) for o, go in zip(outs, gos) if o.requires_grad]
    if not roots:
        raise GradError(
            "grad(): no output requires grad: the outputs do not depend on any input "
            "that requires grad (or were computed inside no_grad())"
        )
    if tracing.current is not None:  # a plan replays backward() into .grad only
        tracing.current.read(roots[0][0], "npgrad.grad()")
    seeds = [_seed(o, go, create_graph) for o, go in roots]
    captured = _backprop(
        [o for o, _ in roots],
        seeds,
        create_graph if retain_graph is None else retain_graph,
        create_graph,
        {id(x) for x in ins},
    )
    result = []
    for x in ins:
        g = captured.get(id(x))
        if g is None:
            result.append(Tensor(namespace(x.data).zeros_like(x.data)))
        elif isinstance(g, Tensor):
            result.append(g)
        else:
            result.append(Tensor(namespace(g).array(g, dtype=x.dtype)))  # a copy: g may alias
    return tuple(result)


def hvp(f: Callable[..., Tensor], inputs: Any, v: Any) -> Any:
    """The Hessian-vector product ``H v`` of the scalar ``f`` at ``inputs``, as arrays.

    ``inputs`` is an array (or Tensor) or a sequence of them, ``v`` the same
    structure and shapes; ``f`` takes one Tensor per input. Two backward
    passes, never the Hessian: the gradient ``g`` is recorded
    (``create_graph``), then ``d(g . v)/dx = H v`` (Pearlmutter's trick).
    Returns an array, or a tuple of arrays for a sequence of inputs.
    """
    single = not isinstance(inputs, (list, tuple))
    xs_in = [inputs] if single else list(inputs)
    vs_in = [v] if single else list(v) if isinstance(v, (list, tuple)) else [v]
    if len(vs_in) != len(xs_in):
        raise GradError(f"hvp(): {len(vs_in)} directions for {len(xs_in)} inputs")
    xs = [Tensor(namespace(_data(x)).array(_data(x)), requires_grad=True) for x in xs_in]
    vs = [namespace(x.data).asarray(_data(u), dtype=x.dtype) for u, x in zip(vs_in, xs)]
    for i, (x, u) in enumerate(zip(xs, vs)):
        if u.shape != x.shape:
            raise GradError(f"hvp(): direction {i} has shape {u.shape}, input {x.shape}")
    with enable_grad():
        y = f(*xs)
        if not isinstance(y, Tensor) or y.data.size != 1:
            raise GradError("hvp(): f must return a one-element Tensor (a scalar loss)")
        gs = grad(y, xs, create_graph=True) if y.requires_grad else ()
        dot = None
        for g, u in zip(gs, vs):
            term = (g * u).sum()
            dot = term if dot is None else dot + term
    if dot is None or not dot.requires_grad:  # f is at most linear: H = 0
        out = tuple(namespace(x.data).zeros_like(x.data) for x in xs)
    else:
        out = tuple(h.data for h in grad(dot, xs))
    return out[0] if single else out


# ---------------------------------------------------------------------- module-level functions


def broadcast_to(x: Any, shape: Sequence[int]) -> Tensor:
    """``x`` broadcast to ``shape`` (its gradient sums over the copies)."""
    return apply(dense.BroadcastToOp, as_tensor(x), shape=tuple(shape))


def matmul(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(dense.MatmulOp, a, _lift(b, a))


def linear(x: Any, w: Any, b: Any) -> Tensor:
    """``x @ w + b`` as one fused node (see :class:`npgrad.ops.dense.LinearOp`)."""
    x = as_tensor(x)
    return apply(dense.LinearOp, x, _lift(w, x), _lift(b, x))


def add(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(dense.AddOp, a, _lift(b, a))


def sub(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(dense.SubOp, a, _lift(b, a))


def mul(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(dense.MulOp, a, _lift(b, a))


def div(a: Any, b: Any) -> Tensor:
    a = as_tensor(a)
    return apply(dense.DivOp, a, _lift(b, a))


def neg(x: Any) -> Tensor:
    return apply(dense.NegOp, as_tensor(x))


def pow(x: Any, p: float) -> Tensor:
    return as_tensor(x) ** p


def exp(x: Any) -> Tensor:
    return apply(dense.ExpOp, as_tensor(x))


def log(x: Any) -> Tensor:
    return apply(dense.LogOp, as_tensor(x))


def dropout(x: Any, p: float = 0.5, rng: Any = None) -> Tensor:
    """Inverted dropout of ``x`` with a fresh mask from ``rng`` (a Generator or a seed)."""
    return apply(dense.DropoutOp, as_tensor(x), p=float(p), rng=rng)


def relu(x: Any) -> Tensor:
    return apply(dense.ReluOp, as_tensor(x))


def sigmoid(x: Any) -> Tensor:
    return apply(dense.SigmoidOp, as_tensor(x))


def tanh(x: Any) -> Tensor:
    return apply(dense.TanhOp, as_tensor(x))


def softmax(x: Any, axis: int = -1) -> Tensor:
    return apply(dense.SoftmaxOp, as_tensor(x), axis=axis)


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    return apply(dense.LogSoftmaxOp, as_tensor(x), axis=axis)


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    return as_tensor(x).sum(axis=axis, keepdims=keepdims)


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    return as_tensor(x).mean(axis=axis, keepdims=keepdims)


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    return as_tensor(x).max(axis=axis, keepdims=keepdims)


def reshape(x: Any, shape: Sequence[int]) -> Tensor:
    return as_tensor(x).reshape(tuple(shape))


def transpose(x: Any, axes: Sequence[int] | None = None) -> Tensor:
    return apply(dense.TransposeOp, as_tensor(x), axes=None if axes is None else tuple(axes))


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    ts = [as_tensor(t) for t in tensors]
    if not ts:
        raise GradError("concatenate needs at least one tensor")
    return apply(dense.ConcatenateOp, *ts, axis=axis)


def getitem(x: Any, index: Any) -> Tensor:
    return as_tensor(x)[index]


def cross_entropy(logits: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Stable fused softmax cross-entropy; ``target`` is class indices (N,) or (N, C)."""
    target = target.data if isinstance(target, Tensor) else target  # the op moves it
    return apply(dense.CrossEntropyOp, as_tensor(logits), target=target, reduction=reduction)


# --------------------------------------------------------------------------- image ops (npgrad.ops.conv)


def conv2d(
    x: Any,
    w: Any,
    b: Any = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> Tensor:
    """2-D convolution of NCHW ``x`` with ``w`` (O, C, kh, kw) and optional bias ``b`` (O,)."""
    args = [as_tensor(x), as_tensor(w)] + ([] if b is None else [as_tensor(b)])
    return apply(conv.Conv2dOp, *args, stride=stride, padding=padding, dilation=dilation)


def max_pool2d(
    x: Any,
    kernel: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> Tensor:
    """Max pooling of NCHW ``x``; ``stride`` defaults to ``kernel``."""
    return apply(
        conv.MaxPool2dOp,
        as_tensor(x),
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )


def avg_pool2d(
    x: Any, kernel: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0
) -> Tensor:
    """Average pooling of NCHW ``x`` (padding zeros count, as PyTorch's default)."""
    return apply(conv.AvgPool2dOp, as_tensor(x), kernel=kernel, stride=stride, padding=padding)


def _buffer(a: Any, what: str, c: int) -> np.ndarray | None:
    if a is None:
        return None
    a = a.data if isinstance(a, Tensor) else a
    if not is_ndarray(a) or a.shape != (c,):
        raise ShapeError(
            f"batch_norm: {what} must be an array of shape ({c},) (it is updated in place)"
        )
    return a


def batch_norm(
    x: Any,
    gamma: Any = None,
    beta: Any = None,
    running_mean: Any = None,
    running_var: Any = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    reduce: Any = None,
) -> Tensor:
    """Batch normalisation per channel (axis 1) of ``x``; see :class:`npgrad.ops.conv.BatchNormOp`.

    ``reduce`` (synchronised batch norm): a function adding a float64 array up over the
    processes of a data-parallel run, so that the statistics are the whole batch's.

    ``gamma``/``beta`` default to 1 and 0 (constants). In training mode the
    batch statistics normalise, and ``running_mean``/``running_var`` (NumPy
    arrays, when given) are updated in place as PyTorch does; in eval mode the
    running statistics normalise and are required.
    """
    x = as_tensor(x)
    if x.ndim < 2:
        raise ShapeError(f"batch_norm expects input of shape (N, C, ...), got {x.shape}")
    c = x.shape[1]
    if momentum is None or not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"batch_norm momentum must be a number in [0, 1], got {momentum!r}")
    xp = namespace(x.data)
    g = as_tensor(xp.ones(c, dtype=x.dtype)) if gamma is None else as_tensor(gamma)
    b = as_tensor(xp.zeros(c, dtype=x.dtype)) if beta is None else as_tensor(beta)
    return apply(
        conv.BatchNormOp,
        x,
        g,
        b,
        running_mean=_buffer(running_mean, "running_mean", c),
        running_var=_buffer(running_var, "running_var", c),
        training=bool(training),
        momentum=float(momentum),
        eps=eps,  # checked by the op, which is also called directly
        reduce=reduce,
    )


def flatten(x: Any, start_dim: int = 1) -> Tensor:
    """Merge the axes from ``start_dim`` on into one (the :class:`npgrad.ops.dense.ReshapeOp` op).

    Flattening is a reshape, so it is that op and its derivation, not a new one.
    NCHW order is kept whatever the memory layout, as in PyTorch.
    """
    x = as_tensor(x)
    if x.ndim and not (is_int(start_dim) and -x.ndim <= start_dim < x.ndim):
        raise ShapeError(
            f"flatten: start_dim {start_dim!r} is not an axis of an input of shape {x.shape}"
        )
    start = start_dim % x.ndim if x.ndim else 0
    return apply(dense.ReshapeOp, x, shape=tuple(x.shape[:start]) + (-1,))
