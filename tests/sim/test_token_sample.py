"""The sup-over-the-ball search and the uniform rate on small, fast cases."""
import numpy as np
import pytest

from sim.backend import make_rng
from sim.distributions import make_distribution
from sim.token_sample import empirical_attention, sup_errors
from studies.fits import loglog_rate


def _err(x, y, dist, A):
    return np.linalg.norm(empirical_attention(x, y, A) - dist.limit(x, A), axis=1)


@pytest.mark.parametrize("name,d", [("gaussian", 2), ("sphere", 3), ("mixture", 2)])
def test_search_beats_dense_random_probing(name, d):
    dist = make_distribution(name, d)
    A = np.eye(d)
    y = dist.sample(make_rng(np.random.SeedSequence(4)), 3000)
    radii = np.array([0.5, 1.5, 3.0])
    res = sup_errors(y, dist, A, None, radii)
    rng = np.random.default_rng(9)
    for i, R in enumerate(radii):
        u = rng.standard_normal((4000, d))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        x = u * R * rng.random((4000, 1)) ** (1 / d)
        probe = _err(x, y, dist, A).max()
        assert res.value[i] >= probe * (1 - 1e-9), (R, res.value[i], probe)
        # the reported value is really attained at the reported point, inside the ball
        assert np.linalg.norm(res.argmax[i]) <= R * (1 + 1e-12)
        assert np.isclose(_err(res.argmax[i][None], y, dist, A)[0], res.value[i], rtol=1e-12)


def test_search_is_deterministic_given_the_sample():
    dist = make_distribution("gaussian", 2)
    y = dist.sample(make_rng(np.random.SeedSequence(1)), 2000)
    r1 = sup_errors(y, dist, np.eye(2), None, [1.0, 4.0])
    r2 = sup_errors(y, dist, np.eye(2), None, [1.0, 4.0])
    np.testing.assert_array_equal(r1.value, r2.value)


def test_uniform_rate_is_one_over_sqrt_n_at_small_radius():
    """E sup_{|x|<=0.5} error ~ C/sqrt(n) (n_3 = e^{0.75} ~ 2 << n): the fitted slope lies in
    -1/2 +- (3 SE + 0.03) and the fit is informative (SE < 0.05)."""
    dist = make_distribution("gaussian", 2)
    n = np.array([256, 1024, 4096, 16384])
    k = 24
    err = np.empty((len(n), k))
    for i, nn in enumerate(n):
        for r in range(k):
            y = dist.sample(make_rng(np.random.SeedSequence([i, r])), int(nn))
            err[i, r] = sup_errors(y, dist, np.eye(2), None, [0.5], n_dirs=24).value[0]
    fit = loglog_rate(n, err)
    assert fit.se < 0.05
    assert abs(fit.slope + 0.5) <= 3 * fit.se + 0.03, fit


def test_bad_search_parameters():
    dist = make_distribution("gaussian", 2)
    y = np.zeros((10, 2))
    with pytest.raises(ValueError, match="positive"):
        sup_errors(y, dist, np.eye(2), None, [0.0])
    with pytest.raises(ValueError, match="n_refine"):
        sup_errors(y, dist, np.eye(2), None, [1.0], n_refine=0)
