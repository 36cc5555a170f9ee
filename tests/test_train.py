"""The trainer: accuracy on real data, exact resume, determinism, the exercise preset, checkpoints."""

import json
import os
import signal
import zipfile

import numpy as np
import pytest

from benchmarks import exercise_naive as naive
from npgrad import CheckpointError, ConfigError, TrainingDiverged
from npgrad import checkpoint as ckpt
from npgrad.data import load_dataset
from npgrad.train import Interrupted, Trainer, make_config, parse_hidden


@pytest.fixture(scope="module")
def mnist10k(shared_data):
    return load_dataset(str(shared_data / "mnist-10k"))


def quiet(cfg, out, **kw):
    return Trainer(cfg, out, log=lambda line: None, progress=False, **kw)


def test_short_default_run_on_mnist_10k_reaches_95_percent(mnist10k, tmp_path):
    cfg = make_config("default", dataset="mnist-10k", epochs=4)
    final = quiet(cfg, tmp_path, dataset=mnist10k).fit()
    assert final["test_accuracy"] >= 0.95, final
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for key in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
                "samples_per_second"):  # fmt: skip
        assert key in json.loads(lines[0])


def small_cfg(**kw):
    base = dict(dataset="digits", epochs=3, batch_size=64, shift=1, dropout=0.2, hidden=[32])
    return make_config("default", **{**base, **kw})


def final_state(out):
    params, opt, meta = ckpt.load(out / "checkpoint.npz")
    return params, opt, meta


def strip_timing(history):
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "samples_per_second")} for r in history
    ]


def assert_same_run(a, b):
    pa, oa, ma = final_state(a)
    pb, ob, mb = final_state(b)
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k
    for k in oa:
        assert np.array_equal(oa[k], ob[k]), k
    assert strip_timing(ma["history"]) == strip_timing(mb["history"])
    lines_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert strip_timing(lines_a) == strip_timing(lines_b)
    return lines_b


def test_ctrl_c_mid_epoch_saves_and_resume_equals_uninterrupted(tmp_path):
    quiet(small_cfg(), tmp_path / "a").fit()

    def ctrl_c(epoch, step):
        if epoch == 2 and step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, handled by the trainer

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="stopped in epoch 2 after step 6 of 23; saved to"):
        quiet(small_cfg(), tmp_path / "b", step_hook=ctrl_c).fit()
    meta = final_state(tmp_path / "b")[2]
    assert meta["epoch"] == 1 and meta["partial"]["step"] == 6
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is restored
    quiet(small_cfg(), tmp_path / "b").fit(resume=True)
    assert len(assert_same_run(tmp_path / "a", tmp_path / "b")) == 3


def test_stop_twice_in_the_same_epoch(tmp_path):
    quiet(small_cfg(), tmp_path / "a").fit()
    for step in (3, 9):
        trainer = quiet(small_cfg(), tmp_path / "b")
        trainer.step_hook = lambda e, s, t=trainer, k=step: (
            t.request_stop() if (e, s) == (2, k) else None
        )
        with pytest.raises(Interrupted, match=f"after step {step + 1}"):
            trainer.fit(resume=step == 9)
    quiet(small_cfg(), tmp_path / "b").fit(resume=True)
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_second_interrupt_mid_step_keeps_last_epoch(tmp_path):
    def hard(epoch, step):
        if epoch == 2 and step == 5:
            raise KeyboardInterrupt  # as a second Ctrl-C would, in the middle of a step

    with pytest.raises(Interrupted, match="interrupted in epoch 2; checkpoint kept: epoch 1"):
        quiet(small_cfg(), tmp_path, step_hook=hard).fit()
    meta = final_state(tmp_path)[2]
    assert meta["epoch"] == 1 and "partial" not in meta
    quiet(small_cfg(), tmp_path).fit(resume=True)


def test_same_seed_is_bit_identical_and_other_seed_differs(tmp_path):
    quiet(small_cfg(), tmp_path / "a").fit()
    quiet(small_cfg(), tmp_path / "b").fit()
    quiet(small_cfg(seed=1), tmp_path / "c").fit()
    pa, pb, pc = (final_state(tmp_path / d)[0] for d in "abc")
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert not np.array_equal(pa["0.weight"], pc["0.weight"])


def test_exercise_preset_matches_an_independent_computation(mnist10k, tmp_path):
    epochs = 3
    cfg = make_config("exercise", dataset="mnist-10k", epochs=epochs)
    trainer = quiet(cfg, tmp_path, dataset=mnist10k)
    trainer.fit()
    # The exercise's own code, with its own layers, from the same initial weights.
    init = np.random.default_rng(cfg.seed)
    W1, W2 = init.normal(size=(785, 100)), init.normal(size=(100, 10))
    model = naive.make_model(naive)(W1, W2)
    x = naive.add_ones_column(mnist10k.train_images / 255.0)
    y = np.eye(10)[mnist10k.train_labels]
    losses = [naive.train_one_step(model, x, y, 1e-5)[0] for _ in range(epochs)]
    ours = [r["train_loss"] for r in trainer.history]
    np.testing.assert_allclose(ours, losses, rtol=1e-12)
    assert 23 <= losses[0] <= 24  # the exercise's reported epoch-0 loss
    params = final_state(tmp_path)[0]
    np.testing.assert_allclose(params["W1"], model.W1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(params["W2"], model.W2, rtol=1e-10, atol=1e-12)


def test_exercise_preset_matches_the_exercise_for_all_50_epochs(mnist10k):
    from npgrad.train import ExerciseModel

    ours = ExerciseModel(make_config("exercise"), 784, 10)
    theirs = naive.make_model(naive)(ours.W1.copy(), ours.W2.copy())
    x = naive.add_ones_column(mnist10k.train_images / 255.0)
    onehot = np.eye(10)[mnist10k.train_labels]
    for _ in range(50):
        naive.train_one_step(theirs, x, onehot, 1e-5)
        ours.train_step(x, mnist10k.train_labels)
    for a, b in ((ours.W1, theirs.W1), (ours.W2, theirs.W2)):
        assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-10


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = quiet(small_cfg(), tmp_path)

    def poison(epoch, step):
        if epoch == 2 and step == 3:
            trainer.model.net[0].weight.data[...] = np.nan

    trainer.step_hook = poison
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2, step 4.*epoch 1"):
        trainer.fit()
    params, _, meta = final_state(tmp_path)
    assert meta["epoch"] == 1 and all(np.isfinite(v).all() for v in params.values())


def test_refuses_to_overwrite_a_run_without_force_or_resume(tmp_path):
    quiet(small_cfg(epochs=1), tmp_path).fit()
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        quiet(small_cfg(epochs=1), tmp_path).fit()
    quiet(small_cfg(epochs=1), tmp_path).fit(force=True)


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint .* drop --resume"):
        quiet(small_cfg(), tmp_path).fit(resume=True)


@pytest.mark.parametrize("text, sizes", [("256", [256]), ("512,256", [512, 256]), ("100-50", [100, 50]),
                                         ("none", [])])  # fmt: skip
def test_parse_hidden(text, sizes):
    assert parse_hidden(text) == sizes


@pytest.mark.parametrize("text", ["256,abc", "-5", "12,,3"])
def test_parse_hidden_errors(text):
    with pytest.raises(ConfigError, match="bad architecture"):
        parse_hidden(text)


# ----------------------------------------------------------------- checkpoint files


def test_checkpoint_round_trip(tmp_path):
    p = {"w": np.arange(6.0).reshape(2, 3)}
    o = {"steps": np.array(4)}
    path = ckpt.save(tmp_path / "c.npz", p, o, {"epoch": 2, "config": {"a": 1}})
    params, opt, meta = ckpt.load(path)
    assert np.array_equal(params["w"], p["w"]) and int(opt["steps"]) == 4
    assert meta == {"epoch": 2, "config": {"a": 1}}
    assert not list(tmp_path.glob("*.part"))


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        **{"meta/format": np.array(ckpt.FORMAT), "param/w": np.array([{"x": 1}], dtype=object)},
    )
    with pytest.raises(CheckpointError, match="pickled objects"):
        ckpt.load(path)


def test_tampered_checkpoint_is_refused(tmp_path):
    path = ckpt.save(tmp_path / "c.npz", {"w": np.zeros(3)}, {}, {"epoch": 1})
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["param/w"] = np.ones(3)  # same shape, different weights, digest not updated
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="does not match its digest"):
        ckpt.load(path)


@pytest.mark.parametrize(
    "content, match", [(b"", "corrupt or not an npz"), (b"hello", "corrupt or not an npz")]
)
def test_corrupt_checkpoint_files(tmp_path, content, match):
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        ckpt.load(path)


def test_truncated_checkpoint(tmp_path):
    path = ckpt.save(tmp_path / "c.npz", {"w": np.zeros(1000)}, {}, {"epoch": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        ckpt.load(path)


def test_foreign_npz_is_not_a_checkpoint(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match="not an npgrad checkpoint"):
        ckpt.load(tmp_path / "x.npz")
    assert zipfile.is_zipfile(tmp_path / "x.npz")
