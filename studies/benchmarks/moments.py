"""Benchmark suite ``moments``: the moment sweep, streaming kernel vs the obvious implementation.

The workload of ``python -m studies.moments`` on a reduced paper preset (issue: token-sample
part 2): Gaussian tokens N(0, 0.1 I) in d = 50, the authors' normalized weights (seed 42),
3 scales geomspace(0.05, 50, 3), n = 1000..8000 in 6 geometric steps, k = 20 replicates.
Every (n, rep) cell draws its tokens from ``SeedSequence(0, spawn_key=(i, r))`` and computes
the output mean and covariance at the 3 scales with

* ``naive``  — the obvious implementation: the n x n score matrix per scale, softmax, outputs
               (``self_attention_moments(method="naive")``);
* ``numba``  — the streaming fused kernel (``method="numba"``, the study's default),

one after the other on the *same* tokens (the order alternates from cell to cell, so load
changes on a shared machine hit both), then the errors against the exact Gaussian reference.
Timed: the moment computation of every cell (sampling and the reference are shared). Both
sweeps are fitted (WLS log-log slopes, per scale, of the mean and covariance errors).

Targets: numba >= 3x faster than naive over the whole sweep, and every slope equal within
2 SE between the two (same tokens: they agree to rounding).

Peer (where ``torch`` is importable; an optional peer, not a dependency): ``torch_authors`` --
the authors' protocol re-implemented in PyTorch on the CPU, float32 as their code (which uses
fp16 Q/K/V on a GPU): per scale, W_q, W_k <- sqrt(s) base, Q K^T / sqrt(d) and the softmax
over row chunks of 1024 (their chunked memory-efficient attention), outputs, mean and
population covariance; and their reference, the same over N = 100 000 fresh tokens once per
scale (a closed form is what the workbench uses instead). Timed: every cell plus the
reference. Target: the workbench (streaming kernel, exact reference) >= 3x the peer.
"""
from __future__ import annotations

import time

import numpy as np
import xarray as xr

from sim.distributions import make_distribution
from sim.backend import make_rng
from sim.kernels_cpu import cpu_threads
from sim.token_moments import MomentProblem, base_weights, moment_errors
from studies.cli import parse_n_grid
from studies.fits import loglog_rate
from studies.sweep import str_coord

DESCRIPTION = ("moment sweep, d=50 Gaussian, n=1000..8000/6, k=20, 3 scales: naive n x n scores "
               "vs the streaming fused kernel")
IMPLS = ("naive", "numba")
TARGET_SPEEDUP = 3.0
TARGET_VS_PEER = 3.0
SLOPE_Z = 2.0
PEER_REFERENCE_N = 100_000
PEER_CHUNK = 1024


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class _TorchAuthors:
    """The authors' moment protocol in PyTorch (module docstring)."""

    def __init__(self, problem, scales, torch):
        self.torch = torch
        self.scales = np.asarray(scales, dtype=float)
        Wq, Wk, Wv = (torch.from_numpy(np.ascontiguousarray(w)).to(torch.float32)
                      for w in base_weights(problem.d, 42, "normalized"))
        self.Wq, self.Wk, self.Wv = Wq, Wk, Wv
        self.d = problem.d

    def moments(self, X):
        torch = self.torch
        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(torch.float32)
        means, covs = [], []
        with torch.no_grad():
            V = Xt @ self.Wv.T
            for s in self.scales:
                Q = Xt @ (np.sqrt(s) * self.Wq).T
                K = Xt @ (np.sqrt(s) * self.Wk).T
                out = torch.empty_like(V)
                for r0 in range(0, Xt.shape[0], PEER_CHUNK):
                    sc = (Q[r0:r0 + PEER_CHUNK] @ K.T) / np.sqrt(self.d)
                    out[r0:r0 + PEER_CHUNK] = torch.softmax(sc, dim=-1) @ V
                mu = out.mean(0)
                c = out - mu
                means.append(mu.double().numpy())
                covs.append((c.T @ c / out.shape[0]).double().numpy())
        return np.stack(means), np.stack(covs)


def run(quick: bool = False) -> xr.Dataset:
    n_grid = np.asarray(parse_n_grid("300..800/3" if quick else "1000..8000/6"))
    reps = 3 if quick else 20
    scales = np.geomspace(0.05, 50, 3)
    problem = MomentProblem.build(make_distribution("gaussian", 50, scale=float(np.sqrt(0.1))), scales)
    ref_mean, ref_cov, _ = problem.exact_reference()
    problem.moments_of(problem.dist.sample(make_rng(1), 64))  # compile outside the timings
    times = np.zeros((len(IMPLS), n_grid.size))
    errs = {k: np.zeros((len(IMPLS), 2, scales.size, n_grid.size, reps)) for k in ("mean_err", "cov_err")}
    max_diff = 0.0
    torch = _torch()
    peer = None
    peer_time = 0.0
    peer_ref_time = 0.0
    peer_err = 0.0
    if torch is not None:
        torch.set_num_threads(cpu_threads())
        peer = _TorchAuthors(problem, scales, torch)
        peer.moments(problem.dist.sample(make_rng(1), 64))  # warm-up outside the timings
        N = PEER_REFERENCE_N // 5 if quick else PEER_REFERENCE_N
        Xref = problem.dist.sample(make_rng(np.random.SeedSequence(0, spawn_key=(99,))), N)
        t0 = time.perf_counter()
        peer.moments(Xref)  # the authors' finite reference (its result is not needed here)
        peer_ref_time = time.perf_counter() - t0
        peer_time += peer_ref_time
    for i, n in enumerate(n_grid):
        for r in range(reps):
            X = problem.dist.sample(make_rng(np.random.SeedSequence(0, spawn_key=(i, r))), int(n))
            order = IMPLS if (i * reps + r) % 2 == 0 else IMPLS[::-1]
            res = {}
            for impl in order:
                t0 = time.perf_counter()
                res[impl] = problem.moments_of(X, method=impl)
                times[IMPLS.index(impl), i] += time.perf_counter() - t0
            if peer is not None:
                t0 = time.perf_counter()
                pm, pc = peer.moments(X)
                peer_time += time.perf_counter() - t0
                peer_err = max(peer_err, float(np.abs(pm - res["numba"][0]).max()),
                               float(np.abs(pc - res["numba"][1]).max()))
            for j, impl in enumerate(IMPLS):
                e = moment_errors(*res[impl], ref_mean, ref_cov)
                for key in errs:
                    errs[key][j, 0, :, i, r] = e[key]
            max_diff = max(max_diff, float(np.abs(res["numba"][0] - res["naive"][0]).max()),
                           float(np.abs(res["numba"][1] - res["naive"][1]).max()))
    slope = np.zeros((len(IMPLS), 2, scales.size))
    se = np.zeros_like(slope)
    for j in range(len(IMPLS)):
        for m, key in enumerate(("mean_err", "cov_err")):
            for s in range(scales.size):
                f = loglog_rate(n_grid, errs[key][j, 0, s])
                slope[j, m, s], se[j, m, s] = f.slope, f.se
    total = times.sum(axis=1)
    speedup = total[0] / total[1]
    diff = np.abs(slope[0] - slope[1])
    tol = SLOPE_Z * np.maximum(se[0], se[1])
    H_eff, H_code = problem.horizons()
    ds = xr.Dataset(
        {
            "time_s": (("impl", "n"), times, {"units": "s", "long_name": f"summed wall time of the {reps} cells at each n"}),
            "total_time_s": (("impl",), total, {"units": "s"}),
            "speedup": ((), speedup, {"long_name": "total naive time / total numba time"}),
            "slope": (("impl", "moment", "scale"), slope, {"long_name": "WLS log-log slope of the error vs n"}),
            "slope_se": (("impl", "moment", "scale"), se),
            "slope_diff_over_se": (("moment", "scale"), diff / np.maximum(se[0], se[1])),
            "max_abs_moment_diff": ((), max_diff, {"long_name": "max |numba - naive| over every mean/cov entry"}),
            "H_eff": (("scale",), H_eff),
            "H_code": (("scale",), H_code),
        },
        coords={"impl": str_coord(IMPLS), "n": n_grid, "moment": str_coord(("mean", "cov")), "scale": scales},
        attrs={"d": 50, "reps": reps, "scales": scales.tolist(), "n_grid": n_grid.tolist(),
               "target_speedup": TARGET_SPEEDUP, "slope_tolerance": f"{SLOPE_Z} SE",
               "workload": "Gaussian N(0, 0.1 I), normalized weights seed 42, self token included, exact reference"},
    )
    ds["peer_time_s"] = ((), peer_time if peer is not None else np.nan,
                         {"units": "s", "long_name": "torch_authors: every cell plus the N = 1e5 reference"})
    ds["speedup_vs_peer"] = ((), peer_time / total[1] if peer is not None else np.nan,
                             {"long_name": "torch_authors total / numba total (the workbench's exact reference is a "
                                           "closed form)"})
    ds["peer_max_abs_moment_diff"] = ((), peer_err if peer is not None else np.nan,
                                      {"long_name": "max |torch float32 - numba| over every mean/cov entry"})
    if peer is not None:
        ds = ds.assign_coords(protocol_impl=str_coord(("numba_exact_ref", "torch_authors_finite_ref")))
        ds["protocol_time_s"] = (("protocol_impl",), [total[1], peer_time],
                                 {"units": "s", "long_name": "the whole moment protocol: every cell, plus the "
                                                             "reference (closed form vs N = 1e5 tokens)"})
        ds["peer_reference_time_s"] = ((), peer_ref_time, {"units": "s", "long_name": "of which the torch finite "
                                                                                        "reference"})
    ds.attrs["peer_reference_n"] = (PEER_REFERENCE_N // 5 if quick else PEER_REFERENCE_N) if peer is not None else 0
    ds.attrs["peers"] = ("torch " + torch.__version__) if torch is not None else \
        "PyTorch not installed: the peer is left out (pip install torch to compare)"
    if peer is not None:
        ds["verdict_vs_peer"] = ((), bool(ds["speedup_vs_peer"] >= TARGET_VS_PEER),
                                 {"description": f"numba (exact reference) >= {TARGET_VS_PEER}x the authors' PyTorch "
                                                 "protocol (finite reference)"})
    ds["verdict_speedup"] = ((), bool(speedup >= TARGET_SPEEDUP),
                             {"description": f"numba >= {TARGET_SPEEDUP}x naive over the whole sweep"})
    ds["verdict_slopes"] = ((), bool(np.all(diff <= tol)),
                            {"description": f"|slope_numba - slope_naive| <= {SLOPE_Z} SE for every scale and moment"})
    ds["verdict_agree"] = ((), bool(max_diff <= 1e-10), {"description": "moments agree within 1e-10"})
    return ds


def summary(ds: xr.Dataset) -> str:
    rows = [f"   {'n':>6} " + " ".join(f"{i + ' s':>10}" for i in ds.impl.values) + "   naive/numba"]
    for j, n in enumerate(ds.n.values):
        t = ds["time_s"].values[:, j]
        rows.append(f"   {n:>6d} " + " ".join(f"{v:>10.3f}" for v in t) + f"   {t[0] / t[1]:10.1f}x")
    rows.append(f"   total: naive {float(ds['total_time_s'][0]):.1f} s, numba {float(ds['total_time_s'][1]):.1f} s, "
                f"speedup {float(ds['speedup']):.2f}x (target >= {ds.attrs['target_speedup']}x: "
                f"{'met' if bool(ds['verdict_speedup']) else 'MISSED'})")
    for m, mom in enumerate(ds.moment.values):
        parts = []
        for s, sc in enumerate(ds.scale.values):
            parts.append(f"s={sc:.3g}: {ds['slope'].values[0, m, s]:+.3f}±{ds['slope_se'].values[0, m, s]:.3f} vs "
                         f"{ds['slope'].values[1, m, s]:+.3f}±{ds['slope_se'].values[1, m, s]:.3f}")
        rows.append(f"   {mom} slopes naive vs numba: " + "; ".join(parts))
    if "verdict_vs_peer" in ds:
        rows.append(f"   the authors' protocol in PyTorch (float32, N = {ds.attrs['peer_reference_n']} finite reference): "
                    f"{float(ds['peer_time_s']):.1f} s ({float(ds['peer_reference_time_s']):.1f} s of it the reference); "
                    f"numba with the exact reference {float(ds['total_time_s'][1]):.1f} s: "
                    f"{float(ds['speedup_vs_peer']):.2f}x (target >= {TARGET_VS_PEER}x: "
                    f"{'met' if bool(ds['verdict_vs_peer']) else 'MISSED'}); "
                    f"max |torch - numba| {float(ds['peer_max_abs_moment_diff']):.1e}")
    else:
        rows.append(f"   {ds.attrs['peers']}")
    rows.append(f"   slopes equal within {ds.attrs['slope_tolerance']}: {'yes' if bool(ds['verdict_slopes']) else 'NO'}; "
                f"max |moment difference| {float(ds['max_abs_moment_diff']):.1e} (device {ds.attrs.get('device', '?')})")
    return "\n".join(rows)
