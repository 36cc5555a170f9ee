"""Batching: float32 images in [0, 1], seeded shuffling, on-the-fly shift augmentation."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import ConfigError
from ..rng import as_generator


def to_float(images: np.ndarray, pixel_max: float = 255.0, dtype: type = np.float32) -> np.ndarray:
    """Scale integer pixels to [0, 1] in ``dtype`` (one pass, one allocation)."""
    out: np.ndarray = np.asarray(images, dtype=dtype)
    out *= dtype(1.0 / pixel_max)
    return out


def one_hot(
    labels: np.ndarray, num_classes: int | None = None, dtype: type = np.float32
) -> np.ndarray:
    """(N,) integer labels -> (N, C) one-hot matrix."""
    labels = np.asarray(labels)
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    out: np.ndarray = np.zeros((labels.shape[0], c), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def split_validation(
    images: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a seeded random ``fraction`` of the training set: (x_train, y_train, x_val, y_val).

    A fraction of 0 holds out nothing. Any other fraction must leave at least one
    row on each side; the refusal says how many rows each part would have had.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} images but {len(labels)} labels")
    n = len(labels)
    n_val = int(round(n * fraction))
    if fraction > 0 and not 0 < n_val < n:
        # 1/n and 1 - 1/n, rounded inwards to as many decimals as n has digits: any
        # fraction between them gives round(n * f) within 1 .. n-1
        scale = 10 ** len(str(n))
        lo, hi = math.ceil(scale / n) / scale, math.floor(scale - scale / n) / scale
        raise ConfigError(
            f"validation fraction {fraction:g} of {n} training rows leaves {n - n_val} for "
            f"training and {n_val} for validation; each needs at least one: "
            + (f"use a fraction between {lo:g} and {hi:g}" if n >= 2 else "too few rows")
        )
    perm = np.random.default_rng([seed, 0x5EED]).permutation(n)
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return images[train], labels[train], images[val], labels[val]


def random_shift(batch: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each image of ``batch`` (B, H, W) by its own random (dy, dx) in [-s, s], zero fill.

    No Python loop per image: pad the batch once, view every possible shift of
    every image at once with ``sliding_window_view`` (no copy), and gather one
    window per image.
    """
    if max_shift <= 0:
        return batch
    b, h, w = batch.shape
    s = max_shift
    padded = np.zeros((b, h + 2 * s, w + 2 * s), dtype=batch.dtype)
    padded[:, s : s + h, s : s + w] = batch
    dy = rng.integers(-s, s + 1, size=b)
    dx = rng.integers(-s, s + 1, size=b)
    windows = sliding_window_view(padded, (h, w), axis=(1, 2))  # (B, 2s+1, 2s+1, H, W)
    return windows[np.arange(b), s - dy, s - dx]


class DataLoader:
    """Iterate over (x, y) minibatches: x float (B, D) flattened, y int64 (B,).

    ``images`` are already-scaled floats (N, H, W) or (N, D) (see :func:`to_float`).
    Each epoch draws its permutation and augmentation from ``rng``, so the
    sequence of batches is fixed by the generator's state (saved in checkpoints).
    ``mean``/``std`` standardise after augmentation when given.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 128,
        shuffle: bool = True,
        drop_last: bool = False,
        rng: np.random.Generator | int | None = 0,
        shift: int = 0,
        mean: float | None = None,
        std: float | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if len(images) != len(labels):
            raise ConfigError(f"{len(images)} images but {len(labels)} labels")
        if shift and images.ndim != 3:
            raise ConfigError("shift augmentation needs images of shape (N, H, W)")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = min(batch_size, len(labels)) if len(labels) else batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rng = as_generator(rng)
        self.shift = shift
        self.mean, self.std = mean, std
        self.features = int(np.prod(images.shape[1:]))

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.batches()

    def batches(
        self, order: np.ndarray | None = None, start_batch: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of batches; ``order``/``start_batch`` continue an interrupted epoch.

        Without ``order`` a new permutation is drawn from ``rng`` (when shuffling).
        """
        n = len(self.labels)
        if order is None and self.shuffle:
            order = self.rng.permutation(n)
        full_pass = order is None and not self.shift
        for start in range(start_batch * self.batch_size, n, self.batch_size):
            stop = start + self.batch_size
            if stop > n and self.drop_last:
                break
            if full_pass:
                # Contiguous slices are views: no copy at all.
                x, y = self.images[start:stop], self.labels[start:stop]
            else:
                idx = order[start:stop] if order is not None else slice(start, stop)
                x, y = self.images[idx], self.labels[idx]
            if self.shift:
                x = random_shift(x, self.shift, self.rng)
            x = x.reshape(len(y), self.features)
            if self.mean is not None:
                x = (x - x.dtype.type(self.mean)) / x.dtype.type(self.std or 1.0)
            yield x, y
