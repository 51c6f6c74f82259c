"""Runs the ``cudasim`` tests (numba-cuda kernels on the CUDA simulator) in their own process.

``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is first imported, which the main test
process has long done, so the kernels' tests run in a child pytest. Its exit code 5 ("no tests
collected") is a failure: it would mean the kernel tests silently vanished.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cudasim_kernels_in_a_separate_process():
    pytest.importorskip("numba.cuda")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cudasim", "-p", "no:cacheprovider",
         "-W", "ignore::RuntimeWarning", "tests/gpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode != 5, "no cudasim tests were collected:\n" + tail
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout
