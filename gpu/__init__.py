"""Device code and device detection.

A leaf package: it imports nothing of ours, and CuPy only lazily, inside functions, so
importing :mod:`gpu` never touches a CUDA driver.

GPU presence is decided by :func:`gpu_available`: an installed CuPy on a machine without a
driver imports fine and fails only on first use, so the check asks CuPy whether a device
can actually be used (``cupy.cuda.is_available()``).
"""
from __future__ import annotations

import functools
import importlib.util

__all__ = ["gpu_available", "device_name"]


@functools.cache
def gpu_available() -> bool:
    """True when CuPy is installed *and* a CUDA device can be used."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # a broken install or driver is "no GPU", not a crash
        return False


def device_name() -> str:
    """Human-readable name of the compute device ("cpu" when no GPU is usable)."""
    if not gpu_available():
        return "cpu"
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
