"""Host wrappers: launch configuration, the raw stream, prompt generation and evaluation of
merged models (NumPy in, NumPy out)."""
from __future__ import annotations

import numpy as np
from numba import cuda

from gpu.launch import ClampedLaunch
from gpu.icl_regression.device_math import _SIM, U64, GLOBAL_BLOCKS, PPB_EVAL, SHARED_LIMIT, TPB
from gpu.icl_regression.prompt_kernel import _acc_len, prompt_kernel, workspace_len
from gpu.icl_regression.prompts import _n_blocks, gen_kernel, normals_kernel, philox_kernel


def _tpb(tpb) -> int:
    return int(tpb) if tpb else (8 if _SIM else TPB)


def _layout(d, N, H_max, L, grad, workspace, tpb, items):
    """(workspace variant, grid, shared bytes, scratch shape) of a prompt-kernel launch."""
    wl = workspace_len(d, N, H_max, L, grad)
    acc = _acc_len(d, N, H_max, grad)
    if workspace is None:
        workspace = "shared" if 8 * (wl + acc) <= SHARED_LIMIT else "global"
    if workspace == "shared":
        return "shared", max(1, items), 8 * (wl + acc), (1, 1)
    grid = max(1, min(items, GLOBAL_BLOCKS))
    return "global", grid, 8 * acc, (grid, wl)


def _dev(x, dtype=None):
    return cuda.to_device(np.ascontiguousarray(x if dtype is None else np.asarray(x, dtype=dtype)))


def raw_words(key, counter, nb: int, *, tpb: int | None = None) -> np.ndarray:
    """The 4 nb raw uint64 words of blocks j = 0..nb-1 at counter ``(j, *counter)``, block order
    (as ``sim.icl_regression.normals(..., raw=True)``)."""
    key = np.asarray(key, dtype=np.uint64)
    c1, c2, c3 = (U64(c) for c in counter)
    out = cuda.device_array(4 * int(nb), dtype=np.uint64)
    tpb = _tpb(tpb)
    philox_kernel[(int(nb) + tpb - 1) // tpb, tpb](key[0], key[1], c1, c2, c3, out)
    return out.copy_to_host()


def normals(key, counter, nb: int, *, tpb: int | None = None) -> np.ndarray:
    """The 4 nb normals of blocks j = 0..nb-1 at counter ``(j, *counter)`` in the CPU's flat
    layout (as ``sim.icl_regression.normals``)."""
    key = np.asarray(key, dtype=np.uint64)
    c1, c2, c3 = (U64(c) for c in counter)
    out = cuda.device_array(4 * int(nb))
    tpb = _tpb(tpb)
    normals_kernel[(int(nb) + tpb - 1) // tpb, tpb](key[0], key[1], c1, c2, c3, int(nb), out)
    return out.copy_to_host()


def generate_prompts(key, chol, bscale, bmask, nsd, qsd, n: int, L: int, *, t: int = 0, stream: int = 2,
                     first: int = 0, tpb: int | None = None, ppb: int | None = None, workspace: str | None = None):
    """Prompts ``first`` to ``first+n-1`` of step t on ``stream`` for one data law (task arrays as
    ``sim.icl_regression._task_arrays``): ``(Z (n, D, L), zq (n, D), yq (n, N), beta (n, N, d))``,
    NumPy, the kernel layout of ``sim.icl_regression.generate_prompts(..., layout="kernel")``."""
    key = np.asarray(key, dtype=np.uint64)
    d, N = int(np.shape(chol)[0]), int(np.shape(bscale)[0])
    n, L = int(n), int(L)
    ppb = int(ppb or PPB_EVAL)
    tpb = _tpb(tpb)
    items = (n + ppb - 1) // ppb
    nbytes = 8 * 4 * _n_blocks(L, d, N)
    if workspace is None:
        workspace = "shared" if nbytes <= SHARED_LIMIT else "global"
    if workspace == "shared":
        grid, shared, scratch = max(1, items), nbytes, cuda.device_array((1, 1))
    else:
        grid = max(1, min(items, GLOBAL_BLOCKS))
        shared, scratch = 0, cuda.device_array((grid, 4 * _n_blocks(L, d, N)))
    Z = cuda.device_array((n, d + N, L))
    zq = cuda.device_array((n, d + N))
    yq = cuda.device_array((n, N))
    beta = cuda.device_array((n, N, d))
    if n:
        _configure(gen_kernel(d, N, workspace), grid, tpb, shared)(
            key[0], key[1], _dev(chol, float), _dev(bscale, float), _dev(bmask, float), _dev(nsd, float),
            _dev(qsd, float), int(t), int(stream), int(first), L, ppb, scratch, Z, zq, yq, beta)
    return Z.copy_to_host(), zq.copy_to_host(), yq.copy_to_host(), beta.copy_to_host()


def _configure(kernel, grid, block, shared=0):
    """``kernel[grid, block, 0, shared]`` with ``block`` clamped at the first launch to what the
    compiled kernel's registers allow (:class:`gpu.launch.ClampedLaunch`; e.g. the prompt
    kernels' ~125-146 registers a thread cap a block near 448 threads), without numba's
    low-occupancy warning (the per-run kernels have one block per run by design)."""
    return ClampedLaunch(kernel, grid, block, shared, quiet=True)


def _prompt_launcher(R, d, N, H_max, n, L, ppb, grad, tpb, workspace):
    """(configured prompt kernel, its scratch array) for R runs x n prompts of length L."""
    items = R * ((int(n) + ppb - 1) // ppb)
    variant, grid, shared, sshape = _layout(d, N, H_max, L, grad, workspace, tpb, items)
    return _configure(prompt_kernel(d, N, H_max, grad, variant), grid, tpb, shared), cuda.device_array(sshape)


def _launch_prompts(W, U, nh, kind, ls, keys, tasks, t, stream, first, n, L, ppb, grad, part, sq,
                    tpb, workspace):
    R, H_max, D, _ = W.shape
    N = U.shape[3]
    launch, scratch = _prompt_launcher(R, D - N, N, H_max, n, L, ppb, grad, tpb, workspace)
    launch(W, U, nh, kind, ls, keys, *tasks, int(t), int(stream), int(first), int(n), int(L), int(ppb), scratch, part,
           sq)


def evaluate_sq_errors(W, U, n_heads, kind, lin_scale, keys, chol, bscale, bmask, nsd, qsd, n_prompts: int,
                       L: int, *, stream: int = 1, t: int = 0, first: int = 0, tpb: int | None = None,
                       ppb: int | None = None, workspace: str | None = None) -> np.ndarray:
    """Squared errors (R, n, N) of merged models W (R, H, D, D), U (R, H, D, N) on prompts
    ``first..first+n-1`` of (stream, t) at length L (forward only): the contract of
    ``sim.icl_regression.evaluate_sq_errors`` with per-run arrays already broadcast (n_heads,
    kind (0 softmax, 1 linear), lin_scale (R,), keys (R, 2), task arrays with a run axis)."""
    W = np.ascontiguousarray(W, dtype=float)
    U = np.ascontiguousarray(U, dtype=float)
    R = W.shape[0]
    n = int(n_prompts)
    sq = cuda.device_array((R, n, U.shape[3]))
    if n:
        tasks = tuple(_dev(a, float) for a in (chol, bscale, bmask, nsd, qsd))
        _launch_prompts(_dev(W), _dev(U), _dev(n_heads, np.int64), _dev(kind, np.int64), _dev(lin_scale, float),
                        _dev(keys, np.uint64), tasks, t, stream, first, n, int(L), int(ppb or PPB_EVAL), False,
                        cuda.device_array((1, 1, 1)), sq, _tpb(tpb), workspace)
    return sq.copy_to_host()
