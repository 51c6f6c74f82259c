"""gpu/attention.py on the CUDA simulator against the CPU reference (tiny grids)."""
import os

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # imported by the main process: nothing to do
    pytest.skip("run by tests/gpu/test_cudasim_suite.py with NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

from gpu.attention import merge_partials, softmax_attention  # noqa: E402
from sim.attention import softmax_attention as cpu_attention  # noqa: E402


@pytest.mark.parametrize("q,n,dk,dv,tpb,slices", [
    (3, 100, 2, 2, 32, None), (2, 257, 3, 1, 16, 3), (4, 64, 2, 2, 8, 1), (1, 5, 1, 4, 8, 2), (2, 40, 4, 3, 32, 7),
])
def test_kernel_matches_cpu_float64(q, n, dk, dv, tpb, slices):
    rng = np.random.default_rng(q * n + dk)
    keys = rng.standard_normal((n, dk))
    values = keys if dv == dk else rng.standard_normal((n, dv))
    a = rng.standard_normal((q, dk)) * 3
    out, lse = softmax_attention(a, keys, values, tpb=tpb, slices=slices)
    ref, ref_lse = cpu_attention(a, keys, values, method="naive")
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(values).max())
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-13)


def test_float32_inputs_within_1e5():
    rng = np.random.default_rng(2)
    keys = rng.standard_normal((150, 2)).astype(np.float32)
    a = (rng.standard_normal((3, 2)) * 4).astype(np.float32)
    out, lse = softmax_attention(a, keys, tpb=32, slices=2)
    ref, ref_lse = cpu_attention(a.astype(np.float64), keys.astype(np.float64), method="naive")
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(keys).max()
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5)


def test_large_scores_and_empty_threads():
    keys = np.array([[-1000.0, 0.0]] + [[1.0, float(i)] for i in range(6)])
    a = np.array([[50.0, 0.5]])
    out, lse = softmax_attention(a, keys, tpb=32)  # 32 threads, 7 tokens: most threads see none
    ref, ref_lse = cpu_attention(a, keys, method="naive")
    np.testing.assert_allclose(out, ref, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-14)


def test_sim_dispatch_to_cuda_method():
    rng = np.random.default_rng(5)
    keys = rng.standard_normal((90, 2))
    a = rng.standard_normal((2, 2))
    out, _ = cpu_attention(a, keys, method="cuda")
    ref, _ = cpu_attention(a, keys, method="naive")
    np.testing.assert_allclose(out, ref, atol=1e-12)


def test_merge_partials_is_the_online_softmax_rule():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((2, 12)) * 5
    y = rng.standard_normal((12, 3))
    parts = np.array_split(np.arange(12), 4)
    pm = np.stack([[s[i, p].max() for p in parts] for i in range(2)])
    pz = np.stack([[np.exp(s[i, p] - s[i, p].max()).sum() for p in parts] for i in range(2)])
    pacc = np.stack([[np.exp(s[i, p] - s[i, p].max()) @ y[p] for p in parts] for i in range(2)])
    out, lse = merge_partials(pm, pz, pacc)
    w = np.exp(s - s.max(1, keepdims=True))
    np.testing.assert_allclose(out, (w @ y) / w.sum(1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(lse, np.log(np.exp(s).sum(1)), rtol=1e-13)


@pytest.mark.parametrize("exclude", [False, True])
def test_self_attention_moments_match_cpu(exclude):
    from gpu.attention import self_attention_moments
    from sim.attention import self_attention_moments as cpu_moments

    rng = np.random.default_rng(7)
    X = rng.standard_normal((18, 2))
    A = np.array([[0.8, 0.3], [-0.2, 1.1]])
    V = np.array([[1.0, 0.5], [0.0, 2.0], [1.0, -1.0]])
    scales = [0.5, 3.0]
    mean, cov = self_attention_moments(X, A, V, scales, exclude_self=exclude, block_q=8, tpb=4, slices=2)
    ref_mean, ref_cov = cpu_moments(X, A, V, scales, exclude_self=exclude, method="naive")
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-12)
    if exclude:  # the sim dispatch reaches the same kernel
        m2, _ = cpu_moments(X[:6], A, V, scales[:1], exclude_self=True, method="cuda")
        r2, _ = cpu_moments(X[:6], A, V, scales[:1], exclude_self=True, method="naive")
        np.testing.assert_allclose(m2, r2, atol=1e-12)
