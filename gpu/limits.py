"""Size limits of the device engines, importable without numba-cuda.

The kernels keep per-thread vectors in registers, so each handles feature dimensions up to a
compile-time bound. :mod:`gpu` registers every engine with :mod:`sim.backend` together with its
bound (``max_dim``), which is how ``method="auto"`` decides between a kernel and the
array-namespace code without importing the kernel's module.
"""
from __future__ import annotations

ATTENTION_MAX_DIM = 8  # dk, dv of gpu.attention's streaming kernel
TENSOR_MAX_DIM = 16  # d, dv of gpu.tensor_attention's exact kernel
RANDOM_FEATURES_MAX_DIM = 24  # D = d + 1 (and Dv) of gpu.random_features' feature kernel
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y (and z)
