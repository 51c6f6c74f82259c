"""Forward and hand-written backward of one-layer multi-head attention in Numba (notes icl_regression §2, §12):
one prompt (:func:`_fb_prompt`), a training step with prompts drawn in the kernel
(:func:`_train_kernel`), given data (:func:`_data_kernel`) and evaluation (:func:`_eval_kernel`)."""
from __future__ import annotations

import numpy as np
from numba import njit

from sim.icl_regression._numba import _NJ, _NJI
from sim.icl_regression.prompts import _gen_prompt, _n_blocks
from sim.kernels_cpu import exp_fast


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
