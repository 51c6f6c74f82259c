"""Prompt generation on the device: the per-thread pieces of a prompt (normals, tokens, query),
the dot products every kernel shares, and the generator / raw-stream kernels."""
from __future__ import annotations

import functools

from numba import cuda, float64, uint64

from gpu.icl_regression.device_math import _box_muller, philox4x64


def _n_blocks(L: int, d: int, N: int) -> int:
    return (L * d + L * N + d + N * d + N + 3) // 4


@cuda.jit(device=True, inline="always")
def _gen_normals(g, og, nb, k0, k1, c1, c2, c3, t, T):
    """Blocks j = t, t + T, ... of counter (j, c1, c2, c3) -> g[og + j + {0, 1, 2, 3} nb]."""
    for j in range(t, nb, T):
        a, b, c, d = philox4x64(uint64(j), c1, c2, c3, k0, k1)
        n0, n1 = _box_muller(a, b)
        n2, n3 = _box_muller(c, d)
        g[og + j] = n0
        g[og + nb + j] = n1
        g[og + 2 * nb + j] = n2
        g[og + 3 * nb + j] = n3


@cuda.jit(device=True, inline="always")
def _gen_tokens(g, og, L, d, N, chol, bscale, bmask, nsd, Z, oz, t, T):
    """Tokens i = t, t + T, ...: Z[oz + k L + i] = (C g_x)_k, then the labels (CPU order)."""
    ob = og + L * d + L * N + d
    for i in range(t, L, T):
        for k in range(d):
            acc = 0.0
            for m in range(k + 1):
                ckm = chol[k, m]
                if ckm != 0.0:
                    acc += ckm * g[og + m * L + i]
            Z[oz + k * L + i] = acc
        for n in range(N):
            y = nsd[n] * g[og + L * d + n * L + i]
            for k in range(d):
                bk = bscale[n] * bmask[n, k] * g[ob + n * d + k]
                if bk != 0.0:
                    y += bk * Z[oz + k * L + i]
            Z[oz + (d + n) * L + i] = y


@cuda.jit(device=True, inline="always")
def _gen_query(g, og, L, d, N, chol, bscale, bmask, qsd, zq, ozq, yq, oyq):
    """Query token zq[ozq : ozq + D] = [C g_q; 0] and labels yq[oyq : oyq + N] (one thread)."""
    oq = og + L * d + L * N
    ob = oq + d
    oqn = ob + N * d
    for k in range(d):
        acc = 0.0
        for m in range(k + 1):
            acc += chol[k, m] * g[oq + m]
        zq[ozq + k] = acc
    for n in range(N):
        acc = 0.0
        for k in range(d):
            acc += bscale[n] * bmask[n, k] * g[ob + n * d + k] * zq[ozq + k]
        yq[oyq + n] = acc + qsd[n] * g[oqn + n]
        zq[ozq + d + n] = 0.0


@cuda.jit(device=True, inline="always")
def _dot(ws, a, b, n):
    """sum_i ws[a + i] ws[b + i], i = 0..n-1 in order (one thread)."""
    acc = 0.0
    for i in range(n):
        acc += ws[a + i] * ws[b + i]
    return acc


@cuda.jit(device=True, inline="always")
def _head_token_dots(ws, ovec, oz, oout, nh, D, L, t, T):
    """ws[oout + h L + i] = sum_j ws[ovec + h D + j] ws[oz + j L + i] (a per-head vector against
    every token), items (h, i) = t, t + T, ... of the block."""
    for it in range(t, nh * L, T):
        h = it // L
        i = it - h * L
        acc = 0.0
        for j in range(D):
            acc += ws[ovec + h * D + j] * ws[oz + j * L + i]
        ws[oout + h * L + i] = acc


@cuda.jit
def philox_kernel(k0, k1, c1, c2, c3, out):
    """Raw words of blocks j = 0 .. len(out)/4 - 1, in block order (one thread per block)."""
    j = cuda.grid(1)
    if 4 * j < out.shape[0]:
        a, b, c, d = philox4x64(uint64(j), c1, c2, c3, k0, k1)
        out[4 * j] = a
        out[4 * j + 1] = b
        out[4 * j + 2] = c
        out[4 * j + 3] = d


@cuda.jit
def normals_kernel(k0, k1, c1, c2, c3, nb, out):
    """The 4 nb normals of blocks 0..nb-1 in the CPU's flat layout (one thread per block)."""
    j = cuda.grid(1)
    if j < nb:
        _gen_normals(out, 0, nb, k0, k1, c1, c2, c3, j, nb)


@functools.cache
def gen_kernel(d: int, N: int, workspace: str = "shared"):
    """Prompts to global memory: work item c = prompts c ppb .. ; normals in the workspace."""
    SHARED = workspace == "shared"

    @cuda.jit
    def kernel(k0, k1, chol, bscale, bmask, nsd, qsd, t_step, stream, first, L, ppb, scratch, Z, zq, yq, beta):
        t = cuda.threadIdx.x
        T = cuda.blockDim.x
        n = Z.shape[0]
        nb = (L * d + L * N + d + N * d + N + 3) // 4
        sh = cuda.shared.array(0, float64)
        if SHARED:
            g = sh
        else:
            g = scratch[cuda.blockIdx.x]
        nitems = (n + ppb - 1) // ppb
        ob = L * d + L * N + d
        c2 = uint64(t_step)
        c3 = uint64(stream)
        for item in range(cuda.blockIdx.x, nitems, cuda.gridDim.x):
            for b in range(item * ppb, min(n, (item + 1) * ppb)):
                _gen_normals(g, 0, nb, k0, k1, uint64(first + b), c2, c3, t, T)
                cuda.syncthreads()
                Zb = Z[b]
                for i in range(t, L, T):  # tokens straight to global memory (coalesced over i)
                    for k in range(d):
                        acc = 0.0
                        for m in range(k + 1):
                            ckm = chol[k, m]
                            if ckm != 0.0:
                                acc += ckm * g[m * L + i]
                        Zb[k, i] = acc
                    for nn in range(N):
                        y = nsd[nn] * g[L * d + nn * L + i]
                        for k in range(d):
                            bk = bscale[nn] * bmask[nn, k] * g[ob + nn * d + k]
                            if bk != 0.0:
                                y += bk * Zb[k, i]
                        Zb[d + nn, i] = y
                if t == 0:
                    _gen_query(g, 0, L, d, N, chol, bscale, bmask, qsd, zq[b], 0, yq[b], 0)
                    for nn in range(N):
                        for k in range(d):
                            beta[b, nn, k] = bscale[nn] * bmask[nn, k] * g[ob + nn * d + k]
                cuda.syncthreads()

    return kernel
