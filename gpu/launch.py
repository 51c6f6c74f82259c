"""Launch helpers: block sizes the hardware accepts, and launches on CuPy arrays without
hidden host synchronisations.

Block sizes. The CUDA simulator runs any block, a GPU does not: a block may not hold more
threads than the compiled kernel's registers allow (``cuFuncGetAttribute(MAX_THREADS_PER_BLOCK)``,
e.g. ~448 threads for the ICL prompt kernel at ~146 registers a thread), and ``gridDim.y`` and
``gridDim.z`` stop at 65 535. :func:`clamp_threads` is the rule (pure, tested on the CPU);
:func:`max_threads` asks the driver for a compiled kernel (``None`` under the simulator);
:class:`ClampedLaunch` applies both at a kernel's first launch.

Hidden synchronisations. numba-cuda synchronises CuPy's stream on the host for every CuPy
argument of a launch (the CUDA Array Interface's ``sync``). :func:`cupy_launch` instead returns
numba's handle of CuPy's current stream and zero-copy views that skip that synchronisation:
the kernel is queued behind CuPy's own work on the same stream, which orders everything without
the host waiting. (Not exercised without a GPU: the simulator has no ``as_cuda_array``;
``WORKBENCH_LAUNCH_SYNC=1`` switches back to numba's synchronising launch.)
"""
from __future__ import annotations

import os
import warnings

from numba import config, cuda

from gpu.limits import MAX_GRID_Y
from sim import backend

__all__ = ["clamp_threads", "clamp_grid_y", "max_threads", "ClampedLaunch", "cupy_launch", "MAX_GRID_Y"]

WARP = 32


def clamp_threads(requested: int, limit: int | None, *, multiple: int = WARP) -> int:
    """``requested`` threads, or the largest multiple of ``multiple`` within ``limit`` when it
    asks for more (``limit`` itself when below ``multiple``; ``None``: no limit)."""
    requested = int(requested)
    if requested < 1:
        raise ValueError("a block needs at least one thread")
    if limit is None or requested <= limit:
        return requested
    limit = int(limit)
    return limit if limit < multiple else limit // multiple * multiple


def clamp_grid_y(blocks: int) -> int:
    """Blocks along y (or z) within CUDA's limit."""
    return max(1, min(int(blocks), MAX_GRID_Y))


def max_threads(kernel, args) -> int | None:
    """Most threads per block a launch of ``kernel`` (a numba-cuda dispatcher) on ``args`` may use,
    from the compiled kernel's resources (compiles it for these argument types, which a launch
    reuses); ``None`` under the simulator or when the driver cannot say."""
    if config.ENABLE_CUDASIM or not hasattr(kernel, "_compile_for_args"):
        return None
    try:
        return int(kernel._compile_for_args(*args).max_threads_per_block)
    except Exception:  # the launch itself will report a real problem
        return None


class ClampedLaunch:
    """``kernel[grid, threads, stream, shared](*args)`` with ``threads`` clamped, at the first
    call, to what the compiled kernel allows (see :func:`clamp_threads`); later calls reuse the
    configuration. ``quiet`` silences numba's low-occupancy warning (small grids by design)."""

    def __init__(self, kernel, grid, threads: int, shared: int = 0, *, quiet: bool = False):
        self.kernel, self.grid, self.threads, self.shared, self.quiet = kernel, grid, int(threads), int(shared), quiet
        self._configured = None

    def __call__(self, *args):
        if self._configured is None:
            self.threads = clamp_threads(self.threads, max_threads(self.kernel, args))
            with warnings.catch_warnings():
                if self.quiet:
                    from numba.core.errors import NumbaPerformanceWarning

                    warnings.simplefilter("ignore", NumbaPerformanceWarning)
                self._configured = self.kernel[self.grid, self.threads, 0, self.shared]
        return self._configured(*args)


def cupy_launch(*args):
    """``(stream, args)`` for launching a kernel on CuPy arrays: numba's handle of CuPy's current
    stream and the arguments with every device array viewed through ``cuda.as_cuda_array(x,
    sync=False)`` (numba device arrays and scalars pass through). Launch with
    ``kernel[grid, block, stream](*args)``. ``WORKBENCH_LAUNCH_SYNC=1`` in the environment
    restores numba's own behaviour (stream 0, a host synchronisation per CuPy argument): a
    fallback for a first GPU run, since this path cannot run on the simulator."""
    if os.environ.get("WORKBENCH_LAUNCH_SYNC") == "1":
        return 0, list(args)
    import cupy

    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    ptr = cupy.cuda.get_current_stream().ptr
    stream = cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)
    views = [cuda.as_cuda_array(a, sync=False) if backend.on_device(a) and not isinstance(a, DeviceNDArray) else a
             for a in args]
    return stream, views
