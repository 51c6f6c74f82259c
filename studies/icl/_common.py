"""Pieces shared by the ``studies.icl`` sub-studies: option parsers, device and seed helpers,
pooled Monte Carlo errors, the "has training reached its stage" gate and the tolerances the
claims declare (with their sources)."""
from __future__ import annotations

import math

import numpy as np

from studies.cli import nonnegative_float, parse_range

PROG = "python -m studies.icl"
SOURCE = "He, Pan, Chen, Yang (ICML 2025)"

# ---- declared tolerances, each with its source (spec icl_regression §13)
MODEL_ALLOWANCE = 0.01
MODEL_ALLOWANCE_SOURCE = ("declared model error 0.01 of a trained softmax model against its closed-form "
                          "predictor (spec §13.7: within 0.01 of the debiased-GD curve)")
ACTIVE_MU_FRAC = 0.1  # spec §13.5: a head is active when |mu_h| > 0.1 max_h |mu_h|
ZERO_SUM_FRAC = 0.05  # spec §13.5: |sum_h mu_h| < 0.05 sum_h |mu_h|
DIAG_RATIO_MIN = 0.95  # spec §13.5
LAST_ENTRY_MIN = 0.99  # spec §13.5
KEPT_DIAG_RATIO = 0.7  # the authors' dummy-head filter for the metric averages (spec §4)
COS_MIN = 0.99  # spec §13.8: cos(Gamma, Gamma*) > 0.99
SPLIT_STEPS = 100_000  # spec §9, §13.9: the H = 2N split needs >= 1e5 Adam steps


def spec(number, section: str) -> str:
    return f"spec number {number} (spec icl_regression {section})"


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


def settled(steps, y, tol: float, what: str = "validation MSE", longer: str = "--steps"):
    """Has a logged training trajectory ``y(steps)`` reached its stage? The gate of every claim
    about a trained model: over the last quarter of the run (at least 4 logs) the least-squares
    drift of ``y`` must be at most ``tol`` (the claim's own resolution), so that its final value
    is the stage's, not a point on the way. Independent of the value the claim predicts.

    Returns ``(ok, drift, reason)``; ``reason`` says why not and, when the drift of the quarter
    before shrank by a factor r < 1, how many more steps an exponential approach (the drift
    shrinking by r per quarter) needs to settle."""
    steps = np.asarray(steps, dtype=float)
    y = np.asarray(y, dtype=float)
    n = steps.size
    if n < 4:
        return False, math.nan, f"training stopped before the stage: {n} logged points (need >= 4 to see it settle)"
    k = max(4, n // 4)

    def drift_of(xs, ys):
        return float(np.polyfit(xs, ys, 1)[0]) * float(xs[-1] - xs[0])

    span = float(steps[-1] - steps[-k])
    drift = drift_of(steps[-k:], y[-k:])
    if abs(drift) <= tol:
        return True, drift, ""
    need = f"; run longer ({longer})"
    if n >= 2 * k - 1:
        d0 = drift_of(steps[-2 * k + 1:-k + 1], y[-2 * k + 1:-k + 1])
        r = drift / d0 if d0 != 0 else math.inf
        if 0 < r < 1:
            extra = math.log(tol / abs(drift)) / math.log(r) * span
            need = f"; its drift shrinks x{r:.2f} per {span:,.0f} steps: ~{extra:,.0f} more steps to settle"
    return False, drift, (f"training stopped before the stage: the logged {what} still moved by {drift:+.3g} over "
                          f"the last {span:,.0f} steps (> {tol:.3g}, the claim's resolution){need}")


SPLIT_MIN = 0.25  # stage indicator: the smaller sign group carries > 1/4 of sum |mu| (0 on a one-sign plateau, 1/2 split)


def head_split(mu, exists=None) -> float:
    """The multi-head stage indicator: the weight of the smaller sign group of value weights,
    min(sum_{mu>0} |mu|, sum_{mu<0} |mu|) / sum |mu| -- about 0 while the heads act as one
    (the single-head plateau training passes through), 1/2 once they have split into the
    positive and negative heads of the debiased-GD stage (spec §4-5)."""
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
                   "multi-head dynamics, spec §5); run longer (--steps)")
