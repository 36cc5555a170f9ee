"""A child process with a time limit: what it wrote survives, how it ended is named."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npgrad.sandbox import run_child

ROOT = Path(__file__).resolve().parents[1]
HERE = "tests.test_sandbox"


@pytest.fixture(autouse=True)
def tests_importable_in_the_child(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


# targets: they run in the child


def finishes(job, emit):
    emit({"event": "echo", "job": job})
    print("the child's own output")


def exits(job, emit):
    emit({"event": "phase", "phase": "about to exit"})
    os._exit(job["status"])


def dies_of(job, emit):
    emit({"event": "phase", "phase": "about to die"})
    os.kill(os.getpid(), getattr(signal, job["signal"]))


def hangs_with_a_grandchild(job, emit):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    emit({"event": "grandchild", "pid": sleeper.pid})
    while True:
        time.sleep(0.01)


# tests


def test_a_finished_child_hands_back_its_records_in_order(capfd):
    run = run_child(f"{HERE}:finishes", {"x": [1, 2]}, timeout=60)
    assert run.finished and run.returncode == 0 and not run.timed_out
    assert [e["event"] for e in run.events] == ["echo", "done"]
    assert run.events[0]["job"] == {"x": [1, 2]}
    assert "the child's own output" in capfd.readouterr().out


def test_an_exit_keeps_the_records_written_before_it():
    run = run_child(f"{HERE}:exits", {"status": 7}, timeout=60)
    assert not run.finished and run.returncode == 7
    assert run.last("phase") == {"event": "phase", "phase": "about to exit"}
    assert run.how_it_ended() == "ended the process (exit status 7: os._exit?)"
    assert not run_child(f"{HERE}:exits", {"status": 0}, timeout=60).finished


@pytest.mark.parametrize(
    "name, phrase",
    [
        ("SIGABRT", "crashed the Python interpreter (SIGABRT)"),
        ("SIGKILL", "was killed (SIGKILL: out of memory?)"),
    ],
)
def test_a_signal_is_named(name, phrase):
    run = run_child(f"{HERE}:dies_of", {"signal": name}, timeout=60)
    assert not run.finished and run.how_it_ended() == phrase
    assert run.last("phase")["phase"] == "about to die"


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_at_the_time_limit_the_child_and_what_it_started_are_killed():
    run = run_child(f"{HERE}:hangs_with_a_grandchild", {}, timeout=1.5)
    assert run.timed_out and not run.finished
    assert run.how_it_ended() == "timed out after 1.5 s"
    assert run.how_it_ended(limit=60) == "timed out after 60 s"
    pid = run.last("grandchild")["pid"]
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
