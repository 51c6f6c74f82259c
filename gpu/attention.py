"""Streaming softmax attention on a CUDA device (numba-cuda), the twin of ``sim.attention``.

Contract (as :func:`sim.attention.softmax_attention`): score vectors ``a`` (q, dk), keys
``K`` (n, dk), values ``Y`` (n, dv; default the keys); returns ``out`` (q, dv) =
``sum_j softmax_j(<a_i, k_j>) y_j`` and ``lse`` (q,) = ``log sum_j exp(<a_i, k_j>)``.

Layout of the computation: the grid is (queries, token slices). In block (i, s) each of the
``tpb`` threads walks the tokens ``j = s*L + t, s*L + t + tpb, ...`` of slice s (consecutive
threads read consecutive tokens: coalesced), keeping an online softmax state ``(m, z, acc)``:
``m`` the running max score, ``z = sum exp(s_j - m)`` and ``acc = sum exp(s_j - m) y_j``, all
rescaled when m grows. The block merges its threads' states by a shared-memory tree, and the
host merges the slices with the same (associative) rule, so memory is O(q * slices * dv) and no
q x n array exists. Scores and exponentials use the input dtype (float32 inputs run on the fast
single-precision units and the fast ``ex2.approx`` exp); ``z`` and ``acc`` are float64 in
every case. One kernel is compiled per (dk, dv, score dtype), so the per-thread vectors have
constant sizes and stay in registers.

Limits: ``dk, dv <= MAX_DIM`` (per-thread accumulators live in registers). Inputs may be NumPy
arrays (copied to the device) or any ``__cuda_array_interface__`` arrays (CuPy): outputs are
NumPy for NumPy inputs and CuPy otherwise. Runs under ``NUMBA_ENABLE_CUDASIM=1`` without a GPU
(slowly: tests use tiny grids).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import config, cuda, float32, float64

from gpu.launch import clamp_grid_y, cupy_launch
from gpu.limits import ATTENTION_MAX_DIM as MAX_DIM
from sim import backend

__all__ = ["softmax_attention", "self_attention_moments", "merge_partials", "attend_kernel", "launch_geometry",
           "MAX_DIM"]

_TPB = 128  # threads per block on a real GPU (power of two)


# The float32 kernels are compiled WITHOUT fastmath: numba-cuda's fastmath means LLVM's "fast"
# flags, which assume no infinities, while the online-softmax state starts at -inf and the
# merges test "> -inf" (an empty slice). They get the fast exp explicitly instead: ex2.approx
# (libdevice's __nv_fast_expf, what fastmath would pick; exp(-inf) = +0 exactly).
if config.ENABLE_CUDASIM:  # the simulator has no libdevice

    @cuda.jit(device=True, inline="always")
    def fast_exp32(x):
        return math.exp(x)

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline="always")
    def fast_exp32(x):
        """exp of a float32 by ``ex2.approx`` (``__nv_fast_expf``)."""
        return libdevice.fast_expf(x)


@cuda.jit(device=True, inline="always")
def online_softmax_step32(s, m, z, acc, dv):
    """:func:`online_softmax_step` for float32 scores, with :func:`fast_exp32`."""
    if s > m:
        r = fast_exp32(m - s)  # 0 on the first score (m = -inf)
        z *= r
        for k in range(dv):
            acc[k] *= r
        m = s
    w = float64(fast_exp32(s - m))
    return m, z + w, w


@cuda.jit(device=True, inline="always")
def online_softmax_step(s, m, z, acc, dv):
    """Fold one score ``s`` into a thread's online-softmax state (running max ``m``, mass ``z``,
    numerator ``acc[:dv]``): rescales the state when ``s`` is a new maximum and returns
    ``(m, z, w)`` with ``w = exp(s - m)`` already added to ``z``; the caller adds ``w`` times
    its value to ``acc``."""
    if s > m:
        r = math.exp(m - s)  # 0 on the first score (m = -inf)
        z *= r
        for k in range(dv):
            acc[k] *= r
        m = s
    w = float64(math.exp(s - m))
    return m, z + w, w


@cuda.jit(device=True, inline="always")
def merge_block_states(m, z, acc, sm_m, sm_z, sm_acc, dv, pm, pz, pacc, i, sl):
    """Merge the threads' online-softmax states (m, z, acc[:dv]) by a tree in the block's
    shared arrays sm_m, sm_z (blockDim,) and sm_acc (blockDim, dv) (float64), and write the
    block's state to pm[i, sl], pz[i, sl], pacc[i, sl, :]. Every thread of the block must call
    it (it synchronises)."""
    t = cuda.threadIdx.x
    sm_m[t] = m
    sm_z[t] = z
    for k in range(dv):
        sm_acc[t, k] = acc[k]
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            m1 = sm_m[t]
            m2 = sm_m[t + stride]
            if m2 > -math.inf:
                mm = max(m1, m2)
                r1 = math.exp(m1 - mm) if m1 > -math.inf else 0.0
                r2 = math.exp(m2 - mm)
                sm_z[t] = sm_z[t] * r1 + sm_z[t + stride] * r2
                for k in range(dv):
                    sm_acc[t, k] = sm_acc[t, k] * r1 + sm_acc[t + stride, k] * r2
                sm_m[t] = mm
        cuda.syncthreads()
        stride //= 2
    if t == 0:
        pm[i, sl] = sm_m[0]
        pz[i, sl] = sm_z[0]
        for k in range(dv):
            pacc[i, sl, k] = sm_acc[0, k]


@functools.cache
def attend_kernel(dk: int, dv: int, score_dtype: str, values_are_keys: bool = False):
    """The kernel specialised to (dk, dv, score dtype): constant loop bounds let the per-thread
    score vector and accumulators live in registers, and float32 scores use the fast exp.
    ``values_are_keys`` (dk == dv, ``vt`` is ``kt``): each key is loaded once, into registers,
    and serves as the score's key and as the value (no second load of the same token).

    ``skip_offset >= 0`` drops key ``j = i + skip_offset`` from query i's softmax (self-attention
    without the query's own token, when the queries are a block of the keys starting there);
    ``skip_offset = -1`` keeps every key."""
    st = float32 if score_dtype == "float32" else float64
    step = online_softmax_step32 if score_dtype == "float32" else online_softmax_step
    same = bool(values_are_keys)
    if same and dk != dv:
        raise ValueError("values_are_keys needs dk == dv")
    neg_inf = -math.inf

    @cuda.jit  # no fastmath: the state starts at -inf (see fast_exp32)
    def kernel(a, kt, vt, slice_len, skip_offset, pm, pz, pacc):
        i = cuda.blockIdx.x
        sl = cuda.blockIdx.y
        t = cuda.threadIdx.x
        tpb = cuda.blockDim.x
        n = kt.shape[1]
        acc = cuda.local.array(dv, float64)
        ai = cuda.local.array(dk, st)
        kj = cuda.local.array(dk, st)
        for k in range(dv):
            acc[k] = 0.0
        for k in range(dk):
            ai[k] = a[i, k]
        m = st(neg_inf)
        z = 0.0
        j = sl * slice_len + t
        stop = min(n, (sl + 1) * slice_len)
        skip = i + skip_offset if skip_offset >= 0 else -1
        while j < stop:
            if j == skip:
                j += tpb
                continue
            for k in range(dk):
                kj[k] = kt[k, j]
            s = ai[0] * kj[0]
            for k in range(1, dk):
                s += ai[k] * kj[k]
            m, z, w = step(s, m, z, acc, dv)
            if same:
                for k in range(dv):
                    acc[k] += w * kj[k]
            else:
                for k in range(dv):
                    acc[k] += w * vt[k, j]
            j += tpb

        # merge the block's threads: shared-memory tree of (m, z, acc), in float64
        sm_m = cuda.shared.array(_TPB, float64)
        sm_z = cuda.shared.array(_TPB, float64)
        sm_acc = cuda.shared.array((_TPB, dv), float64)
        merge_block_states(m, z, acc, sm_m, sm_z, sm_acc, dv, pm, pz, pacc, i, sl)

    return kernel


def merge_partials(pm, pz, pacc, xp=np):
    """Merge per-slice softmax states (m, z, acc) along axis 1 into (out, lse)."""
    m = xp.max(pm, axis=1)
    r = xp.where(pm > -xp.inf, xp.exp(pm - m[:, None]), 0.0)
    z = xp.sum(pz * r, axis=1)
    acc = xp.sum(pacc * r[:, :, None], axis=1)
    return acc / z[:, None], m + xp.log(z)


def launch_geometry(n: int, q: int, tpb: int | None = None, slices: int | None = None) -> tuple[int, int, int]:
    """``(tpb, slices, slice_len)`` of a launch over ``n`` tokens and ``q`` queries: ``tpb`` a power of
    two <= 128; by default enough slices to fill a large GPU (~4 waves of 132 SMs x 16 blocks)
    without slices under 4 tpb tokens; ``slices`` (the grid's y) never above CUDA's 65 535 nor n."""
    tpb = min(_TPB, 1 << max(0, int(tpb or _TPB) - 1).bit_length())
    if slices is None:
        slices = max(1, min(n // (4 * tpb) or 1, math.ceil(8192 / q)))
    slices = min(clamp_grid_y(slices), max(1, n))
    slice_len = math.ceil(n / slices)
    return tpb, math.ceil(n / slice_len), slice_len


def softmax_attention(a, keys, values=None, *, tpb: int | None = None, slices: int | None = None,
                      skip_offset: int = -1):
    """Streaming softmax attention on the GPU; returns ``(out, lse)`` (module docstring).
    ``skip_offset >= 0`` leaves key ``i + skip_offset`` out of query i (see :func:`attend_kernel`)."""
    values = keys if values is None else values
    if a.ndim != 2 or keys.ndim != 2 or values.ndim != 2 or a.shape[1] != keys.shape[1]:
        raise ValueError("need a (q, dk), keys (n, dk), values (n, dv)")
    q, dk = a.shape
    n, dv = values.shape
    if n == 0 or keys.shape[0] != n:
        raise ValueError("keys and values need the same, positive, number of rows")
    if dk > MAX_DIM or dv > MAX_DIM:
        raise ValueError(f"the CUDA kernel handles dk, dv <= {MAX_DIM}; use method='stream'")
    on_device = backend.on_device(a)
    tpb, slices, slice_len = launch_geometry(n, q, tpb, slices)
    if on_device:
        import cupy as xp

        kt = xp.ascontiguousarray(keys.T)
        vt = kt if values is keys else xp.ascontiguousarray(values.T)
        a_d = xp.ascontiguousarray(a)
        pm = xp.empty((q, slices))
        pz = xp.empty((q, slices))
        pacc = xp.empty((q, slices, dv))
    else:
        xp = np
        kt_h = np.ascontiguousarray(keys.T)
        kt = cuda.to_device(kt_h)
        vt = kt if values is keys else cuda.to_device(np.ascontiguousarray(values.T))
        a_d = cuda.to_device(np.ascontiguousarray(a))
        pm = cuda.device_array((q, slices))
        pz = cuda.device_array((q, slices))
        pacc = cuda.device_array((q, slices, dv))
    score_dtype = "float32" if (a.dtype == np.float32 and keys.dtype == np.float32) else "float64"
    kernel = attend_kernel(dk, dv, score_dtype, vt is kt)
    args = (a_d, kt, vt, slice_len, int(skip_offset), pm, pz, pacc)
    if on_device:  # on CuPy's stream, without numba's per-argument host synchronisation
        stream, args = cupy_launch(*args)
        kernel[(q, slices), tpb, stream](*args)
    else:
        kernel[(q, slices), tpb](*args)
    if not on_device:
        pm, pz, pacc = pm.copy_to_host(), pz.copy_to_host(), pacc.copy_to_host()
    return merge_partials(pm, pz, pacc, xp)


def self_attention_moments(tokens, A, V=None, scales=(1.0,), *, exclude_self: bool = False,
                           block_q: int = 1 << 16, tpb: int | None = None, slices: int | None = None):
    """Mean and (population) covariance of the self-attention outputs
    ``o_i(s) = V sum_j softmax_j(s <A x_i, x_j>) x_j`` for each scale s — the contract of
    ``sim.attention.self_attention_moments``. Outputs are computed ``block_q`` queries at a time
    by the streaming kernel (the token values stay in the kernel's dtype; the moments of each
    block are merged with Chan's update in float64), so memory is O(block_q * d), never n x n.
    Needs d <= MAX_DIM. Returns NumPy arrays (S, d_v) and (S, d_v, d_v) for NumPy tokens, CuPy
    arrays otherwise."""
    n, d = tokens.shape
    if d > MAX_DIM:
        raise ValueError(f"the CUDA kernel handles d <= {MAX_DIM}; use method='stream'")
    on_device = backend.on_device(tokens)
    if on_device:
        import cupy as xp
    else:
        xp = np
    A = np.asarray(A.get() if hasattr(A, "get") else A, dtype=np.float64)
    scales = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    Vm = None if V is None else np.asarray(V.get() if hasattr(V, "get") else V, dtype=np.float64)
    dv = d if Vm is None else Vm.shape[0]
    means = np.zeros((scales.size, dv))
    covs = np.zeros((scales.size, dv, dv))
    Q = tokens @ xp.asarray(A.T, dtype=tokens.dtype)
    for si, s in enumerate(scales.tolist()):
        count, mean, m2 = 0, np.zeros(dv), np.zeros((dv, dv))
        for q0 in range(0, n, block_q):
            qb = Q[q0:min(n, q0 + block_q)] * tokens.dtype.type(s)
            out, _ = softmax_attention(qb, tokens, tpb=tpb, slices=slices,
                                       skip_offset=q0 if exclude_self else -1)
            if Vm is not None:
                out = out @ xp.asarray(Vm.T)
            bm = xp.mean(out, axis=0)
            oc = out - bm
            bm2 = oc.T @ oc
            bm, bm2 = (np.asarray(bm.get() if on_device else bm), np.asarray(bm2.get() if on_device else bm2))
            nb = out.shape[0]
            delta = bm - mean
            tot = count + nb
            mean = mean + delta * (nb / tot)
            m2 = m2 + bm2 + np.outer(delta, delta) * (count * nb / tot)
            count = tot
        means[si], covs[si] = mean, m2 / n
    if on_device:
        return xp.asarray(means), xp.asarray(covs)
    return means, covs
