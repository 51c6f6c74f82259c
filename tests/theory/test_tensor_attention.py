"""Closed forms of theory.tensor_attention: polynomial approximation of exp, error bounds, degrees,
ranks, multinomial expansion (sympy), cost model, Match3 constants."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.polynomial import chebyshev as C

from theory import tensor_attention as th

RS = (0.25, 0.5, 1.0, 2.0, 4.0)


def test_taylor_coefficients_and_polyval():
    c = th.taylor_coefficients(7)
    assert np.allclose(c * np.array([math.factorial(t) for t in range(8)]), 1.0)
    x = np.linspace(-3, 3, 11)
    assert np.allclose(th.polyval(c, x), np.polyval(c[::-1], x), rtol=1e-14)


@pytest.mark.parametrize("R", RS)
@pytest.mark.parametrize("g", [0, 1, 3, 6, 10])
def test_chebyshev_interpolates_exp_at_first_kind_nodes(g, R):
    c = th.chebyshev_coefficients(g, R)
    assert c.size == g + 1
    nodes = R * C.chebpts1(g + 1)
    assert np.allclose(th.polyval(c, nodes), np.exp(nodes), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("method", th.METHODS)
@pytest.mark.parametrize("R", RS)
def test_measured_error_below_proven_bound(method, R):
    for g in range(0, 25):
        eps = th.relative_error(th.approximation_coefficients(g, R, method), R)
        # allowance: float64 rounding of the coefficients (Chebyshev-to-monomial conversion) and of the
        # evaluation, each ~ degree x the floor e^{2R} u
        slack = 4 * (g + 4) * th.float64_floor(R)
        assert eps <= th.relative_error_bound(g, R, method) * (1 + 1e-9) + slack, (g, eps)


@pytest.mark.parametrize("R", RS)
def test_chebyshev_beats_taylor_and_shift_turns_additive_into_relative(R):
    for g in (2, 4, 6, 8):
        t = th.relative_error(th.taylor_coefficients(g), R)
        c = th.relative_error(th.chebyshev_coefficients(g, R), R)
        assert c < t
        # additive error of the Taylor polynomial of e^y on [0, 2R] -> relative error after the shift
        P = th.taylor_coefficients(g)
        add = th.absolute_error(P, 0.0, 2 * R)
        rel = th.relative_error(th.shift_polynomial(P, R), R)
        assert rel <= add * (1 + 1e-9) + 10 * th.float64_floor(R)


def test_shift_polynomial_is_the_shift():
    P = np.array([0.3, -1.2, 0.5, 2.0])
    x = np.linspace(-2, 2, 9)
    assert np.allclose(th.polyval(th.shift_polynomial(P, 1.5), x), math.exp(-1.5) * th.polyval(P, x + 1.5))


@pytest.mark.parametrize("method", th.METHODS)
def test_min_degree_is_minimal_and_monotone(method):
    for R in (0.5, 1.0, 2.0):
        prev = -1
        for eps in (1e-3, 1e-6, 1e-9):
            g = th.min_degree(R, eps, method)
            assert th.relative_error(th.approximation_coefficients(g, R, method), R) <= eps
            if g > 0:
                assert th.relative_error(th.approximation_coefficients(g - 1, R, method), R) > eps
            assert g >= prev
            prev = g
            assert th.min_degree(R, eps, method, use="bound") >= g  # the bound is conservative
    # Chebyshev never needs more degrees than Taylor
    for R in (0.25, 1.0, 4.0):
        assert th.min_degree(R, 1e-6, "chebyshev") <= th.min_degree(R, 1e-6, "taylor")


def test_min_degree_reports_the_float64_floor():
    with pytest.raises(ValueError, match="float64 floor"):
        th.min_degree(8.0, 1e-14, "taylor", g_max=60)


def test_super_exponential_decay_in_degree():
    """notes tensor_attention §5 item 14: for g >= 2R + 2 the Taylor error ratio eps(g+1)/eps(g) is <= c R/(g+1) and
    decreasing, and log eps is concave in g (until the float64 floor)."""
    for R in (0.5, 1.0, 2.0):
        gs = np.arange(int(2 * R + 2), 30)
        eps = np.array([th.relative_error(th.taylor_coefficients(g), R) for g in gs])
        keep = eps > 1e4 * th.float64_floor(R)
        gs, eps = gs[keep], eps[keep]
        assert gs.size >= 4
        ratio = eps[1:] / eps[:-1]
        assert np.all(ratio <= 1.5 * R / (gs[:-1] + 1))
        assert np.all(np.diff(ratio) < 0)
        assert np.all(np.diff(np.log(eps), 2) < 1e-9)


def test_even_taylor_positive_everywhere_odd_not():
    x = np.linspace(-40, 40, 4001)
    for g in range(0, 13):
        vals = th.polyval(th.taylor_coefficients(g), x)
        assert th.is_positive_everywhere(g, "taylor") == bool(np.all(vals > 0))
    assert not th.is_positive_everywhere(4, "chebyshev")


def test_rank_formulas_and_multi_indices():
    for d in (1, 2, 4, 5):
        for g in range(0, 6):
            idx = th.multi_indices(d, g)
            assert idx.r == th.rank(d, g) == math.comb(d + g, g)
            a = idx.alphas
            assert len({tuple(r) for r in a}) == idx.r  # all distinct
            assert np.all(a.sum(1) == idx.degree) and idx.degree.max() == g
            assert np.all(np.diff(idx.degree) >= 0)  # graded order
            for row in range(1, idx.r):
                e = np.zeros(d, dtype=int)
                e[idx.var[row]] = 1
                assert np.array_equal(a[idx.parent[row]] + e, a[row])
                assert idx.degree[idx.parent[row]] == idx.degree[row] - 1
            assert th.rank_loose(d, g, 2) >= th.rank(d, g)
            assert th.rank_loose(d, g, 3) >= th.rank_loose(d, g, 2)
            assert th.rank_redundant(d, g) >= th.rank(d, g)


def test_feature_weights_match_sympy_multinomials():
    for d, g in ((2, 4), (3, 3), (4, 2)):
        idx = th.multi_indices(d, g)
        c = np.arange(1.0, g + 2)
        w = th.feature_weights(idx, c, scale=0.5)
        table = th.sympy_multinomial_table(d, g)
        assert len(table) == idx.r
        for row, alpha in enumerate(idx.alphas):
            t = int(alpha.sum())
            assert w[row] == pytest.approx(c[t] * 0.5**t * table[tuple(int(v) for v in alpha)], rel=1e-13)


@pytest.mark.parametrize("d,g,k", [(2, 3, 2), (2, 3, 3), (3, 2, 3), (2, 2, 4)])
def test_sympy_feature_expansion_is_exact(d, g, k):
    assert th.sympy_kernel_residual(d, g, k) == 0


def test_ranges_and_thresholds():
    assert th.logit_range(1.5, 3) == pytest.approx(1.5**3)
    assert th.logit_range(1.5, 2, d=4, scale=0.5) == pytest.approx(0.5 * 4 * 1.5**2)
    n = np.array([1e2, 1e4, 1e8])
    for k in (2, 3, 4):
        t = th.entry_threshold(n, k)
        assert np.all(np.diff(t) > 0)
        assert np.allclose(t**k, np.log(n))
    assert np.all(th.entry_threshold(1e6, 3) < th.entry_threshold(1e6, 2))  # higher order, lower bound
    with pytest.raises(ValueError):
        th.logit_range(-1.0)


def test_output_error_bound():
    eps = np.array([1e-8, 0.1, 0.5, 1.0])
    b = th.output_error_bound(eps, 2.0)
    assert b[0] == pytest.approx(4e-8, rel=1e-6)
    assert b[2] == pytest.approx(4.0)
    assert np.isinf(b[3])
    assert np.all(th.output_error_bound_as23(eps[:3], 2.0) >= b[:3] * (1 - eps[:3]))


def test_cost_model_and_crossovers():
    for d, g, k in ((4, 8, 3), (4, 8, 2), (8, 4, 3)):
        nx = th.crossover_n(d, g, k)
        assert th.exact_flops(nx, d, k) == pytest.approx(th.approx_flops(nx, d, g, k), rel=1e-9)
        assert th.exact_flops(2 * nx, d, k) > th.approx_flops(2 * nx, d, g, k)
    # more tokens buy more degrees: the crossover entry bound grows with n; order 3 allows less than 2
    # in logit range but more in entries up to the notes' d = 16 table (B ~ 1.5-1.75 tensor, <~ 0.7 matrix)
    b3 = [th.crossover_entry_bound(n, 16, 3, 1e-6) for n in (2**10, 2**16)]
    assert b3[1] > b3[0]
    assert 1.3 < b3[1] < 2.0
    assert th.crossover_entry_bound(2**16, 16, 2, 1e-6) < 1.0


def test_aa22_degree_scale():
    R = np.array([0.1, 1.0, 10.0, 100.0])
    g = th.aa22_degree(R, 1e-6)
    assert np.all(g >= R) and np.all(np.diff(g) >= 0)
    assert g[-1] == pytest.approx(100.0)


def test_rounding_bound_grows_with_range():
    c = th.taylor_coefficients(8)
    assert 0 < th.rounding_error_bound(c, 0.5, 100) < th.rounding_error_bound(c, 4.0, 100)


def test_match3_constants():
    for N in (8, 12, 24):
        M = th.match3_balanced_M(N)
        assert abs(M - N * N / math.log(4)) <= 0.5
        lam = th.match3_lambda(N, M)
        # the construction: weight of a non-matching pair relative to a matching one is 1/(100 N^2)
        assert math.exp(-lam * (1 - math.cos(2 * math.pi / M))) == pytest.approx(1 / (100 * N * N))
        thr = th.match3_threshold(M)
        assert math.cos(2 * math.pi / M) < thr < 1
        assert th.match3_entry_bound(N, M) ** 3 == pytest.approx(4 * lam)
        assert th.match2_lambda(N, M) < lam


# ------------------------------------------------------- independent reference (the claims' eps)
@pytest.mark.parametrize("method", th.METHODS)
@pytest.mark.parametrize("R", (0.125, 0.5, 1.0, 2.0, 4.0, 8.0))
def test_reference_error_agrees_with_the_coefficient_route_above_the_floor(method, R):
    """Two independent computations of eps: the approximation's monomial coefficients on the grid,
    and the remainder series / Chebyshev basis; they differ by float64 rounding only (the monomial
    form's conversion and Horner evaluation, the reference's Clenshaw evaluation), which the
    rounding allowance of a few g terms covers."""
    for g in range(0, 17):
        ref = th.reference_relative_error(g, R, method)
        got = th.relative_error(th.approximation_coefficients(g, R, method), R)
        allow = th.rounding_allowance(g, R, method, 4 * (g + 1))
        # (eps >= 1: both carry the cancellation of the remainder at x = -R, ~ e^{2R} u eps)
        assert abs(got - ref) <= allow + (4 * th.float64_floor(R) * ref if ref >= 1 else 0.0), (g, got, ref, allow)
        if ref > 1e3 * allow:
            assert got == pytest.approx(ref, rel=1e-3)
        assert ref <= th.relative_error_bound(g, R, method) * (1 + 1e-9) + allow


def test_reference_error_does_not_use_the_approximation_coefficients(monkeypatch):
    before = {(g, m): th.reference_relative_error(g, 1.5, m) for g in (2, 6) for m in th.METHODS}
    th.reference_relative_error.cache_clear()
    monkeypatch.setattr(th, "taylor_coefficients", lambda g: np.zeros(g + 1))
    monkeypatch.setattr(th, "chebyshev_coefficients", lambda g, R: np.zeros(g + 1))
    monkeypatch.setattr(th, "approximation_coefficients", lambda g, R, m="taylor": np.zeros(g + 1))
    for (g, m), v in before.items():
        assert th.reference_relative_error(g, 1.5, m) == v
    th.reference_relative_error.cache_clear()


def test_taylor_reference_is_the_incomplete_gamma_function():
    """For x >= 0: 1 - e^{-x} T_g(x) = P(g+1, x) (regularised lower incomplete gamma), so on
    [0, R] the relative error is largest at R; the negative end is larger still."""
    from scipy.special import gammainc

    for R in (0.5, 2.0, 5.0):
        for g in (1, 4, 9):
            x = np.linspace(0, R, 7)[1:]
            np.testing.assert_allclose(th._taylor_tail_relative(g, x), gammainc(g + 1, x), rtol=1e-10)
            assert th.reference_relative_error(g, R, "taylor") >= gammainc(g + 1, R)


@pytest.mark.parametrize("method", th.METHODS)
def test_coefficient_mass_bounds_the_monomial_coefficients(method):
    for R in (0.25, 1.0, 4.0):
        for g in (0, 3, 8, 14):
            c = th.approximation_coefficients(g, R, method)
            mass = float(np.sum(np.abs(c) * R ** np.arange(g + 1)))
            ref = th.coefficient_mass(g, R, method)
            assert ref >= mass * (1 - 1e-12)
            if method == "taylor":
                assert ref == pytest.approx(mass, rel=1e-14)
                assert ref <= math.exp(R)
    assert th.rounding_allowance(8, 2.0, "chebyshev", 100) > th.rounding_allowance(8, 2.0, "chebyshev", 10)


def test_flop_model_lower_order_terms_and_slopes():
    n = np.array([64.0, 128.0, 256.0])
    for k in (2, 3, 4):
        assert np.all(th.exact_flops(n, 4, k, lower_order=True) > th.exact_flops(n, 4, k))
        s = th.flop_slope(n, 4, k)
        assert k - 0.05 < s < k  # lower-order terms flatten the slope slightly
        assert th.flop_slope(n * 64, 4, k) > s  # ... less so at larger n
        a = th.flop_slope(n, 4, k, g=8)
        assert 0.9 < a < 1.0
    # exactly k and 1 without lower-order terms (a pure power law)
    assert np.polyfit(np.log(n), np.log(th.exact_flops(n, 4, 3)), 1)[0] == pytest.approx(3.0)
    with pytest.raises(ValueError):
        th.flop_slope([128.0], 4, 3)


def test_match3_margin_rounding_and_predicted_accuracy():
    for N in (4, 8, 16, 24, 64):
        M = th.match3_balanced_M(N)
        c1 = math.cos(2 * math.pi / M)
        assert th.match3_readout_margin(M) == pytest.approx(0.49 * (1 - c1))
        assert th.match3_readout_margin(M) < th.match3_threshold(M) - c1  # within the gap to c1
        assert th.match3_rounding_error(N, M) < th.match3_readout_margin(M)
        assert th.match3_predicted_accuracy(N, M) == 1.0
    # the rounding bound grows with lam ~ M^2 while the margin shrinks like 1/M^2: no prediction at huge N
    N = 10**7
    M = th.match3_balanced_M(N)
    assert th.match3_rounding_error(N, M) > th.match3_readout_margin(M)
    assert math.isnan(th.match3_predicted_accuracy(N, M))


@pytest.mark.parametrize("N", [5, 8, 12])
def test_match3_readouts_keep_the_predicted_margin(N):
    """The construction's float64 readout stays at least the theory's margin away from the
    threshold (both sides), on random sequences."""
    from sim import tensor_attention as sta

    M = th.match3_balanced_M(N)
    thr, margin = th.match3_threshold(M), th.match3_readout_margin(M)
    rng = np.random.default_rng(N)
    for _ in range(20):
        x = rng.integers(0, M, N)
        s = sta.match3_tensor_scores(x, M)
        y = sta.match3_labels(x, M)
        assert np.all(np.where(y, s - thr, thr - s) >= margin - th.match3_rounding_error(N, M))


# --------------------------------------------------- the output error, exactly (notes tensor_attention §2.7)

@pytest.mark.parametrize("method", th.METHODS)
@pytest.mark.parametrize("g", [0, 1, 3, 8, 14])
def test_relative_error_profile_is_the_polynomial_error(method, g):
    """delta(x) = P(x) e^{-x} - 1 from the reference forms equals the direct evaluation with the
    approximation's coefficients (to float64 rounding of the latter), and its maximum is eps."""
    R = 2.0
    x = np.linspace(-R, R, 401)
    if method == "chebyshev" and g == 0:
        return
    c = th.approximation_coefficients(g, R, method)
    direct = th.polyval(c, x) * np.exp(-x) - 1.0
    prof = th.relative_error_profile(g, R, method, x)
    atol = 50 * th.UNIT_ROUNDOFF * th.coefficient_mass(g, R, method) * math.exp(R)
    np.testing.assert_allclose(prof, direct, rtol=1e-12, atol=atol)
    grid = th._grid(R)
    assert np.abs(th.relative_error_profile(g, R, method, grid)).max() == pytest.approx(
        th.reference_relative_error(g, R, method), rel=1e-9)
    if method == "taylor":  # the one-pass partial sums agree within the rounding allowance
        fast = th._taylor_profiles(x, [g])[g]
        assert np.max(np.abs(fast - prof)) <= th.rounding_allowance(g, R, method, 1)


def test_taylor_profile_is_accurate_where_it_is_tiny():
    # -P(g+1, x) for x >= 0 and the positive 1F1 series for x < 0 keep every digit
    x = np.array([-0.01, 1e-3, 0.01])
    g = 6
    exact = np.array([sum(float(v) ** t / math.factorial(t) for t in range(g + 1, g + 30)) for v in x])
    np.testing.assert_allclose(-th.relative_error_profile(g, 1.0, "taylor", x) * np.exp(x), exact, rtol=1e-12)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("kind", ["uniform", "sign_aligned"])
def test_predicted_output_error_is_the_fast_algorithms_error(k, kind):
    """theory's prediction from the error profile at the realised logits equals the measured
    error of the polynomial method against exact attention, wherever it is above float64
    rounding (relative 1e-8), for both families and several degrees."""
    from sim import tensor_attention as sta

    rng = np.random.default_rng(3 + k)
    d, n, B = 4, 12, 1.25
    gen = sta.uniform_inputs if kind == "uniform" else sta.sign_aligned_inputs
    Q, keys, values = gen(rng, n, d, B, k)
    s = 1.0 / d
    R = th.logit_range(B, k, d, s)
    exact = sta.kth_order_attention(Q, keys, values, scale=s)
    degrees = [2, 4, 6, 10]
    pred = th.predicted_output_error(Q, keys, values, degrees, list(th.METHODS), R, s)
    vmax = float(np.prod([np.abs(V).max() for V in values]))
    for im, method in enumerate(th.METHODS):
        for ig, g in enumerate(degrees):
            if th.reference_relative_error(g, R, method) >= 0.5:
                continue
            err = float(np.abs(sta.polynomial_attention(Q, keys, values, degree=g, method=method, B=B,
                                                        scale=s).out - exact).max())
            floor = 4 * th.rounding_allowance(g, R, method, th.rank(d, g) + n) * vmax
            assert abs(err - pred[im, ig]) <= 1e-8 * pred[im, ig] + floor, (method, g, err, pred[im, ig])
            assert pred[im, ig] <= th.output_error_bound(th.reference_relative_error(g, R, method), vmax) + floor
