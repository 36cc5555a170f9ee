"""The trainer with --device cuda, on the CuPy stand-in (tests/fakecupy.py): the same run as
on the CPU, checkpoints of host arrays that resume on either device, clear refusals."""

import subprocess
import sys

import numpy as np
import pytest

from npgrad.app.config import make_config
from npgrad.app.models import load_for_inference
from npgrad.app.trainer import evaluate_checkpoint
from npgrad.errors import ConfigError, Interrupted
from tests import fakecupy
from tests.app.test_trainer import assert_same_run, final_state, quiet, resume


@pytest.fixture
def cuda():
    yield fakecupy.install()
    fakecupy.uninstall()


def cnn(**kw):
    base = dict(dataset="digits", epochs=2, channels=[4, 8], hidden=[16], batch_size=64)
    return make_config("cnn", **{**base, **kw})


def test_a_gpu_run_is_the_cpu_run_and_its_checkpoint_serves_on_the_cpu(cuda, tmp_path):
    gpu = quiet(cnn(dropout=0.0), tmp_path / "gpu", device="cuda")
    gpu.fit()
    assert gpu.model._step.replays > 0  # the compiled step replays on the device
    assert all(p.device == "cuda" for p in gpu.model.net.parameters())
    quiet(cnn(dropout=0.0), tmp_path / "cpu").fit()
    lines = assert_same_run(tmp_path / "cpu", tmp_path / "gpu")
    params = final_state(tmp_path / "gpu")[0]
    assert all(type(a) is np.ndarray for a in params.values())  # host arrays on disk
    model, _ = load_for_inference(tmp_path / "gpu")
    assert model.device == "cpu"
    ev = evaluate_checkpoint(tmp_path / "gpu")[0]  # served on the CPU
    assert ev.accuracy == pytest.approx(lines[-1]["test_accuracy"], abs=1e-9)


def test_a_gpu_run_resumes_bit_exact_on_the_gpu_and_carries_on_on_the_cpu(cuda, tmp_path):
    def cfg():  # the cnn preset's network, with dropout: its masks drawn on the device
        return make_config("cnn", dataset="digits", epochs=3)

    whole = quiet(cfg(), tmp_path / "a", device="cuda").fit()

    def stop(epoch, step):
        if (epoch, step) == (1, 10):
            trainer.request_stop()

    for name in ("b", "c"):
        trainer = quiet(cfg(), tmp_path / name, step_hook=stop, device="cuda")
        with pytest.raises(Interrupted):
            trainer.fit()
    resume(tmp_path / "b", device="cuda").fit()
    assert_same_run(tmp_path / "a", tmp_path / "b")
    # the same checkpoint finished on the CPU: other dropout masks, the same accuracy within
    # seed noise (8 seeds of this run on the CPU: 0.77-0.86)
    final = resume(tmp_path / "c").fit()
    assert whole["test_accuracy"] > 0.7 and final["test_accuracy"] > 0.7
    assert abs(final["test_accuracy"] - whole["test_accuracy"]) < 0.12


def test_the_exercise_preset_stays_on_the_cpu(cuda, tmp_path):
    cfg = make_config("exercise", dataset="digits", epochs=1)
    with pytest.raises(ConfigError, match="exercise preset.*without --device"):
        quiet(cfg, tmp_path / "x", device="cuda")


def _cli(*args, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "npgrad", "train", "--dataset", "digits", "--epochs", "1",
         "--out", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_without_cupy_is_one_line_naming_the_extra(tmp_path):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    out = _cli("--device", "cuda", tmp_path=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'npgrad[cuda12]'" in lines[0], out.stderr
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_cli_refuses_workers_on_a_gpu_and_an_unknown_device(tmp_path):
    out = _cli("--device", "cuda", "--workers", "2", tmp_path=tmp_path)
    assert out.returncode != 0 and "--workers trains data-parallel on the CPU" in out.stderr
    out = _cli("--device", "tpu", tmp_path=tmp_path)
    assert out.returncode != 0 and "invalid choice: 'tpu'" in out.stderr
