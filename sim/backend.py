"""Array namespaces and seeded random streams.

Every array function of :mod:`sim` takes and returns arrays of the *caller's* namespace::

    from sim.backend import namespace
    def centre(x):
        xp = namespace(x)          # numpy for numpy arrays, cupy for cupy arrays
        return x - xp.mean(x, axis=0)

Nothing here imports CuPy at module level. A device string selects the namespace for new
arrays: ``"cpu"`` -> NumPy, ``"gpu"`` -> CuPy (an error without a usable GPU), ``"auto"`` ->
CuPy when :func:`gpu.gpu_available` says so, else NumPy.

Randomness: one :class:`numpy.random.SeedSequence` per sweep cell (made by the sweep runner,
``SeedSequence(root, spawn_key=cell_index)``) feeds :func:`make_rng`, which returns a
Philox generator: ``numpy.random.Generator(Philox(ss))`` on the CPU and
``cupy.random.Generator(Philox4x3210(ss))`` on the GPU. The two streams differ bit for bit;
compare CPU and GPU results statistically, never exactly.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "DeviceUnavailable",
    "namespace",
    "resolve_device",
    "get_xp",
    "to_numpy",
    "make_rng",
    "is_numpy",
]

DEVICES = ("cpu", "gpu", "auto")


class DeviceUnavailable(ValueError):
    """Raised when a GPU is asked for and none can be used."""


def namespace(*arrays: Any) -> ModuleType:
    """The array namespace of ``arrays`` (NumPy's for plain Python numbers)."""
    arrays = tuple(a for a in arrays if not isinstance(a, (int, float, complex)))
    if not arrays:
        return array_api_compat.array_namespace(np.empty(0))
    return array_api_compat.array_namespace(*arrays)


def is_numpy(x: Any) -> bool:
    return array_api_compat.is_numpy_array(x)


def resolve_device(device: str) -> str:
    """Map ``"cpu" | "gpu" | "auto"`` to ``"cpu"`` or ``"gpu"``; raise if a GPU is missing."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    from gpu import gpu_available

    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise DeviceUnavailable(
            "--device gpu asked for, but no usable CUDA GPU was found "
            "(install the 'gpu' extra on a machine with an NVIDIA driver, or use --device cpu)"
        )
    return device


def get_xp(device: str = "cpu") -> ModuleType:
    """The namespace that creates arrays on ``device`` (NumPy or CuPy, unwrapped)."""
    if resolve_device(device) == "gpu":
        import cupy

        return cupy
    return np


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy (or view) of ``x``, whatever namespace it lives in."""
    if array_api_compat.is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def make_rng(seed: np.random.SeedSequence | int | None, device: str = "cpu"):
    """A Philox generator seeded from ``seed`` on ``device``."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    if resolve_device(device) == "gpu":
        import cupy

        return cupy.random.Generator(cupy.random.Philox4x3210(ss))
    return np.random.Generator(np.random.Philox(ss))
