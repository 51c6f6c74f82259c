r"""Monte Carlo of the moments of the transformed token distribution (Result 2 of Bohbot,
Letrouit, Peyré, Vialard, "Token sample complexity of attention").

Contract
--------
Tokens ``X = (x_1..x_n)``, shape ``(n, d)``, i.i.d. from a law ``mu`` with covariance Sigma
(:class:`sim.distributions.TokenDistribution`). One attention head whose weights come from a
fixed seed, at a sweep of scales ``s_1..s_S``; two weight conventions, both read in the
authors' code [C] (notes token_sample §4.1-4.2), both with scores divided by sqrt(d):

``"normalized"``    base W_q, W_k, W_v with N(0, 1/d) entries, W_q, W_k <- sqrt(s) * base
                    (the Gaussian experiment): A(s) = s * W_k^T W_q / sqrt(d);
``"unnormalized"``  base entries N(0, 1), W_q, W_k <- s * base (the sphere experiment):
                    A(s) = s^2 * W_k^T W_q / sqrt(d).

So ``A(s) = f(s) A_1`` with ``A_1 = W_k^T W_q / sqrt(d)`` and ``f(s) = s`` or ``s^2``; the
values are ``V = W_v`` (d x d). The outputs are self-attention outputs, queries = keys = value
sources and the query among its keys (the paper's protocol; ``exclude_self`` drops it):

    o_i(s) = V sum_j softmax_j(<A(s) x_i, x_j>) x_j ,

and the measured quantities are their empirical mean and population covariance (the moments
of nu_n = (Gamma_{mu_n})_# mu_n), computed by the streaming kernel
:func:`sim.attention.self_attention_moments` (no n x n matrix). Errors against a reference:
``mean_err = |mean - mean_ref|_2``, ``cov_err = |cov - cov_ref|_F`` and ``cov_err_op =
|cov - cov_ref|_2`` (spectral; the authors' sphere metric).

Horizons (notes token_sample §1.3): ``H_eff = ||Sigma^{1/2} A(s) Sigma^{1/2}||_2`` from the exact exponent
and ``H_code = sqrt(d) H_eff``, the authors' convention that leaves out the 1/sqrt(d) scale.

References: ``exact`` — Gaussian tokens N(m, Sigma): nu = N(V(I + Sigma A)m, V Sigma A Sigma
A^T Sigma V^T) (closed form, :func:`theory.token_sample.gaussian_output_moments`); uniform
sphere: mean 0 and the covariance of :func:`theory.token_sample.sphere_output_covariance`
evaluated by randomised quasi-Monte Carlo (:func:`sphere_output_covariance_rqmc`: scrambled
Sobol points, several independent scrambles, so the reference carries a standard error;
relative SE ~1e-6..1e-4 at d = 50 with 2^16 points x 8 scrambles). ``finite`` — the authors'
protocol: the output moments of N fresh tokens (N = 100 000 in their code), which carries its
own Monte Carlo error and bias.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy.stats import qmc

from sim.attention import self_attention_moments
from sim.backend import to_numpy
from sim.distributions import TokenDistribution
from theory import token_sample as ts

__all__ = [
    "WEIGHT_CONVENTIONS",
    "base_weights",
    "scale_factor",
    "MomentProblem",
    "moment_errors",
    "sphere_output_covariance_rqmc",
]

WEIGHT_CONVENTIONS = ("normalized", "unnormalized")


def base_weights(d: int, seed: int = 42, convention: str = "normalized"):
    """The fixed base matrices (W_q, W_k, W_v), each d x d, drawn with ``numpy`` from ``seed``
    (the authors fix seed 42 in torch; the draws differ, the law is the same)."""
    if convention not in WEIGHT_CONVENTIONS:
        raise ValueError(f"unknown weight convention {convention!r}; choose one of {WEIGHT_CONVENTIONS}")
    rng = np.random.default_rng(seed)
    sd = 1.0 / np.sqrt(d) if convention == "normalized" else 1.0
    return tuple(sd * rng.standard_normal((d, d)) for _ in range(3))


def scale_factor(scales, convention: str = "normalized") -> np.ndarray:
    """f(s) with A(s) = f(s) A_1: s ("normalized") or s^2 ("unnormalized")."""
    s = np.asarray(scales, dtype=float)
    if convention == "normalized":
        return s
    if convention == "unnormalized":
        return s**2
    raise ValueError(f"unknown weight convention {convention!r}")


def sphere_output_covariance_rqmc(A1, factors, V=None, radius: float = 1.0, *, seed=0,
                                  log2_points: int = 16, n_scrambles: int = 8):
    """Output covariance of uniform-sphere tokens for A = f A_1, every f in ``factors``, by
    randomised QMC: ``n_scrambles`` independently scrambled Sobol nets of 2^log2_points points
    mapped to the sphere, each giving :func:`theory.token_sample.sphere_output_covariance`
    with the control variate. Returns ``(cov, se)``, both (S, d_v, d_v): the mean over the
    scrambles and its elementwise standard error. The same points serve every factor (A_1 and
    f A_1 share their singular vectors)."""
    A1 = np.asarray(A1, dtype=float)
    d = A1.shape[0]
    if n_scrambles < 2:
        raise ValueError("need >= 2 scrambles for a standard error")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    U, sigma, _ = np.linalg.svd(A1)
    Vm = np.eye(d) if V is None else np.asarray(V, dtype=float)
    f = np.atleast_1d(np.asarray(factors, dtype=float))
    est = np.empty((n_scrambles, f.size, Vm.shape[0], Vm.shape[0]))
    for r, child in enumerate(ss.spawn(n_scrambles)):
        pts = qmc.Sobol(d, scramble=True, seed=np.random.default_rng(child)).random_base2(log2_points)
        g = special.ndtri(np.clip(pts, 1e-300, 1 - 1e-16))
        z = g / np.linalg.norm(g, axis=1, keepdims=True)
        for k, fk in enumerate(f):
            lam = ts.sphere_output_variances(abs(fk) * sigma, radius, points=z)
            C = (U * lam) @ U.T
            est[r, k] = Vm @ C @ Vm.T
    return est.mean(axis=0), est.std(axis=0, ddof=1) / np.sqrt(n_scrambles)


def moment_errors(mean, cov, ref_mean, ref_cov) -> dict:
    """Per-scale errors of (mean (S, dv), cov (S, dv, dv)) against a reference of the same
    shapes: ``mean_err`` (Euclidean), ``cov_err`` (Frobenius), ``cov_err_op`` (spectral)."""
    dm = np.asarray(mean) - np.asarray(ref_mean)
    dc = np.asarray(cov) - np.asarray(ref_cov)
    dc = 0.5 * (dc + np.swapaxes(dc, -1, -2))  # exact symmetry; removes round-off asymmetry
    return {
        "mean_err": np.linalg.norm(dm, axis=-1),
        "cov_err": np.linalg.norm(dc, axis=(-2, -1)),
        "cov_err_op": np.abs(np.linalg.eigvalsh(dc)).max(axis=-1),
    }


@dataclass(frozen=True)
class MomentProblem:
    """A token law, the fixed head (A_1, V) and the scale factors f(s_k) of a moment study."""

    dist: TokenDistribution
    A1: np.ndarray
    V: np.ndarray
    factors: np.ndarray

    @classmethod
    def build(cls, dist: TokenDistribution, scales, *, convention: str = "normalized",
              weight_seed: int = 42) -> "MomentProblem":
        d = dist.dim
        Wq, Wk, Wv = base_weights(d, weight_seed, convention)
        A1 = Wk.T @ Wq / np.sqrt(d)
        return cls(dist, A1, Wv, scale_factor(scales, convention))

    @property
    def d(self) -> int:
        return self.dist.dim

    def A(self, k: int) -> np.ndarray:
        return self.factors[k] * self.A1

    def horizons(self) -> tuple[np.ndarray, np.ndarray]:
        """(H_eff, H_code) per scale (module docstring)."""
        h1 = ts.horizon(self.dist.law.cov, self.A1)
        H_eff = np.abs(self.factors) * h1
        return H_eff, np.sqrt(self.d) * H_eff

    def exact_reference(self, *, seed=0, log2_points: int = 16, n_scrambles: int = 8):
        """(mean (S, dv), cov (S, dv, dv), cov_se (S, dv, dv)) of the output law nu."""
        law = self.dist.law
        S = self.factors.size
        dv = self.V.shape[0]
        if isinstance(law, ts.GaussianLaw):
            out = [ts.gaussian_output_moments(law.mean, law.cov, self.A(k), self.V) for k in range(S)]
            return (np.stack([o[0] for o in out]), np.stack([o[1] for o in out]),
                    np.zeros((S, dv, dv)))
        if isinstance(law, ts.SphereLaw):
            cov, se = sphere_output_covariance_rqmc(self.A1, self.factors, self.V, law.radius, seed=seed,
                                                    log2_points=log2_points, n_scrambles=n_scrambles)
            return np.zeros((S, dv)), cov, se
        raise ValueError(f"no exact output moments for {law.name} tokens (use a finite reference)")

    def sample_moments(self, rng, n: int, *, exclude_self: bool = False, method: str = "auto"):
        """Draw n tokens from ``rng`` and return their output (mean (S, dv), cov (S, dv, dv))."""
        X = self.dist.sample(rng, int(n))
        return self.moments_of(X, exclude_self=exclude_self, method=method)

    def moments_of(self, X, *, exclude_self: bool = False, method: str = "auto"):
        mean, cov = self_attention_moments(X, self.A1, self.V, self.factors,
                                           exclude_self=exclude_self, method=method)
        return to_numpy(mean), to_numpy(cov)

    def finite_reference(self, rng, N: int, *, exclude_self: bool = False, method: str = "auto"):
        """The authors' reference: output moments of N fresh tokens (one sample for all scales)."""
        return self.sample_moments(rng, N, exclude_self=exclude_self, method=method)
