"""theory/token_sample (moments, hardmax, laws): sphere output covariance, hardmax limit and bias, the finer
beta heuristic, the atom mixture and the truncated-Gaussian output moments.

Statistical checks use fixed seeds and z = 5 CLT bands (two-sided false alarm ~6e-7 each)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from theory import token_sample as ts
from theory.token_sample import moments as ts_moments

Z = 5.0


def _sphere(rng, n, d, radius=1.0):
    z = rng.standard_normal((n, d))
    return radius * z / np.linalg.norm(z, axis=1, keepdims=True)


# ------------------------------------------------------------------------------ beta heuristics
@given(st.floats(0.0, 100.0))
def test_fine_heuristic_is_at_least_the_authors_curve(H):
    fine = float(ts.beta_fine_of_horizon(H))
    assert fine >= float(ts.beta_of_horizon(H)) - 1e-15
    assert fine == (0.5 if H <= 1 else pytest.approx(1 / (1 + H * H)))


def test_fine_heuristic_is_continuous_at_one():
    assert ts.beta_fine_of_horizon(1.0) == 0.5
    assert ts.beta_fine_of_horizon(1.0 + 1e-9) == pytest.approx(0.5, abs=1e-8)


# ------------------------------------------------------------------------------- atom mixture
ATOM = ts.AtomMixtureLaw(ts.BallLaw(2, 0.5), 1e-3, np.array([1.5, 0.0]))


@settings(max_examples=30)
@given(st.floats(-8, 8), st.floats(-8, 8))
def test_atom_tilt_is_the_gradient_of_the_log_partition(a0, a1):
    a = np.array([a0, a1])
    h = 1e-5
    grad = np.array([(ATOM.log_partition(a + h * e) - ATOM.log_partition(a - h * e)) / (2 * h) for e in np.eye(2)])
    hess = np.stack([(ATOM.tilted_mean(a + h * e) - ATOM.tilted_mean(a - h * e)) / (2 * h) for e in np.eye(2)], -1)
    scale = 1 + np.abs(ATOM.tilted_mean(a)).max()
    assert np.allclose(grad, ATOM.tilted_mean(a), atol=1e-7 * scale)
    assert np.allclose(hess, ATOM.tilted_cov(a), atol=1e-6 * scale)


def test_atom_untilted_moments_and_validation():
    np.testing.assert_allclose(ATOM.tilted_mean(np.zeros(2)), ATOM.mean, atol=1e-15)
    np.testing.assert_allclose(ATOM.tilted_cov(np.zeros(2)), ATOM.cov, atol=1e-15)
    assert ATOM.support_radius == 1.5
    with pytest.raises(ValueError):
        ts.AtomMixtureLaw(ts.BallLaw(2, 0.5), 0.0, np.array([1.0, 0.0]))
    with pytest.raises(ValueError):
        ts.AtomMixtureLaw(ts.BallLaw(2, 0.5), 0.1, np.array([1.0, 0.0, 0.0]))


# ---------------------------------------------------------------------------------- hardmax
def test_hardmax_limit_per_law():
    x = np.array([[1.0, 1.0, 0.0], [0.0, -2.0, 0.0]])
    np.testing.assert_allclose(ts.hardmax_limit(ts.SphereLaw(3, 2.0), x, np.eye(3)),
                               2 * x / np.linalg.norm(x, axis=1, keepdims=True))
    np.testing.assert_allclose(ts.hardmax_limit(ts.TruncatedGaussianLaw(3, 0.5, 3.0), x, np.eye(3)),
                               1.5 * np.sign(x))
    # atom: wins along e_1 (1.5 > 0.5) and loses against the ball's boundary elsewhere
    pts = ts.hardmax_limit(ATOM, np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), np.eye(2))
    np.testing.assert_allclose(pts, [[1.5, 0.0], [0.0, 0.5], [-0.5, 0.0]])
    with pytest.raises(ValueError, match="unbounded"):
        ts.hardmax_limit(ts.GaussianLaw(np.zeros(2), np.eye(2)), np.ones((1, 2)), np.eye(2))


@pytest.mark.parametrize("d", [2, 3, 7])
def test_softmax_limit_tends_to_the_hardmax_and_the_bias_is_exact(d):
    rng = np.random.default_rng(d)
    law = ts.SphereLaw(d, 1.3)
    A = rng.standard_normal((d, d))
    x = rng.standard_normal((4, d))
    kappa = 1.3 * np.linalg.norm(x @ A.T, axis=1)
    hard = ts.hardmax_limit(law, x, A)
    for lam in (1.0, 30.0, 1e4):
        gap = np.linalg.norm(ts.attention_limit(law, x, A, lam=lam) - hard, axis=1)
        np.testing.assert_allclose(gap, ts.sphere_hardmax_bias(d, lam * kappa, 1.3), rtol=1e-9, atol=1e-15)
    big = ts.sphere_hardmax_bias(d, 1e6 * kappa, 1.3)
    np.testing.assert_allclose(big / ts.sphere_hardmax_bias_asymptotic(d, 1e6 * kappa, 1.3), 1.0, rtol=1e-5)


def test_pure_hardmax_expected_error_matches_monte_carlo():
    rng = np.random.default_rng(3)
    d, n, reps = 3, 40, 20000
    u = np.eye(d)[0]
    z = _sphere(rng, reps * n, d).reshape(reps, n, d)
    best = z[np.arange(reps), np.argmax(z @ u, axis=1)]
    err = np.linalg.norm(best - u, axis=1)
    exact = ts.sphere_hardmax_expected_error(d, n)
    assert abs(err.mean() - exact) <= Z * err.std(ddof=1) / np.sqrt(reps)
    # radius scales linearly, errors decrease with n, the asymptotic slope is -1/(d-1)
    assert ts.sphere_hardmax_expected_error(d, n, 2.0) == pytest.approx(2 * exact, rel=1e-9)
    e = ts.sphere_hardmax_expected_error(5, np.array([1e2, 1e4, 1e8, 1e9]))
    assert np.all(np.diff(e) < 0)
    slope = np.log(e[3] / e[2]) / np.log(10)
    assert slope == pytest.approx(ts.sphere_hardmax_rate(5), abs=0.01)
    with pytest.raises(ValueError):
        ts.sphere_hardmax_expected_error(1, 10)


def test_hardmax_error_prediction_limits():
    law = ts.SphereLaw(3)
    x = np.array([1.0, 0.0, 0.0])
    bias = ts.sphere_hardmax_bias(3, 50.0)
    assert ts.hardmax_error_prediction(law, x, np.eye(3), 50.0, 1e30) == pytest.approx(bias, rel=1e-9)
    vals = ts.hardmax_error_prediction(law, x, np.eye(3), [50.0] * 3, [1e2, 1e4, 1e6])
    assert np.all(np.diff(vals) < 0) and vals[-1] > bias


# ------------------------------------------------------------------- sphere output covariance
@pytest.mark.parametrize("d", [2, 3])
def test_sphere_output_covariance_quadrature_matches_monte_carlo(d):
    rng = np.random.default_rng(10 + d)
    A = 2.0 * rng.standard_normal((d, d))
    V = rng.standard_normal((d + 1, d))
    radius, N = 1.3, 200_000
    C = ts.sphere_output_covariance(A, V, radius)
    x = _sphere(rng, N, d, radius)
    out = ts.attention_limit(ts.SphereLaw(d, radius), x, A, V)
    assert np.all(np.abs(out.mean(axis=0)) <= Z * out.std(axis=0) / np.sqrt(N))  # the mean is 0
    prod = out[:, :, None] * out[:, None, :]
    se = prod.std(axis=0) / np.sqrt(N)
    assert np.all(np.abs(prod.mean(axis=0) - C) <= Z * se + 1e-12)
    # the quadrature has converged
    np.testing.assert_allclose(C, ts.sphere_output_covariance(A, V, radius, n_quad=200), atol=1e-13)


def test_sphere_output_covariance_small_scores_is_the_linear_tilt():
    d, rho = 6, 0.8
    A = 1e-4 * np.random.default_rng(1).standard_normal((d, d))
    S = rho**2 / d * np.eye(d)
    np.testing.assert_allclose(ts.sphere_output_covariance(A, radius=rho), S @ A @ S @ A.T @ S, rtol=1e-3)


def test_sphere_output_covariance_d50_rules_agree():
    """The deterministic Sobol rule with the control variate, at two sizes and against plain
    points without the control variate (weights given)."""
    d = 50
    A = 0.3 * np.random.default_rng(2).standard_normal((d, d))
    C16 = ts.sphere_output_covariance(A)
    C18 = ts.sphere_output_covariance(A, sobol_log2=18)
    assert np.abs(C16 - C18).max() <= 1e-4 * np.abs(C18).max()
    _, sigma, _ = np.linalg.svd(A)
    pts = ts_moments._sobol_sphere_points(d, 16)
    plain = ts.sphere_output_variances(sigma, 1.0, points=pts, weights=np.full(len(pts), 1 / len(pts)))
    cv = ts.sphere_output_variances(sigma, 1.0, points=pts)
    assert np.abs(plain - cv).max() <= 3e-3 * cv.max()
    assert np.trace(C18) == pytest.approx(np.sum(cv), rel=1e-4)


# ------------------------------------------------------------------------------ truncated law
def test_truncated_output_moments_match_monte_carlo_and_the_gaussian_limit():
    law = ts.TruncatedGaussianLaw(2, 0.7, 2.0)
    a, N = 1.5, 200_000
    mean, cov = ts.truncated_output_moments(law, a)
    x = stats.truncnorm(-2.0, 2.0, scale=0.7).rvs((N, 2), random_state=5)
    out = ts.attention_limit(law, x, a * np.eye(2))
    assert np.all(np.abs(out.mean(axis=0) - mean) <= Z * out.std(axis=0) / np.sqrt(N))
    prod = out[:, :, None] * out[:, None, :]
    assert np.all(np.abs(prod.mean(axis=0) - cov) <= Z * prod.std(axis=0) / np.sqrt(N) + 1e-12)
    # a wide truncation is the Gaussian: cov -> sigma^6 a^2 I
    _, wide = ts.truncated_output_moments(ts.TruncatedGaussianLaw(2, 0.7, 12.0), a)
    np.testing.assert_allclose(wide, 0.7**6 * a**2 * np.eye(2), rtol=1e-9)
    V = np.array([[1.0, 2.0]])
    _, cv = ts.truncated_output_moments(law, a, V)
    np.testing.assert_allclose(cv, V @ cov @ V.T)
    with pytest.raises(TypeError):
        ts.truncated_output_moments(ts.SphereLaw(2), 1.0)


# ------------------------------------------------------------- predicted rates and prefactors
def test_predicted_moment_rate_per_law():
    gauss = ts.GaussianLaw(np.zeros(2), np.eye(2))
    H = np.array([0.1, 1.0, 2.0])
    np.testing.assert_allclose(ts.predicted_moment_rate(gauss, H), [0.5, 0.5, 0.2])
    # bounded laws: a bounded influence function, the CLT rate at every horizon
    for law in (ts.SphereLaw(3), ts.TruncatedGaussianLaw(2, 1.0, 3.0), ATOM):
        np.testing.assert_array_equal(ts.predicted_moment_rate(law, H), 0.5)
    assert ts.predicted_moment_rate(gauss, 3.0) == pytest.approx(0.1)
    # never below the authors' curve
    assert np.all(ts.predicted_moment_rate(gauss, H) >= ts.beta_of_horizon(H))


def test_truncated_moment_prefactors_without_attention_are_the_token_mean():
    """a -> 0: every output is the token mean, so sqrt(n)|mean error| -> E|N(0, Var X)| and the
    output covariance (of order a^2) has a vanishing prefactor."""
    law = ts.TruncatedGaussianLaw(3, 0.8, 1.5)
    c_mean, c_cov = ts.truncated_moment_prefactors(law, 1e-7)
    assert c_mean == pytest.approx(float(ts.gaussian_norm_mean(law.cov)), rel=1e-6)
    assert c_cov < 1e-10
    with pytest.raises(TypeError):
        ts.truncated_moment_prefactors(ts.SphereLaw(2), 1.0)
    # converged in the number of quadrature nodes
    np.testing.assert_allclose(ts.truncated_moment_prefactors(law, 0.7),
                               ts.truncated_moment_prefactors(law, 0.7, n_quad=400), rtol=1e-9)


def test_truncated_moment_prefactors_match_self_attention_monte_carlo():
    """sqrt(n) E|mean error| and sqrt(n) E|cov error|_F of self-attention outputs (query among
    its keys) at n = 2000 against the delta-method limits; z = 5 bands plus the O(1/sqrt(n))
    correction the limit leaves out (5%)."""
    from sim.attention import self_attention_moments

    law = ts.TruncatedGaussianLaw(2, 1.0, 2.0)
    a, n, reps = 0.5, 2000, 200
    ref_m, ref_c = ts.truncated_output_moments(law, a)
    rng = np.random.default_rng(4)
    em, ec = [], []
    for _ in range(reps):
        X = stats.truncnorm(-2.0, 2.0).rvs((n, 2), random_state=rng)
        m, C = self_attention_moments(X, a * np.eye(2), None, (1.0,))
        em.append(np.linalg.norm(m[0] - ref_m))
        ec.append(np.linalg.norm(C[0] - ref_c))
    c_mean, c_cov = ts.truncated_moment_prefactors(law, a)
    for e, c in ((np.sqrt(n) * np.array(em), c_mean), (np.sqrt(n) * np.array(ec), c_cov)):
        assert abs(e.mean() - c) <= Z * e.std(ddof=1) / np.sqrt(reps) + 0.05 * c, (e.mean(), c)


# --------------------------------------------------------------- finite-n softmax, coupled band
def test_softmax_finite_n_bias_and_band_match_monte_carlo():
    """The first-order mean of Gamma^lam_{mu_n}(x) (ratio-estimator bias) and the band
    |E e| <= E|e| <= sqrt(|E e|^2 + tr M/n), on the sphere where n*/n is small."""
    from sim.distributions import make_distribution
    from sim.token_sample import empirical_attention

    d, lam, n, reps = 3, 20.0, 400, 3000
    law = ts.SphereLaw(d)
    x = np.array([1.0, 0.0, 0.0])
    dist = make_distribution("sphere", d)
    rng = np.random.default_rng(7)
    out = np.array([empirical_attention(x[None], dist.sample(rng, n), np.eye(d), None, lam)[0] for _ in range(reps)])
    b = ts.softmax_finite_n_bias(law, x, np.eye(d), lam, n)
    gap = out.mean(axis=0) - ts.attention_limit(law, x, np.eye(d), None, lam)
    assert np.all(np.abs(gap - b) <= Z * out.std(axis=0, ddof=1) / np.sqrt(reps))
    assert b[0] < 0 and abs(b[0]) > 2 * out[:, 0].std(ddof=1) / np.sqrt(reps)  # the bias is resolved
    lo, hi, ratio = ts.hardmax_error_band(law, x, np.eye(d), lam, n)
    assert ratio == pytest.approx(float(ts.effective_sample_threshold(law, x, np.eye(d), lam)) / n)
    err = np.linalg.norm(out - x, axis=1)
    se = err.std(ddof=1) / np.sqrt(reps)
    assert lo - Z * se <= err.mean() <= hi + Z * se and lo < hi
    # n -> infinity: the band closes on the population bias
    lo, hi, _ = ts.hardmax_error_band(law, x, np.eye(d), lam, 1e12)
    assert lo == pytest.approx(ts.sphere_hardmax_bias(d, lam), rel=1e-6) and hi == pytest.approx(lo, rel=1e-6)
    lo, hi, r = ts.hardmax_error_band(law, x, np.eye(d), [10.0, 20.0], [100, 1000])
    assert lo.shape == hi.shape == r.shape == (2,)
