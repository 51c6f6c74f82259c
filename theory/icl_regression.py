"""Closed forms of in-context linear regression with softmax attention (He, Pan, Chen, Yang,
ICML 2025; spec ``icl_regression`` §§5-8): the reduced (omega, mu) loss and its gradient-flow
ODE, exact and asymptotic risks of the predictors the trained model is compared with, and the
optimal one-step preconditioner for non-isotropic covariates. Pure functions of parameters.

Setting and symbols
-------------------
``x_i, x_q ~ N(0, Sigma)`` (``Sigma = I_d`` unless stated), ``beta ~ N(0, I_d/d)``,
``y = betaᵀx + eps`` with ``eps ~ N(0, sigma2)``, also on the query label, so every risk below
is ``E (ŷ - y_q)^2`` and *includes* ``sigma2``. ``L`` examples per prompt, ``xi = d/L``,
``c = (1 + sigma2)/L``, ``n = L - 1``.

Reduced model (spec §5) [C: ``TFEst.approx_loss``, ``utils/funcs.py``; derivation [D]]
    ŷ = sum_h mu_h sum_i softmax_i(omega_h x_iᵀx_q) y_i
    L̃(omega, mu) = 1 + sigma2 - 2 muᵀomega + muᵀ A(omega) mu,
    A(omega) = omega omegaᵀ + c exp∘(d omega omegaᵀ)               (exp elementwise)
(softmax denominators replaced by their expectations: a large-L approximation). The ODE is
gradient flow on L̃/2:
    dmu/dt    = omega - A mu
    domega/dt = mu - (muᵀomega) mu - d c (exp∘(d omega omegaᵀ) ⊙ mu muᵀ) omega
Fixed-omega optimum ``mu*(omega) = A^-1 omega``; single head: ``omega^2 = 1/d``,
``mu = sqrt(d)/(1 + e d c)``, ``L̃ = sigma2 + e d c/(1 + e d c)``; every H: ``L̃ >= sigma2 +
d c/(1 + d c)``, approached by zero-sum heads as omega -> 0 with ``2 mu omega -> 1/(1 + d c)``.

Predictor risks (spec §6), exact at finite L [D; checked by Monte Carlo in the tests]
    GD   ŷ = eta (1/L) sum y_i x_iᵀx_q:       R = sigma2 + (1-eta)^2 + eta^2 (d + 1 + sigma2 d)/L
    DGD  ŷ = eta (1/L) sum y_i (x_i - x̄)ᵀx_q: R = sigma2 + 1 - 2 eta n/L + eta^2 n (n + d + 1 + sigma2 d)/L^2
(Wishart moments E W^2 = n(n + d + 1) I for W ~ W_d(n, I)); optimal steps ``1/(1 + k)``,
``k = (d + 1 + sigma2 d)/L`` (GD) and ``L/(L + d + d sigma2)`` (DGD). Asymptotics (d, L -> inf,
d/L -> xi) [C]: ``R_DGD = sigma2 + xi(1+sigma2)/(1 + xi(1+sigma2))``; the single-head kernel
``R_1 ≈ sigma2 + e xi(1+sigma2)/(1 + e xi(1+sigma2))`` (an approximation: it underestimates the
Monte Carlo value at small L). Bayes: ridge with ``lambda = d sigma2``; given the design the
Bayes risk is ``sigma2 + tr[(XᵀX/sigma2 + d I)^-1]`` (finite L: its average over designs);
Marchenko-Pastur limit [C: ``ridge_loss``]
    R_Bayes = ½ [sigma2 + 1 - 1/xi + sqrt((sigma2 + 1/xi - 1)^2 + 4 sigma2)].

Non-isotropic covariates (spec §8) [D]: for ``ŷ = x_qᵀ Gamma g`` with ``g = (1/L) sum (x_i - x̄) y_i``
(``centered``) or ``(1/L) sum x_i y_i``, the risk is quadratic in Gamma and minimised by
    uncentred (spec): Gamma* = ((1 + 1/L) Sigma + ((tr Sigma + d sigma2)/L) I)^-1
    centred:          Gamma* = (Sigma + ((tr Sigma + d sigma2)/L) I)^-1
both reducing to the optimal GD / DGD steps at Sigma = I. Which one the trained model's
``Gamma = sum_h mu_h W_h[:d, :d]`` should match is a convention of the comparison [?]: the
studies record both cosines.

Linear-attention baseline (spec §7, reconstructed [?]): a fixed normalisation 1/L_train makes
the learned predictor GD with step ``eta L'/L_train`` at test length ``L'``.

:func:`sympy_checks` re-derives several of these identities symbolically.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "A_matrix", "reduced_loss", "reduced_grad", "ode_rhs", "integrate_reduced_ode", "mu_star",
    "profiled_loss", "single_head_optimum", "two_head_profiled_loss", "multihead_loss_limit",
    "gd_risk", "gd_optimal_step", "gd_optimal_risk", "dgd_risk", "dgd_optimal_step", "dgd_optimal_risk",
    "dgd_risk_asymptotic", "single_head_risk_approx", "ridge_bayes_risk_mp", "ridge_bayes_risk_given_gram",
    "toeplitz_cov", "optimal_preconditioner", "preconditioned_risk", "linear_baseline_risk",
    "cosine", "sympy_checks",
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


def optimal_preconditioner(Sigma, L: int, sigma2: float, centered: bool = False) -> np.ndarray:
    """Risk-optimal Gamma of the one-step preconditioned predictor (module docstring)."""
    S = np.asarray(Sigma, dtype=float)
    d = S.shape[0]
    a = (np.trace(S) + d * sigma2) / L
    scale = 1.0 if centered else 1.0 + 1.0 / L
    return np.linalg.inv(scale * S + a * np.eye(d))


def preconditioned_risk(Gamma, Sigma, L: int, sigma2: float, centered: bool = False) -> float:
    """Exact risk of ŷ = x_qᵀ Gamma g (g centred or not), beta ~ N(0, I/d)."""
    G = np.asarray(Gamma, dtype=float)
    S = np.asarray(Sigma, dtype=float)
    d = S.shape[0]
    tS = np.trace(S)
    if centered:
        n = L - 1.0
        M = n / (d * L**2) * ((n + 1.0) * S @ S + (tS + d * sigma2) * S)
        cross = (n / L) * S / d
    else:
        M = ((1.0 + 1.0 / L) * S @ S + ((tS + d * sigma2) / L) * S) / d
        cross = S / d
    return float(sigma2 + np.trace(S @ G @ M @ G.T) - 2.0 * np.trace(S @ G @ cross) + tS / d)


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
