"""Parametrisation (Q, K, V, O per head; merged W, u), the fast loss and gradients on given data,
the einsum reference (array namespace) and the evaluation of merged models on generated prompts."""
from __future__ import annotations

import math

import numpy as np

from sim.backend import engine, namespace
from sim.icl_regression._numba import _run_tasks
from sim.icl_regression.kernels import _data_kernel, _eval_kernel
from sim.icl_regression.tasks import DEFAULT_CHUNKS, KINDS, STREAM_VAL, stack_tasks


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
    """The obviously-correct reference (notes icl_regression §12 einsum form), batched over runs: Z (R, B, L, D),
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


def evaluate_sq_errors(W, U, n_heads, kind, lin_scale, keys, tasks, n_prompts: int, L: int, *,
                       stream: int = STREAM_VAL, t: int = 0, first: int = 0, device: str = "cpu") -> np.ndarray:
    """Squared errors (R, n, N) of merged models (W, U) on the generated prompts
    ``first..first+n-1`` of (stream, t) at length L (forward only). ``tasks``: a TaskSpec, R
    TaskSpecs, or the tuple of :func:`stack_tasks`; ``keys``: (2,) shared or (R, 2).
    ``device="gpu"``: the device engine ``icl.evaluate_sq_errors`` of :mod:`sim.backend` (the CUDA
    kernel of ``gpu.icl_regression``, registered by importing ``gpu``; NumPy in and out)."""
    W = np.array(W, dtype=float, order="C")  # a writable copy: read-only arrays (e.g. from a store)
    U = np.array(U, dtype=float, order="C")  # would make Numba compile a second specialisation
    R = W.shape[0]
    nh, kd, ls = _run_arrays(n_heads, kind, lin_scale, R)
    keys = np.ascontiguousarray(np.broadcast_to(np.asarray(keys, dtype=np.uint64), (R, 2)))
    ta = tasks if isinstance(tasks, tuple) else stack_tasks(tasks, R)
    if device == "gpu":
        return engine("icl.evaluate_sq_errors")(W, U, nh, kd, ls, keys, *ta, int(n_prompts), int(L), stream=int(stream), t=int(t),
                            first=int(first))
    sq = np.empty((R, int(n_prompts), U.shape[3]))
    _run_tasks(_eval_kernel, W, U, nh, kd, ls, keys, *ta, int(t), int(stream), int(first), int(L),
               W.shape[2] - U.shape[3], sq, n_tasks=R * ((int(n_prompts) + 63) // 64))
    return sq
