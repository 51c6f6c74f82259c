"""gpu/random_features.py on the CUDA simulator against the CPU twin sim.random_features.

Tiny grids (the simulator costs ~1.5 ms per thread): partial head and sample blocks on purpose.
Deterministic inputs: <= 1e-12 of max |phi| in float64, <= 1e-5 in float32; the random stream
check compares the kernel's M-head empirical kernel with the closed form in CLT bands (z = 5).
The host-side helpers (rfmlp_features, gram_update) run here on NumPy arrays, which exercises
the same code as on CuPy arrays.
"""
import math
import os

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # imported by the main process: nothing to do
    pytest.skip("run by tests/gpu/test_cudasim_suite.py with NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

from gpu import random_features as grf  # noqa: E402
from sim import random_features as rs  # noqa: E402
from theory import random_features as rft  # noqa: E402

Z = 5.0


def _inputs(seed, n, N, d, M, *, augment=True, r_bias=0.0):
    rng = np.random.default_rng(seed)
    x0, X = rs.sample_inputs(rng, n, N, d)
    W = rs.draw_heads(rng, M, d, r_bias=r_bias, augment=augment)
    return x0, X, W


CASES = [  # n, N, d, M, augment, activation, key_norm, value, r_bias, hb, sb
    (5, 3, 3, 7, True, "relu", "mean", "augmented", 0.0, 4, 2),
    (3, 4, 2, 9, False, "relu", "sum", "x", 0.8, 8, 2),
    (4, 2, 4, 5, True, "identity", "mean", "x", 0.0, 4, 4),
    (2, 5, 3, 6, True, "softmax", "mean", "augmented", 1.0, 4, 2),
    (3, 1, 2, 3, False, "softmax", "sum", "augmented", 0.0, 2, 2),
    (7, 2, 2, 2, True, "relu", "mean", "augmented", 0.5, 4, 3),
]


@pytest.mark.parametrize("n,N,d,M,augment,activation,key_norm,value,r_bias,hb,sb", CASES)
def test_kernel_matches_cpu_twin_float64(n, N, d, M, augment, activation, key_norm, value, r_bias, hb, sb):
    x0, X, W = _inputs(n * 100 + M, n, N, d, M, augment=augment, r_bias=r_bias)
    kw = dict(augment=augment, activation=activation, key_norm=key_norm, value=value)
    out = grf.rfa_features(x0, X, W, hb=hb, sb=sb, **kw)
    ref = rs.rfa_features(x0, X, W, method="batched", **kw)
    assert out.shape == ref.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("activation", ["relu", "softmax"])
def test_float32_inputs_within_1e5(activation):
    x0, X, W = _inputs(3, 4, 6, 3, 5, r_bias=1.0)
    x0, X, W = (t.astype(np.float32) for t in (x0, X, W))
    out = grf.rfa_features(x0, X, W, activation=activation, hb=4, sb=2)
    assert out.dtype == np.float32
    ref = rs.rfa_features(*(t.astype(np.float64) for t in (x0, X, W)), activation=activation)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_mixed_dtypes_follow_the_cpu_twin():
    x0, X, W = _inputs(4, 3, 3, 2, 4)
    W32 = W.astype(np.float32)
    out = grf.rfa_features(x0, X, W32, hb=4, sb=2)  # float64 scores, float32 output like the CPU twin
    ref = rs.rfa_features(x0, X, W32, method="batched")
    assert out.dtype == ref.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-6 * np.abs(ref).max()


def test_unscaled_features_and_sim_dispatch():
    x0, X, W = _inputs(5, 3, 4, 2, 6)
    out = rs.rfa_features(x0, X, W, scale=False, method="cuda")  # default block shape, one block
    ref = rs.rfa_features(x0, X, W, scale=False, method="batched")
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_softmax_online_rescaling_with_large_scores():
    # keys in increasing score order force a rescale at every key; scores span hundreds
    N = 6
    x0 = np.array([[1.0, 0.0]])
    X = np.array([[[np.cos(t), np.sin(t)] for t in np.linspace(np.pi, 0.0, N)]])
    W = np.zeros((2, 3, 3))
    W[0, 0, 0] = 300.0
    W[1, 0, 0], W[1, 2, 1] = -200.0, 50.0
    out = grf.rfa_features(x0, X, W, activation="softmax", hb=2, sb=1)
    ref = rs.rfa_features(x0, X, W, activation="softmax", method="batched")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_exact_key_permutation_invariance():
    x0, X, W = _inputs(6, 2, 5, 3, 4, r_bias=1.0)
    a = grf.rfa_features(x0, X, W, hb=4, sb=2)
    b = grf.rfa_features(x0, X[:, ::-1], W, hb=4, sb=2)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_empty_batch_and_bad_inputs():
    x0, X, W = _inputs(7, 2, 2, 2, 3)
    assert grf.rfa_features(x0[:0], X[:0], W).shape == (0, 9)
    with pytest.raises(ValueError, match="activation"):
        grf.rfa_features(x0, X, W, activation="gelu")
    with pytest.raises(ValueError, match="W has shape"):
        grf.rfa_features(x0, X, W, augment=False)
    big = _inputs(8, 1, 2, grf.MAX_DIM, 1)
    with pytest.raises(ValueError, match="MAX_DIM|<="):
        grf.rfa_features(*big)
    # the sim engine falls back to the batched path for dimensions the kernel does not take
    assert rs.rfa_features(*big).shape == (1, grf.MAX_DIM + 1)


@pytest.mark.parametrize("model,r", [("rfa", 0.0), ("brfa", 1.0)])
def test_kernel_features_give_the_closed_form_kernel_in_clt_bands(model, r):
    """M-head empirical kernel (1/M) sum_m <phi_m(X_p), phi_m(X'_p)> from the CUDA features
    against the infinite-head closed form: |z| <= 5 for every pair (random heads)."""
    d, N, P, M = 3, 3, 3, 512
    rng = np.random.default_rng(11 if r else 12)
    a0, A = rs.sample_inputs(rng, P, N, d)
    b0, B = rs.sample_inputs(rng, P, N, d)
    b0[0], B[0] = a0[0], A[0]  # one diagonal pair
    W = rs.draw_heads(rng, M, d, r_bias=r)
    fa = grf.rfa_features(a0, A, W, scale=False, hb=32, sb=1)
    fb = grf.rfa_features(b0, B, W, scale=False, hb=32, sb=1)
    z = rs.head_inner_products(fa, fb, M)  # (P, M)
    th = np.diag(rft.rfa_kernel(a0, A, b0, B, r_bias=r))
    score = (z.mean(axis=1) - th) / (z.std(axis=1, ddof=1) / math.sqrt(M))
    assert np.abs(score).max() <= Z, score


# ----------------------------------------------------------------- host helpers on NumPy

@pytest.mark.parametrize("augment,scale,chunk", [(True, True, 3), (False, False, 100)])
def test_rfmlp_features_match_cpu_twin(augment, scale, chunk):
    rng = np.random.default_rng(9)
    x0, X = rs.sample_inputs(rng, 7, 3, 2)
    Wm = rs.draw_mlp(rng, 11, 3, 2, augment=augment)
    out = grf.rfmlp_features(x0, X, Wm, augment=augment, scale=scale, chunk=chunk)
    ref = rs.rfmlp_features(x0, X, Wm, augment=augment, scale=scale)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-14 * np.abs(ref).max())
    out32 = grf.rfmlp_features(x0, X, Wm.astype(np.float32), augment=augment, scale=scale, chunk=chunk)
    assert out32.dtype == np.float32 and np.abs(out32 - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("dtype,block_rows", [(np.float64, None), (np.float32, 7), (np.float32, None)])
def test_gram_update_accumulates_float64_sums(dtype, block_rows):
    rng = np.random.default_rng(10)
    phi = (rng.standard_normal((40, 6)) + 3.0).astype(dtype)
    y = rng.standard_normal((40, 2)).astype(dtype)
    st = grf.gram_update(phi[:15], y[:15], block_rows=block_rows)
    st = grf.gram_update(phi[15:], y[15:], st, block_rows=block_rows)
    p64, y64 = phi.astype(np.float64), y.astype(np.float64)
    for got, want in zip(st, (p64.T @ p64, p64.T @ y64, p64.sum(0), y64.sum(0))):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-13)
    with pytest.raises(ValueError, match="same number of rows"):
        grf.gram_update(phi, y[:3])


def test_host_eigh_is_numpy_for_numpy():
    A = np.array([[2.0, 1.0], [1.0, 2.0]])
    w, U = grf.eigh(A)
    np.testing.assert_allclose(w, [1.0, 3.0])
    np.testing.assert_allclose(U @ np.diag(w) @ U.T, A, atol=1e-14)


def test_sim_device_branches_match_the_cpu_path(monkeypatch):
    """The device branches of sim.random_features (CUDA features, GPU RFMLP, float64 Gram
    blocks, device eigh), taken here with NumPy arrays by declaring them device arrays: a
    families-style fit (dual and primal training sizes) gives the CPU path's numbers."""
    rng = np.random.default_rng(13)
    d, N, M = 2, 2, 4  # 12 features: n = 8 uses the dual, n = 16 and 24 the primal
    x0, X = rs.sample_inputs(rng, 24 + 8 + 8, N, d)
    beta, S = rs.draw_target_params(rng, d)
    F = rs.target_values(["keys2", "pair1"], x0, X, beta, S)
    lam = np.geomspace(1e-4, 1.0, 5)
    cfg = rs.FeatureConfig()

    def fit(model):
        phi = rs.model_features(model, np.random.default_rng(14), x0, X, M, cfg)
        return phi, rs.ridge_path(phi[:24], F[:24], [8, 16, 24], phi[24:32], F[24:32], phi[32:], F[32:], lam)

    ref = {m: fit(m) for m in ("brfa", "rfmlp")}
    calls = {}

    def spy(name):
        real = getattr(grf, name)

        def wrapped(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return real(*a, **k)
        monkeypatch.setattr(grf, name, wrapped)

    for name in ("rfa_features", "rfmlp_features", "gram_update", "eigh"):
        spy(name)
    from sim import backend

    def declared_on_device(name, *arrays, dims=()):  # the seam's decision, with every array on the device
        limit = backend.engine_max_dim(name)
        return backend.engine(name) if limit is None or all(d <= limit for d in dims) else None

    monkeypatch.setattr(rs, "device_engine", declared_on_device)
    for m in ("brfa", "rfmlp"):
        phi, res = fit(m)
        np.testing.assert_allclose(phi, ref[m][0], rtol=0, atol=1e-12 * np.abs(ref[m][0]).max())
        np.testing.assert_array_equal(res["lambda_index"], ref[m][1]["lambda_index"])
        for k in ("val_path", "test_mse", "train_mse"):
            np.testing.assert_allclose(res[k], ref[m][1][k], rtol=1e-7, atol=1e-12)
    # features once per model, the Gram at n = 16 and 24 per model, an eigh per training size
    assert calls == {"rfa_features": 1, "rfmlp_features": 1, "gram_update": 4, "eigh": 6}, calls
