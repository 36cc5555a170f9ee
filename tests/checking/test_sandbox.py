"""A child process with a time limit: what it wrote survives, how it ended is named, and
nothing it started outlives it; what it sends back is data, never code."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from npgrad.checking.sandbox import Opaque, decode, encode, run_child

ROOT = Path(__file__).resolve().parents[2]
HERE = "tests.checking.test_sandbox"


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


def _daemonise(pidfile):
    """Fork twice and leave the session, as a daemon does; the daemon writes its PID and sleeps."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            Path(pidfile + ".tmp").write_text(str(os.getpid()))
            os.replace(pidfile + ".tmp", pidfile)
            time.sleep(60)
        os._exit(0)
    deadline = time.monotonic() + 10
    while not os.path.exists(pidfile) and time.monotonic() < deadline:
        time.sleep(0.005)


def daemonises(job, emit):
    _daemonise(job["pidfile"])
    if job.get("then") == "hang":
        while True:
            time.sleep(0.01)
    parent = os.getppid()
    if job.get("then", "").startswith("kill the parent") and parent != job["tester"]:
        if job["then"] == "kill the parent, forging its report":  # "all reaped, exit 0"
            status = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")[5].decode()
            Path(status).write_text(f"{os.getpid()}\n0\n")
        os.kill(parent, signal.SIGKILL)  # the supervisor; never the test itself
        time.sleep(60)


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


def _gone(pid):
    deadline = time.monotonic() + 2
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreapers are Linux's")
@pytest.mark.parametrize(
    "then", ["return", "hang", "kill the parent", "kill the parent, forging its report"]
)
def test_a_daemon_the_child_started_is_killed_however_the_child_ends(tmp_path, then):
    pidfile = str(tmp_path / "daemon.pid")
    job = {"pidfile": pidfile, "then": then, "tester": os.getpid()}
    run = run_child(f"{HERE}:daemonises", job, timeout=60 if then != "hang" else 1.5)
    assert run.finished == (then == "return") and run.timed_out == (then == "hang")
    if then.startswith("kill the parent"):
        assert run.how_it_ended() == "killed the npgrad process watching it, and was stopped"
    pid = int(Path(pidfile).read_text())
    assert _gone(pid), f"the daemon {pid} outlived the check"


@pytest.mark.parametrize(
    "value",
    [
        np.arange(6.0).reshape(2, 3),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.array(2.5),
        np.zeros((0, 3), dtype=np.int32),
        np.array([True, False]),
        np.float32(1.5),
        np.int64(3),
        (1, [2.0, None], {"mode": "train", "stride": (2, 2)}),
        [np.ones(2), "text", False, float("inf")],
    ],
    ids=repr,
)
def test_values_cross_as_data_and_come_back_equal(value):
    back = decode(json.loads(json.dumps(encode(value))))
    assert type(back) is type(value) and repr(back) == repr(value)
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and np.array_equal(back, value) and back.flags.writeable


def test_what_cannot_cross_as_data_arrives_as_its_type_name_only():
    class Secret:
        pass

    assert decode(encode([Secret(), np.array(["a"]), {1: 2}])) == [
        Opaque("Secret"),
        Opaque("ndarray"),
        Opaque("dict"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"$": "array", "dtype": "|O", "shape": [1], "data": "AAAAAAAAAAA="},
        {"$": "array", "dtype": "<f8", "shape": [2], "data": "AAAAAAAAAAA="},
        {"$": "array", "dtype": "<f8", "shape": [1], "data": "not base64!"},
        {"$": "pickle", "data": "gASVAAAAAAAAAAB9lC4="},
        {"$": "scalar", "dtype": "<U3", "value": "abc"},
        {"$": "tuple"},
        {"x": 1},
    ],
)
def test_decode_refuses_anything_encode_cannot_have_written(data):
    with pytest.raises(ValueError, match="not an encoded value"):
        decode(data)
