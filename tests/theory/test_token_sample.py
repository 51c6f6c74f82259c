"""Closed forms of theory/token_sample.py against independent computations."""
import mpmath
import numpy as np
import pytest
import sympy as sp

from theory import token_sample as ts

LAWS = {
    "gaussian": lambda: ts.GaussianLaw(np.array([0.3, -0.2, 0.1]),
                                       np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]])),
    "mixture": lambda: ts.MixtureLaw([0.3, 0.7], np.array([[1.0, 0.0, -0.5], [-0.4, 0.6, 0.2]]),
                                     np.stack([0.5 * np.eye(3), np.diag([1.2, 0.7, 0.9])])),
    "sphere": lambda: ts.SphereLaw(3, 1.5),
    "sphere50": lambda: ts.SphereLaw(50, 1.0),
    "ball": lambda: ts.BallLaw(4, 2.0),
    "truncated": lambda: ts.TruncatedGaussianLaw(3, 0.7, 1.5),
}


@pytest.mark.parametrize("nu", [0.0, 0.5, 1.0, 24.0, 100.0])
def test_bessel_ratio_and_log_iv_match_mpmath(nu):
    x = np.array([1e-12, 1e-3, 0.5, 3.0, 50.0, 1e3, 1e6])
    mpmath.mp.dps = 40
    ratio = [float(mpmath.besseli(nu + 1, v) / mpmath.besseli(nu, v)) for v in x]
    logiv = [float(mpmath.log(mpmath.besseli(nu, v))) for v in x]
    np.testing.assert_allclose(ts.bessel_ratio(nu, x), ratio, rtol=1e-12)
    np.testing.assert_allclose(ts.log_bessel_iv(nu, x), logiv, rtol=1e-13, atol=1e-13)
    assert ts.bessel_ratio(nu, 0.0) == 0.0


@pytest.mark.parametrize("name", sorted(LAWS))
def test_tilt_moments_are_derivatives_of_log_partition(name):
    law = LAWS[name]()
    d = law.dim
    rng = np.random.default_rng(3)
    h = 1e-5
    for scale in (0.3, 1.3, 4.0):
        a = rng.standard_normal(d) * scale / np.sqrt(d) * 2
        grad = np.array([(law.log_partition(a + h * e) - law.log_partition(a - h * e)) / (2 * h) for e in np.eye(d)])
        hess = np.array([(law.tilted_mean(a + h * e) - law.tilted_mean(a - h * e)) / (2 * h) for e in np.eye(d)])
        np.testing.assert_allclose(law.tilted_mean(a), grad, atol=1e-7 * max(1, np.abs(grad).max()))
        np.testing.assert_allclose(law.tilted_cov(a), hess, atol=1e-6 * max(1, np.abs(hess).max()))
    zero = np.zeros(d)
    assert abs(float(law.log_partition(zero))) < 1e-12
    np.testing.assert_allclose(law.tilted_mean(zero), law.mean, atol=1e-12)
    np.testing.assert_allclose(law.tilted_cov(zero), law.cov, atol=1e-12)
    # vectorised over leading axes
    A = rng.standard_normal((4, 5, d))
    assert law.tilted_mean(A).shape == (4, 5, d)
    assert law.tilted_cov(A).shape == (4, 5, d, d)
    assert law.log_partition(A).shape == (4, 5)


def test_known_covariances():
    assert np.allclose(ts.SphereLaw(5, 2.0).cov, 4.0 / 5 * np.eye(5))
    assert np.allclose(ts.BallLaw(5, 2.0).cov, 4.0 / 7 * np.eye(5))
    # box-truncated normal: variance 1 - 2 c phi(c) / (2 Phi(c) - 1)
    from scipy.stats import norm

    c = 1.5
    var = 1 - 2 * c * norm.pdf(c) / (2 * norm.cdf(c) - 1)
    assert np.allclose(ts.TruncatedGaussianLaw(2, 1.0, c).cov, var * np.eye(2))


def test_extreme_arguments_stay_finite_and_correct():
    s = ts.SphereLaw(3, 1.0)
    k = 1e6
    m = s.tilted_mean(np.array([k, 0.0, 0.0]))
    # A_3(k) = coth(k) - 1/k
    assert np.isclose(m[0], 1 - 1 / k, rtol=1e-12) and np.all(np.isfinite(s.tilted_cov(np.array([k, 0, 0]))))
    assert np.isfinite(ts.SphereLaw(50, 1.0).log_partition(np.array([1e-9] + [0.0] * 49)))
    t = ts.TruncatedGaussianLaw(2, 1.0, 2.0)
    mt = t.tilted_mean(np.array([1e3, -1e3]))
    assert np.all(np.abs(mt) < 2.0) and np.allclose(np.abs(mt), 2.0, atol=1e-2)
    assert np.all(np.isfinite(t.log_partition(np.array([1e3, -1e3]))))


def test_gaussian_closed_forms_agree_with_generic_tilt_formulas():
    law = LAWS["gaussian"]()
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 3)) * 0.5
    V = rng.standard_normal((2, 3))
    x = rng.standard_normal((7, 3))
    np.testing.assert_allclose(ts.attention_limit(law, x, A, V),
                               ts.gaussian_attention_limit(x, law.mean, law.cov, A, V), rtol=1e-13)
    np.testing.assert_allclose(ts.fluctuation(law, x, A, V), ts.gaussian_fluctuation(x, law.cov, A, V),
                               rtol=1e-12, atol=1e-12)
    # output law of Gamma_mu pushed forward by mu: mean V(I + Sigma A) m, cov V Sigma A Sigma A^T Sigma V^T
    mean, cov = ts.gaussian_output_moments(law.mean, law.cov, A, V)
    S = law.cov
    np.testing.assert_allclose(mean, V @ (law.mean + S @ A @ law.mean))
    np.testing.assert_allclose(cov, V @ S @ A @ S @ A.T @ S @ V.T)


def test_sympy_derivation_of_gaussian_tilt():
    out = ts.derive_gaussian_tilt(d=2)
    assert out["square_identity"] == 0
    a, m, S = out["symbols"]["a"], out["symbols"]["m"], out["symbols"]["S"]
    assert sp.simplify(out["gradient"] - (m + S * a)) == sp.zeros(2, 1)
    s1 = out["symbols_1d"]
    assert sp.simplify(out["mgf_1d"] - (s1["alpha"] * s1["mu"] + s1["alpha"] ** 2 * s1["sigma"] ** 2 / 2)) == 0
    # the symbolic gradient, evaluated, is the numeric tilted mean
    vals = {a[0]: 0.3, a[1]: -1.1, m[0]: 0.2, m[1]: -0.5, S[0, 0]: 1.3, S[0, 1]: 0.4, S[1, 1]: 0.9}
    num = np.array([float(g.subs(vals)) for g in out["gradient"]])
    law = ts.GaussianLaw(np.array([0.2, -0.5]), np.array([[1.3, 0.4], [0.4, 0.9]]))
    np.testing.assert_allclose(num, law.tilted_mean(np.array([0.3, -1.1])), rtol=1e-14)


def test_predicted_constants_for_isotropic_gaussian():
    law = ts.GaussianLaw(np.zeros(2), np.eye(2))
    for R in (0.5, 1.0, 2.0, 3.0):
        # log C = R^2/2 + 1/2 log(tr Sigma + R^2) for A = V = I
        assert np.isclose(ts.predicted_log_C(law, R, np.eye(2)), 0.5 * R**2 + 0.5 * np.log(2 + R**2), rtol=1e-9)
        assert np.isclose(ts.log_effective_sample_threshold_sup(law, R, np.eye(2)), R**2, rtol=1e-9)
        assert np.isclose(ts.log_normal_approx_threshold_sup(law, R, np.eye(2)), 3 * R**2, rtol=1e-9)
    S = np.diag([2.0, 0.5])
    A = np.array([[1.0, 0.5], [0.0, 0.3]])
    assert np.isclose(ts.log_C_quadratic_coefficient(S, A), 0.5 * np.linalg.norm(np.sqrt(S) @ A, 2) ** 2)
    # uniform sphere in d = 3: sqrt(n) RMSE is ~1 for every query (notes token_sample §3.2): C polynomial (flat)
    sph = ts.SphereLaw(3, 1.0)
    assert abs(ts.predicted_log_C(sph, 8.0, np.eye(3)) - ts.predicted_log_C(sph, 1.0, np.eye(3))) < 0.05


def test_horizon_conventions():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((4, 4))
    rho = 0.1
    S = rho * np.eye(4)
    assert np.isclose(ts.horizon(S, A), rho * np.linalg.norm(A, 2))
    assert np.isclose(ts.horizon(S, A, two_sided=False), np.sqrt(rho) * np.linalg.norm(A, 2))
    assert np.isclose(ts.horizon(S, 3 * A), 3 * ts.horizon(S, A))  # H_eff = scale * H_code
    beta = ts.beta_of_horizon(np.array([0.0, 0.5, 1.0, 3.0]))
    assert beta[0] == 0.5 and np.all(np.diff(beta) < 0) and np.isclose(beta[2], 0.25)


def test_sphere_directions_are_unit_and_spread():
    for d, k in ((2, 16), (3, 64), (7, 100)):
        u = ts.sphere_directions(d, k)
        assert u.shape == (k, d)
        np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
        G = u @ u.T - 2 * np.eye(k)
        assert G.max() < 0.999  # no two directions coincide
        np.testing.assert_array_equal(u, ts.sphere_directions(d, k))  # deterministic
    # roughly uniform: the mean direction is small
    assert np.linalg.norm(ts.sphere_directions(3, 400).mean(axis=0)) < 0.05


def test_sup_over_ball_finds_a_known_maximum():
    c = np.array([0.3, -0.4, 0.2])

    def f(X):  # maximum inside the ball, at c
        return -np.sum((X - c) ** 2, axis=-1)

    v, x = ts.sup_over_ball(f, 3, 1.0)
    assert abs(v) < 1e-8 and np.allclose(x, c, atol=1e-4)

    def g(X):  # maximum on the boundary, along e
        return X @ np.array([1.0, 2.0, -2.0])

    v, x = ts.sup_over_ball(g, 3, 2.0)
    assert np.isclose(v, 6.0, rtol=1e-6) and np.linalg.norm(x) <= 2.0 + 1e-12
