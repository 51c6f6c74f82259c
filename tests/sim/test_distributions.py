"""Samplers against their laws, and closed-form limits against Monte Carlo (CLT bands, z = 5)."""
import numpy as np
import pytest

from sim.backend import make_rng
from sim.distributions import DISTRIBUTIONS, make_distribution
from sim.token_sample import empirical_attention
from theory import token_sample as ts

Z = 5.0  # two-sided false-alarm rate ~6e-7 per comparison


def _dist(name, d):
    return make_distribution(name, d)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_samples_have_the_law_mean_and_covariance(name):
    d, n = 3, 200_000
    dist = _dist(name, d)
    y = dist.sample(make_rng(np.random.SeedSequence(11)), n)
    assert y.shape == (n, d) and y.dtype == np.float64
    mean = y.mean(axis=0)
    se = y.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(mean - dist.law.mean) <= Z * se)
    cov = np.cov(y.T)
    # SE of each covariance entry from the fourth moments of the centred sample
    yc = y - dist.law.mean
    prod = yc[:, :, None] * yc[:, None, :]
    se_cov = prod.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(cov - dist.law.cov) <= Z * se_cov + 1e-12)
    if name in ("sphere",):
        assert np.allclose(np.linalg.norm(y, axis=1), dist.law.radius)
    if name in ("ball",):
        assert np.linalg.norm(y, axis=1).max() <= dist.law.radius
    if name == "truncated":
        assert np.abs(y).max() <= dist.law.c * dist.law.sigma


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_closed_form_limit_matches_monte_carlo_at_1e5_tokens(name):
    """Gamma_{mu_n}(x) ~ N(Gamma_mu(x), V M(x) V^T / n) for n >> n*(x): every coordinate within
    5 standard deviations (the O(1/n) bias is far below that at n = 1e5)."""
    d, n = 3, 100_000
    dist = _dist(name, d)
    rng = np.random.default_rng(5)
    A = rng.standard_normal((d, d)) * 0.5
    V = rng.standard_normal((2, d))
    x = rng.standard_normal((6, d))
    x *= (0.8 / np.linalg.norm(x @ A.T, axis=1))[:, None]  # |A x| = 0.8: moderate tilt
    for seed in range(3):
        y = dist.sample(make_rng(np.random.SeedSequence([7, seed])), n)
        emp = empirical_attention(x, y, A, V)
        lim = dist.limit(x, A, V)
        M = ts.fluctuation(dist.law, x, A, V)
        sd = np.sqrt(np.diagonal(M, axis1=1, axis2=2) / n)
        assert np.all(np.abs(emp - lim) <= Z * sd), (name, np.abs(emp - lim) / sd)
        assert np.all(ts.effective_sample_threshold(dist.law, x, A) < n / 100)


@pytest.mark.parametrize("name", ["gaussian", "sphere", "mixture"])
def test_fluctuation_matches_replicate_variance(name):
    """n Var[Gamma_{mu_n}(x)] -> V M(x) V^T: the replicate variance agrees within 5 of its own
    standard errors (estimated from the replicates' fourth moment) plus an O(1/n) allowance."""
    d, n, k = 2, 2000, 600
    dist = _dist(name, d)
    A = np.array([[0.9, 0.2], [-0.3, 0.6]])
    x = np.array([[0.7, -0.4]])
    vals = np.empty((k, d))
    for r in range(k):
        y = dist.sample(make_rng(np.random.SeedSequence([3, r])), n)
        vals[r] = empirical_attention(x, y, A)[0]
    theo = np.diagonal(ts.fluctuation(dist.law, x, A)[0]) / n
    dev = vals - vals.mean(axis=0)
    var = dev.var(axis=0, ddof=1)
    se_var = np.sqrt(np.maximum((dev**4).mean(axis=0) - var**2, 0) / k)
    nstar = float(ts.effective_sample_threshold(dist.law, x, A)[0])
    assert np.all(np.abs(var - theo) <= Z * se_var + theo * 10 * nstar / n), (var, theo)


def test_sampling_is_reproducible_and_seed_dependent():
    dist = _dist("mixture", 4)
    a = dist.sample(make_rng(np.random.SeedSequence(1)), 100)
    b = dist.sample(make_rng(np.random.SeedSequence(1)), 100)
    c = dist.sample(make_rng(np.random.SeedSequence(2)), 100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_distribution_and_bad_params():
    with pytest.raises(ValueError, match="unknown distribution"):
        make_distribution("cauchy", 2)
    with pytest.raises(ValueError, match="unknown parameters"):
        make_distribution("gaussian", 2, radius=1.0)
    with pytest.raises(ValueError, match="d must be"):
        make_distribution("sphere", 0)
