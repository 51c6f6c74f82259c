"""Hardmax attention, the zero-temperature (lam -> infinity) limit of softmax attention
(token-sample thread, Result 3 of Bohbot, Letrouit, Peyré, Vialard).

Contract
--------
Score vectors ``a`` (q, dk), keys ``K`` (n, dk), values ``Y`` (n, dv) (default the keys):
``out_i = y_{j*(i)}`` with ``j*(i) = argmax_j <a_i, k_j>`` (the first index on exact ties);
returns ``(out (q, dv), idx (q,))``. Scores are streamed over key chunks (float64), so nothing
of size q x n exists except with ``method="naive"``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from sim.attention.softmax import DEFAULT_CHUNK, _scores
from sim.backend import is_numpy, namespace
from sim.kernels_cpu import run_threads

__all__ = ["hardmax_attention", "HARDMAX_METHODS"]


HARDMAX_METHODS = ("auto", "numba", "stream", "naive")


def hardmax_attention(a, keys, values=None, *, method: str = "auto", chunk: int = DEFAULT_CHUNK):
    """The zero-temperature limit of :func:`softmax_attention`: for every query, the value of
    the key with the largest score ``<a_i, k_j>`` (the first one on exact ties).

    ``a`` (q, dk) score vectors, ``keys`` (n, dk), ``values`` (n, dv) (default the keys).
    Returns ``(out, idx)``: ``out[i] = values[idx[i]]``, ``idx[i] = argmax_j <a_i, k_j>``.
    ``"stream"`` (also ``"auto"``): chunked BLAS scores and a vectorised argmax per chunk,
    any array namespace; ``"numba"``: chunked scores then a scalar running argmax, parallel
    over queries (about 2x slower than stream on 2 cores: the branchy argmax does not
    vectorise); ``"naive"``: the full q x n score matrix (small inputs only)."""
    if method not in HARDMAX_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {HARDMAX_METHODS}")
    values = keys if values is None else values
    if a.ndim != 2 or keys.ndim != 2 or values.ndim != 2:
        raise ValueError("a, keys and values must be 2-D (rows are samples)")
    if a.shape[1] != keys.shape[1] or keys.shape[0] != values.shape[0]:
        raise ValueError("shape mismatch between scores, keys and values")
    if keys.shape[0] == 0:
        raise ValueError("hardmax over zero tokens is undefined")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    xp = namespace(a, keys, values)
    if not (bool(xp.all(xp.isfinite(a))) and bool(xp.all(xp.isfinite(keys)))):
        raise ValueError("attention inputs must be finite")
    if method == "auto":
        method = "stream"
    if method == "naive":
        idx = xp.argmax(a @ keys.T, axis=1)
    elif method == "stream":
        q = a.shape[0]
        best = xp.full((q,), -xp.inf, dtype=xp.float64)
        idx = xp.zeros((q,), dtype=xp.int64)
        for c in range(0, keys.shape[0], chunk):
            s = xp.astype(a, xp.float64) @ xp.astype(keys[c:c + chunk, :], xp.float64).T
            j = xp.argmax(s, axis=1)
            v = xp.max(s, axis=1)
            better = v > best
            idx = xp.where(better, j + c, idx)
            best = xp.where(better, v, best)
    else:
        if not (is_numpy(a) and is_numpy(keys)):
            raise TypeError("method='numba' needs NumPy arrays")
        idx = np.empty(a.shape[0], dtype=np.int64)
        run_threads(_hardmax_idx, np.ascontiguousarray(a, dtype=np.float64),
                    np.ascontiguousarray(keys.T, dtype=np.float64), idx, int(chunk), n_tasks=a.shape[0])
    return values[idx], idx


@njit(nogil=True, cache=True)
def _hardmax_idx(start, stride, a, kt, idx, chunk):
    q = a.shape[0]
    n = kt.shape[1]
    chunk = min(chunk, n)
    for i in range(start, q, stride):
        s = np.empty(chunk)
        ai = a[i]
        best = -np.inf
        bi = 0
        for c in range(0, n, chunk):
            L = min(chunk, n - c)
            _scores(ai, kt, c, L, s)
            for j in range(L):
                if s[j] > best:
                    best = s[j]
                    bi = c + j
        idx[i] = bi
