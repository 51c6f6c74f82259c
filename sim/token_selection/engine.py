"""The estimator and the driver: per-policy errors for a batch of queries and repetitions."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from sim.kernels_cpu import run_threads
from sim.token_selection import kernels as K
from sim.token_selection.context import DEFAULT_BLOCK, SelectionContext
from sim.token_selection.policies import Selection
from sim.token_selection.sources import as_source

__all__ = ["DEFAULT_MEMORY", "SelectionResult", "as_seed", "estimate", "policy_key", "select", "selection_errors"]

DEFAULT_MEMORY = 1 << 29  # bytes of selections and buffers per query group


def as_seed(seed) -> np.random.SeedSequence:
    """A SeedSequence from a SeedSequence, an int (or None) or a numpy Generator (which is
    advanced by one draw)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(0, 2**63)))
    return np.random.SeedSequence(seed)


def policy_key(seed, name: str) -> tuple[int, int]:
    """The 128-bit Philox key of policy ``name`` under ``seed``: a child of the seed's
    SeedSequence keyed by crc32(name), so a policy's draws do not depend on the others."""
    ss = as_seed(seed)
    child = np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + (zlib.crc32(name.encode()),))
    k = child.generate_state(2, dtype=np.uint64)
    return int(k[0]), int(k[1])


def estimate(ctx: SelectionContext, sel: Selection, reps: int):
    """The self-normalised estimate of every (query, rep) of the group from a selection:
    ``(err2, zratio, nerr2, tau)``, each (q, reps): ``||yhat - ybar||^2``, ``D_hat / D``,
    ``||N_hat / D - ybar||^2`` and the tail mass of the distinct selected keys."""
    q = ctx.q
    if sel.idx.shape[0] not in (1, q) or sel.idx.shape[1] not in (1, reps):
        raise ValueError("the selection's (Qs, Rs) must broadcast to (q, reps)")
    lo = int(sel.idx.min())
    hi = int(sel.idx.max())
    if lo < 0 or hi >= ctx.n:
        raise ValueError(f"selected indices out of range [0, {ctx.n})")
    out = [np.empty(q * reps) for _ in range(4)]
    src = ctx.source
    if src.kind == "array":
        run_threads(K.estimate_array, ctx.a, src.keys, src.values, ctx.lse, ctx.ybar, sel.idx, sel.logw, sel.count,
                    bool(sel.distinct), *out, n_tasks=q * reps)
    else:
        st = src.stream
        run_threads(K.estimate_stream, ctx.a, np.uint64(st.key[0]), np.uint64(st.key[1]), st.law == "sphere",
                    float(st.scale), src.V, ctx.lse, ctx.ybar, sel.idx, sel.logw, sel.count, bool(sel.distinct), *out,
                    n_tasks=q * reps)
    res = [x.reshape(q, reps) for x in out]
    for name, x in zip(("err2", "zratio", "nerr2", "tau"), res):
        if not np.all(np.isfinite(x)):
            raise FloatingPointError(f"the estimator's {name} over- or underflowed")
    return tuple(res)


def select(policy, a, tokens, *, reps: int = 1, seed=0, V=None, block: int = DEFAULT_BLOCK) -> Selection:
    """One policy's selection for queries ``a`` (q, d) over ``tokens`` (array, TokenStream or
    source)."""
    ctx = SelectionContext(a, as_source(tokens, V), block=block)
    return policy.select(ctx, 1 if policy.deterministic else reps, policy_key(seed, policy.name))


@dataclass
class SelectionResult:
    """Per-policy measurements (P, q, reps) and per-query diagnostics (q,) of one batch."""

    names: tuple
    err2: np.ndarray  # ||yhat - ybar||^2 in value space
    tau: np.ndarray  # tail mass of the distinct selected keys
    zratio: np.ndarray  # D_hat / D, the normaliser estimate over the truth
    nerr2: np.ndarray  # ||N_hat / D - ybar||^2, the numerator error in output units
    count: np.ndarray  # entries of the selection (draws, including repeats)
    lse: np.ndarray
    ybar: np.ndarray  # (q, dv)
    kappa: np.ndarray  # n sum p^2
    var_p: np.ndarray  # sum p ||v - ybar||^2
    B: np.ndarray  # n sum p^2 ||v - ybar||^2
    G: np.ndarray  # sum p ||v - ybar||
    score_mean: np.ndarray
    score_std: np.ndarray
    info: dict = field(default_factory=dict)  # name -> {key: (q,) array}

    def index(self, name: str) -> int:
        return self.names.index(name)


def _group_size(policies, q, reps, n, memory):
    """Queries per group so that the selections (idx + logw), top-K buffers and sorted uniforms
    of one group stay under ``memory`` bytes (coverage and vAttention counted at n keys)."""
    per = 256.0
    for p in policies:
        R = 1 if p.deterministic else reps
        per += R * p.entries(n) * 16.0
        per += 2 * getattr(p, "topk_need", lambda: 0)() * 16.0
        if type(p).__name__ == "Importance":
            per += R * p.m * 40.0
    return int(max(1, min(q, memory // per)))


def selection_errors(a, tokens, policies, *, reps: int = 1, seed=0, V=None, values=None,
                     block: int = DEFAULT_BLOCK, memory: int = DEFAULT_MEMORY) -> SelectionResult:
    """Squared errors of every policy for queries ``a`` (q, d) over ``tokens`` ((n, d) array with
    values ``tokens @ V.T`` or ``values``; a :class:`TokenStream` with values ``V y``; or a
    source), ``reps`` repetitions of each random policy, seeded by ``seed`` (SeedSequence, int
    or Generator). Queries are processed in groups so that selections and buffers stay under
    ``memory`` bytes; draws depend on the global query index only, so the grouping does not
    change any number."""
    source = as_source(tokens, V, values)
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != source.d:
        raise ValueError(f"score vectors must have shape (q, {source.d})")
    policies = list(policies)
    names = tuple(p.name for p in policies)
    if len(set(names)) != len(names):
        raise ValueError("policy names must be distinct (give a label)")
    if reps < 1:
        raise ValueError("reps must be >= 1")
    ss = as_seed(seed)
    keys = [policy_key(ss, nm) for nm in names]
    q, P, n = a.shape[0], len(policies), source.n
    shape = (P, q, reps)
    err2, tau, zr, ne = (np.empty(shape) for _ in range(4))
    count = np.empty(shape, dtype=np.int64)
    diag = {k: np.empty(q) for k in ("lse", "kappa", "var_p", "B", "G", "score_mean", "score_std")}
    ybar = np.empty((q, source.dv))
    info: dict = {nm: {} for nm in names}
    g = _group_size(policies, q, reps, n, memory)
    kmax = max([getattr(p, "topk_need", lambda: 0)() for p in policies] + [0])
    for q0 in range(0, q, g):
        q1 = min(q, q0 + g)
        ctx = SelectionContext(a[q0:q1], source, q0=q0, block=block)
        if kmax > 0:
            ctx.rows_topk(ctx.exact_rows(), kmax)
        varp, B, G = ctx.diagnostics()
        diag["lse"][q0:q1] = ctx.lse
        diag["kappa"][q0:q1] = ctx.kappa
        diag["var_p"][q0:q1] = varp
        diag["B"][q0:q1] = B
        diag["G"][q0:q1] = G
        diag["score_mean"][q0:q1] = ctx.score_mean
        diag["score_std"][q0:q1] = ctx.score_std
        ybar[q0:q1] = ctx.ybar
        for k, (p, key) in enumerate(zip(policies, keys)):
            R = 1 if p.deterministic else reps
            sel = p.select(ctx, R, key)
            res = estimate(ctx, sel, sel.idx.shape[1])  # deterministic: once, then broadcast
            for arr, val in zip((err2, zr, ne, tau), res):
                arr[k, q0:q1] = val
            cnt = np.broadcast_to(sel.count, (sel.count.shape[0], reps))
            count[k, q0:q1] = np.broadcast_to(cnt, (q1 - q0, reps))
            for key_, val in sel.info.items():
                val = np.broadcast_to(np.asarray(val), (q1 - q0,)) if np.ndim(val) <= 1 else val
                info[p.name].setdefault(key_, np.empty(q, dtype=np.asarray(val).dtype))[q0:q1] = val
    return SelectionResult(names, err2, tau, zr, ne, count, diag["lse"], ybar, diag["kappa"], diag["var_p"],
                           diag["B"], diag["G"], diag["score_mean"], diag["score_std"], info)
