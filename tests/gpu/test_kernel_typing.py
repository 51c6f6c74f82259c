"""sm_90 PTX of the attention kernels: typed, registers only, fast exp in float32 (see conftest)."""
import pytest
from numba import types

F64_2, F32_2, F64_3 = types.float64[:, :], types.float32[:, :], types.float64[:, :, :]


@pytest.mark.parametrize("dk,dv,dtype", [(2, 2, "float32"), (2, 2, "float64"), (5, 3, "float32"), (1, 8, "float64")])
def test_attention_kernel_compiles_to_registers_and_fast_exp(ptx, dk, dv, dtype):
    from gpu.attention import attend_kernel

    arr = F32_2 if dtype == "float32" else F64_2
    code = ptx(attend_kernel(dk, dv, dtype), (arr, arr, arr, types.int64, types.int64, F64_2, F64_2, F64_3),
               fastmath=dtype == "float32")
    assert ".local" not in code, "per-thread arrays spilled to local memory"
    if dtype == "float32":
        assert "ex2.approx" in code, "the float32 path should use the fast exp"
