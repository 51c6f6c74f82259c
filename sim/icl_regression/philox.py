"""The prompt stream's normals: blocks of Philox4x64-10 words (:mod:`sim.philox`) turned into
normals by Box-Muller, in the layout the prompts index (see the package docstring, "Random
numbers")."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numba import njit

from sim.icl_regression._numba import _NJ, _NJI, _U64
from sim.philox import _box_muller, philox4x64  # noqa: F401  (re-exported: the prompts use both)


@njit(**_NJI)
def _fill_normals(k0, k1, c1, c2, c3, nb, g0, g1, g2, g3):
    """Blocks j = 0..nb-1 of counter (j, c1, c2, c3): block j gives g0[j], g1[j] (from its
    first two words) and g2[j], g3[j] (last two)."""
    for j in range(nb):
        a, b, c, d = philox4x64(_U64(j), c1, c2, c3, k0, k1)
        n0, n1 = _box_muller(a, b)
        n2, n3 = _box_muller(c, d)
        g0[j] = n0
        g1[j] = n1
        g2[j] = n2
        g3[j] = n3


@njit(**_NJ)
def _normals_kernel(k0, k1, c1, c2, c3, nb, out):
    _fill_normals(k0, k1, c1, c2, c3, nb, out[0:nb], out[nb:2 * nb], out[2 * nb:3 * nb], out[3 * nb:4 * nb])


@njit(**_NJ)
def _raw_kernel(k0, k1, c1, c2, c3, nb, out):
    for j in range(nb):
        a, b, c, d = philox4x64(_U64(j), c1, c2, c3, k0, k1)
        out[4 * j] = a
        out[4 * j + 1] = b
        out[4 * j + 2] = c
        out[4 * j + 3] = d


def normals(key, counter: Sequence[int], nb: int, raw: bool = False) -> np.ndarray:
    """The ``4 nb`` normals (or raw uint64 words, in block order) of blocks ``j = 0..nb-1`` at
    counter ``(j, *counter)``. Block j's words (a, b, c, d) give, by Box-Muller, the normals at
    positions j (r cos from a, b), nb + j (r sin), 2 nb + j and 3 nb + j (from c, d); the raw
    words are returned in block order. Prompts index this flat buffer (module docstring)."""
    key = np.asarray(key, dtype=np.uint64)
    c1, c2, c3 = (_U64(c) for c in counter)
    if raw:
        out = np.empty(4 * nb, dtype=np.uint64)
        _raw_kernel(key[0], key[1], c1, c2, c3, int(nb), out)
        return out
    out = np.empty(4 * nb)
    _normals_kernel(key[0], key[1], c1, c2, c3, int(nb), out)
    return out
