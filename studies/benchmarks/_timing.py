"""Timing helpers shared by the benchmark suites."""
from __future__ import annotations

import time


def best_time(fn, repeat: int = 3, min_time: float = 0.0) -> float:
    """Best wall time of ``fn()`` over ``repeat`` runs after one warm-up call (compilation,
    caches); repeats further while the total is below ``min_time`` seconds."""
    fn()
    best = float("inf")
    total = 0.0
    runs = 0
    while runs < repeat or total < min_time:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        total += dt
        runs += 1
    return best


def gpu_ready() -> bool:
    """Whether the suites add their GPU rows: imports :mod:`gpu` (registering its engines with
    :mod:`sim.backend`; a benchmark always asks) and lets the seam decide."""
    import gpu  # noqa: F401

    from sim.backend import resolve_device

    return resolve_device("auto") == "gpu"
