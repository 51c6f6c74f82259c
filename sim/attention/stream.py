"""Softmax attention over tokens generated inside the kernel: n = 10^8 tokens in O(block) memory.

Contract
--------
A :class:`TokenStream` stands for n i.i.d. tokens y_0..y_{n-1} in R^d of a law (``gaussian``:
N(0, scale^2 I); ``sphere``: uniform on the sphere of radius ``scale``) that are never stored:
token j is a pure function of the stream's 128-bit ``key`` and j. Its coordinates are normals
number ``j d + t`` (t = 0..d-1) of a counter-based sequence: normal ``4 c + k`` comes from the
Philox4x64-10 words of counter ``(c, 0, 0, STREAM_COUNTER)`` (:mod:`sim.philox`) by Box-Muller
(k = 0, 1 from the first two words, 2, 3 from the last two); a sphere token is its Gaussian
vector scaled to length ``scale``. :meth:`TokenStream.materialise` writes any range of tokens
into an array -- the reference the tests hold the streamed kernel to.

:func:`stream_attention(a, stream) <stream_attention>` returns what
:func:`sim.attention.softmax_attention` returns for keys = values = the stream's tokens:
``out_i = sum_j softmax_j(<a_i, y_j>) y_j`` and ``lse_i``. The tokens are generated block by
block (``BLOCK`` tokens, a fixed constant): each block's contribution to every query -- a
reference score, the sum of weights and the weighted sum of tokens -- is computed in a fixed
order and stored, and the blocks are merged in block order afterwards (the online-softmax
merge). Threads take whole blocks, so the result is the same bit for bit whatever the number
of threads; the block size is not a parameter, so it cannot change the numbers either. Memory:
one block of tokens per thread plus ``(2 + d)`` numbers per block and query
(queries are taken in groups so that this stays under ``PARTIAL_BYTES``).

``precision="float32"``: the block's tokens and the scores and weights in float32 (the float32
exp of :mod:`sim.kernels_cpu`), tile sums added into float64, as the materialised float32
path of :mod:`sim.attention.softmax`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from sim.attention.softmax import (_RESCALE32, _RESCALE_AT, _chunk_d2, _chunk_d2_f32, _dot, _dot_f32,
                                   _exp_shifted_sum, _exp_shifted_sum_f32, _scores, _scores_f32)
from sim.kernels_cpu import FASTMATH, cpu_threads, run_threads
from sim.philox import box_muller, philox4x64

__all__ = ["TokenStream", "stream_attention", "stream_key", "BLOCK", "LAWS", "STREAM_COUNTER"]

BLOCK = 1 << 16  # tokens generated and reduced together: the unit of the deterministic order
TILE = 2048  # tokens per tile inside a block (the float32 tile sums)
PARTIAL_BYTES = 1 << 28  # at most this many bytes of per-block partial states at a time
LAWS = ("gaussian", "sphere")
STREAM_COUNTER = 0x70CE5  # the fourth counter word of token streams (other uses of Philox differ)
_U64 = np.uint64


def stream_key(seed: np.random.SeedSequence) -> tuple[int, int]:
    """A stream's 128-bit Philox key from a cell's SeedSequence."""
    k = seed.generate_state(2, dtype=np.uint64)
    return int(k[0]), int(k[1])


@dataclass(frozen=True)
class TokenStream:
    key: tuple[int, int]
    n: int
    d: int
    law: str = "gaussian"
    scale: float = 1.0

    def __post_init__(self):
        if self.law not in LAWS:
            raise ValueError(f"token streams generate {', '.join(LAWS)} tokens, not {self.law!r}")
        if self.n < 1 or self.d < 1:
            raise ValueError("a token stream needs n >= 1 tokens of dimension d >= 1")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError("the scale of a token stream must be a positive number")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.d)

    @property
    def ndim(self) -> int:
        return 2

    def materialise(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens ``start..stop-1`` as an array of shape (stop - start, d), float64."""
        stop = self.n if stop is None else min(stop, self.n)
        out = np.empty((self.d, max(0, stop - start)))
        if stop > start:
            _materialise(_U64(self.key[0]), _U64(self.key[1]), start, stop - start, self.d,
                         self.law == "sphere", self.scale, out)
        return np.ascontiguousarray(out.T)


# ------------------------------------------------------------------------------ generation
@njit(fastmath=FASTMATH, cache=True, inline="always")
def _generate(k0, k1, j0, L, d, sphere, scale, kt):
    """Tokens j0..j0+L-1 into ``kt[:, :L]`` (d, L): normals j d + t from counters 4c + k."""
    i0 = j0 * d
    i1 = (j0 + L) * d
    c0 = i0 // 4
    c1 = (i1 + 3) // 4
    nc = c1 - c0
    g = np.empty((4, nc))
    g0 = g[0]
    g1 = g[1]
    g2 = g[2]
    g3 = g[3]
    cw = _U64(STREAM_COUNTER)
    zero = _U64(0)
    for c in range(nc):
        a, b, e, f = philox4x64(_U64(c0 + c), zero, zero, cw, k0, k1)
        n0, n1 = box_muller(a, b)
        n2, n3 = box_muller(e, f)
        g0[c] = n0
        g1[c] = n1
        g2[c] = n2
        g3[c] = n3
    if d == 2 and j0 % 2 == 0:  # counter c holds tokens 2c (words a, b) and 2c + 1 (words c, d)
        x0 = kt[0]
        x1 = kt[1]
        h = L // 2
        for c in range(h):
            x0[2 * c] = g0[c]
            x1[2 * c] = g1[c]
            x0[2 * c + 1] = g2[c]
            x1[2 * c + 1] = g3[c]
        if L % 2:
            x0[L - 1] = g0[h]
            x1[L - 1] = g1[h]
    else:
        i = j0 * d - c0 * 4  # normal index within g, walked in order
        for jj in range(L):
            for t in range(d):
                kt[t, jj] = g[i % 4, i // 4]
                i += 1
    if sphere:
        for jj in range(L):
            r = 0.0
            for t in range(d):
                r += kt[t, jj] * kt[t, jj]
            r = scale / math.sqrt(r)
            for t in range(d):
                kt[t, jj] *= r
    else:
        for jj in range(L):
            for t in range(d):
                kt[t, jj] *= scale


@njit(fastmath=FASTMATH, cache=True, nogil=True)
def _materialise(k0, k1, j0, L, d, sphere, scale, kt):
    _generate(k0, k1, j0, L, d, sphere, scale, kt)


# ------------------------------------------------------------------------- block partials
@njit(fastmath=FASTMATH, cache=True, inline="always")
def _block_state(a, kt, L, pm, pz, ps, f32, kt32, a32):
    """Each query's (reference score, sum of weights, weighted token sum) over one block."""
    q = a.shape[0]
    d = kt.shape[0]
    s = np.empty(TILE)
    s32 = np.empty(TILE, dtype=np.float32)
    for i in range(q):
        if d == 2:
            if f32:
                b0 = a32[i, 0]
                b1 = a32[i, 1]
                mm = b0 * kt32[0, 0] + b1 * kt32[1, 0]
                z = 0.0
                x0 = 0.0
                x1 = 0.0
                for c in range(0, L, TILE):
                    e = min(L, c + TILE)
                    u0 = kt32[0, c:e]
                    u1 = kt32[1, c:e]
                    zf, cf0, cf1 = _chunk_d2_f32(b0, b1, u0, u1, mm)
                    if zf > _RESCALE32:
                        mx32 = b0 * u0[0] + b1 * u1[0]
                        for j in range(u0.shape[0]):
                            mx32 = max(mx32, b0 * u0[j] + b1 * u1[j])
                        r = math.exp(np.float64(mm) - np.float64(mx32))
                        z *= r
                        x0 *= r
                        x1 *= r
                        mm = mx32
                        zf, cf0, cf1 = _chunk_d2_f32(b0, b1, u0, u1, mm)
                    z += np.float64(zf)
                    x0 += np.float64(cf0)
                    x1 += np.float64(cf1)
                pm[i] = np.float64(mm)
            else:
                a0 = a[i, 0]
                a1 = a[i, 1]
                m = a0 * kt[0, 0] + a1 * kt[1, 0]
                z = 0.0
                x0 = 0.0
                x1 = 0.0
                for c in range(0, L, TILE):
                    e = min(L, c + TILE)
                    t0 = kt[0, c:e]
                    t1 = kt[1, c:e]
                    zc, c0, c1 = _chunk_d2(a0, a1, t0, t1, m)
                    if zc > _RESCALE_AT:
                        mx = a0 * t0[0] + a1 * t1[0]
                        for j in range(t0.shape[0]):
                            mx = max(mx, a0 * t0[j] + a1 * t1[j])
                        r = math.exp(m - mx)
                        z *= r
                        x0 *= r
                        x1 *= r
                        m = mx
                        zc, c0, c1 = _chunk_d2(a0, a1, t0, t1, m)
                    z += zc
                    x0 += c0
                    x1 += c1
                pm[i] = m
            pz[i] = z
            ps[i, 0] = x0
            ps[i, 1] = x1
            continue
        # any d: scores into a tile buffer, then weights and weighted sums
        z = 0.0
        for k in range(d):
            ps[i, k] = 0.0
        if f32:
            ai32 = a32[i]
            m32 = np.float32(0.0)
            for c in range(0, L, TILE):
                Lc = min(TILE, L - c)
                _scores_f32(ai32, kt32, c, Lc, s32)
                if c == 0:
                    m32 = s32[0]
                zg = _exp_shifted_sum_f32(s32, Lc, m32)
                if zg > _RESCALE32:
                    _scores_f32(ai32, kt32, c, Lc, s32)
                    mg32 = s32[0]
                    for j in range(Lc):
                        mg32 = max(mg32, s32[j])
                    r = math.exp(np.float64(m32) - np.float64(mg32))
                    z *= r
                    for k in range(d):
                        ps[i, k] *= r
                    m32 = mg32
                    zg = _exp_shifted_sum_f32(s32, Lc, m32)
                z += np.float64(zg)
                for k in range(d):
                    ps[i, k] += np.float64(_dot_f32(s32, kt32[k, c:c + Lc], Lc))
            pm[i] = np.float64(m32)
        else:
            ai = a[i]
            m = 0.0
            for c in range(0, L, TILE):
                Lc = min(TILE, L - c)
                _scores(ai, kt, c, Lc, s)
                if c == 0:
                    m = s[0]
                zc = _exp_shifted_sum(s, Lc, m)
                if zc > _RESCALE_AT:
                    _scores(ai, kt, c, Lc, s)
                    mx = s[0]
                    for j in range(Lc):
                        mx = max(mx, s[j])
                    r = math.exp(m - mx)
                    z *= r
                    for k in range(d):
                        ps[i, k] *= r
                    m = mx
                    zc = _exp_shifted_sum(s, Lc, m)
                z += zc
                for k in range(d):
                    ps[i, k] += _dot(s, kt[k, c:c + Lc], Lc)
            pm[i] = m
        pz[i] = z


@njit(fastmath=FASTMATH, cache=True, nogil=True)
def _stream_blocks(start, stride, a, a32, k0, k1, n, d, sphere, scale, f32, nq, pm, pz, ps):
    """Tasks start, start + stride, ... (:func:`run_threads`): task t is block t // nq and the
    t % nq-th of nq equal groups of queries -- generate the block's tokens, then reduce them for
    those queries. Each (block, query) state is computed the same way whatever the grouping."""
    nblocks = pm.shape[0]
    q = a.shape[0]
    per = (q + nq - 1) // nq
    kt = np.empty((d, BLOCK))
    kt32 = np.empty((d, BLOCK), dtype=np.float32)
    for t in range(start, nblocks * nq, stride):
        b = t // nq
        q0 = (t % nq) * per
        q1 = min(q, q0 + per)
        if q0 >= q1:
            continue
        j0 = b * BLOCK
        L = min(BLOCK, n - j0)
        _generate(k0, k1, j0, L, d, sphere, scale, kt)
        if f32:
            for k in range(d):
                for j in range(L):
                    kt32[k, j] = np.float32(kt[k, j])
        _block_state(a[q0:q1], kt, L, pm[b, q0:q1], pz[b, q0:q1], ps[b, q0:q1], f32, kt32, a32[q0:q1])


@njit(fastmath=FASTMATH, cache=True, nogil=True)
def _merge(start, stride, pm, pz, ps, out, lse):
    """Queries start, start + stride, ...: the blocks' states merged in block order."""
    nb = pm.shape[0]
    q = pm.shape[1]
    d = ps.shape[2]
    for i in range(start, q, stride):
        m = pm[0, i]
        z = pz[0, i]
        for k in range(d):
            out[i, k] = ps[0, i, k]
        for b in range(1, nb):
            mb = pm[b, i]
            if mb > m:
                r = math.exp(m - mb)
                z = z * r + pz[b, i]
                for k in range(d):
                    out[i, k] = out[i, k] * r + ps[b, i, k]
                m = mb
            else:
                r = math.exp(mb - m)
                z += pz[b, i] * r
                for k in range(d):
                    out[i, k] += ps[b, i, k] * r
        for k in range(d):
            out[i, k] /= z
        lse[i] = m + math.log(z)


def stream_attention(a, stream: TokenStream, *, precision: str = "float64"):
    """Softmax attention of the score vectors ``a`` (q, d) over the stream's tokens (keys =
    values); returns ``(out, lse)`` like :func:`sim.attention.softmax_attention`."""
    if precision not in ("float64", "float32"):
        raise ValueError(f"unknown precision {precision!r}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != stream.d:
        raise ValueError(f"score vectors must have shape (q, {stream.d})")
    if not np.all(np.isfinite(a)):
        raise ValueError("attention inputs must be finite")
    q, d = a.shape
    nblocks = -(-stream.n // BLOCK)
    group = max(1, min(q, PARTIAL_BYTES // (8 * (2 + d) * nblocks)))
    out = np.empty((q, d))
    lse = np.empty(q)
    k0, k1 = _U64(stream.key[0]), _U64(stream.key[1])
    f32 = precision == "float32"
    for g0 in range(0, q, group):
        ag = np.ascontiguousarray(a[g0:g0 + group])
        a32 = ag.astype(np.float32)
        qg = ag.shape[0]
        pm = np.empty((nblocks, qg))
        pz = np.empty((nblocks, qg))
        ps = np.empty((nblocks, qg, d))
        # few blocks: split the queries too, so every thread has work (the numbers do not
        # depend on the split: each (block, query) state is computed on its own)
        nq = max(1, min(qg, -(-2 * cpu_threads() // nblocks)))
        run_threads(_stream_blocks, ag, a32, k0, k1, int(stream.n), int(d), stream.law == "sphere",
                    float(stream.scale), f32, nq, pm, pz, ps, n_tasks=nblocks * nq)
        run_threads(_merge, pm, pz, ps, out[g0:g0 + qg], lse[g0:g0 + qg], n_tasks=qg)
    return out, lse
