"""Token laws of the token-sample thread and the Bessel helpers they need.

Every law exposes ``dim``, ``mean``, ``cov``, ``support_radius``, ``log_partition(a)``,
``tilted_mean(a)`` and ``tilted_cov(a)`` (the exponential tilt ``mu_a ∝ e^{<a, y>} mu``; see
the package docstring), vectorised over leading axes of ``a``:

* :class:`GaussianLaw` N(m, Sigma) and :class:`MixtureLaw` (Gaussian mixtures, notes token_sample §3.1 [X]);
* :class:`SphereLaw` and :class:`BallLaw` (uniform on the sphere / in the ball, notes token_sample §3.2);
* :class:`TruncatedGaussianLaw` (box-truncated N(0, sigma^2 I));
* :class:`AtomMixtureLaw` (a bounded bulk plus a tiny-mass atom at its extreme point, the worst
  case of the uniform bound: logZ = logaddexp(log(1-eps) + logZ_bulk, log eps + <a, y*>)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special

__all__ = [
    "log_bessel_iv",
    "bessel_ratio",
    "GaussianLaw",
    "MixtureLaw",
    "SphereLaw",
    "BallLaw",
    "TruncatedGaussianLaw",
    "AtomMixtureLaw",
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
    weights alpha_k(a) = softmax_k(log pi_k + a.m_k + a S_k a / 2) (notes token_sample §3.1, [X])."""

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
    """Tokens uniform on the sphere S^{d-1}(radius): ``Gamma = V radius A_d(kappa) a/|a|``
    (notes token_sample §3.2)."""

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

@dataclass(frozen=True)
class AtomMixtureLaw:
    """mu = (1 - eps) * bulk + eps * delta_atom: a bounded law whose extreme point carries a
    tiny mass (the worst case for the uniform constant C(R), notes token_sample §6.3). ``bulk`` is any
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
