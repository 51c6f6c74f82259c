"""Closed forms of in-context linear regression with softmax attention (He, Pan, Chen, Yang,
ICML 2025; notes icl_regression §5-8): the reduced (omega, mu) loss and its gradient-flow
ODE, exact and asymptotic risks of the predictors the trained model is compared with, and the
optimal one-step preconditioner for non-isotropic covariates. Pure functions of parameters.

Setting and symbols
-------------------
``x_i, x_q ~ N(0, Sigma)`` (``Sigma = I_d`` unless stated), ``beta ~ N(0, I_d/d)``,
``y = betaᵀx + eps`` with ``eps ~ N(0, sigma2)``, also on the query label, so every risk below
is ``E (ŷ - y_q)^2`` and *includes* ``sigma2``. ``L`` examples per prompt, ``xi = d/L``,
``c = (1 + sigma2)/L``, ``n = L - 1``.

Reduced model (notes icl_regression §5) [C: ``TFEst.approx_loss``, ``utils/funcs.py``; derivation [D]] ::

    ŷ = sum_h mu_h sum_i softmax_i(omega_h x_iᵀx_q) y_i
    L̃(omega, mu) = 1 + sigma2 - 2 muᵀomega + muᵀ A(omega) mu,
    A(omega) = omega omegaᵀ + c exp∘(d omega omegaᵀ)               (exp elementwise)

(softmax denominators replaced by their expectations: a large-L approximation). The ODE is
gradient flow on L̃/2::

    dmu/dt    = omega - A mu
    domega/dt = mu - (muᵀomega) mu - d c (exp∘(d omega omegaᵀ) ⊙ mu muᵀ) omega

Fixed-omega optimum ``mu*(omega) = A^-1 omega``; single head: ``omega^2 = 1/d``,
``mu = sqrt(d)/(1 + e d c)``, ``L̃ = sigma2 + e d c/(1 + e d c)``; every H: ``L̃ >= sigma2 +
d c/(1 + d c)``, approached by zero-sum heads as omega -> 0 with ``2 mu omega -> 1/(1 + d c)``.

Predictor risks (notes icl_regression §6), exact at finite L [D; checked by Monte Carlo in the tests] ::

    GD   ŷ = eta (1/L) sum y_i x_iᵀx_q:       R = sigma2 + (1-eta)^2 + eta^2 (d + 1 + sigma2 d)/L
    DGD  ŷ = eta (1/L) sum y_i (x_i - x̄)ᵀx_q: R = sigma2 + 1 - 2 eta n/L + eta^2 n (n + d + 1 + sigma2 d)/L^2

(Wishart moments E W^2 = n(n + d + 1) I for W ~ W_d(n, I)); optimal steps ``1/(1 + k)``,
``k = (d + 1 + sigma2 d)/L`` (GD) and ``L/(L + d + d sigma2)`` (DGD). Asymptotics (d, L -> inf,
d/L -> xi) [C]: ``R_DGD = sigma2 + xi(1+sigma2)/(1 + xi(1+sigma2))``; the single-head kernel
``R_1 ≈ sigma2 + e xi(1+sigma2)/(1 + e xi(1+sigma2))`` (an approximation: it underestimates the
Monte Carlo value at small L). Bayes: ridge with ``lambda = d sigma2``; given the design the
Bayes risk is ``sigma2 + tr[(XᵀX/sigma2 + d I)^-1]`` (finite L: its average over designs);
Marchenko-Pastur limit [C: ``ridge_loss``] ::

    R_Bayes = ½ [sigma2 + 1 - 1/xi + sqrt((sigma2 + 1/xi - 1)^2 + 4 sigma2)].

Non-isotropic covariates (notes icl_regression §8) [D]: for ``ŷ = x_qᵀ Gamma g`` with
``g = (1/L) sum (x_i - x̄) y_i`` (``centered``) or ``(1/L) sum x_i y_i``, the risk is quadratic in
Gamma and minimised by ::

    uncentred (notes icl_regression §8): Gamma* = ((1 + 1/L) Sigma + ((tr Sigma + d sigma2)/L) I)^-1
    centred:          Gamma* = (Sigma + ((tr Sigma + d sigma2)/L) I)^-1

both reducing to the optimal GD / DGD steps at Sigma = I. Which one the trained model's
``Gamma = sum_h mu_h W_h[:d, :d]`` should match is a convention of the comparison [?]: the
studies record both cosines.

Linear-attention baseline (notes icl_regression §7, reconstructed [?]): a fixed normalisation 1/L_train makes
the learned predictor GD with step ``eta L'/L_train`` at test length ``L'``.

Exact finite-L risk of the softmax kernels [D; checked by Monte Carlo in the tests] ::

    single head  ŷ = mu sum_i softmax_i(omega x_iᵀx_q) y_i
    pair         ŷ = mu [sum_i softmax_i(omega x_iᵀx_q) y_i - sum_i softmax_i(-omega x_iᵀx_q) y_i]

(the two antisymmetric heads of the trained multi-head model, notes icl_regression §4-§6). Given x_q (``s =
|x_q|^2``) and beta, ``(g_i, y_i) = (x_iᵀx_q, y_i)`` are i.i.d. Gaussian with ``y_i = (b/s) g_i
+ r_i``, ``b = betaᵀx_q``, ``r_i`` independent of ``g_i`` with variance ``|beta|^2 + sigma2 -
b^2/s``; averaging over beta ~ N(0, I/d) leaves ::

    R = sigma2 + 1 - 2 mu A + mu^2 B,   A = E_s[sqrt(s) h1(a)]/d,
    B = E_s[h2(a)/d + (1 + sigma2 - 1/d) h3(a)],   a = omega sqrt(s),  s ~ chi^2_d

(single head; the pair has ``A -> 2 A`` and ``B -> 2 (B - C)`` with ``C`` the same average of the
cross moments), where for ``p = softmax(a z_1..a z_L)``, ``z_i`` i.i.d. N(0, 1):
``h1 = E sum p_i z_i``, ``h2 = E (sum p_i z_i)^2``, ``h3 = E sum p_i^2`` and the cross moments
``E (sum p+_i z_i)(sum p-_j z_j)``, ``E sum p+_i p-_i`` of the two antisymmetric softmaxes.
These are computed exactly (to quadrature accuracy ~1e-8) from ``1/D = int_0^inf e^{-tD} dt``
and ``1/D^2 = int t e^{-tD} dt`` (``D`` = the softmax denominator): one-dimensional Gaussian
integrals inside a Laplace integral (a double one for the pair), then Gauss-Laguerre over
``s``. The optimum over ``mu`` is ``A/B``; over ``omega`` it is found numerically
(:func:`kernel_optimum`): at d = 5, L = 40, sigma2 = 0.1 the single head's optimum is
omega = 0.518, mu = 1.50, risk 0.404 (the paper's trained H = 1 values, which the large-L
reduced model misses: 1/sqrt(d) = 0.447), and the pair's profiled risk is flat in omega
(it reaches the DGD optimum as omega -> 0).

Reduced ODE, early stage [D]: from omega = mu = (a, -a) the linearised flow grows like
``a e^t`` (for zero-sum heads ``A mu = O(omega^3)``), so ``L̃ ≈ 1 + sigma2 - 4x + (1 + c d/4)
4 x^2`` with ``x = a^2 e^{2t}``; the plateau is left (L̃ below (1 - drop) of its start) at
:func:`plateau_exit_time`. Along the valley mu = mu*(omega) of the pair
``2 mu omega = 1/(1 + c sinh(d omega^2)/omega^2)`` (:func:`valley_eta`), which tends to
``1/(1 + d c)`` = the DGD optimal step as omega -> 0.

Prior covariance (multi-task, notes icl_regression §9): with ``beta ~ N(0, B)`` (``B = I/d`` by default) the
centred one-step risk uses ``E g gᵀ = (n/L^2)[(n+1) Sigma B Sigma + (tr(Sigma B) + sigma2) Sigma]`` and
``E g betaᵀ = (n/L) Sigma B``; the optimal preconditioner is ``L B Sigma [(n+1) Sigma B Sigma +
(tr(Sigma B) + sigma2) Sigma]^-1`` (``beta_cov=`` of :func:`optimal_preconditioner` and
:func:`preconditioned_risk`).

:func:`sympy_checks` re-derives several of these identities symbolically.
"""
from __future__ import annotations

import functools
import math

import numpy as np

__all__ = [
    "A_matrix", "reduced_loss", "reduced_grad", "ode_rhs", "integrate_reduced_ode", "mu_star",
    "profiled_loss", "single_head_optimum", "two_head_profiled_loss", "multihead_loss_limit",
    "gd_risk", "gd_optimal_step", "gd_optimal_risk", "dgd_risk", "dgd_optimal_step", "dgd_optimal_risk",
    "dgd_risk_asymptotic", "single_head_risk_approx", "ridge_bayes_risk_mp", "ridge_bayes_risk_given_gram",
    "toeplitz_cov", "optimal_preconditioner", "preconditioned_risk", "linear_baseline_risk",
    "cosine", "sympy_checks",
    "softmax_moments", "softmax_pair_moments", "kernel_coefficients", "kernel_risk", "profiled_kernel_risk",
    "kernel_optimum", "kernel_identifiable_range", "plateau_exit_time", "valley_eta", "dgd_step_tolerance",
    "kernel_step_tolerance", "integrate_reduced_euler", "exact_pair_valley_eta", "exact_plateau_rate",
]


# ============================================================================ reduced model
def A_matrix(omega, d: int, L: int, sigma2: float) -> np.ndarray:
    """A(omega) = omega omegaᵀ + ((1 + sigma2)/L) exp∘(d omega omegaᵀ)."""
    w = np.asarray(omega, dtype=float)
    ww = np.outer(w, w)
    return ww + (1.0 + sigma2) / L * np.exp(d * ww)


def reduced_loss(omega, mu, d: int, L: int, sigma2: float) -> float:
    """L̃(omega, mu) = 1 + sigma2 - 2 muᵀomega + muᵀ A(omega) mu."""
    w = np.asarray(omega, dtype=float)
    m = np.asarray(mu, dtype=float)
    return float(1.0 + sigma2 - 2.0 * m @ w + m @ A_matrix(w, d, L, sigma2) @ m)


def reduced_grad(omega, mu, d: int, L: int, sigma2: float):
    """Gradient of L̃/2: (d/domega, d/dmu)."""
    w = np.asarray(omega, dtype=float)
    m = np.asarray(mu, dtype=float)
    c = (1.0 + sigma2) / L
    E = np.exp(d * np.outer(w, w))
    g_mu = -w + A_matrix(w, d, L, sigma2) @ m
    g_w = -m + (m @ w) * m + d * c * (E * np.outer(m, m)) @ w
    return g_w, g_mu


def ode_rhs(omega, mu, d: int, L: int, sigma2: float):
    """(domega/dt, dmu/dt) of gradient flow on L̃/2."""
    g_w, g_mu = reduced_grad(omega, mu, d, L, sigma2)
    return -g_w, -g_mu


def integrate_reduced_ode(omega0, mu0, t_eval, d: int, L: int, sigma2: float, *, method: str = "DOP853",
                          dt: float = 0.01, rtol: float = 1e-10, atol: float = 1e-13):
    """Trajectory of the reduced ODE at the (increasing, >= 0) times ``t_eval``.

    ``method="euler"``: the authors' protocol [C] (explicit Euler, step ``dt``, on L̃/2);
    otherwise a ``scipy.integrate.solve_ivp`` method (adaptive, to ``rtol``/``atol``).
    Returns ``(omega (T, H), mu (T, H), loss (T,))`` with ``loss`` = L̃/2."""
    w0 = np.asarray(omega0, dtype=float)
    m0 = np.asarray(mu0, dtype=float)
    H = w0.size
    t_eval = np.asarray(t_eval, dtype=float)
    if np.any(np.diff(t_eval) < 0) or t_eval[0] < 0:
        raise ValueError("t_eval must be increasing and >= 0")
    if method == "euler":
        omega = np.empty((t_eval.size, H))
        mu = np.empty((t_eval.size, H))
        w, m = w0.copy(), m0.copy()
        steps = np.rint(t_eval / dt).astype(np.int64)
        done = 0
        for k, s in enumerate(steps):
            for _ in range(int(s - done)):
                dw, dm = ode_rhs(w, m, d, L, sigma2)
                w = w + dt * dw
                m = m + dt * dm
            done = s
            omega[k], mu[k] = w, m
    else:
        from scipy.integrate import solve_ivp

        def f(_t, y):
            dw, dm = ode_rhs(y[:H], y[H:], d, L, sigma2)
            return np.concatenate([dw, dm])

        sol = solve_ivp(f, (0.0, float(t_eval[-1])), np.concatenate([w0, m0]), method=method,
                        t_eval=t_eval, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"ODE integration failed: {sol.message}")
        omega, mu = sol.y[:H].T.copy(), sol.y[H:].T.copy()
    loss = np.array([reduced_loss(w, m, d, L, sigma2) / 2.0 for w, m in zip(omega, mu)])
    return omega, mu, loss


def mu_star(omega, d: int, L: int, sigma2: float) -> np.ndarray:
    """The optimal mu for fixed omega, A(omega)^-1 omega."""
    w = np.asarray(omega, dtype=float)
    return np.linalg.solve(A_matrix(w, d, L, sigma2), w)


def profiled_loss(omega, d: int, L: int, sigma2: float) -> float:
    """min_mu L̃(omega, mu) = 1 + sigma2 - omegaᵀ A^-1 omega."""
    w = np.asarray(omega, dtype=float)
    return float(1.0 + sigma2 - w @ mu_star(w, d, L, sigma2))


def single_head_optimum(d: int, L: int, sigma2: float):
    """(omega, mu, L̃) at the single-head optimum: omega = 1/sqrt(d), mu = sqrt(d)/(1 + e d c)."""
    dc = d * (1.0 + sigma2) / L
    return 1.0 / math.sqrt(d), math.sqrt(d) / (1.0 + math.e * dc), sigma2 + math.e * dc / (1.0 + math.e * dc)


def two_head_profiled_loss(omega, d: int, L: int, sigma2: float):
    """L̃ of the antisymmetric pair (omega, -omega), (mu, -mu) at the best mu:
    sigma2 + 1 - 1/(1 + c sinh(d omega^2)/omega^2)."""
    w = np.asarray(omega, dtype=float)
    c = (1.0 + sigma2) / L
    return sigma2 + 1.0 - 1.0 / (1.0 + c * np.sinh(d * w**2) / w**2)


def multihead_loss_limit(d: int, L: int, sigma2: float) -> float:
    """inf over all H of L̃: sigma2 + d c/(1 + d c) (zero-sum heads, omega -> 0)."""
    dc = d * (1.0 + sigma2) / L
    return sigma2 + dc / (1.0 + dc)


# ================================================================================ risks
def gd_risk(eta, d: int, L, sigma2: float):
    """Exact risk of one-step GD from 0 with step eta."""
    eta = np.asarray(eta, dtype=float)
    L = np.asarray(L, dtype=float)
    return sigma2 + (1.0 - eta) ** 2 + eta**2 * ((d + 1.0) + sigma2 * d) / L


def gd_optimal_step(d: int, L, sigma2: float):
    k = ((d + 1.0) + sigma2 * d) / np.asarray(L, dtype=float)
    return 1.0 / (1.0 + k)


def gd_optimal_risk(d: int, L, sigma2: float):
    k = ((d + 1.0) + sigma2 * d) / np.asarray(L, dtype=float)
    return sigma2 + k / (1.0 + k)


def dgd_risk(eta, d: int, L, sigma2: float):
    """Exact risk of debiased GD (x_i centred by the prompt mean) with step eta."""
    eta = np.asarray(eta, dtype=float)
    L = np.asarray(L, dtype=float)
    n = L - 1.0
    return sigma2 + 1.0 - 2.0 * eta * n / L + eta**2 * n * (n + d + 1.0 + sigma2 * d) / L**2


def dgd_optimal_step(d: int, L, sigma2: float):
    L = np.asarray(L, dtype=float)
    return L / (L + d + d * sigma2)


def dgd_optimal_risk(d: int, L, sigma2: float):
    return dgd_risk(dgd_optimal_step(d, L, sigma2), d, L, sigma2)


def dgd_risk_asymptotic(sigma2: float, xi):
    """sigma2 + xi(1+sigma2)/(1 + xi(1+sigma2)) (d, L -> inf, d/L -> xi)."""
    a = np.asarray(xi, dtype=float) * (1.0 + sigma2)
    return sigma2 + a / (1.0 + a)


def single_head_risk_approx(sigma2: float, xi):
    """sigma2 + e xi(1+sigma2)/(1 + e xi(1+sigma2)): the single-head optimum of L̃."""
    a = math.e * np.asarray(xi, dtype=float) * (1.0 + sigma2)
    return sigma2 + a / (1.0 + a)


def ridge_bayes_risk_mp(sigma2: float, xi):
    """Marchenko-Pastur limit of the Bayes (ridge, lambda = d sigma2) risk."""
    xi = np.asarray(xi, dtype=float)
    a = sigma2 + 1.0 / xi - 1.0
    return 0.5 * (sigma2 + 1.0 - 1.0 / xi + np.sqrt(a**2 + 4.0 * sigma2))


def ridge_bayes_risk_given_gram(gram, sigma2: float):
    """sigma2 + tr[(gram/sigma2 + d I)^-1] for designs with Gram matrices gram (..., d, d): the
    exact Bayes risk conditional on the design."""
    gram = np.asarray(gram, dtype=float)
    d = gram.shape[-1]
    ev = np.linalg.eigvalsh(gram)
    return sigma2 + np.sum(1.0 / (ev / sigma2 + d), axis=-1)


# ============================================================================ non-isotropic
def toeplitz_cov(d: int, rho: float) -> np.ndarray:
    """Sigma_ij = rho^|i-j|."""
    i = np.arange(d)
    return float(rho) ** np.abs(i[:, None] - i[None, :])


def optimal_preconditioner(Sigma, L: int, sigma2: float, centered: bool = False, beta_cov=None) -> np.ndarray:
    """Risk-optimal Gamma of the one-step preconditioned predictor (module docstring); ``beta_cov``
    = the prior covariance B of beta (default I/d, where the closed forms of the docstring hold)."""
    S = np.asarray(Sigma, dtype=float)
    d = S.shape[0]
    if beta_cov is None:
        a = (np.trace(S) + d * sigma2) / L
        scale = 1.0 if centered else 1.0 + 1.0 / L
        return np.linalg.inv(scale * S + a * np.eye(d))
    M, C = _precond_moments(S, np.asarray(beta_cov, dtype=float), L, sigma2, centered)
    return C.T @ np.linalg.inv(M)


def _precond_moments(S, B, L, sigma2, centered):
    """(E g gᵀ, E g betaᵀ) of g = (1/L) sum (x_i - x̄) y_i (or x̄ = 0), x ~ N(0, S), beta ~ N(0, B)."""
    tSB = float(np.trace(S @ B))
    if centered:
        n = L - 1.0
        return n / L**2 * ((n + 1.0) * S @ B @ S + (tSB + sigma2) * S), (n / L) * S @ B
    return (1.0 + 1.0 / L) * S @ B @ S + ((tSB + sigma2) / L) * S, S @ B


def preconditioned_risk(Gamma, Sigma, L: int, sigma2: float, centered: bool = False, beta_cov=None,
                        query_noise: bool = True) -> float:
    """Exact risk of ŷ = x_qᵀ Gamma g (g centred or not), beta ~ N(0, beta_cov) (default I/d);
    ``query_noise=False`` drops the sigma2 of a noiseless query label."""
    G = np.asarray(Gamma, dtype=float)
    S = np.asarray(Sigma, dtype=float)
    d = S.shape[0]
    B = np.eye(d) / d if beta_cov is None else np.asarray(beta_cov, dtype=float)
    M, C = _precond_moments(S, B, L, sigma2, centered)
    return float((sigma2 if query_noise else 0.0) + np.trace(S @ G @ M @ G.T) - 2.0 * np.trace(S @ G @ C)
                 + np.trace(S @ B))


def linear_baseline_risk(eta, L_train: int, L_test, d: int, sigma2: float):
    """Risk at test length L' of linear attention normalised by 1/L_train (GD with step
    eta L'/L_train)."""
    L_test = np.asarray(L_test, dtype=float)
    return gd_risk(np.asarray(eta, dtype=float) * L_test / L_train, d, L_test, sigma2)


def cosine(a, b) -> float:
    """Cosine similarity of two matrices (Frobenius inner product)."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


# ======================================================== exact finite-L softmax kernels
_NS = 12  # Gauss-Laguerre nodes over s = |x_q|^2 ~ chi^2_d (12: risks to ~1e-9)


def _grids(a: float, L: int):
    """Quadrature grids for weights e^{±a z}: z (trapezoid, Gaussian weights folded in) and
    u = log t of the Laplace variable (trapezoid in u; the integrands are smooth there)."""
    a = abs(float(a))
    hz = min(0.1, 0.5 / max(a, 1.0))
    zmax = 9.0 + 2.0 * a
    z = np.arange(-zmax, zmax + hz / 2, hz)
    wz = np.exp(-0.5 * z * z) * (hz / math.sqrt(2.0 * math.pi))
    lo = -a * a - math.log(L) - 30.0  # below: the integrands are ~t e^{a^2/2} or t^2 e^{2a^2}, negligible
    hi = max(8.0 * a, math.log(40.0)) + 3.0  # above: phi(t)^(L-1) <= Phi(-log(t)/a)^(L-1) is negligible
    u = np.arange(lo, hi + 0.2, 0.4)
    return z, wz, np.exp(u), 0.4


def softmax_moments(a: float, L: int):
    """``(E sum p_i z_i, E (sum p_i z_i)^2, E sum p_i^2)`` for ``p = softmax(a z)``, ``z`` i.i.d.
    N(0, 1) over ``L`` tokens (exact; module docstring)."""
    L = int(L)
    if L < 2:
        raise ValueError("L must be >= 2")
    z, wz, t, du = _grids(a, L)
    ez = np.exp(a * z)
    E = np.exp(-np.outer(t, ez))
    phi = E @ wz
    psi1 = E @ (wz * z * ez)
    psi2 = E @ (wz * ez * ez)
    psi3 = E @ (wz * z * z * ez * ez)
    lphi = np.log(np.maximum(phi, 1e-300))
    p1 = np.exp((L - 1) * lphi)
    p2 = np.exp((L - 2) * lphi)
    h1 = L * np.sum(psi1 * p1 * t) * du
    h3 = L * np.sum(t * t * psi2 * p1) * du
    h2 = L * np.sum(t * t * psi3 * p1) * du + L * (L - 1) * np.sum(t * t * psi1**2 * p2) * du
    return float(h1), float(h2), float(h3)


def softmax_pair_moments(a: float, L: int):
    """``(E (sum p+_i z_i)(sum p-_j z_j), E sum p+_i p-_i)`` for ``p± = softmax(±a z)`` over the
    same ``L`` tokens (exact; a double Laplace integral, computed as matrix products)."""
    L = int(L)
    z, wz, t, du = _grids(a, L)
    P = np.exp(-np.outer(t, np.exp(a * z)))   # (t, z)
    M = np.exp(-np.outer(t, np.exp(-a * z)))  # (u, z)
    phi = (P * wz) @ M.T
    pp = (P * (wz * z * np.exp(a * z))) @ M.T
    pm = (P * wz) @ (M * (z * np.exp(-a * z))).T
    p2 = (P * (wz * z * z)) @ M.T
    lphi = np.log(np.maximum(phi, 1e-300))
    w2 = np.outer(t, t) * du * du
    h3x = L * np.sum(np.exp(L * lphi) * w2)
    h2x = L * np.sum(p2 * np.exp((L - 1) * lphi) * w2) + L * (L - 1) * np.sum(pp * pm * np.exp((L - 2) * lphi) * w2)
    return float(h2x), float(h3x)


def _s_nodes(d: int, ns: int = _NS):
    from scipy.special import gammaln, roots_genlaguerre

    x, w = roots_genlaguerre(ns, d / 2.0 - 1.0)
    return 2.0 * x, w / math.exp(gammaln(d / 2.0))


def kernel_coefficients(omega: float, d: int, L: int, sigma2: float, heads: int = 1):
    """``(A, B)`` with the exact risk ``sigma2 + 1 - 2 mu A + mu^2 B`` of the single softmax head
    (``heads=1``, weights softmax(omega x_iᵀx_q)) or of the antisymmetric pair (``heads=2``:
    (omega, mu) and (-omega, -mu)), x ~ N(0, I_d), beta ~ N(0, I/d), noisy query (module
    docstring)."""
    if heads not in (1, 2):
        raise ValueError("heads must be 1 (single head) or 2 (antisymmetric pair)")
    return _kernel_coefficients(float(omega), int(d), int(L), float(sigma2), int(heads))


@functools.lru_cache(maxsize=4096)
def _kernel_coefficients(omega: float, d: int, L: int, sigma2: float, heads: int):
    w = abs(omega)
    sgn = 1.0 if omega >= 0 else -1.0
    s, ws = _s_nodes(d)
    A = B = C = 0.0
    for si, wi in zip(s, ws):
        a = w * math.sqrt(si)
        h1, h2, h3 = softmax_moments(a, L)
        A += wi * math.sqrt(si) * h1 / d
        B += wi * (h2 / d + (1.0 + sigma2 - 1.0 / d) * h3)
        if heads == 2:
            h2x, h3x = softmax_pair_moments(a, L)
            C += wi * (h2x / d + (1.0 + sigma2 - 1.0 / d) * h3x)
    if heads == 1:
        return sgn * A, B
    return 2.0 * sgn * A, 2.0 * (B - C)


def kernel_risk(omega: float, mu: float, d: int, L: int, sigma2: float, heads: int = 1) -> float:
    """Exact risk E(ŷ - y_q)^2 of the single softmax head or the antisymmetric pair (``mu`` =
    the value weight of the head with +omega)."""
    A, B = kernel_coefficients(omega, d, L, sigma2, heads)
    return float(sigma2 + 1.0 - 2.0 * mu * A + mu * mu * B)


def profiled_kernel_risk(omega: float, d: int, L: int, sigma2: float, heads: int = 1):
    """``(risk, mu*)`` at the best value weight ``mu* = A/B`` for this omega."""
    A, B = kernel_coefficients(omega, d, L, sigma2, heads)
    return float(sigma2 + 1.0 - A * A / B), float(A / B)


@functools.lru_cache(maxsize=256)
def kernel_optimum(d: int, L: int, sigma2: float, heads: int = 1, bounds=None):
    """``(omega*, mu*, risk*)``: the exact finite-L optimum of the single head (``heads=1``) or of
    the antisymmetric pair (``heads=2``; its profile is flat in omega, see the docstring, so
    omega* is located to 1e-3 only)."""
    from scipy.optimize import minimize_scalar

    lo, hi = bounds if bounds is not None else ((0.05, 2.5 / math.sqrt(d)) if heads == 1 else (0.005, 1.2 / math.sqrt(d)))
    res = minimize_scalar(lambda w: profiled_kernel_risk(w, d, L, sigma2, heads)[0], bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4 if heads == 1 else 1e-3})
    risk, mu = profiled_kernel_risk(res.x, d, L, sigma2, heads)
    return float(res.x), mu, risk


def kernel_identifiable_range(d: int, L: int, sigma2: float, delta: float, heads: int = 1, optimum=None):
    """The omega interval ``[lo, hi]`` on which the exact profiled risk stays within ``delta`` of
    its minimum: the precision to which a loss measured to ``delta`` identifies omega."""
    from scipy.optimize import brentq

    w0, _, r0 = optimum if optimum is not None else kernel_optimum(d, L, sigma2, heads)
    f = lambda w: profiled_kernel_risk(w, d, L, sigma2, heads)[0] - r0 - delta  # noqa: E731
    small = 1e-2 / math.sqrt(d)
    lo = small if f(small) <= 0 else brentq(f, small, w0, xtol=1e-5)
    hi = w0
    step = max(w0, 0.05)
    while f(hi + step) <= 0 and hi < 10.0 / math.sqrt(d):
        hi += step
    hi = brentq(f, hi, hi + step, xtol=1e-5) if f(hi + step) > 0 else hi + step
    return float(lo), float(hi)


def kernel_step_tolerance(omega: float, d: int, L: int, sigma2: float, delta: float, heads: int = 1) -> float:
    """The half-width of the mu interval (at fixed omega) where the exact risk stays within
    ``delta`` of its minimum over mu: ``sqrt(delta / B)``."""
    _, B = kernel_coefficients(omega, d, L, sigma2, heads)
    return math.sqrt(max(delta, 0.0) / B)


def dgd_step_tolerance(d: int, L, sigma2: float, delta: float):
    """The half-width of the eta interval where the exact DGD risk stays within ``delta`` of its
    minimum: ``sqrt(delta / curvature)``, curvature ``n (n + d + 1 + sigma2 d)/L^2``."""
    L = np.asarray(L, dtype=float)
    n = L - 1.0
    return np.sqrt(max(delta, 0.0) / (n * (n + d + 1.0 + sigma2 * d) / L**2))


# ================================================================ reduced ODE: early and late
def plateau_exit_time(a0: float, d: int, L: int, sigma2: float, drop: float = 0.05) -> tuple[float, float, float]:
    """When the antisymmetric pair started at omega = mu = (a0, -a0) leaves the plateau: the
    first time L̃ falls below ``(1 - drop)`` of its start. Returns ``(t_first, t_second,
    remainder)``:

    * first order: ``omega = mu = a0 e^t`` (the linearised flow) and L̃ ≈ 1 + sigma2 - 4x,
      ``x = mu omega``;
    * second order: the cubic terms of the flow make ``x`` logistic,
      ``x' = 2x - 4k x^2`` with ``k = 1 + c d``, and L̃ ≈ 1 + sigma2 - 4x + 4k x^2;
    * ``remainder``: the declared size of the neglected next order, ``|t_second - t_first| k
      target`` (the expansion parameter ``k x`` times the last correction kept)."""
    c = (1.0 + sigma2) / L
    k = 1.0 + c * d
    l0 = reduced_loss([a0, -a0], [a0, -a0], d, L, sigma2)
    target = (1.0 + sigma2) - (1.0 - drop) * l0  # required decrease of L̃ from 1 + sigma2
    t1 = 0.5 * math.log(target / (4.0 * a0**2))
    if k * target >= 1.0:
        return t1, t1, abs(t1)
    x = (1.0 - math.sqrt(1.0 - k * target)) / (2.0 * k)
    t2 = 0.5 * math.log(x * (1.0 - 2.0 * k * a0**2) / (a0**2 * (1.0 - 2.0 * k * x)))
    return t1, t2, abs(t2 - t1) * k * target


def valley_eta(omega, d: int, L: int, sigma2: float):
    """2 mu*(omega) omega of the antisymmetric pair at the best mu for its omega:
    1/(1 + c sinh(d omega^2)/omega^2), -> 1/(1 + d c) as omega -> 0."""
    w = np.asarray(omega, dtype=float)
    c = (1.0 + sigma2) / L
    x = d * w**2
    ratio = np.where(x > 1e-12, np.sinh(x) / np.where(w**2 > 0, w**2, 1.0), d)
    return 1.0 / (1.0 + c * ratio)


# ============================================== the reduced ODE against a trained softmax pair
def integrate_reduced_euler(omega0, mu0, dts, log_at, d: int, L: int, sigma2: float):
    """The reduced ODE by explicit Euler with the step sequence ``dts`` (step ``k`` of size
    ``dts[k]``): the discretisation that plain gradient descent with these steps performs
    (notes icl_regression §5.7). ``log_at``: increasing step counts (0 = the start) after which
    the state is returned. Returns ``(time (T,), omega (T, H), mu (T, H), loss (T,))`` with
    ``loss`` = L̃/2 and ``time`` the sum of the steps taken."""
    dts = np.asarray(dts, dtype=float)
    log_at = np.asarray(log_at, dtype=np.int64)
    if np.any(dts <= 0) or np.any(np.diff(log_at) <= 0) or log_at[0] < 0 or log_at[-1] > dts.size:
        raise ValueError("positive steps and increasing log points within them")
    w = np.asarray(omega0, dtype=float).copy()
    m = np.asarray(mu0, dtype=float).copy()
    omega = np.empty((log_at.size, w.size))
    mu = np.empty((log_at.size, w.size))
    k = 0
    for step in range(int(log_at[-1]) + 1):
        if step == log_at[k]:
            omega[k], mu[k] = w, m
            k += 1
            if k == log_at.size:
                break
        dw, dm = ode_rhs(w, m, d, L, sigma2)
        w = w + dts[step] * dw
        m = m + dts[step] * dm
    time = np.concatenate([[0.0], np.cumsum(dts)])[log_at]
    loss = np.array([reduced_loss(a, b, d, L, sigma2) / 2.0 for a, b in zip(omega, mu)])
    return time, omega, mu, loss


def exact_pair_valley_eta(omega, d: int, L: int, sigma2: float):
    """2 mu* omega of the antisymmetric softmax pair at the best mu for its omega under the
    *exact* finite-L risk (§6.5: ``mu* = A/B`` of :func:`kernel_coefficients`), the valley a
    trained pair follows; :func:`valley_eta` is the reduced model's approximation of it (the two
    meet at 1/(1 + d c) as omega -> 0, notes icl_regression §5.7)."""
    w = np.atleast_1d(np.asarray(omega, dtype=float))
    out = np.array([2.0 * abs(x) * profiled_kernel_risk(abs(x), d, L, sigma2, heads=2)[1] for x in w])
    return out if np.ndim(omega) else float(out[0])


def exact_plateau_rate(L: int) -> float:
    """The early growth rate of the antisymmetric softmax pair under the exact loss, (L - 1)/L:
    to second order in x = mu omega its risk is 1 + sigma2 - (n/L)(4x - 4 k x^2) (debiased GD
    with step 2x, §6.2), the reduced L̃ with its x-dependent part scaled by n/L, so the exact
    flow is the reduced one slowed down by n/L (the reduced ODE's rate is 1; notes
    icl_regression §5.7)."""
    return (L - 1.0) / L


# ================================================================================== sympy
def sympy_checks() -> dict:
    """Symbolic re-derivations; returns ``{name: bool}`` (all True when the closed forms above
    are right):

    * ``ode_is_gradient_flow``: the ODE right-hand side is -∇(L̃/2) for H = 2;
    * ``two_head_profile``: minimising L̃ over mu for the antisymmetric pair gives
      sigma2 + 1 - 1/(1 + c sinh(d w^2)/w^2);
    * ``single_head_optimum``: the profiled single-head loss is stationary at omega^2 = 1/d with
      mu = sqrt(d)/(1 + e d c);
    * ``gd_risk``: the Isserlis identity E[x xᵀ x xᵀ] = (d + 2) I behind the (d + 1)/L term
      (symbolic Gaussian moments at d = 3), and gd_risk's minimiser 1/(1 + k) with minimum
      sigma2 + k/(1 + k);
    * ``dgd_optimal_step``: the minimiser of dgd_risk is L/(L + d + d sigma2);
    * ``preconditioner_isotropic``: Gamma* reduces to the optimal GD step at Sigma = I.
    """
    import sympy as sp

    out = {}
    d, L, s2 = sp.symbols("d L sigma2", positive=True)
    c = (1 + s2) / L
    w1, w2, m1, m2, t = sp.symbols("w1 w2 m1 m2 t", real=True)
    w = sp.Matrix([w1, w2])
    m = sp.Matrix([m1, m2])
    E = sp.Matrix(2, 2, lambda i, j: sp.exp(d * w[i] * w[j]))
    A = w * w.T + c * E
    Lt = 1 + s2 - 2 * (m.T * w)[0] + (m.T * A * m)[0]
    grad_w = sp.Matrix([sp.diff(Lt / 2, v) for v in (w1, w2)])
    grad_m = sp.Matrix([sp.diff(Lt / 2, v) for v in (m1, m2)])
    rhs_m = w - A * m
    rhs_w = m - (m.T * w)[0] * m - d * c * (E.multiply_elementwise(m * m.T)) * w
    out["ode_is_gradient_flow"] = bool(sp.simplify(rhs_m + grad_m) == sp.zeros(2, 1)
                                       and sp.simplify(rhs_w + grad_w) == sp.zeros(2, 1))

    ww, mm = sp.symbols("omega mu", positive=True)
    L2 = Lt.subs({w1: ww, w2: -ww, m1: mm, m2: -mm})
    mstar = sp.solve(sp.diff(L2, mm), mm)[0]
    prof = sp.simplify(L2.subs(mm, mstar))
    target = s2 + 1 - 1 / (1 + c * sp.sinh(d * ww**2) / ww**2)
    out["two_head_profile"] = bool(sp.simplify((prof - target).rewrite(sp.exp)) == 0)

    L1 = 1 + s2 - 2 * mm * ww + mm**2 * (ww**2 + c * sp.exp(d * ww**2))
    m1star = sp.solve(sp.diff(L1, mm), mm)[0]
    prof1 = sp.simplify(L1.subs(mm, m1star))
    w_opt = 1 / sp.sqrt(d)
    stationary = sp.simplify(sp.diff(prof1, ww).subs(ww, w_opt)) == 0
    mu_ok = sp.simplify(m1star.subs(ww, w_opt) - sp.sqrt(d) / (1 + sp.E * d * c)) == 0
    out["single_head_optimum"] = bool(stationary and mu_ok)

    # GD risk from Gaussian moments: g = (1/L) sum x_i y_i; E||g - beta||^2 = (d+1)/L E|beta|^2
    # + sigma2 d/L, E|beta|^2 = 1 (E[(xxᵀ - I)^2] = (d+1) I is the Isserlis step, checked below)
    eta = sp.symbols("eta", real=True)
    risk = s2 + (1 - eta) ** 2 + eta**2 * ((d + 1) / L + s2 * d / L)
    k = (d + 1 + s2 * d) / L
    gd_ok = sp.simplify(sp.solve(sp.diff(risk, eta), eta)[0] - 1 / (1 + k)) == 0
    # Isserlis: E[x_a x_b x_b x_c] summed over b (d = 3 instance) equals (d + 2) delta_ac
    dd = 3
    xs = sp.symbols(f"x0:{dd}", real=True)

    def gauss_moment(expr):  # E over independent N(0,1) of a polynomial
        poly = sp.Poly(sp.expand(expr), *xs)
        total = 0
        for mon, coef in poly.terms():
            val = coef
            for p in mon:
                val *= 0 if p % 2 else sp.factorial2(p - 1) if p > 0 else 1
            total += val
        return sp.simplify(total)

    M4 = sp.Matrix(dd, dd, lambda a, b2: gauss_moment(xs[a] * xs[b2] * sum(x**2 for x in xs)))
    isserlis_ok = M4 == (dd + 2) * sp.eye(dd)
    out["gd_risk"] = bool(gd_ok and isserlis_ok and sp.simplify(
        risk.subs(eta, 1 / (1 + k)) - (s2 + k / (1 + k))) == 0)

    n = L - 1
    drisk = s2 + 1 - 2 * eta * n / L + eta**2 * n * (n + d + 1 + s2 * d) / L**2
    out["dgd_optimal_step"] = bool(sp.simplify(sp.solve(sp.diff(drisk, eta), eta)[0] - L / (L + d + d * s2)) == 0)

    # Gamma* = ((1 + 1/L) Sigma + ((tr Sigma + d sigma2)/L) I)^-1 at Sigma = I: trace = d
    gstar = 1 / ((1 + 1 / L) + (d + d * s2) / L)
    out["preconditioner_isotropic"] = bool(sp.simplify(gstar - 1 / (1 + k)) == 0)
    return out
