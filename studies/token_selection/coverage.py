"""Group ``coverage``: Token Sparse Attention's coverage rule, with the query's own scores and
with the window proxy.

The rule (Jo, Kang, Song, Kim 2026; section 8 of theory/token_selection.py): sort the keys by
attention share and drop the lowest until the dropped share reaches tau_cov ("reach", the
authors' code), keeping at least ``min_keep``. Scored by the query's own softmax it leaves
tau_S < tau_cov + p_cross (p_cross: the crossing key's share, at most the smallest kept share)
and an error <= tau_S diam(V supp). Scored by the window proxy (the mean softmax of W queries,
pooled over 7 positions, one kept set for every query) nothing bounds another query's tau_S.

Cells (law, sigma): n keys (sphere: diam = 2 radius exactly; gaussian: diam bounded by twice
the largest distance to the keys' mean), W window queries and W other queries drawn around a
shared direction (correlation ``--cov-corr``, as successive decoding queries), each with spread
sigma. Stored per tau_cov: both rules' errors and tail masses for all 2W queries, and the
smallest kept share of the exact rule.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

import sim.token_selection as S
from sim.token_selection.sums import gather
from studies.sweep import Sweep, str_coord
from studies.token_selection import common as C

GROUP = "coverage"
COVERAGE_LAWS = ("sphere", "gaussian")
LAYOUT = "token_selection/coverage-v1: cells (law, sigma); (rule, tau_cov, query)"
RULES = ("exact", "proxy")


def make_policies(taus, min_keep, window, kernel):
    """Per tau_cov: the coverage rule with the query's own scores and with the window proxy."""
    return [S.Coverage(t, min_keep=min_keep, scores=r, window=window if r == "proxy" else None, kernel=kernel,
                       label=f"coverage-{r}-{t:g}") for r in RULES for t in taus]


def queries(lp, sigma, W, corr, seed):
    """2W score vectors around one direction u: rows sqrt(corr) u + sqrt(1 - corr) g (g a
    random unit vector), scaled to spread sigma; the first W are the window."""
    d = int(lp["d"])
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    g = rng.standard_normal((2 * W, d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    v = math.sqrt(corr) * u + math.sqrt(1 - corr) * g
    var = np.einsum("qi,ij,qj->q", v, C.law_cov(lp), v)
    return float(sigma) * v / np.sqrt(var)[:, None]


def _cell(cell, *, laws, n, taus, min_keep, W, corr, kernel):
    lp = laws[str(cell.coords["law"])]
    sigma = float(cell.coords["sigma"])
    Y = C.make_keys(lp, n, C.child(cell.seed, 0))
    a = queries(lp, sigma, W, corr, C.child(cell.seed, 1))
    pols = make_policies(taus, min_keep, a[:W], kernel)
    res = S.selection_errors(a, Y, pols, reps=1, seed=C.child(cell.seed, 2))
    T = len(taus)
    src = S.as_source(Y)
    pmin = np.empty((T, 2 * W))
    for t, pol in enumerate(pols[:T]):  # the exact rule's smallest kept share
        sel = S.select(pol, a, src)
        idx = np.broadcast_to(sel.idx[:, 0, :], (2 * W, sel.idx.shape[2]))  # a shared (proxy) set: one row
        keys, _ = gather(src, idx)
        p = np.exp(np.einsum("qkd,qd->qk", keys, a) - res.lse[:, None])
        cnt = np.broadcast_to(sel.count[:, 0], (2 * W,))
        pmin[t] = [p[i, :cnt[i]].min() for i in range(2 * W)]
    diam = 2.0 * float(lp["radius"]) if lp["law"] == "sphere" else 2.0 * float(
        np.max(np.linalg.norm(Y - Y.mean(axis=0), axis=1)))
    return {"err2": res.err2[:, :, 0].reshape(2, T, 2 * W), "tau": res.tau[:, :, 0].reshape(2, T, 2 * W),
            "pmin_kept": pmin, "diam": np.asarray(diam)}


def sweep(args) -> Sweep:
    laws = {law: C.law_params(law, args.cov_d) for law in COVERAGE_LAWS}
    params = {"layout": LAYOUT, "group": GROUP, "laws": laws, "d": args.cov_d, "n": args.cov_n,
              "sigma": list(args.cov_sigma), "tau_cov": list(args.tau_cov), "min_keep": args.min_keep,
              "window": args.window, "corr": args.cov_corr, "kernel": 7, "pool": "avg", "convention": "reach",
              "diam": "sphere: 2 radius; gaussian: 2 max |v - mean v| (>= the keys' diameter)"}
    run = functools.partial(_cell, laws=laws, n=args.cov_n, taus=tuple(args.tau_cov), min_keep=args.min_keep,
                            W=args.window, corr=args.cov_corr, kernel=7)
    return Sweep(
        study=f"{C.STUDY}/{GROUP}",
        cell_dims={"law": str_coord(COVERAGE_LAWS), "sigma": np.asarray(args.cov_sigma, dtype=float)},
        variables={"err2": ("law", "sigma", "rule", "tau_cov", "query"), "tau": ("law", "sigma", "rule", "tau_cov",
                                                                                 "query"),
                   "pmin_kept": ("law", "sigma", "tau_cov", "query"), "diam": ("law", "sigma")},
        coords={"rule": str_coord(RULES), "tau_cov": np.asarray(args.tau_cov, dtype=float),
                "query": np.arange(2 * args.window)},
        params=params, run_cell=run, root_seed=args.seed + 3,
        attrs={"part": "Token Sparse Attention's coverage rule: exact scores and the window proxy",
               "convention": "queries 0..W-1 are the window (scored), W..2W-1 the others; V = I"},
        var_attrs={"err2": {"long_name": "|ybar - yhat_S|^2"}, "tau": {"long_name": "attention mass dropped"},
                   "pmin_kept": {"long_name": "smallest attention share among the exact rule's kept keys"},
                   "diam": {"long_name": "bound on the values' diameter"}})


# ------------------------------------------------------------------------------- analysis
def analyze(ds: xr.Dataset, params) -> tuple[xr.Dataset, list]:
    W = int(params["window"])
    laws = [str(v) for v in ds["law"].values]
    sig = ds["sigma"].values.astype(float)
    taus = ds["tau_cov"].values.astype(float)
    err = np.sqrt(ds["err2"].values)  # (L, S, rule, T, Q)
    tau = ds["tau"].values
    diam = ds["diam"].values[:, :, None, None]
    ex_err, ex_tau = err[:, :, 0], tau[:, :, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        r_err = np.where(ex_tau > 0, ex_err / (ex_tau * diam), 0.0)
    r_tau = (ex_tau - taus[None, None, :, None]) / ds["pmin_kept"].values
    worst = np.maximum(r_err, r_tau).max(axis=(1, 2, 3))  # (L,)
    bound = ex_tau.max(axis=-1)  # (L, S, T): the largest tail mass the exact rule left a scored query
    others, others_se = C.unit_mean(tau[:, :, 1, :, W:], axis=-1)
    window, _ = C.unit_mean(tau[:, :, 1, :, :W], axis=-1)
    out = xr.Dataset(coords={"law": ds["law"].values, "sigma": sig, "tau_cov": taus})
    out["exact_tau_max"] = (("law", "sigma", "tau_cov"), bound)
    out["exact_err_over_bound"] = (("law", "sigma", "tau_cov"), r_err.max(axis=-1))
    out["proxy_tau_others"] = (("law", "sigma", "tau_cov"), others)
    out["proxy_tau_others_se"] = (("law", "sigma", "tau_cov"), others_se)
    out["proxy_tau_window"] = (("law", "sigma", "tau_cov"), window)
    out["proxy_err_others"] = (("law", "sigma", "tau_cov"), err[:, :, 1, :, W:].mean(axis=-1))
    out["exact_err"] = (("law", "sigma", "tau_cov"), ex_err.mean(axis=-1))
    p_tau = tau[:, :, 1, :, W:]  # the proxy rule's tail mass for the other queries
    over = (p_tau > (taus[None, None, :, None] + ds["pmin_kept"].values[..., W:])).mean(axis=(1, 2, 3))
    claims = []
    for i, law in enumerate(laws):
        k = np.unravel_index(np.argmax(others[i]), others[i].shape)
        claims.append(C.COVERAGE_BOUND.at_most(
            float(worst[i]), math.nan, 1.0, z=1.0, z_source="", allowance=C.FLOAT_ALLOWANCE,
            allowance_source="float64 rounding of the shares", where=law,
            prediction_text=f"max(err/(tau_S diam), (tau_S - tau_cov)/p_min) <= 1 for every scored query; measured "
                            f"for the others (proxy, no bound): tau_S up to {float(p_tau[i].max()):.3g}, mean "
                            f"{others[i][k]:.3g} at sigma={sig[k[0]]:g}, tau_cov={taus[k[1]]:g}; "
                            f"{100 * over[i]:.0f}% of (query, sigma, tau_cov) above the scored bound"))
    return out, claims


def summary(an: xr.Dataset) -> str:
    rows = [f"{'law':>9} {'sigma':>6} {'tau_cov':>8} {'exact: max tau_S':>17} {'err/bound':>10} "
            f"{'proxy: tau others':>18} {'tau window':>11} {'err others':>11}"]
    for i, law in enumerate(an["law"].values):
        for j, s in enumerate(an["sigma"].values):
            for t, tc in enumerate(an["tau_cov"].values):
                rows.append(f"{law:>9} {s:>6g} {tc:>8g} {an['exact_tau_max'].values[i, j, t]:>17.4g} "
                            f"{an['exact_err_over_bound'].values[i, j, t]:>10.3g} "
                            f"{an['proxy_tau_others'].values[i, j, t]:>10.4g} ± "
                            f"{an['proxy_tau_others_se'].values[i, j, t]:<5.2g} "
                            f"{an['proxy_tau_window'].values[i, j, t]:>11.4g} "
                            f"{an['proxy_err_others'].values[i, j, t]:>11.4g}")
    return "\n".join(rows)
