"""One line naming the machine a benchmark ran on, for the head of its table.

Ratios against PyTorch depend on the host more than timings suggest: PyTorch's
oneDNN kernels use AVX-512 where the processor has it, while NumPy's OpenBLAS
runs the kernels it detects, or the ones ``OPENBLAS_CORETYPE`` names (an
environment may pin older ones). So the line says which OpenBLAS kernels ran.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
from pathlib import Path

import numpy as np

from npgrad import fpenv

# the names NumPy's and other OpenBLAS builds give openblas_get_corename
_CORENAME = ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename")


def openblas_libraries() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries loaded in this process (Linux), NumPy's own first."""
    try:
        maps = Path("/proc/self/maps").read_text(errors="replace").splitlines()
    except OSError:
        return []
    # the path is the sixth field and may itself contain spaces
    fields = (line.split(None, 5) for line in maps if "openblas" in line.lower())
    paths = {f[5].strip() for f in fields if len(f) == 6}
    libs = []
    # SciPy or another package may have loaded a second copy
    for path in sorted(paths, key=lambda p: ("numpy" not in p, p)):
        if ".so" in os.path.basename(path):
            try:
                libs.append(ctypes.CDLL(path))
            except OSError:
                continue
    return libs


def openblas_kernels() -> str:
    """The kernel set of the OpenBLAS NumPy loaded ("Haswell", "SkylakeX", ...), or ''."""
    for lib in openblas_libraries():
        for name in _CORENAME:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode(errors="replace")
    return ""


def describe() -> str:
    import torch

    model, flags = "", set()
    try:  # the first processor's model name and flags (Linux)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    cpu = model or platform.processor() or platform.machine()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    kernels = openblas_kernels()
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    blas = f"; OpenBLAS {kernels} kernels" if kernels else ""
    if kernels and pinned:
        blas += f" (OPENBLAS_CORETYPE={pinned} in the environment)"
    return (
        f"{cpu}{f' ({vector})' if vector else ''}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}, NumPy {np.__version__}{blas}, "
        f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def add_denormals_option(ap: argparse.ArgumentParser) -> None:
    """``--keep-denormals``: every contestant computes with subnormal floats (``args.flush``
    False); without it, they are flushed to zero, as ``npgrad train`` runs (npgrad.fpenv)."""
    ap.add_argument(
        "--keep-denormals",
        dest="flush",
        action="store_false",
        help="run every contestant with subnormal floats kept (default: flushed to zero in the "
        "calling thread, as npgrad train runs)",
    )


def denormals_line(flush: bool) -> str:
    """What a result file says of that mode."""
    if not fpenv.available():
        return "Subnormal floats as this platform computes them (no flush-to-zero control)."
    how = "flushed to zero" if flush else "kept"
    return (
        f"Subnormal floats {how} in the calling thread for every contestant (npgrad's "
        "worker threads follow it; PyTorch's and OpenBLAS's keep their own mode)."
    )
