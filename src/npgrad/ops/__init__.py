"""The op table: every op's forward, vector-Jacobian product and derivation, on NumPy arrays.

:mod:`.base` is what every op shares (the :class:`~.base.Op` class, the registry
:data:`~.base.OPS`, :func:`~.base.call` and the engine's one hook), :mod:`.dense` the
element-wise, matrix, reduction and shape ops, :mod:`.conv` the image ops (convolution,
pooling, batch norm), :mod:`.geometry` the checks of their arguments, :mod:`.specs` how
each op's check inputs are drawn. Nothing here imports the engine: :mod:`npgrad.autodiff`
records these ops on its tape, the exercise's layer classes (:mod:`npgrad.layers`) call
them directly.
"""

from . import base, conv, dense, geometry, specs  # every op module, named: each registers its ops

__all__ = ["base", "conv", "dense", "geometry", "specs"]
