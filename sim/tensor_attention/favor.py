"""FAVOR+ positive random features for matrix attention (Choromanski et al. 2021): the
Monte-Carlo baseline whose error decays like m^(-1/2) only."""
from __future__ import annotations

import math

import numpy as np

from ._common import _scale

__all__ = ["favor_projection", "favor_features", "favor_attention"]


def favor_projection(m: int, d: int, rng, orthogonal: bool = True) -> np.ndarray:
    """``m x d`` projection rows, marginally N(0, I_d): i.i.d., or block-orthogonal (QR of a
    Gaussian block, rows rescaled by chi(d)-distributed norms)."""
    if m < 1:
        raise ValueError("need at least one random feature")
    if not orthogonal:
        return rng.standard_normal((m, d))
    blocks = []
    for _ in range(-(-m // d)):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q = q * np.sign(np.diag(r))[None, :]
        blocks.append(q.T)
    W = np.concatenate(blocks, axis=0)[:m]
    norms = np.sqrt(rng.chisquare(d, size=m))
    return W * norms[:, None]


def favor_features(X, W, *, scale=None, shift=None):
    """Positive random features ``m^{-1/2} exp(W x' - |x'|^2/2 - shift)``, ``x' = sqrt(s) x``:
    ``E[phi(q)^T phi(k)] = exp(s q.k)`` when both shifts are 0 (a shift only rescales)."""
    s = _scale(scale, X.shape[1])
    if s <= 0:
        raise ValueError("FAVOR+ needs a positive softmax scale")
    Xs = X * math.sqrt(s)
    proj = Xs @ W.T - 0.5 * np.sum(Xs * Xs, axis=1, keepdims=True)
    if shift is None:
        shift = 0.0
    return np.exp(proj - shift) / math.sqrt(W.shape[0])


def favor_attention(Q, K, V, m: int, rng, *, scale=None, orthogonal: bool = True):
    """FAVOR+ estimate of matrix attention with ``m`` positive random features (O(n m d))."""
    s = _scale(scale, Q.shape[1])
    W = favor_projection(m, Q.shape[1], rng, orthogonal)
    Ks = K * math.sqrt(s)
    Qs = Q * math.sqrt(s)
    pk = Ks @ W.T - 0.5 * np.sum(Ks * Ks, axis=1, keepdims=True)
    pq = Qs @ W.T - 0.5 * np.sum(Qs * Qs, axis=1, keepdims=True)
    phik = np.exp(pk - pk.max())  # one global shift: cancels in the ratio
    phiq = np.exp(pq - pq.max(axis=1, keepdims=True))  # per-query shift: cancels too
    num = phiq @ (phik.T @ V)
    den = phiq @ phik.sum(axis=0)
    return num / den[:, None]
