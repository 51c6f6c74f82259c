"""Prompt generation (notes icl_regression §1, §12): prompt ``b`` of step ``t`` on a stream is a
pure function of (key, t, b, stream), drawn inside Numba from the Philox stream
(:mod:`sim.icl_regression.philox`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from sim.backend import engine
from sim.icl_regression._numba import _NJ, _NJI, _U64, _run_tasks
from sim.icl_regression.philox import _fill_normals
from sim.icl_regression.tasks import STREAM_TEST, TaskSpec, _task_arrays


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
    """Prompts ``first..first+n-1`` of step ``t`` on ``stream`` (the very prompts the training
    and evaluation kernels draw). ``layout="natural"`` returns :class:`Prompts`;
    ``layout="kernel"`` returns ``(Z (n, D, L), zq (n, D), yq (n, N), beta (n, N, d))``.
    ``device="gpu"`` draws them with the device engine ``icl.generate_prompts`` of
    :mod:`sim.backend` (the CUDA kernel of ``gpu.icl_regression``: same Philox words; normals equal
    up to an ulp) and returns NumPy arrays all the same."""
    key = np.asarray(key, dtype=np.uint64)
    d, N = task.d, task.n_out
    if device == "gpu":
        Z, zq, yq, beta = engine("icl.generate_prompts")(key, *_task_arrays(task), int(n), int(L), t=int(t), stream=int(stream),
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


def prompts_to_tokens(p: Prompts):
    """Tokens Z (n, L, D) = [x; y], query tokens zq (n, D) = [x_q; 0], labels yq (n, N)."""
    Z = np.concatenate([p.x, p.y], axis=2)
    zq = np.concatenate([p.xq, np.zeros((p.n, p.y.shape[2]))], axis=1)
    return Z, zq, p.yq
