"""Result 2 (moments of the transformed distribution): the horizon H, the rate curves
beta(H), and the exact output moments used as references.

* Gaussian tokens (spec §3.1): nu = N(V (I + Sigma A) m, V Sigma A Sigma A^T Sigma V^T).
* Output law of a sphere (spec §3.2, [C] formula, [D] reduction). mu = uniform on S^{d-1}(rho),
  A = U diag(sigma) W^T (SVD), zeta = W^T z uniform on S^{d-1}. Then
  Gamma_mu(rho z) = rho A_d(kappa) U (sigma * zeta) / sqrt(s), s = sum_k sigma_k^2 zeta_k^2,
  kappa = rho^2 sqrt(s), and nu = (Gamma_mu)_# mu has mean 0 and covariance U diag(lambda) U^T
  with lambda_i = rho^6 sigma_i^2 E[(A_d(kappa)/kappa)^2 zeta_i^2] (off-diagonal terms vanish
  by the sign symmetry of zeta). The value side is V(.)V^T.
* Box-truncated Gaussians: exact output moments by 1-D quadrature.
* Finer beta heuristic (spec §2.2, [D]): 1/2 for H <= 1, 1/(1 + H^2) for H > 1.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import special, stats
from .laws import TruncatedGaussianLaw, _ratio_over_x, bessel_ratio

__all__ = [
    "horizon",
    "beta_of_horizon",
    "beta_fine_of_horizon",
    "gaussian_output_moments",
    "sphere_output_variances",
    "sphere_output_covariance",
    "truncated_output_moments",
]

# ------------------------------------------------------------------------------- horizon
def _sqrtm_psd(S):
    w, U = np.linalg.eigh(np.asarray(S, dtype=float))
    return (U * np.sqrt(np.clip(w, 0, None))) @ U.T


def horizon(Sigma, A, two_sided: bool = True) -> float:
    """H = ||Sigma^{1/2} A Sigma^{1/2}||_2 (two-sided) or ||Sigma^{1/2} A||_2 (one-sided).

    ``A`` is whatever score matrix the caller means: the exact exponent matrix gives H_eff,
    ``W_k^T W_q`` without the softmax scale gives the authors' H_code (spec §1.3).
    """
    S = _sqrtm_psd(Sigma)
    M = S @ np.asarray(A, dtype=float)
    if two_sided:
        M = M @ S
    return float(np.linalg.norm(M, 2))


def beta_of_horizon(H):
    """The authors' theory curve for the moment-rate exponent: 1/(2(1+H^2))."""
    H = np.asarray(H, dtype=float)
    return 1.0 / (2.0 * (1.0 + H**2))

def beta_fine_of_horizon(H):
    """The finer moment-rate heuristic (spec §2.2 [D]): 1/2 for H <= 1 (the leading
    fluctuation has finite variance), 1/(1 + H^2) for H > 1 (heavy-tailed averaging)."""
    H = np.asarray(H, dtype=float)
    return np.where(H <= 1.0, 0.5, 1.0 / (1.0 + H**2))

def gaussian_output_moments(m, Sigma, A, V=None):
    """Mean and covariance of the output law nu = (Gamma_mu)_# mu for mu = N(m, Sigma):
    nu = N(V (I + Sigma A) m, V Sigma A Sigma A^T Sigma V^T) (spec §3.1)."""
    m, Sigma, A = (np.asarray(t, dtype=float) for t in (m, Sigma, A))
    Vm = np.eye(len(m)) if V is None else np.asarray(V, dtype=float)
    SA = Sigma @ A
    return Vm @ (m + SA @ m), Vm @ SA @ Sigma @ SA.T @ Vm.T

def _sphere_zeta_rule(d: int, n_quad: int):
    """Quadrature nodes/weights for the uniform law on S^{d-1}, d <= 3 (exact for smooth
    integrands to spectral accuracy): d = 1: +-1; d = 2: trapezoid in the angle; d = 3:
    Gauss-Legendre in the height times trapezoid in the azimuth."""
    if d == 1:
        return np.array([[1.0], [-1.0]]), np.array([0.5, 0.5])
    if d == 2:
        t = 2 * np.pi * (np.arange(4 * n_quad) + 0.5) / (4 * n_quad)
        return np.stack([np.cos(t), np.sin(t)], axis=1), np.full(t.size, 1.0 / t.size)
    if d == 3:
        h, wh = np.polynomial.legendre.leggauss(n_quad)
        phi = 2 * np.pi * (np.arange(2 * n_quad) + 0.5) / (2 * n_quad)
        r = np.sqrt(1 - h**2)
        pts = np.stack([np.outer(r, np.cos(phi)).ravel(), np.outer(r, np.sin(phi)).ravel(),
                        np.repeat(h, phi.size)], axis=1)
        w = np.repeat(wh / 2.0, phi.size) / phi.size
        return pts, w
    raise ValueError("tensor quadrature is provided for d <= 3 only")


def _sobol_sphere_points(d: int, m: int):
    """2^m deterministic quasi-uniform points of S^{d-1}: an unscrambled Sobol net moved by a
    fixed Cranley-Patterson shift (fractional parts of sqrt of the first d primes, so no
    point sits on the grid 0 / 1/2 that the Gaussian quantile maps to the origin), Gaussian
    quantiles, normalised."""
    primes = [p for p in range(2, 20 * d + 20) if all(p % q for q in range(2, int(p**0.5) + 1))][:d]
    shift = np.sqrt(np.asarray(primes, dtype=float)) % 1.0
    pts = (stats.qmc.Sobol(d, scramble=False).random_base2(m) + shift) % 1.0
    g = special.ndtri(np.clip(pts, 1e-15, 1 - 1e-15))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def sphere_output_variances(sigma, radius: float = 1.0, *, points=None, weights=None):
    """lambda_i = rho^6 sigma_i^2 E[(A_d(kappa)/kappa)^2 zeta_i^2], kappa = rho^2 |sigma * zeta|,
    for the singular values ``sigma`` (length d) of A: the eigenvalues of the output covariance
    of the uniform sphere (module section above), in the left singular basis of A.

    ``points`` (N, d) unit vectors with optional ``weights`` (default uniform) is the rule for
    zeta. With equal weights a control variate is used: g = (A_d/kappa)^2 is regressed on
    s = |sigma * zeta|^2, and the exactly known E[zeta_i^2] = 1/d and
    E[zeta_i^2 s] = (sum sigma^2 + 2 sigma_i^2)/(d (d+2)) absorb the fitted part, so only the
    (second-order) residual is averaged."""
    sigma = np.asarray(sigma, dtype=float)
    d = sigma.size
    rho = float(radius)
    nu = d / 2 - 1
    Z = np.asarray(points, dtype=float)
    if Z.ndim != 2 or Z.shape[1] != d:
        raise ValueError(f"points must have shape (N, {d})")
    z2 = Z**2
    s = z2 @ sigma**2
    kappa = rho**2 * np.sqrt(s)
    g = _ratio_over_x(nu, kappa, bessel_ratio(nu, kappa)) ** 2
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        e = (w * g) @ z2
    else:
        X = np.stack([np.ones_like(s), s - s.mean()], axis=1)
        coef, *_ = np.linalg.lstsq(X, g, rcond=None)
        b0 = coef[0] - coef[1] * s.mean()
        b1 = coef[1]
        resid = g - b0 - b1 * s
        e = resid @ z2 / s.size + b0 / d + b1 * (np.sum(sigma**2) + 2 * sigma**2) / (d * (d + 2))
    return rho**6 * sigma**2 * e


def sphere_output_covariance(A, V=None, radius: float = 1.0, *, points=None, n_quad: int = 96,
                             sobol_log2: int = 16):
    """Covariance of the output law nu = (Gamma_mu)_# mu for mu uniform on S^{d-1}(radius)
    (its mean is 0), shape (d_v, d_v): V U diag(lambda) U^T V^T (module section above).

    Rule for zeta: d <= 3 tensor quadrature with ``n_quad`` nodes (machine precision for any
    A); otherwise ``points`` (unit vectors, e.g. randomised QMC from
    :func:`sim.token_moments.sphere_output_covariance_rqmc`) or, by default, 2^sobol_log2
    deterministic Sobol points with the control variate of :func:`sphere_output_variances`
    (relative accuracy ~1e-5 for d = 50; the sim layer's RQMC gives error bars)."""
    A = np.asarray(A, dtype=float)
    d = A.shape[0]
    U, sigma, _ = np.linalg.svd(A)
    if points is not None:
        lam = sphere_output_variances(sigma, radius, points=points)
    elif d <= 3:
        pts, w = _sphere_zeta_rule(d, n_quad)
        lam = sphere_output_variances(sigma, radius, points=pts, weights=w)
    else:
        lam = sphere_output_variances(sigma, radius, points=_sobol_sphere_points(d, sobol_log2))
    C = (U * lam) @ U.T
    if V is None:
        return C
    V = np.asarray(V, dtype=float)
    return V @ C @ V.T


@functools.lru_cache(maxsize=16)

def _leggauss(n: int):
    t, w = np.polynomial.legendre.leggauss(n)
    t.flags.writeable = False
    w.flags.writeable = False
    return t, w


def truncated_output_moments(law, a: float, V=None, n_quad: int = 256):
    """Mean and covariance of the output law for box-truncated Gaussian tokens
    (:class:`TruncatedGaussianLaw`) and A = a I: coordinate i of Gamma_mu(x) is the tilted
    mean m_1(a x_i) of one truncated coordinate, so nu has mean 0 (m_1 is odd) and covariance
    v I with v = E[m_1(a X_1)^2], a one-dimensional Gauss-Legendre integral over the
    truncated normal density (then V(.)V^T)."""
    if not isinstance(law, TruncatedGaussianLaw):
        raise TypeError("truncated_output_moments needs a TruncatedGaussianLaw")
    one = TruncatedGaussianLaw(1, law.sigma, law.c)
    h = law.c * law.sigma
    t, w = _leggauss(int(n_quad))
    x = h * t
    dens = np.exp(-0.5 * (x / law.sigma) ** 2)
    dens = dens / np.sum(w * dens)  # normalised on [-h, h] by the same rule
    m1 = one.tilted_mean(float(a) * x[:, None])[:, 0]
    v = float(np.sum(w * dens * m1**2))
    d = law.dim
    mean = np.zeros(d)
    cov = v * np.eye(d)
    if V is None:
        return mean, cov
    V = np.asarray(V, dtype=float)
    return V @ mean, V @ cov @ V.T
