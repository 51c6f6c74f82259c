"""gpu/attention.py on a real GPU against the CPU fast path (skipped without one)."""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_cuda_kernel_matches_cpu_on_device_arrays():
    cp = pytest.importorskip("cupy")
    from gpu.attention import softmax_attention
    from sim.attention import softmax_attention as cpu

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((200_000, 2))
    a = rng.standard_normal((512, 2)) * 3
    ref, ref_lse = cpu(a, keys)
    out, lse = softmax_attention(cp.asarray(a), cp.asarray(keys))
    np.testing.assert_allclose(cp.asnumpy(out), ref, rtol=0, atol=1e-12 * np.abs(keys).max())
    out32, lse32 = softmax_attention(cp.asarray(a, dtype=cp.float32), cp.asarray(keys, dtype=cp.float32))
    assert np.abs(cp.asnumpy(out32) - ref).max() <= 1e-5 * np.abs(keys).max()
    np.testing.assert_allclose(cp.asnumpy(lse32), ref_lse, rtol=1e-5)
