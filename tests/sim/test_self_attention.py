"""sim.attention.self_attention_moments and hardmax_attention against naive references."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.attention import hardmax_attention, self_attention_moments


def _reference(X, A, V, scales, exclude_self):
    """Loops over queries with the n x n weights written out: the obviously-correct moments."""
    n = X.shape[0]
    means, covs = [], []
    for s in scales:
        O = np.empty((n, X.shape[1]))
        for i in range(n):
            sc = s * (X @ (A @ X[i]))
            keep = np.ones(n, dtype=bool)
            if exclude_self:
                keep[i] = False
            w = np.exp(sc[keep] - sc[keep].max())
            O[i] = w @ X[keep] / w.sum()
        O = O @ V.T
        means.append(O.mean(axis=0))
        covs.append(np.cov(O.T, bias=True).reshape(V.shape[0], V.shape[0]))
    return np.array(means), np.array(covs)


@settings(max_examples=40)
@given(n=st.integers(2, 37), d=st.integers(1, 7), dv=st.integers(1, 4), seed=st.integers(0, 2**16),
       excl=st.booleans(), bq=st.integers(1, 40), bk=st.integers(1, 40),
       log_scales=st.lists(st.floats(-3, 3), min_size=1, max_size=4))
def test_fast_paths_equal_the_loop_reference(n, d, dv, seed, excl, bq, bk, log_scales):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    A = rng.standard_normal((d, d))
    V = rng.standard_normal((dv, d))
    scales = 10.0 ** np.asarray(log_scales)
    rm, rc = _reference(X, A, V, scales, excl)
    tol = 1e-10 * (1 + np.abs(X).max() ** 2 * np.abs(V).max() ** 2)
    for method in ("numba", "stream", "naive"):
        m, c = self_attention_moments(X, A, V, scales, exclude_self=excl, method=method, block_q=bq, block_k=bk)
        assert m.shape == (len(scales), dv) and c.shape == (len(scales), dv, dv)
        assert np.abs(m - rm).max() <= tol, method
        assert np.abs(c - rc).max() <= tol, method


def test_huge_scores_stay_finite_and_exact():
    """Scores up to ~1e5 in magnitude (the hardmax end of the sphere preset)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    A = rng.standard_normal((5, 5))
    scales = [1e-3, 1.0, 1e2, 1e4]
    rm, rc = _reference(X, A, np.eye(5), scales, False)
    for method in ("numba", "stream"):
        m, c = self_attention_moments(X, A, None, scales, method=method, block_q=64, block_k=50)
        assert np.all(np.isfinite(m)) and np.all(np.isfinite(c))
        np.testing.assert_allclose(m, rm, atol=1e-12)
        np.testing.assert_allclose(c, rc, atol=1e-12)


def test_chunking_and_token_order_do_not_matter():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((999, 50)) * 0.3
    A = rng.standard_normal((50, 50)) * 0.1
    sc = np.geomspace(0.05, 50, 4)
    m0, c0 = self_attention_moments(X, A, None, sc)
    for bq, bk in ((7, 999), (1000, 13), (64, 256)):
        m, c = self_attention_moments(X, A, None, sc, block_q=bq, block_k=bk)
        np.testing.assert_allclose(m, m0, atol=1e-13)
        np.testing.assert_allclose(c, c0, atol=1e-13)
    perm = rng.permutation(999)
    m, c = self_attention_moments(X[perm], A, None, sc)
    np.testing.assert_allclose(m, m0, atol=1e-13)
    np.testing.assert_allclose(c, c0, atol=1e-13)


def test_two_tokens_without_self_swap():
    X = np.array([[1.0, -2.0], [3.0, 0.5]])
    m, c = self_attention_moments(X, 5 * np.eye(2), None, [1.0, 100.0], exclude_self=True)
    for k in range(2):  # each query sees only the other token
        np.testing.assert_allclose(m[k], X.mean(axis=0), atol=1e-15)
        np.testing.assert_allclose(c[k], np.cov(X.T, bias=True), atol=1e-14)


def test_value_matrix_is_applied_to_the_moments():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 4))
    A = rng.standard_normal((4, 4))
    V = rng.standard_normal((3, 4))
    m, c = self_attention_moments(X, A, None, [0.7])
    mv, cv = self_attention_moments(X, A, V, [0.7])
    np.testing.assert_allclose(mv[0], V @ m[0], atol=1e-13)
    np.testing.assert_allclose(cv[0], V @ c[0] @ V.T, atol=1e-13)


@pytest.mark.parametrize("kwargs, err", [
    ({"method": "fast"}, ValueError),
    ({"scales": []}, ValueError),
    ({"scales": [np.inf]}, ValueError),
    ({"block_q": 0}, ValueError),
])
def test_bad_arguments(kwargs, err):
    X = np.ones((4, 2))
    args = {"scales": [1.0], **kwargs}
    with pytest.raises(err):
        self_attention_moments(X, np.eye(2), None, **args)


def test_bad_inputs():
    with pytest.raises(ValueError, match="finite"):
        self_attention_moments(np.array([[np.nan, 1.0]]), np.eye(2))
    with pytest.raises(ValueError, match="at least one key"):
        self_attention_moments(np.ones((1, 2)), np.eye(2), exclude_self=True)
    with pytest.raises(ValueError, match="A must be"):
        self_attention_moments(np.ones((3, 2)), np.eye(3))
    with pytest.raises(ValueError, match="V must"):
        self_attention_moments(np.ones((3, 2)), np.eye(2), np.eye(3))


# ------------------------------------------------------------------------------ hardmax
@settings(max_examples=30)
@given(q=st.integers(1, 9), n=st.integers(1, 300), d=st.integers(1, 5), chunk=st.integers(1, 64),
       seed=st.integers(0, 2**16))
def test_hardmax_equals_argmax(q, n, d, chunk, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((q, d))
    K = rng.standard_normal((n, d))
    Vals = rng.standard_normal((n, 3))
    ref = np.argmax(a @ K.T, axis=1)
    for method in ("stream", "numba", "naive"):
        out, idx = hardmax_attention(a, K, Vals, method=method, chunk=chunk)
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_array_equal(out, Vals[ref])


def test_hardmax_ties_take_the_first_key_and_errors():
    K = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for method in ("stream", "numba", "naive"):
        _, idx = hardmax_attention(np.array([[1.0, 0.0]]), K, method=method, chunk=1)
        assert idx[0] == 0
    with pytest.raises(ValueError):
        hardmax_attention(np.ones((1, 2)), np.ones((0, 2)))
    with pytest.raises(ValueError):
        hardmax_attention(np.ones((1, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError):
        hardmax_attention(np.ones((1, 2)), np.ones((4, 2)), method="soft")


def test_self_token_effect_vanishes_like_one_over_n():
    """Spec check 9: with queries = keys and A > 0 the diagonal weight e^{<A x_i, x_i>} counts
    for ~1/n of each softmax, so including or excluding it moves the output moments by O(1/n).
    Fit the log-log slope of |cov_incl - cov_excl| over n = 250..4000 (8 samples each):
    -1 within 0.15."""
    rng = np.random.default_rng(4)
    ns = np.array([250, 1000, 4000])
    diffs = []
    for n in ns:
        d_n = []
        for _ in range(8):
            X = 0.7 * rng.standard_normal((n, 3))
            mi, ci = self_attention_moments(X, np.eye(3), None, [1.0])
            me, ce = self_attention_moments(X, np.eye(3), None, [1.0], exclude_self=True)
            d_n.append(np.linalg.norm(ci - ce) + np.linalg.norm(mi - me))
        diffs.append(np.mean(d_n))
    slope = np.polyfit(np.log(ns), np.log(diffs), 1)[0]
    assert -1.15 <= slope <= -0.85, slope
