"""The limit process of Result 1 (K and E sup|G|) and the saturated curve, against closed forms
and brute-force Monte Carlo of attention itself (notes token_sample §2.5, §2.6)."""
import numpy as np
import pytest
from scipy import stats

from theory import token_sample as ts

LAWS = {
    "gaussian": lambda: ts.GaussianLaw(np.array([0.3, -0.2, 0.1]),
                                       np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]])),
    "mixture": lambda: ts.MixtureLaw([0.3, 0.7], np.array([[1.0, 0.0, -0.5], [-0.4, 0.6, 0.2]]),
                                     np.stack([0.5 * np.eye(3), np.diag([1.2, 0.7, 0.9])])),
    "sphere": lambda: ts.SphereLaw(3, 1.5),
    "ball": lambda: ts.BallLaw(3, 2.0),
    "truncated": lambda: ts.TruncatedGaussianLaw(3, 0.7, 1.5),
    "atom": lambda: ts.AtomMixtureLaw(ts.BallLaw(3, 0.5), 1e-3, np.array([1.0, 0.0, 0.0])),
}
A3 = np.array([[0.8, 0.2, 0.0], [-0.1, 0.6, 0.3], [0.2, 0.0, 0.9]])
V23 = np.array([[1.0, 0.5, -0.2], [0.0, 0.7, 0.4]])


def _queries(d, m, scale, seed):
    return np.random.default_rng(seed).standard_normal((m, d)) * scale


def test_gaussian_kernel_is_the_closed_form():
    law = LAWS["gaussian"]()
    X, Y = _queries(3, 5, 0.7, 0), _queries(3, 4, 0.7, 1)
    got = ts.influence_covariance(law, X, Y, A3, V23)
    want = ts.gaussian_influence_covariance(X, Y, law.cov, A3, V23)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the pre-check: N(0, I_2), A = V = I gives e^{<x, x'>} (I + x' x^T)
    iso = ts.GaussianLaw(np.zeros(2), np.eye(2))
    X2 = _queries(2, 4, 1.0, 2)
    K = ts.influence_covariance(iso, X2, None, np.eye(2))
    for i in range(4):
        for j in range(4):
            ref = np.exp(X2[i] @ X2[j]) * (np.eye(2) + np.outer(X2[j], X2[i]))
            np.testing.assert_allclose(K[i, j], ref, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_kernel_diagonal_is_the_delta_method_and_the_kernel_is_symmetric(name):
    law = LAWS[name]()
    X = _queries(3, 6, 0.8, 3)
    K = ts.influence_covariance(law, X, None, A3, V23)
    diag = np.stack([K[i, i] for i in range(6)])
    np.testing.assert_allclose(diag, ts.fluctuation(law, X, A3, V23), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(K, np.swapaxes(np.swapaxes(K, 0, 1), 2, 3), rtol=1e-12, atol=1e-14)
    # positive semi-definite as a covariance of the stacked vector (G(x_1), ..., G(x_m))
    big = K.transpose(0, 2, 1, 3).reshape(12, 12)
    assert np.linalg.eigvalsh(big).min() > -1e-9 * np.abs(big).max()


def _brute_force_errors(R_grid, n, reps, seed):
    """sqrt(n) (Gamma_{mu_n}(x) - x) on the grid for N(0, I_2) tokens, A = V = I: (reps, m, 2)."""
    rng = np.random.default_rng(seed)
    out = np.empty((reps, R_grid.shape[0], 2))
    for r in range(reps):
        Y = rng.standard_normal((n, 2))
        s = R_grid @ Y.T
        w = np.exp(s - s.max(axis=1, keepdims=True))
        out[r] = np.sqrt(n) * ((w @ Y) / w.sum(axis=1, keepdims=True) - R_grid)
    return out


def test_kernel_and_expected_sup_against_a_brute_force_monte_carlo_of_attention(capsys):
    """At R = 1 (the default run's CLT radius), n = 4096 tokens (n >= 200 n_3): the covariance of
    sqrt(n)(Gamma_n - Gamma) over a grid of the disc equals K entry by entry, and its expected
    sup over the grid equals E sup|G| on the same grid, within z-bands from both Monte Carlos."""
    law = ts.GaussianLaw(np.zeros(2), np.eye(2))
    X = ts.ball_grid(2, 1.0, 30)
    m = X.shape[0]
    reps = 800
    g = _brute_force_errors(X, 4096, reps, seed=11)
    flat = g.reshape(reps, -1)
    emp = np.cov(flat, rowvar=False)
    K = ts.influence_covariance(law, X, None, np.eye(2)).transpose(0, 2, 1, 3).reshape(2 * m, 2 * m)
    se = np.sqrt((np.outer(np.diag(K), np.diag(K)) + K**2) / reps)  # SE of a Gaussian sample covariance
    z = stats.norm.isf(0.01 / (2 * K.size))
    zmax = float(np.max(np.abs(emp - K) / se))
    assert zmax < z + 1.0, zmax  # + 1: the finite-n bias, relative size ~ n_3 / n = 0.5%
    sup_bf = np.linalg.norm(g, axis=2).max(axis=1)
    G = ts.sample_limit_process(law, X, np.eye(2), seed=5, n_samples=20000)
    sup_th = np.linalg.norm(G, axis=2).max(axis=1)
    gap = abs(sup_bf.mean() - sup_th.mean())
    tol = 4.0 * np.hypot(sup_bf.std() / np.sqrt(reps), sup_th.std() / np.sqrt(sup_th.size))
    with capsys.disabled():
        print(f"\nbrute force R=1, {m} points, n=4096, {reps} reps: max |cov - K|/SE = {zmax:.2f} (band {z:.2f}); "
              f"E sup {sup_bf.mean():.4f} ± {sup_bf.std() / np.sqrt(reps):.4f} vs E sup|G| {sup_th.mean():.4f} "
              f"± {sup_th.std() / np.sqrt(sup_th.size):.4f}")
    assert gap < tol, (sup_bf.mean(), sup_th.mean(), tol)


def test_expected_sup_reproduces_the_pre_check_and_its_grid_converges():
    """N(0, I_2), A = V = I: E sup over the unit disc = 4.49 ± 0.02 (the issue's pre-check, ~400
    points); the refinement gaps shrink geometrically and the declared grid error is far below
    the Monte Carlo error; the same seed gives the same value."""
    law = ts.GaussianLaw(np.zeros(2), np.eye(2))
    res = ts.expected_sup_norm(law, 1.0, np.eye(2), seed=1, n_samples=6000)
    assert abs(res.value - 4.49) < 4 * np.hypot(res.se, 0.02), res.describe()
    gaps = np.diff(res.level_values)
    assert np.all(gaps > 0) and np.all(gaps[1:] < 0.75 * gaps[:-1]), res.level_values
    assert 0 < res.discretisation < 0.2 * res.se and res.residual < 1e-8
    again = ts.expected_sup_norm(law, 1.0, np.eye(2), seed=1, n_samples=6000)
    assert again.value == res.value
    assert list(res.points) == sorted(res.points) and res.points[-1] >= 800


def test_expected_sup_growth_from_one_to_two_matches_the_scale_preset():
    """log E sup|G| against R^2 from R = 1 to 2: the issue's 0.674 (the scale preset measured 0.680 ±
    0.013; the delta-method curve gives 0.615): the limit process, not the pointwise curve, is what
    the constant follows."""
    law = ts.GaussianLaw(np.zeros(2), np.eye(2))
    r1, r2 = (ts.expected_sup_norm(law, R, np.eye(2), seed=2, n_samples=4000) for R in (1.0, 2.0))
    slope = np.log(r2.value / r1.value) / 3
    se = np.hypot(r1.se / r1.value, r2.se / r2.value) / 3
    assert abs(slope - 0.680) < 4 * np.hypot(se, 0.013), slope
    delta = (ts.predicted_log_C(law, 2.0, np.eye(2)) - ts.predicted_log_C(law, 1.0, np.eye(2))) / 3
    assert slope - delta > 0.04 and abs(delta - 0.615) < 0.01
    assert r2.discretisation < 0.5 * r2.se * 3


def test_expected_sup_is_between_the_lower_bound_and_its_scale():
    """sup_x E|G(x)| <= E sup|G| for every law with a tilt (the grid's value is a lower bound of the
    sup; the Monte Carlo error is far smaller than the gap)."""
    for name in ("mixture", "sphere", "atom"):
        law = LAWS[name]()
        res = ts.expected_sup_norm(law, 1.0, A3, V23, seed=3, n_samples=2000, levels=(60, 120))
        lower = np.exp(ts.predicted_log_C_lower(law, 1.0, A3, V23))
        assert res.value > lower + 3 * res.se, (name, res.value, lower)


# -------------------------------------------------------------------------------- saturation
def _brute_force_worst_query(R, n, reps, seed, d=2):
    """E |Gamma_{mu_n}(x) - x| at x = R e_1 for N(0, I_d) tokens, A = V = I, all n tokens drawn."""
    rng = np.random.default_rng(seed)
    x = np.zeros(d)
    x[0] = R
    out = np.empty(reps)
    for r in range(reps):
        Y = rng.standard_normal((n, d))
        s = Y @ x
        w = np.exp(s - s.max())
        out[r] = np.linalg.norm(w @ Y / w.sum() - x)
    return out


@pytest.mark.parametrize("R,n", [(4.0, 512), (6.0, 2048), (8.0, 1024)])
def test_saturated_curve_is_the_error_of_attention_at_the_worst_query(R, n):
    law = ts.GaussianLaw(np.zeros(2), np.eye(2))
    curve = ts.gaussian_saturated_error(law, R, np.eye(2), n=[n], seed=4, reps=3000)
    bf = _brute_force_worst_query(R, n, 1500, seed=9)
    tol = 4.5 * np.hypot(curve.se[0], bf.std() / np.sqrt(bf.size))
    assert abs(curve.mean[0] - bf.mean()) < tol, (curve.mean[0], bf.mean(), tol)


def test_top_order_statistics_with_a_mean_field_bulk_match_exact_sampling():
    """Beyond ``top`` scores the bulk enters through its conditional expectations: at n = 2^15 with
    top = 512 the curve equals the exact one (top = n), within the Monte Carlo errors."""
    law = ts.GaussianLaw(np.zeros(2), np.eye(2))
    n = [2**12, 2**15]
    for R in (4.0, 7.0):
        approx = ts.gaussian_saturated_error(law, R, np.eye(2), n=n, seed=6, reps=1500, top=512)
        exact = ts.gaussian_saturated_error(law, R, np.eye(2), n=n, seed=7, reps=400, top=2**15)
        tol = 4.5 * np.hypot(approx.se, exact.se)
        assert np.all(np.abs(approx.mean - exact.mean) < tol), (R, approx.mean, exact.mean, tol)


def test_saturated_slope_follows_the_hint_and_scales_with_the_law():
    """At R = 8 near n = 4096 the local slope is about -(dM_n/dlog n)/(sigma - M_n) ~ -0.06 (M_n the
    expected maximum of n standard normals), with a Monte Carlo error far below the claim's
    resolution; for N(0, s^2 I) at the same sigma = |Sigma^{1/2} A x| the curve is s times the
    unit one (same seed), and a law without the Gaussian reduction is refused."""
    n = 2 ** np.arange(10, 15)
    law = ts.GaussianLaw(np.zeros(2), np.eye(2))
    curve = ts.gaussian_saturated_error(law, 8.0, np.eye(2), n=n, seed=8, reps=600)
    slope, se = ts.curve_loglog_slope(curve, np.ones(n.size, bool))
    z = np.linspace(-10, 10, 20001)

    def expected_max(k):
        return np.trapezoid(z * k * stats.norm.pdf(z) * stats.norm.cdf(z) ** (k - 1), z)

    M = expected_max(4096)
    hint = -(expected_max(8192) - expected_max(2048)) / np.log(4) / (8.0 - M)
    assert se < 0.002 and abs(slope - hint) < 0.15 * abs(hint) and -0.075 < slope < -0.045, (slope, hint)
    wide = ts.gaussian_saturated_error(ts.GaussianLaw(np.zeros(2), 1.69 * np.eye(2)), 8.0 / 1.3, np.eye(2), n=n,
                                       seed=8, reps=600)
    assert wide.sigma == pytest.approx(8.0) and np.allclose(wide.mean, 1.3 * curve.mean)  # sigma fixes the law
    with pytest.raises(TypeError):
        ts.gaussian_saturated_error(ts.SphereLaw(2), 8.0, np.eye(2), n=n, seed=0)
