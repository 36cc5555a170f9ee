"""Arguments of the image ops checked once: whole numbers, pairs, eps.

The ops, the nn modules, the exercise's layer classes, export and the command line
take kernel sizes, strides, paddings and eps from users; each refuses a bad one here,
in the same words, before anything is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

IntOrPair = int | Sequence[int]


def is_int(v: Any) -> bool:
    # 2.9 must not quietly become 2, nor True become 1 (PyTorch refuses both too)
    if isinstance(v, np.ndarray) and v.ndim == 0:  # np.array(3), as a 0-d array of ints
        v = v[()]
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def as_int(v: Any, what: str, low: int) -> int:
    """``v`` as an int ``>= low``; anything else (a float, a string, a bool) is refused."""
    if not is_int(v) or int(v) < low:
        raise ConfigError(f"{what} must be an int >= {low}, got {v!r}")
    return int(v)


def check_eps(v: Any, what: str) -> None:
    """Refuse an ``eps`` that is not a positive finite number (0 or NaN would give NaN silently)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.floating)):
        finite = False
    else:
        finite = isinstance(v, int) or bool(np.isfinite(v))  # a huge int is finite, not a float
    if not (finite and v > 0):
        raise ConfigError(f"{what} must be a positive number, got {v!r}")


def as_pair(v: Any, what: str, low: int) -> tuple[int, int]:
    """``v`` (an :data:`IntOrPair`, or anything a user gave) as two ints ``>= low`` (an int
    means the same for height and width); anything else is refused."""
    ndim = 0 if isinstance(v, str) else np.ndim(v)
    pair = (v, v) if ndim == 0 else tuple(v) if ndim == 1 else None
    if pair is None or len(pair) != 2 or not all(is_int(i) and i >= low for i in pair):
        raise ConfigError(f"{what} must be an int or a pair of ints >= {low}, got {v!r}")
    return int(pair[0]), int(pair[1])
