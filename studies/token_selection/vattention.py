"""Group ``vattention``: how often vAttention's error exceeds its tolerance, measured against the
workbench's prediction for the rule as published and as implemented.

The rule (Desai et al. 2025; section 7 of theory/token_selection.py): keep the top-k1 keys,
sample b of the n_s = n - k1 others uniformly with weight n_s/b, ``b = (z n_s sd / tol)^2``
floored and clipped to [1, n_s]; ``denominator``: sd of e^s over the residual, tol = eps times
the normaliser; ``numerator``: sd = sqrt(tr Cov) of e^s v, ``tol = eps |sum e^s v|``; z =
Phi^-1(1 - delta/2) as published (``two_sided``) or Phi^-1(1 - delta) as implemented
(``one_sided``). Its promise: P(error > tol) <= delta.

Cells (sigma): n Gaussian keys N(0, I_d), q queries with spread sigma, every (mode, quantile)
variant with ``reps`` repetitions. Stored: error / tolerance per repetition, the budget b used
per query, the residual's population variance (denominator) and covariance (numerator) from the
tail sums, and the Berry-Esseen scale b_3 of the sampled quantity (``theory.clt_scale``).

Claim ``vattention_coverage[mode,quantile]``: wherever every query's b >= 10 b_3 (the CLT
regime), the measured frequency of error > tol equals the predicted one (mean over queries of
``theory.vattention_exceedance`` with b as used), z SE with the binomial SE of the prediction.
Outside the regime (the lognormal weights of large sigma) the prediction is not tested. Where
the measured frequency exceeds delta the method's own promise breaks: a finding, written into
the claim's prediction text and the summary.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import xarray as xr

import sim.token_selection as S
from studies.claims import worst_of, z_family
from studies.sweep import Sweep, str_coord
from studies.token_selection import common as C
from theory import token_selection as tsel

GROUP = "vattention"
MODES = ("denominator", "numerator")
VARIANTS = tuple(f"{m},{qt}" for m in MODES for qt in tsel.QUANTILES)
LAYOUT = "token_selection/vattention-v1: cells (sigma); ratio(variant, query, rep)"


def make_policies(k1, eps, delta):
    """One VAttention policy per (mode, quantile); eps[mode] the relative tolerance."""
    return [S.VAttention(k1, eps=eps[m], delta=delta, mode=m, quantile=qt) for m in MODES for qt in tsel.QUANTILES]


def _cell(cell, *, d, n, k1, eps, delta, q, reps):
    sigma = float(cell.coords["sigma"])
    lp = C.law_params("gaussian", d)
    Y = C.make_keys(lp, n, C.child(cell.seed, 0))
    a = C.make_queries(lp, sigma, q, C.child(cell.seed, 1))
    pols = make_policies(k1, eps, delta)
    res = S.selection_errors(a, Y, pols, reps=reps, seed=C.child(cell.seed, 2), memory=1 << 28)
    ctx, gt = C.given_token(a, Y, [k1], outer=True)
    s = gt.sums
    ns = n - k1
    ynorm = np.linalg.norm(res.ybar, axis=1)
    ratio = np.empty((len(pols), q, reps))
    for v, pol in enumerate(pols):
        if pol.mode == "denominator":
            ratio[v] = np.abs(res.zratio[v] - 1.0) / pol.eps
        else:
            ratio[v] = np.sqrt(res.nerr2[v]) / (pol.eps * ynorm[:, None])
    res_var = s.P2[:, 0] / ns - (s.tau[:, 0] / ns) ** 2
    tail_mean = (s.A1[:, 0] + s.tau[:, 0, None] * res.ybar) / ns
    res_cov = s.M2[:, 0] / ns - tail_mean[:, :, None] * tail_mean[:, None, :]
    return {"ratio": ratio, "budget": np.stack([res.info[p.name]["budget"] for p in pols]).astype(float),
            "res_var": res_var, "res_cov": res_cov, "ybar_norm": ynorm, "b3": _clt_scales(a, Y, ctx, k1)}


def _clt_scales(a, Y, ctx, k1):
    """(mode, query): the Berry-Esseen scale of the residual's e^s (denominator) and the largest
    over coordinates of e^s v (numerator)."""
    top = ctx.rows_topk(ctx.exact_rows(), k1)
    s = a @ Y.T
    p = np.exp(s - ctx.lse[:, None])
    out = np.empty((2, a.shape[0]))
    for i in range(a.shape[0]):
        keep = np.ones(Y.shape[0], dtype=bool)
        keep[top[i]] = False
        x = p[i, keep]
        out[0, i] = tsel.clt_scale(x)
        out[1, i] = float(np.max(tsel.clt_scale((x[:, None] * Y[keep]).T, axis=-1)))
    return out


def sweep(args) -> Sweep:
    eps = {"denominator": args.va_eps, "numerator": args.va_eps_num}
    params = {"layout": LAYOUT, "group": GROUP, "law": "gaussian N(0, I_d)", "d": args.va_d, "n": args.va_n,
              "sigma": list(args.va_sigma), "k1": args.va_k1, "eps": eps, "delta": args.va_delta,
              "queries": args.va_queries, "reps": args.va_reps, "rounding": "floor", "replace": True,
              "statistics": "exact (use_exact_estimation)", "variants": list(VARIANTS)}
    run = functools.partial(_cell, d=args.va_d, n=args.va_n, k1=args.va_k1, eps=eps, delta=args.va_delta,
                            q=args.va_queries, reps=args.va_reps)
    return Sweep(
        study=f"{C.STUDY}/{GROUP}",
        cell_dims={"sigma": np.asarray(args.va_sigma, dtype=float)},
        variables={"ratio": ("sigma", "variant", "query", "rep"), "budget": ("sigma", "variant", "query"),
                   "res_var": ("sigma", "query"), "res_cov": ("sigma", "query", "dim", "dim2"),
                   "ybar_norm": ("sigma", "query"), "b3": ("sigma", "mode", "query")},
        coords={"variant": str_coord(VARIANTS), "query": np.arange(args.va_queries), "rep": np.arange(args.va_reps),
                "dim": np.arange(args.va_d), "dim2": np.arange(args.va_d), "mode": str_coord(MODES)},
        params=params, run_cell=run, root_seed=args.seed + 2,
        attrs={"part": "vAttention's budget rule: exceedance frequency against the prediction",
               "convention": "denominator error |D_hat/D - 1|, numerator error |N_hat/D - ybar| (D the softmax "
                             "normaliser); ratio = error / tolerance; b floored, draws with replacement"},
        var_attrs={"ratio": {"long_name": "error / tolerance of each repetition (> 1: exceeded)"},
                   "budget": {"long_name": "b of the rule for each query"},
                   "res_var": {"long_name": "population variance of p over the residual keys"},
                   "res_cov": {"long_name": "population covariance of p v over the residual keys"},
                   "b3": {"long_name": "Berry-Esseen scale (E|x - Ex|^3 / Var^(3/2))^2 of the sampled quantity"}})


# ------------------------------------------------------------------------------- analysis
def _predicted(ds, params, i, v):
    """Per query: the CLT exceedance of variant v at sigma index i, b as used."""
    mode = VARIANTS[v].split(",")[0]
    ns = int(params["n"]) - int(params["k1"])
    eps = float(params["eps"][mode])
    out = []
    for k in range(ds.sizes["query"]):
        b = float(ds["budget"].values[i, v, k])
        if mode == "denominator":
            out.append(tsel.vattention_exceedance(float(ds["res_var"].values[i, k]), ns, b, eps))
        else:
            tol = eps * float(ds["ybar_norm"].values[i, k])
            out.append(tsel.vattention_exceedance(ds["res_cov"].values[i, k], ns, b, tol))
    return np.asarray(out)


def analyze(ds: xr.Dataset, params) -> tuple[xr.Dataset, list]:
    sig = ds["sigma"].values.astype(float)
    delta = float(params["delta"])
    R, q = ds.sizes["rep"], ds.sizes["query"]
    exceed = (ds["ratio"].values > 1.0).astype(float)  # (S, V, q, R)
    freq = exceed.mean(axis=(-1, -2))
    pred_q = np.array([[_predicted(ds, params, i, v) for v in range(len(VARIANTS))] for i in range(sig.size)])
    pred = pred_q.mean(axis=-1)
    se_null = np.sqrt(np.sum(pred_q * (1 - pred_q), axis=-1) * R) / (q * R)
    se_meas = np.sqrt(np.maximum(freq * (1 - freq), 1.0 / (q * R)) / (q * R))
    b3 = ds["b3"].values  # (S, mode, q)
    mode_of = [MODES.index(v.split(",")[0]) for v in VARIANTS]
    clt = np.array([[bool(np.all(ds["budget"].values[i, v] >= C.CLT_FACTOR * b3[i, mode_of[v]]))
                     for v in range(len(VARIANTS))] for i in range(sig.size)])
    broken = freq > delta + 3.0 * se_meas
    out = xr.Dataset(coords={"sigma": sig, "variant": ds["variant"].values})
    out["exceed_freq"] = (("sigma", "variant"), freq)
    out["exceed_freq_se"] = (("sigma", "variant"), se_meas)
    out["theory_exceed_freq"] = (("sigma", "variant"), pred, {"long_name": "CLT prediction, b as used"})
    out["clt_regime"] = (("sigma", "variant"), clt, {"description": f"every query's b >= {C.CLT_FACTOR:g} b_3"})
    out["promise_broken"] = (("sigma", "variant"), broken, {"description": "measured frequency > delta + 3 SE"})
    out["budget_median"] = (("sigma", "variant"), np.median(ds["budget"].values, axis=-1))
    out["b3_median"] = (("sigma", "mode"), np.median(b3, axis=-1))
    out["theory_lognormal_b3"] = (("sigma",), tsel.lognormal_clt_scale(sig))
    out.attrs["delta"] = delta
    z, zsrc = z_family(max(1, int(clt.sum())))
    claims = []
    for v, name in enumerate(VARIANTS):
        members = []
        for i, s in enumerate(sig):
            where = f"sigma={s:g}"
            text = f"{pred[i, v]:.3g} (CLT, b as used; promise <= {delta:g})"
            if not clt[i, v]:
                members.append(C.VATTENTION.not_tested(
                    f"outside the CLT regime: b < {C.CLT_FACTOR:g} b_3 for some query (median b "
                    f"{out['budget_median'].values[i, v]:.3g}, b_3 {out['b3_median'].values[i, mode_of[v]]:.3g}); the "
                    f"measured frequency is {freq[i, v]:.3g}", where=where, prediction=pred[i, v],
                    prediction_text=text, measured=freq[i, v], se=se_meas[i, v]))
                continue
            members.append(C.VATTENTION.equal(freq[i, v], se_null[i, v], pred[i, v], z=z, z_source=zsrc,
                                              where=where, effect=delta, prediction_text=text))
        claim = worst_of(members, where=name, every="sigma")
        claims.append(dataclasses.replace(claim, prediction_text=claim.prediction_text + "; " + _finding(
            sig, freq[:, v], se_meas[:, v], broken[:, v], delta)))
    return out, claims


def _finding(sig, freq, se, broken, delta) -> str:
    if not broken.any():
        return f"promise <= {delta:g} kept at every sigma (max {freq.max():.3g})"
    where = ", ".join(f"sigma={s:g}: {fr:.3g}±{e:.2g}" for s, fr, e, b in zip(sig, freq, se, broken) if b)
    return f"FINDING: promise <= {delta:g} broken at {where}"


def summary(an: xr.Dataset) -> str:
    delta = float(an.attrs.get("delta", math.nan))
    rows = [f"{'variant':>24} {'sigma':>6} {'median b':>9} {'b_3':>9} {'CLT':>4} {'measured':>16} {'predicted':>10} "
            f"promise <= {delta:g}"]
    for v, name in enumerate(an["variant"].values):
        mode = MODES.index(str(name).split(",")[0])
        for i, s in enumerate(an["sigma"].values):
            rows.append(f"{name:>24} {s:>6g} {an['budget_median'].values[i, v]:>9.4g} "
                        f"{an['b3_median'].values[i, mode]:>9.3g} "
                        f"{'yes' if an['clt_regime'].values[i, v] else 'no':>4} "
                        f"{an['exceed_freq'].values[i, v]:>8.4f} ± {an['exceed_freq_se'].values[i, v]:<5.2g} "
                        f"{an['theory_exceed_freq'].values[i, v]:>10.4f} "
                        f"{'BROKEN' if an['promise_broken'].values[i, v] else 'kept'}")
    broken = [f"{name} at sigma={s:g}" for v, name in enumerate(an["variant"].values)
              for i, s in enumerate(an["sigma"].values) if an["promise_broken"].values[i, v]]
    rows.append("findings about vAttention: " + ("its promise P(error > tol) <= delta breaks for " + "; ".join(broken)
                                                 if broken else "its promise held everywhere on this grid"))
    return "\n".join(rows)
