"""Numba building blocks for CPU hot loops.

Requirements that shaped this module (measured on a 2-core AVX-512 machine):

* ``math.exp`` inside ``@njit`` is a scalar libm call (~0.3 G/s per core here; Numba has no
  SVML), which would cap streaming softmax far below 1 G token-query pairs/s. :func:`exp_fast`
  is a branch-free float64 exp that LLVM vectorises: Cody-Waite reduction
  ``x = k ln2 + r`` with ``|r| <= ln2/2``, a degree-11 Taylor polynomial for ``e^r``
  (truncation error < 1e-14 relative) and the scale ``2^k`` built from exponent bits by an
  in-register int64 -> float64 bitcast (:func:`i64_as_f64`). Measured: ~3 G exp/s per core,
  max relative error ~1e-14 against ``numpy.exp``.
* Its argument is clamped to ``[-708, 708]``: below, the true value underflows to (nearly) 0
  and the clamp returns ~3e-308; above, the caller has an overflow to handle (the streaming
  softmax detects it from the chunk sum and rescales, see :mod:`sim.attention`).
* Loops vectorise only over *pre-sliced contiguous* arrays (``t = T[k, c:c+L]`` then
  ``t[j]``); offset indexing ``T[k, c + j]`` costs a 5x slowdown (negative-index wraparound),
  and a float ``max`` reduction does not vectorise at all.
* ``FASTMATH`` omits nothing that matters for correctness here: reassociation only changes
  summation order inside a chunk (accumulators are float64), and inputs are checked finite
  before any kernel runs.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["FASTMATH", "exp_fast", "exp_fast32", "i64_as_f64", "f64_as_i64", "i32_as_f32", "EXP_CLAMP",
           "EXP_CLAMP32", "run_threads", "cpu_threads", "LOG2E", "LN2_HI", "LN2_LO", "EXP_COEFFS"]

FASTMATH = {"contract", "nnan", "ninf", "nsz", "arcp", "afn", "reassoc"}
EXP_CLAMP = 708.0

# exp_fast's constants, public: the device twin (gpu/icl_regression/device_math.py) compiles the
# same numbers, so the two targets cannot drift
LOG2E = 1.4426950408889634
LN2_HI = 6.93145751953125e-1  # high part of ln 2 (exact in few bits)
LN2_LO = 1.42860682030941723212e-6  # ln 2 - LN2_HI
EXP_COEFFS = tuple(1.0 / math.factorial(i) for i in range(2, 12))  # Taylor terms r^2/2! .. r^11/11!
_LOG2E, _LN2_HI, _LN2_LO = LOG2E, LN2_HI, LN2_LO
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11 = EXP_COEFFS


@intrinsic
def i64_as_f64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (no conversion, vectorisable)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@intrinsic
def f64_as_i64(typingctx, x):
    """Reinterpret the bits of a float64 as an int64 (no conversion, vectorisable)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return sig, codegen


@njit(fastmath=FASTMATH, inline="always", cache=True)
def exp_fast(x):
    """``exp(x)`` for float64 ``x``, clamped to ``[-708, 708]`` (see module docstring)."""
    x = min(max(x, -EXP_CLAMP), EXP_CLAMP)
    k = math.floor(x * _LOG2E + 0.5)
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    p = 1.0 + r * (1.0 + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * (
        _C7 + r * (_C8 + r * (_C9 + r * (_C10 + r * _C11))))))))))
    return p * i64_as_f64((np.int64(k) + 1023) << 52)


# ---------------------------------------------------------------------------- float32 exp
# The float32 twin of exp_fast for the float32 streaming path (scores and weights in float32,
# sums per tile added into float64): the same Cody-Waite reduction in float32, a degree-6
# Taylor polynomial (|r| <= ln2/2: truncation < 2e-8 relative, below float32's 6e-8 ulp), and
# 2^k from the exponent bits of an int32. Every constant is a float32 so nothing widens to
# float64 and LLVM packs 16 (AVX-512) or 8 (AVX2) lanes per instruction.
EXP_CLAMP32 = 87.0
_F32 = np.float32
_CLAMP32 = _F32(EXP_CLAMP32)
_LOG2E32 = _F32(1.4426950408889634)
_LN2_HI32 = _F32(0.693145751953125)
_LN2_LO32 = _F32(1.428606765330187e-06)
_HALF32 = _F32(0.5)
_ONE32 = _F32(1.0)
_D2, _D3, _D4, _D5, _D6 = (_F32(1.0 / math.factorial(i)) for i in range(2, 7))


@intrinsic
def i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32 (no conversion, vectorisable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


@njit(fastmath=FASTMATH, inline="always", cache=True)
def exp_fast32(x):
    """``exp(x)`` for float32 ``x``, clamped to ``[-87, 87]``; relative error ~1e-7."""
    x = min(max(x, -_CLAMP32), _CLAMP32)
    k = np.floor(x * _LOG2E32 + _HALF32)  # np.floor keeps float32 (math.floor would give an int64)
    r = x - k * _LN2_HI32
    r = r - k * _LN2_LO32
    p = _ONE32 + r * (_ONE32 + r * (_D2 + r * (_D3 + r * (_D4 + r * (_D5 + r * _D6)))))
    return p * i32_as_f32((np.int32(k) + np.int32(127)) << np.int32(23))


# ------------------------------------------------------------------------------ threading
# Parallel CPU kernels do NOT use Numba's ``parallel=True``: a cached ``parallel=True`` function
# computed ~1 ulp differently from the same function freshly compiled (measured on every such
# kernel here), so a sweep resumed in a new process, or a process-pool worker loading the cache,
# would not reproduce an uninterrupted run bit for bit; and OpenMP's spinning threads slowed
# kernels several-fold on an oversubscribed machine. Instead a kernel is a serial, GIL-free
# (``nogil=True``) loop over tasks ``start, start + stride, ...`` that writes only its own tasks'
# outputs, and :func:`run_threads` runs the T interleaved shares on T threads. Each task is
# computed by the same code whatever T is, so results do not depend on the thread count either.
_POOL: dict = {"n": 0, "pool": None}


def cpu_threads() -> int:
    """Threads a CPU kernel may use: Numba's setting (a sweep worker sets its share)."""
    import numba

    return max(1, int(numba.get_num_threads()))


def run_threads(kernel, *args, n_tasks: int | None = None, threads: int | None = None) -> None:
    """Run ``kernel(start, stride, *args)`` for start = 0..T-1 with stride T on T threads
    (T = ``threads`` or :func:`cpu_threads`, at most ``n_tasks``); the calling thread takes
    share 0. The kernel must release the GIL (``@njit(nogil=True)``)."""
    T = int(threads or cpu_threads())
    if n_tasks is not None:
        T = max(1, min(T, int(n_tasks)))
    if T <= 1:
        kernel(0, 1, *args)
        return
    if _POOL["n"] < T - 1:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL["pool"] is not None:
            _POOL["pool"].shutdown(wait=True)
        _POOL["pool"] = ThreadPoolExecutor(max_workers=T - 1, thread_name_prefix="kernel")
        _POOL["n"] = T - 1
    futures = [_POOL["pool"].submit(kernel, k, T, *args) for k in range(1, T)]
    kernel(0, T, *args)
    for f in futures:
        f.result()
