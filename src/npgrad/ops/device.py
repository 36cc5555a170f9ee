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
_names: dict[Any, str] = {np: CPU}  # namespace -> device name


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
    _names[xp] = device


def unregister(device: str) -> None:
    """Forget ``device``'s namespace (tests use it to put their stand-in away)."""
    xp = _modules.pop(device, None)
    if xp is not None and device != CPU:
        _names.pop(xp, None)
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
    return _names.get(namespace(x), CPU)


def to_host(x: Any) -> Any:
    """``x`` as a NumPy array (itself when it is one): what checkpoints and exports hold."""
    xp = namespace(x)
    return x if xp is np else xp.asnumpy(x)


def host_copy(x: Any) -> Any:
    """A NumPy copy of ``x``, wherever it lives (state dicts: never the live array)."""
    return x.copy() if namespace(x) is np else to_host(x)


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
        moved = {
            f.name: tree_to_device(getattr(v, f.name), device)
            for f in dataclasses.fields(v)
            if f.init
        }
        return dataclasses.replace(v, **moved)
    return v


def same_device(*arrays: Any) -> Any:
    """The namespace of ``arrays``, refusing a mix of devices with a clear error."""
    spaces = {_by_type[type(a)] for a in arrays if type(a) in _by_type}
    if len(spaces) > 1:
        names = sorted(_names.get(xp, "?") for xp in spaces)
        raise DeviceError(
            f"arrays on different devices ({' and '.join(names)}): move them with .to()"
        )
    return next(iter(spaces), np)


def uniform(rng: Any, shape: tuple[int, ...], xp: Any) -> Any:
    """float32 draws in [0, 1) of ``shape`` on ``xp``'s device, from ``rng``.

    On the host: ``rng``'s own ``random`` (a NumPy Generator, or an int seed of a new
    one). On a device, an int seed gives the host's draws copied there (so the values are
    a function of the seed on every device: what the op checks compare), and a NumPy
    Generator gives one seed from its stream to a counter-based generator computed on the
    device itself (:func:`splitmix_uniform`): no generator state to create per call (a
    cuRAND generator's costs a kernel and megabytes), nothing drawn on the host but the
    seed, and a run that is a function of the host stream, so it resumes bit for bit.
    """
    if isinstance(rng, np.random.Generator):
        if xp is np:
            return rng.random(shape, dtype=np.float32)
        return splitmix_uniform(xp, int(rng.integers(2**63)), shape)
    draws = np.random.default_rng(rng).random(shape, dtype=np.float32)
    return draws if xp is np else xp.asarray(draws)


_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def splitmix_uniform(xp: Any, seed: int, shape: tuple[int, ...]) -> Any:
    """SplitMix64 of ``seed + (i + 1) * golden`` for each element ``i``: its top 24 bits as
    float32 in [0, 1). The same bits from NumPy and CuPy (unsigned 64-bit arithmetic wraps
    in both), each element independent of the others, so a device computes them at once.
    """
    n = 1
    for d in shape:
        n *= int(d)
    u64 = np.uint64
    z = xp.arange(1, n + 1, dtype=u64)
    z *= u64(_GOLDEN)
    z += u64(seed % 2**64)
    z ^= z >> u64(30)
    z *= u64(_MIX1)
    z ^= z >> u64(27)
    z *= u64(_MIX2)
    z ^= z >> u64(31)
    z >>= u64(40)
    out = z.astype(np.float32)
    out *= np.float32(2.0**-24)
    return out.reshape(shape)
