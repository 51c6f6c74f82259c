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
