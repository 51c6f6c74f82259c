"""Benchmark suite ``random_features``: feature building and the ridge lambda path.

The random-feature attention study's workload (default sizes: d = 8, N = 8 keys, M = 128
heads, so 1152 features; 4096 training samples; 15 lambdas), side by side in one process and
checked against each other:

* features: ``loop`` — one sample at a time (the scores and the key average of every head as
  small per-sample products, the obviously-correct reference) vs ``batched`` — the chunked
  BLAS-3 path of :func:`sim.random_features.rfa_features`; samples per second;
* ridge: ``solve`` — one dense linear solve per lambda (the naive reference) vs ``path`` — all
  lambdas from one symmetric eigendecomposition (:func:`sim.random_features.ridge_path`);
* ``cell`` — one full families cell of the study (features, nested n = 256..4096, validation
  choice of lambda, test risk), the unit the default run's 2-minute budget is made of.

Targets (regression guards; the issue sets no speed target besides the study's 2-minute default
run): batched features >= 2x the per-sample loop (which is already vectorised over heads); the
lambda path no slower than the per-lambda solves (one eigendecomposition against 15 solves).

GPU rows (only when :func:`studies.benchmarks._timing.gpu_ready`; a CPU-only machine produces exactly the dataset
above): on ``n_gpu`` samples (65536, quick 8192; same d, N, M) the features by ``batched_cupy``
(the same BLAS-3 code on CuPy arrays), ``cuda_f64`` and ``cuda_f32`` (the numba-cuda kernel of
:mod:`gpu.random_features`, float64 or float32 inputs, float64 accumulators), each checked against
the CPU features (<= 1e-12 / 1e-5 of ``max |phi|``); the ridge path and one families cell on device
arrays (device Gram, ``cupy.linalg.eigh``). Target: ``cuda_f64`` >= 10x the CPU batched path in
samples per second. Timings synchronise the device before the clock stops.
"""
from __future__ import annotations

import math
import time

import numpy as np
import xarray as xr

from sim import random_features as rs
from studies.benchmarks._timing import best_time, gpu_ready

DESCRIPTION = ("random-feature attention, d=8, N=8, M=128 (1152 features): per-sample loop vs batched "
               "features; per-lambda solves vs one-eigendecomposition ridge path; one study cell")
TARGET_FEATURE_SPEEDUP = 2.0
TARGET_PATH_SPEEDUP = 1.0
TARGET_GPU_FEATURE_SPEEDUP = 10.0


def _loop_features(x0, X, W):
    n, N, d = X.shape
    M, D, _ = W.shape
    out = np.empty((n, M * D))
    for p in range(n):
        a0 = np.append(x0[p], 1.0)
        aX = np.concatenate([X[p], np.ones((N, 1))], axis=1)
        sc = np.einsum("j,mjk,ik->mi", a0, W, aX)  # (M, N)
        out[p] = (np.maximum(sc, 0.0) / N @ aX).ravel() / math.sqrt(M)
    return out


def _solve_path(phi, y, phi_val, y_val, lambdas):
    n, P = phi.shape
    mu, ybar = phi.mean(axis=0), y.mean(axis=0)
    pc = phi - mu
    G, b = pc.T @ pc, pc.T @ (y - ybar)
    out = np.empty((len(lambdas), y.shape[1]))
    for i, lam in enumerate(lambdas):
        v = np.linalg.solve(G + n * lam * np.eye(P), b)
        out[i] = np.mean(((phi_val - mu) @ v + ybar - y_val) ** 2, axis=0)
    return out


def run(quick: bool = False) -> xr.Dataset:
    d, N = 8, 8
    M = 32 if quick else 128
    n_feat, n_loop = (512, 32) if quick else (4096, 128)
    n_fit, n_val = (1024, 256) if quick else (4096, 1024)
    rng = np.random.default_rng(0)
    x0, X = rs.sample_inputs(rng, max(n_feat, n_fit + n_val), N, d)
    W = rs.draw_heads(rng, M, d)
    ref = _loop_features(x0[:n_loop], X[:n_loop], W)
    fast = rs.rfa_features(x0[:n_loop], X[:n_loop], W)
    feat_err = float(np.abs(fast - ref).max())
    t_loop = best_time(lambda: _loop_features(x0[:n_loop], X[:n_loop], W), repeat=3)
    t_batch = best_time(lambda: rs.rfa_features(x0[:n_feat], X[:n_feat], W), repeat=3)
    feat_rate = np.array([n_loop / t_loop, n_feat / t_batch])

    beta, S = rs.draw_target_params(rng, d)
    Y = rs.target_values(["keys2", "pair1", "attn", "keys3"], x0, X, beta, S)
    phi = rs.rfa_features(x0[:n_fit + n_val], X[:n_fit + n_val], W)
    lambdas = np.geomspace(1e-7, 1.0, 15)
    tr, va = slice(0, n_fit), slice(n_fit, n_fit + n_val)
    path = rs.ridge_path(phi[tr], Y[tr], [n_fit], phi[va], Y[va], phi[va], Y[va], lambdas)["val_path"][0]
    naive = _solve_path(phi[tr], Y[tr], phi[va], Y[va], lambdas)
    path_err = float(np.abs(path - naive).max() / np.abs(naive).max())
    t_solve = best_time(lambda: _solve_path(phi[tr], Y[tr], phi[va], Y[va], lambdas), repeat=3)
    t_path = best_time(lambda: rs.ridge_path(phi[tr], Y[tr], [n_fit], phi[va], Y[va], phi[va], Y[va], lambdas),
                       repeat=3)

    # one families cell of the default study (features + nested fits + test), timed once
    n_list = [256, 512, 1024, 2048, 4096] if not quick else [256, 512, 1024]
    nt = 2048 if not quick else 512
    xc0, XC = rs.sample_inputs(rng, n_list[-1] + n_val + nt, N, d)
    F = rs.target_values(["keys1", "keys2", "keys3", "pair1", "pair2", "attn", "keykey"], xc0, XC, beta, S)
    t0 = time.perf_counter()
    pc = rs.model_features("rfa", rng, xc0, XC, M, rs.FeatureConfig())
    nm = n_list[-1]
    rs.ridge_path(pc[:nm], F[:nm], n_list, pc[nm:nm + n_val], F[nm:nm + n_val], pc[nm + n_val:], F[nm + n_val:],
                  lambdas)
    t_cell = time.perf_counter() - t0

    ds = xr.Dataset(
        {
            "feature_samples_per_s": (("feature_impl",), feat_rate, {"units": "1/s"}),
            "feature_wall_s": (("feature_impl",), np.array([t_loop, t_batch]),
                               {"units": "s", "long_name": "best of 3 (loop on n_loop samples, batched on n_feat)"}),
            "feature_time_s": (("feature_impl",), 1.0 / feat_rate,
                               {"units": "s", "long_name": "wall time per sample (best of 3)"}),
            "ridge_time_s": (("ridge_impl",), np.array([t_solve, t_path]),
                             {"units": "s", "long_name": "best of 3, all 15 lambdas, one training size"}),
            "cell_time_s": ((), t_cell, {"units": "s", "long_name": "one families cell (rfa), timed once"}),
            "feature_max_abs_err": ((), feat_err),
            "ridge_max_rel_err": ((), path_err, {"long_name": "validation MSE path vs per-lambda solves"}),
        },
        coords={"feature_impl": np.array(["loop", "batched"], dtype=object),
                "ridge_impl": np.array(["solve", "path"], dtype=object)},
        attrs={"d": d, "N": N, "M": M, "features": M * (d + 1), "n_feat": n_feat, "n_loop": n_loop,
               "n_fit": n_fit, "n_val": n_val, "lambdas": len(lambdas), "dtype": "float64",
               "target_feature_speedup": TARGET_FEATURE_SPEEDUP, "target_path_speedup": TARGET_PATH_SPEEDUP},
    )
    sp_f = feat_rate[1] / feat_rate[0]
    sp_r = t_solve / t_path
    ds["feature_speedup"] = ((), sp_f)
    ds["ridge_speedup"] = ((), sp_r)
    ds["verdict_feature_speedup"] = ((), bool(sp_f >= TARGET_FEATURE_SPEEDUP),
                                     {"description": f"batched >= {TARGET_FEATURE_SPEEDUP}x the per-sample loop"})
    ds["verdict_path_speedup"] = ((), bool(sp_r >= TARGET_PATH_SPEEDUP),
                                  {"description": "one-eigendecomposition path no slower than per-lambda solves"})
    ds["verdict_agree"] = ((), bool(feat_err <= 1e-12 and path_err <= 1e-6),
                           {"description": "features within 1e-12, validation paths within 1e-6 relative"})
    if gpu_ready():
        _gpu_rows(ds, quick=quick, M=M, d=d, N=N, phi=phi, Y=Y, tr=tr, va=va, lambdas=lambdas, path=path,
                  cell=(xc0, XC, F, n_list, n_val, nt))
    return ds


def _gpu_rows(ds, *, quick, M, d, N, phi, Y, tr, va, lambdas, path, cell):
    """The GPU implementations side by side (adds ``gpu_*`` variables and verdicts to ``ds``)."""
    import cupy as cp

    from sim.backend import make_rng

    def sync(f):
        def g():
            out = f()
            cp.cuda.Device().synchronize()
            return out
        return g

    n_gpu = 8192 if quick else 65536
    rng = np.random.default_rng(1)
    x0, X = rs.sample_inputs(rng, n_gpu, N, d)
    W = rs.draw_heads(rng, M, d)
    n_chk = 512
    ref = rs.rfa_features(x0[:n_chk], X[:n_chk], W)
    scale = float(np.abs(ref).max())
    g64 = [cp.asarray(t) for t in (x0, X, W)]
    g32 = [cp.asarray(t, dtype=cp.float32) for t in (x0, X, W)]
    impls = {
        "batched_cupy": lambda: rs.rfa_features(*g64, method="batched"),
        "cuda_f64": lambda: rs.rfa_features(*g64, method="cuda"),
        "cuda_f32": lambda: rs.rfa_features(*g32, method="cuda"),
    }
    times, errs = [], []
    for f in impls.values():
        out = sync(f)()
        errs.append(float(np.abs(cp.asnumpy(out[:n_chk]).astype(float) - ref).max()) / scale)
        del out
        times.append(best_time(sync(f), repeat=3))
    t = np.array(times)
    errs = np.array(errs)
    phi_g, Y_g = cp.asarray(phi), cp.asarray(Y)

    def gpu_path():
        return rs.ridge_path(phi_g[tr], Y_g[tr], [tr.stop], phi_g[va], Y_g[va], phi_g[va], Y_g[va], lambdas)

    gp = sync(gpu_path)()["val_path"][0]
    ridge_err = float(np.abs(gp - path).max() / np.abs(path).max())
    t_ridge = best_time(sync(gpu_path), repeat=3)
    xc0, XC, F, n_list, n_val, nt = cell
    xg, Xg, Fg = cp.asarray(xc0), cp.asarray(XC), cp.asarray(F)
    nm = n_list[-1]

    def gpu_cell():
        pc = rs.model_features("rfa", make_rng(np.random.SeedSequence(2), "gpu"), xg, Xg, M, rs.FeatureConfig())
        rs.ridge_path(pc[:nm], Fg[:nm], n_list, pc[nm:nm + n_val], Fg[nm:nm + n_val], pc[nm + n_val:],
                      Fg[nm + n_val:], lambdas)

    sync(gpu_cell)()  # warm-up (kernel compilation for these shapes, cuSOLVER workspaces)
    t_cell = best_time(sync(gpu_cell), repeat=1)
    ds.coords["gpu_feature_impl"] = np.array(list(impls), dtype=object)
    ds["gpu_feature_time_s"] = (("gpu_feature_impl",), t, {"units": "s", "long_name": "best of 3 on n_gpu samples"})
    ds["gpu_feature_samples_per_s"] = (("gpu_feature_impl",), n_gpu / t, {"units": "1/s"})
    ds["gpu_feature_max_rel_err"] = (("gpu_feature_impl",), errs,
                                     {"long_name": "max |phi_gpu - phi_cpu| / max |phi_cpu| on the first 512 samples"})
    ds["gpu_ridge_time_s"] = ((), t_ridge, {"units": "s", "long_name": "ridge path on device arrays, best of 3"})
    ds["gpu_ridge_max_rel_err"] = ((), ridge_err)
    ds["gpu_cell_time_s"] = ((), t_cell, {"units": "s", "long_name": "one families cell (rfa) on the GPU"})
    ds.attrs.update({"n_gpu": n_gpu, "target_gpu_feature_speedup": TARGET_GPU_FEATURE_SPEEDUP})
    sp = float(n_gpu / t[1]) / float(ds["feature_samples_per_s"].sel(feature_impl="batched"))
    ds["gpu_feature_speedup"] = ((), sp, {"long_name": "cuda_f64 samples/s over the CPU batched path"})
    ds["verdict_gpu_feature_speedup"] = ((), bool(sp >= TARGET_GPU_FEATURE_SPEEDUP),
                                         {"description": f"cuda_f64 >= {TARGET_GPU_FEATURE_SPEEDUP}x CPU batched"})
    ds["verdict_gpu_agree"] = ((), bool(errs[0] <= 1e-12 and errs[1] <= 1e-12 and errs[2] <= 1e-5
                                        and ridge_err <= 1e-6),
                               {"description": "float64 GPU features within 1e-12, float32 within 1e-5, "
                                               "GPU ridge path within 1e-6 relative of the CPU"})


def summary(ds: xr.Dataset) -> str:
    f = ds["feature_samples_per_s"].values
    r = ds["ridge_time_s"].values
    return "\n".join([
        f"   features: loop {f[0]:.3e} samples/s, batched {f[1]:.3e} samples/s -> "
        f"{float(ds['feature_speedup']):.1f}x (target {ds.attrs['target_feature_speedup']:g}x: "
        f"{'met' if bool(ds['verdict_feature_speedup']) else 'MISSED'})",
        f"   ridge ({ds.attrs['features']} features, n={ds.attrs['n_fit']}, {ds.attrs['lambdas']} lambdas): "
        f"per-lambda solves {r[0]:.3f} s, eigen path {r[1]:.3f} s -> {float(ds['ridge_speedup']):.2f}x "
        f"({'met' if bool(ds['verdict_path_speedup']) else 'MISSED'})",
        f"   one families cell: {float(ds['cell_time_s']):.2f} s; agreement "
        f"{'ok' if bool(ds['verdict_agree']) else 'FAILED'} (features {float(ds['feature_max_abs_err']):.1e}, "
        f"paths {float(ds['ridge_max_rel_err']):.1e}; device {ds.attrs.get('device', '?')})",
    ] + _gpu_summary(ds))


def _gpu_summary(ds) -> list[str]:
    if "gpu_feature_impl" not in ds.coords:
        return []
    rates = ", ".join(f"{k} {v:.3e}" for k, v in zip(ds["gpu_feature_impl"].values,
                                                      ds["gpu_feature_samples_per_s"].values))
    return [
        f"   GPU features (n={ds.attrs['n_gpu']}): {rates} samples/s -> cuda_f64 "
        f"{float(ds['gpu_feature_speedup']):.1f}x CPU batched (target {ds.attrs['target_gpu_feature_speedup']:g}x: "
        f"{'met' if bool(ds['verdict_gpu_feature_speedup']) else 'MISSED'})",
        f"   GPU ridge path {float(ds['gpu_ridge_time_s']):.3f} s, one families cell {float(ds['gpu_cell_time_s']):.2f} s; "
        f"agreement {'ok' if bool(ds['verdict_gpu_agree']) else 'FAILED'} (features "
        + ", ".join(f"{v:.1e}" for v in ds["gpu_feature_max_rel_err"].values)
        + f"; path {float(ds['gpu_ridge_max_rel_err']):.1e})",
    ]
