"""Device engines: the CUDA twins of the CPU engines of :mod:`sim`, and device detection.

Layering (``../shared/ARCHITECTURE.md``): ``gpu`` sits *above* ``sim``. It imports ``sim`` (the
shared constants -- Philox, Box-Muller, the clamped exp -- by their public names, and
:mod:`sim.backend`), never the other way round. Importing this package **registers** with
:mod:`sim.backend`:

* the device detector (:func:`gpu_available`: CuPy sees a device *and* a one-line numba-cuda
  kernel compiles and runs, :mod:`gpu.detect`), :func:`device_name` and the one-line reason
  shown when ``--device gpu`` cannot be honoured;
* one lazy loader per engine (table :data:`ENGINES`: engine name -> module, attribute, size
  limit). Registering imports nothing heavy: an engine's module (numba-cuda kernels) is
  imported the first time :mod:`sim` asks for that engine.

Importing :mod:`gpu` touches no CUDA driver; CuPy and numba-cuda are imported inside functions.
``studies`` imports this package only when a GPU is asked for (``--device gpu|auto``).
"""
from __future__ import annotations

import importlib

from gpu.detect import device_name, gpu_available, unavailable_reason
from gpu.limits import ATTENTION_MAX_DIM, RANDOM_FEATURES_MAX_DIM, TENSOR_MAX_DIM
from sim import backend as _backend

__all__ = ["gpu_available", "device_name", "unavailable_reason", "ENGINES", "register"]

#: engine name (as :mod:`sim` asks for it) -> (module, attribute, largest feature dimension)
ENGINES: dict[str, tuple[str, str, int | None]] = {
    "attention.softmax": ("gpu.attention", "softmax_attention", ATTENTION_MAX_DIM),
    "attention.self_moments": ("gpu.attention", "self_attention_moments", ATTENTION_MAX_DIM),
    "random_features.rfa_features": ("gpu.random_features", "rfa_features", RANDOM_FEATURES_MAX_DIM),
    "random_features.rfmlp_features": ("gpu.random_features", "rfmlp_features", None),
    "random_features.gram_update": ("gpu.random_features", "gram_update", None),
    "random_features.eigh": ("gpu.random_features", "eigh", None),
    "tensor_attention.kth_order": ("gpu.tensor_attention", "kth_order_attention", TENSOR_MAX_DIM),
    "tensor_attention.polynomial_num_den": ("gpu.tensor_attention", "polynomial_num_den", None),
    "icl.generate_prompts": ("gpu.icl_regression", "generate_prompts", None),
    "icl.evaluate_sq_errors": ("gpu.icl_regression", "evaluate_sq_errors", None),
    "icl.trainer": ("gpu.icl_regression", "DeviceTrainer", None),
    "random.generator": ("gpu.streams", "philox_generator", None),
}


def _loader(module: str, attr: str):
    def load():
        return getattr(importlib.import_module(module), attr)

    return load


def register() -> None:
    """Register the detector and every engine of :data:`ENGINES` with :mod:`sim.backend`
    (done on import; idempotent)."""
    _backend.register_device(gpu_available, device_name, unavailable_reason)
    for name, (module, attr, max_dim) in ENGINES.items():
        _backend.register_engine(name, _loader(module, attr), max_dim=max_dim)


register()
