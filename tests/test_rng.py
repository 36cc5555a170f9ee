"""as_generator: the one rule for every ``rng`` argument (a Generator is shared, else a seed)."""

import numpy as np

from npgrad.data.loader import DataLoader
from npgrad.rng import as_generator


def test_a_generator_is_shared_not_copied():
    rng = np.random.default_rng(3)
    assert as_generator(rng) is rng


def test_a_seed_gives_the_stream_default_rng_gives():
    for seed in (0, 7, 2**40):
        want = np.random.default_rng(seed).standard_normal(5)
        np.testing.assert_array_equal(as_generator(seed).standard_normal(5), want)


def test_none_gives_a_fresh_generator():
    a, b = as_generator(None), as_generator(None)
    assert isinstance(a, np.random.Generator) and a is not b


def test_the_loader_follows_the_rule():
    images, labels = np.zeros((4, 2, 2)), np.arange(4)
    rng = np.random.default_rng(0)
    assert DataLoader(images, labels, rng=rng).rng is rng
    want = np.random.default_rng(5).permutation(4)
    np.testing.assert_array_equal(DataLoader(images, labels, rng=5).rng.permutation(4), want)
