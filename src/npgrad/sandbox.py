"""Run a user's code in a child process with a time limit, and learn how it ended.

``npgrad check`` imports a student's file and calls its methods. Whatever that
code does (loop forever, ``os._exit``, crash the interpreter, exhaust memory),
the checker itself must survive and say what happened, so the code runs in a
fresh interpreter: :func:`run_child` starts it, calls ``target(job, emit)``
there, and kills it (with anything it started) at the time limit.

``emit(record)`` appends one JSON record to a file the parent reads afterwards,
flushed at once, so the records written before a crash survive it: the last
``{"event": "phase", ...}`` record says what was happening when it stopped.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Emit = Callable[[dict[str, Any]], None]
DEFAULT_TIMEOUT = 60.0  # seconds: generous for a student's layers, short for a hang

_CHILD = "from npgrad.sandbox import _child_main; _child_main()"


@dataclass
class ChildRun:
    """What the child wrote, and how it ended."""

    events: list[dict[str, Any]]
    returncode: int | None  # None: killed at the time limit
    timeout: float

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
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            if name == "SIGKILL":
                return "was killed (SIGKILL: out of memory?)"
            return f"crashed the Python interpreter ({name})"
        return f"ended the process (exit status {rc}: os._exit?)"


def run_child(target: str, job: dict[str, Any], timeout: float) -> ChildRun:
    """Call ``target`` ("package.module:function") as ``function(job, emit)`` in a child.

    ``job`` must be JSON. The child's standard output and error are this
    process's; its standard input is empty. At ``timeout`` seconds the child
    and every process it started are killed.
    """
    with tempfile.TemporaryDirectory(prefix="npgrad-child-") as tmp:
        events_path = Path(tmp) / "events.jsonl"
        env = dict(os.environ)
        # The child must import this very npgrad, wherever it was imported from.
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-c", _CHILD, target, json.dumps(job), str(events_path)]
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            returncode: int | None = proc.wait(timeout=max(timeout, 0.001))
        except subprocess.TimeoutExpired:
            returncode = None
        finally:  # also on Ctrl-C: nothing of the user's keeps running
            _kill_group(proc)
        return ChildRun(_read_events(events_path), returncode, timeout)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows has no process groups to kill
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
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


def _child_main() -> None:
    """In the child: run the target, then leave at once (no atexit handler, no lingering thread)."""
    target, job, events_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    # What the user's code makes NumPy say is not the checker's output.
    warnings.simplefilter("ignore")
    try:  # a crash must not leave a core file in the user's folder
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
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
