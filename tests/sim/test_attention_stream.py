"""Tokens generated inside the kernel (sim.attention.stream) and the float32 path, against the
materialised float64 reference: same tokens, same outputs; the same bits whatever the thread
count or query grouping; float32 within its stated error."""
import numba
import numpy as np
import pytest

from sim.attention import TokenStream, softmax_attention, stream_attention
from sim.attention import stream as st_mod

Z = 5.0


def _queries(q, d, R, seed=0):
    x = np.random.default_rng(seed).standard_normal((q, d))
    return R * x / np.linalg.norm(x, axis=1, keepdims=True)


def test_tokens_are_a_pure_function_of_key_and_index():
    s = TokenStream((11, 22), 3 * st_mod.BLOCK + 5, 3)
    full = s.materialise()
    assert full.shape == (s.n, 3)
    for a, b in ((0, 7), (5, 70000), (st_mod.BLOCK - 3, 2 * st_mod.BLOCK + 1), (s.n - 4, s.n)):
        np.testing.assert_array_equal(s.materialise(a, b), full[a:b])
    other = TokenStream((11, 23), 100, 3).materialise()
    assert not np.array_equal(other, full[:100])


@pytest.mark.parametrize("law,d", [("gaussian", 2), ("gaussian", 5), ("sphere", 3)])
def test_generated_tokens_have_the_law(law, d):
    n = 200_000
    y = TokenStream((3, 4), n, d, law=law, scale=1.5).materialise()
    mean = y.mean(axis=0)
    if law == "gaussian":
        var = 1.5**2
        assert np.all(np.abs(mean) <= Z * np.sqrt(var / n))
        cov = np.cov(y.T)
        # sample covariance entries: variance var^2 (1 + delta_ij) / n
        assert np.all(np.abs(cov - var * np.eye(d)) <= Z * var * np.sqrt(2.0 / n))
    else:
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.5, rtol=1e-12)
        second = (y**2).mean(axis=0)
        assert np.all(np.abs(mean) <= Z * 1.5 / np.sqrt(d * n))
        assert np.all(np.abs(second - 1.5**2 / d) <= Z * 1.5**2 * np.sqrt(2.0 / (d * (d + 2) * n)) * 2)


@pytest.mark.parametrize("d,law,R", [(2, "gaussian", 1.0), (2, "gaussian", 6.0), (3, "sphere", 4.0), (4, "gaussian", 2.0)])
def test_stream_equals_the_materialised_reference(d, law, R):
    s = TokenStream((7, 8), 2 * st_mod.BLOCK + 17, d, law=law, scale=1.0)
    a = _queries(13, d, R)
    out, lse = stream_attention(a, s)
    ref, ref_lse = softmax_attention(a, s.materialise())
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * max(1.0, np.abs(ref).max()))
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-13, atol=1e-11)
    # the same through softmax_attention's dispatch
    out2, _ = softmax_attention(a, s)
    np.testing.assert_array_equal(out2, out)


def test_same_bits_whatever_the_threads_and_the_query_groups(monkeypatch):
    s = TokenStream((1, 2), 3 * st_mod.BLOCK + 99, 2)
    a = _queries(40, 2, 3.0)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one, _ = stream_attention(a, s)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two, _ = stream_attention(a, s)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    monkeypatch.setattr(st_mod, "PARTIAL_BYTES", 8 * 4 * 4 * 7)  # groups of a few queries
    grouped, _ = stream_attention(a, s)
    np.testing.assert_array_equal(one, grouped)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("R", [1.0, 8.0, 60.0])
def test_float32_within_its_stated_error(d, R):
    """float32 scores and weights with float64 sums: outputs within ~1e-6 of float64 relative to
    max |y| (scores up to |R| * max|y| ~ 300 exercise the rescale), on arrays and on streams."""
    s = TokenStream((5, 6), st_mod.BLOCK + 1234, d)
    y = s.materialise()
    a = _queries(17, d, R, seed=3)
    ref, ref_lse = softmax_attention(a, y)
    scale = np.abs(y).max()
    for out, lse in (softmax_attention(a, y, precision="float32"), stream_attention(a, s, precision="float32")):
        assert np.abs(out - ref).max() <= 2e-6 * scale
        assert np.abs(lse - ref_lse).max() <= 2e-6 * max(1.0, np.abs(ref_lse).max())


def test_bad_precision_and_stream_methods():
    s = TokenStream((1, 1), 100, 2)
    with pytest.raises(ValueError, match="precision"):
        softmax_attention(np.ones((2, 2)), np.ones((5, 2)), precision="float16")
    with pytest.raises(ValueError, match="float32"):
        softmax_attention(np.ones((2, 2)), np.ones((5, 2)), method="naive", precision="float32")
    with pytest.raises(ValueError, match="token stream"):
        softmax_attention(np.ones((2, 2)), s, method="naive")
    with pytest.raises(ValueError, match="generate"):
        TokenStream((1, 1), 10, 2, law="ball")
