"""The benchmark scripts run (tiny sizes), so they never rot. No timing assertions."""

import sys

import pytest

from benchmarks import bench_accuracy, bench_cnn, bench_speed, machine


def test_speed_benchmark_runs(capsys, torch):
    assert bench_speed.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "| 784-16-10 | 32 |" in out and "npgrad / PyTorch" in out
    assert "final weights differ by" in out and "Peak memory" in out


def test_accuracy_benchmark_runs(capsys, torch, tmp_path):
    assert bench_accuracy.main(["--tiny", "--plot", str(tmp_path / "acc.png")]) == 0
    out = capsys.readouterr().out
    assert (
        "| digits, Adam 0.001 | 80% |" in out
        and "SGD+momentum" in out
        and "| epoch | npgrad | PyTorch |" in out
    )
    assert (tmp_path / "acc.png").stat().st_size > 5000


def test_flops_per_sample():
    # forward and weight gradients for both layers, input gradient for the second only
    assert bench_speed.flops_per_sample([784, 100, 10]) == 2 * (3 * (78400 + 1000) - 78400)


def test_cnn_benchmark_runs(capsys, torch):
    bench_cnn.main(["--tiny"])
    out = capsys.readouterr().out
    assert "| small |" in out and "| lenet |" in out and "npgrad peak memory" in out
    assert "DeZero" not in out and "MyGrad" not in out  # --tiny leaves the peers out
    assert out.startswith("Machine: ") and "PyTorch" in out.splitlines()[0]


@pytest.mark.skipif(sys.platform != "linux", reason="NumPy's wheels ship OpenBLAS on Linux")
def test_machine_line_names_the_openblas_kernels_and_a_pin(monkeypatch, torch):
    kernels = machine.openblas_kernels()
    assert kernels and kernels.isprintable() and " " not in kernels.strip()
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert f"OpenBLAS {kernels} kernels (OPENBLAS_CORETYPE=Haswell in the environment)" in (
        machine.describe()
    )
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert "OPENBLAS_CORETYPE" not in machine.describe()


def test_cnn_benchmark_peer_rows(capsys, torch):
    # The peers live in a separate benchmark venv, never in npgrad's dependencies.
    found = [m for m in bench_cnn.PEERS if bench_cnn.import_peer(m) is not None]
    if not found:
        pytest.skip("neither DeZero nor MyGrad importable (pip install them in .venv-bench)")
    bench_cnn.main(["--tiny", "--peers", "--networks", "small"])
    out = capsys.readouterr().out
    for module in found:
        label, version = bench_cnn.PEERS[module], bench_cnn.peer_version(module)
        assert f"| small ({label} {version}) |" in out
    assert "NumPy autodiff peers" in out


def test_cnn_benchmark_missing_peers_named(capsys, torch, monkeypatch):
    monkeypatch.setattr(bench_cnn, "import_peer", lambda module: None)
    bench_cnn.main(["--tiny", "--peers", "--networks", "small"])
    out = capsys.readouterr().out
    assert "| small |" in out and "NumPy autodiff peers" not in out
    for module, label in bench_cnn.PEERS.items():
        assert f"{label} is not installed" in out and bench_cnn.PEER_INSTALL[module] in out
