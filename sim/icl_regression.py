"""In-context linear regression with one layer of multi-head softmax attention: data, model,
hand-written gradients, batched Adam training, pattern metrics and Monte Carlo of the
closed-form predictors (He, Pan, Chen, Yang, "In-context linear regression demystified",
ICML 2025; spec ``icl_regression`` §§1-4, 6-9, 12).

Data (spec §1) [C]
------------------
A prompt has ``L`` examples ``(x_i, y_i)`` and a query ``(x_q, y_q)``; ``d`` covariates and
``N`` outputs (``N = 1`` except in the multi-task variant):

    x_i, x_q = C g,  g ~ N(0, I_d)              C = chol(Sigma) (Sigma = I: isotropic)
    beta_n   = s_n (m_n ⊙ g_beta),  g_beta ~ N(0, I_d)   (s_n = 1/sqrt(d), m_n = 1: beta ~ N(0, I/d))
    y_{n,i}  = beta_nᵀ x_i + sigma_n e_{n,i},   y_{q,n} = beta_nᵀ x_q + sigma_{q,n} e_{q,n}

Tokens ``z_i = [x_i; y_{1,i}..y_{N,i}]`` (``D = d + N``), query token ``z_q = [x_q; 0]``. The
query label carries noise by default (the authors' code), so MSE includes ``sigma^2``. A
:class:`TaskSpec` holds ``C, s, m, sigma, sigma_q``; :func:`isotropic_task`,
:func:`toeplitz_task` (``Sigma_ij = rho^|i-j|``, spec §8) and :func:`multitask_task` (spec §1:
d = 6, tasks on x[0:4] and x[2:6], beta_n ~ N(0, I_4), noise variance 0.4, noiseless query)
build the three families.

Model (spec §2) [C]
-------------------
Per head ``h = 1..H``: ``Q_h, K_h, V_h`` (D x D) and a readout ``O_h`` (D x N); no residual,
LayerNorm, MLP or bias; the query does not attend to itself. With temperature ``c = 1/sqrt(D)``
(= 1/sqrt(d+1) for one output) and the merged parameters

    W_h = c Q_hᵀ K_h   (rows index query entries, columns key entries)     u_h = V_hᵀ O_h (D x N)
    s_{h,i} = z_qᵀ W_h z_i,   p_h = softmax_i(s_h),   ŷ = sum_h u_hᵀ sum_i p_{h,i} z_i   (N outputs)

Loss: mean over prompts *and outputs* of ``(ŷ - y_q)^2`` (torch ``MSELoss``). Init: PyTorch
``nn.Linear`` default, ``Q, K, V ~ U(±1/sqrt(D))``, ``O ~ U(±1/sqrt(H D))``. The *linear*
baseline (spec §7, reconstructed [?]) replaces ``p_{h,i}`` by ``s_{h,i} / L_train``: a fixed
normalisation, so it is GD with step ``eta L'/L_train`` at test length ``L'``.

Gradients (spec §12, hand-written): with ``r_n = 2 (ŷ_n - y_{q,n}) / (B N)``,
``g_u[h] = sum_b a_h r^T``, ``v_{h,i} = sum_n r_n u_{h,:,n}ᵀ z_i``,
``g_s = r p (v - <p, v>)`` (softmax) or ``r v / L_train`` (linear),
``G_h = sum_b z_q (g_s Z)^T``; then ``dQ_h = c K_h G_hᵀ, dK_h = c Q_h G_h, dV_h = O_h g_u[h]ᵀ,
dO_h = V_h g_u[h]``. :func:`reference_loss_and_grads` is the einsum form (array namespace:
runs on NumPy or CuPy), the obviously-correct reference; the Numba kernels are the fast path.

Random numbers (fast path)
--------------------------
Prompts are generated *inside* the Numba kernels from a counter-based stream: Philox4x64-10
(bit-identical to :class:`numpy.random.Philox` — tested) with key = the run's data key and
counter ``(block j, prompt b, step t, stream)``, turned into normals by Box-Muller with
vectorised polynomial log/sin/cos (|error| < 1e-14 against NumPy's). A prompt's data is thus a
pure function of ``(key, t, b, stream)``: training needs no RNG state (resuming is exact),
runs sharing a data key (same seed, different H) see the same prompts (common random
numbers), and the kernels run (run, prompt chunk) tasks on a thread pool with a fixed chunking, so
results do not depend on the thread count (see :func:`_run_tasks`). Streams: 0 = training, 1 = validation, 2 = test.
Per prompt the normals are laid out as ``[x (d x L) | e (N x L) | x_q (d) | g_beta (N x d) |
e_q (N)]``, indices into the flat normal buffer of :func:`normals` (block j contributes entries
j, nb + j, 2 nb + j and 3 nb + j, so the generating loop vectorises).

Batched training
----------------
:class:`BatchedTrainer` trains R runs at once: parameters ``theta`` of shape (R, P) (views
Q, K, V, O with a leading run axis; heads padded to ``H_max`` with zeros, which stay zero: a
zero head gets zero gradients, and Adam moves nothing with a zero gradient), one fused kernel
call per step (data + forward + backward for all runs), Adam (lr 1e-3, betas (0.9, 0.999),
eps 1e-8, PyTorch's bias-corrected form). ``state_dict()`` holds everything needed to resume
bit for bit.

Pattern metrics (spec §4, authors' ``extract_kq_ov_details``): on the x-block ``W_x = W_h[:d, :d]``
``diag_ratio = ||diag W_x|| / ||W_x||_F``, ``diag_cv2 = Var(diag)/mean(diag)^2`` (population
variance [?]), ``last_entry_ratio = |u_h[d+n, n]| / ||u_h[:, n]||``, ``omega_h = mean diag W_x``,
``mu_h = u_h[d+n, n]`` (y_n -> output n), ``eta = sum_h mu_h omega_h``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from numba import njit

from sim.backend import namespace
from sim.kernels_cpu import FASTMATH, exp_fast, f64_as_i64 as _f64_as_i64, i64_as_f64, run_threads

__all__ = [
    "TaskSpec", "isotropic_task", "toeplitz_task", "multitask_task",
    "STREAM_TRAIN", "STREAM_VAL", "STREAM_TEST", "KINDS",
    "philox4x64", "normals", "data_key", "generate_prompts", "Prompts",
    "RunSpec", "init_params", "merge", "param_views", "n_params",
    "loss_and_grads", "loss_and_grads_merged", "reference_loss_and_grads", "reference_forward",
    "factor_grads", "evaluate_sq_errors", "stack_tasks",
    "Adam", "BatchedTrainer", "ReferenceTrainer",
    "pattern_metrics", "PATTERN_KEYS", "head_sums",
    "predict_gd", "predict_dgd", "predict_ridge", "ridge_conditional_risk", "predict_softmax_heads",
    "predict_preconditioned", "prompts_to_tokens",
]

STREAM_TRAIN, STREAM_VAL, STREAM_TEST = 0, 1, 2
KINDS = ("softmax", "linear")
DEFAULT_CHUNKS = 8  # prompt chunks per run and step: fixed, so results do not depend on threads
_U64 = np.uint64


# =============================================================================== tasks
@dataclass(frozen=True)
class TaskSpec:
    """Data law of one run (see the module docstring); arrays are float64."""

    d: int
    chol: np.ndarray  # (d, d) lower-triangular, Sigma = chol chol^T
    beta_scale: np.ndarray  # (N,)
    beta_mask: np.ndarray  # (N, d) 0/1
    noise_sd: np.ndarray  # (N,)
    query_noise_sd: np.ndarray  # (N,)
    name: str = "isotropic"
    params: dict = field(default_factory=dict)

    @property
    def n_out(self) -> int:
        return int(self.beta_scale.shape[0])

    @property
    def D(self) -> int:
        return self.d + self.n_out

    @property
    def cov(self) -> np.ndarray:
        return self.chol @ self.chol.T

    def describe(self) -> dict:
        return {"name": self.name, "d": self.d, "n_out": self.n_out, **self.params}


def isotropic_task(d: int, sigma2: float = 0.1, query_noise: bool = True) -> TaskSpec:
    """x ~ N(0, I_d), beta ~ N(0, I/d), noise variance sigma2 (query label noisy by default)."""
    sd = math.sqrt(sigma2)
    return TaskSpec(d, np.eye(d), np.array([1.0 / math.sqrt(d)]), np.ones((1, d)), np.array([sd]),
                    np.array([sd if query_noise else 0.0]), "isotropic",
                    {"sigma2": float(sigma2), "query_noise": bool(query_noise), "beta_var": 1.0 / d})


def toeplitz_task(d: int, rho: float, sigma2: float = 0.1) -> TaskSpec:
    """x ~ N(0, Sigma) with Sigma_ij = rho^|i-j| (AR(1); spec §8), beta ~ N(0, I/d)."""
    idx = np.arange(d)
    cov = float(rho) ** np.abs(idx[:, None] - idx[None, :])
    base = isotropic_task(d, sigma2)
    return TaskSpec(d, np.linalg.cholesky(cov), base.beta_scale, base.beta_mask, base.noise_sd,
                    base.query_noise_sd, "toeplitz", {**base.params, "rho": float(rho)})


def multitask_task(d: int = 6, supports=((0, 4), (2, 6)), beta_var: float = 1.0,
                   noise_var: float = 0.4, query_noise: bool = False) -> TaskSpec:
    """Multi-task regression (spec §1): task n reads x[a_n:b_n], beta_n ~ N(0, beta_var I),
    label-noise variance ``noise_var`` (4 x 0.1: SNR 1 : 0.1), noiseless query labels."""
    n = len(supports)
    mask = np.zeros((n, d))
    for k, (a, b) in enumerate(supports):
        if not (0 <= a < b <= d):
            raise ValueError(f"task support {a}:{b} is not inside 0:{d}")
        mask[k, a:b] = 1.0
    sd = math.sqrt(noise_var)
    return TaskSpec(d, np.eye(d), np.full(n, math.sqrt(beta_var)), mask, np.full(n, sd),
                    np.full(n, sd if query_noise else 0.0), "multitask",
                    {"supports": [list(s) for s in supports], "beta_var": float(beta_var),
                     "noise_var": float(noise_var), "query_noise": bool(query_noise)})


def data_key(seed) -> np.ndarray:
    """The (2,) uint64 Philox key of a data stream, from a SeedSequence or an int."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    return ss.generate_state(2, np.uint64)


# ======================================================== Philox4x64-10 + Box-Muller (Numba)
_M0, _M1 = _U64(0xD2E7470EE14C6C93), _U64(0xCA5A826395121157)
_W0, _W1 = _U64(0x9E3779B97F4A7C15), _U64(0xBB67AE8584CAA73B)
_MASK32, _S32 = _U64(0xFFFFFFFF), _U64(32)
_SH12 = _U64(12)
_ONE_BITS = _U64(0x3FF0000000000000)  # bits of 1.0: (r >> 12) | ONE is a double in [1, 2)
_SQRT_HALF_BITS = np.int64(0x3FE6A09E667F3BCD)  # bits of sqrt(1/2)
_LN2 = math.log(2.0)
_TWO_PI = 2.0 * math.pi
_LOGC = [2.0 / (2 * k + 1) for k in range(11)]  # log m = s * sum_k 2 s^2k/(2k+1), s = (m-1)/(m+1)
_SINC = [(-1) ** k / math.factorial(2 * k + 1) for k in range(8)]
_COSC = [(-1) ** k / math.factorial(2 * k) for k in range(9)]
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8, _L9, _L10 = _LOGC
_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7 = _SINC
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8 = _COSC

_NJ = dict(fastmath=FASTMATH, error_model="numpy", cache=True)  # error_model: lets '/' vectorise
_NJI = dict(_NJ, inline="always")


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
def _box_muller(ra, rb):
    """Two N(0,1) from two uint64: u1 = 2 - [1,2)-double in (0, 1], u2 in [0, 1)."""
    u1 = 2.0 - i64_as_f64(np.int64((ra >> _SH12) | _ONE_BITS))
    u2 = i64_as_f64(np.int64((rb >> _SH12) | _ONE_BITS)) - 1.0
    rad = math.sqrt(-2.0 * _log_fast(u1))
    s, c = _sincos_turns(u2)
    return rad * c, rad * s


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


# ======================================================================= prompt generation
@njit(**_NJI)
def _n_blocks(L, d, N):
    return (L * d + L * N + d + N * d + N + 3) // 4


@njit(**_NJI)
def _gen_prompt(k0, k1, b, t, stream, L, d, N, chol, bscale, bmask, nsd, qsd, g, Z, zq, yq, beta):
    """Draw prompt ``b`` of step ``t``: tokens Z (D, L), query token zq (D), labels yq (N),
    task vectors beta (N, d). ``g`` is scratch of length 4 * n_blocks."""
    nb = _n_blocks(L, d, N)
    _fill_normals(k0, k1, _U64(b), _U64(t), _U64(stream), nb,
                  g[0:nb], g[nb:2 * nb], g[2 * nb:3 * nb], g[3 * nb:4 * nb])
    # x = C g_x (rows of Z), lower-triangular C
    for k in range(d):
        zk = Z[k]
        for i in range(L):
            zk[i] = 0.0
        for m in range(k + 1):
            ckm = chol[k, m]
            if ckm != 0.0:
                gm = g[m * L:(m + 1) * L]
                for i in range(L):
                    zk[i] += ckm * gm[i]
    off_q = L * d + L * N
    off_b = off_q + d
    off_qn = off_b + N * d
    for k in range(d):
        acc = 0.0
        for m in range(k + 1):
            acc += chol[k, m] * g[off_q + m]
        zq[k] = acc
    for n in range(N):
        for k in range(d):
            beta[n, k] = bscale[n] * bmask[n, k] * g[off_b + n * d + k]
        yrow = Z[d + n]
        en = g[L * d + n * L:L * d + (n + 1) * L]
        sd = nsd[n]
        for i in range(L):
            yrow[i] = sd * en[i]
        for k in range(d):
            bk = beta[n, k]
            if bk != 0.0:
                xk = Z[k]
                for i in range(L):
                    yrow[i] += bk * xk[i]
        acc = 0.0
        for k in range(d):
            acc += beta[n, k] * zq[k]
        yq[n] = acc + qsd[n] * g[off_qn + n]
        zq[d + n] = 0.0


@njit(nogil=True, **_NJ)
def _gen_kernel(start, stride, k0, k1, t, stream, b0, L, d, N, chol, bscale, bmask, nsd, qsd, Z, zq, yq, beta):
    n = Z.shape[0]
    nb = _n_blocks(L, d, N)
    nblk = (n + 63) // 64
    for blk in range(start, nblk, stride):
        g = np.empty(4 * nb)
        for b in range(blk * 64, min(n, (blk + 1) * 64)):
            _gen_prompt(k0, k1, b0 + b, t, stream, L, d, N, chol, bscale, bmask, nsd, qsd, g,
                        Z[b], zq[b], yq[b], beta[b])


@dataclass
class Prompts:
    """A batch of prompts in natural layout: x (n, L, d), y (n, L, N), xq (n, d), yq (n, N),
    beta (n, N, d)."""

    x: np.ndarray
    y: np.ndarray
    xq: np.ndarray
    yq: np.ndarray
    beta: np.ndarray

    @property
    def n(self) -> int:
        return self.x.shape[0]


def generate_prompts(task: TaskSpec, key, n: int, L: int, *, t: int = 0, stream: int = STREAM_TEST,
                     first: int = 0, layout: str = "natural", device: str = "cpu"):
    """Prompts ``first .. first+n-1`` of step ``t`` on ``stream`` (the very prompts the training
    and evaluation kernels draw). ``layout="natural"`` returns :class:`Prompts`;
    ``layout="kernel"`` returns ``(Z (n, D, L), zq (n, D), yq (n, N), beta (n, N, d))``.
    ``device="gpu"`` draws them with the CUDA kernel of :mod:`gpu.icl_regression` (same
    Philox words; normals equal up to an ulp) and returns NumPy arrays all the same."""
    key = np.asarray(key, dtype=np.uint64)
    d, N = task.d, task.n_out
    if device == "gpu":
        from gpu.icl_regression import generate_prompts as gpu_generate

        Z, zq, yq, beta = gpu_generate(key, *_task_arrays(task), int(n), int(L), t=int(t), stream=int(stream),
                                       first=int(first))
    else:
        Z = np.empty((n, d + N, L))
        zq = np.empty((n, d + N))
        yq = np.empty((n, N))
        beta = np.empty((n, N, d))
        _run_tasks(_gen_kernel, key[0], key[1], int(t), int(stream), int(first), int(L), d, N, *_task_arrays(task),
                   Z, zq, yq, beta, n_tasks=(n + 63) // 64)
    if layout == "kernel":
        return Z, zq, yq, beta
    return Prompts(np.ascontiguousarray(Z[:, :d, :].transpose(0, 2, 1)),
                   np.ascontiguousarray(Z[:, d:, :].transpose(0, 2, 1)), zq[:, :d].copy(), yq, beta)


def _task_arrays(task: TaskSpec):
    return (np.ascontiguousarray(task.chol, dtype=float), np.ascontiguousarray(task.beta_scale, dtype=float),
            np.ascontiguousarray(task.beta_mask, dtype=float), np.ascontiguousarray(task.noise_sd, dtype=float),
            np.ascontiguousarray(task.query_noise_sd, dtype=float))


def prompts_to_tokens(p: Prompts):
    """Tokens Z (n, L, D) = [x; y], query tokens zq (n, D) = [x_q; 0], labels yq (n, N)."""
    Z = np.concatenate([p.x, p.y], axis=2)
    zq = np.concatenate([p.xq, np.zeros((p.n, p.y.shape[2]))], axis=1)
    return Z, zq, p.yq



# ========================================================================= task runner
# Parallelism: every kernel below is a serial, GIL-free loop over tasks ``start, start + stride,
# ...`` (a task = one (run, prompt chunk) pair), run on T threads by
# :func:`sim.kernels_cpu.run_threads` (see there why not Numba's ``parallel=True``). Each task
# writes its own output slot and slots are reduced afterwards in a fixed order, so results do
# not depend on T.
_run_tasks = run_threads


# ================================================================= forward / backward (Numba)
@njit(**_NJI)
def _fb_prompt(W, U, nh, kind, lin_scale, Z, zq, yq, rscale, want_grad,
               q, P, A, v, tv, yhat, r, G, gu, sq):
    """Forward (and backward when ``want_grad``) of one prompt for one run; accumulates the
    gradients w.r.t. the merged W (H, D, D) and u (H, D, N) into G, gu (already scaled by
    ``rscale`` = 1/(B N)), writes the squared errors per output into ``sq``; returns their sum."""
    D = Z.shape[0]
    L = Z.shape[1]
    N = yq.shape[0]
    for n in range(N):
        yhat[n] = 0.0
    for h in range(nh):
        Wh = W[h]
        for j in range(D):
            acc = 0.0
            for k in range(D):
                acc += zq[k] * Wh[k, j]
            q[j] = acc
        s = P[h]
        for i in range(L):
            s[i] = 0.0
        for j in range(D):
            qj = q[j]
            zj = Z[j]
            for i in range(L):
                s[i] += qj * zj[i]
        if kind == 0:
            m = s[0]
            for i in range(1, L):
                if s[i] > m:
                    m = s[i]
            tot = 0.0
            for i in range(L):
                e = exp_fast(s[i] - m)
                s[i] = e
                tot += e
            inv = 1.0 / tot
            for i in range(L):
                s[i] *= inv
        else:
            for i in range(L):
                s[i] *= lin_scale
        Ah = A[h]
        Uh = U[h]
        for j in range(D):
            zj = Z[j]
            acc = 0.0
            for i in range(L):
                acc += s[i] * zj[i]
            Ah[j] = acc
            for n in range(N):
                yhat[n] += Uh[j, n] * acc
    total = 0.0
    for n in range(N):
        err = yhat[n] - yq[n]
        sq[n] = err * err
        total += err * err
        r[n] = 2.0 * err * rscale
    if not want_grad:
        return total
    for h in range(nh):
        Ah = A[h]
        Uh = U[h]
        guh = gu[h]
        for j in range(D):
            wj = 0.0
            for n in range(N):
                guh[j, n] += Ah[j] * r[n]
                wj += r[n] * Uh[j, n]
            tv[j] = wj  # tv temporarily holds w_j = sum_n r_n u_{h,j,n}
        for i in range(L):
            v[i] = 0.0
        for j in range(D):
            wj = tv[j]
            zj = Z[j]
            for i in range(L):
                v[i] += wj * zj[i]
        p = P[h]
        if kind == 0:
            pv = 0.0
            for i in range(L):
                pv += p[i] * v[i]
            for i in range(L):
                v[i] = p[i] * (v[i] - pv)
        else:
            for i in range(L):
                v[i] *= lin_scale
        for j in range(D):
            zj = Z[j]
            acc = 0.0
            for i in range(L):
                acc += v[i] * zj[i]
            tv[j] = acc
        Gh = G[h]
        for k in range(D):
            zk = zq[k]
            if zk != 0.0:
                for j in range(D):
                    Gh[k, j] += zk * tv[j]
    return total


@njit(nogil=True, **_NJ)
def _train_kernel(start, stride, W, U, nh, kind, lin_scale, keys, chol, bscale, bmask, nsd, qsd, t, stream, B, L, d,
                  nchunk, loss_out, G_out, gu_out):
    """Data + forward + backward of one step for every run: tasks (run, prompt chunk)
    start, start + stride, ... (see :func:`_run_tasks`)."""
    R = W.shape[0]
    Hm = W.shape[1]
    D = W.shape[2]
    N = U.shape[3]
    nb = _n_blocks(L, d, N)
    per = (B + nchunk - 1) // nchunk
    rscale = 1.0 / (B * N)
    for task in range(start, R * nchunk, stride):
        r_ = task // nchunk
        c = task % nchunk
        g = np.empty(4 * nb)
        Z = np.empty((D, L))
        zq = np.empty(D)
        yq = np.empty(N)
        beta = np.empty((N, d))
        q = np.empty(D)
        P = np.empty((Hm, L))
        A = np.empty((Hm, D))
        v = np.empty(L)
        tv = np.empty(D)
        yhat = np.empty(N)
        rr = np.empty(N)
        sq = np.empty(N)
        G = G_out[r_, c]
        gu = gu_out[r_, c]
        G[...] = 0.0
        gu[...] = 0.0
        tot = 0.0
        for b in range(c * per, min(B, (c + 1) * per)):
            _gen_prompt(keys[r_, 0], keys[r_, 1], b, t, stream, L, d, N, chol[r_], bscale[r_], bmask[r_],
                        nsd[r_], qsd[r_], g, Z, zq, yq, beta)
            tot += _fb_prompt(W[r_], U[r_], nh[r_], kind[r_], lin_scale[r_], Z, zq, yq, rscale, True,
                              q, P, A, v, tv, yhat, rr, G, gu, sq)
        loss_out[r_, c] = tot


@njit(nogil=True, **_NJ)
def _data_kernel(start, stride, W, U, nh, kind, lin_scale, Zs, zqs, yqs, nchunk, want_grad, loss_out, G_out, gu_out,
                 sq_out):
    """Forward (+ backward) on given data Zs (R, B, D, L), zqs (R, B, D), yqs (R, B, N)."""
    R = W.shape[0]
    Hm = W.shape[1]
    D = W.shape[2]
    N = U.shape[3]
    B = Zs.shape[1]
    L = Zs.shape[3]
    per = (B + nchunk - 1) // nchunk
    rscale = 1.0 / (B * N)
    for task in range(start, R * nchunk, stride):
        r_ = task // nchunk
        c = task % nchunk
        q = np.empty(D)
        P = np.empty((Hm, L))
        A = np.empty((Hm, D))
        v = np.empty(L)
        tv = np.empty(D)
        yhat = np.empty(N)
        rr = np.empty(N)
        G = G_out[r_, c]
        gu = gu_out[r_, c]
        G[...] = 0.0
        gu[...] = 0.0
        tot = 0.0
        for b in range(c * per, min(B, (c + 1) * per)):
            tot += _fb_prompt(W[r_], U[r_], nh[r_], kind[r_], lin_scale[r_], Zs[r_, b], zqs[r_, b], yqs[r_, b],
                              rscale, want_grad, q, P, A, v, tv, yhat, rr, G, gu, sq_out[r_, b])
        loss_out[r_, c] = tot


@njit(nogil=True, **_NJ)
def _eval_kernel(start, stride, W, U, nh, kind, lin_scale, keys, chol, bscale, bmask, nsd, qsd, t, stream, b0, L, d,
                 sq_out):
    """Squared errors (R, n, N) of prompts b0..b0+n-1 (forward only)."""
    R = W.shape[0]
    Hm = W.shape[1]
    D = W.shape[2]
    N = U.shape[3]
    n = sq_out.shape[1]
    nb = _n_blocks(L, d, N)
    nblk = (n + 63) // 64
    for task in range(start, R * nblk, stride):
        r_ = task // nblk
        blk = task % nblk
        g = np.empty(4 * nb)
        Z = np.empty((D, L))
        zq = np.empty(D)
        yq = np.empty(N)
        beta = np.empty((N, d))
        q = np.empty(D)
        P = np.empty((Hm, L))
        A = np.empty((Hm, D))
        v = np.empty(L)
        tv = np.empty(D)
        yhat = np.empty(N)
        rr = np.empty(N)
        G = np.empty((1, 1, 1))
        gu = np.empty((1, 1, 1))
        for b in range(blk * 64, min(n, (blk + 1) * 64)):
            _gen_prompt(keys[r_, 0], keys[r_, 1], b0 + b, t, stream, L, d, N, chol[r_], bscale[r_], bmask[r_],
                        nsd[r_], qsd[r_], g, Z, zq, yq, beta)
            _fb_prompt(W[r_], U[r_], nh[r_], kind[r_], lin_scale[r_], Z, zq, yq, 1.0, False,
                       q, P, A, v, tv, yhat, rr, G, gu, sq_out[r_, b])


# ====================================================================== parametrisation
def n_params(H: int, D: int, N: int) -> int:
    return H * (3 * D * D + D * N)


def param_views(theta: np.ndarray, H: int, D: int, N: int):
    """Views Q, K, V (R, H, D, D) and O (R, H, D, N) into a flat (R, P) parameter array."""
    R = theta.shape[0]
    s = H * D * D
    Q = theta[:, 0:s].reshape(R, H, D, D)
    K = theta[:, s:2 * s].reshape(R, H, D, D)
    V = theta[:, 2 * s:3 * s].reshape(R, H, D, D)
    O = theta[:, 3 * s:].reshape(R, H, D, N)
    return Q, K, V, O


def init_params(rng: np.random.Generator, H: int, D: int, N: int, H_max: int | None = None) -> np.ndarray:
    """PyTorch ``nn.Linear`` default init of one run, flat (P,), heads >= H zero (padding)."""
    H_max = H if H_max is None else H_max
    theta = np.zeros((1, n_params(H_max, D, N)))
    Q, K, V, O = param_views(theta, H_max, D, N)
    b = 1.0 / math.sqrt(D)
    bo = 1.0 / math.sqrt(H * D)
    Q[0, :H] = rng.uniform(-b, b, (H, D, D))
    K[0, :H] = rng.uniform(-b, b, (H, D, D))
    V[0, :H] = rng.uniform(-b, b, (H, D, D))
    O[0, :H] = rng.uniform(-bo, bo, (H, D, N))
    return theta[0]


def merge(Q, K, V, O, temperature: float):
    """Merged parameters W = c Qᵀ K (R, H, D, D) and u = Vᵀ O (R, H, D, N)."""
    xp = namespace(Q)
    W = temperature * xp.matmul(xp.swapaxes(Q, -1, -2), K)
    U = xp.matmul(xp.swapaxes(V, -1, -2), O)
    return W, U


def factor_grads(Q, K, V, O, G, gu, temperature: float):
    """Chain rule from (dW, du) to (dQ, dK, dV, dO) (see the module docstring)."""
    xp = namespace(Q)
    dQ = temperature * xp.matmul(K, xp.swapaxes(G, -1, -2))
    dK = temperature * xp.matmul(Q, G)
    dV = xp.matmul(O, xp.swapaxes(gu, -1, -2))
    dO = xp.matmul(V, gu)
    return dQ, dK, dV, dO


def _run_arrays(n_heads, kinds, lin_scales, R):
    nh = np.broadcast_to(np.asarray(n_heads, dtype=np.int64), (R,)).copy()
    kd = np.broadcast_to(np.asarray([KINDS.index(k) if isinstance(k, str) else int(k) for k in np.atleast_1d(kinds)],
                                    dtype=np.int64), (R,)).copy()
    ls = np.broadcast_to(np.asarray(lin_scales, dtype=float), (R,)).copy()
    return nh, kd, ls


def loss_and_grads_merged(W, U, Z, zq, yq, *, n_heads=None, kind="softmax", lin_scale=0.0,
                          nchunk: int = DEFAULT_CHUNKS, want_grad: bool = True):
    """Fast path on given data: W (R, H, D, D), U (R, H, D, N), Z (R, B, L, D) tokens,
    zq (R, B, D), yq (R, B, N). Returns ``(loss (R,), G (R, H, D, D), gu (R, H, D, N),
    sq (R, B, N))`` with ``loss`` the MSE over prompts and outputs."""
    W = np.array(W, dtype=float, order="C")
    U = np.array(U, dtype=float, order="C")
    R, H, D, _ = W.shape
    N = U.shape[3]
    Zt = np.ascontiguousarray(np.swapaxes(np.asarray(Z, dtype=float), -1, -2))
    B = Zt.shape[1]
    nchunk = max(1, min(int(nchunk), B))
    nh, kd, ls = _run_arrays(H if n_heads is None else n_heads, kind, lin_scale, R)
    loss = np.empty((R, nchunk))
    G = np.empty((R, nchunk, H, D, D))
    gu = np.empty((R, nchunk, H, D, N))
    sq = np.empty((R, B, N))
    _run_tasks(_data_kernel, W, U, nh, kd, ls, Zt, np.ascontiguousarray(zq, dtype=float),
               np.ascontiguousarray(yq, dtype=float), nchunk, bool(want_grad), loss, G, gu, sq, n_tasks=R * nchunk)
    return loss.sum(axis=1) / (B * N), G.sum(axis=1), gu.sum(axis=1), sq


def loss_and_grads(Q, K, V, O, Z, zq, yq, *, temperature=None, **kw):
    """Fast path in the factorised parameters: returns ``(loss (R,), (dQ, dK, dV, dO))``."""
    D = Q.shape[-1]
    c = 1.0 / math.sqrt(D) if temperature is None else temperature
    W, U = merge(Q, K, V, O, c)
    loss, G, gu, _ = loss_and_grads_merged(W, U, Z, zq, yq, **kw)
    return loss, factor_grads(Q, K, V, O, G, gu, c)


def reference_forward(W, U, Z, zq, *, kind="softmax", lin_scale=0.0):
    """ŷ (R, B, N) by einsum on full arrays (array namespace; the reference)."""
    xp = namespace(W, Z)
    s = xp.einsum("rbq,rhqj,rblj->rbhl", zq, W, Z)
    if kind == "softmax":
        s = s - xp.max(s, axis=-1, keepdims=True)
        e = xp.exp(s)
        p = e / xp.sum(e, axis=-1, keepdims=True)
    else:
        p = s * lin_scale
    a = xp.einsum("rbhl,rblj->rbhj", p, Z)
    return xp.einsum("rbhj,rhjn->rbn", a, U), p, a


def reference_loss_and_grads(Q, K, V, O, Z, zq, yq, *, temperature=None, kind="softmax", lin_scale=0.0):
    """The obviously-correct reference (spec §12 einsum form), batched over runs: Z (R, B, L, D),
    zq (R, B, D), yq (R, B, N). Returns ``(loss (R,), (dQ, dK, dV, dO))``."""
    xp = namespace(Q, Z)
    D = Q.shape[-1]
    c = 1.0 / math.sqrt(D) if temperature is None else temperature
    W, U = merge(Q, K, V, O, c)
    yhat, p, a = reference_forward(W, U, Z, zq, kind=kind, lin_scale=lin_scale)
    B, N = yq.shape[1], yq.shape[2]
    err = yhat - yq
    loss = xp.mean(err**2, axis=(1, 2))
    r = 2.0 * err / (B * N)
    gu = xp.einsum("rbn,rbhj->rhjn", r, a)
    v = xp.einsum("rblj,rhjn,rbn->rbhl", Z, U, r)
    if kind == "softmax":
        gs = p * (v - xp.sum(p * v, axis=-1, keepdims=True))
    else:
        gs = lin_scale * v
    G = xp.einsum("rbq,rbhl,rblj->rhqj", zq, gs, Z)
    return loss, factor_grads(Q, K, V, O, G, gu, c)


# ========================================================================== optimiser
class Adam:
    """Adam with PyTorch's bias-corrected update, on a flat (R, P) parameter array."""

    def __init__(self, shape, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = float(lr), float(betas[0]), float(betas[1]), float(eps)
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0

    def update(self, theta: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        self.m *= self.b1
        self.m += (1.0 - self.b1) * grad
        self.v *= self.b2
        self.v += (1.0 - self.b2) * grad * grad
        step = self.lr / (1.0 - self.b1**self.t)
        denom = np.sqrt(self.v / (1.0 - self.b2**self.t))
        denom += self.eps
        theta -= step * self.m / denom


# ====================================================================== batched trainer
@dataclass(frozen=True)
class RunSpec:
    """One training run: H heads, a data law, the attention kind, a data seed (its Philox key:
    runs with the same data seed see the same prompts) and an init seed."""

    H: int
    task: TaskSpec
    data_seed: object
    init_seed: object
    kind: str = "softmax"


class BatchedTrainer:
    """Train R one-layer attention models at once (see the module docstring).

    All runs share ``d``, ``N``, ``L`` and the batch size; the data law (covariance, noise),
    the head count and the attention kind may differ per run.

    ``device="gpu"`` keeps the state on a CUDA device and runs each step there
    (:class:`gpu.icl_regression.DeviceTrainer`: same prompts, same initialisation, same
    trajectory up to floating-point reassociation; ``gpu_options`` = its ``tpb``, ``ppb``,
    ``workspace``). The host arrays ``theta`` and ``opt`` then hold the state of construction
    (or of the last :meth:`load_state_dict`) only: read the live one through
    :meth:`state_dict`, :meth:`merged` or :meth:`views`.
    :meth:`run_steps` runs many steps with one synchronisation."""

    def __init__(self, runs: Sequence[RunSpec], L: int, batch: int = 256, lr: float = 1e-3,
                 betas=(0.9, 0.999), eps: float = 1e-8, temperature: float | None = None,
                 nchunk: int = DEFAULT_CHUNKS, device: str = "cpu", gpu_options: dict | None = None):
        if not runs:
            raise ValueError("no runs to train")
        d, N = runs[0].task.d, runs[0].task.n_out
        if any(r.task.d != d or r.task.n_out != N for r in runs):
            raise ValueError("batched runs must share d and the number of outputs")
        self.runs = list(runs)
        self.R = len(runs)
        self.d, self.N, self.D = d, N, d + N
        self.L, self.B = int(L), int(batch)
        self.H_max = max(r.H for r in runs)
        self.temperature = 1.0 / math.sqrt(self.D) if temperature is None else float(temperature)
        self.nchunk = max(1, min(int(nchunk), self.B))
        self.n_heads = np.array([r.H for r in runs], dtype=np.int64)
        self.kind = np.array([KINDS.index(r.kind) for r in runs], dtype=np.int64)
        self.lin_scale = np.where(self.kind == 1, 1.0 / self.L, 0.0)
        self.keys = np.stack([data_key(r.data_seed) for r in runs])
        arrs = [_task_arrays(r.task) for r in runs]
        self.chol, self.bscale, self.bmask, self.nsd, self.qsd = (np.ascontiguousarray(np.stack(a)) for a in zip(*arrs))
        self.theta = np.stack([init_params(np.random.Generator(np.random.Philox(
            r.init_seed if isinstance(r.init_seed, np.random.SeedSequence) else np.random.SeedSequence(int(r.init_seed)))),
            r.H, self.D, N, self.H_max) for r in runs])
        self.opt = Adam(self.theta.shape, lr, betas, eps)
        self.step_count = 0
        P = self.theta.shape[1]
        self._grad = np.empty((self.R, P))
        self._loss = np.empty((self.R, self.nchunk))
        self._G = np.empty((self.R, self.nchunk, self.H_max, self.D, self.D))
        self._gu = np.empty((self.R, self.nchunk, self.H_max, self.D, N))
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
        self.device = device
        self._dev = None
        if device == "gpu":  # lazily: gpu/ is only imported when a GPU is asked for
            from gpu.icl_regression import DeviceTrainer

            self._dev = DeviceTrainer(self.theta, self.keys, (self.chol, self.bscale, self.bmask, self.nsd, self.qsd),
                                      self.n_heads, self.kind, self.lin_scale, d=d, N=N, H_max=self.H_max, L=self.L,
                                      batch=self.B, lr=lr, betas=betas, eps=eps, temperature=self.temperature,
                                      **(gpu_options or {}))

    # ------------------------------------------------------------------ parameters
    def views(self, theta=None):
        if theta is None:
            theta = self.theta if self._dev is None else self._dev.state()[0]
        return param_views(theta, self.H_max, self.D, self.N)

    def merged(self):
        """(W (R, H_max, D, D), U (R, H_max, D, N)) of the current parameters."""
        if self._dev is not None:
            return self._dev.merged()
        Q, K, V, O = self.views()
        W, U = merge(Q, K, V, O, self.temperature)
        return np.ascontiguousarray(W), np.ascontiguousarray(U)

    # ------------------------------------------------------------------------ training
    def grads(self, t: int | None = None) -> np.ndarray:
        """Mean batch loss (R,) at step ``t`` (default: the next step); fills ``self._grad``."""
        t = self.step_count if t is None else t
        if self._dev is not None:
            loss, self._grad[...] = self._dev.grads(int(t))
            return loss
        W, U = self.merged()
        _run_tasks(_train_kernel, W, U, self.n_heads, self.kind, self.lin_scale, self.keys, self.chol, self.bscale,
                   self.bmask, self.nsd, self.qsd, int(t), STREAM_TRAIN, self.B, self.L, self.d, self.nchunk,
                   self._loss, self._G, self._gu, n_tasks=self.R * self.nchunk)
        G = self._G.sum(axis=1)
        gu = self._gu.sum(axis=1)
        dQ, dK, dV, dO = factor_grads(*self.views(), G, gu, self.temperature)
        gQ, gK, gV, gO = self.views(self._grad)
        gQ[...] = dQ
        gK[...] = dK
        gV[...] = dV
        gO[...] = dO
        return self._loss.sum(axis=1) / (self.B * self.N)

    def step(self) -> np.ndarray:
        """One Adam step on a fresh batch for every run; returns the batch losses (R,)."""
        if self._dev is not None:
            return self.run_steps(1)
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are reported below
            loss = self.grads()
        if not np.all(np.isfinite(loss)) or not np.all(np.isfinite(self._grad)):
            bad = np.nonzero(~np.isfinite(loss))[0].tolist()
            raise FloatingPointError(f"training diverged at step {self.step_count} (runs {bad}): "
                                     "non-finite loss or gradient; lower the learning rate")
        self.opt.update(self.theta, self._grad)
        self.step_count += 1
        return loss

    def run_steps(self, n: int) -> np.ndarray:
        """``n`` steps; returns the sum of their batch losses (R,). On the GPU one host
        synchronisation for all n (a divergence is reported when they end, with the step it
        happened at and the parameters of that step, as :meth:`step` does)."""
        if self._dev is None:
            total = np.zeros(self.R)
            for _ in range(int(n)):
                total += self.step()
            return total
        try:
            return self._dev.run_steps(int(n))
        finally:
            self.step_count, self.opt.t = self._dev.step_count, self._dev.adam_t

    # ---------------------------------------------------------------------- evaluation
    def evaluate(self, n_prompts: int, L: int | None = None, *, stream: int = STREAM_VAL, t: int = 0,
                 keys=None) -> np.ndarray:
        """Per-prompt squared errors (R, n, N) on prompts 0..n-1 of (stream, t) at length L."""
        if self._dev is not None:
            return self._dev.evaluate(n_prompts, self.L if L is None else L, stream=stream, t=t, keys=keys)
        W, U = self.merged()
        return evaluate_sq_errors(W, U, self.n_heads, self.kind, self.lin_scale,
                                  self.keys if keys is None else keys,
                                  (self.chol, self.bscale, self.bmask, self.nsd, self.qsd),
                                  n_prompts, self.L if L is None else L, stream=stream, t=t)

    # --------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        if self._dev is not None:
            theta, m, v = self._dev.state()
            return {"theta": theta, "adam_m": m, "adam_v": v, "adam_t": np.int64(self._dev.adam_t),
                    "step": np.int64(self._dev.step_count), "keys": self.keys.copy()}
        return {"theta": self.theta.copy(), "adam_m": self.opt.m.copy(), "adam_v": self.opt.v.copy(),
                "adam_t": np.int64(self.opt.t), "step": np.int64(self.step_count), "keys": self.keys.copy()}

    def load_state_dict(self, state: dict) -> None:
        if state["theta"].shape != self.theta.shape or not np.array_equal(state["keys"], self.keys):
            raise ValueError("checkpoint does not belong to these runs (shapes or data keys differ)")
        self.theta[...] = state["theta"]
        self.opt.m[...] = state["adam_m"]
        self.opt.v[...] = state["adam_v"]
        self.opt.t = int(state["adam_t"])
        self.step_count = int(state["step"])
        if self._dev is not None:
            self._dev.load(self.theta, self.opt.m, self.opt.v, self.opt.t, self.step_count)


def stack_tasks(tasks, R: int):
    """Per-run task arrays (chol, beta_scale, beta_mask, noise_sd, query_noise_sd), each with a
    leading run axis, from one TaskSpec (shared) or a sequence of R TaskSpecs."""
    if isinstance(tasks, TaskSpec):
        tasks = [tasks] * R
    if len(tasks) != R:
        raise ValueError(f"need {R} tasks, got {len(tasks)}")
    return tuple(np.ascontiguousarray(np.stack(a)) for a in zip(*(_task_arrays(t) for t in tasks)))


def evaluate_sq_errors(W, U, n_heads, kind, lin_scale, keys, tasks, n_prompts: int, L: int, *,
                       stream: int = STREAM_VAL, t: int = 0, first: int = 0, device: str = "cpu") -> np.ndarray:
    """Squared errors (R, n, N) of merged models (W, U) on the generated prompts
    ``first..first+n-1`` of (stream, t) at length L (forward only). ``tasks``: a TaskSpec, R
    TaskSpecs, or the tuple of :func:`stack_tasks`; ``keys``: (2,) shared or (R, 2).
    ``device="gpu"``: the CUDA kernel of :mod:`gpu.icl_regression` (NumPy in and out)."""
    W = np.array(W, dtype=float, order="C")  # a writable copy: read-only arrays (e.g. from a store)
    U = np.array(U, dtype=float, order="C")  # would make Numba compile a second specialisation
    R = W.shape[0]
    nh, kd, ls = _run_arrays(n_heads, kind, lin_scale, R)
    keys = np.ascontiguousarray(np.broadcast_to(np.asarray(keys, dtype=np.uint64), (R, 2)))
    ta = tasks if isinstance(tasks, tuple) else stack_tasks(tasks, R)
    if device == "gpu":
        from gpu.icl_regression import evaluate_sq_errors as gpu_evaluate

        return gpu_evaluate(W, U, nh, kd, ls, keys, *ta, int(n_prompts), int(L), stream=int(stream), t=int(t),
                            first=int(first))
    sq = np.empty((R, int(n_prompts), U.shape[3]))
    _run_tasks(_eval_kernel, W, U, nh, kd, ls, keys, *ta, int(t), int(stream), int(first), int(L),
               W.shape[2] - U.shape[3], sq, n_tasks=R * ((int(n_prompts) + 63) // 64))
    return sq


# ===================================================================== reference trainer
class ReferenceTrainer:
    """A plain per-run NumPy training loop (spec §12): ``numpy.random.Generator`` data, the
    einsum reference gradients, the same Adam. The benchmark's baseline."""

    def __init__(self, run: RunSpec, L: int, batch: int = 256, lr: float = 1e-3, temperature=None):
        self.task = run.task
        self.d, self.N, self.D = run.task.d, run.task.n_out, run.task.D
        self.L, self.B, self.H = L, batch, run.H
        self.c = 1.0 / math.sqrt(self.D) if temperature is None else temperature
        self.kind = run.kind
        self.rng = np.random.Generator(np.random.Philox(data_key(run.data_seed)[0]))
        self.theta = init_params(np.random.Generator(np.random.Philox(
            run.init_seed if isinstance(run.init_seed, np.random.SeedSequence)
            else np.random.SeedSequence(int(run.init_seed)))), run.H, self.D, self.N)[None]
        self.opt = Adam(self.theta.shape, lr)

    def batch(self):
        rng, B, L, d, N, T = self.rng, self.B, self.L, self.d, self.N, self.task
        x = rng.standard_normal((B, L, d)) @ T.chol.T
        xq = rng.standard_normal((B, d)) @ T.chol.T
        beta = T.beta_scale[None, :, None] * T.beta_mask[None] * rng.standard_normal((B, N, d))
        y = np.einsum("bld,bnd->bln", x, beta) + T.noise_sd * rng.standard_normal((B, L, N))
        yq = np.einsum("bd,bnd->bn", xq, beta) + T.query_noise_sd * rng.standard_normal((B, N))
        Z = np.concatenate([x, y], axis=2)
        zq = np.concatenate([xq, np.zeros((B, N))], axis=1)
        return Z[None], zq[None], yq[None]

    def step(self) -> float:
        Z, zq, yq = self.batch()
        Q, K, V, O = param_views(self.theta, self.H, self.D, self.N)
        loss, grads = reference_loss_and_grads(Q, K, V, O, Z, zq, yq, temperature=self.c, kind=self.kind,
                                               lin_scale=1.0 / self.L)
        g = np.concatenate([a.reshape(1, -1) for a in grads], axis=1)
        self.opt.update(self.theta, g)
        return float(loss[0])


# ========================================================================= pattern metrics
PATTERN_KEYS = ("omega", "mu", "diag_ratio", "diag_cv2", "last_entry_ratio", "offdiag_max", "key_y_max",
                "ov_x_max")


def pattern_metrics(W: np.ndarray, U: np.ndarray, d: int, out: int = 0) -> dict:
    """Per-head metrics (arrays over the leading axes of W (..., H, D, D), U (..., H, D, N)) for
    output ``out`` (spec §4): omega, mu, diag_ratio, diag_cv2, last_entry_ratio, offdiag_max
    (max |off-diagonal| of the x-block), key_y_max (max |W[:d, d+out]|, the key-y column) and
    ov_x_max (max |u[:d, out]|). Zero heads give omega = mu = 0 and ratios 0."""
    Wx = W[..., :d, :d]
    diag = np.diagonal(Wx, axis1=-2, axis2=-1)
    fro = np.sqrt(np.sum(Wx**2, axis=(-2, -1)))
    dn = np.sqrt(np.sum(diag**2, axis=-1))
    omega = diag.mean(axis=-1)
    var = diag.var(axis=-1)
    eye = np.eye(d, dtype=bool)
    off = np.where(eye, 0.0, np.abs(Wx)).max(axis=(-2, -1))
    u = U[..., :, out]
    mu = u[..., d + out]
    un = np.sqrt(np.sum(u**2, axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        diag_ratio = np.where(fro > 0, dn / np.where(fro > 0, fro, 1.0), 0.0)
        cv2 = np.where(omega**2 > 0, var / np.where(omega**2 > 0, omega**2, 1.0), 0.0)
        ler = np.where(un > 0, np.abs(mu) / np.where(un > 0, un, 1.0), 0.0)
    return {"omega": omega, "mu": mu, "diag_ratio": diag_ratio, "diag_cv2": cv2, "last_entry_ratio": ler,
            "offdiag_max": off, "key_y_max": np.abs(W[..., :d, d + out]).max(axis=-1),
            "ov_x_max": np.abs(u[..., :d]).max(axis=-1)}


def head_sums(omega, mu, exists=None) -> dict:
    """Across-head summaries over the last axis: ``sum_mu``, ``sum_abs_mu``, ``zero_sum_ratio`` =
    |sum_h mu_h| / sum_h |mu_h| (0 when all mu vanish) and ``eta`` = sum_h mu_h omega_h (the
    debiased-GD step the heads implement, spec §6). ``exists`` masks padded heads."""
    omega = np.asarray(omega, dtype=float)
    mu = np.asarray(mu, dtype=float)
    if exists is not None:
        omega = np.where(exists, omega, 0.0)
        mu = np.where(exists, mu, 0.0)
    s = mu.sum(-1)
    a = np.abs(mu).sum(-1)
    return {"sum_mu": s, "sum_abs_mu": a, "zero_sum_ratio": np.abs(s) / np.where(a > 0, a, 1.0),
            "eta": (mu * omega).sum(-1)}


# =========================================================== closed-form predictors (MC)
def predict_gd(p: Prompts, eta, out: int = 0):
    """One-step GD from 0: ŷ = eta (1/L) sum_i y_i x_iᵀ x_q (spec §6)."""
    L = p.x.shape[1]
    return np.asarray(eta)[..., None] * np.einsum("nl,nld,nd->n", p.y[..., out], p.x, p.xq) / L


def predict_dgd(p: Prompts, eta, out: int = 0):
    """Debiased GD: ŷ = eta (1/L) sum_i y_i (x_i - x̄)ᵀ x_q (spec §6)."""
    L = p.x.shape[1]
    xc = p.x - p.x.mean(axis=1, keepdims=True)
    return np.asarray(eta)[..., None] * np.einsum("nl,nld,nd->n", p.y[..., out], xc, p.xq) / L


def predict_preconditioned(p: Prompts, Gamma: np.ndarray, centered: bool = True, out: int = 0):
    """ŷ = x_qᵀ Gamma (1/L) sum_i (x_i - x̄) y_i (x̄ = 0 when not centered; spec §8)."""
    L = p.x.shape[1]
    x = p.x - p.x.mean(axis=1, keepdims=True) if centered else p.x
    g = np.einsum("nl,nld->nd", p.y[..., out], x) / L
    return np.einsum("nd,de,ne->n", p.xq, Gamma, g)


def predict_ridge(p: Prompts, lam: float, out: int = 0):
    """Ridge: beta_hat = (XᵀX + lam I)^-1 Xᵀ y, ŷ = beta_hatᵀ x_q (lam = d sigma^2: the Bayes
    posterior mean under beta ~ N(0, I/d))."""
    d = p.x.shape[2]
    gram = np.einsum("nld,nle->nde", p.x, p.x) + lam * np.eye(d)
    rhs = np.einsum("nld,nl->nd", p.x, p.y[..., out])
    bh = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return np.einsum("nd,nd->n", bh, p.xq)


def ridge_conditional_risk(p: Prompts, sigma2: float) -> np.ndarray:
    """Bayes risk given the design, sigma^2 + tr[(XᵀX/sigma^2 + d I)^-1] (per prompt; its mean
    over designs is the finite-L Bayes risk)."""
    from theory.icl_regression import ridge_bayes_risk_given_gram

    gram = np.einsum("nld,nle->nde", p.x, p.x)
    return ridge_bayes_risk_given_gram(gram, sigma2)


def predict_softmax_heads(p: Prompts, omega, mu, out: int = 0):
    """The reduced model ŷ = sum_h mu_h sum_i softmax_i(omega_h x_iᵀ x_q) y_i (spec §5)."""
    omega = np.atleast_1d(np.asarray(omega, dtype=float))
    mu = np.atleast_1d(np.asarray(mu, dtype=float))
    g = np.einsum("nld,nd->nl", p.x, p.xq)
    yhat = np.zeros(p.n)
    for w, m in zip(omega, mu):
        s = w * g
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        yhat += m * np.einsum("nl,nl->n", e, p.y[..., out]) / e.sum(axis=1)
    return yhat
