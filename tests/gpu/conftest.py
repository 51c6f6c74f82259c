"""Fixtures for the GPU tests.

``ptx(kernel, signature, fastmath=False) -> str`` compiles a numba-cuda kernel to sm_90 PTX
without a GPU (the NVRTC/NVVM wheels of the test extra). It runs numba's type inference first,
so a badly typed kernel fails even though the CUDA simulator (which does no typing) would run
it; if the compiler libraries are missing, the test is skipped after typing succeeded. Use it to
assert properties of the generated code: no ``.local`` (per-thread arrays kept in registers),
``ex2.approx`` in float32 paths (fast exp), no ``.f64`` arithmetic where float32 was meant.

Importing :mod:`gpu` here registers its engines and detector with :mod:`sim.backend`, as a
study does when a GPU is asked for, so ``sim`` finds its device engines in these tests.
"""
import os

import pytest

import gpu  # noqa: F401  (registers the device engines with sim.backend)


@pytest.fixture
def ptx():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compilation needs the real numba-cuda target")
    cuda = pytest.importorskip("numba.cuda")
    from numba.core.errors import TypingError

    def compile_ptx(kernel, sig, fastmath: bool = False) -> str:
        func = getattr(kernel, "py_func", kernel)
        try:
            code, _ = cuda.compile_ptx(func, sig, cc=(9, 0), fastmath=fastmath)
        except TypingError:
            raise
        except Exception as e:  # missing compiler libraries: typing already passed
            if any(lib in str(e).lower() for lib in ("nvrtc", "nvvm", "nvjitlink")):
                pytest.skip(f"CUDA compiler libraries missing ({type(e).__name__}); typing passed")
            raise
        return code

    return compile_ptx
