"""Keep freed memory in the process, so large temporaries do not cost page faults.

A training step allocates and frees the same large arrays (activations,
patch matrices, gradients of a few MiB each) over and over. With glibc's
default settings, blocks that large are often handed back to the operating
system when freed and faulted in again, page by page, when allocated next:
measured on the small CNN of ``benchmarks/bench_cnn.py``, that doubles the
time of a step (about 57 ms instead of 29 ms at batch 128).

:func:`keep_freed_memory` raises glibc's thresholds so that such blocks are
reused instead. It changes the whole process (which is why nothing calls it on
import): applications such as the trainer and the benchmarks call it once at
start-up. Elsewhere than on glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Serve blocks below ``mmap_threshold`` from the heap and keep up to ``trim_threshold``
    of freed heap memory; True when glibc accepted both settings.

    32 MiB is the largest mmap threshold every glibc accepts; the arrays of an
    MNIST-sized CNN at batch 128 are all below it.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
