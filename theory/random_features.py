r"""Random-feature attention: infinite-head kernels, excess-risk bound, sample complexities.

Implements the theory side of Fu, Guo, Bai, Mei, *What can a single attention layer learn? A
study through the random features lens* (NeurIPS 2023), as reconstructed in
``shared/specs/random_features.md`` (the paper's full text was not available: items tagged
[RECALL]/[DERIVED] there are conventions, so every one of them is a keyword argument here).

Model (notes random_features §2)
--------------------------------
Inputs: a query ``x0`` and N keys ``x_1..x_N``, each on the unit sphere S^{d-1} (row vectors;
a batch of samples is ``x0: (n, d)``, ``X: (n, N, d)``). With the appended constant coordinate
(``augment=True``, default) ``x~ = [x; 1]`` in R^{D}, D = d + 1 (else ``x~ = x``, D = d).
Head m has a frozen random query-key matrix ``W_m`` (D x D) and a trained value vector ``v_m``::

    f_M(x0, X) = sum_m  c_N sum_i  sigma(x~0^T W_m x~_i) <v_m, val(x_i)>,
    W_m = mu * Wbar + G_m,   G_m entries i.i.d. N(0, s^2),

* ``sigma``: ``"relu"`` (default, the paper's activation [READ]) or ``"identity"`` (linear
  attention); the softmax variant has no closed-form kernel and is simulation-only;
* ``c_N``: ``key_norm="mean"`` -> 1/N (default [RECALL]), ``"sum"`` -> 1;
* ``val(x)``: ``value="augmented"`` -> x~ (default; x itself without the constant coordinate),
  ``"x"`` -> x;
* ``s^2`` (``w_var``): default ``None`` = unit-variance scores on the sphere,
  ``s^2 = 1/(|x~0|^2 |x~|^2)`` = 1/4 with the constant coordinate, 1 without [RECALL + DERIVED];
* mean: ``Wbar = diag(I_d, 0)`` (``mean_shape="diag"``, default) or ``I_D`` (``"identity"``),
  ``mu = r_bias * sqrt(d) * sigma_score``: the *bias ratio* r = std of the score's mean part
  (mu <x0, xi>, whose std is mu/sqrt(d) on the sphere) over the std of its random part
  ``sigma_score = s |x~0| |x~|`` (notes random_features §2.4). r = 0 is RFA, r > 0 is BRFA.

Scores of two inputs are jointly Gaussian over W:
``mean m = mu x~0^T Wbar x~``, ``var v = s^2 |x~0|^2 |x~|^2``,
``cov(x~0^T W x~, x~0'^T W x~') = s^2 <x~0, x~0'> <x~, x~'>``.

Kernels (notes random_features §3.3)
------------------------------------
Pairwise kernel on (query, key) pairs, and the infinite-head kernel of the full model (the mean
over heads of ``<phi_m(X), phi_m(X')>``, phi_m the head's feature block)::

    k((x0, xi), (x0', xj')) = E_W[sigma(s) sigma(s')] <val(xi), val(xj')>
    K(X, X')               = c_N^2 sum_{i,j} k((x0, xi), (x0', xj')).

For ReLU, ``E[(m+U)^+ (m'+V)^+]`` (U, V standard normal with correlation rho) is the closed form
of :func:`relu_moment` (bivariate normal CDF through Owen's T; exact limits at rho = +-1). With
zero mean and the default conventions it reduces to ``kappa1((1+a)(1+b)/4) (1+b)``, a = <x0,x0'>,
b = <xi,xj'>, ``kappa1`` the degree-1 arc-cosine kernel (:func:`kappa1`). The RFMLP baseline
(ReLU features of the flattened input ``z = [x0; x1; ..; xN; 1]`` with ``w ~ N(0, I/|z|^2)``)
has kernel ``kappa1(<z, z'>/|z|^2)`` (:func:`mlp_kernel`).

Complexity and bounds (notes random_features §3.4, 4)
-----------------------------------------------------
Zero-mean kernels depend on inner products only, so by Funk-Hecke they are diagonal in products
of spherical harmonics. With ``P_p`` the Gegenbauer polynomial of S^{d-1} (P_p(1) = 1) and
``Q_p = sqrt(N_p(d)) P_p`` its unit-variance version (:func:`gegenbauer`), the eigenvalue of the
pairwise RFA kernel on bidegree (s, t) is ``mu_{s,t} = E[k(a, b) P_s(a) P_t(b)]`` (a, b
independent projections of uniform points, :func:`rfa_harmonic_eigenvalue`), and the RKHS norm
of a unit-variance pure-degree pairwise function is ``1/mu``::

    keys  F = Q_p(<beta, x>)    B = 1/mu_{0,p};   query F = Q_p(<beta, x0>)  B = 1/mu_{p,0};
    pair  F = Q_p(<x0, x>)      B = 1/mu_{p,p}.

``B(f*) := |F|_k^2`` for ``f* = (1/N) sum_i F(x0, xi)`` (notes random_features §3.2) does not depend on N. For the RFMLP
the same f* has ``|f*|^2 = 1/(N nu)`` with ``nu`` the eigenvalue of the flattened-input ReLU
kernel (:func:`mlp_harmonic_eigenvalue`, an exact series in the arc-cosine coefficients).
:func:`target_complexity` returns both. Excess-risk bound (notes random_features §4.2, [RECALL form], constants
and log factors unknown, set to one)::

    E l(f^) - E l(f*)  <=  sqrt(B R^2 / n) + sqrt(B R^2 / M)  [+ sqrt(log(1/delta) / n)],

with ``R^2 = E K(X, X)`` the mean feature norm of one head (:func:`feature_radius_sq`; it depends
on N and d only through this factor). :data:`COMPLEXITY_TABLE` is the table of notes random_features §4.3 of
sample complexities (n needed for relative error eps ~ d^a N^b / eps^2, [DERIVED]) for attention
(r = 0 and r ~ 1) and the RFMLP; :func:`predicted_sample_complexity` evaluates it.

The eigenvalues as a positive series; ridge regression on M heads (notes random_features §3.4, §4.4)
----------------------------------------------------------------------------------------------------
``mu_{s,t} = sum_j e_j E[A_j P_s] E[B_j P_t]`` with non-negative terms only
(:func:`rfa_harmonic_eigenvalue_series`): exact to the last digits at any size, and exactly zero
where the parity/degree rule of :func:`rfa_eigenvalue_vanishes` says so (never decided by a
threshold on the value). :func:`rfa_eigenvalue` picks the quadrature or the series. The kernel K
of the full input has eigenvalues ``mu_{s,t}/N`` (t >= 1) and ``mu_{s,0}`` on the symmetrised
pairwise harmonics, multiplicity ``N_s(d) N_t(d)`` (:func:`rfa_kernel_spectrum`); from it,
:func:`random_feature_ridge_risk` is the deterministic equivalent of the excess risk of ridge
regression on P random features from n noiseless samples (derived in notes random_features §4.4), and
:func:`rfa_ridge_risk` its value for a Gegenbauer target with the ridge tuned on a grid.

Predictions for a run's configuration (used by the study's claims)
------------------------------------------------------------------
* class membership: an eigenvalue ``mu_{s,t}`` that vanishes by structure
  (:func:`rfa_eigenvalue_vanishes`; e.g. without the constant coordinate ReLU features are odd in
  (x0, X), linear attention has degree <= 1 in the query and <= 2 in the key) puts the target
  outside the class, orthogonal to every feature (:func:`outside_class_exactly`, also the
  key-key control): any fit has relative error >= 1; :func:`in_attention_class`;
* the bound's scale ``B R^2`` (:func:`bound_complexity`, free of ``w_var`` and of the key
  normalisation), the trivial risk ``Var f*`` (:func:`target_variance`), the bound's log-log
  slopes over a grid (:func:`bound_loglog_slope`, B and R^2 cancel) and the predicted
  sample-complexity ratio RFMLP / RFA ``B_mlp R_mlp^2 / (B_rfa R_rfa^2)``
  (:func:`sample_complexity_ratio`);
* N-exponents of the error at fixed n from the table (:func:`N_exponent`: eps ~ N^(b/2)), and the
  sign of the bias effect per target family (:func:`bias_effect`) with the conventions its
  argument covers (:func:`bias_theory_covers`).

Everything here is a deterministic function of its parameters (numpy/scipy only).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special

__all__ = [
    "ACTIVATIONS",
    "MEAN_SHAPES",
    "VALUES",
    "KEY_NORMS",
    "default_w_var",
    "score_std",
    "bias_mu",
    "kappa1",
    "kappa1_series",
    "bvn_upper",
    "relu_moment",
    "score_stats",
    "pair_kernel",
    "rfa_kernel",
    "mlp_kernel",
    "harmonic_dim",
    "gegenbauer",
    "sphere_projection_rule",
    "sphere_projection_moments",
    "rfa_pair_kernel_ab",
    "rfa_harmonic_eigenvalue",
    "mlp_harmonic_eigenvalue",
    "target_complexity",
    "feature_radius_sq",
    "excess_risk_bound",
    "COMPLEXITY_TABLE",
    "complexity_exponents",
    "predicted_sample_complexity",
    "is_learnable",
    "ZERO_EIGEN_RTOL",
    "bidegree",
    "rfa_eigenvalue_vanishes",
    "rfa_harmonic_eigenvalue_series",
    "rfa_eigenvalue",
    "QUADRATURE_FLOOR",
    "rfa_kernel_spectrum",
    "random_feature_ridge_risk",
    "rfa_ridge_risk",
    "target_variance",
    "mlp_feature_radius_sq",
    "bound_complexity",
    "sample_complexity_ratio",
    "in_attention_class",
    "outside_class_exactly",
    "N_exponent",
    "bias_effect",
    "bias_theory_covers",
    "bound_loglog_slope",
]

ACTIVATIONS = ("relu", "identity")  # closed forms exist for these ("softmax" is sim-only)
MEAN_SHAPES = ("diag", "identity")
VALUES = ("augmented", "x")
KEY_NORMS = ("mean", "sum")

_SQRT2PI = math.sqrt(2.0 * math.pi)
_RHO_EDGE = 1.0 - 1e-12  # beyond this |rho| the exact degenerate (rho = +-1) formulas are used


# --------------------------------------------------------------------------- conventions

def default_w_var(augment: bool = True) -> float:
    """Entry variance ``s^2`` giving unit-variance scores for unit-sphere inputs:
    ``1/(|x~0|^2 |x~|^2)``."""
    sq = 2.0 if augment else 1.0
    return 1.0 / (sq * sq)


def score_std(augment: bool = True, w_var: float | None = None) -> float:
    """Standard deviation of the random part of a score, ``s |x~0| |x~|``, on the unit sphere.

    Examples
    --------
    The default entry variance makes it one, with or without the constant coordinate:

    >>> default_w_var(augment=True), default_w_var(augment=False)
    (0.25, 1.0)
    >>> score_std(augment=True), score_std(augment=True, w_var=1.0)
    (1.0, 2.0)
    """
    s2 = default_w_var(augment) if w_var is None else float(w_var)
    sq = 2.0 if augment else 1.0
    return math.sqrt(s2) * sq


def bias_mu(r_bias: float, d: int, augment: bool = True, w_var: float | None = None) -> float:
    """Mean scale mu of W = mu Wbar + G for bias ratio r (notes random_features §2.4): mu = r sqrt(d) sigma_score."""
    return float(r_bias) * math.sqrt(d) * score_std(augment, w_var)


def _check(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


# --------------------------------------------------------------------------- Gaussian moments

def kappa1(rho):
    """Degree-1 arc-cosine kernel E[relu(U) relu(V)], (U, V) standard normal with correlation rho:
    ``[sqrt(1 - rho^2) + (pi - arccos rho) rho] / (2 pi)``.

    Examples
    --------
    Uncorrelated: ``E[relu(U)]^2 = 1/(2 pi)``; fully correlated: ``E[relu(U)^2] = 1/2``;
    anti-correlated: ``relu(U) relu(-U) = 0``.

    >>> round(float(kappa1(0.0)) * 2 * math.pi, 12)
    1.0
    >>> float(kappa1(1.0)), float(kappa1(-1.0))
    (0.5, 0.0)
    """
    rho = np.clip(np.asarray(rho, dtype=float), -1.0, 1.0)
    return (np.sqrt(np.maximum(1.0 - rho * rho, 0.0)) + (np.pi - np.arccos(rho)) * rho) / (2.0 * np.pi)


@lru_cache(maxsize=8)
def kappa1_series(order: int) -> np.ndarray:
    """Taylor coefficients c_0..c_order of :func:`kappa1` (all >= 0):
    1/(2pi) + rho/4 + rho^2/(4pi) + rho^4/(48pi) + ...  (odd powers >= 3 vanish).

    Examples
    --------
    The coefficients times pi: 1/2, pi/4, 1/4, 0 and 1/48:

    >>> [round(float(c) * math.pi, 6) for c in kappa1_series(4)]
    [0.5, 0.785398, 0.25, 0.0, 0.020833]
    """
    c = np.zeros(order + 1)
    c[0] = 1.0 / (2 * np.pi)
    if order >= 1:
        c[1] = 0.25
    # sqrt(1 - r^2) + r arcsin(r) - 1 = sum_{k>=1} a_k r^{2k},
    # a_k = binom(1/2, k) (-1)^k + (2k-2)! / (4^{k-1} ((k-1)!)^2 (2k-1))
    for k in range(1, order // 2 + 1):
        b = special.binom(0.5, k) * (-1.0) ** k
        j = k - 1
        asin_coef = math.exp(math.lgamma(2 * j + 1) - j * math.log(4.0) - 2 * math.lgamma(j + 1)) / (2 * j + 1)
        c[2 * k] = (b + asin_coef) / (2 * np.pi)
    return c


def _norm_pdf(x):
    return np.exp(-0.5 * x * x) / _SQRT2PI


def _norm_sf(x):
    return special.ndtr(-x)


def _bvn_lower(x, y, rho):
    """P(U <= x, V <= y) for |rho| < 1 via Owen's T (vectorised, no loops)."""
    s = np.sqrt(1.0 - rho * rho)
    tiny = 1e-150
    xs = np.where(x == 0.0, tiny, x)
    ys = np.where(y == 0.0, tiny, y)
    ax = (ys - rho * xs) / (xs * s)
    ay = (xs - rho * ys) / (ys * s)
    beta = np.where(np.sign(xs) == np.sign(ys), 0.0, 0.5)  # signs, not the product (underflow)
    return 0.5 * (special.ndtr(x) + special.ndtr(y)) - special.owens_t(xs, ax) - special.owens_t(ys, ay) - beta


def bvn_upper(h, k, rho):
    """P(U > h, V > k) for standard normals with correlation rho (any rho in [-1, 1]).

    Examples
    --------
    The orthant probability ``P(U > 0, V > 0) = 1/4 + arcsin(rho)/(2 pi)``: 1/3 at rho = 1/2,
    1/2 at rho = 1:

    >>> round(float(bvn_upper(0.0, 0.0, 0.5)), 12)
    0.333333333333
    >>> float(bvn_upper(0.0, 0.0, 1.0))
    0.5
    """
    h, k, rho = np.broadcast_arrays(*(np.asarray(t, dtype=float) for t in (h, k, rho)))
    rho = np.clip(rho, -1.0, 1.0)
    out = np.empty(h.shape)
    inner = np.abs(rho) < _RHO_EDGE
    out[inner] = np.clip(_bvn_lower(-h[inner], -k[inner], rho[inner]), 0.0, 1.0)
    pos = rho >= _RHO_EDGE
    out[pos] = _norm_sf(np.maximum(h[pos], k[pos]))
    neg = rho <= -_RHO_EDGE
    out[neg] = np.maximum(special.ndtr(-k[neg]) - special.ndtr(h[neg]), 0.0)  # h < U < -k
    return out


def relu_moment(m1, m2, rho):
    """E[(m1 + U)^+ (m2 + V)^+] for standard normals U, V with correlation rho (broadcasting).

    With h = -m1, k = -m2, s = sqrt(1 - rho^2), L = P(U > h, V > k) (notes random_features §3.3):
    ``m1 m2 L + m1 E[V; .] + m2 E[U; .] + E[UV; .]`` with the truncated moments
    ``E[U; .] = phi(h) Q((k - rho h)/s) + rho phi(k) Q((h - rho k)/s)`` (and symmetrically) and
    ``E[UV; .] = rho L + rho h phi(h) Q((k-rho h)/s) + rho k phi(k) Q((h-rho k)/s)
    + s/sqrt(2 pi) phi(sqrt((h^2 - 2 rho h k + k^2)/s^2))``. At ``|rho| = 1`` the exact one-dimensional
    integrals are used. At m1 = m2 = 0 it is :func:`kappa1`.

    Examples
    --------
    >>> bool(np.isclose(relu_moment(0.0, 0.0, 0.3), kappa1(0.3), rtol=1e-12))
    True

    With ``U = V`` and both means 1, ``E[((1 + U)^+)^2] = 2 Phi(1) + phi(1)`` (Phi, phi the
    standard normal CDF and density):

    >>> round(float(relu_moment(1.0, 1.0, 1.0)), 12)
    1.924660216656
    """
    m1, m2, rho = np.broadcast_arrays(*(np.asarray(t, dtype=float) for t in (m1, m2, rho)))
    rho = np.clip(rho, -1.0, 1.0)
    out = np.empty(m1.shape)
    inner = np.abs(rho) < _RHO_EDGE
    if inner.any():
        a, b, r = m1[inner], m2[inner], rho[inner]
        h, k = -a, -b
        s = np.sqrt(1.0 - r * r)
        L = bvn_upper(h, k, r)
        qk = _norm_sf((k - r * h) / s)
        qh = _norm_sf((h - r * k) / s)
        ph, pk = _norm_pdf(h), _norm_pdf(k)
        EU = ph * qk + r * pk * qh
        EV = pk * qh + r * ph * qk
        quad = np.maximum(h * h - 2 * r * h * k + k * k, 0.0) / (s * s)
        EUV = r * L + r * h * ph * qk + r * k * pk * qh + s / _SQRT2PI * _norm_pdf(np.sqrt(quad))
        out[inner] = a * b * L + a * EV + b * EU + EUV
    pos = rho >= _RHO_EDGE
    if pos.any():  # U = V: integral over u > c = max(-m1, -m2)
        a, b = m1[pos], m2[pos]
        c = np.maximum(-a, -b)
        Q, p = _norm_sf(c), _norm_pdf(c)
        out[pos] = a * b * Q + (a + b) * p + c * p + Q
    neg = rho <= -_RHO_EDGE
    if neg.any():  # V = -U: integral over -m1 < u < m2 of (m1 + u)(m2 - u)
        a, b = m1[neg], m2[neg]
        lo, hi = -a, b
        ok = hi > lo
        dP = special.ndtr(hi) - special.ndtr(lo)
        val = a * b * dP + (b - a) * (_norm_pdf(lo) - _norm_pdf(hi)) - (
            lo * _norm_pdf(lo) - hi * _norm_pdf(hi) + dP)
        out[neg] = np.where(ok, np.maximum(val, 0.0), 0.0)
    return np.maximum(out, 0.0)


# --------------------------------------------------------------------------- kernels

def _aug(x, augment):
    x = np.asarray(x, dtype=float)
    if not augment:
        return x
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1)


def _mean_form(x0t, xt, d, mean_shape):
    """x~0^T Wbar x~ for Wbar = diag(I_d, 0) or I_D (broadcasting over leading axes)."""
    if mean_shape == "diag":
        return np.sum(x0t[..., :d] * xt[..., :d], axis=-1)
    return np.sum(x0t * xt, axis=-1)


def score_stats(x0, x, x0p, xp, *, r_bias=0.0, augment=True, w_var=None, mean_shape="diag"):
    """Means, variances and covariance over W of the scores ``x~0^T W x~`` and ``x~0'^T W x~'``.

    Arrays of shape ``(..., d)`` broadcast together; returns ``(m, mp, v, vp, c)``."""
    _check("mean_shape", mean_shape, MEAN_SHAPES)
    d = np.shape(x0)[-1]
    s2 = default_w_var(augment) if w_var is None else float(w_var)
    a0, a, b0, b = (_aug(t, augment) for t in (x0, x, x0p, xp))
    mu = bias_mu(r_bias, d, augment, w_var)
    m = mu * _mean_form(a0, a, d, mean_shape)
    mp = mu * _mean_form(b0, b, d, mean_shape)
    v = s2 * np.sum(a0 * a0, -1) * np.sum(a * a, -1)
    vp = s2 * np.sum(b0 * b0, -1) * np.sum(b * b, -1)
    c = s2 * np.sum(a0 * b0, -1) * np.sum(a * b, -1)
    return m, mp, v, vp, c


def pair_kernel(x0, x, x0p, xp, *, r_bias=0.0, augment=True, w_var=None, mean_shape="diag",
                activation="relu", value="augmented"):
    """Pairwise kernel ``E_W[sigma(s) sigma(s')] <val(x), val(x')>`` (arrays ``(..., d)``)."""
    _check("activation", activation, ACTIVATIONS)
    _check("value", value, VALUES)
    m, mp, v, vp, c = score_stats(x0, x, x0p, xp, r_bias=r_bias, augment=augment, w_var=w_var,
                                  mean_shape=mean_shape)
    if activation == "relu":
        sd, sdp = np.sqrt(v), np.sqrt(vp)
        e = sd * sdp * relu_moment(m / sd, mp / sdp, c / (sd * sdp))
    else:
        e = c + m * mp
    vv = np.sum(np.asarray(x, float) * np.asarray(xp, float), -1)
    if value == "augmented" and augment:
        vv = vv + 1.0  # <x~, x~'> = <x, x'> + 1
    return e * vv


def rfa_kernel(x0, X, x0p, Xp, *, key_norm="mean", chunk=64, **conv):
    """Infinite-head kernel matrix ``K(X_p, X'_q)`` of shape (n, n') between samples
    ``x0: (n, d), X: (n, N, d)`` and ``x0p: (n', d), Xp: (n', N', d)`` (``conv``: the keyword
    conventions of :func:`pair_kernel`). Cost n n' N N' closed-form evaluations."""
    _check("key_norm", key_norm, KEY_NORMS)
    x0, X, x0p, Xp = (np.asarray(t, dtype=float) for t in (x0, X, x0p, Xp))
    n, N, _ = X.shape
    n2, N2, _ = Xp.shape
    cn = (1.0 / N) * (1.0 / N2) if key_norm == "mean" else 1.0
    out = np.empty((n, n2))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        a0 = x0[s:e, None, None, None, :]
        a = X[s:e, None, :, None, :]
        b0 = x0p[None, :, None, None, :]
        b = Xp[None, :, None, :, :]
        k = pair_kernel(a0, a, b0, b, **conv)
        out[s:e] = cn * k.sum(axis=(2, 3))
    return out


def mlp_kernel(z, zp, *, w_var=None):
    """ReLU random-feature kernel ``E_w[relu(<w,z>) relu(<w,z'>)]``, w ~ N(0, w_var I), for
    flattened inputs ``z: (n, D_in)``, ``zp: (n', D_in)``; ``w_var=None`` means ``1/|z|^2`` of the
    first row (unit-variance pre-activations, the pilot's 1/(N+2) for augmented sphere inputs)."""
    z, zp = np.asarray(z, float), np.asarray(zp, float)
    nz = np.linalg.norm(z, axis=-1)
    nzp = np.linalg.norm(zp, axis=-1)
    s2 = 1.0 / nz.flat[0] ** 2 if w_var is None else float(w_var)
    rho = (z @ zp.T) / (nz[:, None] * nzp[None, :])
    return s2 * nz[:, None] * nzp[None, :] * kappa1(rho)


# --------------------------------------------------------------------------- harmonics

def harmonic_dim(p: int, d: int) -> int:
    """Dimension N_p(d) of the degree-p spherical harmonics on S^{d-1}.

    Examples
    --------
    On the ordinary sphere S^2 (d = 3) it is ``2p + 1``; degree 1 has d dimensions:

    >>> [harmonic_dim(p, 3) for p in range(4)]
    [1, 3, 5, 7]
    >>> harmonic_dim(1, 16)
    16
    """
    if p < 0:
        raise ValueError("degree must be >= 0")
    if p == 0:
        return 1
    if d == 2:
        return 2
    return int(round((2 * p + d - 2) / p * special.comb(p + d - 3, p - 1, exact=True)))


def gegenbauer(p: int, d: int, t, unit_variance: bool = True):
    """Gegenbauer polynomial of S^{d-1}: P_p(1) = 1, or (default) the unit-variance
    ``Q_p = sqrt(N_p(d)) P_p`` (E Q_p(<u, e>)^2 = 1 for u uniform on the sphere).

    Examples
    --------
    On S^2 (d = 3) ``P_2`` is the Legendre polynomial ``(3 t^2 - 1)/2``:

    >>> float(gegenbauer(2, 3, 0.5, unit_variance=False))
    -0.125
    >>> round(float(gegenbauer(2, 3, 0.5)) / math.sqrt(5), 12)
    -0.125
    """
    t = np.asarray(t, dtype=float)
    if d < 2:
        raise ValueError("d must be >= 2")
    if p == 0:
        val = np.ones_like(t)
    elif d == 2:
        val = special.eval_chebyt(p, t)
    else:
        lam = (d - 2) / 2.0
        val = special.eval_gegenbauer(p, lam, t) / special.eval_gegenbauer(p, lam, 1.0)
    return val * math.sqrt(harmonic_dim(p, d)) if unit_variance else val


@lru_cache(maxsize=64)
def sphere_projection_rule(d: int, nodes: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Jacobi rule (t_j, w_j), sum w = 1, for E g(<u, e>), u uniform on S^{d-1}:
    the law of t has density proportional to (1 - t^2)^{(d-3)/2} on [-1, 1]."""
    alpha = (d - 3) / 2.0
    t, w = special.roots_jacobi(nodes, alpha, alpha)
    return t, w / w.sum()


def sphere_projection_moments(d: int, order: int) -> np.ndarray:
    """E t^j, j = 0..order, for t = <u, e>: E t^{2k} = prod_{i<k} (2i+1)/(d+2i), odd ones 0.

    Examples
    --------
    ``E t^2 = 1/d`` and ``E t^4 = 3/(d (d + 2))``; on S^2, t is uniform on [-1, 1]:

    >>> [round(float(m), 12) for m in sphere_projection_moments(3, 4)]
    [1.0, 0.0, 0.333333333333, 0.0, 0.2]
    """
    m = np.zeros(order + 1)
    m[0] = 1.0
    for k in range(1, order // 2 + 1):
        m[2 * k] = m[2 * k - 2] * (2 * k - 1) / (d + 2 * k - 2)
    return m


def rfa_pair_kernel_ab(a, b, *, augment=True, w_var=None, activation="relu", value="augmented"):
    """Zero-mean pairwise RFA kernel as a function of a = <x0, x0'> and b = <x, x'> (unit sphere).
    Default conventions: ``kappa1((1+a)(1+b)/4) (1+b)``.

    Examples
    --------
    The diagonal ``k(1, 1) = kappa1(1) * 2 = 1``; linear attention (``activation="identity"``)
    gives ``(1 + a)(1 + b)^2 / 4``:

    >>> float(rfa_pair_kernel_ab(1.0, 1.0))
    1.0
    >>> float(rfa_pair_kernel_ab(0.5, 0.0, activation="identity"))
    0.375
    """
    _check("activation", activation, ACTIVATIONS)
    _check("value", value, VALUES)
    a, b = np.asarray(a, float), np.asarray(b, float)
    s2 = default_w_var(augment) if w_var is None else float(w_var)
    g = (1.0 + a) * (1.0 + b) if augment else a * b
    sq = 2.0 if augment else 1.0
    var = s2 * sq * sq
    e = var * kappa1(g / (sq * sq)) if activation == "relu" else s2 * g
    vv = (1.0 + b) if (value == "augmented" and augment) else b
    return e * vv


def rfa_harmonic_eigenvalue(s: int, t: int, d: int, *, nodes: int = 160, **conv) -> float:
    """Eigenvalue mu_{s,t} = E[k(a, b) P_s(a) P_t(b)] of the zero-mean pairwise RFA kernel on the
    bidegree-(s, t) harmonics (query degree s, key degree t); 2-D Gauss-Jacobi quadrature.
    ``conv``: augment, w_var, activation, value (see :func:`rfa_pair_kernel_ab`)."""
    ta, wa = sphere_projection_rule(d, nodes)
    k = rfa_pair_kernel_ab(ta[:, None], ta[None, :], **conv)
    ps = gegenbauer(s, d, ta, unit_variance=False)
    pt = gegenbauer(t, d, ta, unit_variance=False)
    return float((wa * ps) @ k @ (wa * pt))


def _moments_of_sum(mom_list, order):
    """Moments 0..order of a sum of independent variables from their moment sequences."""
    out = np.zeros(order + 1)
    out[0] = 1.0
    binom = special.comb(np.arange(order + 1)[:, None], np.arange(order + 1)[None, :])
    for m in mom_list:
        new = np.zeros(order + 1)
        for j in range(order + 1):
            new[j] = np.sum(binom[j, :j + 1] * out[:j + 1] * m[j::-1][:j + 1])
        out = new
    return out


def mlp_harmonic_eigenvalue(s: int, t: int, d: int, N: int, *, augment: bool = True,
                            order: int = 160) -> float:
    """Eigenvalue nu_{s,t} of the RFMLP kernel ``kappa1(<z, z'>/|z|^2)`` (z = [x0; x1..xN; 1])
    on the harmonic that has degree s in the query and degree t in the first key (degree 0 in
    the other coordinates): ``E[kappa1(rho) P_s(a) P_t(b_1)]`` with
    ``rho = (c + a + sum_{i<=N} b_i)/(N + 1 + c)``, c = 1 with the constant coordinate.

    Exact series: kappa1 = sum_k c_k rho^k with c_k >= 0 (:func:`kappa1_series`) and the moments
    of a sum of independent sphere projections, so every term is non-negative (no cancellation);
    truncated at ``order``."""
    if N < 1:
        raise ValueError("N must be >= 1")
    c0 = 1.0 if augment else 0.0
    scale = N + 1 + c0
    mom_t = sphere_projection_moments(d, order)
    # rest R = c0 + sum_{i=2..N} b_i, all divided by `scale`
    powers = scale ** -np.arange(order + 1.0)
    rest_mom = [mom_t * powers] * (N - 1)
    const = np.array([(c0 / scale) ** j for j in range(order + 1)])
    R = _moments_of_sum(rest_mom + [const], order)
    # special coordinates: E[(a/scale)^j P_s(a)], E[(b/scale)^j P_t(b)] (Gauss-Jacobi, exact)
    ta, wa = sphere_projection_rule(d, order // 2 + 8)
    ps = gegenbauer(s, d, ta, unit_variance=False)
    pt = gegenbauer(t, d, ta, unit_variance=False)
    jj = np.arange(order + 1)
    A = ((ta[None, :] / scale) ** jj[:, None]) @ (wa * ps)
    Bm = ((ta[None, :] / scale) ** jj[:, None]) @ (wa * pt)
    AB = _moments_of_sum([A, Bm], order)  # E[(a + b)^j P_s(a) P_t(b)] / scale^j (product form)
    total = _moments_of_sum([R, AB], order)  # E[rho^j P_s(a) P_t(b)]
    c = kappa1_series(order)
    return float(np.sum(c * total))


ZERO_EIGEN_RTOL = 1e-10  # numerical cross-check only: a structural zero leaves < this x k(1, 1) in quadrature

_BIDEGREE = {"keys": lambda p: (0, p), "query": lambda p: (p, 0), "pair": lambda p: (p, p),
             "bilin": lambda p: (p, p)}


def bidegree(family: str, p: int) -> tuple[int, int]:
    """(query degree, key degree) of the Gegenbauer-pure pairwise term of a target family:
    keys (0, p), query (p, 0), pair and bilin (p, p) (a rotation S of the key keeps its degree)."""
    if family not in _BIDEGREE:
        raise ValueError(f"exact complexities exist for keys/query/pair/bilin targets, not {family!r}")
    return _BIDEGREE[family](p)


def _zero_mean_conv(conv: dict) -> dict:
    return {k: v for k, v in conv.items() if k in ("augment", "w_var", "activation", "value", "nodes")}


# ---------------------------------------------------------------- the kernel as a positive series (notes random_features §3.4)
#
# With zero mean the pairwise kernel is e(a, b) vv(b): e = E_W[sigma(s) sigma(s')] a power series in one
# product g of a query factor and a key factor, vv the values' inner product. Writing G_a = (1 + a)/2,
# G_b = (1 + b)/2 with the constant coordinate (a, b without it):
#
#   relu, augment:      e = 4 s^2 kappa1(G_a G_b) = 4 s^2 sum_j c_j G_a^j G_b^j,   vv = 2 G_b (values on [x; 1]) or b
#   relu, no augment:   e = s^2 kappa1(a b)       = s^2 sum_j c_j a^j b^j,          vv = b
#   identity:           e = 4 s^2 G_a G_b (augment) or s^2 a b (one term, j = 1)
#
# so mu_{s,t} = sum_j e_j E[A_j(a) P_s(a)] E[B_j(b) P_t(b)] with A_j = G_a^j and B_j = G_b^j vv(b). Every
# E[a^i P_s(a)] is >= 0, and > 0 exactly when i >= s and i = s (mod 2) (the Gegenbauer expansion of a
# monomial has positive coefficients on the degrees of its parity below it), and every coefficient
# e_j is >= 0 (kappa1's Taylor coefficients: c_0, c_1 and every even one are > 0, the odd ones >= 3
# vanish). Hence every term is >= 0 -- the series has no cancellation -- and mu_{s,t} = 0 exactly
# when no term has a monomial of the right degree and parity on both sides: the structural rule of
# :func:`rfa_eigenvalue_vanishes`.

_SERIES_ORDER = 600  # terms of the kappa1 series (terms decay like E[(G_a G_b)^j] j^-5/2)


def _series_conv(conv: dict) -> tuple[bool, str, str, float]:
    augment = conv.get("augment", True)
    activation = conv.get("activation", "relu")
    value = conv.get("value", "augmented")
    _check("activation", activation, ACTIVATIONS)
    _check("value", value, VALUES)
    w_var = conv.get("w_var")
    s2 = default_w_var(augment) if w_var is None else float(w_var)
    return augment, activation, value, s2


def _score_terms(activation: str, order: int) -> np.ndarray:
    """Indices j of the non-zero coefficients of e(g) = sum_j e_j g^j (up to ``order``)."""
    if activation == "identity":
        return np.array([1])
    j = np.arange(order + 1)
    return j[(j <= 1) | (j % 2 == 0)]


def _degrees(j: int, side: str, augment: bool, value: str) -> np.ndarray:
    """Degrees of the monomials of A_j (``side="query"``) or B_j (``"key"``)."""
    if side == "query":
        return np.arange(j + 1) if augment else np.array([j])
    if not augment:
        return np.array([j + 1])
    return np.arange(j + 2) if value == "augmented" else np.arange(1, j + 2)


def _reaches(degrees: np.ndarray, s: int) -> bool:
    """Whether a polynomial with monomials of these degrees (positive coefficients) has a non-zero
    projection on the degree-s harmonics: some degree i >= s with i = s (mod 2)."""
    return bool(np.any((degrees >= s) & ((degrees - s) % 2 == 0)))


def rfa_eigenvalue_vanishes(s: int, t: int, d: int | None = None, **conv) -> bool:
    """Whether mu_{s,t} is zero by structure (notes random_features §3.2, §3.4): the parity/degree rule of the
    kernel's positive series (see the comment above). Without the constant coordinate ReLU
    features are odd in (x0, X), so every even total degree s + t vanishes, and so does every
    odd query degree above 1 (kappa1 has one odd power, rho^1); linear attention has degree <= 1
    in the query and <= 2 in the key; ReLU with the constant coordinate reaches every bidegree.
    Exact for every d >= 2 (``d`` is accepted for the call's symmetry, not needed); a genuine
    eigenvalue can be far below any fixed threshold (``pair3`` at d = 32: ~4e-11).

    Examples
    --------
    >>> rfa_eigenvalue_vanishes(1, 1, augment=False)  # even total degree, odd features
    True
    >>> rfa_eigenvalue_vanishes(0, 1, augment=False), rfa_eigenvalue_vanishes(1, 1)
    (False, False)
    """
    if s < 0 or t < 0:
        raise ValueError("degrees must be >= 0")
    augment, activation, value, _ = _series_conv(_zero_mean_conv(conv))
    top = max(s, t) + 3  # beyond it the even j repeat the pattern (the only odd j is 1)
    for j in _score_terms(activation, top):
        if _reaches(_degrees(int(j), "query", augment, value), s) and \
                _reaches(_degrees(int(j), "key", augment, value), t):
            return False
    return True


def _times_projection(row: np.ndarray, d: int) -> np.ndarray:
    """Map E[h P_s] (s = 0..S) to E[h a P_s] with a P_s = ((s+d-2) P_{s+1} + s P_{s-1})/(2s+d-2)
    (a P_0 = P_1); positive coefficients, the last entry dropped."""
    s = np.arange(row.size - 1, dtype=float)
    up = row[1:]
    dn = np.concatenate([[0.0], row[:-2]])
    out = np.empty(row.size - 1)
    out[1:] = ((s[1:] + d - 2) * up[1:] + s[1:] * dn[1:]) / (2 * s[1:] + d - 2)
    out[0] = up[0]
    return out


@lru_cache(maxsize=64)
def _moment_table(d: int, order: int, degree: int, augment: bool) -> np.ndarray:
    """``T[j, s] = E[G^j P_s(a)]`` for j <= order + 1, s <= degree + 1, a the projection of a
    uniform point of S^{d-1}, G = (1 + a)/2 (``augment``) or a; built by the three-term recurrence
    of the Gegenbauer polynomials, every step a positive combination (no cancellation)."""
    width = degree + order + 4
    T = np.zeros((order + 2, width))
    row = np.zeros(width + order + 2)
    row[0] = 1.0
    for j in range(order + 2):
        T[j] = row[:width]
        nxt = _times_projection(row, d)
        row = 0.5 * (row[:-1] + nxt) if augment else nxt
    return T[:, :degree + 2]


def rfa_harmonic_eigenvalue_series(s: int, t: int, d: int, *, order: int = _SERIES_ORDER, **conv) -> float:
    """mu_{s,t} of the zero-mean pairwise RFA kernel from its positive series (see above): a sum
    of non-negative terms, accurate to the last digits however small it is (the quadrature of
    :func:`rfa_harmonic_eigenvalue` has an absolute floor of ~1e-17); exactly 0 where the
    structural rule says so. ``conv``: augment, w_var, activation, value."""
    augment, activation, value, s2 = _series_conv(_zero_mean_conv(conv))
    top = max(s, t) + 1
    T = _moment_table(int(d), int(order), top, bool(augment))
    j = _score_terms(activation, order)
    if activation == "identity":
        e = np.array([4.0 * s2 if augment else s2])
    else:
        e = (4.0 * s2 if augment else s2) * kappa1_series(order)[j]
    A = T[j, s]
    if augment and value == "augmented":
        B = 2.0 * T[j + 1, t]
    else:  # vv = b: E[G^j b P_t] (G = a without the constant coordinate: E[a^(j+1) P_t])
        B = np.array([_times_projection(T[jj, :top + 2], d)[t] for jj in j]) if augment else T[j + 1, t]
    return float(np.sum(e * A * B))


def target_complexity(family: str, p: int, d: int, N: int = 1, *, model: str = "rfa",
                      **conv) -> float:
    """Squared RKHS norm B of the unit-variance pure-degree Gegenbauer target of ``family``
    (keys, query, pair, bilin) under the infinite-width kernel of ``model``:

    * ``"rfa"`` (zero mean): ``B(f*) = |F|_k^2`` of the pairwise function (N-free, notes random_features §3.2);
      ``inf`` when the eigenvalue vanishes by structure (the target is outside the class);
    * ``"rfmlp"``: ``|f*|^2`` of ``f* = (1/N) sum_i F`` under the flattened-input ReLU kernel
      (``1/(N nu)`` for keys/pair/bilin; ``1/nu`` for the query-only target).

    Both kernels are invariant under separate rotations of the query and of the keys (RFA) or
    under joint rotations of the flattened input (RFMLP), so bilin (x0^T S x, S orthogonal) has
    the complexity of pair.

    Examples
    --------
    The degree-1 pair target under linear attention: ``B = 1/mu_{1,1} = 2 d^2``
    (:func:`rfa_eigenvalue`); a degree-2 query target is outside that class:

    >>> round(target_complexity("pair", 1, 4, activation="identity"), 9)
    32.0
    >>> target_complexity("query", 2, 4, activation="identity")
    inf
    """
    s, t = bidegree(family, p)
    if model == "rfa":
        mu = rfa_eigenvalue(s, t, d, **conv)
        return math.inf if mu == 0.0 else 1.0 / mu
    if model == "rfmlp":
        nu = mlp_harmonic_eigenvalue(s, t, d, N, augment=conv.get("augment", True))
        return 1.0 / (nu if family == "query" else N * nu)
    raise ValueError(f"model must be 'rfa' or 'rfmlp', got {model!r}")


QUADRATURE_FLOOR = 1e-8  # below this x k(1, 1) the quadrature's absolute error (~1e-17) is no longer negligible


def rfa_eigenvalue(s: int, t: int, d: int, **conv) -> float:
    """mu_{s,t} of the zero-mean pairwise kernel, accurate at every size: exactly 0 where it
    vanishes by structure (:func:`rfa_eigenvalue_vanishes`), the Gauss-Jacobi quadrature of
    :func:`rfa_harmonic_eigenvalue` where it is above ``QUADRATURE_FLOOR`` x k(1, 1), the positive
    series of :func:`rfa_harmonic_eigenvalue_series` below (whose truncation error is negligible
    for d >= 4 and ~1e-9 k(1, 1) at d = 2).

    Examples
    --------
    Linear attention with the constant coordinate has ``k(a, b) = (1 + a)(1 + b)^2 / 4``, so
    ``mu_{1,1} = E[(1 + a) a] E[(1 + b)^2 b] / 4 = (1/d)(2/d)/4 = 1/(2 d^2)``:

    >>> round(rfa_eigenvalue(1, 1, 4, activation="identity"), 12)
    0.03125
    >>> rfa_eigenvalue(2, 1, 4, activation="identity")  # degree <= 1 in the query
    0.0
    """
    if rfa_eigenvalue_vanishes(s, t, d, **conv):
        return 0.0
    c = _zero_mean_conv(conv)
    mu = rfa_harmonic_eigenvalue(s, t, d, **c)
    c.pop("nodes", None)
    if mu > QUADRATURE_FLOOR * abs(float(rfa_pair_kernel_ab(1.0, 1.0, **c))):
        return float(mu)
    return rfa_harmonic_eigenvalue_series(s, t, d, **c)


def feature_radius_sq(N: int, d: int, *, key_norm="mean", nodes: int = 160, **conv) -> float:
    """R^2 = E_X K(X, X) for zero-mean RFA on the unit sphere: the mean squared feature norm of
    one head, the only place where N and d enter the excess-risk bound.

    Examples
    --------
    One key: the diagonal ``k(1, 1) = 1``. Linear attention, mean over N keys:
    ``2/N + (1 - 1/N) (1 + 1/d)/2``:

    >>> round(feature_radius_sq(1, 4), 12)
    1.0
    >>> round(feature_radius_sq(8, 4, activation="identity"), 12)
    0.796875
    """
    _check("key_norm", key_norm, KEY_NORMS)
    diag = float(rfa_pair_kernel_ab(1.0, 1.0, **conv))
    tb, wb = sphere_projection_rule(d, nodes)
    off = float(wb @ rfa_pair_kernel_ab(1.0, tb, **conv))
    if key_norm == "mean":
        return diag / N + (1.0 - 1.0 / N) * off
    return N * diag + N * (N - 1) * off


def excess_risk_bound(n, M, B, *, N: int = 1, d: int = 8, delta: float | None = None,
                      radius_sq: float | None = None, **conv):
    """Shape of the excess-risk bound (notes random_features §4.2, constants and log factors set to one)::

        sqrt(B R^2 / n) + sqrt(B R^2 / M)  [+ sqrt(log(1/delta) / n)]

    broadcasting over n, M and B; ``R^2 = feature_radius_sq(N, d)`` unless given.

    Examples
    --------
    >>> round(float(excess_risk_bound(100, 100, 1.0, radius_sq=1.0)), 12)
    0.2
    >>> round(float(excess_risk_bound(400, 1e12, 4.0, radius_sq=1.0)), 6)
    0.100002
    """
    n = np.asarray(n, float)
    M = np.asarray(M, float)
    B = np.asarray(B, float)
    R2 = feature_radius_sq(N, d, **conv) if radius_sq is None else float(radius_sq)
    out = np.sqrt(B * R2 / n) + np.sqrt(B * R2 / M)
    if delta is not None:
        out = out + np.sqrt(np.log(1.0 / delta) / n)
    return out


# --------------------------------------------------------------------------- ridge regression on M heads

def rfa_kernel_spectrum(d: int, N: int, *, key_norm: str = "mean", max_degree: int = 24, **conv):
    """Eigenvalues of the infinite-head kernel K on the full input (x0, X) (notes random_features §4.4), as groups
    ``(eigenvalue, multiplicity, (s, t))`` over the bidegrees s, t <= ``max_degree`` without the
    constant (0, 0) (the fits centre features and labels), and the mass ``tail`` of the rest of
    the spectrum (the trace R^2 minus the groups listed).

    K(X, X') = c_N^2 sum_{i,j} k((x0, x_i), (x0', x_j')): the symmetrised pairwise harmonics
    ``(1/N) sum_i Y_s(x0) Z_t(x_i)`` are its eigenfunctions with eigenvalue ``c mu_{s,t} / N`` for
    t >= 1 and ``c mu_{s,0}`` for t = 0 (query-only functions), ``c = 1`` for the mean over keys and
    ``N^2`` for the sum, multiplicity ``N_s(d) N_t(d)``; every other function (key-key terms,
    antisymmetric combinations of keys) is in its null space. Returns ``(lam, mult, bideg, tail)``."""
    _check("key_norm", key_norm, KEY_NORMS)
    c = 1.0 if key_norm == "mean" else float(N) ** 2
    lam, mult, bideg = [], [], []
    for s in range(max_degree + 1):
        for t in range(max_degree + 1):
            if s == 0 and t == 0:
                continue
            mu = rfa_eigenvalue(s, t, d, **conv)
            if mu == 0.0:
                continue
            lam.append(c * mu / N if t >= 1 else c * mu)
            mult.append(float(harmonic_dim(s, d)) * float(harmonic_dim(t, d)))
            bideg.append((s, t))
    lam, mult = np.array(lam), np.array(mult)
    c0 = {k: v for k, v in _zero_mean_conv(conv).items() if k != "nodes"}
    total = feature_radius_sq(N, d, key_norm=key_norm, **c0) - c * rfa_eigenvalue(0, 0, d, **conv)
    tail = max(total - float(np.sum(lam * mult)), 0.0)
    return lam, mult, bideg, tail


def _df(lam, mult, tail, k):
    """Degrees of freedom df1 = sum lam/(lam + k), df2 = sum (lam/(lam + k))^2 (the tail's
    eigenvalues are far below every k used: it adds tail/k to df1 and nothing to df2)."""
    r = lam[:, None] / (lam[:, None] + k[None, :])
    return (mult @ r) + tail / k, mult @ (r * r)


def random_feature_ridge_risk(lam, mult, tail, target, n, P, ridge):
    """Deterministic equivalent of the excess risk of ridge regression (penalty ``n ridge |v|^2``)
    on ``P`` random features whose kernel has the spectrum ``(lam, mult, tail)``, from ``n``
    noiseless samples of a target with ``target[g]`` of its variance on eigen-group g (notes random_features §4.4, derived there): with df1, df2 of :func:`_df`, ``k`` solves
    ``ridge = k (1 - df1(k)/P) (1 - df1(k)/n)``, and

        risk = sum_g target_g [k/(lam_g + k) - k lam_g (1 - df1/P) / ((1 - df2/P) (lam_g + k)^2)]
               / (1 - D2/n),     D2 = df1 - (1 - df1/P)(df1 - df2)/(1 - df2/P).

    ``P = inf`` is kernel ridge regression. Broadcasts over ``n``, ``P`` and ``ridge``."""
    from scipy import optimize

    lam, mult, target = (np.asarray(v, dtype=float) for v in (lam, mult, target))
    n, P, ridge = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (n, P, ridge)))
    out = np.empty(n.shape)
    rank = float(np.sum(mult)) if tail == 0.0 else math.inf
    for idx in np.ndindex(n.shape):
        nn, pp, rr = float(n[idx]), float(P[idx]), float(ridge[idx])
        cap = min(nn, pp)

        def excess(logk):
            k = np.array([math.exp(logk)])
            d1 = _df(lam, mult, tail, k)[0][0]
            return k[0] * (1 - d1 / pp) * (1 - d1 / nn) - rr

        hi = math.log(max(1.0, float(lam.max(initial=0.0))) * 1e6 + abs(rr) * 10 + 1.0)
        while _df(lam, mult, tail, np.array([math.exp(hi)]))[0][0] >= 0.5 * cap or excess(hi) <= 0:
            hi += 5.0  # far enough that df1 is well below min(n, P)
        if rank <= cap:  # finitely many directions, all resolvable: the ridgeless limit is k -> 0
            lo = math.log(1e-300)
        else:
            lo = optimize.brentq(lambda lk: _df(lam, mult, tail, np.array([math.exp(lk)]))[0][0] - cap,
                                 -700.0, hi)
        if rr <= 0.0:
            logk = lo
        else:
            logk = optimize.brentq(excess, lo, hi, xtol=1e-12)
        k = math.exp(logk)
        d1, d2 = (v[0] for v in _df(lam, mult, tail, np.array([k])))
        a = (1 - d1 / pp) / (1 - d2 / pp)
        D2 = d1 - a * (d1 - d2)
        EA = np.sum(target * (k / (lam + k) - a * k * lam / (lam + k) ** 2))
        out[idx] = max(float(EA), 0.0) / (1 - D2 / nn)
    return out


def rfa_ridge_risk(family: str, p: int, d: int, N: int, n, P, ridges, *, key_norm: str = "mean",
                   max_degree: int = 24, **conv) -> np.ndarray:
    """Predicted excess risk of zero-mean RFA fitted by ridge regression on ``P`` = M D_v random
    features from ``n`` noiseless samples, with the ridge chosen as well as the grid ``ridges``
    allows (the study picks it on validation), for the unit-variance Gegenbauer target of
    ``family`` (keys, query, pair, bilin; all its variance on one eigen-group): the minimum over
    ``ridges`` of :func:`random_feature_ridge_risk` with the kernel's exact spectrum
    (:func:`rfa_kernel_spectrum`). Shape: the broadcast of ``n`` and ``P``. Raises for a target
    outside the class (its risk is its variance) and for other families."""
    s, t = bidegree(family, p)
    lam, mult, bideg, tail = rfa_kernel_spectrum(d, N, key_norm=key_norm, max_degree=max(max_degree, s + 2, t + 2),
                                                 **conv)
    if (s, t) not in bideg:
        raise ValueError(f"{family}{p} is outside the class under these conventions (its eigenvalue vanishes)")
    target = np.zeros(lam.size)
    target[bideg.index((s, t))] = target_variance(family, p, N)
    n, P = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(P, dtype=float))
    r = np.asarray(ridges, dtype=float)
    risk = random_feature_ridge_risk(lam, mult, tail, target, n[..., None], P[..., None], r)
    return risk.min(axis=-1)


# --------------------------------------------------------------------------- complexity table

# notes random_features §4.3 [DERIVED]: n needed for relative error eps ~ d^a N^b / eps^2 for a per-key term of
# degree p. Entries: (a, b) as functions of p; None = not learnable (outside the function class);
# "?" = no prediction (the notes only say "worse than RFA").
COMPLEXITY_TABLE = {
    "keys": {"rfa": lambda p: (p, 0), "brfa": "?", "rfmlp": lambda p: (p, p)},
    "query": {"rfa": lambda p: (p, 0), "brfa": "?", "rfmlp": lambda p: (p, p)},
    "pair": {"rfa": lambda p: (2 * p, 0), "brfa": lambda p: (0, 0), "rfmlp": lambda p: (2 * p, 2 * p)},
    "bilin": {"rfa": lambda p: (2 * p, 0), "brfa": lambda p: (2 * p, 0), "rfmlp": lambda p: (2 * p, 2 * p)},
    "attn": {"rfa": lambda p: (2 * p + 1, 0), "brfa": lambda p: (1, 0), "rfmlp": lambda p: (2 * p + 1, 2 * p + 1)},
    "keykey": {"rfa": None, "brfa": None, "rfmlp": lambda p: (p, p)},
}


def is_learnable(family: str, model: str) -> bool:
    """Whether the target family lies in the model's infinite-width function class: attention
    sees (query, key) pairs only, so key-key interactions are out of reach (notes random_features §3.2)."""
    return COMPLEXITY_TABLE[family][model] is not None


def complexity_exponents(family: str, model: str, p: int):
    """(a, b) with n ~ d^a N^b / eps^2 (notes random_features §4.3); None if not learnable, "?" if unknown."""
    entry = COMPLEXITY_TABLE[family][model]
    if entry is None or entry == "?":
        return entry
    return entry(p)


def predicted_sample_complexity(family: str, model: str, p: int, d: int, N: int,
                                eps: float = 0.1, constant: float = 1.0) -> float:
    """constant * d^a N^b / eps^2 (inf when not learnable); raises when the table has no entry.

    Examples
    --------
    A degree-1 pair target (``d^2`` for RFA, ``d^2 N^2`` for the RFMLP) at eps = 0.1:

    >>> round(predicted_sample_complexity("pair", "rfa", 1, d=10, N=5), 6)
    10000.0
    >>> round(predicted_sample_complexity("pair", "rfmlp", 1, d=10, N=5), 6)
    250000.0
    >>> predicted_sample_complexity("keykey", "rfa", 1, d=10, N=5)
    inf
    """
    e = complexity_exponents(family, model, p)
    if e is None:
        return math.inf
    if e == "?":
        raise ValueError(f"no sample-complexity prediction for {family} targets with {model}")
    a, b = e
    return constant * float(d) ** a * float(N) ** b / eps**2


# --------------------------------------------------------------------------- predictions for a run

def target_variance(family: str, p: int, N: int) -> float | None:
    """Var f* of a Gegenbauer target (notes random_features §7.1 menu): the mean over N keys of uncorrelated
    unit-variance terms has variance 1/N (keys, pair, bilin with p >= 1); query-only and the
    key-key control are unit-variance. None where there is no closed form (attn)."""
    if family in ("keys", "pair", "bilin"):
        return 1.0 / N
    if family in ("query", "keykey"):
        return 1.0
    return None


def mlp_feature_radius_sq() -> float:
    """R^2 = E K(z, z) of the RFMLP with unit-variance pre-activations: kappa1(1) = 1/2."""
    return float(kappa1(1.0))


def bound_complexity(family: str, p: int, d: int, N: int, *, model: str = "rfa", **conv) -> float:
    """``B(f*) R^2``, the scale of the excess-risk bound (notes random_features §4.2: ``n, M >~ B R^2 / eps^2``) for
    the Gegenbauer target of ``family``: ``f* = (1/N) sum_i F``, F unit-variance. RFA: ``|F|_k^2``
    times ``feature_radius_sq(N, d)`` (mean over keys); RFMLP: its ``|f*|^2`` times 1/2. The product does
    not depend on ``w_var`` or on the key normalisation (both rescale B and R^2 inversely);
    ``inf`` outside the class."""
    B = target_complexity(family, p, d, N, model=model, **conv)
    if not math.isfinite(B):
        return math.inf
    if model == "rfmlp":
        return B * mlp_feature_radius_sq()
    return B * feature_radius_sq(N, d, key_norm="mean", **_zero_mean_conv(conv))


def sample_complexity_ratio(family: str, p: int, d: int, N: int, **conv) -> float:
    """Predicted sample-complexity ratio RFMLP / RFA for the same target: by the bound, each
    model needs n ~ B R^2 / eps^2 samples to reach excess risk eps, so the RFMLP needs
    ``B_mlp R_mlp^2 / (B_rfa R_rfa^2)`` times as many (notes random_features §4.3: ~ N^deg); inf outside RFA's class."""
    return bound_complexity(family, p, d, N, model="rfmlp", **conv) / bound_complexity(
        family, p, d, N, model="rfa", **conv)


def in_attention_class(family: str, p: int, d: int, **conv) -> bool | None:
    """Whether a target lies in the zero-mean attention layer's function class (notes random_features §3.2):
    never the key-key control (a layer with query-key scores sees (query, key) pairs only);
    Gegenbauer keys/query/pair/bilin targets iff their bidegree eigenvalue does not vanish
    (:func:`rfa_eigenvalue_vanishes`); the attention-like target for ReLU with the constant
    coordinate (notes random_features §4.3); None where the theory does not say (softmax, attn otherwise)."""
    if family == "keykey":
        return False
    if conv.get("activation", "relu") not in ACTIVATIONS:
        return None
    if family in _BIDEGREE:
        s, t = bidegree(family, p)
        return not rfa_eigenvalue_vanishes(s, t, d, **conv)
    if family == "attn" and conv.get("activation", "relu") == "relu" and conv.get("augment", True):
        return True
    return None


def outside_class_exactly(family: str, p: int, d: int, **conv) -> bool:
    """True when every zero-mean attention feature is orthogonal (in L2 of the input law) to
    the target, so that any fit has relative error >= 1: the key-key control (each feature is a
    mean of pairwise functions, and ``E[f* | x0, x_i] = 0``), and Gegenbauer targets whose
    eigenvalue vanishes by structure (``mu = E_W |projection of phi_W|^2 = 0`` forces every
    projection to vanish). Needs ``poly="gegenbauer"`` for the polynomial families."""
    if family == "keykey":
        return True
    if family in _BIDEGREE and conv.get("activation", "relu") in ACTIVATIONS:
        s, t = bidegree(family, p)
        return rfa_eigenvalue_vanishes(s, t, d, **conv)
    return False


def N_exponent(family: str, model: str, p: int) -> float | None:
    """Exponent e of the relative error at fixed n as a function of N, err ~ N^e, read from
    the complexity table (n ~ d^a N^b / eps^2 gives eps ~ N^(b/2)); None where the table has
    no entry or the target is not learnable."""
    e = complexity_exponents(family, model, p)
    if e is None or e == "?":
        return None
    return e[1] / 2.0


_BIAS = {
    "pair": ("lowers", "notes random_features §3.4/§4.3: a mean mu <x0, x_i> in the score synthesises any profile of <x0, x_i> "
                       "at a d-free cost (d^{2p} -> O_p(1))"),
    "attn": ("lowers", "notes random_features §3.4/§4.3: the profile relu(u_i) is synthesised at a d-free cost, leaving the "
                       "linear value factor (d^{2p+1} -> d)"),
    "keys": ("raises", "notes random_features §3.4: the mean concentrates the features on the <x0, x_i> direction, which a "
                       "keys-only target does not depend on"),
    "query": ("raises", "notes random_features §3.4: the mean concentrates the features on the <x0, x_i> direction, which a "
                        "query-only target does not depend on"),
}


def bias_effect(family: str) -> tuple[str | None, str]:
    """(effect, source) of a non-zero-mean query-key matrix (BRFA, r ~ 1) on a target family's
    risk: "lowers", "raises" or None (no prediction: bilin, whose form is not aligned with the
    mean unless W-bar ~ S, and the key-key control, outside both classes)."""
    if family in _BIAS:
        return _BIAS[family]
    return None, "notes random_features §4.3 gives no direction for this family (bilin: ~ RFA unless W-bar ~ S; keykey: not learnable)"


def bias_theory_covers(*, activation: str = "relu", augment: bool = True, mean_shape: str = "diag",
                       value: str = "augmented") -> tuple[bool, str]:
    """Whether the bias argument of notes random_features §3.4 applies to these conventions, and why not: it
    needs ReLU scores, the constant coordinate (the bias entry G_{d+1,d+1} and the value
    e_{d+1} synthesise the profile), a mean W-bar = diag(I_d, 0) (I_{d+1} also shifts every
    score by mu) and values on [x; 1]."""
    if activation != "relu":
        return False, f"the bias argument (notes random_features §3.4) is for ReLU scores, not {activation}"
    if not augment:
        return False, "the bias argument (notes random_features §3.4) uses the constant coordinate; this run has none"
    if mean_shape != "diag":
        return False, "the bias argument (notes random_features §3.4) is for W-bar = diag(I_d, 0); I_{d+1} also shifts every score"
    if value != "augmented":
        return False, "the bias argument (notes random_features §3.4) uses the value's constant coordinate; values act on x here"
    return True, ""


def bound_loglog_slope(n, M, *, over: str = "n") -> np.ndarray:
    """Least-squares log-log slope of the bound's shape n^-1/2 + M^-1/2 (B and R^2 cancel)
    over the ``n`` grid at each M (``over="n"``: shape (len(M),)) or over the ``M`` grid at
    each n (``over="M"``: shape (len(n),)).

    Examples
    --------
    With M far above n the bound is ``~ n^-1/2`` over n:

    >>> [round(float(s), 3) for s in bound_loglog_slope([1e2, 1e4], [1e12])]
    [-0.5]
    """
    n = np.atleast_1d(np.asarray(n, float))
    M = np.atleast_1d(np.asarray(M, float))
    shape = np.log(n[:, None] ** -0.5 + M[None, :] ** -0.5)
    if over == "n":
        x = np.log(n)
        y = shape
    elif over == "M":
        x = np.log(M)
        y = shape.T
    else:
        raise ValueError("over must be 'n' or 'M'")
    if x.size < 2:
        raise ValueError("a slope needs at least 2 grid points")
    xc = x - x.mean()
    return (xc @ (y - y.mean(axis=0))) / (xc @ xc)
