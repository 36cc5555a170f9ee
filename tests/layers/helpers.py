"""A helper module beside a student's layer file (npgrad check must let it be imported)."""

import numpy as np


def softmax_jacobian(s):
    """(N, c) softmax outputs -> (N, c, c) Jacobians diag(s) - s s^T."""
    return np.einsum("ij,jk->ijk", s, np.eye(s.shape[1])) - np.einsum("ij,ik->ijk", s, s)
