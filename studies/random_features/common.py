"""What the analyses of the random-feature attention study share: the claims and the helpers.

The thirteen claims (:class:`studies.claims.ClaimSpec`, ids ``random_features.<name>``) are
declared here once, each with its source in the paper and its statement in words; every group's
analysis (:mod:`.kernel`, :mod:`.rate`, :mod:`.families`, :mod:`.n_keys`, :mod:`.bias`) decides
the ones that belong to it. The helpers read a run's stored parameters (``params_json``, through
:func:`studies.cli.run_params`): the conventions of the features, whether the theory has a
closed form for a target, whether a target is in zero-mean attention's function class, and its
complexity ``B(f*)`` under a model.

Statistics shared by the groups: ``rel_err`` and ``test_mse`` have one value per replicate (data
and heads redrawn), so a mean's standard error is ``sd / sqrt(reps)``; replicates share their
data across models, head counts and bias ratios, so paired comparisons use the mean and SE of
per-replicate log ratios (:func:`_log_ratio`); z thresholds come from
:func:`studies.claims.z_family` over the tests of each claim.
"""
from __future__ import annotations

import math

import numpy as np

from sim import random_features as rs
from studies.claims import CONSISTENCY, ClaimSpec, z_family
from studies.random_features.cells import _conv_kwargs
from theory import random_features as rft

PAPER = "Fu, Guo, Bai, Mei (NeurIPS 2023)"
PERMUTATION_TOL = 1e-9  # declared float64 rounding allowance (relative) of sums over keys in another order
MIN_SLOPE_POINTS = 3  # grid points needed for a slope with a misfit check
BIAS_R_WINDOW = 0.5  # the table's BRFA column is r ~ 1: the grid's r closest to 1, within this distance
EXACT_FIT_REL = 1e-4  # a relative error below this (smallest ridge chosen everywhere) is the fit's numerical floor
EXPONENT_MODEL_ERROR = 0.15  # declared model error of the deterministic equivalent's exponent (notes random_features §4.4)

KERNEL_CLT = ClaimSpec(
    "random_features.kernel_clt", f"{PAPER}: infinite-head kernel (notes random_features §3.3; §9.1)",
    "The M-head empirical kernel is a mean of M i.i.d. per-head products whose expectation is the closed-form "
    "kernel of theory.random_features: every z-score (K_emp - K)/(sd/sqrt(M)) is within the family's normal band.")
KERNEL_RATE = ClaimSpec(
    "random_features.kernel_rate", f"{PAPER}: M heads approximate the infinite-head kernel (notes random_features §4.1)",
    "The relative RMS error of the M-head kernel decays like M^(-1/2): its log-log slope in M is -1/2.")
PERMUTATION = ClaimSpec(
    "random_features.permutation_invariance", f"{PAPER}: targets permutation invariant in the keys (notes random_features §3.1; "
                                              "§9.2)",
    "Attention features, hence the M-head kernel, are exactly invariant under a permutation of the keys.",
    role=CONSISTENCY,
    why="an exact identity of the feature map (a sum over keys does not depend on their order): it holds for every "
        "sampler, input law, head count and convention, so only the feature code itself can break it")
BELOW_BOUND = ClaimSpec(
    "random_features.below_bound", f"{PAPER}: excess-risk bound (notes random_features §4.2, [RECALL form], constants and logs 1)",
    "Zero-mean RFA's excess risk stays below sqrt(B R^2/n) + sqrt(B R^2/M) computed for this run's target, N, d "
    "and conventions, wherever that bound is below the trivial risk Var(f*).")
SLOPE_N = ClaimSpec(
    "random_features.risk_slope_n", f"{PAPER}: excess-risk bound, estimation term (notes random_features §4.2; §9.10)",
    "Where the estimation term governs (n <= the number of trained parameters), the excess risk at the largest M "
    "falls with n at least as fast as the bound does over the same training sizes.")
EXPONENT_N = ClaimSpec(
    "random_features.risk_exponent_n", f"{PAPER}: ridge regression on M random heads (notes random_features §4.4, the "
                                       "deterministic equivalent derived there)",
    "At the largest M, the excess risk falls with n at the exponent of the deterministic-equivalent risk of ridge "
    "regression on M (d+1) random features with this kernel's exact spectrum, for this run's target, n grid, M, "
    "ridge grid and conventions: the log-log slopes agree within the statistics and the equivalent's declared "
    "model error.")
SLOPE_M = ClaimSpec(
    "random_features.risk_slope_M", f"{PAPER}: excess-risk bound, approximation term (notes random_features §4.1-4.2)",
    "Where the approximation term governs (the number of trained parameters <= n), the excess risk at the largest "
    "n falls with M at least as fast as the bound does over the same head counts.")
BEATS_MLP = ClaimSpec(
    "random_features.beats_mlp", f"{PAPER}: sample-complexity advantage over random-feature MLPs (abstract; "
                                 "notes random_features §4.3)",
    "To reach the same error, the RF-MLP (same number of trained parameters) needs at least "
    "B_mlp R_mlp^2 / (B_rfa R_rfa^2) times as many samples as zero-mean RFA: the bound's sample-complexity "
    "ratio for this target, N, d and conventions.")
OUTSIDE = ClaimSpec(
    "random_features.outside_class", f"{PAPER}: the function class is means of (query, key) pair functions "
                                     "(notes random_features §3.2; §9.9)",
    "A target orthogonal to every attention feature (the key-key control; a Gegenbauer target whose bidegree "
    "eigenvalue vanishes under these conventions) is not learned: relative error >= 1 at every n.")
N_FREE = ClaimSpec(
    "random_features.attention_N_free", f"{PAPER}: B(f*) of attention does not depend on N (notes random_features §3.2, §4.3; "
                                        "§9.5)",
    "RFA's relative error at fixed n follows the N-exponent of its own complexity (N-free: err ~ N^0), not the "
    "RF-MLP's (err ~ N^(b/2) from n ~ d^a N^b / eps^2).")
MLP_DEGRADES = ClaimSpec(
    "random_features.mlp_degrades_in_N", f"{PAPER}: the RF-MLP pays for the flattened input (notes random_features §4.3; §9 "
                                         "check 5)",
    "Where the theory's B_mlp(f*) grows with N, the RF-MLP's relative error at fixed n grows from N_min to N_max.")
BIAS_LOWERS = ClaimSpec(
    "random_features.bias_lowers_risk", f"{PAPER}: a biased Gaussian query-key matrix helps certain natural "
                                        "targets (abstract; notes random_features §3.4, §4.3)",
    "For query-key inner-product and attention-like targets, a non-zero-mean query-key matrix (r ~ 1) lowers "
    "the risk relative to zero mean (paired replicates).")
BIAS_RAISES = ClaimSpec(
    "random_features.bias_raises_risk", f"{PAPER}: the bias does not come for free (notes random_features §3.4)",
    "For keys-only and query-only targets, a non-zero-mean query-key matrix (r ~ 1) raises the risk relative to "
    "zero mean (paired replicates).")
PREDICTION_TEXT = {
    KERNEL_CLT.id: "max |z| within the family's normal band",
    KERNEL_RATE.id: "slope -0.5 (error ~ M^-1/2)",
    PERMUTATION.id: "0 (exact invariance)",
    BELOW_BOUND.id: "excess risk <= sqrt(B R^2/n) + sqrt(B R^2/M)",
    SLOPE_N.id: "slope in n <= the bound's",
    EXPONENT_N.id: "slope in n = the deterministic equivalent's",
    SLOPE_M.id: "slope in M <= the bound's",
    BEATS_MLP.id: "n_mlp / n_rfa >= B_mlp R_mlp^2 / (B_rfa R_rfa^2)",
    OUTSIDE.id: "rel. error >= 1 at every n",
    N_FREE.id: "err ~ N^0 (not the RF-MLP's N^(b/2))",
    MLP_DEGRADES.id: "log err(N_max) - log err(N_min) > 0",
    BIAS_LOWERS.id: "log err(r ~ 1) - log err(0) < 0",
    BIAS_RAISES.id: "log err(r ~ 1) - log err(0) > 0",
}


def _nt(spec: ClaimSpec, reason: str, **kw):
    """``spec.not_tested`` with the claim's prediction in words when the caller gives none."""
    if not kw.get("prediction_text"):
        kw["prediction_text"] = PREDICTION_TEXT[spec.id]
    return spec.not_tested(reason, **kw)


CLAIMS = (KERNEL_CLT, KERNEL_RATE, PERMUTATION, BELOW_BOUND, SLOPE_N, EXPONENT_N, SLOPE_M, BEATS_MLP, OUTSIDE,
          N_FREE, MLP_DEGRADES, BIAS_LOWERS, BIAS_RAISES)


# --------------------------------------------------------------------------- helpers

def _mean_se(x, axis=-1):
    k = x.shape[axis]
    return x.mean(axis=axis), x.std(axis=axis, ddof=1) / math.sqrt(k)


def _log_ratio(num, den, axis=-1):
    """Mean and SE over replicates of log(num/den) (paired replicates)."""
    return _mean_se(np.log(num) - np.log(den), axis)


def _conv(params) -> dict:
    return params["conventions"]


def _zero_mean_kw(params) -> dict:
    return _conv_kwargs(_conv(params), zero_mean=True)


def _theory_covers_activation(params) -> bool:
    return _conv(params)["activation"] in rft.ACTIVATIONS


def _exact(target, params) -> bool:
    """Targets with closed-form complexities: Gegenbauer keys/query/pair/bilin, relu or identity."""
    fam, _ = rs.parse_target(target)
    return params["poly"] == "gegenbauer" and fam in ("keys", "query", "pair", "bilin") and \
        _theory_covers_activation(params)


def _in_class(target, params):
    """True / False / None (the theory does not say) for zero-mean attention."""
    fam, p = rs.parse_target(target)
    conv = _conv(params)
    if fam == "keykey":
        return False
    if not _theory_covers_activation(params):
        return None
    if params["poly"] == "gegenbauer" or fam not in ("keys", "query", "pair", "bilin"):
        return rft.in_attention_class(fam, p, params["d"], **_zero_mean_kw(params))
    # Hermite terms mix degrees <= p: every bidegree is in the class for ReLU with the constant coordinate
    return True if (conv["activation"] == "relu" and conv["augment"]) else None


def _not_in_class_reason(target, params) -> str:
    c = _in_class(target, params)
    if c is None:
        conv = _conv(params)
        return (f"the theory does not say whether {target} is in the attention class for activation "
                f"{conv['activation']}, augment={conv['augment']}, poly={params['poly']}")
    return f"{target} is outside zero-mean attention's class under these conventions (its bound is infinite)"


def _B(target, params, model, N):
    fam, p = rs.parse_target(target)
    kw = _zero_mean_kw(params) if model == "rfa" else {"augment": _conv(params)["augment"]}
    return rft.target_complexity(fam, p, params["d"], N, model=model, **kw)


def _Dv(params) -> int:
    conv = _conv(params)
    return params["d"] + 1 if (conv["value"] == "augmented" and conv["augment"]) else params["d"]



def _z(m: int, reps: int) -> tuple:
    """``z_family`` for ``m`` tests whose standard errors come from ``reps`` replicates (Student t
    with reps - 1 degrees of freedom: the power rule of :mod:`studies.claims`)."""
    return z_family(max(1, int(m)), dof=max(1, int(reps) - 1))


def numerical_floor(rel, best_lambda, lambdas, dtype=np.float64) -> tuple[bool, str]:
    """Whether a set of fits sits at the numerical floor of ridge regression: the validation chose
    the smallest ridge of the grid in every fit and every relative error is below
    ``max(EXACT_FIT_REL, sqrt(eps))`` of the data's floating-point type (notes random_features §4.5). Such a fit
    represents its target exactly: what is left is the bias of the smallest ridge (~(lambda_min /
    eigenvalue)^2) and rounding, not a sample-complexity effect, so no rate or exponent can be read
    from it. Returns ``(at_floor, reason)``; the decision reads the data and the dtype only."""
    rel = np.asarray(rel, dtype=float)
    eps = float(np.finfo(dtype).eps)
    cut = max(EXACT_FIT_REL, math.sqrt(eps))
    lam_min = float(np.min(lambdas))
    smallest = bool(np.all(np.asarray(best_lambda, dtype=float) <= lam_min * (1 + 1e-9)))
    at_floor = smallest and bool(np.all(rel <= cut))
    reason = (f"the error is at the numerical floor of the fit: relative error {rel.min():.2g}..{rel.max():.2g} "
              f"(<= {cut:.0e}) with the smallest ridge of the grid ({lam_min:.0e}) chosen in every fit, so the "
              f"target is fitted exactly and what remains is that ridge's bias and {np.dtype(dtype).name} rounding "
              f"(eps {eps:.1e}), not a sample-complexity effect (notes random_features §4.5)")
    return at_floor, reason
