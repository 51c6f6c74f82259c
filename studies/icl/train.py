"""``python -m studies.icl train``: one-layer multi-head softmax attention trained by Adam on
fresh prompts (notes icl_regression §2-§4, §12 S1; checks §13.5-6, §13.11), runs H x seed batched.

Claims (each per run ``where="H=4,seed=0"``, declared in :mod:`studies.icl._train_claims`; every
prediction is :mod:`theory.icl_regression`'s for the run's d, L, sigma2):

* H = 1 -- ``single_head_optimum``: the final MSE is the exact finite-L optimum of one softmax
  head (:func:`theory.icl_regression.kernel_optimum`, 0.404 at d = 5, L = 40);
  ``single_head_omega``: ``|omega|`` lies in the range the loss identifies around the exact optimum
  omega* (0.518 there; the paper's trained 0.52); ``single_head_mu``: ``|mu|`` is the best value
  weight for the learned omega;
* H >= 2 -- ``multihead_optimum``: the final MSE is the exact optimum of the antisymmetric
  softmax pair (= debiased GD at its optimal step up to O(omega^2)); ``multihead_eta``: the
  learned step eta = sum_h mu_h omega_h is the pair's best step at its learned omega (-> the
  DGD optimal step 1/(1 + d(1+sigma2)/L) as omega -> 0); ``multihead_omega``: the learned
  omega lies where the exact profiled pair risk is within the claim's resolution of its
  minimum (the profile is flat in omega); ``zero_sum``, ``signs`` (the DGD structure of the OV),
  ``kq_diagonal``, ``kq_homogeneous``, ``ov_last_entry`` (the pattern checks of §13.5, their
  bounds labelled "declared number", on the two head groups the pair reduction merges: the
  ``|mu|``-weighted mean KQ and the summed OV of the positive and of the negative heads -- the
  individual heads of a group are not identifiable, §4);
* ``multihead_beats_single`` per H >= 2 and seed: the H = 1 MSE exceeds the H-head MSE, as
  the exact optima predict (paired: runs of one seed share their validation prompts).

The training gate (notes icl_regression §13.11): every claim is "not tested" unless the run has
reached its stage -- its validation MSE settled at the risk claims' resolution, its OV reads the
label (:func:`studies.icl._common.label_gate`) and, for H >= 2, its heads have split into
positive and negative groups (:func:`studies.icl._common.split_gate`) -- and the quantity the
claim is about has stopped moving at the resolution of the claim's own tolerance
(:func:`studies.icl._common.settled`: its rate over the last quarter of the run, projected over
a run as long as this one).

Risk tolerances: z standard errors of the final validation MSE (20 blocks; z from the claim
family's Bonferroni count) plus the declared model error 0.01 of §13.7; the omega / mu / eta
tolerances are the ranges where the exact risk stays within that same resolution of its
minimum (a loss measured to delta identifies a parameter no better); each claim declares the
effect it must resolve (§13.12).

Dataset: raw ``W, U (H, seed, step, head, row, col|out)``, ``train_loss``, ``val_mse``,
``final_val_blocks``, ``n_heads``, ``head_exists``; analysis ``final_*`` per-head metrics,
``active``, ``kept``, ``omega(t)``, ``mu(t)``, ``sum_mu``, ``eta``, ``final_val_mse`` / ``_se``,
``theory_*`` and the claims.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from sim import icl_regression as sim
from studies.cli import Part, UsageError, run_params
from studies.icl import _common as C
from studies.icl._heads import Optima, _masked_mean, group_patterns, head_stats, pair_parameters  # noqa: F401
from studies.icl._train_claims import claims
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
def analyze(ds: xr.Dataset):
    """Pattern metrics, theory and claims of a ``train`` store (a pure function of it: d, L and
    sigma2 are the run's stored parameters)."""
    p = run_params(ds)
    d, L, sigma2 = int(p["d"]), int(p["L"]), float(p["sigma2"])  # the run's, not its task's self-description
    m, active, kept, traj = head_stats(ds, d)
    out = _head_variables(ds, d, m, active, kept, traj)
    opt = Optima.of(d, L, sigma2)
    _theory_variables(out, ds, m, opt)
    return out, claims(ds, out, m, active, opt)


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
