"""Naive references (materialised scores, sorts, Python loops; small inputs only) and the plain
NumPy baseline of the benchmark.

The references reproduce the fast paths number for number where the fast path is deterministic
(moments, diagnostics, top-k, proxies, coverage, the estimator) and draw for draw where it is
random: they read the same Philox uniforms (:func:`sim.token_selection.kernels.fill_uniforms`)
and turn them into keys by the obvious algorithm (``searchsorted`` on a cumulative sum, a Python
set for sampling without replacement).
"""
from __future__ import annotations

import math

import numpy as np

from sim.token_selection import kernels as K
from sim.token_selection.context import pool_scores

__all__ = [
    "naive_coverage",
    "naive_estimate",
    "naive_importance",
    "naive_moments",
    "naive_proxy",
    "naive_tail",
    "naive_topk",
    "naive_uniform",
    "naive_vattention_budget",
    "numpy_baseline",
    "uniforms",
]


def uniforms(key, i, r, count):
    out = np.empty(count)
    K.fill_uniforms(np.uint64(key[0]), np.uint64(key[1]), i, r, 0, count, out)
    return out


def _softmax(s):
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True)


def naive_moments(a, keys, values):
    """lse, ybar, kappa, score mean and std, Var_p, B_n, G_n from the full (q, n) score matrix."""
    S = a @ keys.T
    mx = S.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(S - mx).sum(axis=1))
    p = np.exp(S - lse[:, None])
    ybar = p @ values
    n = keys.shape[0]
    dev2 = np.sum((values[None] - ybar[:, None]) ** 2, axis=2)
    return {"lse": lse, "ybar": ybar, "kappa": n * np.sum(p * p, axis=1), "score_mean": S.mean(axis=1),
            "score_std": S.std(axis=1), "var_p": np.sum(p * dev2, axis=1), "B": n * np.sum(p * p * dev2, axis=1),
            "G": np.sum(p * np.sqrt(dev2), axis=1)}


def naive_topk(r, k):
    """Indices of the k largest entries of each row of r, ties by lower index, best first."""
    r = np.atleast_2d(r)
    out = []
    for row in r:
        order = np.lexsort((np.arange(row.size), -row))
        out.append(order[:k])
    return np.array(out)


def naive_proxy(window, keys, kernel, mode):
    """log of the pooled mean softmax of the window's score vectors (clamped at -745)."""
    P = _softmax(window @ keys.T).mean(axis=0)
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(pool_scores(P, kernel, mode)), -745.0)


def naive_coverage(r, mass, tau, min_keep, convention):
    """Kept set of the coverage rule for one row: keys sorted by (r ascending, index descending),
    cumulative mass; 'reach': c = #(cum < tau), drop c + 1 (none if c = 0); 'below': drop
    #(cum <= tau)."""
    n = r.size
    order = np.lexsort((-np.arange(n), r))
    cs = np.cumsum(mass[order])
    if convention == "reach":
        c = int(np.sum(cs < tau))
        drop = 0 if c == 0 else c + 1
    else:
        drop = int(np.sum(cs <= tau))
    kept = n - drop
    if kept < min_keep:
        return naive_topk(r, min(min_keep, n))[0], drop
    return np.sort(order[drop:]), drop


def _distinct(key, i, r, N, m):
    """One-at-a-time rejection with the rounds of the fast path's uniform stream."""
    comp = 2 * m > N
    mm = N - m if comp else m
    sel: set = set()
    t = 0
    while len(sel) < mm:
        need = mm - len(sel)
        u = np.empty(need)
        K.fill_uniforms(np.uint64(key[0]), np.uint64(key[1]), i, r, t, need, u)
        t += 4 * ((need + 3) // 4)
        for x in u:
            sel.add(min(int(x * N), N - 1))
    out = sorted(set(range(N)) - sel) if comp else sorted(sel)
    return np.array(out, dtype=np.int64)


def naive_uniform(key, q0, q, reps, n, m, replace):
    idx = np.empty((q, reps, m), dtype=np.int64)
    for i in range(q):
        for r in range(reps):
            if replace:
                idx[i, r] = np.minimum((uniforms(key, q0 + i, r, m) * n).astype(np.int64), n - 1)
            else:
                idx[i, r] = _distinct(key, q0 + i, r, n, m)
    return idx


def naive_importance(key, q0, a, keys, values, reps, m, proposal):
    """Draws by searchsorted on the cumulative proposal; returns (idx (q, reps, m), logw)."""
    S = a @ keys.T
    mom = naive_moments(a, keys, values)
    p = np.exp(S - mom["lse"][:, None])
    if proposal == "p":
        qd = p
    else:
        dev = np.sqrt(np.sum((values[None] - mom["ybar"][:, None]) ** 2, axis=2))
        qd = p * dev / mom["G"][:, None]
    q = a.shape[0]
    idx = np.empty((q, reps, m), dtype=np.int64)
    logw = np.empty((q, reps, m))
    for i in range(q):
        cs = np.cumsum(qd[i])
        for r in range(reps):
            u = uniforms(key, q0 + i, r, m)
            j = np.minimum(np.searchsorted(cs, u, side="right"), np.flatnonzero(qd[i] > 0).max())
            idx[i, r] = j
            logw[i, r] = -np.log(qd[i, j]) - math.log(m)
    return idx, logw


def naive_tail(key, q0, heavy_sorted, n, b, reps, replace):
    """Hybrid selections: heavy keys then b draws from the others (a Python list of the tail)."""
    q, Kh = heavy_sorted.shape
    b = np.broadcast_to(np.asarray(b), (q,))
    M = Kh + int(b.max())
    idx = np.zeros((q, reps, M), dtype=np.int64)
    logw = np.zeros((q, reps, M))
    count = np.zeros((q, reps), dtype=np.int64)
    for i in range(q):
        tail = np.setdiff1d(np.arange(n), heavy_sorted[i])
        nT = tail.size
        for r in range(reps):
            bi = int(b[i])
            if replace:
                ranks = np.minimum((uniforms(key, q0 + i, r, bi) * nT).astype(np.int64), nT - 1)
            else:
                ranks = _distinct(key, q0 + i, r, nT, bi)
            idx[i, r, :Kh] = heavy_sorted[i]
            idx[i, r, Kh:Kh + bi] = tail[ranks]
            logw[i, r, Kh:Kh + bi] = math.log(nT / bi)
            count[i, r] = Kh + bi
    return idx, logw, count


def naive_estimate(a, keys, values, idx, logw, count, reps):
    """(err2, zratio, nerr2, tau), each (q, reps), by Python loops over (query, rep)."""
    mom = naive_moments(a, keys, values)
    q = a.shape[0]
    out = np.empty((4, q, reps))
    for i in range(q):
        for r in range(reps):
            ii = i if idx.shape[0] > 1 else 0
            rr = r if idx.shape[1] > 1 else 0
            M = count[ii, rr]
            j = idx[ii, rr, :M]
            t = keys[j] @ a[i] + logw[ii, rr, :M]
            w = np.exp(t - t.max())
            yhat = w @ values[j] / w.sum()
            e = np.exp(t - mom["lse"][i])
            out[0, i, r] = np.sum((yhat - mom["ybar"][i]) ** 2)
            out[1, i, r] = e.sum()
            out[2, i, r] = np.sum((e @ values[j] - mom["ybar"][i]) ** 2)
            u = np.unique(j)
            out[3, i, r] = max(0.0, 1.0 - np.exp(keys[u] @ a[i] - mom["lse"][i]).sum())
    return out


def naive_vattention_budget(a, keys, values, heavy_sorted, eps, delta_z, mode, rounding="floor"):
    """b per query from the materialised residual (Bessel-corrected standard deviations)."""
    mom = naive_moments(a, keys, values)
    S = a @ keys.T
    p = np.exp(S - mom["lse"][:, None])
    n = keys.shape[0]
    b = []
    for i in range(a.shape[0]):
        res = np.setdiff1d(np.arange(n), heavy_sorted[i])
        ns = res.size
        if mode == "denominator":
            sd = p[i, res].std(ddof=1)
            tol = eps
        else:
            x = p[i, res, None] * values[res]
            sd = math.sqrt(np.sum(x.var(axis=0, ddof=1)))
            tol = eps * np.linalg.norm(mom["ybar"][i])
        raw = (delta_z * ns * sd / tol) ** 2
        b.append(int(np.clip(np.floor(raw) if rounding == "floor" else np.ceil(raw), 1, ns)))
    return np.array(b)


def numpy_baseline(a, keys, values, *, m, k1, b, reps, rng, chunk=16):
    """The plain NumPy version of the main measurements (for throughput comparisons): per query,
    the full score row, softmax, output; squared errors of uniform sampling (m draws with
    replacement), importance sampling from p (m draws), exact top-m, and the hybrid (top-k1 +
    b draws). Returns err2 of shape (4, q, reps)."""
    q, n = a.shape[0], keys.shape[0]
    out = np.empty((4, q, reps))
    for c0 in range(0, q, chunk):
        A = a[c0:c0 + chunk]
        S = A @ keys.T
        mx = S.max(axis=1, keepdims=True)
        W = np.exp(S - mx)
        Z = W.sum(axis=1, keepdims=True)
        P = W / Z
        ybar = P @ values
        for ii in range(A.shape[0]):
            i = c0 + ii
            s, p, yb = S[ii], P[ii], ybar[ii]
            # uniform
            J = rng.integers(0, n, (reps, m))
            w = np.exp(s[J] - mx[ii])
            out[0, i] = np.sum((np.einsum("rm,rmk->rk", w, values[J]) / w.sum(1, keepdims=True) - yb) ** 2, axis=1)
            # importance from p
            J = np.minimum(np.searchsorted(np.cumsum(p), rng.random((reps, m))), n - 1)
            out[1, i] = np.sum((values[J].mean(axis=1) - yb) ** 2, axis=1)
            # top-m
            top = np.argpartition(-s, m - 1)[:m]
            out[2, i] = np.sum((p[top] @ values[top] / p[top].sum() - yb) ** 2)
            # hybrid
            heavy = np.argpartition(-s, k1 - 1)[:k1]
            mask = np.ones(n, bool)
            mask[heavy] = False
            tail = np.flatnonzero(mask)
            J = tail[rng.integers(0, tail.size, (reps, b))]
            wt = np.exp(s[J] - mx[ii]) * (tail.size / b)
            num = (W[ii, heavy] @ values[heavy])[None] + np.einsum("rb,rbk->rk", wt, values[J])
            den = W[ii, heavy].sum() + wt.sum(1, keepdims=True)
            out[3, i] = np.sum((num / den - yb) ** 2, axis=1)
    return out
