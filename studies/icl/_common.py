"""Pieces shared by the ``studies.icl`` sub-studies: option parsers, device and seed helpers,
pooled Monte Carlo errors, the "has training reached its stage" gate and the tolerances the
claims declare (with their sources)."""
from __future__ import annotations

import math

import numpy as np

from studies.cli import nonnegative_float, parse_range

PROG = "python -m studies.icl"
SOURCE = "He, Pan, Chen, Yang (ICML 2025)"

# ---- declared tolerances, each with its source (notes icl_regression §13)
MODEL_ALLOWANCE = 0.01
MODEL_ALLOWANCE_SOURCE = ("declared model error 0.01 of a trained softmax model against its closed-form "
                          "predictor (notes icl_regression §13.7: within 0.01 of the debiased-GD curve)")
ACTIVE_MU_FRAC = 0.1  # notes icl_regression §13.5: a head is active when |mu_h| > 0.1 max_h |mu_h|
ZERO_SUM_FRAC = 0.05  # notes icl_regression §13.5: |sum_h mu_h| < 0.05 sum_h |mu_h|
DIAG_RATIO_MIN = 0.95  # notes icl_regression §13.5
LAST_ENTRY_MIN = 0.99  # notes icl_regression §13.5
KEPT_DIAG_RATIO = 0.7  # the authors' dummy-head filter for the metric averages (notes icl_regression §4)
COS_MIN = 0.99  # notes icl_regression §13.8: cos(Gamma, Gamma*) > 0.99
SPLIT_STEPS = 100_000  # notes icl_regression §9, §13.9: the H = 2N split needs >= 1e5 Adam steps


def spec(number, section: str) -> str:
    return f"declared number {number} (notes icl_regression {section})"


def data_args(sp, defaults: dict, *, sigma2: bool = True) -> None:
    """--d, --L and (unless the sub-study fixes its own noise) --sigma2, left at None: their
    defaults are the sub-study's ``DEFAULTS``."""
    from studies.cli import positive_int

    sp.add_argument("--d", type=positive_int, default=None, help=f"covariate dimension (default {defaults['d']})")
    sp.add_argument("--L", type=positive_int, default=None,
                    help=f"prompt length for training (default {defaults['L']})")
    if sigma2:
        sp.add_argument("--sigma2", type=nonnegative_float, default=None,
                        help=f"label-noise variance (default {defaults['sigma2']})")


MAX_VARIANCE = 1e6
"""The largest label variance an ICL run takes, in units of the signal's (the covariates and the
task vectors are scaled so that x^T beta has variance 1): a noise variance above 1e6 x the
signal's leaves nothing to learn at any prompt length the studies allow (L <= 10^4), and the
squared errors, their second moments and Adam's moment estimates stay far inside float64."""


def check_variance(variance: float, what: str) -> None:
    """The variance check every ICL float that scales labels or predictions goes through (the
    label variance 1 + sigma2; a value weight's square, which scales the predictor's output):
    finite and at most :data:`MAX_VARIANCE`. Raises a one-line
    :class:`~studies.cli.UsageError` before anything is created."""
    from studies.cli import UsageError

    if not (math.isfinite(variance) and variance <= MAX_VARIANCE):
        raise UsageError(f"{what}: a label or prediction variance of {variance:.3g} is outside the range the "
                         f"studies take (at most {MAX_VARIANCE:g} x the signal's variance 1)")


def sub_main(study: str, argv=None) -> int:
    """``main(argv)`` of a sub-study module: ``python -m studies.icl SUB argv`` (its catalogue
    entry's command and arguments), so every way in runs the same flow."""
    import sys

    from studies.catalog import by_name

    return by_name(study).main(list(sys.argv[1:] if argv is None else argv))


def check_in_process(args) -> None:
    """``--device gpu`` keeps the cells in this process (the GPU's owner): no workers."""
    from studies.cli import UsageError

    if args.device == "gpu" and (args.workers > 1 or args.dask_local or args.scheduler):
        raise UsageError("--device gpu runs the cells in this process (the GPU's owner); "
                         "drop --workers / --dask-local / --scheduler")


def floats(text):
    return parse_range(text, float)


def ints(text):
    return parse_range(text, int)


def device_params(device) -> dict:
    """``{"device": "gpu"}`` on the GPU (part of a run's identity), nothing on the CPU."""
    return {"device": "gpu"} if device == "gpu" else {}


def device_attr(device) -> str:
    if device != "gpu":
        return "cpu"
    import gpu  # noqa: F401  (a GPU run: registers the device with sim.backend, if not done yet)
    from sim.backend import device_name

    return device_name()


def seed_seqs(root, seed, H):
    """(data seed, init seed) of run ``seed`` with ``H`` heads: runs of one seed share their
    prompts (common random numbers), each H has its own initialisation."""
    return (np.random.SeedSequence(int(root), spawn_key=(int(seed),)),
            np.random.SeedSequence(int(root), spawn_key=(int(seed), 1, int(H))))


def pooled(mean, m2, n_per):
    """Mean and standard error over reps x n_per prompts from per-rep means and second moments
    (rep is the last axis)."""
    k = mean.shape[-1]
    N = k * n_per
    mu = mean.mean(-1)
    var = np.maximum(m2.mean(-1) - mu**2, 0.0) * N / (N - 1)
    return mu, np.sqrt(var / N)


def block_mean_se(blocks, axis=-1):
    """Mean and standard error of equal blocks (the final validation's 20 blocks)."""
    b = np.asarray(blocks, dtype=float)
    return b.mean(axis), b.std(axis, ddof=1) / math.sqrt(b.shape[axis])


def where(**kw) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())


SETTLE_WINDOW = 0.25  # the settling window: the last quarter of the logged run (notes icl_regression §13.11)
SETTLE_MIN_LOGS = 4  # ... and at least 4 logged points


def settle_window(steps) -> int:
    """The number of logged points in the settling window (the last quarter of the run, at
    least :data:`SETTLE_MIN_LOGS`)."""
    n = int(np.asarray(steps).size)
    return min(n, max(SETTLE_MIN_LOGS, n // 4))


def _trend(xs, ys) -> tuple[float, float]:
    """Least-squares slope of ``ys`` on ``xs`` and its standard error (from the scatter about
    the line; 0 with fewer than 3 points)."""
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    slope, icpt = np.polyfit(xs, ys, 1)
    k = xs.size
    if k < 3:
        return float(slope), 0.0
    res = ys - (slope * xs + icpt)
    sxx = float(np.sum((xs - xs.mean()) ** 2))
    return float(slope), float(math.sqrt(np.sum(res**2) / (k - 2) / sxx)) if sxx > 0 else 0.0


def settled(steps, y, tol: float, what: str = "validation MSE", longer: str = "--steps"):
    """Has the logged trajectory ``y(steps)`` of the quantity a claim is about stopped moving at
    the resolution of the claim's own tolerance ``tol``? The gate of every claim about a trained
    model (notes icl_regression §13.11): over the settling window (:func:`settle_window`, the
    last quarter of the run) the least-squares rate of change of ``y``, sustained over a run as
    long as this one, must move it by at most ``tol``, and the standard error of that projected
    change (from the scatter of the window's logged values about their trend) must be below
    ``tol``, so that such a drift could be seen. Independent of the value the claim predicts.

    Returns ``(ok, drift, reason)``: ``drift`` is the change over the window; the reason reads
    "training has not settled (drift X over the last N steps ...; tolerance Y); run longer"."""
    steps = np.asarray(steps, dtype=float)
    y = np.asarray(y, dtype=float)
    n = steps.size
    if n < SETTLE_MIN_LOGS:
        return False, math.nan, (f"training has not settled: {n} logged points (need >= {SETTLE_MIN_LOGS} to see "
                                 "it settle)")
    if not np.all(np.isfinite(y[-settle_window(steps):])):
        return False, math.nan, f"training has not settled: the logged {what} is not finite"
    k = settle_window(steps)
    span, run = float(steps[-1] - steps[-k]), float(steps[-1] - steps[0])
    slope, se = _trend(steps[-k:], y[-k:])
    drift, proj, proj_se = slope * span, slope * run, se * run
    if abs(proj) <= tol and proj_se < tol:
        return True, drift, ""
    at_rate = f"{proj:+.3g} at this rate over a run as long as this one, {run:,.0f} steps"
    if abs(proj) <= tol:
        return False, drift, (f"training has not settled at the claim's resolution: the drift of the {what} over the "
                              f"last {span:,.0f} steps ({drift:+.3g}; {at_rate}) is measured to +-{proj_se:.3g}, "
                              f"not below the tolerance {tol:.3g}; use more --val-prompts or run longer ({longer})")
    return False, drift, (f"training has not settled (drift {drift:+.3g} of the {what} over the last {span:,.0f} "
                          f"steps, {at_rate}; tolerance {tol:.3g}); run longer ({longer})")


def gate_claim(claim, spec, steps, series, *, what: str, tol: float | None = None):
    """``claim`` if the quantity it is about, ``series`` over the logged ``steps``, has settled
    at the claim's own tolerance (:func:`settled`; ``tol`` overrides it, for a claim without
    one), else ``spec`` not tested with the reason. A claim that was not tested stays so."""
    from studies.claims import NOT_TESTED

    if claim.outcome == NOT_TESTED:
        return claim
    t = claim.tolerance if tol is None else tol
    ok, _, why = settled(steps, series, t, what=what)
    if ok:
        return claim
    return spec.not_tested(why, where=claim.where, prediction=claim.prediction, prediction_text=claim.prediction_text,
                           measured=claim.measured, se=claim.se)


DISCRETE_TOL = 1e-9  # the settling tolerance of a count or a sign pattern: it must not change over the window


LABEL_STAGE = 1.0 / math.sqrt(2.0)  # stage indicator: the OV's label entry carries more than half its squared norm


def label_gate(ratio: float, what: str = "the heads"):
    """``(ok, reason)``: have the heads reached the stage where their OV reads the label (the
    pattern of notes icl_regression §4 that the theory describes)? From a small start, training
    can pass through a saddle where the OV reads the covariates and the KQ routes on the key's
    label (a rank-one preconditioner, loss well above the pattern's optimum but flat for
    hundreds of steps); there a settled loss is not the stage's. The indicator is the
    last-entry ratio ``|u[d]| / ||u||`` (of the head, or of the worse head group), which must
    exceed :data:`LABEL_STAGE` = 1/sqrt(2) (notes icl_regression §13.11)."""
    if ratio > LABEL_STAGE:
        return True, ""
    return False, (f"training stopped before the stage: the OV of {what} does not read the label yet (last-entry "
                   f"ratio {ratio:.2f} <= {LABEL_STAGE:.2f}: it still reads the covariates, a saddle training passes "
                   "through before the pattern stage, notes icl_regression §13.11); run longer (--steps)")


SPLIT_MIN = 0.25  # stage indicator: the smaller sign group carries > 1/4 of sum |mu| (0 on a one-sign plateau, 1/2 split)


def head_split(mu, exists=None) -> float:
    """The multi-head stage indicator: the weight of the smaller sign group of value weights,
    min(sum_{mu>0} |mu|, sum_{mu<0} |mu|) / sum |mu| -- about 0 while the heads act as one
    (the single-head plateau training passes through), 1/2 once they have split into the
    positive and negative heads of the debiased-GD stage (notes icl_regression §4-5)."""
    mu = np.asarray(mu, dtype=float)
    if exists is not None:
        mu = np.where(exists, mu, 0.0)
    pos, neg = mu[mu > 0].sum(), -mu[mu < 0].sum()
    tot = pos + neg
    return float(min(pos, neg) / tot) if tot > 0 else 0.0


def split_gate(mu, exists=None, what: str = "the heads"):
    """``(ok, reason)``: have the heads reached the multi-head (split) stage? (:func:`head_split`)"""
    s = head_split(mu, exists)
    if s > SPLIT_MIN:
        return True, ""
    return False, (f"training stopped before the stage: {what} have not split into positive and negative heads "
                   f"(smaller sign group {s:.2f} of sum |mu| <= {SPLIT_MIN}; the single-head plateau of the "
                   "multi-head dynamics, notes icl_regression §5); run longer (--steps)")
