"""sim.token_selection: every fast path against its naive reference on small inputs (same draws,
same numbers), determinism, statistical checks of the samplers and estimators with z = 5 bands
(several seeds), the stream source at scale, and the three negative controls of issue 22."""
import math
import tracemalloc

import numba
import numpy as np
import pytest

import sim.token_selection as S
from sim.attention import TokenStream
from sim.token_selection import kernels as K
from sim.token_selection import reference as ref
from theory import token_selection as T

Z = 5.0


def _problem(n=300, d=3, dv=2, q=5, scale=1.5, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n, d))
    V = rng.standard_normal((dv, d))
    a = scale * rng.standard_normal((q, d))
    return a, Y, V


# ------------------------------------------------------------------ sources and passes
@pytest.mark.parametrize("law,d", [("gaussian", 1), ("gaussian", 3), ("gaussian", 8), ("sphere", 5)])
def test_stream_token_generator_matches_the_stream(law, d):
    st = TokenStream((5, 6), 5000, d, law=law, scale=1.7)
    full = st.materialise()
    idx = np.array([0, 1, 2, 3, 4, 17, 999, 4096, 4999, 3, 2500], dtype=np.int64)
    out = np.empty((idx.size, d))
    K.stream_tokens(np.uint64(5), np.uint64(6), idx, d, law == "sphere", 1.7, out)
    np.testing.assert_allclose(out, full[idx], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("block", [64, 1 << 14])
def test_moments_and_diagnostics_match_the_naive_reference(block):
    a, Y, V = _problem()
    a[0] *= 200  # scores of several hundred: the streaming lse must not overflow
    ctx = S.SelectionContext(a, S.as_source(Y, V), block=block)
    m = ref.naive_moments(a, Y, Y @ V.T)
    for k in ("lse", "ybar", "kappa", "score_mean", "score_std"):
        np.testing.assert_allclose(getattr(ctx, k), m[k], rtol=1e-12, atol=1e-12)
    for x, k in zip(ctx.diagnostics(), ("var_p", "B", "G")):
        np.testing.assert_allclose(x, m[k], rtol=1e-11, atol=1e-13)
    # the diagnostics are the theory module's finite-sample forms
    s = a @ Y.T
    np.testing.assert_allclose(ctx.diagnostics()[1], T.uniform_constant(s, Y @ V.T), rtol=1e-10)
    np.testing.assert_allclose(ctx.kappa, T.kish_ratio(s), rtol=1e-10)


def test_stream_source_equals_the_materialised_array():
    st = TokenStream((1, 2), 3000, 4, law="gaussian", scale=0.8)
    V = np.random.default_rng(1).standard_normal((3, 4))
    a = 2 * np.random.default_rng(2).standard_normal((4, 4))
    pols = [S.Uniform(40), S.TopK(30), S.Hybrid(8, 30), S.Importance(25, "optimal"), S.Coverage(0.02, min_keep=10)]
    r1 = S.selection_errors(a, st, pols, reps=3, seed=4, V=V, block=512)
    r2 = S.selection_errors(a, st.materialise(), pols, reps=3, seed=4, V=V, block=700)
    for k in ("err2", "tau", "zratio", "nerr2", "kappa", "B", "var_p"):
        np.testing.assert_allclose(getattr(r1, k), getattr(r2, k), rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(r1.count, r2.count)


def test_topk_matches_the_naive_reference_with_ties():
    rng = np.random.default_rng(3)
    Y = rng.integers(-2, 3, (400, 2)).astype(float)  # many exactly tied scores
    a = rng.integers(-2, 3, (6, 2)).astype(float)
    ctx = S.SelectionContext(a, S.as_source(Y), block=37)
    for k in (1, 5, 57, 400):
        np.testing.assert_array_equal(ctx.rows_topk(ctx.exact_rows(), k), ref.naive_topk(a @ Y.T, k))
    wrong = ctx.rows_topk(ctx.exact_rows(negate=True), 9)
    np.testing.assert_array_equal(wrong, ref.naive_topk(-(a @ Y.T), 9))


@pytest.mark.parametrize("mode,kernel", [("avg", 7), ("max", 5), ("avg", 1)])
def test_proxy_rows_and_proxy_topk(mode, kernel):
    a, Y, V = _problem(n=500, q=4)
    window = np.random.default_rng(9).standard_normal((6, 3))
    ctx = S.SelectionContext(a, S.as_source(Y, V), block=61)
    rows = ctx.proxy_rows(window, kernel, mode)
    np.testing.assert_allclose(rows.r, ref.naive_proxy(window, Y, kernel, mode), rtol=1e-12, atol=1e-12)
    assert abs(np.exp(rows.r - rows.Lrow[0]).sum() - 1) < 1e-12  # the proxy shares sum to 1
    sel = S.select(S.ProxyTopK(33, window, kernel, mode), a, Y, V=V, block=61)
    assert sel.idx.shape == (1, 1, 33)
    np.testing.assert_array_equal(sel.idx[0, 0], ref.naive_topk(rows.r, 33)[0])


@pytest.mark.parametrize("convention", ["reach", "below"])
@pytest.mark.parametrize("scores", ["exact", "proxy"])
def test_coverage_matches_the_naive_reference(convention, scores):
    a, Y, V = _problem(n=700, q=6, scale=2.0, seed=5)
    window = a[:3] * 0.7
    ctx = S.SelectionContext(a, S.as_source(Y, V), block=90)
    for tau, min_keep in ((0.0, 1), (0.005, 1), (0.05, 20), (0.3, 1), (0.3, 650)):
        pol = S.Coverage(tau, min_keep, scores=scores, window=window if scores == "proxy" else None,
                         convention=convention)
        sel = pol.select(ctx, 1, (0, 0))
        if scores == "exact":
            r = a @ Y.T
            mass = T.softmax_weights(r)
        else:
            r = ref.naive_proxy(window, Y, 7, "avg")[None]
            mass = np.exp(r - ctx.proxy_rows(window).Lrow[0])
        for i in range(r.shape[0]):
            kept, drop = ref.naive_coverage(r[i], mass[i], tau, min_keep, convention)
            got = np.sort(sel.idx[i, 0, :sel.count[i, 0]])
            np.testing.assert_array_equal(got, np.sort(kept))
            if kept.size == 700 - drop:
                assert sel.info["dropped"][i] == drop


def test_coverage_rule_bounds_for_the_scored_query():
    """Exact scores: tau_S <= tau_cov ('below') or < tau_cov + the smallest kept share ('reach'),
    and ||ybar - yhat|| <= tau_S * diam of the values (section 8)."""
    a, Y, V = _problem(n=2000, q=8, scale=2.5, seed=6)
    v = Y @ V.T
    diam = max(np.linalg.norm(v[:, None] - v[None], axis=2).max(), 1e-300)
    for conv in ("reach", "below"):
        res = S.selection_errors(a, Y, [S.Coverage(0.01, min_keep=1, convention=conv)], V=V)
        tau = res.tau[0, :, 0]
        if conv == "below":
            assert np.all(tau <= 0.01 + 1e-12)
        else:
            assert np.all(tau < 0.01 + np.exp((a @ Y.T).max(axis=1) - res.lse))
        assert np.all(np.sqrt(res.err2[0, :, 0]) <= tau * diam + 1e-12)


def test_uniform_samplers_match_the_naive_reference():
    key = (11, 12)
    ctx = S.SelectionContext(np.zeros((3, 2)), S.as_source(np.zeros((50, 2))))
    ctx.q0 = 7
    for m, replace in ((5, True), (60, True), (10, False), (30, False), (50, False)):
        sel = S.Uniform(m, replace).select(ctx, 4, key)
        np.testing.assert_array_equal(sel.idx, ref.naive_uniform(key, 7, 3, 4, 50, m, replace))
        if not replace:
            assert all(np.unique(sel.idx[i, r]).size == m for i in range(3) for r in range(4))
        np.testing.assert_allclose(sel.logw, math.log(50 / m))


@pytest.mark.parametrize("proposal", ["p", "optimal"])
def test_importance_draws_match_the_naive_reference(proposal):
    a, Y, V = _problem(n=400, q=4, scale=2.0, seed=7)
    ctx = S.SelectionContext(a, S.as_source(Y, V), block=53)
    key = (21, 22)
    sel = S.Importance(37, proposal).select(ctx, 3, key)
    idx, logw = ref.naive_importance(key, 0, a, Y, Y @ V.T, 3, 37, proposal)
    np.testing.assert_array_equal(sel.idx, idx)
    np.testing.assert_allclose(sel.logw, logw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("replace", [True, False])
def test_hybrid_and_vattention_match_the_naive_reference(replace):
    a, Y, V = _problem(n=300, q=5, scale=2.0, seed=8)
    ctx = S.SelectionContext(a, S.as_source(Y, V), block=41)
    key = (31, 32)
    sel = S.Hybrid(7, 40, replace).select(ctx, 3, key)
    heavy = np.sort(ref.naive_topk(a @ Y.T, 7), axis=1)
    idx, logw, count = ref.naive_tail(key, 0, heavy, 300, 40, 3, replace)
    np.testing.assert_array_equal(sel.idx, idx)
    np.testing.assert_allclose(sel.logw, logw, rtol=1e-14)
    for mode in ("denominator", "numerator"):
        for quantile in ("one_sided", "two_sided"):
            pol = S.VAttention(7, eps=0.1, delta=0.1, mode=mode, quantile=quantile, replace=replace)
            sel = pol.select(ctx, 2, key)
            b = ref.naive_vattention_budget(a, Y, Y @ V.T, heavy, 0.1, S.vattention_quantile(0.1, quantile), mode)
            np.testing.assert_array_equal(sel.info["budget"], b)
            idx, logw, count = ref.naive_tail(key, 0, heavy, 300, b, 2, replace)
            np.testing.assert_array_equal(sel.count, count)
            for i in range(5):
                np.testing.assert_array_equal(sel.idx[i, :, :count[i, 0]], idx[i, :, :count[i, 0]])
    # the two conventions: one-sided z < two-sided z, so its budget is smaller
    b1 = S.VAttention(7, 0.1, 0.1, quantile="one_sided").select(ctx, 1, key).info["budget"]
    b2 = S.VAttention(7, 0.1, 0.1, quantile="two_sided").select(ctx, 1, key).info["budget"]
    assert np.all(b1 <= b2) and np.any(b1 < b2)


@pytest.mark.parametrize("source", ["array", "stream"])
def test_estimator_matches_the_naive_reference(source):
    st = TokenStream((3, 4), 500, 3, law="sphere", scale=1.3)
    Y = st.materialise()
    V = np.random.default_rng(10).standard_normal((2, 3))
    a = 3 * np.random.default_rng(11).standard_normal((4, 3))
    tokens = st if source == "stream" else Y
    ctx = S.SelectionContext(a, S.as_source(tokens, V), block=77)
    for pol in (S.Uniform(30), S.Uniform(60, False), S.Importance(20, "p"), S.TopK(25), S.Hybrid(5, 30),
                S.Coverage(0.05, 5), S.ProxyTopK(40, a[:2])):
        reps = 1 if pol.deterministic else 3
        sel = pol.select(ctx, reps, (1, 2))
        got = np.array(S.estimate(ctx, sel, reps))
        want = ref.naive_estimate(a, Y, Y @ V.T, sel.idx, sel.logw, sel.count, reps)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_determinism_threads_groups_and_policy_independence():
    a, Y, V = _problem(n=600, q=7, seed=12)
    pols = [S.Uniform(20), S.Uniform(25, False), S.Importance(15), S.Hybrid(4, 12), S.VAttention(4, 0.2, 0.2)]
    base = S.selection_errors(a, Y, pols, reps=3, seed=np.random.SeedSequence(99), V=V)
    again = S.selection_errors(a, Y, pols, reps=3, seed=np.random.SeedSequence(99), V=V)
    np.testing.assert_array_equal(base.err2, again.err2)
    grouped = S.selection_errors(a, Y, pols, reps=3, seed=np.random.SeedSequence(99), V=V, memory=1, block=50)
    np.testing.assert_allclose(grouped.err2, base.err2, rtol=1e-12, atol=0)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = S.selection_errors(a, Y, pols, reps=3, seed=np.random.SeedSequence(99), V=V)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(one.err2, base.err2)
    # a policy's draws do not depend on the other policies; another seed changes them
    alone = S.selection_errors(a, Y, pols[2:3], reps=3, seed=np.random.SeedSequence(99), V=V)
    np.testing.assert_array_equal(alone.err2[0], base.err2[2])
    other = S.selection_errors(a, Y, pols[:1], reps=3, seed=np.random.SeedSequence(100), V=V)
    assert not np.array_equal(other.err2[0], base.err2[0])


def test_selection_contracts():
    a, Y, V = _problem(n=100, q=2)
    with pytest.raises(ValueError, match="distinct"):
        S.selection_errors(a, Y, [S.Uniform(5), S.Uniform(5)], V=V)
    with pytest.raises(ValueError):
        S.selection_errors(a, Y, [S.Uniform(200, replace=False)], V=V)
    with pytest.raises(ValueError):
        S.Coverage(0.01, scores="proxy")
    with pytest.raises(ValueError):
        S.VAttention(3, quantile="published")
    with pytest.raises(ValueError, match="finite"):
        S.as_source(np.full((10, 3), np.nan))
    with pytest.raises(ValueError):
        S.selection_errors(a[:, :2], Y, [S.TopK(3)], V=V)


# ------------------------------------------------------------------ statistical checks
def _z(x):
    x = np.asarray(x, dtype=float).ravel()
    return x.mean(), x.std() / math.sqrt(x.size)


def test_samplers_draw_the_right_distributions():
    """Inclusion frequencies: uniform without replacement includes each key with probability m/n;
    importance sampling draws key j with probability p_j (z-tests per key, 3 seeds)."""
    n, m = 40, 10
    a, Y, V = _problem(n=n, q=1, scale=1.2, seed=13)
    p = T.softmax_weights(a @ Y.T)[0]
    inc = np.zeros(n)
    hits = np.zeros(n)
    R = 0
    for seed in range(3):
        sel_u = S.select(S.Uniform(m, replace=False), a, Y, reps=2000, seed=seed, V=V)
        sel_p = S.select(S.Importance(m, "p"), a, Y, reps=2000, seed=seed, V=V)
        inc += np.bincount(sel_u.idx.ravel(), minlength=n)
        hits += np.bincount(sel_p.idx.ravel(), minlength=n)
        R += 2000
    f = m / n
    assert np.all(np.abs(inc / R - f) < Z * math.sqrt(f * (1 - f) / R))
    N = R * m
    assert np.all(np.abs(hits / N - p) < Z * np.sqrt(p * (1 - p) / N) + 1e-12)


def test_estimators_against_the_theory():
    """Mean squared errors against theory.token_selection (the given-token forms): uniform with
    replacement (second order), without replacement (first order + |c2|/m^2), importance from
    p (exact Var_p/m), the hybrid (second order); and the normaliser estimate is unbiased."""
    n, reps = 2000, 2500
    a, Y, V = _problem(n=n, d=3, dv=2, q=2, scale=0.8, seed=14)
    v = Y @ V.T
    s = a @ Y.T
    m = 200
    heavy = np.zeros_like(s, dtype=bool)
    for i, top in enumerate(ref.naive_topk(s, 10)):
        heavy[i, top] = True
    pols = [S.Uniform(m), S.Uniform(m, False), S.Importance(m, "p"), S.Hybrid(10, m)]
    preds = [T.uniform_mse(s, v, m, order=2), T.uniform_mse(s, v, m, replace=False),
             T.importance_mse(s, v, m, "p"), T.hybrid_mse(s, v, heavy, m, order=2)]
    slack = [0.0, abs(T.sampling_coefficients(s, v)[1]) / m**2, 0.0, 0.0]
    errs = [[] for _ in pols]
    zr = [[] for _ in pols]
    for seed in range(3):
        res = S.selection_errors(a, Y, pols, reps=reps, seed=seed, V=V)
        for k in range(len(pols)):
            errs[k].append(res.err2[k])
            zr[k].append(res.zratio[k])
    for k, pol in enumerate(pols):
        e = np.concatenate(errs[k], axis=1)
        for i in range(2):
            mean, se = _z(e[i])
            assert abs(mean - preds[k][i]) < Z * se + slack[k][i] if np.ndim(slack[k]) else Z * se + slack[k], pol.name
        zm, zse = _z(np.concatenate(zr[k], axis=1))
        assert abs(zm - 1) < Z * zse + 1e-12, pol.name


def test_vattention_exceedance_prediction():
    """Denominator rule, flat head: the measured frequency of |D_hat/D - 1| > eps matches the
    CLT prediction (2 delta for the one-sided quantile, delta for the two-sided) -- with b as
    the rule sets it (floored) and the residual's population variance."""
    n = 4000
    rng = np.random.default_rng(15)
    Y = rng.standard_normal((n, 2))
    a = np.array([[0.3, 0.0]])
    for quantile, nominal in (("one_sided", 0.2), ("two_sided", 0.1)):
        pol = S.VAttention(4, eps=0.02, delta=0.1, quantile=quantile)
        hits = 0
        R = 0
        for seed in range(3):
            res = S.selection_errors(a, Y, [pol], reps=2000, seed=seed)
            hits += int(np.sum(np.abs(res.zratio[0] - 1) > 0.02))
            R += res.zratio[0].size
            b = int(res.info[pol.name]["budget"][0])
        ctx = S.SelectionContext(a, S.as_source(Y))
        heavy = np.sort(ctx.rows_topk(ctx.exact_rows(), 4), axis=1)
        d1, d2, _, _, ns = ctx.residual_sums(heavy)
        var_pop = d2[0] / ns - (d1[0] / ns) ** 2
        pred = T.vattention_exceedance(var_pop, ns, b, 0.02)
        assert abs(pred - nominal) < 0.02  # the rule's own design point, up to flooring
        freq = hits / R
        assert abs(freq - pred) < Z * math.sqrt(pred * (1 - pred) / R)


def test_vattention_numerator_rule_in_sixteen_dimensions():
    """Numerator rule (sd = sqrt(tr Cov) of e^s v), d = 16, one-sided quantile, delta = 0.1: the
    measured P(||N_hat/D - ybar|| > eps ||ybar||) matches the exact Gaussian quadratic-form
    probability of the CLT (Imhof, residual covariance, b as used) and lies far below the
    rank-one value 2 delta that the scalar argument would suggest."""
    n, d = 1 << 14, 16
    Y = np.random.default_rng(5).standard_normal((n, d))
    a = np.zeros((1, d))
    a[0, 0] = 1.0
    pol = S.VAttention(16, eps=0.1, delta=0.1, mode="numerator", quantile="one_sided")
    hits, R = 0, 0
    for seed in range(2):
        res = S.selection_errors(a, Y, [pol], reps=1200, seed=seed)
        tol = 0.1 * np.linalg.norm(res.ybar[0])
        hits += int(np.sum(np.sqrt(res.nerr2[0]) > tol))
        R += res.nerr2[0].size
    b = int(res.info[pol.name]["budget"][0])
    s = (a @ Y.T)[0]
    p = T.softmax_weights(s)
    rest = np.setdiff1d(np.arange(n), np.argsort(-s)[:16])
    C = np.cov((p[rest, None] * Y[rest]).T, bias=True)
    pred = T.vattention_exceedance(C, rest.size, b, tol)
    assert abs(hits / R - pred) < Z * math.sqrt(pred * (1 - pred) / R)
    assert pred < 0.5 * T.rank_one_exceedance(S.vattention_quantile(0.1, "one_sided"))


# --------------------------------------------------------------------- scale (stream)
def test_stream_at_two_to_the_twenty_in_bounded_memory():
    """n = 2^20 generated keys, d = 4: the errors of a small budget in far less memory than the
    keys themselves (tracemalloc peak < 1/2 of n d 8 bytes)."""
    n, d = 1 << 20, 4
    st = TokenStream((7, 7), n, d, law="gaussian", scale=1.0)
    a = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.7, 0.7, 0.0]])
    tracemalloc.start()
    res = S.selection_errors(a, st, [S.Uniform(512), S.TopK(256), S.Hybrid(64, 256)], reps=4, seed=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n * d * 8 / 2
    assert np.all(np.isfinite(res.err2)) and np.all(res.err2 > 0)
    # sigma = |a| for N(0, I) tokens; kappa_n ~ e^{sigma^2} at this n
    np.testing.assert_allclose(res.score_std, np.linalg.norm(a, axis=1), rtol=5e-3)
    np.testing.assert_allclose(res.kappa, np.exp(np.sum(a**2, axis=1)), rtol=0.05)


# ------------------------------------------------------------------ negative controls
def test_control_gaussian_tail_law_on_sphere_tokens_is_rejected():
    d, rad, kappa, f, n = 3, 1.0, 4.0, 0.1, 1 << 14
    a = np.array([[kappa / rad, 0.0, 0.0]])
    k = int(f * n)
    taus = []
    for seed in range(4):
        st = TokenStream((seed, 5), n, d, law="sphere", scale=rad)
        taus.append(S.selection_errors(a, st, [S.TopK(k)]).tau[0, 0, 0])
    mean, se = _z(taus)
    se = max(se, 1e-4)
    right = T.sphere_topk(f, a[0], d, rad)[0]
    wrong = S.gaussian_tail_mass_on_sphere(f, a[0], d, rad)
    assert abs(mean - right) < Z * se
    assert abs(mean - wrong) > Z * se


def test_control_topk_of_the_wrong_end_is_rejected():
    """Gaussian tokens: the top-k error law holds for TopK and rejects TopKWrongEnd (3 seeds)."""
    n, d, f = 1 << 12, 3, 0.25
    k = int(f * n)
    a = np.array([[0.5, 0.0, 0.0], [0.0, 0.4, 0.3]])
    pred = T.gaussian_topk_mse(f, n, a, np.eye(d))
    good, bad = [], []
    for seed in range(3):
        Y = np.random.default_rng(seed).standard_normal((n, d))
        res = S.selection_errors(a, Y, [S.TopK(k), S.TopKWrongEnd(k)])
        good.append(res.err2[0, :, 0])
        bad.append(res.err2[1, :, 0])
    good, bad = np.array(good), np.array(bad)
    for i in range(2):
        mg, sg = _z(good[:, i])
        mb, sb = _z(bad[:, i])
        tol = 0.05 * pred[i]  # declared: O(1/n) finite-sample corrections to the limit law
        assert abs(mg - pred[i]) < Z * sg + tol
        assert abs(mb - pred[i]) > Z * sb + tol


def test_control_uniform_sampler_skipping_a_block_is_rejected():
    """Keys whose last quarter carries most of the attention: m * MSE of uniform sampling stays at
    B_n, the sampler that skips that block does not (3 seeds)."""
    n, m = 4000, 400
    rng = np.random.default_rng(16)
    Y = rng.standard_normal((n, 2))
    Y[3 * n // 4:, 0] += 1.5  # a block of high-score keys (e.g. the recent window)
    a = np.array([[1.2, 0.0]])
    s = a @ Y.T
    pred = T.uniform_mse(s, Y, m, order=2)[0]
    pols = [S.Uniform(m), S.UniformSkipBlock(m, 3 * n // 4, n)]
    good, bad = [], []
    for seed in range(3):
        res = S.selection_errors(a, Y, pols, reps=1500, seed=seed)
        good.append(res.err2[0])
        bad.append(res.err2[1])
    mg, sg = _z(good)
    mb, sb = _z(bad)
    assert abs(mg - pred) < Z * sg
    assert abs(mb - pred) > Z * sb


# --------------------------------------------------------------------- tail sums (given-token)
@pytest.mark.parametrize("source", ["array", "stream"])
def test_tail_sums_match_the_dense_theory(source):
    """One streamed pass of tail_sums gives, for nested top sets, the same (c1, c2) as the dense
    given-token forms of theory/, the tail mass of each top set, and vAttention's residual second
    moment; ties in the scores are split by index as rows_topk does."""
    from sim.token_selection.sums import gather, tail_sums

    n, d, dv, q = 700, 3, 2, 4
    if source == "array":
        a, Y, V = _problem(n=n, d=d, dv=dv, q=q, scale=1.3, seed=22)
        Y[::7] = Y[3]  # exact score ties
        tokens = Y
    else:
        tokens = TokenStream((3, 9), n, d, law="sphere", scale=1.5)
        Y = tokens.materialise()
        V = np.random.default_rng(22).standard_normal((dv, d))
        a = 1.3 * np.random.default_rng(23).standard_normal((q, d))
    src = S.as_source(tokens, V)
    ctx = S.SelectionContext(a, src, block=100)
    k1 = [0, 1, 6, 45]
    ts_ = tail_sums(ctx, k1, outer=True, block=128)
    s, v = a @ Y.T, Y @ V.T
    top = ctx.rows_topk(ctx.exact_rows(), 45)
    np.testing.assert_array_equal(top, ref.naive_topk(s, 45))
    keys, vals = gather(src, top[:, :6])
    np.testing.assert_allclose(keys, Y[top[:, :6]], rtol=1e-14)
    p = T.softmax_weights(s)
    for f, k in enumerate(k1):
        heavy = np.zeros_like(s, dtype=bool)
        for i in range(q):
            heavy[i, top[i, :k]] = True
        c1, c2 = T.coefficients_from_sums(n - k, ts_.tau[:, f], ts_.A1[:, f], ts_.A2[:, f], ts_.A3[:, f],
                                          ts_.P2[:, f], ts_.V2[:, f])
        r1, r2 = T.sampling_coefficients(s, v) if k == 0 else T.hybrid_coefficients(s, v, heavy)[:2]
        np.testing.assert_allclose(c1, r1, rtol=1e-10)
        np.testing.assert_allclose(c2, r2, rtol=1e-9)
        np.testing.assert_allclose(ts_.tau[:, f], T.tail_mass(s, heavy), rtol=1e-12, atol=1e-15)
        M2 = np.einsum("qn,nk,nj->qkj", np.where(heavy, 0.0, p * p), v, v)
        np.testing.assert_allclose(ts_.M2[:, f], M2, rtol=1e-10)
    with pytest.raises(ValueError, match="top-set sizes"):
        tail_sums(ctx, [n])
