"""A stand-in for CuPy on machines without a GPU: NumPy underneath, CuPy's manners on top.

What it copies from CuPy is what catches a NumPy call left on device data:

* its arrays refuse implicit conversion to NumPy (``np.asarray(a)``, ``np.exp(a)``,
  ``np.empty_like(a)``... raise ``TypeError``, as CuPy's ``__array__`` does), and a NumPy
  function or ufunc applied to them fails (stricter than CuPy, which dispatches some:
  npgrad must call the array's own namespace);
* a NumPy array mixed into an operation with them (``a + host``, ``a[host_index]``,
  ``xp.add(a, host)``) raises ``TypeError``; only ``asarray``/``array`` take host data;
* reductions return 0-d arrays, not NumPy scalars; ``.get()`` and ``asnumpy`` copy to
  the host; ``float(a)``/``int(a)``/``bool(a)`` work on one element, as in CuPy;
* its own ``random`` module, whose Generator is not NumPy's.

``fakecupy.install()`` registers it as npgrad's ``"cuda"`` device.
"""

from __future__ import annotations

import operator
import types
from typing import Any

import numpy as np

from npgrad.ops import device

_REFUSAL = "Implicit conversion to a NumPy array is not allowed. Please use `.get()`"


def _host(x: Any) -> Any:
    """Unwrap for NumPy; refuse host arrays (a NumPy call's result leaking into device code)."""
    if type(x) is ndarray:
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)} (a host array mixed with device arrays)")
    if isinstance(x, (list, tuple)):
        return type(x)(_host(v) for v in x)
    return x


def _wrap(r: Any) -> Any:
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):  # CuPy's functions and reductions return 0-d arrays
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _wrapped(f: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        r = f(*_host(args), **{k: _host(v) for k, v in kwargs.items()})
        return out if out is not None and type(out) is ndarray else _wrap(r)

    call.__name__ = getattr(f, "__name__", "function")
    return call


class ndarray:
    __slots__ = ("_a",)
    __array_ufunc__ = None  # np.exp(a), np.add(a, b): TypeError
    __array_priority__ = 100  # CuPy's

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(_REFUSAL)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return NotImplemented  # np.concatenate(a), np.empty_like(a): TypeError

    def get(self) -> np.ndarray:
        return self._a.copy()

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    # CuPy's flags hold these three only (no 'writeable', no 'aligned')
    flags = property(
        lambda self: types.SimpleNamespace(
            c_contiguous=self._a.flags.c_contiguous,
            f_contiguous=self._a.flags.f_contiguous,
            owndata=self._a.flags.owndata,
        )
    )
    T = property(lambda self: ndarray(self._a.T))

    def __getattr__(self, name: str) -> Any:  # methods: reshape, sum, astype, ...
        if name.startswith("__"):  # __array_interface__ would hand NumPy the memory
            raise AttributeError(name)
        attr = getattr(self._a, name)
        return _wrapped(attr) if callable(attr) else _wrap(attr)

    def __getitem__(self, index: Any) -> Any:
        return _wrap(self._a[_host(index)])

    def __setitem__(self, index: Any, value: Any) -> None:
        self._a[_host(index)] = _host(value)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        return (_wrap(r) for r in self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __repr__(self) -> str:
        return f"fakecupy.{self._a!r}"

    __hash__ = None  # type: ignore[assignment]


def _binary(op: Any, reflected: bool = False) -> Any:
    def method(self: ndarray, other: Any) -> Any:
        # CuPy hands an operation to an operand of higher __array_priority__ (a Tensor)
        if type(other) is not ndarray and getattr(other, "__array_priority__", 0) > 100:
            return NotImplemented
        o = _host(other)
        return _wrap(op(o, self._a) if reflected else op(self._a, o))

    return method


def _inplace(op: Any) -> Any:
    def method(self: ndarray, other: Any) -> Any:
        op(self._a, _host(other))
        return self

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"):  # fmt: skip
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(ndarray, f"__{_name}__", _binary(_op))
    setattr(ndarray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(ndarray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(
        ndarray,
        f"__{_name}__",
        (lambda op: lambda self: _wrap(op(self._a)))(getattr(operator, _name)),
    )


class ufunc:
    """A NumPy ufunc on fake arrays: called, ``.at``, ``.reduce``."""

    def __init__(self, f: np.ufunc) -> None:
        self._f = f
        self.__name__ = f.__name__
        self.at = _wrapped(f.at)
        self.reduce = _wrapped(f.reduce)
        self.accumulate = _wrapped(f.accumulate)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _wrapped(self._f)(*args, **kwargs)


class Generator:
    """CuPy's ``random.Generator``: not NumPy's type, draws fake arrays."""

    def __init__(self, seed: Any = None) -> None:
        # another stream than NumPy's for the same seed, as CuPy's is (cuRAND)
        self._g = np.random.default_rng(None if seed is None else [seed, 7])

    def __getattr__(self, name: str) -> Any:
        return _wrapped(getattr(self._g, name))


class _Namespace(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        attr = getattr(np, name)
        if isinstance(attr, np.ufunc):
            return ufunc(attr)
        if isinstance(attr, (type, types.ModuleType)) or not callable(attr):
            return attr  # dtypes and scalar types are NumPy's in CuPy too; constants
        return _wrapped(attr)


def _asarray(a: Any, dtype: Any = None, **kwargs: Any) -> ndarray:
    if type(a) is ndarray:
        return a if dtype is None or a.dtype == dtype else ndarray(a._a.astype(dtype))
    return ndarray(np.asarray(a, dtype=dtype, **kwargs))


def _array(a: Any, dtype: Any = None, copy: bool = True, **kwargs: Any) -> ndarray:
    src = a._a if type(a) is ndarray else a
    return ndarray(np.array(src, dtype=dtype, copy=copy, **kwargs))


fakecupy = _Namespace("fakecupy", __doc__)
fakecupy.ndarray = ndarray  # type: ignore[attr-defined]
fakecupy.asarray = _asarray  # type: ignore[attr-defined]
fakecupy.array = _array  # type: ignore[attr-defined]
fakecupy.asnumpy = lambda a: a.get() if type(a) is ndarray else np.asarray(a)  # type: ignore[attr-defined]
fakecupy.random = types.SimpleNamespace(  # type: ignore[attr-defined]
    Generator=Generator, default_rng=Generator
)
_lib = types.SimpleNamespace(
    stride_tricks=types.SimpleNamespace(
        sliding_window_view=_wrapped(np.lib.stride_tricks.sliding_window_view),
        as_strided=_wrapped(np.lib.stride_tricks.as_strided),
    )
)
fakecupy.lib = _lib  # type: ignore[attr-defined]
fakecupy.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
    runtime=types.SimpleNamespace(
        deviceSynchronize=lambda: None, runtimeGetVersion=lambda: 0, getDeviceCount=lambda: 1
    )
)


def install() -> Any:
    """Register the stand-in as npgrad's ``"cuda"`` device; returns the namespace."""
    device.register("cuda", fakecupy, ndarray)
    return fakecupy


def uninstall() -> None:
    device.unregister("cuda")
