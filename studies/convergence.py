"""Uniform convergence of attention on n tokens: ``python -m studies.convergence --R 1..8``.

Measures ``E_R(n) = sup_{|x|<=R} |Gamma_{mu_n}(x) - Gamma_mu(x)|`` (Result 1 of Bohbot, Letrouit,
Peyré, Vialard) over a grid of radii R and sample sizes n, ``reps`` independent token samples
per n, and sets it against the theory:

* rate: E_R(n) ~ C(R)/sqrt(n) once n >> n*(R) = sup_{|x|<=R} E w^2/(E w)^2 (CLT regime);
  below n*(R) a few extreme tokens dominate and the error decays only logarithmically;
* constant: C(R) = sqrt(n) E_R(n) grows like exp(||Sigma^{1/2}A||^2 R^2 / 2) for Gaussian tokens
  (log C quadratic in R), polynomially for bounded laws such as the sphere.

Dataset (``results/convergence.zarr``): ``sup_err(R, n, rep)`` and ``argmax_radius(R, n, rep)``
(raw), per-R fits ``fit_slope``/``fit_slope_se`` over the n-window ``fit_n_min..fit_n_max``,
``C(R)``, ``C_hat(R, n)``, ``theory_*`` predictions, fits of log C against R and R^2, and
``verdict_*`` booleans with their tolerances in the attributes.
"""
from __future__ import annotations

import argparse
import functools
import sys

import numpy as np
import xarray as xr

from sim.attention import DEFAULT_CHUNK
from sim.backend import make_rng
from sim.distributions import DISTRIBUTIONS, make_distribution
from sim.token_sample import sup_errors
from studies.cli import (StudyParser, UsageError, add_common_arguments, parse_n_grid, parse_range,
                         positive_int, run_main, run_study, validate_run_options)
from studies.fits import loglog_rate, ols
from studies.sweep import Sweep
from theory import token_sample as ts

STUDY = "convergence"
DEFAULTS = {"n": "2^8..2^16", "reps": 64, "queries": 64}
QUICK = {"n": "2^8..2^12", "reps": 10, "queries": 24}
SEARCH = {"n_shells": 4, "n_refine": 6, "refine_iters": 6}

# verdict tolerances (recorded in the dataset)
CLT_FACTOR = 10.0  # the CLT window is n >= CLT_FACTOR * n_3(R) (Berry-Esseen scale)
LOCAL_POINTS = 4  # outside the CLT regime, the local slope uses the last points of the grid
RATE_TOL = 0.08  # |slope + 1/2| in the CLT regime
LOG_REGIME_SLOPE = -0.15  # at the largest, saturated radius: local slope flatter than this
C_RATIO_BAND = (0.8, 4.0)  # C / theory_C in the CLT regime (sup of the error process: order one)
FLATTENING = 0.2  # slope(R_max) - slope(R_min) at least this much when the grid spans regimes
REGIMES = ("clt", "transition", "saturated")

EXAMPLES = """\
examples:
  python -m studies.convergence --R 1..8                 # the default study (about a minute)
  python -m studies.convergence --R 0.5..2.5:0.5 --n 2^10..2^17 --plot
  python -m studies.convergence --dist sphere --d 3 --R 1..8 --quick
  python -m paper_figs.convergence results/convergence.zarr
"""


def build_parser() -> argparse.ArgumentParser:
    p = StudyParser(
        prog="python -m studies.convergence",
        description="Uniform convergence of attention on n i.i.d. tokens: sup over the ball "
                    "|x| <= R of |Gamma_{mu_n}(x) - Gamma_mu(x)| against n, per radius R.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--R", type=lambda t: parse_range(t, float), default=parse_range("1..8", float),
                   metavar="RANGE", help="radii of the query balls: 1..8 (inclusive), 0.5..2:0.5, 1,2,4 "
                                         "(default 1..8)")
    p.add_argument("--n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"sample sizes: 2^8..2^16, 1e3..1e5/9, 1000,4000 (default {DEFAULTS['n']}; "
                        f"--quick {QUICK['n']})")
    p.add_argument("--reps", type=positive_int, default=None,
                   help=f"independent token samples per n (default {DEFAULTS['reps']}; --quick {QUICK['reps']})")
    p.add_argument("--d", type=positive_int, default=2, help="token dimension (default 2)")
    p.add_argument("--dist", choices=DISTRIBUTIONS, default="gaussian",
                   help="token law (default gaussian = N(0, I))")
    p.add_argument("--queries", type=positive_int, default=None,
                   help=f"directions per radial shell in the sup search (default {DEFAULTS['queries']}; "
                        f"--quick {QUICK['queries']})")
    p.add_argument("--A-scale", dest="a_scale", type=float, default=1.0,
                   help="score matrix A = A_SCALE * I (default 1); V = I")
    add_common_arguments(p, STUDY)
    return p


def _cell(cell, *, dist_name, d, dist_params, A, V, radii, n_dirs, search, device):
    """One sweep cell: draw n tokens, search the sup error for every radius."""
    dist = make_distribution(dist_name, d, **dist_params)
    rng = make_rng(cell.seed, device)
    tokens = dist.sample(rng, int(cell.coords["n"]))
    res = sup_errors(tokens, dist, A, V, radii, n_dirs=n_dirs, **search)
    return {"sup_err": res.value, "argmax_radius": np.linalg.norm(res.argmax, axis=1)}


def make_sweep(args) -> Sweep:
    d = args.d
    dist = make_distribution(args.dist, d)
    A = args.a_scale * np.eye(d)
    V = np.eye(d)
    radii = np.asarray(args.R, dtype=float)
    n = np.asarray(args.n, dtype=np.int64)
    params = {
        "R": radii.tolist(), "n": n.tolist(), "reps": args.reps, "d": d,
        "dist": {"name": args.dist, **dist.params}, "A": A.tolist(), "V": V.tolist(), "lam": 1.0,
        "search": {"n_dirs": args.queries, **SEARCH}, "device": args.device,
        "attention": {"method": "auto", "chunk": DEFAULT_CHUNK},
    }
    run_cell = functools.partial(_cell, dist_name=args.dist, d=d, dist_params=dist.params, A=A, V=V,
                                 radii=radii, n_dirs=args.queries, search=SEARCH, device=args.device)
    return Sweep(
        study=STUDY,
        cell_dims={"n": n, "rep": np.arange(args.reps)},
        variables={"sup_err": ("R", "n", "rep"), "argmax_radius": ("R", "n", "rep")},
        coords={"R": radii},
        params=params,
        run_cell=run_cell,
        root_seed=args.seed,
        attrs={"device": args.device, "token_law": dist.describe(),
               "convention": "scores <A x, y>, values V y; Gamma_mu(x) = V E[y e^<Ax,y>]/E[e^<Ax,y>]; "
                             "tokens shared across R within each (n, rep) cell"},
        var_attrs={
            "sup_err": {"long_name": "sup_{|x|<=R} |Gamma_{mu_n}(x) - Gamma_mu(x)|_2 (searched)"},
            "argmax_radius": {"long_name": "|x| at which the largest error was found"},
        },
    )


def analyze(ds: xr.Dataset, law, A, V) -> xr.Dataset:
    """Fits, theory and verdicts from the raw sweep (a pure function of the dataset)."""
    R = ds["R"].values
    n = ds["n"].values.astype(float)
    err = ds["sup_err"].values  # (R, n, rep)
    k = err.shape[-1]
    mean = err.mean(axis=-1)
    sd = err.std(axis=-1, ddof=1)
    C_hat = np.sqrt(n)[None, :] * mean

    log_C_th = np.array([ts.predicted_log_C(law, r, A, V) for r in R])
    log_nstar = np.array([ts.log_effective_sample_threshold_sup(law, r, A) for r in R])
    log_n3 = np.array([ts.log_normal_approx_threshold_sup(law, r, A) for r in R])

    nR = len(R)
    regime = np.zeros(nR, dtype=np.int8)
    slope, se, chi2, n_lo, n_hi, npts, C = (np.zeros(nR) for _ in range(7))
    for i in range(nR):
        in_clt = np.log(n) >= np.log(CLT_FACTOR) + log_n3[i]
        if in_clt.sum() >= 3:
            regime[i] = 0
            window = in_clt
        else:
            regime[i] = 1 if np.log(n[-1]) >= log_nstar[i] else 2
            window = np.zeros(len(n), dtype=bool)
            window[-min(LOCAL_POINTS, len(n)):] = True
        fit = loglog_rate(n[window], err[i, window, :])
        slope[i], se[i], chi2[i] = fit.slope, fit.se, fit.chi2_red
        n_lo[i], n_hi[i], npts[i] = n[window].min(), n[window].max(), window.sum()
        C[i] = C_hat[i, window].mean()

    verdict_rate = np.where(regime == 0, np.abs(slope + 0.5) <= RATE_TOL,
                            np.where(regime == 2, slope > -0.5 + RATE_TOL,
                                     (slope >= -0.5 - RATE_TOL) & (slope <= 0.0)))
    ratio = C / np.exp(log_C_th)
    clt = regime == 0

    out = xr.Dataset(coords={"R": R, "n": ds["n"].values})
    out["mean_sup_err"] = (("R", "n"), mean, {"long_name": "mean over replicates of sup_err"})
    out["sem_sup_err"] = (("R", "n"), sd / np.sqrt(k), {"long_name": "standard error of mean_sup_err"})
    out["C_hat"] = (("R", "n"), C_hat, {"long_name": "sqrt(n) * mean_sup_err"})
    out["C"] = (("R",), C, {"long_name": "C(R): mean of C_hat over the fit window"})
    out["fit_slope"] = (("R",), slope, {"long_name": "WLS log-log slope of mean_sup_err vs n over the fit window"})
    out["fit_slope_se"] = (("R",), se, {"long_name": "standard error of fit_slope (inflated by sqrt(chi2_red) when > 1)"})
    out["fit_chi2_red"] = (("R",), chi2)
    out["fit_n_min"] = (("R",), n_lo)
    out["fit_n_max"] = (("R",), n_hi)
    out["fit_points"] = (("R",), npts.astype(np.int64))
    out["regime"] = (("R",), regime, {
        "flag_values": [0, 1, 2], "flag_meanings": " ".join(REGIMES),
        "description": f"clt: >= 3 grid points with n >= {CLT_FACTOR} n_3(R) (fit there); "
                       f"transition: n_max >= n*(R); saturated: n_max < n*(R) "
                       f"(local slope over the last {LOCAL_POINTS} points)"})
    out["theory_slope"] = (("R",), np.full(nR, -0.5), {"long_name": "asymptotic rate (n -> infinity)"})
    out["theory_log_C"] = (("R",), log_C_th, {"long_name": "log sup_x sqrt(tr V M(x) V^T) (delta method)"})
    out["theory_log_n_star"] = (("R",), log_nstar, {"long_name": "log sup_x E w^2/(E w)^2 (effective-sample threshold)"})
    out["theory_log_n_3"] = (("R",), log_n3, {"long_name": "log sup_x (E w^3)^2/(E w^2)^3: the 1/sqrt(n) regime needs n >> n_3"})
    out["theory_log_sup_err"] = (("R", "n"), log_C_th[:, None] - 0.5 * np.log(n)[None, :],
                                 {"long_name": "log of C(R)/sqrt(n), the CLT-regime prediction"})
    out["C_over_theory"] = (("R",), ratio)

    fit_mask = clt if clt.sum() >= 3 else np.ones(nR, dtype=bool)
    out["logC_fit_mask"] = (("R",), fit_mask, {"description": "radii used in the log C fits "
                                               "(the CLT-regime radii when there are >= 3, else all)"})
    if fit_mask.sum() >= 2:
        for tag, xvals in (("R", R), ("R2", R**2)):
            f = ols(xvals[fit_mask], np.log(C[fit_mask]))
            out[f"logC_vs_{tag}_slope"] = ((), f.slope)
            out[f"logC_vs_{tag}_intercept"] = ((), f.intercept)
            out[f"logC_vs_{tag}_r2"] = ((), f.r2)
    if isinstance(law, ts.GaussianLaw):
        out["theory_logC_R2_coefficient"] = ((), ts.log_C_quadratic_coefficient(law.cov, A),
                                             {"long_name": "1/2 ||Sigma^{1/2} A||^2, the predicted slope of log C vs R^2"})

    out["verdict_rate"] = (("R",), verdict_rate.astype(bool), {
        "description": f"clt: |slope + 1/2| <= {RATE_TOL}; saturated: slope > {-0.5 + RATE_TOL} "
                       f"(slower than the CLT rate); transition: {-0.5 - RATE_TOL} <= slope <= 0"})
    out["verdict_clt_rate"] = ((), bool(clt.any() and verdict_rate[clt].all()),
                               {"description": f"every CLT-regime radius has |slope + 1/2| <= {RATE_TOL} "
                                               "(False when no radius reaches the CLT regime)"})
    out["verdict_log_regime"] = ((), bool(regime[-1] == 2 and slope[-1] > LOG_REGIME_SLOPE),
                                 {"description": f"the largest radius is saturated (n_max < n*) and its local "
                                                 f"slope is flatter than {LOG_REGIME_SLOPE}: the logarithmic regime"})
    out["verdict_flattening"] = ((), bool(nR >= 2 and slope[-1] - slope[0] >= FLATTENING),
                                 {"description": f"slope(R_max) - slope(R_min) >= {FLATTENING}"})
    out["verdict_C_order"] = ((), bool(clt.any() and np.all((ratio[clt] >= C_RATIO_BAND[0]) & (ratio[clt] <= C_RATIO_BAND[1]))),
                              {"description": f"C / theory_C in {list(C_RATIO_BAND)} for every CLT-regime radius"})
    out.attrs["verdict_tolerances"] = (
        f"CLT_FACTOR={CLT_FACTOR}; RATE_TOL={RATE_TOL}; LOG_REGIME_SLOPE={LOG_REGIME_SLOPE}; "
        f"C_RATIO_BAND={list(C_RATIO_BAND)}; FLATTENING={FLATTENING}; LOCAL_POINTS={LOCAL_POINTS}")
    return out


def summary_table(ds: xr.Dataset) -> str:
    rows = [f"{'R':>6}  {'regime':<10} {'n-window':<15} {'slope ± se':<17} {'theory':<14} {'C/C_th':>7}  verdict"]
    for i, r in enumerate(ds["R"].values):
        reg = REGIMES[int(ds["regime"].values[i])]
        win = f"{int(ds['fit_n_min'].values[i])}..{int(ds['fit_n_max'].values[i])}"
        sl = f"{ds['fit_slope'].values[i]:+.3f} ± {ds['fit_slope_se'].values[i]:.3f}"
        th = "-0.5" if reg == "clt" else ("→ 0 (log)" if reg == "saturated" else "between")
        ratio = f"{ds['C_over_theory'].values[i]:.2f}" if reg == "clt" else "-"
        ok = "ok" if bool(ds["verdict_rate"].values[i]) else "FAIL"
        rows.append(f"{r:>6g}  {reg:<10} {win:<15} {sl:<17} {th:<14} {ratio:>7}  {ok}")
    if "logC_vs_R2_slope" in ds:
        line = (f"log C(R): vs R slope {float(ds['logC_vs_R_slope']):.3f} (R²={float(ds['logC_vs_R_r2']):.3f}); "
                f"vs R² slope {float(ds['logC_vs_R2_slope']):.3f} (R²={float(ds['logC_vs_R2_r2']):.3f})")
        if "theory_logC_R2_coefficient" in ds:
            line += f"; theory R² coefficient {float(ds['theory_logC_R2_coefficient']):.3f} (CLT regime)"
        rows.append(line)
    verdicts = [k for k in ds.data_vars if k.startswith("verdict_") and ds[k].ndim == 0]
    rows.append("verdicts: " + "  ".join(f"{k[8:]}={'yes' if bool(ds[k]) else 'no'}" for k in verdicts))
    return "\n".join(rows)


def _validate(args):
    if args.quick:
        args.n = args.n or parse_n_grid(QUICK["n"])
        args.reps = args.reps or QUICK["reps"]
        args.queries = args.queries or QUICK["queries"]
    args.n = args.n or parse_n_grid(DEFAULTS["n"])
    args.reps = args.reps or DEFAULTS["reps"]
    args.queries = args.queries or DEFAULTS["queries"]
    if min(args.R) <= 0:
        raise UsageError(f"--R: radii must be positive (got {min(args.R):g})")
    if len(args.n) < 3:
        raise UsageError("--n: a rate fit needs at least 3 sample sizes")
    if args.reps < 2:
        raise UsageError("--reps: standard errors need at least 2 replicates")
    if not (np.isfinite(args.a_scale) and args.a_scale > 0):
        raise UsageError("--A-scale must be a positive number")
    if max(args.n) * args.d > 2**31:
        raise UsageError(f"--n: {max(args.n)} tokens of dimension {args.d} do not fit in memory")
    validate_run_options(args)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    from paper_figs.convergence import draw

    law = make_distribution(args.dist, args.d).law
    run_study(make_sweep(args), args, lambda ds: analyze(ds, law, args.a_scale * np.eye(args.d), np.eye(args.d)),
              summary_table, draw)
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog="python -m studies.convergence")


if __name__ == "__main__":
    sys.exit(main())
