"""The first-run fixes on the CUDA simulator: the detection probe launches, a launch whose block
is clamped runs, and the attention kernel's values-are-keys path equals the general one."""
import os

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # imported by the main process: nothing to do
    pytest.skip("run by tests/gpu/test_cudasim_suite.py with NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

from numba import cuda  # noqa: E402

from gpu import detect, launch  # noqa: E402
from gpu.attention import softmax_attention  # noqa: E402


def test_the_detection_probe_compiles_and_launches():
    assert detect.launch_probe_kernel() == detect.PROBE_VALUE
    assert detect.toolchain()["simulator"] is True


def test_a_clamped_launch_runs_and_keeps_its_block_on_the_simulator():
    @cuda.jit
    def fill(out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = i

    out = cuda.to_device(np.zeros(20))
    run = launch.ClampedLaunch(fill, 3, 8)
    run(out)
    run(out)  # the configuration is reused
    assert run.threads == 8  # the simulator enforces no register limit
    np.testing.assert_array_equal(out.copy_to_host(), np.arange(20.0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_values_that_are_the_keys_give_the_same_numbers(dtype):
    rng = np.random.default_rng(3)
    keys = rng.standard_normal((70, 2)).astype(dtype)
    a = (rng.standard_normal((2, 2)) * 3).astype(dtype)
    same, lse_same = softmax_attention(a, keys, tpb=16, slices=2)  # values is keys: one load
    apart, lse_apart = softmax_attention(a, keys, keys.copy(), tpb=16, slices=2)
    np.testing.assert_array_equal(same, apart)
    np.testing.assert_array_equal(lse_same, lse_apart)
