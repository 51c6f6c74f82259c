r"""Token sample complexity of attention: closed forms (Bohbot, Letrouit, Peyré, Vialard 2025).

Symbols and conventions
-----------------------
* A token is ``y`` in R^d; the token law is ``mu``; a prompt is n i.i.d. tokens with empirical
  law ``mu_n``. Row-vector layout: a batch of queries ``x`` has shape ``(..., d)``.
* One attention head with bilinear score matrix ``A`` (d x d, any softmax scale or inverse
  temperature already folded in) and value matrix ``V`` (d_v x d)::

      Gamma_mu(x) = V E_mu[ y e^{<Ax, y>} ] / E_mu[ e^{<Ax, y>} ].

  With ``mu = mu_n`` this is softmax attention of query x over the n tokens (keys = tokens,
  values = V tokens). In code ``a = x @ A.T`` is the score vector of query x.
* The map only needs the *exponential tilt* of the law: with ``logZ(a) = log E e^{<a,y>}``,
  ``Gamma_mu(x) = V grad logZ(a)`` = V x (mean of the tilted law ``mu_a ∝ e^{<a,y>} mu``).
  Each token law below exposes ``log_partition(a)``, ``tilted_mean(a)`` and ``tilted_cov(a)``
  (the latter is the Hessian of logZ), vectorised over leading axes of ``a``.

Delta method (spec §2.1, [D]): with ``w = e^{<a,y>}``, ``Z = E w`` and ``gamma = tilted_mean(a)``,

    sqrt(n) (Gamma_{mu_n}(x) - Gamma_mu(x))  ->  N(0, V M(x) V^T),
    M(x) = E[w^2 (y-gamma)(y-gamma)^T] / Z^2
         = exp(logZ(2a) - 2 logZ(a)) * [ Cov_{2a} + (m_{2a}-gamma)(m_{2a}-gamma)^T ],

since ``w^2 mu / E w^2`` is the tilt by 2a. The prefactor ``n*(x) = E w^2 / (E w)^2`` is the
effective-sample threshold: below it a few extreme tokens dominate (a saturating, hardmax-like
regime). Heavy-tailed weights need more: the normal approximation of the weights' average is
accurate only once ``n >> n_3(x) = (E w^3)^2 / (E w^2)^3`` (the Berry-Esseen scale), which for
Gaussian tokens is ``n*^3`` — the reason the 1/sqrt(n) rate appears so late at moderate R. For Gaussian tokens (spec §3.1)

    Gamma_mu(x) = V (m + Sigma A x),     M(x) = e^{|Sigma^{1/2} A x|^2} (Sigma + Sigma A x x^T A^T Sigma),

so ``log C(R) ~ 1/2 ||Sigma^{1/2} A||^2 R^2`` (quadratic in R). For the uniform sphere of radius
rho (spec §3.2) ``Gamma_mu(x) = V rho A_d(kappa) a/|a|`` with ``kappa = rho |a|`` and
``A_d = I_{d/2}/I_{d/2-1}`` (computed with exponentially scaled Bessel functions), and
``n*`` grows only polynomially in kappa. The uniform ball of R^d is the sphere formula with
d -> d + 2 (Archimedes' projection). Truncated Gaussians here are *box*-truncated
(each coordinate of N(0, sigma^2 I) restricted to [-c sigma, c sigma]), which factorises
into closed-form one-dimensional truncated-normal tilts.

Horizon (spec §1.3, [C]): ``H = ||Sigma^{1/2} A Sigma^{1/2}||_2`` (two-sided, the authors'
current definition) or ``||Sigma^{1/2} A||_2`` (one-sided, older plots). The authors compute it
from ``A = W_k^T W_q`` *without* the softmax scale (``H_code``); with the exact exponent matrix
it is ``H_eff``. Pass whichever ``A`` you mean and record the convention. The moment-rate
exponent overlaid by the authors is ``beta(H) = 1/(2(1+H^2))`` ([C+G]).

Everything here is a deterministic function of its parameters (numpy/scipy/sympy only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "bessel_ratio",
    "log_bessel_iv",
    "GaussianLaw",
    "MixtureLaw",
    "SphereLaw",
    "BallLaw",
    "TruncatedGaussianLaw",
    "attention_limit",
    "gaussian_attention_limit",
    "gaussian_output_moments",
    "fluctuation",
    "gaussian_fluctuation",
    "effective_sample_threshold",
    "predicted_rmse",
    "sphere_directions",
    "sup_over_ball",
    "predicted_C",
    "predicted_log_C",
    "log_fluctuation_trace",
    "log_effective_sample_threshold_sup",
    "log_normal_approx_threshold_sup",
    "log_C_quadratic_coefficient",
    "horizon",
    "beta_of_horizon",
    "derive_gaussian_tilt",
]


# ----------------------------------------------------------------------------- Bessel helpers
def log_bessel_iv(nu: float, x) -> np.ndarray:
    """``log I_nu(x)`` for ``x >= 0`` without overflow (large x) or underflow (small x)."""
    shape = np.shape(x)
    x = np.atleast_1d(np.asarray(x, dtype=float))
    with np.errstate(divide="ignore"):
        ive = special.ive(nu, x)
        out = np.log(ive) + x
    # where ive underflows (x << nu), use the series I_nu(x) ~ (x/2)^nu / Gamma(nu+1) (1 + x^2/(4(nu+1)))
    bad = ~np.isfinite(out) | (ive < 1e-280)
    if np.any(bad):
        xb = np.maximum(x[bad], 1e-300)
        out[bad] = nu * np.log(xb / 2) - special.gammaln(nu + 1) + np.log1p(xb**2 / (4 * (nu + 1)))
    if nu == 0:
        out = np.where(x == 0, 0.0, out)
    return out.reshape(shape)


def bessel_ratio(nu: float, x) -> np.ndarray:
    """``I_{nu+1}(x) / I_nu(x)`` for ``x >= 0`` (0 at x = 0), stable for all x.

    Uses exponentially scaled Bessel functions, and Gauss' continued fraction where they
    underflow (x much smaller than nu).
    """
    shape = np.shape(x)
    x = np.atleast_1d(np.asarray(x, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        num = special.ive(nu + 1, x)
        den = special.ive(nu, x)
        r = num / den
    bad = ~np.isfinite(r) | (den < 1e-280)
    if np.any(bad):
        xb = x[bad]
        # I_{nu+1}/I_nu = x / (2(nu+1) + x^2 / (2(nu+2) + x^2 / (2(nu+3) + ...)))
        t = np.full_like(xb, 2 * (nu + 60))
        for k in range(59, 0, -1):
            t = 2 * (nu + k) + xb**2 / t
        r[bad] = xb / t
    return np.where(x == 0, 0.0, r).reshape(shape)


def _ratio_derivative(nu: float, x, ratio) -> np.ndarray:
    """d/dx [I_{nu+1}/I_nu](x) = 1 - r^2 - (2 nu + 1) r / x, with limit 1/(2(nu+1)) at 0."""
    x = np.asarray(x, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 - ratio**2 - (2 * nu + 1) * ratio / x
    small = x < 1e-6 * (nu + 1)
    return np.where(small, 1.0 / (2 * (nu + 1)), d)


def _ratio_over_x(nu: float, x, ratio) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = ratio / x
    return np.where(x < 1e-6 * (nu + 1), 1.0 / (2 * (nu + 1)), q)


# ------------------------------------------------------------------------------- token laws
def _outer(u):
    return u[..., :, None] * u[..., None, :]


@dataclass(frozen=True)
class GaussianLaw:
    """Tokens ~ N(mean, cov). Tilt by a: N(mean + cov a, cov)."""

    mean: np.ndarray
    cov: np.ndarray
    name: str = field(default="gaussian", init=False)

    def __post_init__(self):
        object.__setattr__(self, "mean", np.asarray(self.mean, dtype=float))
        object.__setattr__(self, "cov", np.asarray(self.cov, dtype=float))

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def support_radius(self) -> float:
        return np.inf

    def log_partition(self, a):
        a = np.asarray(a, dtype=float)
        return a @ self.mean + 0.5 * np.einsum("...i,ij,...j->...", a, self.cov, a)

    def tilted_mean(self, a):
        return self.mean + np.asarray(a, dtype=float) @ self.cov

    def tilted_cov(self, a):
        a = np.asarray(a, dtype=float)
        return np.broadcast_to(self.cov, a.shape[:-1] + self.cov.shape).copy()


@dataclass(frozen=True)
class MixtureLaw:
    """Tokens ~ sum_k pi_k N(m_k, S_k). Tilt by a: mixture of N(m_k + S_k a, S_k) with
    weights alpha_k(a) = softmax_k(log pi_k + a.m_k + a S_k a / 2) (spec §3.1, [X])."""

    weights: np.ndarray
    means: np.ndarray  # (K, d)
    covs: np.ndarray  # (K, d, d)
    name: str = field(default="mixture", init=False)

    def __post_init__(self):
        w = np.asarray(self.weights, dtype=float)
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "means", np.asarray(self.means, dtype=float))
        object.__setattr__(self, "covs", np.asarray(self.covs, dtype=float))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def support_radius(self) -> float:
        return np.inf

    @property
    def mean(self):
        return self.weights @ self.means

    @property
    def cov(self):
        m = self.mean
        second = np.einsum("k,kij->ij", self.weights, self.covs + _outer(self.means))
        return second - np.outer(m, m)

    def _components(self, a):
        a = np.asarray(a, dtype=float)
        logits = (np.log(self.weights) + a @ self.means.T
                  + 0.5 * np.einsum("...i,kij,...j->...k", a, self.covs, a))
        centres = self.means + np.einsum("kij,...j->...ki", self.covs, a)  # (..., K, d)
        return logits, centres

    def log_partition(self, a):
        logits, _ = self._components(a)
        return special.logsumexp(logits, axis=-1)

    def tilted_mean(self, a):
        logits, centres = self._components(a)
        alpha = special.softmax(logits, axis=-1)
        return np.einsum("...k,...ki->...i", alpha, centres)

    def tilted_cov(self, a):
        logits, centres = self._components(a)
        alpha = special.softmax(logits, axis=-1)
        mean = np.einsum("...k,...ki->...i", alpha, centres)
        second = np.einsum("...k,...kij->...ij", alpha, self.covs + _outer(centres))
        return second - _outer(mean)


@dataclass(frozen=True)
class _RadialLaw:
    """A rotation-invariant law whose log-partition is ``log Gamma(nu+1) + nu log(2/kappa) +
    log I_nu(kappa)``, ``kappa = radius |a|``: the uniform sphere in R^D has nu = D/2 - 1."""

    d: int
    radius: float = 1.0

    @property
    def dim(self) -> int:
        return self.d

    @property
    def support_radius(self) -> float:
        return float(self.radius)

    @property
    def _nu(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def mean(self):
        return np.zeros(self.d)

    @property
    def cov(self):
        return self.radius**2 / (2 * (self._nu + 1)) * np.eye(self.d)

    def _kappa_dir(self, a):
        a = np.asarray(a, dtype=float)
        norm = np.linalg.norm(a, axis=-1)
        safe = np.where(norm > 0, norm, 1.0)
        return self.radius * norm, a / safe[..., None]

    def log_partition(self, a):
        kappa, _ = self._kappa_dir(a)
        nu = self._nu
        with np.errstate(divide="ignore"):
            val = (special.gammaln(nu + 1) + nu * np.log(2.0 / np.maximum(kappa, 1e-300))
                   + log_bessel_iv(nu, kappa))
        return np.where(kappa < 1e-150, 0.0, val)

    def tilted_mean(self, a):
        kappa, u = self._kappa_dir(a)
        return (self.radius * bessel_ratio(self._nu, kappa))[..., None] * u

    def tilted_cov(self, a):
        kappa, u = self._kappa_dir(a)
        nu = self._nu
        r = bessel_ratio(nu, kappa)
        radial = self.radius**2 * _ratio_derivative(nu, kappa, r)
        tangential = self.radius**2 * _ratio_over_x(nu, kappa, r)
        uu = _outer(u)
        eye = np.eye(self.d)
        return radial[..., None, None] * uu + tangential[..., None, None] * (eye - uu)


@dataclass(frozen=True)
class SphereLaw(_RadialLaw):
    """Tokens uniform on the sphere S^{d-1}(radius): Gamma = V radius A_d(kappa) a/|a| (spec §3.2)."""

    name: str = field(default="sphere", init=False)

    @property
    def _nu(self) -> float:
        return self.d / 2 - 1


@dataclass(frozen=True)
class BallLaw(_RadialLaw):
    """Tokens uniform in the ball B^d(radius): the sphere formulas with d -> d + 2."""

    name: str = field(default="ball", init=False)

    @property
    def _nu(self) -> float:
        return self.d / 2


@dataclass(frozen=True)
class TruncatedGaussianLaw:
    """Each coordinate ~ N(0, sigma^2) truncated to [-c sigma, c sigma], independently (box
    truncation; support radius c sigma sqrt(d)). Tilt by a: coordinate i becomes
    N(sigma^2 a_i, sigma^2) truncated to the same interval."""

    d: int
    sigma: float = 1.0
    c: float = 2.0
    name: str = field(default="truncated", init=False)

    @property
    def dim(self) -> int:
        return self.d

    @property
    def support_radius(self) -> float:
        return float(self.c * self.sigma * np.sqrt(self.d))

    @property
    def mean(self):
        return np.zeros(self.d)

    @property
    def cov(self):
        return np.diag(self.tilted_var_1d(np.zeros(self.d)))

    def _ab(self, a):
        a = np.asarray(a, dtype=float)
        shift = self.sigma * a  # tilted centre in sigma units
        return -self.c - shift, self.c - shift

    @staticmethod
    def _log_mass(alpha, beta):
        """log(Phi(beta) - Phi(alpha)) for alpha < beta, accurate in both tails."""
        out = np.empty(np.broadcast(alpha, beta).shape)
        alpha, beta = np.broadcast_arrays(alpha, beta)
        right = alpha > 0  # both in the upper tail: use survival functions
        left = beta < 0
        mid = ~(right | left)
        la, lb = special.log_ndtr(-alpha[right]), special.log_ndtr(-beta[right])
        out[right] = la + np.log1p(-np.exp(lb - la))
        la, lb = special.log_ndtr(beta[left]), special.log_ndtr(alpha[left])
        out[left] = la + np.log1p(-np.exp(lb - la))
        out[mid] = np.log(special.ndtr(beta[mid]) - special.ndtr(alpha[mid]))
        return out

    def _moments_1d(self, a):
        alpha, beta = self._ab(a)
        logmass = self._log_mass(alpha, beta)
        log_phi = lambda t: -0.5 * t**2 - 0.5 * np.log(2 * np.pi)  # noqa: E731
        pa = np.exp(log_phi(alpha) - logmass)
        pb = np.exp(log_phi(beta) - logmass)
        mean = self.sigma**2 * np.asarray(a, dtype=float) + self.sigma * (pa - pb)
        var = self.sigma**2 * (1 + alpha * pa - beta * pb - (pa - pb) ** 2)
        return logmass, mean, var

    def tilted_var_1d(self, a):
        return self._moments_1d(a)[2]

    def log_partition(self, a):
        a = np.asarray(a, dtype=float)
        logmass, _, _ = self._moments_1d(a)
        log_mass0 = np.log(special.ndtr(self.c) - special.ndtr(-self.c))
        return np.sum(0.5 * self.sigma**2 * a**2 + logmass - log_mass0, axis=-1)

    def tilted_mean(self, a):
        return self._moments_1d(a)[1]

    def tilted_cov(self, a):
        var = self._moments_1d(a)[2]
        return var[..., :, None] * np.eye(self.d)


# ------------------------------------------------------------------------ attention limits
def _scores(x, A, lam):
    return lam * np.asarray(x, dtype=float) @ np.asarray(A, dtype=float).T


def _apply_v(y, V):
    return y if V is None else y @ np.asarray(V, dtype=float).T


def attention_limit(law, x, A, V=None, lam: float = 1.0):
    """Gamma_mu(x) = V tilted_mean(lam A x): the infinite-token attention map, shape (..., d_v)."""
    return _apply_v(law.tilted_mean(_scores(x, A, lam)), V)


def gaussian_attention_limit(x, m, Sigma, A, V=None):
    """The Gaussian closed form V (m + Sigma A x), written out (spec §3.1)."""
    x = np.asarray(x, dtype=float)
    return _apply_v(np.asarray(m) + x @ np.asarray(A).T @ np.asarray(Sigma), V)


def gaussian_output_moments(m, Sigma, A, V=None):
    """Mean and covariance of the output law nu = (Gamma_mu)_# mu for mu = N(m, Sigma):
    nu = N(V (I + Sigma A) m, V Sigma A Sigma A^T Sigma V^T) (spec §3.1)."""
    m, Sigma, A = (np.asarray(t, dtype=float) for t in (m, Sigma, A))
    Vm = np.eye(len(m)) if V is None else np.asarray(V, dtype=float)
    SA = Sigma @ A
    return Vm @ (m + SA @ m), Vm @ SA @ Sigma @ SA.T @ Vm.T


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
    """The Gaussian closed form e^{|Sigma^{1/2} a|^2}(Sigma + Sigma a a^T Sigma), a = A x."""
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


def log_fluctuation_trace(law, x, A, V=None, lam: float = 1.0):
    """log tr V M(x) V^T, computed in log space (finite even where M overflows)."""
    a = _scores(x, A, lam)
    log_ratio = law.log_partition(2 * a) - 2 * law.log_partition(a)
    shift = law.tilted_mean(2 * a) - law.tilted_mean(a)
    inner = law.tilted_cov(2 * a) + _outer(shift)
    if V is not None:
        V = np.asarray(V, dtype=float)
        inner = V @ inner @ V.T
    return log_ratio + np.log(np.trace(inner, axis1=-2, axis2=-1))


def _ball_search_dirs(law, A, lam):
    return _top_right_singular_dirs(law.cov, lam * np.asarray(A, dtype=float), k=min(2, law.dim))


def predicted_log_C(law, R: float, A, V=None, lam: float = 1.0, **kw) -> float:
    """log C(R), C(R) = sup_{|x| <= R} sqrt(tr V M(x) V^T): the delta-method constant in
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
    """log sup_{|x| <= R} n*(x), n* = E w^2/(E w)^2: below n* tokens the effective sample size
    of the softmax weights is below one somewhere in the ball (a few tokens dominate)."""
    fun = lambda X: _log_weight_moment_ratio(law, X, A, lam, "ess")  # noqa: E731
    v, _ = sup_over_ball(fun, law.dim, R, extra_dirs=_ball_search_dirs(law, A, lam), **kw)
    return v


def log_normal_approx_threshold_sup(law, R: float, A, lam: float = 1.0, **kw) -> float:
    """log sup_{|x| <= R} n_3(x), n_3 = (E w^3)^2 / (E w^2)^3: the Berry-Esseen scale of the
    weights' average. The Gaussian (1/sqrt(n)) regime of the error needs n >> n_3; for Gaussian
    tokens n_3 = e^{3 |Sigma^{1/2} A x|^2} = n*^3, because the weights are log-normal."""
    fun = lambda X: _log_weight_moment_ratio(law, X, A, lam, "be")  # noqa: E731
    v, _ = sup_over_ball(fun, law.dim, R, extra_dirs=_ball_search_dirs(law, A, lam), **kw)
    return v


def log_C_quadratic_coefficient(Sigma, A) -> float:
    """The predicted slope of log C(R) against R^2 for Gaussian tokens: 1/2 ||Sigma^{1/2} A||_2^2."""
    return 0.5 * horizon(Sigma, A, two_sided=False) ** 2


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


# ------------------------------------------------------------------------ sympy derivation
def derive_gaussian_tilt(d: int = 2) -> dict:
    """Symbolic derivation of the Gaussian tilt (spec §3.1).

    Returns sympy objects:

    * ``square_identity``: ``a.y - (y-m)^T S^{-1}(y-m)/2 - [-(y-c)^T S^{-1}(y-c)/2 + a.m + a^T S a/2]``
      with ``c = m + S a``, which simplifies to 0: the tilted density is N(m + S a, S) and
      ``log E e^{a.y} = a.m + a^T S a / 2``;
    * ``log_partition``: ``a.m + a^T S a / 2`` (symbolic, general symmetric S);
    * ``gradient``: its gradient in ``a`` — the attention limit before V is applied;
    * ``mgf_1d``: ``log E e^{a y}`` for y ~ N(m, s^2), obtained by direct integration.
    """
    import sympy as sp

    a = sp.Matrix(sp.symbols(f"a0:{d}", real=True))
    y = sp.Matrix(sp.symbols(f"y0:{d}", real=True))
    m = sp.Matrix(sp.symbols(f"m0:{d}", real=True))
    S = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"s{min(i, j)}{max(i, j)}", real=True))
    Sinv = S.inv()
    c = m + S * a
    lhs = (a.T * y)[0] - sp.Rational(1, 2) * ((y - m).T * Sinv * (y - m))[0]
    logZ = (a.T * m)[0] + sp.Rational(1, 2) * (a.T * S * a)[0]
    rhs = -sp.Rational(1, 2) * ((y - c).T * Sinv * (y - c))[0] + logZ
    identity = sp.simplify(sp.together(sp.expand(lhs - rhs)))
    grad = sp.Matrix([sp.diff(logZ, ai) for ai in a])

    t, mu1 = sp.symbols("t mu", real=True)
    s1 = sp.Symbol("sigma", positive=True)
    a1 = sp.Symbol("alpha", real=True)
    dens = sp.exp(-(t - mu1) ** 2 / (2 * s1**2)) / sp.sqrt(2 * sp.pi * s1**2)
    mgf = sp.simplify(sp.integrate(sp.exp(a1 * t) * dens, (t, -sp.oo, sp.oo), conds="none"))
    return {
        "square_identity": identity,
        "log_partition": logZ,
        "gradient": grad,
        "symbols": {"a": a, "m": m, "S": S},
        "mgf_1d": sp.simplify(sp.log(mgf)),
        "symbols_1d": {"alpha": a1, "mu": mu1, "sigma": s1},
    }


# =============================================================================================
# Part 2 (moment rates vs horizon, hardmax regime, bounded vs unbounded tokens). Appended
# section, self-contained: every symbol below is defined here or in the module docstring.
#
# * Output law of a sphere (spec §3.2, [C] formula, [D] reduction). mu = uniform on
#   S^{d-1}(rho), A = U diag(sigma) W^T (SVD), zeta = W^T z uniform on S^{d-1}. Then
#   Gamma_mu(rho z) = rho A_d(kappa) U (sigma * zeta) / sqrt(s), s = sum_k sigma_k^2 zeta_k^2,
#   kappa = rho^2 sqrt(s), and the output law nu = (Gamma_mu)_# mu has mean 0 and covariance
#   U diag(lambda) U^T with lambda_i = rho^6 sigma_i^2 E[(A_d(kappa)/kappa)^2 zeta_i^2]
#   (off-diagonal terms vanish by the sign symmetry of zeta). The value side is V(.)V^T.
# * Hardmax (spec §2.3, §3.2): Gamma^inf_mu(x) = V * barycenter of mu on argmax_y <Ax, y>; for
#   the sphere V rho a/|a|, bias at parameter lam: rho (1 - A_d(lam kappa_1)) ~ rho (d-1) /
#   (2 lam kappa_1). The empirical hardmax on n sphere tokens picks the token of largest
#   cosine t with the direction u = a/|a|; |z - u| = sqrt(2 - 2t), and (1 + t)/2 ~
#   Beta((d-1)/2, (d-1)/2), which gives the exact expected error as a 1-D integral
#   (:func:`sphere_hardmax_expected_error`), ~ n^{-1/(d-1)} for large n [D].
# * Finer beta heuristic (spec §2.2, [D]): 1/2 for H <= 1, 1/(1 + H^2) for H > 1.
# * Tokens with a tiny-mass extreme atom (spec §6 check 3): mu = (1 - eps) bulk + eps delta_{y*};
#   a mixture, so logZ = logaddexp(log(1-eps) + logZ_bulk, log eps + <a, y*>) and the tilt is the
#   mixture of the tilted bulk and the atom with weights softmax of those two terms.
# =============================================================================================
import functools  # noqa: E402

from scipy import integrate as _integrate  # noqa: E402

__all__ += [
    "beta_fine_of_horizon",
    "AtomMixtureLaw",
    "hardmax_limit",
    "sphere_hardmax_bias",
    "sphere_hardmax_bias_asymptotic",
    "sphere_hardmax_expected_error",
    "sphere_hardmax_rate",
    "hardmax_error_prediction",
    "sphere_output_covariance",
    "sphere_output_variances",
    "truncated_output_moments",
]


def beta_fine_of_horizon(H):
    """The finer moment-rate heuristic (spec §2.2 [D]): 1/2 for H <= 1 (the leading
    fluctuation has finite variance), 1/(1 + H^2) for H > 1 (heavy-tailed averaging)."""
    H = np.asarray(H, dtype=float)
    return np.where(H <= 1.0, 0.5, 1.0 / (1.0 + H**2))


@dataclass(frozen=True)
class AtomMixtureLaw:
    """mu = (1 - eps) * bulk + eps * delta_atom: a bounded law whose extreme point carries a
    tiny mass (the worst case for the uniform constant C(R), spec §6 check 3). ``bulk`` is any
    law of this module with ``log_partition``, ``tilted_mean``, ``tilted_cov``, ``mean``, ``cov``."""

    bulk: object
    eps: float
    atom: np.ndarray
    name: str = field(default="atom", init=False)

    def __post_init__(self):
        if not (0.0 < float(self.eps) < 1.0):
            raise ValueError("eps must lie in (0, 1)")
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "atom", np.asarray(self.atom, dtype=float))
        if self.atom.shape != (self.bulk.dim,):
            raise ValueError("the atom must be a point of R^d")

    @property
    def dim(self) -> int:
        return self.bulk.dim

    @property
    def support_radius(self) -> float:
        return float(max(self.bulk.support_radius, np.linalg.norm(self.atom)))

    @property
    def mean(self):
        return (1 - self.eps) * np.asarray(self.bulk.mean) + self.eps * self.atom

    @property
    def cov(self):
        mb = np.asarray(self.bulk.mean)
        second = (1 - self.eps) * (np.asarray(self.bulk.cov) + np.outer(mb, mb)) + self.eps * np.outer(self.atom, self.atom)
        m = self.mean
        return second - np.outer(m, m)

    def _logits(self, a):
        a = np.asarray(a, dtype=float)
        lb = np.log1p(-self.eps) + self.bulk.log_partition(a)
        la = np.log(self.eps) + a @ self.atom
        return lb, la

    def log_partition(self, a):
        lb, la = self._logits(a)
        return np.logaddexp(lb, la)

    def _atom_weight(self, a):
        lb, la = self._logits(a)
        return special.expit(la - lb)

    def tilted_mean(self, a):
        p = self._atom_weight(a)[..., None]
        return (1 - p) * self.bulk.tilted_mean(a) + p * self.atom

    def tilted_cov(self, a):
        p = self._atom_weight(a)[..., None, None]
        mb = self.bulk.tilted_mean(a)
        second = (1 - p) * (self.bulk.tilted_cov(a) + _outer(mb)) + p * _outer(np.broadcast_to(self.atom, mb.shape))
        return second - _outer(self.tilted_mean(a))


def _support_point(law, a):
    """argmax over the support of <a, y> (its barycenter when the face is a set), for a (..., d)."""
    a = np.asarray(a, dtype=float)
    if isinstance(law, (SphereLaw, BallLaw)):
        norm = np.linalg.norm(a, axis=-1, keepdims=True)
        return law.radius * np.where(norm > 0, a / np.where(norm > 0, norm, 1.0), 0.0)
    if isinstance(law, TruncatedGaussianLaw):
        return law.c * law.sigma * np.sign(a)
    if isinstance(law, AtomMixtureLaw):
        yb = _support_point(law.bulk, a)
        hb = np.einsum("...i,...i->...", a, yb)
        ha = a @ law.atom
        # ties go to the atom: it has positive mass, the bulk's maximising face has none
        return np.where((ha >= hb)[..., None], np.broadcast_to(law.atom, yb.shape), yb)
    raise ValueError(f"the hardmax limit needs a compactly supported law; {getattr(law, 'name', law)!r} "
                     "has unbounded support")


def hardmax_limit(law, x, A, V=None):
    """Gamma^inf_mu(x) = V * (barycenter of mu on argmax_{y in supp mu} <A x, y>), shape (..., d_v).

    Sphere / ball: V rho a/|a|; box-truncated Gaussian: V c sigma sign(a); atom mixture: the
    atom when <a, y*> >= the bulk's support function, else the bulk's face. Unbounded laws
    (Gaussian, Gaussian mixture) have no hardmax limit: ValueError."""
    return _apply_v(_support_point(law, _scores(x, A, 1.0)), V)


def sphere_hardmax_bias(d: int, kappa, radius: float = 1.0):
    """|Gamma^lam_mu(x) - Gamma^inf_mu(x)| for the uniform sphere S^{d-1}(radius), V = I:
    radius * (1 - A_d(kappa)) with kappa = radius * |lam A x| (exact)."""
    kappa = np.asarray(kappa, dtype=float)
    return radius * (1.0 - bessel_ratio(d / 2 - 1, kappa))


def sphere_hardmax_bias_asymptotic(d: int, kappa, radius: float = 1.0):
    """The large-kappa form of :func:`sphere_hardmax_bias`: radius (d - 1) / (2 kappa)."""
    return radius * (d - 1) / (2.0 * np.asarray(kappa, dtype=float))


def sphere_hardmax_rate(d: int) -> float:
    """Asymptotic log-log slope of the pure-hardmax error against n on S^{d-1}: -1/(d-1)."""
    if d < 2:
        raise ValueError("the sphere needs d >= 2")
    return -1.0 / (d - 1)


def sphere_hardmax_expected_error(d: int, n, radius: float = 1.0):
    """E |y_{j*} - radius u|, y_1..y_n uniform on S^{d-1}(radius), j* = argmax_j <u, y_j>.

    Exact up to quadrature: with e = |z - u| = sqrt(2 - 2t) and P(t > 1 - e^2/2) =
    I_{e^2/4}((d-1)/2, (d-1)/2) (regularised incomplete beta),
    E e = int_0^2 (1 - I_{e^2/4})^n de. Vectorised over ``n``."""
    if d < 2:
        raise ValueError("the sphere needs d >= 2")
    b = (d - 1) / 2.0
    ns = np.atleast_1d(np.asarray(n, dtype=float))
    out = np.empty_like(ns)
    for i, nn in enumerate(ns):
        if nn < 1:
            raise ValueError("n must be >= 1")
        scale = min(2.0, 2.0 * nn ** (-1.0 / (d - 1)))

        def f(e):
            sf = special.betainc(b, b, min(1.0, e * e / 4.0))
            return float(np.exp(nn * np.log1p(-sf))) if sf < 1.0 else 0.0

        pts = sorted({min(2.0, scale * k) for k in (0.25, 1.0, 4.0)} - {2.0})
        val, _ = _integrate.quad(f, 0.0, 2.0, points=pts, limit=200, epsabs=0.0, epsrel=1e-10)
        out[i] = radius * val
    return out.reshape(np.shape(n)) if np.ndim(n) else float(out[0])


def hardmax_error_prediction(law, x, A, lam, n, V=None):
    """First-order E|Gamma^lam_{mu_n}(x) - Gamma^inf_mu(x)|: sqrt(|bias|^2 + tr V M V^T / n),
    the bias Gamma^lam_mu(x) - Gamma^inf_mu(x) plus the delta-method fluctuation at (lam, n).
    Broadcasts over ``lam`` and ``n`` (scalars or arrays of one shape); ``x`` is one query."""
    lam_b, n_b = np.broadcast_arrays(np.asarray(lam, dtype=float), np.asarray(n, dtype=float))
    out = np.empty(lam_b.shape)
    x = np.asarray(x, dtype=float)
    hard = hardmax_limit(law, x, A, V)
    for idx in np.ndindex(lam_b.shape):
        la = float(lam_b[idx])
        bias = attention_limit(law, x, A, V, la) - hard
        tr = np.trace(fluctuation(law, x, A, V, la))
        out[idx] = np.sqrt(np.sum(bias**2) + tr / n_b[idx])
    return out if out.ndim else float(out)


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
