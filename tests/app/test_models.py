"""The model kinds behind one protocol: the same interface, state in and out, memory bound."""

import numpy as np
import pytest

from npgrad.app.config import make_config
from npgrad.app.models import MODELS, ExerciseModel, build_model, estimate_bytes
from npgrad.errors import CheckpointError, ConfigError

PROTOCOL = (
    "prepare",
    "train_step",
    "log_probs",
    "params",
    "load_params",
    "optim_state",
    "load_optim_state",
    "describe",
)


def model_of(kind, **kw):
    if kind == "exercise":
        cfg = make_config("exercise", hidden=[8], **kw)
    else:
        extra = {"channels": [4, 6]} if kind == "cnn" else {}
        cfg = make_config("default", model=kind, hidden=[8], **extra, **kw)
    return build_model(cfg, (4, 4), 3, steps_per_epoch=5, rng=np.random.default_rng(0)), cfg


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_model_kind_keeps_the_protocol(kind):
    model, cfg = model_of(kind)
    assert model.kind == kind
    for name in PROTOCOL:
        assert callable(getattr(model, name)), name
    rng = np.random.default_rng(1)
    x = rng.random((6, 16)).astype(cfg.dtype)
    y = np.array([0, 1, 2, 0, 1, 2])
    loss, correct = model.train_step(model.prepare(x), y)
    assert np.isfinite(loss) and 0 <= correct <= 6 and 0 < model.lr <= cfg.lr
    lp = model.log_probs(x)
    assert lp.shape == (6, 3) and lp.dtype == np.dtype(cfg.dtype)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1, rtol=1e-6)
    assert model.describe().split()[0] in ("MLP", "CNN", "exercise")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_state_round_trip_continues_identically(kind):
    no_dropout = (
        {"dropout": 0.0} if kind != "exercise" else {}
    )  # masks come from the run's generator
    a, cfg = model_of(kind, **no_dropout)
    x = np.random.default_rng(2).random((6, 16)).astype(cfg.dtype)
    y = np.array([0, 1, 2, 0, 1, 2])
    a.train_step(a.prepare(x), y)
    b, _ = model_of(
        kind, seed=5, **no_dropout
    )  # different initial weights, overwritten by the state
    b.load_params(a.params())
    b.load_optim_state(a.optim_state())
    a.train_step(a.prepare(x), y)
    b.train_step(b.prepare(x), y)
    for k, v in a.params().items():
        np.testing.assert_array_equal(v, b.params()[k])


def test_params_are_copies_not_views():
    model, _ = model_of("exercise")
    params = model.params()
    params["W1"][...] = 0
    assert model.W1.any()


def test_exercise_model_refuses_a_state_that_does_not_fit():
    model, _ = model_of("exercise")
    with pytest.raises(CheckpointError, match="missing W2"):
        model.load_params({"W1": model.W1})
    with pytest.raises(CheckpointError, match="W1 has shape"):
        model.load_params({"W1": np.zeros((3, 3)), "W2": model.W2})


def test_exercise_model_is_the_exercises_network():
    model, _ = model_of("exercise")
    assert isinstance(model, ExerciseModel)
    assert model.W1.shape == (17, 8) and model.W2.shape == (8, 3)  # ones column: 16 + 1 rows
    x = np.ones((2, 16))
    assert model.prepare(x).shape == (2, 17) and (model.prepare(x)[:, -1] == 1).all()


def test_memory_estimate_and_refusal():
    cfg = make_config("default", hidden=[100])
    small = estimate_bytes(cfg, (28, 28), 10, 128)
    assert 4 * 4 * (784 * 100 + 100 * 10) < small < 10 * 2**20
    huge = make_config("default", hidden=[100_000_000])
    with pytest.raises(
        ConfigError, match=r"needs at least \d+\.\d GiB .* choose a smaller network"
    ):
        build_model(huge, (28, 28), 10)


def test_cnn_builds_conv_blocks_and_keeps_batch_norm_statistics():
    model, cfg = model_of("cnn")
    names = [type(m).__name__ for m in model.net.layers]
    assert names[:8] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"] * 2
    assert "Flatten" in names and names[-1] == "Linear"
    x = np.random.default_rng(3).random((5, 16)).astype(np.float32)
    before = model.params()["1.running_mean"].copy()
    model.train_step(x, np.array([0, 1, 2, 0, 1]))
    assert not np.array_equal(before, model.params()["1.running_mean"])  # a buffer, saved
    frozen = model.params()["1.running_mean"].copy()
    model.log_probs(x)  # evaluation uses, and does not update, the running statistics
    assert np.array_equal(frozen, model.params()["1.running_mean"])


def test_cnn_refuses_options_it_does_not_know_of_and_mlp_refuses_cnn_options():
    with pytest.raises(ConfigError, match="--channels is not used by the mlp model"):
        make_config("default", channels=[8])
    assert make_config("cnn").model == "cnn"
