"""Hypothesis property tests of sim.tensor_attention (notes tensor_attention §5, items 1-13 and 15).

Generators: n in [1, 8] (oracle tests), d in [1, 5], entry bound B in [0.1, 2]; entries uniform in
[-B, B] drawn by hypothesis (so it also tries the extremes), adversarial sign-aligned inputs
(every entry +-B, logits reaching +-B^k), and degenerate inputs with duplicated rows.
Profiles: ``ci`` (default, derandomized, 50 examples) and ``--hypothesis-profile=long``.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st
from hypothesis.extra import numpy as hnp

from sim import tensor_attention as sta
from sim.attention import softmax_attention
from theory import tensor_attention as th

ATOL = 1e-12
KINDS = ("uniform", "sign_aligned", "duplicated")


@st.composite
def inputs(draw, k=3, n_max=8, d_max=5, kinds=KINDS, B_max=2.0, square=False):
    """(Q, keys, values, B, kind) with k-1 key/value matrices; rows may differ in number."""
    kind = draw(st.sampled_from(kinds))
    d = draw(st.integers(1, d_max))
    B = draw(st.floats(0.1, B_max))
    if kind == "sign_aligned":
        n = draw(st.integers(1, n_max))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        Q, keys, values = sta.sign_aligned_inputs(rng, n, d, B, k)
        return Q, keys, values, B, kind
    sizes = [draw(st.integers(1, n_max)) for _ in range(k)]
    if square:
        sizes = [sizes[0]] * k
    unit = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)

    def arr(n):
        return B * draw(hnp.arrays(np.float64, (n, d), elements=unit))

    Q = arr(sizes[0])
    keys = [arr(n) for n in sizes[1:]]
    values = [arr(n) for n in sizes[1:]]
    if kind == "duplicated":  # degenerate: repeated key rows and a repeated query row
        for K in keys:
            K[1:] = K[0]
        Q[-1] = Q[0]
    return Q, keys, values, B, kind


def _exact(Q, keys, values, method="auto", **kw):
    return sta.kth_order_attention(Q, keys, values, method=method, **kw)


# ------------------------------------------------------------------ exactness / structure
@given(inputs(k=3))
def test_tensor_implementations_equal_triple_loop(case):
    """item 1: numba == stream == naive (flattened D^-1 exp(Q (K1⊘K2)^T/d)(V1⊘V2)) == loops."""
    Q, keys, values, B, _ = case
    ref = _exact(Q, keys, values, "loop")
    for method in ("numba", "stream", "naive"):
        np.testing.assert_allclose(_exact(Q, keys, values, method), ref, atol=ATOL, rtol=0)
    kr = softmax_attention(Q / Q.shape[1], sta.khatri_rao(*keys), sta.khatri_rao(*values), method="naive")[0]
    np.testing.assert_allclose(kr, ref, atol=ATOL, rtol=0)


@given(st.sampled_from([2, 4]).flatmap(lambda k: inputs(k=k, n_max=8 if k == 2 else 4, d_max=4)))
def test_matrix_and_fourth_order_equal_loops(case):
    """The general k-th order form (k = 2 through the foundation kernel, k = 4 streamed)."""
    Q, keys, values, B, _ = case
    ref = _exact(Q, keys, values, "loop")
    for method in ("auto", "stream", "naive"):
        np.testing.assert_allclose(_exact(Q, keys, values, method), ref, atol=ATOL, rtol=0)


@given(inputs(k=3))
def test_row_order_invariance(case):
    """item 2: the paper's Khatri-Rao row order (first index fastest) gives the same output."""
    Q, (K1, K2), (V1, V2), B, _ = case
    s = 1.0 / Q.shape[1]
    a = softmax_attention(Q * s, sta.khatri_rao(K1, K2, "paper"), sta.khatri_rao(V1, V2, "paper"),
                          method="naive")[0]
    b = softmax_attention(Q * s, sta.khatri_rao(K1, K2), sta.khatri_rao(V1, V2), method="naive")[0]
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


@given(inputs(k=3), st.randoms(use_true_random=False))
def test_query_permutation_equivariance_and_key_pair_invariance(case, rnd):
    """items 3 and 4: T(PQ) = P T(Q); permuting (K1, V1) by pi and (K2, V2) by sigma changes nothing."""
    Q, (K1, K2), (V1, V2), B, _ = case
    T = _exact(Q, [K1, K2], [V1, V2])
    p = np.array(rnd.sample(range(Q.shape[0]), Q.shape[0]))
    np.testing.assert_allclose(_exact(Q[p], [K1, K2], [V1, V2]), T[p], atol=ATOL, rtol=0)
    pi = np.array(rnd.sample(range(K1.shape[0]), K1.shape[0]))
    sg = np.array(rnd.sample(range(K2.shape[0]), K2.shape[0]))
    np.testing.assert_allclose(_exact(Q, [K1[pi], K2[sg]], [V1[pi], V2[sg]]), T, atol=ATOL, rtol=0)


@given(inputs(k=3))
def test_swap_symmetry_and_duplication_invariance(case):
    """items 5 and 6: T(Q, K1, K2, V1, V2) = T(Q, K2, K1, V2, V1); stacking [K1; K1], [V1; V1]
    leaves T unchanged."""
    Q, (K1, K2), (V1, V2), B, _ = case
    T = _exact(Q, [K1, K2], [V1, V2])
    np.testing.assert_allclose(_exact(Q, [K2, K1], [V2, V1]), T, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_exact(Q, [np.vstack([K1, K1]), K2], [np.vstack([V1, V1]), V2]), T,
                               atol=ATOL, rtol=0)


@given(inputs(k=3))
def test_reduction_to_matrix_attention(case):
    """item 7: K2 = V2 = 1 gives matrix attention with the same 1/d scale."""
    Q, (K1, K2), (V1, V2), B, _ = case
    ones = np.ones_like(K2)
    T = _exact(Q, [K1, ones], [V1, ones])
    np.testing.assert_allclose(T, sta.matrix_attention(Q, K1, V1), atol=ATOL, rtol=0)


@given(inputs(k=3), st.floats(-3, 3))
def test_bilinearity_in_values(case, a):
    """item 8: linear in V1 and in V2 separately."""
    Q, (K1, K2), (V1, V2), B, _ = case
    rng = np.random.default_rng(0)
    W1, W2 = rng.uniform(-B, B, V1.shape), rng.uniform(-B, B, V2.shape)
    T = lambda A, C: _exact(Q, [K1, K2], [A, C])  # noqa: E731
    np.testing.assert_allclose(T(a * V1 + W1, V2), a * T(V1, V2) + T(W1, V2), atol=1e-11, rtol=0)
    np.testing.assert_allclose(T(V1, a * V2 + W2), a * T(V1, V2) + T(V1, W2), atol=1e-11, rtol=0)


@given(inputs(k=3))
def test_convex_hull(case):
    """item 9: T[i, l] lies between min and max over pairs of V1[j1, l] V2[j2, l]."""
    Q, (K1, K2), (V1, V2), B, _ = case
    T = _exact(Q, [K1, K2], [V1, V2])
    prod = V1[:, None, :] * V2[None, :, :]
    lo = prod.min(axis=(0, 1))
    hi = prod.max(axis=(0, 1))
    assert np.all(T >= lo - ATOL) and np.all(T <= hi + ATOL)


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_tensor_trick(n, r, dv, seed):
    """item 10: (U2 ⊘ U3)^T (V1 ⊘ V2) == (U2^T V1) o (U3^T V2) (U2 n1 x r, U3 n2 x r)."""
    rng = np.random.default_rng(seed)
    n2 = rng.integers(1, 9)
    U2, U3 = rng.standard_normal((n, r)), rng.standard_normal((n2, r))
    V1, V2 = rng.standard_normal((n, dv)), rng.standard_normal((n2, dv))
    lhs = sta.khatri_rao(U2, U3).T @ sta.khatri_rao(V1, V2)
    np.testing.assert_allclose(sta.tensor_trick(U2, U3, V1, V2), lhs, atol=1e-12 * (1 + np.abs(lhs).max()))


@given(inputs(k=3, n_max=6, d_max=4, B_max=1.5), st.integers(0, 6), st.sampled_from(th.METHODS))
def test_cp_factors_reproduce_the_polynomial_kernel(case, g, method):
    """item 11: r == C(d+g, g); U1 (U2 ⊘ U3)^T == P(logits); the fast algorithm (both engines)
    equals exact polynomial attention (P in place of exp) when its normalisers are positive."""
    Q, keys, values, B, _ = case
    d = Q.shape[1]
    R = th.logit_range(B, 3)
    U1, U2, U3 = sta.cp_factors(Q, keys, g, method=method, R=R)
    assert U1.shape[1] == U2.shape[1] == U3.shape[1] == th.rank(d, g)
    coeffs = th.approximation_coefficients(g, R, method)
    L = sta.tensor_logits(Q, *keys)
    P = th.polyval(coeffs, L)
    scale = 1 + th.polyval(np.abs(coeffs), R)  # size of the terms that cancel
    got = np.einsum("ia,ja,ka->ijk", U1, U2, U3)
    np.testing.assert_allclose(got, P, atol=1e-12 * scale * th.rank(d, g), rtol=0)
    den = P.reshape(P.shape[0], -1).sum(1)
    assume(np.all(den > 1e-6 * scale * P[0].size))
    ref = sta.polynomial_kernel_attention(Q, keys, values, coeffs)
    tol = 1e-10 * scale * P[0].size / den.min() * B * B
    for engine in ("numba", "xp"):
        res = sta.polynomial_attention(Q, keys, values, degree=g, method=method, R=R, engine=engine)
        np.testing.assert_allclose(res.out, ref, atol=tol, rtol=0)


@given(inputs(k=3), st.floats(-50, 50))
def test_logit_shift_stability(case, c):
    """item 12: adding a constant to all logits of a row changes nothing (logit-level API)."""
    Q, (K1, K2), (V1, V2), B, _ = case
    L = sta.tensor_logits(Q, K1, K2)
    shift = c * np.arange(1, Q.shape[0] + 1)[:, None, None]
    np.testing.assert_allclose(sta.attention_from_logits(L + shift, V1, V2),
                               sta.attention_from_logits(L, V1, V2), atol=ATOL, rtol=0)
    np.testing.assert_allclose(sta.attention_from_logits(L, V1, V2), _exact(Q, [K1, K2], [V1, V2]),
                               atol=ATOL, rtol=0)


# -------------------------------------------------------------------- approximation quality
def _certified_limit(res, n_terms, vmax):
    eps = res.eps + th.rounding_error_bound(th.approximation_coefficients(res.degree, res.design_range, res.method)
                                            if res.design_range > 0 else [1.0], res.design_range, n_terms)
    return float(th.output_error_bound(eps, vmax)) + 1e-12


@given(st.sampled_from([2, 3]).flatmap(lambda k: inputs(k=k, n_max=8)), st.integers(0, 14),
       st.sampled_from(th.METHODS))
def test_error_below_certified_bound(case, g, method):
    """item 13 (and 12): with eps = max |P/exp - 1| on [-B^k, B^k], the output error is at most
    2 eps/(1 - eps) prod ||V_m||_inf (plus the float64 rounding allowance), for every (n, d, B, g),
    adversarial inputs included; normalisers are positive whenever eps < 1."""
    Q, keys, values, B, kind = case
    k = len(keys) + 1
    R = th.logit_range(B, k)
    assume(th.relative_error(th.approximation_coefficients(g, R, method), R) < 1)
    res = sta.polynomial_attention(Q, keys, values, degree=g, method=method, B=B)
    assert res.certified and np.all(np.isfinite(res.out))
    vmax = float(np.prod([np.abs(V).max() for V in values]))
    err = np.abs(res.out - _exact(Q, keys, values)).max()
    n_terms = res.rank + max(K.shape[0] for K in keys)
    assert err <= _certified_limit(res, n_terms, vmax), (err, res.eps, kind)


@given(st.sampled_from([2, 3]).flatmap(lambda k: inputs(k=k, n_max=8, B_max=1.2)), st.sampled_from(th.METHODS))
def test_error_bound_decays_with_degree(case, method):
    """Error decays as g grows at fixed B: the certified limit falls super-exponentially along
    g = 2, 5, 8, 11, 14 and the measured error stays below it at every degree."""
    Q, keys, values, B, kind = case
    exact = _exact(Q, keys, values)
    vmax = float(np.prod([np.abs(V).max() for V in values]))
    eps = []
    for g in (2, 5, 8, 11, 14):
        res = sta.polynomial_attention(Q, keys, values, degree=g, method=method, B=B)
        assert np.abs(res.out - exact).max() <= _certified_limit(res, res.rank + Q.shape[0], vmax)
        eps.append(res.eps)
    # the bound's eps falls strictly with g wherever it is above the float64 floor e^{2R} u
    above_floor = [e for e in eps if e > 1e4 * th.float64_floor(res.design_range)]
    assert len(above_floor) >= 1
    assert all(b < a for a, b in zip(above_floor, above_floor[1:]))


@given(st.sampled_from([2, 3]), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_realised_range_beyond_design_range(k, d, seed):
    """Safeguards: inputs beyond the declared B raise LogitRangeError unless the polynomial is an
    even-degree Taylor polynomial (then the run is flagged uncertified, normalisers positive)."""
    rng = np.random.default_rng(seed)
    Q, keys, values = sta.sign_aligned_inputs(rng, 4, d, 1.5, k)
    for g, method in ((3, "taylor"), (4, "chebyshev"), (5, "chebyshev")):
        with pytest.raises(sta.LogitRangeError, match="exceeds the design range"):
            sta.polynomial_attention(Q, keys, values, degree=g, method=method, B=1.0)
    res = sta.polynomial_attention(Q, keys, values, degree=4, method="taylor", B=1.0)
    assert not res.certified and np.isinf(res.error_bound) and np.all(np.isfinite(res.out))


@given(st.sampled_from([2, 3]), st.sampled_from([4, 6, 8]), st.integers(3, 5), st.integers(0, 2**32 - 1))
def test_blow_up_past_the_threshold(k, g, d, seed):
    """item 15: at a fixed even Taylor degree g and adversarial inputs (one sign pattern scaled by
    B), the output error (relative to ||V1|| ... ) is non-decreasing in the logit range R = B^k
    between the float64 floor and the end of the certified regime, <= 1e-6 at R = 0.05 and O(1)
    once R = 3g (well past g/e). d >= 3: with
    one or two features the +-B sign patterns can make every logit of a query equal (no error)."""
    Q, keys, values = sta.sign_aligned_inputs(np.random.default_rng(seed), 8, d, 1.0, k)
    errs = []
    Rs = np.geomspace(0.05, 3 * g, 10)
    for R in Rs:
        B = R ** (1 / k)
        Qb, kb, vb = Q * B, [K * B for K in keys], [V * B for V in values]
        res = sta.polynomial_attention(Qb, kb, vb, degree=g, method="taylor", B=B)
        errs.append(np.abs(res.out - _exact(Qb, kb, vb)).max() / B ** (k - 1))
    errs = np.array(errs)
    assert errs[0] <= 1e-6
    # monotone from the float64 floor through the certified regime (eps(g, R) < 1); past it the
    # error saturates at O(1) and may wobble (softmax and P both concentrate on the top tuple)
    certified = np.array([th.relative_error(th.taylor_coefficients(g), R) < 1 for R in Rs])
    rising = errs[(errs > 1e-13) & certified]
    assert np.all(np.diff(rising) >= 0), errs
    assert errs[-1] >= 0.05
