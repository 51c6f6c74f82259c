"""Result 2 (moments of the transformed distribution): the horizon H, the rate curves
beta(H), and the exact output moments used as references.

* Gaussian tokens (notes token_sample §3.1): nu = N(V (I + Sigma A) m, V Sigma A Sigma A^T Sigma V^T).
* Output law of a sphere (notes token_sample §3.2, [C] formula, [D] reduction). mu = uniform on S^{d-1}(rho),
  A = U diag(sigma) W^T (SVD), zeta = W^T z uniform on S^{d-1}. Then
  Gamma_mu(rho z) = rho A_d(kappa) U (sigma * zeta) / sqrt(s), s = sum_k sigma_k^2 zeta_k^2,
  kappa = rho^2 sqrt(s), and nu = (Gamma_mu)_# mu has mean 0 and covariance U diag(lambda) U^T
  with lambda_i = rho^6 sigma_i^2 E[(A_d(kappa)/kappa)^2 zeta_i^2] (off-diagonal terms vanish
  by the sign symmetry of zeta). The value side is V(.)V^T.
* Box-truncated Gaussians: exact output moments by 1-D quadrature.
* Finer beta heuristic (notes token_sample §2.2, [D]): 1/2 for H <= 1, 1/(1 + H^2) for H > 1, for laws with
  Gaussian tails; a bounded law has a bounded influence function, so its asymptotic rate is the
  CLT's 1/2 at every H (:func:`predicted_moment_rate`).
* Moment prefactors of box-truncated Gaussians (:func:`truncated_moment_prefactors`, [D]): the
  n -> infinity limits C'_mean = lim sqrt(n) E|mean(o) - mean(nu)| and C'_cov = lim sqrt(n)
  E|cov(o) - cov(nu)|_F of the self-attention outputs o_i = Gamma_{mu_n}(X_i), from the influence
  function of the two moments (delta method), reduced to 1-D quadratures by the box law's
  coordinate factorisation.
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
    "predicted_moment_rate",
    "truncated_moment_prefactors",
]

# ------------------------------------------------------------------------------- horizon
def _sqrtm_psd(S):
    w, U = np.linalg.eigh(np.asarray(S, dtype=float))
    return (U * np.sqrt(np.clip(w, 0, None))) @ U.T


def horizon(Sigma, A, two_sided: bool = True) -> float:
    """H = ||Sigma^{1/2} A Sigma^{1/2}||_2 (two-sided) or ||Sigma^{1/2} A||_2 (one-sided).

    ``A`` is whatever score matrix the caller means: the exact exponent matrix gives H_eff,
    ``W_k^T W_q`` without the softmax scale gives the authors' H_code (notes token_sample §1.3).
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
    """The finer moment-rate heuristic (notes token_sample §2.2 [D]): 1/2 for H <= 1 (the leading
    fluctuation has finite variance), 1/(1 + H^2) for H > 1 (heavy-tailed averaging)."""
    H = np.asarray(H, dtype=float)
    return np.where(H <= 1.0, 0.5, 1.0 / (1.0 + H**2))

def gaussian_output_moments(m, Sigma, A, V=None):
    """Mean and covariance of the output law nu = (Gamma_mu)_# mu for mu = N(m, Sigma):
    nu = N(V (I + Sigma A) m, V Sigma A Sigma A^T Sigma V^T) (notes token_sample §3.1)."""
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
    """lambda_i = rho^6 sigma_i^2 E[(A_d(kappa)/kappa)^2 zeta_i^2], ``kappa = rho^2 |sigma * zeta|``,
    for the singular values ``sigma`` (length d) of A: the eigenvalues of the output covariance
    of the uniform sphere (module section above), in the left singular basis of A.

    ``points`` (N, d) unit vectors with optional ``weights`` (default uniform) is the rule for
    zeta. With equal weights a control variate is used: g = (A_d/kappa)^2 is regressed on
    ``s = |sigma * zeta|^2``, and the exactly known E[zeta_i^2] = 1/d and
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


def predicted_moment_rate(law, H):
    """The asymptotic moment-rate exponent beta the finer heuristic predicts for ``law`` at
    horizon(s) ``H`` (notes token_sample §2.2 [D]): the leading fluctuation of an output moment is an average
    of an influence function g(X_j); for laws with Gaussian tails ``|g|`` grows like
    ``exp(kappa |z|^2 / 2)``, kappa = H^2/(1+H^2), so Var g < inf iff H < 1 and beta = 1/2 for
    H <= 1, 1/(1+H^2) above (heavy-tailed averaging; the same growth holds for the covariance,
    whose influence function differs by a factor polynomial in the query). A law of bounded
    support (finite ``support_radius``) has bounded g: beta = 1/2 at every H, reached once n
    exceeds the effective sample size of the softmax weights. The authors' curve
    :func:`beta_of_horizon` is a lower bound of both."""
    H = np.asarray(H, dtype=float)
    if np.isfinite(getattr(law, "support_radius", np.inf)):
        return np.full(H.shape, 0.5) if H.ndim else 0.5
    out = beta_fine_of_horizon(H)
    return out if H.ndim else float(out)


def truncated_moment_prefactors(law, a: float, n_quad: int = 160):
    """``(C'_mean, C'_cov)``: the n -> infinity limits of sqrt(n) E|mean(o) - m_nu|_2 and
    sqrt(n) E|cov(o) - C_nu|_F for the self-attention outputs o_i = Gamma_{mu_n}(X_i) of n tokens
    from a box-truncated Gaussian law (:class:`TruncatedGaussianLaw`), A = a I, V = I.

    Derivation [D] (delta method, module docstring). With Gamma_{mu_n}(x) = Gamma(x) +
    (1/n) sum_j phi_x(X_j) + o(1/sqrt(n)), phi_x(y) = w_x(y)(y - gamma(x))/Z(x), the output mean
    and covariance have influence functions IF_m(y) = Gamma(y) + int phi_x(y) dmu(x) and
    IF_C(y) = Gamma(y)Gamma(y)^T - C_nu + int [phi_x(y) Gamma(x)^T + Gamma(x) phi_x(y)^T] dmu(x)
    (the mean of nu is 0, so the mean-correction term is of order 1/n). The box law factorises:
    w_x(y)/Z(x) = prod_j r(x_j, y_j), r(x, y) = e^{a x y}/Z_1(a x), Gamma(x)_k = m(x_k) with
    m = the 1-D tilted mean. With the 1-D functions p(y) = E r(X, y), Q(y) = E r(X, y)(y - m(X)),
    S(y) = E r(X, y) m(X), T(y) = E r(X, y)(y - m(X)) m(X) (E p = 1, E Q = E S = E T = 0) and
    v = E m^2 (the output variance):

    * IF_m(y)_k = m(y_k) + P_{-k} Q(y_k), P_{-k} = prod_{j != k} p(y_j): isotropic, variance
      s_m^2 = v + 2 E[mQ] + (E p^2)^{d-1} E Q^2;
    * IF_C(y)_kl = m_k m_l + P_{-kl}(Q_k S_l + S_k Q_l) (k != l), variance
      s_o^2 = v^2 + 4 E[mQ] E[mS] + 2 (E p^2)^{d-2} (E Q^2 E S^2 + (E QS)^2), uncorrelated
      with every other entry (sign symmetry);
    * IF_C(y)_kk = m_k^2 - v + 2 P_{-k} T_k: variance s_D^2 = E(m^2-v)^2 + 4 E[(m^2-v)T] +
      4 (E p^2)^{d-1} E T^2, covariance 4 (E pT)^2 (E p^2)^{d-2} between two diagonal entries.

    The limits are E|G| of the Gaussian vectors with these covariances (the off-diagonal
    entries counted twice in ``|.|_F``), by :func:`theory.token_sample.gaussian_norm_mean`. The
    1-D expectations are Gauss-Legendre quadratures (``n_quad`` nodes) over the truncated
    normal density. The self token and the ratio-estimator bias are of order 1/n and do not
    enter the limit."""
    from .uniform import gaussian_norm_mean

    if not isinstance(law, TruncatedGaussianLaw):
        raise TypeError("truncated_moment_prefactors needs a TruncatedGaussianLaw")
    a = float(a)
    d = law.dim
    one = TruncatedGaussianLaw(1, law.sigma, law.c)
    h = law.c * law.sigma
    t, w = _leggauss(int(n_quad))
    x = h * t
    dens = np.exp(-0.5 * (x / law.sigma) ** 2)
    W = w * dens / np.sum(w * dens)  # quadrature weights of the truncated normal
    m = one.tilted_mean(a * x[:, None])[:, 0]
    logZ = one.log_partition(a * x[:, None])
    with np.errstate(over="raise"):
        r = np.exp(a * np.outer(y := x, x) - logZ[None, :])  # r[i, j] = r(x_j, y_i)
    p = r @ W
    Q = (r * (y[:, None] - m[None, :])) @ W
    S = (r * m[None, :]) @ W
    T = (r * ((y[:, None] - m[None, :]) * m[None, :])) @ W
    E = lambda f: float(np.sum(W * f))  # noqa: E731
    v = E(m**2)
    Ep2 = E(p**2)
    s_m2 = v + 2 * E(m * Q) + Ep2 ** (d - 1) * E(Q**2)
    dev = m**2 - v
    s_D2 = E(dev**2) + 4 * E(dev * T) + 4 * Ep2 ** (d - 1) * E(T**2)
    rho_D = 4 * E(p * T) ** 2 * Ep2 ** (d - 2) if d >= 2 else 0.0
    s_o2 = v**2 + 4 * E(m * Q) * E(m * S) + 2 * Ep2 ** (d - 2) * (E(Q**2) * E(S**2) + E(Q * S) ** 2) if d >= 2 else 0.0
    c_mean = float(gaussian_norm_mean(s_m2 * np.eye(d)))
    eig = [s_D2 + (d - 1) * rho_D] + [s_D2 - rho_D] * (d - 1) + [2 * s_o2] * (d * (d - 1) // 2)
    c_cov = float(gaussian_norm_mean(np.diag(np.clip(eig, 0.0, None))))
    return c_mean, c_cov
