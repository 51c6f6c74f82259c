"""``python -m studies.icl length``: length generalisation (notes icl_regression §7, §11 figure 7,
§13.7; sweep S3) of the models of a finished ``train`` store, and of a linear-attention baseline
(softmax replaced by s/L_train, a fixed normalisation; reconstructed [?]) trained here at
L_train, at test lengths L'.

The linear baseline's training keeps its checkpoint inside this store (group
``linear_checkpoint``, the shared runner of :mod:`studies.icl._training`); the test-length grid
is a resumable sweep (L', rep). What the analysis needs of the models and of the baseline (their
learned omega, mu, eta, validation logs; :data:`INPUTS`) is written into the store beside the
sweep's data and listed in its layout, so the store re-derives its claims on its own (the
parameters d, L_train, sigma2 of the models are stored with the run's).

Claims (predictions from :mod:`theory.icl_regression` for the models' d, L_train, sigma2 and
their learned omega, mu; the claims about a trained model are "not tested" when that model's own
training had not settled -- the gate of ``train``, on its logged validation MSE):

* ``softmax_exact`` [H, seed]: at every L' the trained model's MSE is the exact finite-L' risk of
  its softmax kernel (the antisymmetric pair for H >= 2, the single head for H = 1) at its
  learned parameters (z SE + the declared 0.01 model error of notes icl_regression §13.7; worst L'
  shown);
* ``softmax_generalises`` [H, seed]: the MSE at the longest L' (>= 2 L_train) is below the MSE at
  L_train, as the exact kernel risks predict;
* ``linear_blows_up`` [seed]: the linear baseline's MSE at every L' >= 2 L_train exceeds its MSE
  at L_train, as GD with the step rescaled by L'/L_train predicts
  (:func:`theory.icl_regression.linear_baseline_risk`); "not tested" while the baseline's own
  training has not settled at the claim's resolution (its learned step is then not the stage's;
  notes icl_regression §13.11);
* ``multihead_beats_single`` [H, seed]: the H-head model beats the single head at every L'
  where the exact kernel risks say so.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from sim import icl_regression as sim
from studies.claims import ClaimSpec, worst_of, z_family
from studies.cli import PAIR_RATE, Part, UsageError, check_resources, positive_int, run_params, run_study_sweep
from studies.icl import _common as C
from studies.icl._training import train_runs
from studies.icl.train import pair_parameters
from studies.sweep import Sweep, SweepStore, open_result, store_attrs
from theory import icl_regression as th

STUDY = "icl_length"
DESCRIPTION = ("Length generalisation of the models of a finished 'icl train' store and of a linear-attention "
               "baseline, at test lengths L'.")
EXAMPLES = """\
examples:
  python -m studies.icl length                      # needs results/icl_train.zarr (run train first)
  python -m studies.icl length --models results/icl_train.zarr --L-test 10..100:5,200,400
"""
DEFAULTS = {"models": "results/icl_train.zarr", "L_test": "10..100:5,200,400", "prompts": 20000, "reps": 10,
            "linear_steps": 20000, "linear_H": 1}
QUICK = {"L_test": "10,40,100,400", "prompts": 2000, "reps": 4, "linear_steps": 300}
PRESETS: dict = {}
LINEAR_CHECKPOINT = "linear_checkpoint"
INPUTS = {  # what the analysis reads of the models (--models) and of the trained baseline: name -> dims
    "linear_W": ("seed", "lhead", "row", "col"), "linear_U": ("seed", "lhead", "row"), "linear_eta": ("seed",),
    "linear_train_steps": (), "linear_val_mse": ("seed",), "linear_val_log": ("seed", "lstep"),
    "model_omega": ("H", "seed", "mhead"), "model_mu": ("H", "seed", "mhead"), "model_exists": ("H", "seed", "mhead"),
    "softmax_eta": ("H", "seed"), "model_val_log": ("H", "seed", "mstep"), "model_val_se": ("H", "seed")}

S = C.SOURCE
EXACT = ClaimSpec("icl_length.softmax_exact",
                  f"{S}: length generalisation of softmax attention (notes icl_regression §7, §13.7)",
                  "At every test length the trained model's MSE is the exact risk of its softmax kernel at its learned "
                  "parameters.")
GEN = ClaimSpec("icl_length.softmax_generalises",
                f"{S}: softmax normalisation adapts to L' (notes icl_regression §7, §13.7)",
                "The trained softmax model is better at the longest test length than at its training length.")
BLOW = ClaimSpec("icl_length.linear_blows_up", f"{S}: the fixed-normalisation linear model does not generalise "
                                               "(notes icl_regression §7, §13.7)",
                 "The linear-attention baseline is worse at every L' >= 2 L_train than at L_train: it is GD whose "
                 "step grows like L'/L_train.")
BEATS = ClaimSpec("icl_length.multihead_beats_single", f"{S}: multi-head beats single-head at every length "
                                                       "(notes icl_regression §13.6-7)",
                  "The H-head model has a lower MSE than the single head at every test length where the exact "
                  "kernel risks say so.")


def add_arguments(p) -> None:
    p.add_argument("--models", type=Path, default=None,
                   help=f"store written by 'python -m studies.icl train' (default {DEFAULTS['models']})")
    p.add_argument("--L-test", dest="L_test", type=C.ints, default=None, metavar="RANGE",
                   help=f"test lengths (default {DEFAULTS['L_test']}; --quick {QUICK['L_test']})")
    p.add_argument("--prompts", type=positive_int, default=None,
                   help=f"test prompts per length (default {DEFAULTS['prompts']}; --quick {QUICK['prompts']})")
    p.add_argument("--reps", type=positive_int, default=None,
                   help=f"replicate blocks (default {DEFAULTS['reps']}; --quick {QUICK['reps']})")
    p.add_argument("--linear-steps", type=positive_int, default=None,
                   help=f"Adam steps of the linear-attention baseline (default {DEFAULTS['linear_steps']}; "
                        f"--quick {QUICK['linear_steps']})")
    p.add_argument("--linear-H", type=positive_int, default=None,
                   help=f"heads of the linear baseline (default {DEFAULTS['linear_H']})")


def validate(args) -> None:
    if min(args.L_test) < 2 or max(args.L_test) > 5000:
        raise UsageError("--L-test: lengths must be in 2..5000")
    if args.reps < 2 or args.prompts % args.reps:
        raise UsageError("--reps must be >= 2 and divide --prompts")
    if args.linear_steps % 100:
        raise UsageError("--linear-steps must be a multiple of 100")
    n_per = args.prompts // args.reps
    check_resources(f"{args.prompts} test prompts of length up to {max(args.L_test)}",
                    memory=8.0 * 8 * n_per * max(args.L_test) * 8,
                    work_s=args.prompts * sum(args.L_test) * 8 * 8 * 16 / PAIR_RATE)
    models = Path(args.models)
    if not (models / "zarr.json").exists():
        raise UsageError(f"--models {models}: no trained models there; run 'python -m studies.icl train' first "
                         "(or pass --models PATH)")
    import zarr

    attrs = dict(zarr.open_group(str(models), mode="r").attrs)
    if attrs.get("study") != "icl_train" or not attrs.get("train_complete"):
        raise UsageError(f"--models {models} is not a finished 'icl train' store")
    args.models_attrs = attrs
    C.check_in_process(args)


def main(argv=None) -> int:
    return C.sub_main(STUDY, argv)


def _length_cell(cell, *, W, U, nh, Wl, Ul, nhl, task, key, n_per, L_train, device="cpu"):
    Lt = int(cell.coords["L_test"])
    rep = int(cell.coords["rep"])
    Hn, S_ = W.shape[:2]
    Wf = W.reshape((Hn * S_,) + W.shape[2:])
    Uf = U.reshape((Hn * S_,) + U.shape[2:])
    sq = sim.evaluate_sq_errors(Wf, Uf, nh.reshape(-1), "softmax", 0.0, key, task, n_per, Lt,
                                stream=sim.STREAM_TEST, t=Lt, first=rep * n_per, device=device)[..., 0]
    sql = sim.evaluate_sq_errors(Wl, Ul, nhl, "linear", 1.0 / L_train, key, task, n_per, Lt,
                                 stream=sim.STREAM_TEST, t=Lt, first=rep * n_per, device=device)[..., 0]
    return {"mse_softmax": sq.mean(1).reshape(Hn, S_), "m2_softmax": (sq**2).mean(1).reshape(Hn, S_),
            "mse_linear": sql.mean(1), "m2_linear": (sql**2).mean(1)}


@dataclass
class InputSweep(Sweep):
    """A sweep whose store also holds ``inputs`` (name -> dims): arrays its runner writes beside
    the cells (what the analysis needs of other stores), listed with the variables in the store's
    layout, so the analysis write keeps them as data."""

    inputs: dict = field(default_factory=dict)

    @property
    def layout_json(self) -> str:
        return json.dumps({"variables": {**{k: list(v) for k, v in self.variables.items()},
                                         **{k: list(v) for k, v in self.inputs.items()}},
                           "cell_dims": list(self.cell_dims)}, sort_keys=True)


@dataclass
class Models:
    """The trained models of a finished ``train`` store (their last step)."""

    path: Path
    d: int
    L_train: int
    sigma2: float
    W: np.ndarray  # (H, seed, head, D, D)
    U: np.ndarray
    n_heads: np.ndarray
    Hs: np.ndarray
    seeds: np.ndarray
    params_json: str
    store: xr.Dataset

    @classmethod
    def read(cls, path, attrs) -> "Models":
        task_p = json.loads(attrs["task"])
        mds = open_result(path)
        return cls(Path(path), int(attrs["d"]), int(attrs["L"]), float(task_p["sigma2"]),
                   mds["W"].isel(step=-1).values, mds["U"].isel(step=-1).values, mds["n_heads"].values,
                   mds["H"].values, mds["seed"].values, attrs.get("params_json"), mds)

    @property
    def digest(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.W).tobytes()
                              + np.ascontiguousarray(self.U).tobytes()).hexdigest()[:16]

    def inputs(self) -> xr.Dataset:
        """The models' part of :data:`INPUTS`: learned omega, mu, eta and validation logs."""
        m = sim.pattern_metrics(self.W, self.U, self.d)
        exists = self.store["head_exists"].values
        mu_m = np.where(exists, m["mu"], 0.0)
        ds = xr.Dataset(coords={"H": self.Hs, "seed": self.seeds, "mhead": np.arange(self.W.shape[2]),
                                "mstep": self.store["step"].values})
        ds["model_omega"] = (("H", "seed", "mhead"), m["omega"])
        ds["model_mu"] = (("H", "seed", "mhead"), mu_m)
        ds["model_exists"] = (("H", "seed", "mhead"), exists)
        ds["softmax_eta"] = (("H", "seed"), (mu_m * m["omega"]).sum(-1))
        ds["model_val_log"] = (("H", "seed", "mstep"), self.store["val_mse"].values[..., 0],
                               {"long_name": "the models' validation MSE during their training (from --models)"})
        ds["model_val_se"] = (("H", "seed"), C.block_mean_se(self.store["final_val_blocks"].values[..., 0])[1])
        return ds


def _linear_inputs(trainer, logs, blocks, steps, d, seeds) -> xr.Dataset:
    """The trained baseline's part of :data:`INPUTS`."""
    Wl, Ul = trainer.merged()
    ml = sim.pattern_metrics(Wl, Ul, d)
    ds = xr.Dataset(coords={"seed": seeds, "lhead": np.arange(trainer.H_max), "row": np.arange(d + 1),
                            "col": np.arange(d + 1), "lstep": np.asarray(logs.steps, dtype=np.int64)})
    ds["linear_W"] = (("seed", "lhead", "row", "col"), Wl, {"long_name": "merged KQ of the linear baseline"})
    ds["linear_U"] = (("seed", "lhead", "row"), Ul[..., 0])
    ds["linear_eta"] = (("seed",), (ml["mu"] * ml["omega"]).sum(-1),
                        {"long_name": "sum_h mu_h omega_h of the linear baseline"})
    ds["linear_train_steps"] = ((), int(steps))
    ds["linear_val_mse"] = (("seed",), blocks[..., 0].mean(-1), {"long_name": "linear baseline MSE at L_train"})
    ds["linear_val_log"] = (("seed", "lstep"), np.asarray(logs.val_mse)[:, :, 0].T,
                            {"long_name": "linear baseline validation MSE during its training"})
    return ds


def make_sweep(args, models: Models) -> InputSweep:
    """The (L', rep) sweep; its cell function is set by the runner once the baseline is trained."""
    lin_params = {"H": args.linear_H, "seeds": len(models.seeds), "L": models.L_train, "d": models.d,
                  "sigma2": models.sigma2, "batch": 256, "lr": 1e-3, "seed": args.seed, "kind": "linear",
                  "normalisation": "1/L_train", "steps": args.linear_steps}
    L_test = np.asarray(args.L_test, dtype=np.int64)
    params = {"L_test": L_test.tolist(), "prompts": args.prompts, "reps": args.reps, "models": str(args.models),
              "models_digest": models.digest, "models_params": models.params_json, "linear": lin_params,
              "d": models.d, "L_train": models.L_train, "sigma2": models.sigma2, **C.device_params(args.device)}
    return InputSweep(
        study=STUDY, cell_dims={"L_test": L_test, "rep": np.arange(args.reps)},
        variables={"mse_softmax": ("L_test", "rep", "H", "seed"), "m2_softmax": ("L_test", "rep", "H", "seed"),
                   "mse_linear": ("L_test", "rep", "seed"), "m2_linear": ("L_test", "rep", "seed")},
        coords={"H": models.Hs, "seed": models.seeds}, params=params, run_cell=None, root_seed=args.seed,
        attrs={"substudy": "length", "figure_kind": "length", "device": C.device_attr(args.device), "d": models.d,
               "L_train": models.L_train, "sigma2": models.sigma2, "prompts_per_rep": args.prompts // args.reps,
               "models_store": str(args.models),
               "linear_baseline": "same one-layer model with softmax replaced by s/L_train (fixed normalisation, "
                                  "reconstructed [?]); trained here with Adam 1e-3, B = 256, at L_train; its "
                                  f"checkpoint is the group {LINEAR_CHECKPOINT}",
               "convention": "test prompts: Philox stream 2 at t = L_test, shared by all models (common random "
                             "numbers)"},
        inputs=INPUTS)


def write_inputs(path, inputs: xr.Dataset) -> None:
    """Write :data:`INPUTS` into the store beside the sweep's data, keeping the store's own
    attributes (``to_zarr(mode="a")`` would replace them with the dataset's)."""
    inputs = inputs.copy()
    inputs.attrs = store_attrs(path) or {}
    inputs.to_zarr(str(path), mode="a", consolidated=False)


def parts(args) -> list[Part]:
    models = Models.read(args.models, args.models_attrs)
    sweep = make_sweep(args, models)
    task = sim.isotropic_task(models.d, models.sigma2)
    n_per = args.prompts // args.reps
    key = sim.data_key(np.random.SeedSequence(args.seed, spawn_key=(11,)))

    def runner(path, args_, executor):
        SweepStore(path, sweep).open(overwrite=args.overwrite)  # the identity check, before any training
        log_every = 100 if args.linear_steps % 1000 else 1000
        runs = []
        for s in models.seeds:
            ds_, is_ = C.seed_seqs(args.seed, s, args.linear_H)
            runs.append(sim.RunSpec(args.linear_H, task, ds_, is_, kind="linear"))
        trainer, logs, blocks, info = train_runs(
            runs, L=models.L_train, batch=256, lr=1e-3, steps=args.linear_steps, log_every=log_every,
            ckpt_every=5 * log_every, n_val=1000, n_final=2000, path=path, group=LINEAR_CHECKPOINT,
            progress=not args.no_progress, label="linear baseline", device=args.device, repair=args.repair)
        Wl, Ul = trainer.merged()
        sweep.run_cell = functools.partial(_length_cell, W=models.W, U=models.U, nh=models.n_heads, Wl=Wl, Ul=Ul,
                                           nhl=trainer.n_heads, task=task, key=key, n_per=n_per,
                                           L_train=models.L_train, device=args.device)
        kw = {"executor": executor} if executor is not None else {}
        ds, sinfo = run_study_sweep(sweep, args, path, **kw)
        inputs = xr.merge([_linear_inputs(trainer, logs, blocks, args.linear_steps, models.d, models.seeds),
                           models.inputs()])
        write_inputs(path, inputs.drop_vars(["H", "seed"]))
        res = info["resumed_from"]
        print(f"linear baseline: {args.linear_steps} steps ({'resumed at ' + str(res) if res else 'trained'}; "
              f"wall time {info['wall_s']:.1f} s)", flush=True)
        return ds.drop_vars(list(INPUTS), errors="ignore").merge(inputs), sinfo

    return [Part("", run=runner)]


def kernel_risks(Hs, omega, mu, exists, Lt, d, sigma2):
    """(L', H, seed) exact kernel risks at the learned parameters (H >= 2: as an antisymmetric
    pair; NaN when a model has no active head)."""
    out = np.full((len(Lt), len(Hs), omega.shape[1]), np.nan)
    for i, H in enumerate(Hs):
        for j in range(omega.shape[1]):
            if int(H) == 1:
                w, m, heads = abs(omega[i, j, 0]), abs(mu[i, j, 0]) * np.sign(omega[i, j, 0] * mu[i, j, 0]), 1
            else:
                _, w, m = pair_parameters(omega[i, j], mu[i, j], exists[i, j])
                heads = 2
            if not (w > 0 and np.isfinite(m)):
                continue
            for k, L in enumerate(Lt):
                out[k, i, j] = th.kernel_risk(w, m, d, int(L), sigma2, heads=heads)
    return out


def analyze(ds):
    """Pooled test MSEs against the exact risks at the learned parameters, and the claims (the
    models' d, L_train, sigma2 and the prompts per replicate are the run's stored parameters;
    the learned parameters are the store's :data:`INPUTS`)."""
    p = run_params(ds)
    d, L_train, sigma2 = int(p["d"]), int(p["L_train"]), float(p["sigma2"])
    out, res = _pooled(ds, int(p["prompts"]) // int(p["reps"]))
    _theory_variables(out, ds, d, L_train, sigma2)
    return out, _claims(ds, out, res, L_train)


def _pooled(ds, n_per_rep):
    """Pooled MSE and SE of the softmax models and of the baseline at each test length."""
    out = xr.Dataset(coords={"L_test": ds["L_test"], "H": ds["H"], "seed": ds["seed"]})
    res = {}
    for k in ("softmax", "linear"):
        mean = np.moveaxis(ds[f"mse_{k}"].values, 1, -1)  # rep last
        m2 = np.moveaxis(ds[f"m2_{k}"].values, 1, -1)
        res[k] = C.pooled(mean, m2, n_per_rep)
        dims = ("L_test", "H", "seed") if k != "linear" else ("L_test", "seed")
        out[f"{k}_mse"] = (dims, res[k][0])
        out[f"{k}_se"] = (dims, res[k][1])
    return out, res


def _theory_variables(out, ds, d, L_train, sigma2) -> None:
    """The exact risks at the learned parameters (kernel, debiased GD, the baseline's GD with
    the rescaled step) and the Bayes risk's large-L limit."""
    Lt = ds["L_test"].values.astype(int)
    Hs = [int(h) for h in ds["H"].values]
    eta = ds["softmax_eta"].values
    out["theory_dgd_risk"] = (("L_test", "H", "seed"), th.dgd_risk(eta[None], d, Lt[:, None, None].astype(float), sigma2),
                              {"long_name": "exact debiased-GD risk at the learned eta"})
    kr = kernel_risks(Hs, ds["model_omega"].values, ds["model_mu"].values, ds["model_exists"].values, Lt, d, sigma2)
    out["theory_kernel_risk"] = (("L_test", "H", "seed"), kr, {
        "long_name": "exact risk of the softmax kernel at the learned parameters (H >= 2: the antisymmetric pair)"})
    lin_th = th.linear_baseline_risk(ds["linear_eta"].values[None], L_train, Lt[:, None], d, sigma2)
    out["theory_linear_risk"] = (("L_test", "seed"), lin_th,
                                 {"long_name": "GD risk with step eta_lin L'/L_train (fixed 1/L_train normalisation)"})
    out["theory_bayes_mp"] = (("L_test",), th.ridge_bayes_risk_mp(sigma2, d / Lt.astype(float)))


def _model_gates(ds, Hs, seeds) -> dict:
    """The models' own stage (as in 'train'): the exact kernel describes a model once its
    training has settled."""
    zm, _ = z_family(len(Hs) * len(seeds))
    return {(i, j): (C.settled(ds["mstep"].values, ds["model_val_log"].values[i, j],
                               zm * float(ds["model_val_se"].values[i, j]) + C.MODEL_ALLOWANCE,
                               what="validation MSE of the trained model (--models)")
                     if "model_val_log" in ds else (True, 0.0, ""))
            for i in range(len(Hs)) for j in range(len(seeds))}


def _claims(ds, out, res, L_train) -> list:
    Lt = ds["L_test"].values.astype(int)
    Hs = [int(h) for h in ds["H"].values]
    seeds = [int(s) for s in ds["seed"].values]
    gate = _model_gates(ds, Hs, seeds)
    kr = out["theory_kernel_risk"].values
    claims = _exact_claims(Lt, Hs, seeds, gate, res["softmax"], kr)
    claims += _generalises_claims(Lt, Hs, seeds, gate, res["softmax"], kr, L_train)
    claims += _blow_up_claims(ds, Lt, seeds, res["linear"], out["theory_linear_risk"].values, L_train)
    return claims + _beats_claims(Lt, Hs, seeds, gate, res["softmax"], kr)


def _exact_claims(Lt, Hs, seeds, gate, soft, kr) -> list:
    """softmax_exact per model: its MSE at every L' against its exact kernel risk (worst L')."""
    sm, sse = soft
    z, zs = z_family(len(Lt) * len(Hs) * len(seeds))
    claims = []
    for i, H in enumerate(Hs):
        for j, s in enumerate(seeds):
            wh = C.where(H=H, seed=s)
            if not gate[i, j][0]:
                claims.append(EXACT.not_tested(gate[i, j][2], where=wh, prediction_text="the exact kernel risk at "
                                                                                        "every L'"))
                continue
            members = [EXACT.equal(sm[k, i, j], sse[k, i, j], kr[k, i, j], z=z, z_source=zs,
                                   allowance=C.MODEL_ALLOWANCE, allowance_source=C.MODEL_ALLOWANCE_SOURCE,
                                   where=f"L'={int(L)}", prediction_text=f"{kr[k, i, j]:.4g} (exact kernel risk)")
                       for k, L in enumerate(Lt)]
            claims.append(worst_of(members, where=wh, every="L'"))
    return claims


def _generalises_claims(Lt, Hs, seeds, gate, soft, kr, L_train) -> list:
    """softmax_generalises per model: MSE(longest L') below MSE(L_train), as the exact risks say."""
    sm, sse = soft
    itr = int(np.argmin(np.abs(Lt - L_train)))
    far = Lt >= 2 * L_train
    zg, zgs = z_family(len(Hs) * len(seeds))
    claims = []
    for i, H in enumerate(Hs):
        for j, s in enumerate(seeds):
            wh = C.where(H=H, seed=s)
            if not far.any() or not gate[i, j][0]:
                claims.append(GEN.not_tested(gate[i, j][2] or f"no test length >= 2 L_train = {2 * L_train}",
                                             where=wh, prediction_text="MSE(L'max) < MSE(L_train)"))
                continue
            k = int(np.argmax(Lt))
            pred = kr[k, i, j] - kr[itr, i, j]
            claims.append(GEN.exceeds(sm[k, i, j] - sm[itr, i, j], math.hypot(sse[k, i, j], sse[itr, i, j]), 0.0,
                                      z=zg, z_source=zgs, where=wh, below=not pred > 0,
                                      prediction_text=f"MSE(L'={int(Lt[k])}) - MSE(L'={int(Lt[itr])}) "
                                                      f"{'<' if not pred > 0 else '>'} 0 (exact: {pred:+.3g})"))
    return claims


def _blow_up_claims(ds, Lt, seeds, lin, lin_th, L_train) -> list:
    """linear_blows_up per seed: the baseline worse at every L' >= 2 L_train than at L_train."""
    lm, lse = lin
    itr = int(np.argmin(np.abs(Lt - L_train)))
    far = Lt >= 2 * L_train
    zl, zls = z_family(max(1, int(far.sum())) * len(seeds))
    ptxt = "MSE(L') > MSE(L_train) for L' >= 2 L_train"
    claims = []
    for j, s in enumerate(seeds):
        wh = C.where(seed=s)
        if not far.any():
            claims.append(BLOW.not_tested(f"no test length >= 2 L_train = {2 * L_train}", where=wh,
                                          prediction_text=ptxt))
            continue
        members = []
        for k in np.nonzero(far)[0]:
            pred = lin_th[k, j] - lin_th[itr, j]
            members.append(BLOW.exceeds(lm[k, j] - lm[itr, j], math.hypot(lse[k, j], lse[itr, j]), 0.0, z=zl,
                                        z_source=zls, where=f"L'={int(Lt[k])}", below=not pred > 0,
                                        prediction_text=f"MSE(L') - MSE(L_train) {'>' if pred > 0 else '<'} 0 "
                                                        f"(GD with step eta L'/L_train: {pred:+.3g})"))
        claim = worst_of(members, where=wh, every="L' >= 2 L_train")
        if "linear_val_log" in ds:  # the baseline's training must have settled at the claim's resolution (§13.11)
            ok, _, why = C.settled(ds["lstep"].values, ds["linear_val_log"].values[j],
                                   claim.tolerance if claim.outcome != "not tested" else C.MODEL_ALLOWANCE,
                                   what="validation MSE of the linear baseline", longer="--linear-steps")
            if not ok:
                claim = BLOW.not_tested(why, where=wh, prediction_text=ptxt)
        claims.append(claim)
    return claims


def _beats_claims(Lt, Hs, seeds, gate, soft, kr) -> list:
    """multihead_beats_single per H >= 2 and seed, at every L' (worst shown)."""
    if 1 not in Hs:
        return []
    sm, sse = soft
    i1 = Hs.index(1)
    multi = [i for i, H in enumerate(Hs) if H >= 2]
    zb, zbs = z_family(max(1, len(multi) * len(seeds) * len(Lt)))
    claims = []
    for i in multi:
        for j, s in enumerate(seeds):
            if not (gate[i1, j][0] and gate[i, j][0]):
                claims.append(BEATS.not_tested(gate[i1, j][2] or gate[i, j][2], where=C.where(H=Hs[i], seed=s),
                                               prediction_text="MSE(H=1) > MSE(H) at every L'"))
                continue
            members = []
            for k, L in enumerate(Lt):
                pred = kr[k, i1, j] - kr[k, i, j]
                members.append(BEATS.exceeds(sm[k, i1, j] - sm[k, i, j], math.hypot(sse[k, i1, j], sse[k, i, j]),
                                             0.0, z=zb, z_source=zbs, where=f"L'={int(L)}", below=not pred > 0,
                                             prediction_text=f"MSE(H=1) - MSE(H={Hs[i]}) "
                                                             f"{'>' if pred > 0 else '<'} 0 (exact: {pred:+.3g})"))
            claims.append(worst_of(members, where=C.where(H=Hs[i], seed=s), every="L'"))
    return claims


def summary(a):
    Hs = list(a["H"].values)
    rows = [f"{'L_test':>6} " + " ".join(f"{'H=' + str(h):>9}" for h in Hs)
            + " ".join(f"{'exact H=' + str(h):>11}" for h in Hs) + f" {'linear':>9} {'GD(L/Lt)':>9}"
            + f" {'Bayes MP':>9}   (mean over seeds)"]
    for j, L in enumerate(a["L_test"].values):
        sm = a["softmax_mse"].values[j].mean(-1)
        kr = np.nanmean(a["theory_kernel_risk"].values[j], axis=-1)
        rows.append(f"{L:>6} " + " ".join(f"{v:>9.4f}" for v in sm) + " ".join(f"{v:>11.4f}" for v in kr)
                    + f" {a['linear_mse'].values[j].mean():>9.4f} {a['theory_linear_risk'].values[j].mean():>9.4f}"
                    f" {a['theory_bayes_mp'].values[j]:>9.4f}")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    sys.exit(main())
