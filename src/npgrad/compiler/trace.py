"""Recording one eager run of a step as a trace: the ops, the backward passes, the calls.

The step runs eagerly, exactly as without ``npgrad.compile``; :class:`Trace` listens
through :mod:`npgrad.tracing` and writes down what happened in terms that do not
depend on this run's arrays:

* every value is numbered: an argument of the step (``("arg", k)``), the output of
  a recorded op (``("op", i)``), a tensor that lives outside the step, a parameter
  or a buffer (``("ext", tensor)``: its ``.data`` is read again on every replay), or
  a scalar made inside the step (``("const", array)``);
* every op application is an :class:`Instr`: the op, the numbers of its inputs, its
  keyword parameters (an argument's array there is an :class:`ArgRef`), which inputs
  want a gradient;
* ``backward()`` is recorded with the order in which the engine visits the graph
  (the same walk, :func:`npgrad.autodiff.topological_order`), so that the replay
  adds gradients up in the same order and gives the same bits;
* the state-changing calls (an optimizer's step, ``zero_grad``, clipping) are
  recorded with their arguments.

Anything that a replay could not reproduce is written down as ``problem`` (the
first one): Python reading a tensor's values (``item()``, a comparison), an array
made inside the step from something that is not an argument, an op that declares
itself not replayable, ``create_graph`` or :func:`npgrad.grad`, a return value that
is not a Tensor. The caller then runs that step eagerly, always.
"""

from __future__ import annotations

import dis
import functools
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import tracing
from ..autodiff import Tensor, topological_order
from ..ops.base import Op
from ..ops.device import is_ndarray, namespace, to_host

PLAIN = (bool, int, float, complex, str, type(None))
"""Python's plain values: a number written in a step is a constant of its plan, and a
signature or a module's guard compares them by value."""


def plain_key(v: Any) -> Any:
    """A plain value as compared for a plan: its type and value, a float by its bits (``0.0``
    and ``-0.0`` differ, a NaN equals itself)."""
    return (type(v), v.hex() if type(v) is float else v)


_FUNCTIONS = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)


@dataclass(frozen=True)
class ArgRef:
    """An op parameter that is the array of the step's argument ``k`` (labels, say)."""

    k: int


@dataclass(frozen=True)
class OverInput:
    """The op parameter ``out`` given the op's first input's own array (a plan rewrite)."""


@dataclass
class Instr:
    """One op application: ``value[out] = op.forward(*value[ins], **params)``."""

    op: type[Op]
    ins: tuple[int, ...]
    params: dict[str, Any]
    out: int
    needs: tuple[bool, ...]  # which inputs the engine would send a gradient to

    @property
    def binds(self) -> bool:
        """Whether a parameter is an array bound anew on every replay."""
        return any(isinstance(v, (ArgRef, OverInput)) for v in self.params.values())


@dataclass
class Backward:
    """One ``backward()``: from ``root`` (seeded with ones), visiting ``order`` in reverse."""

    root: int
    order: list[int]  # value numbers, inputs before outputs (the engine's walk)
    retain: bool
    delivered: set[int]  # the leaves: values whose gradient lands in a ``.grad``


@dataclass
class Call:
    """A recorded call (:func:`npgrad.tracing.replayable`); an :class:`ArgRef` among its
    arguments stands for the step's argument ``k``, a Tensor, given anew on every replay."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    binds: bool = False


Event = Instr | Backward | Call


@dataclass
class Trace:
    """What one eager run of a step did, in replayable terms (see the module docstring)."""

    args: tuple[Any, ...]
    kinds: list[tuple[str, Any]] = field(default_factory=list)  # per value: (kind, what)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    dtypes: list[np.dtype] = field(default_factory=list)
    requires: list[bool] = field(default_factory=list)  # whether each value wanted a gradient
    events: list[Event] = field(default_factory=list)
    modules: dict[int, tuple[Any, bool]] = field(default_factory=dict)  # id -> (module, mode)
    problem: str | None = None
    _value: dict[int, int] = field(default_factory=dict)  # id(tensor) -> value number
    _keep: list[Any] = field(default_factory=list)  # the tensors, so that ids stay unique
    _created: set[int] = field(default_factory=set)
    _made_arrays: dict[int, int] = field(default_factory=dict)  # id(op output array) -> value
    _graphs: list[Tensor] = field(default_factory=list)  # returned Tensors that require grad
    _foreign: dict[int, Tensor] = field(default_factory=dict)  # made by other threads
    _outside: list[tuple[Any, str]] = field(default_factory=list)  # (held by reference, or why)
    aliases: list[tuple[Callable[[], Any], int, str]] = field(default_factory=list)
    names: list[tuple[Callable[[], Any], Any]] = field(default_factory=list)  # read, held
    _numbers: list[Any] = field(default_factory=list)  # Python numbers made constants
    _read_outside: list[Any] = field(default_factory=list)  # outside arrays made Tensors

    def __post_init__(self) -> None:
        self._thread = threading.get_ident()  # another thread's ops are no part of the step
        self._arg_data = {}
        self._arg_tensor = {}
        self._arg_roots: dict[int, int] = {}  # id of the array under an argument's -> k
        for k, a in enumerate(self.args):
            if isinstance(a, Tensor):
                self._arg_tensor[id(a)] = k
                self._arg_data[id(a.data)] = k
            elif is_ndarray(a):
                self._arg_data[id(a)] = k
        for k, a in reversed(list(enumerate(self.args))):
            if isinstance(a, Tensor) or is_ndarray(a):
                self._arg_roots[id(_root(a.data if isinstance(a, Tensor) else a))] = k
            elif _holds_arrays(a):
                self.refuse(
                    f"argument {k} holds Tensors or arrays in a {type(a).__name__}, which a "
                    "replay cannot bind anew: pass each as an argument of its own"
                )

    def elsewhere(self) -> bool:
        """Whether the hook was called from another thread than the step's."""
        return threading.get_ident() != self._thread

    def note_foreign(self, tensor: Tensor) -> None:
        """A Tensor another thread made during the recording: refused if the step uses it."""
        self._foreign[id(tensor)] = tensor

    # ------------------------------------------------------------------ the hooks
    def refuse(self, why: str) -> None:
        if self.problem is None:
            self.problem = why

    def created(self, tensor: Tensor, source: Any) -> None:
        """A Tensor made inside the step from ``source``: a number written in the step is a
        constant of the plan; an argument's own array is that argument; an op's output or a
        parameter (a ``detach()``) is that value, cut from the graph; an array or NumPy number
        that lives outside the step (a constant closed over, a module's attribute) is held by
        reference (checked once the step has run, :meth:`check_outside`). Anything else would
        be kept from the first call, so it is refused."""
        if self.elsewhere():
            self.note_foreign(tensor)
            return
        self._keep.append(tensor)
        if tensor.requires_grad:
            self.refuse(
                "a Tensor that requires grad is made inside the step (a replay could give it no "
                ".grad): make it outside, as a Parameter"
            )
        if type(source) in PLAIN:
            self._created.add(id(tensor))
            self._note_numbers(source)  # a name outside that holds it is guarded
            return
        if isinstance(source, np.generic) and any(source is a for a in self.args):
            self._created.add(id(tensor))  # the signature has its value: a plan's constant
            return
        if id(source) in self._made_arrays and (
            tensor.data is source or isinstance(source, np.generic)  # a 0-d op's result
        ):
            self._value[id(tensor)] = self._made_arrays[id(source)]
            return
        if is_ndarray(source) and tensor.data is source and id(source) in self._arg_data:
            return  # value_of classifies it
        owner = _parameter_of(source) if tensor.data is source else None
        if owner is not None:  # a parameter's detach(): that parameter, without its graph
            self._value[id(tensor)] = self.value_of(owner)
            return
        k = self._arg_roots.get(id(_root(source))) if is_ndarray(source) else None
        if k is not None:
            self.refuse(
                f"a Tensor is made inside the step from a part or a conversion of argument {k} "
                "(a replay would keep its first values): pass that array as an argument"
            )
            return
        why = (
            f"a Tensor is made inside the step from {type(source).__name__} data that is no "
            "argument of it and nothing outside the step holds (computed from one, drawn at "
            "random, or a value the step computed), which a replay would keep from the first "
            "call: pass the array as an argument (a constant may be a Python number)"
        )
        if tensor.data is source or isinstance(source, np.generic):  # by reference, or immutable
            self._created.add(id(tensor))
            self._outside.append((source, why))
            self._read_outside.append(source)
        else:
            self.refuse(why)

    def module(self, module: Any) -> None:
        if not self.elsewhere():
            self.modules.setdefault(id(module), (module, bool(module.training)))

    def read(self, tensor: Tensor, how: str) -> None:
        if self.elsewhere():
            return
        self.refuse(
            f"the step reads a tensor's values in Python ({how}), so a later step could take "
            "another path"
        )

    def op(
        self, op: type[Op], inputs: tuple[Tensor, ...], params: dict[str, Any], out: Tensor
    ) -> None:
        if self.elsewhere():  # not part of the step; refused if the step uses it
            self.note_foreign(out)
            return
        if not getattr(op, "replayable", True):
            self.refuse(f"op {op.name!r} declares that it cannot be replayed")
        ins = tuple(self.value_of(t) for t in inputs)
        bound = {name: self._param(op, name, v) for name, v in params.items()}
        number = self._new(("op", len(self.events)), out)
        self._made_arrays[id(out.data)] = number
        needs = tuple(t.requires_grad for t in inputs)
        self.events.append(Instr(op, ins, bound, number, needs))

    def backward(self, root: Tensor, grad: Any, retain: bool, create: bool) -> None:
        if self.elsewhere():
            return
        if create:
            self.refuse("backward(create_graph=True): a plan replays first-order gradients")
            return
        g = None if grad is None else to_host(grad.data if isinstance(grad, Tensor) else grad)
        if g is not None and np.size(g) != 1:
            self.refuse("backward(grad=...) with an array: call backward() on a scalar loss")
            return
        if g is not None and not np.all(np.asarray(g) == 1):
            self.refuse("backward(grad=...) other than 1: scale the loss instead")
            return
        order = topological_order(root)
        for t in order:
            if t._node is not None and id(t) in self._arg_tensor:
                self.refuse(
                    f"argument {self._arg_tensor[id(t)]} is a Tensor computed before the step, "
                    "and backward() goes on into that graph, which a replay cannot: compute it "
                    "inside the step, or pass it detached"
                )
                return
            if t._node is not None and id(t) not in self._value:
                self.refuse("backward() through a graph recorded before the step began")
                return
        if any(t._retain and t._node is not None for t in order):
            self.refuse("retain_grad() inside the step: a replay keeps no intermediate tensors")
            return
        numbers = [self.value_of(t) for t in order]
        delivered = {n for n, t in zip(numbers, order) if t._node is None}
        for n in delivered:
            kind, k = self.kinds[n]
            if kind in ("op", "const"):
                self.refuse(
                    "backward() gives a .grad to a Tensor computed or made inside the step "
                    "(requires_grad_() on a detached value?), which a replay cannot: compute "
                    "the loss without it, or do not compile the step"
                )
            if kind == "arg" and not isinstance(self.args[k], Tensor):
                self.refuse(
                    f"a Tensor made inside the step from argument {k} requires grad: pass the "
                    "Tensor itself, so that a replay can give it its .grad"
                )
        self.events.append(Backward(self.value_of(root), numbers, retain, delivered))

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.elsewhere():
            return fn(*args, **kwargs)
        name = fn.__qualname__

        def bound(a: Any) -> Any:
            if isinstance(a, Iterator):
                self.refuse(
                    f"{name}() is given an iterator (a generator?), which a replay would find "
                    "used up: pass a list"
                )
            elif isinstance(a, _FUNCTIONS):
                self.refuse(
                    f"{name}() is given a function (a closure?), which a replay would call as "
                    "it was at the record, with what it captured then"
                )
            elif isinstance(a, Tensor) and id(a) in self._arg_tensor:
                return ArgRef(self._arg_tensor[id(a)])  # this call's argument, on a replay
            elif is_ndarray(a) and id(a) in self._arg_data:
                return ArgRef(self._arg_data[id(a)])
            elif is_ndarray(a):
                self.refuse(f"{name}() is given an array that is no argument of the step")
            elif isinstance(a, Tensor) and id(a) in self._value:
                if self.kinds[self._value[id(a)]][0] != "ext":
                    self.refuse(f"{name}() is given a tensor computed inside the step")
            elif isinstance(a, (tuple, list)) and any(
                id(x) in self._arg_tensor or id(x) in self._arg_data for x in a
            ):
                self.refuse(f"{name}() is given the step's arguments in a container")
            else:
                self._note_numbers(a)  # clip_grad_norm(ps, MAX_NORM)
            return a

        rec_args = tuple(bound(a) for a in args)
        rec_kwargs = {k: bound(v) for k, v in kwargs.items()}
        binds = any(isinstance(a, ArgRef) for a in (*rec_args, *rec_kwargs.values()))
        self.events.append(Call(fn, rec_args, rec_kwargs, binds))
        caller = sys._getframe(2)  # 0: this, 1: tracing.replayable's wrapper, 2: the step
        # What it calls is part of it, not recorded again; a recording stays in progress (a
        # step another thread compiles meanwhile runs eagerly, recording nothing).
        previous = tracing.set_current(_Paused(self))
        try:
            result = fn(*args, **kwargs)
        finally:
            tracing.set_current(previous)
        if not _dropped(caller):
            self.refuse(
                f"the step uses what {name}() returned, which a replay does not give it again "
                "(the Python between ops runs once): drop the value, or do not compile the step"
            )
        return result

    # ------------------------------------------------------------------ values
    def _new(self, kind: tuple[str, Any], tensor: Tensor) -> int:
        number = len(self.kinds)
        self.kinds.append(kind)
        self.shapes.append(tuple(tensor.data.shape))
        self.dtypes.append(tensor.data.dtype)
        self.requires.append(bool(tensor.requires_grad))
        self._value[id(tensor)] = number
        self._keep.append(tensor)
        return number

    def value_of(self, t: Tensor) -> int:
        """The number of ``t``, classifying it the first time it is seen."""
        number = self._value.get(id(t))
        if number is not None:
            return number
        if id(t) in self._arg_tensor:
            return self._new(("arg", self._arg_tensor[id(t)]), t)
        if id(t.data) in self._arg_data:
            return self._new(("arg", self._arg_data[id(t.data)]), t)
        if id(t) in self._created:  # a number written in the step (created() refused the rest)
            return self._new(("const", t.data), t)
        if id(t) in self._foreign:
            self.refuse(
                "the step uses a Tensor that another thread made while it was being recorded "
                "(ops run on a pool?), which a replay would keep from the first call"
            )
        if t._node is not None:
            self.refuse(
                "the step uses a Tensor computed before it (it has a graph), which a replay would "
                "take as a constant: compute it inside the step, or detach it"
            )
        return self._new(("ext", t), t)

    def _param(self, op: type[Op], name: str, v: Any) -> Any:
        """An op's keyword parameter as the plan keeps it: an argument's array becomes an
        :class:`ArgRef`; a buffer of a module that ran is held by reference (a replay reads
        its current values); any other array or Tensor is refused, since one made inside
        the step (``y.astype(...)``) would be kept from the first call."""
        if is_ndarray(v):
            if id(v) in self._arg_data:
                return ArgRef(self._arg_data[id(v)])
            self._outside.append((v, (
                f"op {op.name!r}'s parameter {name!r} is an array that is no argument of the "
                "step and nothing outside it holds (made from one, as y.astype(...), or inside "
                "it), which a replay would keep from the first call: pass the array itself as "
                "an argument"
            )))  # fmt: skip
        elif isinstance(v, Tensor):
            self.refuse(f"op {op.name!r}'s parameter {name!r} is a Tensor")
        elif isinstance(v, np.random.Generator) and not any(v is a for a in self.args):
            # (an argument generator is in the signature by identity: held by reference)
            self._outside.append((v, (
                f"op {op.name!r}'s parameter {name!r} is a generator that nothing outside the "
                "step holds (made inside it?), which a replay would keep drawing from"
            )))  # fmt: skip
        elif _holds_arrays(v):
            self.refuse(
                f"op {op.name!r}'s parameter {name!r} holds arrays (a fancy index?), which a "
                "replay cannot bind anew: index with one array that is an argument of the step"
            )
        else:
            self._note_numbers(v)
        return v

    def _note_numbers(self, v: Any) -> None:
        """Python and NumPy numbers (in tuples too: an axis, an index) a plan keeps as they
        were at the record: a name outside the step that held one is guarded."""
        if type(v) in PLAIN or isinstance(v, np.generic):
            self._numbers.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                self._note_numbers(x)

    def check_outside(self, before: list[Place], attributes: list[Place]) -> None:
        """Refuse what the plan would hold by reference (an op's array or generator, a
        constant array) unless something outside the step holds it too: a module, or the step
        function's globals, closure or defaults as they were *before* the call (``before``),
        so that an array drawn inside and kept in a ``nonlocal`` does not count. One made
        inside the step would be kept from the first call; one that lives on is read as it is
        now, as eagerly."""
        # A Python number the step made a constant, read from a name outside it (SCALE * x
        # with a global SCALE): that name must hold an equal number on a replay. (The very
        # object, so a small int that merely equals one may ask for a needless recording.)
        # (A module's attributes are guarded as the module's state, where it ran.)
        numbers = {id(v) for v in self._numbers}
        self.names.extend((read, v) for read, v in before if id(v) in numbers)
        if not self._outside:
            return
        held = {id(b) for m in list(tracing.modules) for b in m._buffers.values()}
        held.update(id(v) for m in list(tracing.modules) for v in vars(m).values())
        held.update(id(v) for _, v in before)
        for obj, why in self._outside:
            if id(obj) not in held:
                self.refuse(why)
        # a name that held one of them must go on holding it: a global rebound between
        # calls (lr = np.float32(0.01)) is another value, which the plan would not read
        kept = {id(obj) for obj, _ in self._outside}
        self.names.extend((read, v) for read, v in before + attributes if id(v) in kept)

    def note_aliases(self, places: list[Place]) -> None:
        """Names outside the step (the function's globals, closure, defaults, a module's
        attributes) that held an argument at the record, or a Tensor of an argument's array.
        The step may read the value through either, and the plan binds it as the argument:
        a replay is right only while each such name holds the new argument (a loop variable
        of a script does), so :class:`~npgrad.compiler.plan.Guards` checks them."""
        for read, v in places:
            if isinstance(v, Tensor) and id(v) in self._arg_tensor:
                self.aliases.append((read, self._arg_tensor[id(v)], "tensor"))
            elif isinstance(v, Tensor) and id(v.data) in self._arg_data:
                self.aliases.append((read, self._arg_data[id(v.data)], "data"))
            elif is_ndarray(v) and id(v) in self._arg_data:
                self.aliases.append((read, self._arg_data[id(v)], "array"))

    def output(self, result: Any) -> Any:
        """The step's return value as value numbers (a Tensor -> its number), or refuse."""
        if result is None:
            return None
        if isinstance(result, Tensor):
            n = self.value_of(result)
            if result.requires_grad:  # its own flag: a detach() shares the value, not the flag
                self._graphs.append(result)
            kind, what = self.kinds[n]
            if result is (what if kind == "ext" else self.args[what] if kind == "arg" else None):
                return _Same(n)  # a parameter or an argument: the object itself, as eagerly
            return _Out(n)
        if type(result) in (tuple, list):
            return type(result)(self.output(r) for r in result)
        if isinstance(result, tuple) and hasattr(result, "_fields"):  # a namedtuple
            return type(result)(*(self.output(r) for r in result))
        if type(result) is dict:
            return {k: self.output(v) for k, v in result.items()}
        if isinstance(result, (tuple, list, dict)):
            self.refuse(
                f"the step returns a {type(result).__name__}: return a tuple, list, namedtuple "
                "or dict of Tensors"
            )
            return None
        self.refuse(
            f"the step returns a {type(result).__name__}: return Tensors (and read their values "
            "after the call), so that a replay returns this step's values"
        )
        return None


def _root(a: Any) -> Any:
    """The array that owns ``a``'s memory (``a`` itself unless it is a view)."""
    while getattr(a, "base", None) is not None and is_ndarray(a.base):
        a = a.base
    return a


def _dropped(frame: Any) -> bool:
    """Whether ``frame``'s current call has its result thrown away: the instruction after the
    call pops it (a call written as a statement). Anything else, or an interpreter whose
    bytecode says otherwise, counts as a use."""
    # f_lasti is the call (or, in Python 3.11, its last inline cache entry): the first
    # instruction after it is the next one
    after = (ins for ins in dis.get_instructions(frame.f_code) if ins.offset > frame.f_lasti)
    following = next(after, None)
    return following is not None and following.opname == "POP_TOP"


@dataclass(frozen=True)
class _Out:
    number: int


@dataclass(frozen=True)
class _Same:
    """A returned parameter or argument Tensor: a replay returns that very object."""

    number: int


def record(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, Trace, Any]:
    """Run ``fn(*args, **kwargs)`` eagerly while recording: (its result, the trace, the
    result in value numbers).

    The keyword arguments' values count as arguments after the positional ones, in the
    order of their sorted names (argument ``len(args) + j``): a replay binds them the same
    way (:func:`bound_arguments`).
    """
    trace = Trace(bound_arguments(args, kwargs))
    writes = {id(m): m.__dict__.get("_writes", 0) for m in list(tracing.modules)}
    before = _places(fn)
    attributes = [p for m in list(tracing.modules) for p in _named(vars(m))]
    trace.note_aliases(before + attributes)
    contents = _contents_of(before + attributes)
    previous = tracing.set_current(trace)
    try:
        result = fn(*args, **kwargs)
    finally:
        tracing.set_current(previous)
    _guard_owners(trace)
    for m, _ in trace.modules.values():  # a module made inside the step may set its own
        if id(m) in writes and m.__dict__.get("_writes", 0) != writes[id(m)]:
            trace.refuse(
                f"{type(m).__name__}'s attribute is assigned inside the step (self.features = "
                "... in a forward?), which a replay would not do again"
            )
    trace.check_outside(before, attributes)
    for source in trace._read_outside:
        then = contents.get(id(source))
        if then is not None and not _equal(source, then):
            trace.refuse(
                "the step writes into an array that lives outside it (NumPy's out=, a[...] = "
                "...) and makes a Tensor of it: a replay would not write it again (fill it before "
                "the call and pass it as an argument)"
            )
    params = [p for m, _ in trace.modules.values() for p in m._params.values()]
    for module, mode in trace.modules.values():
        if bool(module.training) != mode:
            trace.refuse(f"{type(module).__name__}'s training mode changes inside the step")
    for k, a in enumerate(trace.args):
        data = a.data if isinstance(a, Tensor) else a
        if any(a is p or data is p.data for p in params):
            trace.refuse(
                f"argument {k} is a parameter of a module the step runs (or its array): a "
                "replay could not tell its use through the argument from its use through the "
                "module"
            )
    structure = trace.output(result)
    # A replay returns values without a graph. A returned Tensor that requires grad must be
    # one that a backward() of the step went through (the loss, the logits), without keeping
    # its graph: any other (a forward pass's output, a GAN's fakes, a loss computed after the
    # update) may be differentiated after the step.
    passes = [e for e in trace.events if isinstance(e, Backward)]
    differentiated = {n for b in passes for n in b.order}
    for t in trace._graphs:
        n = trace.value_of(t)
        if trace.kinds[n][0] == "op" and (n not in differentiated or any(b.retain for b in passes)):
            trace.refuse(
                "the step returns a Tensor with a graph that no backward() in it went through "
                "(or whose graph it keeps), and a replay returns it without one: return it "
                ".detach()ed if it is not to be differentiated after the step"
            )
    return result, trace, structure


Place = tuple[Callable[[], Any], Any]  # how to read a name now, and what it held then


def _named(names: dict[str, Any], read: set[str] | None = None) -> list[Place]:
    """The entries of a namespace (globals, an object's attributes) as places: those whose
    names are in ``read`` (the names a function's code reads), or all of them."""
    return [
        (functools.partial(names.get, k), v)
        for k, v in list(names.items())
        if read is None or k in read
    ]


def _fixed(v: Any) -> Place:
    """A value reached without a name that could be rebound (a partial's argument)."""
    return (functools.partial(_same, v), v)


def _same(v: Any) -> Any:
    return v


def _default(f: Any, i: int) -> Any:
    defaults = f.__defaults__ or ()  # ``f.__defaults__ = ...`` rebinds them
    return defaults[i] if i < len(defaults) else None


def _contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # emptied since (del of a closed-over name): holds nothing
        return None


def _names_read(code: types.CodeType) -> set[str]:
    """The global and attribute names a function's code (and the code nested in it) reads."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _names_read(c)
    return names


def _an_object(v: Any) -> bool:
    """An instance whose attributes a step may read (``self.scale``, ``trainer.temperature``):
    not a function, class, module, array, Tensor, npgrad Module or plain value. An object
    that cannot even say so (a proxy whose ``__dict__`` raises) is not looked into."""
    try:
        return (
            isinstance(getattr(v, "__dict__", None), dict)
            and not isinstance(v, (type, types.ModuleType, Tensor, *_FUNCTIONS))
            and not is_ndarray(v)
            and not _is_module(v)
        )
    except Exception:
        return False


def _own(f: Any) -> bool:
    """A function of the user's to look into: not npgrad's or NumPy's own."""
    module = getattr(f, "__module__", None) or ""
    return not module.startswith(("npgrad.", "numpy"))


def _members(v: Any, read: set[str]) -> tuple[list[Place], list[tuple[Any, Any]]]:
    """What code that reads the names ``read`` may reach of object or class ``v``: its
    attributes and class attributes by those names (as places), and the functions it would
    run: methods by those names in every class of its MRO (a ``super()`` call runs the
    parent's), properties' getters, class and static methods, its ``__call__``, and what a
    wrapper wraps (``__wrapped__``: another compiled step, a decorated function)."""
    places: list[Place] = []
    funcs: list[tuple[Any, Any]] = []
    if not isinstance(v, type):
        places += _named(v.__dict__, read)
    for cls in v.__mro__ if isinstance(v, type) else type(v).__mro__:
        if cls is object or not _own(cls):
            continue
        names = vars(cls)
        for name in read & names.keys():
            m = names[name]
            if isinstance(m, (staticmethod, classmethod)):
                funcs.append((m.__func__, cls if isinstance(m, classmethod) else None))
            elif isinstance(m, property):
                funcs += [(m.fget, v)] if m.fget is not None else []
            elif isinstance(m, types.FunctionType):
                funcs.append((m, v))
            else:
                places.append((functools.partial(names.get, name), m))  # a class attribute
        call = names.get("__call__")
        if isinstance(call, types.FunctionType) and not isinstance(v, type):
            funcs.append((call, v))
    try:
        wrapped = getattr(v, "__wrapped__", None)
    except Exception:
        wrapped = None
    if isinstance(wrapped, _FUNCTIONS):
        funcs.append((wrapped, None))
    return places, funcs


CONTENTS_BYTES = 64 << 20
"""How much of the arrays a step reaches by name a recording copies, to see whether the
step writes into one that it then reads as a Tensor (beyond it they are not checked:
docs/compile.md, section 4)."""


def _contents_of(places: list[Place]) -> dict[int, Any]:
    """Copies of the arrays held at ``places`` (each once), up to :data:`CONTENTS_BYTES`."""
    copies: dict[int, Any] = {}
    budget = CONTENTS_BYTES
    for _, v in places:
        if is_ndarray(v) and id(v) not in copies and v.nbytes <= budget:
            copies[id(v)] = v.copy()
            budget -= v.nbytes
    return copies


def _equal(a: Any, b: Any) -> bool:
    return bool(namespace(a).array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _is_module(v: Any) -> bool:
    try:
        return v in tracing.modules
    except Exception:  # unhashable, or its hash raises: no Module
        return False


def _places(fn: Any) -> list[Place]:
    """What ``fn`` reaches by name, each with a way to read that name again.

    The globals its code reads, its defaults and closure; of the objects, classes and Python
    modules among them (and the object it is a method of, or the callable object it is)
    what the code reads (:func:`_members`); and so on for the functions found (helpers, a
    lambda calling ``trainer.step``, a callable scaler, another compiled step), each once.
    Only names the code reads: a script's loop counter beside the step is none of them.
    Names read as strings (``getattr(cfg, "lr")``, ``globals()[...]``) are not seen.
    """
    found: list[Place] = []
    todo: list[tuple[Any, Any]] = [(fn, None)]  # (a callable, the object it belongs to)
    seen: set[tuple[int, int]] = set()
    while todo:
        f, owner = todo.pop()
        if isinstance(f, types.MethodType):
            f, owner = f.__func__, getattr(f, "__self__", None)
        if (id(f), id(owner)) in seen:
            continue
        seen.add((id(f), id(owner)))
        if isinstance(f, functools.partial):
            found += [_fixed(a) for a in (*f.args, *f.keywords.values())]
            todo += [(a, None) for a in (f.func, *f.args, *f.keywords.values())]
            continue
        if not isinstance(f, types.FunctionType):
            if _an_object(f):  # npgrad.compile(trainer): its __call__, what it wraps
                todo += _members(f, {"__call__"})[1]
            continue
        if not _own(f):
            continue
        read = _names_read(f.__code__)
        names = _named(f.__globals__, read)
        near: list[Place] = []
        near += [(functools.partial(_default, f, i), v) for i, v in enumerate(f.__defaults__ or ())]
        for cell in f.__closure__ or ():
            try:
                near.append((functools.partial(_contents, cell), cell.cell_contents))
            except ValueError:  # an empty cell
                continue
        found += names + near
        objects = [v for _, v in names + near] + ([] if owner is None else [owner])
        looked: set[int] = set()
        while objects:  # and the objects found there in turn (self.cfg.temperature)
            v = objects.pop()
            if id(v) in looked:
                continue
            looked.add(id(v))
            if isinstance(v, _FUNCTIONS):
                todo.append((v, None))
            elif isinstance(v, types.ModuleType):  # a settings module: its values, not code
                found += [p for p in _named(vars(v), read) if not callable(p[1])]
            elif isinstance(v, type) and _own(v) or _an_object(v):
                places, funcs = _members(v, read)
                found += places
                todo += funcs
                objects += [x for _, x in places if _an_object(x)]
    return found


def _parameter_of(array: Any) -> Any:
    """The parameter of a live module whose data is ``array``, or None."""
    for m in list(tracing.modules):
        for p in m._params.values():
            if p.data is array:
                return p
    return None


def _guard_owners(trace: Trace) -> None:
    """Guard, as if they had run, every module that owns a parameter the step used and every
    module that holds a guarded one: a method other than ``forward`` (``model.encode(x)``)
    may read their attributes."""
    used = {id(t) for kind, t in trace.kinds if kind == "ext"}
    alive = list(tracing.modules)
    for m in alive:
        if any(id(p) in used for p in m._params.values()):
            trace.modules.setdefault(id(m), (m, bool(m.training)))
    grew = True
    while grew:  # up the tree, to the outermost module
        grew = False
        for m in alive:
            if id(m) not in trace.modules and any(
                id(c) in trace.modules for c in m._modules.values()
            ):
                trace.modules[id(m)] = (m, bool(m.training))
                grew = True


class _Paused:
    """The recorder while a recorded call runs: what it does is part of that call, and a
    step that another thread compiles meanwhile sees a recording in progress. Tensors that
    other threads make meanwhile are still noted, as during the rest of the recording."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def op(self, op: Any, inputs: Any, params: Any, out: Any) -> None:
        if self.trace.elsewhere():
            self.trace.note_foreign(out)

    def backward(self, root: Any, grad: Any, retain: bool, create: bool) -> None:
        return None

    def created(self, tensor: Any, source: Any) -> None:
        if self.trace.elsewhere():
            self.trace.note_foreign(tensor)

    def module(self, module: Any) -> None:
        return None

    def read(self, tensor: Any, how: str) -> None:
        return None

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fn(*args, **kwargs)


def _holds_arrays(a: Any) -> bool:
    """Whether a container argument holds a Tensor or an array, at any depth."""
    if isinstance(a, (tuple, list)):
        return any(isinstance(x, Tensor) or is_ndarray(x) or _holds_arrays(x) for x in a)
    if isinstance(a, dict):
        return _holds_arrays(list(a.values()))
    return False


def bound_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The positional arguments, then the keyword arguments' values by sorted name."""
    return (*args, *(kwargs[k] for k in sorted(kwargs))) if kwargs else args
