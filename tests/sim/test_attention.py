"""sim/attention.py: every implementation against the naive materialising reference."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import logsumexp

from sim.attention import softmax_attention


def reference(a, keys, values):
    """Textbook softmax attention, one query at a time, with scipy's logsumexp."""
    out = np.empty((a.shape[0], values.shape[1]))
    lse = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        s = keys @ a[i]
        lse[i] = logsumexp(s)
        out[i] = np.exp(s - lse[i]) @ values
    return out, lse


def _close(out, ref, values, rel=1e-10):
    """Outputs are convex combinations of values: compare relative to max |value|."""
    scale = max(1.0, float(np.abs(values).max()))
    return np.abs(out - ref).max() <= rel * scale


@st.composite
def problems(draw, same_values=None):
    q = draw(st.integers(1, 6))
    n = draw(st.integers(1, 300))
    dk = draw(st.integers(1, 5))
    same = draw(st.booleans()) if same_values is None else same_values
    dv = dk if same else draw(st.integers(1, 4))
    el = st.floats(-3, 3, allow_nan=False, width=64)
    keys = draw(arrays(np.float64, (n, dk), elements=el))
    a = draw(arrays(np.float64, (q, dk), elements=el)) * draw(st.sampled_from([0.1, 1.0, 10.0, 300.0]))
    values = keys if same else draw(arrays(np.float64, (n, dv), elements=el))
    chunk = draw(st.sampled_from([1, 7, 64, 2048]))
    return a, keys, values, chunk


@given(problems())
def test_fast_path_equals_naive_reference(p):
    a, keys, values, chunk = p
    ref, ref_lse = reference(a, keys, values)
    for method in ("numba", "stream", "naive"):
        out, lse = softmax_attention(a, keys, values, method=method, chunk=chunk)
        assert _close(out, ref, values), method
        assert np.allclose(lse, ref_lse, rtol=1e-12, atol=1e-10), method


@given(problems(same_values=True))
def test_fused_d2_path_equals_reference(p):
    a, keys, _, chunk = p
    keys = np.ascontiguousarray(np.resize(keys, (keys.shape[0], 2)))
    a = np.ascontiguousarray(np.resize(a, (a.shape[0], 2)))
    out, lse = softmax_attention(a, keys, method="numba", chunk=chunk)
    ref, ref_lse = reference(a, keys, keys)
    assert _close(out, ref, keys) and np.allclose(lse, ref_lse, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("d", [2, 3, 6])
def test_chunk_size_does_not_change_results(d):
    rng = np.random.default_rng(d)
    keys = rng.standard_normal((5000, d))
    a = rng.standard_normal((40, d)) * 2
    base, base_lse = softmax_attention(a, keys, chunk=5000)
    for chunk in (1, 3, 100, 1024, 4999, 10**6):
        out, lse = softmax_attention(a, keys, chunk=chunk)
        np.testing.assert_allclose(out, base, rtol=0, atol=1e-13)
        np.testing.assert_allclose(lse, base_lse, rtol=1e-15, atol=1e-12)


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("smax", [1e2, 1e3, 1e4])
def test_huge_scores_give_finite_correct_outputs(d, smax):
    rng = np.random.default_rng(int(smax) + d)
    keys = rng.standard_normal((3000, d))
    a = rng.standard_normal((24, d))
    s = a @ keys.T
    a *= smax / np.abs(s).max()  # scores now span +-smax
    for chunk in (64, 4096):
        out, lse = softmax_attention(a, keys, chunk=chunk)
        ref, ref_lse = reference(a, keys, keys)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
        assert _close(out, ref, keys, rel=1e-12)
        np.testing.assert_allclose(lse, ref_lse, rtol=1e-14)
    # at these scales softmax is hardmax: the output is the best-scoring key
    if smax >= 1e3:
        best = keys[np.argmax(a @ keys.T, axis=1)]
        gap = np.sort(a @ keys.T, axis=1)
        clear = gap[:, -1] - gap[:, -2] > 50  # second-best weight < e^-50
        np.testing.assert_allclose(out[clear], best[clear], atol=1e-15 * smax)


def test_first_key_far_below_the_rest_triggers_rescale():
    keys = np.array([[-1000.0, 0.0]] + [[1.0, float(i)] for i in range(10)])
    a = np.array([[1.0, 0.0]])
    out, lse = softmax_attention(a, keys, chunk=4)
    ref, ref_lse = reference(a, keys, keys)
    assert _close(out, ref, keys, rel=1e-14) and np.allclose(lse, ref_lse)


def test_stream_runs_on_a_strict_array_api_namespace():
    xp = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((500, 3))
    a = rng.standard_normal((9, 3))
    out, lse = softmax_attention(xp.asarray(a), xp.asarray(keys), method="stream", chunk=64)
    ref, ref_lse = reference(a, keys, keys)
    assert _close(np.asarray(out), ref, keys) and np.allclose(np.asarray(lse), ref_lse)


def test_bad_inputs_are_rejected():
    k = np.ones((3, 2))
    with pytest.raises(ValueError, match="finite"):
        softmax_attention(np.array([[np.nan, 1.0]]), k)
    with pytest.raises(ValueError, match="zero tokens"):
        softmax_attention(np.ones((1, 2)), np.ones((0, 2)))
    with pytest.raises(ValueError, match="dim"):
        softmax_attention(np.ones((1, 3)), k)
    with pytest.raises(ValueError, match="method"):
        softmax_attention(np.ones((1, 2)), k, method="fast")
    with pytest.raises(ValueError, match="chunk"):
        softmax_attention(np.ones((1, 2)), k, chunk=0)


@pytest.mark.parametrize("d", [2, 3])
def test_results_do_not_depend_on_the_thread_count(d):
    """Kernels split their queries across threads (sim.kernels_cpu.run_threads); each query is
    computed by the same code whatever the split, so 1 and 2 threads agree bit for bit."""
    import numba

    rng = np.random.default_rng(d)
    keys = rng.standard_normal((3000, d))
    a = rng.standard_normal((40, d)) * 2
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = softmax_attention(a, keys)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = softmax_attention(a, keys)
    finally:
        numba.set_num_threads(saved)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_auto_sends_other_namespaces_to_stream_not_cuda():
    xp = pytest.importorskip("array_api_strict")
    from sim.attention import self_attention_moments

    rng = np.random.default_rng(3)
    keys = rng.standard_normal((60, 2))
    a = rng.standard_normal((3, 2))
    out, _ = softmax_attention(xp.asarray(a), xp.asarray(keys))  # would fail inside the CUDA path
    ref, _ = reference(a, keys, keys)
    assert _close(np.asarray(out), ref, keys)
    m, _ = self_attention_moments(xp.asarray(keys), np.eye(2), None, [1.0])
    m_ref, _ = self_attention_moments(keys, np.eye(2), None, [1.0], method="naive")
    np.testing.assert_allclose(np.asarray(m), m_ref, atol=1e-12)
