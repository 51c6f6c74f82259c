"""theory/icl_regression.py: identities, optima and symbolic re-derivations (no randomness)."""
import math

import numpy as np
import pytest
from scipy import integrate, optimize

from theory import icl_regression as th

D, L, S2 = 5, 40, 0.1


def fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        g.flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def test_sympy_derivations_hold():
    checks = th.sympy_checks()
    assert set(checks) >= {"ode_is_gradient_flow", "two_head_profile", "single_head_optimum", "gd_risk",
                           "dgd_optimal_step", "preconditioner_isotropic"}
    assert all(checks.values()), checks


@pytest.mark.parametrize("H", [1, 2, 3])
def test_reduced_gradient_matches_finite_differences(H):
    rng = np.random.default_rng(H)
    w, m = rng.normal(0, 0.3, H), rng.normal(0, 1.0, H)
    g_w, g_mu = th.reduced_grad(w, m, D, L, S2)
    fw = fd_grad(lambda x: th.reduced_loss(x, m, D, L, S2) / 2, w)
    fm = fd_grad(lambda x: th.reduced_loss(w, x, D, L, S2) / 2, m)
    np.testing.assert_allclose(g_w, fw, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g_mu, fm, rtol=1e-6, atol=1e-8)
    dw, dm = th.ode_rhs(w, m, D, L, S2)
    np.testing.assert_array_equal(dw, -g_w)
    np.testing.assert_array_equal(dm, -g_mu)


def test_mu_star_is_the_fixed_omega_minimiser():
    w = np.array([0.2, -0.15, 0.05])
    ms = th.mu_star(w, D, L, S2)
    _, g_mu = th.reduced_grad(w, ms, D, L, S2)
    assert np.abs(g_mu).max() < 1e-12
    assert math.isclose(th.profiled_loss(w, D, L, S2), th.reduced_loss(w, ms, D, L, S2), rel_tol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert th.reduced_loss(w, ms + rng.normal(0, 0.05, 3), D, L, S2) > th.profiled_loss(w, D, L, S2)


def test_single_head_optimum():
    w1, m1, l1 = th.single_head_optimum(D, L, S2)
    res = optimize.minimize_scalar(lambda w: th.profiled_loss([w], D, L, S2), bounds=(0.05, 2.0), method="bounded",
                                   options={"xatol": 1e-10})
    assert abs(res.x - w1) < 1e-5
    assert math.isclose(res.fun, l1, rel_tol=1e-10)
    assert math.isclose(th.mu_star([w1], D, L, S2)[0], m1, rel_tol=1e-12)


def test_two_head_profile_and_multihead_lower_bound():
    for w in (0.3, 0.13, 0.05):
        assert math.isclose(th.two_head_profiled_loss(w, D, L, S2), th.profiled_loss([w, -w], D, L, S2), rel_tol=1e-10)
    limit = th.multihead_loss_limit(D, L, S2)
    assert abs(th.two_head_profiled_loss(1e-4, D, L, S2) - limit) < 1e-6
    assert np.all(np.diff(th.two_head_profiled_loss(np.linspace(0.01, 0.5, 30), D, L, S2)) > 0)
    rng = np.random.default_rng(3)
    for H in (2, 3, 4, 8):
        for _ in range(20):
            assert th.profiled_loss(rng.normal(0, 0.3, H), D, L, S2) >= limit - 1e-9  # A is ill-conditioned
    # single head pays the factor e: its excess risk is larger than the multi-head limit's
    assert th.single_head_optimum(D, L, S2)[2] > limit


@pytest.mark.parametrize("risk,opt_step,opt_risk", [
    (th.gd_risk, th.gd_optimal_step, th.gd_optimal_risk),
    (th.dgd_risk, th.dgd_optimal_step, th.dgd_optimal_risk)])
@pytest.mark.parametrize("d,Lp,s2", [(5, 40, 0.1), (5, 10, 0.1), (20, 100, 1.0)])
def test_optimal_steps_minimise_the_exact_risks(risk, opt_step, opt_risk, d, Lp, s2):
    res = optimize.minimize_scalar(lambda e: risk(e, d, Lp, s2), bounds=(0, 2), method="bounded",
                                   options={"xatol": 1e-10})
    assert abs(res.x - opt_step(d, Lp, s2)) < 1e-6
    assert math.isclose(float(opt_risk(d, Lp, s2)), res.fun, rel_tol=1e-10)


def test_dgd_converges_to_gd_and_asymptotic_forms():
    # centring costs one degree of freedom: the two risks merge as L grows
    for Lp in (1e3, 1e5):
        assert abs(th.dgd_optimal_risk(D, Lp, S2) - th.gd_optimal_risk(D, Lp, S2)) < 5 * D / Lp**2 + 1e-12
    # proportional limit d, L -> inf with d/L = xi
    xi = 0.125
    for d in (1000, 10000):
        Lp = d / xi
        assert abs(th.dgd_optimal_risk(d, Lp, S2) - th.dgd_risk_asymptotic(S2, xi)) < 3 / d


def _mp_density(x, xi):
    a, b = (1 - math.sqrt(xi)) ** 2, (1 + math.sqrt(xi)) ** 2
    return np.sqrt(np.maximum((b - x) * (x - a), 0)) / (2 * math.pi * xi * x)


@pytest.mark.parametrize("s2,xi", [(0.1, 0.125), (0.1, 0.5), (1.0, 0.2), (3.0, 0.9)])
def test_bayes_mp_formula_against_the_mp_integral(s2, xi):
    """sigma2 + (1/d) E tr[(XᵀX/(sigma2 d) ... )] = sigma2 + int rho_MP(x) / (1 + x/(xi sigma2)) dx."""
    a, b = (1 - math.sqrt(xi)) ** 2, (1 + math.sqrt(xi)) ** 2
    val, _ = integrate.quad(lambda x: _mp_density(x, xi) / (1 + x / (xi * s2)), a, b, limit=200)
    assert math.isclose(float(th.ridge_bayes_risk_mp(s2, xi)), s2 + val, rel_tol=1e-8)


def test_ridge_conditional_risk_is_a_trace():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((7, 30, 4))
    gram = np.einsum("nld,nle->nde", X, X)
    direct = S2 + np.trace(np.linalg.inv(gram / S2 + 4 * np.eye(4)), axis1=1, axis2=2)
    np.testing.assert_allclose(th.ridge_bayes_risk_given_gram(gram, S2), direct, rtol=1e-12)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8])
def test_optimal_preconditioner_minimises_the_risk(centered, rho):
    Sig = th.toeplitz_cov(D, rho)
    G = th.optimal_preconditioner(Sig, L, S2, centered=centered)
    r0 = th.preconditioned_risk(G, Sig, L, S2, centered)
    g = fd_grad(lambda x: th.preconditioned_risk(x.reshape(D, D), Sig, L, S2, centered), G.ravel(), h=1e-5)
    assert np.abs(g).max() < 1e-8
    rng = np.random.default_rng(int(10 * rho))
    for _ in range(10):
        assert th.preconditioned_risk(G + 0.01 * rng.standard_normal((D, D)), Sig, L, S2, centered) > r0


def test_preconditioner_reduces_to_the_scalar_steps():
    I = np.eye(D)
    assert np.allclose(th.optimal_preconditioner(I, L, S2), th.gd_optimal_step(D, L, S2) * I, rtol=1e-14)
    assert np.allclose(th.optimal_preconditioner(I, L, S2, centered=True), th.dgd_optimal_step(D, L, S2) * I,
                       rtol=1e-14)
    for eta in (0.3, 0.9, 1.2):
        assert math.isclose(th.preconditioned_risk(eta * I, I, L, S2), float(th.gd_risk(eta, D, L, S2)), rel_tol=1e-12)
        assert math.isclose(th.preconditioned_risk(eta * I, I, L, S2, True), float(th.dgd_risk(eta, D, L, S2)),
                            rel_tol=1e-12)


def test_linear_baseline_is_gd_with_a_rescaled_step():
    assert math.isclose(float(th.linear_baseline_risk(0.86, 40, 40, D, S2)), float(th.gd_risk(0.86, D, 40, S2)))
    Lt = np.array([10, 20, 40, 80, 100])
    r = th.linear_baseline_risk(0.86, 40, Lt, D, S2)
    assert np.argmin(r) in (1, 2)  # best near the training length
    assert r[-1] > 2 * r[2] and r[3] > 0.8  # and blows up beyond it


def test_ode_euler_matches_the_adaptive_integrator_and_keeps_antisymmetry():
    t = np.linspace(0, 12, 121)
    w0 = m0 = np.array([1e-3, -1e-3])
    we, me, le = th.integrate_reduced_ode(w0, m0, t, D, L, S2, method="euler", dt=0.001)
    wr, mr, lr = th.integrate_reduced_ode(w0, m0, t, D, L, S2, method="DOP853")
    assert np.abs(we - wr).max() < 5e-3 and np.abs(me - mr).max() < 5e-3  # O(dt) Euler error
    for w, m in ((we, me), (wr, mr)):
        assert np.abs(w.sum(1)).max() <= 1e-14 and np.abs(m.sum(1)).max() <= 1e-14
    assert np.all(np.diff(lr) <= 1e-12)  # gradient flow: the loss never increases
    assert lr[0] == pytest.approx((1 + S2) / 2, rel=1e-5)


def test_ode_rejects_decreasing_times():
    with pytest.raises(ValueError):
        th.integrate_reduced_ode([0.1], [0.1], [0.0, 2.0, 1.0], D, L, S2)


def test_cosine():
    A = np.arange(9.0).reshape(3, 3)
    assert th.cosine(A, 3 * A) == pytest.approx(1.0)
    assert th.cosine(np.eye(2), np.array([[0, 1], [1, 0]])) == pytest.approx(0.0)


# ============================================================ exact finite-L softmax kernels
def _mc_prompts(rng, n, d, Lp, s2):
    x = rng.standard_normal((n, Lp, d))
    xq = rng.standard_normal((n, d))
    beta = rng.standard_normal((n, d)) / math.sqrt(d)
    y = np.einsum("nld,nd->nl", x, beta) + math.sqrt(s2) * rng.standard_normal((n, Lp))
    yq = np.einsum("nd,nd->n", xq, beta) + math.sqrt(s2) * rng.standard_normal(n)
    return x, xq, y, yq


def _softmax_pred(x, xq, y, w):
    s = w * np.einsum("nld,nd->nl", x, xq)
    s -= s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return np.einsum("nl,nl->n", e, y) / e.sum(axis=1)


@pytest.mark.parametrize("a,Lp", [(0.0, 7), (0.4, 5), (1.3, 12)])
def test_softmax_moments_against_monte_carlo(a, Lp):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((400_000, Lp))
    e = np.exp(a * z - (a * z).max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    m = np.einsum("nl,nl->n", p, z)
    mc = [m.mean(), (m**2).mean(), (p**2).sum(1).mean()]
    se = [m.std() / 600, (m**2).std() / 600, (p**2).sum(1).std() / 600]  # sqrt(4e5) ~ 632
    got = th.softmax_moments(a, Lp)
    for g, v, s in zip(got, mc, se):
        assert abs(g - v) <= 5 * s + 1e-9, (got, mc)
    if a == 0.0:  # uniform weights: E sum p z = 0, E (mean z)^2 = E sum p^2 = 1/L
        np.testing.assert_allclose(got, [0.0, 1 / Lp, 1 / Lp], atol=1e-9)
    pp = np.exp(-a * z - (-a * z).max(axis=1, keepdims=True))
    pm = pp / pp.sum(axis=1, keepdims=True)
    mm = np.einsum("nl,nl->n", pm, z)
    cross = th.softmax_pair_moments(a, Lp)
    for g, v in zip(cross, [(m * mm).mean(), (p * pm).sum(1).mean()]):
        assert abs(g - v) <= 5 * 0.5 / 600 * max(1.0, abs(v)) + 1e-9, (cross, v)


@pytest.mark.parametrize("d,Lp,s2,heads,w,mu", [
    (5, 10, 0.1, 1, 1 / math.sqrt(5), 0.9), (3, 20, 0.3, 1, 0.8, 1.1), (5, 10, 0.1, 2, 0.13, 3.45),
    (4, 16, 0.5, 2, 0.3, 1.4)])
def test_kernel_risk_is_the_monte_carlo_risk(d, Lp, s2, heads, w, mu):
    """The exact finite-L risk of the single head and of the antisymmetric pair against Monte
    Carlo (the pair through its paired difference with debiased GD, whose risk is exact)."""
    rng = np.random.default_rng(d * 100 + Lp)
    n = 200_000
    x, xq, y, yq = _mc_prompts(rng, n, d, Lp, s2)
    if heads == 1:
        sq = (mu * _softmax_pred(x, xq, y, w) - yq) ** 2
        mc, se = sq.mean(), sq.std() / math.sqrt(n)
    else:
        yh = mu * (_softmax_pred(x, xq, y, w) - _softmax_pred(x, xq, y, -w))
        xc = x - x.mean(axis=1, keepdims=True)
        yd = 2 * w * mu * np.einsum("nl,nld,nd->n", y, xc, xq) / Lp
        diff = (yh - yq) ** 2 - (yd - yq) ** 2
        mc = float(th.dgd_risk(2 * w * mu, d, Lp, s2)) + diff.mean()
        se = diff.std() / math.sqrt(n)
    assert abs(th.kernel_risk(w, mu, d, Lp, s2, heads) - mc) <= 5 * se, (th.kernel_risk(w, mu, d, Lp, s2, heads), mc, se)


def test_pair_tends_to_debiased_gd_and_single_head_to_the_mean():
    """omega -> 0 with 2 omega mu = eta fixed: the pair is debiased GD (its linearisation);
    a single head at omega = 0 predicts mu * mean(y)."""
    for Lp in (10, 40):
        eta = 0.8
        gaps = [abs(th.kernel_risk(w, eta / (2 * w), D, Lp, S2, 2) - float(th.dgd_risk(eta, D, Lp, S2)))
                for w in (0.08, 0.04, 0.02)]
        assert gaps[2] < gaps[1] / 3 < gaps[0] / 9 and gaps[2] < 1e-3, gaps  # O(omega^2) to the linearisation
        mu = 0.7
        assert th.kernel_risk(0.0, mu, D, Lp, S2, 1) == pytest.approx(S2 + 1 + mu**2 * (1 + S2) / Lp, rel=1e-10)


def test_kernel_optima_and_identifiable_ranges():
    w1, m1, r1 = th.kernel_optimum(D, L, S2, 1)
    # the finite-L single-head optimum is the paper's trained H = 1 (|omega| 0.52, |mu| 1.5, MSE 0.40)
    assert w1 == pytest.approx(0.518, abs=2e-3) and m1 == pytest.approx(1.497, abs=2e-3) and r1 == pytest.approx(0.404,
                                                                                                             abs=1e-3)
    for dw in (-0.03, 0.03):
        assert th.profiled_kernel_risk(w1 + dw, D, L, S2, 1)[0] > r1
    assert th.kernel_risk(w1, m1 * 1.05, D, L, S2, 1) > r1
    lo, hi = th.kernel_identifiable_range(D, L, S2, 0.004, 1, optimum=(w1, m1, r1))
    assert lo < w1 < hi
    for edge in (lo, hi):
        assert th.profiled_kernel_risk(edge, D, L, S2, 1)[0] == pytest.approx(r1 + 0.004, abs=1e-6)
    # the pair: never worse than DGD at its optimal step, equal in the omega -> 0 limit
    w2, m2, r2 = th.kernel_optimum(D, L, S2, 2)
    assert r2 <= float(th.dgd_optimal_risk(D, L, S2)) + 1e-9 and r2 >= float(th.dgd_optimal_risk(D, L, S2)) - 1e-3
    assert 2 * w2 * m2 == pytest.approx(float(th.dgd_optimal_step(D, L, S2)), abs=5e-3)
    tol = th.kernel_step_tolerance(0.14, D, L, S2, 0.004, 2)
    _, mstar = th.profiled_kernel_risk(0.14, D, L, S2, 2)
    assert th.kernel_risk(0.14, mstar + tol, D, L, S2, 2) == pytest.approx(th.profiled_kernel_risk(0.14, D, L, S2, 2)[0]
                                                                           + 0.004, rel=1e-9)
    eta_tol = th.dgd_step_tolerance(D, L, S2, 0.004)
    eta = float(th.dgd_optimal_step(D, L, S2))
    assert float(th.dgd_risk(eta + eta_tol, D, L, S2)) == pytest.approx(float(th.dgd_optimal_risk(D, L, S2)) + 0.004)


@pytest.mark.parametrize("d,Lp,s2,a0", [(5, 40, 0.1, 1e-3), (10, 20, 0.1, 1e-3), (3, 30, 0.5, 1e-2)])
def test_plateau_exit_time_matches_the_integrated_flow(d, Lp, s2, a0):
    t1, t2, rem = th.plateau_exit_time(a0, d, Lp, s2)
    t = np.arange(0.0, t2 + 3.0, 0.001)
    _, _, loss = th.integrate_reduced_ode([a0, -a0], [a0, -a0], t, d, Lp, s2, method="DOP853")
    t_exit = t[np.argmax(loss < 0.95 * loss[0])]
    assert abs(t_exit - t2) <= rem + 0.001 < abs(t_exit - t1), (t_exit, t1, t2, rem)


def test_valley_eta_is_the_pairs_conditional_optimum():
    for w in (0.05, 0.14, 0.3):
        m = th.mu_star([w, -w], D, L, S2)
        assert 2 * w * m[0] == pytest.approx(float(th.valley_eta(w, D, L, S2)), rel=1e-10)
    assert float(th.valley_eta(1e-8, D, L, S2)) == pytest.approx(float(th.dgd_optimal_step(D, L, S2)), rel=1e-9)


@pytest.mark.parametrize("centered", [False, True])
def test_preconditioner_with_a_prior_covariance(centered):
    """beta ~ N(0, B): B = I/d gives the closed forms; a task supported on 4 of 6 coordinates
    (the multi-task law, noiseless query) has Gamma* = L/(L + tr B + sigma2) on its support
    (centred) and 0 off it; the risk formula agrees with Monte Carlo."""
    Sig = th.toeplitz_cov(D, 0.5)
    np.testing.assert_allclose(th.optimal_preconditioner(Sig, L, S2, centered, beta_cov=np.eye(D) / D),
                               th.optimal_preconditioner(Sig, L, S2, centered), rtol=1e-10)
    d6, Lp, s2 = 6, 48, 0.4
    B = np.diag([1.0, 1, 1, 1, 0, 0])
    G = th.optimal_preconditioner(np.eye(d6), Lp, s2, centered, beta_cov=B)
    if centered:
        np.testing.assert_allclose(np.diag(G)[:4], Lp / (Lp + 4 + s2), rtol=1e-12)
    np.testing.assert_allclose(G[4:, :], 0.0, atol=1e-14)
    np.testing.assert_allclose(G[:, 4:], 0.0, atol=1e-14)
    r0 = th.preconditioned_risk(G, np.eye(d6), Lp, s2, centered, beta_cov=B, query_noise=False)
    rng = np.random.default_rng(7)
    for _ in range(5):
        assert th.preconditioned_risk(G + 0.02 * rng.standard_normal((d6, d6)), np.eye(d6), Lp, s2, centered, beta_cov=B,
                                      query_noise=False) > r0
    n = 100_000
    x = rng.standard_normal((n, Lp, d6))
    xq = rng.standard_normal((n, d6))
    beta = rng.standard_normal((n, d6)) @ np.sqrt(B)
    y = np.einsum("nld,nd->nl", x, beta) + math.sqrt(s2) * rng.standard_normal((n, Lp))
    xc = x - x.mean(axis=1, keepdims=True) if centered else x
    g = np.einsum("nl,nld->nd", y, xc) / Lp
    Gm = 0.7 * G + 0.05
    sq = (np.einsum("nd,de,ne->n", xq, Gm, g) - np.einsum("nd,nd->n", xq, beta)) ** 2
    assert abs(sq.mean() - th.preconditioned_risk(Gm, np.eye(d6), Lp, s2, centered, beta_cov=B,
                                                  query_noise=False)) <= 5 * sq.std() / math.sqrt(n)


# ======================================================= the reduced flow against a trained pair (§5.7)
def test_euler_with_a_step_schedule():
    """A constant schedule is the authors' Euler; a two-step schedule (0.01 then 0.05, the trained
    pair's) stays within O(dt) of the adaptive flow, and delays the plateau exit by about
    t_exit dt / 2."""
    w0 = m0 = np.array([1e-3, -1e-3])
    t, w, m, loss = th.integrate_reduced_euler(w0, m0, np.full(800, 0.01), [0, 400, 800], 5, 40, 0.1)
    we, me, le = th.integrate_reduced_ode(w0, m0, [0.0, 4.0, 8.0], 5, 40, 0.1, method="euler", dt=0.01)
    np.testing.assert_allclose(w, we, rtol=1e-12)
    np.testing.assert_allclose(loss, le, rtol=1e-12)
    np.testing.assert_allclose(t, [0.0, 4.0, 8.0])
    dts = np.concatenate([np.full(2000, 0.01), np.full(200, 0.05)])
    t, w, m, _ = th.integrate_reduced_euler(w0, m0, dts, [0, 2000, 2200], 5, 40, 0.1)
    wf, mf, _ = th.integrate_reduced_ode(w0, m0, t, 5, 40, 0.1, method="LSODA")
    assert abs(w[-1, 0] - wf[-1, 0]) < 0.01 * abs(wf[-1, 0])
    x_e = w[1, 0] * m[1, 0]
    assert x_e < wf[1, 0] * mf[1, 0]  # Euler lags the flow
    with pytest.raises(ValueError):
        th.integrate_reduced_euler(w0, m0, [0.01], [0, 2], 5, 40, 0.1)


def test_exact_pair_valley_meets_the_reduced_valley_as_omega_vanishes():
    """Both valleys tend to the DGD optimal step 1/(1 + d c); at omega = 0.3 the exact one lies
    above the reduced one by 0.017 (notes §5.7); the exact valley is the risk's minimiser in mu."""
    d, L, s2 = 5, 40, 0.1
    limit = float(th.dgd_optimal_step(d, L, s2))
    for fn in (th.exact_pair_valley_eta, th.valley_eta):
        assert abs(float(fn(0.02, d, L, s2)) - limit) < 2e-3
    gap = th.exact_pair_valley_eta(0.3, d, L, s2) - float(th.valley_eta(0.3, d, L, s2))
    assert 0.015 < gap < 0.02
    eta = th.exact_pair_valley_eta(0.3, d, L, s2)
    mu = eta / 0.6
    r0 = th.kernel_risk(0.3, mu, d, L, s2, heads=2)
    assert r0 < th.kernel_risk(0.3, mu * 1.01, d, L, s2, heads=2)
    assert r0 < th.kernel_risk(0.3, mu * 0.99, d, L, s2, heads=2)
    np.testing.assert_allclose(th.exact_pair_valley_eta([0.3, 0.02], d, L, s2)[0], eta)


@pytest.mark.parametrize("d, Lp, s2", [(5, 40, 0.1), (3, 12, 0.5)])
def test_exact_plateau_rate_is_the_pairs_small_x_slope(d, Lp, s2):
    """On mu = omega = w with small w, the exact pair risk falls (L - 1)/L times as fast as L̃ in
    x = w^2 (notes §5.7): the exact flow is the reduced one slowed down by (L - 1)/L."""
    w = 0.01
    exact = (1 + s2) - th.kernel_risk(w, w, d, Lp, s2, heads=2)
    reduced = (1 + s2) - th.reduced_loss([w, -w], [w, -w], d, Lp, s2)
    assert exact / reduced == pytest.approx(th.exact_plateau_rate(Lp), abs=2e-3)
