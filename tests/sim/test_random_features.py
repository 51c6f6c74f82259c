"""sim.random_features against naive references and the closed-form theory.

Statistical checks use fixed seeds and CLT bands of 5 standard errors (stated per test).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sim import random_features as rs
from theory import random_features as rf

Z = 5.0  # CLT band used by the statistical tests


def _naive_rfa(x0, X, W, *, augment, activation, key_norm, value):
    n, N, d = X.shape
    M = W.shape[0]
    rows = []
    for p in range(n):
        a0 = np.append(x0[p], 1.0) if augment else x0[p]
        blocks = []
        for m in range(M):
            keys = [np.append(X[p, i], 1.0) if augment else X[p, i] for i in range(N)]
            sc = np.array([a0 @ W[m] @ k for k in keys])
            if activation == "relu":
                A = np.maximum(sc, 0) / (N if key_norm == "mean" else 1)
            elif activation == "identity":
                A = sc / (N if key_norm == "mean" else 1)
            else:
                A = np.exp(sc - sc.max()) / np.exp(sc - sc.max()).sum()
            vals = np.array(keys if value == "augmented" else [X[p, i] for i in range(N)])
            blocks.append(A @ vals)
        rows.append(np.concatenate(blocks))
    return np.array(rows)


@given(n=st.integers(1, 4), N=st.integers(1, 4), d=st.integers(2, 4), M=st.integers(1, 5),
       augment=st.booleans(), activation=st.sampled_from(rs.ACTIVATIONS),
       key_norm=st.sampled_from(("mean", "sum")), value=st.sampled_from(("augmented", "x")),
       r=st.sampled_from((0.0, 0.8)), chunk=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_rfa_features_match_naive_loops(n, N, d, M, augment, activation, key_norm, value, r, chunk, seed):
    rng = np.random.default_rng(seed)
    x0, X = rs.sample_inputs(rng, n, N, d)
    W = rs.draw_heads(rng, M, d, r_bias=r, augment=augment)
    fast = rs.rfa_features(x0, X, W, augment=augment, activation=activation, key_norm=key_norm,
                           value=value, scale=False, chunk=chunk)
    ref = _naive_rfa(x0, X, W, augment=augment, activation=activation, key_norm=key_norm, value=value)
    np.testing.assert_allclose(fast, ref, atol=1e-12)
    scaled = rs.rfa_features(x0, X, W, augment=augment, activation=activation, key_norm=key_norm, value=value)
    np.testing.assert_allclose(scaled, ref / math.sqrt(M), atol=1e-12)


@given(perm_seed=st.integers(0, 2**16), N=st.integers(2, 6))
def test_attention_features_are_exactly_permutation_invariant(perm_seed, N):
    rng = np.random.default_rng(perm_seed)
    x0, X = rs.sample_inputs(rng, 6, N, 5)
    perm = rng.permutation(N)
    for r in (0.0, 1.0):
        W = rs.draw_heads(rng, 16, 5, r_bias=r)
        a = rs.rfa_features(x0, X, W)
        b = rs.rfa_features(x0, X[:, perm], W)
        np.testing.assert_allclose(a, b, atol=1e-13)


def test_mlp_features_match_naive_and_are_not_permutation_invariant():
    rng = np.random.default_rng(1)
    x0, X = rs.sample_inputs(rng, 5, 3, 4)
    Wm = rs.draw_mlp(rng, 7, 3, 4)
    z = np.array([np.concatenate([x0[p], X[p].ravel(), [1.0]]) for p in range(5)])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1) ** 2, 3 + 2)  # |z|^2 = N + 2
    ref = np.maximum(z @ Wm.T, 0) / math.sqrt(7)
    np.testing.assert_allclose(rs.rfmlp_features(x0, X, Wm, chunk=2), ref, atol=1e-14)
    moved = rs.rfmlp_features(x0, X[:, [1, 0, 2]], Wm)
    assert np.abs(moved - ref).max() > 1e-3


@pytest.mark.parametrize("model,r", [("rfa", 0.0), ("brfa", 1.0), ("brfa_identity", 0.5), ("rfmlp", 0.0)])
def test_empirical_kernel_within_clt_band_of_closed_form(model, r):
    """Acceptance: the M-head kernel matches the infinite-head kernel within CLT bands as M grows
    (z = (K_M - K) / (sd_heads / sqrt(M)) within 5 at M = 2^10 and 2^15; the RMS error shrinks)."""
    rng = np.random.default_rng(2024)
    d, N, P = 6, 3, 8
    a0, A = rs.sample_inputs(rng, P, N, d)
    b0, B = rs.sample_inputs(rng, P, N, d)
    b0[0], B[0] = a0[0], A[0]  # one diagonal entry
    shape = "identity" if model == "brfa_identity" else "diag"
    if model == "rfmlp":
        theory = np.diag(rf.mlp_kernel(rs.flatten_inputs(a0, A), rs.flatten_inputs(b0, B)))
    else:
        theory = np.diag(rf.rfa_kernel(a0, A, b0, B, r_bias=r, mean_shape=shape))
    errs = []
    for M in (2**10, 2**15):
        if model == "rfmlp":
            Wm = rs.draw_mlp(rng, M, N, d)
            zz = rs.rfmlp_features(a0, A, Wm, scale=False) * rs.rfmlp_features(b0, B, Wm, scale=False)
        else:
            W = rs.draw_heads(rng, M, d, r_bias=r, mean_shape=shape)
            zz = rs.head_inner_products(rs.rfa_features(a0, A, W, scale=False),
                                        rs.rfa_features(b0, B, W, scale=False), M)
        zscore = (zz.mean(axis=1) - theory) / (zz.std(axis=1, ddof=1) / math.sqrt(M))
        assert np.abs(zscore).max() <= Z
        errs.append(np.sqrt(np.mean((zz.mean(axis=1) - theory) ** 2)))
    assert errs[1] < errs[0]


def test_scaled_features_gram_tends_to_kernel():
    rng = np.random.default_rng(9)
    x0, X = rs.sample_inputs(rng, 6, 2, 4)
    W = rs.draw_heads(rng, 40000, 4)
    phi = rs.rfa_features(x0, X, W)
    K = rf.rfa_kernel(x0, X, x0, X)
    np.testing.assert_allclose(phi @ phi.T, K, atol=0.03 * np.abs(K).max())


def test_score_normalisation_and_mean():
    """Spec check 3: unit score variance over heads at r = 0; mean mu <x0, xi> with the bias.
    Bands: 5 se of the sample mean (sd 1) and of the sample variance (sd sqrt(2))."""
    rng = np.random.default_rng(4)
    d, M = 8, 200_000
    x0, X = rs.sample_inputs(rng, 1, 1, d)
    a0, a = np.append(x0[0], 1), np.append(X[0, 0], 1)
    for r in (0.0, 1.0):
        W = rs.draw_heads(rng, M, d, r_bias=r)
        s = np.einsum("j,mjk,k->m", a0, W, a)
        mu = rf.bias_mu(r, d)
        assert abs(s.mean() - mu * (x0[0] @ X[0, 0])) <= Z / math.sqrt(M)
        assert abs(s.var() - 1.0) <= Z * math.sqrt(2.0 / M)
    assert rf.bias_mu(1.0, d) == pytest.approx(math.sqrt(d))


def test_sphere_samples_and_target_params():
    rng = np.random.default_rng(0)
    x0, X = rs.sample_inputs(rng, 50, 3, 7)
    np.testing.assert_allclose(np.linalg.norm(x0, axis=-1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(X, axis=-1), 1.0)
    beta, S = rs.draw_target_params(rng, 7)
    assert np.linalg.norm(beta) == pytest.approx(1.0)
    np.testing.assert_allclose(S @ S.T, np.eye(7), atol=1e-12)


def test_targets_match_definitions():
    rng = np.random.default_rng(5)
    n, N, d = 20, 4, 6
    x0, X = rs.sample_inputs(rng, n, N, d)
    beta, S = rs.draw_target_params(rng, d)
    names = ["keys2", "query3", "pair1", "bilin2", "attn", "keykey"]
    Y = rs.target_values(names, x0, X, beta, S)
    Q = lambda p, t: rf.gegenbauer(p, d, t)  # noqa: E731
    for j in range(n):
        ref = [np.mean([Q(2, beta @ X[j, i]) for i in range(N)]),
               Q(3, beta @ x0[j]),
               np.mean([Q(1, x0[j] @ X[j, i]) for i in range(N)]),
               np.mean([Q(2, x0[j] @ S @ X[j, i]) for i in range(N)]),
               np.mean([max(math.sqrt(d) * x0[j] @ X[j, i], 0) * math.sqrt(d) * beta @ X[j, i] for i in range(N)]),
               sum(math.sqrt(d) * X[j, i] @ X[j, k] for i in range(N) for k in range(i + 1, N)) / math.sqrt(N * (N - 1) / 2)]
        np.testing.assert_allclose(Y[j], ref, atol=1e-12)
    H = rs.target_values(["keys3"], x0, X, beta, S, poly="hermite")[:, 0]
    b = math.sqrt(d) * X @ beta
    np.testing.assert_allclose(H, np.mean((b**3 - 3 * b) / math.sqrt(6), axis=1), atol=1e-12)


def test_gegenbauer_targets_have_unit_variance_terms():
    """Each per-key term of keys<p> / pair<p> has variance 1 and mean 0; the mean over N
    independent terms has variance 1/N. Band: 5 se, se of a variance ~ sqrt(Var(x^2)/n)."""
    rng = np.random.default_rng(8)
    n, N, d = 40000, 1, 8
    x0, X = rs.sample_inputs(rng, n, N, d)
    beta, S = rs.draw_target_params(rng, d)
    Y = rs.target_values(["keys1", "keys2", "keys3", "pair2"], x0, X, beta, S)
    for col in Y.T:
        assert abs(col.mean()) <= Z * col.std() / math.sqrt(n)
        assert abs(col.var() - 1) <= Z * np.std(col**2) / math.sqrt(n)


def test_parse_target():
    assert rs.parse_target("keys12") == ("keys", 12)
    assert rs.parse_target("attn") == ("attn", 1)
    assert rs.parse_target("keykey") == ("keykey", 2)
    for bad in ("keys0", "pair", "foo2", "attn2", ""):
        with pytest.raises(ValueError):
            rs.parse_target(bad)
    rng = np.random.default_rng(0)
    x0, X = rs.sample_inputs(rng, 3, 1, 4)
    with pytest.raises(ValueError):
        rs.target_values(["keykey"], x0, X, *rs.draw_target_params(rng, 4))


@given(data=hnp.arrays(np.float64, (40, 12), elements=st.floats(-2, 2)),
       seed=st.integers(0, 1000))
def test_ridge_path_matches_naive_solves(data, seed):
    """Primal (n >= P) and dual (n < P) branches against per-lambda linear solves."""
    rng = np.random.default_rng(seed)
    phi = data + 0.1 * rng.standard_normal(data.shape)  # keep the design non-degenerate
    y = rng.standard_normal((40, 2))
    pv, yv = rng.standard_normal((15, 12)), rng.standard_normal((15, 2))
    pt, ft = rng.standard_normal((17, 12)), rng.standard_normal((17, 2))
    lams = np.logspace(-3, 0, 4)
    n_list = [5, 11, 12, 30, 40]
    res = rs.ridge_path(phi, y, n_list, pv, yv, pt, ft, lams)
    for k, n in enumerate(n_list):
        fits = [rs.ridge_reference(phi[:n], y[:n], lam) for lam in lams]
        vp = np.array([((pv @ v + c - yv) ** 2).mean(axis=0) for v, c in fits])
        np.testing.assert_allclose(res["val_path"][k], vp, rtol=1e-7, atol=1e-9)
        best = res["lambda_index"][k]
        np.testing.assert_array_equal(best, vp.argmin(axis=0))
        for t in range(2):
            v, c = fits[best[t]]
            assert res["test_mse"][k, t] == pytest.approx(np.mean((pt @ v[:, t] + c[t] - ft[:, t]) ** 2), rel=1e-7)
            assert res["train_mse"][k, t] == pytest.approx(
                np.mean((phi[:n] @ v[:, t] + c[t] - y[:n, t]) ** 2), rel=1e-6, abs=1e-12)
        np.testing.assert_allclose(res["best_lambda"][k], lams[best])


def test_ridge_path_rejects_bad_sizes():
    phi, y = np.ones((10, 3)), np.ones((10, 1))
    with pytest.raises(ValueError):
        rs.ridge_path(phi, y, [5, 4], phi, y, phi, y, [1.0])
    with pytest.raises(ValueError):
        rs.ridge_path(phi, y, [5, 11], phi, y, phi, y, [1.0])


def test_attention_learns_keys_target_mlp_does_not():
    """A small end-to-end fit: with d = 6, N = 6 and 1024 samples, zero-mean RFA fits the
    degree-2 keys-only target far better than the RFMLP with as many features (notes random_features §9.4)."""
    rng = np.random.default_rng(0)
    d, N, M, n, nv, nt = 6, 6, 48, 1024, 512, 512
    x0, X = rs.sample_inputs(rng, n + nv + nt, N, d)
    beta, S = rs.draw_target_params(rng, d)
    Y = rs.target_values(["keys2"], x0, X, beta, S)
    cfg = rs.FeatureConfig()
    out = {}
    for model in ("rfa", "rfmlp"):
        phi = rs.model_features(model, rng, x0, X, M, cfg)
        res = rs.ridge_path(phi[:n], Y[:n], [n], phi[n:n + nv], Y[n:n + nv], phi[n + nv:], Y[n + nv:],
                            np.logspace(-7, 0, 8))
        out[model] = res["test_mse"][0, 0] / Y[n + nv:].var()
    assert out["rfa"] < 0.2
    assert out["rfmlp"] > 3 * out["rfa"]
