"""Benchmark suite ``attention``: token-query pairs per second of softmax attention.

The uniform-convergence study's workload: n = 65 536 Gaussian tokens in d = 2, 256 queries on
the sphere of radius R for R = 1..8 (scores up to ~R * 4). The tokens are those of a
:class:`sim.attention.TokenStream`, materialised, so the generated-token kernel attends to the
same tokens as the others. Implementations, side by side in one process, each checked against
the float64 reference (max error relative to ``max |token|``):

* ``naive``      -- materialise the q x n score matrix in NumPy, exp, normalise (float64);
* ``stream``     -- the array-namespace online softmax (the code path CuPy arrays take), float64;
* ``numba``      -- the CPU fast path (float64 accumulators, vectorised exp);
* ``numba_f32``  -- the same with float32 scores and weights, float64 sums (``precision="float32"``);
* ``generated_f32`` -- tokens generated inside the kernel from the Philox stream (O(block)
  memory; what ``studies.convergence --preset scale`` runs), float32 scores;
* ``torch_sdpa_f32`` / ``torch_sdpa_f64`` -- PyTorch's fused ``scaled_dot_product_attention`` on
  the CPU (scale 1, the scores already carry A), the peer a user would pick; rows only where
  ``torch`` is importable (an optional peer, not a dependency: ``pip install torch``).

Targets: numba >= 1e9 pairs/s on 2 cores and >= 10x naive at every R; the fastest workbench path
>= 1.5x PyTorch's float32 SDPA at every R.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from sim.attention import TokenStream, softmax_attention
from sim.kernels_cpu import cpu_threads
from studies.benchmarks._timing import best_time
from studies.sweep import str_coord
from theory.token_sample import sphere_directions

DESCRIPTION = ("softmax attention, n=65536 tokens x 256 queries, d=2, R=1..8: naive, stream, numba float64/float32, "
               "generated tokens, PyTorch SDPA")
OURS = ("naive", "stream", "numba", "numba_f32", "generated_f32")
PEERS = ("torch_sdpa_f32", "torch_sdpa_f64")
FAST = ("numba", "numba_f32", "generated_f32")  # the workbench's fast paths
TARGET_PAIRS_PER_S = 1e9
TARGET_SPEEDUP = 10.0
TARGET_VS_TORCH = 1.5


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _impl(name, tokens, stream):
    """``fn(a) -> out (q, d)`` of one implementation."""
    if name in ("naive", "stream", "numba"):
        return lambda a: softmax_attention(a, tokens, method=name)[0]
    if name == "numba_f32":
        return lambda a: softmax_attention(a, tokens, precision="float32")[0]
    if name == "generated_f32":
        return lambda a: softmax_attention(a, stream, precision="float32")[0]
    torch = _torch()
    dt = torch.float32 if name.endswith("f32") else torch.float64
    K = torch.from_numpy(tokens).to(dt)[None, None]

    def sdpa(a):
        Q = torch.from_numpy(a).to(dt)[None, None]
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(Q, K, K, scale=1.0)[0, 0].double().numpy()
    return sdpa


def run(quick: bool = False) -> xr.Dataset:
    n, q, d = (8192, 64, 2) if quick else (65536, 256, 2)
    radii = np.array([1.0, 8.0]) if quick else np.arange(1.0, 9.0)
    stream = TokenStream((0x5EED, 0), n, d)
    tokens = stream.materialise()
    dirs = sphere_directions(d, q)
    torch = _torch()
    impls = OURS + (PEERS if torch is not None else ())
    if torch is not None:
        torch.set_num_threads(cpu_threads())
    t = np.zeros((len(impls), len(radii)))
    err = np.zeros_like(t)
    scale = np.abs(tokens).max()
    refs = [softmax_attention(R * dirs, tokens, method="numba")[0] for R in radii]
    # one implementation at a time, fast paths first: BLAS threads left spinning by the
    # materialising runs would otherwise steal the cores from the next implementation
    for i in reversed(range(len(impls))):
        fn = _impl(impls[i], tokens, stream)
        for j, R in enumerate(radii):
            a = R * dirs
            err[i, j] = np.abs(fn(a) - refs[j]).max() / scale
            t[i, j] = best_time(lambda: fn(a), repeat=5)
    pairs = float(n) * q
    ds = xr.Dataset(
        {
            "time_s": (("impl", "R"), t, {"units": "s", "long_name": "best of 5 wall times"}),
            "pairs_per_s": (("impl", "R"), pairs / t, {"units": "1/s"}),
            "max_rel_err": (("impl", "R"), err, {"long_name": "max |out - numba float64| / max |token|"}),
            "speedup_vs_naive": (("impl", "R"), t[0][None, :] / t),
        },
        coords={"impl": str_coord(impls), "R": radii},
        attrs={"n": n, "queries": q, "d": d, "dtype": "float64 unless the impl says f32",
               "target_pairs_per_s": TARGET_PAIRS_PER_S, "target_speedup": TARGET_SPEEDUP,
               "target_vs_torch": TARGET_VS_TORCH,
               "peers": ("torch " + torch.__version__) if torch is not None else
                        "PyTorch not installed: its rows are left out (pip install torch to compare)"},
    )
    fast = ds["pairs_per_s"].sel(impl="numba")
    ds["verdict_throughput"] = ((), bool(fast.min() >= TARGET_PAIRS_PER_S),
                                {"description": f"numba >= {TARGET_PAIRS_PER_S:.0e} pairs/s at every R"})
    ds["verdict_speedup"] = ((), bool(ds["speedup_vs_naive"].sel(impl="numba").min() >= TARGET_SPEEDUP),
                             {"description": f"numba >= {TARGET_SPEEDUP}x naive at every R"})
    f64 = [k for k, m in enumerate(impls) if not m.endswith("f32")]
    f32 = [k for k, m in enumerate(impls) if m.endswith("f32")]
    ds["verdict_agree"] = ((), bool(err[f64].max() <= 1e-10 and err[f32].max() <= 1e-5),
                           {"description": "float64 impls within 1e-10 and float32 ones within 1e-5 of numba float64"})
    best = ds["pairs_per_s"].sel(impl=list(FAST)).max("impl")
    ds["fastest_over_torch_f32"] = (("R",), (best / ds["pairs_per_s"].sel(impl="torch_sdpa_f32")).values
                                    if torch is not None else np.full(len(radii), np.nan),
                                    {"long_name": "fastest workbench path / PyTorch SDPA float32, pairs/s ratio"})
    if torch is not None:
        ds["verdict_vs_torch"] = ((), bool(ds["fastest_over_torch_f32"].min() >= TARGET_VS_TORCH),
                                  {"description": f"fastest workbench path >= {TARGET_VS_TORCH}x PyTorch SDPA float32 "
                                                  "at every R"})
    return ds


def summary(ds: xr.Dataset) -> str:
    impls = [str(i) for i in ds.impl.values]
    rows = [f"   {'R':>4} " + " ".join(f"{i:>14}" for i in impls) + "   (G pairs/s)  fastest/torch f32"]
    for R in ds.R.values:
        pp = ds["pairs_per_s"].sel(R=R).values / 1e9
        ratio = float(ds["fastest_over_torch_f32"].sel(R=R))
        rows.append(f"   {R:>4g} " + " ".join(f"{v:>14.3f}" for v in pp)
                    + (f"   {ratio:14.2f}x" if ratio == ratio else "   -"))
    errs = ", ".join(f"{i} {float(ds['max_rel_err'].sel(impl=i).max()):.1e}" for i in impls)
    rows.append(f"   max error vs numba float64 (relative to max |token|): {errs}")
    rows.append(f"   throughput target {'met' if bool(ds['verdict_throughput']) else 'MISSED'}, "
                f"speedup target {'met' if bool(ds['verdict_speedup']) else 'MISSED'}"
                + (f", vs-PyTorch target {'met' if bool(ds['verdict_vs_torch']) else 'MISSED'}"
                   if "verdict_vs_torch" in ds else f" ({ds.attrs['peers']})")
                + f" (n={ds.attrs['n']}, q={ds.attrs['queries']}, d={ds.attrs['d']}, device {ds.attrs.get('device', '?')})")
    return "\n".join(rows)
