"""Type-check the CUDA kernels without a GPU: compile_ptx runs numba's typing first, so a
badly typed kernel fails here even though the simulator (which does no typing) would run it.
When the NVRTC library is missing, PTX generation stops after typing succeeded: that passes."""
import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("typing needs the real numba-cuda target", allow_module_level=True)

cuda = pytest.importorskip("numba.cuda")
from numba import types  # noqa: E402
from numba.core.errors import TypingError  # noqa: E402

F64_2, F32_2, F64_3 = types.float64[:, :], types.float32[:, :], types.float64[:, :, :]


def kernels():
    from gpu import attention

    return [
        (attention._attend_kernel, (F64_2, F64_2, F64_2, types.int64, F64_2, F64_2, F64_3)),
        (attention._attend_kernel, (F32_2, F32_2, F32_2, types.int64, F64_2, F64_2, F64_3)),
    ]


@pytest.mark.parametrize("i", range(2))
def test_kernel_types(i):
    kernel, sig = kernels()[i]
    try:
        cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0), fastmath=True)
    except TypingError:
        raise
    except Exception as e:  # a missing NVRTC/NVVM library: typing already passed
        if "nvrtc" not in str(e).lower() and "nvvm" not in str(e).lower():
            raise
