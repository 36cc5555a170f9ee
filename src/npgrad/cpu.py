"""Worker threads for convolution and pooling: both cores for a CNN's training step.

NumPy runs every copy, element-wise pass and reduction on one core, and a
matrix product on BLAS's threads. A convolution is both, a slice of the batch
at a time: unfolding patches (a copy, one core) and a product (BLAS). Inside
:func:`image_threads`, npgrad instead gives each core its own part of the
batch (:func:`parallel`): a worker thread unfolds and multiplies its slice
while the calling thread does the other, and max pooling splits the same way.

For as long as the block runs, OpenBLAS multiplies on one thread. It has one
thread count for the whole process (``openblas_set_num_threads_local`` too, in
NumPy's OpenBLAS 0.3.31), and its idle threads spin for 2**28 cycles (about
0.1 s) after each product they shared, on the core a worker needs: left at two
threads, the dense layers of a CNN made the split convolutions slower than
unsplit ones. So the block sets OpenBLAS to one thread on entry and restores it
on exit; the count is found in the loaded library (listed in ``/proc/self/maps``,
so on Linux), and where it cannot be (no OpenBLAS, another system), the block
does nothing and every job runs whole. Only the threads inside a block split
their jobs, but the BLAS count is the process's: a dense network trained in
another thread meanwhile multiplies on one thread too.

Measured on the 2-core CI machine (in one process, rounds alternating with and
without the block): the training step of ``benchmarks/bench_cnn.py``'s
lenet-like network 1.06-1.35x faster, the small one 1.1-1.2x (convolution
backward 1.3x, max pooling 1.3-1.5x). Waking a worker costs 50-200
microseconds on that virtual machine, as much as a pass over several MiB that
is already in cache, so a job splits only when each slice moves at least
:data:`MIN_PART_BYTES`; batch norm and ReLU, a few such passes each, measured
no faster split and stay whole. The dense network kinds never enter the block:
their products are small and BLAS's own threads serve them best.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

# A slice is worth a thread when it moves at least this much memory (see above).
MIN_PART_BYTES = 2 << 20

# --------------------------------------------------------------------------- BLAS threads


# (get, set) of OpenBLAS's thread count, by the names its builds give them
_BLAS_THREAD_FUNCTIONS = [
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),  # NumPy >= 2
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),  # NumPy 1.x wheels
    ("openblas_get_num_threads", "openblas_set_num_threads"),  # a system OpenBLAS
]


def openblas_libraries() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries loaded in this process (Linux), NumPy's own first."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            # the path is the sixth field and may itself contain spaces
            paths = {
                line.split(None, 5)[5].strip()
                for line in f
                if "openblas" in line.lower() and len(line.split(None, 5)) == 6
            }
    except OSError:
        return []
    libs = []
    # SciPy or another package may have loaded a second copy
    for path in sorted(paths, key=lambda p: ("numpy" not in p, p)):
        if ".so" not in os.path.basename(path):
            continue
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


class _Blas:
    """The thread count of the OpenBLAS that NumPy loaded, when there is one."""

    def __init__(self) -> None:
        self._fns: tuple[Any, Any] | None = None
        self._looked = False

    @staticmethod
    def _find() -> tuple[Any, Any] | None:
        for lib in openblas_libraries():
            for get_name, set_name in _BLAS_THREAD_FUNCTIONS:
                get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
                if get is not None and set_ is not None:
                    get.argtypes, get.restype = [], ctypes.c_int
                    set_.argtypes, set_.restype = [ctypes.c_int], None
                    return get, set_
        return None

    def functions(self) -> tuple[Any, Any] | None:
        if not self._looked:
            self._fns, self._looked = self._find(), True
        return self._fns


_BLAS = _Blas()


# --------------------------------------------------------------------------- worker threads


def _default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    value = os.environ.get("NPGRAD_NUM_THREADS")
    if value is not None:
        if not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(
                f"NPGRAD_NUM_THREADS must be a positive integer, got {value!r}; "
                "unset it to use every processor"
            )
        return int(value)
    # a thread limit given to BLAS or OpenMP is a limit on the process: npgrad keeps to it
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), cpus)
    return cpus


class _Workers:
    """The thread count and the pool of ``threads - 1`` workers (the caller is the last)."""

    def __init__(self) -> None:
        self._threads = 0  # read from the environment on first use
        self._pool: ThreadPoolExecutor | None = None
        self.lock = threading.Lock()
        self.local = threading.local()  # .inside: running a slice; .blocks: image_threads depth

    def _init_worker(self) -> None:
        self.local.inside = True

    @property
    def threads(self) -> int:
        if not self._threads:
            self._threads = _default_threads()
        return self._threads

    def submit(self, jobs: list[tuple[Callable[..., T], int, int]]) -> list[Future[T]]:
        """Hand ``jobs`` to the pool, under the lock that :meth:`resize` takes too."""
        with self.lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max(1, self.threads - 1),
                    thread_name_prefix="npgrad",
                    initializer=self._init_worker,
                )
            return [self._pool.submit(fn, lo, hi) for fn, lo, hi in jobs]

    def resize(self, n: int) -> None:
        if getattr(self.local, "inside", False):
            raise ConfigError("set_num_threads cannot be called from inside a parallel slice")
        with self.lock:
            old, self._pool, self._threads = self._pool, None, n
        if old is not None:
            old.shutdown(wait=False)  # jobs already handed to it still run; it ends after them

    def after_fork(self) -> None:
        # a forked child has none of its parent's threads, and maybe a lock held by one
        self._pool, self.lock, self.local = None, threading.Lock(), threading.local()


_WORKERS = _Workers()


def num_threads() -> int:
    """How many threads npgrad's large image ops use (the usable processors by default)."""
    return _WORKERS.threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the large image ops (1: everything on the calling thread).

    The default is ``$NPGRAD_NUM_THREADS``, else the number of processors this
    process may use, at most ``$OPENBLAS_NUM_THREADS`` / ``$OMP_NUM_THREADS``
    when those are set.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of threads must be a positive integer, got {n!r}")
    _WORKERS.resize(n)


def _bounds(n: int, parts: int) -> list[tuple[int, int]]:
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


class _Scope:
    """How many blocks are open in the process, and the BLAS count to restore after the last."""

    def __init__(self) -> None:
        self.depth = 0
        self.active = False
        self.restore: Any = None
        self.lock = threading.Lock()

    def after_fork(self) -> None:
        # the child's threads are gone, and with them the blocks they had open
        if self.active:
            set_, previous = self.restore
            set_(previous)
        self.__init__()  # type: ignore[misc]


_SCOPE = _Scope()


def _after_fork_in_child() -> None:
    _WORKERS.after_fork()
    _SCOPE.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def image_threads() -> Iterator[bool]:
    """Split the large image ops of this thread between npgrad's threads; yields whether it will.

    For as long as a block is open anywhere in the process, OpenBLAS multiplies
    on one thread (its count is the process's): the workers then have the cores
    to themselves, with no BLAS threads spinning beside them, and each slice's
    products run on its own worker. It does nothing (yields False) with one
    thread, or where NumPy's OpenBLAS cannot be found. Blocks nest, and the
    count is restored when the last one in the process closes.
    """
    local = _WORKERS.local
    with _SCOPE.lock:
        if _SCOPE.depth == 0:
            fns = _BLAS.functions() if _WORKERS.threads > 1 else None
            if fns is not None:
                get, set_ = fns
                _SCOPE.restore = (set_, get())
                set_(1)
            _SCOPE.active = fns is not None
        _SCOPE.depth += 1
        active = _SCOPE.active
    local.blocks = getattr(local, "blocks", 0) + 1
    try:
        yield active
    finally:
        local.blocks -= 1
        with _SCOPE.lock:
            _SCOPE.depth -= 1
            if _SCOPE.depth == 0 and _SCOPE.active:
                set_, previous = _SCOPE.restore
                set_(previous)
                _SCOPE.active = False


def parallel(work: Callable[[int, int], T], n: int, nbytes: int) -> list[T]:
    """``work(lo, hi)`` over a split of ``range(n)``, the slices in parallel; their results in order.

    Only in a thread inside :func:`image_threads`; elsewhere, and for small
    jobs, one call ``work(0, n)`` on the calling thread. ``nbytes`` is about how
    much memory the whole job moves: it decides how many slices are worth a
    thread. Slices must write disjoint memory. A call from inside a slice runs
    whole, on its thread. An exception in a slice is raised here, after every
    slice has ended.
    """
    local = _WORKERS.local
    if not (_SCOPE.active and getattr(local, "blocks", 0)) or getattr(local, "inside", False):
        return [work(0, n)]
    parts = min(_WORKERS.threads, n, max(1, nbytes // MIN_PART_BYTES))
    if parts <= 1:
        return [work(0, n)]
    bounds = _bounds(n, parts)
    futures = _WORKERS.submit([(work, lo, hi) for lo, hi in bounds[1:]])
    local.inside = True
    try:
        first = work(*bounds[0])
    finally:
        local.inside = False
        # every slice ends before we return, also after a failure: they write our arrays
        wait(futures)
    return [first, *(f.result() for f in futures)]
