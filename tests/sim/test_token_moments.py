"""sim/token_moments.py: weights, horizons, exact references against Monte Carlo.

Acceptance (issue: token-sample part 2): the Gaussian closed-form mean and covariance of the
output distribution match Monte Carlo within CLT bands (z = 5, two-sided false alarm ~6e-7
per compared entry), both through the infinite-token map (the push-forward nu = Gamma_# mu)
and through self-attention of n tokens averaged over replicates."""
import numpy as np
import pytest

from sim.backend import make_rng
from sim.distributions import make_distribution
from sim.token_moments import (MomentProblem, base_weights, moment_errors, scale_factor,
                               sphere_output_covariance_rqmc)
from theory import token_sample as ts

Z = 5.0


def test_base_weights_are_fixed_by_the_seed_and_scaled_by_convention():
    a = base_weights(40, 42, "normalized")
    b = base_weights(40, 42, "normalized")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert abs(np.std(a[0]) * np.sqrt(40) - 1) < 0.05  # N(0, 1/d) entries
    assert abs(np.std(base_weights(40, 42, "unnormalized")[0]) - 1) < 0.05
    np.testing.assert_array_equal(scale_factor([2.0, 3.0], "normalized"), [2.0, 3.0])
    np.testing.assert_array_equal(scale_factor([2.0, 3.0], "unnormalized"), [4.0, 9.0])
    with pytest.raises(ValueError):
        base_weights(4, 0, "other")


def test_problem_horizons_both_conventions():
    d = 50
    p = MomentProblem.build(make_distribution("gaussian", d, scale=np.sqrt(0.1)), [0.05, 50.0])
    H_eff, H_code = p.horizons()
    np.testing.assert_allclose(H_code, np.sqrt(d) * H_eff)
    # H_eff = ||Sigma^1/2 A(s) Sigma^1/2|| = 0.1 s ||W_k^T W_q|| / sqrt(d)
    Wq, Wk, _ = base_weights(d, 42)
    np.testing.assert_allclose(H_eff, 0.1 * np.array([0.05, 50.0]) * np.linalg.norm(Wk.T @ Wq, 2) / np.sqrt(d))
    np.testing.assert_allclose(p.A(1), 50.0 * Wk.T @ Wq / np.sqrt(d))


def test_moment_errors_norms():
    rng = np.random.default_rng(0)
    m, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 3, 3))
    c = c + np.swapaxes(c, 1, 2)
    e = moment_errors(m, c, np.zeros((2, 3)), np.zeros((2, 3, 3)))
    np.testing.assert_allclose(e["mean_err"], np.linalg.norm(m, axis=1))
    np.testing.assert_allclose(e["cov_err"], np.linalg.norm(c, axis=(1, 2)))
    np.testing.assert_allclose(e["cov_err_op"], [np.linalg.norm(ci, 2) for ci in c])
    assert np.all(moment_errors(m, c, m, c)["cov_err"] == 0)


def test_gaussian_closed_form_equals_the_push_forward_monte_carlo():
    """nu = (Gamma_mu)_# mu for mu = N(m, Sigma), m != 0: N(V(I + Sigma A)m, V Sigma A Sigma A^T Sigma V^T)."""
    rng = np.random.default_rng(7)
    d, N = 4, 400_000
    m = rng.standard_normal(d)
    L = rng.standard_normal((d, d)) * 0.4
    Sigma = L @ L.T + 0.2 * np.eye(d)
    A = rng.standard_normal((d, d)) * 0.5
    V = rng.standard_normal((3, d))
    mean, cov = ts.gaussian_output_moments(m, Sigma, A, V)
    law = ts.GaussianLaw(m, Sigma)
    x = m + rng.standard_normal((N, d)) @ np.linalg.cholesky(Sigma).T
    out = ts.attention_limit(law, x, A, V)  # the tilt, not the closed form
    assert np.all(np.abs(out.mean(axis=0) - mean) <= Z * out.std(axis=0) / np.sqrt(N))
    oc = out - mean
    prod = oc[:, :, None] * oc[:, None, :]
    assert np.all(np.abs(prod.mean(axis=0) - cov) <= Z * prod.std(axis=0) / np.sqrt(N))


def test_gaussian_closed_form_equals_self_attention_monte_carlo():
    """Self-attention of n = 2000 tokens, 120 independent samples: the replicate average of the
    output mean and covariance sits within z = 5 standard errors (across replicates) of the
    closed form, for a small and a moderate horizon. The O(1/n) bias of the finite-n outputs
    is below 0.3 SE here (n >> n* = e^{H^2 |z|^2}); the band allows it."""
    d, n, k = 3, 2000, 120
    dist = make_distribution("gaussian", d, scale=0.8)
    p = MomentProblem.build(dist, [0.3, 0.55], weight_seed=3)
    em, ec, _ = p.exact_reference()
    assert p.horizons()[0].max() < 0.8
    ms, cs = [], []
    for r in range(k):
        m, c = p.sample_moments(make_rng(np.random.SeedSequence(11, spawn_key=(r,))), n)
        ms.append(m)
        cs.append(c)
    ms, cs = np.array(ms), np.array(cs)
    se_m = ms.std(axis=0, ddof=1) / np.sqrt(k)
    se_c = cs.std(axis=0, ddof=1) / np.sqrt(k)
    assert np.all(np.abs(ms.mean(axis=0) - em) <= Z * se_m)
    assert np.all(np.abs(cs.mean(axis=0) - ec) <= Z * se_c + 1e-15)
    # and the test is not vacuous: the standard errors resolve the covariance well
    assert np.all(se_c.max(axis=(1, 2)) < 0.05 * np.abs(ec).max(axis=(1, 2)))


def test_sphere_rqmc_reference_agrees_with_quadrature_and_self_attention():
    d = 3
    p = MomentProblem.build(make_distribution("sphere", d, radius=1.2), [0.5, 3.0], weight_seed=1,
                            convention="unnormalized")
    cov, se = sphere_output_covariance_rqmc(p.A1, p.factors, p.V, 1.2, seed=4, log2_points=12, n_scrambles=8)
    exact = np.stack([ts.sphere_output_covariance(p.A(k), p.V, 1.2) for k in range(2)])
    assert np.all(np.abs(cov - exact) <= Z * se + 1e-14)
    assert se.max() <= 1e-3 * np.abs(exact).max()
    em, ec, ese = p.exact_reference(seed=4, log2_points=12)
    np.testing.assert_array_equal(em, 0.0)
    # self-attention outputs of n tokens approach it (replicate average within 5 SE)
    n, k = 1500, 60
    cs = np.array([p.sample_moments(make_rng(np.random.SeedSequence(2, spawn_key=(r,))), n)[1] for r in range(k)])
    se_c = cs.std(axis=0, ddof=1) / np.sqrt(k)
    assert np.all(np.abs(cs.mean(axis=0) - exact) <= Z * se_c + 1e-12)


def test_sphere_rqmc_d50_against_the_deterministic_rule():
    d = 50
    A1 = 0.3 * np.random.default_rng(5).standard_normal((d, d))
    cov, se = sphere_output_covariance_rqmc(A1, [1.0, 10.0], None, 1.0, seed=0, log2_points=13, n_scrambles=6)
    for k, f in enumerate((1.0, 10.0)):
        det = ts.sphere_output_covariance(f * A1)
        assert np.all(np.abs(cov[k] - det) <= Z * se[k] + 2e-5 * np.abs(det).max())


def test_finite_reference_is_reproducible_and_close():
    p = MomentProblem.build(make_distribution("gaussian", 4, scale=0.5), [0.5], weight_seed=0)
    a = p.finite_reference(make_rng(9), 5000)
    b = p.finite_reference(make_rng(9), 5000)
    np.testing.assert_array_equal(a[0], b[0])
    em, ec, _ = p.exact_reference()
    e = moment_errors(*a, em, ec)
    assert e["mean_err"][0] < 0.05 and e["cov_err"][0] < 0.05 * np.linalg.norm(ec)
