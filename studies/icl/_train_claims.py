"""The claims of ``python -m studies.icl train`` (notes icl_regression §4-6, §13.5-6, §13.11): their
specs and their evaluation on a ``train`` store's analysis.

Every claim is about the end state of a trained model and is tested only when that state has
been reached (notes icl_regression §13, §13.11):

* the run's *stage*: its validation MSE has settled at the risk claims' resolution and, for
  H >= 2, its heads have split into positive and negative groups
  (:func:`studies.icl._common.split_gate`: a settled loss may be the single-head plateau);
* the claim's *own quantity* (the MSE, omega, mu, eta, the zero-sum ratio, a group's pattern
  metric, the signs) has stopped moving at the resolution of the claim's own tolerance over the
  last half of the run (:func:`studies.icl._common.gate_claim`); otherwise the claim says
  "training has not settled (drift X over the last N steps; tolerance Y)".
"""
from __future__ import annotations

import math

import numpy as np

from studies.claims import ClaimSpec, z_family
from studies.icl import _common as C
from studies.icl._heads import Optima, group_patterns, multi_head_series, pair_parameters
from theory import icl_regression as th

S = C.SOURCE
SINGLE_OPT = ClaimSpec(
    "icl_train.single_head_optimum",
    f"{S}: single-head attention (notes icl_regression §6.5, §13.6; Fig. 6 single-head curve)",
    "A trained single head reaches the exact finite-L risk optimum of the softmax kernel "
    "mu sum_i softmax(omega x_iᵀx_q) y_i.")
SINGLE_OMEGA = ClaimSpec(
    "icl_train.single_head_omega", f"{S}: single-head attention (notes icl_regression §4, §13.6)",
    "The trained single head's |omega| is the exact finite-L optimum omega*, to the precision the loss identifies it.")
SINGLE_MU = ClaimSpec(
    "icl_train.single_head_mu", f"{S}: single-head attention (notes icl_regression §4, §13.6)",
    "The trained single head's |mu| is the best value weight for its learned omega.")
MULTI_OPT = ClaimSpec(
    "icl_train.multihead_optimum",
    f"{S}: multi-head attention implements debiased GD (notes icl_regression §5.3, §6.5, §13.5)",
    "A trained multi-head model reaches the exact finite-L optimum of the antisymmetric softmax pair "
    "(debiased GD at its optimal step, up to O(omega^2)).")
MULTI_ETA = ClaimSpec(
    "icl_train.multihead_eta",
    f"{S}: the learned step 2 mu omega -> 1/(1 + d(1+sigma2)/L) (notes icl_regression §5.3, §6.1, §13.5)",
    "The learned step eta = sum_h mu_h omega_h is the best step of the antisymmetric pair at its learned omega.")
MULTI_OMEGA = ClaimSpec(
    "icl_train.multihead_omega", f"{S}: KQ = omega I with small omega (notes icl_regression §6.5, §13.5)",
    "The learned |omega| of the active heads lies where the exact profiled pair risk is within the claim's "
    "resolution of its minimum.")
ZERO_SUM = ClaimSpec(
    "icl_train.zero_sum", f"{S}: zero-sum OV (notes icl_regression §4, §5.4, §13.5)",
    "The heads' value weights sum to zero, |sum_h mu_h| << sum_h |mu_h| (debiasing removes the mean label).")
SIGNS = ClaimSpec(
    "icl_train.signs", f"{S}: positive and negative heads (notes icl_regression §4, §6.1, §13.5)",
    "Every active head has sign(mu_h) = sign(omega_h): each adds mu_h omega_h > 0 to the step eta.")
KQ_DIAG = ClaimSpec(
    "icl_train.kq_diagonal", f"{S}: diagonal KQ (notes icl_regression §4, §13.5)",
    "The KQ x-block of each head group (positive / negative heads, |mu|-weighted) is diagonal: ||diag|| / ||W_x||_F "
    "near 1.")
KQ_HOM = ClaimSpec(
    "icl_train.kq_homogeneous", f"{S}: homogeneous KQ diagonal (notes icl_regression §4, §13.5)",
    "The KQ diagonal of each head group is homogeneous (omega I): its CV^2 is near 0.")
OV_LAST = ClaimSpec(
    "icl_train.ov_last_entry", f"{S}: last-entry-only OV (notes icl_regression §4, §13.5)",
    "Each head group reads only the label: |u[d]| / ||u|| near 1 for the group's summed OV.")
STRUCTURE_TEXT = {ZERO_SUM: "0 (|sum mu| / sum |mu|)", SIGNS: "equal signs",
                  KQ_DIAG: "1 (diag ratio, worse head group)", KQ_HOM: "0 (diag CV^2, worse head group)",
                  OV_LAST: "1 (last-entry ratio, worse head group)"}
BEATS = ClaimSpec(
    "icl_train.multihead_beats_single",
    f"{S}: multi-head beats single-head attention (abstract; notes icl_regression §6.5, §13.6)",
    "The H-head model has a lower MSE than the single head trained on the same prompts.")
SPEC_SECTION = "notes icl_regression §13.5"


def _family_z(Hs, seeds):
    """z of the single-head and of the multi-head claim families (Bonferroni over their runs)."""
    n1 = len(seeds) * (1 in Hs)
    nm = len(seeds) * sum(h >= 2 for h in Hs)
    return z_family(max(n1, 1)), z_family(max(nm, 1))


class Run:
    """What the claims of one (H, seed) run read: its final values, its logged trajectories and
    the standard error of its logged validation MSE's drift."""

    def __init__(self, ds, out, m, active, i, j, d):
        self.H = int(ds["H"].values[i])
        self.where = C.where(H=self.H, seed=int(ds["seed"].values[j]))
        self.steps = ds["step"].values
        self.val = ds["val_mse"].values[i, j, :, 0]
        self.vm, self.vse = float(out["final_val_mse"].values[i, j]), float(out["final_val_se"].values[i, j])
        self.exists, self.active = ds["head_exists"].values[i, j], active[i, j]
        self.omega, self.mu = m["omega"][i, j], m["mu"][i, j]
        self.W, self.U = ds["W"].values[i, j], ds["U"].values[i, j]
        self.omega_t, self.mu_t = out["omega"].values[i, j], out["mu"].values[i, j]
        self.d = d
        self._series = None

    @property
    def series(self) -> dict:
        if self._series is None:
            self._series = multi_head_series(self.W, self.U, self.exists, self.active, self.d)
        return self._series

    def gate(self, claim, spec, series, what, *, tol=None):
        return C.gate_claim(claim, spec, self.steps, series, what=what, tol=tol)


def claims(ds, out, m, active, opt: Optima) -> list:
    """Every claim of a ``train`` store (module docstring)."""
    Hs = [int(h) for h in ds["H"].values]
    seeds = [int(s) for s in ds["seed"].values]
    (z1, z1s), (zm, zms) = _family_z(Hs, seeds)
    runs, stage, res = {}, {}, []
    for i, H in enumerate(Hs):
        for j in range(len(seeds)):
            r = runs[i, j] = Run(ds, out, m, active, i, j, opt.d)
            z = z1 if H == 1 else zm
            stage[i, j] = _stage(r, z * r.vse + C.MODEL_ALLOWANCE, m["last_entry_ratio"][i, j, 0])
            if H == 1:
                res += _single_head_claims(opt, r, stage[i, j], (z1, z1s))
            else:
                res += _multi_head_claims(opt, r, stage[i, j], (zm, zms))
                res += _structure_claims(r, stage[i, j])
    return res + _beats_claims(ds, Hs, seeds, stage, opt)


def _powered(claim, spec, effect: float):
    """The power rule (:mod:`studies.claims`) for a range claim decided here: not tested when its
    half-width is as large as the ``effect`` it must resolve (notes icl_regression §13.12)."""
    from studies.claims import NOT_TESTED

    if claim.outcome == NOT_TESTED or claim.tolerance < abs(effect):
        return claim
    return spec.not_tested(f"too few samples to resolve the effect: the identified half-width {claim.tolerance:.3g} "
                           f"is as large as the effect it tests ({abs(effect):.3g}, the distance between the single "
                           "head's and the pair's optimal omega)", where=claim.where, prediction=claim.prediction,
                           prediction_text=claim.prediction_text, measured=claim.measured)


def _stage(r: Run, tol: float, last_entry_1: float):
    """``(ok, drift, reason)``: has run ``r`` reached the stage its claims are about? Its
    validation MSE settled at the risk claims' resolution ``tol``, its heads read the label
    (:func:`studies.icl._common.label_gate`) and, for H >= 2, they have split into positive and
    negative groups (:func:`studies.icl._common.split_gate`)."""
    ok, drift, why = C.settled(r.steps, r.val, tol)
    if ok:
        last = last_entry_1 if r.H == 1 else group_patterns(r.W[-1], r.U[-1], r.omega, r.mu, r.exists, r.d)[2]
        ok, why = C.label_gate(last, "the head" if r.H == 1 else "the head groups")
    if ok and r.H >= 2:
        ok, why = C.split_gate(r.mu, r.exists)
    return ok, drift, why


def _single_head_claims(opt: Optima, r: Run, gate, zz) -> list:
    """single_head_optimum, single_head_omega, single_head_mu of one H = 1 run."""
    d, L, sigma2 = opt.d, opt.L, opt.sigma2
    (w1, m1, r1), (z, zs), (ok, _, why) = opt.single, zz, gate
    wh = r.where
    ptxt = f"{r1:.4g} (exact single-head optimum at omega* = {w1:.3f}, mu* = {m1:.3f})"
    if not ok:
        return [SINGLE_OPT.not_tested(why, where=wh, prediction=r1, prediction_text=ptxt),
                SINGLE_OMEGA.not_tested(why, where=wh, prediction=w1, prediction_text=f"{w1:.3f} (exact optimum)"),
                SINGLE_MU.not_tested(why, where=wh, prediction=m1,
                                     prediction_text=f"{m1:.3f} (exact optimum, at omega*)")]
    delta = z * r.vse + C.MODEL_ALLOWANCE
    w_meas, mu_meas = abs(float(r.omega[0])), abs(float(r.mu[0]))
    out = [r.gate(SINGLE_OPT.equal(r.vm, r.vse, r1, z=z, z_source=zs, allowance=C.MODEL_ALLOWANCE,
                                   allowance_source=C.MODEL_ALLOWANCE_SOURCE, where=wh, prediction_text=ptxt,
                                   effect=r1 - opt.pair[2]),
                  SINGLE_OPT, r.val, "validation MSE")]
    lo, hi = th.kernel_identifiable_range(d, L, sigma2, delta, heads=1, optimum=opt.single)
    c = SINGLE_OMEGA.decided(
        lo <= w_meas <= hi, test="lo <= |omega| <= hi", tolerance=(hi - lo) / 2,
        tolerance_source=f"[lo, hi] = where the exact profiled single-head risk is within delta = "
                         f"{delta:.3g} ({zs} x SE + 0.01 declared model error, notes icl_regression §13.7) of its "
                         "minimum",
        where=wh, prediction=w1, prediction_text=f"{w1:.3f} (identified range [{lo:.3f}, {hi:.3f}])",
        measured=w_meas, lo=lo, hi=hi,
        reason="" if lo <= w_meas <= hi else f"|omega| = {w_meas:.3f} outside [{lo:.3f}, {hi:.3f}]")
    out.append(r.gate(_powered(c, SINGLE_OMEGA, abs(w1 - opt.pair[0])), SINGLE_OMEGA, np.abs(r.omega_t[:, 0]),
                      "|omega|"))
    _, mstar = th.profiled_kernel_risk(w_meas, d, L, sigma2, heads=1)
    mtol = th.kernel_step_tolerance(w_meas, d, L, sigma2, delta, heads=1)
    c = SINGLE_MU.equal(mu_meas, math.nan, mstar, z=z, z_source=zs, allowance=mtol,
                        allowance_source=f"the mu range where the exact risk at the learned omega is within delta = "
                                         f"{delta:.3g} of its minimum (notes icl_regression §6.5)",
                        where=wh, prediction_text=f"{mstar:.4g} (best mu at the learned omega {w_meas:.3f})",
                        effect=opt.pair[1] - m1)
    out.append(r.gate(c, SINGLE_MU, np.abs(r.mu_t[:, 0]), "|mu|"))
    return out


def _multi_head_claims(opt: Optima, r: Run, gate, zz) -> list:
    """multihead_optimum, multihead_eta, multihead_omega of one H >= 2 run."""
    d, L, sigma2 = opt.d, opt.L, opt.sigma2
    (w2, _, r2), (z, zs), (ok, _, why) = opt.pair, zz, gate
    wh = r.where
    eta, wbar, _ = pair_parameters(r.omega, r.mu, r.exists)
    ptxt = f"{r2:.4g} (exact pair optimum; DGD optimal {opt.dgd_risk:.4g})"
    if not ok:
        return [MULTI_OPT.not_tested(why, where=wh, prediction=r2, prediction_text=ptxt),
                MULTI_ETA.not_tested(why, where=wh, prediction=opt.eta_star,
                                     prediction_text=f"-> {opt.eta_star:.4g} (DGD optimal step)"),
                MULTI_OMEGA.not_tested(why, where=wh, prediction=w2,
                                       prediction_text=f"flat profile, minimum at {w2:.3f}")]
    delta = z * r.vse + C.MODEL_ALLOWANCE
    out = [r.gate(MULTI_OPT.equal(r.vm, r.vse, r2, z=z, z_source=zs, allowance=C.MODEL_ALLOWANCE,
                                  allowance_source=C.MODEL_ALLOWANCE_SOURCE, where=wh, prediction_text=ptxt,
                                  effect=opt.single[2] - r2),
                  MULTI_OPT, r.val, "validation MSE")]
    if not wbar > 0:
        return out + [MULTI_ETA.not_tested("no active head with omega != 0", where=wh, prediction=opt.eta_star),
                      MULTI_OMEGA.not_tested("no active head with omega != 0", where=wh, prediction=w2)]
    _, mstar = th.profiled_kernel_risk(wbar, d, L, sigma2, heads=2)
    etol = 2 * wbar * th.kernel_step_tolerance(wbar, d, L, sigma2, delta, heads=2)
    c = MULTI_ETA.equal(eta, math.nan, 2 * wbar * mstar, z=z, z_source=zs, allowance=etol,
                        allowance_source=f"the eta range where the exact pair risk at the learned omega is within "
                                         f"delta = {delta:.3g} ({zs} x SE + 0.01 model error) of its minimum (notes "
                                         "icl_regression §6.5)",
                        where=wh, prediction_text=f"{2 * wbar * mstar:.4g} (best step at omega {wbar:.3f}; "
                                                  f"-> {opt.eta_star:.4g} as omega -> 0)", effect=opt.eta_star)
    out.append(r.gate(c, MULTI_ETA, r.series["eta"], "eta"))
    lo, hi = th.kernel_identifiable_range(d, L, sigma2, delta, heads=2, optimum=opt.pair)
    c = MULTI_OMEGA.decided(
        lo <= wbar <= hi, test="lo <= |omega| <= hi", tolerance=(hi - lo) / 2,
        tolerance_source=f"[lo, hi] = where the exact profiled pair risk is within delta = {delta:.3g} "
                         f"({zs} x SE + 0.01 declared model error, notes icl_regression §6.5) of its minimum",
        where=wh, prediction=w2, prediction_text=f"in [{lo:.3f}, {hi:.3f}] (flat profile, minimum at {w2:.3f})",
        measured=wbar, lo=lo, hi=hi,
        reason="" if lo <= wbar <= hi else f"omega = {wbar:.3f} outside [{lo:.3f}, {hi:.3f}]")
    out.append(r.gate(_powered(c, MULTI_OMEGA, abs(opt.single[0] - w2)), MULTI_OMEGA, r.series["omega"],
                      "pair's omega"))
    return out


def _structure_claims(r: Run, gate) -> list:
    """The pattern checks of notes icl_regression §13.5 of one H >= 2 run: zero_sum, signs,
    kq_diagonal, kq_homogeneous, ov_last_entry (on the two head groups), each gated on its own
    trajectory."""
    wh = r.where
    if not gate[0]:
        return [c.not_tested(gate[2], where=wh, prediction_text=t) for c, t in STRUCTURE_TEXT.items()]
    mu = np.where(r.exists, r.mu, 0.0)
    zsr = abs(mu.sum()) / max(np.abs(mu).sum(), 1e-300)
    a = r.active
    out = [r.gate(ZERO_SUM.at_most(zsr, math.nan, 0.0, z=0.0, z_source="", allowance=C.ZERO_SUM_FRAC,
                                   allowance_source=C.spec(C.ZERO_SUM_FRAC, "§13.5"), where=wh,
                                   prediction_text=STRUCTURE_TEXT[ZERO_SUM], effect=1.0),
                  ZERO_SUM, r.series["zero_sum"], "zero-sum ratio")]
    agree = bool(np.all(np.sign(r.mu[a]) == np.sign(r.omega[a])))
    c = SIGNS.decided(agree, test="sign(mu_h) = sign(omega_h) for every active head",
                      tolerance_source="exact sign condition (no tolerance; notes icl_regression §4)", where=wh,
                      prediction_text=STRUCTURE_TEXT[SIGNS], measured=float(np.mean(np.sign(r.mu[a]) ==
                                                                                    np.sign(r.omega[a]))),
                      reason="" if agree else "an active head has sign(mu) != sign(omega)")
    out.append(r.gate(c, SIGNS, r.series["signs"], "fraction of active heads with sign(mu) = sign(omega)",
                      tol=C.DISCRETE_TOL))
    ratio, cv2, last = group_patterns(r.W[-1], r.U[-1], r.omega, r.mu, r.exists, r.d)
    out.append(r.gate(KQ_DIAG.at_least(ratio, math.nan, 1.0, z=0.0, z_source="", allowance=1 - C.DIAG_RATIO_MIN,
                                       allowance_source=C.spec(f"diag ratio > {C.DIAG_RATIO_MIN}", "§13.5"),
                                       where=wh, prediction_text=STRUCTURE_TEXT[KQ_DIAG],
                                       effect=1 - 1 / math.sqrt(r.d)),
                      KQ_DIAG, r.series["diag_ratio"], "diag ratio of the worse head group"))
    out.append(r.gate(KQ_HOM.at_most(cv2, math.nan, 0.0, z=0.0, z_source="", allowance=0.01,
                                     allowance_source=C.spec("diag CV^2 < 0.01", "§13.5"),
                                     where=wh, prediction_text=STRUCTURE_TEXT[KQ_HOM], effect=1.0),
                      KQ_HOM, r.series["diag_cv2"], "diag CV^2 of the worse head group"))
    out.append(r.gate(OV_LAST.at_least(last, math.nan, 1.0, z=0.0, z_source="", allowance=1 - C.LAST_ENTRY_MIN,
                                       allowance_source=C.spec(f"last-entry ratio > {C.LAST_ENTRY_MIN}", "§13.5"),
                                       where=wh, prediction_text=STRUCTURE_TEXT[OV_LAST],
                                       effect=1 - 1 / math.sqrt(r.d + 1)),
                      OV_LAST, r.series["last_entry"], "last-entry ratio of the worse head group"))
    return out


def _beats_claims(ds, Hs, seeds, stage, opt: Optima) -> list:
    """multihead_beats_single per H >= 2 and seed (paired on the seed's validation prompts);
    tested when both runs reached their stage (their validation MSEs settled at the risk
    claims' resolution)."""
    if 1 not in Hs:
        return []
    r1, r2 = opt.single[2], opt.pair[2]
    blocks = ds["final_val_blocks"].values[..., 0]
    i1 = Hs.index(1)
    multi = [i for i, H in enumerate(Hs) if H >= 2]
    zb, zbs = z_family(max(1, len(multi) * len(seeds)))
    out = []
    for i in multi:
        for j, s in enumerate(seeds):
            wh = C.where(H=Hs[i], seed=s)
            ptxt = f"> 0 (exact optima: {r1:.4g} - {r2:.4g} = {r1 - r2:.3g})"
            if not (stage[i1, j][0] and stage[i, j][0]):
                out.append(BEATS.not_tested(stage[i1, j][2] or stage[i, j][2], where=wh, prediction=r1 - r2,
                                            prediction_text=ptxt))
                continue
            diff = blocks[i1, j] - blocks[i, j]  # paired: same validation prompts
            out.append(BEATS.exceeds(float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size)), 0.0,
                                     z=zb, z_source=zbs, where=wh, prediction_text=ptxt))
    return out
