"""Closed forms of theory.random_features against independent references.

References: one-dimensional adaptive quadrature (scipy.integrate.quad) of the bivariate moments,
scipy's multivariate normal CDF, direct 2-D/3-D Gauss-Jacobi quadrature of the harmonic
eigenvalues, and the separable power series of the arc-cosine kernel.
"""
from __future__ import annotations

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
    # the advantage grows with the degree (spec §4.3: ~ N^deg) and with N
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
