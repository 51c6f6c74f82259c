"""The data + forward (+ backward) kernel: one (run, prompt chunk) work item per block, the
block's threads working on one prompt at a time in a shared-memory workspace (package
docstring, "Kernels and grid layout")."""
from __future__ import annotations

import functools

from numba import cuda, float64, uint64

from gpu.icl_regression.device_math import _exp_fast
from gpu.icl_regression.prompts import _dot, _gen_normals, _gen_query, _gen_tokens, _head_token_dots, _n_blocks


def _offsets(d: int, N: int, H_max: int, L: int, grad: bool):
    """Workspace layout (float64 slots) of one prompt: Z (D L) | zq (D) | yq, r, yhat (N each) |
    q, a, w, tv (H_max D each) | union: the normals (4 nb) while the prompt is built, then the
    scores/probabilities p (H_max L) and, for training, v (H_max L)."""
    D = d + N
    HD = H_max * D
    oz = 0
    ozq = D * L
    oyq = ozq + D
    orr = oyq + N
    oyh = orr + N
    oq = oyh + N
    oa = oq + HD
    ow = oa + HD
    otv = ow + HD
    oun = otv + HD
    length = oun + max(4 * _n_blocks(L, d, N), (2 if grad else 1) * H_max * L)
    return oz, ozq, oyq, orr, oyh, oq, oa, ow, otv, oun, length


def workspace_len(d: int, N: int, H_max: int, L: int, grad: bool) -> int:
    """float64 slots of one block's prompt workspace (see :func:`_offsets`)."""
    return _offsets(d, N, H_max, L, grad)[-1]


def _acc_len(d: int, N: int, H_max: int, grad: bool) -> int:
    D = d + N
    return H_max * D * D + H_max * D * N + 1 if grad else 1


@functools.cache
def prompt_kernel(d: int, N: int, H_max: int, grad: bool, workspace: str = "shared"):
    """Data + forward (+ backward when ``grad``) of prompts for every run (module docstring).

    Arguments: W (R, H_max, D, D), U (R, H_max, D, N), nh, kind (R,) int64, lin_scale (R,),
    keys (R, 2) uint64, the task arrays chol (R, d, d), bscale (R, N), bmask (R, N, d), nsd,
    qsd (R, N); t_step, stream, first (prompt b of the step is prompt ``first + b`` of the
    stream), n prompts, L, ppb; scratch (rows, workspace) for ``workspace="global"`` (else
    any); part (R, chunks, P_part) gradient partials ([G | gu | loss] per chunk) when ``grad``;
    sq (R, n, N) squared errors when not ``grad``. Dynamic shared memory:
    ``8 * (workspace_len + acc)`` bytes (``shared``) or ``8 * acc`` (``global``)."""
    D = d + N
    HD = H_max * D
    GS = H_max * D * D
    NACC = _acc_len(d, N, H_max, grad)
    LOSS = NACC - 1
    SHARED = workspace == "shared"
    GRAD = bool(grad)

    @cuda.jit
    def kernel(W, U, nh_a, kind_a, ls_a, keys, chol_a, bscale_a, bmask_a, nsd_a, qsd_a,
               t_step, stream, first, n, L, ppb, scratch, part, sq):
        t = cuda.threadIdx.x
        T = cuda.blockDim.x
        R = W.shape[0]
        nb = (L * d + L * N + d + N * d + N + 3) // 4
        # workspace offsets (see _offsets)
        oz = 0
        ozq = D * L
        oyq = ozq + D
        orr = oyq + N
        oyh = orr + N
        oq = oyh + N
        oa = oq + HD
        ow = oa + HD
        otv = ow + HD
        oun = otv + HD
        op = oun
        ov = oun + H_max * L
        wlen = oun + max(4 * nb, (2 if GRAD else 1) * H_max * L)
        sh = cuda.shared.array(0, float64)
        if SHARED:
            ws = sh
            oacc = wlen
        else:
            ws = scratch[cuda.blockIdx.x]
            oacc = 0
        nchunk = (n + ppb - 1) // ppb
        c2 = uint64(t_step)
        c3 = uint64(stream)
        for item in range(cuda.blockIdx.x, R * nchunk, cuda.gridDim.x):
            r = item // nchunk
            c = item - r * nchunk
            nh = nh_a[r]
            kind = kind_a[r]
            ls = ls_a[r]
            k0 = keys[r, 0]
            k1 = keys[r, 1]
            chol = chol_a[r]
            bscale = bscale_a[r]
            bmask = bmask_a[r]
            nsd = nsd_a[r]
            qsd = qsd_a[r]
            if GRAD:
                for e in range(t, NACC, T):
                    sh[oacc + e] = 0.0
            for b in range(c * ppb, min(n, (c + 1) * ppb)):
                # 1-2. the prompt: normals, tokens, query
                _gen_normals(ws, oun, nb, k0, k1, uint64(first + b), c2, c3, t, T)
                cuda.syncthreads()
                _gen_tokens(ws, oun, L, d, N, chol, bscale, bmask, nsd, ws, oz, t, T)
                if t == 0:
                    _gen_query(ws, oun, L, d, N, chol, bscale, bmask, qsd, ws, ozq, ws, oyq)
                cuda.syncthreads()
                # 3. forward: q_h = W_h^T z_q (items (h, j))
                for it in range(t, nh * D, T):
                    h = it // D
                    j = it - h * D
                    acc = 0.0
                    for k in range(D):
                        acc += ws[ozq + k] * W[r, h, k, j]
                    ws[oq + it] = acc
                cuda.syncthreads()
                # scores s_hi = q_h . z_i
                _head_token_dots(ws, oq, oz, op, nh, D, L, t, T)
                cuda.syncthreads()
                # softmax (or the linear scale), one thread per head, in the CPU's order
                for h in range(t, nh, T):
                    base = op + h * L
                    if kind == 0:
                        mx = ws[base]
                        for i in range(1, L):
                            if ws[base + i] > mx:
                                mx = ws[base + i]
                        tot = 0.0
                        for i in range(L):
                            ex = _exp_fast(ws[base + i] - mx)
                            ws[base + i] = ex
                            tot += ex
                        inv = 1.0 / tot
                        for i in range(L):
                            ws[base + i] *= inv
                    else:
                        for i in range(L):
                            ws[base + i] *= ls
                cuda.syncthreads()
                # a_h = sum_i p_hi z_i (items (h, j))
                for it in range(t, nh * D, T):
                    h = it // D
                    j = it - h * D
                    ws[oa + it] = _dot(ws, op + h * L, oz + j * L, L)
                cuda.syncthreads()
                # y_hat, squared errors, residual r = 2 (y_hat - y_q) / (n N)
                if t == 0:
                    total = 0.0
                    for nn in range(N):
                        yh = 0.0
                        for h in range(nh):
                            for j in range(D):
                                yh += U[r, h, j, nn] * ws[oa + h * D + j]
                        err = yh - ws[oyq + nn]
                        total += err * err
                        ws[orr + nn] = 2.0 * err * (1.0 / (n * N))
                        if not GRAD:
                            sq[r, b, nn] = err * err
                    if GRAD:
                        sh[oacc + LOSS] += total
                cuda.syncthreads()
                if GRAD:
                    # 4. backward: gu_h += a_h r^T, w_h = u_h r (items (h, j))
                    for it in range(t, nh * D, T):
                        h = it // D
                        j = it - h * D
                        ah = ws[oa + it]
                        wj = 0.0
                        for nn in range(N):
                            rn = ws[orr + nn]
                            sh[oacc + GS + it * N + nn] += ah * rn
                            wj += rn * U[r, h, j, nn]
                        ws[ow + it] = wj
                    cuda.syncthreads()
                    # v_hi = w_h . z_i
                    _head_token_dots(ws, ow, oz, ov, nh, D, L, t, T)
                    cuda.syncthreads()
                    # g_hi = p_hi (v_hi - <p_h, v_h>) (softmax) or lin_scale v_hi, one thread per head
                    for h in range(t, nh, T):
                        bp = op + h * L
                        bv = ov + h * L
                        if kind == 0:
                            pv = _dot(ws, bp, bv, L)
                            for i in range(L):
                                ws[bv + i] = ws[bp + i] * (ws[bv + i] - pv)
                        else:
                            for i in range(L):
                                ws[bv + i] *= ls
                    cuda.syncthreads()
                    # tv_h = sum_i g_hi z_i, G_h += z_q tv_h^T (items (h, j))
                    for it in range(t, nh * D, T):
                        h = it // D
                        j = it - h * D
                        acc = _dot(ws, ov + h * L, oz + j * L, L)
                        for k in range(D):
                            zk = ws[ozq + k]
                            if zk != 0.0:
                                sh[oacc + h * D * D + k * D + j] += zk * acc
                    cuda.syncthreads()
            if GRAD:
                for e in range(t, NACC, T):
                    part[r, c, e] = sh[oacc + e]
                cuda.syncthreads()

    return kernel
