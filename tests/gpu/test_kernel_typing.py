"""Compile the CUDA kernels to sm_90 PTX without a GPU (the NVRTC/NVVM wheels of the test
extra). This catches what the simulator cannot: typing errors (the simulator does no type
inference), accidental float64 arithmetic in the float32 path, and per-thread arrays spilled
to local memory. If the CUDA compiler libraries are missing, typing still runs first and only
the PTX checks are skipped."""
import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compilation needs the real numba-cuda target", allow_module_level=True)

cuda = pytest.importorskip("numba.cuda")
from numba import types  # noqa: E402
from numba.core.errors import TypingError  # noqa: E402

F64_2, F32_2, F64_3 = types.float64[:, :], types.float32[:, :], types.float64[:, :, :]


def _ptx(kernel, sig, fastmath):
    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0), fastmath=fastmath)
    except TypingError:
        raise
    except Exception as e:  # missing compiler libraries: typing already passed
        if any(lib in str(e).lower() for lib in ("nvrtc", "nvvm", "libnvjitlink")):
            pytest.skip(f"CUDA compiler libraries missing ({type(e).__name__}); typing passed")
        raise
    return ptx


@pytest.mark.parametrize("dk,dv,dtype", [(2, 2, "float32"), (2, 2, "float64"), (5, 3, "float32"), (1, 8, "float64")])
def test_attention_kernel_compiles_to_registers_and_fast_exp(dk, dv, dtype):
    from gpu.attention import attend_kernel

    arr = F32_2 if dtype == "float32" else F64_2
    sig = (arr, arr, arr, types.int64, F64_2, F64_2, F64_3)
    ptx = _ptx(attend_kernel(dk, dv, dtype), sig, fastmath=dtype == "float32")
    assert ".local" not in ptx, "per-thread arrays spilled to local memory"
    if dtype == "float32":
        assert "ex2.approx" in ptx, "the float32 path should use the fast exp"
