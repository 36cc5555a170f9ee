"""Threads for the passes that NumPy runs on one core: one setting for the whole process.

NumPy's matrix products run on every core the BLAS is given, but its element-wise
passes and copies (a ReLU, a batch norm's scaling, the unfolding of a convolution's
patches, a pooling window's maximum) run on one. In a small CNN those passes are
most of a training step. NumPy releases the GIL inside them, so two Python threads
that each run the same pass on half of the batch do run at once: the op table cuts
its large passes along the first axis with :func:`rows` (or :func:`ufunc`, for one
element-wise function).

Only element-wise passes and copies are cut, never a sum: each element is computed
by the same instructions whichever thread computes it, so the results are the same
bits with any number of threads (a sum cut in two would add in another order).

The number of threads is process-wide: :func:`set_threads` (``npgrad.set_threads``),
or the environment variable ``NPGRAD_THREADS`` read at import. The default is 1 (no
threads), by measurement: OpenBLAS's own threads keep spinning for a while after each
matrix product, waiting for the next one, so on a machine whose cores the BLAS already
uses, a thread of ours competes with a spinning BLAS thread for the same core. On the
2-core AMD host of ``benchmarks/results-compile.md`` the small CNN's step ran 3-10%
*slower* with 2 threads, and 10-15% faster only once the BLAS threads were told to
sleep at once (``OPENBLAS_THREAD_TIMEOUT=4``), which made the products slower by as
much. Turn them on where there are cores the BLAS does not use (a BLAS limited to
fewer threads than the machine has cores) and measure. A pass smaller than
:data:`MIN_BYTES` per thread is never cut: handing it to a thread would cost more than
it saves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import fpenv
from ..errors import ConfigError
from .device import namespace

MIN_BYTES = 1 << 18
"""The least output a thread is given (256 KiB): below it, handing work to a thread costs
more than the thread saves (measured on 2 cores: a relu of 64 KiB runs 10 us, a hand-off
about 15 us)."""

BLOCK_BYTES = 1 << 18
"""The output of one block of a several-pass part (256 KiB; see :func:`rows`): small
enough that a block's inputs, temporaries and output stay in a core's L2 cache between
passes, large enough that NumPy's per-call cost stays small beside the work."""


def default_threads() -> int:
    """``NPGRAD_THREADS`` when it is a positive whole number, else 1 (see the module's text)."""
    try:
        n = int(os.environ.get("NPGRAD_THREADS", ""))
    except ValueError:
        return 1
    return n if n > 0 else 1


_threads = default_threads()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_inside = threading.local()  # set in a part: a part that cuts again runs serially


def get_threads() -> int:
    """How many threads the op table's large element-wise passes are cut into."""
    return _threads


def set_threads(n: int | None) -> int:
    """Use ``n`` threads for the element-wise passes (1: none; None: the default); returns
    the previous count. The results are the same bits with any count."""
    global _threads, _pool
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"threads must be a whole number of at least 1, got {n!r}")
    previous, _threads = _threads, int(n)
    with _pool_lock:
        if _pool is not None and _pool._max_workers < _threads - 1:
            _pool.shutdown(wait=True)
            _pool = None
    return previous


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, _threads - 1), thread_name_prefix="npgrad")
        return _pool


def _part(fn: Callable[[int, int], None], lo: int, hi: int, flushed: bool | None = None) -> None:
    # A worker computes in its caller's subnormal mode (npgrad.fpenv: the mode is each
    # thread's own), or the same pass would give other bits with other thread counts.
    if flushed is not None and getattr(_inside, "flushed", None) is not flushed:
        fpenv.flush_denormals(flushed)
        _inside.flushed = flushed
    _inside.on = True
    try:
        fn(lo, hi)
    finally:
        _inside.on = False


def rows(fn: Callable[[int, int], None], n: int, nbytes: int, passes: int = 1) -> None:
    """Call ``fn(lo, hi)`` on consecutive parts of ``range(n)`` that cover it, at once.

    ``nbytes`` is the size of what the whole pass writes; it decides how many parts
    (at most one per thread, none smaller than :data:`MIN_BYTES`). ``fn`` must write
    disjoint results for disjoint parts. The calling thread runs the first part.

    ``passes``: how many times ``fn`` goes over its rows (a multiply, then an add to what
    it wrote, say). With more than one, each thread runs its part a block of rows at a
    time (about :data:`BLOCK_BYTES` of output each), so that the later passes read what
    the earlier ones wrote from the cache instead of memory: on a batch of activations
    (megabytes) each pass otherwise streams the whole array through memory again. ``fn``
    accepts any cut already, so the blocks change no result.
    """
    if passes > 1 and nbytes > BLOCK_BYTES and n > 1:
        fn = _in_blocks(fn, max(1, n * BLOCK_BYTES // nbytes))
    k = min(_threads, n, nbytes // MIN_BYTES)
    if k <= 1 or getattr(_inside, "on", False):
        fn(0, n)
        return
    bounds = [n * i // k for i in range(k + 1)]
    pool = _get_pool()
    flushed = fpenv.denormals_flushed() if fpenv.available() else None
    futures = [pool.submit(_part, fn, bounds[i], bounds[i + 1], flushed) for i in range(1, k)]
    try:
        _part(fn, bounds[0], bounds[1])
    finally:
        for f in futures:  # every part ends before the caller reads (or sees an error)
            f.exception()
    for f in futures:
        f.result()


def sweep(fn: Callable[[int, int], None], out: Any, passes: int = 1) -> None:
    """``fn(lo, hi)`` over the rows (first axis) of ``out``, what it writes: :func:`rows` on a
    NumPy array; at once on a device's array, whose kernels each run over all of it (threads
    of the host or blocks of rows would only launch more of them)."""
    if type(out) is not np.ndarray:
        fn(0, out.shape[0])
    else:
        rows(fn, out.shape[0], out.nbytes, passes)


def _in_blocks(fn: Callable[[int, int], None], step: int) -> Callable[[int, int], None]:
    def blocks(lo: int, hi: int) -> None:
        for s in range(lo, hi, step):
            fn(s, min(s + step, hi))

    return blocks


def _cuts(a: Any, n: int, ndim: int) -> bool:
    return isinstance(a, np.ndarray) and a.ndim == ndim and n > 1 and a.shape[0] == n


def ufunc(f: np.ufunc, *args: Any, out: np.ndarray) -> np.ndarray:
    """``f(*args, out=out)``, cut along ``out``'s first axis; an argument without that axis
    (broadcast against it) is given whole to every part. Returns ``out``."""
    if out.ndim == 0:
        f(*args, out=out)
        return out
    n = out.shape[0]

    def part(lo: int, hi: int) -> None:
        f(*(a[lo:hi] if _cuts(a, n, out.ndim) else a for a in args), out=out[lo:hi])

    sweep(part, out)
    return out


def copy(a: np.ndarray) -> np.ndarray:
    """``np.ascontiguousarray(a)``, the copy cut along the first axis."""
    if type(a) is not np.ndarray or a.ndim == 0 or a.flags.c_contiguous:
        return namespace(a).ascontiguousarray(a)
    out = np.empty(a.shape, dtype=a.dtype)

    def part(lo: int, hi: int) -> None:
        out[lo:hi] = a[lo:hi]

    rows(part, a.shape[0], out.nbytes)
    return out
