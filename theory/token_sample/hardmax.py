"""Result 3 (the hardmax regime, attention parameter lam -> infinity).

Gamma^inf_mu(x) = V * barycenter of mu on argmax_y <Ax, y> (notes token_sample §2.3, §3.2); for the sphere
``V rho a/|a|``, bias at parameter lam: rho (1 - A_d(lam kappa_1)) ~ rho (d-1) / (2 lam kappa_1).
The empirical hardmax on n sphere tokens picks the token of largest cosine t with the direction
``u = a/|a|``; ``|z - u| = sqrt(2 - 2t)``, and (1 + t)/2 ~ Beta((d-1)/2, (d-1)/2), which gives the exact
expected error as a 1-D integral (:func:`sphere_hardmax_expected_error`), ~ n^{-1/(d-1)} for
large n [D].

Finite n at parameter lam [D]: Gamma^lam_{mu_n}(x) = sum_j w_j y_j / sum_j w_j is a ratio
estimator; to first order in n*/n (n* = E w^2/(E w)^2, the effective-sample threshold) its mean
is Gamma^lam_mu(x) + (n*/n) V (gamma(a) - gamma(2a)) (:func:`softmax_finite_n_bias`) and its
covariance V M(x) V^T / n (the delta method). Hence the first-order band of the expected error
against the hardmax limit, ``|E e| <= E|e| <= sqrt(|E e|^2 + tr V M V^T / n)``
(:func:`hardmax_error_band`; Jensen on both sides), which for the coupled lam_n = c log n
tends to rho (d-1) / (2 c kappa_1 log n) on the sphere: a logarithmic rate.
"""
from __future__ import annotations


import numpy as np
from scipy import integrate as _integrate
from scipy import special
from .laws import AtomMixtureLaw, BallLaw, SphereLaw, TruncatedGaussianLaw, bessel_ratio
from .uniform import _apply_v, _scores, attention_limit, effective_sample_threshold, fluctuation

__all__ = [
    "hardmax_limit",
    "sphere_hardmax_bias",
    "sphere_hardmax_bias_asymptotic",
    "sphere_hardmax_rate",
    "sphere_hardmax_expected_error",
    "hardmax_error_prediction",
    "softmax_finite_n_bias",
    "hardmax_error_band",
]

def _support_point(law, a):
    """argmax over the support of <a, y> (its barycenter when the face is a set), for a (..., d)."""
    a = np.asarray(a, dtype=float)
    if isinstance(law, (SphereLaw, BallLaw)):
        norm = np.linalg.norm(a, axis=-1, keepdims=True)
        return law.radius * np.where(norm > 0, a / np.where(norm > 0, norm, 1.0), 0.0)
    if isinstance(law, TruncatedGaussianLaw):
        return law.c * law.sigma * np.sign(a)
    if isinstance(law, AtomMixtureLaw):
        yb = _support_point(law.bulk, a)
        hb = np.einsum("...i,...i->...", a, yb)
        ha = a @ law.atom
        # ties go to the atom: it has positive mass, the bulk's maximising face has none
        return np.where((ha >= hb)[..., None], np.broadcast_to(law.atom, yb.shape), yb)
    raise ValueError(f"the hardmax limit needs a compactly supported law; {getattr(law, 'name', law)!r} "
                     "has unbounded support")


def hardmax_limit(law, x, A, V=None):
    """Gamma^inf_mu(x) = V * (barycenter of mu on argmax_{y in supp mu} <A x, y>), shape (..., d_v).

    Sphere / ball: ``V rho a/|a|``; box-truncated Gaussian: V c sigma sign(a); atom mixture: the
    atom when <a, y*> >= the bulk's support function, else the bulk's face. Unbounded laws
    (Gaussian, Gaussian mixture) have no hardmax limit: ValueError."""
    return _apply_v(_support_point(law, _scores(x, A, 1.0)), V)


def sphere_hardmax_bias(d: int, kappa, radius: float = 1.0):
    """``|Gamma^lam_mu(x) - Gamma^inf_mu(x)|`` for the uniform sphere S^{d-1}(radius), V = I:
    radius * (1 - A_d(kappa)) with ``kappa = radius * |lam A x|`` (exact)."""
    kappa = np.asarray(kappa, dtype=float)
    return radius * (1.0 - bessel_ratio(d / 2 - 1, kappa))


def sphere_hardmax_bias_asymptotic(d: int, kappa, radius: float = 1.0):
    """The large-kappa form of :func:`sphere_hardmax_bias`: radius (d - 1) / (2 kappa)."""
    return radius * (d - 1) / (2.0 * np.asarray(kappa, dtype=float))


def sphere_hardmax_rate(d: int) -> float:
    """Asymptotic log-log slope of the pure-hardmax error against n on S^{d-1}: -1/(d-1)."""
    if d < 2:
        raise ValueError("the sphere needs d >= 2")
    return -1.0 / (d - 1)


def sphere_hardmax_expected_error(d: int, n, radius: float = 1.0):
    """``E |y_{j*} - radius u|``, y_1..y_n uniform on S^{d-1}(radius), j* = argmax_j <u, y_j>.

    Exact up to quadrature: with ``e = |z - u| = sqrt(2 - 2t)`` and P(t > 1 - e^2/2) =
    I_{e^2/4}((d-1)/2, (d-1)/2) (regularised incomplete beta),
    E e = int_0^2 (1 - I_{e^2/4})^n de. Vectorised over ``n``."""
    if d < 2:
        raise ValueError("the sphere needs d >= 2")
    b = (d - 1) / 2.0
    ns = np.atleast_1d(np.asarray(n, dtype=float))
    out = np.empty_like(ns)
    for i, nn in enumerate(ns):
        if nn < 1:
            raise ValueError("n must be >= 1")
        scale = min(2.0, 2.0 * nn ** (-1.0 / (d - 1)))

        def f(e):
            sf = special.betainc(b, b, min(1.0, e * e / 4.0))
            return float(np.exp(nn * np.log1p(-sf))) if sf < 1.0 else 0.0

        pts = sorted({min(2.0, scale * k) for k in (0.25, 1.0, 4.0)} - {2.0})
        val, _ = _integrate.quad(f, 0.0, 2.0, points=pts, limit=200, epsabs=0.0, epsrel=1e-10)
        out[i] = radius * val
    return out.reshape(np.shape(n)) if np.ndim(n) else float(out[0])


def hardmax_error_prediction(law, x, A, lam, n, V=None):
    """First-order E|Gamma^lam_{mu_n}(x) - Gamma^inf_mu(x)|: ``sqrt(|bias|^2 + tr V M V^T / n)``,
    the bias Gamma^lam_mu(x) - Gamma^inf_mu(x) plus the delta-method fluctuation at (lam, n).
    Broadcasts over ``lam`` and ``n`` (scalars or arrays of one shape); ``x`` is one query."""
    lam_b, n_b = np.broadcast_arrays(np.asarray(lam, dtype=float), np.asarray(n, dtype=float))
    out = np.empty(lam_b.shape)
    x = np.asarray(x, dtype=float)
    hard = hardmax_limit(law, x, A, V)
    for idx in np.ndindex(lam_b.shape):
        la = float(lam_b[idx])
        bias = attention_limit(law, x, A, V, la) - hard
        tr = np.trace(fluctuation(law, x, A, V, la))
        out[idx] = np.sqrt(np.sum(bias**2) + tr / n_b[idx])
    return out if out.ndim else float(out)


def softmax_finite_n_bias(law, x, A, lam, n, V=None):
    """First-order bias E Gamma^lam_{mu_n}(x) - Gamma^lam_mu(x) of softmax attention over n
    i.i.d. tokens (a ratio estimator, module docstring): (n*(x)/n) V (gamma(a) - gamma(2a)),
    a = lam A x, n* = E w^2/(E w)^2, gamma(b) the tilted mean. Shape (..., d_v) over the
    leading axes of ``x``; ``lam`` and ``n`` scalars. The next order is O((n*/n)^2)."""
    a = _scores(x, A, float(lam))
    nstar = np.exp(law.log_partition(2 * a) - 2 * law.log_partition(a))
    return _apply_v((nstar / float(n))[..., None] * (law.tilted_mean(a) - law.tilted_mean(2 * a)), V)


def hardmax_error_band(law, x, A, lam, n, V=None):
    """``(lower, upper, nstar_over_n)``: the first-order band of E|Gamma^lam_{mu_n}(x) -
    Gamma^inf_mu(x)| for one query ``x`` (module docstring): lower = ``|b_n|``, the norm of the
    expected error b_n = Gamma^lam_mu(x) + (finite-n bias) - Gamma^inf_mu(x); upper =
    ``sqrt(|b_n|^2 + tr V M(x) V^T / n)``. Both are first order in n*/n, returned as the third
    array (the expansion needs n*/n << 1). Broadcasts over ``lam`` and ``n``."""
    lam_b, n_b = np.broadcast_arrays(np.asarray(lam, dtype=float), np.asarray(n, dtype=float))
    lo = np.empty(lam_b.shape)
    hi = np.empty(lam_b.shape)
    ratio = np.empty(lam_b.shape)
    x = np.asarray(x, dtype=float)
    hard = hardmax_limit(law, x, A, V)
    for idx in np.ndindex(lam_b.shape):
        la, nn = float(lam_b[idx]), float(n_b[idx])
        b = attention_limit(law, x, A, V, la) + softmax_finite_n_bias(law, x, A, la, nn, V) - hard
        tr = np.trace(fluctuation(law, x, A, V, la))
        lo[idx] = np.sqrt(np.sum(b**2))
        hi[idx] = np.sqrt(lo[idx] ** 2 + tr / nn)
        ratio[idx] = float(effective_sample_threshold(law, x, A, la)) / nn
    if lo.ndim == 0:
        return float(lo), float(hi), float(ratio)
    return lo, hi, ratio
