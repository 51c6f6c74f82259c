"""Match3 and Match2 (notes tensor_attention §5.1, SHT23 [C]): labels (histogram oracle, brute force), the exact
tensor-attention construction with d = 4, and the pairwise baselines."""
from __future__ import annotations

import math

import numpy as np

from sim.attention import softmax_attention
from theory import tensor_attention as th

from .exact import matrix_attention, tensor_attention
from .polynomial import approx_tensor_attention

__all__ = ["match2_labels", "match3_labels", "match3_bruteforce", "match3_tensor_inputs", "match3_tensor_scores",
           "match3_poly_scores", "match2_pairwise_scores", "PairwiseReadout"]


def match2_labels(x, M: int):
    """``Match2(x)_i = 1`` iff ``x_i + x_j = 0 (mod M)`` for some j (j may equal i)."""
    x = np.asarray(x, dtype=np.int64) % M
    present = np.zeros(M, dtype=bool)
    present[x] = True
    return present[(-x) % M]


def match3_labels(x, M: int, distinct: bool = False):
    """``Match3(x)_i = 1`` iff ``x_i + x_j1 + x_j2 = 0 (mod M)`` for some j1, j2: indices
    unrestricted (SHT23 form [C]) or, with ``distinct=True``, i, j1, j2 pairwise distinct.
    Histogram oracle: O(N U) with U the number of distinct values."""
    x = np.asarray(x, dtype=np.int64) % M
    counts = np.bincount(x, minlength=M)
    vals = np.nonzero(counts)[0]
    if not distinct:
        sums = np.zeros(M, dtype=bool)
        sums[(vals[:, None] + vals[None, :]).ravel() % M] = True
        return sums[(-x) % M]
    out = np.zeros(x.size, dtype=bool)
    for i, xi in enumerate(x):
        c = counts.copy()
        c[xi] -= 1
        u = vals[c[vals] > 0]
        v = (-xi - u) % M
        need = np.where(u == v, 2, 1)
        out[i] = bool(np.any(c[v] >= need))
    return out


def match3_bruteforce(x, M: int, distinct: bool = False):
    """O(N^3) oracle for :func:`match3_labels`."""
    x = [int(v) % M for v in x]
    N = len(x)
    out = np.zeros(N, dtype=bool)
    for i in range(N):
        for j1 in range(N):
            for j2 in range(N):
                if distinct and len({i, j1, j2}) < 3:
                    continue
                if (x[i] + x[j1] + x[j2]) % M == 0:
                    out[i] = True
    return out


def _angles(x, M):
    theta = 2 * np.pi * (np.asarray(x, dtype=np.int64) % M) / M
    return np.cos(theta), np.sin(theta)


def match3_tensor_inputs(x, M: int):
    """The d = 4 construction of notes tensor_attention §5.1: ``sum_l q_i,l k1_j1,l k2_j2,l = cos(2 pi (x_i + x_j1
    + x_j2)/M)`` with ``q = (a, -a, -b, -b)``, ``k1 = (a, b, a, b)``, ``k2 = (a, b, b, a)``,
    values ``V1 = K1, V2 = K2``; returns ``(Q, K1, K2, V1, V2, scale)`` with ``scale = lam``."""
    N = len(x)
    a, b = _angles(x, M)
    Q = np.stack([a, -a, -b, -b], axis=1)
    K1 = np.stack([a, b, a, b], axis=1)
    K2 = np.stack([a, b, b, a], axis=1)
    return Q, K1, K2, K1, K2, th.match3_lambda(N, M)


def match3_tensor_scores(x, M: int, method: str = "auto"):
    """Readout ``s_i = <q_i, T_i>`` of exact tensor attention (the attention-weighted mean of
    ``cos(2 pi (x_i + x_j1 + x_j2)/M)``); predict Match3 by ``s_i > match3_threshold(M)``."""
    Q, K1, K2, V1, V2, lam = match3_tensor_inputs(x, M)
    T = tensor_attention(Q, K1, K2, V1, V2, scale=lam, method=method)
    return np.sum(Q * T, axis=1)


def match3_poly_scores(x, M: int, degree: int):
    """The same readout with the polynomial approximation (even-degree Taylor, design range
    ``lam``): shows what the near-linear method does at the construction's entry bound."""
    Q, K1, K2, V1, V2, lam = match3_tensor_inputs(x, M)
    res = approx_tensor_attention(Q, K1, K2, V1, V2, degree=degree, method="taylor", scale=lam, R=lam)
    return np.sum(Q * res.out, axis=1)


def match2_pairwise_scores(x, M: int):
    """Pairwise (matrix) attention construction for Match2: ``q_i = (a_i, b_i)``,
    ``k_j = (a_j, -b_j)``, logit ``lam2 cos(2 pi (x_i + x_j)/M)``, values = keys, readout
    ``<q_i, T_i>``; threshold :func:`theory.tensor_attention.match3_threshold`."""
    a, b = _angles(x, M)
    Q = np.stack([a, b], axis=1)
    K = np.stack([a, -b], axis=1)
    T = matrix_attention(Q, K, K, scale=th.match2_lambda(len(x), M),
                         method="naive" if len(x) <= 256 else "auto")
    return np.sum(Q * T, axis=1)


class PairwiseReadout:
    """A one-layer pairwise-attention baseline with a *trained* readout.

    Tokens are embedded by ``F`` Fourier frequencies, ``e(x) = (cos 2 pi f x/M, sin 2 pi f x/M)``
    (dimension 2F, every pairwise relation of residues is visible to it); ``H`` softmax heads
    with random query maps ``A_h = beta_h G_h`` (G Gaussian, inverse temperatures ``beta_h``
    spread over [1, 64]) attend over the sequence with keys and values ``e(x_j)``. The readout is
    least squares on ``[1, e(x_i), o_i^h, e(x_i) (x) o_i^h]`` (linear and bilinear terms) fitted to
    +-1 labels on training sequences; predictions are its sign."""

    def __init__(self, M: int, rng, heads: int = 4, freqs: int = 4):
        self.M = int(M)
        self.freqs = np.arange(1, freqs + 1)
        p = 2 * freqs
        betas = np.geomspace(1.0, 64.0, heads)
        self.A = [beta * rng.standard_normal((p, p)) / math.sqrt(p) for beta in betas]
        self.coef = None

    def _embed(self, x):
        th_ = 2 * np.pi * np.outer(np.asarray(x, dtype=float) % self.M, self.freqs) / self.M
        return np.concatenate([np.cos(th_), np.sin(th_)], axis=1)

    def features(self, x):
        e = self._embed(x)
        cols = [np.ones((e.shape[0], 1)), e]
        for A in self.A:
            o = softmax_attention(e @ A.T, e, e, method="naive")[0]
            cols.append(o)
            cols.append((e[:, :, None] * o[:, None, :]).reshape(e.shape[0], -1))
        return np.concatenate(cols, axis=1)

    def fit(self, seqs, labels):
        F = np.concatenate([self.features(x) for x in seqs], axis=0)
        y = np.concatenate([np.where(lab, 1.0, -1.0) for lab in labels])
        self.coef = np.linalg.lstsq(F, y, rcond=None)[0]
        return self

    def predict(self, x):
        if self.coef is None:
            raise RuntimeError("fit the readout first")
        return self.features(x) @ self.coef > 0
