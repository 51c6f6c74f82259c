"""gpu/tensor_attention.py on a real GPU (CuPy arrays, default launch configurations) against the
CPU engine sim/tensor_attention.py; skipped without a usable GPU (tests/conftest.py).

Deterministic inputs: float64 within 1e-12 relative, float32 within 1e-5 (relative to
prod ||V_m||_inf); no random streams are involved."""
import numpy as np
import pytest

from sim import tensor_attention as sta
from theory import tensor_attention as th

pytestmark = pytest.mark.gpu


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


def _dev(cp, Q, keys, values, dtype=np.float64):
    return (cp.asarray(Q, dtype=dtype), [cp.asarray(K, dtype=dtype) for K in keys],
            [cp.asarray(V, dtype=dtype) for V in values])


@pytest.mark.parametrize("n,nq,d,dv", [(256, 64, 4, 4), (300, 7, 3, 2), (97, 513, 16, 16)])
def test_exact_tensor_kernel_matches_cpu(cp, n, nq, d, dv):
    from gpu.tensor_attention import tensor_attention

    rng = np.random.default_rng(n + nq)
    Q, keys, values = sta.uniform_inputs(rng, n, d, 1.5, 3, dv=dv)
    Q = Q[:nq] if nq <= n else np.concatenate([Q] * (nq // n + 1))[:nq]
    ref, ref_lse = sta.tensor_attention(Q, *keys, *values, return_lse=True)
    vmax = np.abs(values[0]).max() * np.abs(values[1]).max()
    Qd, kd, vd = _dev(cp, Q, keys, values)
    out, lse = tensor_attention(Qd, *kd, *vd, return_lse=True)
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out), ref, rtol=0, atol=1e-12 * vmax)
    np.testing.assert_allclose(cp.asnumpy(lse), ref_lse, rtol=1e-12)
    Q32, k32, v32 = _dev(cp, Q, keys, values, np.float32)
    out32, lse32 = tensor_attention(Q32, *k32, *v32, return_lse=True)
    assert np.abs(cp.asnumpy(out32) - ref).max() <= 1e-5 * vmax
    np.testing.assert_allclose(cp.asnumpy(lse32), ref_lse, rtol=1e-5)


def test_sim_dispatches_device_arrays_to_the_gpu(cp):
    """auto on CuPy arrays: k = 2 and 3 on the CUDA kernels, k = 4 on the stream path."""
    rng = np.random.default_rng(1)
    for k in (2, 3, 4):
        Q, keys, values = sta.uniform_inputs(rng, 24, 3, 1.0, k)
        ref = sta.kth_order_attention(Q, keys, values, method="naive", scale=0.8)
        got = sta.kth_order_attention(*_dev(cp, Q, keys, values), scale=0.8)
        np.testing.assert_allclose(cp.asnumpy(got), ref, atol=1e-12)
    x = rng.integers(0, 40, 12)
    np.testing.assert_allclose(sta.match3_tensor_scores(x, 40, method="cuda"), sta.match3_tensor_scores(x, 40),
                               atol=1e-10)


@pytest.mark.parametrize("k", [2, 3])
def test_polynomial_engine_matches_cpu(cp, k):
    rng = np.random.default_rng(2 + k)
    Q, keys, values = sta.uniform_inputs(rng, 4096, 4, 1.0, k)
    kw = dict(degree=8, method="chebyshev", B=1.0)
    ref = sta.polynomial_attention(Q, keys, values, **kw)
    for chunk in (None, 1000):
        got = sta.polynomial_attention(*_dev(cp, Q, keys, values), chunk=chunk, **kw)  # auto -> cuda
        assert isinstance(got.out, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(got.out), ref.out, rtol=0, atol=1e-12 * np.abs(ref.out).max())
        assert (got.rank, got.certified) == (ref.rank, ref.certified)


def test_feature_kernel_matches_cpu(cp):
    from gpu.tensor_attention import monomial_features

    index = th.multi_indices(5, 6)
    rng = np.random.default_rng(3)
    X = rng.uniform(-1.2, 1.2, (5000, 5))
    w = rng.standard_normal(index.r)
    F = monomial_features(cp.asarray(X), index.parent, index.var, w)
    np.testing.assert_allclose(cp.asnumpy(F), sta.monomial_features(X, index, w), rtol=1e-14, atol=1e-300)


def test_benchmark_suite_gpu_rows(cp):
    from studies.benchmarks import tensor_attention as suite

    ds = suite.run(quick=True)
    for name in ("time_approx_gpu_s", "max_err_gpu", "time_exact_gpu_all_s", "exact_gpu_vs_cpu",
                 "verdict_gpu_agree"):
        assert name in ds
    assert bool(ds["verdict_gpu_agree"])
    assert "GPU exact" in suite.summary(ds)
