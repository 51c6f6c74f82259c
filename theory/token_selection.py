r"""Attention over m of n keys: what sampling, top-k, hybrids and coverage rules should cost.

This module extends the token-sample thread (notes token_sample §2.1: attention over n sampled
tokens against its infinite-token limit) from "n tokens out of a law" to "m keys out of n given
keys", the question every sparse-attention method answers. Pure functions of parameters
(numpy/scipy only); nothing of the workbench is imported.

Symbols, shapes, conventions
----------------------------
* One query with score vector ``a = A x`` (shape ``(..., d)``; any softmax scale is folded into
  ``a``). Keys/tokens ``y_j`` in R^d, values ``v_j = V y_j`` in R^{dv} (``V`` of shape
  ``(dv, d)``; ``None`` means the identity). Row-vector layout, the last axis is the feature axis.
* Scores ``s_j = <a, y_j>``, weights ``p_j = e^{s_j} / sum_i e^{s_i}``, output
  ``ybar = sum_j p_j v_j``. Finite-sample functions take ``s`` of shape ``(..., n)`` and ``v`` of
  shape ``(..., n, dv)`` (or ``(n, dv)``, broadcast) and work on leading axes.
* A kept set S has tail mass ``tau_S = sum_{j not in S} p_j``, head mean
  ``mu_H = sum_{S} p_j v_j / (1 - tau_S)``, tail mean ``mu_T = sum_{not S} p_j v_j / tau_S``.
* ``kappa_n = n sum_j p_j^2`` (n over Kish's effective sample size, between 1 and n),
  ``Var_p = sum_j p_j ||v_j - ybar||^2``,  ``B_n = n sum_j p_j^2 ||v_j - ybar||^2`` (the uniform
  constant), ``G_n = sum_j p_j ||v_j - ybar||`` (the optimal-proposal constant).
* The self-normalised estimator of a selection (indices J_1..J_M with inclusion weights w) is
  ``yhat = sum_k w_k e^{s_{J_k}} v_{J_k} / sum_k w_k e^{s_{J_k}}``; its squared error is
  ``||yhat - ybar||^2``.
* Token laws (n -> infinity): Gaussian ``N(m, Sigma)``, the uniform sphere of radius rho in R^d,
  and Gaussian mixtures ``sum_k pi_k N(m_k, S_k)``. The score spread is ``sigma^2 = a^T Sigma a``
  (the variance of ``s`` under the law). Gaussian results do not depend on m (a shift of the
  tokens shifts every score by a constant and every value by ``V m``).

Tags: **[R]** rigorous (a proof is given or it is an identity), **[D]** derived here (a
delta-method / influence-function expansion whose remainder is controlled only asymptotically),
**[C]** conjectured or cited and checked numerically. Each item names the test in
``tests/theory/test_token_selection.py`` that checks it against brute force.

1. Sampling with a self-normalised estimator: one expansion for all samplers [D]
--------------------------------------------------------------------------------
Draw J_1..J_m i.i.d. from a proposal q over the n keys and weigh key j by ``rho_j = p_j / q_j``
(constants cancel in the ratio). With ``r = rho_J`` (``E_q r = 1``) and ``u = r (v_J - ybar)``
(``E_q u = 0``), ``yhat - ybar = U / (1 + delta)`` with ``U`` the mean of the m draws of ``u`` and
``delta`` the mean of ``e = r - 1``. Expanding ``(1 + delta)^{-2} = 1 - 2 delta + 3 delta^2 - ...``
and keeping the index patterns whose expectation does not vanish (every centred factor must be
paired)::

    E ||yhat - ybar||^2 = c1 / m + c2 / m^2 + O(m^-3),
    c1 = E_q ||u||^2 = sum_j p_j^2 / q_j ||v_j - ybar||^2,
    c2 = -2 E_q[||u||^2 e] + 3 (E_q||u||^2 E_q e^2 + 2 ||E_q[u e]||^2).

``E ||U||^2 = c1/m`` exactly; ``E[||U||^2 delta]`` only has the all-equal pattern
(``E||u||^2 e / m^2``); ``E[||U||^2 delta^2]`` has the three pairings of two pairs; every further
term has at most two free indices among five or more, hence O(m^-3). The remainder is O(m^-3)
because ``1 + delta >= min_j r_j > 0`` bounds the Taylor remainder for finite n.
(test: ``test_ratio_expansion_against_exact_enumeration``, exact expectations over all count
vectors of m draws for n = 4, m up to 96: ``m^2 (E - c1/m)`` converges to c2 at rate 1/m.)

The same structure covers:

* **uniform with replacement** (q = 1/n): ``c1 = n sum p_j^2 ||v_j - ybar||^2 = B_n`` -- the
  issue's formula, confirmed. ``E r^2 = kappa_n``, so ``Var r = kappa_n - 1``.
* **uniform without replacement** (a simple random sample of m distinct keys): the linear part U
  is a sample mean without replacement, whose variance carries the finite-population factor
  exactly: ``E||U||^2 = (B_n / m) (n - m)/(n - 1)`` [R] (the issue's factor, confirmed;
  ``test_without_replacement_factor_is_exact_for_the_linear_part``). For the self-normalised
  estimator this is the first-order term [D]; its O(m^-2) correction involves the third and
  fourth sampling moments without replacement and is not given (a version with the leading
  finite-population factors was tried and was no better than first order at m = n/6, n = 600).
  (``test_without_replacement_first_order``: seeded Monte Carlo, tolerance z SE plus the
  with-replacement ``|c2|/m^2`` as the declared size of the neglected term.)
* **importance sampling from p** (q = p): r = 1, so ``yhat`` is a plain average of the drawn
  values and ``E||yhat - ybar||^2 = Var_p / m`` for every m, exactly [R] (c2 = 0;
  ``test_importance_from_p_is_exact``).
* **the optimal proposal**: c1 = sum p^2/q ||v - ybar||^2 is minimised over q (sum q = 1) by
  ``q* ∝ p ||v - ybar||`` (Cauchy-Schwarz: ``(sum p ||.||)^2 = (sum sqrt(q) * p||.||/sqrt(q))^2
  <= sum q * sum p^2||.||^2/q``), giving ``c1 = G_n^2`` [R for c1; D for the rate].

2. Uniform sampling of a token law: the exponential constant at budget m [R given section 1]
--------------------------------------------------------------------------------------------
For n i.i.d. tokens, ``B_n -> B = E[e^{2s} ||v - mu||^2] / (E e^s)^2`` with ``mu = V gamma(a)``
the tilted mean. Writing ``e^{2s} mu / E e^{2s}`` as the tilt by 2a, ::

    B = exp(logZ(2a) - 2 logZ(a)) * ( tr(V Cov_{2a} V^T) + ||V (gamma(2a) - gamma(a))||^2 ).

* Gaussian: logZ(a) = a.m + a^T Sigma a / 2, gamma(a) = m + Sigma a, Cov = Sigma, so
  ``B = e^{sigma^2} (tr V Sigma V^T + ||V Sigma a||^2)`` -- the issue's formula, confirmed; the
  second term is the tilted-mean shift ``gamma(2a) - gamma(a) = Sigma a`` (not ``2 Sigma a``).
  It is the token-sample fluctuation ``tr V M(x) V^T`` of the paper, now divided by m.
  (``test_law_constants_against_quadrature``: Gauss-Hermite quadrature in d = 2.)
* Sphere of radius rho in R^d, nu = d/2 - 1, kappa = rho ``|a|``, ``A_nu = I_{nu+1}/I_nu``,
  ``logZ(a) = log Gamma(nu+1) + nu log(2/kappa) + log I_nu(kappa)``::

      B = [kappa^nu I_nu(2 kappa) / (Gamma(nu+1) 4^nu I_nu(kappa)^2)]
          * rho^2 [ A'(2k) |V u|^2 + A(2k)/(2k) (||V||_F^2 - |V u|^2) + (A(2k) - A(k))^2 |V u|^2 ],

  ``u = a/|a|``, k = kappa, ``A'(x) = 1 - A^2 - (2 nu + 1) A / x``. As kappa -> infinity the bracket
  in front grows like ``sqrt(pi) kappa^{nu + 1/2} / (Gamma(nu+1) 4^nu)`` and the second bracket
  decays like ``(||V||_F^2 - |Vu|^2) / (2 kappa)``, so ``B ~ kappa^{(d-3)/2}``: polynomial, not
  exponential (the token-sample thread's ``sqrt(n) RMSE ~ kappa^{(d-3)/4}`` at budget m).
* Mixture: the same formula with the mixture's tilt (a mixture of tilted components with
  weights ``softmax_k(log pi_k + a.m_k + a^T S_k a / 2)``).
* ``kappa_n -> E e^{2s} / (E e^s)^2``: ``e^{sigma^2}`` for Gaussians, the bracket above for the
  sphere.
* Importance sampling from p: ``Var_p -> tr(V Cov_a V^T)``, for Gaussians ``tr(V Sigma V^T)``,
  flat in sigma. Optimal proposal: ``G_n -> E_a ||V (y - gamma(a))||``; for Gaussians the mean
  norm of ``N(0, V Sigma V^T)``, computed from ``sqrt(c) = (4 pi)^{-1/2} int_0^inf (1 - e^{-tc})
  t^{-3/2} dt``, i.e. ``E||g|| = (4 pi)^{-1/2} int (1 - prod_i (1 + 2 lambda_i t)^{-1/2})
  t^{-3/2} dt``.

3. When the rate -1/2 in m holds [D]
------------------------------------
Section 1 gives the relative correction ``c2 / (c1 m)``, so the first-order law needs
``m >> m_2 = |c2| / c1``. The issue's scale kappa_n appears through ``E e^2 = kappa_n - 1``, but
``c2`` is dominated by ``E[||u||^2 e] ~ n^2 sum p^3 ||v - ybar||^2``, a third moment of the
weights. For Gaussian tokens (n -> infinity), with ``T = tr V Sigma V^T``, ``w = V Sigma a``::

    c1 = e^{s2} (T + |w|^2),  E[||u||^2 r] = e^{3 s2} (T + 4|w|^2),  E e^2 = e^{s2} - 1,
    E[u e] = e^{s2} w   (s2 = sigma^2),
    c2 = -2 (e^{3 s2}(T + 4|w|^2) - e^{s2}(T + |w|^2)) + 3 e^{s2}(T + |w|^2)(e^{s2} - 1)
         + 6 e^{2 s2} |w|^2,

so ``m_2 ~ 2 e^{2 sigma^2} (T + 4|w|^2)/(T + |w|^2)``: the rate -1/2 needs m well above
``e^{2 sigma^2}``, the square of kappa = e^{sigma^2}. "m >> kappa_n" is necessary, not sufficient
(a correction to the issue). Below m_2 the MSE lies *under* the first-order line (c2 < 0: the
rare heavy keys are missed), so a log-log fit there is flatter than -1/2.
(``test_gaussian_second_order_constant``, ``test_pre_asymptotic_regime_below_m2``.)

Finite n caps all of this: the given-token forms (``B_n``, ``pre_asymptotic_scale``) are exact
for the run's own keys, while the law-level constants are reached only when n itself is in its
CLT regime -- the empirical ``B_n`` averages ``e^{2s}``, whose relative variance is
``(e^{4 sigma^2} - 1)/n`` for Gaussian tokens, so ``B_n -> B`` needs ``n >> e^{4 sigma^2}``
(at sigma = 1.5, n = 2^16 the measured B_n is 40 against B = 59). Compare measurements with the
given-token predictions where the law-level ones are not yet reached, and say which was used.
The same holds for the top-k variance of section 4 (its moments involve ``e^{2 sigma^2}``).

4. Top-k and any deterministic kept set [R]
-------------------------------------------
``ybar = (1 - tau_S) mu_H + tau_S mu_T``, hence the identity ``ybar - yhat_S = tau_S (mu_T - mu_H)``
with ``yhat_S = mu_H``; equivalently ``tau_S/(1 - tau_S) (mu_T - ybar)``.
(``test_topk_identity``.)

Gaussian tokens, n -> infinity, keep the fraction f of keys with the largest scores, so the
threshold is ``t = sigma z_f`` with ``z_f = Phi^{-1}(1 - f)``. Under the tilt by a, the score is
``N(sigma^2, sigma^2)`` and ``E[y | s] = m + Sigma a (s - a.m)/sigma^2`` (linear regression on s,
the same under any tilt along a). With ``c = z_f - sigma`` and the inverse Mills ratio
``lambda(c) = phi(c) / (1 - Phi(c))``::

    tau(f)            = Phi(z_f - sigma),
    ybar - yhat_topk  -> -(V Sigma a / sigma) * lambda(z_f - sigma),
    ||ybar - yhat||   -> (||V Sigma a|| / sigma) * lambda(z_f - sigma).

(``E[Z | Z > c] = lambda(c)``, ``E[Z | Z < c] = -phi(c)/Phi(c)``; multiplying the difference by
``tau = Phi(c)`` leaves ``-phi(c)/(1 - Phi(c))``.) The issue's formula is right with the missing
factor equal to 1; the kept set overshoots along ``V Sigma a``. As sigma grows, lambda(c) ~ phi(c)
= O(e^{-sigma^2/2}); as sigma -> 0 the error tends to ``||V Sigma a_hat|| phi(z_f)/f`` with
``a_hat = a / sqrt(a^T Sigma a)``: O(1) and independent of n. [R]
(``test_gaussian_topk_law_against_quadrature``, ``test_gaussian_topk_mse_against_monte_carlo``.)

Finite n [D]: the top-k output and ybar are both functionals of the empirical law; with the
quantile's influence function ``(1{s > t} - f)/f_s(t)``, the difference has influence function ::

    IF(y) = [1{s>t} e^s (v - mu_H) - e^t (m(t) - mu_H)(1{s>t} - f)] / D  -  e^s (v - mu) / Z,

``D = E[e^s 1{s > t}]``, ``m(t) = E[v | s = t]``, so ``E||ybar - yhat||^2 ~ bias^2 + E||IF||^2 / n``.
Splitting ``v = u s/sigma + xi`` (``u = V Sigma a / sigma``, xi independent of s with
``E||xi||^2 = T - |u|^2``) reduces ``E||IF||^2`` to one-dimensional truncated moments
``E[e^{k s} Z^j 1{Z > z_f}]``, written in closed form (``gaussian_topk_variance``).

Sphere and mixture: the same identity with the law's own score distribution. Sphere: the cosine
``t`` of the angle to a has density ∝ (1 - t^2)^{(d-3)/2} (so ``(1 + t)/2 ~ Beta((d-1)/2,
(d-1)/2)``), the score is ``kappa t``, ``E[y | t] = rho t a_hat``, and tau and the error are
one-dimensional integrals. Mixture: each component is a Gaussian with its own score law, so the
threshold solves ``sum_k pi_k (1 - Phi((t - a.m_k)/sigma_k)) = f`` and the tail mass and tail
mean are sums of truncated-normal terms. The Gaussian tail-mass law applied to sphere tokens
with the same sigma is wrong (d = 3, kappa = 4, f = 0.1: 0.152 against the sphere's 0.449): the
negative control of the study (``test_gaussian_tail_law_fails_on_the_sphere``).

5. Top-k against uniform at equal budget: the crossover sigma* [D]
------------------------------------------------------------------
At budget m = f n, uniform sampling without replacement costs ``(1 - f) n/(n - 1) B / m`` and
top-k costs ``bias^2 + var/n`` (section 4). For isotropic tokens ``Sigma = s^2 I_d`` and
``V = I`` everything scales with s^2, so the comparison depends on (f, n, d) and sigma only::

    uniform(sigma) = e^{sigma^2} (d + sigma^2)(1 - f)/(f (n - 1)),
    topk(sigma)    = lambda(z_f - sigma)^2 + var(sigma)/n        (in units of s^2).

The first increases and the second decreases in sigma, so there is one crossing sigma*(f, n, d)
(0 if top-k already wins at sigma -> 0). Above sigma* top-k wins. (``crossover_sigma``;
``test_crossover_is_a_sign_change_of_measured_errors``.)

Finite n: near sigma* the law-level B is usually not reached (section 3: n >> e^{4 sigma^2}),
the measured uniform error is smaller, and the measured crossover sits above sigma*. Seeded
Monte Carlo (f = 0.1, n = 2048, d = 4, 300 prompts per sigma): MSE_uniform - MSE_topk =
-0.169 +- 0.013 at sigma = 1.60 (= sigma*), +0.001 +- 0.023 at 1.75, +0.184 +- 0.024 at 1.90, with
E[B_n] = 63, 93, 142 against B = 85, 151, 281. ``crossover_sigma(..., uniform_constant=)`` takes
a replacement for B (e.g. an interpolation of the run's measured B_n against sigma).

6. The hybrid: top-k1 plus b uniform draws of the tail, reweighted [D]
----------------------------------------------------------------------
Heavy set H (``|H| = k1``), tail T (n_T = n - k1 keys), b draws from T with weight n_T/b. Divided by
the true normaliser, the numerator error is the mean of b i.i.d. ``u = n_T p_J (v_J - ybar) -
tau (mu_T - ybar)`` and the denominator is ``1 + mean(e)``, ``e = n_T p_J - tau`` (J uniform on
T): the structure of section 1, so ::

    E||yhat - ybar||^2 = [n_T sum_T p_j^2 ||v_j - ybar||^2 - tau^2 ||mu_T - ybar||^2] / b + c2/b^2,

times ``(n_T - b)/(n_T - 1)`` without replacement. k1 = 0 gives back B_n / m. For Gaussian tokens
keeping the top fraction f1 (``c1 = z_{f1} - sigma``, ``c2' = z_{f1} - 2 sigma``):
``b * MSE -> (1 - f1) e^{sigma^2} [Phi(c2')(T - |u|^2) + |u|^2((1 + sigma^2)Phi(c2') - (c2' +
2 sigma) phi(c2'))] - |u|^2 phi(c1)^2``. (``test_hybrid_against_exact_enumeration``,
``test_gaussian_hybrid_constant``.)

7. vAttention's budget rule [R for the Gaussian limit; C for the extremal bound]
--------------------------------------------------------------------------------
The rule (Desai et al. 2025): keep heavy keys, sample b of the n_s others uniformly with weight
n_s/b, and choose ``b = (z n_s sd / tau)^2`` (clipped to [1, n_s]) so that the CLT standard
deviation of the estimated sum, ``n_s sd / sqrt(b)``, equals ``tau / z``. The paper writes
``z = Phi^{-1}(1 - delta/2)`` (two-sided); the public code uses ``Phi^{-1}(1 - delta)``
(``scipy.stats.norm.ppf(1 - delta)``), floors b and estimates sd with Bessel's correction.
``quantile="two_sided"`` / ``"one_sided"`` is that convention.

* Scalar sum (the denominator-only rule): the error is ~N(0, tau^2/z^2), so
  ``P(|err| > tau) = 2(1 - Phi(z))``: delta as published, **2 delta** as implemented.
* Vector sum in d dimensions (``sd = sqrt(tr Sigma_s)``): the error is ``N(0, C)`` with
  ``tr C = tau^2/z^2`` and ``||err||^2 / tr C = sum_i lambda_i Z_i^2`` (lambda = eigenvalues of C
  over its trace, summing to 1). ``P(||err|| > tau) = P(sum lambda_i Z_i^2 > z^2)``, computed
  exactly by Imhof's formula. For isotropic C it is ``P(chi2_d > d z^2)`` -- far below delta
  (d = 16, z = 1.96: 3e-7): in d dimensions the trace rule is conservative by orders of
  magnitude. The rank-one case is the worst: for thresholds ``x >= 1.5365`` the supremum of
  ``P(sum lambda_i Z_i^2 >= x)`` over ``sum lambda_i = 1`` is ``P(Z^2 >= x)`` (Szekely &
  Bakirov 2003) [C, checked in ``test_extremal_quadratic_form``], so the rule's exceedance is at
  most ``2(1 - Phi(z))``: <= delta as published, <= 2 delta as implemented, for
  ``z >= 1.24``.
* Flooring b, the Bessel-corrected sd and sampling without replacement all move the true
  exceedance; ``vattention_exceedance`` takes b as used and the population covariance.
* Outside the CLT regime (lognormal weights of large sigma) the Gaussian approximation fails:
  the Berry-Esseen scale ``b_3 = (E|x - Ex|^3 / Var^{3/2})^2`` grows like ``e^{3 sigma^2}`` for
  ``x = e^s``; below it the exceedance is not predicted (``clt_scale``).

8. Token Sparse Attention's coverage rule [R]
---------------------------------------------
Drop the lowest-attention keys until their share reaches tau_cov, keep at least m_min. For any
kept set S, by section 4 and because mu_T and mu_H are convex combinations, ::

    ||ybar - yhat_S|| = tau_S ||mu_T - mu_H|| <= tau_S max_{i in T} ||v_i - mu_H||
                      <= tau_S max_{i in T, j in S} ||v_i - v_j|| <= tau_S diam(V supp).

With the query's own scores and the convention "the dropped share stays <= tau_cov",
``tau_S <= tau_cov`` and so ``error <= tau_cov diam(V supp)``; with the implemented convention
("drop until the cumulative share reaches tau_cov", i.e. one key more) ``tau_S < tau_cov +
min_{j in S} p_j``. The bound is only as good as tau_S: with a proxy (the mean softmax of other
queries, pooled over positions) the kept set is chosen for the proxy distribution and the
query's own tau_S is unconstrained, so nothing transfers -- it must be measured. For the sphere
``diam(V supp) = 2 rho ||V||_2``. (``test_coverage_bound``.)
"""
from __future__ import annotations

import math

import numpy as np
from scipy import integrate, optimize, special, stats

__all__ = [  # sorted; see the module docstring for the sections
    "QUANTILES",
    "attention_output",
    "clt_scale",
    "coefficients_from_sums",
    "coverage_bounds",
    "coverage_error_bound",
    "crossover_sigma",
    "gaussian_hybrid_constant",
    "gaussian_importance_constant",
    "gaussian_kish_ratio",
    "gaussian_norm_mean",
    "gaussian_optimal_constant",
    "gaussian_topk_bias",
    "gaussian_topk_error",
    "gaussian_topk_mse",
    "gaussian_topk_tail_mass",
    "gaussian_topk_variance",
    "gaussian_uniform_constant",
    "gaussian_uniform_mse",
    "gaussian_uniform_second_order",
    "hybrid_coefficients",
    "hybrid_mse",
    "importance_mse",
    "inverse_mills",
    "kept_set_error",
    "kish_ratio",
    "law_uniform_constant",
    "lognormal_clt_scale",
    "mixture_tilt",
    "mixture_topk",
    "mixture_uniform_constant",
    "optimal_constant",
    "optimal_proposal",
    "pre_asymptotic_scale",
    "quadratic_form_sf",
    "rank_one_exceedance",
    "sampling_coefficients",
    "score_sigma",
    "softmax_weights",
    "sphere_importance_constant",
    "sphere_kish_ratio",
    "sphere_tilt",
    "sphere_topk",
    "sphere_uniform_constant",
    "sphere_value_diameter",
    "tail_mass",
    "uniform_constant",
    "uniform_mse",
    "vattention_budget",
    "vattention_exceedance",
    "vattention_quantile",
    "weighted_variance",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _finite(x, what: str):
    x = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(x)):
        raise FloatingPointError(f"{what} is not finite (over- or underflow); reduce the score spread")
    return x


def _vmat(V, d: int) -> np.ndarray:
    return np.eye(d) if V is None else np.asarray(V, dtype=float)


def _values(v, s):
    v = np.asarray(v, dtype=float)
    if v.ndim == 1:
        v = v[:, None]
    return np.broadcast_to(v, s.shape + v.shape[-1:])


# ================================================================ finite-sample forms
def softmax_weights(s) -> np.ndarray:
    """p_j = e^{s_j} / sum_i e^{s_i} over the last axis (max-shifted, float64)."""
    s = np.asarray(s, dtype=float)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True)


def attention_output(s, v) -> np.ndarray:
    """ybar = sum_j p_j v_j, shape (..., dv)."""
    s = np.asarray(s, dtype=float)
    p = softmax_weights(s)
    return np.einsum("...n,...nk->...k", p, _values(v, s))


def tail_mass(s, keep) -> np.ndarray:
    """tau_S = sum of p_j over the keys NOT in the boolean mask ``keep`` (..., n)."""
    p = softmax_weights(s)
    return np.sum(np.where(np.asarray(keep, dtype=bool), 0.0, p), axis=-1)


def kish_ratio(s) -> np.ndarray:
    """kappa_n = n sum_j p_j^2 (1 for flat attention, n for a single key)."""
    p = softmax_weights(s)
    return p.shape[-1] * np.sum(p * p, axis=-1)


def _dev(s, v):
    s = np.asarray(s, dtype=float)
    p = softmax_weights(s)
    vv = _values(v, s)
    ybar = np.einsum("...n,...nk->...k", p, vv)
    dev2 = np.sum((vv - ybar[..., None, :]) ** 2, axis=-1)
    return p, vv, ybar, dev2


def weighted_variance(s, v) -> np.ndarray:
    """Var_p = sum_j p_j ||v_j - ybar||^2 (importance sampling from p costs Var_p / m)."""
    p, _, _, dev2 = _dev(s, v)
    return np.sum(p * dev2, axis=-1)


def uniform_constant(s, v) -> np.ndarray:
    """B_n = n sum_j p_j^2 ||v_j - ybar||^2 (uniform sampling costs B_n / m)."""
    p, _, _, dev2 = _dev(s, v)
    return p.shape[-1] * np.sum(p * p * dev2, axis=-1)


def optimal_proposal(s, v) -> np.ndarray:
    """q*_j ∝ p_j ||v_j - ybar||, the proposal minimising the first-order MSE (section 1)."""
    p, _, _, dev2 = _dev(s, v)
    g = p * np.sqrt(dev2)
    tot = g.sum(axis=-1, keepdims=True)
    if np.any(tot <= 0):
        raise ValueError("every value equals the output: the optimal proposal is undefined (zero error)")
    return g / tot


def optimal_constant(s, v) -> np.ndarray:
    """G_n^2 = (sum_j p_j ||v_j - ybar||)^2: m times the first-order MSE under q*."""
    p, _, _, dev2 = _dev(s, v)
    return np.sum(p * np.sqrt(dev2), axis=-1) ** 2


def _coefficients(q, u, e):
    """(c1, c2) of section 1 for i.i.d. draws from q (..., N) of u (..., N, dv), e (..., N)
    with E_q u = 0 and E_q e = 0."""
    uu = np.sum(u * u, axis=-1)
    Euu = np.sum(q * uu, axis=-1)
    Ee2 = np.sum(q * e * e, axis=-1)
    Euue = np.sum(q * uu * e, axis=-1)
    Eue = np.einsum("...n,...nk->...k", q * e, u)
    c1 = Euu
    c2 = -2.0 * Euue + 3.0 * (Euu * Ee2 + 2.0 * np.sum(Eue * Eue, axis=-1))
    return c1, c2, Euue, Euu * Ee2 + 2.0 * np.sum(Eue * Eue, axis=-1)


def sampling_coefficients(s, v, q=None):
    """(c1, c2) of the self-normalised estimator with m i.i.d. draws from the proposal ``q``
    (..., n) (uniform when None): MSE = c1/m + c2/m^2 + O(m^-3) (section 1)."""
    p, vv, ybar, _ = _dev(s, v)
    n = p.shape[-1]
    q = np.full(p.shape, 1.0 / n) if q is None else np.broadcast_to(np.asarray(q, dtype=float), p.shape)
    if np.any(q < 0) or np.any((q == 0) & (p > 0)):
        raise ValueError("the proposal must be positive wherever p is")
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(q > 0, p / np.where(q > 0, q, 1.0), 0.0)
    u = r[..., None] * (vv - ybar[..., None, :])
    c1, c2, _, _ = _coefficients(q, u, r - 1.0)
    return c1, c2


def uniform_mse(s, v, m, *, replace: bool = True, order: int = 1) -> np.ndarray:
    """E||yhat - ybar||^2 of uniform sampling of m keys (section 1): ``B_n/m``, times
    ``(n-m)/(n-1)`` without replacement; ``order=2`` (with replacement only) adds ``c2/m^2``."""
    if order not in (1, 2):
        raise ValueError("order must be 1 or 2")
    if order == 2 and not replace:
        raise ValueError("the second-order term is derived for sampling with replacement only")
    c1, c2 = sampling_coefficients(s, v)
    n = np.shape(s)[-1]
    m = np.asarray(m, dtype=float)
    if np.any(m < 1) or (not replace and np.any(m > n)):
        raise ValueError("need 1 <= m (and m <= n without replacement)")
    if replace:
        return c1 / m + (c2 / m**2 if order == 2 else 0.0)
    return c1 / m * ((n - m) / (n - 1.0) if n > 1 else 0.0 * m)


def importance_mse(s, v, m, proposal="p", *, order: int = 1) -> np.ndarray:
    """E||yhat - ybar||^2 of importance sampling with m draws (with replacement).

    ``proposal="p"``: Var_p / m, exact. ``"optimal"``: G_n^2 / m (+ c2/m^2 with ``order=2``).
    An array: a proposal q over the keys."""
    s = np.asarray(s, dtype=float)
    m = np.asarray(m, dtype=float)
    if isinstance(proposal, str) and proposal == "p":
        return weighted_variance(s, v) / m
    if isinstance(proposal, str) and proposal != "optimal":
        raise ValueError(f"unknown proposal {proposal!r}; use 'p', 'optimal' or an array")
    q = optimal_proposal(s, v) if isinstance(proposal, str) else proposal
    c1, c2 = sampling_coefficients(s, v, q)
    return c1 / m + (c2 / m**2 if order == 2 else 0.0)


def pre_asymptotic_scale(s, v):
    """(kappa_n, m_2): the Kish ratio and the budget ``|c2|/c1`` of uniform sampling with
    replacement above which the first-order law (rate -1/2 in m) holds (section 3)."""
    c1, c2 = sampling_coefficients(s, v)
    return kish_ratio(s), np.abs(c2) / c1


def hybrid_coefficients(s, v, heavy):
    """(c1, c2, tau) of the hybrid (section 6): keep the boolean mask ``heavy`` (..., n), draw
    uniformly with replacement from the rest with weight n_T/b. MSE = c1/b + c2/b^2 + O(b^-3)."""
    p, vv, ybar, _ = _dev(s, v)
    heavy = np.broadcast_to(np.asarray(heavy, dtype=bool), p.shape)
    nT = np.sum(~heavy, axis=-1)
    if np.any(nT < 1):
        raise ValueError("the hybrid needs at least one key outside the heavy set")
    q = np.where(heavy, 0.0, 1.0 / np.maximum(nT, 1)[..., None])
    dv = vv - ybar[..., None, :]
    tail_sum = np.einsum("...n,...nk->...k", np.where(heavy, 0.0, p), dv)  # tau (mu_T - ybar)
    tau = np.sum(np.where(heavy, 0.0, p), axis=-1)
    pt = np.where(heavy, 0.0, nT[..., None] * p)
    u = pt[..., None] * dv - tail_sum[..., None, :]
    e = pt - tau[..., None]
    u = np.where(heavy[..., None], 0.0, u)
    e = np.where(heavy, 0.0, e)
    c1, c2, _, _ = _coefficients(q, u, e)
    return c1, c2, tau


def coefficients_from_sums(n_tail, tau, A1, A2, A3, P2, V2):
    """(c1, c2) of sections 1 and 6 from weighted power sums over the sampled keys T (uniform
    draws from T, weight n_T/b; T = every key gives uniform sampling): with d = v - ybar,
    ``tau = sum_T p``, ``A1 = sum_T p d``, ``A2 = sum_T p^2 |d|^2``, ``A3 = sum_T p^3 |d|^2``,
    ``P2 = sum_T p^2``, ``V2 = sum_T p^2 d`` (vectors on the last axis), so that the given-token
    predictions need one streamed pass over the keys instead of (q, n, dv) arrays::

        E|u|^2 = n_T A2 - |A1|^2,   E e^2 = n_T P2 - tau^2,   E[u e] = n_T V2 - tau A1,
        E[|u|^2 e] = n_T^2 A3 - tau n_T A2 - 2 n_T <V2, A1> + 2 tau |A1|^2,

    ``c1 = E|u|^2``, ``c2 = -2 E[|u|^2 e] + 3 (E|u|^2 E e^2 + 2 |E[u e]|^2)`` (section 1 with
    u = n_T p_J d_J - A1, e = n_T p_J - tau)."""
    nT = np.asarray(n_tail, dtype=float)
    tau, A2, A3, P2 = (np.asarray(x, dtype=float) for x in (tau, A2, A3, P2))
    A1, V2 = np.asarray(A1, dtype=float), np.asarray(V2, dtype=float)
    t2 = np.sum(A1 * A1, axis=-1)
    Euu = nT * A2 - t2
    Ee2 = nT * P2 - tau * tau
    Eue = nT[..., None] * V2 - tau[..., None] * A1
    Euue = nT * nT * A3 - tau * nT * A2 - 2 * nT * np.sum(V2 * A1, axis=-1) + 2 * tau * t2
    c1 = np.maximum(Euu, 0.0)
    c2 = -2.0 * Euue + 3.0 * (Euu * Ee2 + 2.0 * np.sum(Eue * Eue, axis=-1))
    return c1, c2


def hybrid_mse(s, v, heavy, b, *, replace: bool = True, order: int = 1) -> np.ndarray:
    """E||yhat - ybar||^2 of the hybrid with b tail draws (section 6); without replacement the
    first-order term carries (n_T - b)/(n_T - 1) (order 1 only)."""
    c1, c2, _ = hybrid_coefficients(s, v, heavy)
    b = np.asarray(b, dtype=float)
    if replace:
        return c1 / b + (c2 / b**2 if order == 2 else 0.0)
    if order != 1:
        raise ValueError("the hybrid without replacement has a first-order form only")
    nT = np.sum(~np.broadcast_to(np.asarray(heavy, dtype=bool), np.shape(s)), axis=-1)
    return c1 / b * np.where(nT > 1, (nT - b) / np.maximum(nT - 1.0, 1.0), 0.0)


def kept_set_error(s, v, keep):
    """For a deterministic kept set: ``(ybar - yhat_S, tau_S (mu_T - mu_H), tau_S)`` -- the first
    two are equal (the identity of section 4)."""
    p, vv, ybar, _ = _dev(s, v)
    keep = np.broadcast_to(np.asarray(keep, dtype=bool), p.shape)
    ph = np.where(keep, p, 0.0)
    pt = p - ph
    tau = pt.sum(axis=-1)
    if np.any(ph.sum(axis=-1) <= 0):
        raise ValueError("the kept set must carry positive mass")
    mu_h = np.einsum("...n,...nk->...k", ph, vv) / (1 - tau)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_t = np.einsum("...n,...nk->...k", pt, vv) / np.where(tau > 0, tau, 1.0)[..., None]
    rhs = tau[..., None] * np.where(tau[..., None] > 0, mu_t - mu_h, 0.0)
    return ybar - mu_h, rhs, tau


def coverage_bounds(s, v, keep):
    """The chain of bounds of section 8 for a kept set: returns ``(error, b1, b2, b3)`` with
    ``error = ||ybar - yhat_S||``, ``b1 = tau_S max_{i in T}||v_i - mu_H||``,
    ``b2 = tau_S max_{i in T, j in S}||v_i - v_j||``, ``b3 = tau_S diam{v_j}``."""
    p, vv, ybar, _ = _dev(s, v)
    keep = np.broadcast_to(np.asarray(keep, dtype=bool), p.shape)
    err_vec, _, tau = kept_set_error(s, v, keep)
    mu_h = ybar - err_vec
    dist_h = np.linalg.norm(vv - mu_h[..., None, :], axis=-1)
    b1 = tau * np.max(np.where(keep, 0.0, dist_h), axis=-1)
    pair = np.linalg.norm(vv[..., :, None, :] - vv[..., None, :, :], axis=-1)
    cross = np.where((~keep)[..., :, None] & keep[..., None, :], pair, 0.0)
    b2 = tau * cross.max(axis=(-1, -2))
    b3 = tau * pair.max(axis=(-1, -2))
    return np.linalg.norm(err_vec, axis=-1), b1, b2, b3


# ============================================================== token laws (n -> inf)
def score_sigma(a, Sigma) -> np.ndarray:
    """sigma = sqrt(a^T Sigma a): the standard deviation of the scores under N(., Sigma)."""
    a = np.asarray(a, dtype=float)
    return np.sqrt(np.einsum("...i,ij,...j->...", a, np.asarray(Sigma, dtype=float), a))


def _gauss_parts(a, Sigma, V):
    a = np.asarray(a, dtype=float)
    Sigma = np.asarray(Sigma, dtype=float)
    Vm = _vmat(V, a.shape[-1])
    s2 = np.einsum("...i,ij,...j->...", a, Sigma, a)
    T = np.trace(Vm @ Sigma @ Vm.T)
    w = (a @ Sigma) @ Vm.T  # V Sigma a, (..., dv)
    return s2, T, w


def gaussian_uniform_constant(a, Sigma, V=None) -> np.ndarray:
    """B = e^{sigma^2} (tr V Sigma V^T + ||V Sigma a||^2): m times the uniform MSE (section 2)."""
    s2, T, w = _gauss_parts(a, Sigma, V)
    return _finite(np.exp(s2) * (T + np.sum(w * w, axis=-1)), "the uniform constant")


def gaussian_uniform_second_order(a, Sigma, V=None) -> np.ndarray:
    """c2 of uniform sampling with replacement for Gaussian tokens, n -> infinity (section 3)."""
    s2, T, w = _gauss_parts(a, Sigma, V)
    w2 = np.sum(w * w, axis=-1)
    e1, e2, e3 = np.exp(s2), np.exp(2 * s2), np.exp(3 * s2)
    c2 = -2 * (e3 * (T + 4 * w2) - e1 * (T + w2)) + 3 * e1 * (T + w2) * (e1 - 1) + 6 * e2 * w2
    return _finite(c2, "the second-order constant")


def gaussian_kish_ratio(sigma) -> np.ndarray:
    """kappa = E e^{2s} / (E e^s)^2 = e^{sigma^2} for Gaussian scores."""
    return _finite(np.exp(np.asarray(sigma, dtype=float) ** 2), "kappa")


def gaussian_importance_constant(a, Sigma, V=None) -> np.ndarray:
    """Var_p -> tr(V Sigma V^T), independent of a (importance sampling from p)."""
    s2, T, _ = _gauss_parts(a, Sigma, V)
    return np.broadcast_to(T, np.shape(s2)).astype(float)


def gaussian_norm_mean(C) -> float:
    """E||g|| for g ~ N(0, C) (C symmetric PSD), from
    ``E||g|| = (4 pi)^{-1/2} int_0^inf (1 - prod_i (1 + 2 lambda_i t)^{-1/2}) t^{-3/2} dt``."""
    lam = np.clip(np.linalg.eigvalsh(np.asarray(C, dtype=float)), 0.0, None)
    lam = lam[lam > 0]
    if lam.size == 0:
        return 0.0
    scale = lam.max()
    lam = lam / scale

    def f(t):
        return -np.expm1(-0.5 * np.sum(np.log1p(2 * lam * t))) * t**-1.5

    val = integrate.quad(f, 0, 1, limit=200)[0] + integrate.quad(f, 1, np.inf, limit=200)[0]
    return float(val / math.sqrt(4 * math.pi) * math.sqrt(scale))


def gaussian_optimal_constant(a, Sigma, V=None) -> np.ndarray:
    """G^2 = (E||N(0, V Sigma V^T)||)^2: m times the MSE under the optimal proposal."""
    Sigma = np.asarray(Sigma, dtype=float)
    a = np.asarray(a, dtype=float)
    Vm = _vmat(V, a.shape[-1])
    g = gaussian_norm_mean(Vm @ Sigma @ Vm.T)
    return np.full(a.shape[:-1], g * g)


# --- sphere
def _log_iv(nu, x):
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore"):
        out = np.log(special.ive(nu, x)) + x
    small = ~np.isfinite(out) | (x < 1e-8)
    if np.any(small):  # I_nu(x) ~ (x/2)^nu / Gamma(nu + 1) (1 + x^2 / (4 (nu + 1)))
        xs = np.maximum(x[small], 1e-300)
        out = np.where(small, 0, out)
        out[small] = nu * np.log(xs / 2) - special.gammaln(nu + 1) + np.log1p(xs**2 / (4 * (nu + 1)))
    return out


def _bessel_ratio(nu, x):
    """A_nu(x) = I_{nu+1}(x)/I_nu(x) with A(0) = 0; Gauss' continued fraction where the scaled
    Bessel functions underflow."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = special.ive(nu, x)
        r = special.ive(nu + 1, x) / den
    bad = ~np.isfinite(r) | (den < 1e-280)
    if np.any(bad):
        xb = x[bad]
        t = np.full_like(xb, 2 * (nu + 80))
        for k in range(79, 0, -1):
            t = 2 * (nu + k) + xb**2 / t
        r = np.array(r, dtype=float)
        r[bad] = xb / t
    return np.where(x == 0, 0.0, r)


def _bessel_ratio_parts(nu, x):
    """(A(x), A'(x), A(x)/x) with their x -> 0 limits."""
    x = np.asarray(x, dtype=float)
    A = _bessel_ratio(nu, x)
    small = x < 1e-6 * (nu + 1)
    xs = np.where(small, 1.0, x)
    dA = np.where(small, 1.0 / (2 * (nu + 1)), 1.0 - A * A - (2 * nu + 1) * A / xs)
    Ax = np.where(small, 1.0 / (2 * (nu + 1)), A / xs)
    return A, dA, Ax


def sphere_tilt(a, d: int, radius: float = 1.0):
    """Log-partition, tilted mean and tilted covariance of the uniform sphere S^{d-1}(radius):
    ``(logZ (...), mean (..., d), cov (..., d, d))``."""
    a = np.asarray(a, dtype=float)
    nu = d / 2 - 1
    norm = np.linalg.norm(a, axis=-1)
    kappa = radius * norm
    u = a / np.where(norm > 0, norm, 1.0)[..., None]
    with np.errstate(divide="ignore"):
        logZ = special.gammaln(nu + 1) + nu * np.log(2.0 / np.maximum(kappa, 1e-300)) + _log_iv(nu, kappa)
    logZ = np.where(kappa < 1e-12, 0.0, logZ)
    A, dA, Ax = _bessel_ratio_parts(nu, kappa)
    mean = (radius * A)[..., None] * u
    uu = u[..., :, None] * u[..., None, :]
    cov = radius**2 * (dA[..., None, None] * uu + Ax[..., None, None] * (np.eye(d) - uu))
    return logZ, mean, cov


def _sphere_ratio_log(kappa, d):
    """log E e^{2s} / (E e^s)^2 = log[kappa^nu I_nu(2 kappa) / (Gamma(nu+1) 4^nu I_nu(kappa)^2)]."""
    nu = d / 2 - 1
    kappa = np.asarray(kappa, dtype=float)
    ks = np.maximum(kappa, 1e-300)
    val = nu * np.log(ks) + _log_iv(nu, 2 * ks) - special.gammaln(nu + 1) - nu * np.log(4.0) - 2 * _log_iv(nu, ks)
    return np.where(kappa < 1e-8, 0.0, val)


def sphere_kish_ratio(kappa, d: int) -> np.ndarray:
    """kappa_n -> kappa^nu I_nu(2 kappa) / (Gamma(nu+1) 4^nu I_nu(kappa)^2), nu = d/2 - 1."""
    return _finite(np.exp(_sphere_ratio_log(kappa, d)), "kappa")


def sphere_uniform_constant(a, d: int, radius: float = 1.0, V=None) -> np.ndarray:
    """The closed form of section 2 for the uniform sphere (polynomial ~ kappa^{(d-3)/2})."""
    a = np.asarray(a, dtype=float)
    nu = d / 2 - 1
    Vm = _vmat(V, d)
    norm = np.linalg.norm(a, axis=-1)
    k = radius * norm
    u = a / np.where(norm > 0, norm, 1.0)[..., None]
    Vu2 = np.sum((u @ Vm.T) ** 2, axis=-1)
    F2 = np.sum(Vm * Vm)
    A1, _, _ = _bessel_ratio_parts(nu, k)
    A2, dA2, A2x = _bessel_ratio_parts(nu, 2 * k)
    bracket = radius**2 * (dA2 * Vu2 + A2x * (F2 - Vu2) + (A2 - A1) ** 2 * Vu2)
    return _finite(np.exp(_sphere_ratio_log(k, d)) * bracket, "the sphere constant")


def sphere_importance_constant(a, d: int, radius: float = 1.0, V=None) -> np.ndarray:
    """Var_p -> tr(V Cov_a V^T) for the sphere (decreasing in kappa)."""
    _, _, cov = sphere_tilt(a, d, radius)
    Vm = _vmat(V, d)
    return np.trace(Vm @ cov @ Vm.T, axis1=-2, axis2=-1)


# --- mixture
def mixture_tilt(a, weights, means, covs):
    """Log-partition, tilted mean, tilted covariance of sum_k pi_k N(m_k, S_k)."""
    a = np.asarray(a, dtype=float)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    means = np.asarray(means, dtype=float)
    covs = np.asarray(covs, dtype=float)
    logits = np.log(w) + a @ means.T + 0.5 * np.einsum("...i,kij,...j->...k", a, covs, a)
    centres = means + np.einsum("kij,...j->...ki", covs, a)
    logZ = special.logsumexp(logits, axis=-1)
    alpha = np.exp(logits - logZ[..., None])
    mean = np.einsum("...k,...ki->...i", alpha, centres)
    second = np.einsum("...k,...kij->...ij", alpha, covs + centres[..., :, None] * centres[..., None, :])
    return logZ, mean, second - mean[..., :, None] * mean[..., None, :]


def law_uniform_constant(tilt, a, V=None) -> np.ndarray:
    """B = exp(logZ(2a) - 2 logZ(a)) (tr V Cov_{2a} V^T + ||V(gamma(2a) - gamma(a))||^2) for any
    law given by ``tilt(a) -> (logZ, mean, cov)`` (section 2)."""
    a = np.asarray(a, dtype=float)
    l1, m1, _ = tilt(a)
    l2, m2, c2 = tilt(2 * a)
    Vm = _vmat(V, a.shape[-1])
    dm = (m2 - m1) @ Vm.T
    val = np.exp(l2 - 2 * l1) * (np.trace(Vm @ c2 @ Vm.T, axis1=-2, axis2=-1) + np.sum(dm * dm, axis=-1))
    return _finite(val, "the uniform constant")


def mixture_uniform_constant(a, weights, means, covs, V=None) -> np.ndarray:
    """Section 2's constant for a Gaussian mixture."""
    return law_uniform_constant(lambda b: mixture_tilt(b, weights, means, covs), a, V)


# ======================================================================= top-k
def inverse_mills(c) -> np.ndarray:
    """lambda(c) = phi(c) / (1 - Phi(c)) = E[Z | Z > c], stable in both tails."""
    c = np.asarray(c, dtype=float)
    return np.exp(-0.5 * c * c - _LOG_SQRT_2PI - special.log_ndtr(-c))


def _phi(x):
    return np.exp(-0.5 * np.asarray(x, dtype=float) ** 2 - _LOG_SQRT_2PI)


def _check_f(f):
    f = np.asarray(f, dtype=float)
    if np.any((f <= 0) | (f > 1)):
        raise ValueError("the kept fraction f must lie in (0, 1]")
    return f


def gaussian_topk_tail_mass(f, sigma) -> np.ndarray:
    """tau(f) = Phi(Phi^{-1}(1 - f) - sigma): the attention mass outside the top fraction f."""
    f = _check_f(f)
    return special.ndtr(special.ndtri(1 - f) - np.asarray(sigma, dtype=float))


def _topk_parts(a, Sigma, V):
    s2, T, w = _gauss_parts(a, Sigma, V)
    sigma = np.sqrt(s2)
    if np.any(sigma <= 0):
        raise ValueError("top-k of Gaussian tokens needs a score spread sigma > 0")
    u = w / sigma[..., None]
    return sigma, T, u


def gaussian_topk_bias(f, a, Sigma, V=None) -> np.ndarray:
    """lim (ybar - yhat_topk) = -(V Sigma a / sigma) lambda(z_f - sigma), shape (..., dv)."""
    f = _check_f(f)
    sigma, _, u = _topk_parts(a, Sigma, V)
    h = inverse_mills(special.ndtri(1 - f) - sigma)
    return -h[..., None] * u


def gaussian_topk_error(f, a, Sigma, V=None) -> np.ndarray:
    """lim ||ybar - yhat_topk|| = (||V Sigma a|| / sigma) lambda(Phi^{-1}(1-f) - sigma)."""
    return np.linalg.norm(gaussian_topk_bias(f, a, Sigma, V), axis=-1)


def _tilt_moment(k, j, lo, hi, sigma):
    """E[e^{k sigma Z} Z^j 1{lo < Z < hi}], Z ~ N(0, 1), j = 0, 1, 2."""
    mu = k * sigma
    a_, b_ = lo - mu, hi - mu
    P = special.ndtr(b_) - special.ndtr(a_)
    pa = np.where(np.isfinite(a_), _phi(np.where(np.isfinite(a_), a_, 0.0)), 0.0)
    pb = np.where(np.isfinite(b_), _phi(np.where(np.isfinite(b_), b_, 0.0)), 0.0)
    lo_f = np.where(np.isfinite(lo), lo, 0.0)
    hi_f = np.where(np.isfinite(hi), hi, 0.0)
    if j == 0:
        M = P
    elif j == 1:
        M = mu * P + pa - pb
    else:
        M = (1 + mu * mu) * P + (lo_f + mu) * pa - (hi_f + mu) * pb
    return np.exp(0.5 * mu * mu) * M


def gaussian_topk_variance(f, a, Sigma, V=None) -> np.ndarray:
    """n times the variance of yhat_topk - ybar for n Gaussian tokens: E||IF||^2 (section 4)."""
    f = _check_f(f)
    sigma, T, u = _topk_parts(a, Sigma, V)
    u2 = np.sum(u * u, axis=-1)
    zf = special.ndtri(1 - f)
    c = zf - sigma
    h = inverse_mills(c)
    M0 = np.exp(0.5 * sigma**2)
    D = M0 * special.ndtr(-c)
    t = sigma * zf
    k1 = sigma + h
    inf = np.full(np.shape(zf), np.inf)
    T0, T1, T2 = (_tilt_moment(2, j, zf, inf, sigma) for j in range(3))
    EA2 = (T2 - 2 * k1 * T1 + k1 * k1 * T0) / D**2
    EB2 = np.exp(2 * t) * (c - h) ** 2 * f * (1 - f) / D**2
    EC2 = np.exp(sigma**2) * (1 + sigma**2)
    EAC = -(T2 - (k1 + sigma) * T1 + k1 * sigma * T0) / (D * M0)
    EBC = np.exp(t) * (c - h) * h / M0
    chi2 = EA2 + EB2 + EC2 + 2 * EAC + 2 * EBC
    xi = (T - u2) * (T0 * (1 / D**2 - 2 / (D * M0)) + np.exp(2 * sigma**2) / M0**2)
    val = np.where(f >= 1, 0.0, xi + u2 * chi2)
    return _finite(np.maximum(val, 0.0), "the top-k variance")


def gaussian_topk_mse(f, n, a, Sigma, V=None, *, variance: bool = True) -> np.ndarray:
    """E||ybar - yhat_topk||^2 ~ bias^2 + E||IF||^2 / n for n Gaussian tokens."""
    bias = gaussian_topk_error(f, a, Sigma, V)
    out = bias**2
    if variance:
        out = out + gaussian_topk_variance(f, a, Sigma, V) / np.asarray(n, dtype=float)
    return out


def gaussian_uniform_mse(f, n, a, Sigma, V=None, *, replace: bool = False) -> np.ndarray:
    """Uniform sampling of m = f n of n Gaussian tokens: B/m, times (n - m)/(n - 1) without
    replacement (first order)."""
    f = _check_f(f)
    n = np.asarray(n, dtype=float)
    m = f * n
    out = gaussian_uniform_constant(a, Sigma, V) / m
    return out if replace else out * (n - m) / (n - 1)


def sphere_topk(f, a, d: int, radius: float = 1.0, V=None):
    """Top fraction f of uniform-sphere tokens, n -> infinity: ``(tau, error_vector)`` with
    error_vector = lim (ybar - yhat_topk), by one-dimensional quadrature in the cosine t."""
    f = np.asarray(_check_f(f), dtype=float)
    a = np.asarray(a, dtype=float)
    Vm = _vmat(V, d)
    norm = np.linalg.norm(a, axis=-1)
    if np.any(norm <= 0):
        raise ValueError("top-k on the sphere needs a != 0")
    kappa = radius * norm
    u = a / norm[..., None]
    half = (d - 1) / 2
    f_b, kappa_b = np.broadcast_arrays(f, kappa)
    tau = np.empty(f_b.shape)
    diff = np.empty(f_b.shape)
    for idx in np.ndindex(f_b.shape):
        ff, kk = float(f_b[idx]), float(kappa_b[idx])
        tf = 2 * stats.beta.isf(ff, half, half) - 1 if ff < 1 else -1.0
        # log density of t under the tilt, up to a constant; normalised by its max on [-1, 1]
        peak = _sphere_log_density_max(kk, d)

        def dens(t, j, kk=kk, peak=peak):
            with np.errstate(divide="ignore"):
                lw = kk * t + 0.5 * (d - 3) * np.log1p(-t * t) - peak if d != 3 else kk * t - peak
            return t**j * np.exp(lw)

        pts = [p for p in (tf,) if -1 < p < 1]
        tot = [integrate.quad(dens, -1, 1, args=(j,), points=pts or None, limit=200, epsabs=0, epsrel=1e-12)[0]
               for j in (0, 1)]
        if ff >= 1:
            tau[idx], diff[idx] = 0.0, 0.0
            continue
        lo = [integrate.quad(dens, -1, tf, args=(j,), limit=200, epsabs=0, epsrel=1e-12)[0] for j in (0, 1)]
        tau_ = lo[0] / tot[0]
        mean_all = tot[1] / tot[0]
        # ybar - mu_H = (tail_unnormalised - tau mean_all) / (1 - tau), in units of rho * u
        diff[idx] = (lo[1] / tot[0] - tau_ * mean_all) / (1 - tau_)
        tau[idx] = tau_
    vec = (radius * diff)[..., None] * (u @ Vm.T)
    return tau, vec


def _sphere_log_density_max(kappa, d):
    if d <= 3:
        return kappa
    # maximise kappa t + (d-3)/2 log(1 - t^2): t* = (-(d-3) + sqrt((d-3)^2 + 4 kappa^2)) / (2 kappa)
    if kappa <= 0:
        return 0.0
    q = 0.5 * (d - 3)
    t = (-q + math.sqrt(q * q + kappa * kappa)) / kappa
    return kappa * t + q * math.log1p(-t * t)


def mixture_topk(f, a, weights, means, covs, V=None):
    """Top fraction f of Gaussian-mixture tokens, n -> infinity: ``(tau, error_vector)``."""
    f = np.asarray(_check_f(f), dtype=float)
    a = np.asarray(a, dtype=float)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    means = np.asarray(means, dtype=float)
    covs = np.asarray(covs, dtype=float)
    Vm = _vmat(V, a.shape[-1])
    f_b = np.broadcast_to(f, np.broadcast_shapes(f.shape, a.shape[:-1]))
    a_b = np.broadcast_to(a, f_b.shape + a.shape[-1:])
    tau = np.empty(f_b.shape)
    vec = np.empty(f_b.shape + (Vm.shape[0],))
    for idx in np.ndindex(f_b.shape):
        ff = float(f_b[idx])
        av = a_b[idx]
        mu_k = means @ av
        sk = np.sqrt(np.einsum("i,kij,j->k", av, covs, av))
        if np.any(sk <= 0):
            raise ValueError("every mixture component needs a positive score spread")
        Sa = np.einsum("kij,j->ki", covs, av)
        logit = np.log(w) + mu_k + 0.5 * sk**2
        alpha = np.exp(logit - special.logsumexp(logit))
        centre = means + Sa
        mean_all = alpha @ centre
        if ff >= 1:
            tau[idx] = 0.0
            vec[idx] = 0.0
            continue
        def g(t, mu_k=mu_k, sk=sk, ff=ff):
            return np.sum(w * special.ndtr(-(t - mu_k) / sk)) - ff

        lo_t, hi_t = np.min(mu_k - 40 * sk), np.max(mu_k + 40 * sk)
        t = optimize.brentq(g, lo_t, hi_t, xtol=1e-14, rtol=1e-15, maxiter=500)
        ck = (t - mu_k - sk**2) / sk
        Pk = special.ndtr(ck)
        tau_ = float(alpha @ Pk)
        tail_un = alpha @ (centre * Pk[:, None] - (Sa / sk[:, None]) * _phi(ck)[:, None])
        tau[idx] = tau_
        vec[idx] = Vm @ ((tail_un - tau_ * mean_all) / (1 - tau_))
    return tau, vec


def crossover_sigma(f, n, d, *, replace: bool = False, variance: bool = True, sigma_max: float = 12.0,
                    uniform_constant=None) -> float:
    """sigma* where top-k's MSE equals uniform sampling's at budget m = f n, isotropic Gaussian
    tokens in R^d, V = I (section 5). 0 when top-k already wins as sigma -> 0; inf when uniform
    still wins at ``sigma_max``. ``uniform_constant(sigma) -> B`` replaces the law-level
    e^{sigma^2}(d + sigma^2) (finite-n runs, see section 5)."""
    f = float(_check_f(f))
    if f >= 1:
        raise ValueError("at f = 1 both policies are exact")
    Sigma = np.eye(d)

    def gap(sig):
        a = np.zeros(d)
        a[0] = sig
        uni = gaussian_uniform_mse(f, n, a, Sigma, replace=replace)
        if uniform_constant is not None:
            uni = uni * float(uniform_constant(sig)) / float(gaussian_uniform_constant(a, Sigma))
        top = gaussian_topk_mse(f, n, a, Sigma, variance=variance)
        return float(np.log(uni) - np.log(top))

    lo = 1e-3
    if gap(lo) >= 0:
        return 0.0
    if gap(sigma_max) < 0:
        return math.inf
    return float(optimize.brentq(gap, lo, sigma_max, xtol=1e-10))


# ======================================================================= hybrid
def gaussian_hybrid_constant(f1, a, Sigma, V=None) -> np.ndarray:
    """b times the hybrid's MSE for Gaussian tokens, n -> infinity, heavy set = top fraction f1,
    b draws with replacement from the rest (section 6). f1 = 0 gives the uniform constant."""
    f1 = np.asarray(f1, dtype=float)
    if np.any((f1 < 0) | (f1 >= 1)):
        raise ValueError("the heavy fraction must lie in [0, 1)")
    sigma, T, u = _topk_parts(a, Sigma, V)
    u2 = np.sum(u * u, axis=-1)
    z1 = special.ndtri(1 - f1)
    c1 = z1 - sigma
    c2 = z1 - 2 * sigma
    P2 = special.ndtr(c2)
    ph2 = np.where(np.isfinite(c2), _phi(np.where(np.isfinite(c2), c2, 0.0)), 0.0)
    ph1 = np.where(np.isfinite(c1), _phi(np.where(np.isfinite(c1), c1, 0.0)), 0.0)
    c2f = np.where(np.isfinite(c2), c2, 0.0)
    inner = P2 * (T - u2) + u2 * ((1 + sigma**2) * P2 - (c2f + 2 * sigma) * ph2)
    return _finite((1 - f1) * np.exp(sigma**2) * inner - u2 * ph1**2, "the hybrid constant")


# =================================================================== vAttention
QUANTILES = ("two_sided", "one_sided")


def vattention_quantile(delta, quantile: str = "two_sided") -> np.ndarray:
    """z of the budget rule: Phi^{-1}(1 - delta/2) as published, Phi^{-1}(1 - delta) as
    implemented in the authors' code."""
    delta = np.asarray(delta, dtype=float)
    if np.any((delta <= 0) | (delta >= 1)):
        raise ValueError("delta must lie in (0, 1)")
    if quantile == "two_sided":
        return special.ndtri(1 - delta / 2)
    if quantile == "one_sided":
        return special.ndtri(1 - delta)
    raise ValueError(f"unknown quantile convention {quantile!r}; choose one of {QUANTILES}")


def vattention_budget(n_s, sd, tol, delta, *, quantile: str = "two_sided", rounding: str = "floor"):
    """b = (z n_s sd / tol)^2 clipped to [1, n_s]; ``rounding`` "floor" (the code's integer cast),
    "ceil" (the inequality b >= ... of the paper) or "none" (real-valued)."""
    z = vattention_quantile(delta, quantile)
    n_s = np.asarray(n_s, dtype=float)
    tol = np.asarray(tol, dtype=float)
    if np.any(tol <= 0):
        raise ValueError("the tolerance must be positive")
    b = (z * n_s * np.asarray(sd, dtype=float) / tol) ** 2
    if rounding == "floor":
        b = np.floor(b)
    elif rounding == "ceil":
        b = np.ceil(b)
    elif rounding != "none":
        raise ValueError("rounding must be 'floor', 'ceil' or 'none'")
    return np.clip(b, 1.0, n_s)


def quadratic_form_sf(lam, x) -> float:
    """P(sum_i lam_i Z_i^2 > x) for lam_i >= 0 (Imhof's inversion formula)."""
    lam = np.asarray(lam, dtype=float).ravel()
    lam = lam[lam > 0]
    x = float(x)
    if lam.size == 0:
        return float(x < 0)
    if x <= 0:
        return 1.0
    if lam.size == 1:
        return float(special.chdtrc(1, x / lam[0]))
    if np.allclose(lam, lam[0], rtol=1e-12):
        return float(special.chdtrc(lam.size, x / lam[0]))
    scale = lam.max()
    lam = lam / scale
    x = x / scale

    def integrand(t):
        theta = 0.5 * np.sum(np.arctan(lam * t)) - 0.5 * x * t
        rho = np.exp(0.25 * np.sum(np.log1p((lam * t) ** 2)))
        return math.sin(theta) / (t * rho)

    def amp(t, part):
        # sin(beta - w t) = sin(beta) cos(w t) - cos(beta) sin(w t), beta = sum arctan / 2:
        # the amplitudes are smooth and non-oscillating, so the tail is a Fourier integral (QAWF)
        beta = 0.5 * np.sum(np.arctan(lam * t))
        rho = math.exp(0.25 * float(np.sum(np.log1p((lam * t) ** 2))))
        return (math.sin(beta) if part == 0 else -math.cos(beta)) / (t * rho)

    w = 0.5 * x
    head = integrate.quad(integrand, 0.0, 1.0, limit=200, epsabs=1e-15)[0]
    tail = (integrate.quad(amp, 1.0, np.inf, args=(0,), weight="cos", wvar=w, limlst=200)[0]
            + integrate.quad(amp, 1.0, np.inf, args=(1,), weight="sin", wvar=w, limlst=200)[0])
    return float(min(1.0, max(0.0, 0.5 + (head + tail) / math.pi)))


def rank_one_exceedance(z) -> np.ndarray:
    """2 (1 - Phi(z)): the exceedance of the scalar rule, and the worst case in d dimensions."""
    return 2 * special.ndtr(-np.asarray(z, dtype=float))


def vattention_exceedance(cov, n_s, b, tol, *, replace: bool = True) -> float:
    """P(||err|| > tol) for the CLT error of the estimated sum ``n_s/b sum of b draws``:
    err ~ N(0, (n_s^2 / b) Cov) with ``cov`` the population covariance (1/n_s) of the sampled
    quantity (a scalar variance or a (d, d) matrix), times (n_s - b)/(n_s - 1) without
    replacement."""
    cov = np.atleast_2d(np.asarray(cov, dtype=float))
    fpc = 1.0 if replace else max(0.0, (n_s - b) / max(n_s - 1.0, 1.0))
    lam = np.linalg.eigvalsh(cov) * n_s**2 / b * fpc
    return quadratic_form_sf(np.clip(lam, 0, None), tol**2)


def clt_scale(x, axis=-1) -> np.ndarray:
    """b_3 = (E|x - Ex|^3 / Var(x)^{3/2})^2 of a population: the Berry-Esseen sample size
    (the CLT error of a mean of b draws is <= 0.56 / sqrt(b / b_3))."""
    x = np.asarray(x, dtype=float)
    c = x - x.mean(axis=axis, keepdims=True)
    var = np.mean(c * c, axis=axis)
    m3 = np.mean(np.abs(c) ** 3, axis=axis)
    return (m3 / var**1.5) ** 2


def lognormal_clt_scale(sigma) -> np.ndarray:
    """b_3 of x = e^{sigma Z} (the weights of Gaussian tokens), by quadrature; ~ e^{3 sigma^2}."""
    sig = np.atleast_1d(np.asarray(sigma, dtype=float))
    out = np.empty(sig.shape)
    for i, s in np.ndenumerate(sig):
        if s <= 0:
            raise ValueError("sigma must be positive")
        mean = math.exp(0.5 * s * s)
        var = math.exp(s * s) * math.expm1(s * s)
        def g(z, s=s, mean=mean):
            return abs(math.exp(s * z) - mean) ** 3 * math.exp(-0.5 * z * z - _LOG_SQRT_2PI)

        zc = 0.5 * s  # e^{s z} = mean; the integrand peaks near z = 3 s
        m3 = (integrate.quad(g, -15.0, zc, limit=200)[0]
              + integrate.quad(g, zc, 3 * s + 15.0, limit=200, points=[3 * s])[0])
        out[i] = (m3 / var**1.5) ** 2
    return _finite(out.reshape(np.shape(sigma)), "the Berry-Esseen scale")


# ===================================================================== coverage
def coverage_error_bound(tau, diam) -> np.ndarray:
    """||ybar - yhat_S|| <= tau_S diam(V supp) (section 8)."""
    return np.asarray(tau, dtype=float) * np.asarray(diam, dtype=float)


def sphere_value_diameter(radius: float, V=None) -> float:
    """diam(V S^{d-1}(radius)) = 2 radius ||V||_2."""
    if V is None:
        return 2.0 * radius
    return 2.0 * radius * float(np.linalg.norm(np.asarray(V, dtype=float), 2))
