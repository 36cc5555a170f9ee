"""Flush subnormal floats to zero: the processor's FTZ and DAZ modes, from Python alone.

Numbers below float32's smallest normal value (about 1.2e-38) are *subnormal*. Adam's
moment estimates for pixels that are almost never lit decay into that range, and on some
processors every operation on a subnormal costs 5-20 times a normal one (measured on two
Intel Xeon hosts: an Adam update of 78,400 floats took 86 us with normal values and 1,700 us
at 1e-40 on one, 240 us and 3,150 us on the other, with AVX-512 and AMX). Flush-to-zero
(FTZ: a subnormal result becomes 0) and denormals-are-zero (DAZ: a subnormal input counts
as 0) remove that cost. What it changes numerically: values below
1.2e-38 (float32) or 2.2e-308 (float64) become 0, so a moment estimate of 1e-40 is 0, and
a result that would have been that small is 0 too. Training results differ only where such
values occur; TensorFlow flushes by default, PyTorch offers ``torch.set_flush_denormal``.

npgrad's trainer flushes by default (a run's ``keep_denormals`` option, ``npgrad train
--keep-denormals``, computes with them; it is stored with the run and kept on resume): on the second of those hosts the 784-100-10
MLP's compiled step at batch 32 ran 3.0-3.5x faster flushed, its Adam state otherwise holding
about 20,000 subnormals after a few thousand steps. They never leave: a first moment that
stops receiving gradient decays by ``m *= 0.9`` until it reaches the smallest subnormals,
1-4 units of 2**-149, which that product rounds back to themselves. On the AMD EPYC hosts
the penalty was small (517 vs 452 us). The library itself never changes the mode on
import: a program that uses npgrad's ops outside the trainer decides, with
:func:`flushed_denormals` (or :func:`flushing`, which does nothing where there are no modes).

The modes belong to the calling thread (the x86-64 MXCSR register, the AArch64 FPCR):
NumPy's element-wise passes, which run in it, are flushed; threads started before the
call (OpenBLAS's workers) keep theirs, except npgrad's own (``npgrad.set_threads``), which
take their caller's mode for each pass. Supported on Linux and other glibc/musl systems on
x86-64 and AArch64 (through ``fegetenv``/``fesetenv``); elsewhere :func:`available` is
False and :func:`flush_denormals` raises :class:`~npgrad.errors.ConfigError`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from .errors import ConfigError

# Where the mode bits live in glibc's fenv_t, and which bits they are.
_X86_MXCSR_OFFSET = 28  # fenv_t on x86-64: the x87 environment (28 bytes), then MXCSR
_X86_FTZ_DAZ = 0x8000 | 0x0040  # MXCSR bit 15 (flush to zero), bit 6 (denormals are zero)
_ARM_FPCR_OFFSET = 0  # fenv_t on AArch64: FPCR, then FPSR
_ARM_FZ = 1 << 24  # FPCR.FZ: flush to zero, inputs and results alike


@functools.cache
def _layout() -> tuple[ctypes.CDLL, int, int] | None:
    """libm, the offset of the mode word in fenv_t and its bits; None where unknown."""
    if not sys.platform.startswith("linux"):
        return None  # macOS and Windows lay fenv_t out otherwise
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        where = (_X86_MXCSR_OFFSET, _X86_FTZ_DAZ)
    elif machine in ("aarch64", "arm64"):
        where = (_ARM_FPCR_OFFSET, _ARM_FZ)
    else:
        return None
    try:  # fegetenv and fesetenv are libm's (glibc; musl has them in its one libc)
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        libm.fegetenv.argtypes = libm.fesetenv.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libm, *where


def available() -> bool:
    """Whether this platform's flush-to-zero mode can be set from here."""
    return _layout() is not None


def _env() -> tuple[ctypes.CDLL, ctypes.Array[ctypes.c_char], int, int]:
    layout = _layout()
    if layout is None:
        raise ConfigError(
            f"flushing subnormals is not supported on {sys.platform} {platform.machine()} "
            "(Linux on x86-64 or AArch64 only)"
        )
    libc, offset, bits = layout
    env = ctypes.create_string_buffer(64)  # fenv_t is 32 bytes on x86-64, 8 on AArch64
    if libc.fegetenv(env) != 0:
        raise ConfigError("fegetenv failed: the floating-point environment cannot be read")
    return libc, env, offset, bits


def _bits() -> int:
    """The calling thread's mode bits (of FTZ and DAZ, or FZ), as they are."""
    _, env, offset, bits = _env()
    return int.from_bytes(env.raw[offset : offset + 4], "little") & bits


def _set_bits(value: int) -> None:
    libc, env, offset, bits = _env()
    word = int.from_bytes(env.raw[offset : offset + 4], "little") & ~bits | value & bits
    ctypes.memmove(ctypes.addressof(env) + offset, word.to_bytes(4, "little"), 4)
    if libc.fesetenv(env) != 0:
        raise ConfigError("fesetenv failed: the floating-point environment cannot be set")


def denormals_flushed() -> bool:
    """Whether the calling thread flushes subnormals to zero now."""
    return available() and _bits() == _env()[3]


def flush_denormals(enabled: bool = True) -> bool:
    """Turn flushing of subnormals on (or off) in the calling thread; return the old state."""
    before = denormals_flushed()
    _set_bits(_env()[3] if enabled else 0)
    return before


@contextmanager
def flushed_denormals(enabled: bool = True) -> Iterator[None]:
    """Within the block, subnormals are flushed (or not, ``enabled=False``); after it, the
    thread's mode bits are as they were (one of FTZ and DAZ alone, too)."""
    before = _bits()
    flush_denormals(enabled)
    try:
        yield
    finally:
        _set_bits(before)


def flushing(enabled: bool = True) -> AbstractContextManager[None]:
    """:func:`flushed_denormals` where this platform has the modes; elsewhere nothing (the
    trainer's and the benchmarks' way: a default that cannot be honoured is no error)."""
    return flushed_denormals(enabled) if available() else nullcontext()
