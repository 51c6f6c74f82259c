"""Predictions of theory/token_selection.py against brute force: exact expectations by enumeration
(tiny n), deterministic quadrature, and seeded Monte Carlo with z = 5 bands from CLT standard
errors (several seeds)."""
import itertools
import math

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss
from scipy import integrate, special, stats

from theory import token_sample as ts
from theory import token_selection as T

Z = 5.0


# ------------------------------------------------------------------------------- helpers
def _compositions(m, N):
    """All count vectors (c_1..c_N) with sum m, shape (C(m+N-1, N-1), N)."""
    cuts = np.array(list(itertools.combinations(range(m + N - 1), N - 1)))
    full = np.concatenate([-np.ones((len(cuts), 1), int), cuts, np.full((len(cuts), 1), m + N - 1)], axis=1)
    return np.diff(full, axis=1) - 1


def _exact_sampling_mse(p, v, q, m, rho=None):
    """E||yhat - ybar||^2 over all count vectors of m i.i.d. draws from q (multinomial), yhat the
    self-normalised estimator with weights rho = p/q: exact."""
    ybar = p @ v
    rho = p / q if rho is None else rho
    C = _compositions(m, len(q))
    logprob = special.gammaln(m + 1) - special.gammaln(C + 1).sum(1) + (C * np.log(q)).sum(1)
    w = C * rho
    yh = (w @ v) / w.sum(1, keepdims=True)
    return float(np.sum(np.exp(logprob) * np.sum((yh - ybar) ** 2, axis=1)))


def _gauss_grid(L, m, nodes=80):
    x, w = hermegauss(nodes)
    w = w / w.sum()
    d = L.shape[0]
    Zg = np.stack(np.meshgrid(*([x] * d), indexing="ij"), -1).reshape(-1, d)
    W = np.prod(np.stack(np.meshgrid(*([w] * d), indexing="ij"), -1).reshape(-1, d), axis=1)
    return m + Zg @ L.T, W


def _law_constants_by_quadrature(Y, W, a, V):
    """B, Var_p, kappa, G of a law given by quadrature nodes Y (N, d) with weights W."""
    s = Y @ a
    e = np.exp(s - s.max())
    Zp = W @ e
    v = Y @ V.T
    mu = (W * e) @ v / Zp
    dev2 = np.sum((v - mu) ** 2, axis=1)
    B = (W * e * e) @ dev2 / Zp**2
    varp = (W * e) @ dev2 / Zp
    kappa = (W @ (e * e)) / Zp**2
    G = (W * e) @ np.sqrt(dev2) / Zp
    return B, varp, kappa, G


# ======================================================= section 1: sampling expansions
@pytest.mark.parametrize("proposal", ["uniform", "skewed"])
def test_ratio_expansion_against_exact_enumeration(proposal):
    """m^2 (E - c1/m) -> c2 at rate 1/m: the exact expectation over all count vectors."""
    rng = np.random.default_rng(1)
    n = 4
    s = 1.2 * rng.standard_normal(n)
    v = rng.standard_normal((n, 2))
    p = T.softmax_weights(s)
    q = np.full(n, 1 / n) if proposal == "uniform" else np.array([0.1, 0.2, 0.3, 0.4])
    c1, c2 = T.sampling_coefficients(s, v, None if proposal == "uniform" else q)
    resid = []
    for m in (24, 48, 96):
        E = _exact_sampling_mse(p, v, q, m)
        resid.append(m * m * (E - c1 / m) - c2)
        assert abs(m * E / c1 - 1) < 0.05  # the first-order law
    # the residual of the second-order law falls like 1/m (each halving at least 1.6x, at most 2.6x)
    for r0, r1 in itertools.pairwise(resid):
        assert 1.6 < abs(r0 / r1) < 2.6
    # a wrong c2 (sign flipped) would leave an O(1) residual
    assert abs(resid[-1]) < 0.25 * abs(c2) + 0.02 * c1
    if proposal == "uniform":
        np.testing.assert_allclose(c1, T.uniform_constant(s, v), rtol=1e-12)
        np.testing.assert_allclose(T.uniform_mse(s, v, 96, order=2), (c1 / 96 + c2 / 96**2), rtol=1e-12)


def test_importance_from_p_is_exact():
    rng = np.random.default_rng(2)
    n = 5
    s = 2.0 * rng.standard_normal(n)
    v = rng.standard_normal((n, 3))
    p = T.softmax_weights(s)
    for m in (1, 2, 5, 9):
        exact = _exact_sampling_mse(p, v, p, m)
        np.testing.assert_allclose(T.importance_mse(s, v, m, "p"), exact, rtol=1e-10)
    # the optimal proposal beats p and uniform at first order, and its constant is G^2
    c1_opt, _ = T.sampling_coefficients(s, v, T.optimal_proposal(s, v))
    np.testing.assert_allclose(c1_opt, T.optimal_constant(s, v), rtol=1e-12)
    assert c1_opt <= T.weighted_variance(s, v) * (1 + 1e-12)
    assert c1_opt <= T.uniform_constant(s, v) * (1 + 1e-12)
    # and the first-order law of the optimal proposal against enumeration
    qs = T.optimal_proposal(s, v)
    E = _exact_sampling_mse(p, v, qs, 40)
    assert abs(40 * E / c1_opt - 1) < 0.3
    assert abs(T.importance_mse(s, v, 40, "optimal", order=2) / E - 1) < 0.03


def test_without_replacement_factor_is_exact_for_the_linear_part():
    rng = np.random.default_rng(3)
    n = 12
    s = 1.3 * rng.standard_normal(n)
    v = rng.standard_normal((n, 2))
    p = T.softmax_weights(s)
    ybar = p @ v
    for m in (1, 3, 6, 11, 12):
        subs = np.array(list(itertools.combinations(range(n), m)))
        lin = (n / m) * np.einsum("ij,ijk->ik", p[subs], v[subs] - ybar)
        exact = np.mean(np.sum(lin**2, axis=1))
        np.testing.assert_allclose(T.uniform_mse(s, v, m, replace=False), exact, rtol=1e-10, atol=1e-15)
    assert T.uniform_mse(s, v, n, replace=False) == 0.0


def test_without_replacement_first_order():
    """Seeded Monte Carlo of simple random samples (n = 300, 3 x 8000 samples): the first-order
    law within z SE plus the declared size |c2|/m^2 of the neglected term; a law without the
    finite-population factor is rejected at m = n/2."""
    rng = np.random.default_rng(5)
    n = 300
    s = 1.0 * rng.standard_normal(n)
    v = rng.standard_normal((n, 2))
    p = T.softmax_weights(s)
    ybar = p @ v
    _, c2 = T.sampling_coefficients(s, v)
    for m in (30, 150):
        errs = []
        for seed in range(3):
            g = np.random.default_rng(seed)
            for _ in range(2):
                subs = np.argpartition(g.random((4000, n)), m, axis=1)[:, :m]
                w = p[subs]
                yh = np.einsum("ij,ijk->ik", w, v[subs]) / w.sum(1, keepdims=True)
                errs.append(np.sum((yh - ybar) ** 2, axis=1))
        e = np.concatenate(errs)
        E, se = e.mean(), e.std() / np.sqrt(e.size)
        o1 = T.uniform_mse(s, v, m, replace=False)
        assert abs(E - o1) < Z * se + abs(c2) / m**2
        if m == 150:
            assert abs(E - T.uniform_mse(s, v, m, replace=True)) > Z * se + abs(c2) / m**2


def test_pre_asymptotic_regime_below_m2():
    """Gaussian tokens, sigma = 1.5: m * MSE sits far below c1 for m << m_2 and on it for m >> m_2."""
    rng = np.random.default_rng(6)
    n, d = 1 << 15, 4
    Y = rng.standard_normal((n, d))
    a = np.zeros(d)
    a[0] = 1.5
    s = Y @ a
    p = T.softmax_weights(s)
    ybar = p @ Y
    c1, c2 = T.sampling_coefficients(s, Y)
    kappa, m2 = T.pre_asymptotic_scale(s, Y)
    assert m2 > kappa > 1
    out = {}
    for m in (8, 2048):
        R = 1200
        idx = rng.integers(0, n, (R, m))
        w = np.exp(s[idx] - s.max())
        yh = np.einsum("ij,ijk->ik", w, Y[idx]) / w.sum(1, keepdims=True)
        e = m * np.sum((yh - ybar) ** 2, axis=1)
        out[m] = (e.mean(), e.std() / np.sqrt(R))
    lo, hi = out[8], out[2048]
    assert 8 < m2 / 4 and 2048 > 20 * m2
    assert lo[0] + Z * lo[1] < 0.7 * c1  # pre-asymptotic: the rate -1/2 does not hold yet
    assert abs(hi[0] - (c1 + c2 / 2048)) < Z * hi[1]


# ==================================================== section 2: law-level constants
def test_gaussian_norm_mean():
    for k in (1, 2, 7):
        exact = math.sqrt(2) * math.exp(special.gammaln((k + 1) / 2) - special.gammaln(k / 2))
        assert T.gaussian_norm_mean(np.eye(k) * 4.0) == pytest.approx(2 * exact, rel=1e-9)
    C = np.diag([2.0, 0.5, 0.1])
    est = [np.linalg.norm(np.random.default_rng(s).standard_normal((500_000, 3)) * np.sqrt(np.diag(C)), axis=1)
           for s in range(4)]
    est = np.concatenate(est)
    assert abs(T.gaussian_norm_mean(C) - est.mean()) < Z * est.std() / np.sqrt(est.size)


def test_law_constants_against_quadrature():
    L = np.array([[1.0, 0.0], [0.4, 0.7]])
    m = np.array([0.3, -0.2])
    Sigma = L @ L.T
    V = np.array([[1.0, 0.5], [-0.3, 0.8], [0.2, 0.1]])
    for a in (np.array([0.9, -0.5]), np.array([0.2, 1.1])):
        Y, W = _gauss_grid(L, m)
        B, varp, kappa, G = _law_constants_by_quadrature(Y, W, a, V)
        np.testing.assert_allclose(T.gaussian_uniform_constant(a, Sigma, V), B, rtol=1e-9)
        np.testing.assert_allclose(T.gaussian_importance_constant(a, Sigma, V), varp, rtol=1e-9)
        np.testing.assert_allclose(T.gaussian_kish_ratio(T.score_sigma(a, Sigma)), kappa, rtol=1e-9)
        # the norm is not smooth at 0, so Gauss-Hermite is only accurate to ~1e-3 here
        np.testing.assert_allclose(T.gaussian_optimal_constant(a, Sigma, V), G**2, rtol=3e-3)
    # mixture: quadrature per component
    w = np.array([0.35, 0.65])
    means = np.array([[1.0, 0.0], [-0.5, 0.5]])
    covs = np.stack([0.5 * np.eye(2), np.array([[1.2, 0.2], [0.2, 0.7]])])
    a = np.array([0.8, -0.6])
    grids = [_gauss_grid(np.linalg.cholesky(c), mu) for c, mu in zip(covs, means)]
    Y = np.concatenate([g[0] for g in grids])
    W = np.concatenate([wk * g[1] for wk, g in zip(w, grids)])
    B, *_ = _law_constants_by_quadrature(Y, W, a, V)
    np.testing.assert_allclose(T.mixture_uniform_constant(a, w, means, covs, V), B, rtol=1e-9)
    # the generic form agrees with the token-sample laws
    law = ts.MixtureLaw(w, means, covs)
    tilt = lambda b: (law.log_partition(b), law.tilted_mean(b), law.tilted_cov(b))
    np.testing.assert_allclose(T.law_uniform_constant(tilt, a, V), B, rtol=1e-9)


def test_sphere_constants_against_quadrature():
    """d = 3: (t, phi) quadrature on the sphere (t = cos angle ~ U[-1, 1]); any d: the generic
    tilt form with the token-sample sphere law."""
    rng = np.random.default_rng(7)
    V = rng.standard_normal((2, 3))
    rad = 1.4
    xt, wt = leggauss(200)
    phi = 2 * np.pi * np.arange(64) / 64
    for kappa in (0.3, 2.0, 9.0):
        u = np.array([0.6, 0.0, 0.8])
        a = kappa / rad * u
        e1 = u
        e2 = np.array([0.8, 0.0, -0.6])
        e3 = np.cross(e1, e2)
        tt, pp = np.meshgrid(xt, phi, indexing="ij")
        r = np.sqrt(1 - tt**2)
        Y = rad * (tt[..., None] * e1 + (r * np.cos(pp))[..., None] * e2 + (r * np.sin(pp))[..., None] * e3)
        W = np.outer(wt / 2, np.full(64, 1 / 64))
        B, varp, k_, _ = _law_constants_by_quadrature(Y.reshape(-1, 3), W.ravel(), a, V)
        np.testing.assert_allclose(T.sphere_uniform_constant(a, 3, rad, V), B, rtol=1e-9)
        np.testing.assert_allclose(T.sphere_importance_constant(a, 3, rad, V), varp, rtol=1e-9)
        np.testing.assert_allclose(T.sphere_kish_ratio(kappa, 3), k_, rtol=1e-9)
    for d, kappa in ((5, 0.5), (5, 20.0), (32, 3.0), (32, 300.0)):
        law = ts.SphereLaw(d, 1.3)
        a = np.zeros(d)
        a[0], a[1] = 0.6, 0.8
        a *= kappa / 1.3
        def tilt(b, law=law):
            return law.log_partition(b), law.tilted_mean(b), law.tilted_cov(b)

        np.testing.assert_allclose(T.sphere_uniform_constant(a, d, 1.3), T.law_uniform_constant(tilt, a), rtol=1e-8)
        lz, mn, cv = T.sphere_tilt(a, d, 1.3)
        np.testing.assert_allclose(mn, law.tilted_mean(a), atol=1e-12)
        np.testing.assert_allclose(lz, law.log_partition(a), rtol=1e-12)
        np.testing.assert_allclose(cv, law.tilted_cov(a), atol=1e-12)


@pytest.mark.parametrize("d", [3, 5, 9])
def test_sphere_constant_grows_polynomially(d):
    """log B against log kappa has slope (d - 3)/2 at large kappa (Gaussian: e^{sigma^2})."""
    k = np.array([4000.0, 8000.0])
    B = T.sphere_uniform_constant(k[:, None] * np.eye(d)[0], d)
    slope = np.diff(np.log(B))[0] / np.log(2)
    assert abs(slope - (d - 3) / 2) < 0.01
    # the Gaussian constant's log-log slope in sigma is ~ 2 sigma^2: exponential, not polynomial
    sg = np.array([5.0, 5.5])
    G = T.gaussian_uniform_constant(sg[:, None] * np.eye(d)[0], np.eye(d))
    assert np.diff(np.log(G))[0] / np.log(1.1) > 40


def test_gaussian_second_order_constant():
    """c1, c2 of large Gaussian samples (n = 2^18, 4 seeds) against the n -> inf closed forms."""
    d = 3
    a = np.array([0.5, 0.0, 0.0])
    c1s, c2s = [], []
    for seed in range(4):
        Y = np.random.default_rng(100 + seed).standard_normal((1 << 18, d))
        c1, c2 = T.sampling_coefficients(Y @ a, Y)
        c1s.append(c1)
        c2s.append(c2)
    c1s, c2s = np.array(c1s), np.array(c2s)
    # tolerance: z * (seed spread / sqrt(k)) plus a floor for the spread estimate of 4 seeds
    for est, pred in ((c1s, T.gaussian_uniform_constant(a, np.eye(d))),
                      (c2s, T.gaussian_uniform_second_order(a, np.eye(d)))):
        tol = Z * max(est.std(ddof=1), 0.01 * abs(pred)) / 2
        assert abs(est.mean() - pred) < tol
    # m_2 >> kappa at larger sigma: e^{2 sigma^2} against e^{sigma^2}
    a2 = np.array([2.0, 0.0, 0.0])
    m2 = abs(T.gaussian_uniform_second_order(a2, np.eye(d))) / T.gaussian_uniform_constant(a2, np.eye(d))
    assert m2 > 50 * T.gaussian_kish_ratio(2.0)


# ============================================================ section 4: top-k
def test_topk_identity():
    rng = np.random.default_rng(8)
    for _ in range(20):
        n = rng.integers(2, 30)
        s = 3 * rng.standard_normal(n)
        v = rng.standard_normal((n, 4))
        keep = rng.random(n) < 0.5
        keep[rng.integers(n)] = True
        lhs, rhs, tau = T.kept_set_error(s, v, keep)
        np.testing.assert_allclose(lhs, rhs, atol=1e-12)
        np.testing.assert_allclose(tau, T.tail_mass(s, keep), rtol=1e-12)
        # direct: ybar - (head-restricted softmax)
        p = T.softmax_weights(s)
        direct = p @ v - (p * keep) @ v / (p * keep).sum()
        np.testing.assert_allclose(lhs, direct, atol=1e-12)


def test_gaussian_topk_law_against_quadrature():
    """tau(f) and lim(ybar - yhat) by direct 1-D quadrature over the score (brute force)."""
    Sigma = np.array([[1.0, 0.3, 0.0], [0.3, 0.6, 0.1], [0.0, 0.1, 1.4]])
    V = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.5]])
    for sig, f in ((0.3, 0.5), (1.0, 0.1), (2.5, 0.02), (4.0, 0.3)):
        a = np.array([1.0, -0.5, 0.3])
        a = a * sig / T.score_sigma(a, Sigma)
        t = sig * stats.norm.isf(f)
        def dens(s, sig=sig):  # the tilted score density N(sigma^2, sigma^2)
            return np.exp(-0.5 * (s - sig**2) ** 2 / sig**2) / (sig * np.sqrt(2 * np.pi))

        tau = integrate.quad(dens, -np.inf, t, epsabs=0, epsrel=1e-12)[0]
        head_s = integrate.quad(lambda s, f_=dens: s * f_(s), t, np.inf, epsabs=0, epsrel=1e-12)[0] / (1 - tau)
        all_s = sig**2
        # E[V y | s] = V Sigma a s / sigma^2
        vec = V @ Sigma @ a / sig**2 * (all_s - head_s)
        np.testing.assert_allclose(T.gaussian_topk_tail_mass(f, sig), tau, rtol=1e-9)
        np.testing.assert_allclose(T.gaussian_topk_bias(f, a, Sigma, V), vec, rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(T.gaussian_topk_error(f, a, Sigma, V), np.linalg.norm(vec), rtol=1e-8)


def _gaussian_topk_mc(rng, n, f, a, L, V, R):
    k = int(f * n)
    taus, vecs = [], []
    for _ in range(R):
        Y = rng.standard_normal((n, len(a))) @ L.T
        s = Y @ a
        p = T.softmax_weights(s)
        v = Y @ V.T
        top = np.argpartition(-s, k)[:k]
        yh = p[top] @ v[top] / p[top].sum()
        vecs.append(p @ v - yh)
        taus.append(1 - p[top].sum())
    vecs = np.array(vecs)
    return np.sum(vecs**2, axis=1), np.array(taus), vecs


@pytest.mark.parametrize("sig,f,n", [(0.5, 0.25, 4096), (1.5, 0.1, 8192)])
def test_gaussian_topk_mse_against_monte_carlo(sig, f, n):
    Sigma = np.diag([1.0, 0.5, 2.0])
    L = np.sqrt(Sigma)
    V = np.array([[1, 0.2, 0], [0, 1, 0.5]])
    a = np.array([1.0, 0.5, -0.3])
    a = a * sig / T.score_sigma(a, Sigma)
    err2, tau, vecs = [], [], []
    for seed in range(3):
        e, t, v = _gaussian_topk_mc(np.random.default_rng(seed), n, f, a, L, V, 120)
        err2.append(e)
        tau.append(t)
        vecs.append(v)
    err2, tau, vecs = np.concatenate(err2), np.concatenate(tau), np.concatenate(vecs)
    se = err2.std() / np.sqrt(err2.size)
    assert abs(err2.mean() - T.gaussian_topk_mse(f, n, a, Sigma, V)) < Z * se
    assert abs(tau.mean() - T.gaussian_topk_tail_mass(f, sig)) < Z * tau.std() / np.sqrt(tau.size) + 1e-4
    # the variance law: n * tr Cov(ybar - yhat) against E||IF||^2 (relative SE of a variance)
    nv = n * np.trace(np.cov(vecs.T))
    pred = T.gaussian_topk_variance(f, a, Sigma, V)
    assert abs(nv / pred - 1) < Z * np.sqrt(2.0 / vecs.shape[0]) * 1.5


def test_sphere_and_mixture_topk():
    # d = 3 on the sphere: t = cos angle is uniform, so tau has a closed form
    k, f = 4.0, 0.1
    tau, _ = T.sphere_topk(f, np.array([k, 0, 0]), 3, 1.0)
    tf = 1 - 2 * f
    np.testing.assert_allclose(tau, (np.exp(k * tf) - np.exp(-k)) / (np.exp(k) - np.exp(-k)), rtol=1e-10)
    # a one-component mixture is the Gaussian
    Sig = np.array([[1, 0.3], [0.3, 0.8]])
    a = np.array([1.2, -0.4])
    tau_m, vec_m = T.mixture_topk(0.2, a, [1.0], np.zeros((1, 2)), Sig[None])
    np.testing.assert_allclose(tau_m, T.gaussian_topk_tail_mass(0.2, T.score_sigma(a, Sig)), rtol=1e-10)
    np.testing.assert_allclose(vec_m, T.gaussian_topk_bias(0.2, a, Sig), rtol=1e-9)
    # Monte Carlo: sphere (d = 8) and a two-component mixture
    rng = np.random.default_rng(9)
    n, R = 1 << 14, 40
    d, rad = 8, 1.3
    a = np.zeros(d)
    a[0] = 6.0 / rad
    Vs = rng.standard_normal((2, d))
    tau_p, vec_p = T.sphere_topk(0.2, a, d, rad, Vs)
    w = np.array([0.3, 0.7])
    means = np.array([[1.0, 0.0], [-0.5, 0.5]])
    covs = np.stack([0.5 * np.eye(2), np.diag([1.2, 0.7])])
    am = np.array([1.2, -0.4])
    tau_q, vec_q = T.mixture_topk(0.15, am, w, means, covs)
    ts_, vs_, tm_, vm_ = [], [], [], []
    for _ in range(R):
        Y = rng.standard_normal((n, d))
        Y = rad * Y / np.linalg.norm(Y, axis=1, keepdims=True)
        s = Y @ a
        lhs, _, tau = T.kept_set_error(s, Y @ Vs.T, s >= np.sort(s)[-int(0.2 * n)])
        ts_.append(tau)
        vs_.append(lhs)
        comp = rng.random(n) < w[0]
        Ym = np.where(comp[:, None], means[0] + rng.standard_normal((n, 2)) @ np.linalg.cholesky(covs[0]).T,
                      means[1] + rng.standard_normal((n, 2)) @ np.linalg.cholesky(covs[1]).T)
        sm = Ym @ am
        lhs, _, tau = T.kept_set_error(sm, Ym, sm >= np.sort(sm)[-int(0.15 * n)])
        tm_.append(tau)
        vm_.append(lhs)
    for meas, pred in ((np.array(ts_), tau_p), (np.array(vs_), vec_p), (np.array(tm_), tau_q), (np.array(vm_), vec_q)):
        se = meas.std(axis=0) / np.sqrt(R)
        assert np.all(np.abs(meas.mean(axis=0) - pred) < Z * se + 2e-4)


def test_gaussian_tail_law_fails_on_the_sphere():
    """Negative control: the Gaussian tail-mass law with the sphere's own sigma is rejected by the
    measured tail mass of sphere tokens, while the sphere law is not (3 seeds)."""
    d, rad, kappa, f = 3, 1.0, 4.0, 0.1
    a = np.array([kappa, 0.0, 0.0])
    sigma = T.score_sigma(a, np.eye(d) * rad**2 / d)
    gauss = T.gaussian_topk_tail_mass(f, sigma)
    sphere, _ = T.sphere_topk(f, a, d, rad)
    n = 1 << 14
    taus = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for _ in range(10):
            Y = rng.standard_normal((n, d))
            Y = rad * Y / np.linalg.norm(Y, axis=1, keepdims=True)
            s = Y @ a
            taus.append(T.tail_mass(s, s >= np.sort(s)[-int(f * n)]))
    taus = np.array(taus)
    se = taus.std() / np.sqrt(taus.size)
    assert abs(taus.mean() - sphere) < Z * se + 1e-4
    assert abs(taus.mean() - gauss) > Z * se


# ========================================================= section 5: the crossover
def test_crossover_is_a_sign_change_of_measured_errors():
    """Below sigma* uniform sampling (without replacement) wins, above it top-k wins (MC)."""
    f, n, d = 0.1, 2048, 4
    sstar = T.crossover_sigma(f, n, d)
    assert 0.5 < sstar < 4
    # the two predicted curves cross exactly there
    a = np.zeros(d)
    a[0] = sstar
    np.testing.assert_allclose(T.gaussian_uniform_mse(f, n, a, np.eye(d)), T.gaussian_topk_mse(f, n, a, np.eye(d)), rtol=1e-8)
    # a smaller uniform constant (finite n) moves the crossing up
    half = T.crossover_sigma(f, n, d, uniform_constant=lambda sg: 0.5 * np.exp(sg**2) * (d + sg**2))
    assert half > sstar
    rng = np.random.default_rng(11)
    m = int(f * n)
    for sig, topk_wins in ((0.6 * sstar, False), (1.5 * sstar, True)):
        a = np.zeros(d)
        a[0] = sig
        diff = []
        for _ in range(150):
            Y = rng.standard_normal((n, d))
            s = Y @ a
            p = T.softmax_weights(s)
            ybar = p @ Y
            top = np.argpartition(-s, m)[:m]
            uni = rng.permutation(n)[:m]
            e_top = np.sum((ybar - p[top] @ Y[top] / p[top].sum()) ** 2)
            e_uni = np.sum((ybar - p[uni] @ Y[uni] / p[uni].sum()) ** 2)
            diff.append(e_uni - e_top)
        diff = np.array(diff)
        z = diff.mean() / (diff.std() / np.sqrt(diff.size))
        assert (z > Z) if topk_wins else (z < -Z)


# ============================================================= section 6: the hybrid
def test_hybrid_against_exact_enumeration():
    rng = np.random.default_rng(12)
    n = 5
    s = 1.5 * rng.standard_normal(n)
    v = rng.standard_normal((n, 2))
    heavy = np.zeros(n, bool)
    heavy[np.argmax(s)] = True
    p = T.softmax_weights(s)
    ybar = p @ v
    c1, c2, _ = T.hybrid_coefficients(s, v, heavy)
    tail = np.flatnonzero(~heavy)
    nT = tail.size
    resid = []
    for b in (24, 48, 96):
        C = _compositions(b, nT)
        logprob = special.gammaln(b + 1) - special.gammaln(C + 1).sum(1) - b * np.log(nT)
        num = p[heavy] @ v[heavy] + (nT / b) * (C * p[tail]) @ v[tail]
        den = p[heavy].sum() + (nT / b) * (C * p[tail]).sum(1)
        E = float(np.sum(np.exp(logprob) * np.sum((num / den[:, None] - ybar) ** 2, axis=1)))
        assert abs(b * E / c1 - 1) < 0.05
        resid.append(b * b * (E - c1 / b) - c2)
    for r0, r1 in itertools.pairwise(resid):
        assert 1.6 < abs(r0 / r1) < 2.6
    # no heavy key: the hybrid is uniform sampling
    c1u, c2u, tau_u = T.hybrid_coefficients(s, v, np.zeros(n, bool))
    c1s, c2s = T.sampling_coefficients(s, v)
    np.testing.assert_allclose([c1u, c2u, tau_u], [c1s, c2s, 1.0], rtol=1e-12)


def test_gaussian_hybrid_constant():
    d = 3
    a = np.array([1.0, 0.0, 0.0])
    f1 = 0.05
    vals = []
    for seed in range(4):
        Y = np.random.default_rng(200 + seed).standard_normal((1 << 16, d))
        s = Y @ a
        k1 = int(f1 * Y.shape[0])
        heavy = np.zeros(Y.shape[0], bool)
        heavy[np.argpartition(-s, k1)[:k1]] = True
        vals.append(T.hybrid_coefficients(s, Y, heavy)[0])
    vals = np.array(vals)
    pred = T.gaussian_hybrid_constant(f1, a, np.eye(d))
    assert abs(vals.mean() - pred) < Z * max(vals.std(ddof=1), 0.01 * pred) / 2
    np.testing.assert_allclose(T.gaussian_hybrid_constant(0.0, a, np.eye(d)), T.gaussian_uniform_constant(a, np.eye(d)), rtol=1e-12)
    assert pred < 0.5 * T.gaussian_uniform_constant(a, np.eye(d))  # the heavy keys take most of the variance


# ========================================================== section 7: vAttention
def test_quadratic_form_sf_against_closed_forms_and_monte_carlo():
    assert T.quadratic_form_sf([2.0], 3.0) == pytest.approx(stats.chi2.sf(1.5, 1), rel=1e-12)
    assert T.quadratic_form_sf(np.ones(16) / 16, 1.96**2) == pytest.approx(stats.chi2.sf(16 * 1.96**2, 16), rel=1e-10)
    rng = np.random.default_rng(13)
    for lam, x in (([0.5, 0.3, 0.2], 2.0), ([0.9, 0.1], 4.0), ([0.99, 0.01], 0.5), (rng.random(12), 3.0)):
        lam = np.asarray(lam)
        exact_ish = []
        for seed in range(2):
            Zs = np.random.default_rng(seed).standard_normal((200_000, lam.size))
            exact_ish.append(np.mean((Zs**2) @ lam > x))
        pr = np.mean(exact_ish)
        se = math.sqrt(pr * (1 - pr) / 400_000)
        assert abs(T.quadratic_form_sf(lam, x) - pr) < Z * se


def test_extremal_quadratic_form():
    """Szekely-Bakirov: above 1.5365 the rank-one form has the largest tail (random trials)."""
    rng = np.random.default_rng(14)
    for z in (1.25, 1.645, 1.96, 2.5):
        worst = max(T.quadratic_form_sf(rng.dirichlet(np.full(rng.integers(2, 7), 0.5)), z * z) for _ in range(10))
        assert worst <= T.rank_one_exceedance(z) * (1 + 1e-9)


@pytest.mark.parametrize("quantile,expected", [("two_sided", 0.1), ("one_sided", 0.2)])
def test_vattention_scalar_exceedance(quantile, expected):
    """The denominator rule: measured P(|D_hat - D| > tol) is delta as published and 2 delta as
    implemented (delta = 0.1), sampling with replacement, in the CLT regime (3 seeds)."""
    rng0 = np.random.default_rng(15)
    n_s = 4000
    x = np.exp(0.3 * rng0.standard_normal(n_s))  # weights e^s of a flat head
    D = x.sum()
    tol = 0.02 * D
    sd = x.std()  # population sd; the real-valued budget
    b = T.vattention_budget(n_s, sd, tol, 0.1, quantile=quantile, rounding="none")
    assert 10 < b < n_s
    bi = round(b)
    pred = T.vattention_exceedance(sd**2, n_s, bi, tol)
    np.testing.assert_allclose(pred, expected, rtol=0.02)
    hits = 0
    R = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for _ in range(2):
            idx = rng.integers(0, n_s, (2000, bi))
            Dh = n_s / bi * x[idx].sum(axis=1)
            hits += int(np.sum(np.abs(Dh - D) > tol))
            R += 2000
    freq = hits / R
    assert abs(freq - pred) < Z * math.sqrt(pred * (1 - pred) / R)


def test_vattention_vector_rule_is_conservative_in_d_dimensions():
    z = T.vattention_quantile(0.05, "two_sided")
    iso = T.quadratic_form_sf(np.full(16, 1 / 16), z * z)
    assert iso < 1e-6  # against delta = 0.05
    assert T.vattention_quantile(0.05, "one_sided") < z
    b = T.vattention_budget(1000, 2.0, 1.0, 0.05, quantile="two_sided", rounding="ceil")
    assert b == np.clip(np.ceil((z * 1000 * 2.0) ** 2), 1, 1000)
    assert T.vattention_budget(1000, 1e-4, 1.0, 0.05) == 1.0
    with pytest.raises(ValueError):
        T.vattention_quantile(0.05, "published")


def test_clt_scale():
    rng = np.random.default_rng(16)
    for sigma in (0.3, 0.6):  # (the sample third absolute moment is reliable only at small sigma)
        x = np.exp(sigma * rng.standard_normal(2_000_000))
        np.testing.assert_allclose(T.clt_scale(x), T.lognormal_clt_scale(sigma), rtol=0.03)
    # grows like e^{3 sigma^2}
    r = T.lognormal_clt_scale(2.5) / T.lognormal_clt_scale(2.0)
    assert 0.3 * np.exp(3 * (2.5**2 - 2.0**2)) < r < 3 * np.exp(3 * (2.5**2 - 2.0**2))


# ============================================================ section 8: coverage
def test_coverage_bound():
    rng = np.random.default_rng(17)
    for _ in range(30):
        n = rng.integers(3, 25)
        s = 4 * rng.standard_normal(n)
        v = rng.standard_normal((n, 3))
        keep = rng.random(n) < 0.6
        keep[np.argmax(s)] = True
        keep[rng.integers(n)] = False if keep.sum() > 1 else keep[rng.integers(n)]
        err, b1, b2, b3 = T.coverage_bounds(s, v, keep)
        assert err <= b1 + 1e-12 and b1 <= b2 + 1e-12 and b2 <= b3 + 1e-12
    # the sphere's value diameter and the rule's bound
    V = np.array([[2.0, 0.0], [0.0, 0.5]])
    assert T.sphere_value_diameter(1.5, V) == pytest.approx(6.0)
    assert T.coverage_error_bound(0.005, 6.0) == pytest.approx(0.03)
    # tight: two values, all the tail on the far one
    s = np.array([0.0, np.log(0.01 / 0.99)])
    v = np.array([[0.0], [1.0]])
    err, b1, b2, b3 = T.coverage_bounds(s, v, np.array([True, False]))
    np.testing.assert_allclose([err, b1, b2, b3], 0.01, rtol=1e-10)


# ===================================================== sections 1 and 6 from weighted sums
def test_coefficients_from_sums_equal_the_dense_forms():
    """(c1, c2) from the tail power sums equal sampling_coefficients (no heavy set) and
    hybrid_coefficients (a heavy set) computed from the full (q, n, dv) arrays."""
    rng = np.random.default_rng(21)
    n, dv = 40, 3
    s = 2.0 * rng.standard_normal((4, n))
    v = rng.standard_normal((n, dv))
    p = T.softmax_weights(s)
    ybar = p @ v
    for k1 in (0, 1, 7, 30):
        heavy = np.zeros_like(s, dtype=bool)
        for i in range(s.shape[0]):
            heavy[i, np.argsort(-s[i])[:k1]] = True
        w = np.where(heavy, 0.0, p)
        d = v[None] - ybar[:, None]
        dd = np.sum(d * d, axis=-1)
        sums = dict(tau=w.sum(1), A1=np.einsum("qn,qnk->qk", w, d), A2=np.sum(w * p * dd, 1),
                    A3=np.sum(w * p * p * dd, 1), P2=np.sum(w * p, 1), V2=np.einsum("qn,qnk->qk", w * p, d))
        c1, c2 = T.coefficients_from_sums(n - k1, **sums)
        r1, r2 = T.sampling_coefficients(s, v) if k1 == 0 else T.hybrid_coefficients(s, v, heavy)[:2]
        np.testing.assert_allclose(c1, r1, rtol=1e-12)
        np.testing.assert_allclose(c2, r2, rtol=1e-10)
