r"""Result 2 on a multi-head encoder layer whose token law is a finite sequence: horizons in
the two conventions, and the exact large-n constant of the mean's error.

Setting (notes token_sample §4.3, §4.3b). A layer input is T tokens ``X`` (T, d); ``P`` is
their empirical law (each token mass 1/T). Head h scores query x on key y by
``<q_h(x), k_h(y)> * scale`` with ``q_h(x) = W_q^h x + b_q^h``, ``k_h(y) = W_k^h y + b_k^h``
(``W`` of shape (H, d_h, d), ``scale = 1/sqrt(d_h)``), values ``v_h(y) = W_v^h y + b_v^h``; the
output of x is ``Gamma(x) = concat_h E_P[w_h(x,y) v_h(y)] / E_P[w_h(x,y)]`` (D = H d_h).

Horizons (notes token_sample §1.3, §4.3b [C]), with ``Sigma`` the population covariance of the tokens and
``L = chol(Sigma + 1e-6 I)`` (the authors' regularised factor; ``||L^T A L||_2 =
||Sigma^{1/2} A Sigma^{1/2}||_2`` up to that 1e-6):

* ``H_h = ||L^T A_h L||_2`` with the **applied** exponent matrix of head h,
  ``A_h = scale * W_k^{hT} W_q^h`` -- the matrix of the bilinear part of the exponent of that
  head's softmax, the quantity the truncation argument behind 1/(2(1+H^2)) bounds (one softmax,
  exponent <A x, y>); ``H_max = max_h H_h`` bounds the slowest head, which dominates the
  error of the concatenated output (:func:`head_horizons`);
* ``H_code = ||L^T (W_k^T W_q) L||_2`` with ``W_k^T W_q = sum_h W_k^{hT} W_q^h`` (full
  matrices, no scale, no biases): the authors' BERT convention, not the exponent of any one
  softmax (:func:`authors_horizon`).

Large-n constant (delta method, [D]). With n positions drawn i.i.d. from P (with replacement)
the sampled mean output ``m_n = m(P_n)`` is the functional ``m(Q) = E_Q[Gamma_Q(x)]`` at the
empirical law P_n, so (von Mises expansion; P has finite support, every moment is finite) ::

    n E|m_n - m|^2 = a + c/n + O(1/n^2),     a = E_P |IF(Z)|^2,

with the influence function ``IF(z) = Gamma(z) - m + xi(z)`` and, head by head,
``xi_h(z) = sum_x P_h(x, z) (v_h(z) - Gamma_h(x))`` where ``P_h`` (T, T) is the full softmax
matrix of head h (row x = query). The first term is the query side, the second the key side
(the change of every query's output when token z gains mass). ``a`` is exact for the
sequence: no Monte Carlo (:func:`mean_error_constant`). The slope of E|m_n - m| tends to
-1/2 as n grows; the finite-n slope reflects the c/n correction (and, for the covariance,
its O(1/n) bias).

Effective sample size (:func:`effective_sample_sizes`): for query x in head h,
``n*_h(x) = E w^2 / (E w)^2 = T sum_y P_h(x,y)^2`` (1 for uniform attention, T for one-hot).
Everything here is a deterministic function of its arguments (NumPy only).
"""
from __future__ import annotations

import numpy as np

from .moments import beta_of_horizon

__all__ = [
    "CHOLESKY_JITTER",
    "token_covariance",
    "head_horizons",
    "authors_horizon",
    "softmax_matrices",
    "mean_error_constant",
    "effective_sample_sizes",
    "encoder_rate_bound",
]

CHOLESKY_JITTER = 1e-6  # the authors' regularisation of Sigma before the Cholesky factor [C]


def token_covariance(X) -> np.ndarray:
    """Population covariance (d, d) of the rows of ``X`` (T, d)."""
    X = np.asarray(X, dtype=float)
    Xc = X - X.mean(axis=0)
    return Xc.T @ Xc / X.shape[0]


def _chol(Sigma, jitter=CHOLESKY_JITTER):
    Sigma = np.asarray(Sigma, dtype=float)
    return np.linalg.cholesky(Sigma + jitter * np.eye(Sigma.shape[0]))


def _sqrt_psd(G):
    w, U = np.linalg.eigh(G)
    return (U * np.sqrt(np.clip(w, 0.0, None))) @ U.T


def head_horizons(Sigma, Wq, Wk, scale: float, jitter: float = CHOLESKY_JITTER) -> np.ndarray:
    """``H_h = ||L^T A_h L||_2`` per head, ``A_h = scale * W_k^{hT} W_q^h`` (the applied exponent
    matrix), ``L = chol(Sigma + jitter I)``; ``Wq, Wk`` are (H, d_h, d). Returns (H,)."""
    L = _chol(Sigma, jitter)
    Wq = np.asarray(Wq, dtype=float)
    Wk = np.asarray(Wk, dtype=float)
    H, dh, d = Wq.shape
    KL = (Wk.reshape(H * dh, d) @ L).reshape(H, dh, d)
    QL = (Wq.reshape(H * dh, d) @ L).reshape(H, dh, d)
    # L^T A_h L = scale (K_h)^T Q_h with K_h = W_k^h L, Q_h = W_q^h L (d_h x d). Writing
    # K_h^T = U_k G_k^{1/2}, Q_h^T = U_q G_q^{1/2} (polar factors, G = K K^T), its nonzero
    # singular values are those of the d_h x d_h matrix G_k^{1/2} G_q^{1/2}.
    out = np.empty(H)
    for h in range(H):
        out[h] = scale * np.linalg.norm(_sqrt_psd(KL[h] @ KL[h].T) @ _sqrt_psd(QL[h] @ QL[h].T), 2)
    return out


def authors_horizon(Sigma, Wq, Wk, jitter: float = CHOLESKY_JITTER) -> float:
    """``||L^T (W_k^T W_q) L||_2`` with the full (d, d) projections ``W_k^T W_q = sum_h
    W_k^{hT} W_q^h``, no softmax scale, no biases: the authors' BERT horizon [C]."""
    L = _chol(Sigma, jitter)
    Wq = np.asarray(Wq, dtype=float).reshape(-1, L.shape[0])
    Wk = np.asarray(Wk, dtype=float).reshape(-1, L.shape[0])
    return float(np.linalg.norm((Wk @ L).T @ (Wq @ L), 2))


def softmax_matrices(X, Wq, bq, Wk, bk, scale: float) -> np.ndarray:
    """``P_h`` (H, T, T): row x is the softmax over all T keys of query x in head h."""
    q = _heads(X, Wq, bq)
    k = _heads(X, Wk, bk)
    s = scale * (q @ np.swapaxes(k, -1, -2))
    s -= s.max(axis=-1, keepdims=True)
    w = np.exp(s)
    return w / w.sum(axis=-1, keepdims=True)


def _heads(X, W, b):
    """Per-head projections ``X W_h^T + b_h``, (H, T, d_h), for W (H, d_h, d) and b (H, d_h)."""
    X = np.asarray(X, dtype=float)
    W = np.asarray(W, dtype=float)
    H, dh, d = W.shape
    y = X @ W.reshape(H * dh, d).T + np.asarray(b, dtype=float).reshape(-1)
    return np.ascontiguousarray(y.reshape(X.shape[0], H, dh).transpose(1, 0, 2))


def mean_error_constant(X, Wq, bq, Wk, bk, Wv, bv, scale: float, per_head: bool = False, P=None):
    """``a = E_P |IF(Z)|^2``, the limit of ``n E|m_n - m|^2`` (module doc), for the empirical
    law of the T tokens ``X``; with ``per_head`` also the (H,) constants of each head's block
    of the mean. ``P`` may pass the softmax matrices already computed
    (:func:`softmax_matrices`). Returns ``a`` or ``(a, a_heads)``."""
    if P is None:
        P = softmax_matrices(X, Wq, bq, Wk, bk, scale)  # (H, T, T)
    v = _heads(X, Wv, bv)
    G = P @ v  # (H, T, d_h): Gamma_h at every token
    u = G - G.mean(axis=1, keepdims=True)
    col = P.sum(axis=1)  # (H, T): sum_x P_h(x, z)
    xi = col[:, :, None] * v - np.swapaxes(P, -1, -2) @ G
    IF = u + xi  # (H, T, d_h)
    heads = np.mean(np.sum(IF**2, axis=-1), axis=-1)
    a = float(heads.sum())
    return (a, heads) if per_head else a


def effective_sample_sizes(P) -> np.ndarray:
    """``n*_h(x) = T sum_y P_h(x, y)^2`` for softmax matrices ``P`` (H, T, T): (H, T)."""
    P = np.asarray(P, dtype=float)
    return P.shape[-1] * np.sum(P**2, axis=-1)


def encoder_rate_bound(H):
    """The authors' curve ``1/(2(1+H^2))`` (a lower bound on the moment-rate exponent beta on
    the axis of the applied exponent matrix): :func:`theory.token_sample.beta_of_horizon`."""
    return beta_of_horizon(H)
