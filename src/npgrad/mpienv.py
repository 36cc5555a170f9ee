"""What an MPI launcher tells a process through its environment, read before NumPy loads.

Imports nothing but ``os``: :mod:`npgrad` calls :func:`share_cores` first thing, so
that each of K ranks on a machine starts its BLAS with the machine's cores divided by
K instead of all of them (K ranks with every core each would oversubscribe the machine
K times over, and OpenBLAS's spinning threads then slow everyone down many times).
"""

from __future__ import annotations

import os

# Environment variables that the usual launchers set in every rank they start.
_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
_LOCAL_SIZE = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")
_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _first_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return None


def launched_by_mpi() -> bool:
    """Whether this process is one of several ranks started by an MPI launcher."""
    size = _first_int(_SIZE[:3])  # SLURM_NTASKS alone is a batch job, not yet a rank
    return size is not None and size > 1


def share_cores() -> None:
    """Under an MPI launcher, BLAS threads = cores / ranks on this node, unless set already."""
    if not launched_by_mpi():
        return
    local = _first_int(_LOCAL_SIZE) or _first_int(_SIZE) or 1
    threads = str(max(1, (os.cpu_count() or 1) // max(local, 1)))
    for name in _THREADS:
        os.environ.setdefault(name, threads)
