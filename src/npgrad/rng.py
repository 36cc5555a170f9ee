"""Where randomness comes from: one rule for every ``rng`` argument in npgrad.

NumPy only, imported by the core (``nn``) and by ``data`` alike.
"""

from __future__ import annotations

import numpy as np


def as_generator(seed_or_rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator given as it is (shared: drawing from it advances the caller's stream);
    anything else seeds a new one with :func:`numpy.random.default_rng` (None: fresh entropy).
    """
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)
