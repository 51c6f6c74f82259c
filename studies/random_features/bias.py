"""The ``bias`` group of the random-feature attention study: BRFA over bias ratios r (r = 0 is
zero-mean RFA) at a fixed training size.

Data (the group's store): ``rel_err(target, r, rep)``; every r of one replicate sees the same data.

:func:`analyze_bias` gives means and SEs, the paired log ratio ``log err(r) - log err(0)`` with
its SE, the best r > 0 per target and the predicted direction of the effect
(:func:`theory.random_features.bias_effect`). Claims, at the grid's r closest to 1 (within
``BIAS_R_WINDOW``): ``bias_lowers_risk`` (pair, attention-like targets: log ratio < 0) and
``bias_raises_risk`` (keys- and query-only targets: > 0); "not tested" for families without a
prediction and for conventions the argument of notes random_features §3.4 does not cover.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from sim import random_features as rs
from studies.cli import run_params
from studies.random_features.common import (
    BIAS_LOWERS,
    BIAS_R_WINDOW,
    BIAS_RAISES,
    _conv,
    _log_ratio,
    _mean_se,
    _nt,
    _z,
)
from theory import random_features as rft

__all__ = ["analyze_bias", "summary_bias"]


def _bias_code(target) -> int:
    effect, _ = rft.bias_effect(rs.parse_target(target)[0])
    return {"lowers": 1, "raises": -1, None: 0}[effect]


def analyze_bias(ds: xr.Dataset):
    params = run_params(ds)
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
    z, zsrc = _z(len(tested), rel.shape[-1])
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
            claims.append(_nt(spec, f"the prediction is for r ~ 1 (notes random_features §4.3, BRFA column); the grid's closest "
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
