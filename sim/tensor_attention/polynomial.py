"""The polynomial method (AS23/AS24, notes tensor_attention §2): CP feature maps, the tensor trick and the
near-linear approximation :func:`polynomial_attention`, with its positivity safeguards."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numba import njit

from sim import backend
from sim.backend import is_numpy, namespace
from sim.kernels_cpu import FASTMATH, run_threads
from theory import tensor_attention as th

from ._common import _NAIVE_MAX, _PARALLEL_WORK, _check, _flatten, _scale

__all__ = ["LogitRangeError", "NonPositiveNormalizer", "logit_range_bound", "monomial_features", "cp_factors",
           "tensor_trick", "PolyAttention", "polynomial_attention", "approx_matrix_attention",
           "approx_tensor_attention", "polynomial_kernel_attention"]

_POLY_BLOCK = 256  # rows per feature block in the Numba polynomial kernels
_KEY_PARTS = 64  # partial sums of the key side of the polynomial method (fixed: thread-independent)


class LogitRangeError(ValueError):
    """The realised logit range exceeds the polynomial's design range (and the polynomial
    is not positive everywhere)."""


class NonPositiveNormalizer(ValueError):
    """The approximate softmax normaliser came out <= 0 or non-finite."""


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
    ``P(logit(i, j_1..)) = sum_alpha U_1[i,alpha] U_2[j_1,alpha] ...`` exactly (notes tensor_attention §2.3)."""
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
    """Near-linear approximation of order-k attention by the polynomial method (notes tensor_attention §2.3–2.5).

    ``degree`` g >= 0; ``method`` "taylor" or "chebyshev"; the design range is ``R`` if given,
    else ``|s| d B^k`` for a declared entry bound ``B``, else the realised bound of these inputs.
    Rows are streamed in chunks of ``chunk``: memory O(chunk r + r dv). ``engine``: "numba"
    (CPU kernels, the default for NumPy arrays), "xp" (array-namespace code: NumPy or CuPy) or
    "cuda" (the device engine ``tensor_attention.polynomial_num_den`` of :mod:`sim.backend`,
    registered by ``gpu``: numba-cuda features and cuBLAS products; the default for device
    arrays when registered; under the CUDA simulator it also takes NumPy arrays)."""
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
            on_gpu = backend.device_engine("tensor_attention.polynomial_num_den", Q, *keys, *values)
            engine = "xp" if on_gpu is None else "cuda"
    if engine == "numba":
        num, den = _poly_numba(Q, keys, values, index, w, chunk)
    elif engine == "cuda":
        num, den = backend.engine("tensor_attention.polynomial_num_den")(Q, keys, values, index.parent, index.var,
                                                                        w, chunk=chunk)
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
