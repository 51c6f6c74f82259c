"""sm_90 PTX of gpu/tensor_attention.py's kernels: typed, registers only, fast exp and float32
logits in the float32 path, no integer division in the feature kernel (see tests/gpu/conftest.py)."""
import re

import pytest
from numba import types

F64_2, F32_2, F64_3 = types.float64[:, :], types.float32[:, :], types.float64[:, :, :]


def _exact_sig(dtype):
    arr = F32_2 if dtype == "float32" else F64_2
    return (arr, arr, arr, arr, arr, types.int64, F64_2, F64_2, F64_3)


@pytest.mark.parametrize("d,dv,dtype", [
    (4, 4, "float32"), (4, 4, "float64"), (1, 1, "float64"), (8, 3, "float32"),
    (16, 16, "float32"), (16, 16, "float64"),  # MAX_DIM: still no spill of the per-thread vectors
])
def test_exact_kernel_compiles_to_registers(ptx, d, dv, dtype):
    from gpu.tensor_attention import MAX_DIM, exact_kernel

    assert max(d, dv) <= MAX_DIM
    code = ptx(exact_kernel(d, dv, dtype), _exact_sig(dtype), fastmath=dtype == "float32")
    assert ".local" not in code, "per-thread arrays spilled to local memory"
    assert "bar.sync" in code  # the shared-memory tree merge
    if dtype == "float32":
        assert "ex2.approx" in code, "the float32 path should use the fast exp"
        assert re.search(r"\bfma\.rn(\.ftz)?\.f32", code), "float32 logits should be float32 FMAs"
    else:
        # (libdevice's float64 exp compares the high word as .f32: only arithmetic is checked)
        assert not re.search(r"\b(add|sub|mul|fma)(\.rn)?(\.ftz)?\.f32\b", code), \
            "the float64 path should not compute in float32"


def test_feature_kernel_compiles_without_local_memory_or_division(ptx):
    from gpu.tensor_attention import feature_kernel

    I64 = types.int64[:]
    code = ptx(feature_kernel(), (F64_2, I64, I64, types.float64[:], F64_2))
    assert ".local" not in code
    assert not re.search(r"\b(div|rem)\.", code), "the 2-D grid needs no index division"
    assert "mul.f64" in code or "mul.rn.f64" in code
