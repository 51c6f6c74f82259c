"""Shared pieces of :mod:`sim.tensor_attention`: input checks, the softmax scale, the
Khatri-Rao product and the size limits of the engines (see the package docstring)."""
from __future__ import annotations

import functools
import math

from sim.backend import namespace

_NAIVE_MAX = 1 << 22  # entries of the flattened logits allowed in "naive"
_PARALLEL_WORK = 1 << 18  # inner-loop iterations below which a kernel runs on one thread


# ------------------------------------------------------------------------- helpers
def _scale(scale, d: int) -> float:
    s = 1.0 / d if scale is None else float(scale)
    if not math.isfinite(s):
        raise ValueError("the softmax scale must be finite")
    return s


def _check(Q, keys, values, xp):
    if not keys:
        raise ValueError("need at least one key matrix (order k >= 2)")
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} key matrices but {len(values)} value matrices")
    for name, X in (("Q", Q), *((f"K{m + 1}", K) for m, K in enumerate(keys)),
                    *((f"V{m + 1}", V) for m, V in enumerate(values))):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows are tokens)")
        if X.shape[0] == 0 and name != "Q":
            raise ValueError(f"{name} has no rows: attention over zero tokens is undefined")
        if not bool(xp.all(xp.isfinite(X))):
            raise ValueError(f"{name} has non-finite entries")
    d = Q.shape[1]
    dv = values[0].shape[1]
    for m, (K, V) in enumerate(zip(keys, values)):
        if K.shape[1] != d:
            raise ValueError(f"K{m + 1} has dimension {K.shape[1]} but Q has {d}")
        if K.shape[0] != V.shape[0]:
            raise ValueError(f"K{m + 1} and V{m + 1} must have the same number of rows")
        if V.shape[1] != dv:
            raise ValueError("all value matrices must have the same number of columns")
    return d, dv


def khatri_rao(X, Y, order: str = "numpy"):
    """Column-wise Kronecker product ``X ⊘ Y`` (``n1 n2 x d``): row ``j1 n2 + j2`` holds
    ``X[j1] o Y[j2]`` (``order="numpy"``, = ``scipy.linalg.khatri_rao(X, Y)``) or row
    ``j1 + j2 n1`` (``order="paper"``, first index fastest)."""
    xp = namespace(X, Y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError("khatri_rao needs the same number of columns")
    d = X.shape[1]
    if order == "numpy":
        return xp.reshape(X[:, None, :] * Y[None, :, :], (-1, d))
    if order == "paper":
        return xp.reshape(X[None, :, :] * Y[:, None, :], (-1, d))
    raise ValueError("order must be 'numpy' or 'paper'")


def _flatten(mats, order="numpy"):
    return functools.reduce(lambda a, b: khatri_rao(a, b, order), mats)
