"""Run a user's code in a child process with a time limit, and learn how it ended.

``npgrad check`` imports a student's file and calls its methods. Whatever that
code does (loop forever, ``os._exit``, crash the interpreter, exhaust memory,
start processes), the checker itself must survive and say what happened, so the
code runs in a fresh interpreter: :func:`run_child` starts it, calls
``target(job, emit)`` there, and kills it, with everything it started, when it
ends or at the time limit.

Everything means every descendant, also one that daemonised (forked twice and
called ``setsid()``, leaving the child's process group and session). On Linux a
small supervisor process stands between this one and the child and makes itself
a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): an orphaned descendant
is reparented to it instead of to init, so it can find every one (``/proc``),
kill them and reap them before it reports how the child ended. Should the
user's code kill the supervisor itself, this process kills the child's process
group and every process still carrying the run's token in its environment (one
that also left the group and cleared its environment would escape).
Elsewhere (macOS: no subreapers) only the child's process group is killed: a
process that left it survives.

``emit(record)`` appends one JSON record to a file the parent reads afterwards,
flushed at once, so the records written before a crash survive it: the last
``{"event": "phase", ...}`` record says what was happening when it stopped. The
records are data, never code: :func:`encode` writes arrays as bytes with a dtype
and a shape and :func:`decode` reads them back without unpickling anything, so
whatever the child writes cannot run code in this process.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 60.0  # seconds: generous for a student's layers, short for a hang
STOP_GRACE = 10.0  # seconds the supervisor has to kill and reap everything once told to stop
TOKEN_VARIABLE = "NPGRAD_SANDBOX_TOKEN"  # in the child's environment: marks what it started

_CHILD = "from npgrad.checking.sandbox import _child_main; _child_main()"

# The supervisor: standard library only, run with -I -S so that it starts in milliseconds.
# argv: STATUS_FILE COMMAND...; it writes the child's pid to STATUS_FILE at once, and
# "pid\nexit code" (or "pid\nstopped" when told to stop by SIGTERM) when all is reaped.
_SUPERVISOR = r"""
import os, signal, sys, time

class Stop(Exception):
    pass

def stop(signum, frame):
    raise Stop

def descendants(me):
    children = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open("/proc/" + entry + "/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [me]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found

def kill_all(child):
    me, deadline = os.getpid(), time.monotonic() + 5
    while True:
        try:
            os.killpg(child, signal.SIGKILL)
        except OSError:
            pass
        for pid in descendants(me):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)

def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)

def main():
    path, command = sys.argv[1], sys.argv[2:]
    signal.signal(signal.SIGTERM, stop)
    try:
        import ctypes
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (ImportError, OSError, AttributeError):
        pass  # not Linux: the child's process group is all there is to kill
    child, status = None, "stopped"
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        child = os.posix_spawn(command[0], command, os.environ, setpgroup=0, setsigmask=())
        write(path, "%d\n" % child)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        status = str(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if child is not None:
            kill_all(child)
    write(path, "%d\n%s\n" % (child or 0, status))

main()
"""


@dataclass
class ChildRun:
    """What the child wrote, and how it ended."""

    events: list[dict[str, Any]]
    returncode: int | None  # None: killed at the time limit
    timeout: float
    lost: bool = False  # the supervisor died without a word: the child's code killed it

    @property
    def finished(self) -> bool:
        """The target returned normally (whatever the process did afterwards)."""
        return any(e.get("event") == "done" for e in self.events)

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def last(self, event: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == event), None)

    def how_it_ended(self, limit: float | None = None) -> str:
        """A phrase for a child that did not finish: 'timed out after 60 s', ...

        ``limit`` is the time limit to name, when the child had only part of it.
        """
        rc = self.returncode
        if rc is None:
            return f"timed out after {self.timeout if limit is None else limit:g} s"
        if self.lost:
            return "killed the npgrad process watching it, and was stopped"
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            if name == "SIGKILL":
                return "was killed (SIGKILL: out of memory?)"
            return f"crashed the Python interpreter ({name})"
        return f"ended the process (exit status {rc}: os._exit?)"


def run_child(target: str, job: dict[str, Any], timeout: float, quiet: bool = False) -> ChildRun:
    """Call ``target`` ("package.module:function") as ``function(job, emit)`` in a child.

    ``job`` must be JSON. The child's standard output and error are this
    process's (discarded when ``quiet``: a student's megabytes of prints must not drown a
    class's grading); its standard input is empty. ``job["memory_mb"]``, when given,
    limits the child's address space (a file that allocates without end fails alone). When the child ends, at ``timeout``
    seconds, or when this process is interrupted, the child and every process it
    started are killed (see the module's docstring for how, and where that has
    limits).
    """
    with tempfile.TemporaryDirectory(prefix="npgrad-child-") as tmp:
        events_path = Path(tmp) / "events.jsonl"
        status_path = Path(tmp) / "status"
        env = dict(os.environ)
        # The child must import this very npgrad, wherever it was imported from.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        token = secrets.token_hex(16)
        env[TOKEN_VARIABLE] = token
        child = [sys.executable, "-c", _CHILD, target, json.dumps(job), str(events_path)]
        supervised = hasattr(os, "posix_spawn") and hasattr(os, "killpg")
        command = child
        if supervised:
            command = [sys.executable, "-I", "-S", "-c", _SUPERVISOR, str(status_path), *child]
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
        stopped = False
        try:
            proc.wait(timeout=max(timeout, 0.001))
        except subprocess.TimeoutExpired:
            stopped = True
        finally:  # also on Ctrl-C: nothing of the user's keeps running
            status = _stop(proc, status_path, token) if supervised else _kill_plain(proc)
        lost = False
        if stopped:
            returncode = None
        elif supervised:
            returncode, lost = _returncode(status, proc.returncode)
        else:  # pragma: no cover - Windows: the child itself was waited for
            returncode = proc.returncode
        return ChildRun(_read_events(events_path), returncode, timeout, lost)


def _stop(proc: subprocess.Popen, status_path: Path, token: str) -> list[str]:
    """Have the supervisor kill and reap everything, and return what it reported.

    A supervisor that does not report (killed by the user's code, or stuck) leaves the
    cleaning to this process: the child's process group, and every process marked with
    this run's token.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        status = status_path.read_text(encoding="ascii")[:100].split()
    except (OSError, UnicodeDecodeError):
        status = []
    if proc.returncode != 0 or len(status) < 2:  # the supervisor did not finish its work
        status = status[:1]
        # The child's pid, as the supervisor wrote it, where the child can write too.
        claimed = int(status[0]) if status and status[0].isdigit() else 0
        mark = f"{TOKEN_VARIABLE}={token}".encode()
        groups = [proc.pid] + ([claimed] if _ours(claimed, mark) else [])
        _kill_leftovers(groups, mark)
    return status


def _ours(pid: int, mark: bytes) -> bool:
    """Whether ``pid`` may be the child: not this process or its group, not init, and where
    ``/proc`` tells, alive with this run's mark in its environment."""
    if pid <= 1 or pid in (os.getpid(), os.getpgrp()):
        return False
    try:
        return mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists()  # no /proc (macOS): take its word


def _returncode(status: list[str], supervisor: int | None) -> tuple[int | None, bool]:
    """The child's exit code as the supervisor saw it (None: stopped at the limit), and
    whether the supervisor was lost instead (killed by the user's code: its own code)."""
    if len(status) >= 2:
        if status[1] == "stopped":
            return None, False
        try:
            return int(status[1]), False
        except ValueError:  # not the supervisor's writing
            pass
    return supervisor, True


def _kill_leftovers(groups: list[int], mark: bytes) -> None:
    """SIGKILL the processes of ``groups`` and every process whose environment holds ``mark``
    (this run's token), until none is left (a moment at most: they may fork while being
    killed). Without ``/proc`` (macOS), the groups only."""
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        left = _leftovers(groups, mark)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _leftovers(groups: list[int], mark: bytes) -> list[int]:
    """The live processes (not zombies) in ``groups`` or with ``mark`` in their environment."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - no /proc
        return []
    found = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            if fields[0] in (b"Z", b"X"):
                continue
            if int(fields[2]) in groups or mark in Path(
                f"/proc/{entry}/environ"
            ).read_bytes().split(b"\0"):
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _kill_plain(proc: subprocess.Popen) -> list[str]:  # pragma: no cover - Windows
    proc.kill()
    proc.wait()
    return []


def _read_events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    events = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a record cut short by the end of the process
            continue
        if isinstance(record, dict):
            events.append(record)
    return events


# --------------------------------------------------------------------------- values as data

_MAX_ELEMENTS = 1 << 24  # an array larger than anything checked is sent as its type only
_MAX_DEPTH = 32


class Opaque:
    """Stands for a value :func:`encode` could not carry (a user's object): its type's name only."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name} object>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.type_name == self.type_name

    def __hash__(self) -> int:
        return hash(self.type_name)


def encode(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON that :func:`decode` turns back into an equal value.

    Arrays and NumPy scalars of booleans and numbers keep their dtype and shape;
    tuples stay tuples; dicts with string keys, lists, strings, numbers and None
    are themselves. Anything else (a user's object, an array of strings) becomes
    an :class:`Opaque` with its type's name.
    """
    import numpy as np

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        if value.dtype.kind in "biuf":
            return {"$": "scalar", "dtype": value.dtype.str, "value": value.item()}
    elif isinstance(value, int):
        return int(value)
    elif isinstance(value, float):
        return float(value)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf" and value.size <= _MAX_ELEMENTS:
            data = base64.b64encode(value.tobytes()).decode("ascii")  # in C order
            return {
                "$": "array",
                "dtype": value.dtype.str,
                "shape": list(value.shape),
                "data": data,
            }
    elif _depth < _MAX_DEPTH:
        if isinstance(value, tuple):
            return {"$": "tuple", "items": [encode(v, _depth + 1) for v in value]}
        if isinstance(value, list):
            return [encode(v, _depth + 1) for v in value]
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {"$": "dict", "items": {k: encode(v, _depth + 1) for k, v in value.items()}}
    return {"$": "opaque", "type": type(value).__name__}


def decode(data: Any) -> Any:
    """The value :func:`encode` wrote; raises ValueError for anything it cannot have written."""
    import numpy as np

    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(d) for d in data]
    if not isinstance(data, dict):
        raise ValueError(f"not an encoded value: {type(data).__name__}")
    tag = data.get("$")
    try:
        if tag == "array":
            dtype = _numeric_dtype(data["dtype"])
            shape = tuple(int(n) for n in data["shape"])
            raw = base64.b64decode(data["data"], validate=True)
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if tag == "scalar":
            return _numeric_dtype(data["dtype"]).type(data["value"])
        if tag == "tuple":
            return tuple(decode(d) for d in data["items"])
        if tag == "dict":
            return {str(k): decode(v) for k, v in data["items"].items()}
        if tag == "opaque":
            return Opaque(str(data["type"]))
    except (KeyError, TypeError, AttributeError, OverflowError, ValueError) as exc:
        message = str(exc)
        if not message.startswith("not an encoded value"):
            message = f"not an encoded value: {message}"
        raise ValueError(message) from None
    raise ValueError(f"not an encoded value: tag {tag!r}")


def _numeric_dtype(text: Any) -> Any:
    import numpy as np

    dtype = np.dtype(str(text))
    if dtype.kind not in "biuf":
        raise ValueError(f"not an encoded value: dtype {dtype}")
    return dtype


# --------------------------------------------------------------------------- in the child


def _child_main() -> None:
    """In the child: run the target, then leave at once (no atexit handler, no lingering thread)."""
    target, job, events_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    # What the user's code makes NumPy say is not the checker's output.
    warnings.simplefilter("ignore")
    try:  # a crash must not leave a core file in the user's folder
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if job.get("memory_mb"):
            limit = int(job["memory_mb"]) << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # pragma: no cover - not POSIX
        pass
    module_name, _, function = target.partition(":")
    fn = getattr(importlib.import_module(module_name), function)
    with open(events_path, "a", encoding="utf-8") as f:

        def emit(record: dict[str, Any]) -> None:
            f.write(json.dumps(record) + "\n")
            f.flush()

        fn(job, emit)
        emit({"event": "done"})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
