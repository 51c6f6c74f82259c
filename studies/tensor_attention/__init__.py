"""Bounded-entry tensor attention: ``python -m studies.tensor_attention [--parts ...]``.

Alman & Song, *Fast attention requires bounded entries* (NeurIPS 2023, AS23, k = 2) and *How to
capture higher-order correlations?* (ICLR 2024, AS24, k = 3); theory notes ``docs/theory/tensor_attention.md``.
Conventions: inputs ``Q, K_m, V_m`` in R^{n x d} with entries in [-B, B]; logits ``s sum_l Q_il
K_1,j1,l ... K_{k-1},j_{k-1},l`` with scale ``s`` (``--scale``, default 1/d); the softmax is joint over
all key tuples; the design range of the polynomial is ``R = |s| d B^k`` (:mod:`theory.tensor_attention`).

Three experiments, each a group of one Zarr store (default ``results/tensor_attention.zarr``; the
root's identity is the study and the seed, and it lists its groups), selected by the shared
``--parts`` flag (all by default); each group is a sweep over replicates (``rep``, one cell each):

* ``error`` (:mod:`.error`) -- ``||T_approx - T_exact||_inf`` of the polynomial method (Taylor,
  Chebyshev) against exact attention over degree g and entry bound B, for orders ``--k``, on
  uniform and adversarial sign-aligned inputs (``|logit| = R`` reached);
* ``runtime`` (:mod:`.runtime`) -- wall time against n of exact matrix (~n^2) and tensor (~n^3)
  attention and of the near-linear approximations (k = 2, 3) at fixed (d, g), log-log slopes over
  the window of sizes whose time is measurable, and the crossover n (described, not claimed);
* ``match3`` (:mod:`.match3`) -- accuracy on Match3 (notes tensor_attention §5.1) of the exact tensor-attention
  construction, its polynomial approximation, the pairwise baselines (the Match2 head; random
  pairwise heads with a trained bilinear readout) and the majority class.

Seeds: replicate ``rep`` of a group draws from ``SeedSequence(root_seed, spawn_key=(rep, K))``,
``K`` = 0, 1, 2 for error, runtime, match3 (:mod:`.common`): the streams of the earlier layout, in
which every cell ran the three experiments, so a seed gives the numbers it gave then, and which
groups run changes none of them.

Claims (:mod:`studies.claims`; every prediction from :mod:`theory.tensor_attention` for this run's
d, scale, k, B, g, n, N and M, read from the store):

* ``bound`` (per family, k): wherever the polynomial's relative error on [-R, R] is ``eps < 1``,
  ``||T_approx - T_exact||_inf <= 2 eps/(1 - eps) prod_m ||V_m||_inf`` (plus float64 rounding).
  ``eps`` comes from :func:`theory.tensor_attention.reference_relative_error`, computed without
  the coefficients the approximation uses, so a wrong coefficient is caught; not tested where
  ``eps >= 1`` at every (B, g) (the bound is undefined there);
* ``error_profile`` (per family, k; the sharp claim): every run's error equals theory's prediction
  for that very input -- the polynomial's relative-error profile ``delta(x) = P(x) e^{-x} - 1`` at
  the realised logits through the exact softmax weights, ``sum_J p_J (delta_J - mean delta) V_J /
  (1 + mean delta)`` (notes tensor_attention §2.8), the inputs drawn again from the stored seed -- within float64
  rounding; ``bound`` stays as the paper's (weaker) guarantee;
* ``decay`` (per family, k, B; sign-aligned inputs): the error falls with g at the rate of
  ``eps(g)`` -- the slope of log10 error on g equals theory's slope of log10 eps over the degrees
  where ``eps`` lies between 100 x the float64 allowance and 0.1 (not tested with fewer than 3);
* ``exact_slope`` / ``approx_slope`` (per matrix, tensor): the log-log slope of wall time on n
  over the measurable window equals the slope of theory's flop model (lower-order terms included)
  over that window (the replicates' own slopes, t with reps - 1 dof), within z SE plus the
  declared band (notes tensor_attention §5 item 16); not tested when fewer than 3 sizes take >= 30 ms, or when the
  tolerance reaches one power of n (the power rule);
* ``match3_tensor`` (per N; a *consistency* check: an exact construction of the theory, which only
  its own code or the engine it runs on can break): the exact construction classifies every token, as
  :func:`theory.tensor_attention.match3_predicted_accuracy` predicts from its readout margin
  against the float64 rounding for this (N, M);
* ``match3_pairwise`` (per baseline, N): pairwise attention cannot solve Match3 (SHT23): its
  accuracy does not exceed the majority-class rate by more than z paired standard errors.

This module is the study (the names of :data:`studies.SHAPE`): its options, defaults and checks,
``parts`` (one sweep per group asked for), and ``analyze``/``summary``, which dispatch on the
stored group name to the group's module. Every analysis reads the run's parameters from the store
(``params_json``), so ``python -m studies.reanalyze`` re-derives the claims of a finished store.

``--device gpu`` runs the engines on their GPU twins (:mod:`gpu.tensor_attention`, through
``sim.tensor_attention``'s dispatch on device arrays): inputs are drawn on the host from the cell's
stream (the error group sees the CPU run's inputs), timings are synchronised, and in the match3
group only the exact construction runs on the GPU kernel.

Dataset: per group its raw data (error: ``err_out``/``rejected``/``vmax``; runtime: ``time_*``;
match3: ``match3_acc``/``match3_positive`` per sequence), then fits, ``theory_*`` predictions and
the claims (``claim_*`` over the ``claim`` dimension).
"""
from __future__ import annotations

import math
import sys

import numpy as np

from sim import tensor_attention as sta  # noqa: F401 - the engines every group calls (tests patch them here)
from studies.cli import (
    PAIR_RATE,
    Part,
    StoreParamsError,
    UsageError,
    check_resources,
    check_scores,
    choice_list,
    group_of,
    nonnegative_int,
    parse_n_grid,
    parse_range,
    positive_float,
    positive_int,
    study_main,
)
from studies.tensor_attention.common import GROUPS, SCALES, STUDY
from studies.tensor_attention.error import (
    INPUTS,
    analyze_error,
    error_sweep,
    summary_error,
)
from studies.tensor_attention.match3 import (  # noqa: F401 - a cell, for the GPU tests
    MODELS,
    PAIRWISE,
    _match3_part,
    analyze_match3,
    match3_sweep,
    summary_match3,
)
from studies.tensor_attention.runtime import (  # noqa: F401 - the crossover helper
    IMPL_ORDER,
    IMPLS,
    _crossing,
    analyze_runtime,
    runtime_sweep,
    summary_runtime,
)
from theory import tensor_attention as th

__all__ = ["STUDY", "GROUPS", "DESCRIPTION", "EXAMPLES", "DEFAULTS", "QUICK", "PRESETS", "METHODS", "INPUTS",
           "IMPLS", "IMPL_ORDER", "MODELS", "PAIRWISE", "EXACT_LIMITS", "add_arguments", "validate", "parts",
           "analyze", "summary", "main"]

METHODS = th.METHODS
DEFAULTS = {"B": "0.5..2:0.25", "degrees": "1..16", "n_error": 64, "reps": 4,
            "n_approx": "2^12..2^20", "n_matrix": "2^7..2^15", "n_tensor": "16..1024/13",
            "N": "8,12,16,24", "sequences": 50, "train": 200}
QUICK = {"B": "0.5,1,2", "degrees": "2,4,8", "n_error": 16, "reps": 2,
         "n_approx": "2^10..2^12", "n_matrix": "2^6..2^10:2", "n_tensor": "8..64/4",
         "N": "8,12", "sequences": 6, "train": 20}
PRESETS: dict = {}
EXACT_LIMITS = {"tensor": 1024, "matrix": 2**16, "error_tuples": 2**30}

DESCRIPTION = ("Bounded-entry matrix/tensor attention (Alman & Song): polynomial-method error vs degree and entry "
               "bound, runtime vs n (exact ~n^k, approximation ~n), and Match3 accuracy of tensor vs pairwise "
               "attention.")

EXAMPLES = """\
examples:
  python -m studies.tensor_attention                          # all three groups (about a minute)
  python -m studies.tensor_attention --quick --plot           # seconds
  python -m studies.tensor_attention --parts error --k 2,3 --B 0.5..2.5:0.25 --degrees 0..20
  python -m studies.tensor_attention --parts runtime --n-tensor 2^7..2^11 --force
  python -m studies.tensor_attention --parts match3 --N 8..32:8 --sequences 100
  python -m paper_figs.tensor_attention results/tensor_attention.zarr
"""

SWEEPS = {"error": error_sweep, "runtime": runtime_sweep, "match3": match3_sweep}
ANALYZERS = {"error": analyze_error, "runtime": analyze_runtime, "match3": analyze_match3}
SUMMARIES = {"error": summary_error, "runtime": summary_runtime, "match3": summary_match3}


# --------------------------------------------------------------------------- options

def add_arguments(p) -> None:
    """The study's own options: the shared sizes, then each group's."""
    p.add_argument("--d", type=positive_int, default=4, help="head dimension d (default 4)")
    p.add_argument("--scale", choices=tuple(SCALES), default="1/d",
                   help="softmax scale of the logits (default 1/d, the papers' convention; the "
                        "logit range is |scale| d B^k)")
    _add_error_options(p.add_argument_group("error group"))
    _add_runtime_options(p.add_argument_group("runtime group"))
    _add_match3_options(p.add_argument_group("match3 group"))
    p.add_argument("--reps", type=positive_int, default=None,
                   help=f"replicates (sweep cells of every group), each with fresh inputs "
                        f"(default {DEFAULTS['reps']}; --quick {QUICK['reps']})")
    p.add_argument("--force", action="store_true",
                   help="allow exact attention at sizes beyond the default limits (slow)")


def _add_error_options(g) -> None:
    g.add_argument("--k", type=lambda t: parse_range(t, int), default=(2, 3), metavar="RANGE",
                   help="attention orders (2 = matrix, 3 = tensor, 4 allowed; default 2,3)")
    g.add_argument("--B", type=lambda t: parse_range(t, float), default=None, metavar="RANGE",
                   help=f"entry bounds B (inclusive ranges: 0.5..2:0.25; default {DEFAULTS['B']}; "
                        f"--quick {QUICK['B']})")
    g.add_argument("--degrees", type=lambda t: parse_range(t, int), default=None, metavar="RANGE",
                   help=f"polynomial degrees g >= 0 (default {DEFAULTS['degrees']}; --quick {QUICK['degrees']})")
    g.add_argument("--methods", type=choice_list(METHODS, "method(s)", in_allowed_order=True), default=METHODS,
                   metavar="LIST", help="polynomial families: taylor,chebyshev (default both)")
    g.add_argument("--n-error", dest="n_error", type=positive_int, default=None,
                   help=f"tokens per input in the error group (default {DEFAULTS['n_error']}; "
                        f"--quick {QUICK['n_error']}); exact attention costs n^k")


def _add_runtime_options(g) -> None:
    g.add_argument("--n-approx", dest="n_approx", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"n grid of the approximations (default {DEFAULTS['n_approx']}; --quick {QUICK['n_approx']})")
    g.add_argument("--n-matrix", dest="n_matrix", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"n grid of exact matrix attention (default {DEFAULTS['n_matrix']}; "
                        f"--quick {QUICK['n_matrix']}; above {EXACT_LIMITS['matrix']} needs --force)")
    g.add_argument("--n-tensor", dest="n_tensor", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"n grid of exact tensor attention (default {DEFAULTS['n_tensor']}; "
                        f"--quick {QUICK['n_tensor']}; above {EXACT_LIMITS['tensor']} needs --force)")
    g.add_argument("--timing-degree", dest="timing_degree", type=nonnegative_int, default=8,
                   help="degree g of the timed approximations (default 8, Chebyshev)")
    g.add_argument("--timing-B", dest="timing_B", type=positive_float, default=1.0,
                   help="entry bound of the timed inputs (default 1)")


def _add_match3_options(g) -> None:
    g.add_argument("--N", type=lambda t: parse_range(t, int), default=None, metavar="RANGE",
                   help=f"sequence lengths (default {DEFAULTS['N']}; --quick {QUICK['N']}); "
                        "modulus M = round(N^2/ln 4) (about half positive labels)")
    g.add_argument("--sequences", type=positive_int, default=None,
                   help=f"test sequences per N and replicate (default {DEFAULTS['sequences']}; "
                        f"--quick {QUICK['sequences']})")
    g.add_argument("--train", type=positive_int, default=None,
                   help=f"training sequences of the pairwise readout (default {DEFAULTS['train']}; "
                        f"--quick {QUICK['train']})")
    g.add_argument("--match3-degree", dest="match3_degree", type=nonnegative_int, default=8,
                   help="even degree of the Taylor approximation tried at the construction's "
                        "entry bound (default 8)")


# --------------------------------------------------------------------------- checks

def _groups(args) -> tuple:
    """The groups this run makes (``--parts``; all by default), in the order of :data:`GROUPS`."""
    chosen = getattr(args, "parts", None) or GROUPS
    return tuple(g for g in GROUPS if g in chosen)


def validate(args) -> None:
    """The study's own checks, after the defaults are applied: grids, the exact-size limits (lifted
    by ``--force``), the logit range, memory and work, and the Chebyshev conversions."""
    groups = _groups(args)
    _check_grids(args, groups)
    if not args.force:
        _check_exact_sizes(args, groups)
    scale = SCALES[args.scale](args.d)
    with np.errstate(over="ignore"):
        check_scores(abs(scale) * args.d * np.float64(max(max(args.B), args.timing_B)) ** max(args.k),
                     "--B / --timing-B (logit range |s| d B^k)")
    _check_work(args, groups)
    if "error" in groups:
        _check_chebyshev(args, scale)


def _check_grids(args, groups) -> None:
    if min(args.degrees) < 0:
        raise UsageError(f"--degrees: the polynomial degree must be >= 0 (got {min(args.degrees)})")
    if min(args.B) <= 0 or not all(math.isfinite(b) for b in args.B):
        raise UsageError(f"--B: entry bounds must be positive (got {min(args.B):g})")
    if min(args.k) < 2 or max(args.k) > 4:
        raise UsageError("--k: attention orders must be 2, 3 or 4")
    if args.reps < 2:
        raise UsageError("--reps: standard errors need at least 2 replicates")
    if "match3" in groups:
        if min(args.N) < 2:
            raise UsageError("--N: Match3 sequences need at least 2 tokens")
        if args.match3_degree % 2:
            raise UsageError("--match3-degree must be even (an odd Taylor polynomial is not "
                             "positive outside its range, and the construction's logits are huge)")
    if "runtime" in groups:
        for name in ("n_approx", "n_matrix", "n_tensor"):
            if len(getattr(args, name)) < 3:
                raise UsageError(f"--{name.replace('_', '-')}: a slope fit needs at least 3 sizes")


def _check_exact_sizes(args, groups) -> None:
    if "runtime" in groups and max(args.n_tensor) > EXACT_LIMITS["tensor"]:
        raise UsageError(f"--n-tensor: exact tensor attention at n = {max(args.n_tensor)} costs "
                         f"n^3 = {float(max(args.n_tensor))**3:.1e} triples; the limit is n <= "
                         f"{EXACT_LIMITS['tensor']} (pass --force to run it anyway)")
    if "runtime" in groups and max(args.n_matrix) > EXACT_LIMITS["matrix"]:
        raise UsageError(f"--n-matrix: exact matrix attention above n = {EXACT_LIMITS['matrix']} "
                         f"is too slow for a sweep (pass --force to run it anyway)")
    if "error" in groups and float(args.n_error) ** max(args.k) > EXACT_LIMITS["error_tuples"]:
        raise UsageError(f"--n-error: exact order-{max(args.k)} attention at n = {args.n_error} "
                         f"costs {float(args.n_error) ** max(args.k):.1e} tuples per input "
                         f"(limit {EXACT_LIMITS['error_tuples']:.1e}; pass --force)")


def _check_work(args, groups) -> None:
    """Memory of the polynomial features and the work of the selected groups, before anything runs."""
    g_max = max(max(args.degrees), args.timing_degree)
    r = float(th.rank(args.d, g_max))
    r_time = float(th.rank(args.d, args.timing_degree))
    n_time = max(args.n_approx) if "runtime" in groups else 0
    features = max(args.n_error * r if "error" in groups else 0.0, n_time * r_time)
    work = 0.0
    if "error" in groups:
        work += (args.reps * len(args.methods) * len(args.B) * len(args.degrees) * 2
                 * sum(float(args.n_error) ** k for k in args.k) * args.d)
    if "runtime" in groups:
        work += args.reps * 3 * (sum(args.n_approx) * r_time * args.d * 2
                                 + sum(float(n) ** 2 for n in args.n_matrix) * args.d
                                 + sum(float(n) ** 3 for n in args.n_tensor) * args.d)
    check_resources(f"polynomial features of rank up to {r:.3g} (d = {args.d}, g <= {g_max})",
                    memory=8.0 * (4 * features + 4 * r * args.d), work_s=work / PAIR_RATE)


def _check_chebyshev(args, scale) -> None:
    """Every Chebyshev polynomial of the error grid converts to monomials in float64."""
    if "chebyshev" not in args.methods:
        return
    for k in args.k:
        for B in args.B:
            R = th.logit_range(B, k, args.d, scale)
            for g in args.degrees:
                try:
                    th.chebyshev_coefficients(g, R)
                except ValueError:
                    raise UsageError(f"--degrees/--B: the Chebyshev polynomial of degree {g} on "
                                     f"[-{R:g}, {R:g}] (k={k}, B={B:g}) cannot be converted to "
                                     "monomials in float64; lower the degree or B") from None


# --------------------------------------------------------------------------- the study

def parts(args) -> list[Part]:
    """One part per group asked for (``--parts``), each a sweep into its own group of the store."""
    return [Part(group, sweep=SWEEPS[group](args)) for group in _groups(args)]


def analyze(ds):
    """Fits, theory and claims of one group of the store, from its data and stored parameters
    alone; the group is the stored name (``tensor_attention/<group>``)."""
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
