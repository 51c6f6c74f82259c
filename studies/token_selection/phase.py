"""Group ``phase``: uniform sampling against top-k at equal budget m = f n over (sigma, f), and
the crossover sigma*(f, n, d) where top-k starts to win.

Cells (d, n, sigma): n Gaussian keys N(0, I_d) (an array, or the generated-token stream with
``--stream``), q queries with score spread exactly sigma, uniform sampling with replacement and
exact top-k at every budget of the grid. Stored: the raw squared errors and, per query, the
given-token (c1, c2) of uniform sampling (B_n and its second order), so the analysis can put the
run's own finite-n B_n into the prediction (section 5 of theory/token_selection.py).

Claim ``crossover[d=..,n=..]``: at every f whose predicted sigma* lies inside the sigma grid and
whose budget is in the uniform rate regime there (m >= 4 m_2(sigma*)), the measured crossing of
log(MSE_uniform / MSE_topk) through 0 (linear interpolation between grid points, delta-method SE)
equals sigma* of :func:`theory.token_selection.crossover_sigma` with the run's B_n; the
allowance is the interpolation error, measured on the theory's own curve on the same grid.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

import sim.token_selection as S
from studies.claims import worst_of, z_family
from studies.sweep import Sweep
from studies.token_selection import common as C
from theory import token_selection as tsel

GROUP = "phase"
LAYOUT = "token_selection/phase-v1: cells (d, n, sigma); uni_err2(f, query, rep), topk_err2(f, query)"


def make_policies(ms) -> dict:
    """Uniform sampling with replacement and exact top-k at each budget m."""
    return {"uniform": [S.Uniform(m) for m in ms], "topk": [S.TopK(m) for m in ms]}


def _cell(cell, *, budgets, q, reps, stream):
    d, n, sigma = int(cell.coords["d"]), int(cell.coords["n"]), float(cell.coords["sigma"])
    lp = C.law_params("gaussian", d)
    tokens = C.make_keys(lp, n, C.child(cell.seed, 0), stream=stream)
    a = C.make_queries(lp, sigma, q, C.child(cell.seed, 1))
    ms = [n >> int(e) for e in budgets]
    pols = make_policies(ms)
    res = S.selection_errors(a, tokens, [*pols["uniform"], *pols["topk"]], reps=reps, seed=C.child(cell.seed, 2),
                             memory=1 << 28)
    F = len(ms)
    _, gt = C.given_token(a, tokens, [0])
    return {"uni_err2": res.err2[:F], "topk_err2": res.err2[F:, :, 0], "uni_c1": gt.c1[:, 0], "uni_c2": gt.c2[:, 0]}


def sweep(args) -> Sweep:
    f = np.array([2.0 ** -int(e) for e in args.budgets])
    params = {"layout": LAYOUT, "group": GROUP, "law": "gaussian N(0, I_d)", "d": list(args.phase_d),
              "n": list(args.phase_n), "sigma": list(args.phase_sigma), "budgets": list(args.budgets),
              "queries": args.phase_queries, "reps": args.phase_reps, "stream": bool(args.stream), "values": "V = I",
              "uniform": "with replacement"}
    run = functools.partial(_cell, budgets=tuple(args.budgets), q=args.phase_queries, reps=args.phase_reps,
                            stream=bool(args.stream))
    cq = ("d", "n", "sigma", "query")
    return Sweep(
        study=f"{C.STUDY}/{GROUP}",
        cell_dims={"d": np.asarray(args.phase_d, dtype=np.int64), "n": np.asarray(args.phase_n, dtype=np.int64),
                   "sigma": np.asarray(args.phase_sigma, dtype=float)},
        variables={"uni_err2": ("d", "n", "sigma", "f", "query", "rep"), "topk_err2": ("d", "n", "sigma", "f", "query"),
                   "uni_c1": cq, "uni_c2": cq},
        coords={"f": f, "query": np.arange(args.phase_queries), "rep": np.arange(args.phase_reps)},
        params=params, run_cell=run, root_seed=args.seed + 1,
        attrs={"part": "uniform vs top-k at equal budget: the phase diagram over (sigma, f)",
               "convention": "Gaussian keys N(0, I_d), V = I, sigma^2 = |a|^2 exactly; uniform with replacement"},
        var_attrs={"uni_err2": {"long_name": "|yhat - ybar|^2 of uniform sampling, each repetition"},
                   "topk_err2": {"long_name": "|yhat_topk - ybar|^2"},
                   "uni_c1": {"long_name": "B_n (given-token c1 of uniform sampling)"},
                   "uni_c2": {"long_name": "given-token c2 of uniform sampling with replacement"}})


# ------------------------------------------------------------------------------- analysis
def _uniform_constant(sig, c1, d):
    """B(sigma) for the prediction: the law's e^(sigma^2)(d + sigma^2) times the run's ratio
    B_n / B, interpolated in log over the sigma grid (held at the edges)."""
    law = np.array([float(tsel.gaussian_uniform_constant(np.r_[s, np.zeros(d - 1)], np.eye(d))) for s in sig])
    lr = np.log(c1 / law)

    def B(s):
        return float(tsel.gaussian_uniform_constant(np.r_[s, np.zeros(d - 1)], np.eye(d))) * math.exp(
            float(np.interp(s, sig, lr)))
    return B


def _theory_gap(sig, f, n, d, B):
    """log(uniform / top-k) predicted on the grid."""
    out = []
    for s in sig:
        a = np.r_[s, np.zeros(d - 1)]
        out.append(math.log(B(s) / (f * n)) - math.log(float(tsel.gaussian_topk_mse(f, n, a, np.eye(d)))))
    return np.array(out)


def _first_crossing(sig, L):
    """Index j of the first sign change L_j < 0 <= L_{j+1} along sigma, or None."""
    for j in range(sig.size - 1):
        if L[j] < 0 <= L[j + 1]:
            return j
    return None


def _root(sig, L, L_se, j):
    s0, s1 = sig[j], sig[j + 1]
    D = L[j + 1] - L[j]
    root = s0 - L[j] * (s1 - s0) / D
    se = (s1 - s0) / D**2 * math.sqrt((L[j + 1] * L_se[j]) ** 2 + (L[j] * L_se[j + 1]) ** 2)
    return root, se


def analyze(ds: xr.Dataset, params) -> tuple[xr.Dataset, list]:
    dd = ds["d"].values.astype(int)
    nn = ds["n"].values.astype(int)
    sig = ds["sigma"].values.astype(float)
    f = ds["f"].values.astype(float)
    q = ds.sizes["query"]
    uni, uni_se = C.unit_mean(ds["uni_err2"].values.mean(axis=-1), axis=-1)  # (D, N, S, F)
    top, top_se = C.unit_mean(ds["topk_err2"].values, axis=-1)
    c1 = ds["uni_c1"].values.mean(axis=-1)  # (D, N, S)
    c2 = ds["uni_c2"].values.mean(axis=-1)
    L = np.log(uni / top)
    L_se = np.sqrt((uni_se / uni) ** 2 + (top_se / top) ** 2)
    shape = (dd.size, nn.size, f.size)
    pred, meas, meas_se, allow = (np.full(shape, np.nan) for _ in range(4))
    tested_mask = np.zeros(shape, dtype=bool)
    out = xr.Dataset(coords={"d": dd, "n": nn, "sigma": sig, "f": f})
    out["log_ratio"] = (("d", "n", "sigma", "f"), L, {"long_name": "log(MSE_uniform / MSE_topk)"})
    out["log_ratio_se"] = (("d", "n", "sigma", "f"), L_se)
    out["mse_uniform"] = (("d", "n", "sigma", "f"), uni)
    out["mse_topk"] = (("d", "n", "sigma", "f"), top)
    out["B_n"] = (("d", "n", "sigma"), c1)
    members: dict = {}
    tested = 0
    plan = []
    for a_, d in enumerate(dd):
        for b_, n in enumerate(nn):
            B = _uniform_constant(sig, c1[a_, b_], int(d))
            m2 = np.abs(c2[a_, b_]) / c1[a_, b_]
            for k, fk in enumerate(f):
                s_star = tsel.crossover_sigma(fk, int(n), int(d), replace=True, uniform_constant=B)
                pred[a_, b_, k] = s_star
                j = _first_crossing(sig, L[a_, b_, :, k])
                if j is not None:
                    meas[a_, b_, k], meas_se[a_, b_, k] = _root(sig, L[a_, b_, :, k], L_se[a_, b_, :, k], j)
                inside = sig[0] <= s_star <= sig[-1]
                m = fk * n
                m2_star = float(np.exp(np.interp(s_star, sig, np.log(m2)))) if inside else math.nan
                ok = inside and m >= C.RATE_FACTOR * m2_star
                if ok:
                    g = _theory_gap(sig, fk, int(n), int(d), B)
                    jt = _first_crossing(sig, g)
                    allow[a_, b_, k] = abs(_root(sig, g, np.zeros_like(g), jt)[0] - s_star) if jt is not None else 0.0
                    tested += 1
                    tested_mask[a_, b_, k] = True
                plan.append((a_, b_, k, ok, inside, m2_star))
    z, zsrc = z_family(max(tested, 1), dof=q - 1)
    for a_, b_, k, ok, inside, m2_star in plan:
        where = f"d={dd[a_]},n=2^{round(math.log2(nn[b_]))}"
        members.setdefault(where, []).append(
            _crossing_claim(sig, f[k], nn[b_], pred[a_, b_, k], meas[a_, b_, k], meas_se[a_, b_, k],
                            allow[a_, b_, k], ok, inside, m2_star, z, zsrc))
    claims = [worst_of(v, where=w, every="f") for w, v in members.items()]
    out["theory_sigma_star"] = (("d", "n", "f"), pred, {"long_name": "predicted crossover sigma* (run's B_n)"})
    out["sigma_star"] = (("d", "n", "f"), meas, {"long_name": "measured crossover (first sign change, interpolated)"})
    out["sigma_star_se"] = (("d", "n", "f"), meas_se)
    out["sigma_star_allowance"] = (("d", "n", "f"), allow)
    out["crossover_tested"] = (("d", "n", "f"), tested_mask, {"description": "sigma* inside the grid and m >= 4 m_2"})
    law = np.array([[[tsel.crossover_sigma(fk, int(n), int(d), replace=True) for fk in f] for n in nn] for d in dd])
    out["theory_sigma_star_law"] = (("d", "n", "f"), law, {"long_name": "sigma* with the law-level B (n -> inf)"})
    return out, claims


def _crossing_claim(sig, fk, n, pred, meas, meas_se, allow, ok, inside, m2_star, z, zsrc):
    where = f"f={C.pow2(round(-math.log2(fk)))}"
    text = f"sigma* = {pred:.3f}"
    if not inside:
        return C.CROSSOVER.not_tested(f"the predicted sigma* = {pred:.3g} lies outside the sigma grid "
                                      f"[{sig[0]:g}, {sig[-1]:g}]", where=where, prediction=pred, prediction_text=text)
    if not ok:
        return C.CROSSOVER.not_tested(f"m = {fk * n:.0f} < {C.RATE_FACTOR:g} m_2(sigma*) = "
                                      f"{C.RATE_FACTOR * m2_star:.3g}: uniform sampling is pre-asymptotic at the "
                                      "crossover (it beats B_n/m there)", where=where, prediction=pred,
                                      prediction_text=text)
    if not np.isfinite(meas):
        return C.CROSSOVER.decided(False, test="a sign change of log(MSE_uniform / MSE_topk) inside the sigma grid",
                                   tolerance_source="the predicted sigma* lies inside the grid", where=where,
                                   prediction=pred, prediction_text=text,
                                   reason="no sign change from uniform to top-k along the sigma grid")
    return C.CROSSOVER.equal(meas, meas_se, pred, z=z, z_source=zsrc, allowance=allow,
                             allowance_source="linear interpolation between grid sigmas, its error on the theory's "
                                              "own curve", where=where, prediction_text=text)


def summary(an: xr.Dataset) -> str:
    rows = [f"{'d':>3} {'n':>8} {'f':>7} {'sigma* (pred)':>13} {'law':>6} {'measured':>16}"]
    for a_, d in enumerate(an["d"].values):
        for b_, n in enumerate(an["n"].values):
            for k, f in enumerate(an["f"].values):
                rows.append(f"{d:>3} {n:>8} {C.pow2(round(-math.log2(f))):>7} "
                            f"{an['theory_sigma_star'].values[a_, b_, k]:>13.3f} "
                            f"{an['theory_sigma_star_law'].values[a_, b_, k]:>6.3f} "
                            f"{an['sigma_star'].values[a_, b_, k]:>8.3f} ± "
                            f"{an['sigma_star_se'].values[a_, b_, k]:<5.2g}")
    return "\n".join(rows)
