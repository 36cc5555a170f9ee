"""``npgrad train --workers K``: start the K ranks under ``mpiexec`` and watch them.

The same command line runs in every rank (without ``--workers``); each BLAS gets the
cores divided by K, so that the ranks do not oversubscribe the machine. When a rank
dies (killed, out of memory), MPI ends the others; this process then says which rank
it was, in one line, instead of the launcher's banner, and that the checkpoint keeps
the last saved epoch.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ..distributed import INSTALL
from ..errors import ConfigError

RANK_FILE = "NPGRAD_RANK_DIR"  # where each rank writes its PID, for naming a dead one
_BANNER = re.compile(r"^=+$|^=\s|BAD TERMINATION|CLEANING UP|YOU CAN IGNORE|CLEANUP MESSAGES")
_PID = re.compile(r"PID (\d+)")
_EXIT = re.compile(r"EXIT (?:CODE|STATUS):\s*(\d+)")


def _without_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def command(k: int, argv: list[str]) -> list[str]:
    """The mpiexec command line that runs ``npgrad`` with ``argv`` in ``k`` ranks."""
    mpiexec = shutil.which(
        "mpiexec", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    )
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        raise ConfigError(f"--workers needs mpi4py and mpiexec: {INSTALL}")
    return [mpiexec, "-n", str(k), sys.executable, "-m", "npgrad", *_without_workers(argv)]


def launch(k: int, argv: list[str]) -> int:
    """Run the ranks to the end; their exit status, with a dead rank named in one line."""
    cmd = command(k, argv)
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // k))
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    with tempfile.TemporaryDirectory(prefix="npgrad-ranks-") as pids:
        env[RANK_FILE] = pids
        # Ctrl-C reaches the ranks from the terminal; this process only waits for them.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc = subprocess.Popen(
                cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace"
            )
            assert proc.stderr is not None
            banner: list[str] = []
            for line in proc.stderr:
                if _BANNER.search(line.strip()) or (banner and line.strip().startswith("=")):
                    banner.append(line)
                    continue
                sys.stderr.write(line)
                sys.stderr.flush()
            code = proc.wait()
            if banner:
                sys.stderr.write(_dead_rank_line(" ".join(banner), Path(pids), k) + "\n")
            elif code and code < 0:
                sys.stderr.write(f"npgrad: error: mpiexec ended by signal {-code}\n")
        finally:
            signal.signal(signal.SIGINT, previous)
    return 2 if banner else code


def _dead_rank_line(banner: str, pids: Path, k: int) -> str:
    ranks = {}
    for f in pids.glob("rank-*"):
        try:
            ranks[f.read_text().strip()] = f.name.split("-", 1)[1]
        except OSError:
            continue
    pid = _PID.search(banner)
    code = _EXIT.search(banner)
    who = f"rank {ranks[pid.group(1)]}" if pid and pid.group(1) in ranks else "a rank"
    how = ""
    if code:
        n = int(code.group(1))
        how = f" (killed by signal {n})" if 0 < n < 64 else f" (exit status {n})"
    return (
        f"npgrad: error: {who} of {k} stopped{how}, and MPI ended the others; the checkpoint "
        "keeps the last saved epoch: run the same command with --resume to continue"
    )


def note_pid(rank: int) -> None:
    """Called by each rank started by :func:`launch`: its PID, for naming it if it dies."""
    folder = os.environ.get(RANK_FILE)
    if folder and Path(folder).is_dir():
        with open(Path(folder) / f"rank-{rank}", "w") as f:
            f.write(str(os.getpid()))
