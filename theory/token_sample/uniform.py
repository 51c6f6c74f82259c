"""Result 1 (uniform convergence of the attention map on a ball of radius R): the
infinite-token limit Gamma_mu, the delta-method fluctuation M(x), its sup over the ball, the
constant C(R), the effective-sample and Berry-Esseen thresholds, and the regime each radius of a
sample-size grid is in (see the package docstring for the formulas).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import optimize, special, stats
from .laws import _outer
from .moments import horizon

__all__ = [
    "attention_limit",
    "gaussian_attention_limit",
    "effective_sample_threshold",
    "fluctuation",
    "gaussian_fluctuation",
    "predicted_rmse",
    "sphere_directions",
    "sup_over_ball",
    "log_fluctuation_trace",
    "predicted_log_C",
    "predicted_C",
    "log_effective_sample_threshold_sup",
    "log_normal_approx_threshold_sup",
    "log_C_quadratic_coefficient",
    "gaussian_norm_mean",
    "log_limit_norm_mean",
    "predicted_log_C_lower",
    "REGIMES",
    "uniform_regimes",
]

# ------------------------------------------------------------------------ attention limits
def _scores(x, A, lam):
    return lam * np.asarray(x, dtype=float) @ np.asarray(A, dtype=float).T


def _apply_v(y, V):
    return y if V is None else y @ np.asarray(V, dtype=float).T


def attention_limit(law, x, A, V=None, lam: float = 1.0):
    """Gamma_mu(x) = V tilted_mean(lam A x): the infinite-token attention map, shape (..., d_v)."""
    return _apply_v(law.tilted_mean(_scores(x, A, lam)), V)


def gaussian_attention_limit(x, m, Sigma, A, V=None):
    """The Gaussian closed form V (m + Sigma A x), written out (notes token_sample §3.1)."""
    x = np.asarray(x, dtype=float)
    return _apply_v(np.asarray(m) + x @ np.asarray(A).T @ np.asarray(Sigma), V)




def effective_sample_threshold(law, x, A, lam: float = 1.0):
    """n*(x) = E w^2 / (E w)^2 with w = e^{<lam A x, y>}: the CLT regime needs n >> n*(x)."""
    a = _scores(x, A, lam)
    return np.exp(law.log_partition(2 * a) - 2 * law.log_partition(a))


def fluctuation(law, x, A, V=None, lam: float = 1.0):
    """V M(x) V^T, the limiting covariance of sqrt(n)(Gamma_{mu_n}(x) - Gamma_mu(x)); (..., dv, dv)."""
    a = _scores(x, A, lam)
    ratio = np.exp(law.log_partition(2 * a) - 2 * law.log_partition(a))
    gamma = law.tilted_mean(a)
    shift = law.tilted_mean(2 * a) - gamma
    M = ratio[..., None, None] * (law.tilted_cov(2 * a) + _outer(shift))
    if V is None:
        return M
    V = np.asarray(V, dtype=float)
    return V @ M @ V.T


def gaussian_fluctuation(x, Sigma, A, V=None):
    """The Gaussian closed form ``e^{|Sigma^{1/2} a|^2}(Sigma + Sigma a a^T Sigma)``, ``a = A x``."""
    a = np.asarray(x, dtype=float) @ np.asarray(A, dtype=float).T
    Sigma = np.asarray(Sigma, dtype=float)
    Sa = a @ Sigma
    quad = np.einsum("...i,...i->...", a, Sa)
    M = np.exp(quad)[..., None, None] * (Sigma + _outer(Sa))
    if V is None:
        return M
    V = np.asarray(V, dtype=float)
    return V @ M @ V.T


def predicted_rmse(law, x, A, V=None, n: float = 1.0, lam: float = 1.0):
    """First-order RMSE of Gamma_{mu_n}(x): sqrt(tr V M(x) V^T / n)."""
    M = fluctuation(law, x, A, V, lam)
    return np.sqrt(np.trace(M, axis1=-2, axis2=-1) / n)

# --------------------------------------------------------------------- sup over the ball
def sphere_directions(d: int, k: int) -> np.ndarray:
    """``k`` deterministic, well-spread unit vectors in R^d, shape (k, d).

    d = 1: +-1; d = 2: equally spaced angles; d = 3: the Fibonacci (golden-spiral) lattice;
    d >= 4: an unscrambled Halton sequence pushed through the Gaussian quantile function and
    normalised (quasi-uniform on the sphere).
    """
    if d < 1 or k < 1:
        raise ValueError("need d >= 1 and k >= 1")
    if d == 1:
        return np.array([[1.0], [-1.0]] * ((k + 1) // 2))[:k]
    if d == 2:
        t = 2 * np.pi * np.arange(k) / k
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if d == 3:
        i = np.arange(k) + 0.5
        z = 1 - 2 * i / k
        phi = np.pi * (3 - np.sqrt(5)) * i
        r = np.sqrt(1 - z**2)
        return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    pts = stats.qmc.Halton(d, scramble=False).random(k + 1)[1:]
    g = special.ndtri(np.clip(pts, 1e-12, 1 - 1e-12))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def sup_over_ball(fun: Callable[[np.ndarray], np.ndarray], d: int, R: float, *,
                  n_dirs: int = 64, n_shells: int = 8, extra_dirs=None, refine: int = 4):
    """Deterministic maximisation of a vectorised ``fun: (m, d) -> (m,)`` over ``|x| <= R``.

    Candidates: the centre, ``n_shells`` radial shells times ``n_dirs`` directions plus
    ``+-extra_dirs``; the ``refine`` best are polished by Nelder-Mead on the unconstrained
    parametrisation ``x = R z / max(1, |z|)``. Returns ``(value, argmax)``.
    """
    dirs = sphere_directions(d, n_dirs)
    if extra_dirs is not None and len(extra_dirs):
        e = np.asarray(extra_dirs, dtype=float).reshape(-1, d)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        dirs = np.concatenate([dirs, e, -e])
    radii = R * np.arange(1, n_shells + 1) / n_shells
    cand = np.concatenate([np.zeros((1, d)), (radii[:, None, None] * dirs[None]).reshape(-1, d)])
    vals = np.asarray(fun(cand), dtype=float)
    order = np.argsort(vals)[::-1][:refine]
    best_v, best_x = vals[order[0]], cand[order[0]]

    def to_ball(z):
        nz = np.linalg.norm(z)
        return z if nz <= R else z * (R / nz)

    for i in order:
        res = optimize.minimize(lambda z: -float(fun(to_ball(z)[None])[0]), cand[i],
                                method="Nelder-Mead",
                                options={"xatol": 1e-6 * max(R, 1e-12), "fatol": 1e-12, "maxiter": 400})
        x = to_ball(res.x)
        v = float(fun(x[None])[0])
        if v > best_v:
            best_v, best_x = v, x
    return best_v, best_x


def _top_right_singular_dirs(Sigma, A, k: int = 2):
    L = np.linalg.cholesky(np.asarray(Sigma, dtype=float) + 1e-12 * np.eye(len(Sigma)))
    _, _, vt = np.linalg.svd(L.T @ np.asarray(A, dtype=float))
    return vt[:k]


def _log_fluctuation(law, x, A, V, lam):
    """``(log r, K)`` with V M(x) V^T = r K: the prefactor n*(x) = E w^2/(E w)^2 in log space
    and the covariance-like factor K = V (Cov_{2a} + (m_{2a} - gamma)(...)^T) V^T, so that M can
    be used where it overflows."""
    a = _scores(x, A, lam)
    log_ratio = law.log_partition(2 * a) - 2 * law.log_partition(a)
    shift = law.tilted_mean(2 * a) - law.tilted_mean(a)
    inner = law.tilted_cov(2 * a) + _outer(shift)
    if V is not None:
        V = np.asarray(V, dtype=float)
        inner = V @ inner @ V.T
    return log_ratio, inner


def log_fluctuation_trace(law, x, A, V=None, lam: float = 1.0):
    """log tr V M(x) V^T, computed in log space (finite even where M overflows)."""
    log_ratio, inner = _log_fluctuation(law, x, A, V, lam)
    return log_ratio + np.log(np.trace(inner, axis1=-2, axis2=-1))


def _ball_search_dirs(law, A, lam):
    return _top_right_singular_dirs(law.cov, lam * np.asarray(A, dtype=float), k=min(2, law.dim))


def predicted_log_C(law, R: float, A, V=None, lam: float = 1.0, **kw) -> float:
    """log C(R), ``C(R) = sup_{|x| <= R} sqrt(tr V M(x) V^T)``: the delta-method constant in
    E|Gamma_{mu_n}(x) - Gamma_mu(x)| ~ C / sqrt(n) at the worst point of the ball.

    This is the pointwise prediction at the worst query; the measured sqrt(n) E sup over the
    ball also carries the supremum of the Gaussian error process, a factor of order one.
    """
    fun = lambda X: 0.5 * log_fluctuation_trace(law, X, A, V, lam)  # noqa: E731
    v, _ = sup_over_ball(fun, law.dim, R, extra_dirs=_ball_search_dirs(law, A, lam), **kw)
    return v


def predicted_C(law, R: float, A, V=None, lam: float = 1.0, **kw) -> float:
    """C(R) itself (may overflow to inf for large R: prefer :func:`predicted_log_C`)."""
    with np.errstate(over="ignore"):
        return float(np.exp(predicted_log_C(law, R, A, V, lam, **kw)))


def _log_weight_moment_ratio(law, X, A, lam, kind):
    a = _scores(X, A, lam)
    if kind == "ess":  # log E w^2 / (E w)^2
        return law.log_partition(2 * a) - 2 * law.log_partition(a)
    # Berry-Esseen scale: log (E w^3)^2 / (E w^2)^3
    return 2 * law.log_partition(3 * a) - 3 * law.log_partition(2 * a)


def log_effective_sample_threshold_sup(law, R: float, A, lam: float = 1.0, **kw) -> float:
    """``log sup_{|x| <= R} n*(x)``, n* = E w^2/(E w)^2: below n* tokens the effective sample size
    of the softmax weights is below one somewhere in the ball (a few tokens dominate)."""
    fun = lambda X: _log_weight_moment_ratio(law, X, A, lam, "ess")  # noqa: E731
    v, _ = sup_over_ball(fun, law.dim, R, extra_dirs=_ball_search_dirs(law, A, lam), **kw)
    return v


def log_normal_approx_threshold_sup(law, R: float, A, lam: float = 1.0, **kw) -> float:
    """``log sup_{|x| <= R} n_3(x)``, n_3 = (E w^3)^2 / (E w^2)^3: the Berry-Esseen scale of the
    weights' average. The Gaussian (1/sqrt(n)) regime of the error needs n >> n_3; for Gaussian
    tokens ``n_3 = e^{3 |Sigma^{1/2} A x|^2} = n*^3``, because the weights are log-normal."""
    fun = lambda X: _log_weight_moment_ratio(law, X, A, lam, "be")  # noqa: E731
    v, _ = sup_over_ball(fun, law.dim, R, extra_dirs=_ball_search_dirs(law, A, lam), **kw)
    return v


def log_C_quadratic_coefficient(Sigma, A) -> float:
    """The predicted slope of log C(R) against R^2 for Gaussian tokens: 1/2 ||Sigma^{1/2} A||_2^2."""
    return 0.5 * horizon(Sigma, A, two_sided=False) ** 2


# ------------------------------------------------------- the Gaussian limit and the regimes
_T_NODES = np.geomspace(1e-8, 1e10, 1201)  # quadrature grid in t for gaussian_norm_mean


def gaussian_norm_mean(cov):
    """E ||G|| for G ~ N(0, cov), vectorised over leading axes of ``cov`` (..., k, k).

    With Q = ||G||^2 = sum_i lam_i Z_i^2 (lam the eigenvalues of cov) and the identity
    sqrt(q) = (1 / (2 sqrt(pi))) int_0^inf (1 - e^{-t q}) t^{-3/2} dt,
    E ||G|| = (1 / (2 sqrt(pi))) int_0^inf (1 - prod_i (1 + 2 t lam_i)^{-1/2}) t^{-3/2} dt,
    evaluated after scaling cov to unit trace (trapezoid rule in log t, both ends in closed form;
    relative error < 1e-6).
    One dimension: sqrt(2 lam / pi); isotropic in two: sqrt(pi lam / 2)."""
    cov = np.asarray(cov, dtype=float)
    lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
    tr = lam.sum(axis=-1)
    p = lam / np.where(tr > 0, tr, 1.0)[..., None]
    t = _T_NODES
    prod = np.prod((1.0 + 2.0 * t[:, None] * p[..., None, :]) ** -0.5, axis=-1)  # (..., T)
    f = (1.0 - prod) * t ** -0.5  # integrand times t (d log t)
    # + the two ends in closed form: 1 - prod ~ t (unit trace) below t_0, ~ 1 above t_1
    val = (np.trapezoid(f, np.log(t), axis=-1) + 2 * np.sqrt(t[0]) + 2 / np.sqrt(t[-1])) / (2 * np.sqrt(np.pi))
    return np.sqrt(tr) * val


def log_limit_norm_mean(law, x, A, V=None, lam: float = 1.0):
    """log E ||G(x)|| for the delta-method limit G(x) ~ N(0, V M(x) V^T) of
    sqrt(n) (Gamma_{mu_n}(x) - Gamma_mu(x)), computed in log space like
    :func:`log_fluctuation_trace` (finite even where M overflows)."""
    log_ratio, inner = _log_fluctuation(law, x, A, V, lam)
    return 0.5 * log_ratio + np.log(gaussian_norm_mean(inner))


def predicted_log_C_lower(law, R: float, A, V=None, lam: float = 1.0, **kw) -> float:
    """log of ``sup_{|x| <= R} E ||G(x)||``: a lower bound, as n -> infinity, of
    ``C(R) = sqrt(n) E sup_{|x| <= R} |Gamma_{mu_n}(x) - Gamma_mu(x)|``, since the supremum of the
    limiting error process is at least its value at any one query (and ``E|G| <= sqrt(E|G|^2)``
    puts it below :func:`predicted_log_C`)."""
    fun = lambda X: log_limit_norm_mean(law, X, A, V, lam)  # noqa: E731
    v, _ = sup_over_ball(fun, law.dim, R, extra_dirs=_ball_search_dirs(law, A, lam), **kw)
    return v


REGIMES = ("clt", "transition", "saturated")


def uniform_regimes(log_n3, log_nstar, n, *, clt_factor: float = 10.0, min_points: int = 3):
    """The regime of each radius on a sample-size grid, from its Berry-Esseen scale
    ``log_n3(R)`` and effective-sample threshold ``log_nstar(R)`` (arrays over R):

    * ``0`` clt -- at least ``min_points`` grid sizes with n >= clt_factor * n_3(R): there the
      error is predicted to fall like C(R)/sqrt(n), and the rate is fitted over those sizes;
    * ``2`` saturated -- the largest n is below n*(R): the effective sample size of the softmax
      weights is below one somewhere in the ball, a few extreme tokens dominate, and the error
      is predicted to decay more slowly than n^{-1/2};
    * ``1`` transition -- neither: no rate is predicted.

    Returns ``(regime (k,) int8, clt_window (k, len(n)) bool)``."""
    n = np.asarray(n, dtype=float)
    log_n3 = np.atleast_1d(np.asarray(log_n3, dtype=float))
    log_nstar = np.atleast_1d(np.asarray(log_nstar, dtype=float))
    window = np.log(n)[None, :] >= np.log(clt_factor) + log_n3[:, None]
    regime = np.where(window.sum(axis=1) >= min_points, 0, np.where(np.log(n[-1]) < log_nstar, 2, 1))
    return regime.astype(np.int8), window & (regime == 0)[:, None]
