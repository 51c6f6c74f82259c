"""The ``families`` group of the random-feature attention study: RFA, BRFA and the RF-MLP on the
target families, over training sizes n.

Data (the group's store): ``rel_err(target, n, model, rep)``; every model of one replicate sees
the same data (paired comparisons).

:func:`analyze_families` gives means and SEs, the geometric-mean error ratio of the RF-MLP to
each model, the function-class table of notes random_features §4.3 (``theory_learnable``) and, for targets with
closed-form complexities, ``B`` under RFA and the RF-MLP and the predicted sample-complexity
ratio ``n_mlp/n_rfa = B_mlp R_mlp^2 / (B_rfa R_rfa^2)``. Claims: ``beats_mlp`` (the measured ratio
at the RF-MLP's final error, interpolated in log-log along RFA's mean curve, with a jackknife SE
over replicates; a censored lower bound holds when it already exceeds the prediction) and
``outside_class`` (a target orthogonal to every attention feature keeps rel. error >= 1).
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from sim import random_features as rs
from studies.claims import z_family
from studies.cli import run_params
from studies.random_features.common import (
    _B,
    BEATS_MLP,
    OUTSIDE,
    _conv,
    _exact,
    _in_class,
    _log_ratio,
    _mean_se,
    _not_in_class_reason,
    _nt,
    _theory_covers_activation,
    _z,
    _zero_mean_kw,
)
from studies.sweep import str_coord
from theory import random_features as rft

__all__ = ["analyze_families", "summary_families"]


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
    params = run_params(ds)
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
                                                                           "(notes random_features §4.3 table)"})
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
    z, zsrc = _z(len(tested), rel.shape[-1])
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
            effect=math.log10(pred),
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
    z, zsrc = _z(len(rows) * len(n), rel.shape[-1])
    zn = float(z_family(len(rows) * len(n))[0])  # the test-set correlation is normal (n_test samples)
    allow = zn * zn / params["n_test"]
    for k, name, j, m in rows:
        mean, se = _mean_se(rel[k, :, j, :])
        i = int(np.argmin(mean + z * se))
        claims.append(OUTSIDE.at_least(
            mean[i], se[i], 1.0, z=z, z_source=zsrc, allowance=allow,
            allowance_source=f"test-set sampling: a fit g orthogonal to f* has estimated rel. error >= 1 - rho^2, "
                             f"rho its test-set correlation with f* (~ N(0, 1/n_test)): z^2/n_test = {allow:.3g}",
            effect=1.0,
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
