r"""Exact and near-linear bounded-entry matrix, tensor and k-th order attention; FAVOR+; Match3.

Contract
--------
Inputs are row-major ``(n, d)`` arrays (rows are tokens): a query matrix ``Q`` (``nq x d``), key
matrices ``K_1..K_{k-1}`` (``n_m x d``) and value matrices ``V_1..V_{k-1}`` (``n_m x dv``, the
same ``dv`` for all). With softmax scale ``s`` (default ``1/d``, the convention of Alman & Song
[AS23, AS24]; pass ``scale=`` for others, e.g. ``1/sqrt(d)`` of the 2-simplicial papers), the
order-k attention of query ``i`` is

    logit(i, j_1..j_{k-1}) = s * sum_l Q[i,l] K_1[j_1,l] ... K_{k-1}[j_{k-1},l]
    T[i, :] = sum_J softmax_J(logit(i, J)) * V_1[j_1, :] o ... o V_{k-1}[j_{k-1}, :]

where ``o`` is the entrywise product and **the softmax is joint over all** ``n_1 ... n_{k-1}``
index tuples ``J``. k = 2 is matrix attention ``D^{-1} exp(s Q K^T) V``; k = 3 is tensor attention
``D^{-1} exp(s Q (K_1 ⊘ K_2)^T) (V_1 ⊘ V_2)`` with ``⊘`` the column-wise Kronecker (Khatri–Rao)
product (spec §1). The order of the ``n^2`` Khatri–Rao rows never matters (tested); this module
uses numpy's order, row ``j_1 n_2 + j_2`` (second index fastest); :func:`khatri_rao` also gives
the paper's order (first index fastest).

Exact implementations (``method=``), all float64, all agreeing to ~1e-13 (tests/sim):

``"numba"``  k = 3: a fused CPU kernel, parallel over queries; for each (i, j_1) the scores over
             all j_2 are streamed through an online softmax (running reference score, rescale on
             overflow), so memory is O(n) per thread and no ``n x n^2`` array exists. k = 2 is the
             foundation's :func:`sim.attention.softmax_attention`.
``"stream"`` any k, array-namespace code (NumPy or CuPy): blocks of queries times chunks of the
             flattened prefix tuples ``(j_1..j_{k-2})``, scores against ``K_{k-1}`` by one GEMM,
             joint online softmax with float64 accumulators; memory O(budget).
``"naive"``  materialise the flattened Khatri–Rao keys/values and call the foundation's naive
             softmax (small inputs only): the ``D^{-1} A V`` form of the spec.
``"loop"``   pure-Python loops over (i, J): the obviously-correct oracle (tiny inputs only).
``"cuda"``   k = 2, 3 on a CUDA device: the numba-cuda kernels of :mod:`gpu.tensor_attention`
             (k = 3: pairs (j_1, j_2) flattened across threads, online softmax per thread, block
             and slice merges; k = 2: :mod:`gpu.attention`), for device (CuPy) arrays or, under
             the CUDA simulator, NumPy arrays; ``d, dv <= MAX_DIM`` of the kernel's module.
             ``"auto"`` picks it for device arrays (k <= 3, dimensions that fit), else
             ``"numba"`` for NumPy and ``"stream"`` for other namespaces.

Polynomial method (AS23/AS24, spec §2): with ``P(x) = sum_{t<=g} c_t x^t`` (Taylor or Chebyshev,
:mod:`theory.tensor_attention`) and multi-indices ``alpha`` (``|alpha| <= g``, ``r = C(d+g, g)``),
the monomial feature maps

    U_1[i, alpha] = w_alpha Q[i]^alpha,   U_{m+1}[j, alpha] = K_m[j]^alpha,
    w_alpha = c_|alpha| s^|alpha| |alpha|!/alpha!

satisfy ``U_1 (U_2 ⊘ ... ⊘ U_k)^T = P(logits)`` exactly, and the tensor trick
``(U_2 ⊘ U_3)^T (V_1 ⊘ V_2) = (U_2^T V_1) o (U_3^T V_2)`` gives

    S = o_m (U_{m+1}^T V_m)   (r x dv),   z = o_m (U_{m+1}^T 1)   (r),   T ~ (U_1 S) / (U_1 z)

in O(n r d) time and O(chunk r) memory (rows streamed in chunks; :func:`polynomial_attention`;
``engine="cuda"``, the default for device arrays, builds the features with a numba-cuda kernel
and does the products with cuBLAS: :func:`gpu.tensor_attention.polynomial_num_den`).
The features are built level by level from a parent pointer (``alpha = parent + e_var``), one
gather and one multiply per level. Guarantee: if the approximation has relative error ``eps < 1``
on the realised logit range, ``||T - T*||_inf <= 2 eps/(1-eps) prod_m ||V_m||_inf``.

Positivity safeguards: the realised logit range is bounded cheaply by
``|s| sum_l max_i|Q_il| prod_m max_j|K_m,jl|`` (exact ``max |logit|`` would cost O(n^k d)). If that
bound exceeds the design range (from ``B`` or ``R``) the call raises :class:`LogitRangeError`,
unless the polynomial is positive on all of R (even-degree Taylor), in which case it proceeds and
reports ``certified=False``. Any non-positive normaliser raises :class:`NonPositiveNormalizer`.

Baselines: FAVOR+ positive random features for the matrix case (Choromanski et al. 2021;
``E[phi(q) . phi(k)] = exp(s q.k)`` with ``phi(x) = m^{-1/2} exp(W x' - |x'|^2/2)``,
``x' = sqrt(s) x``, W Gaussian or block-orthogonal with chi-distributed row norms), so its error
decays like ``m^{-1/2}`` only.

Match3 (spec §5.1, SHT23 [C]): labels by a histogram oracle and by brute force; the exact
tensor-attention construction with ``d = 4`` (``cos`` of the triple sum as a trilinear form) and
the pairwise baselines (the Match2 construction; random pairwise heads with a trained readout).
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numba import njit

from sim.attention import softmax_attention
from sim.backend import is_numpy, namespace
from sim.kernels_cpu import FASTMATH, exp_fast, run_threads
from theory import tensor_attention as th

__all__ = [
    "EXACT_METHODS",
    "LogitRangeError",
    "NonPositiveNormalizer",
    "khatri_rao",
    "matrix_attention",
    "tensor_attention",
    "kth_order_attention",
    "tensor_logits",
    "attention_from_logits",
    "logit_range_bound",
    "monomial_features",
    "cp_factors",
    "tensor_trick",
    "PolyAttention",
    "polynomial_attention",
    "approx_matrix_attention",
    "approx_tensor_attention",
    "polynomial_kernel_attention",
    "favor_projection",
    "favor_features",
    "favor_attention",
    "uniform_inputs",
    "sign_aligned_inputs",
    "match2_labels",
    "match3_labels",
    "match3_bruteforce",
    "match3_tensor_inputs",
    "match3_tensor_scores",
    "match3_poly_scores",
    "match2_pairwise_scores",
    "PairwiseReadout",
]

EXACT_METHODS = ("auto", "numba", "stream", "naive", "loop", "cuda")
_RESCALE_AT = math.exp(300.0)
_EXP_CAP = 400.0
_STREAM_BUDGET = 1 << 22  # float64 scores per stream block (32 MiB)
_NAIVE_MAX = 1 << 22  # entries of the flattened logits allowed in "naive"
_LOOP_MAX = 200_000  # (query, tuple) pairs allowed in "loop"
_POLY_BLOCK = 256  # rows per feature block in the Numba polynomial kernels
_PARALLEL_WORK = 1 << 18  # inner-loop iterations below which a kernel runs on one thread
_KEY_PARTS = 64  # partial sums of the key side of the polynomial method (fixed: thread-independent)


class LogitRangeError(ValueError):
    """The realised logit range exceeds the polynomial's design range (and the polynomial
    is not positive everywhere)."""


class NonPositiveNormalizer(ValueError):
    """The approximate softmax normaliser came out <= 0 or non-finite."""


# ------------------------------------------------------------------------- helpers
def _scale(scale, d: int) -> float:
    s = 1.0 / d if scale is None else float(scale)
    if not math.isfinite(s):
        raise ValueError("the softmax scale must be finite")
    return s


def _check(Q, keys, values, xp):
    if not keys:
        raise ValueError("need at least one key matrix (order k >= 2)")
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} key matrices but {len(values)} value matrices")
    for name, X in (("Q", Q), *((f"K{m + 1}", K) for m, K in enumerate(keys)),
                    *((f"V{m + 1}", V) for m, V in enumerate(values))):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows are tokens)")
        if X.shape[0] == 0 and name != "Q":
            raise ValueError(f"{name} has no rows: attention over zero tokens is undefined")
        if not bool(xp.all(xp.isfinite(X))):
            raise ValueError(f"{name} has non-finite entries")
    d = Q.shape[1]
    dv = values[0].shape[1]
    for m, (K, V) in enumerate(zip(keys, values)):
        if K.shape[1] != d:
            raise ValueError(f"K{m + 1} has dimension {K.shape[1]} but Q has {d}")
        if K.shape[0] != V.shape[0]:
            raise ValueError(f"K{m + 1} and V{m + 1} must have the same number of rows")
        if V.shape[1] != dv:
            raise ValueError("all value matrices must have the same number of columns")
    return d, dv


def khatri_rao(X, Y, order: str = "numpy"):
    """Column-wise Kronecker product ``X ⊘ Y`` (``n1 n2 x d``): row ``j1 n2 + j2`` holds
    ``X[j1] o Y[j2]`` (``order="numpy"``, = ``scipy.linalg.khatri_rao(X, Y)``) or row
    ``j1 + j2 n1`` (``order="paper"``, first index fastest)."""
    xp = namespace(X, Y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError("khatri_rao needs the same number of columns")
    d = X.shape[1]
    if order == "numpy":
        return xp.reshape(X[:, None, :] * Y[None, :, :], (-1, d))
    if order == "paper":
        return xp.reshape(X[None, :, :] * Y[:, None, :], (-1, d))
    raise ValueError("order must be 'numpy' or 'paper'")


def _on_device(*arrays) -> bool:
    """True for CUDA device arrays (CuPy): the GPU twins in :mod:`gpu.tensor_attention` apply."""
    return all(hasattr(X, "__cuda_array_interface__") for X in arrays)


def _flatten(mats, order="numpy"):
    return functools.reduce(lambda a, b: khatri_rao(a, b, order), mats)


# --------------------------------------------------------------------------- exact
def matrix_attention(Q, K, V, *, scale=None, method: str = "auto"):
    """Exact ``D^{-1} exp(s Q K^T) V`` (k = 2) through :func:`sim.attention.softmax_attention`."""
    xp = namespace(Q, K, V)
    _check(Q, [K], [V], xp)
    s = _scale(scale, Q.shape[1])
    if method == "loop":
        return _loop(Q, [K], [V], s)
    m = {"auto": "auto", "numba": "numba", "stream": "stream", "naive": "naive", "cuda": "cuda"}.get(method)
    if m is None:
        raise ValueError(f"unknown method {method!r}; choose one of {EXACT_METHODS}")
    return softmax_attention(Q * s, K, V, method=m)[0]


def tensor_attention(Q, K1, K2, V1, V2, *, scale=None, method: str = "auto", return_lse: bool = False):
    """Exact tensor (triple-wise) attention, streamed (see the module docstring).

    Returns ``T`` of shape ``(nq, dv)`` (and ``lse = log sum_{j1,j2} exp(logit)`` per query with
    ``return_lse``). For a random subset of query rows pass ``Q[rows]``: queries are independent."""
    return kth_order_attention(Q, [K1, K2], [V1, V2], scale=scale, method=method, return_lse=return_lse)


def kth_order_attention(Q, keys: Sequence, values: Sequence, *, scale=None, method: str = "auto",
                        return_lse: bool = False):
    """Exact order-k attention with ``k - 1 = len(keys)`` key/value matrices."""
    keys, values = list(keys), list(values)
    xp = namespace(Q, *keys, *values)
    _check(Q, keys, values, xp)
    if method not in EXACT_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {EXACT_METHODS}")
    s = _scale(scale, Q.shape[1])
    k = len(keys) + 1
    if method == "auto":
        if is_numpy(Q) and k <= 3:
            method = "numba"
        elif _on_device(Q, *keys, *values) and k <= 3:
            if k == 2:
                from gpu.attention import MAX_DIM
            else:
                from gpu.tensor_attention import MAX_DIM

            method = "cuda" if max(Q.shape[1], values[0].shape[1]) <= MAX_DIM else "stream"
        else:
            method = "stream"
    if Q.shape[0] == 0:
        out = xp.zeros((0, values[0].shape[1]), dtype=xp.float64)
        return (out, xp.zeros((0,), dtype=xp.float64)) if return_lse else out
    if method == "loop":
        out, lse = _loop(Q, keys, values, s, with_lse=True)
    elif method == "naive":
        size = Q.shape[0] * math.prod(K.shape[0] for K in keys)
        if size > _NAIVE_MAX:
            raise ValueError(f"method='naive' would materialise {size} logits; use 'numba' or 'stream'")
        out, lse = softmax_attention(Q * s, _flatten(keys), _flatten(values), method="naive")
    elif method == "stream":
        out, lse = _stream(Q, keys, values, s, xp)
    elif method == "cuda":
        if k > 3:
            raise ValueError("method='cuda' covers k = 2, 3; use 'stream' for k >= 4")
        from gpu.tensor_attention import kth_order_attention as cuda_kth_order

        out, lse = cuda_kth_order(Q, keys, values, scale=s, return_lse=True)
    else:  # numba
        if not all(is_numpy(X) for X in (Q, *keys, *values)):
            raise TypeError("method='numba' needs NumPy arrays")
        if k == 2:
            out, lse = softmax_attention(Q * s, keys[0], values[0], method="numba")
        elif k == 3:
            out, lse = _numba_tensor(Q, keys, values, s)
        else:
            raise ValueError("method='numba' covers k = 2, 3; use 'stream' for k >= 4")
    return (out, lse) if return_lse else out


def _loop(Q, keys, values, s, with_lse=False):
    Q = np.asarray(Q, dtype=float)
    keys = [np.asarray(K, dtype=float) for K in keys]
    values = [np.asarray(V, dtype=float) for V in values]
    tuples = list(itertools.product(*(range(K.shape[0]) for K in keys)))
    if Q.shape[0] * len(tuples) > _LOOP_MAX:
        raise ValueError("method='loop' is the tiny-input oracle; use 'numba' or 'stream'")
    d, dv = Q.shape[1], values[0].shape[1]
    out = np.zeros((Q.shape[0], dv))
    lse = np.zeros(Q.shape[0])
    for i in range(Q.shape[0]):
        logits = []
        for J in tuples:
            x = 0.0
            for l in range(d):
                p = Q[i, l]
                for K, j in zip(keys, J):
                    p *= K[j, l]
                x += p
            logits.append(s * x)
        mx = max(logits)
        z = 0.0
        acc = np.zeros(dv)
        for x, J in zip(logits, tuples):
            w = math.exp(x - mx)
            z += w
            v = np.ones(dv)
            for V, j in zip(values, J):
                v = v * V[j]
            acc += w * v
        out[i] = acc / z
        lse[i] = mx + math.log(z)
    return (out, lse) if with_lse else out


def _stream(Q, keys, values, s, xp):
    """Joint online softmax over (prefix tuple, last key) blocks; NumPy or CuPy."""
    Q = xp.astype(Q, xp.float64)
    keys = [xp.astype(K, xp.float64) for K in keys]
    values = [xp.astype(V, xp.float64) for V in values]
    nq, d = Q.shape
    dv = values[0].shape[1]
    K_last, V_last = keys[-1], values[-1]
    n_last = K_last.shape[0]
    pre_sizes = [K.shape[0] for K in keys[:-1]]
    P = math.prod(pre_sizes)  # 1 for k = 2
    c = max(1, min(P, _STREAM_BUDGET // n_last))
    b = max(1, min(nq, _STREAM_BUDGET // (c * n_last)))
    KT = K_last.T
    outs, lses = [], []
    for q0 in range(0, nq, b):
        Qb = Q[q0:min(nq, q0 + b), :] * s
        nb = Qb.shape[0]
        m = xp.full((nb,), -xp.inf, dtype=xp.float64)
        z = xp.zeros((nb,), dtype=xp.float64)
        acc = xp.zeros((nb, dv), dtype=xp.float64)
        for p0 in range(0, P, c):
            pk, pv = _prefix(keys[:-1], values[:-1], pre_sizes, p0, min(P, p0 + c), d, dv, xp)
            L = pk.shape[0]
            A = xp.reshape(Qb[:, None, :] * pk[None, :, :], (nb * L, d))
            S = xp.reshape(A @ KT, (nb, L, n_last))
            m_new = xp.maximum(m, xp.max(xp.reshape(S, (nb, L * n_last)), axis=1))
            r = xp.exp(m - m_new)
            W = xp.exp(S - m_new[:, None, None])
            z = z * r + xp.sum(xp.reshape(W, (nb, L * n_last)), axis=1)
            part = xp.reshape(xp.reshape(W, (nb * L, n_last)) @ V_last, (nb, L, dv))
            acc = acc * r[:, None] + xp.sum(part * pv[None, :, :], axis=1)
            m = m_new
        outs.append(acc / z[:, None])
        lses.append(m + xp.log(z))
    return xp.concat(outs, axis=0), xp.concat(lses, axis=0)


def _prefix(keys, values, sizes, p0, p1, d, dv, xp):
    """Products over the first k-2 key/value matrices for flattened tuples p0..p1-1."""
    if not keys:
        return xp.ones((1, d), dtype=xp.float64), xp.ones((1, dv), dtype=xp.float64)
    idx = np.unravel_index(np.arange(p0, p1), sizes)
    pk = pv = None
    for K, V, ix in zip(keys, values, idx):
        ixa = xp.asarray(ix)
        kk = xp.take(K, ixa, axis=0)
        vv = xp.take(V, ixa, axis=0)
        pk = kk if pk is None else pk * kk
        pv = vv if pv is None else pv * vv
    return pk, pv


def _numba_tensor(Q, keys, values, s):
    a = np.ascontiguousarray(Q, dtype=np.float64) * s
    k1 = np.ascontiguousarray(keys[0], dtype=np.float64)
    k2t = np.ascontiguousarray(np.asarray(keys[1], dtype=np.float64).T)
    v1 = np.ascontiguousarray(values[0], dtype=np.float64)
    v2t = np.ascontiguousarray(np.asarray(values[1], dtype=np.float64).T)
    out = np.empty((a.shape[0], v1.shape[1]))
    lse = np.empty(a.shape[0])
    big = a.shape[0] * k1.shape[0] * k2t.shape[1] >= _PARALLEL_WORK
    run_threads(_tensor_kernel, a, k1, k2t, v1, v2t, out, lse, n_tasks=a.shape[0] if big else 1)
    return out, lse


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _scores_row(p, k2t, out):
    """out[j] = sum_l p[l] k2t[l, j] (k2t stored transposed, rows contiguous)."""
    t = k2t[0]
    p0 = p[0]
    for j in range(out.shape[0]):
        out[j] = p0 * t[j]
    for l in range(1, k2t.shape[0]):
        t = k2t[l]
        pl = p[l]
        for j in range(out.shape[0]):
            out[j] += pl * t[j]


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _exp_sum(s, m):
    total = 0.0
    for j in range(s.shape[0]):
        w = exp_fast(min(s[j] - m, _EXP_CAP))
        s[j] = w
        total += w
    return total


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _dot(x, y):
    acc = 0.0
    for j in range(x.shape[0]):
        acc += x[j] * y[j]
    return acc


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _tensor_kernel(start, stride, a, k1, k2t, v1, v2t, out, lse):
    """T[i] for queries i = start, start + stride, ... (:func:`run_threads`): online softmax
    over (j1, j2), one j1 row at a time."""
    nq, d = a.shape
    n1 = k1.shape[0]
    n2 = k2t.shape[1]
    dv = v1.shape[1]
    for i in range(start, nq, stride):
        s = np.empty(n2)
        p = np.empty(d)
        acc = np.zeros(dv)
        m = 0.0
        z = 0.0
        for j1 in range(n1):
            for l in range(d):
                p[l] = a[i, l] * k1[j1, l]
            _scores_row(p, k2t, s)
            if j1 == 0:
                m = s[0]  # any finite reference score will do to start
            zc = _exp_sum(s, m)
            if zc > _RESCALE_AT:
                # a score far above the reference: move the reference to this row's max,
                # rescale the accumulators and redo the row
                _scores_row(p, k2t, s)
                mx = s[0]
                for j in range(n2):
                    mx = max(mx, s[j])
                r = math.exp(m - mx)
                z *= r
                for l in range(dv):
                    acc[l] *= r
                m = mx
                zc = _exp_sum(s, m)
            z += zc
            for l in range(dv):
                acc[l] += v1[j1, l] * _dot(s, v2t[l])
        for l in range(dv):
            out[i, l] = acc[l] / z
        lse[i] = m + math.log(z)


def tensor_logits(Q, K1, K2, *, scale=None):
    """All logits ``s sum_l Q[i,l] K1[j1,l] K2[j2,l]`` as an ``(nq, n1, n2)`` array (small n)."""
    xp = namespace(Q, K1, K2)
    s = _scale(scale, Q.shape[1])
    if Q.shape[0] * K1.shape[0] * K2.shape[0] > _NAIVE_MAX:
        raise ValueError("tensor_logits materialises nq n1 n2 numbers; too many")
    return xp.einsum("il,jl,kl->ijk", Q * s, K1, K2)


def attention_from_logits(L, V1, V2):
    """Tensor attention from given ``(nq, n1, n2)`` logits: joint softmax over (j1, j2)
    (max-subtracted, so adding a constant to a row of logits changes nothing)."""
    xp = namespace(L, V1, V2)
    m = xp.max(xp.reshape(L, (L.shape[0], -1)), axis=1)
    W = xp.exp(L - m[:, None, None])
    z = xp.sum(xp.reshape(W, (W.shape[0], -1)), axis=1)
    return xp.einsum("ijk,jl,kl->il", W, V1, V2) / z[:, None]


# ---------------------------------------------------------------- polynomial method
def logit_range_bound(Q, keys, *, scale=None) -> float:
    """Cheap upper bound on the realised ``max |logit|``:
    ``|s| sum_l max_i|Q_il| prod_m max_j|K_m,jl|`` (O(n d), no n^k work)."""
    xp = namespace(Q, *keys)
    s = _scale(scale, Q.shape[1])
    if Q.shape[0] == 0:
        return 0.0
    prod = xp.max(xp.abs(Q), axis=0)
    for K in keys:
        prod = prod * xp.max(xp.abs(K), axis=0)
    return abs(s) * float(xp.sum(prod))


def monomial_features(X, index: th.MultiIndex, weights=None):
    """Monomial features, *transposed*: ``F[alpha, j] = w_alpha X[j]^alpha``, shape ``(r, n)``.

    Built level by level from the parent pointers (one gather and one multiply per degree;
    O(n r)); the weights, if given, multiply the rows at the end."""
    xp = namespace(X)
    n, d = X.shape
    if d != index.d:
        raise ValueError(f"features for dimension {index.d}, input has {d}")
    XT = xp.astype(X.T, xp.float64)
    F = xp.empty((index.r, n), dtype=xp.float64)
    F[0, :] = 1.0
    for t in range(1, index.g + 1):
        a, b = index.levels[t]
        par = xp.asarray(index.parent[a:b])
        var = xp.asarray(index.var[a:b])
        F[a:b, :] = xp.take(F, par, axis=0) * xp.take(XT, var, axis=0)
    if weights is not None:
        F = F * xp.asarray(weights)[:, None]
    return F


def cp_factors(Q, keys, degree: int, *, coeffs=None, method: str = "taylor", R=None, scale=None):
    """The CP factors ``U_1 = w o F(Q)``, ``U_{m+1} = F(K_m)`` as ``(n, r)`` arrays, so that
    ``P(logit(i, j_1..)) = sum_alpha U_1[i,alpha] U_2[j_1,alpha] ...`` exactly (spec §2.3)."""
    s = _scale(scale, Q.shape[1])
    index = th.multi_indices(Q.shape[1], degree)
    if coeffs is None:
        R = logit_range_bound(Q, keys, scale=s) if R is None else R
        coeffs = _coefficients(degree, R, method)
    w = th.feature_weights(index, coeffs, s)
    return [monomial_features(Q, index, w).T] + [monomial_features(K, index).T for K in keys]


def tensor_trick(U2, U3, V1, V2):
    """``(U2 ⊘ U3)^T (V1 ⊘ V2)`` computed as ``(U2^T V1) o (U3^T V2)`` (r x dv), O(n r dv)."""
    return (U2.T @ V1) * (U3.T @ V2)


def _coefficients(g, R, method):
    if R <= 0:  # every logit is 0: e^0 = 1 exactly
        return np.array([1.0] + [0.0] * g)
    return th.approximation_coefficients(g, R, method)


@functools.lru_cache(maxsize=1024)
def _eps(g, R, method):
    return th.relative_error(_coefficients(g, R, method), R) if R > 0 else 0.0


@dataclass(frozen=True)
class PolyAttention:
    """Result of :func:`polynomial_attention` with its diagnostics."""

    out: object  # (nq, dv) array of the caller's namespace
    degree: int
    method: str
    rank: int
    design_range: float  # R: the polynomial approximates e^x on [-R, R]
    realized_bound: float  # cheap bound on max |logit| of these inputs
    eps: float  # measured relative error of P on [-R, R]
    certified: bool  # realized_bound <= R and eps < 1: the error bound holds
    error_bound: float  # 2 eps/(1 - eps) prod ||V_m||_inf (inf when not certified)


def polynomial_attention(Q, keys: Sequence, values: Sequence, *, degree: int, method: str = "taylor",
                         B: float | None = None, R: float | None = None, scale=None,
                         chunk: int | None = None, engine: str = "auto") -> PolyAttention:
    """Near-linear approximation of order-k attention by the polynomial method (spec §2.3–2.5).

    ``degree`` g >= 0; ``method`` "taylor" or "chebyshev"; the design range is ``R`` if given,
    else ``|s| d B^k`` for a declared entry bound ``B``, else the realised bound of these inputs.
    Rows are streamed in chunks of ``chunk``: memory O(chunk r + r dv). ``engine``: "numba"
    (CPU kernels, the default for NumPy arrays), "xp" (array-namespace code: NumPy or CuPy) or
    "cuda" (:mod:`gpu.tensor_attention`: numba-cuda features and cuBLAS products; the default
    for device arrays; under the CUDA simulator it also takes NumPy arrays)."""
    keys, values = list(keys), list(values)
    xp = namespace(Q, *keys, *values)
    d, dv = _check(Q, keys, values, xp)
    th.check_degree(degree)
    if method not in th.METHODS:
        raise ValueError(f"unknown approximation method {method!r}; choose one of {th.METHODS}")
    if chunk is not None and chunk < 1:
        raise ValueError("chunk must be >= 1")
    s = _scale(scale, d)
    k = len(keys) + 1
    realized = logit_range_bound(Q, keys, scale=s)
    if R is None:
        if B is not None:
            if not B > 0:
                raise ValueError("the entry bound B must be positive")
            R = th.logit_range(B, k, d, s)
        else:
            R = realized
    R = float(R)
    if R < 0 or not math.isfinite(R):
        raise ValueError("the design range R must be finite and non-negative")
    positive = th.is_positive_everywhere(degree, method)
    in_range = realized <= R * (1 + 1e-12) + 1e-300
    if not in_range and not positive:
        raise LogitRangeError(
            f"the realised logit range (bound {realized:.4g}) exceeds the design range R = {R:.4g} of "
            f"the degree-{degree} {method} polynomial, which is not positive outside it; declare a "
            f"larger B (or R), or use an even-degree Taylor polynomial")
    coeffs = _coefficients(degree, R, method)
    eps = _eps(degree, R, method)
    index = th.multi_indices(d, degree)
    w = th.feature_weights(index, coeffs, s)

    if engine not in ("auto", "numba", "xp", "cuda"):
        raise ValueError("engine must be 'auto', 'numba', 'xp' or 'cuda'")
    if engine == "auto":
        if all(is_numpy(X) for X in (Q, *keys, *values)):
            engine = "numba"
        else:
            engine = "cuda" if _on_device(Q, *keys, *values) else "xp"
    if engine == "numba":
        num, den = _poly_numba(Q, keys, values, index, w, chunk)
    elif engine == "cuda":
        from gpu.tensor_attention import polynomial_num_den

        num, den = polynomial_num_den(Q, keys, values, index.parent, index.var, w, chunk=chunk)
    else:
        num, den = _poly_xp(Q, keys, values, index, w, chunk, xp)
    if not bool(xp.all(den > 0)) or not bool(xp.all(xp.isfinite(num))):
        raise NonPositiveNormalizer(
            f"the degree-{degree} {method} approximation gave a non-positive or non-finite softmax "
            f"normaliser (design range R = {R:.4g}, measured relative error {eps:.3g} >= 1?); "
            "raise the degree or use an even-degree Taylor polynomial")
    out = num / den[:, None]
    vmax = 1.0
    for V in values:
        vmax *= float(xp.max(xp.abs(V)))
    certified = bool(in_range and eps < 1.0)
    bound = float(th.output_error_bound(eps, vmax)) if certified else math.inf
    return PolyAttention(out, int(degree), method, index.r, R, realized, eps, certified, bound)


def _poly_xp(Q, keys, values, index, w, chunk, xp):
    """Array-namespace path: S = o_m F(K_m) V_m, z = o_m F(K_m) 1, then (F(Q)^T (w o S), ...)."""
    chunk = chunk or 4096
    dv = values[0].shape[1]
    S = xp.asarray(w)[:, None] * xp.ones((index.r, dv), dtype=xp.float64)
    z = xp.asarray(w) * xp.ones((index.r,), dtype=xp.float64)
    for K, V in zip(keys, values):
        Sm = xp.zeros((index.r, dv), dtype=xp.float64)
        zm = xp.zeros((index.r,), dtype=xp.float64)
        V = xp.astype(V, xp.float64)
        for c0 in range(0, K.shape[0], chunk):
            c1 = min(K.shape[0], c0 + chunk)  # in-bounds slices (the array API requires them)
            F = monomial_features(K[c0:c1, :], index)
            Sm = Sm + F @ V[c0:c1, :]
            zm = zm + xp.sum(F, axis=1)
        S = S * Sm
        z = z * zm
    outs, dens = [], []
    for c0 in range(0, Q.shape[0], chunk):
        F1 = monomial_features(Q[c0:min(Q.shape[0], c0 + chunk), :], index)
        outs.append(F1.T @ S)
        dens.append(F1.T @ z)
    if not outs:
        return xp.zeros((0, dv), dtype=xp.float64), xp.zeros((0,), dtype=xp.float64)
    return xp.concat(outs, axis=0), xp.concat(dens, axis=0)


def _poly_numba(Q, keys, values, index, w, chunk):
    """CPU path: features built block by block in cache (transposed, vectorised), key-side
    sums reduced over per-thread partials, query side fused with the contraction."""
    L = int(chunk or _POLY_BLOCK)
    par = np.ascontiguousarray(index.parent)
    var = np.ascontiguousarray(index.var)
    dv = values[0].shape[1]
    S = np.broadcast_to(np.asarray(w, dtype=np.float64)[:, None], (index.r, dv + 1)).copy()
    for K, V in zip(keys, values):
        kt = np.ascontiguousarray(np.asarray(K, dtype=np.float64).T)
        vt = np.ascontiguousarray(np.asarray(V, dtype=np.float64).T)
        n = kt.shape[1]
        nblocks = -(-n // L)
        # the partial sums depend on n only (never on the thread count), so the result does not
        # depend on how many threads compute them; they are added in a fixed order
        nparts = max(1, min(nblocks, _KEY_PARTS))
        parts = np.zeros((nparts, index.r, dv + 1))
        run_threads(_poly_keys_kernel, kt, vt, par, var, L, parts,
                    n_tasks=nparts if n * index.r >= _PARALLEL_WORK else 1)
        S *= parts.sum(axis=0)
    qt = np.ascontiguousarray(np.asarray(Q, dtype=np.float64).T)
    out = np.empty((qt.shape[1], dv))
    den = np.empty(qt.shape[1])
    if qt.shape[1]:
        nqb = -(-qt.shape[1] // L)
        run_threads(_poly_query_kernel, qt, np.ascontiguousarray(S), par, var, L, out, den,
                    n_tasks=nqb if qt.shape[1] * index.r >= _PARALLEL_WORK else 1)
    return out, den


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _features_block(xt, c, Lb, par, var, F):
    """F[a, :Lb] = X[c:c+Lb]^alpha_a (rows of F contiguous; one multiply per feature)."""
    f0 = F[0, :Lb]
    for j in range(Lb):
        f0[j] = 1.0
    for a in range(1, F.shape[0]):
        src = F[par[a], :Lb]
        x = xt[var[a], c:c + Lb]
        dst = F[a, :Lb]
        for j in range(Lb):
            dst[j] = src[j] * x[j]


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _poly_keys_kernel(start, stride, kt, vt, par, var, L, parts):
    """parts[p, a, l] = sum over the rows of part p of F_a(k_j) v_j[l]; column dv holds
    sum F_a(k_j) (the normaliser's factor). Parts p = start, start + stride, ..."""
    n = kt.shape[1]
    r = parts.shape[1]
    dv = vt.shape[0]
    nblocks = (n + L - 1) // L
    nparts = parts.shape[0]
    for p in range(start, nparts, stride):
        F = np.empty((r, L))
        for b in range(p, nblocks, nparts):
            c = b * L
            Lb = min(L, n - c)
            _features_block(kt, c, Lb, par, var, F)
            for a in range(r):
                fa = F[a, :Lb]
                acc = 0.0
                for j in range(Lb):
                    acc += fa[j]
                parts[p, a, dv] += acc
                for l in range(dv):
                    v = vt[l, c:c + Lb]
                    acc = 0.0
                    for j in range(Lb):
                        acc += fa[j] * v[j]
                    parts[p, a, l] += acc


@njit(fastmath=FASTMATH, nogil=True, cache=True)
def _poly_query_kernel(start, stride, qt, S, par, var, L, out, den):
    """num[i] = F(q_i)^T S[:, :dv], den[i] = F(q_i)^T S[:, dv] (S holds w o (prod S_m, prod z_m));
    query blocks b = start, start + stride, ..."""
    n = qt.shape[1]
    r = S.shape[0]
    dv = S.shape[1] - 1
    nblocks = (n + L - 1) // L
    for b in range(start, nblocks, stride):
        c = b * L
        Lb = min(L, n - c)
        F = np.empty((r, Lb))
        _features_block(qt, c, Lb, par, var, F)
        acc = np.zeros((dv + 1, Lb))
        for a in range(r):
            fa = F[a]
            for l in range(dv + 1):
                sal = S[a, l]
                row = acc[l]
                for j in range(Lb):
                    row[j] += fa[j] * sal
        for j in range(Lb):
            den[c + j] = acc[dv, j]
            for l in range(dv):
                out[c + j, l] = acc[l, j]


def approx_matrix_attention(Q, K, V, **kw) -> PolyAttention:
    """:func:`polynomial_attention` for k = 2."""
    return polynomial_attention(Q, [K], [V], **kw)


def approx_tensor_attention(Q, K1, K2, V1, V2, **kw) -> PolyAttention:
    """:func:`polynomial_attention` for k = 3."""
    return polynomial_attention(Q, [K1, K2], [V1, V2], **kw)


def polynomial_kernel_attention(Q, keys, values, coeffs, *, scale=None):
    """Exact "polynomial attention" (``P`` in place of ``exp``), materialised: small inputs only.
    Isolates feature-map bugs from approximation error."""
    keys, values = list(keys), list(values)
    s = _scale(scale, Q.shape[1])
    Kf, Vf = _flatten(keys), _flatten(values)
    if Q.shape[0] * Kf.shape[0] > _NAIVE_MAX:
        raise ValueError("polynomial_kernel_attention materialises all logits; input too large")
    W = th.polyval(coeffs, np.asarray(Q * s @ Kf.T))
    return (W @ Vf) / W.sum(axis=1)[:, None]


# ------------------------------------------------------------------------- FAVOR+
def favor_projection(m: int, d: int, rng, orthogonal: bool = True) -> np.ndarray:
    """``m x d`` projection rows, marginally N(0, I_d): i.i.d., or block-orthogonal (QR of a
    Gaussian block, rows rescaled by chi(d)-distributed norms)."""
    if m < 1:
        raise ValueError("need at least one random feature")
    if not orthogonal:
        return rng.standard_normal((m, d))
    blocks = []
    for _ in range(-(-m // d)):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q = q * np.sign(np.diag(r))[None, :]
        blocks.append(q.T)
    W = np.concatenate(blocks, axis=0)[:m]
    norms = np.sqrt(rng.chisquare(d, size=m))
    return W * norms[:, None]


def favor_features(X, W, *, scale=None, shift=None):
    """Positive random features ``m^{-1/2} exp(W x' - |x'|^2/2 - shift)``, ``x' = sqrt(s) x``:
    ``E phi(q) . phi(k) = exp(s q.k)`` when both shifts are 0 (a shift only rescales)."""
    s = _scale(scale, X.shape[1])
    if s <= 0:
        raise ValueError("FAVOR+ needs a positive softmax scale")
    Xs = X * math.sqrt(s)
    proj = Xs @ W.T - 0.5 * np.sum(Xs * Xs, axis=1, keepdims=True)
    if shift is None:
        shift = 0.0
    return np.exp(proj - shift) / math.sqrt(W.shape[0])


def favor_attention(Q, K, V, m: int, rng, *, scale=None, orthogonal: bool = True):
    """FAVOR+ estimate of matrix attention with ``m`` positive random features (O(n m d))."""
    s = _scale(scale, Q.shape[1])
    W = favor_projection(m, Q.shape[1], rng, orthogonal)
    Ks = K * math.sqrt(s)
    Qs = Q * math.sqrt(s)
    pk = Ks @ W.T - 0.5 * np.sum(Ks * Ks, axis=1, keepdims=True)
    pq = Qs @ W.T - 0.5 * np.sum(Qs * Qs, axis=1, keepdims=True)
    phik = np.exp(pk - pk.max())  # one global shift: cancels in the ratio
    phiq = np.exp(pq - pq.max(axis=1, keepdims=True))  # per-query shift: cancels too
    num = phiq @ (phik.T @ V)
    den = phiq @ phik.sum(axis=0)
    return num / den[:, None]


# -------------------------------------------------------------------- input generators
def uniform_inputs(rng, n: int, d: int, B: float, k: int = 3, dv: int | None = None):
    """``Q, keys, values`` with i.i.d. uniform[-B, B] entries (k-1 key and value matrices)."""
    dv = d if dv is None else dv
    Q = rng.uniform(-B, B, (n, d))
    keys = [rng.uniform(-B, B, (n, d)) for _ in range(k - 1)]
    values = [rng.uniform(-B, B, (n, dv)) for _ in range(k - 1)]
    return Q, keys, values


def sign_aligned_inputs(rng, n: int, d: int, B: float, k: int = 3, dv: int | None = None):
    """Adversarial inputs: every entry is ``+-B`` and the signs of row i of the last key matrix
    are chosen so that the tuple ``(i, i, ..., i)`` has logit ``sigma_i B^k`` (``|logit| = B^k``,
    the edge of the range) with ``sigma_i`` alternating +1/-1; values ``+-B``. Needs n rows of
    every matrix (the same n)."""
    dv = d if dv is None else dv
    sgn = lambda shape: np.where(rng.random(shape) < 0.5, -1.0, 1.0)  # noqa: E731
    Q = B * sgn((n, d))
    keys = [B * sgn((n, d)) for _ in range(k - 2)]
    prod = np.sign(Q)
    for K in keys:
        prod = prod * np.sign(K)
    sigma = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    keys.append(B * sigma[:, None] * prod)
    values = [B * sgn((n, dv)) for _ in range(k - 1)]
    return Q, keys, values


# ---------------------------------------------------------------------------- Match3
def match2_labels(x, M: int):
    """``Match2(x)_i = 1`` iff ``x_i + x_j = 0 (mod M)`` for some j (j may equal i)."""
    x = np.asarray(x, dtype=np.int64) % M
    present = np.zeros(M, dtype=bool)
    present[x] = True
    return present[(-x) % M]


def match3_labels(x, M: int, distinct: bool = False):
    """``Match3(x)_i = 1`` iff ``x_i + x_j1 + x_j2 = 0 (mod M)`` for some j1, j2: indices
    unrestricted (SHT23 form [C]) or, with ``distinct=True``, i, j1, j2 pairwise distinct.
    Histogram oracle: O(N U) with U the number of distinct values."""
    x = np.asarray(x, dtype=np.int64) % M
    counts = np.bincount(x, minlength=M)
    vals = np.nonzero(counts)[0]
    if not distinct:
        sums = np.zeros(M, dtype=bool)
        sums[(vals[:, None] + vals[None, :]).ravel() % M] = True
        return sums[(-x) % M]
    out = np.zeros(x.size, dtype=bool)
    for i, xi in enumerate(x):
        c = counts.copy()
        c[xi] -= 1
        u = vals[c[vals] > 0]
        v = (-xi - u) % M
        need = np.where(u == v, 2, 1)
        out[i] = bool(np.any(c[v] >= need))
    return out


def match3_bruteforce(x, M: int, distinct: bool = False):
    """O(N^3) oracle for :func:`match3_labels`."""
    x = [int(v) % M for v in x]
    N = len(x)
    out = np.zeros(N, dtype=bool)
    for i in range(N):
        for j1 in range(N):
            for j2 in range(N):
                if distinct and len({i, j1, j2}) < 3:
                    continue
                if (x[i] + x[j1] + x[j2]) % M == 0:
                    out[i] = True
    return out


def _angles(x, M):
    theta = 2 * np.pi * (np.asarray(x, dtype=np.int64) % M) / M
    return np.cos(theta), np.sin(theta)


def match3_tensor_inputs(x, M: int):
    """The d = 4 construction of spec §5.1: ``sum_l q_i,l k1_j1,l k2_j2,l = cos(2 pi (x_i + x_j1
    + x_j2)/M)`` with ``q = (a, -a, -b, -b)``, ``k1 = (a, b, a, b)``, ``k2 = (a, b, b, a)``,
    values ``V1 = K1, V2 = K2``; returns ``(Q, K1, K2, V1, V2, scale)`` with ``scale = lam``."""
    N = len(x)
    a, b = _angles(x, M)
    Q = np.stack([a, -a, -b, -b], axis=1)
    K1 = np.stack([a, b, a, b], axis=1)
    K2 = np.stack([a, b, b, a], axis=1)
    return Q, K1, K2, K1, K2, th.match3_lambda(N, M)


def match3_tensor_scores(x, M: int, method: str = "auto"):
    """Readout ``s_i = <q_i, T_i>`` of exact tensor attention (the attention-weighted mean of
    ``cos(2 pi (x_i + x_j1 + x_j2)/M)``); predict Match3 by ``s_i > match3_threshold(M)``."""
    Q, K1, K2, V1, V2, lam = match3_tensor_inputs(x, M)
    T = tensor_attention(Q, K1, K2, V1, V2, scale=lam, method=method)
    return np.sum(Q * T, axis=1)


def match3_poly_scores(x, M: int, degree: int):
    """The same readout with the polynomial approximation (even-degree Taylor, design range
    ``lam``): shows what the near-linear method does at the construction's entry bound."""
    Q, K1, K2, V1, V2, lam = match3_tensor_inputs(x, M)
    res = approx_tensor_attention(Q, K1, K2, V1, V2, degree=degree, method="taylor", scale=lam, R=lam)
    return np.sum(Q * res.out, axis=1)


def match2_pairwise_scores(x, M: int):
    """Pairwise (matrix) attention construction for Match2: ``q_i = (a_i, b_i)``,
    ``k_j = (a_j, -b_j)``, logit ``lam2 cos(2 pi (x_i + x_j)/M)``, values = keys, readout
    ``<q_i, T_i>``; threshold :func:`theory.tensor_attention.match3_threshold`."""
    a, b = _angles(x, M)
    Q = np.stack([a, b], axis=1)
    K = np.stack([a, -b], axis=1)
    T = matrix_attention(Q, K, K, scale=th.match2_lambda(len(x), M),
                         method="naive" if len(x) <= 256 else "auto")
    return np.sum(Q * T, axis=1)


class PairwiseReadout:
    """A one-layer pairwise-attention baseline with a *trained* readout.

    Tokens are embedded by ``F`` Fourier frequencies, ``e(x) = (cos 2 pi f x/M, sin 2 pi f x/M)``
    (dimension 2F, every pairwise relation of residues is visible to it); ``H`` softmax heads
    with random query maps ``A_h = beta_h G_h`` (G Gaussian, inverse temperatures ``beta_h``
    spread over [1, 64]) attend over the sequence with keys and values ``e(x_j)``. The readout is
    least squares on ``[1, e(x_i), o_i^h, e(x_i) (x) o_i^h]`` (linear and bilinear terms) fitted to
    +-1 labels on training sequences; predictions are its sign."""

    def __init__(self, M: int, rng, heads: int = 4, freqs: int = 4):
        self.M = int(M)
        self.freqs = np.arange(1, freqs + 1)
        p = 2 * freqs
        betas = np.geomspace(1.0, 64.0, heads)
        self.A = [beta * rng.standard_normal((p, p)) / math.sqrt(p) for beta in betas]
        self.coef = None

    def _embed(self, x):
        th_ = 2 * np.pi * np.outer(np.asarray(x, dtype=float) % self.M, self.freqs) / self.M
        return np.concatenate([np.cos(th_), np.sin(th_)], axis=1)

    def features(self, x):
        e = self._embed(x)
        cols = [np.ones((e.shape[0], 1)), e]
        for A in self.A:
            o = softmax_attention(e @ A.T, e, e, method="naive")[0]
            cols.append(o)
            cols.append((e[:, :, None] * o[:, None, :]).reshape(e.shape[0], -1))
        return np.concatenate(cols, axis=1)

    def fit(self, seqs, labels):
        F = np.concatenate([self.features(x) for x in seqs], axis=0)
        y = np.concatenate([np.where(lab, 1.0, -1.0) for lab in labels])
        self.coef = np.linalg.lstsq(F, y, rcond=None)[0]
        return self

    def predict(self, x):
        if self.coef is None:
            raise RuntimeError("fit the readout first")
        return self.features(x) @ self.coef > 0
