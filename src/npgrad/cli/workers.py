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
import threading
from pathlib import Path
from typing import IO

from ..distributed import INSTALL
from ..errors import ConfigError
from .common import INTERRUPTED

RANK_FILE = "NPGRAD_RANK_DIR"  # where each rank writes its PID, for naming a dead one
# mpiexec's own lines about forwarding Ctrl-C: the ranks say what they do with it
_CHATTER = re.compile(r"^\[mpiexec@[^\]]*\] (Sending Ctrl-C|Press Ctrl-C again)")
_BANNER = re.compile(r"^=+$|^=\s|BAD TERMINATION|CLEANING UP|YOU CAN IGNORE|CLEANUP MESSAGES")
# what MPICH prints after the banner
_AFTER = re.compile(r"TERMINATED WITH THE EXIT STRING|typically refers to a problem|FAQ page")
# MPICH's report when MPI fails inside a rank (a peer that died mid-copy: the survivor may
# see it before mpiexec does, and then no banner comes), and the error stack under it
_FATAL = re.compile(r"^Abort\(\d+\) on node \d+ \(rank (\d+) in comm \d+\): Fatal error in "
                    r"(?:internal_|P?MPI_)?([A-Za-z]+?)(?:_c)?[:\s]")  # fmt: skip
_STACK = re.compile(r"^\s*\w+\(\d+\)\.*:\s*(.*)$")
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
        # mpiexec in a session of its own: when a rank dies it cleans up its process group,
        # which must not be this one. Ctrl-C and SIGTERM are passed on to it (it forwards them
        # to the ranks, which stop at the same step and save).
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )

        forwarded: list[int] = []  # the signals this process was sent and passed on

        def forward(signum: int, _frame: object) -> None:
            forwarded.append(signum)
            proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        banner: list[str] = []  # the launcher's report of a dead rank, on either stream
        fatal: list[str] = []  # MPICH's report of MPI failing inside a rank, and its stack
        try:
            relays = [
                threading.Thread(target=_relay, args=(stream, to, banner, fatal), daemon=True)
                for stream, to in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))
            ]
            for t in relays:
                t.start()
            code = proc.wait()
            for t in relays:
                t.join()
            for stream in (proc.stdout, proc.stderr):  # read to the end by now
                if stream is not None:
                    stream.close()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if banner:
            sys.stderr.write(_dead_rank_line(" ".join(banner), Path(pids), k) + "\n")
            return 2
        if fatal:
            sys.stderr.write(_lost_peer_line(fatal, k) + "\n")
            return 2
        if code < 0:
            sys.stderr.write(f"npgrad: error: mpiexec ended by signal {-code}\n")
            return 2
        if code > 128 and code != INTERRUPTED and not forwarded:
            # a rank ended by a signal, and neither mpiexec nor MPI said a word about it
            sys.stderr.write(_stopped_line("a rank", f" (killed by signal {code - 128})", k) + "\n")
            return 2
    return code


def _relay(stream: IO[str], to: IO[str], banner: list[str], fatal: list[str]) -> None:
    """The ranks' lines, as they come, without mpiexec's banners, MPI's error stacks, chatter."""
    in_stack = False
    for line in stream:
        text = line.strip()
        if _BANNER.search(text) or (banner and (text.startswith("=") or _AFTER.search(text))):
            banner.append(line)
            continue
        in_stack = bool(_FATAL.search(text) or (in_stack and _STACK.search(line)))
        if in_stack:
            fatal.append(line)
            continue
        if _CHATTER.search(line):
            continue
        to.write(line)
        to.flush()


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
    return _stopped_line(who, how, k)


def _lost_peer_line(fatal: list[str], k: int) -> str:
    """From MPICH's error stack: which rank saw MPI fail, in which call, and the deepest
    cause (``process_vm_readv failed (errno 3)``: the peer's process is gone)."""
    head = next(m for m in map(_FATAL.search, fatal) if m)
    rank = int(head.group(1))
    causes = [m.group(1).strip() for m in map(_STACK.search, fatal) if m and m.group(1).strip()]
    cause = f": {causes[-1]}" if causes else ""
    who = f"rank {1 - rank}" if k == 2 and rank in (0, 1) else "another rank"
    how = f" or lost its connection (MPI_{head.group(2)} on rank {rank} failed{cause})"
    return _stopped_line(who, how, k)


def _stopped_line(who: str, how: str, k: int) -> str:
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
