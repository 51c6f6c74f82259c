"""Per-run kernels, one block per run: the chunk-ordered gradient reduction with the chain rule
(:func:`grad_kernel`) and Adam with the merged parameters (:func:`update_kernel`)."""
from __future__ import annotations

import functools
import math

from numba import cuda, float64


@functools.cache
def grad_kernel(D: int, N: int, H_max: int):
    """One block per run: partials -> (G, gu, loss) in chunk order -> dQ, dK, dV, dO.

    Arguments: theta (R, P), part (R, chunks, P_part), temperature c, bn = B N (the loss
    divisor), check (mark non-finite runs), first (start the loss accumulator), t_step; outputs
    grad (R, P), loss (R,), loss_acc (R,) (summed over the steps since ``first``), bad (R,)
    int64 (``step + 1`` of the first non-finite step, 0 while finite)."""
    S = H_max * D * D
    SU = H_max * D * N
    PART = S + SU + 1
    P = 3 * S + SU
    DD = D * D
    DN = D * N

    @cuda.jit
    def kernel(theta, part, c, bn, check, first, t_step, grad, loss, loss_acc, bad):
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        T = cuda.blockDim.x
        red = cuda.shared.array(PART, float64)
        nchunk = part.shape[1]
        for e in range(t, PART, T):
            acc = 0.0
            for ch in range(nchunk):
                acc += part[r, ch, e]
            red[e] = acc
        cuda.syncthreads()
        nonfinite = 0
        for e in range(t, P, T):
            acc = 0.0
            if e < S:  # dQ[h,a,b] = c sum_j K[h,a,j] G[h,b,j]
                h = e // DD
                a = (e - h * DD) // D
                b = e - h * DD - a * D
                for j in range(D):
                    acc += theta[r, S + h * DD + a * D + j] * red[h * DD + b * D + j]
                acc = c * acc
            elif e < 2 * S:  # dK[h,a,b] = c sum_j Q[h,a,j] G[h,j,b]
                e2 = e - S
                h = e2 // DD
                a = (e2 - h * DD) // D
                b = e2 - h * DD - a * D
                for j in range(D):
                    acc += theta[r, h * DD + a * D + j] * red[h * DD + j * D + b]
                acc = c * acc
            elif e < 3 * S:  # dV[h,a,b] = sum_n O[h,a,n] gu[h,b,n]
                e2 = e - 2 * S
                h = e2 // DD
                a = (e2 - h * DD) // D
                b = e2 - h * DD - a * D
                for nn in range(N):
                    acc += theta[r, 3 * S + h * DN + a * N + nn] * red[S + h * DN + b * N + nn]
            else:  # dO[h,a,n] = sum_j V[h,a,j] gu[h,j,n]
                e2 = e - 3 * S
                h = e2 // DN
                a = (e2 - h * DN) // N
                nn = e2 - h * DN - a * N
                for j in range(D):
                    acc += theta[r, 2 * S + h * DD + a * D + j] * red[S + h * DN + j * N + nn]
            grad[r, e] = acc
            if not math.isfinite(acc):
                nonfinite = 1
        anybad = cuda.syncthreads_or(nonfinite)
        if t == 0:
            lv = red[PART - 1] / bn
            loss[r] = lv
            if first:
                loss_acc[r] = lv
            else:
                loss_acc[r] = loss_acc[r] + lv
            if check and bad[r] == 0 and (anybad != 0 or not math.isfinite(lv)):
                bad[r] = t_step + 1

    return kernel


@functools.cache
def update_kernel(D: int, N: int, H_max: int):
    """One block per run: Adam (when ``do_adam`` and no run is marked bad), then the merged
    W = c Q^T K (R, H_max, D, D) and u = V^T O (R, H_max, D, N).

    Adam in PyTorch's form with the CPU trainer's operation order: ``m = b1 m + (1-b1) g``,
    ``v = b2 v + (1-b2) g g``, ``theta -= step m / (sqrt(v / bc2) + eps)`` with
    ``step = lr / (1 - b1^t)`` and ``bc2 = 1 - b2^t`` computed on the host."""
    S = H_max * D * D
    SU = H_max * D * N
    P = 3 * S + SU
    DD = D * D
    DN = D * N

    @cuda.jit
    def kernel(theta, m, v, grad, bad, do_adam, b1, b2, omb1, omb2, step, bc2, eps, c, W, U):
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        T = cuda.blockDim.x
        if do_adam:
            ok = True
            for rr in range(bad.shape[0]):
                if bad[rr] != 0:
                    ok = False
            if ok:
                for e in range(t, P, T):
                    gr = grad[r, e]
                    mm = m[r, e] * b1
                    mm = mm + omb1 * gr
                    vv = v[r, e] * b2
                    vv = vv + omb2 * gr * gr
                    m[r, e] = mm
                    v[r, e] = vv
                    denom = math.sqrt(vv / bc2)
                    denom = denom + eps
                    theta[r, e] = theta[r, e] - step * mm / denom
        cuda.syncthreads()
        for e in range(t, S + SU, T):
            acc = 0.0
            if e < S:  # W[h,a,b] = c sum_k Q[h,k,a] K[h,k,b]
                h = e // DD
                a = (e - h * DD) // D
                b = e - h * DD - a * D
                for k in range(D):
                    acc += theta[r, h * DD + k * D + a] * theta[r, S + h * DD + k * D + b]
                W[r, h, a, b] = c * acc
            else:  # U[h,a,n] = sum_k V[h,k,a] O[h,k,n]
                e2 = e - S
                h = e2 // DN
                a = (e2 - h * DN) // N
                nn = e2 - h * DN - a * N
                for k in range(D):
                    acc += theta[r, 2 * S + h * DD + k * D + a] * theta[r, 3 * S + h * DN + k * N + nn]
                U[r, h, a, nn] = acc

    return kernel
