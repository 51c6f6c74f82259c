"""Measurements: token laws and samplers, streaming attention kernels, estimators, trainers.

Importing ``sim`` lets LLVM use the full 512-bit vectors of a CPU with AVX-512: by default it
prefers 256-bit ones on Intel server CPUs, which halves the lanes of every vectorised kernel
here (measured on the convergence workload: 6.9 vs 4.8 G token-query pairs/s in float32, 2.7
vs 1.8 in float64, on 2 cores). This is done by adding ``-prefer-256-bit`` to the host's own
feature string in ``NUMBA_CPU_FEATURES`` -- no instruction the CPU lacks, and Numba's on-disk
caches are keyed by it -- and only when numba is not imported yet and the user has not set
``NUMBA_CPU_FEATURES`` themselves (set it, even to the host's plain features, to opt out).
"""
import os as _os
import sys as _sys


def _prefer_wide_vectors() -> None:
    if "NUMBA_CPU_FEATURES" in _os.environ or "numba" in _sys.modules:
        return
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features().flatten()
    except Exception:  # noqa: BLE001 - no llvmlite or an unknown host: leave LLVM's default
        return
    if "+avx512f" in features.split(","):
        _os.environ["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit"


_prefer_wide_vectors()
