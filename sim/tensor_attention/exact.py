"""Exact matrix, tensor and order-k attention (the "numba", "stream", "naive", "loop" and "cuda"
engines of the package docstring); the all-logits helpers for small inputs."""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
from numba import njit

from sim.attention import softmax_attention
from sim.backend import device_engine, engine, is_numpy, namespace
from sim.kernels_cpu import FASTMATH, exp_fast, run_threads

from ._common import _NAIVE_MAX, _PARALLEL_WORK, _check, _flatten, _scale

__all__ = ["EXACT_METHODS", "matrix_attention", "tensor_attention", "kth_order_attention", "tensor_logits",
           "attention_from_logits"]

EXACT_METHODS = ("auto", "numba", "stream", "naive", "loop", "cuda")
_RESCALE_AT = math.exp(300.0)
_EXP_CAP = 400.0
_STREAM_BUDGET = 1 << 22  # float64 scores per stream block (32 MiB)
_LOOP_MAX = 200_000  # (query, tuple) pairs allowed in "loop"


# --------------------------------------------------------------------------- exact
def matrix_attention(Q, K, V, *, scale=None, method: str = "auto"):
    """Exact ``D^{-1} exp(s Q K^T) V`` (k = 2) through :func:`sim.attention.softmax_attention`."""
    xp = namespace(Q, K, V)
    _check(Q, [K], [V], xp)
    s = _scale(scale, Q.shape[1])
    if method == "loop":
        return _loop(Q, [K], [V], s)
    m = {"auto": "auto", "numba": "numba", "stream": "stream", "naive": "naive", "cuda": "cuda"}.get(method)
    if m is None:
        raise ValueError(f"unknown method {method!r}; choose one of {EXACT_METHODS}")
    return softmax_attention(Q * s, K, V, method=m)[0]


def tensor_attention(Q, K1, K2, V1, V2, *, scale=None, method: str = "auto", return_lse: bool = False):
    """Exact tensor (triple-wise) attention, streamed (see the module docstring).

    Returns ``T`` of shape ``(nq, dv)`` (and ``lse = log sum_{j1,j2} exp(logit)`` per query with
    ``return_lse``). For a random subset of query rows pass ``Q[rows]``: queries are independent."""
    return kth_order_attention(Q, [K1, K2], [V1, V2], scale=scale, method=method, return_lse=return_lse)


def kth_order_attention(Q, keys: Sequence, values: Sequence, *, scale=None, method: str = "auto",
                        return_lse: bool = False):
    """Exact order-k attention with ``k - 1 = len(keys)`` key/value matrices."""
    keys, values = list(keys), list(values)
    xp = namespace(Q, *keys, *values)
    _check(Q, keys, values, xp)
    if method not in EXACT_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {EXACT_METHODS}")
    s = _scale(scale, Q.shape[1])
    k = len(keys) + 1
    if method == "auto":
        if is_numpy(Q) and k <= 3:
            method = "numba"
        elif k <= 3 and device_engine("attention.softmax" if k == 2 else "tensor_attention.kth_order",
                                      Q, *keys, *values, dims=(Q.shape[1], values[0].shape[1])):
            method = "cuda"
        else:
            method = "stream"
    if Q.shape[0] == 0:
        out = xp.zeros((0, values[0].shape[1]), dtype=xp.float64)
        return (out, xp.zeros((0,), dtype=xp.float64)) if return_lse else out
    if method == "loop":
        out, lse = _loop(Q, keys, values, s, with_lse=True)
    elif method == "naive":
        size = Q.shape[0] * math.prod(K.shape[0] for K in keys)
        if size > _NAIVE_MAX:
            raise ValueError(f"method='naive' would materialise {size} logits; use 'numba' or 'stream'")
        out, lse = softmax_attention(Q * s, _flatten(keys), _flatten(values), method="naive")
    elif method == "stream":
        out, lse = _stream(Q, keys, values, s, xp)
    elif method == "cuda":
        if k > 3:
            raise ValueError("method='cuda' covers k = 2, 3; use 'stream' for k >= 4")
        out, lse = engine("tensor_attention.kth_order")(Q, keys, values, scale=s, return_lse=True)
    else:  # numba
        if not all(is_numpy(X) for X in (Q, *keys, *values)):
            raise TypeError("method='numba' needs NumPy arrays")
        if k == 2:
            out, lse = softmax_attention(Q * s, keys[0], values[0], method="numba")
        elif k == 3:
            out, lse = _numba_tensor(Q, keys, values, s)
        else:
            raise ValueError("method='numba' covers k = 2, 3; use 'stream' for k >= 4")
    return (out, lse) if return_lse else out


def _loop(Q, keys, values, s, with_lse=False):
    Q = np.asarray(Q, dtype=float)
    keys = [np.asarray(K, dtype=float) for K in keys]
    values = [np.asarray(V, dtype=float) for V in values]
    tuples = list(itertools.product(*(range(K.shape[0]) for K in keys)))
    if Q.shape[0] * len(tuples) > _LOOP_MAX:
        raise ValueError("method='loop' is the tiny-input oracle; use 'numba' or 'stream'")
    d, dv = Q.shape[1], values[0].shape[1]
    out = np.zeros((Q.shape[0], dv))
    lse = np.zeros(Q.shape[0])
    for i in range(Q.shape[0]):
        logits = []
        for J in tuples:
            x = 0.0
            for l in range(d):
                p = Q[i, l]
                for K, j in zip(keys, J):
                    p *= K[j, l]
                x += p
            logits.append(s * x)
        mx = max(logits)
        z = 0.0
        acc = np.zeros(dv)
        for x, J in zip(logits, tuples):
            w = math.exp(x - mx)
            z += w
            v = np.ones(dv)
            for V, j in zip(values, J):
                v = v * V[j]
            acc += w * v
        out[i] = acc / z
        lse[i] = mx + math.log(z)
    return (out, lse) if with_lse else out


def _stream(Q, keys, values, s, xp):
    """Joint online softmax over (prefix tuple, last key) blocks; NumPy or CuPy."""
    Q = xp.astype(Q, xp.float64)
    keys = [xp.astype(K, xp.float64) for K in keys]
    values = [xp.astype(V, xp.float64) for V in values]
    nq, d = Q.shape
    dv = values[0].shape[1]
    K_last, V_last = keys[-1], values[-1]
    n_last = K_last.shape[0]
    pre_sizes = [K.shape[0] for K in keys[:-1]]
    P = math.prod(pre_sizes)  # 1 for k = 2
    c = max(1, min(P, _STREAM_BUDGET // n_last))
    b = max(1, min(nq, _STREAM_BUDGET // (c * n_last)))
    KT = K_last.T
    outs, lses = [], []
    for q0 in range(0, nq, b):
        Qb = Q[q0:min(nq, q0 + b), :] * s
        nb = Qb.shape[0]
        m = xp.full((nb,), -xp.inf, dtype=xp.float64)
        z = xp.zeros((nb,), dtype=xp.float64)
        acc = xp.zeros((nb, dv), dtype=xp.float64)
        for p0 in range(0, P, c):
            pk, pv = _prefix(keys[:-1], values[:-1], pre_sizes, p0, min(P, p0 + c), d, dv, xp)
            L = pk.shape[0]
            A = xp.reshape(Qb[:, None, :] * pk[None, :, :], (nb * L, d))
            S = xp.reshape(A @ KT, (nb, L, n_last))
            m_new = xp.maximum(m, xp.max(xp.reshape(S, (nb, L * n_last)), axis=1))
            r = xp.exp(m - m_new)
            W = xp.exp(S - m_new[:, None, None])
            z = z * r + xp.sum(xp.reshape(W, (nb, L * n_last)), axis=1)
            part = xp.reshape(xp.reshape(W, (nb * L, n_last)) @ V_last, (nb, L, dv))
            acc = acc * r[:, None] + xp.sum(part * pv[None, :, :], axis=1)
            m = m_new
        outs.append(acc / z[:, None])
        lses.append(m + xp.log(z))
    return xp.concat(outs, axis=0), xp.concat(lses, axis=0)


def _prefix(keys, values, sizes, p0, p1, d, dv, xp):
    """Products over the first k-2 key/value matrices for flattened tuples p0..p1-1."""
    if not keys:
        return xp.ones((1, d), dtype=xp.float64), xp.ones((1, dv), dtype=xp.float64)
    idx = np.unravel_index(np.arange(p0, p1), sizes)
    pk = pv = None
    for K, V, ix in zip(keys, values, idx):
        ixa = xp.asarray(ix)
        kk = xp.take(K, ixa, axis=0)
        vv = xp.take(V, ixa, axis=0)
        pk = kk if pk is None else pk * kk
        pv = vv if pv is None else pv * vv
    return pk, pv


def _numba_tensor(Q, keys, values, s):
    a = np.ascontiguousarray(Q, dtype=np.float64) * s
    k1 = np.ascontiguousarray(keys[0], dtype=np.float64)
    k2t = np.ascontiguousarray(np.asarray(keys[1], dtype=np.float64).T)
    v1 = np.ascontiguousarray(values[0], dtype=np.float64)
    v2t = np.ascontiguousarray(np.asarray(values[1], dtype=np.float64).T)
    out = np.empty((a.shape[0], v1.shape[1]))
    lse = np.empty(a.shape[0])
    big = a.shape[0] * k1.shape[0] * k2t.shape[1] >= _PARALLEL_WORK
    run_threads(_tensor_kernel, a, k1, k2t, v1, v2t, out, lse, n_tasks=a.shape[0] if big else 1)
    return out, lse


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _scores_row(p, k2t, out):
    """out[j] = sum_l p[l] k2t[l, j] (k2t stored transposed, rows contiguous)."""
    t = k2t[0]
    p0 = p[0]
    for j in range(out.shape[0]):
        out[j] = p0 * t[j]
    for l in range(1, k2t.shape[0]):
        t = k2t[l]
        pl = p[l]
        for j in range(out.shape[0]):
            out[j] += pl * t[j]


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _exp_sum(s, m):
    total = 0.0
    for j in range(s.shape[0]):
        w = exp_fast(min(s[j] - m, _EXP_CAP))
        s[j] = w
        total += w
    return total


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _dot(x, y):
    acc = 0.0
    for j in range(x.shape[0]):
        acc += x[j] * y[j]
    return acc


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _tensor_kernel(start, stride, a, k1, k2t, v1, v2t, out, lse):
    """T[i] for queries i = start, start + stride, ... (:func:`run_threads`): online softmax
    over (j1, j2), one j1 row at a time."""
    nq, d = a.shape
    n1 = k1.shape[0]
    n2 = k2t.shape[1]
    dv = v1.shape[1]
    for i in range(start, nq, stride):
        s = np.empty(n2)
        p = np.empty(d)
        acc = np.zeros(dv)
        m = 0.0
        z = 0.0
        for j1 in range(n1):
            for l in range(d):
                p[l] = a[i, l] * k1[j1, l]
            _scores_row(p, k2t, s)
            if j1 == 0:
                m = s[0]  # any finite reference score will do to start
            zc = _exp_sum(s, m)
            if zc > _RESCALE_AT:
                # a score far above the reference: move the reference to this row's max,
                # rescale the accumulators and redo the row
                _scores_row(p, k2t, s)
                mx = s[0]
                for j in range(n2):
                    mx = max(mx, s[j])
                r = math.exp(m - mx)
                z *= r
                for l in range(dv):
                    acc[l] *= r
                m = mx
                zc = _exp_sum(s, m)
            z += zc
            for l in range(dv):
                acc[l] += v1[j1, l] * _dot(s, v2t[l])
        for l in range(dv):
            out[i, l] = acc[l] / z
        lse[i] = m + math.log(z)


def tensor_logits(Q, K1, K2, *, scale=None):
    """All logits ``s sum_l Q[i,l] K1[j1,l] K2[j2,l]`` as an ``(nq, n1, n2)`` array (small n)."""
    xp = namespace(Q, K1, K2)
    s = _scale(scale, Q.shape[1])
    if Q.shape[0] * K1.shape[0] * K2.shape[0] > _NAIVE_MAX:
        raise ValueError("tensor_logits materialises nq n1 n2 numbers; too many")
    return xp.einsum("il,jl,kl->ijk", Q * s, K1, K2)


def attention_from_logits(L, V1, V2):
    """Tensor attention from given ``(nq, n1, n2)`` logits: joint softmax over (j1, j2)
    (max-subtracted, so adding a constant to a row of logits changes nothing)."""
    xp = namespace(L, V1, V2)
    m = xp.max(xp.reshape(L, (L.shape[0], -1)), axis=1)
    W = xp.exp(L - m[:, None, None])
    z = xp.sum(xp.reshape(W, (W.shape[0], -1)), axis=1)
    return xp.einsum("ijk,jl,kl->il", W, V1, V2) / z[:, None]
