"""Group ``budget``: error against the budget m = f n for uniform sampling, importance sampling
from p, top-k and the hybrid, per token law and score spread sigma.

Cells (law, sigma): n keys of the law (an array, or the generated-token stream with
``--stream``), q queries with score spread exactly sigma, every budget f = 2^-e of the grid,
``reps`` repetitions of each random policy. Stored per cell: the raw squared errors, top-k's
error and tail mass, and the theory evaluated on the cell's own keys (one pass of
:func:`studies.token_selection.common.given_token`): the uniform (c1, c2) = (B_n, second order),
Var_p, the hybrid's (c1, c2) at every heavy size, and top-k's identity ``tau |mu_T - mu_H|``.

Claims (``where`` = the law): ``uniform_rate``, ``uniform_constant``, ``importance_flat``,
``topk_law`` (Gaussian), ``topk_tail_mass``, ``topk_identity``, ``hybrid``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

import sim.token_selection as S
from studies.claims import worst_of, z_family
from studies.sweep import Sweep, str_coord
from studies.token_selection import common as C
from theory import token_selection as tsel

GROUP = "budget"
KINDS = ("uniform", "importance", "hybrid")  # random policies; top-k is stored apart (deterministic)
TOPK_ALLOWANCE = ("the O(1/n) shift of the finite top set's mean (2 bias . b_1/n) is not derived; declared at the "
                  "size of the variance term var/n of the same order")
LAYOUT = "token_selection/budget-v1: cells (law, sigma); err2(policy, f, query, rep), top-k (f, query)"


def make_policies(ms) -> dict:
    """The policies at each budget m: uniform with replacement, importance sampling from p, the
    hybrid top-(m/2) + (m - m/2) tail draws, exact top-m."""
    return {"uniform": [S.Uniform(m) for m in ms], "importance": [S.Importance(m, "p") for m in ms],
            "hybrid": [S.Hybrid(m // 2, m - m // 2) for m in ms], "topk": [S.TopK(m) for m in ms]}


def _cell(cell, *, laws, n, budgets, q, reps, stream):
    lp = laws[str(cell.coords["law"])]
    sigma = float(cell.coords["sigma"])
    tokens = C.make_keys(lp, n, C.child(cell.seed, 0), stream=stream)
    a = C.make_queries(lp, sigma, q, C.child(cell.seed, 1))
    ms = [n >> int(e) for e in budgets]
    pols = make_policies(ms)
    flat = [p for kind in (*KINDS, "topk") for p in pols[kind]]
    res = S.selection_errors(a, tokens, flat, reps=reps, seed=C.child(cell.seed, 2), memory=1 << 28)
    F = len(ms)
    err2 = res.err2[:3 * F].reshape(3, F, q, reps)
    sizes = sorted({0, *ms, *(m // 2 for m in ms)})
    _, gt = C.given_token(a, tokens, sizes)
    col = {k: i for i, k in enumerate(sizes)}
    at = [col[m] for m in ms]
    half = [col[m // 2] for m in ms]
    s = gt.sums
    ident = np.linalg.norm(s.A1[:, at], axis=-1) / (1.0 - s.tau[:, at])
    return {"err2": err2, "topk_err2": res.err2[3 * F:, :, 0], "topk_tau": res.tau[3 * F:, :, 0],
            "topk_identity": ident.T, "uni_c1": gt.c1[:, 0], "uni_c2": gt.c2[:, 0], "var_p": res.var_p,
            "kappa": res.kappa, "score_std": res.score_std, "hyb_c1": gt.c1[:, half].T, "hyb_c2": gt.c2[:, half].T,
            "query_a": a}


def sweep(args) -> Sweep:
    laws = {law: C.law_params(law, args.d) for law in args.laws}
    f = np.array([2.0 ** -int(e) for e in args.budgets])
    params = {"layout": LAYOUT, "group": GROUP, "laws": laws, "d": args.d, "n": args.n, "sigma": list(args.sigma),
              "budgets": list(args.budgets), "queries": args.queries, "reps": args.reps, "stream": bool(args.stream),
              "values": "V = I", "hybrid": "top-(m//2) + (m - m//2) uniform tail draws with replacement",
              "uniform": "with replacement", "importance": "from p"}
    run = functools.partial(_cell, laws=laws, n=args.n, budgets=tuple(args.budgets), q=args.queries,
                            reps=args.reps, stream=bool(args.stream))
    lq = ("law", "sigma", "query")
    lfq = ("law", "sigma", "f", "query")
    return Sweep(
        study=f"{C.STUDY}/{GROUP}",
        cell_dims={"law": str_coord(args.laws), "sigma": np.asarray(args.sigma, dtype=float)},
        variables={"err2": ("law", "sigma", "policy", "f", "query", "rep"), "topk_err2": lfq, "topk_tau": lfq,
                   "topk_identity": lfq, "uni_c1": lq, "uni_c2": lq, "var_p": lq, "kappa": lq, "score_std": lq,
                   "hyb_c1": lfq, "hyb_c2": lfq, "query_a": ("law", "sigma", "query", "dim")},
        coords={"policy": str_coord(KINDS), "f": f, "query": np.arange(args.queries), "rep": np.arange(args.reps),
                "dim": np.arange(args.d)},
        params=params, run_cell=run, root_seed=args.seed,
        attrs={"part": "error against budget per policy, law and sigma",
               "convention": "scores <a, y>, values V y with V = I; sigma^2 = a^T Cov a exactly; queries are rows of "
                             "orthonormal frames; f = m/n = 2^-e"},
        var_attrs={"err2": {"long_name": "|yhat - ybar|^2 of each repetition"},
                   "topk_err2": {"long_name": "|yhat_topk - ybar|^2"},
                   "topk_tau": {"long_name": "attention mass outside the top-k set"},
                   "topk_identity": {"long_name": "tau_S |mu_T - mu_H| from the tail sums (theory identity)"},
                   "uni_c1": {"long_name": "B_n = n sum p^2 |v - ybar|^2 (given-token c1 of uniform sampling)"},
                   "uni_c2": {"long_name": "given-token c2 of uniform sampling with replacement"},
                   "hyb_c1": {"long_name": "given-token c1 of the hybrid (heavy set top-m/2)"},
                   "hyb_c2": {"long_name": "given-token c2 of the hybrid"},
                   "query_a": {"long_name": "score vectors a of the queries"}})


# ------------------------------------------------------------------------------- analysis
def _stats(ds):
    """Per (law, sigma, ...) means over repetitions and queries with standard errors (queries
    are the independent units)."""
    err2 = ds["err2"].values  # (L, S, P, F, q, R)
    mse, mse_se = C.unit_mean(err2.mean(axis=-1), axis=-1)  # (L, S, P, F)
    top, top_se = C.unit_mean(ds["topk_err2"].values, axis=-1)  # (L, S, F)
    c1 = ds["uni_c1"].values.mean(axis=-1)
    c2 = ds["uni_c2"].values.mean(axis=-1)
    return mse, mse_se, top, top_se, c1, c2


def analyze(ds: xr.Dataset, params) -> tuple[xr.Dataset, list]:
    n = int(params["n"])
    laws = [str(v) for v in ds["law"].values]
    lps = {law: params["laws"][law] for law in laws}
    sig = ds["sigma"].values.astype(float)
    f = ds["f"].values.astype(float)
    m = np.rint(n * f)
    q = ds.sizes["query"]
    mse, mse_se, top, top_se, c1, c2 = _stats(ds)
    m2 = np.abs(c2) / c1  # (L, S)
    hc1 = ds["hyb_c1"].values.mean(axis=-1)  # (L, S, F)
    hc2 = ds["hyb_c2"].values.mean(axis=-1)
    b = m - m // 2
    a = ds["query_a"].values  # (L, S, q, d)
    out = xr.Dataset(coords={"law": ds["law"].values, "sigma": sig, "f": f, "policy": ds["policy"].values})
    out["budget_m"] = (("f",), m, {"long_name": "budget m = f n"})
    out["n_keys"] = ((), n)
    out["mse"] = (("law", "sigma", "policy", "f"), mse)
    out["mse_se"] = (("law", "sigma", "policy", "f"), mse_se)
    out["topk_mse"] = (("law", "sigma", "f"), top)
    out["topk_mse_se"] = (("law", "sigma", "f"), top_se)
    out["m2"] = (("law", "sigma"), m2, {"long_name": "pre-asymptotic scale |c2|/c1 of uniform sampling"})
    out["B_n"] = (("law", "sigma"), c1)
    out["theory_uniform_mse"] = (("law", "sigma", "f"), c1[..., None] / m + c2[..., None] / m**2,
                                 {"long_name": "c1/m + c2/m^2 (given-token, second order)"})
    out["theory_importance_mse"] = (("law", "sigma", "f"), ds["var_p"].values.mean(axis=-1)[..., None] / m)
    out["theory_hybrid_mse"] = (("law", "sigma", "f"), hc1 / b + hc2 / b**2)
    B_law = np.array([[C.law_uniform_constant(lps[law], a[i, j]).mean() for j in range(sig.size)]
                      for i, law in enumerate(laws)])
    out["theory_B_law"] = (("law", "sigma"), B_law, {"long_name": "law-level uniform constant B (n -> infinity)"})
    out["theory_var_p_law"] = (("law", "sigma"), np.array(
        [[C.law_importance_constant(lps[law], a[i, j]).mean() for j in range(sig.size)] for i, law in enumerate(laws)]))
    kish = np.array([[C.law_kish(lps[law], a[i, j]).mean() for j in range(sig.size)] for i, law in enumerate(laws)])
    kish2 = np.array([[C.law_kish(lps[law], 2 * a[i, j]).mean() for j in range(sig.size)]
                      for i, law in enumerate(laws)])
    out["theory_kish"] = (("law", "sigma"), kish)
    regime = m[None, None, :] >= C.RATE_FACTOR * m2[..., None]
    out["rate_regime"] = (("law", "sigma", "f"), regime, {"description": f"m >= {C.RATE_FACTOR:g} m_2"})
    ctx = {"n": n, "laws": laws, "lps": lps, "sig": sig, "f": f, "m": m, "q": q, "mse": mse, "mse_se": mse_se,
           "top": top, "top_se": top_se, "c1": c1, "c2": c2, "m2": m2, "regime": regime, "kish": kish,
           "kish2": kish2, "B_law": B_law, "a": a, "out": out, "hc1": hc1, "hc2": hc2, "b": b,
           "var_p": ds["var_p"].values.mean(axis=-1), "d": int(params["d"])}
    claims = []
    claims += _rate_claims(ctx)
    claims += _constant_claims(ctx)
    claims += _importance_claims(ctx)
    claims += _topk_claims(ctx, ds)
    claims += _hybrid_claims(ctx)
    return out, claims


def _rate_claims(c) -> list:
    claims = []
    members_all = {}
    for i, law in enumerate(c["laws"]):
        members_all[law] = [j for j in range(c["sig"].size) if c["regime"][i, j].sum() >= 3]
    z, zsrc = z_family(sum(len(v) for v in members_all.values()), dof=c["q"] - 1)
    slopes = np.full((len(c["laws"]), c["sig"].size), np.nan)
    for i, law in enumerate(c["laws"]):
        members = []
        for j, s in enumerate(c["sig"]):
            w = c["regime"][i, j]
            where = f"sigma={s:g}"
            if w.sum() < 3:
                members.append(C.UNIFORM_RATE.not_tested(
                    f"{int(w.sum())} budget(s) at m >= {C.RATE_FACTOR:g} m_2 = {C.RATE_FACTOR * c['m2'][i, j]:.3g} "
                    "(below it the error is pre-asymptotic: flatter than m^-1/2); a slope needs >= 3", where=where,
                    prediction_text="slope -1/2"))
                continue
            x = np.log(c["m"][w])
            y = np.log(c["mse"][i, j, 0, w])
            se = c["mse_se"][i, j, 0, w] / c["mse"][i, j, 0, w]
            slope, sse, _ = C.wls_line(x, y, se)
            pred = C.weighted_slope(x, np.log(c["c1"][i, j] / c["m"][w] + c["c2"][i, j] / c["m"][w] ** 2), se) / 2
            slopes[i, j] = slope / 2
            members.append(C.UNIFORM_RATE.equal(slope / 2, sse / 2, pred, z=z, z_source=zsrc, where=where,
                                                prediction_text=f"RMSE slope {pred:+.3f} (c1/m + c2/m^2 over m >= "
                                                                f"{C.RATE_FACTOR:g} m_2; -1/2 as m_2/m -> 0)",
                                                effect=abs(pred)))
        claims.append(worst_of(members, where=law, every="sigma"))
    c["out"]["uniform_rmse_slope"] = (("law", "sigma"), slopes)
    return claims


def _c1_hat(c, i, j):
    """m MSE of uniform sampling over the rate regime's budgets, corrected by the given-token
    second order, combined by inverse variance: (estimate, SE) or (nan, nan)."""
    w = c["regime"][i, j]
    if not w.any():
        return math.nan, math.nan
    m = c["m"][w]
    corr = 1.0 + c["c2"][i, j] / (c["c1"][i, j] * m)
    val = m * c["mse"][i, j, 0, w] / corr
    se = m * c["mse_se"][i, j, 0, w] / corr
    wt = 1.0 / se**2
    return float(np.sum(wt * val) / np.sum(wt)), float(1.0 / math.sqrt(np.sum(wt)))


def _constant_claims(c) -> list:
    """Per law: the slope of log(RMSE sqrt(m)) against sigma^2 after the prefactor (Gaussian:
    1/2) or against log sigma (sphere, mixture: the slope of the law's own curve), over the
    sigmas whose n is in the law regime (n >= 30 kappa(2a), kappa(2a) = E e^{4s}/(E e^{2s})^2)."""
    L, S = len(c["laws"]), c["sig"].size
    est = np.array([[_c1_hat(c, i, j) for j in range(S)] for i in range(L)])  # (L, S, 2)
    c["out"]["uniform_constant"] = (("law", "sigma"), est[..., 0], {"long_name": "m MSE_uniform (regime budgets)"})
    c["out"]["uniform_constant_se"] = (("law", "sigma"), est[..., 1])
    z, zsrc = z_family(L, dof=c["q"] - 1)
    claims = []
    for i, law in enumerate(c["laws"]):
        sig = c["sig"]
        ok = np.isfinite(est[i, :, 0]) & (c["n"] >= C.LAW_FACTOR * c["kish2"][i])
        if ok.sum() < 3:
            claims.append(C.UNIFORM_CONSTANT.not_tested(
                f"{int(ok.sum())} sigma(s) with n >= {C.LAW_FACTOR:g} kappa(2a) and budgets in the rate regime; a "
                "slope needs >= 3 (raise n or add small sigmas)", where=law,
                prediction_text="slope 1/2 vs sigma^2 (Gaussian) / the law's own slope vs log sigma"))
            continue
        gauss = 0.5 * (sig[ok] ** 2 + np.log(c["d"] + sig[ok] ** 2))  # 1/2 log B of Gaussian keys (V = I)
        y = 0.5 * np.log(est[i, ok, 0])
        se = est[i, ok, 1] / (2 * est[i, ok, 0])
        if law == "gaussian":
            x, pref = sig[ok] ** 2, 0.5 * np.log(c["d"] + sig[ok] ** 2)
            pred, effect, what = 0.5, 0.5, "sigma^2 after the prefactor"
        else:
            x, pref = np.log(sig[ok]), 0.0
            pred = C.weighted_slope(x, 0.5 * np.log(c["B_law"][i, ok]), se)
            g_slope = C.weighted_slope(x, gauss, se)
            effect = abs(g_slope - pred)
            what = f"log sigma (Gaussian keys: {g_slope:.2f})"
        slope, sse, _ = C.wls_line(x, y - pref, se)
        allow = float(np.max(c["kish2"][i, ok]) / c["n"]) / float(np.ptp(x))
        c["out"][f"constant_slope_{law}"] = ((), slope)
        c["out"][f"constant_slope_{law}_se"] = ((), sse)
        claims.append(C.UNIFORM_CONSTANT.equal(
            slope, sse, pred, z=z, z_source=zsrc, allowance=allow, where=law, effect=effect,
            allowance_source="the ratio estimator B_n's relative bias kappa(2a)/n at the largest sigma, over the span "
                             "of the fit",
            prediction_text=f"slope {pred:.3f} of log(RMSE sqrt(m)) vs {what}, sigma <= {sig[ok].max():g}"))
    return claims


def _importance_claims(c) -> list:
    L = len(c["laws"])
    z, zsrc = z_family(L, dof=c["q"] - 1)
    claims = []
    sig2 = c["sig"] ** 2
    const = np.zeros((L, sig2.size, 2))
    for i, law in enumerate(c["laws"]):
        for j in range(sig2.size):
            val = c["m"] * c["mse"][i, j, 1]
            se = c["m"] * c["mse_se"][i, j, 1]
            wt = 1.0 / se**2
            const[i, j] = np.sum(wt * val) / np.sum(wt), 1.0 / math.sqrt(np.sum(wt))
        y = np.log(const[i, :, 0])
        se = const[i, :, 1] / const[i, :, 0]
        if sig2.size < 3:
            claims.append(C.IMPORTANCE_FLAT.not_tested(f"{sig2.size} sigma(s); a slope needs >= 3", where=law,
                                                       prediction_text="the slope of log Var_p vs sigma^2"))
            continue
        slope, sse, _ = C.wls_line(sig2, y, se)
        pred = C.weighted_slope(sig2, np.log(c["var_p"][i]), se)
        uni = C.weighted_slope(sig2, np.log(c["c1"][i]), se)
        law_slope = C.weighted_slope(sig2, np.log(c["out"]["theory_var_p_law"].values[i]), se)
        law_txt = "0 in the law" if law == "gaussian" else f"law {law_slope:+.3f}"
        claims.append(C.IMPORTANCE_FLAT.equal(
            slope, sse, pred, z=z, z_source=zsrc, where=law, effect=uni - pred,
            prediction_text=f"slope of log(m MSE) vs sigma^2 {pred:+.3f} (Var_p; {law_txt}; uniform's {uni:+.2f})"))
    c["out"]["importance_constant"] = (("law", "sigma"), const[..., 0])
    c["out"]["importance_constant_se"] = (("law", "sigma"), const[..., 1])
    return claims


def _topk_claims(c, ds) -> list:
    claims = []
    L, S, F = len(c["laws"]), c["sig"].size, c["f"].size
    n = c["n"]
    ok = (n >= C.TOPK_FACTOR * c["kish"] ** 2)  # (L, S)
    tau, tau_se = C.unit_mean(ds["topk_tau"].values, axis=-1)  # (L, S, F)
    tau_th = np.array([[[C.law_topk_tau(c["lps"][law], f, c["a"][i, j]).mean() for f in c["f"]] for j in range(S)]
                       for i, law in enumerate(c["laws"])])
    c["out"]["topk_tau_mean"] = (("law", "sigma", "f"), tau)
    c["out"]["topk_tau_se"] = (("law", "sigma", "f"), tau_se)
    c["out"]["theory_topk_tau"] = (("law", "sigma", "f"), tau_th, {"long_name": "the law's tail mass tau(f)"})
    th = np.full((L, S, F), np.nan)
    if "gaussian" in c["laws"]:
        i = c["laws"].index("gaussian")
        d = c["d"]
        th[i] = [[tsel.gaussian_topk_mse(f, n, c["a"][i, j], np.eye(d)).mean() for f in c["f"]] for j in range(S)]
    c["out"]["theory_topk_mse"] = (("law", "sigma", "f"), th, {"long_name": "bias^2 + var/n (Gaussian keys)"})
    z, zsrc = z_family(int(ok.sum()) * F, dof=c["q"] - 1)
    why = f"n < {C.TOPK_FACTOR:g} kappa^2 (kappa = {{:.3g}}): the finite-n fluctuations of the heavy keys dominate"
    if "gaussian" in c["laws"]:
        i = c["laws"].index("gaussian")
        members = []
        for j, s in enumerate(c["sig"]):
            for k, f in enumerate(c["f"]):
                where = f"sigma={s:g},f={C.pow2(round(-math.log2(f)))}"
                if not ok[i, j]:
                    members.append(C.TOPK_LAW.not_tested(why.format(c["kish"][i, j]), where=where,
                                                         prediction_text=f"{th[i, j, k]:.4g} (bias^2 + var/n)"))
                    continue
                var_n = float(tsel.gaussian_topk_variance(f, c["a"][i, j], np.eye(c["d"])).mean()) / n
                members.append(C.TOPK_LAW.equal(c["top"][i, j, k], c["top_se"][i, j, k], th[i, j, k], z=z,
                                                z_source=zsrc, where=where, effect=th[i, j, k] / 2,
                                                allowance=var_n, allowance_source=TOPK_ALLOWANCE,
                                                prediction_text=f"{th[i, j, k]:.4g} (bias^2 + var/n)"))
        claims.append(worst_of(members, where="gaussian", every="(sigma, f)"))
    for i, law in enumerate(c["laws"]):
        members = []
        for j, s in enumerate(c["sig"]):
            for k, f in enumerate(c["f"]):
                where = f"sigma={s:g},f={C.pow2(round(-math.log2(f)))}"
                if not ok[i, j]:
                    members.append(C.TOPK_TAIL.not_tested(why.format(c["kish"][i, j]), where=where,
                                                          prediction_text=f"{tau_th[i, j, k]:.4g} ({law} score law)"))
                    continue
                members.append(C.TOPK_TAIL.equal(tau[i, j, k], tau_se[i, j, k], tau_th[i, j, k], z=z, z_source=zsrc,
                                                 where=where, effect=tau_th[i, j, k] / 2,
                                                 prediction_text=f"{tau_th[i, j, k]:.4g} ({law} score law)"))
        claims.append(worst_of(members, where=law, every="(sigma, f)"))
    gap = np.abs(np.sqrt(ds["topk_err2"].values) - ds["topk_identity"].values)
    rel = gap / np.maximum(ds["topk_identity"].values, 1e-300)
    worst = float(rel.max())
    c["out"]["topk_identity_gap"] = ((), worst, {"long_name": "max relative gap of |ybar - yhat_S| against "
                                                              "tau |mu_T - mu_H|"})
    claims.append(C.TOPK_IDENTITY.at_most(worst, math.nan, 0.0, z=1.0, z_source="", allowance=C.FLOAT_ALLOWANCE,
                                          allowance_source="float64 rounding of two computations of one quantity",
                                          prediction_text="0 (an identity; every law, sigma, f and query)"))
    return claims


def _hybrid_claims(c) -> list:
    m, b = c["m"], c["b"]
    m2h = np.abs(c["hc2"]) / c["hc1"]  # (L, S, F)
    ok = c["regime"] & (b[None, None, :] >= C.RATE_FACTOR * m2h)
    uni_pred = c["c1"][..., None] / m + c["c2"][..., None] / m**2
    hyb_pred = c["hc1"] / b + c["hc2"] / b**2
    best_pred = np.minimum(uni_pred, c["top"])
    bound = np.maximum(0.0, np.log(np.maximum(hyb_pred, 1e-300) / best_pred))
    hyb, hyb_se = c["mse"][:, :, 2], c["mse_se"][:, :, 2]
    uni, uni_se = c["mse"][:, :, 0], c["mse_se"][:, :, 0]
    use_top = c["top"] < uni
    best = np.where(use_top, c["top"], uni)
    best_se = np.where(use_top, c["top_se"], uni_se)
    r = np.log(hyb / best)
    r_se = np.sqrt((hyb_se / hyb) ** 2 + (best_se / best) ** 2)
    c["out"]["hybrid_excess"] = (("law", "sigma", "f"), r, {"long_name": "log(MSE_hybrid / min(MSE_uniform, "
                                                                         "MSE_topk))"})
    c["out"]["hybrid_excess_se"] = (("law", "sigma", "f"), r_se)
    c["out"]["theory_hybrid_excess_bound"] = (("law", "sigma", "f"), bound)
    c["out"]["hybrid_regime"] = (("law", "sigma", "f"), ok, {"description": "m >= 4 m_2 and b >= 4 m_2 (hybrid)"})
    z, zsrc = z_family(int(ok.sum()), dof=c["q"] - 1)
    claims = []
    for i, law in enumerate(c["laws"]):
        members = []
        for j, s in enumerate(c["sig"]):
            for k, f in enumerate(c["f"]):
                where = f"sigma={s:g},f={C.pow2(round(-math.log2(f)))}"
                if not ok[i, j, k]:
                    members.append(C.HYBRID.not_tested(
                        "below the delta method's regime (m < 4 m_2 or b < 4 m_2 of the hybrid)", where=where,
                        prediction_text=f"excess <= {bound[i, j, k]:.3g} (delta method)"))
                    continue
                members.append(C.HYBRID.at_most(r[i, j, k], r_se[i, j, k], bound[i, j, k], z=z, z_source=zsrc,
                                                where=where, prediction_text=f"excess <= {bound[i, j, k]:.3g} "
                                                                             "(delta method)"))
        claims.append(worst_of(members, where=law, every="(sigma, f)"))
    return claims


def summary(an: xr.Dataset) -> str:
    rows = [f"{'law':>9} {'sigma':>6} {'kappa':>8} {'m_2':>8} {'B_n':>9} {'m MSE_uni':>16} {'B law':>9} "
            f"{'m MSE_imp':>16} {'Var_p':>7} {'RMSE slope':>10}"]
    for i, law in enumerate(an["law"].values):
        for j, s in enumerate(an["sigma"].values):
            rows.append(f"{law:>9} {s:>6g} {an['theory_kish'].values[i, j]:>8.3g} {an['m2'].values[i, j]:>8.3g} "
                        f"{an['B_n'].values[i, j]:>9.4g} {an['uniform_constant'].values[i, j]:>9.4g} ± "
                        f"{an['uniform_constant_se'].values[i, j]:<4.2g} {an['theory_B_law'].values[i, j]:>9.4g} "
                        f"{an['importance_constant'].values[i, j]:>9.4g} ± "
                        f"{an['importance_constant_se'].values[i, j]:<4.2g} "
                        f"{an['theory_var_p_law'].values[i, j]:>7.3g} {an['uniform_rmse_slope'].values[i, j]:>+10.3f}")
    rows.append(f"top-k identity: max relative gap {float(an['topk_identity_gap']):.2g}")
    return "\n".join(rows)
