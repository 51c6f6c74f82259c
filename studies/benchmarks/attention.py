"""Benchmark suite ``attention``: token-query pairs per second of softmax attention.

The uniform-convergence study's workload (issue: foundation): n = 65 536 Gaussian tokens in
d = 2, 256 queries on the sphere of radius R for R = 1..8 (scores up to ~R * 4). Implementations,
side by side in one process and checked against each other (max error relative to max |value|):

* ``naive``  — materialise the q x n score matrix in NumPy, exp, normalise (float64);
* ``stream`` — the array-namespace online softmax (the code path CuPy arrays take), float64;
* ``numba``  — the CPU fast path (float64 accumulators, vectorised exp).

Targets: numba >= 1e9 pairs/s on 2 cores and >= 10x naive at every R.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from sim.attention import softmax_attention
from studies.benchmarks._timing import best_time
from studies.sweep import str_coord
from theory.token_sample import sphere_directions

DESCRIPTION = "softmax attention, n=65536 tokens x 256 queries, d=2, R=1..8: naive vs stream vs numba"
IMPLS = ("naive", "stream", "numba")
TARGET_PAIRS_PER_S = 1e9
TARGET_SPEEDUP = 10.0


def run(quick: bool = False) -> xr.Dataset:
    n, q, d = (8192, 64, 2) if quick else (65536, 256, 2)
    radii = np.array([1.0, 8.0]) if quick else np.arange(1.0, 9.0)
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((n, d))
    dirs = sphere_directions(d, q)
    t = np.zeros((len(IMPLS), len(radii)))
    err = np.zeros_like(t)
    scale = np.abs(tokens).max()
    refs = [softmax_attention(R * dirs, tokens, method="naive")[0] for R in radii]
    # one implementation at a time, fast path first: BLAS threads left spinning by the
    # materialising runs would otherwise steal the cores from the next implementation
    for i in reversed(range(len(IMPLS))):
        impl = IMPLS[i]
        for j, R in enumerate(radii):
            a = R * dirs
            out, _ = softmax_attention(a, tokens, method=impl)
            err[i, j] = np.abs(out - refs[j]).max() / scale
            t[i, j] = best_time(lambda: softmax_attention(a, tokens, method=impl), repeat=5)
    pairs = float(n) * q
    ds = xr.Dataset(
        {
            "time_s": (("impl", "R"), t, {"units": "s", "long_name": "best of 5 wall times"}),
            "pairs_per_s": (("impl", "R"), pairs / t, {"units": "1/s"}),
            "max_rel_err": (("impl", "R"), err, {"long_name": "max |out - naive| / max |token|"}),
            "speedup_vs_naive": (("impl", "R"), t[0][None, :] / t),
        },
        coords={"impl": str_coord(IMPLS), "R": radii},
        attrs={"n": n, "queries": q, "d": d, "dtype": "float64",
               "target_pairs_per_s": TARGET_PAIRS_PER_S, "target_speedup": TARGET_SPEEDUP},
    )
    fast = ds["pairs_per_s"].sel(impl="numba")
    ds["verdict_throughput"] = ((), bool(fast.min() >= TARGET_PAIRS_PER_S),
                                {"description": f"numba >= {TARGET_PAIRS_PER_S:.0e} pairs/s at every R"})
    ds["verdict_speedup"] = ((), bool(ds["speedup_vs_naive"].sel(impl="numba").min() >= TARGET_SPEEDUP),
                             {"description": f"numba >= {TARGET_SPEEDUP}x naive at every R"})
    ds["verdict_agree"] = ((), bool(err.max() <= 1e-10), {"description": "every impl within 1e-10 of naive"})
    return ds


def summary(ds: xr.Dataset) -> str:
    rows = [f"   {'R':>4} " + " ".join(f"{i + ' pairs/s':>16}" for i in ds.impl.values) + "   numba/naive"]
    for R in ds.R.values:
        pp = ds["pairs_per_s"].sel(R=R).values
        sp = float(ds["speedup_vs_naive"].sel(impl="numba", R=R))
        rows.append(f"   {R:>4g} " + " ".join(f"{v:>16.3e}" for v in pp) + f"   {sp:10.1f}x")
    rows.append(f"   max error vs naive: {float(ds['max_rel_err'].max()):.1e}; "
                f"throughput target {'met' if bool(ds['verdict_throughput']) else 'MISSED'}, "
                f"speedup target {'met' if bool(ds['verdict_speedup']) else 'MISSED'} "
                f"(n={ds.attrs['n']}, q={ds.attrs['queries']}, d={ds.attrs['d']}, device {ds.attrs.get('device', '?')})")
    return "\n".join(rows)
