r"""The saturated regime of Result 1: the pre-asymptotic error curve of Gaussian tokens (notes §2.6).

Contract
--------
Tokens N(m, Sigma) in R^d, score matrix ``A`` (times ``lam``), values ``V`` (d_v x d). Below
the effective-sample threshold ``n*(x) = e^{|Sigma^{1/2} a|^2}`` the softmax average is carried by
a few extreme tokens and the error decays much more slowly than n^{-1/2}. At a query x with
score a = lam A x, write ``sigma = |Sigma^{1/2} a|``, e = Sigma^{1/2} a / sigma and whiten the
tokens, y = m + Sigma^{1/2} xi. Then <a, y> = <a, m> + sigma z with z = <e, xi> ~ N(0, 1), the
weights are w_j = e^{sigma z_j} and, exactly, ::

    Gamma_{mu_n}(x) - Gamma_mu(x) = V Sigma^{1/2} [ (zbar_w - sigma) e + xibar_perp ],
    zbar_w = sum_j w_j z_j / sum_j w_j,

where, given the z's, the component orthogonal to e is a weighted average of independent
standard normals: xibar_perp ~ N(0, q P_perp) with q = sum w_j^2 / (sum w_j)^2. So the error at
one query is a functional of n standard normals and one Gaussian vector: a one-dimensional
theory object, sampled here by Monte Carlo with an explicit seed:

* the n scores enter only through their order statistics. The top ``top`` of them are drawn
  exactly (Renyi: the k-th largest of n uniforms is 1 - Gamma_k / Gamma_{n+1}, Gamma_k a sum of
  k standard exponentials; z_(k) = -Phi^{-1}(Gamma_k / Gamma_{n+1})), the same exponentials
  for every n of the grid (common random numbers: the curve is smooth in n, so its local slope
  has a small standard error); for n <= ``top`` this is all n scores, exactly;
* for n > ``top`` the n - top scores below z_(top) enter through their conditional
  expectations (E[e^{s z} | z < t] = e^{s^2/2} Phi(t - s) / Phi(t) and the like): they are many
  and their weights are spread over many of them, so their sums follow the law of large
  numbers (checked against exact sampling in the tests).

:func:`gaussian_saturated_error` evaluates E|Gamma_{mu_n}(x) - Gamma_mu(x)| on a grid of n at
the worst query of the ball ``|x| <= R`` (``|x| = R`` along the top right-singular vector of
Sigma^{1/2} A, where sigma and n* are largest) and returns the mean curve with the covariance
of its points (replicates shared across n), so :func:`curve_loglog_slope` can give the local
log-log slope of the curve over a window with its standard error.

The asymptotics of the hint it refines: while n << n*, zbar_w ~ M_n (about the expected
maximum of n standard normals, ~ sqrt(2 log n)), so the error ~ sigma - M_n and the local slope
~ -(dM_n / d log n) / (sigma - M_n).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from .laws import GaussianLaw
from .moments import _sqrtm_psd

__all__ = ["SaturatedCurve", "gaussian_saturated_error", "curve_loglog_slope", "SATURATED_TOP"]

SATURATED_TOP = 2048  # order statistics drawn exactly; the rest by their conditional expectations


@dataclass(frozen=True)
class SaturatedCurve:
    """E|Gamma_{mu_n}(x) - Gamma_mu(x)| at the worst query, by Monte Carlo of the 1-D theory object."""

    n: np.ndarray  # (k,)
    mean: np.ndarray  # (k,) the expected error
    cov: np.ndarray  # (k, k) covariance of the mean's Monte Carlo error (replicates shared across n)
    sigma: float  # |Sigma^{1/2} a| at the worst query
    reps: int
    seed: object

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))


def _log_bulk_sums(n_bulk, t, s):
    """For the n_bulk scores below t: log of n_bulk E[e^{s z} | z < t], the weighted mean
    E[z e^{s z} | z < t] / E[e^{s z} | z < t] (that of N(s, 1) truncated to z < t) and log of
    n_bulk E[e^{2 s z} | z < t]."""
    log_phi_t = special.log_ndtr(t)
    l0 = np.log(n_bulk) + 0.5 * s * s + special.log_ndtr(t - s) - log_phi_t
    # E[z e^{sz} | z < t] / E[e^{sz} | z < t] = s - phi(t - s) / Phi(t - s) (mean of the tilted, truncated normal)
    ratio = s - np.exp(-0.5 * (t - s) ** 2 - 0.5 * np.log(2 * np.pi) - special.log_ndtr(t - s))
    l2 = np.log(n_bulk) + 2.0 * s * s + special.log_ndtr(t - 2 * s) - log_phi_t
    return l0, ratio, l2


def _error_given_scores(z_top, n, sigma, top):
    """(zbar_w - sigma, q) for every replicate given its top order statistics (reps, k) of n scores."""
    zmax = z_top[:, :1]
    w = np.exp(sigma * (z_top - zmax))
    s0, s1, s2 = w.sum(axis=1), (w * z_top).sum(axis=1), (w * w).sum(axis=1)
    if n > top:
        t = z_top[:, -1]
        l0, ratio, l2 = _log_bulk_sums(n - top, t, sigma)
        b0 = np.exp(l0 - sigma * zmax[:, 0])
        s1 = s1 + b0 * ratio
        s0 = s0 + b0
        s2 = s2 + np.exp(l2 - 2 * sigma * zmax[:, 0])
    return s1 / s0 - sigma, s2 / s0**2


def _worst_query_geometry(law: GaussianLaw, R, A, V, lam):
    """sigma, u = B e and C = B E_perp (B = V Sigma^{1/2}) at the worst query |x| = R."""
    S = _sqrtm_psd(np.asarray(law.cov, dtype=float))
    M = S @ (lam * np.asarray(A, dtype=float))
    _, sv, vt = np.linalg.svd(M)
    sigma = float(R * sv[0])
    e = M @ vt[0] / sv[0]
    d = law.dim
    B = S if V is None else np.asarray(V, dtype=float) @ S
    q, _ = np.linalg.qr(np.column_stack([e, np.eye(d)]))
    perp = q[:, 1:d]
    return sigma, B @ e, B @ perp


def gaussian_saturated_error(law: GaussianLaw, R: float, A, V=None, lam: float = 1.0, n=(), *, seed,
                             reps: int = 400, top: int = SATURATED_TOP) -> SaturatedCurve:
    """E|Gamma_{mu_n}(x) - Gamma_mu(x)| at the worst query ``|x| = R``, for every n of the grid
    (module docstring; notes §2.6): ``reps`` seeded replicates of the one-dimensional theory object."""
    if not isinstance(law, GaussianLaw):
        raise TypeError("the saturated curve is derived for Gaussian tokens")
    n = np.asarray(n, dtype=np.int64)
    if n.ndim != 1 or n.size < 1 or np.any(n < 1) or np.any(np.diff(n) <= 0):
        raise ValueError("n must be an increasing grid of positive sizes")
    sigma, u, C = _worst_query_geometry(law, R, A, V, lam)
    rng = np.random.default_rng(seed)
    k = int(min(top, n.max()))
    E = rng.exponential(size=(reps, k + 1))
    gam = np.cumsum(E, axis=1)
    tail = gam[:, k - 1].copy()  # Gamma_k; grows into Gamma_{n+1} for n > k (nested Gamma increments)
    last = k - 1
    errs = np.empty((reps, n.size))
    for j, nj in enumerate(n):
        if nj <= k:
            g_n1 = gam[:, nj]  # Gamma_{n+1}
            z_top = -special.ndtri(gam[:, :nj] / g_n1[:, None])
        else:
            tail = tail + rng.gamma(float(nj - last), size=reps)  # Gamma_{n+1} = Gamma_{last+1} + Gamma(n - last)
            last = int(nj)
            z_top = -special.ndtri(gam[:, :k] / tail[:, None])
        par, q = _error_given_scores(z_top, int(nj), sigma, k)
        h = rng.standard_normal((reps, C.shape[1]))
        vec = par[:, None] * u[None, :] + np.sqrt(q)[:, None] * (h @ C.T)
        errs[:, j] = np.linalg.norm(vec, axis=1)
    mean = errs.mean(axis=0)
    cov = np.atleast_2d(np.cov(errs, rowvar=False)) / reps
    return SaturatedCurve(n=n.astype(float), mean=mean, cov=cov, sigma=sigma, reps=int(reps), seed=seed)


def curve_loglog_slope(curve: SaturatedCurve, mask, weights=None) -> tuple[float, float]:
    """The weighted least-squares slope of log E|err| on log n over ``mask`` (weights ``weights``
    on those points, e.g. the measurement's 1/Var(log mean)), and its Monte Carlo standard error
    (delta method with the covariance of the curve's points)."""
    mask = np.asarray(mask, dtype=bool)
    x = np.log(curve.n[mask])
    y = np.log(curve.mean[mask])
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    xb = np.sum(w * x) / np.sum(w)
    c = w * (x - xb) / np.sum(w * (x - xb) ** 2)  # slope = sum c_i y_i
    slope = float(np.sum(c * y))
    J = c / curve.mean[mask]
    var = float(J @ curve.cov[np.ix_(mask, mask)] @ J)
    return slope, float(np.sqrt(max(var, 0.0)))
