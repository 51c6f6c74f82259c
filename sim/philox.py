"""Counter-based random numbers inside Numba kernels: Philox4x64-10 and Box-Muller.

``philox4x64(c0, c1, c2, c3, k0, k1)`` is the Philox4x64-10 block cipher of Salmon et al.
(2011), bit-identical to :class:`numpy.random.Philox` (tested): four 64-bit words from a
128-bit key and a 256-bit counter, so the numbers of any counter are a pure function of
(key, counter) -- whatever the order, chunking or thread that asks for them. ``box_muller``
turns two words into two N(0, 1) normals with vectorisable polynomial log, sin and cos
(``|error| < 1e-14`` against NumPy's), so a loop of calls compiles to SIMD code.

Users: the in-context regression prompts (:mod:`sim.icl_regression`) and the token streams of
:mod:`sim.attention.stream` (tokens generated inside the attention kernel, O(chunk) memory).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from sim.kernels_cpu import FASTMATH, f64_as_i64 as _f64_as_i64, i64_as_f64

__all__ = ["philox4x64", "box_muller", "uniform53", "U64", "PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1",
           "MASK32", "SHIFT32", "SHIFT12", "SQRT_HALF_BITS", "LN2", "TWO_PI", "LOG_COEFFS", "SIN_COEFFS",
           "COS_COEFFS"]

U64 = np.uint64
_NJ = dict(fastmath=FASTMATH, error_model="numpy", cache=True)
_NJI = dict(_NJ, inline="always")

# Public constants: the device twin (gpu/icl_regression/device_math.py) compiles these very numbers
PHILOX_M0, PHILOX_M1 = U64(0xD2E7470EE14C6C93), U64(0xCA5A826395121157)  # round multipliers
PHILOX_W0, PHILOX_W1 = U64(0x9E3779B97F4A7C15), U64(0xBB67AE8584CAA73B)  # key (Weyl) increments
MASK32, SHIFT32 = U64(0xFFFFFFFF), U64(32)  # 32-bit halves of a 64-bit word
SHIFT12 = U64(12)  # a word's top 52 bits: r >> 12
SQRT_HALF_BITS = np.int64(0x3FE6A09E667F3BCD)  # bits of sqrt(1/2): log's range reduction
LN2 = math.log(2.0)
TWO_PI = 2.0 * math.pi
LOG_COEFFS = tuple(2.0 / (2 * k + 1) for k in range(11))  # log m = s sum_k 2 s^2k/(2k+1), s = (m-1)/(m+1)
SIN_COEFFS = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(8))
COS_COEFFS = tuple((-1) ** k / math.factorial(2 * k) for k in range(9))

_U64 = U64
_M0, _M1, _W0, _W1 = PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
_MASK32, _S32, _SH12 = MASK32, SHIFT32, SHIFT12
_ONE_BITS = _U64(0x3FF0000000000000)  # bits of 1.0: (r >> 12) | ONE is a double in [1, 2)
_SQRT_HALF_BITS, _LN2, _TWO_PI = SQRT_HALF_BITS, LN2, TWO_PI
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8, _L9, _L10 = LOG_COEFFS
_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7 = SIN_COEFFS
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8 = COS_COEFFS


@njit(**_NJI)
def _mulhilo(a, b):
    """(high, low) 64-bit halves of the 128-bit product a*b, from 32-bit pieces."""
    alo = a & _MASK32
    ahi = a >> _S32
    blo = b & _MASK32
    bhi = b >> _S32
    ll = alo * blo
    lh = alo * bhi
    hl = ahi * blo
    mid = (ll >> _S32) + (lh & _MASK32) + (hl & _MASK32)
    hi = ahi * bhi + (lh >> _S32) + (hl >> _S32) + (mid >> _S32)
    return hi, a * b


@njit(**_NJI)
def _round(c0, c1, c2, c3, k0, k1):
    hi0, lo0 = _mulhilo(_M0, c0)
    hi1, lo1 = _mulhilo(_M1, c2)
    return hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0


@njit(**_NJI)
def philox4x64(c0, c1, c2, c3, k0, k1):
    """Philox4x64-10 of counter (c0..c3) under key (k0, k1) (Salmon et al. 2011), unrolled
    so that LLVM vectorises a loop of calls."""
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0 = k0 + _W0
    k1 = k1 + _W1
    return _round(c0, c1, c2, c3, k0, k1)


@njit(**_NJI)
def _log_fast(x):
    """log(x) for normal x > 0: x = 2^e m with m in [sqrt(1/2), sqrt(2)), atanh series in
    s = (m-1)/(m+1) (|s| <= 0.172, 11 terms: error < 1e-16 relative)."""
    bits = _f64_as_i64(x)
    e = (bits - _SQRT_HALF_BITS) >> 52
    m = i64_as_f64(bits - (e << 52))
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = _L0 + z * (_L1 + z * (_L2 + z * (_L3 + z * (_L4 + z * (_L5 + z * (_L6 + z * (
        _L7 + z * (_L8 + z * (_L9 + z * _L10)))))))))
    return np.float64(e) * _LN2 + s * p


@njit(**_NJI)
def _sincos_turns(u):
    """(sin, cos) of 2 pi u: quadrant reduction, Taylor polynomials on [-pi/4, pi/4]."""
    q = math.floor(4.0 * u + 0.5)
    a = (u - 0.25 * q) * _TWO_PI
    z = a * a
    s = a * (_S0 + z * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * (_S6 + z * _S7)))))))
    c = _C0 + z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * (_C6 + z * (_C7 + z * _C8)))))))
    qi = np.int64(q)
    odd = (qi & 1) == 1
    sn = c if odd else s
    cs = s if odd else c
    ssign = 1.0 - 2.0 * np.float64((qi >> 1) & 1)
    csign = 1.0 - 2.0 * np.float64(((qi + 1) >> 1) & 1)
    return ssign * sn, csign * cs


@njit(**_NJI)
def box_muller(ra, rb):
    """Two N(0,1) from two uint64: u1 = 2 - [1,2)-double in (0, 1], u2 in [0, 1)."""
    u1 = 2.0 - i64_as_f64(np.int64((ra >> _SH12) | _ONE_BITS))
    u2 = i64_as_f64(np.int64((rb >> _SH12) | _ONE_BITS)) - 1.0
    rad = math.sqrt(-2.0 * _log_fast(u1))
    s, c = _sincos_turns(u2)
    return rad * c, rad * s




@njit(**_NJI)
def uniform53(r):
    """A uniform double in [0, 1) from the top 52 bits of a 64-bit word."""
    return i64_as_f64(np.int64((r >> _SH12) | _ONE_BITS)) - 1.0


_box_muller = box_muller
