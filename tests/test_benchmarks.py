"""The benchmark scripts run (tiny sizes), so they never rot. No timing assertions."""

import sys

import pytest

from benchmarks import (
    bench_accuracy,
    bench_cnn,
    bench_compile,
    bench_distributed,
    bench_gpu,
    bench_preset,
    bench_speed,
    machine,
    peers_mlp,
)
from npgrad import fpenv


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


def test_cnn_products_are_the_im2col_shapes():
    # forward, weight gradient (unfolded input transposed), input gradient from layer 2 on
    assert bench_cnn.products("small", 4) == [
        (4 * 784, 9, 16, False),
        (9, 4 * 784, 16, True),
        (4 * 196, 144, 32, False),
        (144, 4 * 196, 32, True),
        *[(4 * 196, 32, 16, False)] * 9,  # 16 input channels: one product per kernel offset
        (4, 1568, 10, False),
        (1568, 4, 10, True),
        (4, 10, 1568, False),
    ]
    assert bench_cnn.gemm_flops_per_sample("small") == 2 * (
        2 * 784 * 9 * 16 + 3 * 196 * 144 * 32 + 3 * 1568 * 10
    )
    # 32 input channels and more: the flipped-kernel convolution of the output gradient
    assert (4 * 196, 25 * 64, 32, False) in bench_cnn.products("lenet", 4)


def test_flops_per_sample():
    # forward and weight gradients for both layers, input gradient for the second only
    assert bench_speed.flops_per_sample([784, 100, 10]) == 2 * (3 * (78400 + 1000) - 78400)


def test_cnn_benchmark_runs(capsys, torch):
    bench_cnn.main(["--tiny"])
    out = capsys.readouterr().out
    assert "| small |" in out and "| lenet |" in out and "npgrad peak memory" in out
    assert "products alone samples/s" in out
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


def test_preset_benchmark_trains_the_same_network_in_both(capsys, torch):
    assert bench_preset.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "| npgrad |" in out and "| PyTorch |" in out and "| 1 |" in out
    gap = float(out.split("log-probabilities within ")[1].split(" ")[0])
    assert gap < 1e-5  # PyTorch's twin computes what npgrad's network does
    assert machine.denormals_line(True) in out  # as npgrad train runs
    assert not fpenv.denormals_flushed()  # and the mode given back


def test_preset_benchmark_twin_is_built_from_the_layer_table(torch):
    import numpy as np

    from npgrad.app.config import make_config
    from npgrad.app.models import build_model

    cfg = make_config("cnn", dataset="digits", channels=[3, 5], hidden=[7])
    model = build_model(cfg, (8, 8), 10, rng=np.random.default_rng(0))
    twin = bench_preset.torch_twin(torch, model.net).eval()
    x = np.random.default_rng(1).random((5, 64)).astype(np.float32)
    with torch.no_grad():
        theirs = torch.log_softmax(twin(torch.from_numpy(x.reshape(5, 1, 8, 8))), 1).numpy()
    np.testing.assert_allclose(model.log_probs(x), theirs, atol=1e-5)


def test_threads_are_read_from_the_command_line_before_argparse():
    from benchmarks.threads import threads_from_argv

    assert threads_from_argv(["bench", "--threads", "3"]) == "3"
    assert threads_from_argv(["bench", "--threads=1", "--tiny"]) == "1"
    assert threads_from_argv(["bench", "--tiny"]) == "2"


def test_preset_benchmark_refuses_what_npgrad_refuses_in_one_line(capsys):
    assert bench_preset.main(["--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_preset: error: unknown preset 'nope'") and err.count("\n") == 1


def test_gpu_script_runs_on_the_cupy_stand_in(capsys, torch, tmp_path):
    """The GPU session's one shot (benchmarks/gpu.sh) rehearsed here: npgrad on the CuPy
    stand-in (tests/fakecupy.py), PyTorch on the CPU, the whole file written."""
    from tests import fakecupy

    fakecupy.install()
    try:
        code = bench_gpu.main(["--dataset", "digits", "--epochs", "1", "--cases", "1",
                               "--out", str(tmp_path / "gpu.md"), "--torch-device", "cpu"])  # fmt: skip
    finally:
        fakecupy.uninstall()
    assert code == 0
    text = (tmp_path / "gpu.md").read_text()
    assert "- gradients: " in text and " ops passed (relative tolerance" in text
    assert "second derivatives (double backward):" in text and "FAILED" not in text
    assert "| npgrad | cuda |" in text and "| PyTorch | cuda |" in text
    assert "| npgrad | cpu |" in text and "npgrad cuda / npgrad cpu speed-up" in text


def test_gpu_script_refuses_a_wrong_dataset_before_any_work(capsys, tmp_path):
    from tests import fakecupy

    fakecupy.install()
    try:
        code = bench_gpu.main(
            ["--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.md")]
        )
    finally:
        fakecupy.uninstall()
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("bench_gpu: error: ") and err.count("\n") == 1
    assert not (tmp_path / "g.md").exists()


def test_gpu_script_without_cupy_is_one_line(capsys):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    assert bench_gpu.main(["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_gpu: error: device 'cuda' needs CuPy") and err.count("\n") == 1


def test_compile_benchmark_runs(capsys, torch):
    assert bench_compile.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "| small CNN, Adam | 16 |" in out and "compiled / PyTorch" in out
    assert "| conv2d vjp |" in out and "(products alone)" in out
    # both profiled steps, each kernel beside the PyTorch ops doing that work
    assert "replayed small CNN step" in out and "replayed 784-100-10 SGD step" in out
    assert out.count("| kernel | npgrad ms | share | PyTorch ms |") == 2
    assert "| (the step unprofiled, median) |" in out
    assert "Peak memory of one step" in out and "| small CNN, Adam | 16 | " in out
    if fpenv.available():  # the Adam row again with subnormals kept, npgrad and PyTorch
        assert machine.denormals_line(True) in out
        assert "| npgrad compiled, subnormals kept |" in out
        assert "| PyTorch, subnormals kept (its default) |" in out
        assert not fpenv.denormals_flushed()  # the benchmark gives the mode back
    # the first target row against every peer: a row each where installed, else how to
    assert "against the NumPy autodiff peers" in out and "| PyTorch" in out
    for module, label in peers_mlp.PEERS.items():
        assert (
            f"| {label} " in out
            or peers_mlp.INSTALL[module] in out
            or f"{label} did not run" in out
        )


def test_distributed_benchmark_runs(capsys):
    assert bench_distributed.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "| mlp (batch 16) |" in out and "| cnn (batch 16) |" in out and "allreduce" in out


@pytest.mark.parametrize("bench", [bench_accuracy, bench_cnn, bench_compile, bench_distributed,
                                   bench_gpu, bench_preset, bench_speed])  # fmt: skip
def test_an_out_file_in_a_missing_folder_is_refused_before_any_work(bench, capsys, tmp_path):
    missing = tmp_path / "no-such-folder" / "report.md"
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", "--out", str(missing)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"folder {missing.parent} does not exist; create it or write the report "
                        "elsewhere")  # fmt: skip
    assert not missing.parent.exists()
