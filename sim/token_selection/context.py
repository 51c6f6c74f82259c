"""The streaming passes a selection needs, for one group of queries (see the package docstring).

:class:`SelectionContext` holds the score vectors of a group of queries (global indices
``q0 .. q0 + q - 1``) and a source, runs the moments pass at construction (lse, output, kappa,
score statistics) and the other passes on demand, each over the source's blocks in order:

=====================  ===================================================  =================
pass                   what it computes                                     memory per query
=====================  ===================================================  =================
moments                lse, ybar, kappa_n, score mean / std / min / max      O(dv)
diagnostics            Var_p, B_n, G_n (needs ybar)                          O(1)
top-K (rows)           the K best keys by a row score (exact or proxy)       O(K)
coverage (rows)        mass histogram, the cut bin's keys, the kept set      O(bins + kept)
residual               sums over keys outside a heavy set (vAttention)       O(dv)
inverse CDF            draws from p or from q* ∝ p ||v - ybar||              O(draws)
=====================  ===================================================  =================

Rows: an *exact* row is a query's own scores (mass p_j); a *proxy* row is the window proxy
(mean softmax of W other queries, pooled over positions) shared by all queries, held as one
length-n vector (the only O(n) array, shared, not per query).
"""
from __future__ import annotations

import numpy as np

from sim.kernels_cpu import run_threads
from sim.token_selection import kernels as K

__all__ = ["DEFAULT_BLOCK", "HIST_BINS", "SelectionContext", "pool_scores"]

DEFAULT_BLOCK = 1 << 14
HIST_BINS = 4096
_FLOOR = -745.0  # log of the smallest positive double: the row score of a zero proxy


def pool_scores(x, kernel: int, mode: str) -> np.ndarray:
    """Pool a 1-D score vector over positions: ``avg`` = sum over the centred window of width
    ``kernel`` divided by ``kernel`` (zero padding, padding counted, as ``avg_pool1d`` with
    ``padding=kernel//2``); ``max`` = the window maximum (padding ignored)."""
    x = np.asarray(x, dtype=np.float64)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError("the pooling kernel must be a positive odd integer")
    if kernel == 1:
        return x.copy()
    h = kernel // 2
    if mode == "avg":
        c = np.concatenate([[0.0], np.cumsum(np.concatenate([np.zeros(h), x, np.zeros(h)]))])
        return (c[kernel:] - c[:-kernel]) / kernel
    if mode == "max":
        pad = np.concatenate([np.full(h, -np.inf), x, np.full(h, -np.inf)])
        return np.lib.stride_tricks.sliding_window_view(pad, kernel).max(axis=1)
    raise ValueError(f"unknown pooling {mode!r}; choose 'avg' or 'max'")


class _ExactRows:
    """Each query's own scores: order by s, mass p = e^{s - lse}."""

    def __init__(self, ctx, negate=False):
        self.ctx = ctx
        self.count = ctx.q
        self.sign = -1.0 if negate else 1.0
        if negate:
            self.Lrow = ctx.lse_neg()
            self.rmin, self.rmax = -ctx.smax, -ctx.smin
        else:
            self.Lrow = ctx.lse
            self.rmin, self.rmax = ctx.smin, ctx.smax

    def blocks(self):
        ctx = self.ctx
        for b0, b1 in ctx.ranges():
            kt = ctx.source.keys_block(b0, b1)
            S = np.empty((ctx.q, b1 - b0))
            a = ctx.a if self.sign > 0 else -ctx.a
            ctx.run(K.scores_block, a, kt, S, n_tasks=ctx.q)
            yield b0, S


class _ProxyRows:
    """One shared row: r_j = log(pooled mean softmax of the window), mass = pooled / sum."""

    def __init__(self, r):
        self.r = r
        self.count = 1
        finite = r[r > _FLOOR]
        self.Lrow = np.array([float(np.log(np.sum(np.exp(finite - finite.max()))) + finite.max())])
        self.rmin = np.array([float(r.min())])
        self.rmax = np.array([float(r.max())])
        self.block = DEFAULT_BLOCK

    def blocks(self):
        n = self.r.shape[0]
        for b0 in range(0, n, self.block):
            yield b0, self.r[None, b0:min(n, b0 + self.block)]


class SelectionContext:
    """A group of queries (score vectors ``a`` (q, d), global offset ``q0``) over a source."""

    def __init__(self, a, source, *, q0: int = 0, block: int = DEFAULT_BLOCK):
        a = np.ascontiguousarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != source.d:
            raise ValueError(f"score vectors must have shape (q, {source.d})")
        if not np.all(np.isfinite(a)):
            raise ValueError("score vectors must be finite")
        if block < 1:
            raise ValueError("block must be >= 1")
        self.a = a
        self.source = source
        self.q0 = int(q0)
        self.block = int(block)
        self._topk_cache: dict = {}
        self._diag = None
        self._proxy_cache: dict = {}
        self._moments()

    # ------------------------------------------------------------------ plumbing
    @property
    def q(self) -> int:
        return self.a.shape[0]

    @property
    def n(self) -> int:
        return self.source.n

    def ranges(self):
        n = self.n
        for b0 in range(0, n, self.block):
            yield b0, min(n, b0 + self.block)

    def run(self, kernel, *args, n_tasks):
        run_threads(kernel, *args, n_tasks=n_tasks)

    # ------------------------------------------------------------------- moments
    def _moments(self):
        q, dv = self.q, self.source.dv
        ref = np.zeros(q)
        z = np.zeros(q)
        z2 = np.zeros(q)
        acc = np.zeros((q, dv))
        smean = np.zeros(q)
        sm2 = np.zeros(q)
        smin = np.zeros(q)
        smax = np.zeros(q)
        cnt = np.zeros(q, dtype=np.int64)
        for b0, b1 in self.ranges():
            kt, vt = self.source.block(b0, b1)
            self.run(K.moments_block, self.a, kt, vt, ref, z, z2, acc, smean, sm2, smin, smax, cnt, n_tasks=q)
        self.lse = ref + np.log(z)
        self.ybar = acc / z[:, None]
        self.kappa = self.n * z2 / (z * z)
        self.score_mean = smean
        self.score_std = np.sqrt(sm2 / self.n)
        self.smin, self.smax = smin, smax
        for name in ("lse", "ybar", "kappa", "score_std"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise FloatingPointError(f"{name} over- or underflowed in the moments pass")

    def lse_neg(self):
        """log sum e^{-s} (the mass of the negated rows of the wrong-end control)."""
        if "lse_neg" not in self._proxy_cache:
            q = self.q
            ref, z, z2 = np.zeros(q), np.zeros(q), np.zeros(q)
            acc = np.zeros((q, 1))
            sm, s2, mn, mx = np.zeros(q), np.zeros(q), np.zeros(q), np.zeros(q)
            cnt = np.zeros(q, dtype=np.int64)
            for b0, b1 in self.ranges():
                kt = self.source.keys_block(b0, b1)
                vt = np.zeros((1, b1 - b0))
                self.run(K.moments_block, -self.a, kt, vt, ref, z, z2, acc, sm, s2, mn, mx, cnt, n_tasks=q)
            self._proxy_cache["lse_neg"] = ref + np.log(z)
        return self._proxy_cache["lse_neg"]

    def diagnostics(self):
        """(Var_p, B_n, G_n) per query."""
        if self._diag is None:
            q = self.q
            varp, bsum, gsum = np.zeros(q), np.zeros(q), np.zeros(q)
            for b0, b1 in self.ranges():
                kt, vt = self.source.block(b0, b1)
                self.run(K.diagnostics_block, self.a, kt, vt, self.lse, self.ybar, varp, bsum, gsum, n_tasks=q)
            self._diag = (varp, self.n * bsum, gsum)
        return self._diag

    # ---------------------------------------------------------------------- rows
    def exact_rows(self, negate: bool = False):
        key = ("exact", negate)
        if key not in self._proxy_cache:
            self._proxy_cache[key] = _ExactRows(self, negate)
        return self._proxy_cache[key]

    def proxy_rows(self, window, kernel: int = 7, mode: str = "avg"):
        """The window proxy: mean over the window's score vectors (W, d) of their softmax, pooled
        over positions, as one shared row (cached per window)."""
        window = np.ascontiguousarray(window, dtype=np.float64)
        if window.ndim != 2 or window.shape[1] != self.source.d or window.shape[0] < 1:
            raise ValueError(f"the window must hold score vectors of shape (W, {self.source.d})")
        key = (window.tobytes(), window.shape, kernel, mode)
        if key not in self._proxy_cache:
            wctx = SelectionContext(window, self.source, block=self.block)
            raw = np.empty(self.n)
            for b0, b1 in self.ranges():
                kt = self.source.keys_block(b0, b1)
                out = np.empty(b1 - b0)
                self.run(K.proxy_block, wctx.a, kt, wctx.lse, out, n_tasks=-(-(b1 - b0) // 512))
                raw[b0:b1] = out
            pooled = pool_scores(raw, kernel, mode)
            with np.errstate(divide="ignore"):
                r = np.maximum(np.log(pooled), _FLOOR)
            rows = _ProxyRows(r)
            rows.block = self.block
            self._proxy_cache[key] = rows
        return self._proxy_cache[key]

    def rows_topk(self, rows, Kk: int) -> np.ndarray:
        """(rows, K) the K best keys of each row, by score descending, ties by lower index."""
        Kk = int(Kk)
        if not 1 <= Kk <= self.n:
            raise ValueError(f"K = {Kk} keys out of n = {self.n}")
        ck = id(rows)
        hit = self._topk_cache.get(ck)
        if hit is not None and hit[0] >= Kk:
            return hit[1][:, :Kk]
        cap = 2 * Kk
        bs = np.empty((rows.count, cap))
        bi = np.empty((rows.count, cap), dtype=np.int64)
        cnt = np.zeros(rows.count, dtype=np.int64)
        thr = np.full(rows.count, -np.inf)
        if isinstance(rows, _ExactRows):  # scores computed inside the kernel, no score matrix
            a = self.a if rows.sign > 0 else np.ascontiguousarray(-self.a)
            for b0, b1 in self.ranges():
                kt = self.source.keys_block(b0, b1)
                self.run(K.topk_exact_block, a, kt, b0, Kk, bs, bi, cnt, thr, n_tasks=rows.count)
        else:
            for b0, R in rows.blocks():
                R = np.ascontiguousarray(R)
                self.run(K.topk_rows_block, R, b0, Kk, bs, bi, cnt, thr, n_tasks=rows.count)
        self.run(K.topk_finish, bs, bi, cnt, Kk, n_tasks=rows.count)
        out = np.ascontiguousarray(bi[:, :Kk])
        self._topk_cache[ck] = (Kk, out, rows)
        return out

    def rows_coverage(self, rows, tau: float, min_keep: int, convention: str):
        """Kept sets of the coverage rule, ``(idx (rows, Kmax), count (rows,), dropped (rows,))``.

        Ascending order = score ascending, ties by higher index first. ``reach`` (the Token
        Sparse Attention code): with c the number of keys whose cumulative share stays below
        tau, drop c + 1 keys (none when c = 0). ``below``: drop the largest prefix whose share is
        <= tau. At least ``min_keep`` keys are kept (then the top min_keep)."""
        if convention not in ("reach", "below"):
            raise ValueError("the coverage convention must be 'reach' or 'below'")
        if not 0 <= tau < 1:
            raise ValueError("tau_cov must lie in [0, 1)")
        nr, B, n = rows.count, HIST_BINS, self.n
        hm = np.zeros((nr, B))
        hc = np.zeros((nr, B), dtype=np.int64)
        for b0, R in rows.blocks():
            self.run(K.hist_rows_block, np.ascontiguousarray(R), rows.Lrow, rows.rmin, rows.rmax, hm, hc, n_tasks=nr)
        cum = np.cumsum(hm, axis=1)
        if tau <= 0.0:  # nothing is dropped under either convention
            cum[:] = np.inf
        crossing = (cum >= tau) if convention == "reach" else (cum > tau)
        # the crossing key lies in the first bin whose cumulative mass passes tau
        bstar = np.where(crossing.any(axis=1), np.argmax(crossing, axis=1), B - 1).astype(np.int64)
        below = np.where(bstar > 0, cum[np.arange(nr), np.maximum(bstar - 1, 0)], 0.0)
        nb = hc[np.arange(nr), bstar]
        br = np.empty((nr, max(1, int(nb.max()))))
        bidx = np.empty((nr, max(1, int(nb.max()))), dtype=np.int64)
        bc = np.zeros(nr, dtype=np.int64)
        for b0, R in rows.blocks():
            self.run(K.collect_bin_block, np.ascontiguousarray(R), b0, rows.rmin, rows.rmax, B, bstar, br, bidx, bc,
                     n_tasks=nr)
        cut_r = np.zeros(nr)
        cut_i = np.zeros(nr, dtype=np.int64)
        inclusive = np.zeros(nr, dtype=bool)
        dropped = np.zeros(nr, dtype=np.int64)
        n_lower = np.where(bstar > 0, np.cumsum(hc, axis=1)[np.arange(nr), np.maximum(bstar - 1, 0)], 0)
        for i in range(nr):
            c = int(bc[i])
            if tau <= 0.0:
                bstar[i] = -1
                continue
            order = np.lexsort((-bidx[i, :c], br[i, :c]))  # ascending score, then higher index first
            rs, ids = br[i, :c][order], bidx[i, :c][order]
            cs = below[i] + np.cumsum(np.exp(rs - rows.Lrow[i]))
            if convention == "reach":
                k = int(np.searchsorted(cs, tau, side="left"))  # keys of the bin with cum < tau
                k = min(k, c - 1)
                n_under = int(n_lower[i]) + k
                if n_under == 0:
                    bstar[i] = -1  # nothing dropped
                    dropped[i] = 0
                    continue
                dropped[i] = n_under + 1
                cut_r[i], cut_i[i] = rs[k], ids[k]  # the crossing key, dropped too
            else:
                k = int(np.searchsorted(cs, tau, side="right"))  # keys of the bin with cum <= tau
                k = min(k, c - 1)
                dropped[i] = int(n_lower[i]) + k
                cut_r[i], cut_i[i] = rs[k], ids[k]  # the first kept key
                inclusive[i] = True
        kept_n = n - dropped
        need_top = kept_n < min_keep
        kmax = int(np.max(np.where(need_top, min(min_keep, n), kept_n)))
        out = np.zeros((nr, max(1, kmax)), dtype=np.int64)
        cnt = np.zeros(nr, dtype=np.int64)
        if not need_top.all():
            # the first kept key of "below" is kept by moving the cut just past it in the order
            cr = cut_r.copy()
            ci = np.where(inclusive, cut_i + 1, cut_i)
            for b0, R in rows.blocks():
                self.run(K.collect_kept_block, np.ascontiguousarray(R), b0, rows.rmin, rows.rmax, B, bstar, cr, ci,
                         out, cnt, n_tasks=nr)
        if need_top.any():
            top = self.rows_topk(rows, min(min_keep, n))
            for i in np.flatnonzero(need_top):
                out[i, :top.shape[1]] = top[i]
                cnt[i] = top.shape[1]
        if np.any(cnt != np.where(need_top, min(min_keep, n), kept_n)):
            raise RuntimeError("coverage rule: kept-set size mismatch (ties straddling the cut?)")
        return out, cnt, dropped

    # ------------------------------------------------------------- residual sums
    def residual_sums(self, heavy_sorted):
        """Over the keys outside each query's (sorted) heavy set: (sum p, sum p^2, sum p v,
        sum p^2 ||v||^2, n_s)."""
        q, dv = self.q, self.source.dv
        heavy_sorted = np.ascontiguousarray(heavy_sorted, dtype=np.int64)
        ptr = np.zeros(q, dtype=np.int64)
        d1, d2, n2 = np.zeros(q), np.zeros(q), np.zeros(q)
        nv = np.zeros((q, dv))
        for b0, b1 in self.ranges():
            kt, vt = self.source.block(b0, b1)
            self.run(K.residual_block, self.a, kt, vt, self.lse, b0, heavy_sorted, ptr, d1, d2, nv, n2, n_tasks=q)
        return d1, d2, nv, n2, self.n - heavy_sorted.shape[1]

    # --------------------------------------------------------- importance sampling
    def inverse_cdf(self, u_sorted, proposal: str):
        """Indices and -log q of the sorted uniforms u_sorted (q, T) under q = p ('p') or
        q ∝ p ||v - ybar|| ('optimal')."""
        q = self.q
        mode = 0 if proposal == "p" else 1
        logG = 0.0
        if mode == 1:
            G = self.diagnostics()[2]
            if np.any(G <= 0):
                raise ValueError("the optimal proposal is undefined: every value equals the output")
            logG = np.log(G)
        logG = np.broadcast_to(np.asarray(logG, dtype=np.float64), (q,)).copy()
        T = u_sorted.shape[1]
        pos = np.zeros(q, dtype=np.int64)
        cum = np.zeros(q)
        last = np.zeros(q, dtype=np.int64)
        last_lw = np.zeros(q)
        out_j = np.zeros((q, T), dtype=np.int64)
        out_lw = np.zeros((q, T))
        for b0, b1 in self.ranges():
            kt, vt = self.source.block(b0, b1)
            self.run(K.invcdf_block, self.a, kt, vt, self.lse, self.ybar, logG, mode, b0, u_sorted,
                     pos, cum, last, last_lw, out_j, out_lw, n_tasks=q)
        for i in np.flatnonzero(pos < T):  # uniforms above the rounded total: the last positive key
            out_j[i, pos[i]:] = last[i]
            out_lw[i, pos[i]:] = last_lw[i]
        return out_j, out_lw
