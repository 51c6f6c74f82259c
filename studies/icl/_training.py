"""The shared training runner of ``train``, ``noniso`` and ``multitask`` (and of the linear
baseline of ``length``).

A training sub-study is one :class:`~studies.cli.Part` whose ``run`` is
``runner(path, args, executor) -> (raw dataset, info)``:

* the store's identity (:class:`~studies.sweep.StoreSpec`, checked by
  :func:`~studies.sweep.open_store`) is the run's parameters *without* ``steps``, so raising
  ``--steps`` on an existing store continues its training; ``steps`` is recorded in the attrs
  (with ``train_complete``) and a store of other parameters needs ``--overwrite``;
* the checkpoint (parameters, Adam's moments, step, data keys, the logs so far) lives *inside*
  the store, as the group ``checkpoint``, rewritten whole and atomically every
  ``--checkpoint-every`` steps with the one before kept (:mod:`studies.icl._checkpoint`): an
  interrupted run resumes from it and ends bit for bit identical to an uninterrupted one (the
  data of step t is a pure function of the run's key and t); a damaged checkpoint is a one-line
  error, and ``--repair`` restores it to the last intact one (or trains from the start);
* the raw variables (``RAW_VARS``) are written to the store root once training is complete; a
  damaged one is rebuilt from the final checkpoint with ``--repair``.
"""
from __future__ import annotations

import json
import time

import numpy as np
import xarray as xr

from sim import icl_regression as sim
from studies.cli import PAIR_RATE, Part, UsageError, check_resources, float_type, positive_int
from studies.icl._common import device_attr, device_params
from studies.icl._checkpoint import check_root, load_checkpoint, save_checkpoint
from studies.sweep import StoreSpec, open_result, open_store, store_attrs

RAW_VARS = ("W", "U", "train_loss", "val_mse", "final_val_blocks", "n_heads", "head_exists")
CHECKPOINT = "checkpoint"
SEED_POLICY = ("run data key = SeedSequence(root_seed, spawn_key=(seed,)).generate_state(2, uint64) (shared by "
               "runs of the same seed: common random numbers); init = SeedSequence(root_seed, spawn_key=(seed, 1, H)); "
               "prompt b of step t = Philox4x64-10(key, counter=(block, b, t, stream)); streams 0 train, "
               "1 validation, 2 test")
TRAIN_DEFAULTS = {"batch": 256, "lr": 1e-3, "log_every": 1000, "val_prompts": 10000, "final_prompts": 100000}
TRAIN_QUICK = {"log_every": 100, "val_prompts": 1000, "final_prompts": 4000}


def add_training_args(sp, defaults: dict, quick: dict) -> None:
    """The options of a training sub-study (left at None: :func:`studies.cli.apply_defaults`
    fills them from ``defaults`` / ``quick``)."""
    from studies.icl._common import ints

    sp.add_argument("--H", type=ints, default=None, metavar="LIST",
                    help=f"head counts, e.g. 1,2,4,8 or 1..8 (inclusive) (default {defaults['H']}; "
                         f"--quick {quick['H']})")
    sp.add_argument("--seeds", type=positive_int, default=None,
                    help=f"independent runs per configuration (default {defaults['seeds']})")
    sp.add_argument("--steps", type=positive_int, default=None,
                    help=f"Adam steps (default {defaults['steps']}; --quick {quick['steps']}); raising it on an "
                         "existing run continues it")
    sp.add_argument("--batch", type=positive_int, default=None, help="fresh prompts per step (default 256)")
    sp.add_argument("--lr", type=float_type(0.0, 1.0, lo_open=True, hi_open=True), default=None, help="Adam learning rate (default 1e-3)")
    sp.add_argument("--log-every", type=positive_int, default=None,
                    help="steps between logged weights / validation (default 1000; --quick 100)")
    sp.add_argument("--checkpoint-every", type=positive_int, default=None,
                    help="steps between checkpoints, a multiple of --log-every (default 5 x --log-every)")
    sp.add_argument("--val-prompts", type=positive_int, default=None,
                    help="fixed validation prompts at each log (default 10000; --quick 1000)")
    sp.add_argument("--final-prompts", type=positive_int, default=None,
                    help="fresh prompts for the final validation MSE (default 100000; --quick 4000)")


def validate_training(args, D: int) -> None:
    """Checks of the training options (after apply_defaults), D = the token dimension."""

    if args.checkpoint_every is None:
        args.checkpoint_every = 5 * args.log_every
    if args.workers > 1 or args.dask_local or args.scheduler:
        raise UsageError("training runs in one process (Numba threads; set NUMBA_NUM_THREADS); "
                         "--workers / --dask-local / --scheduler apply to estimators, ode and length")
    if min(args.H) < 1 or max(args.H) > 64:
        raise UsageError("--H: head counts must be in 1..64")
    if args.steps % args.log_every:
        raise UsageError(f"--steps ({args.steps}) must be a multiple of --log-every ({args.log_every})")
    if args.checkpoint_every % args.log_every:
        raise UsageError("--checkpoint-every must be a multiple of --log-every")
    if args.L < 2:
        raise UsageError("--L: prompts need at least 2 examples")
    if args.final_prompts < 20:
        raise UsageError("--final-prompts: at least 20 (the SE uses 20 blocks)")
    n_logs = args.steps // args.log_every + 1
    R = len(args.H) * args.seeds * (len(args.rho) if getattr(args, "rho", None) else 1)
    N = max(1, D - args.d)
    per_prompt = args.L * D * max(args.H) * (D + N + 2)  # multiply-adds of one prompt's forward pass
    check_resources(f"{R} runs x {max(args.H)} heads, batches of {args.batch} prompts of length {args.L}",
                    memory=8.0 * (n_logs * R * max(args.H) * D * (D + N) * 2 + 6 * R * max(args.batch, 1) * args.L * D
                                  + 2 * R * max(args.val_prompts, args.final_prompts // 20) * args.L * D),
                    work_s=3.0 * R * per_prompt * (args.steps * args.batch + (n_logs + 1) * args.val_prompts
                                                   + args.final_prompts) / PAIR_RATE)


def validate_training_device(args, D: int, N: int) -> None:
    if args.device == "gpu" and max(args.H) * D * (D + N) + 1 > 6144:
        raise UsageError("--device gpu: the trainer keeps a run's gradient in shared memory "
                         "(max H x D x (D + N) + 1 <= 6144 numbers); use fewer heads or a smaller --d")


def check_training(args, D: int) -> None:
    """Every check of a training sub-study's options (after the defaults, with the device
    resolved): :func:`validate_training` and the device's limits; ``D`` = the token dimension."""
    validate_training(args, D)
    validate_training_device(args, D, D - args.d)


class TrainLogs:
    """What training records every ``log_every`` steps (and what a checkpoint holds)."""

    FIELDS = ("steps", "W", "U", "train_loss", "val_mse")

    def __init__(self):
        self.steps, self.W, self.U, self.train_loss, self.val_mse = [], [], [], [], []

    def add(self, step, W, U, train_loss, val_mse):
        self.steps.append(int(step))
        self.W.append(np.asarray(W, dtype=float))
        self.U.append(np.asarray(U, dtype=float))
        self.train_loss.append(np.asarray(train_loss, dtype=float))
        self.val_mse.append(np.asarray(val_mse, dtype=float))

    def dataset(self) -> xr.Dataset:
        return xr.Dataset({
            "log_steps": (("log",), np.asarray(self.steps, dtype=np.int64)),
            "log_W": (("log", "run", "head", "row", "col"), np.asarray(self.W)),
            "log_U": (("log", "run", "head", "row", "out"), np.asarray(self.U)),
            "log_train_loss": (("log", "run"), np.asarray(self.train_loss)),
            "log_val_mse": (("log", "run", "out"), np.asarray(self.val_mse)),
        })

    @classmethod
    def from_dataset(cls, ds) -> "TrainLogs":
        lg = cls()
        lg.steps = [int(s) for s in ds["log_steps"].values]
        for k in ("W", "U", "train_loss", "val_mse"):
            setattr(lg, k, list(ds[f"log_{k}"].values))
        return lg


def _checkpoint(trainer, logs: TrainLogs, wall_s: float) -> xr.Dataset:
    st = trainer.state_dict()
    ds = logs.dataset() if logs.steps else xr.Dataset()
    ds["theta"] = (("run", "param"), np.asarray(st["theta"], dtype=float))
    ds["adam_m"] = (("run", "param"), np.asarray(st["adam_m"], dtype=float))
    ds["adam_v"] = (("run", "param"), np.asarray(st["adam_v"], dtype=float))
    ds["keys"] = (("run", "word"), np.asarray(st["keys"], dtype=np.uint64))
    ds["adam_t"] = ((), np.int64(st["adam_t"]))
    ds["step"] = ((), np.int64(st["step"]))
    ds["wall_s"] = ((), float(wall_s))
    ds.attrs["description"] = "training checkpoint: parameters, Adam state, data keys and the logs so far"
    return ds


def train_runs(runs, *, L, batch, lr, steps, log_every, ckpt_every, n_val, n_final, path, group=CHECKPOINT,
               progress=True, label="train", device="cpu", repair=False):
    """Train ``runs`` (batched) with their checkpoint in the group ``group`` of the store at
    ``path`` (which must exist and hold this run: :func:`studies.sweep.open_store`). Resumes
    from the checkpoint when there is one (:mod:`studies.icl._checkpoint`: a damaged one is a
    one-line error, or with ``repair`` restored to the last intact one); a checkpoint past
    ``steps`` is a usage error. Returns
    (trainer, logs, final per-block validation MSE (R, 20, N), info). ``device="gpu"``: the
    device trainer, advanced one log interval per host synchronisation."""
    from tqdm.auto import tqdm

    trainer = sim.BatchedTrainer(runs, L=L, batch=batch, lr=lr, device=device)
    logs = TrainLogs()
    wall0 = 0.0
    ck = load_checkpoint(path, group, repair=repair)
    if ck is not None:
        if int(ck["step"]) > steps:
            raise UsageError(f"{path}: its training checkpoint is at step {int(ck['step'])} > --steps {steps}; "
                             "pass a larger --steps, or --overwrite to start again")
        trainer.load_state_dict({k: ck[k].values for k in ("theta", "adam_m", "adam_v", "adam_t", "step", "keys")})
        if "log_steps" in ck:
            logs = TrainLogs.from_dataset(ck)
        wall0 = float(ck["wall_s"])
    resumed_from = trainer.step_count
    t0 = time.perf_counter()

    def val_mse():
        return trainer.evaluate(n_val, stream=sim.STREAM_VAL, t=0).mean(axis=1)  # (R, N)

    def save():
        save_checkpoint(path, group, _checkpoint(trainer, logs, wall0 + time.perf_counter() - t0))

    if trainer.step_count == 0 and not logs.steps:
        W, U = trainer.merged()
        logs.add(0, W, U, trainer.grads(t=0), val_mse())
    acc = np.zeros(trainer.R)
    bar = tqdm(total=steps, initial=trainer.step_count, desc=label, unit="step", disable=None if progress else True,
               leave=False, mininterval=1.0)
    try:
        while trainer.step_count < steps:
            if device == "gpu":  # up to the next log point, one synchronisation
                n = min(log_every - trainer.step_count % log_every, steps - trainer.step_count)
                acc += trainer.run_steps(n)
                bar.update(n)
            else:
                acc += trainer.step()
                bar.update(1)
            s = trainer.step_count
            if s % log_every == 0:
                W, U = trainer.merged()
                logs.add(s, W, U, acc / log_every, val_mse())
                acc[:] = 0.0
                if s % ckpt_every == 0 or s == steps:
                    save()
                bar.set_postfix_str("val " + " ".join(f"{v:.3f}" for v in logs.val_mse[-1][:, 0][:8]), refresh=False)
    finally:
        bar.close()
    if ck is None and trainer.step_count == resumed_from:  # nothing trained and nothing saved yet
        save()
    n_final = int(n_final)
    sq = trainer.evaluate(n_final, stream=sim.STREAM_VAL, t=1)  # fresh prompts (t = 1), not the log set
    blocks = sq[:, : (n_final // 20) * 20].reshape(trainer.R, 20, -1, trainer.N).mean(axis=2)
    info = {"resumed_from": resumed_from, "wall_s": wall0 + time.perf_counter() - t0,
            "session_s": time.perf_counter() - t0}
    return trainer, logs, blocks, info


def grid_runs(grid: dict, make_run):
    """Runs in C order over the grid dims; ``make_run(**point)`` -> RunSpec."""
    names = list(grid)
    return [make_run(**{n: grid[n][i] for n, i in zip(names, idx)})
            for idx in np.ndindex(*(len(v) for v in grid.values()))]


def raw_dataset(grid, runs, logs: TrainLogs, blocks, trainer) -> xr.Dataset:
    """Raw variables of a training sub-study, the run axis unfolded into the grid dims."""
    gdims = list(grid)
    gshape = tuple(len(v) for v in grid.values())
    steps = np.asarray(logs.steps, dtype=np.int64)
    Hm, D, N = trainer.H_max, trainer.D, trainer.N

    def unfold(a):
        a = np.moveaxis(np.asarray(a), 0, 1)  # (R, T, ...)
        return a.reshape(gshape + a.shape[1:])

    coords = {k: np.asarray(v) for k, v in grid.items()}
    coords.update({"step": steps, "head": np.arange(Hm), "row": np.arange(D), "col": np.arange(D),
                   "out": np.arange(N), "vblock": np.arange(blocks.shape[1])})
    nh = np.array([r.H for r in runs]).reshape(gshape)
    ds = xr.Dataset(coords=coords)
    ds["W"] = (gdims + ["step", "head", "row", "col"], unfold(logs.W), {
        "long_name": "merged KQ W_h = Q_hᵀK_h/sqrt(D) (temperature included): rows = query entries, "
                     "columns = key entries; zero for padded heads (head >= H)"})
    ds["U"] = (gdims + ["step", "head", "row", "out"], unfold(logs.U), {
        "long_name": "merged OV u_h = V_hᵀ O_h: row = value entry, out = output"})
    ds["train_loss"] = (gdims + ["step"], unfold(logs.train_loss), {
        "long_name": "mean batch MSE over the log interval ending at step (step 0: the first batch)"})
    ds["val_mse"] = (gdims + ["step", "out"], unfold(logs.val_mse), {
        "long_name": "MSE on the fixed validation prompts (stream 1, t = 0)"})
    ds["final_val_blocks"] = (gdims + ["vblock", "out"], blocks.reshape(gshape + blocks.shape[1:]), {
        "long_name": "final validation MSE on fresh prompts (stream 1, t = 1), in 20 equal blocks"})
    ds["n_heads"] = (gdims, nh.astype(np.int64))
    ds["head_exists"] = (gdims + ["head"], np.arange(Hm) < nh[..., None], {"description": "head < H (else padding)"})
    return ds


def _layout(gdims) -> dict:
    g = list(gdims)
    return {"variables": {"W": g + ["step", "head", "row", "col"], "U": g + ["step", "head", "row", "out"],
                          "train_loss": g + ["step"], "val_mse": g + ["step", "out"],
                          "final_val_blocks": g + ["vblock", "out"], "n_heads": g, "head_exists": g + ["head"]},
            "cell_dims": []}


def raw_names(grid) -> set:
    """The arrays of a training store's raw part: :data:`RAW_VARS` and their coordinates."""
    return set(RAW_VARS) | set(grid) | {"step", "head", "row", "col", "out", "vblock"}


def write_raw(path, raw: xr.Dataset, attrs: dict) -> None:
    """Replace the raw variables at the store root (the checkpoint group is kept); the
    store's attributes (provenance) are kept and updated with ``attrs``. ``train_complete`` is
    0 while the arrays are rewritten, so an interrupted write is redone by the next run."""
    import zarr

    grp = zarr.open_group(str(path), mode="r+")
    existing = dict(grp.attrs)
    grp.attrs["train_complete"] = 0
    for name in list(grp.array_keys()):
        del grp[name]
    raw = raw.copy()
    raw.attrs = {**existing, **attrs, "train_complete": 0, "analysis_vars": "[]"}
    raw.to_zarr(str(path), mode="a", consolidated=False)
    zarr.open_group(str(path), mode="r+").attrs["train_complete"] = 1


def training_part(args, *, study: str, grid: dict, make_run, task_attrs: dict, figure_kind: str, token_dim: int,
                  extra_params: dict | None = None, extra_attrs: dict | None = None) -> Part:
    """The :class:`~studies.cli.Part` of a training sub-study (module docstring); ``study`` is
    ``icl_<sub>``, ``token_dim`` the token dimension D; ``extra_params`` join the run's stored
    parameters (what its analysis reads)."""
    sub = study.removeprefix("icl_")
    params = {"sub": sub, "grid": {k: np.asarray(v).tolist() for k, v in grid.items()}, "L": args.L,
              "batch": args.batch, "lr": args.lr, "betas": [0.9, 0.999], "eps": 1e-8, "log_every": args.log_every,
              "val_prompts": args.val_prompts, "final_prompts": args.final_prompts, "task": task_attrs,
              "seed": args.seed, "nchunk": sim.DEFAULT_CHUNKS,
              "init": "PyTorch nn.Linear default: Q,K,V ~ U(±1/sqrt(D)), O ~ U(±1/sqrt(H D))",
              **(extra_params or {}), **device_params(args.device)}
    spec = StoreSpec(study=study, params=params, root_seed=args.seed, layout=_layout(grid), seed_policy=SEED_POLICY,
                     attrs={"substudy": sub, "figure_kind": figure_kind, "device": device_attr(args.device),
                            "temperature": 1.0 / np.sqrt(token_dim), "task": json.dumps(task_attrs), "d": args.d,
                            "L": args.L, "batch": args.batch, "lr": args.lr,
                            "optimizer": "Adam(betas=(0.9, 0.999), eps=1e-8), PyTorch bias correction",
                            "loss": "mean over prompts and outputs of (ŷ - y_q)^2 (query label noisy unless the task "
                                    "says not)",
                            "convention": "s_hi = z_qᵀ W_h z_i (query does not attend to itself), "
                                          "ŷ = sum_h u_hᵀ sum_i p_hi z_i",
                            "identity": "the run's parameters without steps: raising --steps continues the run",
                            **(extra_attrs or {})})

    def runner(path, args_, executor):
        repair = getattr(args, "repair", False)
        open_store(path, spec, spec.create_empty, overwrite=args.overwrite, repair=repair)
        check_root(path, raw_names(grid), repair=repair)
        attrs = store_attrs(path) or {}
        runs = grid_runs(grid, make_run)
        R = len(runs)
        unit = "steps"  # of every run ("training: R runs x S steps" says how many)
        if attrs.get("train_complete") and int(attrs.get("steps", -1)) == args.steps:
            raw = open_result(path)
            raw = raw[[v for v in raw.data_vars if v in RAW_VARS]]
            print(f"training: {R} runs x {args.steps} steps already complete "
                  f"(wall time {float(attrs.get('train_wall_s', 0.0)):.1f} s); re-analysing", flush=True)
            return raw, {"cells": args.steps, "computed": 0, "resumed": args.steps, "unit": unit}
        trainer, logs, blocks, tinfo = train_runs(
            runs, L=args.L, batch=args.batch, lr=args.lr, steps=args.steps, log_every=args.log_every,
            ckpt_every=args.checkpoint_every, n_val=args.val_prompts, n_final=args.final_prompts, path=path,
            progress=not args.no_progress, label=f"icl {sub}", device=args.device, repair=repair)
        raw = raw_dataset(grid, runs, logs, blocks, trainer)
        write_raw(path, raw, {"steps": args.steps, "train_wall_s": tinfo["wall_s"]})
        raw.attrs = store_attrs(path)  # the analysis reads the run's parameters from them
        res = tinfo["resumed_from"]
        print(f"training: {R} runs x {args.steps} steps ({'resumed at step ' + str(res) if res else 'from scratch'}; "
              f"training wall time {tinfo['wall_s']:.1f} s)", flush=True)
        return raw, {"cells": args.steps, "computed": args.steps - res, "resumed": res, "unit": unit}

    return Part("", run=runner)
