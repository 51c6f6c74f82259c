"""Moment rates vs horizon: ``python -m studies.moments [--preset paper]``.

Self-attention of n i.i.d. tokens (queries = keys = value sources, the query among its keys,
as in the paper): the errors of the mean and the covariance of the n outputs against the
infinite-token limit, against n, for a sweep of attention scales (Result 2 of Bohbot,
Letrouit, Peyré, Vialard). Theory (:mod:`theory.token_sample.moments`): error ~ C'/n^beta with
beta <= 1/2 and beta -> 1/2 as the horizon H -> 0. The authors' curve 1/(2(1+H^2)) bounds the
error rate from below (so ``|beta_hat|`` should stay above it); the finer heuristic
(:func:`theory.token_sample.predicted_moment_rate`) gives 1/2 for H <= 1 and 1/(1+H^2) above for
laws with Gaussian tails, 1/2 at every H for bounded laws: the drop of beta the run can expect.

* tokens: Gaussian N(0, rho I) (the authors' d = 50, rho = 0.1 protocol) or uniform on the
  sphere (d = 50 preset; exact covariance by randomised QMC with a standard error);
* weights W_q, W_k, W_v from a fixed seed, ``normalized`` (N(0, 1/d), W_q, W_k <- sqrt(s) base:
  A(s) = s W_k^T W_q / sqrt(d)) or ``unnormalized`` (N(0, 1), W_q, W_k <- s base: A = s^2 ...);
* references: ``exact`` (closed form / RQMC, computed before the sweep) and, with
  ``--reference finite:N``, also the authors' protocol (moments of N fresh tokens), side by side.
  Both are deterministic given the stored parameters and root seed, so the analysis
  (:func:`analyze`, which reads the store alone) derives them again where it does not have them
  from the run (a re-analysis of a ``finite:N`` store recomputes the N-token reference, on the
  device the run used);
* horizons in both conventions: H_eff (exact exponent) and H_code = sqrt(d) H_eff (the authors',
  without the softmax scale). Predictions use H_eff, the exponent the derivations use.

Claims (exact reference; ``[mean]`` and ``[cov]`` each; a family is shown by its worst member):

* ``rate_bound``   -- ``|beta_hat| >= 1/(2(1+H_eff^2)) - z SE`` at every scale;
* ``small_H_rate`` -- ``|beta_hat - 1/2| <= z SE`` at the smallest horizon, tested only where that
  horizon is small: the law's predicted rate there is 1/2 and the authors' curve is within z SE
  of 1/2;
* ``decreasing``   -- beta_hat(H_min) - beta_hat(H_max) > z SE, tested only where the finer
  heuristic predicts a drop of at least 2 z SE (a resolvable one) for the run's law and scales.

No claim is made about the finite reference: whether it flattens or steepens the slopes depends
on whether the estimator's errors are noise- or bias-dominated (a bias shared with the
reference partly cancels), which theory/ does not predict for a configuration; its slopes and
its own error are stored and drawn.

Dataset (``results/moments.zarr``): raw ``mean_err``, ``cov_err`` (Frobenius), ``cov_err_op``
(spectral) over (ref, scale, n, rep); per (ref, scale) WLS log-log slopes ``beta_mean``,
``beta_cov`` (= -slope) with standard errors; ``H_eff``, ``H_code``; ``theory_beta_*`` (authors'
curve and finer heuristic on both axes, the law's predicted rate); the exact reference moments
(and the finite ones); the claims (``claim_*`` over the ``claim`` dimension).
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time

import numpy as np
import xarray as xr

from sim.backend import make_rng
from sim.distributions import make_distribution
from sim.token_moments import WEIGHT_CONVENTIONS, MomentProblem, moment_errors
from studies.claims import ClaimSpec, worst_of, z_family
from studies.cli import (PAIR_RATE, Part, UsageError, check_resources, check_scores, nonnegative_int, parse_n_grid,
                         positive_float, positive_int, run_params, study_main, use_device)
from studies.fits import loglog_rate
from studies.sweep import Sweep, str_coord
from theory import token_sample as ts

STUDY = "moments"
RQMC = {"log2_points": 16, "n_scrambles": 8}
# the default: the authors' Gaussian protocol on a grid that runs in about 2 minutes
DEFAULTS = {"dist": "gaussian", "d": 50, "rho": 0.1, "radius": 1.0, "weights": "normalized",
            "scales": "0.05..50/12", "n": "1000..8000/6", "reps": 32, "reference": "exact",
            "rqmc_log2": RQMC["log2_points"]}
QUICK = {"scales": "0.05..50/5", "n": "200..800/4", "reps": 6, "rqmc_log2": 11}
PRESETS = {
    # the authors' Gaussian experiment (experiments/gaussian): hours on 2 cores
    "paper": ({"dist": "gaussian", "d": 50, "rho": 0.1, "radius": 1.0, "weights": "normalized",
               "scales": "0.05..50/12", "n": "1000..30000/12", "reps": 200, "reference": "finite:100000"}, QUICK,
              "the authors' Gaussian protocol: n=1000..30000/12, k=200, finite:100000 reference: ~2 h on 2 cores"),
    # uniform sphere, d = 50, the authors' weight convention, scales from soft to hard attention
    "sphere": ({"dist": "sphere", "d": 50, "rho": 0.1, "radius": 1.0, "weights": "unnormalized",
                "scales": "0.1..100/12", "n": "1000..8000/6", "reps": 24, "reference": "exact"}, QUICK,
               "uniform sphere d=50, the authors' weights, scales 0.1..100/12 from soft to hard attention, ~1-2 min"),
    # the authors' sphere experiment (experiments/uniform_sphere_d50): GPU-sized (days on 2 cores)
    "paper-sphere": ({"dist": "sphere", "d": 50, "rho": 0.1, "radius": 1.0, "weights": "unnormalized",
                      "scales": "10..1e5/12", "n": "1e4..1e5/12", "reps": 200, "reference": "exact"}, QUICK,
                     "the authors' sphere protocol, n=1e4..1e5/12, k=200: GPU-sized, days on 2 cores"),
}
FINITE_SPAWN = 1_000_003  # spawn key of the finite reference's seed (cells use 2-tuples)
RQMC_SPAWN = 1_000_033
ERRS = ("mean_err", "cov_err", "cov_err_op")
MOMENTS = ("mean", "cov")

SOURCE = "Bohbot, Letrouit, Peyré, Vialard (2025), Result 2"
RATE_BOUND = ClaimSpec(
    "moments.rate_bound", f"{SOURCE}: rate C'/n^beta(H), the authors' curve beta(H) = 1/(2(1+H^2)) "
                          "(notes token_sample §2.2 [C+G], §6.4(iii))",
    "The moment error decays at least as fast as n^(-1/(2(1+H^2))): |beta_hat| >= 1/(2(1+H_eff^2)) at every scale.")
SMALL_H = ClaimSpec(
    "moments.small_H_rate", f"{SOURCE}: beta -> 1/2 as H -> 0 (notes token_sample §2.2, §6.4(i))",
    "At a horizon small enough that the authors' curve cannot be told from 1/2, the moment error decays like "
    "n^(-1/2).")
DECREASING = ClaimSpec(
    "moments.decreasing", f"{SOURCE}: the slowdown grows with the horizon (notes token_sample §2.2 [D] finer "
                          "heuristic, §6.4(ii))",
    "Where the finer heuristic predicts a resolvable drop of beta between the smallest and the largest horizon "
    "of the run, |beta_hat| is significantly smaller at the largest horizon.")

EXAMPLES = """\
examples:
  python -m studies.moments                               # Gaussian d=50, 12 scales (about 2 min)
  python -m studies.moments --reference finite:100000 --plot   # + the authors' finite reference
  python -m studies.moments --preset paper --workers 2    # the authors' protocol (hours)
  python -m studies.moments --preset sphere --plot        # uniform sphere, d=50
  python -m studies.moments --quick --plot --out /tmp/moments.zarr
  python -m paper_figs.moments results/moments.zarr
"""


# ------------------------------------------------------------------------------ parsing
def parse_scales(text: str) -> tuple[float, ...]:
    """Scales: ``A..B/K`` (K geometric points, inclusive), ``a,b,c`` or ``A..B:step``."""
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError("empty scale grid")
    num = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
    out = []
    for piece in text.split(","):
        piece = piece.strip()
        m_geo = re.fullmatch(rf"({num})\.\.({num})/(\d+)", piece)
        m_ari = re.fullmatch(rf"({num})\.\.({num}):({num})", piece)
        if m_geo:
            lo, hi, k = float(m_geo.group(1)), float(m_geo.group(2)), int(m_geo.group(3))
            if not (0 < lo <= hi) or k < 1:
                raise argparse.ArgumentTypeError(f"geometric grid {piece!r} needs 0 < A <= B and K >= 1")
            out.extend(np.geomspace(lo, hi, k).tolist() if k > 1 else [lo])
        elif m_ari:
            lo, hi, step = (float(m_ari.group(i)) for i in (1, 2, 3))
            if hi < lo or step <= 0:
                raise argparse.ArgumentTypeError(f"range {piece!r} needs A <= B and a positive step")
            out.extend(np.round(np.arange(lo, hi + step * 1e-9, step), 12).tolist())
        elif re.fullmatch(num, piece):
            out.append(float(piece))
        else:
            raise argparse.ArgumentTypeError(f"not a scale grid: {piece!r} (use 0.05..50/12 or 0.1,1,10)")
    vals = tuple(sorted(set(float(np.float64(v)) for v in out)))
    if not all(np.isfinite(v) and v > 0 for v in vals):
        raise argparse.ArgumentTypeError("scales must be positive finite numbers")
    return vals


def parse_reference(text: str) -> tuple[str, int]:
    """``exact`` or ``finite:N`` (N tokens, e.g. finite:100000 or finite:1e5)."""
    text = text.strip()
    if text == "exact":
        return ("exact", 0)
    m = re.fullmatch(r"finite:(\d+(?:\.\d*)?(?:[eE]\d+)?)", text)
    if not m or not float(m.group(1)).is_integer() or float(m.group(1)) < 2:
        raise argparse.ArgumentTypeError(f"--reference must be 'exact' or 'finite:N' with an integer N >= 2, got {text!r}")
    return ("finite", int(float(m.group(1))))


DESCRIPTION = ("Moments of self-attention outputs of n i.i.d. tokens against their infinite-token limit, vs n, "
               "for a sweep of attention scales (horizons): the rate beta(H). The default parameter set: Gaussian "
               "d=50, 12 scales, n=1000..8000/6, k=32 (~1-2 min on 2 cores).")


def add_arguments(p) -> None:
    p.add_argument("--dist", choices=("gaussian", "sphere"), default=None, help="token law")
    p.add_argument("--d", type=positive_int, default=None, help="token dimension (presets: 50)")
    p.add_argument("--rho", type=positive_float, default=None,
                   help="Gaussian tokens: covariance rho * I (the authors' rho = 0.1)")
    p.add_argument("--radius", type=positive_float, default=None, help="sphere tokens: radius (default 1)")
    p.add_argument("--weights", choices=WEIGHT_CONVENTIONS, default=None,
                   help="normalized: N(0,1/d) entries, A = s W_k^T W_q/sqrt(d) (Gaussian preset); "
                        "unnormalized: N(0,1) entries, A = s^2 W_k^T W_q/sqrt(d) (sphere presets)")
    p.add_argument("--weight-seed", type=nonnegative_int, default=42,
                   help="seed of the fixed W_q, W_k, W_v (default 42, as the authors)")
    p.add_argument("--scales", type=parse_scales, default=None, metavar="GRID",
                   help="attention scales: 0.05..50/12 (12 geometric points, inclusive), 0.1,1,10 "
                        f"(default {DEFAULTS['scales']}; --quick {QUICK['scales']})")
    p.add_argument("--n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"token counts: 1000..8000/6, 2^10..2^13, 1000,3000 (default {DEFAULTS['n']}; "
                        f"--quick {QUICK['n']})")
    p.add_argument("--reps", type=positive_int, default=None,
                   help=f"independent samples per n (default {DEFAULTS['reps']}; --quick {QUICK['reps']})")
    p.add_argument("--reference", type=parse_reference, default=None, metavar="REF",
                   help="exact (closed form; always computed) or finite:N (also the authors' protocol: "
                        "moments of N fresh tokens, e.g. finite:100000)")
    p.add_argument("--self-token", choices=("include", "exclude"), default="include",
                   help="whether each query attends to itself (default include, as the paper)")
    p.add_argument("--method", choices=("auto", "numba", "stream", "naive"), default="auto",
                   help="self-attention implementation (naive materialises n x n scores: tests only)")


# --------------------------------------------------------------------------------- sweep
def _problem(cfg) -> MomentProblem:
    if cfg["dist"] == "gaussian":
        dist = make_distribution("gaussian", cfg["d"], scale=float(np.sqrt(cfg["rho"])))
    else:
        dist = make_distribution("sphere", cfg["d"], radius=cfg["radius"])
    return MomentProblem.build(dist, cfg["scales"], convention=cfg["weights"], weight_seed=cfg["weight_seed"])


def _cell(cell, *, problem, ref_means, ref_covs, exclude_self, method, device):
    """One sweep cell: n tokens, output moments at every scale, errors against every reference."""
    rng = make_rng(cell.seed, device)
    mean, cov = problem.sample_moments(rng, int(cell.coords["n"]), exclude_self=exclude_self, method=method)
    out = {k: [] for k in ERRS}
    for rm, rc in zip(ref_means, ref_covs):
        e = moment_errors(mean, cov, rm, rc)
        for k in ERRS:
            out[k].append(e[k])
    return {k: np.stack(v) for k, v in out.items()}


def _config(args) -> dict:
    return {"dist": args.dist, "d": args.d, "rho": args.rho, "radius": args.radius,
            "weights": args.weights, "weight_seed": args.weight_seed, "scales": list(args.scales)}


def _params(args) -> dict:
    """The run's stored parameters: the problem (:func:`_config`), the grid, the references and
    how they are computed -- everything :func:`analyze` needs to re-derive the analysis."""
    return {
        **_config(args), "preset": getattr(args, "preset", "default"), "n": [int(v) for v in args.n],
        "reps": args.reps,
        "reference": f"{args.reference[0]}" + (f":{args.reference[1]}" if args.reference[0] == "finite" else ""),
        "self_token": args.self_token, "method": args.method, "device": args.device,
        "softmax_scale": "1/sqrt(d)", "rqmc": {"log2_points": args.rqmc_log2, "n_scrambles": RQMC["n_scrambles"]},
    }


def make_sweep(args, problem: MomentProblem, refs: dict) -> Sweep:
    n = np.asarray(args.n, dtype=np.int64)
    ref_names = list(refs)
    H_eff, H_code = problem.horizons()
    params = _params(args)
    run_cell = functools.partial(_cell, problem=problem, ref_means=[refs[r][0] for r in ref_names],
                                 ref_covs=[refs[r][1] for r in ref_names],
                                 exclude_self=args.self_token == "exclude", method=args.method, device=args.device)
    dims = ("ref", "scale", "n", "rep")
    return Sweep(
        study=STUDY,
        cell_dims={"n": n, "rep": np.arange(args.reps)},
        variables={k: dims for k in ERRS},
        coords={"scale": np.asarray(args.scales, dtype=float), "ref": str_coord(ref_names)},
        params=params,
        run_cell=run_cell,
        root_seed=args.seed,
        attrs={"device": args.device, "token_law": problem.dist.describe(),
               "convention": "o_i = V sum_j softmax_j(<A(s) x_i, x_j>) x_j over the n tokens "
                             f"(self token {args.self_token}d); A(s) = f(s) W_k^T W_q / sqrt(d), "
                             f"f(s) = {'s' if args.weights == 'normalized' else 's^2'} ({args.weights} weights); "
                             "V = W_v; mean / population covariance of o_1..o_n; tokens shared across scales",
               "horizon_conventions": "H_eff = ||Sigma^1/2 A(s) Sigma^1/2||_2 (exact exponent); "
                                      "H_code = sqrt(d) H_eff (authors' code: W_k^T W_q without 1/sqrt(d))",
               "H_eff_values": [float(h) for h in H_eff], "H_code_values": [float(h) for h in H_code]},
        var_attrs={
            "mean_err": {"long_name": "|mean(o) - mean_ref|_2"},
            "cov_err": {"long_name": "|cov(o) - cov_ref|_F (population covariance)"},
            "cov_err_op": {"long_name": "|cov(o) - cov_ref|_2 (spectral norm)"},
        },
    )


# ------------------------------------------------------------------------------ analysis
def analyze(ds: xr.Dataset) -> tuple[xr.Dataset, list]:
    """Slopes, theory, claims and the reference moments: a pure function of the stored run. The
    horizons are the ones the run recorded (``H_eff_values``, ``H_code_values``), the token law
    and the references are rebuilt from its stored parameters and root seed (the references are
    deterministic given them: :func:`_run_references`)."""
    params = run_params(ds)
    problem = _problem(params)
    H_eff, H_code = (np.asarray(_stored_list(ds.attrs[key]), dtype=float) for key in ("H_eff_values", "H_code_values"))
    analysis, claims = _rates(ds, H_eff, H_code, problem.dist.law)
    refs = _run_references(params, int(ds.attrs.get("root_seed", 0)), problem, key=_run_key(ds.attrs))
    return analysis.merge(reference_vars(refs, analysis)), claims


def _stored_list(value) -> list:
    """A list attribute of the store (written as a JSON string, or a list)."""
    return json.loads(value) if isinstance(value, str) else list(value)


def _rates(ds: xr.Dataset, H_eff, H_code, law) -> tuple[xr.Dataset, list]:
    """Slopes, theory and claims from the raw sweep, given the horizons and the token law (for
    its predicted rate)."""
    refs = [str(r) for r in ds["ref"].values]
    scales = ds["scale"].values
    n = ds["n"].values.astype(float)
    H_eff = np.asarray(H_eff, dtype=float)
    H_code = np.asarray(H_code, dtype=float)
    S, R = len(scales), len(refs)
    out = xr.Dataset(coords={"ref": ds["ref"].values, "scale": scales, "n": ds["n"].values})
    out["H_eff"] = (("scale",), H_eff, {"long_name": "||Sigma^1/2 A(s) Sigma^1/2||_2 with the exact exponent"})
    out["H_code"] = (("scale",), H_code, {"long_name": "sqrt(d) H_eff: the authors' convention (no 1/sqrt(d))"})
    for key in ERRS:
        err = ds[key].values  # (ref, scale, n, rep)
        k = err.shape[-1]
        out[f"{key}_mean"] = (("ref", "scale", "n"), err.mean(axis=-1), {"long_name": f"mean over replicates of {key}"})
        out[f"{key}_sem"] = (("ref", "scale", "n"), err.std(axis=-1, ddof=1) / np.sqrt(k))
    for mom, key in (("mean", "mean_err"), ("cov", "cov_err"), ("cov_op", "cov_err_op")):
        slope, se, chi2 = (np.zeros((R, S)) for _ in range(3))
        for r in range(R):
            for s in range(S):
                f = loglog_rate(n, ds[key].values[r, s])
                slope[r, s], se[r, s], chi2[r, s] = f.slope, f.se, f.chi2_red
        out[f"beta_{mom}"] = (("ref", "scale"), -slope, {"long_name": f"|beta_hat| = -(WLS log-log slope of {key} vs n)"})
        out[f"beta_{mom}_se"] = (("ref", "scale"), se, {"long_name": "standard error (inflated by sqrt(chi2_red) when > 1)"})
        out[f"beta_{mom}_chi2_red"] = (("ref", "scale"), chi2)
    for axis, H in (("eff", H_eff), ("code", H_code)):
        out[f"theory_beta_{axis}"] = (("scale",), ts.beta_of_horizon(H),
                                      {"long_name": f"1/(2(1+H^2)) on the H_{axis} axis (authors' reference curve)"})
        out[f"theory_beta_fine_{axis}"] = (("scale",), ts.beta_fine_of_horizon(H),
                                           {"long_name": f"finer heuristic on the H_{axis} axis: 1/2 if H<=1 else 1/(1+H^2)"})
    out["theory_beta_law"] = (("scale",), ts.predicted_moment_rate(law, H_eff),
                              {"long_name": "asymptotic rate predicted for this token law (finer heuristic for "
                                            "Gaussian tails, 1/2 for bounded laws), on the H_eff axis"})
    out["theory_beta_small_H"] = ((), 0.5, {"long_name": "the H -> 0 limit of beta"})
    out.attrs["theory_axis"] = ("H_eff: the curves are derived for the exact exponent of the softmax; H_code "
                                "(the authors' axis) is stored for comparison with their figures")
    k = ds.sizes["rep"]
    ex = refs.index("exact")
    claims = []
    for mom in MOMENTS:
        b = out[f"beta_{mom}"].values[ex]
        e = out[f"beta_{mom}_se"].values[ex]
        claims += _claims(mom, scales, H_eff, b, e, out["theory_beta_law"].values, k)
    return out, claims


def _claims(mom, scales, H, b, e, law_beta, k) -> list:
    out = []
    bound = ts.beta_of_horizon(H)
    z, zsrc = z_family(scales.size, dof=k - 1)
    members = [RATE_BOUND.at_least(b[s], e[s], bound[s], z=z, z_source=zsrc, where=f"s={scales[s]:.4g}",
                                   effect=bound[s], prediction_text=f">= {bound[s]:.3g} (H_eff={H[s]:.3g})")
               for s in range(scales.size)]
    out.append(worst_of(members, where=mom, every="scale"))

    lo, hi = int(np.argmin(H)), int(np.argmax(H))
    z, zsrc = z_family(1, dof=k - 1)
    gap = 0.5 - float(bound[lo])
    if law_beta[lo] == 0.5 and gap <= z * e[lo]:
        out.append(SMALL_H.equal(b[lo], e[lo], 0.5, z=z, z_source=zsrc, where=mom, effect=0.5,
                                 prediction_text=f"0.5 at H_eff={H[lo]:.3g} (authors' curve {bound[lo]:.3g})"))
    else:
        why = (f"the finer heuristic predicts {law_beta[lo]:.3g} there" if law_beta[lo] != 0.5 else
               f"the authors' curve there, {bound[lo]:.3g}, differs from 1/2 by {gap:.3g} > z SE = {z * e[lo]:.3g}")
        out.append(SMALL_H.not_tested(
            f"the smallest horizon H_eff = {H[lo]:.3g} is not small: {why} (its rate is tested by rate_bound)",
            where=mom, prediction_text="0.5", measured=b[lo], se=e[lo]))

    drop_pred = float(law_beta[lo] - law_beta[hi])
    drop = float(b[lo] - b[hi])
    se_drop = float(np.hypot(e[lo], e[hi]))
    text = (f"drop {drop_pred:.3g} from H_eff={H[lo]:.3g} to {H[hi]:.3g} (finer heuristic: beta "
            f"{law_beta[lo]:.3g} -> {law_beta[hi]:.3g})")
    if drop_pred <= 0:
        why = ("the token law is bounded: its influence function is bounded, so the predicted asymptotic rate is 1/2 "
               "at every horizon" if np.all(law_beta == 0.5) and H[hi] > 1 else
               f"the horizons of the run stay at or below 1 (H_eff <= {H[hi]:.3g}): the finer heuristic predicts "
               "beta = 1/2 at every scale")
        out.append(DECREASING.not_tested(f"no decrease is predicted: {why}", where=mom, prediction_text=text,
                                         measured=drop, se=se_drop))
    elif drop_pred < 2 * z * se_drop:
        out.append(DECREASING.not_tested(
            f"the predicted drop {drop_pred:.3g} is below 2 z SE = {2 * z * se_drop:.3g}: the measurement cannot "
            "resolve it (more replicates or a wider horizon range would)", where=mom, prediction_text=text,
            measured=drop, se=se_drop))
    else:
        ok = drop > z * se_drop
        out.append(DECREASING.decided(
            ok, test="measured drop beta_hat(H_min) - beta_hat(H_max) > z SE (tested: predicted drop >= 2 z SE)",
            tolerance=z * se_drop, tolerance_source=f"{zsrc} × SE {se_drop:.3g}; resolvable when the predicted drop "
                                                     "is >= 2 z SE (power >= 1 - alpha/2)",
            where=mom, prediction=drop_pred, prediction_text=text, measured=drop, se=se_drop,
            lo=drop - z * se_drop, hi=drop + z * se_drop,
            reason="" if ok else f"measured drop {drop:.3g} is not above z SE = {z * se_drop:.3g}"))
    return out


def summary(an: xr.Dataset) -> str:
    """The rates per scale (exact reference; the finite reference's next to them)."""
    refs = [str(r) for r in an["ref"].values]
    ex = refs.index("exact")
    fin = refs.index("finite") if "finite" in refs else None
    head = (f"{'scale':>8} {'H_eff':>8} {'H_code':>8}  {'beta_mean ± se':<16} {'beta_cov ± se':<16} "
            f"{'th(H_eff)':>9} {'th(H_code)':>10} {'law(H_eff)':>10}")
    if fin is not None:
        head += f"  {'finite: mean':>12} {'cov':>6}"
    rows = [head]
    for s in range(an.sizes["scale"]):
        bm, sm = an["beta_mean"].values[ex, s], an["beta_mean_se"].values[ex, s]
        bc, sc = an["beta_cov"].values[ex, s], an["beta_cov_se"].values[ex, s]
        line = (f"{an['scale'].values[s]:>8.4g} {an['H_eff'].values[s]:>8.4g} {an['H_code'].values[s]:>8.4g}  "
                f"{bm:+.3f} ± {sm:.3f}   {bc:+.3f} ± {sc:.3f}   {an['theory_beta_eff'].values[s]:>9.3f} "
                f"{an['theory_beta_code'].values[s]:>10.3f} {an['theory_beta_law'].values[s]:>10.3f}")
        if fin is not None:
            line += f"  {an['beta_mean'].values[fin, s]:>+12.3f} {an['beta_cov'].values[fin, s]:>+6.3f}"
        rows.append(line)
    if "finite_ref_rel_err_cov" in an:
        rows.append("finite reference's own error / exact-reference error at the largest n, per scale: mean "
                    + " ".join(f"{v:.2f}" for v in an["finite_ref_rel_err_mean"].values) + "; cov "
                    + " ".join(f"{v:.2f}" for v in an["finite_ref_rel_err_cov"].values))
    return "\n".join(rows)


# ---------------------------------------------------------------------------------- main
def validate(args) -> None:
    if args.d < 2:
        raise UsageError("--d must be >= 2")
    if len(args.n) < 3:
        raise UsageError("--n: a rate fit needs at least 3 token counts")
    if args.reps < 2:
        raise UsageError("--reps: standard errors need at least 2 replicates")
    if args.self_token == "exclude" and min(args.n) < 2:
        raise UsageError("--self-token exclude needs n >= 2")
    biggest = max(max(args.n), args.reference[1])
    if args.method == "naive" and biggest**2 * 8 > 4 * 2**30:
        raise UsageError(f"--method naive materialises n x n scores: n = {biggest} needs "
                         f"{biggest**2 * 8 / 2**30:.0f} GiB; use the default streaming method")
    d, S = args.d, len(args.scales)
    spread = args.rho * d if args.dist == "gaussian" else args.radius**2
    gain = max(args.scales) if args.weights == "normalized" else max(args.scales) ** 2
    check_scores(gain * spread * (1.0 + np.log(biggest)), "--scales x the token spread")
    rqmc = 2**args.rqmc_log2 * RQMC["n_scrambles"] if args.dist == "sphere" else 0
    check_resources(f"{biggest} tokens in d = {d} at {S} scales",
                    memory=8.0 * (4 * biggest * d + 6 * d * d * (S + 4) + 2 * rqmc * d),
                    work_s=(args.reps * sum(n * n for n in args.n) + args.reference[1] ** 2) * d * S / PAIR_RATE)


_RUN_REFERENCES: dict = {}  # the references of the latest run of this process, by _run_key


def _run_key(attrs) -> tuple[str, str]:
    """What the references depend on: the run's parameters and root seed, as stored."""
    return str(attrs.get("params_json", "")), str(attrs.get("root_seed", 0))


def _run_references(params, seed: int, problem: MomentProblem, *, key=None, progress: bool = False) -> dict:
    """The references of a run (deterministic given its parameters and root seed, so a resumed
    run and a re-analysis recompute them identically): ``exact`` (closed form or RQMC) and, for
    ``reference = finite:N``, ``finite`` (the output moments of N fresh tokens, drawn on the
    run's device). The references :func:`parts` computed for the cells are kept under ``key``
    for the analysis of the same run in this process, so a run computes them once."""
    if key is not None and key in _RUN_REFERENCES:
        return _RUN_REFERENCES[key]
    refs = {}
    rq = np.random.SeedSequence(seed, spawn_key=(RQMC_SPAWN,))
    rqmc = params["rqmc"]
    refs["exact"] = problem.exact_reference(seed=rq, log2_points=int(rqmc["log2_points"]),
                                            n_scrambles=int(rqmc["n_scrambles"]))
    kind, N = parse_reference(params["reference"])
    if kind == "finite":
        if progress:
            print(f"finite reference: output moments of N = {N} fresh tokens at {problem.factors.size} scales "
                  "(recomputed identically on resume)...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            device = use_device(params["device"])
        except UsageError as e:
            raise UsageError(f"the run's finite reference was drawn on the {params['device']}: re-deriving it needs "
                             f"one ({e})") from None
        rng = make_rng(np.random.SeedSequence(seed, spawn_key=(FINITE_SPAWN,)), device)
        m, c = problem.finite_reference(rng, N, exclude_self=params["self_token"] == "exclude",
                                        method=params["method"])
        refs["finite"] = (m, c, None)
        if progress:
            print(f"finite reference done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return refs


def reference_vars(refs: dict, analysis: xr.Dataset) -> xr.Dataset:
    """The reference moments (and, with a finite reference, its own error against the exact
    one and that error relative to the measured error at the largest n), as analysis variables."""
    em, ec, ese = refs["exact"]
    dv = em.shape[1]
    out = xr.Dataset(coords={"dim": np.arange(dv), "dim2": np.arange(dv)})
    out["exact_mean"] = (("scale", "dim"), em, {"long_name": "mean of the output law (exact)"})
    out["exact_cov"] = (("scale", "dim", "dim2"), ec, {"long_name": "covariance of the output law (exact / RQMC)"})
    out["exact_cov_se_fro"] = (("scale",), np.linalg.norm(ese, axis=(1, 2)),
                               {"long_name": "Frobenius norm of the elementwise standard error of exact_cov "
                                             "(0 for the closed form; RQMC error for the sphere)"})
    if "finite" in refs:
        fm, fc, _ = refs["finite"]
        out["finite_mean"] = (("scale", "dim"), fm, {"long_name": "output mean of N fresh tokens"})
        out["finite_cov"] = (("scale", "dim", "dim2"), fc, {"long_name": "output covariance of N fresh tokens"})
        out["finite_ref_mean_err"] = (("scale",), np.linalg.norm(fm - em, axis=1),
                                      {"long_name": "|finite_mean - exact_mean|: the reference's own error"})
        out["finite_ref_cov_err"] = (("scale",), np.linalg.norm(fc - ec, axis=(1, 2)),
                                     {"long_name": "|finite_cov - exact_cov|_F"})
        ex = [str(r) for r in analysis["ref"].values].index("exact")
        for mom, key in (("mean", "mean_err"), ("cov", "cov_err")):
            out[f"finite_ref_rel_err_{mom}"] = (
                ("scale",), out[f"finite_ref_{mom}_err"].values / analysis[f"{key}_mean"].values[ex, :, -1],
                {"long_name": f"the finite reference's own {mom} error / the mean exact-reference {key} at the largest "
                              "n: near 1 the reference is no better than the measurement (noise-dominated errors "
                              "flatten against it; bias-dominated errors, shared by the reference, steepen)"})
    return out


def parts(args) -> list[Part]:
    """The sweep, its references computed first (and kept for this run's analysis)."""
    params = _params(args)
    problem = _problem(params)
    refs = _run_references(params, args.seed, problem, progress=not args.no_progress)
    sweep = make_sweep(args, problem, {k: v[:2] for k, v in refs.items()})
    _RUN_REFERENCES.clear()
    _RUN_REFERENCES[(sweep.params_json, str(sweep.root_seed))] = refs
    return [Part("", sweep=sweep)]


def main(argv=None) -> int:
    return study_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
