r"""Random-feature attention (RFA/BRFA) and the random-feature MLP: data, targets, features, ridge.

Measurements for Fu, Guo, Bai, Mei (NeurIPS 2023) under the reconstructed conventions of
``shared/specs/random_features.md`` (see :mod:`theory.random_features` for the model, the
kernels and the meaning of every convention keyword: ``augment``, ``w_var``, ``r_bias``,
``mean_shape``, ``activation``, ``key_norm``, ``value``).

Data (notes random_features §7.1)
---------------------------------
A sample is a query ``x0`` and N keys, i.i.d. uniform on S^{d-1} (normalised Gaussian rows):
``x0: (n, d)``, ``X: (n, N, d)``. Targets are fixed functions of (x0, X) with parameters drawn
once per replicate (:func:`draw_target_params`: a unit vector ``beta`` and a random orthogonal
``S``). With ``u_i = sqrt(d) <x0, x_i>``, ``b_i = sqrt(d) <beta, x_i>`` and ``P`` the per-term
polynomial of degree p — ``poly="gegenbauer"``: the unit-variance Gegenbauer ``Q_p(<., .>)`` of
the sphere (pure degree p, default); ``poly="hermite"``: ``He_p(sqrt(d) <., .>)/sqrt(p!)`` (leaks
lower degrees on the sphere, the pilot of notes random_features §9):

==============  ==========================================================================
``keys<p>``      mean_i P(<beta, x_i>)                            (keys only)
``query<p>``     P(<beta, x0>)                                    (query only)
``pair<p>``      mean_i P(<x0, x_i>)                              (query-key inner products)
``bilin<p>``     mean_i P(<x0, S x_i>)                            (generic bilinear form)
``attn``         mean_i relu(u_i) b_i                             (attention-like)
``keykey``       sum_{i<j} sqrt(d) <x_i, x_j> / sqrt(N(N-1)/2)    (negative control: no query)
==============  ==========================================================================

Features (notes random_features §3.1, §7.2), built in sample chunks with batched matrix products (no loop over
samples or heads):

* attention, M heads, ``W: (M, D, D)`` from :func:`draw_heads`: block m of ``phi(x0, X)`` is
  ``c_N sum_i A_mi val(x_i)`` with scores ``s_mi = x~0^T W_m x~_i`` and ``A = sigma(s)`` (ReLU or
  identity, ``c_N = 1/N`` or 1) or ``A = softmax_i(s)`` (then no c_N). Layout: feature index
  ``m * Dv + k`` (head-major), ``Dv = D`` (``value="augmented"``: values on x~) or d. Exactly permutation
  invariant in the keys.
* RFMLP: ``relu(z @ Wm.T)`` on the flattened ``z = [x0; x_1; ..; x_N; 1]`` with ``Wm: (P, Din)``
  i.i.d. ``N(0, 1/|z|^2)`` (unit-variance pre-activations); not permutation invariant.

Both are scaled by ``1/sqrt(#heads)`` (``1/sqrt(P)`` for the MLP) so that ``phi phi^T`` tends to
the infinite-width kernel of the theory module and one ridge grid means the same at every M.

Fit (notes random_features §7.3): ridge on mean-centred features, penalty ``n lam |v|^2``, for every lam of a grid
from ONE symmetric eigendecomposition per training size: the dual ``Phi Phi^T`` (n x n) when
n < #features, else the primal Gram ``Phi^T Phi`` (accumulated over the nested training prefixes).
lam is chosen per target on a validation set; the excess risk is the test MSE against the
*noiseless* target on fresh inputs (labels may carry noise), and the relative error divides it
by the variance of the test target (1 = predicting the mean).

All functions take arrays of the caller's namespace (NumPy, or CuPy on a GPU).

GPU twins (the device engines ``random_features.*`` of :mod:`sim.backend`, which importing ``gpu``
registers; chosen by :func:`sim.backend.device_engine`, never imported from here):
``rfa_features(..., method=)`` is ``"batched"`` (the chunked BLAS-3 code below, any namespace),
``"cuda"`` (the numba-cuda kernel: scores, activation and value sums fused per (sample, head),
float64 accumulators; device arrays, or NumPy arrays under the CUDA simulator) or ``"auto"``
(``"batched"`` for NumPy inputs, ``"cuda"`` for device arrays when ``D`` fits the engine's
``max_dim``). For device (CuPy) arrays, :func:`rfmlp_features` writes its GEMMs straight into the
output, the primal ridge path accumulates ``Phi^T Phi`` in float64 row blocks, and the
eigendecompositions run on the device (``cupy.linalg.eigh``), so ``--device gpu`` keeps a study
cell on the GPU. Without registered engines the same calls run in the array-namespace code.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from scipy import special

from sim.backend import device_engine, engine, is_numpy, namespace, to_numpy
from theory import random_features as rft

__all__ = [
    "MODELS",
    "ACTIVATIONS",
    "TARGET_FAMILIES",
    "FeatureConfig",
    "sample_sphere",
    "sample_inputs",
    "draw_target_params",
    "parse_target",
    "target_values",
    "draw_heads",
    "rfa_features",
    "flatten_inputs",
    "draw_mlp",
    "rfmlp_features",
    "model_features",
    "head_inner_products",
    "ridge_path",
    "ridge_reference",
]

MODELS = ("rfa", "brfa", "rfmlp")
ACTIVATIONS = ("relu", "identity", "softmax")
FEATURE_METHODS = ("auto", "batched", "cuda")
TARGET_FAMILIES = ("keys", "query", "pair", "bilin", "attn", "keykey")
POLYS = ("gegenbauer", "hermite")
_CHUNK_ELEMS = 1 << 21  # elements of the largest temporary per feature chunk (~16 MB float64)


@dataclass(frozen=True)
class FeatureConfig:
    """Conventions of the feature maps (notes random_features §2.6); ``r_bias`` is used by ``brfa`` only."""

    augment: bool = True
    w_var: float | None = None
    mean_shape: str = "diag"
    activation: str = "relu"
    key_norm: str = "mean"
    value: str = "augmented"
    r_bias: float = 1.0

    def describe(self) -> dict:
        return {"augment": self.augment, "w_var": self.w_var if self.w_var is not None else "auto",
                "w_var_value": rft.default_w_var(self.augment) if self.w_var is None else self.w_var,
                "mean_shape": self.mean_shape, "activation": self.activation,
                "key_norm": self.key_norm, "value": self.value, "r_bias_brfa": self.r_bias}


# --------------------------------------------------------------------------- data

def sample_sphere(rng, shape, d: int):
    """Uniform points on S^{d-1}: ``shape + (d,)`` normalised Gaussian rows."""
    g = rng.standard_normal(tuple(shape) + (d,))
    xp = namespace(g)
    return g / xp.sqrt(xp.sum(g * g, axis=-1, keepdims=True))


def sample_inputs(rng, n: int, N: int, d: int):
    """(x0, X): ``(n, d)`` queries and ``(n, N, d)`` keys, i.i.d. uniform on the unit sphere."""
    return sample_sphere(rng, (n,), d), sample_sphere(rng, (n, N), d)


def draw_target_params(rng, d: int):
    """(beta, S): a uniform unit vector and a Haar-random orthogonal matrix (both NumPy)."""
    beta = np.asarray(to_numpy(rng.standard_normal(d)), dtype=float)
    beta /= np.linalg.norm(beta)
    q, r = np.linalg.qr(np.asarray(to_numpy(rng.standard_normal((d, d))), dtype=float))
    S = q * np.sign(np.diag(r))[None, :]
    return beta, S


_TARGET_RE = re.compile(r"^(keys|query|pair|bilin)([1-9]\d*)$|^(attn|keykey)$")


def parse_target(name: str) -> tuple[str, int]:
    """``"keys2"`` -> ("keys", 2); ``"attn"`` -> ("attn", 1); ``"keykey"`` -> ("keykey", 2)."""
    m = _TARGET_RE.match(name.strip())
    if not m:
        raise ValueError(f"unknown target {name!r}: use keys<p>, query<p>, pair<p>, bilin<p> "
                         "(p >= 1), attn or keykey")
    if m.group(1):
        return m.group(1), int(m.group(2))
    return m.group(3), (2 if m.group(3) == "keykey" else 1)


def _poly(t, p: int, d: int, poly: str, xp):
    """Per-term polynomial of the inner product t = <., .> (unit-variance on the sphere)."""
    if poly == "gegenbauer":
        lam = (d - 2) / 2.0
        if d == 2:
            # Chebyshev T_p(t) = cos(p arccos t), sqrt(2) for unit variance
            return math.sqrt(2.0) * xp.cos(p * xp.acos(xp.clip(t, -1.0, 1.0)))
        # three-term recurrence of C_p^lam, normalised by C_p^lam(1)
        c_prev, c = xp.ones_like(t), 2.0 * lam * t
        for k in range(1, p):
            c_prev, c = c, (2.0 * (k + lam) * t * c - (k + 2.0 * lam - 1.0) * c_prev) / (k + 1.0)
        norm = special.eval_gegenbauer(p, lam, 1.0)
        return c * (math.sqrt(rft.harmonic_dim(p, d)) / norm)
    u = math.sqrt(d) * t
    h_prev, h = xp.ones_like(u), u
    for k in range(1, p):
        h_prev, h = h, u * h - k * h_prev
    return h / math.sqrt(math.factorial(p))


def target_values(names, x0, X, beta, S, poly: str = "gegenbauer"):
    """Target matrix ``(n, T)``, one column per name of :func:`parse_target`'s grammar."""
    xp = namespace(x0, X)
    if poly not in POLYS:
        raise ValueError(f"poly must be one of {POLYS}")
    n, N, d = X.shape
    beta = xp.asarray(beta, dtype=X.dtype)
    S = xp.asarray(S, dtype=X.dtype)
    cols = []
    for name in names:
        fam, p = parse_target(name)
        if fam == "keys":
            v = xp.mean(_poly(X @ beta, p, d, poly, xp), axis=1)
        elif fam == "query":
            v = _poly(x0 @ beta, p, d, poly, xp)
        elif fam == "pair":
            v = xp.mean(_poly(xp.sum(X * x0[:, None, :], axis=-1), p, d, poly, xp), axis=1)
        elif fam == "bilin":
            v = xp.mean(_poly(xp.sum((X @ S.T) * x0[:, None, :], axis=-1), p, d, poly, xp), axis=1)
        elif fam == "attn":
            u = math.sqrt(d) * xp.sum(X * x0[:, None, :], axis=-1)
            b = math.sqrt(d) * (X @ beta)
            v = xp.mean(xp.maximum(u, 0.0) * b, axis=1)
        else:  # keykey
            if N < 2:
                raise ValueError("the key-key target needs N >= 2 keys")
            tot = xp.sum(X, axis=1)
            pairs = 0.5 * (xp.sum(tot * tot, axis=-1) - xp.sum(X * X, axis=(1, 2)))
            v = math.sqrt(d) * pairs / math.sqrt(N * (N - 1) / 2.0)
        cols.append(v)
    return xp.stack(cols, axis=1)


# --------------------------------------------------------------------------- features

def draw_heads(rng, M: int, d: int, *, r_bias: float = 0.0, augment: bool = True,
               w_var: float | None = None, mean_shape: str = "diag"):
    """Query-key matrices ``W: (M, D, D)`` = mu Wbar + N(0, s^2) entries (theory conventions)."""
    D = d + 1 if augment else d
    s2 = rft.default_w_var(augment) if w_var is None else float(w_var)
    W = rng.standard_normal((M, D, D)) * math.sqrt(s2)
    mu = rft.bias_mu(r_bias, d, augment, w_var)
    if mu != 0.0:
        xp = namespace(W)
        diag = xp.ones(D, dtype=W.dtype)
        if mean_shape == "diag" and augment:
            diag[d] = 0.0
        elif mean_shape not in rft.MEAN_SHAPES:
            raise ValueError(f"mean_shape must be one of {rft.MEAN_SHAPES}")
        W = W + mu * xp.diag(diag)[None, :, :]
    return W


def _augment(x, augment: bool):
    if not augment:
        return x
    xp = namespace(x)
    return xp.concat([x, xp.ones(x.shape[:-1] + (1,), dtype=x.dtype)], axis=-1)


def rfa_features(x0, X, W, *, augment: bool = True, activation: str = "relu",
                 key_norm: str = "mean", value: str = "augmented", scale: bool = True,
                 chunk: int | None = None, method: str = "auto"):
    """Random-feature attention features ``(n, M * Dv)`` (head-major), see the module docstring
    (``method``: ``auto``, ``batched`` or ``cuda``, the GPU twin)."""
    xp = namespace(x0, X, W)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")
    if method not in FEATURE_METHODS:
        raise ValueError(f"method must be one of {FEATURE_METHODS}")
    n, N, d = X.shape
    M, D, _ = W.shape
    if method == "auto":
        method = "cuda" if device_engine("random_features.rfa_features", x0, X, W, dims=(D,)) else "batched"
    if method == "cuda":
        return engine("random_features.rfa_features")(x0, X, W, augment=augment, activation=activation, key_norm=key_norm,
                                 value=value, scale=scale)
    Dv = D if value == "augmented" else d
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMS // (M * max(N, D)))
    Wr = xp.reshape(xp.permute_dims(W, (1, 0, 2)), (D, M * D))  # Wr[j, m*D + k] = W[m, j, k]
    out = xp.empty((n, M * Dv), dtype=W.dtype)
    cn = 1.0 / N if key_norm == "mean" else 1.0
    fac = cn / math.sqrt(M) if scale else cn
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        a0 = _augment(x0[s:e], augment)  # (c, D)
        aX = _augment(X[s:e], augment)  # (c, N, D)
        q = xp.reshape(a0 @ Wr, (e - s, M, D))  # q[c, m] = x~0^T W_m
        sc = q @ xp.permute_dims(aX, (0, 2, 1))  # (c, M, N) scores
        if activation == "relu":
            A = xp.maximum(sc, 0.0) * fac
        elif activation == "identity":
            A = sc * fac
        else:  # softmax over keys (replaces sigma and c_N)
            A = xp.exp(sc - xp.max(sc, axis=-1, keepdims=True))
            A = A / xp.sum(A, axis=-1, keepdims=True) * (1.0 / math.sqrt(M) if scale else 1.0)
        vals = aX if value == "augmented" else X[s:e]
        out[s:e] = xp.reshape(A @ vals, (e - s, M * Dv))
    return out


def flatten_inputs(x0, X, augment: bool = True):
    """z = [x0; x_1; ...; x_N; 1]: ``(n, (N+1) d + 1)`` (without the 1 if not augment)."""
    xp = namespace(x0, X)
    n = X.shape[0]
    z = xp.concat([x0, xp.reshape(X, (n, -1))], axis=1)
    return _augment(z, augment)


def draw_mlp(rng, P: int, N: int, d: int, *, augment: bool = True):
    """RFMLP first-layer weights ``(P, Din)`` i.i.d. ``N(0, 1/|z|^2)``, ``|z|^2 = N + 1 (+ 1)``."""
    din = (N + 1) * d + (1 if augment else 0)
    zz = N + 1 + (1 if augment else 0)
    return rng.standard_normal((P, din)) / math.sqrt(zz)


def rfmlp_features(x0, X, Wm, *, augment: bool = True, scale: bool = True, chunk: int = 4096):
    """ReLU random features of the flattened input, ``(n, P)``, scaled by 1/sqrt(P)."""
    device = device_engine("random_features.rfmlp_features", x0, X, Wm)
    if device is not None:
        return device(x0, X, Wm, augment=augment, scale=scale, chunk=chunk)
    xp = namespace(x0, X, Wm)
    n = X.shape[0]
    P = Wm.shape[0]
    fac = 1.0 / math.sqrt(P) if scale else 1.0
    out = xp.empty((n, P), dtype=Wm.dtype)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        z = flatten_inputs(x0[s:e], X[s:e], augment)
        out[s:e] = xp.maximum(z @ Wm.T, 0.0) * fac
    return out


def model_features(model: str, rng, x0, X, M: int, cfg: FeatureConfig, *, r_bias: float | None = None):
    """Draw the frozen weights of ``model`` (rfa, brfa, rfmlp) with ``M`` heads (the RFMLP gets
    the same number of trainable parameters, M * Dv features) and return its features."""
    n, N, d = X.shape
    if model in ("rfa", "brfa"):
        r = 0.0 if model == "rfa" else (cfg.r_bias if r_bias is None else r_bias)
        W = draw_heads(rng, M, d, r_bias=r, augment=cfg.augment, w_var=cfg.w_var,
                       mean_shape=cfg.mean_shape)
        return rfa_features(x0, X, W, augment=cfg.augment, activation=cfg.activation,
                            key_norm=cfg.key_norm, value=cfg.value)
    if model == "rfmlp":
        Dv = d + 1 if (cfg.value == "augmented" and cfg.augment) else d
        Wm = draw_mlp(rng, M * Dv, N, d, augment=cfg.augment)
        return rfmlp_features(x0, X, Wm, augment=cfg.augment)
    raise ValueError(f"model must be one of {MODELS}")


def head_inner_products(phi_a, phi_b, M: int):
    """Per-head inner products ``z[p, m] = <phi_m(X_p), phi_m(X'_p)>`` of unscaled head-major
    features ``(P, M * Dv)``: their mean over m is the M-head empirical kernel, whose
    expectation is the infinite-head kernel (heads are i.i.d.)."""
    xp = namespace(phi_a, phi_b)
    P = phi_a.shape[0]
    a = xp.reshape(phi_a, (P, M, -1))
    b = xp.reshape(phi_b, (P, M, -1))
    return xp.sum(a * b, axis=-1)


# --------------------------------------------------------------------------- ridge

def ridge_path(phi_tr, y_tr, n_list, phi_val, y_val, phi_te, f_te, lambdas):
    """Ridge fits on the nested prefixes ``phi_tr[:n]`` for every n of ``n_list`` and every
    lam of ``lambdas`` (one eigendecomposition per n), lam chosen per target on validation.

    Shapes: ``phi_* (n_*, P)``, ``y_tr (n_max, T)``, ``y_val (n_val, T)`` (possibly noisy
    labels), ``f_te (n_te, T)`` the noiseless test target. Returns a dict of NumPy arrays
    ``(len(n_list), T)``: ``test_mse`` (excess risk), ``val_mse``, ``train_mse``,
    ``best_lambda``, ``lambda_index``, and ``val_path (len(n_list), L, T)``."""
    xp = namespace(phi_tr, y_tr)
    n_list = [int(v) for v in n_list]
    if sorted(n_list) != n_list or len(set(n_list)) != len(n_list):
        raise ValueError("n_list must be strictly increasing")
    if n_list[-1] > phi_tr.shape[0]:
        raise ValueError("n_list exceeds the training rows")
    P = phi_tr.shape[1]
    T = y_tr.shape[1]
    lam = xp.asarray(np.asarray(lambdas, dtype=float), dtype=phi_tr.dtype)
    L = lam.shape[0]
    res = {k: np.zeros((len(n_list), T)) for k in ("test_mse", "val_mse", "train_mse", "best_lambda")}
    res["lambda_index"] = np.zeros((len(n_list), T), dtype=np.int64)
    res["val_path"] = np.zeros((len(n_list), L, T))
    G = Sy = s1 = sy = None
    gram_update = device_engine("random_features.gram_update", phi_tr, y_tr)
    pos = 0
    for k, n in enumerate(n_list):
        if n >= P and gram_update is not None:  # primal on the GPU: float64 Gram sums over row blocks
            G, Sy, s1, sy = gram_update(phi_tr[pos:n], y_tr[pos:n], None if G is None else (G, Sy, s1, sy))
            pos = n
        elif n >= P:  # primal: accumulate the Gram of the nested prefix
            if G is None:
                blk, yb = phi_tr[:n], y_tr[:n]
                G, Sy, s1, sy = blk.T @ blk, blk.T @ yb, xp.sum(blk, axis=0), xp.sum(yb, axis=0)
            else:
                blk, yb = phi_tr[pos:n], y_tr[pos:n]
                G = G + blk.T @ blk
                Sy = Sy + blk.T @ yb
                s1 = s1 + xp.sum(blk, axis=0)
                sy = sy + xp.sum(yb, axis=0)
            pos = n
        if n >= P:
            mu, ybar = s1 / n, sy / n
            Gc = G - n * (mu[:, None] * mu[None, :])
            b = Sy - n * (mu[:, None] * ybar[None, :])
            evals, U = _eigh(Gc)
            coef = (U.T @ b)[:, None, :] / (evals[:, None, None] + n * lam[None, :, None])
            V = U @ xp.reshape(coef, (P, L * T))
        else:  # dual
            mu = xp.mean(phi_tr[:n], axis=0)
            ybar = xp.mean(y_tr[:n], axis=0)
            Phic = phi_tr[:n] - mu
            K = Phic @ Phic.T
            evals, U = _eigh(K)
            coef = (U.T @ (y_tr[:n] - ybar))[:, None, :] / (evals[:, None, None] + n * lam[None, :, None])
            V = Phic.T @ (U @ xp.reshape(coef, (n, L * T)))
        V = xp.reshape(V, (P, L, T))
        pv = xp.reshape((phi_val - mu) @ xp.reshape(V, (P, L * T)), (-1, L, T)) + ybar
        val_path = xp.mean((pv - y_val[:, None, :]) ** 2, axis=0)  # (L, T)
        best = xp.argmin(val_path, axis=0)
        cols = xp.arange(T)
        v_best = V[:, best, cols]  # (P, T)
        pt = (phi_te - mu) @ v_best + ybar
        ptr = (phi_tr[:n] - mu) @ v_best + ybar
        res["test_mse"][k] = _np(xp.mean((pt - f_te) ** 2, axis=0))
        res["train_mse"][k] = _np(xp.mean((ptr - y_tr[:n]) ** 2, axis=0))
        res["val_mse"][k] = _np(val_path[best, cols])
        bi = _np(best).astype(np.int64)
        res["lambda_index"][k] = bi
        res["best_lambda"][k] = np.asarray(lambdas, dtype=float)[bi]
        res["val_path"][k] = _np(val_path)
    return res


def ridge_reference(phi, y, lam: float):
    """Naive ridge (NumPy): solve (Phi_c^T Phi_c + n lam I) v = Phi_c^T y_c; returns (v, intercept)."""
    phi = np.asarray(phi, float)
    y = np.asarray(y, float)
    n, P = phi.shape
    mu = phi.mean(axis=0)
    ybar = y.mean(axis=0)
    A = (phi - mu).T @ (phi - mu) + n * lam * np.eye(P)
    v = np.linalg.solve(A, (phi - mu).T @ (y - ybar))
    return v, ybar - mu @ v


def _eigh(A):
    """Symmetric eigendecomposition: on the device for CUDA arrays (``cupy.linalg.eigh``, cuSOLVER
    ``syevd``, the device engine ``random_features.eigh``); LAPACK's divide-and-conquer ``syevd`` through
    SciPy on one BLAS thread for NumPy arrays; the namespace's own ``eigh`` otherwise."""
    device_eigh = device_engine("random_features.eigh", A)
    if device_eigh is not None:
        return device_eigh(A)
    if is_numpy(A):
        from scipy.linalg import eigh

        from threadpoolctl import threadpool_limits

        # the tridiagonal reduction is a long chain of small level-2 BLAS calls: two threads gain
        # little on an idle machine and lose up to ten-fold when other processes hold the cores
        with threadpool_limits(limits=1, user_api="blas"):
            return eigh(A, driver="evd", check_finite=False, overwrite_a=True)
    return namespace(A).linalg.eigh(A)


def _np(x):
    return np.asarray(to_numpy(x), dtype=float)
