"""The ``--workers`` launcher's reading of mpiexec, against stand-ins for mpiexec (the real
one is run in tests/test_distributed.py): what the user sees for each way the ranks end."""

import sys

import pytest

from npgrad.cli import workers
from tests.cli.helpers import assert_one_line_error


def stand_in(monkeypatch, script):
    """``launch`` runs ``python -c script`` where it would run mpiexec."""
    monkeypatch.setattr(workers, "command", lambda k, argv: [sys.executable, "-c", script])


def test_the_ranks_output_is_relayed_and_their_status_returned(monkeypatch, capsys):
    stand_in(monkeypatch, "import sys; print('epoch 1/1'); print('note', file=sys.stderr)")
    assert workers.launch(2, []) == 0
    out, err = capsys.readouterr()
    assert out == "epoch 1/1\n" and err == "note\n"


def test_the_launchers_banner_becomes_one_line_naming_the_rank(monkeypatch, capsys, tmp_path):
    banner = [
        "=" * 60,
        "=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES",
        "=   RANK 1 PID 4242 RUNNING AT host",
        "=   KILLED BY SIGNAL: 9 (Killed)",
        "=   EXIT CODE: 9",
        "=   CLEANING UP REMAINING PROCESSES",
        "=" * 60,
    ]
    # the rank notes its PID where the launcher said (NPGRAD_RANK_DIR), as note_pid does
    script = (
        "import os, sys; from pathlib import Path\n"
        "Path(os.environ['NPGRAD_RANK_DIR'], 'rank-1').write_text('4242')\n"
        f"print({chr(10).join(banner)!r}); sys.exit(9)"
    )
    stand_in(monkeypatch, script)
    code = workers.launch(2, [])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "rank 1 of 2 stopped (killed by signal 9)")
    assert "--resume" in err and "BAD TERMINATION" not in err


# what MPICH printed in CI when rank 0's all-reduce found rank 1 gone before mpiexec did
MPI_STACK = "".join(line + "\n" for line in [
    "Abort(543763855) on node 0 (rank 0 in comm 0): Fatal error in internal_Allreduce_c: "
    "Other MPI error, error stack:",
    "internal_Allreduce_c(342)......: MPI_Allreduce_c(sendbuf=MPI_IN_PLACE, count=203530) failed",
    "MPID_Allreduce(483)............: ",  # MPICH's empty frames end in a space
    "MPIR_Wait(745).................: ",
    "copy_iovs(224).................: process_vm_readv failed (errno 3)",
])  # fmt: skip


@pytest.mark.parametrize("k, who", [(2, "rank 1 of 2"), (4, "another rank of 4")])
def test_mpis_error_stack_on_a_survivor_becomes_one_line(monkeypatch, capsys, k, who):
    stand_in(monkeypatch, f"import sys; print('epoch 1/3'); sys.stderr.write({MPI_STACK!r}); "
                          "print('after'); sys.exit(143)")  # fmt: skip
    code = workers.launch(k, [])
    out, err = capsys.readouterr()
    assert_one_line_error(code, err, f"{who} stopped or lost its connection (MPI_Allreduce on "
                                     "rank 0 failed: process_vm_readv failed (errno 3))")  # fmt: skip
    assert "--resume" in err
    assert out == "epoch 1/3\nafter\n"  # the ranks' own lines still come through


def test_a_rank_ended_by_a_signal_with_nothing_said_is_still_one_line(monkeypatch, capsys):
    stand_in(monkeypatch, "import sys; sys.exit(143)")
    code = workers.launch(2, [])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "a rank of 2 stopped (killed by signal 15)")
    assert "--resume" in err


@pytest.mark.parametrize("status", [1, 2, 130])
def test_a_status_the_ranks_explained_themselves_passes_through(monkeypatch, capsys, status):
    # an error on a rank (2) or a forwarded Ctrl-C (130): rank 0 has said why already
    stand_in(monkeypatch, f"import sys; print('npgrad: error: why', file=sys.stderr); "
                          f"sys.exit({status})")  # fmt: skip
    assert workers.launch(2, []) == status
    assert capsys.readouterr().err == "npgrad: error: why\n"
