"""Random-feature attention study: ``python -m studies.random_features [--parts ...]``.

Measures what a single random-feature attention layer learns (Fu, Guo, Bai, Mei, *What can a
single attention layer learn? A study through the random features lens*, NeurIPS 2023; theory
notes ``docs/theory/random_features.md``, reconstructed conventions recorded as parameters) and sets
it against the theory of :mod:`theory.random_features` computed for the run's own d, N, M,
grids, targets and conventions.

Model (notes random_features §2): a query x0 and N keys on S^{d-1} (``x0: (n, d)``, ``X: (n, N, d)``), M heads
with frozen query-key matrices ``W_m = mu Wbar + G_m`` (``G`` i.i.d. N(0, s^2), unit-variance
scores by default; bias ratio r = mu/sqrt(d) over the score's sd; r = 0 is RFA, r > 0 BRFA)
and trained values: ``f(x0, X) = sum_m (1/N) sum_i sigma(x~0^T W_m x~_i) <v_m, x~_i>``,
x~ = [x; 1]. Baseline: an RF-MLP on the flattened input with the same number M (d+1) of
trained parameters. Fits: ridge on mean-centred features, lambda on validation; excess risk =
test MSE against the noiseless target; relative error = excess risk / Var(target).

Five sub-sweeps, each a resumable group of one Zarr store (default
``results/random_features.zarr``; the root's identity is the study and the seed, and it lists
its groups), selected by the shared ``--parts`` flag (all by default) and run by
:func:`studies.cli.run_study` with one shared executor:

* ``kernel``   -- M-head empirical kernel vs the closed-form infinite-head kernel (rfa, brfa,
  RFMLP) on fixed input pairs; ``K_emp(pair, kmodel, M, rep)``, ``K_head_sd``;
* ``rate``     -- zero-mean RFA over training sizes n and heads M;
  ``rel_err/test_mse(target, n, M, rep)``;
* ``families`` -- RFA, BRFA and the RF-MLP on the target families vs n;
  ``rel_err(target, n, model, rep)``;
* ``N``        -- RFA and the RF-MLP at fixed n for several numbers of keys;
  ``rel_err(target, N, model, rep)``;
* ``bias``     -- BRFA over bias ratios r (r = 0 is RFA) at fixed n; ``rel_err(target, r, rep)``.

Claims (:mod:`studies.claims`, ids ``random_features.<name>``; z from ``z_family`` over each
claim's tests, Student t with reps - 1 dof where the standard errors come from the replicates;
"not tested" with the reason where the theory or the grid does not reach, where the tolerance is
as large as the effect a claim tests (the power rule), and where the fits sit at their numerical
floor (smallest ridge chosen everywhere, relative error <= 1e-4: notes random_features §4.5)):

==========================  ===================================================================
``kernel_clt``              per kmodel: every z-score of K_emp against the closed form within the
                            Bonferroni normal band (t with M-1 dof mapped to normal)
``kernel_rate``             per kmodel: slope of the relative kernel error vs M = -1/2 ± z SE
``permutation_invariance``  per attention kmodel: K(X, perm X) = K(X, X) (declared float64 allowance;
                            a consistency check: an identity of the feature code)
``below_bound``             per rate target: excess risk <= sqrt(B R^2/n) + sqrt(B R^2/M) (B, R^2 of
                            this target, N, d, conventions; constants 1) where the bound < Var f*;
                            "not tested" where it is vacuous (at the default grid it is)
``risk_exponent_n``         per rate target (keys/pair/bilin): at M_max, the replicates' slope of the risk in
                            n = the slope of theory's deterministic equivalent of ridge regression on
                            M (d+1) random features with the kernel's exact spectrum (notes random_features §4.4), within
                            z SE + a declared model error; two-sided, the sharp claim of the rate group
``risk_slope_n``            per rate target: at M_max, over n <= P (trained parameters), the risk's
                            log-log slope <= the bound's slope over the same n + z SE
``risk_slope_M``            per rate target: at n_max, over P <= n_max, slope in M <= the bound's + z SE
``beats_mlp``               per families target with a closed-form B: the measured n_mlp/n_rfa at the
                            RF-MLP's final error >= B_mlp R_mlp^2/(B_rfa R_rfa^2) (jackknife SE; a
                            censored lower bound holds when it already exceeds the prediction)
``outside_class``           per target orthogonal to every attention feature (key-key control; a
                            Gegenbauer target whose eigenvalue vanishes, e.g. keys2 --no-augment):
                            rel. error >= 1 - z SE at every n
``attention_N_free``        per N target: RFA's err(N) follows its table exponent (N^0) rather than
                            the RF-MLP's (N^(b/2)): Delta chi^2 of the two fixed-exponent forms >= z^2
``mlp_degrades_in_N``       per N target where B_mlp(N) grows: log err(N_max) - log err(N_min) > 0
``bias_lowers_risk``,       per bias target with a predicted sign (theory.random_features.bias_effect):
``bias_raises_risk``        paired log err(r ~ 1) - log err(0) < 0 (pair, attn) or > 0 (keys, query);
                            "not tested" for conventions the argument of notes random_features §3.4 does not cover
==========================  ===================================================================

Data (inputs, beta, S) depend on (root seed, replicate) only, so models, M and r at one
replicate see the same data (paired comparisons); the random heads come from the cell seed.
Each group holds the raw per-replicate measurements, means and standard errors, fitted slopes
with SEs, ``theory_*`` predictions and its claims (``claim_*`` over the ``claim`` dimension).

The package: this module is the study (the names of :data:`studies.SHAPE`: its options, their
defaults, its checks, ``parts``, and ``analyze``/``summary``, which dispatch on the stored group
name); :mod:`.cells` holds the parameters, the seeded cells and the five sweeps; :mod:`.common`
the claims and the helpers the analyses share; :mod:`.kernel`, :mod:`.rate`, :mod:`.families`,
:mod:`.n_keys` (group ``N``) and :mod:`.bias` each hold one group's analysis, claims and table.
Every analysis reads the run's parameters from the store (``params_json``), never the command
line, so ``python -m studies.reanalyze`` re-derives the claims of any finished store.

``--device gpu`` runs every cell on the GPU: inputs, targets and heads are drawn by CuPy's Philox
stream (so the numbers differ from a CPU run, statistically equal), attention features come from
the numba-cuda kernel of :mod:`gpu.random_features`, RFMLP features and Gram products from cuBLAS,
and the ridge path's eigendecompositions from ``cupy.linalg.eigh``; only the per-cell summaries
return to the host. It defaults to one in-process worker (the device's owner). Without a usable
GPU it is a one-line usage error (exit 2).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from sim import random_features as rs
from studies.cli import (
    Part,
    StoreParamsError,
    UsageError,
    check_resources,
    choice_list,
    finite_float,
    group_of,
    nonnegative_float,
    parse_n_grid,
    parse_range,
    positive_float,
    positive_int,
    study_main,
)
from studies.random_features.bias import analyze_bias, summary_bias
from studies.random_features.cells import (  # noqa: F401
    DATA_KEY,
    GROUPS,
    KERNEL_KEY,
    KERNEL_MODELS,
    MODELS,
    N_MODELS,
    STUDY,
    _common_params,
    kernel_inputs,
    make_sweeps,
)
from studies.random_features.common import CLAIMS
from studies.random_features.families import analyze_families, summary_families
from studies.random_features.kernel import analyze_kernel, summary_kernel
from studies.random_features.n_keys import analyze_N, summary_N
from studies.random_features.rate import analyze_rate, summary_rate
from theory import random_features as rft

__all__ = ["STUDY", "GROUPS", "DESCRIPTION", "EXAMPLES", "DEFAULTS", "QUICK", "PRESETS", "TARGETS", "MODELS",
           "KERNEL_MODELS", "N_MODELS", "DATA_KEY", "KERNEL_KEY", "CLAIMS", "add_arguments", "validate", "parts",
           "make_sweeps", "kernel_inputs", "analyze", "analyze_kernel", "analyze_rate", "analyze_families",
           "analyze_N", "analyze_bias", "summary", "main"]

TARGETS = {"families": "keys1,keys2,keys3,pair1,pair2,attn,keykey", "rate": "keys2,pair1",
           "N": "keys2,pair1", "bias": "keys2,pair1,pair2,attn"}
# six replicates: the claims' standard errors come from them (Student t with reps - 1 dof), and with
# four the paired bias and slope claims cannot resolve their effects (theory notes, "Statistics shared by the claims")
DEFAULTS = {"d": 8, "N": 8, "M": 128, "M_grid": "16,32,64,128", "n": "2^8..2^12", "n_fixed": 2048,
            "n_val": 1024, "n_test": 2048, "reps": 6, "N_grid": "2,8,32", "r_grid": "0,0.35,0.5,1,2",
            "kernel_M": "2^6..2^14:2", "kernel_reps": 4, "kernel_pairs": 12,
            "targets": TARGETS["families"], "rate_targets": TARGETS["rate"], "N_targets": TARGETS["N"],
            "bias_targets": TARGETS["bias"]}
QUICK = {"d": 6, "N": 4, "M": 24, "M_grid": "8,16,32", "n": "2^6..2^8/5", "n_fixed": 192,
         "n_val": 192, "n_test": 256, "reps": 2, "N_grid": "2,4", "r_grid": "0,1",
         "kernel_M": "2^6,2^10", "kernel_reps": 2, "kernel_pairs": 6}
PRESETS: dict = {}

DESCRIPTION = ("Random-feature attention (RFA/BRFA) vs a random-feature MLP: infinite-head kernel, risk vs (n, M) "
               "against the excess-risk bound, target families, N-independence and the non-zero-mean (bias) "
               "effect.")

EXAMPLES = """\
examples:
  python -m studies.random_features                      # all five sub-sweeps (about 1-2 minutes)
  python -m studies.random_features --parts families,bias --plot
  python -m studies.random_features --parts rate --M-grid 16..128:16 --n 2^8..2^13 --reps 5
  python -m studies.random_features --parts N --N-grid 2,4,8,16,32 --n-fixed 4096
  python -m studies.random_features --quick --out /tmp/rf.zarr
  python -m studies.random_features --poly hermite --activation softmax --parts families
  python -m studies.random_features --device gpu --M 512 --n 2^10..2^14   # CuPy + numba-cuda kernels
  python -m paper_figs.random_features results/random_features.zarr

targets: keys<p> = mean_i P_p(<beta,x_i>), query<p> = P_p(<beta,x_0>), pair<p> = mean_i P_p(<x_0,x_i>),
  bilin<p> = mean_i P_p(<x_0,S x_i>), attn = mean_i relu(u_i) b_i, keykey = key-key control
"""

ANALYZERS = {"kernel": analyze_kernel, "rate": analyze_rate, "families": analyze_families, "N": analyze_N,
             "bias": analyze_bias}
SUMMARIES = {"kernel": summary_kernel, "rate": summary_rate, "families": summary_families, "N": summary_N,
             "bias": summary_bias}


# --------------------------------------------------------------------------- options

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


def _w_var(text):
    return None if text == "auto" else positive_float(text)


def add_arguments(p) -> None:
    """The study's own options: sizes and grids, targets and the fit, the feature conventions."""
    p.add_argument("--reps", type=positive_int, default=None,
                   help=f"replicates (data and heads redrawn) per cell (default {DEFAULTS['reps']}; "
                        f"--quick {QUICK['reps']})")
    _add_sizes(p.add_argument_group("sizes"))
    _add_targets_and_fit(p.add_argument_group("targets and fit"))
    _add_conventions(p.add_argument_group("conventions (notes random_features §2.6; all recorded in the dataset)"))


def _add_sizes(s) -> None:
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


def _add_targets_and_fit(t) -> None:
    t.add_argument("--targets", type=_targets, default=None, metavar="LIST",
                   help=f"targets of the families sweep (default {TARGETS['families']})")
    t.add_argument("--rate-targets", dest="rate_targets", type=_targets, default=None, metavar="LIST",
                   help=f"targets of the rate sweep (default {TARGETS['rate']})")
    t.add_argument("--N-targets", dest="N_targets", type=_targets, default=None, metavar="LIST",
                   help=f"targets of the N sweep (default {TARGETS['N']})")
    t.add_argument("--bias-targets", dest="bias_targets", type=_targets, default=None, metavar="LIST",
                   help=f"targets of the bias sweep (default {TARGETS['bias']})")
    t.add_argument("--models", type=choice_list(MODELS, "model"), default=MODELS, metavar="LIST",
                   help="models of the families sweep: rfa (zero-mean), brfa (biased), rfmlp (default all)")
    t.add_argument("--poly", choices=rs.POLYS, default="gegenbauer",
                   help="per-term polynomial: gegenbauer (pure degree on the sphere, default) or hermite")
    t.add_argument("--noise", type=nonnegative_float, default=0.0,
                   help="label noise on train/validation labels, in units of sd(target) (default 0)")
    t.add_argument("--lambda-min", dest="lambda_min", type=positive_float, default=1e-7,
                   help="smallest ridge lambda (default 1e-7)")
    t.add_argument("--lambda-max", dest="lambda_max", type=positive_float, default=1.0,
                   help="largest ridge lambda (default 1)")
    t.add_argument("--lambda-count", dest="lambda_count", type=positive_int, default=15,
                   help="lambdas, log-spaced (default 15); penalty n*lambda*|v|^2")


def _add_conventions(c) -> None:
    c.add_argument("--activation", choices=rs.ACTIVATIONS, default="relu",
                   help="score activation: relu (default, 1/N over keys), identity, softmax over keys")
    c.add_argument("--no-augment", dest="augment", action="store_false",
                   help="do not append the constant coordinate 1 to query and keys")
    c.add_argument("--w-var", dest="w_var", type=_w_var, default=None, metavar="VAR",
                   help="entry variance of the query-key matrices (default auto: unit-variance scores, 1/4)")
    c.add_argument("--mean-shape", dest="mean_shape", choices=rft.MEAN_SHAPES, default="diag",
                   help="shape of the non-zero mean: diag = diag(I_d, 0) (default) or identity = I_{d+1}")
    c.add_argument("--r-bias", dest="r_bias", type=finite_float, default=1.0,
                   help="bias ratio r = mu/sqrt(d) of BRFA in the kernel and families sweeps (default 1)")
    c.add_argument("--value", choices=rft.VALUES, default="augmented",
                   help="value vectors act on [x; 1] (augmented, default) or on x")
    c.add_argument("--key-norm", dest="key_norm", choices=rft.KEY_NORMS, default="mean",
                   help="normalisation over keys: mean (1/N, default) or sum")


# --------------------------------------------------------------------------- checks

def _groups(args) -> tuple:
    """The groups this run makes (``--parts``; all by default), in the order of :data:`GROUPS`."""
    chosen = getattr(args, "parts", None) or GROUPS
    return tuple(g for g in GROUPS if g in chosen)


def validate(args) -> None:
    """The study's own checks, after the defaults are applied and the device resolved."""
    sw = set(_groups(args))
    _check_values(args, sw)
    _check_groups(args, sw)
    _check_memory(args, sw)


def _check_values(args, sw) -> None:
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


def _check_groups(args, sw) -> None:
    if "kernel" in sw:
        if args.activation == "softmax":
            raise UsageError("--activation softmax has no closed-form kernel: drop 'kernel' from --parts")
        if len(args.kernel_M) < 2 or min(args.kernel_M) < 16:
            raise UsageError("--kernel-M: the kernel check needs at least 2 head counts, each >= 16")
        if args.kernel_reps < 2:
            raise UsageError("--kernel-reps must be at least 2")
        if args.kernel_pairs < 4:
            raise UsageError("--kernel-pairs must be at least 4")
    if {"rate", "families"} & sw and len(args.n) < 2:
        raise UsageError("--n: risk-vs-n curves need at least 2 training sizes")
    if "rate" in sw and (len(args.M_grid) < 2 or min(args.M_grid) < 1):
        raise UsageError("--M-grid: the rate sweep needs at least 2 positive head counts")
    if "families" in sw and ("rfmlp" not in args.models or not ({"rfa", "brfa"} & set(args.models))):
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


def _check_memory(args, sw) -> None:
    """Feature matrices and Gram matrices in float64, and the work of every ridge path."""
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
    fits = args.reps * (len(args.targets) * len(args.n) * 3 + len(args.rate_targets) * len(args.M_grid) * len(args.n)
                        + len(args.N_targets) * len(args.N_grid) * 2 + len(args.bias_targets) * len(args.r_grid))
    check_resources(f"{Pmax} random features on {max(args.n)} training samples",
                    memory=3 * worst + 4 * 8.0 * Pmax**2, work_s=fits * (Pmax**3 + max(args.n) * Pmax**2) / 1e10)


# --------------------------------------------------------------------------- the study

def parts(args) -> list[Part]:
    """One part per group asked for (``--parts``), each a sweep into its own group of the store."""
    return [Part(group, sweep=sweep) for group, sweep in make_sweeps(args, _groups(args)).items()]


def analyze(ds):
    """Fits, theory and claims of one group of the store, from its data and stored parameters
    alone; the group is the stored name (``random_features/<group>``)."""
    group = group_of(ds)
    if group not in ANALYZERS:
        raise StoreParamsError(f"{ds.attrs.get('study', 'the store')}: not a group of {STUDY} ({', '.join(GROUPS)}): "
                               "written by another version of the study; rerun it (with --overwrite)")
    return ANALYZERS[group](ds)


def summary(analysis) -> str:
    """The table of the group an analysis belongs to (the claims are printed by the runner)."""
    return SUMMARIES[group_of(analysis)](analysis)


def main(argv=None) -> int:
    return study_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
