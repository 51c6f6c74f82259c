"""Device detection and the CUDA toolchain facts a first run on new hardware needs.

A CUDA GPU is *usable* (:func:`gpu_available`) when

1. CuPy is installed and ``cupy.cuda.is_available()`` (an installed CuPy without a driver
   imports fine and fails only on first use), and
2. numba-cuda compiles and launches a one-line kernel that writes the value it should.

The second step is what a study's kernels need too: it fails, in one line at ``--device`` time
instead of deep inside a sweep, when libNVVM cannot be found (numba-cuda looks for it in pip
wheels, then ``CUDA_HOME``: on an image with the toolkit in ``/usr/local/cuda`` and NVRTC only
as a wheel nothing is found unless ``CUDA_HOME`` is set, which :func:`use_default_cuda_home`
does when it is unset) or when NVVM writes PTX newer than the driver accepts ("Unsupported
.version"). :func:`unavailable_reason` says which, in one line. Both results are cached: the
probe runs once per process.

:func:`toolchain` collects the versions that decide whether a kernel can run at all (driver,
CUDA runtime, libNVVM's PTX ISA version, nvJitLink) and compares the PTX version with the
newest one the driver accepts (:func:`max_ptx_for_driver`). It never raises: a piece that
cannot be read is reported as a string saying why. Everything here imports CuPy and numba-cuda
lazily, inside functions; importing this module touches no driver.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re

__all__ = ["gpu_available", "device_name", "unavailable_reason", "launch_probe_kernel", "toolchain",
           "max_ptx_for_driver", "ptx_version", "use_default_cuda_home", "DEFAULT_CUDA_HOME"]

DEFAULT_CUDA_HOME = "/usr/local/cuda"
PROBE_VALUE = 42.0

# newest PTX ISA (major, minor) each CUDA minor release accepts (NVIDIA's PTX ISA release notes);
# releases the table does not list follow the rule of their major version
_PTX_OF_CUDA = {(12, 6): (8, 5), (12, 7): (8, 6), (12, 8): (8, 7), (12, 9): (8, 8)}


def _one_line(e: BaseException | str) -> str:
    text = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
    return " ".join(str(text).split())[:240]


def max_ptx_for_driver(cuda_version: tuple[int, int]) -> tuple[int, int]:
    """The newest PTX ISA version a driver of CUDA ``(major, minor)`` JIT-compiles."""
    major, minor = int(cuda_version[0]), int(cuda_version[1])
    if (major, minor) in _PTX_OF_CUDA:
        return _PTX_OF_CUDA[(major, minor)]
    if major == 12:
        return (8, min(minor, 5))
    if major >= 13:
        return (major - 4, minor)  # 13.0 -> 9.0, 13.1 -> 9.1, ...
    return (major - 4, minor)  # 11.x -> 7.x


def ptx_version(ptx: str) -> tuple[int, int]:
    """The ``.version X.Y`` directive of a PTX module."""
    m = re.search(r"^\s*\.version\s+(\d+)\.(\d+)", ptx, re.M)
    if m is None:
        raise ValueError("no .version directive in the PTX")
    return int(m.group(1)), int(m.group(2))


def use_default_cuda_home() -> str | None:
    """Set ``CUDA_HOME`` to ``/usr/local/cuda`` when neither it nor ``CUDA_PATH`` is set and that
    toolkit holds libNVVM; returns the value in force (``None``: none)."""
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        if os.path.isdir(os.path.join(DEFAULT_CUDA_HOME, "nvvm")):
            os.environ["CUDA_HOME"] = DEFAULT_CUDA_HOME
    return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")


def _probe_kernel():
    from numba import cuda

    @cuda.jit
    def probe(out):
        out[0] = 42.0

    return probe


def launch_probe_kernel() -> float:
    """Compile and launch a one-line numba-cuda kernel; returns what it wrote (raises on any
    failure, including a wrong value)."""
    import numpy as np
    from numba import cuda

    out = cuda.to_device(np.zeros(1))
    _probe_kernel()[1, 1](out)
    cuda.synchronize()
    value = float(out.copy_to_host()[0])
    if value != PROBE_VALUE:
        raise RuntimeError(f"the probe kernel wrote {value}, not {PROBE_VALUE}")
    return value


@functools.cache
def _probe() -> tuple[bool, str]:
    if importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed"
    try:
        import cupy

        if not cupy.cuda.is_available():
            return False, "CuPy finds no usable CUDA device or driver"
    except Exception as e:  # a broken install or driver is "no GPU", not a crash
        return False, "CuPy failed: " + _one_line(e)
    use_default_cuda_home()
    try:
        launch_probe_kernel()
    except Exception as e:
        return False, "numba-cuda could not compile and launch a one-line kernel: " + _one_line(e)
    return True, ""


def gpu_available() -> bool:
    """True when CuPy sees a CUDA device *and* a numba-cuda kernel compiles and runs on it."""
    return _probe()[0]


def unavailable_reason() -> str:
    """One line: why no GPU is usable ("" when one is)."""
    return _probe()[1]


def device_name() -> str:
    """Human-readable name of the compute device ("cpu" when no GPU is usable)."""
    if not gpu_available():
        return "cpu"
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _try(f):
    try:
        return f()
    except Exception as e:  # a fact that cannot be read is reported, never raised
        return "unavailable (" + _one_line(e) + ")"


def toolchain(cc: tuple[int, int] | None = None) -> dict:
    """Versions that decide whether kernels can run (strings where unreadable), and the verdict
    ``ptx_ok``: the PTX libNVVM writes is no newer than the driver accepts, or nvJitLink (which
    links the PTX itself) is at least as new as NVVM. ``cc`` defaults to the device's, else
    (9, 0)."""
    from numba import config

    sim = bool(config.ENABLE_CUDASIM)
    info: dict = {"simulator": sim, "cuda_home": use_default_cuda_home() or "unset"}

    def driver():
        from numba.cuda.cudadrv.driver import driver as drv

        return tuple(drv.get_version())

    def device_cc():
        from numba import cuda

        return tuple(cuda.get_current_device().compute_capability)

    def runtime():
        from numba.cuda.cudadrv import runtime as rt

        return tuple(rt.get_version())

    def nvjitlink():
        from cuda.bindings import nvjitlink as nvj

        return tuple(nvj.version())

    def compiled_ptx():
        from numba import cuda

        return ptx_version(cuda.compile_ptx(_probe_kernel().py_func, "void(float64[::1])",
                                            cc=target_cc)[0])

    info["driver_cuda"] = "simulator" if sim else _try(driver)
    target_cc = cc or (None if sim else _try(device_cc))
    if not isinstance(target_cc, tuple):
        target_cc = (9, 0)
    info["cc"] = target_cc
    info["runtime_cuda"] = _try(runtime)
    info["nvjitlink"] = _try(nvjitlink)
    info["ptx"] = _try(compiled_ptx)
    if isinstance(info["driver_cuda"], tuple):
        info["driver_max_ptx"] = max_ptx_for_driver(info["driver_cuda"])
    else:
        info["driver_max_ptx"] = "unknown (no driver)"
    ptx, top, link = info["ptx"], info["driver_max_ptx"], info["nvjitlink"]
    if isinstance(ptx, tuple) and isinstance(top, tuple):
        linked = isinstance(link, tuple) and max_ptx_for_driver(link) >= ptx
        info["ptx_ok"] = bool(ptx <= top or linked)
    else:
        info["ptx_ok"] = None  # not decidable without a driver or a compiler
    return info
