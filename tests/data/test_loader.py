"""npgrad.data.loader: batching, scaling, shift augmentation, validation splits."""

import re

import numpy as np
import pytest

from npgrad.data import DataLoader, one_hot, random_shift, split_validation, to_float
from npgrad.errors import ConfigError


def test_loader_batches_shuffle_and_drop_last():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    batches = list(DataLoader(x, y, batch_size=4, shuffle=True, rng=0))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for xb, yb in batches:
        assert np.array_equal(xb[:, 0], yb)
    assert [len(b[1]) for b in DataLoader(x, y, 4, drop_last=True)] == [4, 4]
    assert len(DataLoader(x, y, 4, drop_last=True)) == 2
    again = list(DataLoader(x, y, batch_size=4, shuffle=True, rng=0))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))


def test_loader_epochs_differ_but_are_seeded():
    y = np.arange(100)
    loader = DataLoader(np.zeros((100, 2), np.float32), y, 100, rng=1)
    e1, e2 = next(iter(loader))[1], next(iter(loader))[1]
    assert not np.array_equal(e1, e2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch size must be positive, got 0"),
        ({"labels": np.arange(3)}, "4 images but 3 labels"),
        ({"images": np.zeros((4, 2), np.float32), "shift": 1}, r"shift .* \(N, H, W\)"),
    ],
)
def test_loader_refuses_what_it_cannot_batch(kwargs, match):
    args = {"images": np.zeros((4, 2, 2), np.float32), "labels": np.arange(4), **kwargs}
    with pytest.raises(ConfigError, match=match):
        DataLoader(**args)


def test_scaling_standardising_and_one_hot():
    x = to_float(np.array([[0, 255], [51, 102]], dtype=np.uint8))
    assert x.dtype == np.float32 and x.max() == 1.0
    xb, _ = next(iter(DataLoader(x, np.array([0, 1]), 2, shuffle=False, mean=0.5, std=0.5)))
    np.testing.assert_allclose(xb[0], [-1.0, 1.0])
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])


def test_random_shift_moves_pixels_without_wrapping():
    img = np.zeros((1, 5, 5), np.float32)
    img[0, 2, 2] = 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = random_shift(img, 2, rng)
        assert out.sum() == 1 and out.shape == img.shape
    edge = np.zeros((1, 3, 3), np.float32)
    edge[0, 0, 0] = 1
    sums = {float(random_shift(edge, 1, rng).sum()) for _ in range(50)}
    assert sums == {0.0, 1.0}  # shifted off the edge: gone, not wrapped around


def test_validation_split_is_disjoint_and_seeded():
    x, y = np.arange(100).reshape(100, 1), np.arange(100)
    xt, yt, xv, yv = split_validation(x, y, 0.2, seed=3)
    assert len(yv) == 20 and len(yt) == 80 and not set(yt) & set(yv)
    assert np.array_equal(split_validation(x, y, 0.2, seed=3)[3], yv)
    assert [len(a) for a in split_validation(x, y, 0.0)] == [100, 100, 0, 0]


@pytest.mark.parametrize(
    "n, fraction, match",
    [
        (1437, 0.9999, "0.9999 of 1437 training rows leaves 0 for training and 1437 for "
                       "validation; each needs at least one: use a fraction between 0.0007 and "
                       "0.9993"),
        (100, 0.001, "leaves 100 for training and 0 for validation"),
        (1, 0.5, "leaves 1 for training and 0 for validation; each needs at least one: too few"),
        (10, 1.0, r"must be in \[0, 1\), got 1.0"),
        (10, -0.1, r"must be in \[0, 1\), got -0.1"),
        (10, float("nan"), r"must be in \[0, 1\), got nan"),
    ],
)  # fmt: skip
def test_validation_split_refuses_an_empty_side(n, fraction, match):
    with pytest.raises(ConfigError, match=match):
        split_validation(np.zeros((n, 2)), np.zeros(n, np.int64), fraction)


@pytest.mark.parametrize("n", [2, 3, 7, 10, 99, 1437, 60000])
def test_the_suggested_validation_fractions_work(n):
    x, y = np.zeros((n, 1)), np.zeros(n, np.int64)
    with pytest.raises(ConfigError) as info:
        split_validation(x, y, 1e-9)
    lo, hi = map(float, re.search(r"between (\S+) and (\S+)$", str(info.value)).groups())
    for fraction in (lo, hi):
        _, yt, _, yv = split_validation(x, y, fraction)
        assert len(yt) >= 1 and len(yv) >= 1, fraction
