"""What the groups of the token-selection study share: the claims, the token laws, the queries,
the given-token pass and the small fits.

Laws (``law_params`` -> the stored dict; every group rebuilds a law from it):

* ``gaussian``  N(0, I_d);
* ``sphere``    uniform on the sphere of radius sqrt(d) in R^d (covariance I_d, as the Gaussian);
* ``mixture``   K = 4 equal components N(2 e_k, 0.5 I_d); the n keys are laid out in K contiguous
                segments, one per component (the sections of a document: the layout the
                skip-a-block control needs).

Queries: q score vectors per cell, rows of random orthonormal frames (independent scores for
Gaussian keys), each scaled so that its score spread under the law is exactly sigma:
``a^T Cov a = sigma^2`` (Cov the law's covariance). Values are the keys (V = I).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.attention import TokenStream
from sim.attention.stream import stream_key
from sim.token_selection import SelectionContext, as_source
from sim.token_selection.sums import tail_sums
from studies.claims import CONSISTENCY, ClaimSpec
from theory import token_selection as tsel

STUDY = "token_selection"
GROUPS = ("budget", "phase", "vattention", "coverage", "minilm")
LAWS = ("gaussian", "sphere", "mixture")
STREAM_LAWS = ("gaussian", "sphere")

RATE_FACTOR = 4.0  # budgets m >= 4 m_2: the second-order expansion's remainder is O((m_2/m)^2) <= 1/16
LAW_FACTOR = 30.0  # law-level uniform constant where n >= 30 e^{4 sigma^2} (B_n's relative spread <= 0.2)
TOPK_FACTOR = 10.0  # top-k law where n >= 10 kappa^2 (its variance involves E e^{2s}, kappa = Kish ratio)
CLT_FACTOR = 10.0  # vAttention's CLT prediction where b >= 10 b_3 (Berry-Esseen scale of the sampled sum)
FLOAT_ALLOWANCE = 1e-8  # two float64 computations of one exact quantity (relative)
MIX_K, MIX_MEAN, MIX_VAR = 4, 2.0, 0.5

# ----------------------------------------------------------------------------------- claims
NOTE = "notes token_selection"
UNIFORM_RATE = ClaimSpec(
    "token_selection.uniform_rate", f"{NOTE} §2 (section 1 of theory/token_selection.py): MSE = c1/m + c2/m^2",
    "Uniform sampling of m keys: the RMSE falls like m^(-1/2) once m >> m_2 = |c2|/c1 (pre-asymptotic, flatter, "
    "below m_2, not tested there).")
UNIFORM_CONSTANT = ClaimSpec(
    "token_selection.uniform_constant", f"{NOTE} §3 (section 2): B = e^(sigma^2)(tr V Sigma V^T + |V Sigma a|^2); "
                                        "sphere: polynomial in kappa",
    "The uniform constant log(RMSE sqrt(m)) grows like sigma^2/2 for Gaussian keys (slope 1/2 against sigma^2 "
    "after the prefactor) and follows the law's own, polynomial, curve for sphere keys.")
IMPORTANCE_FLAT = ClaimSpec(
    "token_selection.importance_flat", f"{NOTE} §2 (section 1): importance sampling from p costs Var_p/m exactly",
    "Importance sampling from p: m MSE = Var_p at every budget, flat in sigma for Gaussian keys (no e^(sigma^2)).")
TOPK_LAW = ClaimSpec(
    "token_selection.topk_law", f"{NOTE} §4 (section 4): |ybar - yhat| -> (|V Sigma a|/sigma) lambda(z_f - sigma), "
                                "plus the influence-function variance / n",
    "Top-k of Gaussian keys: E|ybar - yhat_topk|^2 = bias^2 + var/n of the closed forms at every (sigma, f) where "
    "n >> kappa^2.")
TOPK_TAIL = ClaimSpec(
    "token_selection.topk_tail_mass", f"{NOTE} §4 (section 4): tau(f) = Phi(Phi^-1(1-f) - sigma) (Gaussian), "
                                      "sphere and mixture by their own score laws",
    "The attention mass top-k leaves out is the tail mass of the keys' own score law (the Gaussian law on Gaussian "
    "keys, the sphere's on sphere keys, the mixture's on mixture keys).")
TOPK_IDENTITY = ClaimSpec(
    "token_selection.topk_identity", f"{NOTE} §4 (section 4): ybar - yhat_S = tau_S (mu_T - mu_H)",
    "For every kept set, |ybar - yhat_S| equals tau_S |mu_T - mu_H| (an identity).",
    role=CONSISTENCY,
    why="an algebraic identity between the selection estimator's output (numba fast path) and the tail sums of the "
        "keys (a separate NumPy pass): only a bug in one of the two computations can break it")
HYBRID = ClaimSpec(
    "token_selection.hybrid", f"{NOTE} §6 (section 6): the hybrid's delta-method MSE",
    "The hybrid (top-m/2 plus m/2 uniform draws of the rest, reweighted) is never worse than the better of top-k(m) "
    "and uniform(m) by more than its own delta-method prediction allows.")
CROSSOVER = ClaimSpec(
    "token_selection.crossover", f"{NOTE} §5 (section 5): sigma*(f, n, d) from uniform = B_n/m and top-k = bias^2 + "
                                 "var/n",
    "At equal budget m = f n, top-k beats uniform sampling above the predicted crossover sigma* (with the run's own "
    "finite-n B_n) and loses below it.")
VATTENTION = ClaimSpec(
    "token_selection.vattention_coverage", f"{NOTE} §7 (section 7); Desai et al. 2025 (vAttention), budget rule "
                                           "b = (z n_s sd / tau)^2",
    "vAttention's budget rule: the frequency with which the error exceeds the tolerance equals the workbench's CLT "
    "prediction for the rule as used (b as floored, the residual covariance, the quantile as published or as "
    "implemented); where it exceeds delta the method's promise P(error > tau) <= delta breaks.")
COVERAGE_BOUND = ClaimSpec(
    "token_selection.coverage_bound", f"{NOTE} §8 (section 8); Jo, Kang, Song, Kim 2026 (Token Sparse Attention)",
    "Coverage rule with the query's own scores ('reach' convention): tau_S < tau_cov + p_cross and "
    "|ybar - yhat_S| <= tau_S diam(V supp) for every scored query; with the window proxy no bound transfers, so "
    "the other queries' tau_S is measured (and reported with the claim).")
MINILM_WINNER = ClaimSpec(
    "token_selection.minilm_winner", f"{NOTE} §9: given-token predictions on MiniLM heads (sections 1 and 4)",
    "On every MiniLM head, uniform sampling and top-k rank as their given-token predictions say (uniform: "
    "c1/m + c2/m^2 of the head's keys; top-k: tau_S |mu_T - mu_H| of the head's keys).")


# ------------------------------------------------------------------------------------- laws
def law_params(law: str, d: int) -> dict:
    """The stored description of a token law in R^d."""
    if law == "gaussian":
        return {"law": law, "d": d, "cov": "I"}
    if law == "sphere":
        return {"law": law, "d": d, "radius": math.sqrt(d)}
    if law == "mixture":
        if d < MIX_K:
            raise ValueError(f"the mixture law needs d >= {MIX_K}")
        return {"law": law, "d": d, "K": MIX_K, "mean_scale": MIX_MEAN, "component_var": MIX_VAR,
                "layout": "K contiguous segments, one per component"}
    raise ValueError(f"unknown law {law!r}")


def mixture_parts(lp: dict):
    """(weights (K,), means (K, d), covs (K, d, d)) of a stored mixture law."""
    K, d = int(lp["K"]), int(lp["d"])
    means = np.zeros((K, d))
    means[np.arange(K), np.arange(K)] = float(lp["mean_scale"])
    covs = np.broadcast_to(float(lp["component_var"]) * np.eye(d), (K, d, d)).copy()
    return np.full(K, 1.0 / K), means, covs


def law_cov(lp: dict) -> np.ndarray:
    """The covariance of one token of the law."""
    d = int(lp["d"])
    if lp["law"] in ("gaussian", "sphere"):
        return np.eye(d)
    w, means, covs = mixture_parts(lp)
    mu = w @ means
    return np.einsum("k,kij->ij", w, covs) + np.einsum("k,ki,kj->ij", w, means - mu, means - mu)


def child(seed: np.random.SeedSequence, j: int) -> np.random.SeedSequence:
    """The j-th independent stream of a cell's seed (keys 0, queries 1, policies 2, ...)."""
    return np.random.SeedSequence(seed.entropy, spawn_key=tuple(seed.spawn_key) + (int(j),))


def make_keys(lp: dict, n: int, seed: np.random.SeedSequence, *, stream: bool = False):
    """n keys of the law: an (n, d) array, or a :class:`TokenStream` (gaussian, sphere) when
    ``stream`` (generated block by block, never stored)."""
    d = int(lp["d"])
    if stream:
        if lp["law"] not in STREAM_LAWS:
            raise ValueError(f"the {lp['law']} law has no generated-token stream")
        scale = 1.0 if lp["law"] == "gaussian" else float(lp["radius"])
        return TokenStream(stream_key(seed), int(n), d, law=lp["law"], scale=scale)
    rng = np.random.default_rng(seed)
    if lp["law"] == "gaussian":
        return rng.standard_normal((n, d))
    if lp["law"] == "sphere":
        y = rng.standard_normal((n, d))
        return float(lp["radius"]) * y / np.linalg.norm(y, axis=1, keepdims=True)
    w, means, _ = mixture_parts(lp)
    K = w.size
    comp = np.minimum((np.arange(n) * K) // n, K - 1)  # segment k holds component k
    return means[comp] + np.sqrt(float(lp["component_var"])) * rng.standard_normal((n, d))


def make_queries(lp: dict, sigma: float, q: int, seed: np.random.SeedSequence) -> np.ndarray:
    """q score vectors: rows of random orthonormal frames, each scaled to a^T Cov a = sigma^2."""
    d = int(lp["d"])
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < q:
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        rows.extend(Q.T)
    u = np.asarray(rows[:q])
    var = np.einsum("qi,ij,qj->q", u, law_cov(lp), u)
    return float(sigma) * u / np.sqrt(var)[:, None]


# --------------------------------------------------------------------- law-level predictions
def law_uniform_constant(lp: dict, a: np.ndarray) -> np.ndarray:
    """B of the law for each score vector (V = I)."""
    d = int(lp["d"])
    if lp["law"] == "gaussian":
        return tsel.gaussian_uniform_constant(a, np.eye(d))
    if lp["law"] == "sphere":
        return tsel.sphere_uniform_constant(a, d, float(lp["radius"]))
    return tsel.mixture_uniform_constant(a, *mixture_parts(lp))


def law_importance_constant(lp: dict, a: np.ndarray) -> np.ndarray:
    """Var_p of the law (importance sampling from p costs Var_p / m)."""
    d = int(lp["d"])
    if lp["law"] == "gaussian":
        return tsel.gaussian_importance_constant(a, np.eye(d))
    if lp["law"] == "sphere":
        return tsel.sphere_importance_constant(a, d, float(lp["radius"]))
    _, _, cov = tsel.mixture_tilt(a, *mixture_parts(lp))
    return np.trace(cov, axis1=-2, axis2=-1)


def law_kish(lp: dict, a: np.ndarray) -> np.ndarray:
    """kappa = E e^{2s} / (E e^s)^2 of the law, per score vector."""
    a = np.asarray(a, dtype=float)
    if lp["law"] == "gaussian":
        return tsel.gaussian_kish_ratio(np.linalg.norm(a, axis=-1))
    if lp["law"] == "sphere":
        return tsel.sphere_kish_ratio(float(lp["radius"]) * np.linalg.norm(a, axis=-1), int(lp["d"]))
    parts = mixture_parts(lp)
    return np.exp(tsel.mixture_tilt(2 * a, *parts)[0] - 2 * tsel.mixture_tilt(a, *parts)[0])


def law_topk_tau(lp: dict, f: float, a: np.ndarray) -> np.ndarray:
    """The attention mass outside the top fraction f under the law, per score vector."""
    a = np.atleast_2d(np.asarray(a, dtype=float))
    d = int(lp["d"])
    if lp["law"] == "gaussian":
        return tsel.gaussian_topk_tail_mass(f, tsel.score_sigma(a, np.eye(d)))
    if lp["law"] == "sphere":
        return np.array([tsel.sphere_topk(f, ai, d, float(lp["radius"]))[0] for ai in a]).reshape(-1)
    return np.array([tsel.mixture_topk(f, ai, *mixture_parts(lp))[0] for ai in a]).reshape(-1)


# --------------------------------------------------------------------------- the given-token pass
@dataclass
class GivenToken:
    """The theory evaluated on a cell's own keys: per query the uniform (c1, c2) and Var_p,
    per top-set size the hybrid's (c1, c2), the tail mass and the identity's ``|A1|/(1 - tau)``."""

    c1: np.ndarray
    c2: np.ndarray
    sums: object


def given_token(a, tokens, k1, *, values=None, outer: bool = False) -> tuple[SelectionContext, GivenToken]:
    """One pass of :func:`sim.token_selection.sums.tail_sums` over the keys (values = the keys
    unless ``values``) for the top-set sizes ``k1`` (0 first: the uniform coefficients)."""
    ctx = SelectionContext(a, as_source(tokens, values=values))
    sums = tail_sums(ctx, k1, outer=outer)
    c1, c2 = tsel.coefficients_from_sums(sums.n_tail, sums.tau, sums.A1, sums.A2, sums.A3, sums.P2, sums.V2)
    return ctx, GivenToken(c1, c2, sums)


# ------------------------------------------------------------------------------------- fits
def unit_mean(x, axis=-1):
    """Mean and standard error over the unit axis (units independent)."""
    x = np.asarray(x, dtype=float)
    k = x.shape[axis]
    return x.mean(axis=axis), x.std(axis=axis, ddof=1) / math.sqrt(k)


def wls_line(x, y, se):
    """Weighted least squares y = c + slope x with known standard errors: (slope, se, c); the
    error is inflated by sqrt(chi2/dof) when the points scatter more than their bars (never
    deflated)."""
    x, y, se = (np.asarray(v, dtype=float) for v in (x, y, se))
    w = 1.0 / np.maximum(se, 1e-300) ** 2
    xb, yb = np.sum(w * x) / np.sum(w), np.sum(w * y) / np.sum(w)
    sxx = np.sum(w * (x - xb) ** 2)
    slope = float(np.sum(w * (x - xb) * (y - yb)) / sxx)
    c = float(yb - slope * xb)
    dof = x.size - 2
    chi2 = float(np.sum(w * (y - c - slope * x) ** 2) / dof) if dof > 0 else 1.0
    return slope, float(np.sqrt(1.0 / sxx * max(1.0, chi2))), c


def weighted_slope(x, y, se):
    """The slope of :func:`wls_line` with the weights of ``se`` applied to another curve y."""
    return wls_line(x, y, se)[0]


def pow2(e) -> str:
    return f"2^-{int(e)}"
