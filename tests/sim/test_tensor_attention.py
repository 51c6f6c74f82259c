"""Unit tests of sim.tensor_attention: Khatri-Rao conventions, exact kernels at extreme logits and
all code paths (parallel/serial, chunking, engines), safeguards, FAVOR+ statistics, Match3.

The hypothesis property tests of notes tensor_attention §5 live in test_tensor_attention_properties.py."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, strategies as st

from sim import tensor_attention as sta
from studies.fits import loglog_rate
from theory import tensor_attention as th


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_khatri_rao_orders_match_scipy():
    X, Y = _rng().standard_normal((3, 4)), _rng(1).standard_normal((5, 4))
    np.testing.assert_array_equal(sta.khatri_rao(X, Y), scipy.linalg.khatri_rao(X, Y))
    np.testing.assert_array_equal(sta.khatri_rao(X, Y, "paper"), scipy.linalg.khatri_rao(Y, X))
    # row j1 * n2 + j2 holds X[j1] o Y[j2] (numpy order); j1 + j2 * n1 in the paper's order
    np.testing.assert_array_equal(sta.khatri_rao(X, Y)[2 * 5 + 3], X[2] * Y[3])
    np.testing.assert_array_equal(sta.khatri_rao(X, Y, "paper")[2 + 3 * 3], X[2] * Y[3])


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3, 1e5])
def test_exact_kernels_agree_at_extreme_logits(scale):
    """Streaming softmax with a moving reference score: numba == stream == naive even when the
    logits span +-1e5 (the Match3 construction's regime)."""
    rng = _rng(3)
    Q, keys, values = sta.uniform_inputs(rng, 9, 3, 1.0, 3)
    ref, lse_ref = sta.tensor_attention(Q, *keys, *values, scale=scale, method="naive", return_lse=True)
    for method in ("numba", "stream"):
        out, lse = sta.tensor_attention(Q, *keys, *values, scale=scale, method=method, return_lse=True)
        np.testing.assert_allclose(out, ref, atol=1e-12, rtol=0)
        np.testing.assert_allclose(lse, lse_ref, rtol=1e-12, atol=1e-9)


def test_exact_parallel_and_serial_kernels_and_row_subsets_agree():
    rng = _rng(4)
    n = 80  # 80^3 >= the parallel threshold; a subset of rows runs the serial kernel
    Q, keys, values = sta.uniform_inputs(rng, n, 4, 1.0, 3)
    full = sta.tensor_attention(Q, *keys, *values)
    rows = rng.choice(n, 5, replace=False)
    np.testing.assert_allclose(sta.tensor_attention(Q[rows], *keys, *values), full[rows], atol=1e-13)
    np.testing.assert_allclose(sta.tensor_attention(Q, *keys, *values, method="stream"), full, atol=1e-13)


def test_stream_blocks_and_chunks(monkeypatch):
    """A tiny block budget forces many query blocks and prefix chunks (k = 3 and 4)."""
    rng = _rng(5)
    for k in (3, 4):
        Q, keys, values = sta.uniform_inputs(rng, 6, 2, 1.2, k)
        ref = sta.kth_order_attention(Q, keys, values, method="naive")
        monkeypatch.setattr(sta.exact, "_STREAM_BUDGET", 7)  # the constant lives in the engine's module
        got = sta.kth_order_attention(Q, keys, values, method="stream")
        monkeypatch.undo()
        np.testing.assert_allclose(got, ref, atol=1e-13)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_polynomial_engines_chunks_and_parallel_paths_agree(k):
    rng = _rng(6)
    n = 700 if k < 4 else 90
    Q, keys, values = sta.uniform_inputs(rng, n, 4, 1.0, k)
    ref = sta.polynomial_attention(Q, keys, values, degree=8, method="chebyshev", B=1.0, engine="xp").out
    for kw in ({}, {"chunk": 37}, {"engine": "numba", "chunk": 4096}):
        got = sta.polynomial_attention(Q, keys, values, degree=8, method="chebyshev", B=1.0, **kw).out
        np.testing.assert_allclose(got, ref, atol=1e-13)
    small = sta.polynomial_attention(Q[:3], keys, values, degree=8, method="chebyshev", B=1.0).out
    np.testing.assert_allclose(small, ref[:3], atol=1e-13)


def test_polynomial_attention_on_array_api_strict():
    """The array-namespace path runs on a strict array-API namespace (the CuPy route)."""
    xps = pytest.importorskip("array_api_strict")
    rng = _rng(7)
    Q, keys, values = sta.uniform_inputs(rng, 20, 3, 1.0, 3)
    ref = sta.polynomial_attention(Q, keys, values, degree=5, method="taylor", B=1.0).out
    conv = lambda X: xps.asarray(X)  # noqa: E731
    res = sta.polynomial_attention(conv(Q), [conv(K) for K in keys], [conv(V) for V in values],
                                   degree=5, method="taylor", B=1.0)
    np.testing.assert_allclose(np.asarray(res.out), ref, atol=1e-13)
    ex = sta.kth_order_attention(conv(Q), [conv(K) for K in keys], [conv(V) for V in values])
    np.testing.assert_allclose(np.asarray(ex), sta.tensor_attention(Q, *keys, *values), atol=1e-13)


def test_sign_aligned_inputs_reach_the_edge_of_the_range():
    for k in (2, 3, 4):
        Q, keys, values = sta.sign_aligned_inputs(_rng(k), 6, 3, 1.3, k)
        assert np.all(np.abs(Q) == 1.3) and all(np.all(np.abs(K) == 1.3) for K in keys)
        diag = np.sum(Q * np.prod(np.stack(keys), axis=0), axis=1) / 3  # logit of (i, i, ..., i)
        np.testing.assert_allclose(np.abs(diag), 1.3**k)
        assert np.all(np.sign(diag) == np.where(np.arange(6) % 2 == 0, 1, -1))
        assert sta.logit_range_bound(Q, keys) == pytest.approx(1.3**k)


def test_input_validation():
    rng = _rng(8)
    Q, keys, values = sta.uniform_inputs(rng, 4, 3, 1.0, 3)
    with pytest.raises(ValueError, match="dimension"):
        sta.tensor_attention(Q[:, :2], *keys, *values)
    with pytest.raises(ValueError, match="non-finite"):
        bad = keys[0].copy()
        bad[0, 0] = np.nan
        sta.tensor_attention(Q, bad, keys[1], *values)
    with pytest.raises(ValueError, match="same number of rows"):
        sta.tensor_attention(Q, keys[0], keys[1], values[0][:2], values[1])
    with pytest.raises(ValueError, match="unknown method"):
        sta.tensor_attention(Q, *keys, *values, method="fast")
    with pytest.raises(ValueError, match="non-negative integer"):
        sta.polynomial_attention(Q, keys, values, degree=-1)
    with pytest.raises(ValueError, match="entry bound"):
        sta.polynomial_attention(Q, keys, values, degree=2, B=0.0)
    big = np.zeros((100, 2))
    with pytest.raises(ValueError, match="tiny-input oracle"):
        sta.tensor_attention(big, big, big, big, big, method="loop")


def test_non_positive_normaliser_is_an_error():
    """Odd Taylor degree 1 at logit -4: P = 1 + x = -3 < 0 inside its (huge-error) design range."""
    Q = np.array([[2.0]])
    K = np.array([[-2.0], [-2.0]])
    with pytest.raises(sta.NonPositiveNormalizer, match="non-positive"):
        sta.approx_matrix_attention(Q, K, K, degree=1, method="taylor", B=2.0)


def test_favor_kernel_is_unbiased():
    """E[phi(q) . phi(k)] = exp(s q.k): CLT band z = 5 over 4000 independent projections."""
    q = np.array([[0.8, -0.5, 0.3, 0.9]])
    k = np.array([[0.7, 0.4, -0.6, 0.8]])
    s = 1 / 4
    truth = np.exp(s * float(np.sum(q * k)))
    for orth in (False, True):
        rng = _rng(11 + orth)
        vals = []
        for _ in range(4000):
            W = sta.favor_projection(4, 4, rng, orthogonal=orth)
            vals.append(float(np.sum(sta.favor_features(q, W) * sta.favor_features(k, W))))
        vals = np.array(vals)
        assert abs(vals.mean() - truth) <= 5 * vals.std(ddof=1) / np.sqrt(vals.size)
        assert vals.std() > 0


def test_favor_error_decays_like_inverse_sqrt_m():
    """notes tensor_attention §5 item 17: log-log slope of the FAVOR+ output error over m in [64, 4096] is -1/2
    within 5 standard errors (and the fit is tight enough to fail)."""
    rng = _rng(12)
    Q, (K,), (V,) = sta.uniform_inputs(rng, 64, 4, 1.0, 2)
    exact = sta.matrix_attention(Q, K, V)
    ms = np.array([64, 128, 256, 512, 1024, 2048, 4096])
    errs = np.array([[np.abs(sta.favor_attention(Q, K, V, int(m), _rng(1000 * i + int(m))) - exact).max()
                      for i in range(6)] for m in ms])
    fit = loglog_rate(ms, errs)
    assert fit.se < 0.1
    assert abs(fit.slope + 0.5) <= max(5 * fit.se, 0.05)


@given(st.integers(1, 9), st.integers(2, 30), st.booleans(), st.integers(0, 2**32 - 1))
def test_match3_oracle_equals_brute_force(N, M, distinct, seed):
    x = np.random.default_rng(seed).integers(0, M, N)
    np.testing.assert_array_equal(sta.match3_labels(x, M, distinct), sta.match3_bruteforce(x, M, distinct))
    lab2 = sta.match2_labels(x, M)
    brute2 = np.array([any((a + b) % M == 0 for b in x) for a in x])
    np.testing.assert_array_equal(lab2, brute2)


@given(st.integers(2, 12), st.integers(3, 60), st.integers(0, 2**32 - 1))
def test_match3_construction_identity(N, M, seed):
    """sum_l q_i,l k1_j1,l k2_j2,l = cos(2 pi (x_i + x_j1 + x_j2)/M) for all triples."""
    x = np.random.default_rng(seed).integers(0, M, N)
    Q, K1, K2, V1, V2, lam = sta.match3_tensor_inputs(x, M)
    L = np.einsum("il,jl,kl->ijk", Q, K1, K2)
    want = np.cos(2 * np.pi * (x[:, None, None] + x[None, :, None] + x[None, None, :]) / M)
    np.testing.assert_allclose(L, want, atol=1e-12)
    assert lam == pytest.approx(th.match3_lambda(N, M))


@pytest.mark.parametrize("N", [6, 8, 12, 16])
def test_constructions_solve_match3_and_match2_exactly(N):
    """The exact tensor construction gets every Match3 label right (a margin argument, notes tensor_attention §5.1);
    the pairwise construction gets every Match2 label right."""
    M = th.match3_balanced_M(N)
    thr = th.match3_threshold(M)
    rng = _rng(N)
    for _ in range(20):
        x = rng.integers(0, M, N)
        np.testing.assert_array_equal(sta.match3_tensor_scores(x, M) > thr, sta.match3_labels(x, M))
        np.testing.assert_array_equal(sta.match2_pairwise_scores(x, M) > thr, sta.match2_labels(x, M))
        assert np.all(np.isfinite(sta.match3_poly_scores(x, M, 4)))


def test_pairwise_readout_needs_fit():
    r = sta.PairwiseReadout(20, _rng())
    with pytest.raises(RuntimeError):
        r.predict(np.arange(5))
    xs = [_rng(i).integers(0, 20, 6) for i in range(10)]
    r.fit(xs, [sta.match3_labels(x, 20) for x in xs])
    assert r.predict(xs[0]).shape == (6,)
