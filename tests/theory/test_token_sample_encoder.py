"""theory/token_sample/encoder.py: horizons of a multi-head layer and the delta-method
constant of the mean's error, against direct computations."""
import numpy as np
import pytest

from theory import token_sample as ts


def _layer(seed=0, T=8, d=5, H=3, dh=2, spread=1.2):
    rng = np.random.default_rng(seed)
    X = spread * rng.standard_normal((T, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    Wq, Wk, Wv = (rng.standard_normal((H, dh, d)) for _ in range(3))
    bq, bk, bv = (rng.standard_normal((H, dh)) for _ in range(3))
    return X, Wq, bq, Wk, bk, Wv, bv, 1 / np.sqrt(dh)


def test_horizons_against_the_definitions():
    X, Wq, _, Wk, _, _, _, scale = _layer()
    Sigma = ts.token_covariance(X)
    np.testing.assert_allclose(Sigma, np.cov(X.T, bias=True), atol=1e-14)
    L = np.linalg.cholesky(Sigma + 1e-6 * np.eye(Sigma.shape[0]))
    want = [np.linalg.norm(L.T @ (scale * Wk[h].T @ Wq[h]) @ L, 2) for h in range(Wq.shape[0])]
    np.testing.assert_allclose(ts.head_horizons(Sigma, Wq, Wk, scale), want, rtol=1e-12)
    A = sum(Wk[h].T @ Wq[h] for h in range(Wq.shape[0]))
    assert ts.authors_horizon(Sigma, Wq, Wk) == pytest.approx(np.linalg.norm(L.T @ A @ L, 2), rel=1e-12)
    # the two-sided horizon of theory.token_sample.horizon, up to the 1e-6 jitter
    np.testing.assert_allclose(ts.head_horizons(Sigma, Wq, Wk, scale, jitter=1e-15),
                               [ts.horizon(Sigma, scale * Wk[h].T @ Wq[h]) for h in range(Wq.shape[0])], rtol=1e-6)
    assert ts.encoder_rate_bound(0.0) == 0.5 and ts.encoder_rate_bound(1.0) == 0.25


def _mean_output(X, Wq, bq, Wk, bk, Wv, bv, scale, q):
    """m(Q) = E_Q Gamma_Q for token weights q (sum 1), by loops."""
    out = []
    for h in range(Wq.shape[0]):
        Q, K, V = X @ Wq[h].T + bq[h], X @ Wk[h].T + bk[h], X @ Wv[h].T + bv[h]
        s = scale * Q @ K.T
        w = np.exp(s - s.max(axis=1, keepdims=True)) * q[None, :]
        out.append(q @ ((w @ V) / w.sum(axis=1, keepdims=True)))
    return np.concatenate(out)


def test_mean_error_constant_is_the_variance_of_the_influence_function():
    args = _layer(1)
    X = args[0]
    T = X.shape[0]
    p = np.full(T, 1 / T)
    IF = []
    for z in range(T):
        e = np.eye(T)[z] - p
        h = 1e-6
        IF.append((_mean_output(*args, p + h * e) - _mean_output(*args, p - h * e)) / (2 * h))
    IF = np.array(IF)
    np.testing.assert_allclose(IF.mean(axis=0), 0.0, atol=1e-7)
    a, heads = ts.mean_error_constant(*args, per_head=True)
    assert a == pytest.approx(np.mean(np.sum(IF**2, axis=1)), rel=1e-7)
    assert heads.shape == (3,) and heads.sum() == pytest.approx(a)


def test_mean_error_constant_is_the_large_n_limit():
    """n E|m_n - m|^2 -> a: Monte Carlo at n = 4000 on soft attention (small n*)."""
    X, Wq, bq, Wk, bk, Wv, bv, scale = _layer(2, T=6, spread=0.5)
    args = (X, 0.4 * Wq, 0.4 * bq, 0.4 * Wk, 0.4 * bk, Wv, bv, scale)
    a = ts.mean_error_constant(*args)
    X = args[0]
    P = ts.softmax_matrices(X, *args[1:5], args[7])
    assert ts.effective_sample_sizes(P).max() < 1.5
    m = _mean_output(*args, np.full(6, 1 / 6))
    rng = np.random.default_rng(0)
    n, k = 4000, 400
    sq = [np.sum((_mean_output(*args, np.bincount(rng.integers(0, 6, n), minlength=6) / n) - m) ** 2)
          for _ in range(k)]
    ratio = n * np.mean(sq) / a
    se = n * np.std(sq, ddof=1) / np.sqrt(k) / a
    assert abs(ratio - 1) < 4 * se + 0.02, (ratio, se)


def test_effective_sample_sizes():
    T = 5
    uniform = np.full((1, T, T), 1 / T)
    onehot = np.eye(T)[None]
    np.testing.assert_allclose(ts.effective_sample_sizes(uniform), 1.0)
    np.testing.assert_allclose(ts.effective_sample_sizes(onehot), float(T))
