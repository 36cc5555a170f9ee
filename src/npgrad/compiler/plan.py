"""A trace turned into a plan, and the plan replayed.

A :class:`Plan` is a flat list of steps over numbered values (the *slots*): op
forwards, the backward pass unrolled into vjp calls, the recorded calls. Building it
does, once, everything the engine does on every step:

* **the walk**: each ``backward()`` becomes the list of vjps in the order the engine
  would run them, with which inputs need a gradient, whose gradient is summed back
  over broadcast axes, and which leaf's ``.grad`` receives it;
* **lifetimes**: each value's slot is emptied after its last reader (an op's
  forward), each op's saved arrays after its vjp, so memory is given back as early
  as the data flow allows (a slot is a register: it holds a value only while the
  value is live), and never later than the eager engine gives it back;
* **rewrites** (:data:`REWRITES`), changes of the op sequence that give the same
  values and that only a view of the whole step allows.

A replay then runs the same ``op.forward`` and ``op.vjp`` functions as the engine,
with no Tensor, Node, walk or dictionary of gradients: the arithmetic is the eager
step's, operation for operation, so the results are the same bits.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..autodiff import Tensor, _accumulate_leaf
from ..ops import conv, dense
from ..ops.base import unbroadcast
from ..ops.device import is_ndarray, namespace
from ..ops.geometry import as_pair
from .trace import PLAIN, ArgRef, Backward, Call, Instr, OverInput, Trace, _Out, _Same, plain_key

FWD, BWD, CALL = 0, 1, 2


# --------------------------------------------------------------------------- rewrites


def relu_after_max_pool(trace: Trace, keep: set[int]) -> int:
    r"""``max_pool2d(relu(x))`` -> ``relu(max_pool2d(x))``: the same values, 1/k² the relu work.

    Both are monotone: $\max_{\mathcal W}\max(x_i, 0) = \max(\max_{\mathcal W} x_i, 0)$,
    exactly, in floating point too. The gradients agree as well: where a window's
    maximum is positive both send $G$ to the same (first) arg-max; where it is not,
    relu's mask gives $0$ either way. Applied where the relu's output feeds only the
    pooling and the pooling has no padding: with padding, a window that holds padding alone
    pools to $-\infty$ after the relu but to $0$ before it. Returns how many pairs were
    swapped.
    """
    readers: dict[int, list[int]] = {}
    for i, e in enumerate(trace.events):
        if isinstance(e, Instr):
            for n in e.ins:
                readers.setdefault(n, []).append(i)
    swapped = 0
    for i, e in enumerate(trace.events):
        if not (isinstance(e, Instr) and e.op is dense.ReluOp):
            continue
        r = e.out
        users = readers.get(r, [])
        if r in keep or len(users) != 1:
            continue
        pool = trace.events[users[0]]
        assert isinstance(pool, Instr)
        if pool.op is not conv.MaxPool2dOp or pool.ins != (r,):
            continue
        if as_pair(pool.params.get("padding", 0), "padding", 0) != (0, 0):
            continue  # a window of padding alone is -inf pooled, 0 the other way round
        pooled = len(trace.kinds)  # a new value: x pooled, before the relu
        trace.kinds.append(("op", i))
        trace.shapes.append(trace.shapes[pool.out])
        trace.dtypes.append(trace.dtypes[pool.out])
        trace.requires.append(trace.requires[r])
        trace.events[i] = replace(pool, ins=e.ins, out=pooled, needs=e.needs)
        trace.events[users[0]] = replace(e, ins=(pooled,), out=pool.out, needs=(trace.requires[r],))
        for b in trace.events:
            if isinstance(b, Backward):
                b.order = [pooled if n == r else n for n in b.order]
        swapped += 1
    return swapped


def over_dead_input(trace: Trace, keep: set[int]) -> int:
    r"""``y = f(x)`` written over ``x``'s own buffer where nothing needs ``x`` afterwards.

    The activation that follows a product (``relu(linear(...))``, ``relu`` after a
    pooling) and the batch norm that follows a convolution then add no buffer of
    their own, and they write to memory that the step has just touched rather than
    to a fresh block that has left the cache. Applied where ``f`` can write over
    its input (``Op.writes_over_input``: ``f(x, out=x)`` gives the same values as
    ``f(x)``), ``x`` is an op's output that ``f`` alone reads, that the step does
    not return or differentiate from, that its producer does not save for the
    backward pass (``Op.saves_output``), and whose shape and dtype are ``y``'s.
    Returns how many ops write over their input.
    """
    readers: dict[int, int] = {}
    for e in trace.events:
        if isinstance(e, Instr):
            for n in e.ins:
                readers[n] = readers.get(n, 0) + 1
    done = 0
    for i, e in enumerate(trace.events):
        if not (isinstance(e, Instr) and e.op.writes_over_input and e.ins) or "out" in e.params:
            continue
        n = e.ins[0]
        kind, made_by = trace.kinds[n]
        if kind != "op" or n in keep or readers[n] != 1:
            continue
        producer = trace.events[made_by]
        assert isinstance(producer, Instr) and producer.out == n
        if producer.op.saves_output:
            continue
        if trace.shapes[n] != trace.shapes[e.out] or trace.dtypes[n] != trace.dtypes[e.out]:
            continue
        if not trace.shapes[n]:  # a 0-d result may be a NumPy scalar, which takes no writes
            continue
        trace.events[i] = replace(e, params={**e.params, "out": OverInput()})
        done += 1
    return done


REWRITES: list[Callable[[Trace, set[int]], int]] = [relu_after_max_pool, over_dead_input]
"""Each takes the trace and the values that must keep their identity (returned ones,
backward roots, leaves) and changes the trace in place; each is tested against the
eager step in ``tests/compiler/test_compile.py``."""


# --------------------------------------------------------------------------- the plan


@dataclass
class _Vjp:
    """One entry of an unrolled backward pass, in the order the engine runs them."""

    value: int
    deliver: Any  # where a leaf's gradient goes: ("ext", tensor), ("arg", k) or None
    instr: int  # the step whose saved arrays the vjp reads; -1 for a leaf
    vjp: Any
    needs: tuple[bool, ...]
    parents: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    over_g: bool = False  # the vjp may write its first input's gradient over g


def _sole_owner(g: Any) -> bool:
    """Whether nothing but the caller's one reference holds ``g`` or the memory under it.

    CPython counts references: ``g`` is held by the caller's variable, this call's
    argument and ``getrefcount``'s own (3); a view's base by the view, ``base`` here and
    ``getrefcount`` (3). Anything more (a ``.grad``, another gradient, a saved array,
    another view) means another reader.
    CuPy's arrays have no ``writeable`` flag: always writeable.
    """
    base = g.base
    if base is None:
        return sys.getrefcount(g) <= 3 and getattr(g.flags, "writeable", True)
    return (
        sys.getrefcount(g) <= 3
        and base.base is None
        and sys.getrefcount(base) <= 3
        and getattr(g.flags, "writeable", True)
    )


class Plan:
    """A step, unrolled: built once from a :class:`~npgrad.compiler.trace.Trace`, then run."""

    def __init__(self, trace: Trace, structure: Any, rewrite: bool = True) -> None:
        self.kinds = trace.kinds
        self.guards = Guards(trace)
        keep = _keep(trace, structure)
        self.rewrites = {f.__name__: f(trace, keep) for f in REWRITES} if rewrite else {}
        self.rewrite = rewrite
        self.wrote_over_g = 0  # vjps that wrote over their g, all replays together
        self.shapes, self.dtypes = trace.shapes, trace.dtypes
        self.structure = structure
        self.events = trace.events
        self.size = len(trace.kinds)
        self.steps: list[tuple[Any, ...]] = []
        self.lifetimes: dict[int, tuple[int, int]] = {}  # value -> (made at, last read at)
        self._build(trace, keep)
        if rewrite:  # decided per vjp when unrolled; whether it does, at each replay
            self.rewrites["vjp_over_gradient"] = sum(
                e.over_g for step in self.steps if step[0] == BWD for e in step[2]
            )
        self.fixed = [(n, k[1]) for n, k in enumerate(self.kinds) if k[0] == "const"]
        self.params = [(n, k[1]) for n, k in enumerate(self.kinds) if k[0] == "ext"]
        self.args = [(n, k[1]) for n, k in enumerate(self.kinds) if k[0] == "arg"]
        self.profile: dict[str, list[float]] | None = None
        # parameter names for describe(), from the outermost module called (first recorded)
        by_id: dict[int, str] = {}
        for module, _ in self.guards.modules:
            for name, p in module.named_parameters():
                by_id.setdefault(id(p), name)
        self.names = {n: by_id.get(id(t), f"p{n}") for n, t in self.params}

    def _build(self, trace: Trace, keep: set[int]) -> None:
        last: dict[int, int] = {}
        made: dict[int, int] = {}
        backward_of: set[int] = set()
        for i, e in enumerate(self.events):
            if isinstance(e, Instr):
                made[e.out] = i
                for n in e.ins:
                    last[n] = i
            elif isinstance(e, Backward):
                backward_of.update(e.order)
        frees: dict[int, list[int]] = {}
        for n, i in last.items():
            if n not in keep and self.kinds[n][0] == "op":
                frees.setdefault(i, []).append(n)
        for n, i in made.items():
            if n not in keep and n not in last:  # never read: dropped at once
                frees.setdefault(i, []).append(n)
            self.lifetimes[n] = (i, len(self.events) if n in keep else last.get(n, i))
        for i, e in enumerate(self.events):
            if isinstance(e, Instr):
                # an argument's array (its position), or -1: the first input's own array
                binds = [
                    (name, v.k if isinstance(v, ArgRef) else -1)
                    for name, v in e.params.items()
                    if isinstance(v, (ArgRef, OverInput))
                ]
                params = {
                    k: v for k, v in e.params.items() if not isinstance(v, (ArgRef, OverInput))
                }
                keeps_saved = e.out in backward_of and trace.requires[e.out]
                step = (FWD, i, e.op.forward, e.ins, params, binds, e.out, keeps_saved)
                self.steps.append(step + (tuple(frees.get(i, ())),))
            elif isinstance(e, Backward):
                self.steps.append((BWD, e.root, self._unroll(e), e.retain, self.dtypes[e.root]))
            elif isinstance(e, Call):
                # a call may give a parameter a new array (p.data = ...): ops after it read
                # the parameters again
                later = any(isinstance(f, Instr) for f in self.events[i + 1 :])
                self.steps.append((CALL, e.fn, e.args, e.kwargs, e.binds, later))

    def _unroll(self, b: Backward) -> list[_Vjp]:
        producer = {e.out: (i, e) for i, e in enumerate(self.events) if isinstance(e, Instr)}
        out = []
        for n in reversed(b.order):
            deliver = self.kinds[n] if n in b.delivered else None
            if n in producer:
                i, e = producer[n]
                needs = tuple(need and p in b.order for need, p in zip(e.needs, e.ins))
                shapes = tuple(self.shapes[p] for p in e.ins)
                over_g = (
                    self.rewrite
                    and e.op.vjp_writes_over_g
                    and needs[0]
                    and shapes[0] == self.shapes[n]
                    and self.dtypes[e.ins[0]] == self.dtypes[n]
                )
                out.append(_Vjp(n, deliver, i, e.op.vjp, needs, e.ins, shapes, over_g))
            else:
                out.append(_Vjp(n, deliver, -1, None, (), (), ()))
        return out

    # ------------------------------------------------------------------ running
    def guards_hold(self, args: tuple[Any, ...]) -> bool:
        return self.guards.hold(args)

    def run(self, args: tuple[Any, ...]) -> Any:
        """Replay the step on ``args`` (same shapes and dtypes as the trace's)."""
        v: list[Any] = [None] * self.size
        arrays = [a.data if isinstance(a, Tensor) else a for a in args]
        for n, k in self.args:
            v[n] = arrays[k]
        for n, tensor in self.params:
            v[n] = tensor.data
        for n, value in self.fixed:
            v[n] = value
        saved: dict[int, Any] = {}
        timing = self.profile
        for step in self.steps:
            t0 = time.perf_counter() if timing is not None else 0.0
            kind = step[0]
            if kind == FWD:
                _, i, forward, ins, params, binds, out, keeps_saved, frees = step
                if binds:
                    params = {
                        **params,
                        **{name: arrays[k] if k >= 0 else v[ins[0]] for name, k in binds},
                    }
                v[out], s = forward(*[v[n] for n in ins], **params)
                if keeps_saved:
                    saved[i] = s
                for n in frees:
                    v[n] = None
                if timing is not None:
                    timing.setdefault(self.events[i].op.name, []).append(time.perf_counter() - t0)
            elif kind == BWD:
                _, root, vjps, retain, dtype = step
                xp = namespace(*arrays, *(t.data for _, t in self.params))  # the step's device
                self._backward(
                    root, vjps, retain, xp.ones(self.shapes[root], dtype), saved, args, timing
                )
            else:
                _, fn, cargs, ckwargs, binds, later = step
                if binds:  # an argument Tensor of this call, where the record had its own
                    cargs = tuple(args[a.k] if isinstance(a, ArgRef) else a for a in cargs)
                    ckwargs = {
                        k: args[a.k] if isinstance(a, ArgRef) else a for k, a in ckwargs.items()
                    }
                fn(*cargs, **ckwargs)
                if later:
                    arrays = [a.data if isinstance(a, Tensor) else a for a in args]
                    for n, k in self.args:
                        v[n] = arrays[k]
                    for n, tensor in self.params:
                        v[n] = tensor.data
                if timing is not None:
                    timing.setdefault(step[1].__qualname__, []).append(time.perf_counter() - t0)
        return _result(self.structure, v, self.kinds, args)

    def _backward(
        self,
        root: int,
        vjps: list[_Vjp],
        retain: bool,
        seed: Any,
        saved: dict[int, Any],
        args: tuple[Any, ...],
        timing: dict[str, list[float]] | None,
    ) -> None:
        # The engine's _propagate, with the walk and every decision made at build time.
        grads: list[Any] = [None] * self.size
        grads[root] = seed
        handed_out: set[int] = set()
        for e in vjps:
            g = grads[e.value]
            if g is None:
                continue
            grads[e.value] = None
            if e.deliver is not None:
                kind, what = e.deliver
                _accumulate_leaf(what if kind == "ext" else args[what], g, handed_out, False)
            if e.instr < 0 or True not in e.needs:
                continue
            t0 = time.perf_counter() if timing is not None else 0.0
            if e.over_g and _sole_owner(g):  # nothing else reads g: write over it
                self.wrote_over_g += 1
                in_grads = e.vjp(saved[e.instr], g, e.needs, out=g)
            else:
                in_grads = e.vjp(saved[e.instr], g, e.needs)
            for p, gi, need, shape in zip(e.parents, in_grads, e.needs, e.shapes):
                if gi is None or not need:
                    continue
                if gi.shape != shape:
                    gi = unbroadcast(gi, shape)
                prev = grads[p]
                grads[p] = gi if prev is None else prev + gi
            in_grads = gi = prev = None  # grads[] holds them now: _sole_owner counts on it
            if not retain:
                del saved[e.instr]
            if timing is not None:
                name = self.events[e.instr].op.name  # type: ignore[union-attr]
                timing.setdefault(name + " vjp", []).append(time.perf_counter() - t0)

    # ------------------------------------------------------------------ reading it
    def describe(self) -> str:
        """The plan as text: each forward step with its slot's lifetime, then each vjp."""
        lines = []
        for step in self.steps:
            if step[0] == FWD:
                _, i, _f, ins, params, binds, out, keeps, _frees = step
                op = self.events[i].op.name
                made, dies = self.lifetimes.get(out, (i, i))
                shape = "x".join(map(str, self.shapes[out])) or "scalar"
                args = ", ".join(self._name(n) for n in ins)
                extra = ", ".join(f"{k}=arg{a}" if a >= 0 else f"{k}=v{ins[0]}" for k, a in binds)
                life = "kept" if dies >= len(self.events) else f"steps {made}-{dies}"
                lines.append(
                    f"{i:3d}  v{out} = {op}({args}{', ' + extra if extra else ''})"
                    f"  [{shape}, {life}{', saved for backward' if keeps else ''}]"
                )
            elif step[0] == BWD:
                lines.append("     backward:")
                for e in step[2]:
                    if e.instr >= 0 and True in e.needs:
                        to = ", ".join(
                            f"g{p}" if need else "-" for p, need in zip(e.parents, e.needs)
                        )
                        op = self.events[e.instr].op.name
                        lines.append(f"       {to} += {op}.vjp(g{e.value})")
                    if e.deliver is not None:
                        lines.append(f"       {self._name(e.value)}.grad += g{e.value}")
            else:
                lines.append(f"     call {step[1].__qualname__}()")
        return "\n".join(lines)

    def _name(self, n: int) -> str:
        kind, what = self.kinds[n]
        if kind == "arg":
            return f"arg{what}"
        if kind == "ext":
            return self.names[n]
        if kind == "const":
            size = what.size if is_ndarray(what) else np.size(what)
            return repr(float(what)) if size == 1 else f"c{n}"
        return f"v{n}"


class Guards:
    """What a recording took for given outside its arguments; a change of any of it needs a
    new recording.

    * each module that ran, owns a parameter the step used, or holds such a module (so
      ``model.encode(x)`` reading ``model.temperature`` is covered), with its attributes
      (``Module.__setattr__`` counts assignments among them, ``_writes``): its mode, its
      parameters and buffers (an op
      holds batch norm's running statistics by reference, so a buffer replaced by
      assignment must not be left behind), the numbers its ops took as constants (dropout's
      ``p``, batch norm's ``momentum``), its generator;
    * each outside tensor (a parameter): whether it requires grad (a frozen layer), and its
      data's dtype, shape and type (the plan's buffers and seeds were made for them);
    * each name outside the step (a global, a closure's cell, a default, a module's
      attribute) that held an argument at the record, or a Tensor of its array: it must hold
      this call's argument (a script's loop variable does), or the step may read the
      record's through it; each name that held an array, NumPy number or generator that the
      plan holds by reference: it must still hold that object; and each name that held a
      Python number the plan took as a constant: it must hold an equal one.
    """

    def __init__(self, trace: Trace) -> None:
        self.modules = [(m, list(vars(m).items())) for m, _ in trace.modules.values()]
        self.aliases = trace.aliases
        self.names = trace.names
        self.tensors = [
            (t, trace.requires[n], t.data.dtype, t.data.shape, type(t.data))
            for n, (kind, t) in enumerate(trace.kinds)
            if kind == "ext"
        ]

    def hold(self, args: tuple[Any, ...]) -> bool:
        """Whether they hold for a call with these (bound) arguments."""
        return (
            all(_same_state(m, state) for m, state in self.modules)
            and all(
                t.requires_grad == wanted
                and type(t.data) is kind
                and t.data.dtype == dtype
                and t.data.shape == shape
                for t, wanted, dtype, shape, kind in self.tensors
            )
            and all(_still_aliased(read(), args[k], how) for read, k, how in self.aliases)
            and all(_still_held(read(), held) for read, held in self.names)
        )


def _still_held(now: Any, held: Any) -> bool:
    """The same object, or for a number (Python's or NumPy's, immutable) an equal one: the
    same type and bits."""
    if now is held:
        return True
    if type(now) is not type(held):
        return False
    if type(held) in PLAIN:
        return plain_key(now) == plain_key(held)
    return isinstance(held, np.generic) and now.tobytes() == held.tobytes()


def _still_aliased(now: Any, arg: Any, how: str) -> bool:
    """Whether a name that held argument ``arg`` at the record (``how``: the Tensor itself, a
    Tensor of its array, or the array) holds this call's argument the same way."""
    array = arg.data if isinstance(arg, Tensor) else arg
    if how == "tensor":
        return now is arg
    if how == "data":
        return isinstance(now, Tensor) and now.data is array
    return now is array


@dataclass
class Refused:
    """A recording that found the step could not be replayed (``why``): while its guards
    hold, the step runs eagerly without recording again."""

    why: str
    guards: Guards

    def guards_hold(self, args: tuple[Any, ...]) -> bool:
        return self.guards.hold(args)


def _same_state(module: Any, recorded: list[tuple[str, Any]]) -> bool:
    """Whether ``module``'s attributes are those recorded: the same objects (a Parameter, a
    buffer, a generator: a module assigns a buffer through its attribute too), or plain
    values equal to the recorded ones (``p = 0.5`` again)."""
    now = vars(module)
    if len(now) != len(recorded):
        return False
    for (k, v), (rk, rv) in zip(now.items(), recorded):
        if v is not rv and (k != rk or type(v) not in PLAIN or plain_key(v) != plain_key(rv)):
            return False
    return True


def timeline(plan: Plan) -> str:
    """Each value's slot over the forward steps: made (``#``), live (``=``), then held by the
    saved arrays of its op for the backward pass (``~``) or given back (blank)."""
    fwd = [s for s in plan.steps if s[0] == FWD]
    last_step = len(plan.events)
    rows = ["value           " + "".join(f"{s[1]:>3d}" for s in fwd) + "  backward"]
    for s in fwd:
        i, out, keeps = s[1], s[6], s[7]
        made, dies = plan.lifetimes.get(out, (i, i))
        cells = []
        for t in fwd:
            j = t[1]
            cells.append("  #" if j == made else "  =" if made < j <= dies else "   ")
        op = plan.events[i].op.name
        tail = "  kept" if dies >= last_step else "  ~saved" if keeps else ""
        rows.append(f"v{out:<3d} {op:<11.11s}" + "".join(cells) + tail)
    return "\n".join(rows)


def _keep(trace: Trace, structure: Any) -> set[int]:
    keep: set[int] = set()

    def walk(s: Any) -> None:
        if isinstance(s, _Out):
            keep.add(s.number)
        elif isinstance(s, (tuple, list)):
            for x in s:
                walk(x)
        elif isinstance(s, dict):
            for x in s.values():
                walk(x)

    walk(structure)
    for e in trace.events:
        if isinstance(e, Backward):
            keep.add(e.root)
            keep.update(e.delivered)
    return keep


def _result(s: Any, v: list[Any], kinds: list[tuple[str, Any]], args: tuple[Any, ...]) -> Any:
    if isinstance(s, _Out):
        return Tensor(v[s.number])
    if isinstance(s, _Same):  # the parameter or argument itself, as the eager step returns
        kind, what = kinds[s.number]
        return what if kind == "ext" else args[what]
    if isinstance(s, tuple) and hasattr(s, "_fields"):
        return type(s)(*(_result(x, v, kinds, args) for x in s))
    if isinstance(s, (tuple, list)):
        return type(s)(_result(x, v, kinds, args) for x in s)
    if isinstance(s, dict):
        return {k: _result(x, v, kinds, args) for k, x in s.items()}
    return s
