"""``python -m studies.icl noniso``: anisotropic covariates Sigma_ij = rho^|i-j| (notes icl_regression §8, §13.8; sweep S7): the learned preconditioner Gamma = sum_h mu_h W_h[:d, :d]
against the optimal one-step preconditioner of debiased GD, Gamma* = (Sigma + ((tr Sigma +
d sigma2)/L) I)^-1 (:func:`theory.icl_regression.optimal_preconditioner`, centred).

Claims (per run ``where="rho=0.5,H=4,seed=0"``; "not tested" when training stopped before the
stage -- the validation MSE has not settled, the OV does not read the label, or the heads have
not split into positive and negative groups -- or when the claim's own quantity (the MSE, the
cosine, the angle, the zero-sum ratio) has not settled at its tolerance: the gate of notes
icl_regression §13.11, :func:`studies.icl._common.settled`, :func:`~studies.icl._common.gate_claim`):

* ``val_optimal``: the final MSE is the exact risk of debiased GD preconditioned by Gamma* for
  this rho (z SE + the declared 0.01 model error of notes icl_regression §13.7: the trained model is
  debiased GD to first order);
* ``cos_Gamma_star``: cos(Gamma, Gamma*) >= 0.99 (declared number, notes icl_regression §13.8);
* ``not_identity``: the angle between Gamma and I is the angle between Gamma* and I for this rho
  (within the 8.1 degrees that cos(Gamma, Gamma*) >= 0.99 allows); "not tested" where Gamma* is
  within that resolution of I (rho = 0: plain GD is the optimum);
* ``zero_sum``: ``|sum_h mu_h| < 0.05 sum_h |mu_h|`` (declared number, notes icl_regression §13.5).
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from sim import icl_regression as sim
from studies.claims import ClaimSpec, z_family
from studies.cli import Part, UsageError, run_params
from studies.icl import _common as C
from studies.icl._training import TRAIN_DEFAULTS, TRAIN_QUICK, add_training_args, check_training, training_part
from studies.icl._heads import group_patterns, head_stats, zero_sum_ratio
from theory import icl_regression as th

STUDY = "icl_noniso"
DESCRIPTION = ("Anisotropic covariates Sigma_ij = rho^|i-j|: the learned preconditioner sum_h mu_h W_h against "
               "Gamma* of debiased GD.")
EXAMPLES = """\
examples:
  python -m studies.icl noniso --rho 0,0.5,0.8 --H 2,4 --steps 40000
  python -m studies.icl noniso --quick --plot
"""
DEFAULTS = {**TRAIN_DEFAULTS, "d": 5, "L": 40, "sigma2": 0.1, "steps": 40000, "seeds": 1, "H": "2,4",
            "rho": "0,0.5,0.8"}
QUICK = {**TRAIN_QUICK, "steps": 600, "seeds": 1, "H": "2", "rho": "0.5"}
PRESETS: dict = {}
ANGLE_TOL = math.degrees(math.acos(C.COS_MIN))

S = C.SOURCE
VAL = ClaimSpec("icl_noniso.val_optimal",
                f"{S}: KQ proportional to a preconditioner (notes icl_regression §8, §13.8)",
                "The trained model's MSE is the risk of debiased GD with the optimal preconditioner Gamma* for this "
                "covariance.")
COS = ClaimSpec("icl_noniso.cos_Gamma_star",
                f"{S}: KQ proportional to a preconditioner (notes icl_regression §8, §13.8)",
                "The learned preconditioner sum_h mu_h W_h points along Gamma*.")
NOT_ID = ClaimSpec("icl_noniso.not_identity",
                   f"{S}: the preconditioner is not plain GD (notes icl_regression §8, §13.8)",
                   "The learned preconditioner is as far from the identity as Gamma* is for this rho.")
ZS = ClaimSpec("icl_noniso.zero_sum", f"{S}: zero-sum OV (notes icl_regression §4, §8)",
               "The heads' value weights sum to zero.")


def add_arguments(p) -> None:
    C.data_args(p, DEFAULTS)
    p.add_argument("--rho", type=C.floats, default=None, metavar="LIST",
                   help=f"AR(1) correlations (default {DEFAULTS['rho']}; --quick {QUICK['rho']})")
    add_training_args(p, DEFAULTS, QUICK)


def token_dim(args) -> int:
    return args.d + 1


def validate(args) -> None:
    if min(args.rho) < 0 or max(args.rho) >= 1:
        raise UsageError("--rho: correlations must be in [0, 1)")
    C.check_variance(1.0 + args.sigma2, "--sigma2")
    check_training(args, token_dim(args))


def parts(args) -> list[Part]:
    grid = {"rho": np.asarray(args.rho, dtype=float), "H": np.asarray(args.H, dtype=np.int64),
            "seed": np.arange(args.seeds)}

    def make_run(rho, H, seed):
        ds_, is_ = C.seed_seqs(args.seed, seed, H)
        return sim.RunSpec(int(H), sim.toeplitz_task(args.d, float(rho), args.sigma2), ds_, is_)

    return [training_part(args, study=STUDY, grid=grid, make_run=make_run,
                          task_attrs={"name": "toeplitz", "d": args.d, "sigma2": args.sigma2,
                                      "rho": list(map(float, args.rho))},
                          figure_kind="noniso", token_dim=token_dim(args))]


def main(argv=None) -> int:
    return C.sub_main(STUDY, argv)


def _plain_dgd_risk(d, rho, L, sigma2):
    """The exact risk of plain (identity-preconditioned) debiased GD at its best step for this rho:
    the alternative the preconditioner claims rule out (notes icl_regression §13.12)."""
    from scipy.optimize import minimize_scalar

    S_ = th.toeplitz_cov(d, rho)
    res = minimize_scalar(lambda c: th.preconditioned_risk(c * np.eye(d), S_, L, sigma2, centered=True),
                          bounds=(0.0, 2.0), method="bounded", options={"xatol": 1e-8})
    return float(res.fun)


def _angle(cos):
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def analyze(ds):
    """The learned preconditioners against Gamma*, and the claims (d, L and sigma2 are the run's
    stored parameters)."""
    p = run_params(ds)
    d, L, sigma2 = int(p["task"]["d"]), int(p["L"]), float(p["task"]["sigma2"])
    m, active, kept, traj = head_stats(ds, d)
    exists = ds["head_exists"].values
    mu = np.where(exists, m["mu"], 0.0)
    out, cosines, risk_star = _preconditioner_variables(ds, d, L, sigma2, mu)
    vm, vse = C.block_mean_se(ds["final_val_blocks"].values[..., 0])
    out["final_val_mse"] = (["rho", "H", "seed"], vm)
    out["final_val_se"] = (["rho", "H", "seed"], vse)
    sums = sim.head_sums(m["omega"], mu, exists)
    gd = ["rho", "H", "seed"]
    out["zero_sum_ratio"] = (gd, sums["zero_sum_ratio"])
    out["eta"] = (gd, sums["eta"], {"long_name": "sum_h mu_h omega_h"})
    out["final_omega"] = (gd + ["head"], np.where(exists, m["omega"], 0.0))
    out["final_mu"] = (gd + ["head"], mu)
    out["active"] = (gd + ["head"], active)
    return out, _claims(ds, mu, exists, vm, vse, cosines, risk_star, sums["zero_sum_ratio"])


def _preconditioner_variables(ds, d, L, sigma2, mu):
    """The learned Gamma, Gamma* (uncentred and centred) per rho, the cosines between them and
    with I, and the exact risks of debiased GD with Gamma* and with the learned Gamma. Returns
    (dataset, (cos(Gamma, Gamma*_centred), cos(Gamma, I), cos(Gamma*, I)), risk with Gamma*)."""
    Wf = ds["W"].isel(step=-1).values[..., :d, :d]  # (rho, H, seed, head, d, d)
    Gamma = np.einsum("...h,...hij->...ij", mu, Wf)
    rhos = ds["rho"].values
    gd = ["rho", "H", "seed"]
    out = xr.Dataset(coords={"rho": ds["rho"], "H": ds["H"], "seed": ds["seed"], "head": ds["head"],
                             "i": np.arange(d), "j": np.arange(d)})
    out["Gamma"] = (gd + ["i", "j"], Gamma, {"long_name": "learned preconditioner sum_h mu_h W_h[:d, :d]"})
    covs = [th.toeplitz_cov(d, r) for r in rhos]
    gs_u = np.stack([th.optimal_preconditioner(S_, L, sigma2) for S_ in covs])
    gs_c = np.stack([th.optimal_preconditioner(S_, L, sigma2, centered=True) for S_ in covs])
    out["theory_Gamma_star"] = (("rho", "i", "j"), gs_u, {"long_name": "((1+1/L) Sigma + ((tr Sigma + d sigma2)/L) "
                                                                       "I)^-1 (notes icl_regression §8; uncentred one-step GD)"})
    out["theory_Gamma_star_centered"] = (("rho", "i", "j"), gs_c, {"long_name": "(Sigma + ((tr Sigma + d sigma2)/L) "
                                                                                "I)^-1 (debiased one-step GD)"})
    shp = Gamma.shape[:3]
    cos, cosc, cosi = np.zeros(shp), np.zeros(shp), np.zeros(shp)
    for a in np.ndindex(*shp):
        cos[a] = th.cosine(Gamma[a], gs_u[a[0]])
        cosc[a] = th.cosine(Gamma[a], gs_c[a[0]])
        cosi[a] = th.cosine(Gamma[a], np.eye(d))
    out["cos_Gamma_star"] = (gd, cos)
    out["cos_Gamma_star_centered"] = (gd, cosc)
    out["cos_identity"] = (gd, cosi)
    csi = np.array([th.cosine(g, np.eye(d)) for g in gs_c])
    out["cos_Gamma_star_vs_identity"] = (("rho",), csi, {"long_name": "cos(Gamma*, I): how far the target is from "
                                                                      "plain GD"})
    risk_star = np.array([th.preconditioned_risk(gs_c[k], covs[k], L, sigma2, centered=True) for k in range(len(rhos))])
    out["theory_risk_Gamma_star_centered"] = (("rho",), risk_star,
                                              {"long_name": "exact risk of debiased GD preconditioned by Gamma*"})
    out["theory_risk_learned_Gamma"] = (gd, np.array([
        th.preconditioned_risk(Gamma[a], covs[a[0]], L, sigma2, centered=True) for a in np.ndindex(*shp)]).reshape(shp),
        {"long_name": "exact risk of debiased GD preconditioned by the learned Gamma"})
    return out, (cosc, cosi, csi), risk_star


def _series(ds, a, d, gstar):
    """The logged trajectories of run ``a`` that its claims are about: cos(Gamma(t), Gamma*),
    the angle between Gamma(t) and I (degrees), and the zero-sum ratio."""
    exists = ds["head_exists"].values[a]
    W = ds["W"].values[a][..., :d, :d]  # (step, head, d, d)
    U = ds["U"].values[a]
    mu = np.where(exists, U[..., d, 0], 0.0)  # (step, head)
    Gam = np.einsum("th,thij->tij", mu, W)
    cos = np.array([th.cosine(g, gstar) for g in Gam])
    ang = np.array([_angle(th.cosine(g, np.eye(d))) for g in Gam])
    return {"cos": cos, "angle": ang, "zero_sum": zero_sum_ratio(mu)}


def _claims(ds, mu, exists, vm, vse, cosines, risk_star, zero_sum):
    cosc, cosi, csi = cosines
    p = run_params(ds)
    d, L, sigma2 = int(p["task"]["d"]), int(p["L"]), float(p["task"]["sigma2"])
    rhos = ds["rho"].values
    steps = ds["step"].values
    val_t = ds["val_mse"].values[..., 0]
    shp = vm.shape
    z, zs = z_family(int(np.prod(shp)))
    claims = []
    for a in np.ndindex(*shp):
        r, H, s = float(rhos[a[0]]), int(ds["H"].values[a[1]]), int(ds["seed"].values[a[2]])
        wh = C.where(rho=r, H=H, seed=s)
        ok, _, why = C.settled(steps, val_t[a], z * vse[a] + C.MODEL_ALLOWANCE)
        if ok:  # a settled loss may be a saddle on the way: the heads must read the label ...
            Wl, Ul = ds["W"].values[a][-1], ds["U"].values[a][-1]
            omega = np.diagonal(Wl[:, :d, :d], axis1=-2, axis2=-1).mean(-1)
            ok, why = C.label_gate(group_patterns(Wl, Ul, omega, mu[a], exists[a], d)[2], "the head groups")
        if ok:  # ... and have split (a settled loss may be the single-head plateau)
            ok, why = C.split_gate(mu[a], exists[a])
        star_angle = _angle(csi[a[0]])
        vtxt = f"{risk_star[a[0]]:.4g} (Gamma*-preconditioned debiased GD)"
        ntxt = f"angle(Gamma, I) = angle(Gamma*, I) = {star_angle:.1f} deg"
        if not ok:
            claims += [VAL.not_tested(why, where=wh, prediction=risk_star[a[0]], prediction_text=vtxt),
                       COS.not_tested(why, where=wh, prediction_text="1 (cos(Gamma, Gamma*))"),
                       NOT_ID.not_tested(why, where=wh, prediction=star_angle, prediction_text=ntxt),
                       ZS.not_tested(why, where=wh, prediction_text="0 (|sum mu| / sum |mu|)")]
            continue
        gstar = th.optimal_preconditioner(th.toeplitz_cov(d, r), L, sigma2, centered=True)
        ser = _series(ds, a, d, gstar)
        claims.append(C.gate_claim(VAL.equal(vm[a], vse[a], risk_star[a[0]], z=z, z_source=zs,
                                             allowance=C.MODEL_ALLOWANCE, allowance_source=C.MODEL_ALLOWANCE_SOURCE,
                                             where=wh, prediction_text=vtxt,
                                             effect=_plain_dgd_risk(d, r, L, sigma2) - risk_star[a[0]]),
                                   VAL, steps, val_t[a], what="validation MSE"))
        claims.append(C.gate_claim(COS.at_least(cosc[a], math.nan, 1.0, z=0.0, z_source="", allowance=1 - C.COS_MIN,
                                                allowance_source=C.spec(f"cos > {C.COS_MIN}", "§13.8"), where=wh,
                                                prediction_text="1 (cos(Gamma, Gamma*))", effect=1 - csi[a[0]]),
                                   COS, steps, ser["cos"], what="cos(Gamma, Gamma*)"))
        claims.append(C.gate_claim(_not_identity(r, wh, star_angle, _angle(cosi[a]), ntxt), NOT_ID, steps,
                                   ser["angle"], what="angle between Gamma and I (degrees)"))
        claims.append(C.gate_claim(ZS.at_most(float(zero_sum[a]), math.nan, 0.0, z=0.0, z_source="",
                                              allowance=C.ZERO_SUM_FRAC,
                                              allowance_source=C.spec(C.ZERO_SUM_FRAC, "§13.5"), where=wh,
                                              prediction_text="0 (|sum mu| / sum |mu|)", effect=1.0),
                                   ZS, steps, ser["zero_sum"], what="zero-sum ratio"))
    return claims


def _not_identity(r, wh, star_angle, angle, ntxt):
    if star_angle <= ANGLE_TOL:
        return NOT_ID.not_tested(
            f"for rho = {r:g} Gamma* is within the resolution of I (angle {star_angle:.1f} deg <= "
            f"{ANGLE_TOL:.1f} deg): plain GD and the preconditioner cannot be told apart", where=wh,
            prediction=star_angle, prediction_text=ntxt, measured=angle)
    return NOT_ID.equal(angle, math.nan, star_angle, z=0.0, z_source="", allowance=ANGLE_TOL,
                        allowance_source=f"{ANGLE_TOL:.1f} deg = arccos(0.99): cos(Gamma, Gamma*) > 0.99 "
                                         "(notes icl_regression §13.8) bounds the angle difference (triangle "
                                         "inequality for angles)", where=wh, prediction_text=ntxt,
                        effect=star_angle)


def summary(a):
    rows = [f"{'rho':>5} {'H':>3} {'seed':>4} {'cos(Γ,Γ*)':>10} {'cos(Γ,Γ*c)':>11} {'cos(Γ,I)':>9} {'cos(Γ*,I)':>9} "
            f"{'Σμ/Σ|μ|':>8} {'val MSE':>8} {'Γ*-DGD risk':>11}"]
    for i, r in enumerate(a["rho"].values):
        for j, H in enumerate(a["H"].values):
            for k, s in enumerate(a["seed"].values):
                rows.append(f"{r:>5g} {H:>3} {s:>4} {a['cos_Gamma_star'].values[i, j, k]:>10.4f} "
                            f"{a['cos_Gamma_star_centered'].values[i, j, k]:>11.4f} "
                            f"{a['cos_identity'].values[i, j, k]:>9.4f} {a['cos_Gamma_star_vs_identity'].values[i]:>9.4f} "
                            f"{a['zero_sum_ratio'].values[i, j, k]:>8.3f} {a['final_val_mse'].values[i, j, k]:>8.4f} "
                            f"{a['theory_risk_Gamma_star_centered'].values[i]:>11.4f}")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    sys.exit(main())
