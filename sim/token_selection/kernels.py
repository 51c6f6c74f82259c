"""Numba kernels of the token-selection thread (see the package docstring for the contract).

Every parallel kernel is a serial, GIL-free loop over tasks ``start, start + stride, ...``
(:func:`sim.kernels_cpu.run_threads`) that writes only its own tasks' outputs, so its numbers do
not depend on the thread count. Tokens come in blocks ``kt`` (d, L) and ``vt`` (dv, L)
(feature-major, each row contiguous, so loops over tokens vectorise); per-query running states
are merged block by block in block order.

Random numbers: uniform number t of the stream (query i, repetition r) of a policy with Philox
key (k0, k1) is the top 52 bits of word ``t % 4`` of Philox4x64-10 at counter
``(t // 4, i, r, SELECT_WORD)`` (:func:`fill_uniforms`): a pure function of (key, i, r, t).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from sim.attention.stream import STREAM_COUNTER
from sim.kernels_cpu import FASTMATH, exp_fast
from sim.philox import box_muller, philox4x64, uniform53

SELECT_WORD = 0x5E1EC7  # the fourth Philox counter word of selection draws
_U64 = np.uint64
_NJ = {"fastmath": FASTMATH, "nogil": True, "cache": True}
_NJI = {"fastmath": FASTMATH, "inline": "always", "cache": True}


# --------------------------------------------------------------------------- randomness
@njit(**_NJ)
def fill_uniforms(k0, k1, i, r, t0, count, out):
    """out[:count] = uniforms t0 .. t0 + count - 1 of stream (i, r); t0 must be a multiple of 4."""
    c = t0 // 4
    t = 0
    word = _U64(SELECT_WORD)
    ii = _U64(i)
    rr = _U64(r)
    while t < count:
        w0, w1, w2, w3 = philox4x64(_U64(c), ii, rr, word, k0, k1)
        out[t] = uniform53(w0)
        if t + 1 < count:
            out[t + 1] = uniform53(w1)
        if t + 2 < count:
            out[t + 2] = uniform53(w2)
        if t + 3 < count:
            out[t + 3] = uniform53(w3)
        t += 4
        c += 1


# ---------------------------------------------------------------------- stream tokens
@njit(**_NJI)
def stream_token(k0, k1, j, d, sphere, scale, out):
    """Token j of a :class:`sim.attention.TokenStream` (its documented layout: normal number
    ``j d + t`` is word ``(j d + t) % 4`` of counter ``(j d + t) // 4``, Box-Muller on word pairs
    (0, 1) and (2, 3)); sphere tokens are rescaled to length ``scale``."""
    g0 = j * d
    c = g0 // 4
    k = g0 - 4 * c
    cw = _U64(STREAM_COUNTER)
    zero = _U64(0)
    t = 0
    while t < d:
        a, b, e, f = philox4x64(_U64(c), zero, zero, cw, k0, k1)
        n0, n1 = box_muller(a, b)
        n2, n3 = box_muller(e, f)
        while k < 4 and t < d:
            if k == 0:
                out[t] = n0
            elif k == 1:
                out[t] = n1
            elif k == 2:
                out[t] = n2
            else:
                out[t] = n3
            k += 1
            t += 1
        k = 0
        c += 1
    if sphere:
        rr = 0.0
        for t in range(d):
            rr += out[t] * out[t]
        rr = scale / math.sqrt(rr)
        for t in range(d):
            out[t] *= rr
    else:
        for t in range(d):
            out[t] *= scale


@njit(**_NJ)
def stream_tokens(k0, k1, idx, d, sphere, scale, out):
    """out[m] = token idx[m] (out: (len(idx), d)); the reference of the per-index generator."""
    for m in range(idx.shape[0]):
        stream_token(k0, k1, idx[m], d, sphere, scale, out[m])


# ------------------------------------------------------------------------- block passes
@njit(**_NJI)
def _scores(a, i, kt, L, s):
    """s[:L] = <a_i, k_j> for the block's tokens (kt feature-major)."""
    t = kt[0]
    a0 = a[i, 0]
    for j in range(L):
        s[j] = a0 * t[j]
    for k in range(1, kt.shape[0]):
        ak = a[i, k]
        t = kt[k]
        for j in range(L):
            s[j] += ak * t[j]


@njit(**_NJI)
def _dot(x, y, L):
    acc = 0.0
    for j in range(L):
        acc += x[j] * y[j]
    return acc


@njit(**_NJ)
def moments_block(start, stride, a, kt, vt, ref, z, z2, acc, smean, sm2, smin, smax, cnt):
    """Merge one block into each query's running state: reference score ``ref`` (the running
    max), ``z = sum e^{s - ref}``, ``z2 = sum e^{2(s - ref)}``, ``acc = sum e^{s - ref} v``,
    and the scores' count, mean, sum of squared deviations (Chan's merge), min and max."""
    q = a.shape[0]
    L = kt.shape[1]
    dv = vt.shape[0]
    s = np.empty(L)
    for i in range(start, q, stride):
        _scores(a, i, kt, L, s)
        bmax = s[0]
        bmin = s[0]
        tot = 0.0
        for j in range(L):
            x = s[j]
            bmax = max(bmax, x)
            bmin = min(bmin, x)
            tot += x
        c0 = cnt[i]
        if c0 == 0:
            ref[i] = bmax
            smin[i] = bmin
            smax[i] = bmax
        else:
            if bmax > ref[i]:
                r = math.exp(ref[i] - bmax)
                z[i] *= r
                z2[i] *= r * r
                for k in range(dv):
                    acc[i, k] *= r
                ref[i] = bmax
            smin[i] = min(smin[i], bmin)
            smax[i] = max(smax[i], bmax)
        bm = tot / L
        bM2 = 0.0
        for j in range(L):
            dl = s[j] - bm
            bM2 += dl * dl
        m = ref[i]
        zb = 0.0
        z2b = 0.0
        for j in range(L):
            w = exp_fast(s[j] - m)
            s[j] = w
            zb += w
            z2b += w * w
        z[i] += zb
        z2[i] += z2b
        for k in range(dv):
            acc[i, k] += _dot(s, vt[k], L)
        nn = c0 + L
        delta = bm - smean[i]
        smean[i] += delta * L / nn
        sm2[i] += bM2 + delta * delta * (c0 * (L / nn))
        cnt[i] = nn


@njit(**_NJ)
def diagnostics_block(start, stride, a, kt, vt, lse, ybar, varp, bsum, gsum):
    """Per query: ``varp += sum p ||v - ybar||^2``, ``bsum += sum p^2 ||v - ybar||^2``,
    ``gsum += sum p ||v - ybar||`` over the block, p = e^{s - lse}."""
    q = a.shape[0]
    L = kt.shape[1]
    dv = vt.shape[0]
    s = np.empty(L)
    dev = np.empty(L)
    for i in range(start, q, stride):
        _scores(a, i, kt, L, s)
        for j in range(L):
            dev[j] = 0.0
        for k in range(dv):
            yk = ybar[i, k]
            t = vt[k]
            for j in range(L):
                x = t[j] - yk
                dev[j] += x * x
        l0 = lse[i]
        v1 = 0.0
        v2 = 0.0
        v3 = 0.0
        for j in range(L):
            p = exp_fast(s[j] - l0)
            v1 += p * dev[j]
            v2 += p * p * dev[j]
            v3 += p * math.sqrt(dev[j])
        varp[i] += v1
        bsum[i] += v2
        gsum[i] += v3


@njit(**_NJ)
def scores_block(start, stride, a, kt, out):
    """out[i, :L] = scores of query i on the block (the row scores of exact-score policies)."""
    q = a.shape[0]
    L = kt.shape[1]
    for i in range(start, q, stride):
        _scores(a, i, kt, L, out[i])


# ------------------------------------------------------------------ top-K of row scores
# A row's buffer (2K slots) holds a superset of its current top K. When it is full it is cut
# back to exactly K by selection (np.partition, O(K)): the K-th largest value becomes the
# threshold ``thr``; entries above it stay, and entries equal to it are kept by lowest index.
# A later key enters only if its score exceeds thr (an equal score with a higher index ranks
# below). The final buffer is sorted once: score descending, ties by index ascending.
@njit(cache=True)
def _cut(bs, bi, c, K):
    """Cut c > K buffered (score, index) pairs back to the best K; returns the K-th score."""
    vals = bs[:c].copy()
    ids = bi[:c].copy()
    kth = np.partition(vals.copy(), c - K)[c - K]
    w = 0
    neq = 0
    for t in range(c):
        if vals[t] > kth:
            bs[w] = vals[t]
            bi[w] = ids[t]
            w += 1
        elif vals[t] == kth:
            neq += 1
    if w < K:
        eq = np.empty(neq, dtype=np.int64)
        e = 0
        for t in range(c):
            if vals[t] == kth:
                eq[e] = ids[t]
                e += 1
        eq.sort()
        for t in range(K - w):
            bs[w + t] = kth
            bi[w + t] = eq[t]
    return kth


@njit(cache=True)
def _sort_desc(bs, bi, c):
    """Sort c pairs by score descending, ties by index ascending (two stable sorts)."""
    o1 = np.argsort(bi[:c], kind="mergesort")
    s1 = bs[:c][o1]
    i1 = bi[:c][o1]
    o2 = np.argsort(-s1, kind="mergesort")
    for t in range(c):
        bs[t] = s1[o2[t]]
        bi[t] = i1[o2[t]]


@njit(**_NJI)
def _push(x, L, j0, K, bsr, bir, c, th):
    cap = bsr.shape[0]
    for j in range(L):
        v = x[j]
        if c >= K and not (v > th):
            continue
        if c == cap:
            th = _cut(bsr, bir, c, K)
            c = K
            if not (v > th):
                continue
        bsr[c] = v
        bir[c] = j0 + j
        c += 1
    return c, th


@njit(nogil=True, cache=True)
def topk_rows_block(start, stride, R, j0, K, bs, bi, cnt, thr):
    """Stream the block's row scores R (rows, L) into the per-row buffers (rows, 2K)."""
    for i in range(start, R.shape[0], stride):
        cnt[i], thr[i] = _push(R[i], R.shape[1], j0, K, bs[i], bi[i], cnt[i], thr[i])


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def topk_exact_block(start, stride, a, kt, j0, K, bs, bi, cnt, thr):
    """:func:`topk_rows_block` with the rows = each query's own scores, computed in place."""
    L = kt.shape[1]
    s = np.empty(L)
    for i in range(start, a.shape[0], stride):
        _scores(a, i, kt, L, s)
        cnt[i], thr[i] = _push(s, L, j0, K, bs[i], bi[i], cnt[i], thr[i])


@njit(nogil=True, cache=True)
def topk_finish(start, stride, bs, bi, cnt, K):
    """Final cut to min(K, count) and sort of each row's buffer."""
    for i in range(start, bs.shape[0], stride):
        c = cnt[i]
        if c > K:
            _cut(bs[i], bi[i], c, K)
            c = K
        _sort_desc(bs[i], bi[i], c)
        cnt[i] = c


# -------------------------------------------------------------- mass-coverage passes
@njit(inline="always", cache=True)  # no fastmath: every pass must bin a score identically
def _bin(x, lo, scale, B):
    b = int((x - lo) * scale)
    return min(max(b, 0), B - 1)


@njit(nogil=True, cache=True)
def hist_rows_block(start, stride, R, Lrow, rmin, rmax, hm, hc):
    """Histogram of mass e^{r - L_row} and counts over B equal bins of [rmin, rmax] per row."""
    rows = R.shape[0]
    L = R.shape[1]
    B = hm.shape[1]
    for i in range(start, rows, stride):
        lo = rmin[i]
        span = rmax[i] - lo
        scale = B / span if span > 0 else 0.0
        for j in range(L):
            x = R[i, j]
            b = _bin(x, lo, scale, B)
            hm[i, b] += math.exp(x - Lrow[i])
            hc[i, b] += 1


@njit(nogil=True, cache=True)
def collect_bin_block(start, stride, R, j0, rmin, rmax, B, bstar, out_r, out_i, cnt):
    """Append the (score, index) of every token in bin bstar[i] of row i."""
    rows = R.shape[0]
    L = R.shape[1]
    for i in range(start, rows, stride):
        if bstar[i] < 0:
            continue
        lo = rmin[i]
        span = rmax[i] - lo
        scale = B / span if span > 0 else 0.0
        c = cnt[i]
        for j in range(L):
            x = R[i, j]
            if _bin(x, lo, scale, B) == bstar[i]:
                out_r[i, c] = x
                out_i[i, c] = j0 + j
                c += 1
        cnt[i] = c


@njit(nogil=True, cache=True)
def collect_kept_block(start, stride, R, j0, rmin, rmax, B, bstar, cut_r, cut_i, out_i, cnt):
    """Append every token ranked above the cut (bin > bstar, or bin == bstar and (r, -index)
    above (cut_r, -cut_i)): the kept set of a coverage rule."""
    rows = R.shape[0]
    L = R.shape[1]
    for i in range(start, rows, stride):
        lo = rmin[i]
        span = rmax[i] - lo
        scale = B / span if span > 0 else 0.0
        c = cnt[i]
        bs_ = bstar[i]
        cr = cut_r[i]
        ci = cut_i[i]
        for j in range(L):
            x = R[i, j]
            b = _bin(x, lo, scale, B)
            if b > bs_ or (b == bs_ and (x > cr or (x == cr and j0 + j < ci))):
                out_i[i, c] = j0 + j
                c += 1
        cnt[i] = c


# ------------------------------------------------------------------- proxy row scores
@njit(**_NJ)
def proxy_block(start, stride, aw, kt, lse_w, out):
    """out[j] = (1/W) sum_w e^{<aw_w, k_j> - lse_w}: the mean softmax of the window queries,
    tasks over chunks of 512 tokens (each token's sum over w in a fixed order)."""
    W = aw.shape[0]
    L = kt.shape[1]
    d = kt.shape[0]
    CH = 512
    nch = (L + CH - 1) // CH
    s = np.empty(CH)
    for t in range(start, nch, stride):
        c0 = t * CH
        c1 = min(L, c0 + CH)
        n = c1 - c0
        for j in range(n):
            out[c0 + j] = 0.0
        for w in range(W):
            for j in range(n):
                s[j] = aw[w, 0] * kt[0, c0 + j]
            for k in range(1, d):
                awk = aw[w, k]
                for j in range(n):
                    s[j] += awk * kt[k, c0 + j]
            lw = lse_w[w]
            for j in range(n):
                out[c0 + j] += exp_fast(s[j] - lw)
        for j in range(n):
            out[c0 + j] /= W


# ---------------------------------------------------------- importance sampling (CDF)
@njit(**_NJ)
def invcdf_block(start, stride, a, kt, vt, lse, ybar, logG, mode, j0, u, pos, cum, last, last_lw, out_j, out_lw):
    """Inverse-CDF draws in one streaming pass: per query, u[i] holds the sorted uniforms; the
    running cumulative weight ``cum`` passes each uniform at the token it falls in.
    mode 0: q = p; mode 1: q = p ||v - ybar|| / G. Writes the index and -log q of each draw."""
    q = a.shape[0]
    L = kt.shape[1]
    dv = vt.shape[0]
    T = u.shape[1]
    s = np.empty(L)
    dev = np.empty(L)
    w = np.empty(L)
    for i in range(start, q, stride):
        _scores(a, i, kt, L, s)
        l0 = lse[i]
        if mode == 1:
            for j in range(L):
                dev[j] = 0.0
            for k in range(dv):
                yk = ybar[i, k]
                t = vt[k]
                for j in range(L):
                    x = t[j] - yk
                    dev[j] += x * x
            lg = logG[i]
            for j in range(L):
                s[j] = s[j] - l0 + 0.5 * math.log(dev[j]) - lg if dev[j] > 0.0 else -np.inf
        else:
            for j in range(L):
                s[j] = s[j] - l0
        for j in range(L):  # s now holds log q_j
            w[j] = exp_fast(s[j]) if s[j] > -700.0 else 0.0
        c = cum[i]
        p_ = pos[i]
        for j in range(L):
            wj = w[j]
            if wj <= 0.0:
                continue
            c += wj
            last[i] = j0 + j
            last_lw[i] = -s[j]
            while p_ < T and u[i, p_] < c:
                out_j[i, p_] = j0 + j
                out_lw[i, p_] = -s[j]
                p_ += 1
        cum[i] = c
        pos[i] = p_


# ------------------------------------------------------------- residual sums (vAttention)
@njit(**_NJ)
def residual_block(start, stride, a, kt, vt, lse, j0, heavy, ptr, d1, d2, nv, n2):
    """Sums over the keys NOT in each query's sorted heavy list: sum p, sum p^2, sum p v,
    sum p^2 ||v||^2 (p = e^{s - lse}); ``ptr`` walks the sorted heavy indices."""
    q = a.shape[0]
    L = kt.shape[1]
    dv = vt.shape[0]
    K = heavy.shape[1]
    s = np.empty(L)
    for i in range(start, q, stride):
        _scores(a, i, kt, L, s)
        h = ptr[i]
        l0 = lse[i]
        for j in range(L):
            g = j0 + j
            while h < K and heavy[i, h] < g:
                h += 1
            if h < K and heavy[i, h] == g:
                continue
            p = math.exp(s[j] - l0)
            d1[i] += p
            d2[i] += p * p
            vv = 0.0
            for k in range(dv):
                x = vt[k, j]
                nv[i, k] += p * x
                vv += x * x
            n2[i] += p * p * vv
        ptr[i] = h


# ---------------------------------------------------------------------------- samplers
@njit(**_NJI)
def _sample_distinct(k0, k1, i, r, N, m, out):
    """out[:m] = a uniformly random m-subset of 0..N-1 in increasing order: uniforms in rounds
    of ``need = m - (distinct so far)``, each round merged and deduplicated (the same set as
    one-at-a-time rejection of repeats). For m > N/2 the complement is drawn instead."""
    comp = 2 * m > N
    mm = N - m if comp else m
    sel = np.empty(mm, dtype=np.int64)
    c = 0
    t = 0
    while c < mm:
        need = mm - c
        uu = np.empty(need)
        fill_uniforms(k0, k1, i, r, t, need, uu)
        t += 4 * ((need + 3) // 4)
        merged = np.empty(c + need, dtype=np.int64)
        for x in range(c):
            merged[x] = sel[x]
        for x in range(need):
            merged[c + x] = min(np.int64(uu[x] * N), N - 1)
        merged.sort()
        c2 = 0
        for x in range(merged.shape[0]):
            if x == 0 or merged[x] != merged[x - 1]:
                sel[c2] = merged[x]
                c2 += 1
        c = c2
    if not comp:
        for x in range(m):
            out[x] = sel[x]
        return
    o = 0
    h = 0
    for x in range(N):
        if h < mm and sel[h] == x:
            h += 1
        else:
            out[o] = x
            o += 1


@njit(**_NJ)
def uniform_sample(start, stride, k0, k1, q0, n, m, replace, idx):
    """idx (q, R, m): m keys per (query, repetition), with or without replacement; tasks are
    (i, r) pairs, streams use the global query index q0 + i."""
    q = idx.shape[0]
    R = idx.shape[1]
    uu = np.empty(m)
    for t in range(start, q * R, stride):
        i = t // R
        r = t - i * R
        if replace:
            fill_uniforms(k0, k1, q0 + i, r, 0, m, uu)
            for x in range(m):
                idx[i, r, x] = min(np.int64(uu[x] * n), n - 1)
        else:
            _sample_distinct(k0, k1, q0 + i, r, n, m, idx[i, r])


@njit(**_NJ)
def tail_sample(start, stride, k0, k1, q0, n, heavy, b, replace, idx, logw, count):
    """Hybrid selections: per (query, rep) the sorted heavy keys (weight 1) followed by b[i]
    draws from the other n - K keys (weight (n - K)/b[i]); rank t of the tail is key
    t + #{h : heavy[h] - h <= t}."""
    q = idx.shape[0]
    R = idx.shape[1]
    K = heavy.shape[1]
    nT = n - K
    g = np.empty(K, dtype=np.int64)
    for t in range(start, q * R, stride):
        i = t // R
        r = t - i * R
        bi = b[i]
        for h in range(K):
            idx[i, r, h] = heavy[i, h]
            logw[i, r, h] = 0.0
            g[h] = heavy[i, h] - h
        ranks = np.empty(bi, dtype=np.int64)
        if replace:
            uu = np.empty(bi)
            fill_uniforms(k0, k1, q0 + i, r, 0, bi, uu)
            for x in range(bi):
                ranks[x] = min(np.int64(uu[x] * nT), nT - 1)
        else:
            _sample_distinct(k0, k1, q0 + i, r, nT, bi, ranks)
        lw = math.log(nT / bi)
        for x in range(bi):
            rk = ranks[x]
            lo_ = 0
            hi_ = K
            while lo_ < hi_:  # number of g <= rk (g is nondecreasing)
                mid = (lo_ + hi_) // 2
                if g[mid] <= rk:
                    lo_ = mid + 1
                else:
                    hi_ = mid
            idx[i, r, K + x] = rk + lo_
            logw[i, r, K + x] = lw
        count[i, r] = K + bi


# --------------------------------------------------------------------------- estimator
_GOLDEN = _U64(0x9E3779B97F4A7C15)


@njit(**_NJI)
def _estimate_core(a, i, keys, values, rows, lw, idx, M, lse_i, ybar, distinct, t, err2, zrat, nerr2, tau,
                   sc, out, table, slots):
    """The self-normalised estimate from the M keys ``keys[rows[k]]`` (token-major) with log
    weights lw; writes err2 = ||yhat - ybar||^2, zrat = D_hat/D, nerr2 = ||N_hat/D - ybar||^2 and
    the tail mass of the distinct selected keys ``idx[:M]`` (an open-addressing hash set of the
    indices unless ``distinct``)."""
    d = keys.shape[1]
    dv = values.shape[1]
    for k in range(M):
        x = keys[rows[k]]
        acc = 0.0
        for f in range(d):
            acc += a[i, f] * x[f]
        sc[k] = acc
    tmax = sc[0] + lw[0]
    for k in range(1, M):
        tmax = max(tmax, sc[k] + lw[k])
    for f in range(dv):
        out[f] = 0.0
    den = 0.0
    for k in range(M):
        e = exp_fast(sc[k] + lw[k] - tmax)
        den += e
        v = values[rows[k]]
        for f in range(dv):
            out[f] += e * v[f]
    # e^{t - lse} = e^{t - tmax} e^{tmax - lse}: the normaliser and numerator estimates over D
    scale = math.exp(tmax - lse_i)
    e_ = 0.0
    n_ = 0.0
    for f in range(dv):
        x = out[f] / den - ybar[i, f]
        e_ += x * x
        y = out[f] * scale - ybar[i, f]
        n_ += y * y
    err2[t] = e_
    zrat[t] = den * scale
    nerr2[t] = n_
    kept = 0.0
    if distinct:
        for k in range(M):
            kept += exp_fast(sc[k] - lse_i)
    else:
        mask = table.shape[0] - 1
        ns = 0
        for k in range(M):
            j = idx[k]
            h = np.int64((_U64(j) * _GOLDEN) >> _U64(40)) & mask
            while table[h] != -1 and table[h] != j:
                h = (h + 1) & mask
            if table[h] == -1:
                table[h] = j
                slots[ns] = h
                ns += 1
                kept += exp_fast(sc[k] - lse_i)
        for x in range(ns):
            table[slots[x]] = -1
    tau[t] = max(0.0, 1.0 - kept)


@njit(**_NJI)
def _hash_size(Mx):
    h = 16
    while h < 2 * Mx:
        h *= 2
    return h


@njit(**_NJ)
def estimate_array(start, stride, a, keys, values, lse, ybar, idx, logw, count, distinct, err2, zrat, nerr2, tau):
    """Tasks = (query, rep) pairs t = i R + r of the flat outputs (q R,); the selection arrays
    broadcast over a length-1 query or rep axis. ``keys`` (n, d) and ``values`` (n, dv) are
    token-major so that a selected key is one contiguous read."""
    q = a.shape[0]
    R = err2.shape[0] // q
    Qs = idx.shape[0]
    Rs = idx.shape[1]
    Mx = idx.shape[2]
    sc = np.empty(Mx)
    out = np.empty(values.shape[1])
    table = np.full(_hash_size(Mx), -1, dtype=np.int64)
    slots = np.empty(Mx, dtype=np.int64)
    for t in range(start, q * R, stride):
        i = t // R
        r = t - i * R
        ii = i if Qs > 1 else 0
        rr = r if Rs > 1 else 0
        row = idx[ii, rr]
        _estimate_core(a, i, keys, values, row, logw[ii, rr], row, count[ii, rr], lse[i], ybar, distinct, t, err2,
                       zrat, nerr2, tau, sc, out, table, slots)


@njit(**_NJ)
def estimate_stream(start, stride, a, k0, k1, sphere, scale, V, lse, ybar, idx, logw, count, distinct, err2, zrat,
                    nerr2, tau):
    """:func:`estimate_array` with the selected keys generated from the token stream (token
    j by :func:`stream_token`) and their values V y, gathered into token-major scratch."""
    q = a.shape[0]
    R = err2.shape[0] // q
    Qs = idx.shape[0]
    Rs = idx.shape[1]
    Mx = idx.shape[2]
    d = a.shape[1]
    dv = V.shape[0]
    gk = np.empty((Mx, d))
    gv = np.empty((Mx, dv))
    ident = np.arange(Mx)
    sc = np.empty(Mx)
    out = np.empty(dv)
    table = np.full(_hash_size(Mx), -1, dtype=np.int64)
    slots = np.empty(Mx, dtype=np.int64)
    for t in range(start, q * R, stride):
        i = t // R
        r = t - i * R
        ii = i if Qs > 1 else 0
        rr = r if Rs > 1 else 0
        M = count[ii, rr]
        row = idx[ii, rr]
        for k in range(M):
            y = gk[k]
            stream_token(k0, k1, row[k], d, sphere, scale, y)
            for g in range(dv):
                acc = 0.0
                for f in range(d):
                    acc += V[g, f] * y[f]
                gv[k, g] = acc
        _estimate_core(a, i, gk, gv, ident, logw[ii, rr], row, M, lse[i], ybar, distinct, t, err2, zrat, nerr2, tau,
                       sc, out, table, slots)


@njit(**_NJ)
def draw_uniforms(start, stride, k0, k1, q0, R, m, out):
    """out[i, r m : (r + 1) m] = uniforms 0..m-1 of stream (q0 + i, r); tasks are (i, r)."""
    q = out.shape[0]
    for t in range(start, q * R, stride):
        i = t // R
        r = t - i * R
        fill_uniforms(k0, k1, q0 + i, r, 0, m, out[i, r * m:(r + 1) * m])


@njit(nogil=True, cache=True)
def sort_rows(start, stride, u, order, us):
    """Per row: order = argsort(u), us = u[order] (the uniforms of importance sampling)."""
    for i in range(start, u.shape[0], stride):
        o = np.argsort(u[i])
        for t in range(o.shape[0]):
            order[i, t] = o[t]
            us[i, t] = u[i, o[t]]


@njit(nogil=True, cache=True)
def unsort_rows(start, stride, order, j, lw, idx, logw, shift):
    """idx[i, order[i, t]] = j[i, t], logw[...] = lw[i, t] - shift (back to draw order)."""
    for i in range(start, order.shape[0], stride):
        for t in range(order.shape[1]):
            idx[i, order[i, t]] = j[i, t]
            logw[i, order[i, t]] = lw[i, t] - shift
