"""The benchmarks' ``--threads``, given to BLAS before NumPy loads (it reads the count once).

Imports nothing heavy, so that a benchmark can call it before its own ``import numpy``.
"""

from __future__ import annotations

import os


def threads_from_argv(argv: list[str], default: str = "2") -> str:
    """The value of ``--threads N`` / ``--threads=N`` in ``argv``, before argparse runs."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return default


def set_blas_threads(argv: list[str]) -> None:
    """``OPENBLAS_NUM_THREADS`` from ``--threads`` (default 2), unless the environment sets it."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", threads_from_argv(argv))
