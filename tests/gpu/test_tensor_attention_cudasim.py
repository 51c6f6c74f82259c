"""gpu/tensor_attention.py on the CUDA simulator against its CPU twin sim/tensor_attention.py (tiny grids).

Everything here is deterministic (no random streams on the device), so the comparisons are
to rounding: <= 1e-12 relative in float64, <= 1e-5 for float32 inputs.
"""
import os

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # imported by the main process: nothing to do
    pytest.skip("run by tests/gpu/test_cudasim_suite.py with NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

from gpu import tensor_attention as gta  # noqa: E402
from sim import tensor_attention as sta  # noqa: E402
from theory import tensor_attention as th  # noqa: E402


def _inputs(seed, nq, n1, n2, d, dv, B=1.0):
    rng = np.random.default_rng(seed)
    u = lambda *shape: rng.uniform(-B, B, shape)  # noqa: E731
    return u(nq, d), u(n1, d), u(n2, d), u(n1, dv), u(n2, dv)


# ------------------------------------------------------------------------------ exact
@pytest.mark.parametrize("nq,n1,n2,d,dv,tpb,slices", [
    (2, 5, 7, 3, 2, 8, 2),     # slices cut rows mid-way; 35 pairs over 16 threads
    (1, 3, 40, 2, 3, 16, 1),   # n2 > tpb: j2 wraps by subtraction, j1 reloads
    (2, 6, 3, 4, 1, 32, 1),    # n2 < tpb: j2 wraps by several rows at once (integer division)
    (1, 4, 4, 1, 4, 8, 3),     # d = 1; 16 pairs in 3 slices
    (1, 9, 11, 5, 5, None, None),  # the default launch heuristic
])
def test_exact_kernel_matches_cpu_float64(nq, n1, n2, d, dv, tpb, slices):
    Q, K1, K2, V1, V2 = _inputs(nq * 100 + n1 * 10 + n2, nq, n1, n2, d, dv, B=1.5)
    out, lse = gta.tensor_attention(Q, K1, K2, V1, V2, return_lse=True, tpb=tpb, slices=slices)
    ref, ref_lse = sta.tensor_attention(Q, K1, K2, V1, V2, method="naive", return_lse=True)
    vmax = np.abs(V1).max() * np.abs(V2).max()
    assert out.shape == (nq, dv) and lse.shape == (nq,)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * vmax)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12)
    num = sta.tensor_attention(Q, K1, K2, V1, V2, method="numba")  # the CPU fast path too
    np.testing.assert_allclose(out, num, rtol=0, atol=1e-12 * vmax)


@pytest.mark.parametrize("scale", [30.0, 1e3, 1e5])
def test_exact_kernel_at_extreme_logits(scale):
    """The per-thread rescale and the block/slice merges keep |logit| ~ 1e5 finite (Match3 regime)."""
    Q, K1, K2, V1, V2 = _inputs(3, 2, 6, 5, 3, 2)
    out, lse = gta.tensor_attention(Q, K1, K2, V1, V2, scale=scale, return_lse=True, tpb=8, slices=2)
    ref, ref_lse = sta.tensor_attention(Q, K1, K2, V1, V2, scale=scale, method="naive", return_lse=True)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12, atol=1e-9)


def test_exact_kernel_float32_within_1e5():
    Q, K1, K2, V1, V2 = (X.astype(np.float32) for X in _inputs(4, 2, 9, 8, 4, 3, B=2.0))
    out, lse = gta.tensor_attention(Q, K1, K2, V1, V2, return_lse=True, tpb=16, slices=2)
    assert out.dtype == np.float64  # float64 accumulators whatever the input dtype
    f64 = [X.astype(np.float64) for X in (Q, K1, K2, V1, V2)]
    ref, ref_lse = sta.tensor_attention(*f64, method="naive", return_lse=True)
    vmax = np.abs(f64[3]).max() * np.abs(f64[4]).max()
    assert np.abs(out - ref).max() <= 1e-5 * vmax
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5)


def test_exact_kernel_idle_threads_and_empty_queries():
    Q, K1, K2, V1, V2 = _inputs(5, 1, 2, 3, 2, 2)  # 6 pairs, 32 threads, 1 slice
    out = gta.tensor_attention(Q, K1, K2, V1, V2, tpb=32, slices=4)  # slices clipped to the pairs
    np.testing.assert_allclose(out, sta.tensor_attention(Q, K1, K2, V1, V2, method="loop"), atol=1e-13)
    empty, lse = gta.tensor_attention(Q[:0], K1, K2, V1, V2, return_lse=True)
    assert empty.shape == (0, 2) and lse.shape == (0,)


def test_exact_kernel_rejects_what_it_cannot_do():
    Q, K1, K2, V1, V2 = _inputs(6, 1, 2, 2, 2, 2)
    with pytest.raises(ValueError, match="MAX_DIM|<="):
        big = np.ones((2, gta.MAX_DIM + 1))
        gta.tensor_attention(big[:1], big, big, V1, V2)
    with pytest.raises(ValueError, match="zero tokens"):
        gta.tensor_attention(Q, K1[:0], K2, V1[:0], V2)
    with pytest.raises(ValueError, match="k = 2, 3"):
        gta.kth_order_attention(Q, [K1, K2, K2], [V1, V2, V2])


def test_sim_dispatch_method_cuda():
    """sim.tensor_attention's method='cuda' (k = 2 through gpu.attention, k = 3 here) and Match3."""
    Q, K1, K2, V1, V2 = _inputs(7, 2, 6, 6, 2, 2)
    for keys, values in (([K1], [V1]), ([K1, K2], [V1, V2])):
        got, lse = sta.kth_order_attention(Q, keys, values, method="cuda", scale=0.7, return_lse=True)
        ref, ref_lse = sta.kth_order_attention(Q, keys, values, method="naive", scale=0.7, return_lse=True)
        np.testing.assert_allclose(got, ref, atol=1e-13)
        np.testing.assert_allclose(lse, ref_lse, rtol=1e-13)
    np.testing.assert_allclose(sta.matrix_attention(Q, K1, V1, method="cuda"),
                               sta.matrix_attention(Q, K1, V1, method="naive"), atol=1e-13)
    with pytest.raises(ValueError, match="k = 2, 3"):
        sta.kth_order_attention(Q, [K1, K2, K2], [V1, V2, V2], method="cuda")
    x = np.random.default_rng(8).integers(0, 23, 6)
    np.testing.assert_allclose(sta.match3_tensor_scores(x, 23, method="cuda"),
                               sta.match3_tensor_scores(x, 23, method="numba"), atol=1e-12)


# ---------------------------------------------------------------- polynomial method
@pytest.mark.parametrize("d,g,n,tpb,blocks_y", [(2, 3, 11, 8, 4), (3, 2, 5, 8, None), (1, 4, 9, 16, 2)])
def test_feature_kernel_matches_cpu(d, g, n, tpb, blocks_y):
    index = th.multi_indices(d, g)
    rng = np.random.default_rng(d * 10 + g)
    X = rng.uniform(-1.3, 1.3, (n, d))
    w = rng.standard_normal(index.r)
    for weights in (None, w):
        F = gta.monomial_features(X, index.parent, index.var, weights, tpb=tpb, blocks_y=blocks_y)
        ref = sta.monomial_features(X, index, weights)
        assert F.shape == (index.r, n)
        np.testing.assert_allclose(F, ref, rtol=1e-14, atol=1e-15)
    # against the definition: F[alpha, j] = prod_l X[j, l]^alpha_l
    direct = np.prod(X[None, :, :] ** index.alphas[:, None, :], axis=2)
    np.testing.assert_allclose(gta.monomial_features(X, index.parent, index.var, tpb=tpb), direct, rtol=1e-13)


@pytest.mark.parametrize("k", [2, 3])
def test_polynomial_engine_matches_cpu(k):
    rng = np.random.default_rng(10 + k)
    Q, keys, values = sta.uniform_inputs(rng, 7, 2, 1.0, k, dv=3)
    kw = dict(degree=4, method="chebyshev", B=1.0)
    ref = sta.polynomial_attention(Q, keys, values, engine="numba", **kw)
    for chunk in (None, 3):  # several row chunks per key matrix and for the queries
        got = sta.polynomial_attention(Q, keys, values, engine="cuda", chunk=chunk, **kw)
        np.testing.assert_allclose(got.out, ref.out, rtol=0, atol=1e-12 * np.abs(ref.out).max())
        assert (got.rank, got.eps, got.certified, got.error_bound) == (ref.rank, ref.eps, ref.certified,
                                                                       ref.error_bound)


def test_polynomial_num_den_is_the_cpu_numerics():
    """num/den themselves (before the division), with the weights on S as on the CPU."""
    rng = np.random.default_rng(12)
    Q, keys, values = sta.uniform_inputs(rng, 4, 2, 0.8, 3)
    index = th.multi_indices(2, 3)
    w = th.feature_weights(index, th.approximation_coefficients(3, 0.5, "taylor"), 0.5)
    num, den = gta.polynomial_num_den(Q, keys, values, index.parent, index.var, w, tpb=8, blocks_y=3)
    rnum, rden = sta._poly_numba(Q, keys, values, index, w, None)
    np.testing.assert_allclose(num, rnum, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(den, rden, rtol=1e-12)
    # = U1 (U2 ⊘ U3)^T [V1 ⊘ V2, 1]: the polynomial kernel, materialised
    U1, U2, U3 = (gta.monomial_features(X, index.parent, index.var, ww, tpb=8).T
                  for X, ww in ((Q, w), (keys[0], None), (keys[1], None)))
    Pk = U1 @ sta.khatri_rao(U2, U3).T
    np.testing.assert_allclose(num, Pk @ sta.khatri_rao(*values), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(den, Pk.sum(axis=1), rtol=1e-12)


def test_polynomial_engine_rejects_bad_tables():
    index = th.multi_indices(2, 2)
    X = np.ones((3, 2))
    with pytest.raises(ValueError, match="earlier feature"):
        gta.monomial_features(X, index.parent[::-1], index.var)
    with pytest.raises(ValueError, match="weights"):
        gta.monomial_features(X, index.parent, index.var, np.ones(2))
    with pytest.raises(ValueError, match="variables"):
        gta.monomial_features(X[:, :1], index.parent, index.var)


def test_study_match3_part_on_the_gpu_kernel():
    """The study's --device gpu match3 path (host arrays, exact construction on the CUDA kernel)
    gives the CPU run's accuracies: the construction's readout is far from the threshold."""
    from studies.tensor_attention import _match3_part

    cfg = dict(Ns=(4,), sequences=2, train=2, degree=2)
    gpu = _match3_part(np.random.default_rng(13), device="gpu", **cfg)
    cpu = _match3_part(np.random.default_rng(13), device="cpu", **cfg)
    np.testing.assert_array_equal(gpu["match3_acc"], cpu["match3_acc"])
    np.testing.assert_array_equal(gpu["match3_positive"], cpu["match3_positive"])
