"""``python -m studies.icl multitask``: two regression tasks on x[0:4] and x[2:6] (d = 6,
beta_n ~ N(0, I_4) on its support, label-noise variance 0.4, noiseless query; notes icl_regression §1, §9, §13.9; sweep S8): per-task debiased GD and the superposition of heads.
The tasks fix their own noise (0.4, notes icl_regression §9), so this sub-study has no ``--sigma2``; the
analysis rebuilds the tasks from the stored ``task`` parameters.

Per task n the first-order (debiased-GD) theory has the optimal preconditioner
Gamma*_n = L B_n [L B_n + (tr B_n + sigma_n^2) I]^-1 (B_n = the task's prior covariance:
L/(L + 4.4) on its support, 0 off it; :func:`theory.icl_regression.optimal_preconditioner`
with ``beta_cov``), which the heads realise as Gamma_n = sum_h mu_{h,n} W_h[:d, :d].

Claims (per run ``where="H=3,seed=0,task=1"`` or ``"H=3,seed=0"``; "not tested" when training
stopped before the stage -- a task's validation MSE has not settled, its heads do not read its
label, or its value weights have not split into positive and negative heads -- or when the
claim's own quantity has not settled at its tolerance: the gate of notes icl_regression §13.11):

* ``task_optimal``: each task's final MSE / task variance is the exact risk of debiased GD with
  Gamma*_n (z SE + the declared 0.01 model error of notes icl_regression §13.7);
* ``zero_sum``: per task, ``|sum_h mu_{h,n}| < 0.05 sum_h |mu_{h,n}|``
  (declared number, notes icl_regression §13.9);
* ``task_support``: Gamma_n's mean on the task's support is Gamma*_n's value there and its
  entries off the support are 0, both to 0.1
  (declared numbers, notes icl_regression §13.9: "≈ 0.9 on, ``|·| < 0.1`` off");
* ``superposition`` (N + 1 <= H < 2N; a consistency check): at least 2N - H heads serve both
  tasks (each task needs a zero-sum pair of heads, so fewer than 2N heads must share; a head
  serves a task when ``|mu_{h,n}| > 0.1 max_h |mu_{h,n}|``, §13.5) -- implied by the stage gate,
  which sees every task's heads split into signs (notes icl_regression §13.12);

With H <= N heads no claim is tested: the zero-sum combinations of H heads span at most H - 1
preconditioners, fewer than the N the tasks need, so the first-order theory has no value there.

* ``split`` (H >= 2N): every task has a pair of heads of its own; the notes expect
  (notes icl_regression §9) this only after >= 1e5 Adam steps (§9, §13.9), so shorter runs do not test it.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from sim import icl_regression as sim
from studies.claims import CONSISTENCY, ClaimSpec, z_family
from studies.cli import Part, UsageError, run_params
from studies.icl import _common as C
from studies.icl._heads import group_patterns, zero_sum_ratio
from studies.icl._training import TRAIN_DEFAULTS, TRAIN_QUICK, add_training_args, check_training, training_part
from theory import icl_regression as th

STUDY = "icl_multitask"
DESCRIPTION = ("Two regression tasks on x[0:4] and x[2:6] (d = 6, L = 48) sharing coordinates: per-task debiased GD "
               "and the superposition of heads.")
EXAMPLES = """\
examples:
  python -m studies.icl multitask --H 3,4 --steps 30000
  python -m studies.icl multitask --quick --plot
"""
DEFAULTS = {**TRAIN_DEFAULTS, "d": 6, "L": 48, "steps": 30000, "seeds": 1, "H": "3,4"}
QUICK = {**TRAIN_QUICK, "steps": 600, "seeds": 1, "H": "3"}
PRESETS: dict = {}
SUPPORT_TOL = 0.1  # notes icl_regression §13.9

S = C.SOURCE
OPT = ClaimSpec("icl_multitask.task_optimal", f"{S}: multi-task regression (notes icl_regression §9, §13.9)",
                "Each task's MSE is the risk of debiased GD with its optimal preconditioner.")
ZS = ClaimSpec("icl_multitask.zero_sum", f"{S}: per-task zero-sum OV (notes icl_regression §9, §13.9)",
               "For each task the heads' value weights sum to zero.")
SUPPORT = ClaimSpec("icl_multitask.task_support", f"{S}: per-task preconditioners (notes icl_regression §9, §13.9)",
                    "Gamma_n = sum_h mu_{h,n} diag-block of W_h is Gamma*_n: its value on the task's support, 0 off.")
SUPER = ClaimSpec("icl_multitask.superposition", f"{S}: superposition when H < 2N (notes icl_regression §9, §13.9)",
                  "With fewer than two heads per task, heads are shared: at least 2N - H heads serve both tasks.",
                  role=CONSISTENCY,
                  why="a pigeonhole consequence of its own stage gate (notes icl_regression §13.12): a run is tested "
                      "only once every task's heads have split into positive and negative groups, which gives every "
                      "task two serving heads, so with H < 2N heads at least 2N - H serve both; no ingredient can make "
                      "the count fail without failing the gate")
SPLIT = ClaimSpec("icl_multitask.split", f"{S}: one head pair per task when H >= 2N (notes icl_regression §9, §13.9)",
                  "With at least two heads per task, every task gets a pair of heads of its own.")


def add_arguments(p) -> None:
    C.data_args(p, DEFAULTS, sigma2=False)
    add_training_args(p, DEFAULTS, QUICK)


def token_dim(args) -> int:
    return args.d + 2


def validate(args) -> None:
    if args.d != 6:
        raise UsageError("multitask: the task layout (x[0:4], x[2:6]) needs --d 6")
    check_training(args, token_dim(args))


def parts(args) -> list[Part]:
    task = sim.multitask_task(args.d)
    grid = {"H": np.asarray(args.H, dtype=np.int64), "seed": np.arange(args.seeds)}

    def make_run(H, seed):
        ds_, is_ = C.seed_seqs(args.seed, seed, H)
        return sim.RunSpec(int(H), task, ds_, is_)

    return [training_part(args, study=STUDY, grid=grid, make_run=make_run, task_attrs=task.describe(),
                          figure_kind="multitask", token_dim=token_dim(args))]


def main(argv=None) -> int:
    return C.sub_main(STUDY, argv)


def stored_task(params):
    """The tasks of a run, rebuilt from its stored ``task`` parameters."""
    t = params["task"]
    return sim.multitask_task(int(t["d"]), supports=[tuple(s) for s in t["supports"]], beta_var=float(t["beta_var"]),
                              noise_var=float(t["noise_var"]), query_noise=bool(t["query_noise"]))


def task_theory(task, L, blind: bool = False):
    """Per task n: Gamma*_n (d, d), its risk / task variance, and the task variance. With
    ``blind``, also the risk / task variance of the preconditioner blind to the supports
    (Gamma*_n's on-support value on every coordinate), the alternative ``task_optimal`` rules
    out (notes icl_regression §13.12)."""
    d, N = task.d, task.n_out
    G, R, tv, Rb = [], [], [], []
    for n in range(N):
        B = np.diag(task.beta_scale[n] ** 2 * task.beta_mask[n])
        s2 = float(task.noise_sd[n] ** 2)
        qn = bool(task.query_noise_sd[n] > 0)
        g = th.optimal_preconditioner(np.eye(d), L, s2, centered=True, beta_cov=B)
        var = float(np.trace(B))
        r = th.preconditioned_risk(g, np.eye(d), L, s2, centered=True, beta_cov=B, query_noise=qn)
        on = float(np.diagonal(g)[task.beta_mask[n] > 0].mean())
        Rb.append(th.preconditioned_risk(on * np.eye(d), np.eye(d), L, s2, centered=True, beta_cov=B,
                                         query_noise=qn) / var)
        G.append(g)
        R.append(r / var)
        tv.append(var)
    if blind:
        return np.stack(G), np.array(R), np.array(tv), np.array(Rb)
    return np.stack(G), np.array(R), np.array(tv)


def analyze(ds):
    """Per-task preconditioners, risks and head usage, and the claims (the tasks and L are the
    run's stored parameters)."""
    p = run_params(ds)
    task, L = stored_task(p), int(p["L"])
    out, fit = _task_variables(ds, task, L)
    return out, _claims(ds, task, fit)


def _task_variables(ds, task, L):
    """The analysis dataset, and what the claims read from it: mu (H, seed, head, N), the
    normalised final MSE and its SE, the zero-sum ratios, Gamma on / off the supports, the heads
    serving each task, and the theory (Gamma*_n on its support, risk per task, task variance)."""
    d, N = task.d, task.n_out
    Wf = ds["W"].isel(step=-1).values  # (H, seed, head, D, D)
    Uf = ds["U"].isel(step=-1).values  # (H, seed, head, D, N)
    exists = ds["head_exists"].values
    diag = np.diagonal(Wf[..., :d, :d], axis1=-2, axis2=-1)  # (H, seed, head, d)
    ov = Uf[..., d:, :]  # (H, seed, head, N(in: y_m), N(out))
    mu = np.where(exists[..., None], np.diagonal(ov, axis1=-2, axis2=-1), 0.0)  # (H, seed, head, N)
    cross = np.abs(ov * (1 - np.eye(N))).max(axis=(-2, -1))
    gd = ["H", "seed"]
    out = xr.Dataset(coords={"H": ds["H"], "seed": ds["seed"], "head": ds["head"], "coord": np.arange(d),
                             "task": np.arange(N), "task_in": np.arange(N)})
    out["kq_diag"] = (gd + ["head", "coord"], diag, {"long_name": "diagonal of each head's KQ x-block"})
    out["ov_y"] = (gd + ["head", "task_in", "task"], ov, {"long_name": "OV entries y_m (task_in) -> output n (task)"})
    out["mu"] = (gd + ["head", "task"], mu, {"long_name": "mu_{h,n} = u_h[d+n, n]"})
    Gfull = np.einsum("...hn,...hij->...nij", mu, Wf[..., :d, :d])  # (H, seed, N, d, d)
    Gam = np.diagonal(Gfull, axis1=-2, axis2=-1)
    out["Gamma_diag"] = (gd + ["task", "coord"], Gam, {"long_name": "diagonal of Gamma_n = sum_h mu_{h,n} W_h[:d,:d]"})
    mask = task.beta_mask > 0  # (N, d)
    out["theory_support"] = (("task", "coord"), mask)
    Gs, Rs, tv, Rb = task_theory(task, L, blind=True)
    out["theory_Gamma_star_diag"] = (("task", "coord"), np.diagonal(Gs, axis1=-2, axis2=-1),
                                     {"long_name": "diagonal of Gamma*_n (debiased GD, the task's prior)"})
    out["theory_task_risk"] = (("task",), Rs, {"long_name": "exact risk of debiased GD with Gamma*_n / task variance"})
    blocks = ds["final_val_blocks"].values  # (H, seed, vblock, N)
    norm = blocks.mean(2) / tv
    nse = blocks.std(2, ddof=1) / math.sqrt(blocks.shape[2]) / tv
    out["final_val_mse_per_task"] = (gd + ["task"], norm, {"long_name": "final val MSE of output n / task variance"})
    out["final_val_se_per_task"] = (gd + ["task"], nse)
    zsr = np.abs(mu.sum(2)) / np.maximum(np.abs(mu).sum(2), 1e-300)
    out["zero_sum_ratio"] = (gd + ["task"], zsr)
    out["cross_task_max"] = (gd + ["head"], np.where(exists, cross, 0.0))
    on = np.where(mask[None, None], Gam, np.nan)
    off = np.where(mask[None, None], np.nan, Gam)
    gon = np.nanmean(on, axis=-1)
    goff = np.nanmax(np.abs(off), axis=-1) if (~mask).any() else np.zeros(Gam.shape[:-1])
    gstar_on = np.array([np.diagonal(Gs[n])[mask[n]].mean() for n in range(N)])
    out["Gamma_on_support"] = (gd + ["task"], gon)
    out["Gamma_off_support_max"] = (gd + ["task"], goff)
    serves = np.abs(mu) > C.ACTIVE_MU_FRAC * np.abs(mu).max(axis=2, keepdims=True)  # (H, seed, head, N)
    out["serves"] = (gd + ["head", "task"], serves, {"description": f"|mu_(h,n)| > {C.ACTIVE_MU_FRAC} max_h |mu_(h,n)|"})
    fit = {"mu": mu, "norm": norm, "nse": nse, "zsr": zsr, "gon": gon, "goff": goff, "serves": serves,
           "gstar_on": gstar_on, "risk": Rs, "tv": tv, "risk_blind": Rb}
    return out, fit


def _gate(ds, task, fit, i, j, H, z):
    """(ok, why): has run (i, j) reached the stage its claims are about? Every task's validation
    MSE settled, every task's heads split into positive and negative groups, and H >= N + 1
    (fewer heads have no theory value)."""
    N = task.n_out
    steps = ds["step"].values
    val_t = ds["val_mse"].values / fit["tv"]  # (H, seed, step, N)
    gates = [C.settled(steps, val_t[i, j, :, n], z * fit["nse"][i, j, n] + C.MODEL_ALLOWANCE,
                       what=f"validation MSE / variance of task {n + 1}") for n in range(N)]
    ok = all(g[0] for g in gates)
    why = next((g[2] for g in gates if not g[0]), "")
    exists = ds["head_exists"].values
    if ok:  # per task, the heads must read the task's label (a settled loss may be a saddle on the way)
        Wl, Ul = ds["W"].values[i, j, -1], ds["U"].values[i, j, -1]
        omega = np.diagonal(Wl[:, :task.d, :task.d], axis1=-2, axis2=-1).mean(-1)
        labels = [C.label_gate(group_patterns(Wl, Ul, omega, fit["mu"][i, j, :, n], exists[i, j], task.d, out=n)[2],
                               f"the head groups of task {n + 1}") for n in range(N)]
        ok = all(g[0] for g in labels)
        why = next((g[1] for g in labels if not g[0]), "")
    if ok:  # per task, the heads must have split into positive and negative groups
        splits = [C.split_gate(fit["mu"][i, j, :, n], exists[i, j], what=f"the heads of task {n + 1}")
                  for n in range(N)]
        ok = all(g[0] for g in splits)
        why = next((g[1] for g in splits if not g[0]), "")
    if H < N + 1:  # zero-sum combinations of H heads span H - 1 < N preconditioners
        ok, why = False, (f"no theory value: with H = {H} heads the zero-sum combinations sum_h mu_(h,n) W_h "
                          f"span at most H - 1 = {H - 1} < N = {N} preconditioners, so the first-order theory "
                          "cannot realise every task's debiased GD (it needs H >= N + 1)")
    return ok, why


def _series(ds, task, fit, i, j):
    """The logged trajectories of run (i, j) its claims are about (step first): per task the
    normalised validation MSE, the zero-sum ratio and the deviation of Gamma_n from Gamma*_n,
    and the fewest heads serving one task only (what the split claim reads)."""
    d, N = task.d, task.n_out
    H = int(ds["H"].values[i])
    W = ds["W"].values[i, j][..., :d, :d]  # (step, head, d, d)
    U = ds["U"].values[i, j]  # (step, head, D, N)
    exists = ds["head_exists"].values[i, j]
    mu = np.where(exists[None, :, None], np.diagonal(U[:, :, d:, :], axis1=-2, axis2=-1), 0.0)  # (step, head, N)
    Gam = np.diagonal(np.einsum("thn,thij->tnij", mu, W), axis1=-2, axis2=-1)  # (step, N, d)
    mask = task.beta_mask > 0
    dev = np.stack([np.maximum(np.abs(Gam[:, n][:, mask[n]].mean(-1) - fit["gstar_on"][n]),
                               np.abs(Gam[:, n][:, ~mask[n]]).max(-1) if (~mask[n]).any() else 0.0)
                    for n in range(N)], axis=-1)
    serves = np.abs(mu) > C.ACTIVE_MU_FRAC * np.abs(mu).max(axis=1, keepdims=True)  # (step, head, N)
    sv = serves[:, :H]
    own = np.stack([np.sum(sv[..., n] & ~np.delete(sv, n, axis=-1).any(axis=-1), axis=-1) for n in range(N)], -1)
    return {"val": ds["val_mse"].values[i, j] / fit["tv"], "zero_sum": zero_sum_ratio(np.moveaxis(mu, 1, -1)),
            "support": dev, "own": own.min(-1).astype(float)}


def _claims(ds, task, fit):
    N = task.n_out
    Hs = [int(h) for h in ds["H"].values]
    seeds = [int(s) for s in ds["seed"].values]
    z, zs = z_family(len(Hs) * len(seeds) * N)
    steps = ds["step"].values
    claims = []
    for i, H in enumerate(Hs):
        for j, s in enumerate(seeds):
            ok, why = _gate(ds, task, fit, i, j, H, z)
            ser = _series(ds, task, fit, i, j) if ok else None
            for n in range(N):
                for c, spec, key, what in zip(
                        _task_claims(fit, i, j, n, C.where(H=H, seed=s, task=n + 1), ok, why, (z, zs)),
                        (OPT, ZS, SUPPORT), ("val", "zero_sum", "support"),
                        (f"validation MSE / variance of task {n + 1}", f"zero-sum ratio of task {n + 1}",
                         f"deviation of Gamma_{n + 1} from Gamma*_{n + 1}")):
                    claims.append(C.gate_claim(c, spec, steps, ser[key][:, n], what=what) if ok else c)
            c = _heads_claim(fit, i, j, H, N, C.where(H=H, seed=s), ok, why, int(steps[-1]))
            if ok and H >= 2 * N:  # (superposition follows from the stage gate: no quantity of its own to settle)
                c = C.gate_claim(c, SPLIT, steps, ser["own"], what="heads serving one task only (fewest over tasks)",
                                 tol=C.DISCRETE_TOL)
            claims.append(c)
    return claims


def _task_claims(fit, i, j, n, wh, ok, why, zz) -> list:
    """task_optimal, zero_sum and task_support of task n of run (i, j)."""
    z, zs = zz
    Rs, gstar_on = fit["risk"], fit["gstar_on"]
    otxt = f"{Rs[n]:.4g} (debiased GD with Gamma*_{n + 1})"
    stxt = f"{gstar_on[n]:.3f} on the support, 0 off"
    if not ok:
        return [OPT.not_tested(why, where=wh, prediction=Rs[n], prediction_text=otxt),
                ZS.not_tested(why, where=wh, prediction_text="0 (|sum mu| / sum |mu|)"),
                SUPPORT.not_tested(why, where=wh, prediction_text=stxt)]
    dev = max(abs(fit["gon"][i, j, n] - gstar_on[n]), float(fit["goff"][i, j, n]))
    return [OPT.equal(fit["norm"][i, j, n], fit["nse"][i, j, n], Rs[n], z=z, z_source=zs, allowance=C.MODEL_ALLOWANCE,
                      allowance_source=C.MODEL_ALLOWANCE_SOURCE + " (on the task-variance scale)", where=wh,
                      prediction_text=otxt, effect=fit["risk_blind"][n] - Rs[n]),
            ZS.at_most(float(fit["zsr"][i, j, n]), math.nan, 0.0, z=0.0, z_source="", allowance=C.ZERO_SUM_FRAC,
                       allowance_source=C.spec(C.ZERO_SUM_FRAC, "§13.9"), where=wh,
                       prediction_text="0 (|sum mu| / sum |mu|)", effect=1.0),
            SUPPORT.at_most(dev, math.nan, 0.0, z=0.0, z_source="", allowance=SUPPORT_TOL,
                            allowance_source=C.spec(SUPPORT_TOL, "§13.9"), where=wh,
                            prediction_text=stxt + " (max deviation)", effect=gstar_on[n])]


def _heads_claim(fit, i, j, H, N, wh, ok, why, last_step):
    """superposition (N + 1 <= H < 2N) or split (H >= 2N) of run (i, j)."""
    serves = fit["serves"][i, j, :H]  # (head, N)
    if H < N + 1:
        return SUPER.not_tested(why, where=wh, prediction_text="no prediction for H <= N")
    if H < 2 * N:
        need = 2 * N - H
        both = int(np.sum(serves.all(axis=-1)))
        ptxt = f">= {need} shared head(s)"
        if not ok:
            return SUPER.not_tested(why, where=wh, prediction=need, prediction_text=ptxt)
        return SUPER.decided(both >= need, test="heads serving both tasks >= 2N - H",
                             tolerance_source="exact count (pigeonhole: a zero-sum pair per task)", where=wh,
                             prediction=need, prediction_text=ptxt, measured=both,
                             reason="" if both >= need else f"{both} shared head(s) < {need}")
    own = [int(np.sum(serves[:, n] & ~np.delete(serves, n, axis=-1).any(axis=-1))) for n in range(N)]
    ptxt = ">= 2 heads of its own per task"
    if last_step < C.SPLIT_STEPS:
        return SPLIT.not_tested(f"the split needs >= {C.SPLIT_STEPS:,} Adam steps (notes icl_regression §9, §13.9); "
                                f"this run "
                                f"stopped at {last_step:,}", where=wh, prediction_text=ptxt, measured=min(own))
    if not ok:
        return SPLIT.not_tested(why, where=wh, prediction_text=ptxt)
    return SPLIT.decided(min(own) >= 2, test="min over tasks of heads serving only it >= 2",
                         tolerance_source="exact count", where=wh, prediction=2, prediction_text=ptxt,
                         measured=min(own), reason="" if min(own) >= 2 else f"a task has {min(own)} head(s) of its own")


def summary(a):
    rows = [f"{'H':>3} {'seed':>4} {'MSE/var t1':>10} {'MSE/var t2':>10} {'zero-sum t1,t2':>15} "
            f"{'Γ on-support':>14} {'Γ off max':>11}  mu_h (task1, task2)"]
    for i, H in enumerate(a["H"].values):
        for j, s in enumerate(a["seed"].values):
            mu = a["mu"].values[i, j][:H]
            rows.append(f"{H:>3} {s:>4} {a['final_val_mse_per_task'].values[i, j, 0]:>10.4f} "
                        f"{a['final_val_mse_per_task'].values[i, j, 1]:>10.4f} "
                        f"{a['zero_sum_ratio'].values[i, j, 0]:>7.3f},{a['zero_sum_ratio'].values[i, j, 1]:<7.3f} "
                        f"{a['Gamma_on_support'].values[i, j, 0]:>6.3f},{a['Gamma_on_support'].values[i, j, 1]:<7.3f} "
                        f"{a['Gamma_off_support_max'].values[i, j].max():>11.3f}  "
                        + " ".join(f"({m[0]:+.2f},{m[1]:+.2f})" for m in mu))
    rows.append(f"theory (debiased GD with Gamma*_n): MSE/var {', '.join(f'{r:.4f}' for r in a['theory_task_risk'].values)}; "
                f"Gamma*_n on the support {float(a['theory_Gamma_star_diag'].values[0].max()):.3f}")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    sys.exit(main())
