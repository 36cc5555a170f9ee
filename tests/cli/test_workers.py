"""The ``--workers`` launcher's reading of mpiexec, against stand-ins for mpiexec (the real
one is run in tests/test_distributed.py): what the user sees for each way the ranks end.
Every ending that is not a clean finish is one line of npgrad's, never Hydra's banner,
MPI's error stack or Hydra's diagnostics."""

import signal
import sys
import threading

import pytest

from npgrad.cli import workers
from tests.cli.helpers import assert_one_line_error


def stand_in(monkeypatch, script):
    """``launch`` runs ``python -c script`` where it would run mpiexec."""
    monkeypatch.setattr(workers, "command", lambda k, argv: [sys.executable, "-c", script])


def lines(*texts):
    return "".join(t + "\n" for t in texts)


def test_the_ranks_output_is_relayed_and_their_status_returned(monkeypatch, capsys):
    stand_in(monkeypatch, "import sys; print('epoch 1/1'); print('note', file=sys.stderr)")
    assert workers.launch(2, []) == 0
    out, err = capsys.readouterr()
    assert out == "epoch 1/1\n" and err == "note\n"


@pytest.mark.parametrize(
    "ending, how",
    [  # MPICH 5's banner for a kill; an older one's; a status (no signal named)
        (["=   EXIT CODE: 9"], "(killed by signal 9)"),
        (["=   KILLED BY SIGNAL: 9 (Killed)"], "(killed by signal 9)"),
        (["=   EXIT CODE: 2"], "(exit status 2)"),
    ],
)
def test_the_launchers_banner_becomes_one_line_naming_the_rank(monkeypatch, capsys, ending, how):
    after = ["YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)"]
    banner = lines(
        "=" * 60,
        "=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES",
        "=   PID 4242 RUNNING AT host",
        *ending,
        "=   CLEANING UP REMAINING PROCESSES",
        "=" * 60,
        *(after if ending[0].endswith("EXIT CODE: 9") else []),
    )
    # the rank notes its PID where the launcher said (NPGRAD_RANK_DIR), as note_pid does
    script = (
        "import os, sys; from pathlib import Path\n"
        "Path(os.environ['NPGRAD_RANK_DIR'], 'rank-1').write_text('4242')\n"
        f"print({banner!r}); sys.exit(9)"
    )
    stand_in(monkeypatch, script)
    code = workers.launch(2, [])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, f"rank 1 of 2 stopped {how}")
    assert err.endswith(workers.RESUME + "\n") and "BAD TERMINATION" not in err


# what MPICH printed in CI when rank 0's all-reduce found rank 1 gone before mpiexec did
LOST_PEER = lines(
    "Abort(543763855) on node 0 (rank 0 in comm 0): Fatal error in internal_Allreduce_c: "
    "Other MPI error, error stack:",
    "internal_Allreduce_c(342)......: MPI_Allreduce_c(sendbuf=MPI_IN_PLACE, count=203530) failed",
    "MPID_Allreduce(483)............: ",  # MPICH's empty frames end in a space
    "(unknown)(): Other MPI error",
    "copy_iovs(224).................: process_vm_readv failed (errno 3)",
)


@pytest.mark.parametrize("k, who", [(2, "rank 1 of 2"), (4, "another rank of 4")])
def test_mpis_error_stack_on_a_survivor_becomes_one_line(monkeypatch, capsys, k, who):
    stand_in(monkeypatch, f"import sys; print('epoch 1/3'); sys.stderr.write({LOST_PEER!r}); "
                          "print('after'); sys.exit(143)")  # fmt: skip
    code = workers.launch(k, [])
    out, err = capsys.readouterr()
    assert_one_line_error(code, err, f"{who} stopped or lost its connection (MPI_Allreduce on "
                                     "rank 0: process_vm_readv failed (errno 3))")  # fmt: skip
    assert "--resume" in err
    assert out == "epoch 1/3\nafter\n"  # the ranks' own lines still come through


def test_an_mpi_failure_without_a_lost_peer_blames_no_rank(monkeypatch, capsys):
    stack = lines(
        "Abort(1) on node 1 (rank 1 in comm 0): Fatal error in internal_Comm_split: "
        "Other MPI error, error stack:",
        "internal_Comm_split(95).......: MPI_Comm_split(MPI_COMM_WORLD, color=0) failed",
        "MPIR_Comm_split_impl(42)......: Out of memory",
    )
    stand_in(monkeypatch, f"import sys; sys.stderr.write({stack!r}); sys.exit(1)")
    code = workers.launch(2, [])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "MPI failed on rank 1 of 2 in MPI_Comm_split (Out of memory)")
    assert "stopped" not in err


def test_hydras_diagnostics_become_one_line(monkeypatch, capsys):
    hydra = lines(
        "[proxy:0@vm] HYD_pmcd_pmip_control_cmd_cb (/mpich/src/pm/hydra/proxy/pmip_cb.c:490): "
        "assert (!closed) failed",
        "[mpiexec@vm] main (/mpich/src/pm/hydra/mpiexec/mpiexec.c:270): process manager error "
        "waiting for completion",
    )
    stand_in(monkeypatch, f"import sys; sys.stderr.write({hydra!r}); sys.exit(255)")
    code = workers.launch(2, [])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "mpiexec failed (assert (!closed) failed)")


@pytest.mark.parametrize(
    "script, message",
    [  # a rank ended by a signal, and neither mpiexec nor MPI said which; mpiexec killed
        ("import sys; sys.exit(143)", "a rank of 2 stopped (mpiexec's exit status 143)"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
         "mpiexec ended by signal 9, and the ranks with it"),
    ],
)  # fmt: skip
def test_an_ending_nobody_explained_is_still_one_line(monkeypatch, capsys, script, message):
    stand_in(monkeypatch, script)
    code = workers.launch(2, [])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, message)
    assert "--resume" in err


@pytest.mark.parametrize("status", [1, 2, 130])
def test_a_status_the_ranks_explained_themselves_passes_through(monkeypatch, capsys, status):
    # an error on a rank (2: it printed its line, then MPI_Abort printed MPICH's) or a
    # forwarded Ctrl-C (130): the rank has said why already
    said = lines(
        "npgrad: error: rank 1: why",
        "Abort(2) on node 1 (rank 1 in comm 0): application called MPI_Abort(MPI_COMM_WORLD, 2) "
        "- process 1",
    )
    stand_in(monkeypatch, f"import sys; sys.stderr.write({said!r}); sys.exit({status})")
    assert workers.launch(2, []) == status
    assert capsys.readouterr().err == "npgrad: error: rank 1: why\n"


def test_a_ranks_line_that_mpiexec_lost_is_said_by_the_launcher(monkeypatch, capsys):
    # MPI_Abort right after the rank's line: mpiexec dropped the line once in thirty runs
    script = (
        "import os, sys; from pathlib import Path\n"
        "Path(os.environ['NPGRAD_RANK_DIR'], 'said').write_text('npgrad: error: rank 0: why')\n"
        "sys.exit(2)"
    )
    stand_in(monkeypatch, script)
    code = workers.launch(2, [])
    assert code == 2 and capsys.readouterr().err == "npgrad: error: rank 0: why\n"


# mpiexec on Ctrl-C: it passes the signal on; the ranks save at one step, rank 0 says so;
# a second Ctrl-C makes it end them at once, with Hydra's diagnostics
ON_CTRL_C = """
import signal, sys, time
def stop(*_):
    sys.stderr.write({said!r} + {hydra!r})
    sys.exit(255)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(30)
sys.exit(3)
"""


@pytest.mark.parametrize("rank_said", [True, False])
def test_a_users_ctrl_c_is_an_interruption_not_a_dead_rank(monkeypatch, capsys, rank_said):
    said = "npgrad: stopped in epoch 2 after step 58 of 313; continue with --resume\n"
    hydra = "[mpiexec@vm] Sending Ctrl-C to processes as requested\n"
    stand_in(monkeypatch, ON_CTRL_C.format(said=said if rank_said else "", hydra=hydra))
    real_write = sys.stdout.write

    def write(text):  # the stand-in is ready for the signal once it printed "ready"
        if text == "ready\n":
            main = threading.main_thread().ident  # where proc.wait() must be woken
            threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGINT)).start()
        return real_write(text)

    monkeypatch.setattr(sys.stdout, "write", write)
    code = workers.launch(2, [])
    _, err = capsys.readouterr()
    assert code == 130
    if rank_said:
        assert err == said
    else:
        assert err == "npgrad: interrupted; " + workers.RESUME + "\n"
