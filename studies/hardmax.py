"""The hardmax regime on the sphere: ``python -m studies.hardmax [--d 3]``.

Result 3 of Bohbot, Letrouit, Peyré, Vialard: as the attention parameter lam -> infinity,
softmax attention tends to hardmax, and the convergence in the number of tokens becomes
logarithmic. Tokens are uniform on the sphere S^{d-1}(rho), queries x_q = rho u_q on a
quasi-uniform set of directions, A = a I, V = I, so kappa_1 = rho |A x| = a rho^2 and the
population hardmax limit is Gamma^inf(x) = rho u. Three measurements share every token sample:

1. bias of Gamma at parameter lam against the hardmax limit, from the radial deficit
   rho - <Gamma^lam_{mu_n}(x), u> at the largest n (an O(1/n)-accurate estimate of the
   population bias rho (1 - A_d(lam kappa_1)) ~ rho (d-1)/(2 lam kappa_1): slope -1 in lam);
2. pure hardmax error |y_{j*} - rho u| against n: exact curve E = int (1 - I_{e^2/4})^n de
   (slope -> -1/(d-1));
3. coupled lam_n = c log n: |Gamma^{lam_n}_{mu_n}(x) - Gamma^inf(x)| ~ (d-1)/(2 c kappa_1 log n),
   so error x log n stays roughly constant (the logarithmic rate).

Dataset (``results/hardmax.zarr``): raw ``pure_err(n, rep)``, ``lam_err(lam, n, rep)``,
``lam_deficit(lam, n, rep)``, ``coupled_err(n, rep)``; fits with standard errors, ``theory_*``
curves (exact bias, its asymptote, exact pure-hardmax error, first-order coupled error) and
``verdict_*`` booleans with their tolerances in the attributes.
"""
from __future__ import annotations

import argparse
import functools
import sys

import numpy as np
import xarray as xr

from sim.backend import make_rng
from sim.distributions import make_distribution
from sim.token_sample import hardmax_errors
from studies.cli import (StudyParser, UsageError, add_common_arguments, parse_n_grid, positive_int,
                         run_main, run_study, validate_run_options)
from studies.fits import loglog_rate
from studies.moments import parse_scales
from studies.sweep import Sweep
from theory import token_sample as ts

STUDY = "hardmax"
DEFAULTS = {"n": "1e2..1e6/9", "lam": "1..1000/10", "reps": 20, "queries": 64}
QUICK = {"n": "1e2..1e4/5", "lam": "1..300/6", "reps": 6, "queries": 16}

# verdict tolerances (recorded in the dataset)
BIAS_SLOPE_BAND = (-1.15, -0.85)  # acceptance: slope of log bias vs log lam
KAPPA_MIN = 5.0  # the bias fit uses lam kappa_1 >= max(KAPPA_MIN, d): the asymptotic regime
BIAS_REL_TOL = 0.05  # measured bias within 5 % (or 5 SE) of the exact rho (1 - A_d)
PURE_Z = 5.0  # pure-hardmax mean error within 5 SE (or 3 %) of the exact curve at every n
PURE_SLOPE_TOL = 0.05  # |slope - slope of the exact curve over the same grid| <= tol + 3 SE
COUPLED_RATIO = 2.0  # acceptance: max/min of error x log n across the n grid < 2

EXAMPLES = """\
examples:
  python -m studies.hardmax                              # d = 3 (about 1 minute)
  python -m studies.hardmax --d 5 --c 2 --plot
  python -m studies.hardmax --quick --plot --out /tmp/hardmax.zarr
  python -m paper_figs.hardmax results/hardmax.zarr
"""


def build_parser() -> argparse.ArgumentParser:
    p = StudyParser(
        prog="python -m studies.hardmax",
        description="Softmax -> hardmax on sphere tokens: bias in lam, pure-hardmax error in n, and "
                    "the logarithmic rate of lam_n = c log n.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=positive_int, default=3, help="dimension of the token sphere S^{d-1} (default 3)")
    p.add_argument("--radius", type=float, default=1.0, help="sphere radius rho (default 1)")
    p.add_argument("--A-scale", dest="a_scale", type=float, default=1.0,
                   help="A = A_SCALE * I (default 1), so kappa_1 = A_SCALE * rho^2")
    p.add_argument("--n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"token counts (default {DEFAULTS['n']}; --quick {QUICK['n']})")
    p.add_argument("--lam", type=parse_scales, default=None, metavar="GRID",
                   help=f"attention parameters lam for the bias: 1..1000/10 (geometric) or a list "
                        f"(default {DEFAULTS['lam']}; --quick {QUICK['lam']})")
    p.add_argument("--c", type=float, default=1.0, help="coupling lam_n = C log n (default 1)")
    p.add_argument("--reps", type=positive_int, default=None,
                   help=f"independent token samples per n (default {DEFAULTS['reps']}; --quick {QUICK['reps']})")
    p.add_argument("--queries", type=positive_int, default=None,
                   help=f"query directions (default {DEFAULTS['queries']}; --quick {QUICK['queries']})")
    add_common_arguments(p, STUDY)
    return p


def _cell(cell, *, d, radius, A, queries, lams, c, device):
    dist = make_distribution("sphere", d, radius=radius)
    rng = make_rng(cell.seed, device)
    n = int(cell.coords["n"])
    tokens = dist.sample(rng, n)
    lam_all = np.concatenate([lams, [c * np.log(n)]])
    r = hardmax_errors(tokens, dist.law, A, queries, lam_all)
    return {"pure_err": r.pure_err, "lam_err": r.lam_err[:-1], "lam_deficit": r.lam_deficit[:-1],
            "coupled_err": r.lam_err[-1], "coupled_deficit": r.lam_deficit[-1]}


def _queries(args) -> np.ndarray:
    return args.radius * ts.sphere_directions(args.d, args.queries)


def make_sweep(args) -> Sweep:
    d = args.d
    A = args.a_scale * np.eye(d)
    n = np.asarray(args.n, dtype=np.int64)
    lams = np.asarray(args.lam, dtype=float)
    Q = _queries(args)
    params = {"d": d, "radius": args.radius, "A": A.tolist(), "V": "I", "n": n.tolist(), "lam": lams.tolist(),
              "c": args.c, "reps": args.reps, "queries": args.queries, "device": args.device}
    run_cell = functools.partial(_cell, d=d, radius=args.radius, A=A, queries=Q, lams=lams, c=args.c,
                                 device=args.device)
    return Sweep(
        study=STUDY,
        cell_dims={"n": n, "rep": np.arange(args.reps)},
        variables={"pure_err": ("n", "rep"), "coupled_err": ("n", "rep"), "coupled_deficit": ("n", "rep"),
                   "lam_err": ("lam", "n", "rep"), "lam_deficit": ("lam", "n", "rep")},
        coords={"lam": lams},
        params=params,
        run_cell=run_cell,
        root_seed=args.seed,
        attrs={"device": args.device, "token_law": f'{{"name": "sphere", "d": {d}, "radius": {args.radius}}}',
               "convention": "tokens uniform on S^{d-1}(rho); queries x_q = rho u_q (sphere_directions); A = a I, "
                             "V = I; scores lam <A x, y>; Gamma^inf(x) = rho u; every value is the mean over "
                             "the queries; tokens shared by the hardmax, every lam and lam_n = c log n",
               "kappa_1": float(args.a_scale * args.radius**2)},
        var_attrs={
            "pure_err": {"long_name": "mean_q |y_{j*} - rho u_q| (empirical hardmax)"},
            "coupled_err": {"long_name": "mean_q |Gamma^{c log n}_{mu_n}(x_q) - rho u_q|"},
            "coupled_deficit": {"long_name": "mean_q rho - <Gamma^{c log n}_{mu_n}(x_q), u_q>"},
            "lam_err": {"long_name": "mean_q |Gamma^lam_{mu_n}(x_q) - rho u_q|"},
            "lam_deficit": {"long_name": "mean_q rho - <Gamma^lam_{mu_n}(x_q), u_q> (radial deficit)"},
        },
    )


def analyze(ds: xr.Dataset, d: int, radius: float, a_scale: float, c: float) -> xr.Dataset:
    """Fits, theory and verdicts (a pure function of the dataset and the recorded parameters)."""
    n = ds["n"].values.astype(float)
    lam = ds["lam"].values.astype(float)
    k = ds.sizes["rep"]
    kappa1 = a_scale * radius**2
    law = ts.SphereLaw(d, radius)
    x0 = np.zeros(d)
    x0[0] = radius
    A = a_scale * np.eye(d)
    out = xr.Dataset(coords={"n": ds["n"].values, "lam": lam})

    # 1. bias vs lam at the largest n
    dfc = ds["lam_deficit"].values[:, -1, :]  # (lam, rep)
    bias = dfc.mean(axis=1)
    bias_se = dfc.std(axis=1, ddof=1) / np.sqrt(k)
    th_bias = ts.sphere_hardmax_bias(d, lam * kappa1, radius)
    out["bias"] = (("lam",), bias, {"long_name": "mean over reps of lam_deficit at the largest n: the bias estimate"})
    out["bias_se"] = (("lam",), bias_se)
    out["theory_bias"] = (("lam",), th_bias, {"long_name": "rho (1 - A_d(lam kappa_1)), exact"})
    out["theory_bias_asymptotic"] = (("lam",), ts.sphere_hardmax_bias_asymptotic(d, lam * kappa1, radius),
                                     {"long_name": "rho (d-1) / (2 lam kappa_1)"})
    window = lam * kappa1 >= max(KAPPA_MIN, d)
    out["bias_fit_mask"] = (("lam",), window, {"description": f"lam kappa_1 >= max({KAPPA_MIN}, d)"})
    if window.sum() >= 2 and np.all(dfc[window] > 0):
        f = loglog_rate(lam[window], dfc[window])
        bslope, bse = f.slope, f.se
    else:
        bslope, bse = float("nan"), float("nan")
    if np.isfinite(bslope):
        out["bias_slope"] = ((), bslope, {"long_name": "WLS log-log slope of the bias vs lam over the fit window"})
        out["bias_slope_se"] = ((), bse)
    th_fit = np.polyfit(np.log(lam[window]), np.log(th_bias[window]), 1)[0] if window.sum() >= 2 else -1.0
    out["theory_bias_slope"] = ((), float(th_fit), {"long_name": "log-log slope of the exact bias over the fit window"})
    rel_ok = np.abs(bias - th_bias) <= np.maximum(BIAS_REL_TOL * th_bias, 5 * bias_se)
    out["verdict_bias_slope"] = ((), bool(np.isfinite(bslope) and BIAS_SLOPE_BAND[0] <= bslope <= BIAS_SLOPE_BAND[1]),
                                 {"description": f"bias slope in lam within {list(BIAS_SLOPE_BAND)} (fit window lam "
                                                 f"kappa_1 >= max({KAPPA_MIN}, d))"})
    out["verdict_bias_exact"] = ((), bool(rel_ok[window].all()) if window.any() else False,
                                 {"description": f"bias within max({BIAS_REL_TOL:.0%}, 5 SE) of rho (1 - A_d) over the fit window"})

    # 2. pure hardmax vs n
    pe = ds["pure_err"].values
    pm, ps = pe.mean(axis=1), pe.std(axis=1, ddof=1) / np.sqrt(k)
    th_pure = np.asarray(ts.sphere_hardmax_expected_error(d, n, radius))
    out["pure_err_mean"] = (("n",), pm)
    out["pure_err_sem"] = (("n",), ps)
    out["theory_pure_err"] = (("n",), th_pure, {"long_name": "exact E |y_{j*} - rho u| (1-D integral)"})
    fp = loglog_rate(n, pe)
    out["pure_slope"] = ((), fp.slope, {"long_name": "WLS log-log slope of the pure-hardmax error vs n"})
    out["pure_slope_se"] = ((), fp.se)
    th_pslope = float(np.polyfit(np.log(n), np.log(th_pure), 1)[0])
    out["theory_pure_slope_grid"] = ((), th_pslope, {"long_name": "log-log slope of the exact curve over the n grid"})
    out["theory_pure_slope"] = ((), ts.sphere_hardmax_rate(d), {"long_name": "-1/(d-1), the n -> infinity slope"})
    out["verdict_pure_curve"] = ((), bool(np.all(np.abs(pm - th_pure) <= np.maximum(PURE_Z * ps, 0.03 * th_pure))),
                                 {"description": f"mean pure-hardmax error within max({PURE_Z} SE, 3 %) of the exact curve at every n"})
    out["verdict_pure_slope"] = ((), bool(abs(fp.slope - th_pslope) <= PURE_SLOPE_TOL + 3 * fp.se),
                                 {"description": f"|slope - exact-curve slope over the grid| <= {PURE_SLOPE_TOL} + 3 SE"})

    # 3. coupled lam_n = c log n
    ce = ds["coupled_err"].values
    cm, cs = ce.mean(axis=1), ce.std(axis=1, ddof=1) / np.sqrt(k)
    logn = np.log(n)
    scaled = cm * logn
    th_c = np.array([ts.hardmax_error_prediction(law, x0, A, c * np.log(nn), nn) for nn in n])
    out["lam_n"] = (("n",), c * logn, {"long_name": "lam_n = c log n"})
    out["coupled_err_mean"] = (("n",), cm)
    out["coupled_err_sem"] = (("n",), cs)
    out["coupled_err_x_logn"] = (("n",), scaled, {"long_name": "coupled_err_mean * log n"})
    out["theory_coupled_err"] = (("n",), th_c, {"long_name": "sqrt(bias(lam_n)^2 + tr M / n) (first order)"})
    out["theory_coupled_x_logn_limit"] = ((), radius * (d - 1) / (2 * c * kappa1),
                                          {"long_name": "rho (d-1) / (2 c kappa_1): the n -> infinity limit of error x log n"})
    ratio = float(scaled.max() / scaled.min())
    out["coupled_ratio"] = ((), ratio, {"long_name": "max / min of error x log n over the n grid"})
    fc = loglog_rate(n, ce)
    out["coupled_slope"] = ((), fc.slope, {"long_name": "log-log slope of the coupled error (a power law would be constant)"})
    out["coupled_slope_se"] = ((), fc.se)
    out["verdict_coupled_log_rate"] = ((), bool(ratio < COUPLED_RATIO),
                                       {"description": f"error x log n varies by less than {COUPLED_RATIO}x across the n grid"})

    # lam_err summary (error at fixed lam vs n: plateaus at the bias)
    out["lam_err_mean"] = (("lam", "n"), ds["lam_err"].values.mean(axis=2))
    out["lam_err_sem"] = (("lam", "n"), ds["lam_err"].values.std(axis=2, ddof=1) / np.sqrt(k))
    out.attrs["verdict_tolerances"] = (f"BIAS_SLOPE_BAND={list(BIAS_SLOPE_BAND)}; KAPPA_MIN={KAPPA_MIN}; "
                                       f"BIAS_REL_TOL={BIAS_REL_TOL}; PURE_Z={PURE_Z}; PURE_SLOPE_TOL={PURE_SLOPE_TOL}; "
                                       f"COUPLED_RATIO={COUPLED_RATIO}")
    return out


def summary_table(an: xr.Dataset) -> str:
    rows = [f"{'lam':>8} {'bias ± se':<22} {'exact':>10} {'(d-1)/(2 lam k)':>16}"]
    for i, lam in enumerate(an["lam"].values):
        mark = "*" if bool(an["bias_fit_mask"].values[i]) else " "
        rows.append(f"{lam:>8.4g}{mark}{an['bias'].values[i]:.4e} ± {an['bias_se'].values[i]:.1e}  "
                    f"{an['theory_bias'].values[i]:>10.4e} {an['theory_bias_asymptotic'].values[i]:>16.4e}")
    if "bias_slope" in an:
        rows.append(f"bias slope in lam (* = fit window): {float(an['bias_slope']):+.4f} ± {float(an['bias_slope_se']):.4f} "
                    f"(exact curve {float(an['theory_bias_slope']):+.4f}; band {list(BIAS_SLOPE_BAND)})")
    rows.append(f"{'n':>9} {'pure err':>10} {'exact':>10} {'lam_n':>7} {'coupled err':>12} {'x log n':>8} {'first order':>11}")
    for i, nn in enumerate(an["n"].values):
        rows.append(f"{nn:>9d} {an['pure_err_mean'].values[i]:>10.4e} {an['theory_pure_err'].values[i]:>10.4e} "
                    f"{an['lam_n'].values[i]:>7.2f} {an['coupled_err_mean'].values[i]:>12.4e} "
                    f"{an['coupled_err_x_logn'].values[i]:>8.3f} {an['theory_coupled_err'].values[i]:>11.4e}")
    rows.append(f"pure-hardmax slope {float(an['pure_slope']):+.3f} ± {float(an['pure_slope_se']):.3f} (exact curve over the grid "
                f"{float(an['theory_pure_slope_grid']):+.3f}; asymptote {float(an['theory_pure_slope']):+.3f}); "
                f"coupled: error x log n max/min = {float(an['coupled_ratio']):.2f}, limit "
                f"{float(an['theory_coupled_x_logn_limit']):.3f}")
    verdicts = [k for k in an.data_vars if k.startswith("verdict_")]
    rows.append("verdicts: " + "  ".join(f"{k[8:]}={'yes' if bool(an[k]) else 'no'}" for k in verdicts))
    return "\n".join(rows)


def _validate(args):
    if args.quick:
        args.n = args.n or parse_n_grid(QUICK["n"])
        args.lam = args.lam or parse_scales(QUICK["lam"])
        args.reps = args.reps or QUICK["reps"]
        args.queries = args.queries or QUICK["queries"]
    args.n = args.n or parse_n_grid(DEFAULTS["n"])
    args.lam = args.lam or parse_scales(DEFAULTS["lam"])
    args.reps = args.reps or DEFAULTS["reps"]
    args.queries = args.queries or DEFAULTS["queries"]
    if args.d < 2:
        raise UsageError("--d must be >= 2 (the sphere S^{d-1})")
    for name in ("radius", "a_scale", "c"):
        v = getattr(args, name)
        if not (np.isfinite(v) and v > 0):
            raise UsageError(f"--{name.replace('_', '-').replace('a-scale', 'A-scale')} must be a positive number")
    if len(args.n) < 3:
        raise UsageError("--n: a rate fit needs at least 3 token counts")
    if min(args.n) < 2:
        raise UsageError("--n: token counts must be >= 2 (log n > 0 for the coupled lam_n)")
    if len(args.lam) < 2:
        raise UsageError("--lam: a bias slope needs at least 2 values")
    if args.reps < 2:
        raise UsageError("--reps: standard errors need at least 2 replicates")
    if max(args.n) * args.d > 2**31:
        raise UsageError(f"--n: {max(args.n)} tokens of dimension {args.d} do not fit in memory")
    validate_run_options(args)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    from paper_figs.hardmax import draw

    run_study(make_sweep(args), args, lambda ds: analyze(ds, args.d, args.radius, args.a_scale, args.c),
              summary_table, draw)
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog="python -m studies.hardmax")


if __name__ == "__main__":
    sys.exit(main())
