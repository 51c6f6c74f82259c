"""The device seam: array namespaces, seeded random streams, and where a computation runs.

Requirements (what the rest of the house may rely on; tests/test_layering.py checks the first)
------------------------------------------------------------------------------------------------
1. **One way.** :mod:`sim` never imports :mod:`gpu`, not even inside a function. Device code
   reaches :mod:`sim` through a registry instead: importing :mod:`gpu` calls
   :func:`register_device` (its detector and device name) and :func:`register_engine` (one lazy
   loader per engine). With nothing registered the CPU is the only device: ``"auto"`` resolves to
   ``"cpu"``, ``"gpu"`` is the one-line :class:`DeviceUnavailable`, and naming a device engine is
   the one-line :class:`EngineUnavailable`. :mod:`studies` imports :mod:`gpu` when a GPU is asked
   for (``--device gpu|auto``), so a study never runs on a half-registered seam.
2. **One meaning of "on the device".** An array is on the device when it exposes
   ``__cuda_array_interface__`` (CuPy arrays, numba-cuda device arrays). A *call* is on the device
   when **any** of its array arguments is (``None`` and Python numbers are ignored): the device
   engines copy the host arrays of such a call over, and the namespace code raises on a mix
   anyway. :func:`on_device` is that definition; nothing else in the house spells it.
3. **One decision.** Where new arrays are made is :func:`resolve_device` (``"cpu" | "gpu" |
   "auto"``); which engine runs a call on arrays that already exist is :func:`device_engine`: the
   registered engine when the call is on the device and its sizes fit the engine's limit, else
   ``None`` (the caller's array-namespace path, which runs on CuPy too). A device call whose engine
   is not registered (``gpu`` never imported) therefore runs correctly in the namespace code,
   only slower. An engine asked for *by name* (``method="cuda"``, ``device="gpu"``) is
   :func:`engine`, an error when it is missing.
4. **Lazy.** Registering costs nothing: an engine's module (numba-cuda kernels, seconds to import
   and compile) is imported the first time a call needs it, and CuPy only once a GPU has been
   resolved. Importing this module imports NumPy and array-api-compat, nothing else.

Engines (registered by ``gpu/__init__.py``; the name says thread and function)::

    attention.softmax             attention.self_moments
    random_features.rfa_features  random_features.rfmlp_features
    random_features.gram_update   random_features.eigh
    tensor_attention.kth_order    tensor_attention.polynomial_num_den
    icl.generate_prompts          icl.evaluate_sq_errors        icl.trainer
    random.generator

Array namespaces
----------------
Every array function of :mod:`sim` takes and returns arrays of the *caller's* namespace::

    from sim.backend import namespace
    def centre(x):
        xp = namespace(x)          # numpy for numpy arrays, cupy for cupy arrays
        return x - xp.mean(x, axis=0)

A device string selects the namespace for new arrays: ``"cpu"`` -> NumPy, ``"gpu"`` -> CuPy (an
error without a usable GPU), ``"auto"`` -> CuPy when the registered detector finds one, else
NumPy.

Randomness
----------
One :class:`numpy.random.SeedSequence` per sweep cell (made by the sweep runner,
``SeedSequence(root, spawn_key=cell_index)``) feeds :func:`make_rng`, which returns a Philox
generator: ``numpy.random.Generator(Philox(ss))`` on the CPU and
``cupy.random.Generator(Philox4x3210)`` on the GPU, seeded with 63 bits of the cell's
SeedSequence by the registered engine ``random.generator`` (CuPy alone keeps 32 bits: a shared
stream every ~1 % of 9 000-cell sweeps). The CPU and GPU streams differ bit for bit; compare
results statistically, never exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import array_api_compat
import numpy as np

__all__ = [
    "DeviceUnavailable",
    "EngineUnavailable",
    "namespace",
    "resolve_device",
    "get_xp",
    "to_numpy",
    "make_rng",
    "is_numpy",
    "on_device",
    "device_engine",
    "engine",
    "engine_max_dim",
    "registered_engines",
    "register_engine",
    "register_device",
    "device_available",
    "device_name",
]

DEVICES = ("cpu", "gpu", "auto")


class DeviceUnavailable(ValueError):
    """Raised when a GPU is asked for and none can be used."""


class EngineUnavailable(LookupError):
    """Raised when a device engine is asked for by name and none is registered."""


# ------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Engine:
    loader: Callable[[], Any]
    max_dim: int | None


_ENGINES: dict[str, _Engine] = {}
_DEVICE: dict[str, Callable] = {}


def register_device(available: Callable[[], bool], name: Callable[[], str],
                    reason: Callable[[], str] | None = None) -> None:
    """Install the device detector (``available() -> bool``, cached by its owner), the device's
    human-readable ``name()`` and, optionally, ``reason()``: one line saying why no device is
    usable (shown in the :class:`DeviceUnavailable` message)."""
    _DEVICE.update(available=available, name=name)
    if reason is not None:
        _DEVICE["reason"] = reason


def register_engine(name: str, loader: Callable[[], Any], *, max_dim: int | None = None) -> None:
    """Register the device engine ``name``: ``loader()`` returns it (called at each use, so it
    should be cheap once its module is imported); ``max_dim`` is the largest feature dimension it
    handles (``None``: no limit)."""
    _ENGINES[name] = _Engine(loader, max_dim)


def registered_engines() -> tuple[str, ...]:
    return tuple(sorted(_ENGINES))


def engine(name: str) -> Any:
    """The registered device engine ``name`` (its module is imported at the first use)."""
    if name not in _ENGINES:
        raise EngineUnavailable(
            f"no device engine {name!r} is registered: import gpu first (it registers the CUDA "
            "engines with sim.backend), or use a CPU method")
    return _ENGINES[name].loader()


def engine_max_dim(name: str) -> int | None:
    """The largest dimension engine ``name`` handles (``None``: unlimited or not registered)."""
    e = _ENGINES.get(name)
    return None if e is None else e.max_dim


def on_device(*arrays: Any) -> bool:
    """True when any argument is a CUDA device array (the one meaning of "on the device")."""
    return any(hasattr(a, "__cuda_array_interface__") for a in arrays)


def device_engine(name: str, *arrays: Any, dims: tuple[int, ...] = ()) -> Any | None:
    """The engine that runs a call on ``arrays``: the registered device engine ``name`` when the
    call is on the device and every one of ``dims`` fits its limit; ``None`` otherwise (run the
    array-namespace path). See requirement 3 of the module docstring."""
    if not on_device(*arrays) or name not in _ENGINES:
        return None
    limit = _ENGINES[name].max_dim
    if limit is not None and any(int(d) > limit for d in dims):
        return None
    return engine(name)


def device_available() -> bool:
    """What the registered detector says (False when none is registered)."""
    detect = _DEVICE.get("available")
    return bool(detect()) if detect is not None else False


def device_name() -> str:
    """Human-readable name of the compute device ("cpu" when no GPU is usable)."""
    if not device_available():
        return "cpu"
    return str(_DEVICE["name"]())


# ------------------------------------------------------------------------------ namespaces
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
    if device == "cpu":
        return "cpu"
    if device_available():
        return "gpu"
    if device == "auto":
        return "cpu"
    why = _DEVICE.get("reason")
    if "available" not in _DEVICE:
        detail = "the gpu package is not imported"
    else:
        detail = (why() if why is not None else "") or "the registered detector found none"
    detail = " ".join(str(detail).split())[:200]
    raise DeviceUnavailable(
        f"--device gpu asked for, but no usable CUDA GPU was found ({detail}; install the 'gpu' "
        "extra on a machine with an NVIDIA driver, or use --device cpu)")


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
    """A Philox generator seeded from ``seed`` on ``device`` (on the GPU: the registered engine
    ``random.generator``, CuPy's Philox4x3210 with a 63-bit seed)."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    if resolve_device(device) == "gpu":
        return engine("random.generator")(ss)
    return np.random.Generator(np.random.Philox(ss))
