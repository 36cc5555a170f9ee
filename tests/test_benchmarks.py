"""The benchmark scripts run (tiny sizes), so they never rot. No timing assertions."""

from benchmarks import bench_accuracy, bench_cnn, bench_speed


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
