"""Input generators of the bounded-entry experiments: uniform entries in [-B, B] and the
adversarial sign-aligned inputs that reach the edge of the logit range."""
from __future__ import annotations

import numpy as np

__all__ = ["uniform_inputs", "sign_aligned_inputs"]


def uniform_inputs(rng, n: int, d: int, B: float, k: int = 3, dv: int | None = None):
    """``Q, keys, values`` with i.i.d. uniform[-B, B] entries (k-1 key and value matrices)."""
    dv = d if dv is None else dv
    Q = rng.uniform(-B, B, (n, d))
    keys = [rng.uniform(-B, B, (n, d)) for _ in range(k - 1)]
    values = [rng.uniform(-B, B, (n, dv)) for _ in range(k - 1)]
    return Q, keys, values


def sign_aligned_inputs(rng, n: int, d: int, B: float, k: int = 3, dv: int | None = None):
    """Adversarial inputs: every entry is ``+-B`` and the signs of row i of the last key matrix
    are chosen so that the tuple ``(i, i, ..., i)`` has logit ``sigma_i B^k`` (``|logit| = B^k``,
    the edge of the range) with ``sigma_i`` alternating +1/-1; values ``+-B``. Needs n rows of
    every matrix (the same n)."""
    dv = d if dv is None else dv
    sgn = lambda shape: np.where(rng.random(shape) < 0.5, -1.0, 1.0)  # noqa: E731
    Q = B * sgn((n, d))
    keys = [B * sgn((n, d)) for _ in range(k - 2)]
    prod = np.sign(Q)
    for K in keys:
        prod = prod * np.sign(K)
    sigma = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    keys.append(B * sigma[:, None] * prod)
    values = [B * sgn((n, dv)) for _ in range(k - 1)]
    return Q, keys, values
