"""Where arrays live: NumPy on the host (``"cpu"``), CuPy on an NVIDIA GPU (``"cuda"``).

CuPy copies NumPy's interface, so one op table serves both: each op asks
:func:`namespace` for the module of its input arrays (``xp``) and calls
``xp.exp``, ``xp.empty``, ``xp.matmul`` on it, never ``np.`` on data. What stays NumPy
is host bookkeeping: shapes, dtypes, index arithmetic, ``np.errstate``.

The namespace is read from the arrays' type, one dictionary lookup, so the CPU path
costs nothing. A device's module is loaded on first use (:func:`module`): importing
npgrad never imports CuPy. Tests register a stand-in for CuPy with :func:`register`
(``tests/fakecupy.py``: NumPy underneath, CuPy's refusals on top), which proves the
device paths on machines without a GPU.

Moving arrays: :func:`to_device` (``Tensor.to``, ``Module.to``), :func:`to_host`
(checkpoints, exports, printing: always from host arrays).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np

from ..errors import DeviceError

CPU = "cpu"
DEVICES = ("cpu", "cuda")

_by_type: dict[type, Any] = {np.ndarray: np}  # array type -> its namespace
_modules: dict[str, Any] = {CPU: np}  # device name -> namespace, once loaded
_names: dict[int, str] = {id(np): CPU}  # id(namespace) -> device name


def namespace(*arrays: Any) -> Any:
    """The array module (``numpy`` or ``cupy``) of ``arrays``; NumPy for scalars and lists."""
    for a in arrays:
        xp = _by_type.get(type(a))
        if xp is None:  # a Tensor (a vjp being recorded): its array's
            xp = _by_type.get(type(getattr(a, "data", None)))
        if xp is not None and xp is not np:
            return xp
    return np


def is_array(x: Any) -> bool:
    """True for an array of any registered device and for NumPy scalars (not for a Tensor)."""
    return type(x) in _by_type or isinstance(x, (np.ndarray, np.generic))


def is_ndarray(x: Any) -> bool:
    """True for an array of any registered device (not for a NumPy scalar or a Tensor)."""
    return isinstance(x, np.ndarray) or type(x) in _by_type


def on_host(*arrays: Any) -> bool:
    """True when none of ``arrays`` lives on a device (the NumPy fast paths apply)."""
    return namespace(*arrays) is np


def register(device: str, xp: Any, array_type: type) -> None:
    """Make ``xp`` (with arrays of ``array_type``) the namespace of ``device``."""
    _by_type[array_type] = xp
    _modules[device] = xp
    _names[id(xp)] = device


def unregister(device: str) -> None:
    """Forget ``device``'s namespace (tests use it to put their stand-in away)."""
    xp = _modules.pop(device, None)
    if xp is not None and device != CPU:
        _names.pop(id(xp), None)
        for t in [t for t, m in _by_type.items() if m is xp]:
            del _by_type[t]


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    return device


def module(device: str) -> Any:
    """The namespace of ``device``, loading CuPy on first use of ``"cuda"``."""
    xp = _modules.get(check_device(device))
    if xp is None:
        xp, array_type = _load_cupy()
        register(device, xp, array_type)
    return xp


def _load_cupy() -> tuple[Any, type]:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise DeviceError(
            "device 'cuda' needs CuPy, which is not installed: pip install 'npgrad[cuda12]' "
            "(or 'npgrad[cuda13]', for the CUDA version of the machine)"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError without a driver
        raise DeviceError(
            f"CuPy is installed but found no CUDA GPU ({exc}); use --device cpu"
        ) from None
    if count < 1:
        raise DeviceError("CuPy is installed but found no CUDA GPU; use --device cpu")
    return cupy, cupy.ndarray


def device_of(x: Any) -> str:
    """``"cpu"`` or ``"cuda"``: where the array ``x`` lives."""
    return _names.get(id(namespace(x)), CPU)


def to_host(x: Any) -> Any:
    """``x`` as a NumPy array (itself when it is one): what checkpoints and exports hold."""
    xp = namespace(x)
    return x if xp is np else xp.asnumpy(x)


def to_device(x: Any, device: str) -> Any:
    """``x`` on ``device`` (itself when it is there already); a copy otherwise."""
    xp = module(device)
    if namespace(x) is xp:
        return x
    return xp.asarray(to_host(x))


def tree_to_device(v: Any, device: str) -> Any:
    """``v`` with every array in it (through tuples, lists, dicts and dataclasses, such as
    max pooling's routing) on ``device``; everything else as it is."""
    if is_ndarray(v):
        return to_device(v, device)
    if isinstance(v, (tuple, list)):
        return type(v)(tree_to_device(u, device) for u in v)
    if isinstance(v, dict):
        return {k: tree_to_device(u, device) for k, u in v.items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        fields = {f.name: tree_to_device(getattr(v, f.name), device) for f in dataclasses.fields(v)}
        return dataclasses.replace(v, **{k: u for k, u in fields.items() if _init(v, k)})
    return v


def _init(v: Any, name: str) -> bool:
    return next(f.init for f in dataclasses.fields(v) if f.name == name)


def same_device(*arrays: Any) -> Any:
    """The namespace of ``arrays``, refusing a mix of devices with a clear error."""
    spaces = {id(namespace(a)): namespace(a) for a in arrays if type(a) in _by_type}
    if len(spaces) > 1:
        names = sorted(_names.get(k, "?") for k in spaces)
        raise DeviceError(
            f"arrays on different devices ({' and '.join(names)}): move them with .to()"
        )
    return next(iter(spaces.values()), np)


def generator(rng: Any, xp: Any) -> Any:
    """A random generator on ``xp``'s device: ``rng`` itself when it is one there.

    A NumPy Generator used for device arrays seeds a device generator from its next
    draw, once per call: the host stream advances, so the draws stay a function of
    the host seed, and no host array is ever made and copied.
    """
    if xp is np:
        return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if isinstance(rng, xp.random.Generator):
        return rng
    seed = int(rng.integers(2**63)) if isinstance(rng, np.random.Generator) else rng
    return xp.random.default_rng(seed)
