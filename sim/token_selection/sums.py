"""Weighted power sums of the keys outside a query's top set: the given-token inputs of the
sampling predictions of :mod:`theory.token_selection` (sections 1, 6, 7), in one streamed pass.

For query i with weights ``p_j = e^{s_j - lse_i}``, output ``ybar_i`` and deviations
``d_j = v_j - ybar_i``, and a *tail* T = the keys outside the query's top-k1 set (k1 = 0: every
key), :func:`tail_sums` returns, per query and per k1 of a list, ::

    tau = sum_T p          A1 = sum_T p d   (dv)     A2 = sum_T p^2 |d|^2
    A3  = sum_T p^3 |d|^2  P2 = sum_T p^2            V2 = sum_T p^2 d   (dv)
    M2  = sum_T p^2 v v^T  (dv, dv; only with ``outer=True``; vAttention's residual covariance)

with ``n_T = n - k1``. The top sets are nested: prefixes of the query's best-first list of
:meth:`SelectionContext.rows_topk` (scores descending, ties by lower index), so one pass over the
source's blocks serves the whole list. A key belongs to the top-k1 set when its index is among the
first k1 of that list (membership by index, found by a binary search in the sorted list: the sets
are exactly the selection's, whatever rounding two score computations would differ by). Memory
``O(block q + max(k1) q + |list| q dv^2)``, never O(n) per query; tail sums are accumulated directly
(not as a total minus a head), so a tail of mass 1e-12 keeps its digits. :func:`gather` fetches the keys
of an index array from any source (generated one by one for a token stream).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.token_selection import kernels as K
from sim.token_selection.context import SelectionContext

__all__ = ["TailSums", "gather", "tail_sums"]

SUMS_BLOCK = 1 << 13  # keys per block of the pass (q x block x dv doubles of scratch)


@dataclass
class TailSums:
    """Sums over the tail of each query for each k1 of ``k1`` (arrays (q, F[, dv[, dv]]))."""

    k1: np.ndarray  # (F,)
    n: int
    tau: np.ndarray
    A1: np.ndarray
    A2: np.ndarray
    A3: np.ndarray
    P2: np.ndarray
    V2: np.ndarray
    M2: np.ndarray | None = None

    @property
    def n_tail(self) -> np.ndarray:
        return self.n - self.k1


def gather(source, idx):
    """Keys and values of the index array ``idx`` (any shape) of a source:
    ``(keys idx.shape + (d,), values idx.shape + (dv,))``."""
    idx = np.asarray(idx, dtype=np.int64)
    flat = idx.ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= source.n):
        raise ValueError(f"indices out of range [0, {source.n})")
    if source.kind == "array":
        keys, values = source.keys[flat], source.values[flat]
    else:
        st = source.stream
        keys = np.empty((flat.size, st.d))
        K.stream_tokens(np.uint64(st.key[0]), np.uint64(st.key[1]), flat, st.d, st.law == "sphere", float(st.scale),
                        keys)
        values = keys @ source.V.T
    return keys.reshape(idx.shape + (source.d,)), values.reshape(idx.shape + (source.dv,))


def _ranks(top):
    """Per query: the top keys sorted by index and their ranks in the best-first order."""
    order = np.argsort(top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), order


def _rank_in_top(sorted_idx, rank_of, b0, b1):
    """(q, L): each key's rank in its query's best-first top list, K (= past the list) if absent.
    Membership by index, not by score: the kept sets are exactly those of rows_topk."""
    q, K = sorted_idx.shape
    cols = np.arange(b0, b1)
    out = np.full((q, b1 - b0), K, dtype=np.int64)
    if K == 0:
        return out
    for i in range(q):
        pos = np.searchsorted(sorted_idx[i], cols)
        hit = pos < K
        hit[hit] = sorted_idx[i, pos[hit]] == cols[hit]
        out[i, hit] = rank_of[i, pos[hit]]
    return out


def tail_sums(ctx: SelectionContext, k1, top=None, *, outer: bool = False, block: int = SUMS_BLOCK) -> TailSums:
    """The tail sums (module docstring) of every query of ``ctx`` for each top-set size in
    ``k1`` (0 = no top set). ``top`` (q, >= max k1): the queries' best keys, best first
    (computed with ``ctx.rows_topk`` when None)."""
    k1 = np.asarray(k1, dtype=np.int64).ravel()
    n, q, dv = ctx.n, ctx.q, ctx.source.dv
    if np.any(k1 < 0) or np.any(k1 >= n):
        raise ValueError(f"top-set sizes must lie in [0, {n})")
    kmax = int(k1.max()) if k1.size else 0
    if top is None:
        top = ctx.rows_topk(ctx.exact_rows(), kmax) if kmax > 0 else np.zeros((q, 0), dtype=np.int64)
    top = np.asarray(top, dtype=np.int64)
    if top.shape[0] != q or top.shape[1] < kmax:
        raise ValueError("top must hold at least max(k1) keys per query")
    top = np.ascontiguousarray(top[:, :kmax])
    sorted_idx, rank_of = _ranks(top)
    F = k1.size
    tau, A2, A3, P2 = (np.zeros((q, F)) for _ in range(4))
    A1, V2 = np.zeros((q, F, dv)), np.zeros((q, F, dv))
    M2 = np.zeros((q, F, dv, dv)) if outer else None
    a, lse, ybar = ctx.a, ctx.lse, ctx.ybar
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        kt, vt = ctx.source.block(b0, b1)  # (d, L), (dv, L)
        s = a @ kt  # (q, L)
        p = np.exp(s - lse[:, None])
        dev = vt[None, :, :] - ybar[:, :, None]  # (q, dv, L)
        dd = np.einsum("qkl,qkl->ql", dev, dev)
        tail = _rank_in_top(sorted_idx, rank_of, b0, b1)[:, None, :] >= k1[None, :, None]  # (q, F, L)
        w = np.where(tail, p[:, None, :], 0.0)  # p on the tail, (q, F, L)
        w2 = w * p[:, None, :]
        tau += w.sum(axis=2)
        P2 += w2.sum(axis=2)
        A2 += np.einsum("qfl,ql->qf", w2, dd)
        A3 += np.einsum("qfl,ql,ql->qf", w2, p, dd)
        A1 += np.einsum("qfl,qkl->qfk", w, dev)
        V2 += np.einsum("qfl,qkl->qfk", w2, dev)
        if outer:
            M2 += np.einsum("qfl,kl,jl->qfkj", w2, vt, vt)
    for name, x in (("tau", tau), ("A2", A2), ("A3", A3), ("A1", A1)):
        if not np.all(np.isfinite(x)):
            raise FloatingPointError(f"the tail sum {name} over- or underflowed")
    return TailSums(k1, n, tau, A1, A2, A3, P2, V2, M2)
