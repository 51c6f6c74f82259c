r"""Random-feature attention on a CUDA device: the twin of ``sim.random_features``' feature and
Gram building.

Contracts (as in :mod:`sim.random_features`)
--------------------------------------------
* :func:`rfa_features` (x0, X, W) -> phi, like ``sim.random_features.rfa_features``: queries
  ``x0 (n, d)``, keys ``X (n, N, d)``, query-key matrices ``W (M, D, D)`` with ``D = d + 1``
  (``augment``: x~ = [x; 1]) or ``D = d``. Block m of row c is
  ``phi[c, m*Dv:(m+1)*Dv] = fac * sum_i A_mi val(x_i)`` with scores ``s_mi = x~0^T W_m x~_i``,
  ``A = relu(s) c_N`` / ``s c_N`` / ``softmax_i(s)``, ``c_N = 1/N`` (``key_norm="mean"``) or 1,
  ``val = x~`` (``value="augmented"``, ``Dv = D``) or ``x`` (``Dv = d``), and
  ``fac = 1/sqrt(M)`` when ``scale``. Head-major layout, output dtype ``W.dtype``.
* :func:`rfmlp_features` (x0, X, Wm) -> ``relu(z Wm^T) / sqrt(P)`` with
  ``z = [x0; x_1..x_N; 1]``: one GEMM per row chunk (cuBLAS through CuPy).
* :func:`gram_update` accumulates ``G = Phi^T Phi``, ``Sy = Phi^T y``, ``s1 = sum_rows Phi``
  and ``sy = sum_rows y`` in float64 over row blocks, which is what the primal ridge path needs.
  :func:`eigh` is the device eigendecomposition (``cupy.linalg.eigh``, cuSOLVER ``syevd``).

The feature kernel
------------------
Grid layout. A block is ``hb x sb`` threads (default 32 x 8 = 256): ``threadIdx.x`` is the head
within a head block of ``hb`` heads, ``threadIdx.y`` the sample within a sample block of ``sb``
samples. The 1-D grid has one block per (sample block, head block) pair, head blocks fastest,
so consecutive blocks read the same samples' keys (L2 hits) and the whole ``W`` stays in L2.
The grid has ``ceil(n/sb) * ceil(M/hb)`` blocks (``n = 16384, M = 2000``: 129k blocks, far more
than the ~2 x 132 resident blocks an H100 needs).

Per thread (one (sample c, head m) item), everything lives in registers:
``q = x~0^T W_m`` (D values; ``W`` is passed transposed as ``Wt (D, D, M)`` so that the 32 threads
of a warp read 32 consecutive heads: coalesced), then one pass over the N keys: load ``x~_i``
(a warp-wide broadcast: all threads of a warp share the sample), score ``s = <q, x~_i>``, then
``acc += a(s) val(x_i)``. ReLU/identity accumulate directly; softmax keeps an online
``(max, z, acc)`` state seeded by the first key (so no infinities, even under fastmath) and
rescaled when the max grows. Accumulators ``acc`` and ``z`` are float64 in every case; ``q``, the
keys and the scores use float32 when x0, X and W are all float32 (fast single-precision units and
``ex2.approx`` for the softmax exp), float64 otherwise. The block's ``sb x hb*Dv`` output tile is
staged in shared memory and written row by row with consecutive threads on consecutive addresses
(a thread's own ``Dv`` outputs are contiguous, so writing them directly would stride by ``Dv``
across a warp). One kernel is compiled per (d, augment, Dv, activation, score dtype, output
dtype, hb, sb), so every per-thread loop has a constant trip count and no array spills to local
memory (checked on the sm_90 PTX in tests/gpu/test_random_features_ptx.py).

Cost model (expected, NOT measured: no GPU was available when this was written)
-------------------------------------------------------------------------------
Per (sample, head) item, with ``D = d+1``:

* flops ``~ 2 D^2`` (the query row ``q``) ``+ 2 N D`` (scores) ``+ 2 N Dv`` (value sums), plus
  N exponentials for softmax;
* DRAM bytes ``~ Dv * itemsize`` written (the output, once, coalesced); ``W_m`` (``D^2`` values)
  comes from L1/L2 (``M D^2`` itemsize bytes in all, L2-resident up to ~40 MB), the keys
  (``N d`` per sample) from L2, shared by the ``M/hb`` head blocks.

notes random_features §7.5 example, ``n = 16384, M = 2000, d = N = 16`` (D = Dv = 17), float64: 3.3e7 items x
~1.7e3 flop = 5.5e10 flop and 4.5 GB of output; about 12 flop per DRAM byte, near the FP64
ridge point of an H100 SXM (34 TFLOP/s FP64 non-tensor, 3.35 TB/s), so the expected time is a
few milliseconds (1.3 ms to write the output, 1.6 ms of FP64 arithmetic at peak). Float32 inputs
run ``q`` and the scores at the FP32 rate (twice the FP64 one; the value sums stay float64) and
halve the output bytes. The CPU engine computes the same with two BLAS-3 calls through an
``(n, M, N)`` score tensor in chunks; the kernel never materialises the scores. Register use
(an estimate, not read from ptxas): ``2 D`` (q, key) + ``2 Dv`` (float64 accumulators) words
per thread plus indices, ~90 at D = 17, i.e. about two 256-thread blocks per SM.

The Gram: ``n P^2`` multiply-adds per update in cuBLAS DGEMM (float32 features are converted
to float64 one row block at a time, so the sums over rows are float64); at the study's sizes
(``P <= 12000``) it costs far less than the ``O(P^3)`` eigendecomposition that follows.

Inputs may be NumPy arrays (copied to the device with ``cuda.to_device``: this is how the CUDA
simulator tests run the kernel) or ``__cuda_array_interface__`` arrays (CuPy, staying on the
device): the result is NumPy for NumPy inputs and CuPy otherwise. :func:`rfmlp_features` and
:func:`gram_update` run in the inputs' own namespace (NumPy or CuPy). CuPy is imported only
inside functions.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float32, float64

from gpu.launch import clamp_threads, cupy_launch, max_threads
from gpu.limits import RANDOM_FEATURES_MAX_DIM as MAX_DIM  # D = d + 1 (and Dv): per-thread vectors in registers
from sim import backend

__all__ = ["rfa_features", "rfa_kernel", "samples_per_block", "rfmlp_features", "gram_update", "eigh", "MAX_DIM",
           "ACTIVATIONS"]

ACTIVATIONS = ("relu", "identity", "softmax")
_HB = 32  # heads per block (threadIdx.x): one warp of consecutive heads
_SB = 8  # samples per block (threadIdx.y)
_TILE_BYTES = 32768  # the shared output tile stays below this (static limit 48 KB)


def _np_type(dtype: str):
    return float32 if dtype == "float32" else float64


@functools.cache
def rfa_kernel(d: int, augment: bool, dv: int, activation: str, score_dtype: str, out_dtype: str,
               hb: int = _HB, sb: int = _SB):
    """The feature kernel specialised to its sizes and dtypes (module docstring).

    Signature: ``kernel(x0 (n, d), X (n, N, d), Wt (D, D, M), fac, out (n, M*dv))`` launched on a
    1-D grid of ``ceil(n/sb) * ceil(M/hb)`` blocks of ``(hb, sb)`` threads."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")
    D = d + 1 if augment else d
    st = _np_type(score_dtype)
    ot = _np_type(out_dtype)
    width = hb * dv
    nthreads = hb * sb
    relu = activation == "relu"
    softmax = activation == "softmax"

    @cuda.jit(fastmath=score_dtype == "float32")
    def kernel(x0, X, wt, fac, out):
        t = cuda.threadIdx.x
        y = cuda.threadIdx.y
        n = X.shape[0]
        nkeys = X.shape[1]
        M = wt.shape[2]
        nhb = (M + hb - 1) // hb
        m0 = (cuda.blockIdx.x % nhb) * hb
        c0 = (cuda.blockIdx.x // nhb) * sb
        m = m0 + t
        c = c0 + y
        tile = cuda.shared.array((sb, width), ot)
        if m < M and c < n:
            # q = x~0^T W_m: row d of W_m for the constant coordinate, then the query's d entries
            q = cuda.local.array(D, st)
            for k in range(D):
                q[k] = st(0.0)
            if augment:
                for k in range(D):
                    q[k] = st(wt[d, k, m])
            for j in range(d):
                xj = st(x0[c, j])
                for k in range(D):
                    q[k] += xj * st(wt[j, k, m])
            acc = cuda.local.array(dv, float64)
            xi = cuda.local.array(D, st)
            for k in range(dv):
                acc[k] = 0.0
            if augment:
                xi[d] = st(1.0)
            mx = st(0.0)
            z = 0.0
            for i in range(nkeys):
                for k in range(d):
                    xi[k] = st(X[c, i, k])
                s = q[0] * xi[0]
                for k in range(1, D):
                    s += q[k] * xi[k]
                if softmax:
                    if i == 0:
                        mx = s
                    if s > mx:  # rescale the running state to the new maximum
                        r = float64(math.exp(mx - s))
                        z *= r
                        for k in range(dv):
                            acc[k] *= r
                        mx = s
                    w = float64(math.exp(s - mx))
                    z += w
                elif relu:
                    w = float64(max(s, st(0.0)))
                else:
                    w = float64(s)
                for k in range(dv):
                    acc[k] += w * float64(xi[k])
            g = fac / z if softmax else fac
            for k in range(dv):
                tile[y, t * dv + k] = ot(acc[k] * g)
        cuda.syncthreads()
        # coalesced write of the tile: rows c0.., columns m0*dv .. (m0 + heads)*dv
        rows = min(sb, n - c0)
        cols = min(hb, M - m0) * dv
        base = m0 * dv
        e = y * hb + t
        while e < rows * cols:
            r_ = e // cols
            col = e - r_ * cols
            out[c0 + r_, base + col] = tile[r_, col]
            e += nthreads

    return kernel


def samples_per_block(hb: int, dv: int, itemsize: int) -> int:
    """Default samples per block: 8, fewer when the ``sb x hb*dv`` output tile would pass 32 KB."""
    return max(1, min(_SB, _TILE_BYTES // (hb * dv * itemsize)))


def _xp(*arrays):
    """CuPy when any argument is a device array, else NumPy (CuPy imported only then)."""
    if backend.on_device(*arrays):
        import cupy

        return cupy
    return np


def rfa_features(x0, X, W, *, augment: bool = True, activation: str = "relu", key_norm: str = "mean",
                 value: str = "augmented", scale: bool = True, hb: int | None = None, sb: int | None = None):
    """Random-feature attention features ``(n, M * Dv)`` on the GPU (module docstring).

    ``hb``/``sb``: heads and samples per block (defaults 32 and :func:`samples_per_block`: 8,
    fewer when the output tile would pass 32 KB); tests pass tiny values for the CUDA simulator."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")
    if x0.ndim != 2 or X.ndim != 3 or W.ndim != 3:
        raise ValueError("need x0 (n, d), X (n, N, d) and W (M, D, D)")
    n, N, d = X.shape
    M, D, D2 = W.shape
    if x0.shape != (n, d):
        raise ValueError(f"x0 has shape {x0.shape}, expected {(n, d)}")
    if D != D2 or D != (d + 1 if augment else d):
        raise ValueError(f"W has shape {W.shape}, expected (M, {d + 1 if augment else d}, same)")
    if N == 0:
        raise ValueError("attention over zero keys is undefined")
    dv = D if value == "augmented" else d
    if D > MAX_DIM:
        raise ValueError(f"the CUDA feature kernel handles d + 1 <= {MAX_DIM}; use method='batched'")
    out_dtype = "float32" if W.dtype == np.float32 else "float64"
    score_dtype = "float32" if (x0.dtype == X.dtype == W.dtype == np.float32) else "float64"
    itemsize = 4 if out_dtype == "float32" else 8
    hb = int(hb or _HB)
    sb = int(sb or samples_per_block(hb, dv, itemsize))
    cn = 1.0 if activation == "softmax" else (1.0 / N if key_norm == "mean" else 1.0)  # softmax: no c_N
    fac = cn / math.sqrt(M) if scale else cn
    on_device = backend.on_device(x0, X, W)
    if on_device:
        import cupy as cp

        x0_d = cp.ascontiguousarray(cp.asarray(x0))
        X_d = cp.ascontiguousarray(cp.asarray(X))
        wt = cp.ascontiguousarray(cp.transpose(cp.asarray(W), (1, 2, 0)))
        out = cp.empty((n, M * dv), dtype=out_dtype)
    else:
        x0_d = cuda.to_device(np.ascontiguousarray(x0))
        X_d = cuda.to_device(np.ascontiguousarray(X))
        wt = cuda.to_device(np.ascontiguousarray(np.transpose(W, (1, 2, 0))))
        out = cuda.device_array((n, M * dv), dtype=out_dtype)
    if n and M:
        args = (x0_d, X_d, wt, float(fac), out)
        kern = rfa_kernel(d, bool(augment), dv, activation, score_dtype, out_dtype, hb, sb)
        top = max_threads(kern, args)  # the registers bound a block: fewer samples per block if need be
        if top is not None and hb * sb > top:
            hb = clamp_threads(hb, top)
            sb = max(1, top // hb)
            kern = rfa_kernel(d, bool(augment), dv, activation, score_dtype, out_dtype, hb, sb)
        blocks = math.ceil(n / sb) * math.ceil(M / hb)
        if on_device:  # on CuPy's stream, without numba's per-argument host synchronisation
            stream, args = cupy_launch(*args)
            kern[blocks, (hb, sb), stream](*args)
        else:
            kern[blocks, (hb, sb)](*args)
    return out if on_device else out.copy_to_host()


def rfmlp_features(x0, X, Wm, *, augment: bool = True, scale: bool = True, chunk: int = 8192):
    """ReLU random features of the flattened input, ``(n, P)`` (``sim.random_features.rfmlp_features``).

    One GEMM per chunk of rows written straight into the output (``matmul(..., out=)``; cuBLAS
    for CuPy arrays), then an in-place ReLU; the ``1/sqrt(P)`` scale is folded into the (small)
    weight matrix, which is exact up to one rounding since ReLU is positively homogeneous.
    Runs in the inputs' namespace (CuPy for device arrays, else NumPy)."""
    xp = _xp(x0, X, Wm)
    x0, X, Wm = xp.asarray(x0), xp.asarray(X), xp.asarray(Wm)
    n = X.shape[0]
    P = Wm.shape[0]
    out = xp.empty((n, P), dtype=Wm.dtype)
    Ws = Wm * (1.0 / math.sqrt(P)) if scale else Wm
    WsT = Ws.T
    for s in range(0, n, max(1, int(chunk))):
        e = min(n, s + chunk)
        parts = [x0[s:e], xp.reshape(X[s:e], (e - s, -1))]
        if augment:
            parts.append(xp.ones((e - s, 1), dtype=x0.dtype))
        z = xp.concatenate(parts, axis=1)
        o = out[s:e]
        if xp.result_type(z.dtype, Ws.dtype) == out.dtype:
            xp.matmul(z, WsT, out=o)
        else:
            o[...] = z @ WsT
        xp.maximum(o, 0.0, out=o)
    return out


def gram_update(phi, y, state=None, *, block_rows: int | None = None):
    """Add the rows of ``phi (n, P)`` and ``y (n, T)`` to the float64 sums
    ``state = (G, Sy, s1, sy)`` = (Phi^T Phi, Phi^T y, sum of rows of Phi, sum of rows of y)
    and return them (updated in place; ``state=None`` starts from zero).

    Float64 inputs take one GEMM over all rows; other dtypes are converted to float64 one block
    of ``block_rows`` rows at a time (default: ~128 MB per block), so every sum over rows is
    accumulated in float64. Runs in the inputs' namespace (cuBLAS DGEMM through CuPy for device
    arrays)."""
    xp = _xp(phi, y)
    n, P = phi.shape
    T = y.shape[1]
    if y.shape[0] != n:
        raise ValueError("phi and y need the same number of rows")
    if state is None:
        G, Sy = xp.zeros((P, P)), xp.zeros((P, T))
        s1, sy = xp.zeros(P), xp.zeros(T)
    else:
        G, Sy, s1, sy = state
    if phi.dtype == np.float64 and y.dtype == np.float64:
        block = max(n, 1)
    else:
        block = int(block_rows or max(256, (1 << 24) // max(P, 1)))
    for s in range(0, n, block):
        e = min(n, s + block)
        b = xp.asarray(phi[s:e], dtype=xp.float64)
        yb = xp.asarray(y[s:e], dtype=xp.float64)
        G += b.T @ b
        Sy += b.T @ yb
        s1 += xp.sum(b, axis=0)
        sy += xp.sum(yb, axis=0)
    return G, Sy, s1, sy


def eigh(A):
    """Symmetric eigendecomposition ``(evals ascending, U)`` on the device (``cupy.linalg.eigh``,
    cuSOLVER ``syevd``) for device arrays; NumPy's ``eigh`` otherwise."""
    xp = _xp(A)
    return xp.linalg.eigh(A)
