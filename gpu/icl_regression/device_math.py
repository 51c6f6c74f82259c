"""Device functions shared by the kernels: launch constants, the target-specific primitives
(``mul.hi.u64`` and bit casts on a GPU, their Python twins under ``NUMBA_ENABLE_CUDASIM=1``),
Philox4x64-10, Box-Muller and the clamped ``exp`` -- the CPU engine's operations in the CPU's
order (see the package docstring, "Contracts")."""
from __future__ import annotations

import math

import numpy as np
from numba import config, cuda, float64, int64, uint64

# the CPU engine's own constants, by their public names: one source for both targets
from sim.kernels_cpu import EXP_CLAMP as _EXP_CLAMP, EXP_COEFFS, LN2_HI as _LN2_HI, LN2_LO as _LN2_LO
from sim.kernels_cpu import LOG2E as _LOG2E
from sim.philox import (COS_COEFFS, LN2 as _LN2, LOG_COEFFS, MASK32 as _MASK32, PHILOX_M0 as _M0,
                        PHILOX_M1 as _M1, PHILOX_W0 as _W0, PHILOX_W1 as _W1, SHIFT12 as _SH12,
                        SHIFT32 as _S32, SIN_COEFFS, SQRT_HALF_BITS as _SQRT_HALF_BITS, TWO_PI as _TWO_PI,
                        U64)  # noqa: F401  (U64: host.py)

_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11 = EXP_COEFFS
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8, _L9, _L10 = LOG_COEFFS
_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7 = SIN_COEFFS
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8 = COS_COEFFS

TPB = 64  # threads per block of the prompt kernels (real GPU)
TPB_RUN = 256  # threads per block of the per-run kernels
PPB_TRAIN = 2  # prompts per work item in training (fixes the gradient summation order)
PPB_EVAL = 8  # prompts per work item in evaluation / generation
SHARED_LIMIT = 48 * 1024  # dynamic shared memory a block may use without opting in (bytes)
GLOBAL_BLOCKS = 1024  # grid size (and scratch rows) of the global-workspace variant

_SIM = bool(config.ENABLE_CUDASIM)
_TWO_M52 = 2.0 ** -52
_I1023 = np.int64(1023)

# ---------------------------------------------- target-specific primitives (GPU / simulator)
if _SIM:  # the simulator runs device functions as Python on NumPy scalars

    @cuda.jit(device=True, inline="always")
    def _umulhi(a, b):
        """High 64 bits of the 128-bit product (32-bit pieces, as the CPU engine)."""
        alo = a & _MASK32
        ahi = a >> _S32
        blo = b & _MASK32
        bhi = b >> _S32
        ll = alo * blo
        lh = alo * bhi
        hl = ahi * blo
        mid = (ll >> _S32) + (lh & _MASK32) + (hl & _MASK32)
        return ahi * bhi + (lh >> _S32) + (hl >> _S32) + (mid >> _S32)

    @cuda.jit(device=True, inline="always")
    def _f64_as_i64(x):
        return np.float64(x).view(np.int64)

    @cuda.jit(device=True, inline="always")
    def _i64_as_f64(x):
        return np.int64(x).view(np.float64)

else:  # one PTX instruction each: mul.hi.u64, mov.b64
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline="always")
    def _umulhi(a, b):
        """High 64 bits of the 128-bit product a*b (``mul.hi.u64``)."""
        return uint64(libdevice.umul64hi(a, b))

    @cuda.jit(device=True, inline="always")
    def _f64_as_i64(x):
        return libdevice.double_as_longlong(x)

    @cuda.jit(device=True, inline="always")
    def _i64_as_f64(x):
        return libdevice.longlong_as_double(x)


# ============================================================ Philox4x64-10 + Box-Muller
@cuda.jit(device=True, inline="always")
def _round(c0, c1, c2, c3, k0, k1):
    hi0 = _umulhi(_M0, c0)
    lo0 = _M0 * c0
    hi1 = _umulhi(_M1, c2)
    lo1 = _M1 * c2
    return hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0


@cuda.jit(device=True, inline="always")
def philox4x64(c0, c1, c2, c3, k0, k1):
    """Philox4x64-10 (Salmon et al. 2011) of counter (c0..c3) under key (k0, k1), uint64."""
    for _ in range(9):
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
        k0 = k0 + _W0
        k1 = k1 + _W1
    return _round(c0, c1, c2, c3, k0, k1)


@cuda.jit(device=True, inline="always")
def _log_fast(x):
    """log(x), x > 0 normal: the CPU engine's reduction and atanh series."""
    bits = _f64_as_i64(x)
    e = (bits - _SQRT_HALF_BITS) >> 52
    m = _i64_as_f64(bits - (e << 52))
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = _L0 + z * (_L1 + z * (_L2 + z * (_L3 + z * (_L4 + z * (_L5 + z * (_L6 + z * (
        _L7 + z * (_L8 + z * (_L9 + z * _L10)))))))))
    return float64(e) * _LN2 + s * p


@cuda.jit(device=True, inline="always")
def _sincos_turns(u):
    """(sin, cos) of 2 pi u: the CPU engine's quadrant reduction and Taylor polynomials."""
    q = math.floor(4.0 * u + 0.5)
    a = (u - 0.25 * q) * _TWO_PI
    z = a * a
    s = a * (_S0 + z * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * (_S6 + z * _S7)))))))
    c = _C0 + z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * (_C6 + z * (_C7 + z * _C8)))))))
    qi = int64(q)
    odd = (qi & 1) == 1
    sn = c if odd else s
    cs = s if odd else c
    ssign = 1.0 - 2.0 * float64((qi >> 1) & 1)
    csign = 1.0 - 2.0 * float64(((qi + 1) >> 1) & 1)
    return ssign * sn, csign * cs


@cuda.jit(device=True, inline="always")
def _box_muller(ra, rb):
    """Two N(0, 1) from two words: u1 = 1 - (ra >> 12) 2^-52 in (0, 1], u2 = (rb >> 12) 2^-52
    (exactly the CPU's ``2 - [1, 2)-double`` and ``[1, 2)-double - 1``)."""
    u1 = 1.0 - float64(ra >> _SH12) * _TWO_M52
    u2 = float64(rb >> _SH12) * _TWO_M52
    rad = math.sqrt(-2.0 * _log_fast(u1))
    s, c = _sincos_turns(u2)
    return rad * c, rad * s


@cuda.jit(device=True, inline="always")
def _exp_fast(x):
    """exp(x) clamped to [-708, 708]: sim.kernels_cpu.exp_fast."""
    x = min(max(x, -_EXP_CLAMP), _EXP_CLAMP)
    k = math.floor(x * _LOG2E + 0.5)
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    p = 1.0 + r * (1.0 + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * (
        _E7 + r * (_E8 + r * (_E9 + r * (_E10 + r * _E11))))))))))
    return p * _i64_as_f64((int64(k) + _I1023) << 52)
