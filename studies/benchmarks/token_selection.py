"""Benchmark suite ``token_selection``: the selection policies and their one estimator against the
plain NumPy baseline (:func:`sim.token_selection.reference.numpy_baseline`), side by side.

Workload (the study's budget group): Gaussian keys N(0, I_8), q = 64 queries with score spread
1, n = 2^14 and 2^16 keys (quick: 2^12, 2^13), budget m = n/64, 8 repetitions. Four
measurements per query: uniform sampling (m draws with replacement), importance sampling from p
(m draws), exact top-m and the hybrid top-(m/2) + m/2 tail draws, each with the self-normalised
estimator's squared error against the exact output. Implementations:

* ``numpy``  -- the baseline: the full (q, n) score matrix in chunks of 16 queries, softmax,
  outputs, then per query the four selections by ``rng.integers`` / ``searchsorted`` /
  ``argpartition`` and the estimates by fancy indexing;
* ``numba``  -- :func:`sim.token_selection.selection_errors` with the four policies (streaming
  passes, Philox draws, the numba estimator; no score matrix).

Rates: ``pairs_per_s`` = q n / time (query-key pairs: every method scores every key once for
the exact output) for the whole four-policy workload, and per policy for the fast path alone
(``policy_time_s``: one policy per call, its own passes included) with ``draws_per_s`` = q reps m /
time for the sampling policies. Agreement: top-m's error equal to 1e-9 (deterministic); the
random policies' mean errors equal within 5 SE (different random streams). Target: numba >= 1.5x
numpy on the whole workload at every n (the NumPy baseline's score matrix runs on BLAS; the fast
path's gain is that it never holds one, and that its draws need no Python loop).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

import sim.token_selection as S
from sim.token_selection.reference import numpy_baseline
from studies.benchmarks._timing import best_time
from studies.sweep import str_coord

DESCRIPTION = ("token selection, d=8, q=64, n=2^14 and 2^16, m=n/64, 8 reps: uniform, importance, top-k and hybrid "
               "errors, NumPy baseline vs the numba policies")
IMPLS = ("numpy", "numba")
POLICIES = ("uniform", "importance", "topk", "hybrid")
TARGET_SPEEDUP = 1.5
Z = 5.0


def _problem(n, q, d, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n, d))
    u = rng.standard_normal((q, d))
    return u / np.linalg.norm(u, axis=1, keepdims=True), Y


def _policies(m):
    return [S.Uniform(m), S.Importance(m, "p"), S.TopK(m), S.Hybrid(m // 2, m - m // 2)]


def run(quick: bool = False) -> xr.Dataset:
    sizes = np.array([1 << 12, 1 << 13] if quick else [1 << 14, 1 << 16])
    q, d, reps = (32, 8, 4) if quick else (64, 8, 8)
    t = np.zeros((len(IMPLS), sizes.size))
    tp = np.zeros((len(POLICIES), sizes.size))
    mean = np.zeros((len(IMPLS), len(POLICIES), sizes.size))
    se = np.zeros_like(mean)
    S.selection_errors(*_problem(256, 2, d), _policies(8), reps=2)  # compile outside the timings
    for j, n in enumerate(sizes):
        a, Y = _problem(int(n), q, d, seed=j)
        m = int(n) // 64
        res = {}

        def numpy_run(a=a, Y=Y, m=m, res=res):
            res["numpy"] = numpy_baseline(a, Y, Y, m=m, k1=m // 2, b=m - m // 2, reps=reps,
                                          rng=np.random.default_rng(1))

        def numba_run(a=a, Y=Y, m=m, res=res):
            res["numba"] = S.selection_errors(a, Y, _policies(m), reps=reps, seed=1).err2

        t[0, j] = best_time(numpy_run, repeat=2)
        t[1, j] = best_time(numba_run, repeat=3)
        for k, pol in enumerate(_policies(m)):
            tp[k, j] = best_time(lambda pol=pol, a=a, Y=Y: S.selection_errors(a, Y, [pol], reps=reps, seed=1),
                                 repeat=3)
        for i, impl in enumerate(IMPLS):
            e = res[impl]  # (4, q, reps); the fast path's top-k repeats its one value over reps
            per_query = e.mean(axis=2)
            mean[i, :, j] = per_query.mean(axis=1)
            se[i, :, j] = per_query.std(axis=1, ddof=1) / np.sqrt(q)
    pairs = sizes.astype(float) * q
    draws = np.array([reps * q * (n // 64) for n in sizes], dtype=float)
    ds = xr.Dataset(
        {
            "time_s": (("impl", "n"), t, {"units": "s", "long_name": "the four-policy workload, best wall time"}),
            "pairs_per_s": (("impl", "n"), pairs / t, {"units": "1/s", "long_name": "q n / time"}),
            "speedup": (("n",), t[0] / t[1], {"long_name": "numpy time / numba time"}),
            "policy_time_s": (("policy", "n"), tp, {"units": "s", "long_name": "numba, one policy per call"}),
            "policy_pairs_per_s": (("policy", "n"), pairs / tp, {"units": "1/s"}),
            "draws_per_s": (("policy", "n"), np.where(np.arange(len(POLICIES))[:, None] == 2, np.nan, draws / tp),
                            {"units": "1/s", "long_name": "q reps m / time (sampling policies)"}),
            "mean_err2": (("impl", "policy", "n"), mean),
            "mean_err2_se": (("impl", "policy", "n"), se),
        },
        coords={"impl": str_coord(IMPLS), "policy": str_coord(POLICIES), "n": sizes},
        attrs={"queries": q, "d": d, "reps": reps, "budget": "m = n/64", "target_speedup": TARGET_SPEEDUP,
               "workload": "Gaussian N(0, I_d) keys, unit score vectors (sigma = 1), V = I"},
    )
    gap = np.abs(mean[0] - mean[1])
    tol = Z * np.sqrt(se[0] ** 2 + se[1] ** 2)
    top = POLICIES.index("topk")
    ds["verdict_agree"] = ((), bool(np.all(gap[top] <= 1e-9 * np.abs(mean[1, top]))
                                    and np.all(np.delete(gap <= tol, top, axis=0))),
                           {"description": "top-m equal to 1e-9; the random policies' mean errors within 5 SE"})
    ds["verdict_speedup"] = ((), bool(ds["speedup"].values.min() >= TARGET_SPEEDUP),
                             {"description": f"numba >= {TARGET_SPEEDUP}x numpy at every n"})
    return ds


def summary(ds: xr.Dataset) -> str:
    rows = [f"   {'n':>7} {'numpy':>12} {'numba':>12}   (M pairs/s)  speed-up   per policy (numba, M draws/s)"]
    for j, n in enumerate(ds["n"].values):
        pp = ds["pairs_per_s"].values[:, j] / 1e6
        per = ", ".join(f"{p} {v / 1e6:.1f}" for p, v in zip(ds["policy"].values, ds["draws_per_s"].values[:, j])
                        if np.isfinite(v))
        rows.append(f"   {n:>7} {pp[0]:>12.1f} {pp[1]:>12.1f}   {float(ds['speedup'].values[j]):>10.1f}x   {per}")
    rows.append(f"   agreement {'met' if bool(ds['verdict_agree']) else 'MISSED'}, speed-up target "
                f"{'met' if bool(ds['verdict_speedup']) else 'MISSED'} (>= {ds.attrs['target_speedup']}x; q = "
                f"{ds.attrs['queries']}, d = {ds.attrs['d']}, {ds.attrs['reps']} reps, "
                f"device {ds.attrs.get('device', '?')})")
    return "\n".join(rows)
