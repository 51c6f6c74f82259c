"""Sweeps of the random-feature attention study: parameters, seeded cells, the five grids.

One :class:`studies.sweep.Sweep` per group of the store (:data:`GROUPS`), made by
:func:`make_sweeps` from the parsed options; each stores the run's parameters (``params_json``:
sizes, grids, targets, the feature conventions, the lambda path) so that its analysis reads
everything from the store.

Every fit cell draws one replicate's data from ``SeedSequence(root_seed, spawn_key=(DATA_KEY,
rep))`` (inputs ``x0: (n, d)``, keys ``X: (n, N, d)`` uniform on S^{d-1}, a unit ``beta``, an
orthogonal ``S``; targets ``F: (n, T)``), so every model, M and r of one replicate sees the same
data (paired comparisons), and its random heads from the cell seed. Training sizes are nested
prefixes of one draw; validation and test rows follow them. A fit is ridge regression on
mean-centred features along a lambda path (:func:`sim.random_features.ridge_path`), lambda
chosen on validation, excess risk = test MSE against the noiseless target on fresh inputs.

The kernel cells hold per-head inner products of the features of fixed input pairs
(:func:`kernel_inputs`, a function of the root seed only) for rfa, brfa and the RFMLP.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from sim import random_features as rs
from sim.backend import get_xp, make_rng, namespace, to_numpy
from studies.sweep import Sweep, str_coord

STUDY = "random_features"
GROUPS = ("kernel", "rate", "families", "N", "bias")
MODELS = ("rfa", "brfa", "rfmlp")
KERNEL_MODELS = ("rfa", "brfa", "rfmlp")
N_MODELS = ("rfa", "rfmlp")
DATA_KEY = 0xDA7A  # spawn-key tag of the per-replicate data streams
KERNEL_KEY = 0x4B45  # spawn-key tag of the fixed kernel-check inputs


def _config(args) -> rs.FeatureConfig:
    return rs.FeatureConfig(augment=args.augment, w_var=args.w_var, mean_shape=args.mean_shape,
                            activation=args.activation, key_norm=args.key_norm, value=args.value,
                            r_bias=args.r_bias)


def _lambdas(args) -> np.ndarray:
    return np.geomspace(args.lambda_min, args.lambda_max, args.lambda_count)


def _common_params(args) -> dict:
    return {"d": args.d, "reps": args.reps, "n_val": args.n_val, "n_test": args.n_test,
            "poly": args.poly, "noise": args.noise, "lambdas": _lambdas(args).tolist(),
            "conventions": _config(args).describe(), "device": args.device,
            "input_dist": "uniform on the unit sphere S^{d-1}",
            "feature_scale": "1/sqrt(M) (1/sqrt(P) for the RFMLP)",
            "rfmlp": "ReLU features of [x0; x1..xN; 1], w ~ N(0, I/|z|^2), M*(d+1) features"}



# --------------------------------------------------------------------------- cells

def _replicate_data(cell, rep: int, n_total: int, N: int, d: int, targets, poly, noise, device):
    """Inputs, noiseless targets F and labels Y of one replicate (shared by all cells with the
    same root seed and replicate index)."""
    ss = np.random.SeedSequence(cell.seed.entropy, spawn_key=(DATA_KEY, int(rep)))
    rng = make_rng(ss, device)
    x0, X = rs.sample_inputs(rng, n_total, N, d)
    beta, S = rs.draw_target_params(rng, d)
    F = rs.target_values(targets, x0, X, beta, S, poly)
    Y = F
    if noise > 0:
        xp = namespace(F)
        Y = F + noise * xp.std(F, axis=0) * rng.standard_normal(F.shape)
    return x0, X, F, Y


def _fit_models(cell, *, models, M, r_values, N, d, n_list, n_val, n_test, targets, poly, noise,
                lambdas, cfg, device):
    """Fit each (model, r) on one replicate's data; returns a list of ridge_path results with
    ``rel_err`` and ``target_var`` added."""
    rep = int(cell.coords["rep"])
    n_max = n_list[-1]
    x0, X, F, Y = _replicate_data(cell, rep, n_max + n_val + n_test, N, d, targets, poly, noise, device)
    head_rng = make_rng(cell.seed, device)
    va = slice(n_max, n_max + n_val)
    te = slice(n_max + n_val, n_max + n_val + n_test)
    xp = namespace(F)
    var = np.asarray(to_numpy(xp.var(F[te], axis=0)), dtype=float)
    if np.any(var <= 0):
        raise FloatingPointError(f"a target has zero variance on the test set: {list(targets)}")
    out = []
    for model, r in zip(models, r_values):
        phi = rs.model_features(model, head_rng, x0, X, M, cfg, r_bias=r)
        res = rs.ridge_path(phi[:n_max], Y[:n_max], n_list, phi[va], Y[va], phi[te], F[te], lambdas)
        res["rel_err"] = res["test_mse"] / var[None, :]
        res["target_var"] = var
        out.append(res)
    return out


FIT_VARS = ("rel_err", "test_mse", "val_mse", "train_mse", "best_lambda")
FIT_ATTRS = {
    "rel_err": {"long_name": "relative excess risk: test MSE against the noiseless target / Var(target)"},
    "test_mse": {"long_name": "excess risk: test MSE against the noiseless target on fresh data"},
    "val_mse": {"long_name": "validation MSE (noisy labels) at the chosen lambda"},
    "train_mse": {"long_name": "training MSE at the chosen lambda"},
    "best_lambda": {"long_name": "ridge lambda chosen on validation (penalty n lambda |v|^2)"},
    "target_var": {"long_name": "variance of the noiseless target on the test set"},
}


def _curve_cell(cell, *, model=None, M=None, r_bias=0.0, **kw):
    """families (model varies) / rate (M varies) cells: nested training sizes -> (target, n)."""
    model = str(cell.coords.get("model", model))
    M = int(cell.coords.get("M", M))
    r = r_bias if model == "brfa" else 0.0
    res = _fit_models(cell, models=[model], M=M, r_values=[r], **kw)[0]
    out = {k: res[k].T for k in FIT_VARS}
    out["target_var"] = res["target_var"]
    return out


def _point_cell(cell, *, model=None, N=None, r_bias=None, **kw):
    """N (N, model vary) / bias (r varies) cells: one training size -> (target,) arrays."""
    model = str(cell.coords.get("model", model))
    N = int(cell.coords.get("N", N))
    r = float(cell.coords["r"]) if "r" in cell.coords else (r_bias or 0.0)
    res = _fit_models(cell, models=[model], M=kw.pop("M"), r_values=[r], N=N, **kw)[0]
    out = {k: res[k][0] for k in FIT_VARS}
    out["target_var"] = res["target_var"]
    return out


def kernel_inputs(root_seed: int, d: int, N: int, pairs: int):
    """Fixed input pairs (X_p, X'_p) of the kernel check, a deterministic function of the root
    seed: identical, keys permuted, same query, same keys, then alternately perturbed and
    independent pairs; the "permuted" pair is the "same" pair's input with its keys rolled, so
    the two kernels agree exactly for attention. Returns (a0, A, b0, B, kinds) with a0 (P, d), A (P, N, d)."""
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence(int(root_seed), spawn_key=(KERNEL_KEY,))))
    a0, A = rs.sample_inputs(rng, pairs, N, d)
    b0, B = rs.sample_inputs(rng, pairs, N, d)
    perm = np.roll(np.arange(N), 1)
    kinds = []
    for p in range(pairs):
        kind = ("same", "permuted", "same_query", "same_keys")[p] if p < 4 else ("near" if p % 2 == 0 else "independent")
        if kind == "same":
            b0[p], B[p] = a0[p], A[p]
        elif kind == "permuted":  # the first pair's input against itself with its keys permuted
            a0[p], A[p] = a0[0], A[0]
            b0[p], B[p] = a0[0], A[0][perm]
        elif kind == "same_query":
            b0[p] = a0[p]
        elif kind == "same_keys":
            B[p] = A[p]
        elif kind == "near":
            u0 = a0[p] + 0.5 * b0[p] / math.sqrt(d)
            U = A[p] + 0.5 * B[p] / math.sqrt(d)
            b0[p] = u0 / np.linalg.norm(u0)
            B[p] = U / np.linalg.norm(U, axis=-1, keepdims=True)
        kinds.append(kind)
    return a0, A, b0, B, kinds


def _kernel_cell(cell, *, a0, A, b0, B, cfg, device):
    """Per-head inner products of the features of (X_p, X'_p): mean (the M-head kernel) and sd."""
    kmodel = str(cell.coords["kmodel"])
    M = int(cell.coords["M"])
    rng = make_rng(cell.seed, device)
    xp = get_xp(device)
    a0, A, b0, B = (xp.asarray(t) for t in (a0, A, b0, B))
    N, d = A.shape[1], A.shape[2]
    if kmodel in ("rfa", "brfa"):
        W = rs.draw_heads(rng, M, d, r_bias=cfg.r_bias if kmodel == "brfa" else 0.0, augment=cfg.augment,
                          w_var=cfg.w_var, mean_shape=cfg.mean_shape)
        kw = dict(augment=cfg.augment, activation=cfg.activation, key_norm=cfg.key_norm, value=cfg.value,
                  scale=False)
        z = rs.head_inner_products(rs.rfa_features(a0, A, W, **kw), rs.rfa_features(b0, B, W, **kw), M)
    else:
        Wm = rs.draw_mlp(rng, M, N, d, augment=cfg.augment)
        z = rs.rfmlp_features(a0, A, Wm, augment=cfg.augment, scale=False) * \
            rs.rfmlp_features(b0, B, Wm, augment=cfg.augment, scale=False)
    z = np.asarray(to_numpy(z), dtype=float)
    return {"K_emp": z.mean(axis=1), "K_head_sd": z.std(axis=1, ddof=1)}


def _conv_kwargs(conv: dict, zero_mean: bool = False) -> dict:
    """Theory keyword conventions from the recorded parameters (``zero_mean``: those of the
    zero-mean kernel as a function of inner products, which has no mean shape)."""
    kw = {"augment": conv["augment"], "w_var": None if conv["w_var"] == "auto" else conv["w_var"],
          "activation": conv["activation"], "value": conv["value"]}
    if not zero_mean:
        kw["mean_shape"] = conv["mean_shape"]
    return kw



# --------------------------------------------------------------------------- sweeps

def _fit_kw(args, targets):
    return dict(d=args.d, n_val=args.n_val, n_test=args.n_test, targets=tuple(targets), poly=args.poly,
                noise=args.noise, lambdas=_lambdas(args), cfg=_config(args), device=args.device)


def _fit_sweep(group, args, *, cell_dims, targets, run_cell, extra_params, non_cell):
    variables = {k: ("target",) + non_cell + tuple(cell_dims) for k in FIT_VARS}
    variables["target_var"] = ("target",) + tuple(cell_dims)
    coords = {"target": str_coord(targets)}
    if "n" in non_cell:
        coords["n"] = np.asarray(args.n, dtype=np.int64)
    params = {**_common_params(args), **extra_params, "targets": list(targets), "group": group}
    return Sweep(study=f"{STUDY}/{group}", cell_dims=cell_dims, variables=variables, coords=coords,
                 params=params, run_cell=run_cell, root_seed=args.seed,
                 attrs={"group": group, "conventions": _config(args).describe(), "poly": args.poly,
                        "data_seed_policy": "inputs/beta/S from SeedSequence(root_seed, spawn_key=(0xDA7A, rep)); "
                                            "heads from the cell seed"},
                 var_attrs=FIT_ATTRS)


def make_sweeps(args, groups=GROUPS) -> dict[str, Sweep]:
    """``{group: Sweep}`` of the run's options, for the ``groups`` asked for, in the order of
    :data:`GROUPS`."""
    sweeps = {}
    reps = np.arange(args.reps)
    n_list = [int(v) for v in args.n]
    if "kernel" in groups:
        a0, A, b0, B, kinds = kernel_inputs(args.seed, args.d, args.N, args.kernel_pairs)
        cfg = _config(args)
        sweeps["kernel"] = Sweep(
            study=f"{STUDY}/kernel",
            cell_dims={"kmodel": _cell_labels(KERNEL_MODELS), "M": np.asarray(args.kernel_M, dtype=np.int64),
                       "rep": np.arange(args.kernel_reps)},
            variables={"K_emp": ("pair", "kmodel", "M", "rep"), "K_head_sd": ("pair", "kmodel", "M", "rep")},
            coords={"pair": np.arange(args.kernel_pairs)},
            params={**_common_params(args), "group": "kernel", "N": args.N, "kernel_M": list(args.kernel_M),
                    "kernel_reps": args.kernel_reps, "kernel_pairs": args.kernel_pairs, "pair_kinds": kinds,
                    "reps": args.kernel_reps},
            run_cell=functools.partial(_kernel_cell, a0=a0, A=A, b0=b0, B=B, cfg=cfg, device=args.device),
            root_seed=args.seed,
            attrs={"group": "kernel", "conventions": cfg.describe(), "pair_kinds": kinds,
                   "inputs": "kernel_inputs(root_seed, d, N, pairs) in studies.random_features"},
            var_attrs={"K_emp": {"long_name": "M-head empirical kernel (1/M) sum_m <phi_m(X), phi_m(X')> "
                                              "(RFMLP: (1/M) sum_k relu(w_k.z) relu(w_k.z'))"},
                       "K_head_sd": {"long_name": "standard deviation over heads of the per-head products"}})
    if "rate" in groups:
        kw = _fit_kw(args, args.rate_targets)
        sweeps["rate"] = _fit_sweep(
            "rate", args, cell_dims={"M": np.asarray(args.M_grid, dtype=np.int64), "rep": reps},
            targets=args.rate_targets, non_cell=("n",),
            run_cell=functools.partial(_curve_cell, model="rfa", N=args.N, n_list=n_list, **kw),
            extra_params={"N": args.N, "M_grid": list(args.M_grid), "n": n_list, "model": "rfa"})
    if "families" in groups:
        kw = _fit_kw(args, args.targets)
        sweeps["families"] = _fit_sweep(
            "families", args, cell_dims={"model": _cell_labels(args.models), "rep": reps},
            targets=args.targets, non_cell=("n",),
            run_cell=functools.partial(_curve_cell, M=args.M, r_bias=args.r_bias, N=args.N, n_list=n_list, **kw),
            extra_params={"N": args.N, "M": args.M, "n": n_list, "models": list(args.models),
                          "r_bias": args.r_bias})
    if "N" in groups:
        kw = _fit_kw(args, args.N_targets)
        sweeps["N"] = _fit_sweep(
            "N", args, cell_dims={"N": np.asarray(args.N_grid, dtype=np.int64), "model": _cell_labels(N_MODELS),
                                  "rep": reps},
            targets=args.N_targets, non_cell=(),
            run_cell=functools.partial(_point_cell, M=args.M, n_list=[args.n_fixed], **kw),
            extra_params={"N_grid": list(args.N_grid), "M": args.M, "n_fixed": args.n_fixed})
    if "bias" in groups:
        kw = _fit_kw(args, args.bias_targets)
        sweeps["bias"] = _fit_sweep(
            "bias", args, cell_dims={"r": np.asarray(args.r_grid, dtype=float), "rep": reps},
            targets=args.bias_targets, non_cell=(),
            run_cell=functools.partial(_point_cell, model="brfa", N=args.N, M=args.M, n_list=[args.n_fixed], **kw),
            extra_params={"N": args.N, "M": args.M, "n_fixed": args.n_fixed, "r_grid": list(args.r_grid)})
    return sweeps



def _cell_labels(values) -> np.ndarray:
    """String cell coordinates: an object array (variable-length strings in Zarr v3) of
    ``numpy.str_`` items, because the sweep runner calls ``.item()`` on each cell coordinate."""
    return np.array([np.str_(v) for v in values], dtype=object)
