"""Closed forms of theory.random_features against independent references.

References: one-dimensional adaptive quadrature (scipy.integrate.quad) of the bivariate moments,
scipy's multivariate normal CDF, direct 2-D/3-D Gauss-Jacobi quadrature of the harmonic
eigenvalues, and the separable power series of the arc-cosine kernel.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, special, stats

from theory import random_features as rf

_SQ2PI = math.sqrt(2 * math.pi)


def _relu_moment_quad(m1, m2, rho):
    """E[(m1+U)^+ (m2+V)^+]: integrate over U the closed-form conditional expectation in V."""
    s = math.sqrt(1 - rho * rho)

    def g(z):
        return z * special.ndtr(z) + math.exp(-z * z / 2) / _SQ2PI

    def f(u):
        return (m1 + u) * s * g((m2 + rho * u) / s) * math.exp(-u * u / 2) / _SQ2PI

    return integrate.quad(f, -m1, np.inf, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


@given(m1=st.floats(-3, 3), m2=st.floats(-3, 3), rho=st.floats(-0.995, 0.995))
def test_relu_moment_matches_quadrature(m1, m2, rho):
    assert rf.relu_moment(m1, m2, rho) == pytest.approx(_relu_moment_quad(m1, m2, rho), abs=1e-9)


@given(m1=st.floats(-3, 3), m2=st.floats(-3, 3))
def test_relu_moment_continuous_at_perfect_correlation(m1, m2):
    # the exact rho = +-1 formulas must be the limits of the general one
    for edge, inner in ((1.0, 1 - 1e-9), (-1.0, -1 + 1e-9)):
        assert rf.relu_moment(m1, m2, edge) == pytest.approx(rf.relu_moment(m1, m2, inner), abs=1e-6)


def test_relu_moment_reduces_to_kappa1_and_known_values():
    rho = np.linspace(-1, 1, 21)
    np.testing.assert_allclose(rf.relu_moment(0.0, 0.0, rho), rf.kappa1(rho), atol=1e-14)
    assert rf.kappa1(1.0) == pytest.approx(0.5)  # E relu(U)^2
    assert rf.kappa1(0.0) == pytest.approx(1 / (2 * np.pi))  # (E relu U)^2
    assert rf.kappa1(-1.0) == pytest.approx(0.0, abs=1e-15)
    # one-dimensional limit at rho = 1: E[(m+U)^+ ^2] = (m^2+1) Phi(m) + m phi(m)
    m = 0.7
    assert rf.relu_moment(m, m, 1.0) == pytest.approx((m * m + 1) * special.ndtr(m) + m * np.exp(-m * m / 2) / _SQ2PI)


@given(h=st.floats(-3, 3), k=st.floats(-3, 3), rho=st.floats(-0.99, 0.99))
def test_bvn_upper_matches_scipy(h, k, rho):
    cov = [[1.0, rho], [rho, 1.0]]
    ref = stats.multivariate_normal(mean=[0, 0], cov=cov).cdf([-h, -k])  # P(-U <= -h, -V <= -k)
    assert rf.bvn_upper(h, k, rho) == pytest.approx(ref, abs=1e-6)


def test_bvn_upper_zero_arguments_and_symmetry():
    rho = np.array([-0.8, -0.3, 0.0, 0.4, 0.9])
    np.testing.assert_allclose(rf.bvn_upper(0.0, 0.0, rho), 0.25 + np.arcsin(rho) / (2 * np.pi), atol=1e-14)
    np.testing.assert_allclose(rf.bvn_upper(0.3, -1.2, rho), rf.bvn_upper(-1.2, 0.3, rho), atol=1e-14)
    np.testing.assert_allclose(rf.bvn_upper(0.3, -1.2, 0.0), special.ndtr(-0.3) * special.ndtr(1.2), atol=1e-14)


def test_kappa1_series_matches_closed_form():
    c = rf.kappa1_series(300)
    assert np.all(c >= 0)
    assert c[3] == 0 and c[5] == 0  # odd powers >= 3 vanish
    r = np.linspace(-0.95, 0.95, 39)
    np.testing.assert_allclose(np.polynomial.polynomial.polyval(r, c), rf.kappa1(r), atol=1e-12)


def _sphere_rows(rng, shape, d):
    g = rng.standard_normal(tuple(shape) + (d,))
    return g / np.linalg.norm(g, axis=-1, keepdims=True)


def test_pair_kernel_zero_mean_is_the_arccos_form():
    rng = np.random.default_rng(3)
    x0, x, y0, y = (_sphere_rows(rng, (50,), 5) for _ in range(4))
    a = np.sum(x0 * y0, -1)
    b = np.sum(x * y, -1)
    k = rf.pair_kernel(x0, x, y0, y)
    np.testing.assert_allclose(k, rf.kappa1((1 + a) * (1 + b) / 4) * (1 + b), atol=1e-14)
    np.testing.assert_allclose(k, rf.rfa_pair_kernel_ab(a, b), atol=1e-14)
    # without the constant coordinate: unit-variance scores <x0, W x>, correlation a*b, values x
    k2 = rf.pair_kernel(x0, x, y0, y, augment=False)
    np.testing.assert_allclose(k2, rf.kappa1(a * b) * b, atol=1e-14)
    np.testing.assert_allclose(k2, rf.rfa_pair_kernel_ab(a, b, augment=False), atol=1e-14)


@pytest.mark.parametrize("conv", [dict(), dict(r_bias=1.0), dict(r_bias=0.5, mean_shape="identity"),
                                  dict(activation="identity", r_bias=0.7), dict(value="x", augment=False)])
def test_rfa_kernel_is_psd_symmetric_and_key_permutation_invariant(conv):
    rng = np.random.default_rng(11)
    n, N, d = 12, 4, 5
    x0, X = _sphere_rows(rng, (n,), d), _sphere_rows(rng, (n, N), d)
    K = rf.rfa_kernel(x0, X, x0, X, **conv)
    np.testing.assert_allclose(K, K.T, atol=1e-13)
    assert np.linalg.eigvalsh(K).min() > -1e-10 * np.abs(K).max()
    perm = rng.permutation(N)
    Kp = rf.rfa_kernel(x0, X[:, perm], x0, X, **conv)
    np.testing.assert_allclose(Kp, K, atol=1e-13)


def test_mlp_kernel_matches_arccos_of_flattened_inputs():
    rng = np.random.default_rng(5)
    z = np.concatenate([_sphere_rows(rng, (7, 3), 4).reshape(7, -1), np.ones((7, 1))], axis=1)  # |z|^2 = 4
    K = rf.mlp_kernel(z, z)
    np.testing.assert_allclose(K, rf.kappa1(z @ z.T / 4.0), atol=1e-14)
    assert np.allclose(np.diag(K), 0.5)


@pytest.mark.parametrize("d", [2, 3, 8])
def test_gegenbauer_orthonormal_under_the_sphere_law(d):
    t, w = rf.sphere_projection_rule(d, 64)
    Q = np.array([rf.gegenbauer(p, d, t) for p in range(5)])
    np.testing.assert_allclose((Q * w) @ Q.T, np.eye(5), atol=1e-10)
    np.testing.assert_allclose([w @ t**j for j in range(7)], rf.sphere_projection_moments(d, 6), atol=1e-13)
    assert rf.gegenbauer(3, d, 1.0, unit_variance=False) == pytest.approx(1.0)


def test_harmonic_dims():
    assert [rf.harmonic_dim(p, 3) for p in range(5)] == [1, 3, 5, 7, 9]
    assert [rf.harmonic_dim(p, 2) for p in range(4)] == [1, 2, 2, 2]
    # sum over degrees <= p of harmonic dims = number of monomials of degree p and p-1 in d vars
    d, p = 8, 3
    total = sum(rf.harmonic_dim(q, d) for q in range(p + 1))
    assert total == math.comb(p + d - 1, p) + math.comb(p + d - 2, p - 1)


@pytest.mark.parametrize("s,t", [(0, 0), (0, 2), (1, 1), (2, 0), (3, 3)])
def test_rfa_harmonic_eigenvalue_matches_separable_series(s, t):
    # default conventions: k = sum_k c_k 4^-k (1+a)^k (1+b)^(k+1), so mu_{s,t} factorises per term
    d = 8
    c = rf.kappa1_series(400)
    ta, wa = rf.sphere_projection_rule(d, 300)
    ps = rf.gegenbauer(s, d, ta, unit_variance=False)
    pt = rf.gegenbauer(t, d, ta, unit_variance=False)
    j = np.arange(401)
    A = ((1 + ta)[None, :] ** j[:, None]) @ (wa * ps)
    B = ((1 + ta)[None, :] ** (j[:, None] + 1)) @ (wa * pt)
    series = np.sum(c * 4.0**-j * A * B)
    assert rf.rfa_harmonic_eigenvalue(s, t, d) == pytest.approx(series, rel=1e-9)


@pytest.mark.parametrize("s,t", [(0, 0), (0, 1), (0, 2), (1, 1), (2, 2)])
def test_mlp_harmonic_eigenvalue_matches_quadrature(s, t):
    d = 8
    tq, wq = rf.sphere_projection_rule(d, 80)
    ps = rf.gegenbauer(s, d, tq, unit_variance=False)
    pt = rf.gegenbauer(t, d, tq, unit_variance=False)
    # N = 1: rho = (1 + a + b) / 3
    K1 = rf.kappa1((1 + tq[:, None] + tq[None, :]) / 3)
    assert rf.mlp_harmonic_eigenvalue(s, t, d, 1) == pytest.approx((wq * ps) @ K1 @ (wq * pt), rel=1e-7)
    # N = 2: rho = (1 + a + b1 + b2) / 4
    K2 = rf.kappa1((1 + tq[:, None, None] + tq[None, :, None] + tq[None, None, :]) / 4)
    ref = np.einsum("abc,a,b,c->", K2, wq * ps, wq * pt, wq)
    assert rf.mlp_harmonic_eigenvalue(s, t, d, 2) == pytest.approx(ref, rel=1e-7)


def test_target_complexity_attention_is_N_free_and_mlp_grows():
    d = 8
    for fam, p in (("keys", 2), ("pair", 1)):
        b_rfa = [rf.target_complexity(fam, p, d, N, model="rfa") for N in (2, 8, 32)]
        b_mlp = [rf.target_complexity(fam, p, d, N, model="rfmlp") for N in (2, 8, 32)]
        assert max(b_rfa) == pytest.approx(min(b_rfa))
        assert b_mlp[0] < b_mlp[1] < b_mlp[2]
        assert all(m > r for m, r in zip(b_mlp, b_rfa))
    # higher degree is harder, and pair targets of degree p are harder than keys of degree p
    assert rf.target_complexity("keys", 3, d) > rf.target_complexity("keys", 2, d)
    assert rf.target_complexity("pair", 2, d) > rf.target_complexity("keys", 2, d)
    with pytest.raises(ValueError):
        rf.target_complexity("attn", 1, d)


def test_feature_radius_matches_monte_carlo():
    rng = np.random.default_rng(7)
    d, N, n = 6, 3, 3000
    x0, X = _sphere_rows(rng, (n,), d), _sphere_rows(rng, (n, N), d)
    k = np.array([rf.rfa_kernel(x0[i:i + 1], X[i:i + 1], x0[i:i + 1], X[i:i + 1])[0, 0] for i in range(300)])
    # the kernel diagonal only depends on the key-key inner products: check mean within 5 se
    R2 = rf.feature_radius_sq(N, d)
    assert abs(k.mean() - R2) <= 5 * k.std(ddof=1) / math.sqrt(k.size)
    assert rf.feature_radius_sq(1, d) == pytest.approx(1.0)  # one key: k(1, 1) = kappa1(1) * 2


def test_excess_risk_bound_shape():
    n = np.array([100, 400, 1600])
    b = rf.excess_risk_bound(n, 10**12, 4.0, radius_sq=1.0)
    np.testing.assert_allclose(b, 2 / np.sqrt(n) + 2e-6, rtol=1e-12)
    assert rf.excess_risk_bound(100, 100, 9.0, radius_sq=1.0) == pytest.approx(0.6)
    assert rf.excess_risk_bound(100, 100, 1.0, radius_sq=1.0, delta=0.05) > rf.excess_risk_bound(
        100, 100, 1.0, radius_sq=1.0)
    # N and d enter only through R^2
    assert rf.excess_risk_bound(100, 100, 1.0, N=8, d=8) == pytest.approx(
        2 * math.sqrt(rf.feature_radius_sq(8, 8) / 100))


def test_complexity_table():
    assert not rf.is_learnable("keykey", "rfa") and not rf.is_learnable("keykey", "brfa")
    assert rf.is_learnable("keykey", "rfmlp")
    assert rf.predicted_sample_complexity("keykey", "rfa", 2, 8, 8) == math.inf
    assert rf.complexity_exponents("pair", "brfa", 3) == (0, 0)
    assert rf.predicted_sample_complexity("keys", "rfmlp", 2, 8, 4, eps=0.5) == pytest.approx(32.0**2 / 0.25)
    assert rf.predicted_sample_complexity("keys", "rfa", 2, 8, 4, eps=0.5) == pytest.approx(64 / 0.25)
    with pytest.raises(ValueError):
        rf.predicted_sample_complexity("keys", "brfa", 2, 8, 8)


# ---------------------------------------------------------------- predictions for a run's configuration

def test_vanishing_eigenvalues_follow_parity_and_degree():
    d = 6
    # ReLU with the constant coordinate: every bidegree is in the class
    assert not any(rf.rfa_eigenvalue_vanishes(s, t, d) for s in range(4) for t in range(4))
    # no constant coordinate: k = kappa1(ab) b, whose only odd power of the correlation is the first:
    # terms a^j b^(j+1) with j in {0, 1, 2, 4, 6, ...} -- so even total degrees vanish (features are
    # odd in (x0, X)), and so does every odd query degree above 1 (query degree 1 comes with b^2 only)
    for s in range(5):
        for t in range(5):
            alive = (s == 1 and t in (0, 2)) or (s % 2 == 0 and t % 2 == 1)
            assert rf.rfa_eigenvalue_vanishes(s, t, d, augment=False) == (not alive), (s, t)
    # linear attention: degree <= 1 in the query, <= 2 in the key
    for s in range(4):
        for t in range(4):
            assert rf.rfa_eigenvalue_vanishes(s, t, d, activation="identity") == (s > 1 or t > 2)


def test_target_complexity_outside_the_class_is_infinite_and_bilin_is_pair():
    d, N = 6, 3
    assert rf.target_complexity("keys", 2, d, N, augment=False) == math.inf
    assert rf.target_complexity("keys", 3, d, N, activation="identity") == math.inf
    assert rf.target_complexity("bilin", 2, d, N) == pytest.approx(rf.target_complexity("pair", 2, d, N))
    assert rf.target_complexity("bilin", 1, d, N, model="rfmlp") == pytest.approx(
        rf.target_complexity("pair", 1, d, N, model="rfmlp"))
    assert rf.bidegree("query", 3) == (3, 0) and rf.bidegree("keys", 2) == (0, 2)


def test_target_variance_matches_monte_carlo():
    rng = np.random.default_rng(4)
    d, N, n = 5, 3, 40000
    beta = _sphere_rows(rng, (), d)
    X = _sphere_rows(rng, (n, N), d)
    x0 = _sphere_rows(rng, (n,), d)
    keys = rf.gegenbauer(2, d, X @ beta).mean(axis=1)
    pair = rf.gegenbauer(1, d, np.einsum("nkd,nd->nk", X, x0)).mean(axis=1)
    for f, fam in ((keys, "keys"), (pair, "pair")):
        v = rf.target_variance(fam, 2, N)
        assert abs(f.var() - v) <= 5 * v * math.sqrt(2 / n) * 3  # kurtosis-safe band
    assert rf.target_variance("query", 2, N) == 1.0 and rf.target_variance("attn", 1, N) is None


def test_bound_complexity_is_convention_free_and_gives_the_ratio():
    d, N = 8, 8
    base = rf.bound_complexity("keys", 2, d, N)
    assert rf.bound_complexity("keys", 2, d, N, w_var=0.7) == pytest.approx(base, rel=1e-9)
    assert base == pytest.approx(rf.target_complexity("keys", 2, d, N) * rf.feature_radius_sq(N, d))
    mlp = rf.bound_complexity("keys", 2, d, N, model="rfmlp")
    assert mlp == pytest.approx(rf.target_complexity("keys", 2, d, N, model="rfmlp") * 0.5)
    assert rf.sample_complexity_ratio("keys", 2, d, N) == pytest.approx(mlp / base)
    # the advantage grows with the degree (notes random_features §4.3: ~ N^deg) and with N
    r = [rf.sample_complexity_ratio("keys", p, d, N) for p in (1, 2, 3)]
    assert r[0] < r[1] < r[2]
    assert rf.sample_complexity_ratio("pair", 1, d, 32) > rf.sample_complexity_ratio("pair", 1, d, 2)
    assert rf.sample_complexity_ratio("keys", 2, d, N, augment=False) == 0.0  # outside RFA's class: inf B_rfa


def test_class_membership_and_exact_orthogonality():
    d = 6
    assert rf.in_attention_class("keykey", 2, d) is False and rf.outside_class_exactly("keykey", 2, d)
    assert rf.in_attention_class("keys", 2, d) is True and not rf.outside_class_exactly("keys", 2, d)
    assert rf.in_attention_class("keys", 2, d, augment=False) is False
    assert rf.outside_class_exactly("pair", 1, d, augment=False)
    assert rf.in_attention_class("attn", 1, d) is True
    assert rf.in_attention_class("attn", 1, d, activation="identity") is None
    assert rf.in_attention_class("keys", 2, d, activation="softmax") is None
    assert not rf.outside_class_exactly("keys", 2, d, activation="softmax")


def test_N_exponents_bias_effects_and_coverage():
    assert rf.N_exponent("keys", "rfa", 2) == 0.0 and rf.N_exponent("keys", "rfmlp", 2) == 1.0
    assert rf.N_exponent("pair", "rfmlp", 1) == 1.0 and rf.N_exponent("attn", "rfmlp", 1) == 1.5
    assert rf.N_exponent("keykey", "rfa", 2) is None and rf.N_exponent("keys", "brfa", 2) is None
    assert rf.bias_effect("pair")[0] == "lowers" and rf.bias_effect("attn")[0] == "lowers"
    assert rf.bias_effect("keys")[0] == "raises" and rf.bias_effect("bilin")[0] is None
    assert rf.bias_theory_covers()[0]
    for kw in (dict(activation="identity"), dict(augment=False), dict(mean_shape="identity"), dict(value="x")):
        ok, why = rf.bias_theory_covers(**kw)
        assert not ok and why


def test_bound_loglog_slope():
    n = np.array([256, 512, 1024, 2048])
    M = np.array([16, 1e12])
    s = rf.bound_loglog_slope(n, M, over="n")
    ref = np.polyfit(np.log(n), np.log(n**-0.5 + 16**-0.5), 1)[0]
    assert s[0] == pytest.approx(ref) and s[1] == pytest.approx(-0.5, abs=1e-4)
    t = rf.bound_loglog_slope(np.array([1e12]), np.array([8, 16, 32]), over="M")
    assert t[0] == pytest.approx(-0.5, abs=1e-4)
    with pytest.raises(ValueError):
        rf.bound_loglog_slope(n[:1], M, over="n")


# ---------------------------------------------------------------- structural zeros and the positive series (notes random_features §3.4)

CONVENTIONS = [{}, dict(augment=False), dict(activation="identity"), dict(value="x"), dict(w_var=0.7),
               dict(augment=False, activation="identity"), dict(value="x", activation="identity")]


@pytest.mark.parametrize("conv", CONVENTIONS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_structural_rule_is_the_series_exact_zero_and_the_quadrature_agrees(conv):
    """The parity/degree rule says exactly where the positive series is zero; the series and the
    quadrature agree wherever the eigenvalue is not zero (to 1e-6 at d = 4, where the series'
    truncation after 600 terms shows, 1e-8 above), and the quadrature leaves only rounding where it is."""
    for d in (4, 6, 8):
        scale = abs(float(rf.rfa_pair_kernel_ab(1.0, 1.0, **conv)))
        for s in range(5):
            for t in range(5):
                series = rf.rfa_harmonic_eigenvalue_series(s, t, d, **conv)
                quad = rf.rfa_harmonic_eigenvalue(s, t, d, **conv)
                zero = rf.rfa_eigenvalue_vanishes(s, t, d, **conv)
                assert zero == (series == 0.0), (d, s, t)
                if zero:
                    assert abs(quad) <= rf.ZERO_EIGEN_RTOL * scale
                else:
                    rel = 1e-6 if d == 4 else 1e-8
                    assert series > 0 and series == pytest.approx(quad, rel=rel, abs=1e-15 * scale)


def test_a_tiny_genuine_eigenvalue_is_not_a_structural_zero():
    """pair3 at d = 32: mu_{3,3} ~ 3.9e-11 (below the old 1e-10 threshold) is a genuine eigenvalue:
    the target is in the class, has a finite complexity, and is not orthogonal to the features."""
    d = 32
    mu = rf.rfa_harmonic_eigenvalue_series(3, 3, d)
    assert 1e-11 < mu < 1e-10
    assert mu == pytest.approx(rf.rfa_harmonic_eigenvalue(3, 3, d), rel=1e-8)
    assert not rf.rfa_eigenvalue_vanishes(3, 3, d)
    assert rf.in_attention_class("pair", 3, d) is True
    assert not rf.outside_class_exactly("pair", 3, d)
    assert rf.target_complexity("pair", 3, d) == pytest.approx(1.0 / mu, rel=1e-8)
    # further down, below the quadrature's floor, the series carries the value: d^-(s+t) scaling
    mu4, mu5 = rf.rfa_eigenvalue(4, 4, d), rf.rfa_eigenvalue(5, 5, d)
    assert 0 < mu5 < mu4 < mu and 2 ** 5 < mu4 / mu5 < 2 ** 12
    assert math.isfinite(rf.target_complexity("pair", 5, d))
    # without the constant coordinate the even bidegrees are structural zeros at every d
    assert rf.rfa_eigenvalue_vanishes(3, 3, d, augment=False) and rf.outside_class_exactly("pair", 3, d, augment=False)


# ---------------------------------------------------------------- ridge regression on random heads (notes random_features §4.4)

def test_kernel_spectrum_carries_the_trace():
    """The eigen-groups (mu/N for t >= 1, mu for the query-only t = 0, multiplicity N_s N_t) plus
    the constant and the tail add up to R^2 = E K(X, X); the tail is negligible; the sum over keys
    scales everything by N^2."""
    d, N = 8, 8
    lam, mult, bideg, tail = rf.rfa_kernel_spectrum(d, N, max_degree=16)
    R2 = rf.feature_radius_sq(N, d)
    total = float(np.sum(lam * mult)) + tail + rf.rfa_eigenvalue(0, 0, d)
    assert total == pytest.approx(R2, rel=1e-10)
    assert 0 <= tail < 1e-3 * R2
    i = bideg.index((0, 2))
    assert lam[i] == pytest.approx(rf.rfa_eigenvalue(0, 2, d) / N) and mult[i] == rf.harmonic_dim(2, d)
    j = bideg.index((2, 0))
    assert lam[j] == pytest.approx(rf.rfa_eigenvalue(2, 0, d))
    lam_s, *_ = rf.rfa_kernel_spectrum(d, N, max_degree=16, key_norm="sum")
    np.testing.assert_allclose(lam_s, N**2 * lam, rtol=1e-12)
    # linear attention: finitely many eigenvalues (query degree <= 1, key degree <= 2), no tail
    _, _, bideg_i, tail_i = rf.rfa_kernel_spectrum(d, N, activation="identity")
    assert max(s for s, _ in bideg_i) <= 1 and max(t for _, t in bideg_i) <= 2 and tail_i < 1e-12


@pytest.mark.parametrize("n,P,ridge", [(200, 400, 1e-3), (400, 200, 1e-3), (300, math.inf, 1e-3)])
def test_deterministic_equivalent_matches_a_gaussian_random_feature_model(n, P, ridge):
    """Ridge regression on P Gaussian random features of a power-law spectrum (the model the
    equivalent is derived for), 12 seeded draws: the mean test error agrees with the equivalent
    within 5 Monte Carlo standard errors plus 3% (its declared finite-size error, O(n^-1/2))."""
    rng = np.random.default_rng(11)
    D = 600
    lam = np.arange(1, D + 1) ** -1.6
    idx = np.array([3, 20, 60])
    mass = np.zeros(D)
    mass[idx] = [0.5, 0.3, 0.2]
    pred = float(rf.random_feature_ridge_risk(lam, np.ones(D), 0.0, mass, n, P, ridge))
    errs = []
    for _ in range(12):
        beta = np.zeros(D)
        beta[idx] = np.sqrt(mass[idx]) * rng.choice([-1.0, 1.0], idx.size)
        psi = rng.standard_normal((n, D))
        if math.isinf(P):
            F = np.diag(np.sqrt(lam))
        else:
            F = rng.standard_normal((int(P), D)) * np.sqrt(lam) / math.sqrt(P)
        A = psi @ F.T
        v = np.linalg.solve(A.T @ A / n + ridge * np.eye(A.shape[1]), A.T @ (psi @ beta) / n)
        errs.append(np.sum((beta - F.T @ v) ** 2))
    errs = np.array(errs)
    assert abs(errs.mean() - pred) <= 5 * errs.std(ddof=1) / math.sqrt(errs.size) + 0.03 * pred


def test_deterministic_equivalent_limits():
    lam = np.array([1.0, 0.1, 0.01])
    mult = np.array([1.0, 10.0, 100.0])
    mass = np.array([0.0, 1.0, 0.0])
    # kernel ridge regression (P = inf): the textbook equivalent with k from ridge = k (1 - df1/n)
    n, ridge = 50.0, 1e-2
    risk = float(rf.random_feature_ridge_risk(lam, mult, 0.0, mass, n, math.inf, ridge))
    from scipy import optimize

    k = optimize.brentq(lambda k: k * (1 - np.sum(mult * lam / (lam + k)) / n) - ridge, 1e-9, 10)
    df2 = np.sum(mult * (lam / (lam + k)) ** 2)
    assert risk == pytest.approx(float(np.sum(mass * (k / (lam + k)) ** 2) / (1 - df2 / n)), rel=1e-9)
    # more samples and more features never hurt at a tuned ridge; nothing is learned from no data
    ridges = np.geomspace(1e-7, 1, 15)
    r = [min(rf.random_feature_ridge_risk(lam, mult, 0.0, mass, nn, 80, ridges)) for nn in (20, 40, 80, 160)]
    assert all(a >= b for a, b in itertools.pairwise(r))
    r = [min(rf.random_feature_ridge_risk(lam, mult, 0.0, mass, 80, pp, ridges)) for pp in (20, 40, 80, 160)]
    assert all(a >= b for a, b in itertools.pairwise(r))
    assert float(rf.random_feature_ridge_risk(lam, mult, 0.0, mass, 1e-9, 80, 1.0)) == pytest.approx(1.0, rel=1e-6)


def test_rfa_ridge_risk_for_a_target():
    d, N = 8, 8
    ridges = np.geomspace(1e-7, 1, 15)
    n = np.array([256.0, 1024.0, 4096.0])
    risk = rf.rfa_ridge_risk("keys", 2, d, N, n, 128 * 9, ridges)
    var = rf.target_variance("keys", 2, N)
    assert np.all(np.diff(risk) < 0) and 0 < risk[-1] < risk[0] < var
    # the bilinear target has the pair target's spectrum position, hence its curve
    np.testing.assert_allclose(rf.rfa_ridge_risk("bilin", 1, d, N, n, 1152, ridges),
                               rf.rfa_ridge_risk("pair", 1, d, N, n, 1152, ridges), rtol=1e-12)
    with pytest.raises(ValueError):
        rf.rfa_ridge_risk("keys", 2, d, N, n, 1152, ridges, augment=False)  # outside the class
