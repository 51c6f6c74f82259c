"""Seeded random streams on the device: CuPy's Philox4x3210 with a 63-bit seed.

``cupy.random.Philox4x3210(seed_sequence)`` keeps only 32 bits of the sequence's state
(``generate_state(1, uint32)``): across ~9 000 sweep cells two cells share a stream with
probability ~1 % (birthday bound ``k^2 / 2^33``). :func:`philox_generator` re-initialises the
cuRAND states with :func:`seed63` -- 63 bits of the cell's SeedSequence (CuPy's raw kernel
mishandles seeds with the 64th bit set) -- so that probability becomes ``k^2 / 2^64``. The
re-initialisation uses CuPy's own state initialiser (a private function of CuPy 13/14); when a
CuPy release lacks it, the generator keeps CuPy's 32-bit seed and says so in a warning.

Registered with :mod:`sim.backend` as the engine ``random.generator`` (what
``sim.backend.make_rng(seed, "gpu")`` calls).
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["seed63", "philox_generator"]


def seed63(ss: np.random.SeedSequence) -> int:
    """The top 63 bits of the first 64-bit word of ``ss``'s state."""
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def philox_generator(ss: np.random.SeedSequence):
    """``cupy.random.Generator`` on Philox4x3210 seeded with :func:`seed63` of ``ss``."""
    import cupy

    bg = cupy.random.Philox4x3210(ss)
    seed = seed63(ss)
    try:
        from cupy.random._generator_api import init_curand

        init_curand(bg.generator, bg._state.data.ptr, seed, bg._size)
        bg._seed = seed
    except (ImportError, AttributeError) as e:
        warnings.warn(f"CuPy's Philox keeps its 32-bit seed ({type(e).__name__}: {e})", RuntimeWarning,
                      stacklevel=2)
    return cupy.random.Generator(bg)
