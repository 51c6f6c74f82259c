"""sm_90 PTX of the in-context-regression kernels (see the ``ptx`` fixture in conftest.py): typed,
no per-thread arrays in local memory, Philox's 64-bit products as ``mul.hi.u64`` (one per
multiplier and round: 20 per generator), float64 only, no atomics (gradients are reduced in a
fixed order), the prompt workspace in dynamic shared memory and the per-run reduction buffer
within the static limit."""
import re

import pytest
from numba import types

from gpu import icl_regression as gi

F64, I64, U64 = types.float64, types.int64, types.uint64
F1, F2, F3, F4 = F64[::1], F64[:, ::1], F64[:, :, ::1], F64[:, :, :, ::1]


def _prompt_sig():
    return (F4, F4, I64[::1], I64[::1], F1, U64[:, ::1], F3, F2, F3, F2, F2) + (I64,) * 6 + (F2, F3, F3)


def _static_shared(code):
    return sum(int(b) for b in re.findall(r"\.shared\s+\.align\s+\d+\s+\.b8\s+\S+\[(\d+)\]", code))


def _common(code):
    assert ".local" not in code, "per-thread state spilled to local memory"
    assert not re.search(r"\.f32\b", code), "the trainer computes in float64 only"
    assert not re.search(r"^\s*(@!?%p\d+\s+)?(atom|red)\.", code, re.M), "no atomics: partials are reduced in order"


@pytest.mark.parametrize("d,N,H,grad,workspace", [
    (5, 1, 8, True, "shared"), (5, 1, 4, False, "shared"), (2, 1, 2, True, "global"), (6, 2, 4, False, "global"),
])
def test_prompt_kernel(ptx, d, N, H, grad, workspace):
    code = ptx(gi.prompt_kernel(d, N, H, grad, workspace), _prompt_sig())
    _common(code)
    assert code.count("mul.hi.u64") == 20, "one inlined Philox4x64-10: 2 products x 10 rounds"
    if workspace == "shared" or grad:  # the workspace, or the gradient accumulators
        assert re.search(r"\.extern\s+\.shared", code) and "ld.shared.f64" in code
    assert "bar.sync" in code
    assert _static_shared(code) == 0


@pytest.mark.parametrize("D,N,H", [(6, 1, 8), (3, 1, 2), (8, 2, 4)])
def test_per_run_kernels(ptx, D, N, H):
    code = ptx(gi.grad_kernel(D, N, H), (F2, F3, F64, F64, I64, I64, I64, F2, F1, F1, I64[::1]))
    _common(code)
    assert _static_shared(code) == 8 * (H * D * D + H * D * N + 1) <= gi.SHARED_LIMIT
    code = ptx(gi.update_kernel(D, N, H), (F2, F2, F2, F2, I64[::1], I64) + (F64,) * 8 + (F4, F4))
    _common(code)
    assert "sqrt.rn.f64" in code  # Adam's denominator, IEEE sqrt


def test_generator_kernels(ptx):
    code = ptx(gi.gen_kernel(5, 1, "shared"), (U64, U64, F2, F1, F2, F1, F1) + (I64,) * 5 + (F2, F3, F2, F2, F3))
    _common(code)
    assert code.count("mul.hi.u64") == 20
    code = ptx(gi.philox_kernel, (U64,) * 5 + (U64[::1],))
    _common(code)
    assert code.count("mul.hi.u64") == 20
    code = ptx(gi.normals_kernel, (U64,) * 5 + (I64, F1))
    _common(code)
    assert code.count("mov.b64") >= 2, "log's exponent split is a register bit-cast (mov.b64)"


def test_shared_budget_of_the_training_configurations():
    # the trainer (d = 5, L = 40, H <= 8) keeps everything in shared memory, ~11 KB a block
    wl = gi.workspace_len(5, 1, 8, 40, True)
    acc = 8 * 6 * 7 + 1
    assert 8 * (wl + acc) <= 12 * 1024
    # evaluation switches to the global workspace only for long prompts
    assert 8 * (gi.workspace_len(5, 1, 8, 400, False) + 1) <= gi.SHARED_LIMIT
    assert 8 * (gi.workspace_len(5, 1, 8, 1000, False) + 1) > gi.SHARED_LIMIT
