"""The ``rate`` group of the random-feature attention study: zero-mean RFA's excess risk over
training sizes n and head counts M, against the excess-risk bound.

Data (the group's store): ``rel_err`` and ``test_mse`` over ``(target, n, M, rep)`` (nested
training sizes of one draw per replicate, heads from the cell seed).

:func:`analyze_rate` gives means and SEs over replicates, the log-log slopes of the excess risk in
n at each M and in M at each n (:func:`studies.fits.loglog_rate`), the bound's shape
``n^-1/2 + M^-1/2`` and its slopes, and, for targets with a closed-form complexity, the bound
``sqrt(B R^2/n) + sqrt(B R^2/M)`` (constants and logs 1) and the trivial risk ``Var f*``, and the
deterministic-equivalent risk of ridge regression on M (d+1) independent random features with the
kernel's exact spectrum (``theory_risk_iid``, notes random_features §4.4). Claims:

* ``risk_exponent_n`` (the sharp one): at the largest M, the replicates' slope of log risk on log n
  over the whole n grid equals the deterministic equivalent's, within z SE (Student t, reps - 1
  dof) plus its declared model error; not tested for query-only targets (a head's value features
  are far from independent there), at the numerical floor, and where the tolerance reaches the
  distance to the bound's slope (the power rule);
* ``below_bound`` (where the bound is below ``Var f*``; "not tested" where it is vacuous),
  ``risk_slope_n`` over ``n <= P`` at the largest M and ``risk_slope_M`` over ``P <= n_max`` at
  the largest n (P = M (d+1) trained parameters): the weaker envelope claims, each slope (the
  replicates' mean) at most the bound's plus z SE.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from sim import random_features as rs
from studies.cli import run_params
from studies.fits import loglog_rate
from studies.random_features.common import (
    BELOW_BOUND,
    EXPONENT_MODEL_ERROR,
    EXPONENT_N,
    MIN_SLOPE_POINTS,
    SLOPE_M,
    SLOPE_N,
    _conv,
    _Dv,
    _exact,
    _in_class,
    _mean_se,
    _not_in_class_reason,
    _nt,
    _z,
    _zero_mean_kw,
    numerical_floor,
)
from studies.sweep import str_coord
from theory import random_features as rft

__all__ = ["analyze_rate", "summary_rate"]


def analyze_rate(ds: xr.Dataset):
    params = run_params(ds)
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
                               {"long_name": "sqrt(B R^2/n) + sqrt(B R^2/M), constants and logs 1 (notes random_features §4.2)"})
    iid = _iid_risk(params, targets, n, M)
    out["theory_risk_iid"] = (("target", "n", "M"), np.nan_to_num(iid, nan=0.0), {
        "long_name": "deterministic-equivalent excess risk of ridge regression on M D_v independent random features "
                     "with this kernel's exact spectrum, ridge tuned on the grid (notes random_features §4.4; 0: no prediction)"})
    claims = _rate_claims(params, targets, n, M, mse, mse_mean, mse_se, shape, BR2, var)
    claims += _exponent_claims(ds, params, targets, n, M, mse, iid, out)
    return out, claims


def _iid_risk(params, targets, n, M) -> np.ndarray:
    """theory's deterministic-equivalent risk ``(target, n, M)`` for the targets with a closed-form
    spectrum (NaN elsewhere: Hermite terms, softmax, attn, key-key, a vanishing eigenvalue)."""
    out = np.full((len(targets), n.size, M.size), np.nan)
    P = M * _Dv(params)
    for t, name in enumerate(targets):
        if not _exact(name, params) or not _in_class(name, params):
            continue
        fam, p = rs.parse_target(name)
        out[t] = rft.rfa_ridge_risk(fam, p, params["d"], params["N"], n[:, None], P[None, :], params["lambdas"],
                                    key_norm=_conv(params)["key_norm"], **_zero_mean_kw(params))
    return out


def _replicate_slopes(x, y):
    """OLS slope of log y on log x for every replicate (``y (points, rep)``): replicates share their
    data across the points (nested training sizes, the same heads), so their slopes are the paired
    measurement; mean and SE over replicates."""
    lx = np.log(np.asarray(x, dtype=float))
    xc = lx - lx.mean()
    s = xc @ np.log(y) / (xc @ xc)
    return _mean_se(s)


def _exponent_claims(ds, params, targets, n, M, mse, iid, out) -> list:
    """``risk_exponent_n`` per target: at M_max, the replicates' slope of log risk on log n over
    the whole n grid against the slope of theory's deterministic equivalent over the same n."""
    rel = ds["rel_err"].transpose("target", "n", "M", "rep").values
    lam = (ds["best_lambda"].transpose("target", "n", "M", "rep").values if "best_lambda" in ds
           else np.full(rel.shape, np.inf))
    bound = float(rft.bound_loglog_slope(n, M[-1:], over="n")[0])
    lx = np.log(n)
    xc = lx - lx.mean()
    rows, claims = [], []
    meas = np.full(len(targets), np.nan)
    meas_se = np.full(len(targets), np.nan)
    pred = np.full(len(targets), np.nan)
    for t, name in enumerate(targets):
        where = f"target={name}, M={int(M[-1])}, n={int(n[0])}..{int(n[-1])}"
        fam, _ = rs.parse_target(name)
        floor, why = numerical_floor(rel[t, :, -1], lam[t, :, -1], params["lambdas"], ds["rel_err"].dtype)
        if not np.all(np.isfinite(iid[t, :, -1])) or np.any(iid[t, :, -1] <= 0):
            reason = (_not_in_class_reason(name, params) if _in_class(name, params) is False else
                      "the deterministic equivalent needs the kernel's spectrum and the target's place in it: "
                      "Gegenbauer keys/query/pair/bilin targets under relu or identity scores")
            rows.append((t, where, None, reason))
        elif fam == "query":
            rows.append((t, where, None, "the independent-feature equivalent does not describe query-only targets: a "
                                         "head carries a function of the query through its constant value coordinate "
                                         "alone, so its d + 1 features are far from independent there (notes random_features §4.4)"))
        elif floor:
            rows.append((t, where, None, why))
        elif n.size < MIN_SLOPE_POINTS:
            rows.append((t, where, None, f"{n.size} training sizes; a slope needs >= {MIN_SLOPE_POINTS}"))
        else:
            meas[t], meas_se[t] = _replicate_slopes(n, mse[t, :, -1, :])
            pred[t] = float(xc @ np.log(iid[t, :, -1]) / (xc @ xc))
            rows.append((t, where, True, ""))
    out["exponent_n"] = (("target",), np.nan_to_num(meas, nan=0.0), {
        "long_name": "mean over replicates of the OLS slope of log risk on log n at M_max (0: not measured)"})
    out["exponent_n_se"] = (("target",), np.nan_to_num(meas_se, nan=0.0))
    out["theory_exponent_n"] = (("target",), np.nan_to_num(pred, nan=0.0), {
        "long_name": "OLS slope of log theory_risk_iid on log n at M_max (0: no prediction)"})
    z, zsrc = _z(sum(1 for r in rows if r[2]), mse.shape[-1])
    for t, where, ok, reason in rows:
        if not ok:
            claims.append(_nt(EXPONENT_N, reason, where=where))
            continue
        claims.append(EXPONENT_N.equal(
            meas[t], meas_se[t], pred[t], z=z, z_source=zsrc + " (slopes of the replicates)",
            allowance=EXPONENT_MODEL_ERROR,
            allowance_source="declared model error of the deterministic equivalent (notes random_features §4.4): it treats a head's "
                             "d + 1 value features as independent random features and is asymptotic in the "
                             "spectrum's dimension; on the configurations of §4.4 its n-exponent is within 0.11 of "
                             "the measured one for keys and pair targets",
            where=where, effect=abs(pred[t] - bound),
            prediction_text=f"slope {pred[t]:.3g} (deterministic equivalent; the bound's: {bound:.3g})"))
    return claims


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
        z, zsrc = _z(int(informative.sum()), mse.shape[-1])
        idx = np.argwhere(informative)
        excess = [(mse_mean[t, i, j] - z * mse_se[t, i, j]) - bound[i, j] for i, j in idx]
        i, j = idx[int(np.argmax(excess))]
        claims.append(BELOW_BOUND.at_most(
            mse_mean[t, i, j], mse_se[t, i, j], bound[i, j], z=z, z_source=zsrc, effect=var[t] - bound[i, j],
            where=where,
            prediction_text=f"<= {bound[i, j]:.3g}, the bound at n={int(n[i])}, M={int(M[j])} (the closest of "
                            f"{len(idx)} informative points)"))
    # slopes, where each term of the bound governs
    P = M * _Dv(params)
    tested = [t for t, name in enumerate(targets) if _in_class(name, params)]
    z, zsrc = _z(len(tested), mse.shape[-1])
    zsrc += " (slopes of the replicates)"
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
            slope, slope_se = _replicate_slopes(n[sel_n], mse[t, sel_n, -1, :])
            th = float(rft.bound_loglog_slope(n[sel_n], M[-1:], over="n")[0])
            claims.append(SLOPE_N.at_most(
                slope, slope_se, th, z=z, z_source=zsrc, effect=abs(th),
                where=f"{where}, M={int(M[-1])}, n={int(n[sel_n][0])}..{int(n[sel_n][-1])}",
                prediction_text=f"slope <= {th:.3g} (the bound's)"))
        if sel_M.sum() < MIN_SLOPE_POINTS:
            claims.append(_nt(SLOPE_M, 
                f"{int(sel_M.sum())} head count(s) with P = M x {_Dv(params)} <= n_max = {int(n[-1])}; a slope needs "
                f">= {MIN_SLOPE_POINTS}", where=where))
        else:
            slope, slope_se = _replicate_slopes(M[sel_M], mse[t, -1, sel_M, :])
            th = float(rft.bound_loglog_slope(n[-1:], M[sel_M], over="M")[0])
            claims.append(SLOPE_M.at_most(
                slope, slope_se, th, z=z, z_source=zsrc, effect=abs(th),
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
        if "exponent_n" in an and float(an["theory_exponent_n"].sel(target=t)) != 0:
            rows.append(f"     exponent in n at M={int(an['M'][-1])} (replicates' slopes, n={int(an['n'][0])}.."
                        f"{int(an['n'][-1])}): {float(an['exponent_n'].sel(target=t)):+.3f} ± "
                        f"{float(an['exponent_n_se'].sel(target=t)):.3f} (deterministic equivalent "
                        f"{float(an['theory_exponent_n'].sel(target=t)):+.3f})")
        if "bound_target" in an.coords and t in list(an["bound_target"].values):
            b = an["theory_bound"].sel(bound_target=t)
            v = float(an["theory_target_var"].sel(bound_target=t))
            rows.append(f"     bound (constants 1) {float(b.min()):.3g}..{float(b.max()):.3g} vs Var f* {v:.3g}; "
                        f"risk {float(a['mean_excess_risk'].min()):.3g}..{float(a['mean_excess_risk'].max()):.3g}")
    return "\n".join(rows)
