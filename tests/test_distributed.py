"""Data-parallel training with real mpiexec (the MPICH wheel of the test extra): the same
run as one process, rank 0 alone writes, exact resume, a killed rank ends the run cleanly."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from npgrad import distributed
from npgrad.app import checkpoint as ckpt
from npgrad.errors import RankLost

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
NPGRAD = [sys.executable, "-m", "npgrad"]


def mpiexec(k, *args, timeout=300, **kw):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [MPIEXEC, "-n", str(k), *args], capture_output=True, text=True, timeout=timeout, env=env,
        **kw,
    )  # fmt: skip


def train(out, *options, k=None, timeout=300):
    cmd = [*NPGRAD, "train", "-o", str(out), "-q", "--json", *options]
    if k is None:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    else:
        r = mpiexec(k, *cmd, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(a, b, rel=1e-5, images=3):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x["train_loss"] - y["train_loss"]) <= rel * x["train_loss"], (x, y)
        assert abs(x["test_loss"] - y["test_loss"]) <= rel * x["test_loss"], (x, y)
        n = 360 if x["test_accuracy"] * 360 % 1 < 1e-6 else 10000  # digits: 360 test images
        assert abs(x["test_accuracy"] - y["test_accuracy"]) * n <= images, (x, y)


@pytest.fixture(scope="module", autouse=True)
def has_mpi():
    if not Path(MPIEXEC).exists():
        if os.environ.get("CI"):
            pytest.fail('mpiexec missing: the test extra brings it (pip install -e ".[test]")')
        pytest.skip("mpiexec not installed")


DIGITS = ["-d", "digits", "-e", "4", "--dropout", "0"]


def test_two_and_four_ranks_train_what_one_process_trains(tmp_path):
    one = train(tmp_path / "one", *DIGITS)
    two = train(tmp_path / "two", *DIGITS, k=2)
    four = train(tmp_path / "four", *DIGITS, k=4)  # oversubscribed: 4 ranks on 2 cores
    assert_same_losses(one, two)
    assert_same_losses(one, four)
    assert two[-1]["test_accuracy"] > 0.8
    # rank 0 alone wrote: the run folder holds what a one-process run's holds
    listing = [sorted(p.name for p in (tmp_path / run).iterdir()) for run in ("one", "two")]
    assert listing[0] == listing[1]


def test_cnn_with_sync_bn_on_two_and_four_ranks_equals_one_process(tmp_path):
    """Batch norm over the whole batch (--sync-bn): the one-process run exactly, up to the
    order of additions. In float64, where that order cannot grow into anything visible; in
    float32 the same runs agree to 1e-8 after one epoch on digits and then drift apart as any
    two float32 runs of this network that differ in their last bits do (docs/distributed.md)."""
    cnn = ["--preset", "cnn", "-d", "digits", "-e", "2", "--dropout", "0", "--dtype", "float64"]
    one = train(tmp_path / "one", *cnn, "--sync-bn")
    assert_same_losses(one, train(tmp_path / "two", *cnn, "--sync-bn", k=2), rel=1e-9, images=0)
    assert_same_losses(one, train(tmp_path / "four", *cnn, "--sync-bn", k=4), rel=1e-9, images=0)
    own = train(tmp_path / "own", *cnn, k=2)  # each rank's own statistics, as PyTorch's DDP
    assert abs(own[0]["train_loss"] - one[0]["train_loss"]) > 1e-6 * one[0]["train_loss"]


def test_sync_bn_is_refused_where_there_is_no_batch_norm(tmp_path):
    r = subprocess.run([*NPGRAD, "train", "-d", "digits", "--sync-bn", "-o", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "--sync-bn is not used by the mlp model" in r.stderr


def test_mnist_10k_on_two_ranks_equals_one_process(tmp_path, shared_data):
    data = ["-d", str(shared_data / "mnist-10k"), "-e", "2", "--dropout", "0"]
    assert_same_losses(train(tmp_path / "one", *data), train(tmp_path / "two", *data, k=2))


def test_a_k_rank_checkpoint_resumes_exactly_with_k_and_also_with_one(tmp_path):
    # dropout on: each rank's own stream is saved and restored
    opts = ["-d", "digits", "--dropout", "0.3", "--schedule", "constant"]
    whole = train(tmp_path / "whole", *opts, "-e", "4", k=2)
    train(tmp_path / "part", *opts, "-e", "2", k=2)
    resumed = train(tmp_path / "part", "--resume", "-e", "4", k=2)
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]
    pa, oa, _ = ckpt.load(tmp_path / "whole" / "checkpoint.npz")
    pb, ob, _ = ckpt.load(tmp_path / "part" / "checkpoint.npz")
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert all(np.array_equal(oa[k], ob[k]) for k in oa)
    # ... and one process continues a two-rank run (evaluate, export and serve read it too)
    alone = train(tmp_path / "part", "--resume", "-e", "5")
    assert len(alone) == 5 and alone[-1]["test_accuracy"] > 0.8


def test_workers_flag_starts_mpiexec_itself(tmp_path):
    r = subprocess.run(
        [*NPGRAD, "train", "--workers", "2", *DIGITS, "-o", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done: test accuracy") == 1  # rank 0 alone reports


def _rank_pids(k):
    """PIDs of this test's npgrad ranks, by rank, from their environments."""
    found = {}
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            text = env.read_bytes().split(b"\0")
            cmd = (env.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if b"npgrad" not in cmd or b"train" not in cmd:
            continue
        for item in text:
            if item.startswith(b"PMI_RANK="):
                found[int(item[9:])] = int(env.parent.name)
    return found


def _alive(pid):
    """Whether a process still runs: a zombie has ended (mpiexec's proxy may exit before
    reaping its ranks, and init reaps them later)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def test_a_killed_rank_ends_every_rank_in_seconds_and_the_run_resumes(tmp_path, shared_data):
    out = tmp_path / "run"
    cmd = [*NPGRAD, "train", "--workers", "2", "-d", str(shared_data / "mnist-10k"), "-e", "3",
           "--dropout", "0", "-b", "32", "-o", str(out)]  # fmt: skip
    # three epochs: killed in the second, so the resume trains two (a resume of five took
    # minutes once inside a full test run, near its timeout, though seconds alone)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (out / "checkpoint.npz").exists(), "no epoch finished"
        # at once, in epoch 2: an epoch is a few tenths of a second on a fast host, and a kill
        # that lands as the run ends tests another path (tests/cli/test_workers.py)
        ranks = _rank_pids(2)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - killed < 10
    finally:
        proc.kill()
    params, _, meta = ckpt.load(out / "checkpoint.npz")  # intact
    assert meta["epoch"] == 1, "not killed in epoch 2"
    assert proc.returncode == 2, err
    # mpiexec's banner names the signal; when rank 0's all-reduce finds rank 1 gone before
    # mpiexec does, MPI's error stack is all there is (tests/cli/test_workers.py has both)
    said = r"npgrad: error: rank 1 of 2 stopped( \(killed by signal 9\)| or lost its connection)"
    assert re.match(said, err) and err.count("\n") == 1 and "--resume" in err, err
    assert not [r for r, pid in ranks.items() if _alive(pid)]
    r = subprocess.run([*NPGRAD, "train", "--workers", "2", "-o", str(out), "--resume", "-q"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_rank_killed_after_the_last_epoch_costs_no_training(tmp_path):
    # --plot keeps rank 0 busy for a second after its last epoch: it is killed then
    out = tmp_path / "run"
    cmd = [*NPGRAD, "train", "--workers", "2", *DIGITS, "--plot", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, ranks = time.monotonic() + 120, {}
        while len(ranks) < 2 and time.monotonic() < deadline:
            ranks = _rank_pids(2)
            time.sleep(0.01)
        environ = Path(f"/proc/{ranks[0]}/environ").read_bytes().split(b"\0")
        folder = next(e.split(b"=", 1)[1] for e in environ if e.startswith(b"NPGRAD_RANK_DIR="))
        finished = Path(folder.decode()) / "finished"
        while not finished.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert finished.exists(), "rank 0 never finished"
        os.kill(ranks[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert err.startswith("npgrad: error: rank 0 of 2 stopped") and err.count("\n") == 1, err
    assert err.endswith("training had finished, and the checkpoint holds every epoch\n"), err
    assert ckpt.load(out / "checkpoint.npz")[2]["epoch"] == 4


def test_an_error_on_one_rank_is_one_line_and_ends_all(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"not a checkpoint")
    r = subprocess.run(
        [*NPGRAD, "train", "--workers", "2", *DIGITS, "-o", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    # the rank's line alone: not MPICH's MPI_Abort line after it, nor a second copy
    assert r.stderr.count("\n") == 1 and "already holds a checkpoint" in r.stderr, r.stderr
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == b"not a checkpoint"


def test_the_library_example_runs_under_mpiexec(tmp_path):
    r = mpiexec(2, sys.executable, str(ROOT / "examples" / "distributed_mlp.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and "accuracy" in lines[0]  # rank 0 prints
    assert float(lines[0].split()[-1].rstrip("%")) > 80


def test_shards_cover_the_batch_in_order():
    for n in (1, 7, 128, 129):
        for k in (1, 2, 3, 4):
            parts = [distributed.shard(n, r, k) for r in range(k)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            sizes = [len(range(n)[p]) for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_without_mpi4py_the_workers_flag_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "from npgrad.cli import main\n"
        f"sys.exit(main(['train', '--workers', '2', '-d', 'digits', '-o', {str(tmp_path)!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "npgrad[mpi]" in r.stderr, r.stderr


class _FailingComm:
    """An mpi4py communicator whose collectives fail as MPI reports a peer gone."""

    def __init__(self):
        from mpi4py import MPI

        self.MPI = MPI

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 2

    def Allreduce(self, *args, **kw):
        raise self.MPI.Exception(self.MPI.ERR_OTHER)

    Bcast = Allreduce


def test_a_failed_collective_is_rank_lost_in_one_line_not_mpis_stack():
    comm = distributed.Communicator(_FailingComm())
    for call in (comm.sum_, comm.broadcast_):
        with pytest.raises(RankLost) as info:
            call(np.zeros(3, np.float32))
        message = str(info.value)
        assert message.startswith("rank 0: another rank stopped in the middle of a step (MPI: ")
        assert "\n" not in message and "--resume" in message
