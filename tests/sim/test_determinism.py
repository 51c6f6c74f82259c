"""Bit-exact reproducibility of the CPU kernels across processes.

A sweep resumed in a new process, or a cell computed by a pool worker, must reproduce the
numbers of an uninterrupted serial run exactly. Numba's ``parallel=True`` broke that: a cached
compilation computed ~1 ulp differently from a fresh one. This test runs the kernels in two
child processes sharing an empty cache directory, the first compiling fresh and the second
loading the cache, and requires identical bits.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, numpy as np
from sim.attention import softmax_attention, self_attention_moments, hardmax_attention
from sim.tensor_attention import tensor_attention, polynomial_attention
rng = np.random.default_rng(0)
out = {}
for d, n, q in ((2, 20000, 300), (3, 20000, 300)):
    K = rng.standard_normal((n, d)); a = rng.standard_normal((q, d)) * 2
    out[f"att{d}"] = softmax_attention(a, K)[0]
X = rng.standard_normal((2000, 4))
out["mom"] = self_attention_moments(X, np.eye(4) * 0.7, None, [0.5, 2.0])[1]
out["hard"] = hardmax_attention(a, K)[1]
Q, K1, K2 = (rng.standard_normal((200, 3)) * 0.3 for _ in range(3))
V1, V2 = rng.standard_normal((200, 2)), rng.standard_normal((200, 2))
out["tensor"] = tensor_attention(Q, K1, K2, V1, V2)
out["poly"] = polynomial_attention(Q, [K1, K2], [V1, V2], degree=4).out
np.savez(sys.argv[1], **out)
"""


def test_fresh_and_cached_compilations_agree_bit_for_bit(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    for name in ("fresh", "cached"):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / f"{name}.npz")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((tmp_path / "cache").rglob("*.nbi")), "the second run did not load a cache"
    fresh, cached = np.load(tmp_path / "fresh.npz"), np.load(tmp_path / "cached.npz")
    for key in fresh.files:
        np.testing.assert_array_equal(fresh[key], cached[key], err_msg=key)
