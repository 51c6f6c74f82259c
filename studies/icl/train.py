"""``python -m studies.icl train``: one-layer multi-head softmax attention trained by Adam on
fresh prompts (spec icl_regression §2-§4, §12 S1; checks §13.5-6), runs H x seed batched.

Claims (each per run ``where="H=4,seed=0"``; every prediction is :mod:`theory.icl_regression`'s
for the run's d, L, sigma2; every claim is "not tested" when training stopped before its stage:
the run's validation MSE has not settled (:func:`studies.icl._common.settled`) or, for H >= 2,
the heads have not yet split into positive and negative groups -- the single-head plateau the
multi-head dynamics passes through (:func:`studies.icl._common.head_split`)):

* H = 1 -- ``single_head_optimum``: the final MSE is the exact finite-L optimum of one softmax
  head (:func:`theory.icl_regression.kernel_optimum`, 0.404 at d = 5, L = 40);
  ``single_head_omega``: |omega| lies in the range the loss identifies around the exact optimum
  omega* (0.518 there; the paper's trained 0.52); ``single_head_mu``: |mu| is the best value
  weight for the learned omega;
* H >= 2 -- ``multihead_optimum``: the final MSE is the exact optimum of the antisymmetric
  softmax pair (= debiased GD at its optimal step up to O(omega^2)); ``multihead_eta``: the
  learned step eta = sum_h mu_h omega_h is the pair's best step at its learned omega (-> the
  DGD optimal step 1/(1 + d(1+sigma2)/L) as omega -> 0); ``multihead_omega``: the learned
  omega lies where the exact profiled pair risk is within the claim's resolution of its
  minimum (the profile is flat in omega); ``zero_sum``, ``signs`` (the DGD structure of the OV),
  ``kq_diagonal``, ``kq_homogeneous``, ``ov_last_entry`` (spec §13.5 pattern checks, their
  bounds labelled "spec number", on the two head groups the pair reduction merges: the
  |mu|-weighted mean KQ and the summed OV of the positive and of the negative heads -- the
  individual heads of a group are not identifiable, spec §4);
* ``multihead_beats_single`` per H >= 2 and seed: the H = 1 MSE exceeds the H-head MSE, as
  the exact optima predict (paired: runs of one seed share their validation prompts).

Risk tolerances: z standard errors of the final validation MSE (20 blocks; z from the claim
family's Bonferroni count) plus the declared model error 0.01 of spec §13.7; the omega / mu /
eta tolerances are the ranges where the exact risk stays within that same resolution of its
minimum (a loss measured to delta identifies a parameter no better).

Dataset: raw ``W, U (H, seed, step, head, row, col|out)``, ``train_loss``, ``val_mse``,
``final_val_blocks``, ``n_heads``, ``head_exists``; analysis ``final_*`` per-head metrics,
``active``, ``kept``, ``omega(t)``, ``mu(t)``, ``sum_mu``, ``eta``, ``final_val_mse`` / ``_se``,
``theory_*`` and the claims.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

from sim import icl_regression as sim
from studies.claims import ClaimSpec, z_family
from studies.icl import _common as C
from studies.icl._training import add_training_args, training_part
from theory import icl_regression as th

DEFAULTS = {"steps": 60000, "seeds": 2, "H": "1,2,4,8"}
QUICK = {"steps": 1000, "seeds": 1, "H": "1,2"}

S = C.SOURCE
SINGLE_OPT = ClaimSpec(
    "icl_train.single_head_optimum", f"{S}: single-head attention (spec §6, §13.6; Fig. 6 single-head curve)",
    "A trained single head reaches the exact finite-L risk optimum of the softmax kernel "
    "mu sum_i softmax(omega x_iᵀx_q) y_i.")
SINGLE_OMEGA = ClaimSpec(
    "icl_train.single_head_omega", f"{S}: single-head attention (spec §4, §13.6)",
    "The trained single head's |omega| is the exact finite-L optimum omega*, to the precision the loss identifies it.")
SINGLE_MU = ClaimSpec(
    "icl_train.single_head_mu", f"{S}: single-head attention (spec §4, §13.6)",
    "The trained single head's |mu| is the best value weight for its learned omega.")
MULTI_OPT = ClaimSpec(
    "icl_train.multihead_optimum", f"{S}: multi-head attention implements debiased GD (spec §5-6, §13.5)",
    "A trained multi-head model reaches the exact finite-L optimum of the antisymmetric softmax pair "
    "(debiased GD at its optimal step, up to O(omega^2)).")
MULTI_ETA = ClaimSpec(
    "icl_train.multihead_eta", f"{S}: the learned step 2 mu omega -> 1/(1 + d(1+sigma2)/L) (spec §5, §13.5)",
    "The learned step eta = sum_h mu_h omega_h is the best step of the antisymmetric pair at its learned omega.")
MULTI_OMEGA = ClaimSpec(
    "icl_train.multihead_omega", f"{S}: KQ = omega I with small omega (spec §4-5, §13.5)",
    "The learned |omega| of the active heads lies where the exact profiled pair risk is within the claim's "
    "resolution of its minimum.")
ZERO_SUM = ClaimSpec(
    "icl_train.zero_sum", f"{S}: zero-sum OV (spec §4, §13.5)",
    "The heads' value weights sum to zero, |sum_h mu_h| << sum_h |mu_h| (debiasing removes the mean label).")
SIGNS = ClaimSpec(
    "icl_train.signs", f"{S}: positive and negative heads (spec §4, §13.5)",
    "Every active head has sign(mu_h) = sign(omega_h): each adds mu_h omega_h > 0 to the step eta.")
KQ_DIAG = ClaimSpec(
    "icl_train.kq_diagonal", f"{S}: diagonal KQ (spec §4, §13.5)",
    "The KQ x-block of each head group (positive / negative heads, |mu|-weighted) is diagonal: ||diag|| / ||W_x||_F "
    "near 1.")
KQ_HOM = ClaimSpec(
    "icl_train.kq_homogeneous", f"{S}: homogeneous KQ diagonal (spec §4, §13.5)",
    "The KQ diagonal of each head group is homogeneous (omega I): its CV^2 is near 0.")
OV_LAST = ClaimSpec(
    "icl_train.ov_last_entry", f"{S}: last-entry-only OV (spec §4, §13.5)",
    "Each head group reads only the label: |u[d]| / ||u|| near 1 for the group's summed OV.")
STRUCTURE_TEXT = {ZERO_SUM: "0 (|sum mu| / sum |mu|)", SIGNS: "equal signs",
                  KQ_DIAG: "1 (diag ratio, worse head group)", KQ_HOM: "0 (diag CV^2, worse head group)",
                  OV_LAST: "1 (last-entry ratio, worse head group)"}
BEATS = ClaimSpec(
    "icl_train.multihead_beats_single", f"{S}: multi-head beats single-head attention (abstract; spec §13.6)",
    "The H-head model has a lower MSE than the single head trained on the same prompts.")


def add_parser(sub, add_common):
    sp = sub.add_parser("train", help="train H x seed one-layer attention models (Adam, fresh batches), batched",
                        description="Train H x seed one-layer multi-head softmax attention models by Adam on fresh "
                                    "prompts (batched), and test the emergent patterns against the exact theory.",
                        epilog="example: python -m studies.icl train --H 1,2,4,8 --seeds 2 --steps 60000 --plot")
    C.data_args(sp)
    add_training_args(sp, DEFAULTS, QUICK)
    add_common(sp, "icl_train")
    return sp


def validate(args):
    from studies.cli import UsageError

    if args.d > 64:
        raise UsageError("--d: at most 64")


def part(args):
    task = sim.isotropic_task(args.d, args.sigma2)
    grid = {"H": np.asarray(args.H, dtype=np.int64), "seed": np.arange(args.seeds)}

    def make_run(H, seed):
        ds_, is_ = C.seed_seqs(args.seed, seed, H)
        return sim.RunSpec(int(H), task, ds_, is_)

    return training_part(args, study="icl_train", grid=grid, make_run=make_run, task_attrs=task.describe(),
                         analyze=functools.partial(analyze_train, d=args.d, L=args.L, sigma2=args.sigma2),
                         summary=summary_train, figure_kind="train")


# ============================================================================== analysis
def head_stats(ds, d, out=0):
    """Per-head final metrics, active / kept masks and the omega, mu trajectories."""
    Wf = ds["W"].isel(step=-1).values
    Uf = ds["U"].isel(step=-1).values
    m = sim.pattern_metrics(Wf, Uf, d, out=out)
    exists = ds["head_exists"].values
    mu = np.where(exists, m["mu"], 0.0)
    maxmu = np.abs(mu).max(axis=-1, keepdims=True)
    active = exists & (np.abs(mu) > C.ACTIVE_MU_FRAC * maxmu)
    kept = exists & (m["diag_ratio"] > C.KEPT_DIAG_RATIO)
    traj = sim.pattern_metrics(ds["W"].values, ds["U"].values, d, out=out)
    return m, active, kept, traj


def _masked_mean(x, mask):
    n = mask.sum(axis=-1)
    return np.where(n > 0, np.where(mask, x, 0.0).sum(axis=-1) / np.maximum(n, 1), 0.0)


def pair_parameters(omega, mu, exists):
    """The antisymmetric pair a set of heads amounts to: eta = sum_h mu_h omega_h, the
    |mu|-weighted mean |omega| (a head's weight in the output is |mu_h|, so near-zero dummy
    heads do not count), and mu = eta / (2 omega)."""
    omega = np.where(exists, omega, 0.0)
    mu = np.where(exists, mu, 0.0)
    eta = float(np.sum(mu * omega))
    wts = np.abs(mu)
    wbar = float(np.sum(wts * np.abs(omega)) / max(np.sum(wts), 1e-300))
    return eta, wbar, eta / (2.0 * wbar) if wbar > 0 else math.nan


def group_patterns(W, U, omega, mu, exists, d, out=0):
    """Pattern metrics of the two head groups (sign of omega) the pair reduction merges: each
    group's |mu|-weighted mean KQ and summed OV (what the output depends on; the individual
    heads of a group are not identifiable, spec §4). Returns the worst group's diag ratio,
    diag CV^2 and last-entry ratio."""
    ratios, cv2s, lasts = [], [], []
    for sgn in (1.0, -1.0):
        g = exists & (np.sign(omega) == sgn) & (np.abs(mu) > 0)
        if not g.any():
            continue
        w = np.abs(mu[g])
        Wg = np.einsum("h,hij->ij", w / w.sum(), W[g])[None]
        Ug = U[g].sum(axis=0)[None]
        m = sim.pattern_metrics(Wg, Ug, d, out=out)
        ratios.append(float(m["diag_ratio"][0]))
        cv2s.append(float(m["diag_cv2"][0]))
        lasts.append(float(m["last_entry_ratio"][0]))
    if not ratios:
        return math.nan, math.nan, math.nan
    return min(ratios), max(cv2s), min(lasts)


def analyze_train(ds: xr.Dataset, d: int, L: int, sigma2: float):
    """Pattern metrics, theory and claims of a ``train`` dataset (a pure function of it and of
    the run's d, L, sigma2)."""
    m, active, kept, traj = head_stats(ds, d)
    gd = ["H", "seed"]
    hd = gd + ["head"]
    out = xr.Dataset(coords={k: ds[k] for k in ("H", "seed", "head", "step")})
    exists = ds["head_exists"].values
    for k in sim.PATTERN_KEYS:
        out[f"final_{k}"] = (hd, np.where(exists, m[k], 0.0), {"long_name": f"{k} of each head at the last step"})
    out["active"] = (hd, active, {"description": f"head exists and |mu_h| > {C.ACTIVE_MU_FRAC} max_h |mu_h|"})
    out["kept"] = (hd, kept, {"description": f"head exists and diag_ratio > {C.KEPT_DIAG_RATIO} "
                                             "(the authors' dummy-head filter for the metric averages)"})
    omega_t = np.where(exists[:, :, None, :], traj["omega"], 0.0)
    mu_t = np.where(exists[:, :, None, :], traj["mu"], 0.0)
    out["omega"] = (gd + ["step", "head"], omega_t, {"long_name": "omega_h(t) = mean diag of the x-block of W_h"})
    out["mu"] = (gd + ["step", "head"], mu_t, {"long_name": "mu_h(t) = u_h[d] (y-slot of the OV)"})
    sums = sim.head_sums(omega_t, mu_t)
    out["sum_mu"] = (gd + ["step"], sums["sum_mu"], {"long_name": "sum_h mu_h(t)"})
    out["sum_abs_mu"] = (gd + ["step"], sums["sum_abs_mu"])
    out["zero_sum_ratio"] = (gd + ["step"], sums["zero_sum_ratio"], {"long_name": "|sum_h mu_h| / sum_h |mu_h|"})
    out["eta"] = (gd + ["step"], sums["eta"], {"long_name": "eta(t) = sum_h mu_h omega_h"})
    for k in ("diag_ratio", "diag_cv2", "last_entry_ratio"):
        out[f"mean_{k}"] = (gd, _masked_mean(m[k], kept), {"long_name": f"{k} averaged over kept heads"})
    out["n_active"] = (gd, active.sum(-1).astype(np.int64))
    grp = np.full((3,) + exists.shape[:2], np.nan)
    for i, j in np.ndindex(*exists.shape[:2]):
        grp[:, i, j] = group_patterns(ds["W"].values[i, j, -1], ds["U"].values[i, j, -1], m["omega"][i, j],
                                      m["mu"][i, j], exists[i, j], d)
    for k, name in enumerate(("diag_ratio", "diag_cv2", "last_entry_ratio")):
        out[f"group_{name}"] = (gd, grp[k], {"long_name": f"{name} of the worse head group (|mu|-weighted KQ, summed "
                                                          "OV of the positive / negative heads): what the claims test"})
    vm, vse = C.block_mean_se(ds["final_val_blocks"].values[..., 0])
    out["final_val_mse"] = (gd, vm, {"long_name": "final validation MSE (fresh prompts)"})
    out["final_val_se"] = (gd, vse)

    # ---- theory for this d, L, sigma2
    Hs = [int(h) for h in ds["H"].values]
    seeds = [int(s) for s in ds["seed"].values]
    w1, m1, r1 = th.kernel_optimum(d, L, sigma2, heads=1)
    w2, m2, r2 = th.kernel_optimum(d, L, sigma2, heads=2)
    eta_star = float(th.dgd_optimal_step(d, L, sigma2))
    out["theory_dgd_optimal_risk"] = ((), float(th.dgd_optimal_risk(d, L, sigma2)))
    out["theory_dgd_optimal_step"] = ((), eta_star, {"long_name": "1/(1 + d(1+sigma2)/L): the DGD optimal step, "
                                                                  "the reduced ODE's limit of 2 mu omega"})
    out["theory_gd_optimal_risk"] = ((), float(th.gd_optimal_risk(d, L, sigma2)))
    out["theory_multihead_loss_limit"] = ((), th.multihead_loss_limit(d, L, sigma2))
    out["theory_single_head_omega"] = ((), w1, {"long_name": "exact finite-L single-head optimum omega*"})
    out["theory_single_head_mu"] = ((), m1)
    out["theory_single_head_risk"] = ((), r1, {"long_name": "exact finite-L single-head optimum risk"})
    out["theory_single_head_omega_reduced"] = ((), th.single_head_optimum(d, L, sigma2)[0],
                                               {"long_name": "the large-L reduced model's 1/sqrt(d)"})
    out["theory_pair_risk"] = ((), r2, {"long_name": "exact finite-L optimum of the antisymmetric softmax pair"})
    out["theory_pair_omega"] = ((), w2)
    kr = np.full((len(Hs), len(seeds)), np.nan)
    eta_fin = out["eta"].values[..., -1]
    for i, H in enumerate(Hs):
        for j in range(len(seeds)):
            if H == 1:
                kr[i, j] = th.kernel_risk(m["omega"][i, j, 0], m["mu"][i, j, 0], d, L, sigma2, heads=1)
            else:
                eta, wbar, mbar = pair_parameters(m["omega"][i, j], m["mu"][i, j], exists[i, j])
                if wbar > 0:
                    kr[i, j] = th.kernel_risk(wbar, mbar, d, L, sigma2, heads=2)
    out["theory_kernel_risk_learned"] = (gd, kr, {
        "long_name": "exact risk of the softmax kernel at the learned (omega, mu) (H >= 2: the antisymmetric pair)"})
    out["theory_dgd_risk_learned_eta"] = (gd, th.dgd_risk(eta_fin, d, L, sigma2), {
        "long_name": "exact risk of debiased GD with the learned eta = sum_h mu_h omega_h"})
    claims = _claims(ds, out, m, active, Hs, seeds, d, L, sigma2, (w1, m1, r1), (w2, m2, r2), eta_star)
    return out, claims


def _claims(ds, out, m, active, Hs, seeds, d, L, sigma2, opt1, opt2, eta_star):
    steps = ds["step"].values
    val_t = ds["val_mse"].values[..., 0]  # (H, seed, step)
    blocks = ds["final_val_blocks"].values[..., 0]
    vm, vse = out["final_val_mse"].values, out["final_val_se"].values
    w1, m1, r1 = opt1
    w2, m2, r2 = opt2
    n1 = seeds.__len__() * (1 in Hs)
    nm = len(seeds) * sum(h >= 2 for h in Hs)
    z1, z1s = z_family(max(n1, 1))
    zm, zms = z_family(max(nm, 1))
    claims = []
    gate = {}
    for i, H in enumerate(Hs):
        for j, s in enumerate(seeds):
            z = z1 if H == 1 else zm
            tol = z * vse[i, j] + C.MODEL_ALLOWANCE
            gate[i, j] = C.settled(steps, val_t[i, j], tol)
            if H >= 2 and gate[i, j][0]:  # a settled loss may be the single-head plateau on the way
                ok, why = C.split_gate(m["mu"][i, j], ds["head_exists"].values[i, j])
                gate[i, j] = (ok, gate[i, j][1], why)
    for i, H in enumerate(Hs):
        for j, s in enumerate(seeds):
            wh = C.where(H=H, seed=s)
            ok, _, why = gate[i, j]
            a = active[i, j]
            if H == 1:
                z, zs = z1, z1s
                delta = z * vse[i, j] + C.MODEL_ALLOWANCE
                w_meas, mu_meas = abs(float(m["omega"][i, j, 0])), abs(float(m["mu"][i, j, 0]))
                ptxt = f"{r1:.4g} (exact single-head optimum at omega* = {w1:.3f}, mu* = {m1:.3f})"
                if not ok:
                    claims += [SINGLE_OPT.not_tested(why, where=wh, prediction=r1, prediction_text=ptxt),
                               SINGLE_OMEGA.not_tested(why, where=wh, prediction=w1,
                                                       prediction_text=f"{w1:.3f} (exact optimum)"),
                               SINGLE_MU.not_tested(why, where=wh, prediction=m1,
                                                    prediction_text=f"{m1:.3f} (exact optimum, at omega*)")]
                    continue
                claims.append(SINGLE_OPT.equal(vm[i, j], vse[i, j], r1, z=z, z_source=zs,
                                               allowance=C.MODEL_ALLOWANCE, allowance_source=C.MODEL_ALLOWANCE_SOURCE,
                                               where=wh, prediction_text=ptxt))
                lo, hi = th.kernel_identifiable_range(d, L, sigma2, delta, heads=1, optimum=opt1)
                claims.append(SINGLE_OMEGA.decided(
                    lo <= w_meas <= hi, test="lo <= |omega| <= hi", tolerance=(hi - lo) / 2,
                    tolerance_source=f"[lo, hi] = where the exact profiled single-head risk is within delta = "
                                     f"{delta:.3g} ({zs} x SE + 0.01 declared model error, spec §13.7) of its minimum",
                    where=wh, prediction=w1, prediction_text=f"{w1:.3f} (identified range [{lo:.3f}, {hi:.3f}])",
                    measured=w_meas, lo=lo, hi=hi,
                    reason="" if lo <= w_meas <= hi else f"|omega| = {w_meas:.3f} outside [{lo:.3f}, {hi:.3f}]"))
                _, mstar = th.profiled_kernel_risk(w_meas, d, L, sigma2, heads=1)
                mtol = th.kernel_step_tolerance(w_meas, d, L, sigma2, delta, heads=1)
                claims.append(SINGLE_MU.equal(mu_meas, math.nan, mstar, z=z, z_source=zs, allowance=mtol,
                                              allowance_source=f"the mu range where the exact risk at the learned "
                                                               f"omega is within delta = {delta:.3g} of its minimum",
                                              where=wh, prediction_text=f"{mstar:.4g} (best mu at the learned "
                                                                         f"omega {w_meas:.3f})"))
                continue
            # ---- H >= 2
            z, zs = zm, zms
            delta = z * vse[i, j] + C.MODEL_ALLOWANCE
            eta, wbar, _ = pair_parameters(m["omega"][i, j], m["mu"][i, j], ds["head_exists"].values[i, j])
            ptxt = f"{r2:.4g} (exact pair optimum; DGD optimal {float(out['theory_dgd_optimal_risk']):.4g})"
            if not ok:
                claims += [MULTI_OPT.not_tested(why, where=wh, prediction=r2, prediction_text=ptxt),
                           MULTI_ETA.not_tested(why, where=wh, prediction=eta_star,
                                                prediction_text=f"-> {eta_star:.4g} (DGD optimal step)"),
                           MULTI_OMEGA.not_tested(why, where=wh, prediction=w2,
                                                  prediction_text=f"flat profile, minimum at {w2:.3f}")]
                claims += [c.not_tested(why, where=wh, prediction_text=t) for c, t in STRUCTURE_TEXT.items()]
                continue
            claims.append(MULTI_OPT.equal(vm[i, j], vse[i, j], r2, z=z, z_source=zs, allowance=C.MODEL_ALLOWANCE,
                                          allowance_source=C.MODEL_ALLOWANCE_SOURCE, where=wh, prediction_text=ptxt))
            if wbar > 0:
                _, mstar = th.profiled_kernel_risk(wbar, d, L, sigma2, heads=2)
                etol = 2 * wbar * th.kernel_step_tolerance(wbar, d, L, sigma2, delta, heads=2)
                claims.append(MULTI_ETA.equal(eta, math.nan, 2 * wbar * mstar, z=z, z_source=zs, allowance=etol,
                                              allowance_source=f"the eta range where the exact pair risk at the "
                                                               f"learned omega is within delta = {delta:.3g} "
                                                               f"({zs} x SE + 0.01 model error) of its minimum",
                                              where=wh, prediction_text=f"{2 * wbar * mstar:.4g} (best step at omega "
                                                                         f"{wbar:.3f}; -> {eta_star:.4g} as omega -> 0)"))
                lo, hi = th.kernel_identifiable_range(d, L, sigma2, delta, heads=2, optimum=opt2)
                claims.append(MULTI_OMEGA.decided(
                    lo <= wbar <= hi, test="lo <= |omega| <= hi", tolerance=(hi - lo) / 2,
                    tolerance_source=f"[lo, hi] = where the exact profiled pair risk is within delta = {delta:.3g} "
                                     f"({zs} x SE + 0.01 declared model error) of its minimum",
                    where=wh, prediction=w2, prediction_text=f"in [{lo:.3f}, {hi:.3f}] (flat profile, minimum at "
                                                             f"{w2:.3f})",
                    measured=wbar, lo=lo, hi=hi,
                    reason="" if lo <= wbar <= hi else f"omega = {wbar:.3f} outside [{lo:.3f}, {hi:.3f}]"))
            else:
                claims += [MULTI_ETA.not_tested("no active head with omega != 0", where=wh, prediction=eta_star),
                           MULTI_OMEGA.not_tested("no active head with omega != 0", where=wh, prediction=w2)]
            mu = np.where(ds["head_exists"].values[i, j], m["mu"][i, j], 0.0)
            zsr = abs(mu.sum()) / max(np.abs(mu).sum(), 1e-300)
            claims.append(ZERO_SUM.at_most(zsr, math.nan, 0.0, z=0.0, z_source="", allowance=C.ZERO_SUM_FRAC,
                                           allowance_source=C.spec(C.ZERO_SUM_FRAC, "§13.5"), where=wh,
                                           prediction_text="0 (|sum mu| / sum |mu|)"))
            agree = bool(np.all(np.sign(m["mu"][i, j][a]) == np.sign(m["omega"][i, j][a])))
            claims.append(SIGNS.decided(agree, test="sign(mu_h) = sign(omega_h) for every active head",
                                        tolerance_source="exact sign condition (no tolerance)", where=wh,
                                        prediction_text=STRUCTURE_TEXT[SIGNS], measured=float(np.mean(
                                            np.sign(m["mu"][i, j][a]) == np.sign(m["omega"][i, j][a]))),
                                        reason="" if agree else "an active head has sign(mu) != sign(omega)"))
            ratio, cv2, last = group_patterns(ds["W"].values[i, j, -1], ds["U"].values[i, j, -1], m["omega"][i, j],
                                              m["mu"][i, j], ds["head_exists"].values[i, j], d)
            claims.append(KQ_DIAG.at_least(ratio, math.nan, 1.0, z=0.0, z_source="", allowance=1 - C.DIAG_RATIO_MIN,
                                           allowance_source=C.spec(f"diag ratio > {C.DIAG_RATIO_MIN}", "§13.5"),
                                           where=wh, prediction_text=STRUCTURE_TEXT[KQ_DIAG]))
            claims.append(KQ_HOM.at_most(cv2, math.nan, 0.0, z=0.0, z_source="", allowance=0.01,
                                         allowance_source=C.spec("diag CV^2 < 0.01", "§13.5"),
                                         where=wh, prediction_text=STRUCTURE_TEXT[KQ_HOM]))
            claims.append(OV_LAST.at_least(last, math.nan, 1.0, z=0.0, z_source="", allowance=1 - C.LAST_ENTRY_MIN,
                                           allowance_source=C.spec(f"last-entry ratio > {C.LAST_ENTRY_MIN}", "§13.5"),
                                           where=wh, prediction_text=STRUCTURE_TEXT[OV_LAST]))
    if 1 in Hs:
        i1 = Hs.index(1)
        multi = [i for i, H in enumerate(Hs) if H >= 2]
        zb, zbs = z_family(max(1, len(multi) * len(seeds)))
        for i in multi:
            for j, s in enumerate(seeds):
                wh = C.where(H=Hs[i], seed=s)
                ptxt = f"> 0 (exact optima: {r1:.4g} - {r2:.4g} = {r1 - r2:.3g})"
                if not (gate[i1, j][0] and gate[i, j][0]):
                    claims.append(BEATS.not_tested(gate[i1, j][2] or gate[i, j][2], where=wh, prediction=r1 - r2,
                                                   prediction_text=ptxt))
                    continue
                diff = blocks[i1, j] - blocks[i, j]  # paired: same validation prompts
                claims.append(BEATS.exceeds(float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size)), 0.0,
                                            z=zb, z_source=zbs, where=wh, prediction_text=ptxt))
    return claims


def summary_train(a: xr.Dataset) -> str:
    rows = [f"{'H':>3} {'seed':>4} {'val MSE ± se':>16} {'kernel':>7} {'eta':>6} {'Σμ/Σ|μ|':>8} {'active':>6} "
            f"{'diag ratio':>10} {'diag CV²':>9} {'last-entry':>10}  omega_h / mu_h (active heads)"]
    for i, H in enumerate(a["H"].values):
        for j, s in enumerate(a["seed"].values):
            act = a["active"].values[i, j]
            om = a["final_omega"].values[i, j][act]
            mu = a["final_mu"].values[i, j][act]
            zs = float(a["sum_mu"].values[i, j, -1] / max(a["sum_abs_mu"].values[i, j, -1], 1e-300))
            rows.append(f"{H:>3} {s:>4} {a['final_val_mse'].values[i, j]:>9.4f} ± {a['final_val_se'].values[i, j]:.4f} "
                        f"{a['theory_kernel_risk_learned'].values[i, j]:>7.4f} "
                        f"{a['eta'].values[i, j, -1]:>6.3f} {zs:>8.3f} {int(act.sum()):>6} "
                        f"{a['mean_diag_ratio'].values[i, j]:>10.4f} {a['mean_diag_cv2'].values[i, j]:>9.2e} "
                        f"{a['mean_last_entry_ratio'].values[i, j]:>10.5f}  "
                        + " ".join(f"{w:+.3f}/{m:+.2f}" for w, m in zip(om, mu)))
    rows.append("(kernel: exact risk of the softmax kernel at the learned omega, mu; H >= 2 as an antisymmetric pair)")
    rows.append(f"theory (exact, finite L): single head omega* {float(a['theory_single_head_omega']):.3f}, "
                f"mu* {float(a['theory_single_head_mu']):.3f}, risk {float(a['theory_single_head_risk']):.4f}; "
                f"pair optimum {float(a['theory_pair_risk']):.4f}; DGD optimal risk "
                f"{float(a['theory_dgd_optimal_risk']):.4f} at step {float(a['theory_dgd_optimal_step']):.3f}")
    return "\n".join(rows)


def token_dim(args) -> int:
    return args.d + 1
