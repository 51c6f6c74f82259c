r"""Exact tensor attention and the polynomial method on a CUDA device: the twins of ``sim.tensor_attention``.

Contracts (the same as the CPU engine's; rows are tokens, the softmax scale ``s`` defaults to
``1/d``, the convention of Alman & Song):

* :func:`tensor_attention` ``(Q, K1, K2, V1, V2)`` -> ``T`` (nq, dv) [and ``lse`` (nq,)], with
  ``logit(i, j1, j2) = s sum_l Q[i,l] K1[j1,l] K2[j2,l]``, a softmax *joint* over all
  ``n1 n2`` pairs, values ``V1[j1] o V2[j2]`` (Khatri-Rao rows) and
  ``lse_i = log sum_{j1,j2} exp(logit(i, j1, j2))``; :func:`matrix_attention` and
  :func:`kth_order_attention` (k = 2, 3) complete the exact family (k = 2 runs
  :func:`gpu.attention.softmax_attention` on ``s Q``).
* :func:`polynomial_num_den` ``(Q, keys, values, parent, var, weights)`` -> ``(num, den)``, the
  numerics of :func:`sim.tensor_attention.polynomial_attention` (which adds the design range,
  positivity checks and diagnostics and divides): with the monomial features
  ``F[alpha, j] = X[j]^alpha`` (multi-index ``alpha`` given by its parent ``alpha - e_var`` and
  the variable ``var``, as in :class:`theory.tensor_attention.MultiIndex`),

      S = w o prod_m F(K_m) [V_m, 1]     (r x (dv + 1)),     [num, den] = F(Q)^T S.

  :func:`monomial_features` is the twin of :func:`sim.tensor_attention.monomial_features`
  (``(r, n)``, feature-major).

Inputs may be NumPy arrays (copied to the device with ``cuda.to_device``: how the simulator
tests run them; results come back as NumPy) or ``__cuda_array_interface__`` arrays (CuPy:
everything stays on the device and the results are CuPy arrays). Nothing here imports CuPy at
module level.

Exact kernel (``exact_kernel(d, dv, score dtype)``)
----------------------------------------------------
Grid ``(nq, slices)`` of blocks of ``tpb`` threads (a power of two <= 128). The ``P = n1 n2``
pairs are flattened, ``p = j1 n2 + j2`` (the CPU engine's Khatri-Rao order), and cut into
``slices`` contiguous slices; in block ``(i, sl)`` thread ``t`` walks the pairs
``p = sl L + t, sl L + t + tpb, ...`` of slice ``sl``, so consecutive threads read consecutive
columns of ``K2^T`` (d, n2) and ``V2^T`` (dv, n2): coalesced, and after the first block these
small matrices sit in L2. ``(j1, j2)`` advance incrementally (an integer division only when
``j2`` wraps), and the thread keeps ``p_l = s Q[i,l] K1[j1,l]`` and ``V1[j1]`` in registers,
reloading them only when ``j1`` changes (every ``~n2 / tpb`` steps). Each thread holds an
online-softmax state ``(m, z, acc)``: the running max logit, ``z = sum exp(logit - m)`` and
``acc = sum exp(logit - m) V1[j1] o V2[j2]``, rescaled when ``m`` grows, so any finite logit
range is safe (the Match3 construction reaches ``|logit| ~ 1e3-1e5``). The block merges its
threads' states by a shared-memory tree (float64), and the host merges the slices with the
same associative rule (:func:`gpu.attention.merge_partials`). Memory: O(nq slices dv); no
``nq x n1 n2`` array exists. float32 inputs give float32 logits and the fast ``ex2.approx``
exp; ``z`` and ``acc`` are float64 in every case. One kernel per (d, dv, dtype) keeps the
per-thread vectors in registers (``d, dv <= MAX_DIM``; checked in the PTX: no ``.local``).

Feature kernel (``feature_kernel()``)
-------------------------------------
``F[a, j] = w_a X[j]^alpha_a`` for one chunk of rows, written into an ``(r, c)`` float64 array.
Grid ``(ceil(c / tpb), min(r, 65535))``: thread ``(bx, t)`` owns row ``j = bx tpb + t``
(consecutive threads, consecutive rows: coalesced reads of ``X^T`` (d, c) and coalesced writes
of ``F[a, :]``), and block row ``by`` takes the features ``a = by, by + gridDim.y, ...``. Each
thread walks the parent chain of ``alpha_a`` (``|alpha_a| <= g`` multiplies by
``X^T[var, j]``); ``parent``/``var``/``w`` are read at one address per warp (broadcast). No
thread waits for another, so one launch builds every degree (the CPU builds level by level).
The products ``F(K_m) [V_m, 1]`` (one GEMM per chunk gives both ``S_m`` and ``z_m``) and
``F(Q)^T S`` are cuBLAS DGEMMs through CuPy (NumPy on the host for NumPy inputs). Rows are
chunked so a feature block holds at most ``FEATURE_BUDGET`` numbers (256 MiB).

Cost model (expected, **not measured**: no GPU was available when this was written)
-----------------------------------------------------------------------------------
* exact, per (query, pair): ``2d`` flops for the logit, one exp, ``3 dv`` float64 flops for
  the values (plus the per-j1 reload, ``d + dv`` loads and ``d`` multiplies amortised over
  ``~n2 / tpb`` pairs), and no DRAM traffic once ``K2, V2`` (``8 n2 (d + dv)`` bytes) sit in
  L2: compute-bound. float64 at d = dv = 4: about 20 flops + a float64 exp (~20-25 more) per
  triple, so an H100 SXM (vendor figure ~34 TFLOP/s FP64 without tensor cores) would top out
  near 7e11 triples/s; the float32 path moves the logit and the exp to the float32 units
  (``ex2.approx``) but keeps the float64 accumulation. Work ``nq n1 n2``: n = 4096 over all
  rows is 6.9e10 triples, i.e. an *expected* 0.1-0.5 s.
* features, per (row, feature): ``<= g`` multiplies, one 8-byte store, then 8 bytes read by the
  GEMM, which does ``2 (dv + 1)`` flops per element: ~16 bytes per element, bandwidth-bound
  (~2e11 elements/s at 3.35 TB/s). Work ``(nq + n1 + n2) r`` elements, ``r = C(d+g, g)``; at
  n = 4096, d = 4, r ~ 10^3 that is ~1e7 elements, so launch latency (~10 us per kernel and
  GEMM) dominates at that size.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float32, float64

from gpu.attention import merge_block_states, merge_partials, online_softmax_step, online_softmax_step32
from gpu.launch import cupy_launch
from gpu.limits import MAX_GRID_Y as _MAX_GRID_Y
from gpu.limits import TENSOR_MAX_DIM as MAX_DIM  # largest d and dv of the exact kernel (registers)
from sim import backend

__all__ = [
    "MAX_DIM",
    "FEATURE_BUDGET",
    "exact_kernel",
    "feature_kernel",
    "tensor_attention",
    "matrix_attention",
    "kth_order_attention",
    "monomial_features",
    "polynomial_num_den",
]

FEATURE_BUDGET = 1 << 25  # float64 numbers in one feature block (256 MiB)
_TPB = 128  # threads per block of the exact kernel on a real GPU (power of two)
_FEATURE_TPB = 256  # threads per block of the feature kernel


def _scale(scale, d: int) -> float:
    s = 1.0 / d if scale is None else float(scale)
    if not math.isfinite(s):
        raise ValueError("the softmax scale must be finite")
    return s


# --------------------------------------------------------------------------- exact
@functools.cache
def exact_kernel(d: int, dv: int, score_dtype: str):
    """The exact tensor-attention kernel specialised to (d, dv, score dtype): constant loop
    bounds keep the per-thread vectors in registers; float32 logits use the fast exp."""
    st = float32 if score_dtype == "float32" else float64
    step = online_softmax_step32 if score_dtype == "float32" else online_softmax_step
    neg_inf = -math.inf

    @cuda.jit  # no fastmath: the state starts at -inf (gpu.attention.fast_exp32 gives the fast exp)
    def kernel(a, k1, k2t, v1, v2t, slice_len, pm, pz, pacc):
        i = cuda.blockIdx.x
        sl = cuda.blockIdx.y
        t = cuda.threadIdx.x
        tpb = cuda.blockDim.x
        n1 = k1.shape[0]
        n2 = k2t.shape[1]
        ai = cuda.local.array(d, st)
        p = cuda.local.array(d, st)
        u = cuda.local.array(dv, st)
        acc = cuda.local.array(dv, float64)
        for l in range(d):
            ai[l] = a[i, l]
            p[l] = 0
        for k in range(dv):
            acc[k] = 0.0
            u[k] = 0
        m = st(neg_inf)
        z = 0.0
        pos = sl * slice_len + t
        stop = min(n1 * n2, (sl + 1) * slice_len)
        j1 = pos // n2
        j2 = pos - j1 * n2
        cur = -1
        while pos < stop:
            if j1 != cur:  # a new first-key row: refresh the per-j1 registers
                for l in range(d):
                    p[l] = ai[l] * k1[j1, l]
                for k in range(dv):
                    u[k] = v1[j1, k]
                cur = j1
            s = p[0] * k2t[0, j2]
            for l in range(1, d):
                s += p[l] * k2t[l, j2]
            m, z, w = step(s, m, z, acc, dv)
            for k in range(dv):
                acc[k] += w * (u[k] * v2t[k, j2])
            pos += tpb
            j2 += tpb
            if j2 >= n2:
                q = j2 // n2
                j1 += q
                j2 -= q * n2

        # merge the block's threads: shared-memory tree of (m, z, acc), in float64
        sm_m = cuda.shared.array(_TPB, float64)
        sm_z = cuda.shared.array(_TPB, float64)
        sm_acc = cuda.shared.array((_TPB, dv), float64)
        merge_block_states(m, z, acc, sm_m, sm_z, sm_acc, dv, pm, pz, pacc, i, sl)

    return kernel


def _check_exact(Q, K1, K2, V1, V2):
    for name, X in (("Q", Q), ("K1", K1), ("K2", K2), ("V1", V1), ("V2", V2)):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows are tokens)")
    nq, d = Q.shape
    if K1.shape[1] != d or K2.shape[1] != d:
        raise ValueError("Q, K1 and K2 need the same number of columns d")
    if K1.shape[0] != V1.shape[0] or K2.shape[0] != V2.shape[0]:
        raise ValueError("K_m and V_m must have the same number of rows")
    if V1.shape[1] != V2.shape[1]:
        raise ValueError("V1 and V2 must have the same number of columns")
    if K1.shape[0] == 0 or K2.shape[0] == 0:
        raise ValueError("attention over zero tokens is undefined")
    dv = V1.shape[1]
    if d > MAX_DIM or dv > MAX_DIM:
        raise ValueError(f"the CUDA kernel handles d, dv <= {MAX_DIM}; use method='stream'")
    return nq, d, dv


def tensor_attention(Q, K1, K2, V1, V2, *, scale=None, return_lse: bool = False,
                     tpb: int | None = None, slices: int | None = None):
    """Exact tensor attention on the GPU (module docstring); ``T`` or ``(T, lse)``, float64.

    ``tpb`` (threads per block, rounded to a power of two <= 128) and ``slices`` (pair slices
    per query) override the launch configuration (tests use tiny ones)."""
    nq, d, dv = _check_exact(Q, K1, K2, V1, V2)
    s = _scale(scale, d)
    on_device = backend.on_device(Q)
    if nq == 0:
        xp = _cupy() if on_device else np
        out, lse = xp.zeros((0, dv)), xp.zeros((0,))
        return (out, lse) if return_lse else out
    n1, n2 = K1.shape[0], K2.shape[0]
    npairs = n1 * n2
    f32 = all(X.dtype == np.float32 for X in (Q, K1, K2, V1, V2))
    tpb = min(_TPB, 1 << max(0, int(tpb or _TPB) - 1).bit_length())
    if slices is None:
        # ~8192 blocks (about 4 waves of 132 SMs x 16 resident blocks), no slice under 4 tpb pairs
        slices = max(1, min(npairs // (4 * tpb) or 1, math.ceil(8192 / nq)))
    slices = max(1, min(int(slices), _MAX_GRID_Y, npairs))
    slice_len = math.ceil(npairs / slices)
    slices = math.ceil(npairs / slice_len)
    if on_device:
        xp = _cupy()
        dt = xp.float32 if f32 else xp.float64
        a = xp.ascontiguousarray((xp.asarray(Q, dtype=xp.float64) * s).astype(dt))
        k1 = xp.ascontiguousarray(K1, dtype=dt)
        k2t = xp.ascontiguousarray(K2.T, dtype=dt)
        v1 = xp.ascontiguousarray(V1, dtype=dt)
        v2t = xp.ascontiguousarray(V2.T, dtype=dt)
        pm, pz, pacc = xp.empty((nq, slices)), xp.empty((nq, slices)), xp.empty((nq, slices, dv))
    else:
        xp = np
        dt = np.float32 if f32 else np.float64
        host = (
            (np.asarray(Q, dtype=np.float64) * s).astype(dt),
            np.asarray(K1, dtype=dt), np.asarray(K2, dtype=dt).T,
            np.asarray(V1, dtype=dt), np.asarray(V2, dtype=dt).T,
        )
        a, k1, k2t, v1, v2t = (cuda.to_device(np.ascontiguousarray(X)) for X in host)
        pm, pz = cuda.device_array((nq, slices)), cuda.device_array((nq, slices))
        pacc = cuda.device_array((nq, slices, dv))
    kernel = exact_kernel(d, dv, "float32" if f32 else "float64")
    args = (a, k1, k2t, v1, v2t, slice_len, pm, pz, pacc)
    if on_device:  # on CuPy's stream, without numba's per-argument host synchronisation
        stream, args = cupy_launch(*args)
        kernel[(nq, slices), tpb, stream](*args)
    else:
        kernel[(nq, slices), tpb](*args)
    if not on_device:
        pm, pz, pacc = pm.copy_to_host(), pz.copy_to_host(), pacc.copy_to_host()
    out, lse = merge_partials(pm, pz, pacc, xp)
    return (out, lse) if return_lse else out


def matrix_attention(Q, K, V, *, scale=None, return_lse: bool = False):
    """Exact ``D^{-1} exp(s Q K^T) V`` (k = 2) through :func:`gpu.attention.softmax_attention`."""
    from gpu.attention import softmax_attention

    s = _scale(scale, Q.shape[1])
    if Q.shape[0] == 0:
        xp = _cupy() if backend.on_device(Q) else np
        out, lse = xp.zeros((0, V.shape[1])), xp.zeros((0,))
    else:
        out, lse = softmax_attention(Q * s, K, V)
    return (out, lse) if return_lse else out


def kth_order_attention(Q, keys, values, *, scale=None, return_lse: bool = False):
    """Exact order-k attention for k = 2 (matrix) and k = 3 (tensor) on the GPU."""
    keys, values = list(keys), list(values)
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} key matrices but {len(values)} value matrices")
    if len(keys) == 1:
        return matrix_attention(Q, keys[0], values[0], scale=scale, return_lse=return_lse)
    if len(keys) == 2:
        return tensor_attention(Q, *keys, *values, scale=scale, return_lse=return_lse)
    raise ValueError("the CUDA kernels cover k = 2, 3; use method='stream' for k >= 4")


# ---------------------------------------------------------------- polynomial method
@functools.cache
def feature_kernel():
    """``F[a, j] = w[a] prod_{b in chain(a)} xt[var[b], j]`` (module docstring)."""

    @cuda.jit
    def kernel(xt, parent, var, w, F):
        c = xt.shape[1]
        r = F.shape[0]
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if j >= c:
            return
        a = cuda.blockIdx.y
        while a < r:
            v = w[a]
            b = a
            while b > 0:
                v *= xt[var[b], j]
                b = parent[b]
            F[a, j] = v
            a += cuda.gridDim.y

    return kernel


class _Plan:
    """The multi-index tables on the device, shared by every feature launch of one call."""

    def __init__(self, parent, var, weights, on_device, tpb, blocks_y):
        parent = np.ascontiguousarray(parent, dtype=np.int64)
        var = np.ascontiguousarray(var, dtype=np.int64)
        if parent.ndim != 1 or var.shape != parent.shape or parent.size == 0:
            raise ValueError("parent and var must be 1-D arrays of the same (positive) length")
        self.r = parent.size
        if np.any(parent[1:] >= np.arange(1, self.r)) or np.any(parent[1:] < 0):
            raise ValueError("parent[a] must point to an earlier feature (graded order; parent[0] = -1)")
        w = np.ones(self.r) if weights is None else np.ascontiguousarray(_host(weights), dtype=np.float64)
        if w.shape != (self.r,):
            raise ValueError(f"need {self.r} weights, got shape {w.shape}")
        self.on_device = on_device
        if on_device:
            cp = _cupy()
            self.parent, self.var, self.w = cp.asarray(parent), cp.asarray(var), cp.asarray(w)
        else:
            self.parent, self.var, self.w = cuda.to_device(parent), cuda.to_device(var), cuda.to_device(w)
        self.tpb = int(tpb or _FEATURE_TPB)
        self.blocks_y = max(1, min(self.r, int(blocks_y or _MAX_GRID_Y), _MAX_GRID_Y))
        self.d = int(var.max()) + 1 if self.r > 1 else 0

    def features(self, X):
        """``(r, c)`` float64 features of the rows of ``X`` (c, d), in X's memory space."""
        c = X.shape[0]
        if self.on_device:
            cp = _cupy()
            xt = cp.ascontiguousarray(cp.asarray(X, dtype=cp.float64).T)
            F = cp.empty((self.r, c))
        else:
            xt = cuda.to_device(np.ascontiguousarray(np.asarray(X, dtype=np.float64).T))
            F = cuda.device_array((self.r, c))
        if c:
            tpb = min(self.tpb, 32 * math.ceil(c / 32))  # short chunks: no idle warps
            grid = (math.ceil(c / tpb), self.blocks_y)
            args = (xt, self.parent, self.var, self.w, F)
            if self.on_device:  # on CuPy's stream, no per-argument host synchronisation
                stream, args = cupy_launch(*args)
                feature_kernel()[grid, tpb, stream](*args)
            else:
                feature_kernel()[grid, tpb](*args)
        return F if self.on_device else F.copy_to_host()


def _host(x):
    return x.get() if hasattr(x, "get") and backend.on_device(x) else np.asarray(x)


def _cupy():
    import cupy

    return cupy


def _chunk(n: int, r: int, chunk: int | None) -> int:
    if chunk is not None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        return int(chunk)
    return max(256, FEATURE_BUDGET // max(r, 1)) if n else 1


def monomial_features(X, parent, var, weights=None, *, tpb: int | None = None, blocks_y: int | None = None):
    """``F[alpha, j] = w_alpha X[j]^alpha``, shape ``(r, n)`` float64 (the twin of
    :func:`sim.tensor_attention.monomial_features`, with the multi-index given by its
    ``parent``/``var`` tables). One launch; NumPy in -> NumPy out, device in -> CuPy out."""
    if X.ndim != 2:
        raise ValueError("X must be 2-D (rows are tokens)")
    plan = _Plan(parent, var, weights, backend.on_device(X), tpb, blocks_y)
    if plan.d > X.shape[1]:
        raise ValueError(f"the multi-index uses {plan.d} variables, X has {X.shape[1]} columns")
    return plan.features(X)


def polynomial_num_den(Q, keys, values, parent, var, weights, *, chunk: int | None = None,
                       tpb: int | None = None, blocks_y: int | None = None):
    """Numerator ``(nq, dv)`` and normaliser ``(nq,)`` of the polynomial method (module
    docstring): features by the numba-cuda kernel, ``F(K_m) [V_m, 1]`` and ``F(Q)^T S`` by
    cuBLAS (CuPy) for device arrays, by NumPy for host arrays. float64 throughout; rows are
    streamed in chunks of ``chunk`` (default: ``FEATURE_BUDGET / r`` rows)."""
    keys, values = list(keys), list(values)
    if not keys or len(keys) != len(values):
        raise ValueError("need as many (>= 1) value matrices as key matrices")
    on_device = backend.on_device(Q)
    xp = _cupy() if on_device else np
    plan = _Plan(parent, var, None, on_device, tpb, blocks_y)  # unit weights: w multiplies S
    r = plan.r
    w = np.ascontiguousarray(_host(weights), dtype=np.float64)
    if w.shape != (r,):
        raise ValueError(f"need {r} weights, got shape {w.shape}")
    d = Q.shape[1]
    if plan.d > d:
        raise ValueError(f"the multi-index uses {plan.d} variables, Q has {d} columns")
    dv = values[0].shape[1]
    S = xp.broadcast_to(xp.asarray(w)[:, None], (r, dv + 1)).copy()  # w o prod_m F(K_m) [V_m, 1]
    for K, V in zip(keys, values):
        n = K.shape[0]
        if K.shape[1] != d or V.shape != (n, dv):
            raise ValueError("every K_m must be (n_m, d) and V_m (n_m, dv)")
        L = _chunk(n, r, chunk)
        Vaug = xp.concatenate([xp.asarray(V, dtype=xp.float64), xp.ones((n, 1))], axis=1)
        Sm = xp.zeros((r, dv + 1))
        for c0 in range(0, n, L):
            c1 = min(n, c0 + L)
            Sm += plan.features(K[c0:c1]) @ Vaug[c0:c1]
        S *= Sm
    nq = Q.shape[0]
    L = _chunk(nq, r, chunk)
    res = xp.empty((nq, dv + 1))
    for c0 in range(0, nq, L):
        c1 = min(nq, c0 + L)
        res[c0:c1] = plan.features(Q[c0:c1]).T @ S
    return res[:, :dv], res[:, dv]
