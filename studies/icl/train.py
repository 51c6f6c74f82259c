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

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

from sim import icl_regression as sim
from studies.claims import ClaimSpec, z_family
from studies.cli import Part, UsageError, run_params
from studies.icl import _common as C
from studies.icl._training import TRAIN_DEFAULTS, TRAIN_QUICK, add_training_args, check_training, training_part
from theory import icl_regression as th

STUDY = "icl_train"
DESCRIPTION = ("Train H x seed one-layer multi-head softmax attention models by Adam on fresh prompts (batched), "
               "and test the emergent patterns against the exact theory.")
EXAMPLES = """\
examples:
  python -m studies.icl train                       # H = 1,2,4,8 x 2 seeds, 60k Adam steps (minutes)
  python -m studies.icl train --steps 500000        # the paper's length (continues the same run)
  python -m studies.icl train --quick --plot        # seconds, with its figures
  python -m studies.icl train --device gpu --H 1,2,4,8 --seeds 3 --steps 500000   # on a CUDA GPU
"""
DEFAULTS = {**TRAIN_DEFAULTS, "d": 5, "L": 40, "sigma2": 0.1, "steps": 60000, "seeds": 2, "H": "1,2,4,8"}
QUICK = {**TRAIN_QUICK, "steps": 1000, "seeds": 1, "H": "1,2"}
PRESETS: dict = {}

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


def add_arguments(p) -> None:
    C.data_args(p, DEFAULTS)
    add_training_args(p, DEFAULTS, QUICK)


def token_dim(args) -> int:
    return args.d + 1


def validate(args) -> None:
    if args.d > 64:
        raise UsageError("--d: at most 64")
    C.check_variance(1.0 + args.sigma2, "--sigma2")
    check_training(args, token_dim(args))


def parts(args) -> list[Part]:
    task = sim.isotropic_task(args.d, args.sigma2)
    grid = {"H": np.asarray(args.H, dtype=np.int64), "seed": np.arange(args.seeds)}

    def make_run(H, seed):
        ds_, is_ = C.seed_seqs(args.seed, seed, H)
        return sim.RunSpec(int(H), task, ds_, is_)

    return [training_part(args, study=STUDY, grid=grid, make_run=make_run, task_attrs=task.describe(),
                          figure_kind="train", token_dim=token_dim(args),
                          extra_params={"d": args.d, "sigma2": args.sigma2})]


def main(argv=None) -> int:
    return C.sub_main(STUDY, argv)


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


@dataclass(frozen=True)
class Optima:
    """The exact finite-L theory of a run's (d, L, sigma2): the single-head and pair optima
    (omega, mu, risk) and the debiased-GD optimal step and risk."""

    d: int
    L: int
    sigma2: float
    single: tuple
    pair: tuple
    eta_star: float
    dgd_risk: float

    @classmethod
    def of(cls, d: int, L: int, sigma2: float) -> "Optima":
        return cls(d, L, sigma2, th.kernel_optimum(d, L, sigma2, heads=1), th.kernel_optimum(d, L, sigma2, heads=2),
                   float(th.dgd_optimal_step(d, L, sigma2)), float(th.dgd_optimal_risk(d, L, sigma2)))


def analyze(ds: xr.Dataset):
    """Pattern metrics, theory and claims of a ``train`` store (a pure function of it: d, L and
    sigma2 are the run's stored parameters)."""
    p = run_params(ds)
    d, L, sigma2 = int(p["d"]), int(p["L"]), float(p["sigma2"])  # the run's, not its task's self-description
    m, active, kept, traj = head_stats(ds, d)
    out = _head_variables(ds, d, m, active, kept, traj)
    opt = Optima.of(d, L, sigma2)
    _theory_variables(out, ds, m, opt)
    return out, _claims(ds, out, m, active, opt)


def _head_variables(ds, d, m, active, kept, traj) -> xr.Dataset:
    """Per-head final metrics, the omega / mu trajectories and their sums, the head-group
    patterns and the final validation MSE."""
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
    return out


def _theory_variables(out, ds, m, opt: Optima) -> None:
    """The ``theory_*`` variables for the run's d, L, sigma2 and the exact risks of the learned
    kernels."""
    d, L, sigma2 = opt.d, opt.L, opt.sigma2
    w1, m1, r1 = opt.single
    w2, _, r2 = opt.pair
    exists = ds["head_exists"].values
    out["theory_dgd_optimal_risk"] = ((), opt.dgd_risk)
    out["theory_dgd_optimal_step"] = ((), opt.eta_star, {"long_name": "1/(1 + d(1+sigma2)/L): the DGD optimal step, "
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
    Hs = [int(h) for h in ds["H"].values]
    kr = np.full((len(Hs), ds.sizes["seed"]), np.nan)
    eta_fin = out["eta"].values[..., -1]
    for i, H in enumerate(Hs):
        for j in range(ds.sizes["seed"]):
            if H == 1:
                kr[i, j] = th.kernel_risk(m["omega"][i, j, 0], m["mu"][i, j, 0], d, L, sigma2, heads=1)
            else:
                eta, wbar, mbar = pair_parameters(m["omega"][i, j], m["mu"][i, j], exists[i, j])
                if wbar > 0:
                    kr[i, j] = th.kernel_risk(wbar, mbar, d, L, sigma2, heads=2)
    out["theory_kernel_risk_learned"] = (["H", "seed"], kr, {
        "long_name": "exact risk of the softmax kernel at the learned (omega, mu) (H >= 2: the antisymmetric pair)"})
    out["theory_dgd_risk_learned_eta"] = (["H", "seed"], th.dgd_risk(eta_fin, d, L, sigma2), {
        "long_name": "exact risk of debiased GD with the learned eta = sum_h mu_h omega_h"})


# ================================================================================ claims
def _family_z(Hs, seeds):
    """z of the single-head and of the multi-head claim families (Bonferroni over their runs)."""
    n1 = len(seeds) * (1 in Hs)
    nm = len(seeds) * sum(h >= 2 for h in Hs)
    return z_family(max(n1, 1)), z_family(max(nm, 1))


def _gates(ds, out, m, Hs, seeds, z1, zm) -> dict:
    """(H, seed) index -> (ok, drift, reason): has the run reached the stage its claims are
    about? Its validation MSE settled at the claims' resolution and, for H >= 2, its heads
    split into positive and negative groups (a settled loss may be the single-head plateau)."""
    steps = ds["step"].values
    val_t = ds["val_mse"].values[..., 0]  # (H, seed, step)
    vse = out["final_val_se"].values
    gate = {}
    for i, H in enumerate(Hs):
        for j in range(len(seeds)):
            tol = (z1 if H == 1 else zm) * vse[i, j] + C.MODEL_ALLOWANCE
            gate[i, j] = C.settled(steps, val_t[i, j], tol)
            if H >= 2 and gate[i, j][0]:
                ok, why = C.split_gate(m["mu"][i, j], ds["head_exists"].values[i, j])
                gate[i, j] = (ok, gate[i, j][1], why)
    return gate


def _claims(ds, out, m, active, opt: Optima):
    Hs = [int(h) for h in ds["H"].values]
    seeds = [int(s) for s in ds["seed"].values]
    (z1, z1s), (zm, zms) = _family_z(Hs, seeds)
    gate = _gates(ds, out, m, Hs, seeds, z1, zm)
    vm, vse = out["final_val_mse"].values, out["final_val_se"].values
    exists = ds["head_exists"].values
    claims = []
    for i, H in enumerate(Hs):
        for j, s in enumerate(seeds):
            wh = C.where(H=H, seed=s)
            if H == 1:
                claims += _single_head_claims(opt, wh, gate[i, j], (z1, z1s), vm[i, j], vse[i, j],
                                              m["omega"][i, j, 0], m["mu"][i, j, 0])
                continue
            run = (m["omega"][i, j], m["mu"][i, j], exists[i, j], active[i, j])
            claims += _multi_head_claims(opt, wh, gate[i, j], (zm, zms), vm[i, j], vse[i, j], run)
            if gate[i, j][0]:
                claims += _structure_claims(wh, run, ds["W"].values[i, j, -1], ds["U"].values[i, j, -1], opt.d)
    return claims + _beats_claims(ds, Hs, seeds, gate, opt)


def _single_head_claims(opt: Optima, wh, gate, zz, vm, vse, omega, mu) -> list:
    """single_head_optimum, single_head_omega, single_head_mu of one H = 1 run."""
    d, L, sigma2 = opt.d, opt.L, opt.sigma2
    (w1, m1, r1), (z, zs), (ok, _, why) = opt.single, zz, gate
    ptxt = f"{r1:.4g} (exact single-head optimum at omega* = {w1:.3f}, mu* = {m1:.3f})"
    if not ok:
        return [SINGLE_OPT.not_tested(why, where=wh, prediction=r1, prediction_text=ptxt),
                SINGLE_OMEGA.not_tested(why, where=wh, prediction=w1, prediction_text=f"{w1:.3f} (exact optimum)"),
                SINGLE_MU.not_tested(why, where=wh, prediction=m1,
                                     prediction_text=f"{m1:.3f} (exact optimum, at omega*)")]
    delta = z * vse + C.MODEL_ALLOWANCE
    w_meas, mu_meas = abs(float(omega)), abs(float(mu))
    claims = [SINGLE_OPT.equal(vm, vse, r1, z=z, z_source=zs, allowance=C.MODEL_ALLOWANCE,
                               allowance_source=C.MODEL_ALLOWANCE_SOURCE, where=wh, prediction_text=ptxt)]
    lo, hi = th.kernel_identifiable_range(d, L, sigma2, delta, heads=1, optimum=opt.single)
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
                                  where=wh, prediction_text=f"{mstar:.4g} (best mu at the learned omega {w_meas:.3f})"))
    return claims


def _multi_head_claims(opt: Optima, wh, gate, zz, vm, vse, run) -> list:
    """multihead_optimum, multihead_eta, multihead_omega of one H >= 2 run (and, when its
    training has not reached the stage, its structure claims as not tested)."""
    d, L, sigma2 = opt.d, opt.L, opt.sigma2
    (w2, _, r2), (z, zs), (ok, _, why) = opt.pair, zz, gate
    omega, mu, exists, _ = run
    eta, wbar, _ = pair_parameters(omega, mu, exists)
    ptxt = f"{r2:.4g} (exact pair optimum; DGD optimal {opt.dgd_risk:.4g})"
    if not ok:
        return [MULTI_OPT.not_tested(why, where=wh, prediction=r2, prediction_text=ptxt),
                MULTI_ETA.not_tested(why, where=wh, prediction=opt.eta_star,
                                     prediction_text=f"-> {opt.eta_star:.4g} (DGD optimal step)"),
                MULTI_OMEGA.not_tested(why, where=wh, prediction=w2,
                                       prediction_text=f"flat profile, minimum at {w2:.3f}")] + \
            [c.not_tested(why, where=wh, prediction_text=t) for c, t in STRUCTURE_TEXT.items()]
    delta = z * vse + C.MODEL_ALLOWANCE
    claims = [MULTI_OPT.equal(vm, vse, r2, z=z, z_source=zs, allowance=C.MODEL_ALLOWANCE,
                              allowance_source=C.MODEL_ALLOWANCE_SOURCE, where=wh, prediction_text=ptxt)]
    if not wbar > 0:
        return claims + [MULTI_ETA.not_tested("no active head with omega != 0", where=wh, prediction=opt.eta_star),
                         MULTI_OMEGA.not_tested("no active head with omega != 0", where=wh, prediction=w2)]
    _, mstar = th.profiled_kernel_risk(wbar, d, L, sigma2, heads=2)
    etol = 2 * wbar * th.kernel_step_tolerance(wbar, d, L, sigma2, delta, heads=2)
    claims.append(MULTI_ETA.equal(eta, math.nan, 2 * wbar * mstar, z=z, z_source=zs, allowance=etol,
                                  allowance_source=f"the eta range where the exact pair risk at the learned omega is "
                                                   f"within delta = {delta:.3g} ({zs} x SE + 0.01 model error) of its "
                                                   "minimum",
                                  where=wh, prediction_text=f"{2 * wbar * mstar:.4g} (best step at omega {wbar:.3f}; "
                                                             f"-> {opt.eta_star:.4g} as omega -> 0)"))
    lo, hi = th.kernel_identifiable_range(d, L, sigma2, delta, heads=2, optimum=opt.pair)
    claims.append(MULTI_OMEGA.decided(
        lo <= wbar <= hi, test="lo <= |omega| <= hi", tolerance=(hi - lo) / 2,
        tolerance_source=f"[lo, hi] = where the exact profiled pair risk is within delta = {delta:.3g} "
                         f"({zs} x SE + 0.01 declared model error) of its minimum",
        where=wh, prediction=w2, prediction_text=f"in [{lo:.3f}, {hi:.3f}] (flat profile, minimum at {w2:.3f})",
        measured=wbar, lo=lo, hi=hi, reason="" if lo <= wbar <= hi else f"omega = {wbar:.3f} outside [{lo:.3f}, {hi:.3f}]"))
    return claims


def _structure_claims(wh, run, W, U, d) -> list:
    """The spec §13.5 pattern checks of one H >= 2 run that reached its stage: zero_sum, signs,
    kq_diagonal, kq_homogeneous, ov_last_entry (on the two head groups)."""
    omega, mu_raw, exists, a = run
    mu = np.where(exists, mu_raw, 0.0)
    zsr = abs(mu.sum()) / max(np.abs(mu).sum(), 1e-300)
    claims = [ZERO_SUM.at_most(zsr, math.nan, 0.0, z=0.0, z_source="", allowance=C.ZERO_SUM_FRAC,
                               allowance_source=C.spec(C.ZERO_SUM_FRAC, "§13.5"), where=wh,
                               prediction_text="0 (|sum mu| / sum |mu|)")]
    agree = bool(np.all(np.sign(mu_raw[a]) == np.sign(omega[a])))
    claims.append(SIGNS.decided(agree, test="sign(mu_h) = sign(omega_h) for every active head",
                                tolerance_source="exact sign condition (no tolerance)", where=wh,
                                prediction_text=STRUCTURE_TEXT[SIGNS],
                                measured=float(np.mean(np.sign(mu_raw[a]) == np.sign(omega[a]))),
                                reason="" if agree else "an active head has sign(mu) != sign(omega)"))
    ratio, cv2, last = group_patterns(W, U, omega, mu_raw, exists, d)
    claims.append(KQ_DIAG.at_least(ratio, math.nan, 1.0, z=0.0, z_source="", allowance=1 - C.DIAG_RATIO_MIN,
                                   allowance_source=C.spec(f"diag ratio > {C.DIAG_RATIO_MIN}", "§13.5"),
                                   where=wh, prediction_text=STRUCTURE_TEXT[KQ_DIAG]))
    claims.append(KQ_HOM.at_most(cv2, math.nan, 0.0, z=0.0, z_source="", allowance=0.01,
                                 allowance_source=C.spec("diag CV^2 < 0.01", "§13.5"),
                                 where=wh, prediction_text=STRUCTURE_TEXT[KQ_HOM]))
    claims.append(OV_LAST.at_least(last, math.nan, 1.0, z=0.0, z_source="", allowance=1 - C.LAST_ENTRY_MIN,
                                   allowance_source=C.spec(f"last-entry ratio > {C.LAST_ENTRY_MIN}", "§13.5"),
                                   where=wh, prediction_text=STRUCTURE_TEXT[OV_LAST]))
    return claims


def _beats_claims(ds, Hs, seeds, gate, opt: Optima) -> list:
    """multihead_beats_single per H >= 2 and seed (paired on the seed's validation prompts)."""
    if 1 not in Hs:
        return []
    r1, r2 = opt.single[2], opt.pair[2]
    blocks = ds["final_val_blocks"].values[..., 0]
    i1 = Hs.index(1)
    multi = [i for i, H in enumerate(Hs) if H >= 2]
    zb, zbs = z_family(max(1, len(multi) * len(seeds)))
    claims = []
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


def summary(a: xr.Dataset) -> str:
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


if __name__ == "__main__":
    import sys

    sys.exit(main())
