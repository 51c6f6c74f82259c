"""sm_90 PTX of the random-feature attention kernel (see the ``ptx`` fixture in conftest.py):
typed, per-thread vectors in registers (no ``.local``) up to MAX_DIM, single-precision scores
with float64 accumulators for float32 inputs, the fast exp in the float32 softmax, and a shared
output tile of the expected size within the static limit."""
import re

import pytest
from numba import types

from gpu import random_features as grf

F32, F64 = types.float32, types.float64


def _sig(score, out):
    return (score[:, ::1], score[:, :, ::1], out[:, :, ::1] if score is out else score[:, :, ::1],
            types.float64, out[:, ::1])


def _shared_bytes(code):
    return sum(int(b) for b in re.findall(r"\.shared\s+\.align\s+\d+\s+\.b8\s+\S+\[(\d+)\]", code))


@pytest.mark.parametrize("d,augment,activation,dtype", [
    (8, True, "relu", "float64"), (8, True, "softmax", "float32"), (16, True, "relu", "float32"),
    (16, True, "softmax", "float64"), (3, False, "identity", "float64"), (grf.MAX_DIM - 1, True, "softmax", "float32"),
    (grf.MAX_DIM - 1, True, "relu", "float64"),
])
def test_feature_kernel_registers_only(ptx, d, augment, activation, dtype):
    D = d + 1 if augment else d
    t = F32 if dtype == "float32" else F64
    itemsize = 4 if dtype == "float32" else 8
    hb = 32
    sb = grf.samples_per_block(hb, D, itemsize)
    kern = grf.rfa_kernel(d, augment, D, activation, dtype, dtype, hb, sb)
    code = ptx(kern, _sig(t, t), fastmath=dtype == "float32")
    assert ".local" not in code, "per-thread arrays spilled to local memory"
    assert _shared_bytes(code) == sb * hb * D * itemsize <= 48 * 1024
    if dtype == "float32":
        assert re.search(r"fma\.rn(\.ftz)?\.f32", code), "scores should be single precision"
        assert re.search(r"(fma\.rn|add\.rn|add)\.f64", code), "accumulators should be float64"
        if activation == "softmax":
            assert "ex2.approx" in code, "the float32 softmax should use the fast exp"
    else:
        # (libdevice's double exp range check compares in .f32: only arithmetic counts)
        assert not re.search(r"\b(fma|mul|add|sub)\.\S*f32", code), "float64 path should not compute in float32"


def test_value_on_x_and_float32_output_of_float64_scores(ptx):
    kern = grf.rfa_kernel(5, True, 5, "relu", "float64", "float32", 32, 8)
    code = ptx(kern, _sig(F64, F32))
    assert ".local" not in code
    assert _shared_bytes(code) == 8 * 32 * 5 * 4


def test_default_launch_shape_keeps_the_tile_small():
    for dv in range(1, grf.MAX_DIM + 1):
        for itemsize in (4, 8):
            sb = grf.samples_per_block(32, dv, itemsize)
            assert 1 <= sb <= 8 and sb * 32 * dv * itemsize <= 32768
    assert grf.samples_per_block(32, 9, 8) == 8  # d = 8, the study's default: 256-thread blocks
