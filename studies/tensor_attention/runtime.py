"""The ``runtime`` group of the tensor-attention study: wall time against n of exact attention
(matrix ~n^2, tensor ~n^3) and of the polynomial method (k = 2, 3) at fixed (d, g).

Cell (one replicate): best-of-``repeat`` wall times (after one warm-up call; ``repeat`` 3, or 1
with ``--quick``) of exact matrix attention on ``--n-matrix``, exact tensor attention on
``--n-tensor``, the two approximations on ``--n-approx``, and the approximations again on the
exact grids (for the crossover). Inputs uniform in ``[-B, B]`` (``--timing-B``), Chebyshev
polynomial of degree ``--timing-degree``. Stored as ``time_*`` over ``(grid, rep)``.

Analysis (:func:`analyze_runtime`, from the store alone): per implementation the WLS log-log slope
of time on n over the sizes whose median time is at least ``MIN_FIT_TIME`` (the timer's resolution
and call overhead are negligible there), theory's flop-model slope over the same window (lower-order
terms included), the measured and fitted crossover n (described, not claimed: the engines' speeds
per flop differ), and theory's entry bounds at n = 2^16 (``(log n)^(1/k)``, and the largest B at
which the approximation costs no more flops than exact attention). Claims ``exact_slope`` and
``approx_slope`` (per matrix, tensor): the measured slope equals the flop model's within z SE plus
the declared band (notes tensor_attention §5 item 16); "not tested" with fewer than ``MIN_FIT_POINTS``
measurable sizes.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

from sim import tensor_attention as sta
from studies.benchmarks._timing import best_time
from studies.claims import ClaimSpec, z_family
from studies.cli import run_params
from studies.fits import loglog_rate
from studies.sweep import str_coord
from studies.tensor_attention.common import (
    SCALES,
    SOURCE,
    child_rng,
    device_tools,
    group_sweep,
)
from theory import tensor_attention as th

__all__ = ["IMPLS", "IMPL_ORDER", "EXACT_SLOPE", "APPROX_SLOPE", "runtime_sweep", "analyze_runtime",
           "summary_runtime"]

IMPLS = ("exact_matrix", "exact_tensor", "approx_matrix", "approx_tensor")
IMPL_ORDER = {"exact_matrix": 2, "exact_tensor": 3, "approx_matrix": 2, "approx_tensor": 3}
GRIDS = {"exact_matrix": "n_matrix", "exact_tensor": "n_tensor", "approx_matrix": "n_approx",
         "approx_tensor": "n_approx"}
MIN_FIT_TIME = 0.03  # s: timer resolution and per-call overhead are negligible above this
MIN_FIT_POINTS = 3
# declared bands of notes tensor_attention §5 item 16 around the flop-model slope (a declared threshold, said so)
SLOPE_BAND = {"exact_matrix": 0.3, "exact_tensor": 0.4, "approx_matrix": 0.4, "approx_tensor": 0.4}
SETTINGS = f"MIN_FIT_TIME={MIN_FIT_TIME}s; MIN_FIT_POINTS={MIN_FIT_POINTS}; SLOPE_BAND={SLOPE_BAND} (notes tensor_attention §5 item 16)"
ENTRY_N = 2**16  # the n of the entry-bound theory shown with the runtimes
ORDERS = (2, 3, 4)

EXACT_SLOPE = ClaimSpec(
    "tensor_attention.exact_slope", f"{SOURCE}: exact order-k attention costs n^k (notes tensor_attention §2.6, §5 item 16)",
    "Wall time of exact attention grows like the flop model n^k (2d + 1) + lower-order terms over the "
    "measurable window of n.")
APPROX_SLOPE = ClaimSpec(
    "tensor_attention.approx_slope", f"{SOURCE}: the polynomial method runs in n r k (d + 2) time (notes tensor_attention §2.4, "
    "§5 item 16)",
    "Wall time of the polynomial method at fixed (d, g) grows linearly in n (its flop model) over the "
    "measurable window of n.")


def _runtime_part(rng, *, n_approx, n_matrix, n_tensor, d, g, B, scale, repeat, device="cpu"):
    out = {}
    to_dev, sync = device_tools(device)

    def timed(fn):
        def run():
            fn()
            sync()  # device work is asynchronous: time it to completion
        return best_time(run, repeat=repeat)

    def inputs(n, k):
        Q, keys, values = sta.uniform_inputs(rng, n, d, B, k)
        return to_dev(Q), [to_dev(K) for K in keys], [to_dev(V) for V in values]

    t = np.zeros(len(n_matrix))
    for j, n in enumerate(n_matrix):
        Q, (K,), (V,) = inputs(n, 2)
        t[j] = timed(lambda: sta.matrix_attention(Q, K, V, scale=scale))
    out["time_exact_matrix"] = t
    t = np.zeros(len(n_tensor))
    for j, n in enumerate(n_tensor):
        Q, keys, values = inputs(n, 3)
        t[j] = timed(lambda: sta.kth_order_attention(Q, keys, values, scale=scale))
    out["time_exact_tensor"] = t
    for k, name, grid in ((2, "time_approx_matrix", n_approx), (3, "time_approx_tensor", n_approx),
                          (2, "time_approx_matrix_x", n_matrix), (3, "time_approx_tensor_x", n_tensor)):
        t = np.zeros(len(grid))
        for j, n in enumerate(grid):
            Q, keys, values = inputs(n, k)
            t[j] = timed(lambda: sta.polynomial_attention(Q, keys, values, degree=g, method="chebyshev",
                                                          B=B, scale=scale))
        out[name] = t
    return out


def _runtime_cell(cell, **cfg):
    return _runtime_part(child_rng(cell.seed, "runtime"), **cfg)


def runtime_sweep(args):
    """The ``runtime`` group's sweep: one cell per replicate."""
    repeat = 1 if args.quick else 3  # timed calls per measurement (after one warm-up call)
    cfg = dict(n_approx=tuple(args.n_approx), n_matrix=tuple(args.n_matrix), n_tensor=tuple(args.n_tensor), d=args.d,
               g=args.timing_degree, B=args.timing_B, scale=SCALES[args.scale](args.d), repeat=repeat,
               device=args.device)
    variables, var_attrs = {}, {}
    for name, dim in (("time_exact_matrix", "n_matrix"), ("time_exact_tensor", "n_tensor"),
                      ("time_approx_matrix", "n_approx"), ("time_approx_tensor", "n_approx"),
                      ("time_approx_matrix_x", "n_matrix"), ("time_approx_tensor_x", "n_tensor")):
        variables[name] = (dim, "rep")
        what = name[5:].replace("_x", " (on the exact grid, for the crossover)")
        var_attrs[name] = {"units": "s", "long_name": f"best of {repeat} wall times: {what}"}
    return group_sweep(
        "runtime", args,
        own={"n_approx": list(args.n_approx), "n_matrix": list(args.n_matrix), "n_tensor": list(args.n_tensor),
             "degree": args.timing_degree, "B": args.timing_B, "method": "chebyshev", "repeat": repeat},
        variables=variables,
        coords={"n_approx": np.asarray(args.n_approx), "n_matrix": np.asarray(args.n_matrix),
                "n_tensor": np.asarray(args.n_tensor)},
        run_cell=functools.partial(_runtime_cell, **cfg), var_attrs=var_attrs,
        attrs={"timing_note": "timings are best-of-3 (--quick: 1) wall times after a warm-up call, in the cell's "
                              "process; with --workers > 1 (or Dask) cells run concurrently and their timings contend "
                              f"(workers={args.workers}, dask_local={args.dask_local}, scheduler={args.scheduler})"},
        gpu_engines="exact k=2: gpu.attention; exact k=3: gpu.tensor_attention numba-cuda kernel; polynomial "
                    "method: numba-cuda features + cuBLAS; inputs drawn on the host and copied; timings synchronised")


# --------------------------------------------------------------------------- analysis

def _fit_window(n, t):
    """The sizes whose median time is measurable (>= MIN_FIT_TIME)."""
    return np.median(t, axis=-1) >= MIN_FIT_TIME


def _crossing(n, t_exact, t_approx):
    """Log-log interpolated n where t_exact / t_approx first reaches 1 (None if it never crosses
    inside the grid from below)."""
    lr = np.log(t_exact) - np.log(t_approx)
    for j in range(1, len(n)):
        if lr[j - 1] < 0 <= lr[j]:
            f = -lr[j - 1] / (lr[j] - lr[j - 1])
            return float(np.exp(np.log(n[j - 1]) + f * (np.log(n[j]) - np.log(n[j - 1]))))
    return None


def _fits(ds, out, d, g):
    """Per implementation: the slope fit over the measurable window and the flop model's slope
    there, written into ``out``; returns ``(slope, se, lo, hi, icpt, pred, npts)``."""
    nan = np.full(len(IMPLS), np.nan)
    slope, se, lo, hi, icpt, pred = (nan.copy() for _ in range(6))
    npts = np.zeros(len(IMPLS), dtype=np.int64)
    for i, impl in enumerate(IMPLS):
        n = ds[GRIDS[impl]].values.astype(float)
        t = ds[f"time_{impl}"].values
        out[f"time_{impl}_median"] = ((GRIDS[impl],), np.median(t, axis=-1))
        use = _fit_window(n, t)
        npts[i] = use.sum()
        if use.sum() >= MIN_FIT_POINTS:
            f = loglog_rate(n[use], t[use])
            icpt[i] = f.intercept
            x = np.log(n[use])
            xc = x - x.mean()
            reps = xc @ np.log(t[use]) / (xc @ xc)  # each replicate times the whole grid: its own slope
            slope[i] = float(reps.mean())
            se[i] = float(reps.std(ddof=1) / math.sqrt(reps.size))
            lo[i], hi[i] = n[use].min(), n[use].max()
            k = IMPL_ORDER[impl]
            pred[i] = th.flop_slope(n[use], d, k, None if impl.startswith("exact") else g)
    out["fit_slope"] = (("impl",), slope, {"long_name": "mean over replicates of the OLS log-log slope of time vs n over "
                                                        "the window (NaN: fewer than 3 measurable sizes)"})
    out["fit_slope_se"] = (("impl",), se)
    out["fit_intercept"] = (("impl",), icpt, {"long_name": "intercept of the WLS fit log time = intercept + slope log n "
                                                           "(for the fitted crossover)"})
    out["fit_n_min"] = (("impl",), lo)
    out["fit_n_max"] = (("impl",), hi)
    out["fit_points"] = (("impl",), npts)
    out["theory_slope"] = (("impl",), pred, {"long_name": "log-log slope of theory's flop model (lower-order "
                                                          "terms included) over the fit window"})
    return slope, se, lo, hi, icpt, pred, npts


def _crossovers(ds, out, d, g, slope, icpt) -> None:
    """The flop-model, fitted and measured crossover n of exact and approximate attention."""
    for kind, ie, ia, k in (("matrix", 0, 2, 2), ("tensor", 1, 3, 3)):
        out[f"theory_crossover_n_{kind}"] = ((), th.crossover_n(d, g, k), {
            "long_name": "flop-count crossover (r k (d+2)/(2d+1))^(1/(k-1))"})
        if np.isfinite(slope[ie]) and np.isfinite(slope[ia]) and slope[ie] > slope[ia]:
            out[f"crossover_n_{kind}_fit"] = ((), math.exp((icpt[ia] - icpt[ie]) / (slope[ie] - slope[ia])), {
                "long_name": f"n where the fitted exact and approximate {kind} power laws meet"})
        grid = ds[GRIDS[IMPLS[ie]]].values.astype(float)
        # best time over reps (each already a best of 3): robust to scheduler noise at small n
        te = ds[f"time_{IMPLS[ie]}"].values.min(axis=-1)
        ta = ds[f"time_approx_{kind}_x"].values.min(axis=-1)
        out[f"time_exact_{kind}_best"] = ((GRIDS[IMPLS[ie]],), te)
        out[f"time_approx_{kind}_x_best"] = ((GRIDS[IMPLS[ie]],), ta)
        nx = _crossing(grid, te, ta)
        if nx is not None:
            out[f"crossover_n_{kind}"] = ((), nx, {
                "long_name": f"measured: smallest n where exact {kind} attention becomes slower than the "
                             "approximation (best times over reps, log-log interpolation between grid points)"})


def _slope_claims(slope, se, lo, hi, pred, npts, reps) -> list:
    """``exact_slope`` and ``approx_slope`` per matrix, tensor: the replicates' mean slope against
    the flop model's, within z SE (Student t, reps - 1 dof) plus the declared band; "not tested"
    without enough measurable sizes, or when the tolerance reaches a whole power of n (the effect
    the claim must resolve: a law off by one power, e.g. n^2 work hidden in the approximation)."""
    z, zsrc = z_family(int(np.isfinite(slope).sum()), dof=max(1, int(reps) - 1))
    zsrc += " (slopes of the replicates)"
    claims = []
    for i, impl in enumerate(IMPLS):
        spec = EXACT_SLOPE if impl.startswith("exact") else APPROX_SLOPE
        where = impl.split("_")[1]
        k = IMPL_ORDER[impl]
        if not np.isfinite(slope[i]):
            claims.append(spec.not_tested(
                f"{npts[i]} size(s) of --{GRIDS[impl].replace('_', '-')} take >= {MIN_FIT_TIME * 1e3:g} ms (median "
                f"over reps); a slope needs >= {MIN_FIT_POINTS} measurable sizes", where=where,
                prediction_text=f"flop-model slope ~{k if impl.startswith('exact') else 1}"))
            continue
        band = SLOPE_BAND[impl]
        claims.append(spec.equal(
            slope[i], se[i], pred[i], z=z, z_source=zsrc, allowance=band,
            allowance_source=f"notes tensor_attention §5 item 16 band {band:g} (a declared threshold: timings carry cache and memory-hierarchy "
                             "effects the flop model does not)",
            where=where, effect=1.0, prediction_text=f"{pred[i]:.3f} (flop model, n={int(lo[i])}..{int(hi[i])})"))
    return claims


def _entry_theory(out, d) -> xr.Dataset:
    """theory's entry bounds at n = ENTRY_N for the orders 2, 3, 4."""
    out["theory_entry_threshold"] = (("order",), th.entry_threshold(ENTRY_N, np.array(ORDERS)), {
        "long_name": "(log n)^(1/k) at n = 2^16: entries must be o(this) for near-linear time"})
    out = out.assign_coords(order=np.array(ORDERS))
    out["theory_crossover_entry_bound"] = (("order",), np.array(
        [th.crossover_entry_bound(ENTRY_N, d, k, 1e-6, "chebyshev") for k in ORDERS]), {
        "long_name": f"largest B at which the approximation (relative error 1e-6 on B^k) costs no more "
                     f"flops than exact order-k attention at n = 2^16, d = {d}"})
    return out


def analyze_runtime(ds: xr.Dataset):
    """Slope fits, crossovers and theory of the ``runtime`` group, and its claims."""
    p = run_params(ds)
    d, g = p["d"], p["runtime"]["degree"]
    out = xr.Dataset(coords={**{c: ds[c].values for c in ds.coords if c != "rep"}, "impl": str_coord(IMPLS)})
    slope, se, lo, hi, icpt, pred, npts = _fits(ds, out, d, g)
    _crossovers(ds, out, d, g, slope, icpt)
    out["theory_rank_timing"] = ((), float(th.rank(d, g)))
    out = _entry_theory(out, d)
    out.attrs["d"] = int(d)
    out.attrs["claim_settings"] = SETTINGS
    return out, _slope_claims(slope, se, lo, hi, pred, npts, ds.sizes["rep"])


def summary_runtime(an: xr.Dataset) -> str:
    """The runtime group's table: slopes against the flop model, crossovers, the entry bounds."""
    rows = [(f"runtime part (d={an.attrs.get('d', '?')}): log-log slopes of wall time vs n over the sizes "
             f"taking >= {MIN_FIT_TIME * 1e3:g} ms; crossover from best times"),
            f"  {'impl':<14} {'n-window':<16} {'slope ± se':<16} {'flop model':>10}"]
    for i, impl in enumerate(an["impl"].values):
        if np.isfinite(an["fit_slope"].values[i]):
            win = f"{int(an['fit_n_min'].values[i])}..{int(an['fit_n_max'].values[i])}"
            rows.append(f"  {str(impl):<14} {win:<16} {an['fit_slope'].values[i]:+.3f} ± "
                        f"{an['fit_slope_se'].values[i]:.3f}   {an['theory_slope'].values[i]:>10.3f}")
        else:
            rows.append(f"  {str(impl):<14} {'(< 3 sizes)':<16} {'-':<16} {'-':>10}")
    for kind in ("matrix", "tensor"):
        meas = (f"{float(an[f'crossover_n_{kind}']):.0f}" if f"crossover_n_{kind}" in an
                else "outside the grid")
        fit = f"{float(an[f'crossover_n_{kind}_fit']):.0f}" if f"crossover_n_{kind}_fit" in an else "n/a"
        rows.append(f"  crossover n ({kind}): measured {meas}; fitted power laws {fit}; flop model "
                    f"{float(an[f'theory_crossover_n_{kind}']):.0f} (described, not claimed: per-flop speeds "
                    "of the engines differ)")
    rows.append("theory at n = 2^16: (log n)^(1/k) = " + ", ".join(
        f"k={int(k)}: {v:.2f}" for k, v in zip(an["order"].values, an["theory_entry_threshold"].values))
        + f"; largest B where the approximation (eps 1e-6) beats exact in flops (d={an.attrs.get('d', '?')}): "
        + ", ".join(f"k={int(k)}: {v:.2f}" for k, v in zip(an["order"].values,
                                                           an["theory_crossover_entry_bound"].values)))
    return "\n".join(rows)
