"""Gradient checking as a tool: the op table's own checks and the checks of a user's code.

:mod:`.gradcheck` checks any function (and every op) numerically and against PyTorch;
:mod:`.layer_classes` checks layer classes with ``forward``/``backward``,
:mod:`.function_pairs` CS231n-style ``X_forward``/``X_backward`` pairs,
:mod:`.mistake_models` names the classic mistakes, :mod:`.user_files` runs a user's file
in the child process that :mod:`.sandbox` supervises, and :mod:`.derivations` writes the
derivations page from the ops' docstrings.
"""
