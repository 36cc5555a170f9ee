r"""Data-parallel training on MPI (mpi4py): the communicator, the gradient allreduce, shards.

K processes (*ranks*), started by ``mpiexec -n K`` (or ``srun`` on a cluster, or
``npgrad train --workers K``), each hold the same network. Every global batch of B
samples is cut into K contiguous shards; rank r computes the gradient of its shard's
*summed* loss; one ``Allreduce`` adds the K gradients up; every rank scales the sum
by 1/B and applies the same optimizer step to the same parameters. Why that is the
one-process step: the mean loss over the batch is a sum over the shards,

$$L = \frac{1}{B}\sum_{i=1}^{B} \ell_i = \frac{1}{B}\sum_{r=1}^{K} \sum_{i \in S_r} \ell_i
   = \frac{1}{B}\sum_{r=1}^{K} L_r,$$

and the differential is linear, $dL = \frac{1}{B}\sum_r dL_r = \frac{1}{B}\sum_r
\mathrm{tr}(G_r^T dW)$, so $\partial L/\partial W = \frac{1}{B}\sum_r G_r$ with $G_r =
\partial L_r/\partial W$: the sum of the shards' gradients, scaled once. Only the order
of the floating-point additions differs from one process (docs/distributed.md).

mpi4py is imported only when a communicator is made: ``import npgrad`` never loads it.
Install it with ``pip install "npgrad[mpi]"`` (mpi4py and the MPICH wheel, which brings
``mpiexec``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from . import tracing
from .autodiff import Tensor
from .errors import ConfigError, RankLost
from .mpienv import launched_by_mpi

INSTALL = 'pip install "npgrad[mpi]" (mpi4py and an MPI with its mpiexec)'
# what a run cut short by a lost rank still has, and what to do
RESUME = "the checkpoint keeps the last saved epoch: run the same command with --resume to continue"


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ConfigError(f"data-parallel training needs mpi4py ({exc}): {INSTALL}") from None
    return MPI


class Communicator:
    """The ranks of one run: ``rank``, ``size`` and the few collectives training needs.

    Wraps an mpi4py communicator (``MPI.COMM_WORLD`` by default). Every collective is
    called by every rank in the same order, or the run hangs: the trainer keeps to one
    fixed sequence per step.
    """

    def __init__(self, comm: Any = None) -> None:
        self.MPI = _mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()

    @property
    def root(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics and progress."""
        return self.rank == 0

    def _collective(self, call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        # Where MPI returns its errors (mpi4py's default), a collective that fails because a
        # peer died is RankLost, to be said in a line. Where it treats them as fatal (a
        # caller's choice, or MPICH deep in a direct copy) it ends the process itself, and
        # `npgrad train --workers` reads its error stack (cli/workers.py).
        try:
            return call(*args, **kw)
        except self.MPI.Exception as exc:
            what = self.MPI.Get_error_string(exc.Get_error_class())  # its class, not its stack
            raise RankLost(
                f"rank {self.rank}: another rank stopped in the middle of a step (MPI: {what}); "
                + RESUME
            ) from None

    def sum_(self, buf: np.ndarray) -> np.ndarray:
        """Add ``buf`` up over all ranks, in place (every rank gets the sum)."""
        self._collective(self.comm.Allreduce, self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def broadcast_(self, buf: np.ndarray) -> np.ndarray:
        """Rank 0's ``buf`` into every rank's, in place."""
        self._collective(self.comm.Bcast, buf, root=0)
        return buf

    def broadcast_object(self, value: Any) -> Any:
        return self._collective(self.comm.bcast, value, root=0)

    def gather_object(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in a list at rank 0 (None elsewhere)."""
        return self._collective(self.comm.gather, value, root=0)

    def abort(self, code: int = 1) -> None:
        """End every rank now (after an error on this one, so that none waits forever)."""
        self.comm.Abort(code)


def world() -> Communicator | None:
    """The communicator of the ranks this process belongs to, or None when it runs alone."""
    if not launched_by_mpi():
        return None
    comm = Communicator()
    return comm if comm.size > 1 else None


def shard(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` samples: sizes differ by at most one."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class GradientBuffer:
    """One flat buffer per dtype holding every parameter's gradient, for one Allreduce each."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        self.flat: dict[np.dtype, np.ndarray] = {}
        self.where: list[tuple[np.dtype, slice]] = []
        sizes: dict[np.dtype, int] = {}
        for p in self.params:
            dt = p.data.dtype
            start = sizes.get(dt, 0)
            self.where.append((dt, slice(start, start + p.data.size)))
            sizes[dt] = start + p.data.size
        self.flat = {dt: np.zeros(n, dtype=dt) for dt, n in sizes.items()}

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.flat.values())


@tracing.replayable
def allreduce_gradients(params: GradientBuffer, comm: Communicator, scale: float = 1.0) -> None:
    """Sum every parameter's ``.grad`` over the ranks and multiply by ``scale``, in place.

    The gradients are copied into one flat buffer per dtype (a parameter without a
    gradient contributes zeros), reduced with one ``Allreduce`` each, scaled, and each
    ``.grad`` becomes its part of the buffer. A compiled step replays this call.
    """
    for p, (dt, part) in zip(params.params, params.where):
        if p.grad is None:
            params.flat[dt][part] = 0
        else:
            params.flat[dt][part] = p.grad.reshape(-1)
    for buf in params.flat.values():
        comm.sum_(buf)
        if scale != 1.0:
            buf *= buf.dtype.type(scale)
    for p, (dt, part) in zip(params.params, params.where):
        p.grad = params.flat[dt][part].reshape(p.data.shape)


def broadcast_buffers(arrays: Iterable[np.ndarray], comm: Communicator) -> None:
    """Rank 0's values of ``arrays`` (batch norm's running statistics) into every rank's."""
    for a in arrays:
        comm.broadcast_(a)


class DistributedLoader:
    """Each rank's shard of every global batch of ``loader`` (which every rank draws alike).

    All ranks draw the same permutation and augmentation from the same seed, so the
    union of the shards is exactly the batch one process would train on.
    """

    def __init__(self, loader: Any, comm: Communicator) -> None:
        self.loader, self.comm = loader, comm

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(this rank's images, its labels, the global batch size)."""
        for x, y in self.loader:
            part = shard(len(y), self.comm.rank, self.comm.size)
            yield x[part], y[part], len(y)
