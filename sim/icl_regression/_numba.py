"""Numba options and the task runner shared by the CPU kernels of :mod:`sim.icl_regression`.

Every kernel is a serial, GIL-free loop over tasks ``start, start + stride, ...`` (a task = one
(run, prompt chunk) pair, or one block of 64 prompts), run on T threads by
:func:`sim.kernels_cpu.run_threads` (see there why not Numba's ``parallel=True``). Each task
writes its own output slot and slots are reduced afterwards in a fixed order, so results do not
depend on T. ``cache=True``: compiled kernels are cached on disk next to their modules.
"""
from __future__ import annotations

import numpy as np

from sim.kernels_cpu import FASTMATH, run_threads

_U64 = np.uint64
_NJ = dict(fastmath=FASTMATH, error_model="numpy", cache=True)  # error_model: lets '/' vectorise
_NJI = dict(_NJ, inline="always")
_run_tasks = run_threads
