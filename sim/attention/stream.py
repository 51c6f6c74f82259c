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
block (``BLOCK`` tokens, a fixed constant): each block is attended by the array kernels of
:mod:`sim.attention.softmax`, whose ``(out, lse)`` per query is the block's state (reference
score ``lse``, weight sum 1, weighted token sum ``out``); the states are stored and the blocks
merged in block order afterwards (the online-softmax merge). Every (block, query) state is
computed the same way whichever thread computes it, so the result is the same bit for bit
whatever the number of threads; the block size is not a parameter, so it cannot change the
numbers either. Memory:
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

from sim.attention.softmax import _attend, _attend_d2, _attend_d2_f32, _attend_f32
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
@njit(fastmath=FASTMATH, cache=True, nogil=True)
def _materialise(k0, k1, j0, L, d, sphere, scale, kt):
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


# ------------------------------------------------------------------------- block partials
def _stream_tasks(start, stride, a, a32, k0, k1, n, d, sphere, scale, f32, nq, pm, pz, ps):
    """Tasks start, start + stride, ... (:func:`run_threads`): task t is block t // nq and the
    t % nq-th of nq equal groups of queries. The block's tokens are generated, then attended by
    the array kernels of :mod:`sim.attention.softmax` (GIL released), whose (out, lse) is the
    block's state for each query: reference score lse, weight sum 1, weighted token sum out --
    the same numbers whichever task, thread or grouping computes them."""
    nblocks, q = pm.shape
    per = -(-q // nq)
    chunk = min(TILE, BLOCK)
    for t in range(start, nblocks * nq, stride):
        b, g = divmod(t, nq)
        q0, q1 = g * per, min(q, (g + 1) * per)
        if q0 >= q1:
            continue
        L = min(BLOCK, n - b * BLOCK)
        kt = np.empty((d, L))
        _materialise(k0, k1, b * BLOCK, L, d, sphere, scale, kt)
        out = np.empty((q1 - q0, d))
        lse = np.empty(q1 - q0)
        if f32:
            kt = kt.astype(np.float32)
            aq = a32[q0:q1]
        else:
            aq = a[q0:q1]
        if d == 2:
            (_attend_d2_f32 if f32 else _attend_d2)(0, 1, aq, kt, out, lse, chunk)
        else:
            (_attend_f32 if f32 else _attend)(0, 1, aq, kt, kt, out, lse, chunk, 8)
        pm[b, q0:q1] = lse
        pz[b, q0:q1] = 1.0
        ps[b, q0:q1] = out


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
        run_threads(_stream_tasks, ag, a32, k0, k1, int(stream.n), int(d), stream.law == "sphere",
                    float(stream.scale), f32, nq, pm, pz, ps, n_tasks=nblocks * nq)
        run_threads(_merge, pm, pz, ps, out[g0:g0 + qg], lse[g0:g0 + qg], n_tasks=qg)
    return out, lse
