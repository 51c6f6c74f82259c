"""``python -m studies.icl estimators``: Monte Carlo risks of the closed-form predictors over
prompt lengths L (notes icl_regression §6, §11 figure 6, §13.2-3; sweep S2).

Estimators (all on the same prompts, common random numbers): ``multihead_tf`` (two antisymmetric
softmax heads (omega, mu), (-omega, -mu)), ``singlehead_tf`` (omega = 1/sqrt(d),
mu = sqrt(d)/(1 + e d(1+sigma2)/L), the authors' single-head curve), ``gd`` and ``dgd`` at
eta = 2 omega mu, ``gd_opt`` and ``dgd_opt`` at their optimal steps, ``ridge`` (lambda =
d sigma2: the Bayes posterior mean).

Claims (predictions from :mod:`theory.icl_regression` for the run's d, sigma2, omega, mu and
each L; z from the family's Bonferroni count; one claim per estimator, the worst L shown):

* ``exact_risk`` [estimator=e]: the Monte Carlo risk equals the exact finite-L risk at every L --
  closed forms for gd, gd_opt, dgd, dgd_opt; the exact softmax-kernel risk
  (:func:`theory.icl_regression.kernel_risk`) for singlehead_tf and for multihead_tf (measured
  through its paired difference with dgd, whose risk is exact); for ridge, the paired difference
  between its squared error and the Bayes risk given the design, sigma2 + tr[(XᵀX/sigma2 +
  d I)^-1], is 0 (Bayes optimality of the posterior mean, exact at every L);
* ``bayes_lowest`` [estimator=e]: ridge (= Bayes) has a lower risk than e at every L;
* ``multihead_beats_single``: the multi-head kernel beats the single-head one at every L where
  the exact risks say so (the predicted sign is the theory's at each L).

Dataset: raw ``mse, m2 (estimator, L, rep)``, paired ``ridge_diff``, ``md_diff`` (multihead - dgd)
and the conditional Bayes risk ``ridge_cond_risk`` (L, rep) with second moments; analysis
``mc_risk``, ``mc_se``, ``theory_risk`` (exact), ``z_vs_formula``, ``ridge_bayes_finite``,
``theory_ridge_mp`` (the Marchenko-Pastur limit, shown for reference), the claims.
"""
from __future__ import annotations

import functools
import json
import math

import numpy as np
import xarray as xr

from sim import icl_regression as sim
from studies.claims import ClaimSpec, worst_of, z_family
from studies.cli import (PAIR_RATE, Part, UsageError, check_resources, check_scores, finite_float, positive_float,
                         positive_int, run_params)
from studies.icl import _common as C
from studies.sweep import Sweep, str_coord
from theory import icl_regression as th

STUDY = "icl_estimators"
DESCRIPTION = ("Monte Carlo risks of the closed-form predictors (softmax kernels, GD, debiased GD, ridge) against "
               "their exact finite-L risks, over prompt lengths L.")
EXAMPLES = """\
examples:
  python -m studies.icl estimators --L 10..100:5 --prompts 50000   # seconds
  python -m studies.icl estimators --quick --plot
"""
ESTIMATORS = ("multihead_tf", "singlehead_tf", "gd", "gd_opt", "dgd", "dgd_opt", "ridge")
DEFAULTS = {"L": "10..100:5", "d": 5, "sigma2": 0.1, "prompts": 50000, "reps": 10, "omega": 0.13, "mu": 3.45}
QUICK = {"L": "10,40,100", "prompts": 8000, "reps": 4}
PRESETS: dict = {}

S = C.SOURCE
EXACT = ClaimSpec(
    "icl_estimators.exact_risk", f"{S}: closed-form predictors (notes icl_regression §6, §13.2-3; Fig. 6)",
    "The Monte Carlo risk of the predictor equals its exact finite-L risk at every prompt length.")
BAYES = ClaimSpec(
    "icl_estimators.bayes_lowest",
    f"{S}: ridge with lambda = d sigma2 is the Bayes predictor (notes icl_regression §6.4, §13.2)",
    "Ridge (the Bayes posterior mean) has a lower risk than this predictor at every prompt length.")
BEATS = ClaimSpec(
    "icl_estimators.multihead_beats_single",
    f"{S}: multi-head beats single-head attention (abstract; Fig. 6; notes icl_regression §6.5, §13.3)",
    "The two-head softmax kernel has a lower risk than the single-head kernel wherever the exact risks say so.")


def add_arguments(p) -> None:
    p.add_argument("--L", type=C.ints, default=None, metavar="RANGE",
                   help=f"prompt lengths, 10..100:5 (inclusive) or a list (default {DEFAULTS['L']}; "
                        f"--quick {QUICK['L']})")
    p.add_argument("--d", type=positive_int, default=None, help=f"covariate dimension (default {DEFAULTS['d']})")
    p.add_argument("--sigma2", type=positive_float, default=None,
                   help=f"label-noise variance (default {DEFAULTS['sigma2']})")
    p.add_argument("--prompts", type=positive_int, default=None,
                   help=f"Monte Carlo prompts per L (default {DEFAULTS['prompts']}; --quick {QUICK['prompts']})")
    p.add_argument("--reps", type=positive_int, default=None,
                   help=f"replicate blocks the prompts are split into (default {DEFAULTS['reps']}; "
                        f"--quick {QUICK['reps']})")
    p.add_argument("--omega", type=positive_float, default=None,
                   help=f"multi-head kernel |omega| (default {DEFAULTS['omega']})")
    p.add_argument("--mu", type=finite_float, default=None, help=f"multi-head kernel |mu| (default {DEFAULTS['mu']})")


def validate(args) -> None:
    if min(args.L) < 2 or max(args.L) > 10000:
        raise UsageError("--L: prompt lengths must be in 2..10000")
    if args.reps < 2 or args.prompts % args.reps:
        raise UsageError("--reps must be >= 2 and divide --prompts")
    C.check_variance(1.0 + args.sigma2, "--sigma2")
    C.check_variance(args.mu * args.mu, "--mu (the multi-head kernel's value weight, squared)")
    check_scores(args.omega * max(args.L) * args.d * (1 + args.sigma2), "--omega x --L x --d")
    n_per = args.prompts // args.reps
    check_resources(f"{args.prompts} prompts of length up to {max(args.L)} in d = {args.d}",
                    memory=8.0 * 8 * n_per * max(args.L) * (args.d + 1),
                    work_s=args.prompts * sum(args.L) * (args.d + 1) ** 2 * 8 / PAIR_RATE)
    C.check_in_process(args)


def main(argv=None) -> int:
    return C.sub_main(STUDY, argv)


def single_head_params(d, L, sigma2):
    """The authors' single-head curve: omega = 1/sqrt(d), mu = sqrt(d)/(1 + e d (1+sigma2)/L)."""
    return 1.0 / math.sqrt(d), math.sqrt(d) / (1.0 + math.e * d * (1.0 + sigma2) / L)


def _cell(cell, *, d, sigma2, omega, mu, n_per_rep, key, device="cpu"):
    L = int(cell.coords["L"])
    rep = int(cell.coords["rep"])
    task = sim.isotropic_task(d, sigma2)
    p = sim.generate_prompts(task, key, n_per_rep, L, t=L, stream=sim.STREAM_TEST, first=rep * n_per_rep,
                             device=device)
    yq = p.yq[:, 0]
    eta = 2.0 * omega * mu
    w1, m1 = single_head_params(d, L, sigma2)
    preds = {
        "multihead_tf": sim.predict_softmax_heads(p, [omega, -omega], [mu, -mu]),
        "singlehead_tf": sim.predict_softmax_heads(p, [w1], [m1]),
        "gd": sim.predict_gd(p, eta),
        "gd_opt": sim.predict_gd(p, th.gd_optimal_step(d, L, sigma2)),
        "dgd": sim.predict_dgd(p, eta),
        "dgd_opt": sim.predict_dgd(p, th.dgd_optimal_step(d, L, sigma2)),
        "ridge": sim.predict_ridge(p, d * sigma2),
    }
    sq = np.stack([(preds[e] - yq) ** 2 for e in ESTIMATORS])
    cond = sim.ridge_conditional_risk(p, sigma2)
    md = sq[ESTIMATORS.index("multihead_tf")] - sq[ESTIMATORS.index("dgd")]
    rd = sq[-1] - cond
    return {"md_diff": md.mean(), "md_diff_m2": (md**2).mean(), "mse": sq.mean(axis=1), "m2": (sq**2).mean(axis=1),
            "ridge_cond_risk": cond.mean(), "ridge_cond_m2": (cond**2).mean(), "ridge_diff": rd.mean(),
            "ridge_diff_m2": (rd**2).mean()}


def make_sweep(args) -> Sweep:
    L = np.asarray(args.L, dtype=np.int64)
    n_per = args.prompts // args.reps
    key = sim.data_key(np.random.SeedSequence(args.seed, spawn_key=(7,)))
    params = {"L": L.tolist(), "d": args.d, "sigma2": args.sigma2, "prompts": args.prompts, "reps": args.reps,
              "omega": args.omega, "mu": args.mu, "estimators": list(ESTIMATORS), **C.device_params(args.device)}
    return Sweep(
        study=STUDY, cell_dims={"L": L, "rep": np.arange(args.reps)},
        variables={"mse": ("estimator", "L", "rep"), "m2": ("estimator", "L", "rep"),
                   "ridge_cond_risk": ("L", "rep"), "ridge_cond_m2": ("L", "rep"),
                   "ridge_diff": ("L", "rep"), "ridge_diff_m2": ("L", "rep"),
                   "md_diff": ("L", "rep"), "md_diff_m2": ("L", "rep")},
        coords={"estimator": str_coord(ESTIMATORS)}, params=params,
        run_cell=functools.partial(_cell, d=args.d, sigma2=args.sigma2, omega=args.omega, mu=args.mu,
                                   n_per_rep=n_per, key=key, device=args.device),
        root_seed=args.seed,
        attrs={"substudy": "estimators", "figure_kind": "estimators", "device": C.device_attr(args.device),
               "prompts_per_rep": n_per,
               "convention": "prompts of length L: Philox stream 2 at t = L under a key from the root seed; "
                             "all estimators see the same prompts (common random numbers)",
               "estimators": json.dumps({
                   "multihead_tf": "2 heads: omega = (w, -w), mu = (m, -m), softmax weights",
                   "singlehead_tf": "omega = 1/sqrt(d), mu = sqrt(d)/(1 + e d (1+sigma2)/L)",
                   "gd": "one-step GD, eta = 2 omega mu", "gd_opt": "GD at its optimal step 1/(1+k)",
                   "dgd": "debiased GD, eta = 2 omega mu", "dgd_opt": "debiased GD at L/(L + d + d sigma2)",
                   "ridge": "ridge lambda = d sigma2 (Bayes posterior mean)"})},
        var_attrs={"mse": {"long_name": "mean squared error over the rep's prompts"},
                   "m2": {"long_name": "mean of the squared error squared (for the per-prompt variance)"},
                   "ridge_cond_risk": {"long_name": "mean of sigma2 + tr[(XᵀX/sigma2 + d I)^-1] (Bayes risk given X)"},
                   "ridge_diff": {"long_name": "mean of ridge squared error minus its conditional risk"},
                   "md_diff": {"long_name": "mean of multihead_tf minus dgd squared errors (paired)"}})


def parts(args) -> list[Part]:
    return [Part("", sweep=make_sweep(args))]


def exact_risks(est, L, d, sigma2, omega, mu):
    """(estimator, L) exact finite-L risks (NaN for ridge, whose Bayes risk is taken given the
    sampled designs)."""
    eta = 2 * omega * mu
    out = np.full((len(est), len(L)), np.nan)
    for i, e in enumerate(est):
        for j, l in enumerate(L):
            l = int(l)
            if e == "gd":
                out[i, j] = th.gd_risk(eta, d, l, sigma2)
            elif e == "gd_opt":
                out[i, j] = th.gd_optimal_risk(d, l, sigma2)
            elif e == "dgd":
                out[i, j] = th.dgd_risk(eta, d, l, sigma2)
            elif e == "dgd_opt":
                out[i, j] = th.dgd_optimal_risk(d, l, sigma2)
            elif e == "multihead_tf":
                out[i, j] = th.kernel_risk(omega, mu, d, l, sigma2, heads=2)
            elif e == "singlehead_tf":
                out[i, j] = th.kernel_risk(*single_head_params(d, l, sigma2), d, l, sigma2, heads=1)
    return out


def analyze(ds):
    """Pooled Monte Carlo risks against the exact ones, and the claims (d, sigma2, omega, mu and
    the prompts per replicate are the run's stored parameters)."""
    p = run_params(ds)
    d, sigma2, omega, mu = int(p["d"]), float(p["sigma2"]), float(p["omega"]), float(p["mu"])
    n_per_rep = int(p["prompts"]) // int(p["reps"])
    L = ds["L"].values
    est = [str(e) for e in ds["estimator"].values]
    mc, se = C.pooled(ds["mse"].values, ds["m2"].values, n_per_rep)
    out = xr.Dataset(coords={"estimator": ds["estimator"], "L": ds["L"]})
    out["mc_risk"] = (("estimator", "L"), mc, {"long_name": "Monte Carlo risk E(ŷ - y_q)^2"})
    out["mc_se"] = (("estimator", "L"), se)
    theory = exact_risks(est, L, d, sigma2, omega, mu)
    rc, rse = C.pooled(ds["ridge_cond_risk"].values, ds["ridge_cond_m2"].values, n_per_rep)
    ir = est.index("ridge")
    theory[ir] = rc
    out["theory_risk"] = (("estimator", "L"), theory, {
        "long_name": "exact finite-L risk: closed forms (gd, dgd and their optima), the exact softmax-kernel risk "
                     "(multihead_tf, singlehead_tf); ridge: the mean Bayes risk given the sampled designs"})
    out["theory_exact"] = (("estimator",), np.array([e != "ridge" for e in est]))
    out["ridge_bayes_finite"] = (("L",), rc, {"long_name": "finite-L Bayes risk: mean over designs of "
                                                           "sigma2 + tr[(XᵀX/sigma2 + d I)^-1]"})
    out["ridge_bayes_finite_se"] = (("L",), rse)
    out["theory_ridge_mp"] = (("L",), th.ridge_bayes_risk_mp(sigma2, d / L.astype(float)),
                              {"long_name": "Marchenko-Pastur limit of the Bayes risk (d, L -> inf; reference only)"})
    out["theory_dgd_asymptotic"] = (("L",), th.dgd_risk_asymptotic(sigma2, d / L.astype(float)))
    z = (mc - theory) / np.maximum(se, 1e-300)
    out["z_vs_formula"] = (("estimator", "L"), np.where(np.isfinite(theory), z, 0.0))
    dd, ddse = C.pooled(ds["md_diff"].values, ds["md_diff_m2"].values, n_per_rep)
    out["multihead_minus_dgd"] = (("L",), dd, {"long_name": "paired MC difference multihead_tf - dgd"})
    out["multihead_minus_dgd_se"] = (("L",), ddse)
    rd, rdse = C.pooled(ds["ridge_diff"].values, ds["ridge_diff_m2"].values, n_per_rep)
    out["ridge_minus_bayes"] = (("L",), rd, {"long_name": "paired MC difference ridge - Bayes risk given the design"})
    out["ridge_minus_bayes_se"] = (("L",), rdse)
    out["z_family"] = ((), z_family(len(est) * len(L))[0], {"long_name": "z of the exact_risk claims (Bonferroni)"})
    return out, _claims(est, L, mc, se, theory, dd, ddse, rd, rdse)


def _claims(est, L, mc, se, theory, dd, ddse, rd, rdse):
    claims = []
    z, zs = z_family(len(est) * len(L))
    im, idg, ir, i1 = est.index("multihead_tf"), est.index("dgd"), est.index("ridge"), est.index("singlehead_tf")
    for i, e in enumerate(est):
        members = []
        for j, l in enumerate(L):
            wl = f"L={int(l)}"
            if e == "multihead_tf":  # paired with dgd, whose risk is exact: a much smaller SE
                pred = theory[im, j] - theory[idg, j]
                members.append(EXACT.equal(dd[j], ddse[j], pred, z=z, z_source=zs, where=wl,
                                           prediction_text=f"{theory[im, j]:.4g} (exact pair risk; paired with dgd: "
                                                           f"difference {pred:+.3g})"))
            elif e == "ridge":
                members.append(EXACT.equal(rd[j], rdse[j], 0.0, z=z, z_source=zs, where=wl,
                                           prediction_text=f"0 (ridge minus the Bayes risk given X, paired; mean "
                                                           f"Bayes risk {theory[ir, j]:.4g})"))
            else:
                members.append(EXACT.equal(mc[i, j], se[i, j], theory[i, j], z=z, z_source=zs, where=wl,
                                           prediction_text=f"{theory[i, j]:.4g} (exact)"))
        claims.append(worst_of(members, where=f"estimator={e}", every="L"))
    zb, zbs = z_family((len(est) - 1) * len(L))
    for i, e in enumerate(est):
        if e == "ridge":
            continue
        members = []
        for j, l in enumerate(L):
            gap = theory[i, j] - theory[ir, j]
            members.append(BAYES.exceeds(mc[i, j] - mc[ir, j], math.hypot(se[i, j], se[ir, j]), 0.0, z=zb, z_source=zbs,
                                         where=f"L={int(l)}", prediction_text=f"> 0 (exact: {gap:+.3g})"))
        claims.append(worst_of(members, where=f"estimator={e}", every="L"))
    z1, z1s = z_family(len(L))
    members = []
    for j, l in enumerate(L):
        gap = theory[i1, j] - theory[im, j]
        members.append(BEATS.exceeds(mc[i1, j] - mc[im, j], math.hypot(se[i1, j], se[im, j]), 0.0, z=z1, z_source=z1s,
                                     where=f"L={int(l)}", below=gap < 0,
                                     prediction_text=f"{'>' if gap >= 0 else '<'} 0 (exact: {gap:+.3g})"))
    claims.append(worst_of(members, every="L"))
    return claims


def summary(a):
    est = list(a["estimator"].values)
    rows = [f"{'L':>5} " + " ".join(f"{e:>14}" for e in est) + f" {'ridge MP':>9}"]
    for j, L in enumerate(a["L"].values):
        cells = [f"{a['mc_risk'].values[i, j]:.4f}/{a['theory_risk'].values[i, j]:.4f}" for i in range(len(est))]
        rows.append(f"{L:>5} " + " ".join(f"{c:>14}" for c in cells) + f" {a['theory_ridge_mp'].values[j]:>9.4f}")
    rows.append("(each entry: MC risk / exact finite-L risk; ridge: / mean Bayes risk given the sampled designs)")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    sys.exit(main())
