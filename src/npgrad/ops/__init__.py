"""The op table: every op's forward, vector-Jacobian product and derivation, on NumPy arrays.

:mod:`.dense` holds the element-wise, matrix, reduction and shape ops (and the
:class:`~.dense.Op` base class with the registry :data:`~.dense.OPS`), :mod:`.conv`
the image ops (convolution, pooling, batch norm), :mod:`.specs` how each op's check
inputs are drawn. The engine (:mod:`npgrad.autodiff`) records these ops on its tape;
the exercise's layer classes (:mod:`npgrad.layers`) call them directly.
"""
