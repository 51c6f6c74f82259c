"""Token distributions: samplers paired with their closed-form infinite-token limits.

Each :class:`TokenDistribution` wraps a token law of :mod:`theory.token_sample` (which
knows ``log_partition``, ``tilted_mean``, ``tilted_cov``, ``mean``, ``cov``) and adds
``sample(rng, n) -> (n, d)``. ``rng`` is a generator from :func:`sim.backend.make_rng`
(NumPy or CuPy); samples come back in that generator's namespace, float64.

Laws (``make_distribution(name, d, **params)``):

============  ================================================  =====================
name          law                                               parameters (defaults)
============  ================================================  =====================
gaussian      N(0, scale^2 I)                                   scale=1
mixture       1/2 N(+sep e_1, s^2 I) + 1/2 N(-sep e_1, s^2 I)   sep=1.5, s=0.7
sphere        uniform on the sphere of radius ``radius``        radius=1
ball          uniform in the ball of radius ``radius``          radius=1
truncated     N(0, sigma^2) per coordinate, truncated to        sigma=1, c=2
              [-c sigma, c sigma] (box)
============  ================================================  =====================

and, built by ``make_atom_distribution(d, eps=, atom_radius=, bulk=, bulk_radius=)``, the
worst case of the uniform bound: a bounded bulk (ball or sphere) plus an atom of tiny mass
``eps`` at the extreme point ``atom_radius e_1`` (``theory.token_sample.AtomMixtureLaw``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from sim.backend import namespace
from theory import token_sample as ts

__all__ = ["TokenDistribution", "make_distribution", "DISTRIBUTIONS"]

DISTRIBUTIONS = ("gaussian", "mixture", "sphere", "ball", "truncated")


@dataclass(frozen=True)
class TokenDistribution:
    """A token law with a sampler. ``params`` is what built it (recorded in datasets)."""

    law: object
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.law.name

    @property
    def dim(self) -> int:
        return self.law.dim

    def describe(self) -> str:
        return json.dumps({"name": self.name, "d": self.dim, **self.params}, sort_keys=True)

    def limit(self, x, A, V=None, lam: float = 1.0):
        """Gamma_mu(x): the closed-form infinite-token attention map (NumPy)."""
        return ts.attention_limit(self.law, x, A, V, lam)

    def sample(self, rng, n: int):
        law = self.law
        d = law.dim
        if isinstance(law, ts.GaussianLaw):
            L = np.linalg.cholesky(law.cov)
            z = rng.standard_normal((n, d))
            xp = namespace(z)
            return z @ xp.asarray(L.T) + xp.asarray(law.mean)
        if isinstance(law, ts.MixtureLaw):
            u = rng.random(n)
            xp = namespace(u)
            comp = xp.searchsorted(xp.asarray(np.cumsum(law.weights)[:-1]), u, side="right")
            z = rng.standard_normal((n, d))
            out = xp.empty_like(z)
            for k in range(len(law.weights)):
                L = xp.asarray(np.linalg.cholesky(law.covs[k]).T)
                mask = comp == k
                out[mask] = z[mask] @ L + xp.asarray(law.means[k])
            return out
        if isinstance(law, (ts.SphereLaw, ts.BallLaw)):
            z = rng.standard_normal((n, d))
            xp = namespace(z)
            z = z / xp.linalg.vector_norm(z, axis=1, keepdims=True)
            if isinstance(law, ts.BallLaw):
                z = z * rng.random((n, 1)) ** (1.0 / d)
            return law.radius * z
        if isinstance(law, ts.TruncatedGaussianLaw):
            from scipy import special

            lo, hi = special.ndtr(-law.c), special.ndtr(law.c)
            u = rng.uniform(lo, hi, size=(n, d))
            xp = namespace(u)
            if xp is np or "numpy" in xp.__name__:
                return law.sigma * special.ndtri(u)
            from cupyx.scipy import special as cspecial  # pragma: no cover - GPU only

            return law.sigma * cspecial.ndtri(u)
        raise TypeError(f"no sampler for {type(law).__name__}")


def make_distribution(name: str, d: int, **params) -> TokenDistribution:
    """Build one of :data:`DISTRIBUTIONS` in dimension ``d`` (see the module table)."""
    if d < 1:
        raise ValueError("d must be >= 1")
    if name == "gaussian":
        scale = float(params.pop("scale", 1.0))
        law = ts.GaussianLaw(np.zeros(d), scale**2 * np.eye(d))
        p = {"scale": scale}
    elif name == "mixture":
        sep = float(params.pop("sep", 1.5))
        s = float(params.pop("s", 0.7))
        e1 = np.zeros(d)
        e1[0] = sep
        law = ts.MixtureLaw([0.5, 0.5], np.stack([e1, -e1]), np.stack([s**2 * np.eye(d)] * 2))
        p = {"sep": sep, "s": s}
    elif name == "sphere":
        radius = float(params.pop("radius", 1.0))
        law = ts.SphereLaw(d, radius)
        p = {"radius": radius}
    elif name == "ball":
        radius = float(params.pop("radius", 1.0))
        law = ts.BallLaw(d, radius)
        p = {"radius": radius}
    elif name == "truncated":
        sigma = float(params.pop("sigma", 1.0))
        c = float(params.pop("c", 2.0))
        law = ts.TruncatedGaussianLaw(d, sigma, c)
        p = {"sigma": sigma, "c": c}
    else:
        raise ValueError(f"unknown distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    if params:
        raise ValueError(f"unknown parameters for {name}: {sorted(params)}")
    return TokenDistribution(law, p)


# ------------------------------------------------------------------------------------------
# Part 2 additions (token-sample thread): a bounded law with a tiny-mass extreme atom.
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AtomTokenDistribution(TokenDistribution):
    """Tokens from :class:`theory.token_sample.AtomMixtureLaw`: each token is the atom with
    probability eps, otherwise a draw from the bulk (sphere, ball or box-truncated Gaussian)."""

    def sample(self, rng, n: int):
        law = self.law
        bulk = TokenDistribution(law.bulk).sample(rng, n)
        u = rng.random(n)
        xp = namespace(bulk)
        hit = u < law.eps
        return xp.where(hit[:, None], xp.asarray(law.atom)[None, :], bulk)


def make_atom_distribution(d: int, *, eps: float = 1e-3, atom_radius: float = 1.5,
                           bulk: str = "ball", bulk_radius: float = 0.5) -> AtomTokenDistribution:
    """mu = (1 - eps) * Uniform(bulk of radius ``bulk_radius``) + eps * delta_{atom_radius e_1}.

    ``bulk`` is ``"ball"`` or ``"sphere"``; the atom sits on the first axis, outside the bulk
    when ``atom_radius > bulk_radius`` (then it is the extreme point of the support)."""
    if d < 1:
        raise ValueError("d must be >= 1")
    if bulk not in ("ball", "sphere"):
        raise ValueError("bulk must be 'ball' or 'sphere'")
    if not (0 < eps < 1) or bulk_radius <= 0 or atom_radius <= 0:
        raise ValueError("need 0 < eps < 1 and positive radii")
    base = ts.BallLaw(d, bulk_radius) if bulk == "ball" else ts.SphereLaw(d, bulk_radius)
    atom = np.zeros(d)
    atom[0] = atom_radius
    law = ts.AtomMixtureLaw(base, eps, atom)
    return AtomTokenDistribution(law, {"eps": float(eps), "atom_radius": float(atom_radius),
                                       "bulk": bulk, "bulk_radius": float(bulk_radius)})


__all__ += ["AtomTokenDistribution", "make_atom_distribution"]
