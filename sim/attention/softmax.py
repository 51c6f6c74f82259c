"""Softmax attention of many queries over many tokens, streamed (the foundation of :mod:`sim.attention`).

Contract
--------
Given score vectors ``a`` of shape ``(q, dk)`` (one per query, *already* multiplied by the
query-key matrix and any softmax scale: ``a_i = lam * A x_i``), keys ``K`` of shape
``(n, dk)`` and values ``Y`` of shape ``(n, dv)`` (default: the keys), compute for every query::

    out_i = sum_j softmax_j(<a_i, k_j>) y_j          (shape (q, dv))
    lse_i = log sum_j exp(<a_i, k_j>)                 (shape (q,))

Rows are samples (row-vector layout); the last axis is the feature axis.

Numerics: the softmax is a streaming log-sum-exp over key chunks with float64 accumulators,
so memory is O(q * (dk + dv) + chunk) per thread and nothing of size q x n exists. Scores
may span any finite range (tested up to ``|score| = 1e4``): each query keeps a reference score
``m`` and accumulates ``exp(s - m)``; when a chunk's sum exceeds ``e^300`` the reference is
raised to the chunk maximum and the accumulators rescaled, so nothing overflows, and terms
more than ~708 below the reference underflow to 0, which changes no digit of the result.

Implementations (``method=``):

``"numba"``   the CPU fast path (float64, Numba, threads over queries, vectorised exp; a
              fully fused kernel when d = 2 and values = keys, the token-sample workload);
``"stream"``  the same online softmax written against the array namespace, chunked over
              queries and keys (runs on NumPy or CuPy arrays);
``"naive"``   the obviously-correct reference: materialise the q x n score matrix, subtract
              the row max, exponentiate, normalise. Small inputs only.
``"cuda"``    the device engine ``"attention.softmax"`` of :mod:`sim.backend` (the numba-cuda
              kernel of ``gpu.attention``, registered by importing ``gpu``: float64 accumulators,
              scores and exp in the input dtype), for device (CuPy) arrays or, under the CUDA
              simulator, NumPy arrays; needs ``dk, dv`` within the engine's ``max_dim``;
``"auto"``    ``"numba"`` for NumPy inputs; for a call on the device
              (:func:`sim.backend.device_engine`) ``"cuda"`` when the engine is registered and the
              dimensions fit it, else ``"stream"``; ``"stream"`` for any other array-API namespace.

``precision="float32"`` (numba path only): tokens and score vectors rounded to float32, scores
and weights computed in float32 with the float32 exp of :mod:`sim.kernels_cpu` (twice the SIMD
lanes), each chunk's sums accumulated in float32 and added into float64 accumulators; outputs
agree with float64 to ~1e-7 relative (tests/sim/test_attention.py). ``keys`` may also be a
:class:`sim.attention.stream.TokenStream` (tokens generated inside the kernel).

All three agree to ~1e-14 relative to ``max |y|`` in float64 (tests/sim/test_attention.py).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from sim.backend import device_engine, engine, is_numpy, namespace
from sim.kernels_cpu import FASTMATH, cpu_threads, exp_fast, exp_fast32, run_threads

__all__ = ["softmax_attention", "METHODS", "PRECISIONS", "DEFAULT_CHUNK"]

METHODS = ("auto", "numba", "stream", "naive", "cuda")
PRECISIONS = ("float64", "float32")
DEFAULT_CHUNK = 2048
_RESCALE_AT = math.exp(300.0)
_EXP_CAP = 400.0  # keeps every chunk sum finite (L * e^400 << 1.8e308) before the rescale check
_SERIAL_BELOW = 1 << 18  # multiply-adds below which a call runs on one thread


def softmax_attention(a, keys, values=None, *, method: str = "auto", chunk: int = DEFAULT_CHUNK,
                      precision: str = "float64"):
    """Streaming softmax attention; returns ``(out, lse)`` (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown attention method {method!r}; choose one of {METHODS}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if type(keys).__name__ == "TokenStream":  # tokens generated in the kernel (sim.attention.stream)
        if values is not None or method not in ("auto", "numba"):
            raise ValueError("a token stream is attended with method 'numba' and its tokens as values")
        from sim.attention.stream import stream_attention

        return stream_attention(a, keys, precision=precision)
    if precision == "float32" and method not in ("auto", "numba"):
        raise ValueError("precision='float32' is the numba path's; the other methods are float64")
    values = keys if values is None else values
    if a.ndim != 2 or keys.ndim != 2 or values.ndim != 2:
        raise ValueError("a, keys and values must be 2-D (rows are samples)")
    if a.shape[1] != keys.shape[1]:
        raise ValueError(f"score vectors have dim {a.shape[1]} but keys have dim {keys.shape[1]}")
    if keys.shape[0] != values.shape[0]:
        raise ValueError("keys and values must have the same number of rows")
    if keys.shape[0] == 0:
        raise ValueError("attention over zero tokens is undefined")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    xp = namespace(a, keys, values)
    if not (bool(xp.all(xp.isfinite(a))) and bool(xp.all(xp.isfinite(keys)))
            and (values is keys or bool(xp.all(xp.isfinite(values))))):
        raise ValueError("attention inputs must be finite")
    if method == "auto":
        if is_numpy(a):
            method = "numba"
        elif device_engine("attention.softmax", a, keys, values, dims=(keys.shape[1], values.shape[1])):
            method = "cuda"
        else:  # any other array-API namespace, or a device without a registered engine
            method = "stream"
    if method == "cuda":
        return engine("attention.softmax")(a, keys, values)
    if method == "naive":
        return _naive(a, keys, values, xp)
    if method == "stream":
        return _stream(a, keys, values, xp, chunk)
    if not (is_numpy(a) and is_numpy(keys) and is_numpy(values)):
        raise TypeError("method='numba' needs NumPy arrays")
    dt = np.float32 if precision == "float32" else np.float64
    a_c = np.ascontiguousarray(a, dtype=dt)
    kt = np.ascontiguousarray(keys.T, dtype=dt)
    vt = kt if values is keys else np.ascontiguousarray(values.T, dtype=dt)
    out = np.empty((a.shape[0], values.shape[1]))
    lse = np.empty(a.shape[0])
    # tiny problems run on one thread: handing out work costs more than the work itself
    serial = a.shape[0] * keys.shape[0] * (keys.shape[1] + values.shape[1]) < _SERIAL_BELOW
    f32 = precision == "float32"
    if kt.shape[0] == 2 and vt is kt:
        run_threads(_attend_d2_f32 if f32 else _attend_d2, a_c, kt, out, lse, int(chunk),
                    n_tasks=1 if serial else a.shape[0])
        return out, lse
    qblock = max(1, min(8, a.shape[0] // (4 * cpu_threads())))
    nblocks = -(-a.shape[0] // qblock)
    run_threads(_attend_f32 if f32 else _attend, a_c, kt, vt, out, lse, int(chunk), qblock,
                n_tasks=1 if serial else nblocks)
    return out, lse


# --------------------------------------------------------------------------- reference
def _naive(a, keys, values, xp):
    s = a @ keys.T
    m = xp.max(s, axis=1, keepdims=True)
    w = xp.exp(s - m)
    z = xp.sum(w, axis=1, keepdims=True)
    return (w @ values) / z, m[:, 0] + xp.log(z[:, 0])


# ------------------------------------------------------------------- array-namespace path
def _stream(a, keys, values, xp, chunk):
    """Online softmax over key chunks, for blocks of queries (works for NumPy and CuPy)."""
    q = a.shape[0]
    n = keys.shape[0]
    a = xp.astype(a, xp.float64)
    keys = xp.astype(keys, xp.float64)
    values = xp.astype(values, xp.float64)
    qblock = max(1, min(q, (1 << 22) // max(1, min(chunk, n))))
    outs, lses = [], []
    for q0 in range(0, q, qblock):
        ab = a[q0:min(q0 + qblock, q), :]
        m = xp.full((ab.shape[0],), -xp.inf, dtype=xp.float64)
        z = xp.zeros((ab.shape[0],), dtype=xp.float64)
        acc = xp.zeros((ab.shape[0], values.shape[1]), dtype=xp.float64)
        for c in range(0, n, chunk):
            c1 = min(c + chunk, n)  # explicit stops: the array API leaves overshooting ones undefined
            s = ab @ keys[c:c1, :].T
            m_new = xp.maximum(m, xp.max(s, axis=1))
            scale = xp.exp(m - m_new)
            w = xp.exp(s - m_new[:, None])
            z = z * scale + xp.sum(w, axis=1)
            acc = acc * scale[:, None] + w @ values[c:c1, :]
            m = m_new
        outs.append(acc / z[:, None])
        lses.append(m + xp.log(z))
    return xp.concat(outs, axis=0), xp.concat(lses, axis=0)


# ------------------------------------------------------------------------ Numba fast path
@njit(fastmath=FASTMATH, inline="always", cache=True)
def _scores(ai, kt, c, L, s):
    """s[:L] = <ai, k_j> for the chunk of keys starting at c (keys stored transposed)."""
    t = kt[0, c:c + L]
    a0 = ai[0]
    for j in range(L):
        s[j] = a0 * t[j]
    for k in range(1, kt.shape[0]):
        ak = ai[k]
        t = kt[k, c:c + L]
        for j in range(L):
            s[j] += ak * t[j]


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _exp_shifted_sum(s, L, m):
    """s[:L] <- exp(s[:L] - m); returns the sum."""
    total = 0.0
    for j in range(L):
        w = exp_fast(min(s[j] - m, _EXP_CAP))
        s[j] = w
        total += w
    return total


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _dot(s, t, L):
    acc = 0.0
    for j in range(L):
        acc += s[j] * t[j]
    return acc


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _attend(start, stride, a, kt, vt, out, lse, chunk, qblock):
    """Blocks of ``qblock`` queries (tasks start, start + stride, ... of :func:`run_threads`);
    each block streams the key chunks once, so a chunk stays in cache while every query of the
    block uses it."""
    q = a.shape[0]
    n = kt.shape[1]
    dv = vt.shape[0]
    chunk = min(chunk, n)
    nblocks = (q + qblock - 1) // qblock
    for b in range(start, nblocks, stride):
        i0 = b * qblock
        nb = min(q, i0 + qblock) - i0
        s = np.empty(chunk)
        acc = np.zeros((nb, dv))
        m = np.zeros(nb)
        z = np.zeros(nb)
        for c in range(0, n, chunk):
            L = min(chunk, n - c)
            for ii in range(nb):
                ai = a[i0 + ii]
                _scores(ai, kt, c, L, s)
                if c == 0:
                    m[ii] = s[0]  # reference score: any finite score will do to start
                zc = _exp_shifted_sum(s, L, m[ii])
                if zc > _RESCALE_AT:
                    # a score far above the reference: raise the reference to the chunk
                    # max, rescale what was accumulated, and redo this chunk
                    _scores(ai, kt, c, L, s)
                    mx = s[0]
                    for j in range(L):
                        mx = max(mx, s[j])
                    r = math.exp(m[ii] - mx)
                    z[ii] *= r
                    for k in range(dv):
                        acc[ii, k] *= r
                    m[ii] = mx
                    zc = _exp_shifted_sum(s, L, mx)
                z[ii] += zc
                for k in range(dv):
                    acc[ii, k] += _dot(s, vt[k, c:c + L], L)
        for ii in range(nb):
            for k in range(dv):
                out[i0 + ii, k] = acc[ii, k] / z[ii]
            lse[i0 + ii] = m[ii] + math.log(z[ii])


# ------------------------------------------- d = 2, values = keys: fully fused, in registers
@njit(fastmath=FASTMATH, inline="always", cache=True)
def _chunk_d2(a0, a1, t0, t1, m):
    z = 0.0
    s0 = 0.0
    s1 = 0.0
    for j in range(t0.shape[0]):
        x0 = t0[j]
        x1 = t1[j]
        w = exp_fast(min(a0 * x0 + a1 * x1 - m, _EXP_CAP))
        z += w
        s0 += w * x0
        s1 += w * x1
    return z, s0, s1


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _attend_d2(start, stride, a, kt, out, lse, chunk):
    """The token-sample workload (d = 2, values = keys) with scores, exp and the three
    accumulators fused in one vectorised loop: no intermediate array at all (~1.6x the
    general kernel). Same reference-score / rescale logic as :func:`_attend`; queries
    start, start + stride, ... (:func:`run_threads`)."""
    q = a.shape[0]
    n = kt.shape[1]
    for i in range(start, q, stride):
        a0 = a[i, 0]
        a1 = a[i, 1]
        m = a0 * kt[0, 0] + a1 * kt[1, 0]
        z = 0.0
        s0 = 0.0
        s1 = 0.0
        for c in range(0, n, chunk):
            t0 = kt[0, c:c + chunk]
            t1 = kt[1, c:c + chunk]
            zc, c0, c1 = _chunk_d2(a0, a1, t0, t1, m)
            if zc > _RESCALE_AT:
                mx = a0 * t0[0] + a1 * t1[0]
                for j in range(t0.shape[0]):
                    mx = max(mx, a0 * t0[j] + a1 * t1[j])
                r = math.exp(m - mx)
                z *= r
                s0 *= r
                s1 *= r
                m = mx
                zc, c0, c1 = _chunk_d2(a0, a1, t0, t1, m)
            z += zc
            s0 += c0
            s1 += c1
        out[i, 0] = s0 / z
        out[i, 1] = s1 / z
        lse[i] = m + math.log(z)


# ------------------------------------------------------------------ float32 fast path
# precision="float32": tokens and score vectors rounded to float32, scores and weights computed
# in float32 with the float32 exp (twice the SIMD lanes of float64), each tile's sums (z, the
# weighted values) accumulated in float32 over at most ``chunk`` tokens and added into float64
# accumulators. The reference score and its rescale work as in the float64 kernels, with a
# float32 cap: weights are capped at e^_EXP_CAP32 and a tile whose sum passes e^_RESCALE32
# is redone against the tile's maximum, so nothing overflows float32.
_EXP_CAP32 = np.float32(80.0)
_RESCALE32 = math.exp(60.0)
_F32 = np.float32


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _chunk_d2_f32(a0, a1, t0, t1, m):
    z = _F32(0.0)
    s0 = _F32(0.0)
    s1 = _F32(0.0)
    for j in range(t0.shape[0]):
        x0 = t0[j]
        x1 = t1[j]
        w = exp_fast32(min(a0 * x0 + a1 * x1 - m, _EXP_CAP32))
        z += w
        s0 += w * x0
        s1 += w * x1
    return z, s0, s1


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _attend_d2_f32(start, stride, a, kt, out, lse, chunk):
    """:func:`_attend_d2` with float32 scores, weights and tile sums (``a``, ``kt`` float32);
    tile sums added into float64."""
    q = a.shape[0]
    n = kt.shape[1]
    for i in range(start, q, stride):
        a0 = a[i, 0]
        a1 = a[i, 1]
        m = a0 * kt[0, 0] + a1 * kt[1, 0]
        z = 0.0
        s0 = 0.0
        s1 = 0.0
        for c in range(0, n, chunk):
            t0 = kt[0, c:c + chunk]
            t1 = kt[1, c:c + chunk]
            zc, c0, c1 = _chunk_d2_f32(a0, a1, t0, t1, m)
            if zc > _RESCALE32:
                mx = a0 * t0[0] + a1 * t1[0]
                for j in range(t0.shape[0]):
                    mx = max(mx, a0 * t0[j] + a1 * t1[j])
                r = math.exp(np.float64(m) - np.float64(mx))
                z *= r
                s0 *= r
                s1 *= r
                m = mx
                zc, c0, c1 = _chunk_d2_f32(a0, a1, t0, t1, m)
            z += np.float64(zc)
            s0 += np.float64(c0)
            s1 += np.float64(c1)
        out[i, 0] = s0 / z
        out[i, 1] = s1 / z
        lse[i] = np.float64(m) + math.log(z)


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _scores_f32(ai, kt, c, L, s):
    t = kt[0, c:c + L]
    a0 = ai[0]
    for j in range(L):
        s[j] = a0 * t[j]
    for k in range(1, kt.shape[0]):
        ak = ai[k]
        t = kt[k, c:c + L]
        for j in range(L):
            s[j] += ak * t[j]


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _exp_shifted_sum_f32(s, L, m):
    total = _F32(0.0)
    for j in range(L):
        w = exp_fast32(min(s[j] - m, _EXP_CAP32))
        s[j] = w
        total += w
    return total


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _dot_f32(s, t, L):
    acc = _F32(0.0)
    for j in range(L):
        acc += s[j] * t[j]
    return acc


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _attend_f32(start, stride, a, kt, vt, out, lse, chunk, qblock):
    """:func:`_attend` with float32 scores, weights and tile sums (``a``, ``kt``, ``vt``
    float32); tile sums added into float64 accumulators."""
    q = a.shape[0]
    n = kt.shape[1]
    dv = vt.shape[0]
    chunk = min(chunk, n)
    nblocks = (q + qblock - 1) // qblock
    for b in range(start, nblocks, stride):
        i0 = b * qblock
        nb = min(q, i0 + qblock) - i0
        s = np.empty(chunk, dtype=np.float32)
        acc = np.zeros((nb, dv))
        m = np.zeros(nb, dtype=np.float32)
        z = np.zeros(nb)
        for c in range(0, n, chunk):
            L = min(chunk, n - c)
            for ii in range(nb):
                ai = a[i0 + ii]
                _scores_f32(ai, kt, c, L, s)
                if c == 0:
                    m[ii] = s[0]
                zc = _exp_shifted_sum_f32(s, L, m[ii])
                if zc > _RESCALE32:
                    _scores_f32(ai, kt, c, L, s)
                    mx = s[0]
                    for j in range(L):
                        mx = max(mx, s[j])
                    r = math.exp(np.float64(m[ii]) - np.float64(mx))
                    z[ii] *= r
                    for k in range(dv):
                        acc[ii, k] *= r
                    m[ii] = mx
                    zc = _exp_shifted_sum_f32(s, L, mx)
                z[ii] += np.float64(zc)
                for k in range(dv):
                    acc[ii, k] += np.float64(_dot_f32(s, vt[k, c:c + L], L))
        for ii in range(nb):
            for k in range(dv):
                out[i0 + ii, k] = acc[ii, k] / z[ii]
            lse[i0 + ii] = np.float64(m[ii]) + math.log(z[ii])
