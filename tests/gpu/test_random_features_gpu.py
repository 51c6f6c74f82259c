"""gpu/random_features.py and the device path of sim.random_features on a real GPU (CuPy arrays),
against the CPU twin: deterministic inputs <= 1e-12 (float64) / 1e-5 (float32) of max |phi|;
GPU random streams statistically (closed-form kernel within CLT bands, z = 5). Skipped
without a usable GPU."""
import math

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

Z = 5.0


def _inputs(seed, n, N, d, M, r_bias=0.0):
    from sim import random_features as rs

    rng = np.random.default_rng(seed)
    x0, X = rs.sample_inputs(rng, n, N, d)
    return x0, X, rs.draw_heads(rng, M, d, r_bias=r_bias)


@pytest.mark.parametrize("activation", ["relu", "identity", "softmax"])
@pytest.mark.parametrize("n,N,d,M", [(3000, 8, 8, 130), (257, 16, 16, 33), (64, 3, 23, 500)])
def test_kernel_matches_cpu_on_device_arrays(activation, n, N, d, M):
    cp = pytest.importorskip("cupy")
    from gpu.random_features import rfa_features
    from sim import random_features as rs

    x0, X, W = _inputs(n + M, n, N, d, M, r_bias=0.5)
    ref = rs.rfa_features(x0, X, W, activation=activation)
    out = rfa_features(cp.asarray(x0), cp.asarray(X), cp.asarray(W), activation=activation)
    assert isinstance(out, cp.ndarray) and out.dtype == cp.float64
    tol = np.abs(ref).max()
    assert np.abs(cp.asnumpy(out) - ref).max() <= 1e-12 * tol
    out32 = rfa_features(*(cp.asarray(t, dtype=cp.float32) for t in (x0, X, W)), activation=activation)
    ref32 = rs.rfa_features(*(t.astype(np.float32).astype(np.float64) for t in (x0, X, W)), activation=activation)
    assert out32.dtype == cp.float32
    assert np.abs(cp.asnumpy(out32) - ref32).max() <= 1e-5 * np.abs(ref32).max()


def test_sim_dispatch_keeps_device_arrays_on_the_device():
    cp = pytest.importorskip("cupy")
    from sim import random_features as rs

    x0, X, W = _inputs(1, 500, 4, 6, 40)
    dev = [cp.asarray(t) for t in (x0, X, W)]
    out = rs.rfa_features(*dev)  # auto -> cuda
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out), rs.rfa_features(x0, X, W), rtol=0, atol=1e-12)
    batched = rs.rfa_features(*dev, method="batched")  # the namespace code on CuPy
    np.testing.assert_allclose(cp.asnumpy(batched), cp.asnumpy(out), rtol=0, atol=1e-12)
    Wm = rs.draw_mlp(np.random.default_rng(2), 70, 4, 6)
    mlp = rs.rfmlp_features(dev[0], dev[1], cp.asarray(Wm), chunk=128)
    assert isinstance(mlp, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(mlp), rs.rfmlp_features(x0, X, Wm), rtol=0, atol=1e-12)


def test_gram_and_eigh_on_the_device():
    cp = pytest.importorskip("cupy")
    from gpu.random_features import eigh, gram_update

    rng = np.random.default_rng(3)
    phi = rng.standard_normal((3000, 200)) + 2.0
    y = rng.standard_normal((3000, 3))
    st = gram_update(cp.asarray(phi[:1000], dtype=cp.float32), cp.asarray(y[:1000], dtype=cp.float32), block_rows=300)
    st = gram_update(cp.asarray(phi[1000:], dtype=cp.float32), cp.asarray(y[1000:], dtype=cp.float32), st)
    p32, y32 = phi.astype(np.float32).astype(float), y.astype(np.float32).astype(float)
    for got, want in zip(st, (p32.T @ p32, p32.T @ y32, p32.sum(0), y32.sum(0))):
        assert got.dtype == cp.float64
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-12, atol=1e-9 * np.abs(want).max())
    G = st[0]
    w, U = eigh(G)
    assert isinstance(w, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(w), np.linalg.eigvalsh(p32.T @ p32), rtol=1e-10)


@pytest.mark.parametrize("n_list", [[100, 400], [400, 900, 1500]])  # dual only; dual then primal
def test_ridge_path_on_device_matches_cpu(n_list):
    cp = pytest.importorskip("cupy")
    from sim import random_features as rs

    x0, X, W = _inputs(4, 1500 + 600, 4, 5, 100)  # 600 features: n >= P takes the primal branch
    names = ["keys2", "pair1"]
    beta, S = rs.draw_target_params(np.random.default_rng(5), 5)
    F = rs.target_values(names, x0, X, beta, S)
    phi = rs.rfa_features(x0, X, W)
    lam = np.geomspace(1e-6, 1.0, 8)
    tr, va, te = slice(0, 1500), slice(1500, 1800), slice(1800, 2100)
    ref = rs.ridge_path(phi[tr], F[tr], n_list, phi[va], F[va], phi[te], F[te], lam)
    d = [cp.asarray(t) for t in (phi, F)]
    got = rs.ridge_path(d[0][tr], d[1][tr], n_list, d[0][va], d[1][va], d[0][te], d[1][te], lam)
    np.testing.assert_array_equal(got["lambda_index"], ref["lambda_index"])
    np.testing.assert_allclose(got["val_path"], ref["val_path"], rtol=1e-6)
    np.testing.assert_allclose(got["test_mse"], ref["test_mse"], rtol=1e-6)


@pytest.mark.parametrize("r", [0.0, 1.0])
def test_gpu_random_heads_give_the_closed_form_kernel(r):
    """Heads drawn by the GPU stream (CuPy Philox), features by the kernel: the M-head kernel
    lies within z = 5 CLT bands of the infinite-head closed form on every pair."""
    cp = pytest.importorskip("cupy")
    from sim import random_features as rs
    from sim.backend import make_rng
    from theory import random_features as rft

    d, N, P, M = 6, 5, 8, 1 << 14
    rng = np.random.default_rng(7)
    a0, A = rs.sample_inputs(rng, P, N, d)
    b0, B = rs.sample_inputs(rng, P, N, d)
    b0[:2], B[:2] = a0[:2], A[:2]
    W = rs.draw_heads(make_rng(np.random.SeedSequence(8), "gpu"), M, d, r_bias=r)
    fa = rs.rfa_features(cp.asarray(a0), cp.asarray(A), W, scale=False)
    fb = rs.rfa_features(cp.asarray(b0), cp.asarray(B), W, scale=False)
    z = cp.asnumpy(rs.head_inner_products(fa, fb, M))
    th = np.diag(rft.rfa_kernel(a0, A, b0, B, r_bias=r))
    score = (z.mean(axis=1) - th) / (z.std(axis=1, ddof=1) / math.sqrt(M))
    assert np.abs(score).max() <= Z, score


def test_feature_throughput_smoke():
    """Not a speed target (that is studies/benchmarks/random_features.py): a spec-sized feature
    build (n = 16384, M = 2000, d = N = 16) completes and is finite."""
    cp = pytest.importorskip("cupy")
    from gpu.random_features import rfa_features

    g = cp.random.Generator(cp.random.Philox4x3210(0))
    n, N, d, M = 16384, 16, 16, 2000
    x0 = g.standard_normal((n, d))
    X = g.standard_normal((n, N, d))
    W = 0.5 * g.standard_normal((M, d + 1, d + 1))
    out = rfa_features(x0.astype(cp.float32), X.astype(cp.float32), W.astype(cp.float32))
    cp.cuda.Device().synchronize()
    assert out.shape == (n, M * (d + 1)) and bool(cp.isfinite(out).all())
