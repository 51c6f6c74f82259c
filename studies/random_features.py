"""Random-feature attention study: ``python -m studies.random_features [--sweeps ...]``.

Measures what a single random-feature attention layer learns (Fu, Guo, Bai, Mei, NeurIPS 2023;
spec ``shared/specs/random_features.md``, reconstructed conventions recorded as parameters) and
sets it against the theory of :mod:`theory.random_features`. Five sub-sweeps, each a resumable
group of one Zarr store (default ``results/random_features.zarr``, groups named as below):

* ``kernel``   — the M-head empirical kernel (1/M) sum_m <phi_m(X), phi_m(X')> against the
  closed-form infinite-head kernel, for zero-mean (rfa) and biased (brfa) query-key matrices and
  the RFMLP, on fixed input pairs: z-scores within CLT bands, error ~ M^(-1/2);
* ``rate``     — excess risk of zero-mean RFA over a grid of training sizes n and heads M
  (heat map), log-log slopes in n and in M with 95% CIs against the excess-risk bound
  sqrt(B R^2/n) + sqrt(B R^2/M);
* ``families`` — RFA, BRFA and the RFMLP (same number of trained parameters) on the target
  families (keys-only, query-key inner products, attention-like, key-key control) vs n;
* ``N``        — RFA and the RFMLP at fixed n for several numbers of keys N;
* ``bias``     — RFA with query-key mean mu = r sqrt(d) (bias ratio r) at fixed n.

Every fit is ridge regression on mean-centred random features along a lambda path from one
eigendecomposition, lambda chosen on a validation set, excess risk = test MSE against the
noiseless target on fresh data, relative error = excess risk / Var(target). Data (inputs, beta,
S) depend on (root seed, replicate) only, so models, M and r at one replicate see the same
data (paired comparisons); the random heads come from the cell seed.

Each group holds the raw per-replicate measurements, means and standard errors, fitted slopes
with SEs, ``theory_*`` predictions and ``verdict_*`` booleans whose tolerances are in the
attributes.

``--device gpu`` runs every cell on the GPU: inputs, targets and heads are drawn by CuPy's Philox
stream (so the numbers differ from a CPU run, statistically equal), attention features come from
the numba-cuda kernel of :mod:`gpu.random_features`, RFMLP features and Gram products from cuBLAS,
and the ridge path's eigendecompositions from ``cupy.linalg.eigh``; only the per-cell summaries
return to the host. It defaults to one in-process worker (the device's owner). Without a usable
GPU it is a one-line usage error (exit 2).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from sim import random_features as rs
from gpu import gpu_available
from sim.backend import get_xp, make_rng, namespace, to_numpy
from studies.cli import (StudyParser, UsageError, add_common_arguments, parse_n_grid, parse_range,
                         positive_int, run_main, run_study_sweep, validate_run_options)
from studies.fits import loglog_rate
from studies.sweep import Sweep, make_executor, str_coord, write_analysis
from theory import random_features as rft

STUDY = "random_features"
SWEEPS = ("kernel", "rate", "families", "N", "bias")
DEFAULTS = {"d": 8, "N": 8, "M": 128, "M_grid": "16,32,64,128", "n": "2^8..2^12", "n_fixed": 2048,
            "n_val": 1024, "n_test": 2048, "reps": 4, "N_grid": "2,8,32", "r_grid": "0,0.35,0.5,1,2",
            "kernel_M": "2^6..2^14:2", "kernel_reps": 4, "kernel_pairs": 12}
QUICK = {"d": 6, "N": 4, "M": 24, "M_grid": "12,24", "n": "2^6..2^8", "n_fixed": 192,
         "n_val": 192, "n_test": 256, "reps": 2, "N_grid": "2,4", "r_grid": "0,1",
         "kernel_M": "2^6,2^10", "kernel_reps": 2, "kernel_pairs": 6}
TARGETS = {"families": "keys1,keys2,keys3,pair1,pair2,attn,keykey", "rate": "keys2,pair1",
           "N": "keys2,pair1", "bias": "keys2,pair1,pair2,attn"}
MODELS = ("rfa", "brfa", "rfmlp")
KERNEL_MODELS = ("rfa", "brfa", "rfmlp")
N_MODELS = ("rfa", "rfmlp")
DATA_KEY = 0xDA7A  # spawn-key tag of the per-replicate data streams
KERNEL_KEY = 0x4B45  # spawn-key tag of the fixed kernel-check inputs

# verdict tolerances (recorded in the datasets)
Z_CI = 1.96  # two-sided 95% intervals on slopes and log-ratios
Z_BAND = 5.0  # CLT band for the kernel z-scores
KERNEL_RATE_TOL = 0.1  # |slope + 1/2| of the kernel error vs M
WIDE_MARGIN = 3.0  # attention's error at least this many times smaller than the MLP's
RESOLVE_MAX = 0.5  # a target is resolved by the grid when some model reaches this rel. error
KEYKEY_MIN = 0.9  # attention's rel. error on the key-key control stays above this at every n
FLAT_TOL = 0.1  # attention: max - min over N of the mean rel. error
DEGRADE_MIN = 0.2  # MLP: rel. error at N_max minus at N_min at least this
HELP_FACTOR = 2.0  # bias helps: err(r=0) / min_{r>0} err at least this
HURT_FACTOR = 1.5  # bias hurts: err(r_max) / err(r=0) at least this

EXAMPLES = """\
examples:
  python -m studies.random_features                      # all five sub-sweeps (about 1-2 minutes)
  python -m studies.random_features --sweeps families,bias --plot
  python -m studies.random_features --sweeps rate --M-grid 16..128:16 --n 2^8..2^13 --reps 5
  python -m studies.random_features --sweeps N --N-grid 2,4,8,16,32 --n-fixed 4096
  python -m studies.random_features --quick --out /tmp/rf.zarr
  python -m studies.random_features --poly hermite --activation softmax --sweeps families
  python -m studies.random_features --device gpu --M 512 --n 2^10..2^14   # CuPy + numba-cuda kernels
  python -m paper_figs.random_features results/random_features.zarr

targets: keys<p> = mean_i P_p(<beta,x_i>), query<p> = P_p(<beta,x_0>), pair<p> = mean_i P_p(<x_0,x_i>),
  bilin<p> = mean_i P_p(<x_0,S x_i>), attn = mean_i relu(u_i) b_i, keykey = key-key control
"""


# --------------------------------------------------------------------------- CLI

def _list_of(allowed, what):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {what} list")
        bad = [t for t in items if t not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
        return tuple(dict.fromkeys(items))
    return parse


def _targets(text):
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not items:
        raise argparse.ArgumentTypeError("empty target list")
    for t in items:
        try:
            rs.parse_target(t)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return items


def _float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def _w_var(text):
    return None if text == "auto" else _float(text)


def build_parser() -> argparse.ArgumentParser:
    p = StudyParser(
        prog="python -m studies.random_features",
        description="Random-feature attention (RFA/BRFA) vs a random-feature MLP: infinite-head "
                    "kernel, risk vs (n, M) against the excess-risk bound, target families, "
                    "N-independence and the non-zero-mean (bias) effect.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--sweeps", type=_list_of(SWEEPS, "sweep"), default=SWEEPS, metavar="LIST",
                   help=f"sub-sweeps to run, comma list of {', '.join(SWEEPS)} (default all)")
    g.add_argument("--reps", type=positive_int, default=None,
                   help=f"replicates (data and heads redrawn) per cell (default {DEFAULTS['reps']}; "
                        f"--quick {QUICK['reps']})")
    s = p.add_argument_group("sizes")
    s.add_argument("--d", type=positive_int, default=None,
                   help=f"token dimension (default {DEFAULTS['d']}; --quick {QUICK['d']})")
    s.add_argument("--N", type=positive_int, default=None,
                   help=f"keys per sample in kernel/rate/families/bias (default {DEFAULTS['N']}; --quick {QUICK['N']})")
    s.add_argument("--M", type=positive_int, default=None,
                   help=f"heads in families/N/bias; the RFMLP gets M*(d+1) features "
                        f"(default {DEFAULTS['M']}; --quick {QUICK['M']})")
    s.add_argument("--M-grid", dest="M_grid", type=lambda t: parse_range(t, int), default=None, metavar="RANGE",
                   help=f"heads of the rate sweep: 16..128:16, 16,32,64 (default {DEFAULTS['M_grid']})")
    s.add_argument("--n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"training sizes of rate/families, nested prefixes of one draw: 2^8..2^12, "
                        f"256,1024,4096 (default {DEFAULTS['n']}; --quick {QUICK['n']})")
    s.add_argument("--n-fixed", dest="n_fixed", type=positive_int, default=None,
                   help=f"training size of the N and bias sweeps (default {DEFAULTS['n_fixed']})")
    s.add_argument("--n-val", dest="n_val", type=positive_int, default=None,
                   help=f"validation samples for choosing lambda (default {DEFAULTS['n_val']})")
    s.add_argument("--n-test", dest="n_test", type=positive_int, default=None,
                   help=f"fresh test samples (default {DEFAULTS['n_test']})")
    s.add_argument("--N-grid", dest="N_grid", type=lambda t: parse_range(t, int), default=None, metavar="RANGE",
                   help=f"numbers of keys of the N sweep (default {DEFAULTS['N_grid']})")
    s.add_argument("--r-grid", dest="r_grid", type=lambda t: parse_range(t, float), default=None, metavar="RANGE",
                   help=f"bias ratios r = mu/sqrt(d) of the bias sweep, must include 0 "
                        f"(default {DEFAULTS['r_grid']})")
    s.add_argument("--kernel-M", dest="kernel_M", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"heads of the kernel check (default {DEFAULTS['kernel_M']})")
    s.add_argument("--kernel-reps", dest="kernel_reps", type=positive_int, default=None,
                   help=f"independent head draws per M in the kernel check (default {DEFAULTS['kernel_reps']})")
    s.add_argument("--kernel-pairs", dest="kernel_pairs", type=positive_int, default=None,
                   help=f"input pairs (X, X') of the kernel check, >= 4 (default {DEFAULTS['kernel_pairs']})")
    t = p.add_argument_group("targets and fit")
    t.add_argument("--targets", type=_targets, default=None, metavar="LIST",
                   help=f"targets of the families sweep (default {TARGETS['families']})")
    t.add_argument("--rate-targets", dest="rate_targets", type=_targets, default=None, metavar="LIST",
                   help=f"targets of the rate sweep (default {TARGETS['rate']})")
    t.add_argument("--N-targets", dest="N_targets", type=_targets, default=None, metavar="LIST",
                   help=f"targets of the N sweep (default {TARGETS['N']})")
    t.add_argument("--bias-targets", dest="bias_targets", type=_targets, default=None, metavar="LIST",
                   help=f"targets of the bias sweep (default {TARGETS['bias']})")
    t.add_argument("--models", type=_list_of(MODELS, "model"), default=MODELS, metavar="LIST",
                   help="models of the families sweep: rfa (zero-mean), brfa (biased), rfmlp (default all)")
    t.add_argument("--poly", choices=rs.POLYS, default="gegenbauer",
                   help="per-term polynomial: gegenbauer (pure degree on the sphere, default) or hermite")
    t.add_argument("--noise", type=_float, default=0.0,
                   help="label noise on train/validation labels, in units of sd(target) (default 0)")
    t.add_argument("--lambda-min", dest="lambda_min", type=_float, default=1e-7, help="smallest ridge lambda (default 1e-7)")
    t.add_argument("--lambda-max", dest="lambda_max", type=_float, default=1.0, help="largest ridge lambda (default 1)")
    t.add_argument("--lambda-count", dest="lambda_count", type=positive_int, default=15,
                   help="lambdas, log-spaced (default 15); penalty n*lambda*|v|^2")
    c = p.add_argument_group("conventions (spec §2.6; all recorded in the dataset)")
    c.add_argument("--activation", choices=rs.ACTIVATIONS, default="relu",
                   help="score activation: relu (default, 1/N over keys), identity, softmax over keys")
    c.add_argument("--no-augment", dest="augment", action="store_false",
                   help="do not append the constant coordinate 1 to query and keys")
    c.add_argument("--w-var", dest="w_var", type=_w_var, default=None, metavar="VAR",
                   help="entry variance of the query-key matrices (default auto: unit-variance scores, 1/4)")
    c.add_argument("--mean-shape", dest="mean_shape", choices=rft.MEAN_SHAPES, default="diag",
                   help="shape of the non-zero mean: diag = diag(I_d, 0) (default) or identity = I_{d+1}")
    c.add_argument("--r-bias", dest="r_bias", type=_float, default=1.0,
                   help="bias ratio r = mu/sqrt(d) of BRFA in the kernel and families sweeps (default 1)")
    c.add_argument("--value", choices=rft.VALUES, default="augmented",
                   help="value vectors act on [x; 1] (augmented, default) or on x")
    c.add_argument("--key-norm", dest="key_norm", choices=rft.KEY_NORMS, default="mean",
                   help="normalisation over keys: mean (1/N, default) or sum")
    add_common_arguments(p, STUDY)
    # this study's full run defaults to two worker processes with single-threaded BLAS each: its
    # cost is dominated by symmetric eigendecompositions, which scale poorly over BLAS threads
    # and slow down many-fold when threads compete for busy cores
    p.set_defaults(workers=None)
    for action in p._actions:
        if action.dest == "workers":
            action.help = ("worker processes, each with single-threaded BLAS (default 2; --quick or "
                           "--device gpu: 1, in-process)")
    return p


def _validate(args):
    base = QUICK if args.quick else DEFAULTS
    for key in ("d", "N", "M", "n_fixed", "n_val", "n_test", "reps", "kernel_reps", "kernel_pairs"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.M_grid is None:
        args.M_grid = parse_range(base["M_grid"], int)
    if args.n is None:
        args.n = parse_n_grid(base["n"])
    if args.N_grid is None:
        args.N_grid = parse_range(base["N_grid"], int)
    if args.r_grid is None:
        args.r_grid = parse_range(base["r_grid"], float)
    if args.kernel_M is None:
        args.kernel_M = parse_n_grid(base["kernel_M"])
    for key, name in (("targets", "families"), ("rate_targets", "rate"), ("N_targets", "N"),
                      ("bias_targets", "bias")):
        if getattr(args, key) is None:
            setattr(args, key, tuple(TARGETS[name].split(",")))
    sw = set(args.sweeps)
    if args.d < 2:
        raise UsageError("--d must be at least 2")
    if args.reps < 2:
        raise UsageError("--reps: standard errors need at least 2 replicates")
    if args.n_val < 16 or args.n_test < 16:
        raise UsageError("--n-val and --n-test must be at least 16")
    if not (0 < args.lambda_min <= args.lambda_max):
        raise UsageError("--lambda-min must be positive and at most --lambda-max")
    if args.noise < 0:
        raise UsageError("--noise must be >= 0")
    if args.w_var is not None and args.w_var <= 0:
        raise UsageError("--w-var must be positive (or auto)")
    if args.r_bias <= 0 and ({"kernel", "families"} & sw):
        raise UsageError("--r-bias must be positive (r = 0 is the zero-mean rfa model)")
    if "kernel" in sw:
        if args.activation == "softmax":
            raise UsageError("--activation softmax has no closed-form kernel: drop 'kernel' from --sweeps")
        if len(args.kernel_M) < 2 or min(args.kernel_M) < 16:
            raise UsageError("--kernel-M: the kernel check needs at least 2 head counts, each >= 16")
        if args.kernel_reps < 2:
            raise UsageError("--kernel-reps must be at least 2")
        if args.kernel_pairs < 4:
            raise UsageError("--kernel-pairs must be at least 4")
    if {"rate", "families"} & sw and len(args.n) < 2:
        raise UsageError("--n: risk-vs-n curves need at least 2 training sizes")
    if "rate" in sw:
        if len(args.M_grid) < 2 or min(args.M_grid) < 1:
            raise UsageError("--M-grid: the rate sweep needs at least 2 positive head counts")
    if "families" in sw:
        if "rfmlp" not in args.models or not ({"rfa", "brfa"} & set(args.models)):
            raise UsageError("--models must include rfmlp and at least one of rfa, brfa")
    if "N" in sw and (len(args.N_grid) < 2 or min(args.N_grid) < 1):
        raise UsageError("--N-grid: the N sweep needs at least 2 positive numbers of keys")
    if "bias" in sw:
        r = np.asarray(args.r_grid)
        if r.min() < 0 or 0.0 not in args.r_grid or (r > 0).sum() < 1:
            raise UsageError("--r-grid must hold 0 and at least one positive ratio, none negative")
    needs = [("families", args.targets, [args.N]), ("rate", args.rate_targets, [args.N]),
             ("bias", args.bias_targets, [args.N]), ("N", args.N_targets, list(args.N_grid))]
    for name, targets, Ns in needs:
        if name in sw and "keykey" in targets and min(Ns) < 2:
            raise UsageError(f"target keykey needs at least 2 keys (in the {name} sweep)")
    # memory guard: feature matrices and Gram/kernel matrices in float64
    dv = args.d + 1 if args.value == "augmented" else args.d
    worst = 0.0
    if {"rate", "families"} & sw:
        Mmax = max(args.M, max(args.M_grid) if "rate" in sw else 0)
        worst = max(worst, (max(args.n) + args.n_val + args.n_test) * Mmax * dv * 8.0)
    if {"N", "bias"} & sw:
        worst = max(worst, (args.n_fixed + args.n_val + args.n_test) * args.M * dv * 8.0)
    Pmax = 0
    if {"rate", "families"} & sw:
        Pmax = max(args.M, max(args.M_grid) if "rate" in sw else 0) * dv
    if {"N", "bias"} & sw:
        Pmax = max(Pmax, args.M * dv)
    if Pmax > 12000:
        raise UsageError(f"{Pmax} random features: eigendecompositions of that size take too long; reduce --M or --M-grid")
    if worst > 6e9:
        raise UsageError(f"the feature matrices would need {worst / 1e9:.1f} GB; reduce --n, --M or --M-grid")
    if args.workers is None:
        # on a GPU one in-process worker owns the device (features, Gram and eigh run there)
        gpu = args.device == "gpu" or (args.device == "auto" and gpu_available())
        args.workers = 1 if (args.quick or args.scheduler or args.dask_local or gpu) else 2
    validate_run_options(args)
    root = Path(args.out)
    if root.exists():
        if (root / "zarr.json").exists():
            try:
                study = json.loads((root / "zarr.json").read_text()).get("attributes", {}).get("study")
            except (OSError, ValueError):
                study = None
            if study != STUDY and not args.overwrite:
                raise UsageError(f"--out {root} holds a {study or 'non-study'} store; pass --overwrite "
                                 "to replace it, or choose another --out")
        elif any(root.iterdir()):
            raise UsageError(f"--out {root} is a non-empty directory that is not a Zarr store")


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


def make_sweeps(args) -> dict[str, Sweep]:
    sweeps = {}
    reps = np.arange(args.reps)
    n_list = [int(v) for v in args.n]
    if "kernel" in args.sweeps:
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
    if "rate" in args.sweeps:
        kw = _fit_kw(args, args.rate_targets)
        sweeps["rate"] = _fit_sweep(
            "rate", args, cell_dims={"M": np.asarray(args.M_grid, dtype=np.int64), "rep": reps},
            targets=args.rate_targets, non_cell=("n",),
            run_cell=functools.partial(_curve_cell, model="rfa", N=args.N, n_list=n_list, **kw),
            extra_params={"N": args.N, "M_grid": list(args.M_grid), "n": n_list, "model": "rfa"})
    if "families" in args.sweeps:
        kw = _fit_kw(args, args.targets)
        sweeps["families"] = _fit_sweep(
            "families", args, cell_dims={"model": _cell_labels(args.models), "rep": reps},
            targets=args.targets, non_cell=("n",),
            run_cell=functools.partial(_curve_cell, M=args.M, r_bias=args.r_bias, N=args.N, n_list=n_list, **kw),
            extra_params={"N": args.N, "M": args.M, "n": n_list, "models": list(args.models),
                          "r_bias": args.r_bias})
    if "N" in args.sweeps:
        kw = _fit_kw(args, args.N_targets)
        sweeps["N"] = _fit_sweep(
            "N", args, cell_dims={"N": np.asarray(args.N_grid, dtype=np.int64), "model": _cell_labels(N_MODELS),
                                  "rep": reps},
            targets=args.N_targets, non_cell=(),
            run_cell=functools.partial(_point_cell, M=args.M, n_list=[args.n_fixed], **kw),
            extra_params={"N_grid": list(args.N_grid), "M": args.M, "n_fixed": args.n_fixed})
    if "bias" in args.sweeps:
        kw = _fit_kw(args, args.bias_targets)
        sweeps["bias"] = _fit_sweep(
            "bias", args, cell_dims={"r": np.asarray(args.r_grid, dtype=float), "rep": reps},
            targets=args.bias_targets, non_cell=(),
            run_cell=functools.partial(_point_cell, model="brfa", N=args.N, M=args.M, n_list=[args.n_fixed], **kw),
            extra_params={"N": args.N, "M": args.M, "n_fixed": args.n_fixed, "r_grid": list(args.r_grid)})
    return sweeps


# --------------------------------------------------------------------------- analysis

def _params(ds) -> dict:
    return json.loads(ds.attrs["params_json"])


def _cell_labels(values) -> np.ndarray:
    """String cell coordinates: an object array (variable-length strings in Zarr v3) of
    ``numpy.str_`` items, because the sweep runner calls ``.item()`` on each cell coordinate."""
    return np.array([np.str_(v) for v in values], dtype=object)


def _mean_se(x, axis=-1):
    k = x.shape[axis]
    return x.mean(axis=axis), x.std(axis=axis, ddof=1) / math.sqrt(k)


def _log_ratio(num, den, axis=-1):
    """Mean and SE over replicates of log(num/den) (paired replicates)."""
    lr = np.log(num) - np.log(den)
    return _mean_se(lr, axis)


def _exact_B(targets, params, model, N):
    """Exact complexity B per target (None when some target has no exact value)."""
    conv = params["conventions"]
    if params["poly"] != "gegenbauer" or conv["activation"] == "softmax":
        return None
    out = []
    for t in targets:
        fam, p = rs.parse_target(t)
        if fam not in ("keys", "query", "pair"):
            return None
        kw = _conv_kwargs(conv, zero_mean=True)
        if model == "rfmlp":
            kw = {"augment": conv["augment"]}
        out.append(rft.target_complexity(fam, p, params["d"], N, model=model, **kw))
    return np.asarray(out)


def _verdict(value, description):
    return ((), bool(value), {"description": description})


def analyze_kernel(ds: xr.Dataset) -> xr.Dataset:
    params = _params(ds)
    d, N, P = params["d"], params["N"], params["kernel_pairs"]
    conv = params["conventions"]
    a0, A, b0, B, kinds = kernel_inputs(int(ds.attrs["root_seed"]), d, N, P)
    kw = _conv_kwargs(conv)
    th = np.zeros((len(KERNEL_MODELS), P))
    for i, km in enumerate(ds["kmodel"].values):
        if km == "rfmlp":
            th[i] = np.diag(rft.mlp_kernel(rs.flatten_inputs(a0, A, conv["augment"]),
                                           rs.flatten_inputs(b0, B, conv["augment"])))
        else:
            r = conv["r_bias_brfa"] if km == "brfa" else 0.0
            th[i] = np.diag(rft.rfa_kernel(a0, A, b0, B, r_bias=r, key_norm=conv["key_norm"], **kw))
    K = ds["K_emp"].transpose("kmodel", "M", "rep", "pair").values
    sd = ds["K_head_sd"].transpose("kmodel", "M", "rep", "pair").values
    M = ds["M"].values.astype(float)
    z = (K - th[:, None, None, :]) / np.maximum(sd / np.sqrt(M)[None, :, None, None], 1e-300)
    scale = np.mean(np.abs(th), axis=1)
    rel = np.sqrt(np.mean((K - th[:, None, None, :]) ** 2, axis=-1)) / scale[:, None, None]  # (k, M, rep)
    nk = len(KERNEL_MODELS)
    slope, se = np.zeros(nk), np.zeros(nk)
    for i in range(nk):
        f = loglog_rate(M, rel[i])
        slope[i], se[i] = f.slope, f.se
    maxz = np.abs(z).max(axis=(2, 3))
    same = kinds.index("same")
    permuted = kinds.index("permuted")
    gap = np.abs(K[..., permuted] - K[..., same]).max(axis=(1, 2)) / scale
    coords = {"kmodel": ds["kmodel"].values, "M": ds["M"].values, "rep": ds["rep"].values, "pair": ds["pair"].values}
    out = xr.Dataset(coords=coords)
    out["pair_kind"] = (("pair",), str_coord(kinds))
    out["input_x0"] = (("pair", "coord"), a0, {"long_name": "query of the first input of each pair"})
    out["input_X"] = (("pair", "key", "coord"), A, {"long_name": "keys of the first input"})
    out["input_x0_prime"] = (("pair", "coord"), b0)
    out["input_X_prime"] = (("pair", "key", "coord"), B)
    out["theory_K"] = (("kmodel", "pair"), th, {"long_name": "closed-form infinite-head kernel (theory.random_features)"})
    out["z_score"] = (("kmodel", "M", "rep", "pair"), z, {"long_name": "(K_emp - theory_K) / (K_head_sd / sqrt(M))"})
    out["max_abs_z"] = (("kmodel", "M"), maxz)
    out["rel_rms_err"] = (("kmodel", "M", "rep"), rel,
                          {"long_name": "RMS over pairs of K_emp - theory_K, over mean |theory_K|"})
    out["mean_rel_rms_err"] = (("kmodel", "M"), rel.mean(axis=-1))
    out["err_slope"] = (("kmodel",), slope, {"long_name": "WLS log-log slope of rel_rms_err vs M"})
    out["err_slope_se"] = (("kmodel",), se)
    out["theory_err_slope"] = (("kmodel",), np.full(nk, -0.5), {"long_name": "CLT rate M^(-1/2)"})
    out["permutation_gap"] = (("kmodel",), gap, {"long_name": "max |K_emp(X, perm X) - K_emp(X, X)| / scale "
                                                              "(0 for attention: exact key-permutation invariance)"})
    att = np.array([k != "rfmlp" for k in ds["kmodel"].values])
    clt = maxz.max(axis=1) <= Z_BAND
    rate_ok = np.abs(slope + 0.5) <= np.maximum(KERNEL_RATE_TOL, Z_CI * se)
    out["verdict_kernel_clt_by_model"] = (("kmodel",), clt, {"description": f"every |z| <= {Z_BAND} at every M"})
    out["verdict_kernel_rate_by_model"] = (("kmodel",), rate_ok,
                                           {"description": f"|err_slope + 1/2| <= max({KERNEL_RATE_TOL}, {Z_CI} se)"})
    out["verdict_kernel_clt"] = _verdict(clt.all(), f"all models: empirical kernel within the CLT band |z| <= {Z_BAND} "
                                                    "of the closed form at every M")
    out["verdict_kernel_rate"] = _verdict(rate_ok.all(), "all models: kernel error decays like M^(-1/2)")
    out["verdict_permutation_invariance"] = _verdict((gap[att] <= 1e-9).all(),
                                                     "attention kernels identical under a permutation of the keys (<= 1e-9)")
    out.attrs["verdict_tolerances"] = f"Z_BAND={Z_BAND}; KERNEL_RATE_TOL={KERNEL_RATE_TOL}; Z_CI={Z_CI}"
    return out


def _shape_slope(x, y):
    lx, ly = np.log(x), np.log(y)
    return float(np.polyfit(lx, ly, 1)[0])


def analyze_rate(ds: xr.Dataset) -> xr.Dataset:
    params = _params(ds)
    targets = [str(t) for t in ds["target"].values]
    n = ds["n"].values.astype(float)
    M = ds["M"].values.astype(float)
    mse = ds["test_mse"].transpose("target", "n", "M", "rep").values
    rel = ds["rel_err"].transpose("target", "n", "M", "rep").values
    T, nn, nM = len(targets), len(n), len(M)
    mean, se = _mean_se(rel)
    mse_mean, mse_se = _mean_se(mse)
    sn, sn_se = np.zeros((T, nM)), np.zeros((T, nM))
    sm, sm_se = np.zeros((T, nn)), np.zeros((T, nn))
    for t in range(T):
        for j in range(nM):
            f = loglog_rate(n, mse[t, :, j, :])
            sn[t, j], sn_se[t, j] = f.slope, f.se
        for k in range(nn):
            f = loglog_rate(M, mse[t, k, :, :])
            sm[t, k], sm_se[t, k] = f.slope, f.se
    conv = params["conventions"]
    out = xr.Dataset(coords={"target": ds["target"].values, "n": ds["n"].values, "M": ds["M"].values})
    R2 = None
    if conv["activation"] != "softmax":
        R2 = rft.feature_radius_sq(params["N"], params["d"], key_norm=conv["key_norm"], **_conv_kwargs(conv, zero_mean=True))
        out["theory_feature_radius_sq"] = ((), R2, {"long_name": "R^2 = E K(X, X), zero-mean RFA"})
    shape = math.sqrt(R2 if R2 is not None else 1.0) * (n[:, None] ** -0.5 + M[None, :] ** -0.5)
    th_sn = np.array([_shape_slope(n, shape[:, j]) for j in range(nM)])
    th_sm = np.array([_shape_slope(M, shape[k, :]) for k in range(nn)])
    out["mean_rel_err"] = (("target", "n", "M"), mean)
    out["sem_rel_err"] = (("target", "n", "M"), se)
    out["mean_excess_risk"] = (("target", "n", "M"), mse_mean, {"long_name": "mean test MSE against the noiseless target"})
    out["sem_excess_risk"] = (("target", "n", "M"), mse_se)
    out["slope_n"] = (("target", "M"), sn, {"long_name": "WLS log-log slope of the excess risk vs n at fixed M"})
    out["slope_n_se"] = (("target", "M"), sn_se)
    out["slope_n_ci_low"] = (("target", "M"), sn - Z_CI * sn_se)
    out["slope_n_ci_high"] = (("target", "M"), sn + Z_CI * sn_se)
    out["slope_M"] = (("target", "n"), sm, {"long_name": "WLS log-log slope of the excess risk vs M at fixed n"})
    out["slope_M_se"] = (("target", "n"), sm_se)
    out["slope_M_ci_low"] = (("target", "n"), sm - Z_CI * sm_se)
    out["slope_M_ci_high"] = (("target", "n"), sm + Z_CI * sm_se)
    out["theory_bound_shape"] = (("n", "M"), shape, {"long_name": "sqrt(R^2) (n^-1/2 + M^-1/2): the bound with B = 1"
                                                    + ("" if R2 is not None else " (R^2 = 1: softmax)")})
    out["theory_slope_n"] = (("M",), th_sn, {"long_name": "log-log slope of the bound vs n over the n grid, at each M"})
    out["theory_slope_M"] = (("n",), th_sm, {"long_name": "log-log slope of the bound vs M over the M grid, at each n"})
    out["theory_envelope_slope"] = ((), -0.5, {"long_name": "exponent of each term of the bound (n^-1/2, M^-1/2)"})
    out["theory_approx_slope_M"] = ((), -1.0, {"long_name": "slope of the squared L2 approximation error "
                                                            "B E|phi|^2 / M with M heads (spec §4.1); the risk "
                                                            "at large n approaches it"})
    B = _exact_B(targets, params, "rfa", params["N"])
    if B is not None:
        out["theory_B"] = (("target",), B, {"long_name": "B(f*) = RKHS norm^2 of the unit-variance pairwise term"})
        bound = np.sqrt(B)[:, None, None] * shape[None]
        out["theory_bound"] = (("target", "n", "M"), bound, {"long_name": "sqrt(B R^2/n) + sqrt(B R^2/M) (constants 1)"})
        ratio = mse_mean / bound
        out["risk_over_bound"] = (("target", "n", "M"), ratio,
                                  {"long_name": "mean excess risk / bound (unit-variance pairwise term; bounded if the bound holds)"})
    dec_n = sn[:, -1] + Z_CI * sn_se[:, -1] < 0
    dec_M = sm[:, -1] + Z_CI * sm_se[:, -1] < 0
    bound_n = np.all(sn <= th_sn[None, :] + Z_CI * sn_se, axis=1)
    bound_M = np.all(sm <= th_sm[None, :] + Z_CI * sm_se, axis=1)
    out["verdict_decreasing_n_by_target"] = (("target",), dec_n,
                                             {"description": f"slope_n at M_max: upper {Z_CI}-se bound < 0"})
    out["verdict_decreasing_M_by_target"] = (("target",), dec_M,
                                             {"description": f"slope_M at n_max: upper {Z_CI}-se bound < 0"})
    out["verdict_bound_n_by_target"] = (("target",), bound_n,
                                        {"description": f"at every M, slope_n <= theory_slope_n + {Z_CI} se: the risk "
                                                       "decays in n at least as fast as the bound"})
    out["verdict_bound_M_by_target"] = (("target",), bound_M,
                                        {"description": f"at every n, slope_M <= theory_slope_M + {Z_CI} se"})
    out["verdict_risk_decreases"] = _verdict((dec_n & dec_M).all(), "excess risk decreases in n (at M_max) and in M "
                                                                    "(at n_max), significantly, for every target")
    out["verdict_consistent_with_bound"] = _verdict((bound_n & bound_M).all(),
                                                    "log-log slopes in n and M no flatter than the bound's, within CIs")
    out.attrs["verdict_tolerances"] = f"Z_CI={Z_CI}"
    return out


def _attention_model(target, models):
    """Attention model the theory favours for a target (spec §4.3): biased for query-key
    inner-product and attention-like targets, zero-mean otherwise."""
    fam, _ = rs.parse_target(target)
    if fam in ("pair", "attn") and "brfa" in models:
        return "brfa"
    return "rfa" if "rfa" in models else "brfa"


def analyze_families(ds: xr.Dataset) -> xr.Dataset:
    params = _params(ds)
    targets = [str(t) for t in ds["target"].values]
    models = [str(m) for m in ds["model"].values]
    rel = ds["rel_err"].transpose("target", "n", "model", "rep").values
    mean, se = _mean_se(rel)
    T, nn = len(targets), len(ds["n"])
    mi = {m: i for i, m in enumerate(models)}
    att = [_attention_model(t, models) for t in targets]
    lr_mean, lr_se = np.zeros((T, nn)), np.zeros((T, nn))
    for t in range(T):
        lr_mean[t], lr_se[t] = _log_ratio(rel[t, :, mi["rfmlp"], :], rel[t, :, mi[att[t]], :])
    ratio = np.exp(lr_mean)
    lo, hi = np.exp(lr_mean - Z_CI * lr_se), np.exp(lr_mean + Z_CI * lr_se)
    every = np.exp(_log_ratio(rel[:, :, mi["rfmlp"], None, :], rel)[0])  # (target, n, model)
    fams = [rs.parse_target(t)[0] for t in targets]
    learn = np.array([[rft.is_learnable(f, m) for m in models] for f in fams])
    resolved = mean.min(axis=(1, 2)) <= RESOLVE_MAX
    claimed = np.array([f in ("keys", "pair") for f in fams])
    beats = (ratio[:, -1] >= WIDE_MARGIN) & (lo[:, -1] > 1.0)
    out = xr.Dataset(coords={"target": ds["target"].values, "n": ds["n"].values, "model": ds["model"].values})
    out["mean_rel_err"] = (("target", "n", "model"), mean)
    out["sem_rel_err"] = (("target", "n", "model"), se)
    out["attention_model"] = (("target",), str_coord(att), {"long_name": "attention model compared with the RFMLP"})
    out["mlp_over_attention"] = (("target", "n"), ratio,
                                 {"long_name": "geometric mean over replicates of rel_err(rfmlp) / rel_err(attention_model)"})
    out["mlp_over_model"] = (("target", "n", "model"), every,
                             {"long_name": "geometric mean over replicates of rel_err(rfmlp) / rel_err(model)"})
    out["mlp_over_attention_ci_low"] = (("target", "n"), lo)
    out["mlp_over_attention_ci_high"] = (("target", "n"), hi)
    out["resolved"] = (("target",), resolved, {"description": f"some model reaches mean rel_err <= {RESOLVE_MAX} on the grid"})
    out["claimed"] = (("target",), claimed, {"description": "keys-only or query-key inner-product target (the claim)"})
    out["beats_mlp"] = (("target",), beats, {"description": f"at n_max, ratio >= {WIDE_MARGIN} and its CI above 1"})
    out["theory_learnable"] = (("target", "model"), learn, {"description": "target in the model's function class"})
    exact = [t for t in targets if rs.parse_target(t)[0] in ("keys", "query", "pair")]
    if exact:
        Br = _exact_B(exact, params, "rfa", params["N"])
        Bm = _exact_B(exact, params, "rfmlp", params["N"])
        if Br is not None and Bm is not None:
            out = out.assign_coords(exact_target=str_coord(exact))
            out["theory_B_rfa"] = (("exact_target",), Br, {"long_name": "B(f*) = |F|_k^2, zero-mean RFA (N-free)"})
            out["theory_B_rfmlp"] = (("exact_target",), Bm,
                                     {"long_name": "|f*|^2 under the RFMLP kernel, same f* = mean_i F"})
            out["theory_B_ratio"] = (("exact_target",), Bm / Br,
                                     {"long_name": "predicted sample-complexity ratio RFMLP / RFA (n ~ B / eps^2)"})
    sel = claimed & resolved
    out["verdict_attention_beats_mlp"] = _verdict(
        sel.any() and beats[sel].all(),
        f"every resolved keys-only / inner-product target: MLP rel. error >= {WIDE_MARGIN}x attention's at n_max "
        "(CI above 1)")
    if "keykey" in targets:
        t = targets.index("keykey")
        att_idx = [mi[m] for m in models if m != "rfmlp"]
        kk = mean[t][:, att_idx]
        out["keykey_min_attention_rel_err"] = ((), float(kk.min()))
        out["verdict_keykey_not_learned"] = _verdict(
            kk.min() >= KEYKEY_MIN, f"key-key control: every attention model's mean rel. error >= {KEYKEY_MIN} at every n")
    if "keys1" in targets and "rfa" in models:
        t = targets.index("keys1")
        both = [mi["rfa"], mi["rfmlp"]]
        out["verdict_both_learn_linear"] = _verdict(mean[t, -1, both].max() <= 0.05,
                                                    "keys1 (degree 1): RFA and RFMLP both <= 0.05 at n_max "
                                                    "(the advantage needs degree >= 2)")
    out.attrs["verdict_tolerances"] = (f"WIDE_MARGIN={WIDE_MARGIN}; RESOLVE_MAX={RESOLVE_MAX}; KEYKEY_MIN={KEYKEY_MIN}; "
                                       f"Z_CI={Z_CI}")
    return out


def analyze_N(ds: xr.Dataset) -> xr.Dataset:
    params = _params(ds)
    targets = [str(t) for t in ds["target"].values]
    Ns = ds["N"].values.astype(int)
    rel = ds["rel_err"].transpose("target", "N", "model", "rep").values
    mean, se = _mean_se(rel)
    models = [str(m) for m in ds["model"].values]
    ia, im = models.index("rfa"), models.index("rfmlp")
    spread = mean.max(axis=1) - mean.min(axis=1)  # (target, model)
    inc = mean[:, -1, im] - mean[:, 0, im]
    inc_se = np.sqrt(se[:, -1, im] ** 2 + se[:, 0, im] ** 2)
    slope = np.array([[np.polyfit(np.log(Ns), mean[t, :, m], 1)[0] for m in range(len(models))]
                      for t in range(len(targets))])
    out = xr.Dataset(coords={"target": ds["target"].values, "N": ds["N"].values, "model": ds["model"].values})
    out["mean_rel_err"] = (("target", "N", "model"), mean)
    out["sem_rel_err"] = (("target", "N", "model"), se)
    out["spread_over_N"] = (("target", "model"), spread, {"long_name": "max - min over N of mean_rel_err"})
    out["slope_vs_logN"] = (("target", "model"), slope, {"long_name": "OLS slope of mean_rel_err on log N"})
    out["mlp_increase"] = (("target",), inc, {"long_name": "RFMLP mean_rel_err(N_max) - mean_rel_err(N_min)"})
    out["mlp_increase_se"] = (("target",), inc_se)
    Bs = [_exact_B(targets, params, m, int(N)) for m in ("rfa", "rfmlp") for N in Ns]
    if all(b is not None for b in Bs):
        B = np.array(Bs).reshape(2, len(Ns), len(targets)).transpose(2, 1, 0)
        out = out.assign_coords(kernel_model=str_coord(("rfa", "rfmlp")))
        out["theory_log10_B"] = (("target", "N", "kernel_model"), np.log10(B),
                                 {"long_name": "log10 RKHS norm^2 of f* = mean_i F (RFA: N-free; RFMLP grows with N)"})
    flat = spread[:, ia] <= FLAT_TOL
    deg = (inc >= DEGRADE_MIN) & (inc > Z_CI * inc_se)
    out["attention_flat"] = (("target",), flat, {"description": f"RFA spread over N <= {FLAT_TOL}"})
    out["mlp_degrades"] = (("target",), deg, {"description": f"RFMLP increase >= {DEGRADE_MIN} and > {Z_CI} se"})
    out["verdict_attention_flat_in_N"] = _verdict(flat.all(), f"every target: RFA rel. error varies by <= {FLAT_TOL} over N")
    out["verdict_mlp_degrades_in_N"] = _verdict(deg.all(), f"every target: RFMLP rel. error grows by >= {DEGRADE_MIN} "
                                                           "from N_min to N_max")
    out.attrs["verdict_tolerances"] = f"FLAT_TOL={FLAT_TOL}; DEGRADE_MIN={DEGRADE_MIN}; Z_CI={Z_CI}"
    return out


def _bias_effect(target) -> int:
    """Theory's sign of the bias effect (spec §3.4): +1 lowers the risk (query-key inner
    products, attention-like), -1 raises it (keys-only, query-only), 0 no prediction."""
    fam, _ = rs.parse_target(target)
    return {"pair": 1, "attn": 1, "keys": -1, "query": -1}.get(fam, 0)


def analyze_bias(ds: xr.Dataset) -> xr.Dataset:
    targets = [str(t) for t in ds["target"].values]
    r = ds["r"].values.astype(float)
    rel = ds["rel_err"].transpose("target", "r", "rep").values
    mean, se = _mean_se(rel)
    i0 = int(np.where(r == 0.0)[0][0])
    lr_mean, lr_se = _log_ratio(rel, rel[:, i0:i0 + 1, :])  # log(err(r) / err(0)), (target, r)
    pos = np.where(r > 0)[0]
    best = pos[np.argmin(mean[:, pos], axis=1)]
    T = len(targets)
    gain = np.exp(-lr_mean[np.arange(T), best])
    gain_lo = np.exp(-(lr_mean[np.arange(T), best] + Z_CI * lr_se[np.arange(T), best]))
    imax = int(np.argmax(r))
    loss = np.exp(lr_mean[:, imax])
    loss_lo = np.exp(lr_mean[:, imax] - Z_CI * lr_se[:, imax])
    order = np.argsort(r)
    diffs = np.diff(mean[:, order], axis=1)
    dse = np.sqrt(se[:, order][:, 1:] ** 2 + se[:, order][:, :-1] ** 2)
    monotone_up = np.all(diffs >= -Z_CI * dse, axis=1)
    effect = np.array([_bias_effect(t) for t in targets], dtype=np.int8)
    lowers = (gain >= HELP_FACTOR) & (gain_lo > 1.0)
    raises = (loss >= HURT_FACTOR) & (loss_lo > 1.0) & monotone_up
    out = xr.Dataset(coords={"target": ds["target"].values, "r": ds["r"].values})
    out["mean_rel_err"] = (("target", "r"), mean)
    out["sem_rel_err"] = (("target", "r"), se)
    out["ratio_to_zero_mean"] = (("target", "r"), np.exp(lr_mean),
                                 {"long_name": "geometric mean over replicates of rel_err(r) / rel_err(0)"})
    out["ratio_to_zero_mean_ci_low"] = (("target", "r"), np.exp(lr_mean - Z_CI * lr_se))
    out["ratio_to_zero_mean_ci_high"] = (("target", "r"), np.exp(lr_mean + Z_CI * lr_se))
    out["best_r"] = (("target",), r[best], {"long_name": "r > 0 with the lowest mean rel_err"})
    out["gain_at_best_r"] = (("target",), gain, {"long_name": "rel_err(0) / rel_err(best r)"})
    out["loss_at_r_max"] = (("target",), loss, {"long_name": "rel_err(r_max) / rel_err(0)"})
    out["theory_bias_effect"] = (("target",), effect, {"flag_values": [-1, 0, 1],
                                                       "flag_meanings": "raises_risk no_prediction lowers_risk"})
    out["lowers_risk"] = (("target",), lowers, {"description": f"gain >= {HELP_FACTOR} with CI above 1"})
    out["raises_risk"] = (("target",), raises, {"description": f"loss >= {HURT_FACTOR} with CI above 1, and mean "
                                                              "rel_err non-decreasing in r within CIs"})
    help_t, hurt_t = effect == 1, effect == -1
    out["verdict_bias_lowers_risk"] = _verdict(help_t.any() and lowers[help_t].all(),
                                               "non-zero mean lowers the risk of every inner-product / attention-like target")
    out["verdict_bias_raises_risk"] = _verdict(hurt_t.any() and raises[hurt_t].all(),
                                               "non-zero mean raises the risk of every keys-only / query-only target")
    out.attrs["verdict_tolerances"] = f"HELP_FACTOR={HELP_FACTOR}; HURT_FACTOR={HURT_FACTOR}; Z_CI={Z_CI}"
    return out


ANALYZERS = {"kernel": analyze_kernel, "rate": analyze_rate, "families": analyze_families, "N": analyze_N,
             "bias": analyze_bias}


def analyze(group: str, ds: xr.Dataset) -> xr.Dataset:
    """Fits, theory and verdicts of one group from its raw dataset (a pure function of it)."""
    return ANALYZERS[group](ds)


# --------------------------------------------------------------------------- summary

def _verdict_line(an):
    vs = [k for k in an.data_vars if k.startswith("verdict_") and an[k].ndim == 0]
    return "   verdicts: " + "  ".join(f"{k[8:]}={'yes' if bool(an[k]) else 'NO'}" for k in vs)


def summary_table(group: str, an: xr.Dataset) -> str:
    rows = [f"== {group}"]
    if group == "kernel":
        rows.append(f"   {'model':<7} {'max|z|':>7} {'rel err @M_max':>15} {'slope ± se':>16}  theory")
        for i, k in enumerate(an["kmodel"].values):
            rows.append(f"   {k:<7} {float(an['max_abs_z'][i].max()):7.2f} "
                        f"{float(an['mean_rel_rms_err'][i, -1]):15.2e} "
                        f"{float(an['err_slope'][i]):+8.3f} ± {float(an['err_slope_se'][i]):.3f}   -0.5")
    elif group == "rate":
        for t in an["target"].values:
            a = an.sel(target=t)
            rows.append(f"   {t}: rel err at (n_min, M_max) {float(a['mean_rel_err'][0, -1]):.3f} -> "
                        f"(n_max, M_max) {float(a['mean_rel_err'][-1, -1]):.3f}; (n_max, M_min) "
                        f"{float(a['mean_rel_err'][-1, 0]):.3f}")
            rows.append(f"     slope in n at M={int(an['M'][-1])}: {float(a['slope_n'][-1]):+.3f} "
                        f"[{float(a['slope_n_ci_low'][-1]):+.3f}, {float(a['slope_n_ci_high'][-1]):+.3f}] "
                        f"(bound {float(an['theory_slope_n'][-1]):+.3f}); slope in M at n={int(an['n'][-1])}: "
                        f"{float(a['slope_M'][-1]):+.3f} [{float(a['slope_M_ci_low'][-1]):+.3f}, "
                        f"{float(a['slope_M_ci_high'][-1]):+.3f}] (bound {float(an['theory_slope_M'][-1]):+.3f})")
    elif group == "families":
        models = list(an["model"].values)
        rows.append(f"   {'target':<8} " + " ".join(f"{m:>7}" for m in models)
                    + f"  {'att':>5} {'MLP/att [95% CI]':>22}  at n={int(an['n'][-1])}")
        for i, t in enumerate(an["target"].values):
            vals = " ".join(f"{float(an['mean_rel_err'][i, -1, j]):7.3f}" for j in range(len(models)))
            rows.append(f"   {t:<8} {vals}  {str(an['attention_model'][i].values):>5} "
                        f"{float(an['mlp_over_attention'][i, -1]):7.1f} [{float(an['mlp_over_attention_ci_low'][i, -1]):.1f}, "
                        f"{float(an['mlp_over_attention_ci_high'][i, -1]):.1f}]"
                        + ("" if bool(an["resolved"][i]) else "  (unresolved)"))
    elif group == "N":
        Ns = [int(v) for v in an["N"].values]
        rows.append(f"   {'target':<8} {'model':<6} " + " ".join(f"{'N=' + str(v):>7}" for v in Ns) + "   spread")
        for i, t in enumerate(an["target"].values):
            for j, m in enumerate(an["model"].values):
                vals = " ".join(f"{float(an['mean_rel_err'][i, k, j]):7.3f}" for k in range(len(Ns)))
                rows.append(f"   {t:<8} {m:<6} {vals}   {float(an['spread_over_N'][i, j]):.3f}")
    elif group == "bias":
        rs_ = [float(v) for v in an["r"].values]
        rows.append(f"   {'target':<8} " + " ".join(f"{'r=' + format(v, 'g'):>7}" for v in rs_) + "   effect (theory)")
        for i, t in enumerate(an["target"].values):
            vals = " ".join(f"{float(an['mean_rel_err'][i, k]):7.3f}" for k in range(len(rs_)))
            eff = {1: "lowers", -1: "raises", 0: "-"}[int(an["theory_bias_effect"][i])]
            rows.append(f"   {t:<8} {vals}   {eff}")
    rows.append(_verdict_line(an))
    return "\n".join(rows)


# --------------------------------------------------------------------------- main

def _prepare_root(root: Path, overwrite: bool) -> None:
    import zarr

    if root.exists() and (root / "zarr.json").exists():
        study = zarr.open_group(str(root), mode="r").attrs.get("study")
        if study != STUDY and overwrite:
            shutil.rmtree(root)
    grp = zarr.open_group(str(root), mode="a")
    if grp.attrs.get("study") != STUDY:
        grp.attrs.update({"study": STUDY, "description": "random-feature attention study; one group per sub-sweep: "
                                                         + ", ".join(SWEEPS)})


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    sweeps = make_sweeps(args)
    root = Path(args.out)
    t_all = time.perf_counter()
    _prepare_root(root, args.overwrite)
    opts = args.executor
    with contextlib.ExitStack() as stack:
        executor = None
        if opts["workers"] > 1 or opts["scheduler"] or opts["dask_local"]:
            # one executor for all groups (workers start once, each with its share of the cores)
            executor = stack.enter_context(make_executor(**opts))
        for group, sweep in sweeps.items():
            t0 = time.perf_counter()
            try:
                ds, info = run_study_sweep(sweep, args, root / group, executor=executor)
            except UsageError as e:
                raise UsageError(f"group {group}: {e}") from None
            an = analyze(group, ds)
            write_analysis(root / group, an)
            print(summary_table(group, an), flush=True)
            print(f"   ({info['cells']} cells, {info['computed']} computed, {info['resumed']} already done; "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
    import zarr

    grp = zarr.open_group(str(root), mode="a")
    grp.attrs["groups"] = sorted(set(grp.attrs.get("groups", [])) | set(sweeps))
    print(f"wrote {root} (groups {', '.join(sweeps)}) in {time.perf_counter() - t_all:.1f} s")
    if args.plot:
        from paper_figs.random_features import draw

        for path in draw(root, groups=list(sweeps)):
            print(f"figure: {path}")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog="python -m studies.random_features")


if __name__ == "__main__":
    sys.exit(main())
