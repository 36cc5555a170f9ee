"""``npgrad train --workers K``: start the K ranks under ``mpiexec`` and watch them.

The same command line runs in every rank (without ``--workers``); each BLAS gets the
cores divided by K, so that the ranks do not oversubscribe the machine. The ranks' own
lines pass through as they come. What mpiexec (MPICH's Hydra) and MPI print about an
ending (Hydra's banner for a rank that died, MPI's error stack in a survivor that found
its peer gone first, Hydra's diagnostics, the MPI_Abort line after a rank's own error) is
kept back and said in one line: which rank stopped and how, and that the checkpoint keeps
the last saved epoch. A Ctrl-C or SIGTERM is passed on: the ranks stop at one step, save
and say so, and the exit status is 130.
"""

from __future__ import annotations

import dataclasses
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

from ..distributed import INSTALL, RESUME
from ..errors import ConfigError
from .common import INTERRUPTED, readable

RANK_FILE = "NPGRAD_RANK_DIR"  # where each rank writes its PID, for naming a dead one
FINISHED = "finished"  # written there by rank 0 once the run has trained its last epoch
SAID = "said"  # written there by a rank that ends the run with an error: its line
FINISHED_TAIL = "training had finished, and the checkpoint holds every epoch"

# What mpiexec (MPICH's Hydra) and MPI print, which the user never sees as such: each kind
# is read, and what it means is said in one line of npgrad's.
# Hydra's banner when a rank ends badly, and the lines after it:
_BANNER = re.compile(r"^=+$|^=\s|BAD TERMINATION|CLEANING UP|YOU CAN IGNORE|CLEANUP MESSAGES")
_AFTER = re.compile(r"TERMINATED WITH THE EXIT STRING|typically refers to a problem|FAQ page")
_PID = re.compile(r"PID (\d+)")
_EXIT = re.compile(r"EXIT (?:CODE|STATUS):\s*(\d+)")
_SIGNAL = re.compile(r"(?:\(signal |KILLED BY SIGNAL:\s*)(\d+)")
# MPI failing inside a rank (a peer that died mid-copy: the survivor may see it before
# mpiexec does, and then no banner comes), and the frames of the error stack under it:
_FATAL = re.compile(r"^Abort\(\d+\) on node \d+ \(rank (\d+) in comm \d+\): Fatal error in (\S+?):")
_STACK = re.compile(r"^\s*(?:\w+|\(unknown\))\(\d*\)\.*:\s*(.*)$")
# causes in a stack that mean the peer's process or connection is gone
_GONE = re.compile(r"errno 3\b|no such process|connection reset|broken pipe|connection closed|"
                   r"proc(?:ess)? fail", re.IGNORECASE)  # fmt: skip
# a rank's MPI_Abort after it said why; Hydra's own diagnostics and Ctrl-C messages
_ABORTED = re.compile(r"^Abort\(\d+\) on node \d+ .*application called MPI_Abort")
_HYDRA = re.compile(r"^\[(?:mpiexec|proxy:[^@\]]*)@[^\]]*\]\s*(?:\S+ \([^)]*\):\s*)?(.*)$")
_CHATTER = re.compile(r"^Ctrl-C caught\.\.\. cleaning up processes$")


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
        heard = _Heard()
        try:
            relays = [
                threading.Thread(target=_relay, args=(stream, to, heard), daemon=True)
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
        if not heard.said and (Path(pids) / SAID).exists():
            # the rank's line, which mpiexec can lose when MPI_Abort ends it at once after
            sys.stderr.write(readable((Path(pids) / SAID).read_text()) + "\n")
            heard.said = True
        line = _verdict(code, heard, bool(forwarded), Path(pids), k)
        finished = (Path(pids) / FINISHED).exists()
    if line is None:
        return code
    if line:
        sys.stderr.write(f"{line}; {FINISHED_TAIL if finished else RESUME}\n")
    return INTERRUPTED if forwarded else 2


@dataclasses.dataclass
class _Heard:
    """What the relays kept back from the user, to be said in one line."""

    banner: list[str] = dataclasses.field(default_factory=list)  # Hydra's: a rank ended badly
    fatal: list[str] = dataclasses.field(default_factory=list)  # MPI's error stack in a rank
    hydra: list[str] = dataclasses.field(default_factory=list)  # Hydra's own diagnostics
    said: bool = False  # a rank has written an "npgrad: ..." line of its own


def _relay(stream: IO[str], to: IO[str], heard: _Heard) -> None:
    """The ranks' lines, as they come, without what mpiexec and MPI print (kept in ``heard``)."""
    in_stack = False
    for line in stream:
        text = line.strip()
        banner = heard.banner
        if _BANNER.search(text) or (banner and (text.startswith("=") or _AFTER.search(text))):
            banner.append(line)
            continue
        in_stack = bool(_FATAL.search(text) or (in_stack and _STACK.search(line)))
        if in_stack:
            heard.fatal.append(line)
            continue
        if _HYDRA.search(text):
            heard.hydra.append(text)
            continue
        if _ABORTED.search(text) or _CHATTER.search(text):
            continue
        heard.said = heard.said or text.startswith("npgrad: ")
        to.write(line)
        to.flush()


def _verdict(code: int, heard: _Heard, forwarded: bool, pids: Path, k: int) -> str | None:
    """What the one line says of how the ranks ended ("" when they said it themselves), or
    None when ``code`` stands as it is; :func:`launch` adds what the checkpoint holds."""
    if forwarded and code != 0:
        # the user's Ctrl-C or SIGTERM: the ranks stopped at one step and saved, and said so;
        # or a second Ctrl-C made mpiexec end them at once
        return "" if heard.said else "npgrad: interrupted"
    if heard.banner:
        return _dead_rank_line(" ".join(heard.banner), pids, k)
    if heard.fatal:
        return _mpi_failed_line(heard.fatal, k)
    if code < 0:
        return f"npgrad: error: mpiexec ended by signal {-code}, and the ranks with it"
    if code != 0 and heard.hydra and not heard.said:
        reason = next((m.group(1) for m in map(_HYDRA.search, heard.hydra) if m), "")
        return f"npgrad: error: mpiexec failed ({reason})"
    if code > 128 and code != INTERRUPTED:
        # a rank ended by a signal, and neither mpiexec nor MPI said which
        return _stopped_line("a rank", f" (mpiexec's exit status {code})", k)
    return None


def _dead_rank_line(banner: str, pids: Path, k: int) -> str:
    ranks = {}
    for f in pids.glob("rank-*"):
        try:
            ranks[f.read_text().strip()] = f.name.split("-", 1)[1]
        except OSError:
            continue
    pid = _PID.search(banner)
    who = f"rank {ranks[pid.group(1)]}" if pid and pid.group(1) in ranks else "a rank"
    how = ""
    if sig := _SIGNAL.search(banner):  # "EXIT CODE" alone does not tell a signal from a status
        how = f" (killed by signal {sig.group(1)})"
    elif code := _EXIT.search(banner):
        how = f" (exit status {code.group(1)})"
    return _stopped_line(who, how, k)


def _mpi_failed_line(fatal: list[str], k: int) -> str:
    """From MPI's error stack: which rank saw MPI fail, in which call, and the deepest cause
    (``process_vm_readv failed (errno 3)``: the peer's process is gone)."""
    head = next(m for m in map(_FATAL.search, fatal) if m)
    rank = int(head.group(1))
    call = "MPI_" + re.sub(r"^(?:internal_|P?MPI_)|_c$", "", head.group(2))
    causes = [m.group(1).strip() for m in map(_STACK.search, fatal) if m and m.group(1).strip()]
    cause = causes[-1] if causes else "no cause given"
    if not any(_GONE.search(line) for line in fatal):
        return f"npgrad: error: MPI failed on rank {rank} of {k} in {call} ({cause})"
    who = f"rank {1 - rank}" if k == 2 and rank in (0, 1) else "another rank"
    return _stopped_line(who, f" or lost its connection ({call} on rank {rank}: {cause})", k)


def _stopped_line(who: str, how: str, k: int) -> str:
    return f"npgrad: error: {who} of {k} stopped{how}, and MPI ended the others"


def _rank_dir() -> Path | None:
    """The launcher's folder for notes from the ranks, when :func:`launch` started them."""
    folder = os.environ.get(RANK_FILE)
    return Path(folder) if folder and Path(folder).is_dir() else None


def note_pid(rank: int) -> None:
    """Called by each rank started by :func:`launch`: its PID, for naming it if it dies."""
    if folder := _rank_dir():
        (folder / f"rank-{rank}").write_text(str(os.getpid()))


def note_finished() -> None:
    """Called by rank 0 once the run has trained and saved its last epoch: a rank that dies
    after that is not said to have cost any training."""
    if folder := _rank_dir():
        (folder / FINISHED).touch()


def note_said(line: str) -> None:
    """Called by a rank that ends every rank after an error: its line, for the launcher to
    say should mpiexec lose it."""
    if folder := _rank_dir():
        (folder / SAID).write_text(line)
