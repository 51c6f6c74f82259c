"""Negative controls: broken ingredients a claim of the token-selection study must reject.

* :class:`TopKWrongEnd` -- "top-k" that keeps the k LOWEST scores (a sign error in the selection);
  the Gaussian top-k error law (``theory.token_selection.gaussian_topk_error``) rejects it.
* :class:`UniformSkipBlock` -- a uniform sampler that never draws the keys ``start .. stop - 1``
  (an off-by-a-block indexing bug) but weights as if it covered all n; its error stops falling
  like B_n / m once m is large, so the uniform-rate comparison rejects it.
* :func:`gaussian_tail_mass_on_sphere` -- the Gaussian tail-mass law evaluated with the score
  spread of sphere tokens (the wrong law for the tokens); the measured top-k tail mass of sphere
  tokens rejects it (``theory.token_selection.sphere_topk`` is the right law).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.token_selection import kernels as K
from sim.token_selection.policies import Selection, _check_budget
from theory import token_selection as tsel

__all__ = ["TopKWrongEnd", "UniformSkipBlock", "gaussian_tail_mass_on_sphere"]


@dataclass(frozen=True)
class TopKWrongEnd:
    """Keeps the k keys with the smallest scores."""

    k: int
    label: str | None = None
    deterministic = True

    @property
    def name(self):
        return self.label or f"topk_wrong_end(k={self.k})"

    def entries(self, n):
        return self.k

    def select(self, ctx, reps, key):
        k = _check_budget(self.k, ctx.n, "k", False)
        idx = ctx.rows_topk(ctx.exact_rows(negate=True), k)[:, None, :]
        return Selection(idx, np.zeros(idx.shape), np.full((ctx.q, 1), k), distinct=True)


@dataclass(frozen=True)
class UniformSkipBlock:
    """Uniform sampling that skips the keys start .. stop - 1 (weights as if it did not)."""

    m: int
    start: int
    stop: int
    replace: bool = True
    label: str | None = None
    deterministic = False

    @property
    def name(self):
        return self.label or f"uniform_skip(m={self.m},{self.start}:{self.stop})"

    def entries(self, n):
        return self.m

    def select(self, ctx, reps, key):
        n = ctx.n
        if not 0 <= self.start < self.stop <= n or self.stop - self.start >= n:
            raise ValueError("the skipped block must be a proper sub-range of the keys")
        width = self.stop - self.start
        m = _check_budget(self.m, n - width, "m", self.replace)
        idx = np.empty((ctx.q, reps, m), dtype=np.int64)
        ctx.run(K.uniform_sample, np.uint64(key[0]), np.uint64(key[1]), ctx.q0, n - width, m, self.replace, idx,
                n_tasks=ctx.q * reps)
        idx = np.where(idx >= self.start, idx + width, idx)
        return Selection(idx, np.full(idx.shape, math.log(n / m)), np.full((ctx.q, reps), m),
                         distinct=not self.replace)


def gaussian_tail_mass_on_sphere(f, a, d: int, radius: float = 1.0):
    """The (wrong) Gaussian law tau = Phi(Phi^{-1}(1 - f) - sigma) with the sphere's own score
    spread ``sigma = radius |a| / sqrt(d)`` (the sphere's covariance is radius^2 I / d)."""
    a = np.asarray(a, dtype=float)
    sigma = radius * np.linalg.norm(a, axis=-1) / math.sqrt(d)
    return tsel.gaussian_topk_tail_mass(f, sigma)
