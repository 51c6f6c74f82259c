"""Self-attention output moments (token-sample thread, part 2; Result 2 of Bohbot, Letrouit,
Peyré, Vialard).

Contract
--------
``tokens`` X of shape ``(n, d)`` (rows are tokens) are queries, keys and value sources at once;
``A`` is the d x d score matrix (softmax scale folded in), ``V`` the d_v x d value matrix
(default I) and ``scales`` s_1..s_S multiply A. For every scale s and token i

    o_i(s) = V sum_j softmax_j( s <A x_i, x_j> ) x_j ,

j over all n tokens (the query among its keys, the paper's protocol) or j != i. The result is
the empirical mean ``(S, d_v)`` and *population* covariance ``(S, d_v, d_v)`` of o_1..o_n,
streamed over (query block x key chunk) tiles: nothing of size n x n exists. The online
softmax bookkeeping (reference score, rescale past e^300, exp cap) is the one of
:mod:`sim.attention.softmax`; see :func:`self_attention_moments` for the implementations.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from sim.attention.softmax import _EXP_CAP, _RESCALE_AT
from sim.backend import device_engine, engine, is_numpy, namespace
from sim.backend import to_numpy as _to_numpy
from sim.kernels_cpu import FASTMATH, exp_fast, run_threads

__all__ = ["self_attention_moments", "SELF_METHODS", "SELF_BLOCK_Q", "SELF_BLOCK_K"]

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
        elif device_engine("attention.self_moments", tokens, dims=(d,)):
            method = "cuda"
        else:  # any other array-API namespace, or a device without a registered engine
            method = "stream"
    if method == "cuda":
        return engine("attention.self_moments")(tokens, A, Vm, sc, exclude_self=exclude_self)
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
