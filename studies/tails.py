"""Bounded vs unbounded tokens: ``python -m studies.tails``.

How the constants of the token sample complexity grow with the size of the tokens
(Bohbot, Letrouit, Peyré, Vialard; spec token_sample §2.1-2.2, §6 checks 3 and 5).

Part 1 (the store's root group): the uniform constant C(R) = sqrt(n) E sup_{|x|<=R}
|Gamma_{mu_n}(x) - Gamma_mu(x)| against the query radius R, for three token laws:

* ``gaussian``  N(0, I_2), A = a I: log C(R) ~ 1/2 a^2 R^2 (quadratic in R);
* ``sphere``    uniform on S^{d-1} (d = 5), A = I: C(R) ~ kappa^{(d-3)/4} (polynomial);
* ``atom``      bounded, (1 - eps) Uniform(ball of radius r_0) + eps delta_{R_mu e_1} with a tiny
                eps: C(R) ~ sqrt(eps) e^{a R (R_mu - r_0)} (exponential, the worst case).

Part 2 (group ``moments``): the moment prefactor C' of the output mean and covariance of
self-attention (error ~ C'/n^beta) for box-truncated Gaussians of growing support
(c sigma per coordinate, c = 2..8): C' grows at most polynomially with the support radius,
whereas the uniform constant C(R_mu) of the same laws (delta method) grows exponentially.

Dataset (``results/tails.zarr``; Part 2 in its group ``moments``): raw ``sup_err(law, R, n,
rep)`` and ``mean_err``/``cov_err(c, n, rep)``; C(R), C'(c), fits of log C against R, R^2 and
log R, local log-log growth exponents, ``theory_*`` (delta method), and ``verdict_*`` booleans
with their tolerances in the attributes.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from sim.backend import make_rng
from sim.distributions import make_atom_distribution, make_distribution
from sim.token_moments import moment_errors
from sim.attention import self_attention_moments
from sim.backend import to_numpy
from sim.token_sample import sup_errors
from studies.cli import (StudyParser, UsageError, add_common_arguments, parse_n_grid, parse_range,
                         positive_int, run_main, run_study_sweep, validate_run_options)
from studies.fits import loglog_rate, ols
from studies.sweep import Sweep, str_coord, write_analysis
from theory import token_sample as ts

STUDY = "tails"
LAWS = ("gaussian", "sphere", "atom")
MOMENT_GROUP = "moments"
DEFAULTS = {"R": "1..8", "n": "2^12,2^14,2^16", "reps": 24, "queries": 48,
            "c": "2,3,4,6,8", "moment_n": "2^8..2^13", "moment_reps": 32}
QUICK = {"R": "1,3,5,8", "n": "2^9,2^10,2^11", "reps": 4, "queries": 8,
         "c": "2,4,8", "moment_n": "2^7..2^9", "moment_reps": 6}
SEARCH = {"n_shells": 4, "n_refine": 4, "refine_iters": 5}
THEORY_SEARCH = {"n_dirs": 32, "n_shells": 6, "refine": 2}  # sup search of the delta-method C(R)
THEORY_SEARCH_QUICK = {"n_dirs": 16, "n_shells": 4, "refine": 1}
LAYOUT = "tails-v2: part 1 cells (n, rep) x laws; part 2 cells (n, rep) x truncation levels"

# verdict tolerances (recorded in the dataset)
R2_MIN_GAUSS = 0.95  # acceptance: log C vs R^2 linear for the Gaussian
P_POLY_MAX = 1.0  # polynomial growth: local log-log exponent of C(R) at most this ...
ACCEL_TOL = 0.5  # ... and no acceleration: p_high - p_low <= ACCEL_TOL
P_EXP_MIN = 2.0  # exponential growth: local log-log exponent at the top at least this ...
R2_MIN_EXP = 0.95  # ... and log C linear in R over the upper half of the grid
RATE_TOL_MOMENT = 0.12  # moment errors: |beta_hat - 1/2| <= tol + 2 SE (H < 1: CLT rate)
P_MOMENT_MAX = 1.0  # C'(support radius): log-log exponent at most this

EXAMPLES = """\
examples:
  python -m studies.tails                               # both parts (about 2 minutes)
  python -m studies.tails --R 1..10 --atom-eps 1e-5 --plot
  python -m studies.tails --quick --plot --out /tmp/tails.zarr
  python -m paper_figs.tails results/tails.zarr
"""


def _float_pos(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = StudyParser(
        prog="python -m studies.tails",
        description="Growth of the token-sample constants with the token size: C(R) for Gaussian, "
                    "sphere and bounded-with-an-atom tokens; the moment prefactor C' for truncated "
                    "Gaussians of growing support.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("part 1: the uniform constant C(R)")
    g.add_argument("--R", type=lambda t: parse_range(t, float), default=None, metavar="RANGE",
                   help=f"query-ball radii, inclusive ranges (default {DEFAULTS['R']}; --quick {QUICK['R']})")
    g.add_argument("--n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"token counts; C(R) is read at the largest (default {DEFAULTS['n']}; --quick {QUICK['n']})")
    g.add_argument("--reps", type=positive_int, default=None,
                   help=f"samples per (law, n) (default {DEFAULTS['reps']}; --quick {QUICK['reps']})")
    g.add_argument("--queries", type=positive_int, default=None,
                   help=f"directions per shell in the sup search (default {DEFAULTS['queries']}; --quick {QUICK['queries']})")
    g.add_argument("--gauss-A", dest="gauss_a", type=_float_pos, default=0.2,
                   help="gaussian law: A = GAUSS_A * I, tokens N(0, I_2) (default 0.2)")
    g.add_argument("--sphere-d", type=positive_int, default=5, help="sphere law: dimension d of S^{d-1} (default 5)")
    g.add_argument("--atom-eps", type=_float_pos, default=1e-4, help="atom law: mass of the atom (default 1e-4)")
    g.add_argument("--atom-radius", type=_float_pos, default=1.0, help="atom law: |atom| = R_mu (default 1)")
    g.add_argument("--bulk-radius", type=_float_pos, default=0.5,
                   help="atom law: radius r_0 of the uniform ball (d = 2) around the origin (default 0.5)")
    g.add_argument("--atom-A", dest="atom_a", type=_float_pos, default=1.0, help="atom law: A = ATOM_A * I (default 1)")
    m = p.add_argument_group("part 2: the moment prefactor C' for truncated Gaussians")
    m.add_argument("--c", type=lambda t: parse_range(t, float), default=None, metavar="RANGE",
                   help=f"truncation levels c (support [-c sigma, c sigma]^d) (default {DEFAULTS['c']}; --quick {QUICK['c']})")
    m.add_argument("--moment-n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"token counts (default {DEFAULTS['moment_n']}; --quick {QUICK['moment_n']})")
    m.add_argument("--moment-reps", type=positive_int, default=None,
                   help=f"samples per (c, n) (default {DEFAULTS['moment_reps']}; --quick {QUICK['moment_reps']})")
    m.add_argument("--trunc-d", type=positive_int, default=2, help="dimension (default 2)")
    m.add_argument("--trunc-sigma", type=_float_pos, default=1.0, help="sigma (default 1)")
    m.add_argument("--trunc-A", dest="trunc_a", type=_float_pos, default=0.5,
                   help="A = TRUNC_A * I, V = I (default 0.5: horizon ~0.5, the CLT regime)")
    add_common_arguments(p, STUDY)
    return p


# ------------------------------------------------------------------------------- the laws
def _law_setup(name: str, args):
    """(distribution, A) of one Part-1 law."""
    if name == "gaussian":
        return make_distribution("gaussian", 2), args.gauss_a * np.eye(2)
    if name == "sphere":
        return make_distribution("sphere", args.sphere_d), np.eye(args.sphere_d)
    if name == "atom":
        return (make_atom_distribution(2, eps=args.atom_eps, atom_radius=args.atom_radius, bulk="ball",
                                       bulk_radius=args.bulk_radius), args.atom_a * np.eye(2))
    raise ValueError(name)


def _law_params(args) -> dict:
    return {"gaussian": {"d": 2, "A": f"{args.gauss_a} I", "law": "N(0, I)"},
            "sphere": {"d": args.sphere_d, "A": "I", "law": "uniform on the unit sphere"},
            "atom": {"d": 2, "A": f"{args.atom_a} I", "eps": args.atom_eps, "atom_radius": args.atom_radius,
                     "bulk": "ball", "bulk_radius": args.bulk_radius}}


def _sup_cell(cell, *, setups, radii, n_dirs, device):
    """One (n, rep) cell: a token sample of every law (drawn in turn from the cell's stream),
    the searched sup error at every radius."""
    rng = make_rng(cell.seed, device)
    sup, arg = [], []
    for name in LAWS:
        dist, A = setups[name]
        tokens = dist.sample(rng, int(cell.coords["n"]))
        res = sup_errors(tokens, dist, A, np.eye(dist.dim), radii, n_dirs=n_dirs, **SEARCH)
        sup.append(res.value)
        arg.append(np.linalg.norm(res.argmax, axis=1))
    return {"sup_err": np.stack(sup), "argmax_radius": np.stack(arg)}


def _trunc(c, args):
    return make_distribution("truncated", args.trunc_d, sigma=args.trunc_sigma, c=float(c))


def _moment_cell(cell, *, args_t, cs, refs, device):
    """One (n, rep) cell of Part 2: a sample of every truncated law (drawn in turn), the output
    moments of its self-attention, errors against the exact output moments."""
    d, sigma, a = args_t
    rng = make_rng(cell.seed, device)
    me, ce = [], []
    for c in cs:
        dist = make_distribution("truncated", d, sigma=sigma, c=float(c))
        X = dist.sample(rng, int(cell.coords["n"]))
        mean, cov = self_attention_moments(X, a * np.eye(d), None, (1.0,))
        ref_m, ref_c = refs[float(c)]
        e = moment_errors(to_numpy(mean), to_numpy(cov), ref_m[None], ref_c[None])
        me.append(e["mean_err"][0])
        ce.append(e["cov_err"][0])
    return {"mean_err": np.asarray(me), "cov_err": np.asarray(ce)}


def make_sweeps(args) -> tuple[Sweep, Sweep]:
    radii = np.asarray(args.R, dtype=float)
    n = np.asarray(args.n, dtype=np.int64)
    setups = {name: _law_setup(name, args) for name in LAWS}
    params = {"layout": LAYOUT, "R": radii.tolist(), "n": n.tolist(), "reps": args.reps, "laws": _law_params(args),
              "search": {"n_dirs": args.queries, **SEARCH}, "V": "I", "device": args.device}
    sup = Sweep(
        study=STUDY,
        cell_dims={"n": n, "rep": np.arange(args.reps)},
        variables={"sup_err": ("law", "R", "n", "rep"), "argmax_radius": ("law", "R", "n", "rep")},
        coords={"law": str_coord(LAWS), "R": radii},
        params=params,
        run_cell=functools.partial(_sup_cell, setups=setups, radii=radii, n_dirs=args.queries, device=args.device),
        root_seed=args.seed,
        attrs={"device": args.device, "part": "1: uniform constant C(R) per token law",
               "laws": _law_params(args),
               "convention": "scores <A x, y>, V = I; sup over |x| <= R searched (sim.token_sample.sup_errors); "
                             "each (n, rep) cell draws one sample per law, shared across R"},
        var_attrs={"sup_err": {"long_name": "sup_{|x|<=R} |Gamma_{mu_n}(x) - Gamma_mu(x)|_2 (searched)"},
                   "argmax_radius": {"long_name": "|x| where the largest error was found"}},
    )
    cs = np.asarray(args.c, dtype=float)
    mn = np.asarray(args.moment_n, dtype=np.int64)
    mparams = {"layout": LAYOUT, "c": cs.tolist(), "n": mn.tolist(), "reps": args.moment_reps, "d": args.trunc_d,
               "sigma": args.trunc_sigma, "A": f"{args.trunc_a} I", "V": "I", "device": args.device}
    mom = Sweep(
        study=f"{STUDY}/{MOMENT_GROUP}",
        cell_dims={"n": mn, "rep": np.arange(args.moment_reps)},
        variables={"mean_err": ("c", "n", "rep"), "cov_err": ("c", "n", "rep")},
        coords={"c": cs},
        params=mparams,
        run_cell=functools.partial(_moment_cell, args_t=(args.trunc_d, args.trunc_sigma, args.trunc_a), cs=cs,
                                   refs={float(c): ts.truncated_output_moments(_trunc(c, args).law, args.trunc_a)
                                         for c in cs}, device=args.device),
        root_seed=args.seed + 1,
        attrs={"device": args.device, "part": "2: moment prefactor C' for box-truncated Gaussians",
               "convention": "self-attention of n tokens (self token included), A = a I, V = I, one scale; "
                             "tokens N(0, sigma^2) per coordinate truncated to [-c sigma, c sigma] (each (n, rep) cell "
                             "draws one sample per c); errors against "
                             "the exact output moments (1-D quadrature, theory.token_sample.truncated_output_moments)"},
        var_attrs={"mean_err": {"long_name": "|mean(o) - mean_ref|_2"},
                   "cov_err": {"long_name": "|cov(o) - cov_ref|_F"}},
    )
    return sup, mom


# ------------------------------------------------------------------------------ analysis
def _loglog_exponents(R, logC):
    """Local growth exponents d log C / d log R over the lower and the upper half of R."""
    lr = np.log(R)
    h = max(2, (len(R) + 1) // 2)
    lo = np.polyfit(lr[:h], logC[:h], 1)[0]
    hi = np.polyfit(lr[-h:], logC[-h:], 1)[0]
    return float(lo), float(hi)


def analyze_sup(ds: xr.Dataset, setups: dict, theory_search: dict = THEORY_SEARCH) -> xr.Dataset:
    R = ds["R"].values.astype(float)
    n = ds["n"].values.astype(float)
    laws = [str(v) for v in ds["law"].values]
    err = ds["sup_err"].values  # (law, R, n, rep)
    k = err.shape[-1]
    mean = err.mean(axis=-1)
    sem = err.std(axis=-1, ddof=1) / np.sqrt(k)
    C_hat = np.sqrt(n)[None, None, :] * mean
    C = C_hat[:, :, -1]
    out = xr.Dataset(coords={"law": ds["law"].values, "R": R, "n": ds["n"].values})
    out["mean_sup_err"] = (("law", "R", "n"), mean)
    out["sem_sup_err"] = (("law", "R", "n"), sem)
    out["C_hat"] = (("law", "R", "n"), C_hat, {"long_name": "sqrt(n) * mean_sup_err"})
    out["C"] = (("law", "R"), C, {"long_name": "C(R) = sqrt(n) E sup at the largest n"})
    out["C_se"] = (("law", "R"), np.sqrt(n[-1]) * sem[:, :, -1])
    th = np.zeros((len(laws), R.size))
    ln3 = np.zeros_like(th)
    for i, name in enumerate(laws):
        dist, A = setups[name]
        d = dist.dim
        th[i] = [ts.predicted_log_C(dist.law, r, A, np.eye(d), **theory_search) for r in R]
        ln3[i] = [ts.log_normal_approx_threshold_sup(dist.law, r, A, **theory_search) for r in R]
    out["theory_log_C"] = (("law", "R"), th, {"long_name": "log sup_x sqrt(tr M(x)) (delta method)"})
    out["theory_log_n_3"] = (("law", "R"), ln3, {"long_name": "log Berry-Esseen scale; CLT needs n >> n_3"})
    clt = np.log(n[-1]) >= np.log(10.0) + ln3
    out["clt_regime"] = (("law", "R"), clt, {"description": "largest n >= 10 n_3(R)"})
    logC = np.log(C)
    fits = {}
    for i, name in enumerate(laws):
        for tag, x in (("R", R), ("R2", R**2), ("logR", np.log(R))):
            f = ols(x, logC[i])
            fits[(name, tag)] = f
        upper = slice(R.size - max(2, (R.size + 1) // 2), R.size)
        fits[(name, "R_upper")] = ols(R[upper], logC[i, upper])
    for tag in ("R", "R2", "logR", "R_upper"):
        out[f"logC_vs_{tag}_slope"] = (("law",), [fits[(nm, tag)].slope for nm in laws])
        out[f"logC_vs_{tag}_r2"] = (("law",), [fits[(nm, tag)].r2 for nm in laws])
        out[f"logC_vs_{tag}_intercept"] = (("law",), [fits[(nm, tag)].intercept for nm in laws])
    ex = np.array([_loglog_exponents(R, logC[i]) for i in range(len(laws))])
    thex = np.array([_loglog_exponents(R, th[i]) for i in range(len(laws))])
    out["growth_exponent_low"] = (("law",), ex[:, 0], {"long_name": "d log C / d log R, lower half of the R grid"})
    out["growth_exponent_high"] = (("law",), ex[:, 1], {"long_name": "d log C / d log R, upper half of the R grid"})
    out["theory_growth_exponent_high"] = (("law",), thex[:, 1])
    ratio = C / np.exp(th)
    out["C_over_theory"] = (("law", "R"), ratio)
    si, ai = laws.index("sphere"), laws.index("atom")
    out["verdict_gaussian_quadratic"] = ((), bool(fits[("gaussian", "R2")].r2 >= R2_MIN_GAUSS
                                                  and fits[("gaussian", "R2")].slope > 0),
                                         {"description": f"gaussian: log C vs R^2 linear, R^2 of the fit >= {R2_MIN_GAUSS}, slope > 0"})
    out["verdict_sphere_polynomial"] = ((), bool(ex[si, 1] <= P_POLY_MAX and ex[si, 1] - ex[si, 0] <= ACCEL_TOL),
                                        {"description": f"sphere: local log-log exponent <= {P_POLY_MAX} at the top and "
                                                        f"no acceleration (high - low <= {ACCEL_TOL}): polynomial growth"})
    out["verdict_atom_exponential"] = ((), bool(ex[ai, 1] >= P_EXP_MIN and fits[("atom", "R_upper")].r2 >= R2_MIN_EXP
                                                and fits[("atom", "R_upper")].slope > 0),
                                       {"description": f"atom: local log-log exponent >= {P_EXP_MIN} at the top (faster "
                                                       f"than any low-degree polynomial) and log C linear in R over the "
                                                       f"upper half (R^2 >= {R2_MIN_EXP}, slope > 0): exponential growth"})
    both = clt & np.isfinite(ratio)
    out["verdict_C_order"] = ((), bool(both.any() and np.all((ratio[both] >= 0.5) & (ratio[both] <= 4.0))),
                              {"description": "C / delta-method C within [0.5, 4] wherever the largest n is in the CLT regime"})
    out.attrs["verdict_tolerances"] = (f"R2_MIN_GAUSS={R2_MIN_GAUSS}; P_POLY_MAX={P_POLY_MAX}; ACCEL_TOL={ACCEL_TOL}; "
                                       f"P_EXP_MIN={P_EXP_MIN}; R2_MIN_EXP={R2_MIN_EXP}; C_ratio_band=[0.5, 4]")
    return out


def analyze_moments(ds: xr.Dataset, d: int, sigma: float, a: float,
                    theory_search: dict = THEORY_SEARCH) -> xr.Dataset:
    cs = ds["c"].values.astype(float)
    n = ds["n"].values.astype(float)
    k = ds.sizes["rep"]
    out = xr.Dataset(coords={"c": cs, "n": ds["n"].values})
    Rmu = cs * sigma * np.sqrt(d)
    out["support_radius"] = (("c",), Rmu, {"long_name": "R_mu = c sigma sqrt(d): radius of the support"})
    A = a * np.eye(d)
    H = np.array([ts.horizon(_law_cov(d, sigma, c), A) for c in cs])
    out["H"] = (("c",), H, {"long_name": "||Sigma^1/2 A Sigma^1/2||_2"})
    for key, mom in (("mean_err", "mean"), ("cov_err", "cov")):
        e = ds[key].values  # (c, n, rep)
        out[f"{key}_mean"] = (("c", "n"), e.mean(axis=-1))
        out[f"{key}_sem"] = (("c", "n"), e.std(axis=-1, ddof=1) / np.sqrt(k))
        beta = np.zeros(cs.size)
        se = np.zeros(cs.size)
        for i in range(cs.size):
            f = loglog_rate(n, e[i])
            beta[i], se[i] = -f.slope, f.se
        out[f"beta_{mom}"] = (("c",), beta)
        out[f"beta_{mom}_se"] = (("c",), se)
        Cp = np.exp(np.mean(np.log(e.mean(axis=-1)) + 0.5 * np.log(n)[None, :], axis=1))
        out[f"Cprime_{mom}"] = (("c",), Cp, {"long_name": f"C' = geometric mean over n of sqrt(n) E {key}"})
    th_sup = np.array([ts.predicted_log_C(ts.TruncatedGaussianLaw(d, sigma, c), r, A, np.eye(d), **theory_search)
                       for c, r in zip(cs, Rmu)])
    out["theory_log_C_sup"] = (("c",), th_sup, {"long_name": "log C(R_mu): delta-method uniform constant on the support ball"})
    out["theory_beta"] = (("c",), ts.beta_of_horizon(H))
    p = {}
    for mom in ("mean", "cov"):
        f = ols(np.log(Rmu), np.log(out[f"Cprime_{mom}"].values))
        p[mom] = f.slope
        out[f"Cprime_{mom}_loglog_slope"] = ((), f.slope, {"long_name": "slope of log C' vs log R_mu (polynomial degree)"})
    sup_lo, sup_hi = _loglog_exponents(Rmu, th_sup)
    out["theory_sup_growth_exponent_high"] = ((), sup_hi, {"long_name": "d log C(R_mu) / d log R_mu, upper half"})
    rate_ok = all(abs(out[f"beta_{m}"].values[i] - 0.5) <= RATE_TOL_MOMENT + 2 * out[f"beta_{m}_se"].values[i]
                  for m in ("mean", "cov") for i in range(cs.size))
    out["verdict_moment_rate"] = ((), bool(rate_ok), {"description": f"|beta_hat - 1/2| <= {RATE_TOL_MOMENT} + 2 SE for "
                                                                       "every c (mean and covariance; H < 1)"})
    out["verdict_prefactor_polynomial"] = ((), bool(max(p.values()) <= P_MOMENT_MAX),
                                           {"description": f"log C' vs log R_mu slope <= {P_MOMENT_MAX} (mean and covariance): "
                                                           "at most polynomial in the support radius"})
    out["verdict_sup_faster"] = ((), bool(sup_hi >= P_EXP_MIN and sup_hi > max(p.values()) + 1),
                                 {"description": f"the uniform constant C(R_mu) of the same laws grows with a local "
                                                 f"log-log exponent >= {P_EXP_MIN} (exponential), above C''s"})
    out.attrs["verdict_tolerances"] = (f"RATE_TOL_MOMENT={RATE_TOL_MOMENT}; P_MOMENT_MAX={P_MOMENT_MAX}; "
                                       f"P_EXP_MIN={P_EXP_MIN}")
    return out


def _law_cov(d, sigma, c):
    return ts.TruncatedGaussianLaw(d, sigma, c).cov


def summary_table(sup: xr.Dataset, mom: xr.Dataset) -> str:
    laws = [str(v) for v in sup["law"].values]
    R = sup["R"].values
    rows = ["C(R) = sqrt(n) E sup at n = " + str(int(sup["n"].values[-1])) + "  (theory: delta method)"]
    rows.append(f"{'R':>5} " + " ".join(f"{nm + ' C':>12} {'theory':>8}" for nm in laws))
    for j, r in enumerate(R):
        rows.append(f"{r:>5g} " + " ".join(
            f"{sup['C'].values[i, j]:>12.4g} {np.exp(sup['theory_log_C'].values[i, j]):>8.4g}" for i in range(len(laws))))
    for i, nm in enumerate(laws):
        rows.append(f"{nm:>9}: log C vs R^2 R²={sup['logC_vs_R2_r2'].values[i]:.3f} (slope {sup['logC_vs_R2_slope'].values[i]:.3f}); "
                    f"vs R R²={sup['logC_vs_R_r2'].values[i]:.3f}; vs log R R²={sup['logC_vs_logR_r2'].values[i]:.3f}; "
                    f"growth exponent low/high {sup['growth_exponent_low'].values[i]:.2f}/{sup['growth_exponent_high'].values[i]:.2f}")
    rows.append(f"{'c':>5} {'R_mu':>6} {'H':>6} {'beta_mean':>16} {'beta_cov':>16} {'C_mean':>9} {'C_cov':>9} {'log C_sup(th)':>13}")
    for i, c in enumerate(mom["c"].values):
        rows.append(f"{c:>5g} {mom['support_radius'].values[i]:>6.2f} {mom['H'].values[i]:>6.3f} "
                    f"{mom['beta_mean'].values[i]:+.3f} ± {mom['beta_mean_se'].values[i]:.3f}   "
                    f"{mom['beta_cov'].values[i]:+.3f} ± {mom['beta_cov_se'].values[i]:.3f} "
                    f"{mom['Cprime_mean'].values[i]:>9.4f} {mom['Cprime_cov'].values[i]:>9.4f} "
                    f"{mom['theory_log_C_sup'].values[i]:>13.2f}")
    rows.append(f"C' log-log slope vs R_mu: mean {float(mom['Cprime_mean_loglog_slope']):+.3f}, "
                f"cov {float(mom['Cprime_cov_loglog_slope']):+.3f}; uniform constant (theory) growth exponent "
                f"{float(mom['theory_sup_growth_exponent_high']):.2f}")
    verdicts = [k for k in sup.data_vars if k.startswith("verdict_")] + [k for k in mom.data_vars if k.startswith("verdict_")]
    vals = {**{k: bool(sup[k]) for k in sup.data_vars if k.startswith("verdict_")},
            **{k: bool(mom[k]) for k in mom.data_vars if k.startswith("verdict_")}}
    rows.append("verdicts: " + "  ".join(f"{k[8:]}={'yes' if vals[k] else 'no'}" for k in verdicts))
    return "\n".join(rows)


# ---------------------------------------------------------------------------------- main
def _validate(args):
    q = QUICK if args.quick else {}
    if args.R is None:
        args.R = parse_range(q.get("R", DEFAULTS["R"]), float)
    if args.n is None:
        args.n = parse_n_grid(q.get("n", DEFAULTS["n"]))
    if args.c is None:
        args.c = parse_range(q.get("c", DEFAULTS["c"]), float)
    if args.moment_n is None:
        args.moment_n = parse_n_grid(q.get("moment_n", DEFAULTS["moment_n"]))
    for key in ("reps", "queries", "moment_reps"):
        if getattr(args, key) is None:
            setattr(args, key, q.get(key, DEFAULTS[key]))
    if min(args.R) <= 0:
        raise UsageError(f"--R: radii must be positive (got {min(args.R):g})")
    if len(args.R) < 4:
        raise UsageError("--R: growth fits need at least 4 radii")
    if len(args.c) < 3 or min(args.c) <= 0:
        raise UsageError("--c: need at least 3 positive truncation levels")
    if len(args.moment_n) < 3:
        raise UsageError("--moment-n: a rate fit needs at least 3 token counts")
    if min(args.moment_n) < 2:
        raise UsageError("--moment-n: token counts must be >= 2")
    if args.reps < 2 or args.moment_reps < 2:
        raise UsageError("--reps / --moment-reps: standard errors need at least 2 replicates")
    if args.sphere_d < 2:
        raise UsageError("--sphere-d must be >= 2")
    if not args.atom_eps < 1:
        raise UsageError("--atom-eps must lie in (0, 1)")
    if args.atom_radius <= args.bulk_radius:
        raise UsageError("--atom-radius must exceed --bulk-radius (the atom is the extreme point)")
    if max(args.n) * 8 > 2**31 or max(args.moment_n) * args.trunc_d > 2**31:
        raise UsageError("--n / --moment-n: too many tokens for memory")
    validate_run_options(args)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    sup_sweep, mom_sweep = make_sweeps(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    ds, info = run_study_sweep(sup_sweep, args, out)
    dm, info_m = run_study_sweep(mom_sweep, args, out / MOMENT_GROUP)
    setups = {name: _law_setup(name, args) for name in LAWS}
    search = THEORY_SEARCH_QUICK if args.quick else THEORY_SEARCH
    an_sup = analyze_sup(ds, setups, search)
    an_mom = analyze_moments(dm, args.trunc_d, args.trunc_sigma, args.trunc_a, search)
    for an in (an_sup, an_mom):
        an.attrs["theory_sup_search"] = str(search)
    write_analysis(out, an_sup)
    write_analysis(out / MOMENT_GROUP, an_mom)
    print(summary_table(an_sup, an_mom))
    print(f"wrote {args.out} (part 1: {info['cells']} cells, {info['computed']} computed) and its group "
          f"{MOMENT_GROUP!r} (part 2: {info_m['cells']} cells, {info_m['computed']} computed) in "
          f"{time.perf_counter() - t0:.1f} s")
    if args.plot:
        from paper_figs.tails import draw

        fig_path = out.with_suffix(".png")
        draw(out, fig_path)
        print(f"figure: {fig_path}")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog="python -m studies.tails")


if __name__ == "__main__":
    sys.exit(main())
