"""The ``N`` group of the random-feature attention study: RFA and the RF-MLP at a fixed training
size for several numbers of keys N.

Data (the group's store): ``rel_err(target, N, model, rep)``.

:func:`analyze_N` gives means and SEs, the fitted N-exponent of each model (WLS log-log slope),
the complexity table's exponents (``err ~ N^e`` at fixed n from ``n ~ d^a N^b / eps^2``) and, for
targets with closed forms, ``log10 B`` under both models (RFA's does not depend on N). Claims:
``attention_N_free`` (RFA's curve follows its own exponent rather than the RF-MLP's: the
Delta chi^2 of the two fixed-exponent forms, scaled by the best reduced chi^2, is at least z^2)
and ``mlp_degrades_in_N`` (where B_mlp grows with N, the RF-MLP's log error rises from N_min to
N_max).
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from sim import random_features as rs
from studies.cli import run_params
from studies.fits import loglog_rate
from studies.random_features.common import (
    _B,
    MLP_DEGRADES,
    N_FREE,
    _exact,
    _in_class,
    _mean_se,
    _not_in_class_reason,
    _nt,
    _z,
    numerical_floor,
)
from studies.sweep import str_coord
from theory import random_features as rft

__all__ = ["analyze_N", "summary_N"]


def _fixed_exponent_chi2(logN, y, w, e):
    """chi^2 of y = a + e log N with a fitted by WLS (e fixed by the theory)."""
    r = y - e * logN
    a = np.sum(w * r) / np.sum(w)
    return float(np.sum(w * (r - a) ** 2))


def analyze_N(ds: xr.Dataset):
    params = run_params(ds)
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
    lam = (ds["best_lambda"].transpose("target", "N", "model", "rep").values if "best_lambda" in ds
           else np.full(rel.shape, np.inf))
    floors = [numerical_floor(rel[t, :, ia], lam[t, :, ia], params["lambdas"], ds["rel_err"].dtype)
              for t in range(len(targets))]
    out["at_numerical_floor"] = (("target",), np.array([f for f, _ in floors]), {
        "description": "RFA's fits sit at the numerical floor (smallest ridge chosen everywhere, relative error "
                       "<= max(1e-4, sqrt(eps))): no N-dependence can be read from them"})
    claims = _N_claims(params, targets, Ns, rel, mean, se, ia, im, e_own, e_alt, logB, slope, slope_se, floors)
    return out, claims


def _N_claims(params, targets, Ns, rel, mean, se, ia, im, e_own, e_alt, logB, slope, slope_se, floors):
    claims = []
    logN = np.log(Ns.astype(float))
    cand = [t for t, name in enumerate(targets) if _in_class(name, params) and np.isfinite(e_alt[t])
            and e_alt[t] > e_own[t]]
    z, zsrc = _z(len(cand), rel.shape[-1])
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
        if floors[t][0]:
            claims.append(_nt(N_FREE, floors[t][1], where=where, prediction=e_own[t], prediction_text=ptxt,
                              measured=slope[t, ia], se=slope_se[t, ia]))
            continue
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
    z, zsrc = _z(len(cand), rel.shape[-1])
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
