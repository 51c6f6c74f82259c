"""Uniform convergence of attention on n tokens: ``python -m studies.convergence --R 1..8``.

Measures ``E_R(n) = sup_{|x|<=R} |Gamma_{mu_n}(x) - Gamma_mu(x)|`` (Result 1 of Bohbot, Letrouit,
Peyré, Vialard) over a grid of radii R and sample sizes n, ``reps`` independent token samples
per n, and sets it against the theory for the run's own law, A and grid
(:mod:`theory.token_sample`):

* regime of each radius (:func:`theory.token_sample.uniform_regimes`): CLT once the grid has
  n >= 10 n_3(R) (the Berry-Esseen scale of the softmax weights), saturated when n_max is below
  n*(R) (effective sample size below one: a few extreme tokens dominate), transition otherwise.
  Bounded laws (sphere, ball) have polynomial n_3, so their radii are in the CLT regime;
* rate: E_R(n) ~ C(R)/sqrt(n) in the CLT regime, slower than that in the saturated one;
* constant: C(R) = sqrt(n) E_R(n) is at least sup_x E|G(x)| (the Gaussian limit at the worst
  query) and grows in the form the delta method gives for the law -- log C linear in R^2 for
  Gaussian tokens, slower for bounded laws.

Claims (:mod:`studies.claims`): ``clt_rate`` and ``C_lower`` per CLT-regime radius,
``saturated_rate`` per saturated radius, ``C_growth`` (a form comparison over >= 4 CLT-regime
radii); each is "not tested", with the reason, where the grid does not reach its regime.

Dataset (``results/convergence.zarr``): ``sup_err(R, n, rep)`` and ``argmax_radius(R, n, rep)``
(raw), per-R fits ``fit_slope``/``fit_slope_se`` over the n-window ``fit_n_min..fit_n_max``,
``C(R)``, ``C_hat(R, n)``, ``regime``, ``theory_*`` predictions, fits of log C against R and R^2
over the CLT-regime radii, and the claims (``claim_*`` over the ``claim`` dimension).
"""
from __future__ import annotations

import functools
import os
import sys

import numpy as np
import xarray as xr

from sim.attention import DEFAULT_CHUNK, TokenStream
from sim.attention.stream import BLOCK, LAWS, stream_key
from sim.backend import make_rng
from sim.distributions import DISTRIBUTIONS, make_distribution
from sim.token_sample import sup_errors
from studies.claims import ClaimSpec, predicted_form, z_family
from studies.cli import (PAIR_RATE, Part, UsageError, check_resources, check_scores, parse_n_grid, parse_range,
                         positive_float, positive_int, run_params, study_main)
from studies.fits import loglog_rate, ols
from studies.sweep import Sweep
from theory import token_sample as ts

STUDY = "convergence"
SEARCH = {"n_shells": 4, "n_refine": 6, "refine_iters": 6}
# the default study: materialised tokens, float64, n up to 2^16 (about half a minute)
DEFAULTS = {"R": "1..8", "n": "2^8..2^16", "reps": 64, "queries": 64, "tokens": "array", "precision": "float64",
            "search": SEARCH}
QUICK = {"n": "2^8..2^12", "reps": 10, "queries": 24}
PRESETS = {
    # n up to 10^8 on a radius grid that maps the transition: tokens generated inside the
    # kernel (O(block) memory) and float32 scores (about 6 minutes on 2 cores, 350 MB)
    "scale": ({"R": "1..3:0.25", "n": "1e3..1e8/11", "reps": 10, "queries": 16, "tokens": "stream",
               "precision": "float32", "search": {"n_shells": 2, "n_refine": 2, "refine_iters": 5}},
              {"n": "1e3..1e6/7", "reps": 6, "queries": 12},
              "n = 1e3..1e8, R = 1..3:0.25, tokens generated in the kernel, float32: about 6 minutes on 2 cores"),
}
TOKEN_MODES = ("array", "stream")

CLT_FACTOR = 10.0  # the CLT window is n >= CLT_FACTOR * n_3(R) (Berry-Esseen scale)
LOCAL_POINTS = 4  # outside the CLT regime, the local slope uses the last points of the grid
MIN_CLT_POINTS = 3  # sizes in the CLT window needed for a rate fit
RATE_ALLOWANCE = 0.05  # declared pre-asymptotic error of the slope in the CLT window (spec §6.2)
REGIMES = ts.REGIMES

SOURCE = "Bohbot, Letrouit, Peyré, Vialard (2025), Result 1"
CLT_RATE = ClaimSpec(
    "convergence.clt_rate", f"{SOURCE}: uniform rate C(R)/sqrt(n) (spec token_sample §2.1, §6 check 2)",
    "Where n >> n_3(R) (the CLT regime), the sup error over the ball of radius R decays like n^(-1/2).")
C_LOWER = ClaimSpec(
    "convergence.C_lower", f"{SOURCE}: the constant C(R), delta method (spec token_sample §2.1 [D])",
    "In the CLT regime, C(R) = sqrt(n) E sup is at least sup_x E|G(x)|, the error of the Gaussian limit "
    "G(x) ~ N(0, V M(x) V^T) at the worst single query.")
SATURATED = ClaimSpec(
    "convergence.saturated_rate", "spec token_sample §2.1 [D]: below n*(R) a few extreme tokens dominate "
    "(where the uniform bound 'loses practical value', Result 1)",
    "Where the largest n is below n*(R) (effective sample size of the softmax weights below one), the sup "
    "error decays more slowly than n^(-1/2).")
C_GROWTH = ClaimSpec(
    "convergence.C_growth", f"{SOURCE}: C(R) grows exponentially in R (spec token_sample §3.1, §3.2, §6 check 3)",
    "Across the radii in the CLT regime, log C(R) follows the form the delta method predicts for the law "
    "(linear in R^2 for Gaussian tokens), not the other candidate forms.")
GROWTH_FORMS = {"R^2": lambda R: R**2, "R": lambda R: R, "log R": np.log}

EXAMPLES = """\
examples:
  python -m studies.convergence --R 1..8                 # the default study (about a minute)
  python -m studies.convergence --R 0.5..2.5:0.5 --n 2^10..2^17 --plot
  python -m studies.convergence --dist sphere --d 3 --R 1..8 --quick
  python -m paper_figs.convergence results/convergence.zarr
"""


DESCRIPTION = ("Uniform convergence of attention on n i.i.d. tokens: sup over the ball |x| <= R of "
               "|Gamma_{mu_n}(x) - Gamma_mu(x)| against n, per radius R.")


def add_arguments(p) -> None:
    p.add_argument("--R", type=lambda t: parse_range(t, float), default=None,
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
    p.add_argument("--A-scale", dest="a_scale", type=positive_float, default=1.0,
                   help="score matrix A = A_SCALE * I (default 1); V = I")
    p.add_argument("--tokens", choices=TOKEN_MODES, default=None,
                   help="array: draw each sample's tokens as an array (default); stream: generate them "
                        "inside the attention kernel from a counter-based Philox stream, O(block) memory "
                        "(gaussian and sphere laws; the scale preset)")
    p.add_argument("--precision", choices=("float64", "float32"), default=None,
                   help="scores and weights in float64 (default) or float32 with float64 sums (about twice "
                        "as fast; outputs within ~1e-7 relative; the scale preset)")


def _cell(cell, *, dist_name, d, dist_params, A, V, radii, n_dirs, search, device, tokens="array",
          precision="float64"):
    """One sweep cell: draw n tokens (or a stream that generates them in the kernel), search
    the sup error for every radius."""
    dist = make_distribution(dist_name, d, **dist_params)
    n = int(cell.coords["n"])
    if tokens == "stream":
        scale = dist_params.get("scale", dist_params.get("radius", 1.0))
        sample = TokenStream(stream_key(cell.seed), n, d, law=dist_name, scale=float(scale))
    else:
        sample = dist.sample(make_rng(cell.seed, device), n)
    res = sup_errors(sample, dist, A, V, radii, n_dirs=n_dirs, precision=precision, **search)
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
        "search": {"n_dirs": args.queries, **args.search}, "device": args.device,
        "attention": {"method": "auto", "chunk": DEFAULT_CHUNK, "precision": args.precision},
        "tokens": args.tokens if args.tokens == "array" else {"mode": "stream", "block": BLOCK,
                                                              "generator": "Philox4x64-10 + Box-Muller"},
    }
    run_cell = functools.partial(_cell, dist_name=args.dist, d=d, dist_params=dist.params, A=A, V=V,
                                 radii=radii, n_dirs=args.queries, search=args.search, device=args.device,
                                 tokens=args.tokens, precision=args.precision)
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


def _stored_setup(params) -> tuple:
    """The token law, A and V of a run, from its stored parameters."""
    dist = params["dist"]
    law = make_distribution(dist["name"], int(params["d"]), **{k: v for k, v in dist.items() if k != "name"}).law
    return law, np.asarray(params["A"], dtype=float), np.asarray(params["V"], dtype=float)


def analyze(ds: xr.Dataset) -> tuple[xr.Dataset, list]:
    """Fits, theory and claims from the stored sweep (a pure function of the dataset: the law, A
    and V are the run's stored parameters). Every prediction is the theory's for this law, A and
    grid."""
    law, A, V = _stored_setup(run_params(ds))
    R = ds["R"].values
    n = ds["n"].values.astype(float)
    err = ds["sup_err"].values  # (R, n, rep)
    k = err.shape[-1]
    mean = err.mean(axis=-1)
    sem = err.std(axis=-1, ddof=1) / np.sqrt(k)
    C_hat = np.sqrt(n)[None, :] * mean
    C_hat_se = np.sqrt(n)[None, :] * sem

    log_C_th = np.array([ts.predicted_log_C(law, r, A, V) for r in R])
    log_C_lo = np.array([ts.predicted_log_C_lower(law, r, A, V) for r in R])
    log_nstar = np.array([ts.log_effective_sample_threshold_sup(law, r, A) for r in R])
    log_n3 = np.array([ts.log_normal_approx_threshold_sup(law, r, A) for r in R])
    regime, clt_window = ts.uniform_regimes(log_n3, log_nstar, n, clt_factor=CLT_FACTOR, min_points=MIN_CLT_POINTS)

    nR = len(R)
    slope, se, chi2, n_lo, n_hi, npts, C, C_se = (np.zeros(nR) for _ in range(8))
    for i in range(nR):
        window = clt_window[i].copy()
        if regime[i] != 0:
            window[:] = False
            window[-min(LOCAL_POINTS, len(n)):] = True
        fit = loglog_rate(n[window], err[i, window, :])
        slope[i], se[i], chi2[i] = fit.slope, fit.se, fit.chi2_red
        n_lo[i], n_hi[i], npts[i] = n[window].min(), n[window].max(), window.sum()
        C[i] = C_hat[i, window].mean()
        C_se[i] = np.sqrt(np.sum(C_hat_se[i, window] ** 2)) / window.sum()
    clt = regime == 0

    out = xr.Dataset(coords={"R": R, "n": ds["n"].values})
    out["mean_sup_err"] = (("R", "n"), mean, {"long_name": "mean over replicates of sup_err"})
    out["sem_sup_err"] = (("R", "n"), sem, {"long_name": "standard error of mean_sup_err"})
    out["C_hat"] = (("R", "n"), C_hat, {"long_name": "sqrt(n) * mean_sup_err"})
    out["C"] = (("R",), C, {"long_name": "C(R): mean of C_hat over the fit window"})
    out["C_se"] = (("R",), C_se, {"long_name": "standard error of C"})
    out["fit_slope"] = (("R",), slope, {"long_name": "WLS log-log slope of mean_sup_err vs n over the fit window"})
    out["fit_slope_se"] = (("R",), se, {"long_name": "standard error of fit_slope (inflated by sqrt(chi2_red) when > 1)"})
    out["fit_chi2_red"] = (("R",), chi2)
    out["fit_n_min"] = (("R",), n_lo)
    out["fit_n_max"] = (("R",), n_hi)
    out["fit_points"] = (("R",), npts.astype(np.int64))
    out["regime"] = (("R",), regime, {
        "flag_values": [0, 1, 2], "flag_meanings": " ".join(REGIMES),
        "description": f"predicted by theory.token_sample.uniform_regimes for this law, A and grid: clt = "
                       f">= {MIN_CLT_POINTS} grid points with n >= {CLT_FACTOR} n_3(R) (fit there); saturated = "
                       f"n_max < n*(R); transition = neither (local slope over the last {LOCAL_POINTS} points)"})
    out["theory_slope"] = (("R",), np.where(clt, -0.5, np.nan), {"long_name": "predicted rate in the CLT regime"})
    out["theory_log_C"] = (("R",), log_C_th, {"long_name": "log sup_x sqrt(tr V M(x) V^T) (delta method)"})
    out["theory_log_C_lower"] = (("R",), log_C_lo, {"long_name": "log sup_x E|G(x)|, G(x) ~ N(0, V M(x) V^T): "
                                                                   "the lower bound of C(R) as n -> infinity"})
    out["theory_log_n_star"] = (("R",), log_nstar, {"long_name": "log sup_x E w^2/(E w)^2 (effective-sample threshold)"})
    out["theory_log_n_3"] = (("R",), log_n3, {"long_name": "log sup_x (E w^3)^2/(E w^2)^3: the 1/sqrt(n) regime needs n >> n_3"})
    out["theory_log_sup_err"] = (("R", "n"), log_C_th[:, None] - 0.5 * np.log(n)[None, :],
                                 {"long_name": "log of C(R)/sqrt(n), the CLT-regime prediction"})
    out["C_over_theory"] = (("R",), C / np.exp(log_C_th))
    out["C_over_lower"] = (("R",), C / np.exp(log_C_lo))
    out["logC_fit_mask"] = (("R",), clt, {"description": "radii in the CLT regime: the only ones where C(R) "
                                                          "is the constant of the 1/sqrt(n) law"})
    if clt.sum() >= 2:
        for tag, xvals in (("R", R), ("R2", R**2)):
            f = ols(xvals[clt], np.log(C[clt]))
            out[f"logC_vs_{tag}_slope"] = ((), f.slope)
            out[f"logC_vs_{tag}_slope_se"] = ((), f.se)
            out[f"logC_vs_{tag}_intercept"] = ((), f.intercept)
            out[f"logC_vs_{tag}_r2"] = ((), f.r2)
        out["theory_logC_vs_R2_slope"] = ((), ols(R[clt] ** 2, log_C_th[clt]).slope,
                                          {"long_name": "slope of the delta-method log C(R) against R^2 over the same "
                                                        "radii (the leading 1/2 ||Sigma^1/2 A||^2 plus its log term)"})
    if isinstance(law, ts.GaussianLaw):
        out["theory_logC_R2_coefficient"] = ((), ts.log_C_quadratic_coefficient(law.cov, A),
                                             {"long_name": "1/2 ||Sigma^{1/2} A||^2, the predicted slope of log C vs R^2"})
    bounded = bool(np.isfinite(law.support_radius))
    return out, _claims(R, n, regime, clt_window, slope, se, C, C_se, log_C_th, log_C_lo, log_n3, log_nstar,
                        bounded)


def _claims(R, n, regime, clt_window, slope, se, C, C_se, log_C_th, log_C_lo, log_n3, log_nstar,
            bounded) -> list:
    clt, sat = regime == 0, regime == 2
    out = []
    z, zsrc = z_family(int(clt.sum()))
    for i in np.where(clt)[0]:
        where = f"R={R[i]:g}"
        win = f"n in {int(n[clt_window[i]].min())}..{int(n[clt_window[i]].max())} >= {CLT_FACTOR:g} n_3"
        out.append(CLT_RATE.equal(slope[i], se[i], -0.5, z=z, z_source=zsrc, allowance=RATE_ALLOWANCE,
                                  allowance_source="declared pre-asymptotic error of the slope (spec token_sample "
                                                   "§6 check 2: -0.5 ± 0.05)",
                                  where=where, prediction_text=f"slope -0.5 ({win})"))
        out.append(C_LOWER.at_least(C[i], C_se[i], float(np.exp(log_C_lo[i])), z=z, z_source=zsrc, where=where,
                                    prediction_text=f">= {np.exp(log_C_lo[i]):.4g} (Gaussian limit, worst query)"))
    if not clt.any():
        need = np.exp(np.log(CLT_FACTOR) + log_n3.min())
        reason = (f"no radius reaches the CLT regime on this grid ({MIN_CLT_POINTS} sizes with n >= {CLT_FACTOR:g} "
                  f"n_3(R)); the smallest radius R={R[np.argmin(log_n3)]:g} needs n >= {need:.3g}")
        out.append(CLT_RATE.not_tested(reason, prediction_text="slope -0.5"))
        out.append(C_LOWER.not_tested(reason))
    z, zsrc = z_family(int(sat.sum()))
    for i in np.where(sat)[0]:
        out.append(SATURATED.exceeds(slope[i], se[i], -0.5, z=z, z_source=zsrc, where=f"R={R[i]:g}",
                                     prediction_text=f"local slope > -0.5 (n_max < n* = {np.exp(log_nstar[i]):.3g})"))
    if not sat.any():
        out.append(SATURATED.not_tested(
            "no radius has n_max < n*(R) on this grid (for a bounded law n*(R) grows only polynomially, so "
            "the theory predicts the CLT rate at every radius)" if bounded else
            "no radius has n_max < n*(R) on this grid", prediction_text="local slope > -0.5"))
    z, zsrc = z_family(1)
    Rc = R[clt]
    form = predicted_form(Rc, log_C_th[clt], GROWTH_FORMS) if clt.sum() >= 3 else None
    if clt.sum() < 4:
        hint = predicted_form(R, log_C_th, GROWTH_FORMS) if R.size >= 3 else None
        out.append(C_GROWTH.not_tested(
            f"{int(clt.sum())} radius(es) in the CLT regime; comparing the forms of log C(R) needs >= 4 "
            "(raise n_max: radius R enters the regime near n = 10 n_3(R), see theory_log_n_3)",
            prediction_text=f"log C linear in {hint}" if hint else "the delta-method form"))
    else:
        out.append(C_GROWTH.forms(Rc, np.log(C[clt]), C_se[clt] / C[clt], GROWTH_FORMS, form, z=z, z_source=zsrc,
                                  what="log C"))
    return out


def summary(ds: xr.Dataset) -> str:
    rows = [f"{'R':>6}  {'regime':<10} {'n-window':<15} {'slope ± se':<17} {'predicted':<14} "
            f"{'C':>9} {'C_lower':>9}"]
    for i, r in enumerate(ds["R"].values):
        reg = REGIMES[int(ds["regime"].values[i])]
        win = f"{int(ds['fit_n_min'].values[i])}..{int(ds['fit_n_max'].values[i])}"
        sl = f"{ds['fit_slope'].values[i]:+.3f} ± {ds['fit_slope_se'].values[i]:.3f}"
        th = {"clt": "-0.5", "saturated": "> -0.5", "transition": "(none)"}[reg]
        lower = f"{np.exp(ds['theory_log_C_lower'].values[i]):9.3g}" if reg == "clt" else f"{'-':>9}"
        rows.append(f"{r:>6g}  {reg:<10} {win:<15} {sl:<17} {th:<14} {ds['C'].values[i]:9.3g} {lower}")
    if "logC_vs_R2_slope" in ds:
        line = (f"log C(R) over the CLT-regime radii: vs R slope {float(ds['logC_vs_R_slope']):.3f} "
                f"(R²={float(ds['logC_vs_R_r2']):.3f}); vs R² slope {float(ds['logC_vs_R2_slope']):.3f} "
                f"± {float(ds['logC_vs_R2_slope_se']):.3f} (R²={float(ds['logC_vs_R2_r2']):.3f}); the delta-method "
                f"curve's over the same radii {float(ds['theory_logC_vs_R2_slope']):.3f}")
        if "theory_logC_R2_coefficient" in ds:
            line += f", its leading coefficient 1/2 |Σ^1/2 A|² = {float(ds['theory_logC_R2_coefficient']):.3f}"
        rows.append(line)
    return "\n".join(rows)


def validate(args) -> None:
    if args.tokens == "stream":
        if args.dist not in LAWS:
            raise UsageError(f"--tokens stream generates {' and '.join(LAWS)} tokens; --dist {args.dist} needs "
                             "--tokens array")
        if args.device == "gpu":
            raise UsageError("--tokens stream is the CPU kernel's; on the GPU use --tokens array")
    if min(args.R) <= 0:
        raise UsageError(f"--R: radii must be positive (got {min(args.R):g})")
    if len(args.n) < 3:
        raise UsageError("--n: a rate fit needs at least 3 sample sizes")
    if args.reps < 2:
        raise UsageError("--reps: standard errors need at least 2 replicates")
    n_max, d = max(args.n), args.d
    check_scores(args.a_scale * max(args.R) * (1.0 + np.sqrt(2 * np.log(n_max))), "--A-scale x --R")
    search = args.search
    queries = len(args.R) * (1 + search["n_shells"] * (args.queries + 4)
                             + search["refine_iters"] * search["n_refine"] * (2 * d + 2))
    held = 12 * (os.cpu_count() or 1) * d * BLOCK + 2**28 if args.tokens == "stream" else 3 * n_max * d * 8
    check_resources(f"--n up to {n_max} tokens in d = {d}",
                    memory=held + 8.0 * (8 * d * d + 4 * queries * d),
                    work_s=args.reps * sum(args.n) * queries * d / PAIR_RATE)


def parts(args) -> list[Part]:
    return [Part("", sweep=make_sweep(args))]


def main(argv=None) -> int:
    return study_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
