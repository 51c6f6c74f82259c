"""Monte Carlo of the closed-form predictors the trained model is compared with (notes icl_regression §5, §6, §8):
GD, debiased GD, preconditioned GD, ridge (= Bayes), the reduced softmax-head model."""
from __future__ import annotations

import numpy as np

from sim.icl_regression.prompts import Prompts


def predict_gd(p: Prompts, eta, out: int = 0):
    """One-step GD from 0: ŷ = eta (1/L) sum_i y_i x_iᵀ x_q (notes icl_regression §6)."""
    L = p.x.shape[1]
    return np.asarray(eta)[..., None] * np.einsum("nl,nld,nd->n", p.y[..., out], p.x, p.xq) / L


def predict_dgd(p: Prompts, eta, out: int = 0):
    """Debiased GD: ŷ = eta (1/L) sum_i y_i (x_i - x̄)ᵀ x_q (notes icl_regression §6)."""
    L = p.x.shape[1]
    xc = p.x - p.x.mean(axis=1, keepdims=True)
    return np.asarray(eta)[..., None] * np.einsum("nl,nld,nd->n", p.y[..., out], xc, p.xq) / L


def predict_preconditioned(p: Prompts, Gamma: np.ndarray, centered: bool = True, out: int = 0):
    """ŷ = x_qᵀ Gamma (1/L) sum_i (x_i - x̄) y_i (x̄ = 0 when not centered; notes icl_regression §8)."""
    L = p.x.shape[1]
    x = p.x - p.x.mean(axis=1, keepdims=True) if centered else p.x
    g = np.einsum("nl,nld->nd", p.y[..., out], x) / L
    return np.einsum("nd,de,ne->n", p.xq, Gamma, g)


def predict_ridge(p: Prompts, lam: float, out: int = 0):
    """Ridge: beta_hat = (XᵀX + lam I)^-1 Xᵀ y, ŷ = beta_hatᵀ x_q (lam = d sigma^2: the Bayes
    posterior mean under beta ~ N(0, I/d))."""
    d = p.x.shape[2]
    gram = np.einsum("nld,nle->nde", p.x, p.x) + lam * np.eye(d)
    rhs = np.einsum("nld,nl->nd", p.x, p.y[..., out])
    bh = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return np.einsum("nd,nd->n", bh, p.xq)


def ridge_conditional_risk(p: Prompts, sigma2: float) -> np.ndarray:
    """Bayes risk given the design, sigma^2 + tr[(XᵀX/sigma^2 + d I)^-1] (per prompt; its mean
    over designs is the finite-L Bayes risk)."""
    from theory.icl_regression import ridge_bayes_risk_given_gram

    gram = np.einsum("nld,nle->nde", p.x, p.x)
    return ridge_bayes_risk_given_gram(gram, sigma2)


def predict_softmax_heads(p: Prompts, omega, mu, out: int = 0):
    """The reduced model ŷ = sum_h mu_h sum_i softmax_i(omega_h x_iᵀ x_q) y_i (notes icl_regression §5)."""
    omega = np.atleast_1d(np.asarray(omega, dtype=float))
    mu = np.atleast_1d(np.asarray(mu, dtype=float))
    g = np.einsum("nld,nd->nl", p.x, p.xq)
    yhat = np.zeros(p.n)
    for w, m in zip(omega, mu):
        s = w * g
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        yhat += m * np.einsum("nl,nl->n", e, p.y[..., out]) / e.sum(axis=1)
    return yhat
