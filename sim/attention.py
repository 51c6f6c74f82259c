"""Softmax attention of many queries over many tokens, streamed.

Contract
--------
Given score vectors ``a`` of shape ``(q, dk)`` (one per query, *already* multiplied by the
query-key matrix and any softmax scale: ``a_i = lam * A x_i``), keys ``K`` of shape
``(n, dk)`` and values ``Y`` of shape ``(n, dv)`` (default: the keys), compute for every query

    out_i = sum_j softmax_j(<a_i, k_j>) y_j          (shape (q, dv))
    lse_i = log sum_j exp(<a_i, k_j>)                 (shape (q,))

Rows are samples (row-vector layout); the last axis is the feature axis.

Numerics: the softmax is a streaming log-sum-exp over key chunks with float64 accumulators,
so memory is O(q * (dk + dv) + chunk) per thread and nothing of size q x n exists. Scores
may span any finite range (tested up to |score| = 1e4): each query keeps a reference score
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
``"cuda"``    the numba-cuda kernel of :mod:`gpu.attention` (float64 accumulators; scores and
              exp in the input dtype), for device (CuPy) arrays or, under the CUDA simulator,
              NumPy arrays; needs ``dk, dv <= gpu.attention.MAX_DIM``;
``"auto"``    ``"numba"`` for NumPy inputs; for device arrays (``__cuda_array_interface__``)
              ``"cuda"`` when the dimensions fit the kernel, else ``"stream"``; ``"stream"`` for
              any other array-API namespace.

All three agree to ~1e-14 relative to ``max |y|`` in float64 (tests/sim/test_attention.py).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from sim.backend import is_numpy, namespace
from sim.kernels_cpu import FASTMATH, cpu_threads, exp_fast, run_threads

__all__ = ["softmax_attention", "METHODS", "DEFAULT_CHUNK"]

METHODS = ("auto", "numba", "stream", "naive", "cuda")
DEFAULT_CHUNK = 2048
_RESCALE_AT = math.exp(300.0)
_EXP_CAP = 400.0  # keeps every chunk sum finite (L * e^400 << 1.8e308) before the rescale check
_SERIAL_BELOW = 1 << 18  # multiply-adds below which a call runs on one thread


def softmax_attention(a, keys, values=None, *, method: str = "auto", chunk: int = DEFAULT_CHUNK):
    """Streaming softmax attention; returns ``(out, lse)`` (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown attention method {method!r}; choose one of {METHODS}")
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
        elif hasattr(a, "__cuda_array_interface__"):  # device arrays (CuPy)
            from gpu.attention import MAX_DIM

            method = "cuda" if max(keys.shape[1], values.shape[1]) <= MAX_DIM else "stream"
        else:  # any other array-API namespace
            method = "stream"
    if method == "cuda":
        from gpu.attention import softmax_attention as cuda_attention

        return cuda_attention(a, keys, values)
    if method == "naive":
        return _naive(a, keys, values, xp)
    if method == "stream":
        return _stream(a, keys, values, xp, chunk)
    if not (is_numpy(a) and is_numpy(keys) and is_numpy(values)):
        raise TypeError("method='numba' needs NumPy arrays")
    a64 = np.ascontiguousarray(a, dtype=np.float64)
    kt = np.ascontiguousarray(keys.T, dtype=np.float64)
    vt = kt if values is keys else np.ascontiguousarray(values.T, dtype=np.float64)
    out = np.empty((a.shape[0], values.shape[1]))
    lse = np.empty(a.shape[0])
    # tiny problems run on one thread: handing out work costs more than the work itself
    serial = a.shape[0] * keys.shape[0] * (keys.shape[1] + values.shape[1]) < _SERIAL_BELOW
    if kt.shape[0] == 2 and vt is kt:
        run_threads(_attend_d2, a64, kt, out, lse, int(chunk), n_tasks=1 if serial else a.shape[0])
        return out, lse
    qblock = max(1, min(8, a.shape[0] // (4 * cpu_threads())))
    nblocks = -(-a.shape[0] // qblock)
    run_threads(_attend, a64, kt, vt, out, lse, int(chunk), qblock, n_tasks=1 if serial else nblocks)
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


# =============================================================================================
# Self-attention output moments (token-sample thread, part 2). Self-contained section:
# queries = keys = value sources, several softmax scales at once, mean and covariance of the
# n outputs streamed over (query block x key chunk) tiles; nothing of size n x n exists.
# =============================================================================================
from sim.backend import to_numpy as _to_numpy  # noqa: E402

__all__ += ["self_attention_moments", "hardmax_attention", "SELF_METHODS", "HARDMAX_METHODS"]

SELF_METHODS = ("auto", "numba", "stream", "naive", "cuda")
SELF_BLOCK_Q = 1024  # queries per block (numba: a parallel kernel call per block)
SELF_BLOCK_K = 512  # keys per chunk (numba: two 4 x 512 buffers per thread stay in L1)


def self_attention_moments(tokens, A, V=None, scales=(1.0,), *, exclude_self: bool = False,
                           method: str = "auto", block_q: int = SELF_BLOCK_Q,
                           block_k: int = SELF_BLOCK_K):
    r"""Mean and covariance of the self-attention outputs of ``tokens``, for several scales.

    Contract: ``tokens`` X has shape ``(n, d)`` (rows are tokens), ``A`` is the d x d score
    matrix (softmax scale folded in), ``V`` the d_v x d value matrix (default I) and
    ``scales`` s_1..s_S multiply A. For every scale s and token i

        o_i(s) = V sum_j softmax_j( s <A x_i, x_j> ) x_j ,

    j running over all n tokens (the query is among its keys, as in the paper's protocol) or
    over j != i with ``exclude_self=True``. Returns ``(mean, cov)`` of shapes ``(S, d_v)`` and
    ``(S, d_v, d_v)``: the empirical mean and the *population* covariance (divide by n) of
    o_1..o_n, i.e. the first two moments of the transformed empirical measure nu_n.

    Methods: ``"numba"`` (NumPy only, the CPU fast path: one parallel Numba kernel per block
    of ``block_q`` queries, fully fused: for each group of 4 queries and each chunk of
    ``block_k`` keys, the scores <A x_i, x_j> in 4 x 4 register tiles (computed once, shared by
    all scales, since s only rescales them), then per scale the exponentials with the online
    softmax bookkeeping and the weighted value sums in 4 x 4 register tiles; float64
    throughout; memory O(n d + S * block_q * d), no BLAS call in the loop, so no thread fight
    between BLAS and Numba); ``"stream"`` (the same online softmax in array-namespace code on
    (S, block_q, block_k) tiles, NumPy or CuPy); ``"naive"`` (materialise the n x n scores per
    scale: small inputs only, the reference of the tests); ``"auto"`` = numba for NumPy input,
    stream otherwise. Per-block output moments are merged with Chan's pairwise
    update, so the covariance is accurate even when the outputs share a large mean.
    """
    if method not in SELF_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {SELF_METHODS}")
    if tokens.ndim != 2:
        raise ValueError("tokens must be 2-D (n, d)")
    n, d = tokens.shape
    xp = namespace(tokens)
    A = np.asarray(_to_numpy(A), dtype=np.float64)
    if A.shape != (d, d):
        raise ValueError(f"A must be {d} x {d}, got {A.shape}")
    Vm = None if V is None else np.asarray(_to_numpy(V), dtype=np.float64)
    if Vm is not None and (Vm.ndim != 2 or Vm.shape[1] != d):
        raise ValueError(f"V must have shape (d_v, {d})")
    sc = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    if sc.ndim != 1 or sc.size == 0 or not np.all(np.isfinite(sc)):
        raise ValueError("scales must be a non-empty 1-D array of finite numbers")
    if n < (2 if exclude_self else 1):
        raise ValueError("self-attention needs at least one key per query")
    if block_q < 1 or block_k < 1:
        raise ValueError("block sizes must be >= 1")
    if not bool(xp.all(xp.isfinite(tokens))) or not np.all(np.isfinite(A)):
        raise ValueError("attention inputs must be finite")
    if method == "auto":
        if is_numpy(tokens):
            method = "numba"
        elif hasattr(tokens, "__cuda_array_interface__"):  # device arrays (CuPy)
            from gpu.attention import MAX_DIM

            method = "cuda" if d <= MAX_DIM else "stream"
        else:  # any other array-API namespace
            method = "stream"
    if method == "cuda":
        from gpu.attention import self_attention_moments as cuda_moments

        return cuda_moments(tokens, A, Vm, sc, exclude_self=exclude_self)
    if method == "numba":
        if not is_numpy(tokens):
            raise TypeError("method='numba' needs NumPy arrays")
        mean, cov = _self_moments_numba(np.ascontiguousarray(tokens, dtype=np.float64), A, sc,
                                        bool(exclude_self), int(block_q), int(block_k))
    elif method == "stream":
        mean, cov = _self_moments_stream(tokens, A, sc, bool(exclude_self), int(block_q),
                                         int(block_k), xp)
    else:
        mean, cov = _self_moments_naive(tokens, A, sc, bool(exclude_self), xp)
    if Vm is not None:
        Vx = xp.asarray(Vm)
        mean = mean @ Vx.T
        cov = Vx @ cov @ Vx.T
    return mean, cov


def _chan_merge(count, mean, m2, o, xp):
    """Fold the outputs ``o`` (S, nb, d) into running (count, mean (S, d), M2 (S, d, d))."""
    nb = o.shape[1]
    mb = xp.mean(o, axis=1)
    oc = o - mb[:, None, :]
    # one BLAS product per scale (a batched matmul over a transposed view is not BLAS)
    m2b = xp.stack([oc[k, ...].T @ oc[k, ...] for k in range(o.shape[0])])
    tot = count + nb
    delta = mb - mean
    mean = mean + delta * (nb / tot)
    m2 = m2 + m2b + (delta[:, :, None] * delta[:, None, :]) * (count * nb / tot)
    return tot, mean, m2


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _self_exp_run(s, e, scale, ref, lo, hi):
    """e[j] = exp(scale * s[j] - ref) for lo <= j < hi (capped); returns their sum."""
    tot = 0.0
    for j in range(lo, hi):
        w = exp_fast(min(scale * s[j] - ref, _EXP_CAP))
        e[j] = w
        tot += w
    return tot


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _self_row(s, e, scale, ref, js):
    """Row exponentials with the self entry ``js`` (if inside the row) left out and zeroed."""
    L = s.shape[0]
    if 0 <= js < L:
        e[js] = 0.0
        return _self_exp_run(s, e, scale, ref, 0, js) + _self_exp_run(s, e, scale, ref, js + 1, L)
    return _self_exp_run(s, e, scale, ref, 0, L)


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _self_max(s, scale, js):
    mx = -1e308
    for j in range(s.shape[0]):
        if j != js:
            mx = max(mx, scale * s[j])
    return mx


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _self_scores4(q0r, q1r, q2r, q3r, Xp, c, Lc, s):
    """s[r, j] = <q_r, x_{c+j}> for 4 query rows and Lc keys; 4 x 4 register tiles of dot
    products over the (padded) feature axis, then a 4 x 1 loop for the last Lc % 4 keys."""
    dp = q0r.shape[0]
    L4 = Lc - Lc % 4
    for j in range(0, L4, 4):
        x0 = Xp[c + j]
        x1 = Xp[c + j + 1]
        x2 = Xp[c + j + 2]
        x3 = Xp[c + j + 3]
        t00 = t01 = t02 = t03 = t10 = t11 = t12 = t13 = 0.0
        t20 = t21 = t22 = t23 = t30 = t31 = t32 = t33 = 0.0
        for k in range(dp):
            a0 = q0r[k]
            a1 = q1r[k]
            a2 = q2r[k]
            a3 = q3r[k]
            y0 = x0[k]
            y1 = x1[k]
            y2 = x2[k]
            y3 = x3[k]
            t00 += a0 * y0
            t01 += a0 * y1
            t02 += a0 * y2
            t03 += a0 * y3
            t10 += a1 * y0
            t11 += a1 * y1
            t12 += a1 * y2
            t13 += a1 * y3
            t20 += a2 * y0
            t21 += a2 * y1
            t22 += a2 * y2
            t23 += a2 * y3
            t30 += a3 * y0
            t31 += a3 * y1
            t32 += a3 * y2
            t33 += a3 * y3
        s[0, j] = t00
        s[0, j + 1] = t01
        s[0, j + 2] = t02
        s[0, j + 3] = t03
        s[1, j] = t10
        s[1, j + 1] = t11
        s[1, j + 2] = t12
        s[1, j + 3] = t13
        s[2, j] = t20
        s[2, j + 1] = t21
        s[2, j + 2] = t22
        s[2, j + 3] = t23
        s[3, j] = t30
        s[3, j + 1] = t31
        s[3, j + 2] = t32
        s[3, j + 3] = t33
    for j in range(L4, Lc):
        x = Xp[c + j]
        t0 = t1 = t2 = t3 = 0.0
        for k in range(dp):
            xk = x[k]
            t0 += q0r[k] * xk
            t1 += q1r[k] * xk
            t2 += q2r[k] * xk
            t3 += q3r[k] * xk
        s[0, j] = t0
        s[1, j] = t1
        s[2, j] = t2
        s[3, j] = t3


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _self_accumulate4(e, XT, c, Lc, a):
    """a[r, k] += sum_j e[r, j] x_{c+j, k} for 4 rows: 4 x 4 register tiles (rows x features),
    vectorised over the keys j (pre-sliced contiguous rows of X^T)."""
    dp = XT.shape[0]
    e0 = e[0, :Lc]
    e1 = e[1, :Lc]
    e2 = e[2, :Lc]
    e3 = e[3, :Lc]
    for k in range(0, dp, 4):
        x0 = XT[k, c:c + Lc]
        x1 = XT[k + 1, c:c + Lc]
        x2 = XT[k + 2, c:c + Lc]
        x3 = XT[k + 3, c:c + Lc]
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = 0.0
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = 0.0
        for j in range(Lc):
            f0 = e0[j]
            f1 = e1[j]
            f2 = e2[j]
            f3 = e3[j]
            y0 = x0[j]
            y1 = x1[j]
            y2 = x2[j]
            y3 = x3[j]
            a00 += f0 * y0
            a01 += f0 * y1
            a02 += f0 * y2
            a03 += f0 * y3
            a10 += f1 * y0
            a11 += f1 * y1
            a12 += f1 * y2
            a13 += f1 * y3
            a20 += f2 * y0
            a21 += f2 * y1
            a22 += f2 * y2
            a23 += f2 * y3
            a30 += f3 * y0
            a31 += f3 * y1
            a32 += f3 * y2
            a33 += f3 * y3
        a[0, k] += a00
        a[0, k + 1] += a01
        a[0, k + 2] += a02
        a[0, k + 3] += a03
        a[1, k] += a10
        a[1, k + 1] += a11
        a[1, k + 2] += a12
        a[1, k + 3] += a13
        a[2, k] += a20
        a[2, k + 1] += a21
        a[2, k + 2] += a22
        a[2, k + 3] += a23
        a[3, k] += a30
        a[3, k + 1] += a31
        a[3, k + 2] += a32
        a[3, k + 3] += a33


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _self_fused(start, stride, Qp, Xp, XT, scales, q0, n_rows, excl, L, out):
    """Outputs of one block of queries at every scale, fully fused (no BLAS, no n x n).

    ``Qp`` (nbp, dp): the block's score vectors q_i = A x_i, rows padded to a multiple of 4
    (padded rows are computed and discarded), features padded with zeros to a multiple of 4;
    ``Xp`` (n, dp) the tokens and ``XT`` (dp, n) their transpose, equally padded; row ``r`` of
    the block is token ``q0 + r`` (for the self exclusion); ``out`` (S, nbp, dp) receives
    o = sum_j softmax_j(scale <q, x_j>) x_j. Parallel over groups of 4 queries; each group
    streams the keys in chunks of ``L``: scores (4 x 4 register tiles), then per scale the
    online softmax of :func:`_self_row` (reference = the first chunk's maximum, rescale when a
    chunk's sum passes e^300) and the weighted sum (4 x 4 register tiles); float64 throughout."""
    nbp, dp = Qp.shape
    n = Xp.shape[0]
    ns = scales.shape[0]
    for g in range(start, nbp // 4, stride):
        r0 = 4 * g
        s = np.empty((4, L))
        e = np.empty((4, L))
        m = np.zeros((ns, 4))
        z = np.zeros((ns, 4))
        acc = np.zeros((ns, 4, dp))
        for c in range(0, n, L):
            Lc = min(L, n - c)
            _self_scores4(Qp[r0], Qp[r0 + 1], Qp[r0 + 2], Qp[r0 + 3], Xp, c, Lc, s)
            for si in range(ns):
                sc = scales[si]
                for r in range(4):
                    row = q0 + r0 + r
                    js = row - c if (excl and row < n_rows) else -1
                    sr = s[r, :Lc]
                    er = e[r, :Lc]
                    if c == 0:
                        m[si, r] = _self_max(sr, sc, js)
                    tot = _self_row(sr, er, sc, m[si, r], js)
                    if tot > _RESCALE_AT:
                        mx = _self_max(sr, sc, js)
                        rr = math.exp(m[si, r] - mx)
                        z[si, r] *= rr
                        for k in range(dp):
                            acc[si, r, k] *= rr
                        m[si, r] = mx
                        tot = _self_row(sr, er, sc, mx, js)
                    z[si, r] += tot
                _self_accumulate4(e, XT, c, Lc, acc[si])
        for si in range(ns):
            for r in range(4):
                inv = 1.0 / z[si, r]
                for k in range(dp):
                    out[si, r0 + r, k] = acc[si, r, k] * inv


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _block_moments(o, nb, d, mean_out, m2_out):
    """Means and centred comoments sum_r (o_r - mean)(o_r - mean)^T of the first ``nb`` rows
    and ``d`` features of the outputs o (S, nbp, dp), into mean_out (S, d), m2_out (S, d, d)."""
    ns = o.shape[0]
    oc = np.empty(d)
    for k in range(ns):
        for c in range(d):
            mean_out[k, c] = 0.0
        for r in range(nb):
            for c in range(d):
                mean_out[k, c] += o[k, r, c]
        for c in range(d):
            mean_out[k, c] /= nb
        for i in range(d):
            for j in range(d):
                m2_out[k, i, j] = 0.0
        for r in range(nb):
            for c in range(d):
                oc[c] = o[k, r, c] - mean_out[k, c]
            for i in range(d):
                oi = oc[i]
                row = m2_out[k, i]
                for j in range(d):
                    row[j] += oi * oc[j]


def _self_blocks(n: int, ns: int, block_q: int, block_k: int) -> tuple[int, int]:
    """Tile sizes of the array-namespace path: ns x bq x bk scores stay under 4 M doubles."""
    bk = min(block_k, n)
    bq = max(16, min(block_q, (1 << 22) // max(1, ns * bk)))
    return min(bq, n), bk


def _self_moments_numba(X, A, scales, excl, block_q, block_k):
    n, d = X.shape
    ns = scales.size
    dp = (d + 3) // 4 * 4
    Xp = np.zeros((n, dp))
    Xp[:, :d] = X
    XT = np.ascontiguousarray(Xp.T)
    Q = np.zeros((n, dp))
    Q[:, :d] = X @ A.T  # q_i = A x_i: unscaled scores <q_i, x_j>
    bq = max(4, min(block_q, n))
    L = max(4, min(block_k, n))
    count, mean, m2 = 0, np.zeros((ns, d)), np.zeros((ns, d, d))
    mb = np.empty((ns, d))
    m2b = np.empty((ns, d, d))
    for q0 in range(0, n, bq):
        nb = min(bq, n - q0)
        nbp = (nb + 3) // 4 * 4
        Qp = np.empty((nbp, dp))
        Qp[:nb] = Q[q0:q0 + nb]
        Qp[nb:] = Q[q0]
        o = np.empty((ns, nbp, dp))
        run_threads(_self_fused, Qp, Xp, XT, scales, q0, n, excl, L, o, n_tasks=nbp // 4)
        _block_moments(o, nb, d, mb, m2b)
        tot = count + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta[:, :, None] * delta[:, None, :] * (count * nb / tot)
        count = tot
    return mean, m2 / n


def _self_moments_stream(X, A, scales, excl, block_q, block_k, xp):
    n, d = X.shape
    ns = scales.size
    X = xp.astype(X, xp.float64)
    Q = X @ xp.asarray(A).T
    count = 0
    mean = xp.zeros((ns, d), dtype=xp.float64)
    m2 = xp.zeros((ns, d, d), dtype=xp.float64)
    sc = xp.asarray(scales)[:, None, None]
    block_q, block_k = _self_blocks(n, ns, block_q, block_k)
    for q0 in range(0, n, block_q):
        Qb = Q[q0:q0 + block_q, :]
        nb = Qb.shape[0]
        m = xp.full((ns, nb), -xp.inf, dtype=xp.float64)
        z = xp.zeros((ns, nb), dtype=xp.float64)
        acc = xp.zeros((ns, nb, d), dtype=xp.float64)
        rows = xp.arange(nb)
        for c in range(0, n, block_k):
            Xc = X[c:c + block_k, :]
            L = Xc.shape[0]
            s = sc * (Qb @ Xc.T)[None, :, :]  # (S, nb, L)
            if excl:
                cols = rows + (q0 - c)
                hit = (cols >= 0) & (cols < L)
                mask = xp.zeros((nb, L), dtype=xp.bool)
                mask[rows[hit], cols[hit]] = True
                s = xp.where(mask[None, :, :], -xp.inf, s)
            m_new = xp.maximum(m, xp.max(s, axis=2))
            ref = xp.where(xp.isfinite(m_new), m_new, 0.0)
            alpha = xp.where(xp.isfinite(m), xp.exp(m - ref), 0.0)
            w = xp.exp(s - ref[:, :, None])
            z = z * alpha + xp.sum(w, axis=2)
            acc = acc * alpha[:, :, None] + xp.matmul(w, Xc[None, :, :])
            m = m_new
        count, mean, m2 = _chan_merge(count, mean, m2, acc / z[:, :, None], xp)
    return mean, m2 / n


def _self_moments_naive(X, A, scales, excl, xp):
    """The obviously-correct reference: the full n x n score matrix for every scale."""
    n, d = X.shape
    X = xp.astype(X, xp.float64)
    base = (X @ xp.asarray(A).T) @ X.T
    means, covs = [], []
    for s in scales.tolist():
        S = s * base
        if excl:
            S = xp.where(xp.eye(n, dtype=xp.bool), -xp.inf, S)
        P = xp.exp(S - xp.max(S, axis=1, keepdims=True))
        O = (P @ X) / xp.sum(P, axis=1, keepdims=True)
        mu = xp.mean(O, axis=0)
        Oc = O - mu
        means.append(mu)
        covs.append(Oc.T @ Oc / n)
    return xp.stack(means), xp.stack(covs)


# ------------------------------------------------------------- hardmax (lam -> infinity) limit
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
