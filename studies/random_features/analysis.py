"""Analyses and claims of the random-feature attention study, one per group of the store.

``analyze_<group>(ds) -> (analysis, claims)`` is a pure function of the group's raw dataset and
the run's parameters (``params_json``): means and standard errors over replicates, fitted
slopes, the ``theory_*`` predictions of :mod:`theory.random_features` for this run's d, N, M,
grids, targets and conventions, and the claims (:mod:`studies.claims`). ``summary_<group>``
prints the group's own table. The claims, their sources and their tests are listed in the
package docstring (:mod:`studies.random_features`).

Statistics: ``rel_err`` and ``test_mse`` have one value per replicate (data and heads redrawn),
so a mean's standard error is ``sd / sqrt(reps)``; replicates share their data across models,
head counts and bias ratios (paired comparisons use the mean and SE of per-replicate log
ratios); z thresholds come from :func:`studies.claims.z_family` over the tests of each claim.
"""
from __future__ import annotations

import json
import math

import numpy as np
import xarray as xr

from sim import random_features as rs
from studies.claims import ClaimSpec, z_family
from studies.fits import loglog_rate
from studies.random_features.cells import _conv_kwargs, kernel_inputs
from studies.sweep import str_coord
from theory import random_features as rft

__all__ = ["analyze", "analyze_kernel", "analyze_rate", "analyze_families", "analyze_N", "analyze_bias",
           "summary", "CLAIMS", "PERMUTATION_TOL", "MIN_SLOPE_POINTS", "BIAS_R_WINDOW"]

PAPER = "Fu, Guo, Bai, Mei (NeurIPS 2023)"
PERMUTATION_TOL = 1e-9  # declared float64 rounding allowance (relative) of sums over keys in another order
MIN_SLOPE_POINTS = 3  # grid points needed for a slope with a misfit check
BIAS_R_WINDOW = 0.5  # the table's BRFA column is r ~ 1: the grid's r closest to 1, within this distance

KERNEL_CLT = ClaimSpec(
    "random_features.kernel_clt", f"{PAPER}: infinite-head kernel (spec §3.3; §9 check 1)",
    "The M-head empirical kernel is a mean of M i.i.d. per-head products whose expectation is the closed-form "
    "kernel of theory.random_features: every z-score (K_emp - K)/(sd/sqrt(M)) is within the family's normal band.")
KERNEL_RATE = ClaimSpec(
    "random_features.kernel_rate", f"{PAPER}: M heads approximate the infinite-head kernel (spec §4.1)",
    "The relative RMS error of the M-head kernel decays like M^(-1/2): its log-log slope in M is -1/2.")
PERMUTATION = ClaimSpec(
    "random_features.permutation_invariance", f"{PAPER}: targets permutation invariant in the keys (spec §3.1; "
                                              "§9 check 2)",
    "Attention features, hence the M-head kernel, are exactly invariant under a permutation of the keys.")
BELOW_BOUND = ClaimSpec(
    "random_features.below_bound", f"{PAPER}: excess-risk bound (spec §4.2, [RECALL form], constants and logs 1)",
    "Zero-mean RFA's excess risk stays below sqrt(B R^2/n) + sqrt(B R^2/M) computed for this run's target, N, d "
    "and conventions, wherever that bound is below the trivial risk Var(f*).")
SLOPE_N = ClaimSpec(
    "random_features.risk_slope_n", f"{PAPER}: excess-risk bound, estimation term (spec §4.2; §9 check 10)",
    "Where the estimation term governs (n <= the number of trained parameters), the excess risk at the largest M "
    "falls with n at least as fast as the bound does over the same training sizes.")
SLOPE_M = ClaimSpec(
    "random_features.risk_slope_M", f"{PAPER}: excess-risk bound, approximation term (spec §4.1-4.2)",
    "Where the approximation term governs (the number of trained parameters <= n), the excess risk at the largest "
    "n falls with M at least as fast as the bound does over the same head counts.")
BEATS_MLP = ClaimSpec(
    "random_features.beats_mlp", f"{PAPER}: sample-complexity advantage over random-feature MLPs (abstract; "
                                 "spec §4.3)",
    "To reach the same error, the RF-MLP (same number of trained parameters) needs at least "
    "B_mlp R_mlp^2 / (B_rfa R_rfa^2) times as many samples as zero-mean RFA: the bound's sample-complexity "
    "ratio for this target, N, d and conventions.")
OUTSIDE = ClaimSpec(
    "random_features.outside_class", f"{PAPER}: the function class is means of (query, key) pair functions "
                                     "(spec §3.2; §9 check 9)",
    "A target orthogonal to every attention feature (the key-key control; a Gegenbauer target whose bidegree "
    "eigenvalue vanishes under these conventions) is not learned: relative error >= 1 at every n.")
N_FREE = ClaimSpec(
    "random_features.attention_N_free", f"{PAPER}: B(f*) of attention does not depend on N (spec §3.2, §4.3; "
                                        "§9 check 5)",
    "RFA's relative error at fixed n follows the N-exponent of its own complexity (N-free: err ~ N^0), not the "
    "RF-MLP's (err ~ N^(b/2) from n ~ d^a N^b / eps^2).")
MLP_DEGRADES = ClaimSpec(
    "random_features.mlp_degrades_in_N", f"{PAPER}: the RF-MLP pays for the flattened input (spec §4.3; §9 "
                                         "check 5)",
    "Where the theory's B_mlp(f*) grows with N, the RF-MLP's relative error at fixed n grows from N_min to N_max.")
BIAS_LOWERS = ClaimSpec(
    "random_features.bias_lowers_risk", f"{PAPER}: a biased Gaussian query-key matrix helps certain natural "
                                        "targets (abstract; spec §3.4, §4.3)",
    "For query-key inner-product and attention-like targets, a non-zero-mean query-key matrix (r ~ 1) lowers "
    "the risk relative to zero mean (paired replicates).")
BIAS_RAISES = ClaimSpec(
    "random_features.bias_raises_risk", f"{PAPER}: the bias does not come for free (spec §3.4)",
    "For keys-only and query-only targets, a non-zero-mean query-key matrix (r ~ 1) raises the risk relative to "
    "zero mean (paired replicates).")
PREDICTION_TEXT = {
    KERNEL_CLT.id: "max |z| within the family's normal band",
    KERNEL_RATE.id: "slope -0.5 (error ~ M^-1/2)",
    PERMUTATION.id: "0 (exact invariance)",
    BELOW_BOUND.id: "excess risk <= sqrt(B R^2/n) + sqrt(B R^2/M)",
    SLOPE_N.id: "slope in n <= the bound's",
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


CLAIMS = (KERNEL_CLT, KERNEL_RATE, PERMUTATION, BELOW_BOUND, SLOPE_N, SLOPE_M, BEATS_MLP, OUTSIDE, N_FREE,
          MLP_DEGRADES, BIAS_LOWERS, BIAS_RAISES)


# --------------------------------------------------------------------------- helpers

def _params(ds) -> dict:
    return json.loads(ds.attrs["params_json"])


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


# --------------------------------------------------------------------------- kernel

def analyze_kernel(ds: xr.Dataset):
    params = _params(ds)
    d, N, P = params["d"], params["N"], params["kernel_pairs"]
    conv = _conv(params)
    a0, A, b0, B, kinds = kernel_inputs(int(ds.attrs["root_seed"]), d, N, P)
    kw = _conv_kwargs(conv)
    kmodels = [str(k) for k in ds["kmodel"].values]
    th = np.zeros((len(kmodels), P))
    for i, km in enumerate(kmodels):
        if km == "rfmlp":
            th[i] = np.diag(rft.mlp_kernel(rs.flatten_inputs(a0, A, conv["augment"]),
                                           rs.flatten_inputs(b0, B, conv["augment"])))
        else:
            r = conv["r_bias_brfa"] if km == "brfa" else 0.0
            th[i] = np.diag(rft.rfa_kernel(a0, A, b0, B, r_bias=r, key_norm=conv["key_norm"], **kw))
    K = ds["K_emp"].transpose("kmodel", "M", "rep", "pair").values
    sd = ds["K_head_sd"].transpose("kmodel", "M", "rep", "pair").values
    M = ds["M"].values.astype(float)
    R = K.shape[2]
    # the per-head products have the same law at every M: pool their variance over M and draws
    dof = np.broadcast_to((M - 1)[None, :, None, None], sd.shape)
    var_head = np.sum(dof * sd**2, axis=(1, 2)) / np.sum(dof, axis=(1, 2))  # (kmodel, pair)
    z = (K - th[:, None, None, :]) / np.sqrt(var_head[:, None, None, :] / M[None, :, None, None])
    scale = np.mean(np.abs(th), axis=1)
    rel = np.sqrt(np.mean((K - th[:, None, None, :]) ** 2, axis=-1)) / scale[:, None, None]  # (k, M, rep)
    # rate: S(M) = mean over draws and distinct pairs of (K_emp - K)^2 has expectation c / M exactly;
    # its log has variance 2 sum_p s_p^4 / (R (sum_p s_p^2)^2) (Gaussian errors of variance s_p^2 / M)
    distinct = np.array([k != "permuted" for k in kinds])
    nk = len(kmodels)
    slope, se = np.zeros(nk), np.zeros(nk)
    lx = np.log(M)
    for i in range(nk):
        S = np.mean((K[i][..., distinct] - th[i, distinct]) ** 2, axis=(1, 2))
        v = var_head[i, distinct]
        var_log = 2.0 * np.sum(v**2) / (R * np.sum(v) ** 2)
        xc = lx - lx.mean()
        b = float(xc @ np.log(S) / (xc @ xc))
        resid = np.log(S) - np.log(S).mean() - b * xc
        chi2_red = float(np.sum(resid**2) / var_log / (M.size - 2)) if M.size > 2 else 1.0
        slope[i] = b / 2.0
        se[i] = 0.5 * math.sqrt(var_log / (xc @ xc) * max(1.0, chi2_red))
    maxz = np.abs(z).max(axis=(2, 3))
    same, permuted = kinds.index("same"), kinds.index("permuted")
    gap = np.abs(K[..., permuted] - K[..., same]).max(axis=(1, 2)) / scale
    z_band, z_src = z_family(z.size)
    out = xr.Dataset(coords={"kmodel": ds["kmodel"].values, "M": ds["M"].values, "rep": ds["rep"].values,
                             "pair": ds["pair"].values})
    out["pair_kind"] = (("pair",), str_coord(kinds))
    out["input_x0"] = (("pair", "coord"), a0, {"long_name": "query of the first input of each pair"})
    out["input_X"] = (("pair", "key", "coord"), A, {"long_name": "keys of the first input"})
    out["input_x0_prime"] = (("pair", "coord"), b0)
    out["input_X_prime"] = (("pair", "key", "coord"), B)
    out["theory_K"] = (("kmodel", "pair"), th, {"long_name": "closed-form infinite-head kernel (theory.random_features)"})
    out["z_score"] = (("kmodel", "M", "rep", "pair"), z,
                      {"long_name": "(K_emp - theory_K) / (s / sqrt(M)), s^2 the per-head variance pooled over M "
                                    "and draws"})
    out["head_var"] = (("kmodel", "pair"), var_head, {"long_name": "per-head variance of the products, pooled"})
    out["max_abs_z"] = (("kmodel", "M"), maxz)
    out["kernel_z_band"] = ((), z_band, {"long_name": f"family-wise normal band of the z-scores: {z_src}"})
    out["rel_rms_err"] = (("kmodel", "M", "rep"), rel,
                          {"long_name": "RMS over pairs of K_emp - theory_K, over mean |theory_K|"})
    out["mean_rel_rms_err"] = (("kmodel", "M"), rel.mean(axis=-1))
    out["err_slope"] = (("kmodel",), slope, {"long_name": "half the log-log slope of the mean squared kernel error "
                                                          "(over draws and distinct pairs) vs M"})
    out["err_slope_se"] = (("kmodel",), se)
    out["theory_err_slope"] = (("kmodel",), np.full(nk, -0.5), {"long_name": "CLT rate M^(-1/2)"})
    out["permutation_gap"] = (("kmodel",), gap, {"long_name": "max |K_emp(X, perm X) - K_emp(X, X)| / scale "
                                                              "(0 for attention: exact key-permutation invariance)"})
    claims = []
    for i, km in enumerate(kmodels):
        claims.append(KERNEL_CLT.decided(
            maxz[i].max() <= z_band, test="max |z| over every M, head draw and input pair <= z", tolerance=z_band,
            tolerance_source=f"{z_src}: every z-score of every model (per-head variance pooled over M and draws)",
            where=f"kmodel={km}", prediction=0.0,
            prediction_text=f"z ~ N(0, 1): max |z| <= {z_band:.3g}", measured=float(maxz[i].max()),
            reason="" if maxz[i].max() <= z_band else f"max |z| = {maxz[i].max():.3g} > {z_band:.3g}"))
    zr, zr_src = z_family(nk)
    for i, km in enumerate(kmodels):
        claims.append(KERNEL_RATE.equal(slope[i], se[i], -0.5, z=zr, z_source=zr_src, where=f"kmodel={km}",
                                        prediction_text="slope -0.5 (error ~ M^-1/2)"))
    for i, km in enumerate(kmodels):
        if km == "rfmlp":
            continue
        claims.append(PERMUTATION.decided(
            gap[i] <= PERMUTATION_TOL, test="max relative |K(X, perm X) - K(X, X)| <= tolerance",
            tolerance=PERMUTATION_TOL,
            tolerance_source="declared float64 rounding allowance (sums over N keys in another order differ by "
                             "~1e-16 N, relative)", where=f"kmodel={km}", prediction=0.0,
            prediction_text="0 (exact invariance)", measured=float(gap[i]),
            reason="" if gap[i] <= PERMUTATION_TOL else f"relative gap {gap[i]:.3g}"))
    return out, claims


def summary_kernel(an: xr.Dataset) -> str:
    rows = [f"   {'model':<7} {'max|z|':>7} {'band':>6} {'rel err @M_max':>15} {'slope ± se':>16}  theory  perm. gap"]
    for i, k in enumerate(an["kmodel"].values):
        gap = float(an["permutation_gap"][i])
        rows.append(f"   {k:<7} {float(an['max_abs_z'][i].max()):7.2f} {float(an['kernel_z_band']):6.2f} "
                    f"{float(an['mean_rel_rms_err'][i, -1]):15.2e} "
                    f"{float(an['err_slope'][i]):+8.3f} ± {float(an['err_slope_se'][i]):.3f}   -0.5   {gap:.1e}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- rate

def analyze_rate(ds: xr.Dataset):
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
    shape = n[:, None] ** -0.5 + M[None, :] ** -0.5
    out = xr.Dataset(coords={"target": ds["target"].values, "n": ds["n"].values, "M": ds["M"].values})
    out["mean_rel_err"] = (("target", "n", "M"), mean)
    out["sem_rel_err"] = (("target", "n", "M"), se)
    out["mean_excess_risk"] = (("target", "n", "M"), mse_mean, {"long_name": "mean test MSE against the noiseless target"})
    out["sem_excess_risk"] = (("target", "n", "M"), mse_se)
    out["slope_n"] = (("target", "M"), sn, {"long_name": "WLS log-log slope of the excess risk vs n at fixed M (whole grid)"})
    out["slope_n_se"] = (("target", "M"), sn_se)
    out["slope_M"] = (("target", "n"), sm, {"long_name": "WLS log-log slope of the excess risk vs M at fixed n (whole grid)"})
    out["slope_M_se"] = (("target", "n"), sm_se)
    out["theory_bound_shape"] = (("n", "M"), shape, {"long_name": "n^-1/2 + M^-1/2: the bound over sqrt(B R^2)"})
    out["theory_slope_n"] = (("M",), rft.bound_loglog_slope(n, M, over="n"),
                             {"long_name": "log-log slope of the bound vs n over the n grid, at each M"})
    out["theory_slope_M"] = (("n",), rft.bound_loglog_slope(n, M, over="M"),
                             {"long_name": "log-log slope of the bound vs M over the M grid, at each n"})
    BR2 = np.full(T, np.nan)
    var = np.full(T, np.nan)
    for t, name in enumerate(targets):
        fam, p = rs.parse_target(name)
        if _exact(name, params):
            BR2[t] = rft.bound_complexity(fam, p, params["d"], params["N"], model="rfa", **_zero_mean_kw(params))
            var[t] = rft.target_variance(fam, p, params["N"])
    has = np.isfinite(BR2)
    if has.any():
        bound = np.sqrt(np.where(has, BR2, 1.0))[:, None, None] * shape[None]
        out = out.assign_coords(bound_target=str_coord([t for t, h in zip(targets, has) if h]))
        out["theory_B_R2"] = (("bound_target",), BR2[has], {"long_name": "B(f*) R^2 (zero-mean RFA, unit-variance pairwise term)"})
        out["theory_target_var"] = (("bound_target",), var[has], {"long_name": "Var f* (the trivial risk)"})
        out["theory_bound"] = (("bound_target", "n", "M"), bound[has],
                               {"long_name": "sqrt(B R^2/n) + sqrt(B R^2/M), constants and logs 1 (spec §4.2)"})
    claims = _rate_claims(params, targets, n, M, mse, mse_mean, mse_se, shape, BR2, var)
    return out, claims


def _rate_claims(params, targets, n, M, mse, mse_mean, mse_se, shape, BR2, var):
    claims = []
    # below the bound, where it is informative
    for t, name in enumerate(targets):
        where = f"target={name}"
        if not np.isfinite(BR2[t]):
            reason = (_not_in_class_reason(name, params) if _in_class(name, params) is False else
                      "B(f*) has a closed form for Gegenbauer keys/query/pair/bilin targets under relu or identity "
                      "scores only")
            claims.append(_nt(BELOW_BOUND, reason, where=where))
            continue
        bound = math.sqrt(BR2[t]) * shape
        informative = bound < var[t]
        if not informative.any():
            need = 4.0 * BR2[t] / var[t] ** 2  # each term below Var/2
            claims.append(_nt(BELOW_BOUND, 
                f"vacuous on this grid: the bound is at least {bound.min() / var[t]:.3g} x Var(f*) (B R^2 = "
                f"{BR2[t]:.3g}, Var f* = {var[t]:.3g}); it drops below Var(f*) only for n and M beyond ~{need:.3g}",
                where=where, prediction=float(bound.min()), prediction_text=f"<= bound (min {bound.min():.3g})",
                measured=float(mse_mean[t].min())))
            continue
        z, zsrc = z_family(int(informative.sum()))
        idx = np.argwhere(informative)
        excess = [(mse_mean[t, i, j] - z * mse_se[t, i, j]) - bound[i, j] for i, j in idx]
        i, j = idx[int(np.argmax(excess))]
        claims.append(BELOW_BOUND.at_most(
            mse_mean[t, i, j], mse_se[t, i, j], bound[i, j], z=z, z_source=zsrc,
            where=where,
            prediction_text=f"<= {bound[i, j]:.3g}, the bound at n={int(n[i])}, M={int(M[j])} (the closest of "
                            f"{len(idx)} informative points)"))
    # slopes, where each term of the bound governs
    P = M * _Dv(params)
    tested = [t for t, name in enumerate(targets) if _in_class(name, params)]
    z, zsrc = z_family(max(1, len(tested)))
    sel_n = n <= P[-1]
    sel_M = P <= n[-1]
    for t, name in enumerate(targets):
        where = f"target={name}"
        if t not in tested:
            reason = _not_in_class_reason(name, params)
            claims.append(_nt(SLOPE_N, reason, where=where))
            claims.append(_nt(SLOPE_M, reason, where=where))
            continue
        if sel_n.sum() < MIN_SLOPE_POINTS:
            claims.append(_nt(SLOPE_N, 
                f"{int(sel_n.sum())} training size(s) with n <= P = {int(P[-1])} trained parameters at M = "
                f"{int(M[-1])}; a slope needs >= {MIN_SLOPE_POINTS}", where=where))
        else:
            f = loglog_rate(n[sel_n], mse[t, sel_n, -1, :])
            th = float(rft.bound_loglog_slope(n[sel_n], M[-1:], over="n")[0])
            claims.append(SLOPE_N.at_most(
                f.slope, f.se, th, z=z, z_source=zsrc,
                where=f"{where}, M={int(M[-1])}, n={int(n[sel_n][0])}..{int(n[sel_n][-1])}",
                prediction_text=f"slope <= {th:.3g} (the bound's)"))
        if sel_M.sum() < MIN_SLOPE_POINTS:
            claims.append(_nt(SLOPE_M, 
                f"{int(sel_M.sum())} head count(s) with P = M x {_Dv(params)} <= n_max = {int(n[-1])}; a slope needs "
                f">= {MIN_SLOPE_POINTS}", where=where))
        else:
            f = loglog_rate(M[sel_M], mse[t, -1, sel_M, :])
            th = float(rft.bound_loglog_slope(n[-1:], M[sel_M], over="M")[0])
            claims.append(SLOPE_M.at_most(
                f.slope, f.se, th, z=z, z_source=zsrc,
                where=f"{where}, n={int(n[-1])}, M={int(M[sel_M][0])}..{int(M[sel_M][-1])}",
                prediction_text=f"slope <= {th:.3g} (the bound's)"))
    return claims


def summary_rate(an: xr.Dataset) -> str:
    rows = []
    for t in an["target"].values:
        a = an.sel(target=t)
        rows.append(f"   {t}: rel err at (n_min, M_max) {float(a['mean_rel_err'][0, -1]):.3f} -> "
                    f"(n_max, M_max) {float(a['mean_rel_err'][-1, -1]):.3f}; (n_max, M_min) "
                    f"{float(a['mean_rel_err'][-1, 0]):.3f}")
        line = (f"     slope in n at M={int(an['M'][-1])}: {float(a['slope_n'][-1]):+.3f} ± "
                f"{float(a['slope_n_se'][-1]):.3f} (bound {float(an['theory_slope_n'][-1]):+.3f}); slope in M at "
                f"n={int(an['n'][-1])}: {float(a['slope_M'][-1]):+.3f} ± {float(a['slope_M_se'][-1]):.3f} "
                f"(bound {float(an['theory_slope_M'][-1]):+.3f})")
        rows.append(line)
        if "bound_target" in an.coords and t in list(an["bound_target"].values):
            b = an["theory_bound"].sel(bound_target=t)
            v = float(an["theory_target_var"].sel(bound_target=t))
            rows.append(f"     bound (constants 1) {float(b.min()):.3g}..{float(b.max()):.3g} vs Var f* {v:.3g}; "
                        f"risk {float(a['mean_excess_risk'].min()):.3g}..{float(a['mean_excess_risk'].max()):.3g}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- families

def _first_crossing(logn, curve, level):
    """log n at which a (decreasing) log-error curve first reaches ``level`` (linear interpolation in
    log-log), or -inf when it is below already at the first point, +inf when it never gets there."""
    if curve[0] <= level:
        return -math.inf
    for k in range(1, len(curve)):
        if curve[k] <= level:
            f = (level - curve[k - 1]) / (curve[k] - curve[k - 1])
            return logn[k - 1] + f * (logn[k] - logn[k - 1])
    return math.inf


def _ratio_at_equal_error(logn, la, lm):
    """log(n_mlp / n_rfa) at the MLP's error at n_max, from mean log-error curves ``(n,)``."""
    x = _first_crossing(logn, la, lm[-1])
    if x == -math.inf:
        return math.inf
    if x == math.inf:
        return -math.inf
    return logn[-1] - x


def _sample_ratio(n, e_att, e_mlp):
    """Measured sample-complexity ratio n_mlp(eps)/n_att(eps) at eps = the RF-MLP's mean error at
    n_max (geometric means over replicates), with a jackknife SE over replicates: returns
    ``(log_ratio, se, kind)``; kind "censored" when attention is already below eps at n_min (the
    ratio is at least n_max/n_min), "never" when it never reaches eps on the grid."""
    logn = np.log(n)
    la, lm = np.log(e_att), np.log(e_mlp)  # (n, rep)
    est = _ratio_at_equal_error(logn, la.mean(axis=1), lm.mean(axis=1))
    span = logn[-1] - logn[0]
    if est == math.inf:
        return span, math.nan, "censored"
    if est == -math.inf:
        return -math.inf, math.nan, "never"
    k = la.shape[1]
    jack = []
    for r in range(k):
        keep = np.arange(k) != r
        v = _ratio_at_equal_error(logn, la[:, keep].mean(axis=1), lm[:, keep].mean(axis=1))
        jack.append(min(max(v, 0.0), span))
    jack = np.asarray(jack)
    se = math.sqrt((k - 1) / k * np.sum((jack - jack.mean()) ** 2))
    return est, se, "measured"


def analyze_families(ds: xr.Dataset):
    params = _params(ds)
    targets = [str(t) for t in ds["target"].values]
    models = [str(m) for m in ds["model"].values]
    n = ds["n"].values.astype(float)
    rel = ds["rel_err"].transpose("target", "n", "model", "rep").values
    mean, se = _mean_se(rel)
    mi = {m: i for i, m in enumerate(models)}
    every = np.exp(_log_ratio(rel[:, :, mi["rfmlp"], None, :], rel)[0])  # (target, n, model)
    fams = [rs.parse_target(t)[0] for t in targets]
    learn = np.array([[rft.is_learnable(f, m) for m in models] for f in fams])
    out = xr.Dataset(coords={"target": ds["target"].values, "n": ds["n"].values, "model": ds["model"].values})
    out["mean_rel_err"] = (("target", "n", "model"), mean)
    out["sem_rel_err"] = (("target", "n", "model"), se)
    out["mlp_over_model"] = (("target", "n", "model"), every,
                             {"long_name": "geometric mean over replicates of rel_err(rfmlp) / rel_err(model)"})
    out["theory_learnable"] = (("target", "model"), learn, {"description": "target in the model's function class "
                                                                           "(spec §4.3 table)"})
    exact = [t for t in targets if _exact(t, params)]
    ratio = {}
    if exact:
        Br = np.array([_B(t, params, "rfa", params["N"]) for t in exact])
        Bm = np.array([_B(t, params, "rfmlp", params["N"]) for t in exact])
        fin = np.isfinite(Br)
        if fin.any():
            ex = [t for t, f in zip(exact, fin) if f]
            pr = np.array([rft.sample_complexity_ratio(*rs.parse_target(t), params["d"], params["N"],
                                                       **_zero_mean_kw(params)) for t in ex])
            ratio = dict(zip(ex, pr))
            out = out.assign_coords(exact_target=str_coord(ex))
            out["theory_B_rfa"] = (("exact_target",), Br[fin], {"long_name": "B(f*) = |F|_k^2, zero-mean RFA (N-free)"})
            out["theory_B_rfmlp"] = (("exact_target",), Bm[fin],
                                     {"long_name": "|f*|^2 under the RFMLP kernel, same f* = mean_i F"})
            out["theory_B_ratio"] = (("exact_target",), Bm[fin] / Br[fin], {"long_name": "B_mlp / B_rfa"})
            out["theory_n_ratio"] = (("exact_target",), pr,
                                     {"long_name": "predicted sample-complexity ratio RFMLP / RFA, "
                                                   "B_mlp R_mlp^2 / (B_rfa R_rfa^2) (n ~ B R^2 / eps^2)"})
    measured = np.full(len(targets), np.nan)
    censored = np.zeros(len(targets), dtype=bool)
    claims = _beats_claims(params, targets, models, n, rel, ratio, measured, censored)
    out["measured_n_ratio"] = (("target",), np.nan_to_num(measured, nan=0.0),
                               {"long_name": "measured n_rfmlp / n_rfa at the RFMLP's error at n_max (0: not "
                                             "measured)"})
    out["measured_n_ratio_censored"] = (("target",), censored,
                                        {"description": "the ratio is only a lower bound, the grid's span n_max/n_min "
                                                        "(RFA is below the RFMLP's final error already at n_min)"})
    claims += _outside_claims(params, targets, models, n, rel)
    return out, claims


def _beats_claims(params, targets, models, n, rel, ratio, measured, censored):
    claims = []
    if "rfa" not in models or "rfmlp" not in models:
        return [_nt(BEATS_MLP, "the families sweep ran without rfa or rfmlp")]
    ia, im = models.index("rfa"), models.index("rfmlp")
    tested = [t for t in targets if t in ratio and math.isfinite(ratio[t])]
    z, zsrc = z_family(max(1, len(tested)))
    span = float(n[-1] / n[0])
    for k, name in enumerate(targets):
        where = f"target={name}"
        fam, _ = rs.parse_target(name)
        if name not in ratio:
            if fam == "keykey" or _in_class(name, params) is False:
                reason = _not_in_class_reason(name, params) + " (see outside_class)"
            elif not _theory_covers_activation(params):
                reason = "the bound's complexities are computed for relu or identity scores, not softmax"
            elif params["poly"] != "gegenbauer" and fam in ("keys", "query", "pair", "bilin"):
                reason = "B(f*) is computed for Gegenbauer-pure targets; Hermite terms mix lower degrees"
            else:
                reason = f"the theory gives no closed-form B(f*) for {fam} targets"
            claims.append(_nt(BEATS_MLP, reason, where=where))
            continue
        pred = float(ratio[name])
        ptxt = f"n_mlp / n_rfa >= {pred:.3g}"
        la, lm = np.log(rel[k, :, ia, :]), np.log(rel[k, :, im, :])
        ma, sa = _mean_se(la)
        mm, sm = _mean_se(lm)
        if ma[-1] + z * sa[-1] >= 0:
            claims.append(_nt(BEATS_MLP, 
                f"not resolved on this grid: RFA's rel. error at n_max = {int(n[-1])} is {math.exp(ma[-1]):.3g}, not "
                f"significantly below 1 (predicted ratio {pred:.3g})", where=where, prediction=np.log10(pred),
                prediction_text=ptxt))
            continue
        if mm[-1] + z * sm[-1] >= 0:
            claims.append(_nt(BEATS_MLP, 
                f"not resolved on this grid: the RF-MLP learns nothing by n_max = {int(n[-1])} (rel. error "
                f"{math.exp(mm[-1]):.3g}) while RFA reaches {math.exp(ma[-1]):.3g}: the ratio exceeds 1, but equal "
                f"errors are not reached on the grid (predicted ratio {pred:.3g}, grid span {span:.3g})",
                where=where, prediction=np.log10(pred), prediction_text=ptxt))
            continue
        lr, lse, kind = _sample_ratio(n, rel[k, :, ia, :], rel[k, :, im, :])
        if kind == "censored":
            measured[k], censored[k] = span, True
            if span >= pred:
                claims.append(BEATS_MLP.decided(
                    True, test="measured ratio >= predicted ratio", tolerance=0.0,
                    tolerance_source="none needed: a censored measurement (RFA's mean error at n_min is already below "
                                     "the RF-MLP's at n_max, so the ratio is at least n_max/n_min)",
                    where=where, prediction=np.log10(pred), prediction_text=ptxt + " (log10 shown)",
                    measured=np.log10(span), reason=f"ratio >= {span:.3g} (censored)"))
            else:
                claims.append(_nt(BEATS_MLP, 
                    f"not resolved on this grid: RFA is below the RF-MLP's final error already at n_min, so the "
                    f"ratio is only known to exceed the grid's span {span:.3g} < predicted {pred:.3g}",
                    where=where, prediction=np.log10(pred), prediction_text=ptxt, measured=np.log10(span)))
            continue
        if kind == "never":
            d_mean, d_se = _mean_se(la[-1] - lm[-1])
            claims.append(BEATS_MLP.exceeds(
                -d_mean / math.log(10), d_se / math.log(10), 0.0, z=z, z_source=zsrc, where=where,
                prediction_text=f"RFA below the RF-MLP at n_max (log10 err ratio > 0; predicted n ratio {pred:.3g})"))
            if claims[-1].outcome == "holds":  # RFA better at n_max but the crossing is not on the grid
                claims[-1] = _nt(BEATS_MLP, 
                    "RFA's mean curve never reaches the RF-MLP's final error on the grid", where=where,
                    prediction=np.log10(pred), prediction_text=ptxt)
            continue
        measured[k] = math.exp(lr)
        claims.append(BEATS_MLP.at_least(
            lr / math.log(10), lse / math.log(10), math.log10(pred), z=z, z_source=zsrc + " (jackknife SE over replicates)",
            where=where, prediction_text=f"log10 n_mlp/n_rfa >= {math.log10(pred):.3g} (ratio {pred:.3g})"))
    return claims


def _outside_claims(params, targets, models, n, rel):
    claims = []
    conv = _conv(params)
    rows = []
    for k, name in enumerate(targets):
        fam, p = rs.parse_target(name)
        if fam != "keykey" and params["poly"] != "gegenbauer":
            continue
        if not _theory_covers_activation(params):
            if fam == "keykey":
                claims.append(_nt(OUTSIDE, 
                    "softmax normalises over all keys, so its features are not means of pairwise functions: the "
                    "class argument does not apply", where=f"target={name}"))
            continue
        if not rft.outside_class_exactly(fam, p, params["d"], **_zero_mean_kw(params)):
            continue
        for m in ("rfa", "brfa"):
            if m in models:
                rows.append((k, name, models.index(m), m))
    if not rows:
        if not claims:
            claims.append(_nt(OUTSIDE, "no target of this run is orthogonal to the attention class under "
                                             f"these conventions (activation {conv['activation']}, augment "
                                             f"{conv['augment']})"))
        return claims
    z, zsrc = z_family(len(rows) * len(n))
    allow = z * z / params["n_test"]
    for k, name, j, m in rows:
        mean, se = _mean_se(rel[k, :, j, :])
        i = int(np.argmin(mean + z * se))
        claims.append(OUTSIDE.at_least(
            mean[i], se[i], 1.0, z=z, z_source=zsrc, allowance=allow,
            allowance_source=f"test-set sampling: a fit g orthogonal to f* has estimated rel. error >= 1 - rho^2, "
                             f"rho its test-set correlation with f* (~ N(0, 1/n_test)): z^2/n_test = {allow:.3g}",
            where=f"target={name}, model={m}",
            prediction_text=f"rel. error >= 1 at every n (shown: n = {int(n[i])}, the closest)"))
    return claims


def summary_families(an: xr.Dataset) -> str:
    models = list(an["model"].values)
    rows = [f"   {'target':<8} " + " ".join(f"{m:>7}" for m in models) + f"  at n={int(an['n'][-1])}"
            + "   predicted n_mlp/n_rfa   measured"]
    pred = dict(zip(an["exact_target"].values, an["theory_n_ratio"].values)) if "exact_target" in an.coords else {}
    for i, t in enumerate(an["target"].values):
        vals = " ".join(f"{float(an['mean_rel_err'][i, -1, j]):7.3f}" for j in range(len(models)))
        meas = float(an["measured_n_ratio"][i])
        text = (">= " if bool(an["measured_n_ratio_censored"][i]) else "") + f"{meas:.3g}" if meas > 0 else "-"
        rows.append(f"   {t:<8} {vals}   {pred.get(t, math.nan):>14.3g}   {text:>8}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- N

def _fixed_exponent_chi2(logN, y, w, e):
    """chi^2 of y = a + e log N with a fitted by WLS (e fixed by the theory)."""
    r = y - e * logN
    a = np.sum(w * r) / np.sum(w)
    return float(np.sum(w * (r - a) ** 2))


def analyze_N(ds: xr.Dataset):
    params = _params(ds)
    targets = [str(t) for t in ds["target"].values]
    Ns = ds["N"].values.astype(int)
    rel = ds["rel_err"].transpose("target", "N", "model", "rep").values
    mean, se = _mean_se(rel)
    models = [str(m) for m in ds["model"].values]
    ia, im = models.index("rfa"), models.index("rfmlp")
    out = xr.Dataset(coords={"target": ds["target"].values, "N": ds["N"].values, "model": ds["model"].values})
    out["mean_rel_err"] = (("target", "N", "model"), mean)
    out["sem_rel_err"] = (("target", "N", "model"), se)
    out["spread_over_N"] = (("target", "model"), mean.max(axis=1) - mean.min(axis=1),
                            {"long_name": "max - min over N of mean_rel_err"})
    slope = np.zeros((len(targets), len(models)))
    slope_se = np.zeros_like(slope)
    for t in range(len(targets)):
        for m in range(len(models)):
            f = loglog_rate(Ns, rel[t, :, m, :])
            slope[t, m], slope_se[t, m] = f.slope, f.se
    out["N_exponent"] = (("target", "model"), slope, {"long_name": "WLS log-log slope of rel_err vs N"})
    out["N_exponent_se"] = (("target", "model"), slope_se)
    logB = np.full((len(targets), len(Ns), 2), np.nan)
    for t, name in enumerate(targets):
        if _exact(name, params):
            for k, N in enumerate(Ns):
                logB[t, k] = [np.log10(_B(name, params, m, int(N))) for m in ("rfa", "rfmlp")]
    fin = np.all(np.isfinite(logB), axis=(1, 2))
    if fin.any():
        out = out.assign_coords(kernel_model=str_coord(("rfa", "rfmlp")),
                                B_target=str_coord([t for t, f in zip(targets, fin) if f]))
        out["theory_log10_B"] = (("B_target", "N", "kernel_model"), logB[fin],
                                 {"long_name": "log10 RKHS norm^2 of f* = mean_i F (RFA: N-free; RFMLP grows with N)"})
    e_own = np.array([rft.N_exponent(rs.parse_target(t)[0], "rfa", rs.parse_target(t)[1]) for t in targets], dtype=float)
    e_alt = np.array([rft.N_exponent(rs.parse_target(t)[0], "rfmlp", rs.parse_target(t)[1]) for t in targets], dtype=float)
    out["theory_N_exponent"] = (("target", "model"), np.stack([e_own, e_alt], axis=1)[:, [0 if m == "rfa" else 1
                                                                                       for m in models]],
                                {"long_name": "err ~ N^e at fixed n from the complexity table (n ~ d^a N^b / eps^2)"})
    claims = _N_claims(params, targets, Ns, rel, mean, se, ia, im, e_own, e_alt, logB, slope, slope_se)
    return out, claims


def _N_claims(params, targets, Ns, rel, mean, se, ia, im, e_own, e_alt, logB, slope, slope_se):
    claims = []
    logN = np.log(Ns.astype(float))
    cand = [t for t, name in enumerate(targets) if _in_class(name, params) and np.isfinite(e_alt[t])
            and e_alt[t] > e_own[t]]
    z, zsrc = z_family(max(1, len(cand)))
    for t, name in enumerate(targets):
        where = f"target={name}"
        if not _in_class(name, params):
            claims.append(_nt(N_FREE, _not_in_class_reason(name, params), where=where))
            continue
        if t not in cand:
            claims.append(_nt(N_FREE, "the complexity table gives no RF-MLP N-exponent above attention's for "
                                            "this family", where=where))
            continue
        ptxt = f"err ~ N^{e_own[t]:g} (not N^{e_alt[t]:g})"
        unresolved = [int(N) for k, N in enumerate(Ns) if mean[t, k, ia] + z * se[t, k, ia] >= 1.0]
        if unresolved:
            claims.append(_nt(N_FREE, 
                f"not resolved on this grid: RFA's rel. error is not significantly below 1 at N = {unresolved} "
                f"(n = {params['n_fixed']})", where=where, prediction=e_own[t], prediction_text=ptxt))
            continue
        la = np.log(rel[t, :, ia, :])
        y, ys = _mean_se(la)
        w = 1.0 / np.maximum(ys, 1e-12) ** 2
        c_own = _fixed_exponent_chi2(logN, y, w, e_own[t])
        c_alt = _fixed_exponent_chi2(logN, y, w, e_alt[t])
        scale = max(1.0, min(c_own, c_alt) / max(1, len(Ns) - 1))
        delta = (c_alt - c_own) / scale
        test = (f"Delta chi^2 (scaled by the best reduced chi^2 {scale:.3g}) between the N^{e_alt[t]:g} and the "
                f"N^{e_own[t]:g} forms (intercepts fitted, exponents from the theory) >= z^2")
        src = f"{zsrc}; threshold z^2 = {z * z:.3g}"
        detail = (f"chi^2 N^{e_own[t]:g}: {c_own:.3g}, N^{e_alt[t]:g}: {c_alt:.3g}; fitted exponent "
                  f"{slope[t, ia]:+.3f} ± {slope_se[t, ia]:.3f}")
        if abs(delta) < z * z:
            claims.append(_nt(N_FREE, f"the two forms are indistinguishable on this grid (|Delta chi^2| = "
                                            f"{abs(delta):.3g} < {z * z:.3g}; {detail})", where=where,
                                            prediction=e_own[t], prediction_text=ptxt, measured=slope[t, ia],
                                            se=slope_se[t, ia]))
        else:
            claims.append(N_FREE.decided(delta >= z * z, test=test, tolerance=z * z, tolerance_source=src,
                                         where=where, prediction=e_own[t], prediction_text=ptxt,
                                         measured=slope[t, ia], se=slope_se[t, ia],
                                         reason=detail if delta >= z * z else f"the N^{e_alt[t]:g} form fits "
                                                                              f"better: {detail}"))
    # the RF-MLP degrades where its B grows
    grows = []
    for t, name in enumerate(targets):
        fin = np.all(np.isfinite(logB[t]))
        if fin:
            grows.append(logB[t, -1, 1] > logB[t, 0, 1])
        else:
            e = e_alt[t]
            grows.append(bool(np.isfinite(e) and e > 0))
    cand = [t for t in range(len(targets)) if grows[t]]
    z, zsrc = z_family(max(1, len(cand)))
    for t, name in enumerate(targets):
        where = f"target={name}"
        if t not in cand:
            claims.append(_nt(MLP_DEGRADES, "the theory predicts no growth of B_mlp with N for this target",
                                                  where=where))
            continue
        lm = np.log(rel[t, :, im, :])
        y, ys = _mean_se(lm)
        if y[0] + z * ys[0] >= 0:
            claims.append(_nt(MLP_DEGRADES, 
                f"the RF-MLP's rel. error is not significantly below 1 already at N_min = {int(Ns[0])} "
                f"({math.exp(y[0]):.3g}): there is no room to degrade", where=where, prediction_text="err(N_max) > err(N_min)"))
            continue
        diff = y[-1] - y[0]
        dse = math.sqrt(ys[-1] ** 2 + ys[0] ** 2)
        claims.append(MLP_DEGRADES.exceeds(diff, dse, 0.0, z=z, z_source=zsrc,
                                           where=f"{where}, N={int(Ns[0])}->{int(Ns[-1])}",
                                           prediction_text="log err(N_max) - log err(N_min) > 0"))
    return claims


def summary_N(an: xr.Dataset) -> str:
    Ns = [int(v) for v in an["N"].values]
    rows = [f"   {'target':<8} {'model':<6} " + " ".join(f"{'N=' + str(v):>7}" for v in Ns)
            + "   exponent ± se   theory"]
    for i, t in enumerate(an["target"].values):
        for j, m in enumerate(an["model"].values):
            vals = " ".join(f"{float(an['mean_rel_err'][i, k, j]):7.3f}" for k in range(len(Ns)))
            th = float(an["theory_N_exponent"][i, j])
            rows.append(f"   {t:<8} {m:<6} {vals}   {float(an['N_exponent'][i, j]):+.3f} ± "
                        f"{float(an['N_exponent_se'][i, j]):.3f}   {th:g}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- bias

def _bias_code(target) -> int:
    effect, _ = rft.bias_effect(rs.parse_target(target)[0])
    return {"lowers": 1, "raises": -1, None: 0}[effect]


def analyze_bias(ds: xr.Dataset):
    params = _params(ds)
    targets = [str(t) for t in ds["target"].values]
    r = ds["r"].values.astype(float)
    rel = ds["rel_err"].transpose("target", "r", "rep").values
    mean, se = _mean_se(rel)
    i0 = int(np.where(r == 0.0)[0][0])
    lr_mean, lr_se = _log_ratio(rel, rel[:, i0:i0 + 1, :])  # log(err(r) / err(0)), (target, r)
    pos = np.where(r > 0)[0]
    best = pos[np.argmin(mean[:, pos], axis=1)]
    effect = np.array([_bias_code(t) for t in targets], dtype=np.int8)
    out = xr.Dataset(coords={"target": ds["target"].values, "r": ds["r"].values})
    out["mean_rel_err"] = (("target", "r"), mean)
    out["sem_rel_err"] = (("target", "r"), se)
    out["log_ratio_to_zero_mean"] = (("target", "r"), lr_mean,
                                     {"long_name": "mean over replicates of log(rel_err(r) / rel_err(0))"})
    out["log_ratio_to_zero_mean_se"] = (("target", "r"), lr_se)
    out["best_r"] = (("target",), r[best], {"long_name": "r > 0 with the lowest mean rel_err"})
    out["theory_bias_effect"] = (("target",), effect, {"flag_values": [-1, 0, 1],
                                                       "flag_meanings": "raises_risk no_prediction lowers_risk"})
    conv = _conv(params)
    covers, why = rft.bias_theory_covers(activation=conv["activation"], augment=conv["augment"],
                                         mean_shape=conv["mean_shape"], value=conv["value"])
    rstar = int(pos[np.argmin(np.abs(r[pos] - 1.0))])
    out["tested_r"] = ((), float(r[rstar]), {"long_name": "the grid's r > 0 closest to 1 (the table's BRFA column)"})
    claims = []
    tested = [t for t in range(len(targets)) if effect[t] != 0]
    z, zsrc = z_family(max(1, len(tested)))
    for t, name in enumerate(targets):
        where = f"target={name}"
        kind, source = rft.bias_effect(rs.parse_target(name)[0])
        spec = BIAS_LOWERS if kind == "lowers" else BIAS_RAISES
        if kind is None:
            claims.append(_nt(BIAS_LOWERS, f"no prediction for this family ({source})", where=where))
            continue
        if not covers:
            claims.append(_nt(spec, why, where=where))
            continue
        if abs(r[rstar] - 1.0) > BIAS_R_WINDOW:
            claims.append(_nt(spec, f"the prediction is for r ~ 1 (spec §4.3, BRFA column); the grid's closest "
                                          f"r > 0 is {r[rstar]:g}", where=where))
            continue
        claims.append(spec.exceeds(lr_mean[t, rstar], lr_se[t, rstar], 0.0, z=z, z_source=zsrc,
                                   where=f"{where}, r={r[rstar]:g}", below=kind == "lowers",
                                   prediction_text=f"log err(r) - log err(0) {'<' if kind == 'lowers' else '>'} 0 "
                                                   f"({source.split(':')[0]})"))
    return out, claims


def summary_bias(an: xr.Dataset) -> str:
    rs_ = [float(v) for v in an["r"].values]
    rows = [f"   {'target':<8} " + " ".join(f"{'r=' + format(v, 'g'):>7}" for v in rs_) + "   effect (theory)"]
    for i, t in enumerate(an["target"].values):
        vals = " ".join(f"{float(an['mean_rel_err'][i, k]):7.3f}" for k in range(len(rs_)))
        eff = {1: "lowers", -1: "raises", 0: "-"}[int(an["theory_bias_effect"][i])]
        rows.append(f"   {t:<8} {vals}   {eff}")
    return "\n".join(rows)


ANALYZERS = {"kernel": analyze_kernel, "rate": analyze_rate, "families": analyze_families, "N": analyze_N,
             "bias": analyze_bias}
SUMMARIES = {"kernel": summary_kernel, "rate": summary_rate, "families": summary_families, "N": summary_N,
             "bias": summary_bias}


def analyze(group: str, ds: xr.Dataset):
    """Fits, theory and claims of one group from its raw dataset (a pure function of it)."""
    return ANALYZERS[group](ds)


def summary(group: str, an: xr.Dataset) -> str:
    """The group's own table (the claims are printed by the shared plumbing)."""
    return SUMMARIES[group](an)
