"""Uniform convergence of attention on n tokens: ``python -m studies.convergence --R 1..8``.

Measures ``E_R(n) = sup_{|x|<=R} |Gamma_{mu_n}(x) - Gamma_mu(x)|`` (Result 1 of Bohbot, Letrouit,
Peyré, Vialard) over a grid of radii R and sample sizes n, ``reps`` independent token samples
per n, and sets it against the theory for the run's own law, A and grid
(:mod:`theory.token_sample`; notes token_sample §2.1, §2.5, §2.6):

* regime of each radius (:func:`theory.token_sample.uniform_regimes`): CLT once the grid has
  n >= 10 n_3(R) (the Berry-Esseen scale of the softmax weights), saturated when n_max is below
  n*(R) (effective sample size below one: a few extreme tokens dominate), transition otherwise.
  Bounded laws (sphere, ball) have polynomial n_3, so their radii are in the CLT regime;
* rate: E_R(n) ~ C(R)/sqrt(n) in the CLT regime; in the saturated regime the local slope of
  the pre-asymptotic curve of the worst query (Gaussian tokens: a one-dimensional theory object,
  :func:`theory.token_sample.gaussian_saturated_error`);
* constant: C(R) = sqrt(n) E_R(n) tends to ``E sup_{|x|<=R} |G(x)|``, G the Gaussian limit process
  of the error with covariance K(x, x') = E[IF_x IF_x'^T]
  (:func:`theory.token_sample.expected_sup_norm`, a seeded Monte Carlo of G on refined grids of
  the ball); it is at least sup_x E|G(x)| (the worst single query), and it grows with R as
  E sup|G| does -- log C linear in R^2 for Gaussian tokens, slower for bounded laws.

Claims (:mod:`studies.claims`): ``clt_rate``, ``C_limit`` and ``C_lower`` per CLT-regime radius,
``saturated_rate`` per saturated radius, ``C_growth`` (over >= 4 CLT-regime radii: the form of
log C and its growth against E sup|G| radius by radius); each is "not tested", with the reason,
where the grid does not reach its regime or the theory has no value for the law.

Dataset (``results/convergence.zarr``): ``sup_err(R, n, rep)`` and ``argmax_radius(R, n, rep)``
(raw), per-R fits ``fit_slope``/``fit_slope_se`` over the n-window ``fit_n_min..fit_n_max``,
``C(R)``, ``C_hat(R, n)``, ``regime``, ``theory_*`` predictions (delta method, lower bound, E sup|G|
with its Monte Carlo and grid errors, the saturated curve's slope), fits of log C against R and
R^2 over the CLT-regime radii, and the claims (``claim_*`` over the ``claim`` dimension).
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
from studies.claims import ClaimSpec, predicted_form, worst_of, z_family
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
RATE_ALLOWANCE = 0.05  # declared pre-asymptotic error of the slope in the CLT window (notes §6.2)
LIMIT_SAMPLES = 4000  # draws of the limit process G for E sup|G| (notes §2.5)
LIMIT_MAX_DIM = 3  # above this dimension a grid of the ball fine enough for sup|G| is out of reach (notes §2.5)
SATURATED_REPS = 400  # replicates of the one-dimensional saturated curve (notes §2.6)
SATURATED_SUP = 0.25  # the sup over the ball changes the worst query's local slope by up to this fraction (§2.6)
SATURATED_MAX_DIM = 3  # above it the sup over the directions flattens the slope by more than that (§2.6)
THEORY_SPAWN = 2_000_003  # spawn key of the theory Monte Carlo seeds (cells use (n, rep) keys)
REGIMES = ts.REGIMES

SOURCE = "Bohbot, Letrouit, Peyré, Vialard (2025), Result 1"
CLT_RATE = ClaimSpec(
    "convergence.clt_rate", f"{SOURCE}: uniform rate C(R)/sqrt(n) (notes token_sample §2.1, §6.2)",
    "Where n >> n_3(R) (the CLT regime), the sup error over the ball of radius R decays like n^(-1/2).")
C_LIMIT = ClaimSpec(
    "convergence.C_limit", f"{SOURCE}: the constant C(R) is E sup|G| of the Gaussian limit process "
                           "(notes token_sample §2.5)",
    "In the CLT regime, C(R) = sqrt(n) E sup equals E sup_{|x|<=R} |G(x)|, G the centred Gaussian process with "
    "covariance K(x, x') = E[IF_x(Y) IF_x'(Y)^T], IF_x(y) = w(x, y)(V y - Gamma(x)) / E w(x, Y).")
C_LOWER = ClaimSpec(
    "convergence.C_lower", f"{SOURCE}: the constant C(R), delta method (notes token_sample §2.1)",
    "In the CLT regime, C(R) = sqrt(n) E sup is at least sup_x E|G(x)|, the error of the Gaussian limit "
    "G(x) ~ N(0, V M(x) V^T) at the worst single query.")
SATURATED = ClaimSpec(
    "convergence.saturated_rate", "notes token_sample §2.1, §2.6: below n*(R) a few extreme tokens dominate "
    "(where the uniform bound 'loses practical value', Result 1)",
    "Where the largest n is below n*(R) (effective sample size of the softmax weights below one), the local slope "
    "of the sup error is that of the theory's pre-asymptotic curve at the worst query (Gaussian tokens), within "
    "a declared fraction for the sup over the ball.")
C_GROWTH = ClaimSpec(
    "convergence.C_growth", f"{SOURCE}: C(R) grows exponentially in R (notes token_sample §2.5, §3.1, §3.2, §6.3)",
    "Across the radii in the CLT regime, log C(R) follows the form the delta method predicts (linear in R^2 for "
    "Gaussian tokens), not the other candidate forms, and C(R)/C(R_min) equals E sup|G|(R)/E sup|G|(R_min) at "
    "every radius.")
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


def _measured(err, n):
    """Mean, standard error and sqrt(n) x mean of the sup errors (R, n, rep)."""
    k = err.shape[-1]
    mean = err.mean(axis=-1)
    sem = err.std(axis=-1, ddof=1) / np.sqrt(k)
    return mean, sem, np.sqrt(n)[None, :] * mean, np.sqrt(n)[None, :] * sem


def _fits(n, err, regime, clt_window, C_hat, C_hat_se):
    """Per radius: the rate fit over its window (the CLT window, else the last LOCAL_POINTS
    sizes), the window, and C(R), the mean of C_hat over the window, with its standard error."""
    nR = err.shape[0]
    slope, se, chi2, n_lo, n_hi, npts, C, C_se = (np.zeros(nR) for _ in range(8))
    windows = np.zeros((nR, n.size), dtype=bool)
    for i in range(nR):
        window = clt_window[i].copy()
        if regime[i] != 0:
            window[:] = False
            window[-min(LOCAL_POINTS, len(n)):] = True
        windows[i] = window
        fit = loglog_rate(n[window], err[i, window, :])
        slope[i], se[i], chi2[i] = fit.slope, fit.se, fit.chi2_red
        n_lo[i], n_hi[i], npts[i] = n[window].min(), n[window].max(), window.sum()
        C[i] = C_hat[i, window].mean()
        C_se[i] = np.sqrt(np.sum(C_hat_se[i, window] ** 2)) / window.sum()
    return dict(slope=slope, se=se, chi2=chi2, n_lo=n_lo, n_hi=n_hi, npts=npts, C=C, C_se=C_se, windows=windows)


def _seed(root_seed: int, *key) -> np.random.SeedSequence:
    """The seed of a theory Monte Carlo of this run: from its stored root seed, so the analysis
    is a pure function of the store."""
    return np.random.SeedSequence(int(root_seed), spawn_key=(THEORY_SPAWN, *key))


def _limit(law, A, V, R, clt, n, windows, log_n3, root_seed) -> dict:
    """E sup|G| per CLT radius (notes §2.5) with its Monte Carlo and grid errors, and the declared
    pre-asymptotic allowance: relative size n_3(R)/n, averaged over the fit window."""
    out = {k: np.full(R.size, np.nan) for k in ("esup", "esup_se", "disc", "pre", "points")}
    for i in np.where(clt)[0]:
        out["pre"][i] = float(np.mean(np.exp(log_n3[i]) / n[windows[i]]))
        if law.dim > LIMIT_MAX_DIM:
            continue
        res = ts.expected_sup_norm(law, float(R[i]), A, V, seed=_seed(root_seed, 0, i), n_samples=LIMIT_SAMPLES)
        out["esup"][i], out["esup_se"][i], out["disc"][i] = res.value, res.se, res.discretisation
        out["points"][i] = res.points[-1]
    return out


def _saturation(law, A, V, R, n, sat, windows, mean, sem, root_seed) -> dict:
    """The local slope of the theory's pre-asymptotic curve (Gaussian tokens, notes §2.6) over
    each saturated radius' window, with the measurement's weights, and its Monte Carlo error."""
    out = {"slope": np.full(R.size, np.nan), "slope_se": np.full(R.size, np.nan)}
    if not isinstance(law, ts.GaussianLaw) or law.dim > SATURATED_MAX_DIM:
        return out
    for i in np.where(sat)[0]:
        curve = ts.gaussian_saturated_error(law, float(R[i]), A, V, n=n.astype(np.int64), seed=_seed(root_seed, 1, i),
                                            reps=SATURATED_REPS)
        w = (mean[i] / sem[i]) ** 2
        out["slope"][i], out["slope_se"][i] = ts.curve_loglog_slope(curve, windows[i], w[windows[i]])
    return out


def analyze(ds: xr.Dataset) -> tuple[xr.Dataset, list]:
    """Fits, theory and claims from the stored sweep (a pure function of the dataset: the law, A
    and V are the run's stored parameters, the theory's Monte Carlo seeds come from its root
    seed). Every prediction is the theory's for this law, A and grid."""
    law, A, V = _stored_setup(run_params(ds))
    root_seed = int(ds.attrs.get("root_seed", 0))
    R = ds["R"].values
    n = ds["n"].values.astype(float)
    err = ds["sup_err"].values  # (R, n, rep)
    mean, sem, C_hat, C_hat_se = _measured(err, n)
    th = {"log_C": np.array([ts.predicted_log_C(law, r, A, V) for r in R]),
          "log_C_lo": np.array([ts.predicted_log_C_lower(law, r, A, V) for r in R]),
          "log_nstar": np.array([ts.log_effective_sample_threshold_sup(law, r, A) for r in R]),
          "log_n3": np.array([ts.log_normal_approx_threshold_sup(law, r, A) for r in R])}
    regime, clt_window = ts.uniform_regimes(th["log_n3"], th["log_nstar"], n, clt_factor=CLT_FACTOR,
                                            min_points=MIN_CLT_POINTS)
    f = _fits(n, err, regime, clt_window, C_hat, C_hat_se)
    th["limit"] = _limit(law, A, V, R, regime == 0, n, f["windows"], th["log_n3"], root_seed)
    th["sat"] = _saturation(law, A, V, R, n, regime == 2, f["windows"], mean, sem, root_seed)
    out = _dataset(ds, law, A, R, n, mean, sem, C_hat, regime, f, th)
    run = dict(R=R, n=n, k=err.shape[-1], regime=regime, clt_window=clt_window, bounded=bool(np.isfinite(
        law.support_radius)), gaussian=isinstance(law, ts.GaussianLaw), dim=law.dim)
    return out, _claims(run, f, th)


def _dataset(ds, law, A, R, n, mean, sem, C_hat, regime, f, th) -> xr.Dataset:
    """The analysis variables: measurements, fits, the theory's curves and the regimes."""
    clt = regime == 0
    C = f["C"]
    lim, sat = th["limit"], th["sat"]
    out = xr.Dataset(coords={"R": R, "n": ds["n"].values})
    out["mean_sup_err"] = (("R", "n"), mean, {"long_name": "mean over replicates of sup_err"})
    out["sem_sup_err"] = (("R", "n"), sem, {"long_name": "standard error of mean_sup_err"})
    out["C_hat"] = (("R", "n"), C_hat, {"long_name": "sqrt(n) * mean_sup_err"})
    out["C"] = (("R",), C, {"long_name": "C(R): mean of C_hat over the fit window"})
    out["C_se"] = (("R",), f["C_se"], {"long_name": "standard error of C"})
    out["fit_slope"] = (("R",), f["slope"], {"long_name": "WLS log-log slope of mean_sup_err vs n over the fit window"})
    out["fit_slope_se"] = (("R",), f["se"], {"long_name": "standard error of fit_slope (inflated by sqrt(chi2_red) "
                                                           "when > 1)"})
    out["fit_chi2_red"] = (("R",), f["chi2"])
    out["fit_n_min"] = (("R",), f["n_lo"])
    out["fit_n_max"] = (("R",), f["n_hi"])
    out["fit_points"] = (("R",), f["npts"].astype(np.int64))
    out["regime"] = (("R",), regime, {
        "flag_values": [0, 1, 2], "flag_meanings": " ".join(REGIMES),
        "description": f"predicted by theory.token_sample.uniform_regimes for this law, A and grid: clt = "
                       f">= {MIN_CLT_POINTS} grid points with n >= {CLT_FACTOR} n_3(R) (fit there); saturated = "
                       f"n_max < n*(R); transition = neither (local slope over the last {LOCAL_POINTS} points)"})
    out["theory_slope"] = (("R",), np.where(clt, -0.5, np.nan), {"long_name": "predicted rate in the CLT regime"})
    out["theory_log_C"] = (("R",), th["log_C"], {"long_name": "log sup_x sqrt(tr V M(x) V^T) (delta method)"})
    out["theory_log_C_lower"] = (("R",), th["log_C_lo"], {"long_name": "log sup_x E|G(x)|, G(x) ~ N(0, V M(x) V^T): "
                                                                         "the lower bound of C(R) as n -> infinity"})
    out["theory_C_limit"] = (("R",), lim["esup"], {"long_name": "E sup_{|x|<=R} |G(x)|, G the Gaussian limit "
                                                                "process (Monte Carlo on a grid; CLT radii only)"})
    out["theory_C_limit_se"] = (("R",), lim["esup_se"], {"long_name": "Monte Carlo standard error of theory_C_limit"})
    out["theory_C_limit_grid_error"] = (("R",), lim["disc"], {"long_name": "declared discretisation error of the "
                                                                           "finest grid (refinement, notes §2.5)"})
    out["theory_C_limit_points"] = (("R",), lim["points"], {"long_name": "points of the finest grid"})
    out["theory_C_preasymptotic"] = (("R",), lim["pre"], {"long_name": "declared relative pre-asymptotic error of "
                                                                       "C: mean of n_3(R)/n over the fit window"})
    out["theory_saturated_slope"] = (("R",), sat["slope"], {
        "long_name": "local log-log slope of the pre-asymptotic curve at the worst query over the fit window "
                     "(Gaussian tokens, saturated radii; notes §2.6)"})
    out["theory_saturated_slope_se"] = (("R",), sat["slope_se"], {"long_name": "its Monte Carlo standard error"})
    out["theory_log_n_star"] = (("R",), th["log_nstar"], {"long_name": "log sup_x E w^2/(E w)^2 (effective-sample "
                                                                         "threshold)"})
    out["theory_log_n_3"] = (("R",), th["log_n3"], {"long_name": "log sup_x (E w^3)^2/(E w^2)^3: the 1/sqrt(n) "
                                                                   "regime needs n >> n_3"})
    out["theory_log_sup_err"] = (("R", "n"), th["log_C"][:, None] - 0.5 * np.log(n)[None, :],
                                 {"long_name": "log of C(R)/sqrt(n), the CLT-regime prediction"})
    out["C_over_theory"] = (("R",), C / np.exp(th["log_C"]))
    out["C_over_lower"] = (("R",), C / np.exp(th["log_C_lo"]))
    out["C_over_limit"] = (("R",), C / lim["esup"])
    out["logC_fit_mask"] = (("R",), clt, {"description": "radii in the CLT regime: the only ones where C(R) "
                                                          "is the constant of the 1/sqrt(n) law"})
    _growth_fits(out, law, A, R, C, clt, th)
    return out


def _growth_fits(out, law, A, R, C, clt, th) -> None:
    """Fits of log C against R and R^2 over the CLT radii, beside the theory's curves' slopes."""
    if clt.sum() < 2:
        return
    for tag, xvals in (("R", R), ("R2", R**2)):
        f = ols(xvals[clt], np.log(C[clt]))
        out[f"logC_vs_{tag}_slope"] = ((), f.slope)
        out[f"logC_vs_{tag}_slope_se"] = ((), f.se)
        out[f"logC_vs_{tag}_intercept"] = ((), f.intercept)
        out[f"logC_vs_{tag}_r2"] = ((), f.r2)
    out["theory_logC_vs_R2_slope"] = ((), ols(R[clt] ** 2, th["log_C"][clt]).slope,
                                      {"long_name": "slope of the delta-method log C(R) against R^2 over the same "
                                                    "radii (the leading 1/2 ||Sigma^1/2 A||^2 plus its log term)"})
    esup = th["limit"]["esup"]
    if np.all(np.isfinite(esup[clt])):
        out["theory_log_C_limit_vs_R2_slope"] = ((), ols(R[clt] ** 2, np.log(esup[clt])).slope,
                                                 {"long_name": "slope of log E sup|G| against R^2 over the same radii"})
    if isinstance(law, ts.GaussianLaw):
        out["theory_logC_R2_coefficient"] = ((), ts.log_C_quadratic_coefficient(law.cov, A),
                                             {"long_name": "1/2 ||Sigma^{1/2} A||^2, the predicted slope of log C vs R^2"})


PRE_SOURCE = ("declared pre-asymptotic error: relative size n_3(R)/n (the squared Berry-Esseen distance, the order "
              "of the next term of E sup), averaged over the window (notes token_sample §2.5)")


def _limit_claims(run, f, th) -> list:
    """C_limit and C_lower at every CLT radius; the claims' text when no radius is in the regime."""
    R, n, clt, k = run["R"], run["n"], run["regime"] == 0, run["k"]
    lim = th["limit"]
    out = []
    z, zsrc = z_family(int(clt.sum()), dof=k - 1)
    for i in np.where(clt)[0]:
        where = f"R={R[i]:g}"
        lower = float(np.exp(th["log_C_lo"][i]))
        C, C_se = f["C"][i], f["C_se"][i]
        if not np.isfinite(lim["esup"][i]):
            out.append(C_LIMIT.not_tested(
                f"a grid of the {run['dim']}-dimensional ball fine enough for the sup of G is out of reach "
                f"(d > {LIMIT_MAX_DIM}; notes token_sample §2.5)", where=where, measured=C, se=C_se,
                prediction_text="C(R) = E sup|G|"))
        else:
            esup, disc = float(lim["esup"][i]), float(lim["disc"][i])
            allow = esup * lim["pre"][i] + disc
            out.append(C_LIMIT.equal(
                C, float(np.hypot(C_se, lim["esup_se"][i])), esup, z=z,
                z_source=f"{zsrc}, on the combined SE of C and of the E sup|G| Monte Carlo", allowance=allow,
                allowance_source=f"{PRE_SOURCE}: {lim['pre'][i]:.3g} x E sup; + grid discretisation {disc:.2g} "
                                 f"(refinement to {int(lim['points'][i])} points, below the tolerance)",
                where=where, effect=0.5 * esup,
                prediction_text=f"{esup:.4g} ± {lim['esup_se'][i]:.2g} (E sup|G|)"))
        out.append(C_LOWER.at_least(C, C_se, lower, z=z, z_source=zsrc, where=where, effect=lower,
                                    prediction_text=f">= {lower:.4g} (Gaussian limit, worst query)"))
    if not clt.any():
        need = np.exp(np.log(CLT_FACTOR) + th["log_n3"].min())
        reason = (f"no radius reaches the CLT regime on this grid ({MIN_CLT_POINTS} sizes with n >= {CLT_FACTOR:g} "
                  f"n_3(R)); the smallest radius R={R[np.argmin(th['log_n3'])]:g} needs n >= {need:.3g}")
        out += [CLT_RATE.not_tested(reason, prediction_text="slope -0.5"),
                C_LIMIT.not_tested(reason, prediction_text="C(R) = E sup|G|"),
                C_LOWER.not_tested(reason, prediction_text="C(R) >= sup_x E|G(x)|")]
    return out


def _rate_claims(run, f) -> list:
    R, n, clt = run["R"], run["n"], run["regime"] == 0
    z, zsrc = z_family(int(clt.sum()))
    out = []
    for i in np.where(clt)[0]:
        win = f"n in {int(n[run['clt_window'][i]].min())}..{int(n[run['clt_window'][i]].max())} >= {CLT_FACTOR:g} n_3"
        out.append(CLT_RATE.equal(f["slope"][i], f["se"][i], -0.5, z=z, z_source=zsrc, allowance=RATE_ALLOWANCE,
                                  allowance_source="declared pre-asymptotic error of the slope (notes token_sample "
                                                   "§6.2: -0.5 ± 0.05)",
                                  where=f"R={R[i]:g}", effect=0.5, prediction_text=f"slope -0.5 ({win})"))
    return out


def _saturated_claims(run, f, th) -> list:
    R, sat = run["R"], run["regime"] == 2
    curve = th["sat"]
    z, zsrc = z_family(int(sat.sum()))
    out = []
    for i in np.where(sat)[0]:
        where = f"R={R[i]:g}"
        nstar = f"n_max < n* = {np.exp(th['log_nstar'][i]):.3g}"
        if not np.isfinite(curve["slope"][i]):
            why = ("the theory's pre-asymptotic curve is derived for Gaussian tokens only" if not run["gaussian"] else
                   f"in d = {run['dim']} > {SATURATED_MAX_DIM} the sup over the sphere of directions flattens the worst "
                   "query's slope by more than the declared allowance, and theory has no curve for it")
            out.append(SATURATED.not_tested(f"{why} ({nstar}; notes token_sample §2.6)", where=where,
                                            measured=f["slope"][i], se=f["se"][i],
                                            prediction_text="the worst query's pre-asymptotic slope"))
            continue
        p = float(curve["slope"][i])
        out.append(SATURATED.equal(
            f["slope"][i], float(np.hypot(f["se"][i], curve["slope_se"][i])), p, z=z,
            z_source=f"{zsrc}, on the combined SE of the measured slope and of the curve's Monte Carlo",
            allowance=SATURATED_SUP * abs(p),
            allowance_source=f"declared: the sup over the ball adds a level to the worst query's error and changes "
                             f"its local slope by up to {SATURATED_SUP:.0%} of it in d <= {SATURATED_MAX_DIM} (sized "
                             "on the default, quick and off-default grids, notes token_sample §2.6)",
            where=where, effect=abs(p + 0.5),
            prediction_text=f"{p:+.4f} ± {curve['slope_se'][i]:.2g} (worst-query curve; {nstar})"))
    if not sat.any():
        out.append(SATURATED.not_tested(
            "no radius has n_max < n*(R) on this grid (for a bounded law n*(R) grows only polynomially, so "
            "the theory predicts the CLT rate at every radius)" if run["bounded"] else
            "no radius has n_max < n*(R) on this grid", prediction_text="the worst query's pre-asymptotic slope"))
    return out


def _growth_claim(run, f, th):
    """C_growth over >= 4 CLT radii: the form of log C (the one the delta-method curve singles out:
    the E sup|G| curve, with its Monte Carlo noise and its slowly varying factor, singles out none
    on short radius ranges) and, radius by radius, C(R)/C(R_min) against E sup|G|(R)/E sup|G|(R_min)."""
    R, clt = run["R"], run["regime"] == 0
    Rc, C, C_se = R[clt], f["C"][clt], f["C_se"][clt]
    lim = {k: v[clt] for k, v in th["limit"].items()}
    have_limit = bool(np.all(np.isfinite(lim["esup"])))
    if clt.sum() < 4:
        hint = predicted_form(R, th["log_C"], GROWTH_FORMS) if R.size >= 3 else None
        return C_GROWTH.not_tested(
            f"{int(clt.sum())} radius(es) in the CLT regime; comparing the forms of log C(R) needs >= 4 "
            "(raise n_max: radius R enters the regime near n = 10 n_3(R), see theory_log_n_3)",
            prediction_text=f"log C linear in {hint}" if hint else "the delta-method form")
    z, zsrc = z_family(1)
    members = [C_GROWTH.forms(Rc, np.log(C), C_se / C, GROWTH_FORMS, predicted_form(Rc, th["log_C"][clt], GROWTH_FORMS),
                              z=z, z_source=zsrc, what="log C", where="form")]
    if have_limit:
        z, zsrc = z_family(Rc.size - 1, dof=run["k"] - 1)
        rel = lim["pre"] + lim["disc"] / lim["esup"]
        curve = np.log(lim["esup"])
        for j in range(1, Rc.size):
            pred = float(curve[j] - curve[0])
            se = float(np.sqrt((C_se[j] / C[j]) ** 2 + (C_se[0] / C[0]) ** 2 + (lim["esup_se"][j] / lim["esup"][j]) ** 2
                               + (lim["esup_se"][0] / lim["esup"][0]) ** 2))
            members.append(C_GROWTH.equal(
                float(np.log(C[j] / C[0])), se, pred, z=z, z_source=f"{zsrc}, on the combined SE of both radii (C and E sup|G|)",
                allowance=float(rel[j] + rel[0]), allowance_source=f"{PRE_SOURCE}, and the grid errors, at both radii",
                where=f"R={Rc[j]:g}", effect=abs(pred),
                prediction_text=f"log E sup|G|(R)/E sup|G|({Rc[0]:g}) = {pred:.4g}"))
    return worst_of(members, every="test (form, radius)")


def _claims(run, f, th) -> list:
    return [*_rate_claims(run, f), *_limit_claims(run, f, th), *_saturated_claims(run, f, th), _growth_claim(run, f, th)]


def summary(ds: xr.Dataset) -> str:
    rows = [f"{'R':>6}  {'regime':<10} {'n-window':<15} {'slope ± se':<17} {'predicted':<18} "
            f"{'C ± se':>15} {'E sup|G| ± se':>16} {'C_lower':>9}"]
    for i, r in enumerate(ds["R"].values):
        reg = REGIMES[int(ds["regime"].values[i])]
        win = f"{int(ds['fit_n_min'].values[i])}..{int(ds['fit_n_max'].values[i])}"
        sl = f"{ds['fit_slope'].values[i]:+.3f} ± {ds['fit_slope_se'].values[i]:.3f}"
        sat = ds["theory_saturated_slope"].values[i]
        th = {"clt": "-0.5", "saturated": f"{sat:+.3f} ± {SATURATED_SUP:.0%}" if np.isfinite(sat) else "(no curve)",
              "transition": "(none)"}[reg]
        lower = f"{np.exp(ds['theory_log_C_lower'].values[i]):9.3g}" if reg == "clt" else f"{'-':>9}"
        esup = ds["theory_C_limit"].values[i]
        lim = f"{esup:.4g} ± {ds['theory_C_limit_se'].values[i]:.2g}" if np.isfinite(esup) else "-"
        C = f"{ds['C'].values[i]:.4g} ± {ds['C_se'].values[i]:.2g}"
        rows.append(f"{r:>6g}  {reg:<10} {win:<15} {sl:<17} {th:<18} {C:>15} {lim:>16} {lower}")
    if "logC_vs_R2_slope" in ds:
        line = (f"log C(R) over the CLT-regime radii: vs R slope {float(ds['logC_vs_R_slope']):.3f} "
                f"(R²={float(ds['logC_vs_R_r2']):.3f}); vs R² slope {float(ds['logC_vs_R2_slope']):.3f} "
                f"± {float(ds['logC_vs_R2_slope_se']):.3f} (R²={float(ds['logC_vs_R2_r2']):.3f}); the delta-method "
                f"curve's over the same radii {float(ds['theory_logC_vs_R2_slope']):.3f}")
        if "theory_log_C_limit_vs_R2_slope" in ds:
            line += f", E sup|G|'s {float(ds['theory_log_C_limit_vs_R2_slope']):.3f}"
        if "theory_logC_R2_coefficient" in ds:
            line += f", the leading coefficient 1/2 |Σ^1/2 A|² = {float(ds['theory_logC_R2_coefficient']):.3f}"
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
