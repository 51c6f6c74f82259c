"""Selection policies: each returns indices and inclusion weights (a :class:`Selection`).

Every policy is a frozen dataclass with a ``name`` (its parameters, or ``label`` when given) and
``select(ctx, reps, key) -> Selection`` where ``ctx`` is a
:class:`sim.token_selection.context.SelectionContext` (a group of queries over a source),
``reps`` the number of repetitions and ``key`` a 128-bit Philox key (two ints). Inclusion
weights are stored as logarithms and are the unbiased (Horvitz-Thompson) ones, so
``sum_k w_k e^{s_k}`` estimates the softmax normaliser: the self-normalised output does not
depend on a constant factor, the normaliser and numerator errors the study reports do.

=====================  ==================================================  ===================
policy                 keys                                                log weight
=====================  ==================================================  ===================
Uniform(m, replace)    m uniform draws (or a uniform m-subset)             log(n/m)
Importance(m, 'p')     m draws from p                                      -log(m p_j)
Importance(m, 'opt')   m draws from q* ∝ p ||v - ybar||                    -log(m q*_j)
TopK(k)                the k largest scores of the query                   0
ProxyTopK(k, window)   the k largest pooled window proxies (shared)        0
Hybrid(k1, b)          top-k1 + b uniform draws of the other n - k1        0 / log((n-k1)/b)
Coverage(tau, ...)     drop the lowest-share keys until tau (exact/proxy)  0
VAttention(k1, ...)    top-k1 + b(query) draws, b from the CLT rule        0 / log(n_s/b)
=====================  ==================================================  ===================

Randomness: draws of query i (global index) and repetition r come from the policy's key and the
counter (t // 4, i, r, SELECT_WORD) (:mod:`sim.token_selection.kernels`), so they do not depend
on grouping, thread count or which other policies run. Deterministic policies return one
repetition (Rs = 1); shared ones (proxy) one query row (Qs = 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.token_selection import kernels as K

__all__ = [
    "QUANTILES",
    "Coverage",
    "Hybrid",
    "Importance",
    "ProxyTopK",
    "Selection",
    "TopK",
    "Uniform",
    "VAttention",
    "vattention_quantile",
]

QUANTILES = ("two_sided", "one_sided")


@dataclass
class Selection:
    """idx (Qs, Rs, M) int64, logw (Qs, Rs, M) float64, count (Qs, Rs) int64 (entries beyond
    count are padding); Qs in {1, q} and Rs in {1, reps} broadcast. ``info`` holds per-query
    extras (e.g. vAttention's budgets)."""

    idx: np.ndarray
    logw: np.ndarray
    count: np.ndarray
    info: dict = field(default_factory=dict)
    distinct: bool = False  # True when no key repeats within a (query, rep): no dedup needed

    def __post_init__(self):
        self.idx = np.ascontiguousarray(self.idx, dtype=np.int64)
        self.logw = np.ascontiguousarray(self.logw, dtype=np.float64)
        self.count = np.ascontiguousarray(self.count, dtype=np.int64)
        if self.idx.ndim != 3 or self.logw.shape != self.idx.shape or self.count.shape != self.idx.shape[:2]:
            raise ValueError("a selection needs idx, logw (Qs, Rs, M) and count (Qs, Rs)")
        if np.any(self.count < 1) or np.any(self.count > self.idx.shape[2]):
            raise ValueError("every selection must hold between 1 and M keys")
        if not np.all(np.isfinite(self.logw)):
            raise FloatingPointError("inclusion weights over- or underflowed")


def _check_budget(m, n, what, replace=True):
    m = int(m)
    if m < 1 or (not replace and m > n):
        raise ValueError(f"{what} = {m} is not a valid budget for n = {n}")
    return m


def _heavy_sorted(ctx, k1):
    if k1 == 0:
        return np.zeros((ctx.q, 0), dtype=np.int64)
    return np.sort(ctx.rows_topk(ctx.exact_rows(), k1), axis=1)


@dataclass(frozen=True)
class Uniform:
    """m keys uniformly at random, with or without replacement."""

    m: int
    replace: bool = True
    label: str | None = None
    deterministic = False

    @property
    def name(self):
        return self.label or f"uniform(m={self.m},{'wr' if self.replace else 'wor'})"

    def entries(self, n):
        return self.m

    def select(self, ctx, reps, key):
        n = ctx.n
        m = _check_budget(self.m, n, "m", self.replace)
        idx = np.empty((ctx.q, reps, m), dtype=np.int64)
        ctx.run(K.uniform_sample, np.uint64(key[0]), np.uint64(key[1]), ctx.q0, n, m, self.replace, idx,
                n_tasks=ctx.q * reps)
        return Selection(idx, np.full(idx.shape, math.log(n / m)), np.full((ctx.q, reps), m),
                         distinct=not self.replace)


@dataclass(frozen=True)
class Importance:
    """m draws with replacement from p (``proposal="p"``, the oracle) or from the optimal
    proposal q* ∝ p ||v - ybar|| (``"optimal"``)."""

    m: int
    proposal: str = "p"
    label: str | None = None
    deterministic = False

    def __post_init__(self):
        if self.proposal not in ("p", "optimal"):
            raise ValueError("the proposal must be 'p' or 'optimal'")

    @property
    def name(self):
        return self.label or f"importance(m={self.m},{self.proposal})"

    def entries(self, n):
        return self.m

    def select(self, ctx, reps, key):
        m = _check_budget(self.m, ctx.n, "m")
        u = np.empty((ctx.q, reps * m))
        ctx.run(K.draw_uniforms, np.uint64(key[0]), np.uint64(key[1]), ctx.q0, reps, m, u, n_tasks=ctx.q * reps)
        order = np.empty(u.shape, dtype=np.int64)
        us = np.empty(u.shape)
        ctx.run(K.sort_rows, u, order, us, n_tasks=ctx.q)
        j, lw = ctx.inverse_cdf(us, self.proposal)
        idx = np.empty(u.shape, dtype=np.int64)
        logw = np.empty(u.shape)
        ctx.run(K.unsort_rows, order, j, lw, idx, logw, math.log(m), n_tasks=ctx.q)
        return Selection(idx.reshape(ctx.q, reps, m), logw.reshape(ctx.q, reps, m), np.full((ctx.q, reps), m))


@dataclass(frozen=True)
class TopK:
    """The k keys with the largest scores for the query itself (exact top-k)."""

    k: int
    label: str | None = None
    deterministic = True

    @property
    def name(self):
        return self.label or f"topk(k={self.k})"

    def entries(self, n):
        return self.k

    def topk_need(self):
        return self.k

    def select(self, ctx, reps, key):
        k = _check_budget(self.k, ctx.n, "k", False)
        idx = ctx.rows_topk(ctx.exact_rows(), k)[:, None, :]
        return Selection(idx, np.zeros(idx.shape), np.full((ctx.q, 1), k), distinct=True)


@dataclass(frozen=True)
class ProxyTopK:
    """The k keys with the largest window proxy: the mean softmax of the window's score vectors
    (W, d), pooled over ``kernel`` positions (``pool`` "avg" or "max") -- SnapKV's rule; one set
    shared by every query."""

    k: int
    window: np.ndarray = field(repr=False)
    kernel: int = 7
    pool: str = "avg"
    label: str | None = None
    deterministic = True

    @property
    def name(self):
        return self.label or f"proxy_topk(k={self.k},W={np.shape(self.window)[0]},{self.pool}{self.kernel})"

    def entries(self, n):
        return self.k

    def select(self, ctx, reps, key):
        k = _check_budget(self.k, ctx.n, "k", False)
        rows = ctx.proxy_rows(self.window, self.kernel, self.pool)
        idx = ctx.rows_topk(rows, k)[:, None, :]
        return Selection(idx, np.zeros(idx.shape), np.full((1, 1), k), distinct=True)


@dataclass(frozen=True)
class Hybrid:
    """Top-k1 of the query plus b uniform draws of the other n - k1 keys, weight (n - k1)/b."""

    k1: int
    b: int
    replace: bool = True
    label: str | None = None
    deterministic = False

    @property
    def name(self):
        return self.label or f"hybrid(k1={self.k1},b={self.b},{'wr' if self.replace else 'wor'})"

    def entries(self, n):
        return self.k1 + self.b

    def topk_need(self):
        return self.k1

    def select(self, ctx, reps, key):
        n = ctx.n
        if not 0 <= self.k1 < n:
            raise ValueError(f"k1 = {self.k1} must leave at least one key of n = {n} to sample")
        b = _check_budget(self.b, n - self.k1, "b", self.replace)
        heavy = _heavy_sorted(ctx, self.k1)
        M = self.k1 + b
        idx = np.empty((ctx.q, reps, M), dtype=np.int64)
        logw = np.empty((ctx.q, reps, M))
        count = np.empty((ctx.q, reps), dtype=np.int64)
        ctx.run(K.tail_sample, np.uint64(key[0]), np.uint64(key[1]), ctx.q0, n, heavy, np.full(ctx.q, b, np.int64),
                self.replace, idx, logw, count, n_tasks=ctx.q * reps)
        return Selection(idx, logw, count, distinct=not self.replace)


@dataclass(frozen=True)
class Coverage:
    """Token Sparse Attention's coverage rule: sort keys by attention share ascending and drop
    them until the dropped share reaches ``tau_cov``, keeping at least ``min_keep``.

    ``scores="exact"``: the query's own softmax; ``"proxy"``: the window proxy (mean softmax of
    ``window`` (W, d), pooled over ``kernel`` positions, normalised), one set for every query.
    ``convention="reach"`` drops until the share reaches tau (the code: c keys below tau, drop
    c + 1, or none if c = 0); ``"below"`` keeps the dropped share <= tau."""

    tau_cov: float = 0.005
    min_keep: int = 1024
    scores: str = "exact"
    window: np.ndarray | None = field(default=None, repr=False)
    kernel: int = 7
    pool: str = "avg"
    convention: str = "reach"
    label: str | None = None
    deterministic = True

    def __post_init__(self):
        if self.scores not in ("exact", "proxy"):
            raise ValueError("scores must be 'exact' or 'proxy'")
        if self.scores == "proxy" and self.window is None:
            raise ValueError("the proxy coverage rule needs window score vectors")
        if self.min_keep < 1:
            raise ValueError("min_keep must be >= 1")

    @property
    def name(self):
        return self.label or f"coverage(tau={self.tau_cov:g},min={self.min_keep},{self.scores},{self.convention})"

    def entries(self, n):
        return n

    def select(self, ctx, reps, key):
        rows = ctx.exact_rows() if self.scores == "exact" else ctx.proxy_rows(self.window, self.kernel, self.pool)
        idx, cnt, dropped = ctx.rows_coverage(rows, self.tau_cov, self.min_keep, self.convention)
        return Selection(idx[:, None, :], np.zeros((idx.shape[0], 1, idx.shape[1])), cnt[:, None],
                         info={"dropped": dropped, "kept": cnt}, distinct=True)


def vattention_quantile(delta: float, quantile: str) -> float:
    """Phi^{-1}(1 - delta/2) (``two_sided``, the paper) or Phi^{-1}(1 - delta) (``one_sided``,
    the authors' code)."""
    from scipy.special import ndtri

    if not 0 < delta < 1:
        raise ValueError("delta must lie in (0, 1)")
    if quantile == "two_sided":
        return float(ndtri(1 - delta / 2))
    if quantile == "one_sided":
        return float(ndtri(1 - delta))
    raise ValueError(f"unknown quantile convention {quantile!r}; choose one of {QUANTILES}")


@dataclass(frozen=True)
class VAttention:
    """vAttention's budget rule: keep the top-k1 keys, sample b of the n_s = n - k1 others
    uniformly (weight n_s/b) with ``b = (z n_s sd / tol)^2`` clipped to [1, n_s].

    ``mode="denominator"``: sd = the (Bessel-corrected) standard deviation of e^{s} over the
    residual keys, tol = eps * sum e^{s}; ``"numerator"``: sd = sqrt(tr Cov) of e^{s} v over the
    residual, tol = eps * ||sum e^{s} v||. ``quantile`` picks z (see
    :func:`vattention_quantile`), ``rounding`` "floor" (the code) or "ceil". The statistics are
    exact (the code's ``use_exact_estimation``)."""

    k1: int
    eps: float = 0.05
    delta: float = 0.05
    mode: str = "denominator"
    quantile: str = "one_sided"
    rounding: str = "floor"
    replace: bool = True
    label: str | None = None
    deterministic = False

    def __post_init__(self):
        if self.mode not in ("denominator", "numerator"):
            raise ValueError("mode must be 'denominator' or 'numerator'")
        if self.rounding not in ("floor", "ceil"):
            raise ValueError("rounding must be 'floor' or 'ceil'")
        if not self.eps > 0:
            raise ValueError("eps must be positive")
        vattention_quantile(self.delta, self.quantile)

    @property
    def name(self):
        return self.label or (f"vattention(k1={self.k1},eps={self.eps:g},delta={self.delta:g},"
                              f"{self.mode},{self.quantile})")

    def entries(self, n):
        return n

    def topk_need(self):
        return self.k1

    def budgets(self, ctx, heavy):
        """Per query: (b, sd, tol, n_s) of the rule, in units of the normaliser sum e^{s}."""
        d1, d2, nv, n2, ns = ctx.residual_sums(heavy)
        if ns < 2:
            raise ValueError("vAttention needs at least two residual keys")
        if self.mode == "denominator":
            var = d2 / ns - (d1 / ns) ** 2
            tol = self.eps * np.ones(ctx.q)
        else:
            var = n2 / ns - np.sum(nv * nv, axis=1) / ns**2
            tol = self.eps * np.linalg.norm(ctx.ybar, axis=1)
        sd = np.sqrt(np.maximum(var, 0.0) * ns / (ns - 1))
        if np.any(tol <= 0):
            raise ValueError("vAttention's tolerance is zero (the output is 0): eps * ||ybar|| = 0")
        z = vattention_quantile(self.delta, self.quantile)
        raw = (z * ns * sd / tol) ** 2
        b = np.floor(raw) if self.rounding == "floor" else np.ceil(raw)
        b = np.clip(b, 1, ns).astype(np.int64)
        return b, sd, tol, ns

    def select(self, ctx, reps, key):
        n = ctx.n
        if not 0 <= self.k1 < n - 1:
            raise ValueError(f"k1 = {self.k1} must leave at least two keys of n = {n}")
        heavy = _heavy_sorted(ctx, self.k1)
        b, sd, tol, ns = self.budgets(ctx, heavy)
        M = self.k1 + int(b.max())
        idx = np.zeros((ctx.q, reps, M), dtype=np.int64)
        logw = np.zeros((ctx.q, reps, M))
        count = np.empty((ctx.q, reps), dtype=np.int64)
        ctx.run(K.tail_sample, np.uint64(key[0]), np.uint64(key[1]), ctx.q0, n, heavy, b, self.replace, idx, logw,
                count, n_tasks=ctx.q * reps)
        return Selection(idx, logw, count, info={"budget": b, "sd": sd, "tol": tol, "n_s": np.full(ctx.q, ns)},
                         distinct=not self.replace)
