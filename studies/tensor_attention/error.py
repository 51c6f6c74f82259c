"""The ``error`` group of the tensor-attention study: the polynomial method's output error against
exact attention, over the degree g and the entry bound B.

Cell (one replicate): for every order k (``--k``), entry bound B and input kind
(:data:`INPUTS`: uniform entries in [-B, B], and sign-aligned inputs whose logits reach the edge
of the design range ``R = |s| d B^k``), exact attention and, for every polynomial family and degree
g, the approximation of :func:`sim.tensor_attention.polynomial_attention`: ``err_out`` =
``||T_approx - T_exact||_inf`` (``vmax`` where it refused: ``rejected`` = 1), ``vmax`` =
``prod_m ||V_m||_inf`` and a cheap bound on the largest logit. Stored over
``(family, k, B, degree, inputs, rep)``.

Analysis (:func:`analyze_error`, from the store alone): theory's relative error ``eps`` of the
polynomial on ``[-R, R]`` (:func:`theory.tensor_attention.reference_relative_error`, computed
without the coefficients the approximation uses) with the float64 allowance, the certified
output bound ``2 e/(1 - e) prod_m ||V_m||``, the proven closed-form bound, ranks and the smallest
certified degree; the measured maxima and means. Claims:

* ``bound`` (per family, k): wherever ``eps < 1``, every run's error is within its certified
  limit (the bound with its realised ``prod_m ||V_m||`` plus the exact reference's rounding);
  "not tested" where ``eps >= 1`` at every (B, g);
* ``error_profile`` (per family, k): every run's error against theory's prediction for that input
  (:func:`theory.tensor_attention.predicted_output_error` on the inputs drawn again from the stored
  seed by :func:`error_inputs`), within float64 rounding (notes tensor_attention §2.8); "not tested" where no run's
  predicted error is above its rounding;
* ``decay`` (per family, k, B; sign-aligned inputs): the slope of log10 error on g equals theory's
  slope of log10 eps over the degrees where eps lies between ``DECAY_FLOOR`` x the float64
  allowances and ``DECAY_CEIL`` (within z SE plus ``DECAY_ALLOWANCE`` of the rate; "not tested"
  with fewer than ``MIN_DECAY_POINTS`` such degrees).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

from sim import tensor_attention as sta
from studies.claims import ClaimSpec, z_family
from studies.cli import run_params
from studies.sweep import cell_seed, str_coord
from studies.tensor_attention.common import (
    SCALES,
    SOURCE,
    child_rng,
    device_tools,
    group_sweep,
)
from theory import tensor_attention as th

__all__ = ["INPUTS", "BOUND", "DECAY", "PROFILE", "error_inputs", "error_sweep", "analyze_error", "summary_error"]

INPUTS = ("uniform", "sign_aligned")
DECAY_ALLOWANCE = 0.1  # fraction of the predicted decay rate (declared model error, see DECAY)
DECAY_FLOOR = 100.0  # decay window: eps >= DECAY_FLOOR x the float64 allowances (approximation + exact) ...
DECAY_CEIL = 0.1  # ... and eps <= DECAY_CEIL (where 2 eps/(1 - eps) is 2 eps within 11%)
MIN_DECAY_POINTS = 3
ERR_TARGET = 1e-6  # output error target of theory_min_degree (described, not claimed)
SETTINGS = (f"DECAY_ALLOWANCE={DECAY_ALLOWANCE}; DECAY window {DECAY_FLOOR:g} x allowance <= eps <= {DECAY_CEIL}; "
            f"MIN_DECAY_POINTS={MIN_DECAY_POINTS}; ERR_TARGET={ERR_TARGET}")

BOUND = ClaimSpec(
    "tensor_attention.bound", f"{SOURCE}: polynomial method error guarantee (notes tensor_attention §2.5 [D], §5 item 13)",
    "Where the degree-g polynomial has relative error eps < 1 on the design range [-R, R], the output error "
    "||T_approx - T_exact||_inf is at most 2 eps/(1 - eps) prod_m ||V_m||_inf, for every input.")
PROFILE = ClaimSpec(
    "tensor_attention.error_profile", f"{SOURCE}: the polynomial method's error, exactly (notes tensor_attention §2.8 [D], §5 item 18)",
    "The output error of the polynomial method on each input is the one theory predicts from the polynomial's "
    "relative-error profile delta(x) = P(x) e^{-x} - 1 at the realised logits, propagated through the exact softmax "
    "weights (T_approx - T = sum_J p_J (delta_J - mean delta) V_J / (1 + mean delta)), within float64 rounding.")
DECAY = ClaimSpec(
    "tensor_attention.decay", f"{SOURCE}: super-exponential decay of the error in g (notes tensor_attention §2.1, §5 item 14)",
    "On inputs that reach the edge of the logit range, the output error decays with the degree g at the rate "
    "of the polynomial's relative error eps(g): the slope of log10 error on g is theory's slope of log10 eps.")


def error_inputs(rng, ks, Bs, n, d):
    """The inputs of one replicate of the error group, in the order the cell draws them: for every
    order k, entry bound B and kind of :data:`INPUTS`, ``(ik, ib, ii, Q, keys, values)`` (host
    arrays). The analysis draws them again from the stored seed to compute theory's prediction of
    each run's error (``error_profile``)."""
    gens = {"uniform": sta.uniform_inputs, "sign_aligned": sta.sign_aligned_inputs}
    for ik, k in enumerate(ks):
        for ib, B in enumerate(Bs):
            for ii, kind in enumerate(INPUTS):
                Q, keys, values = gens[kind](rng, n, d, B, k)
                yield ik, ib, ii, Q, keys, values


def _error_part(rng, *, ks, Bs, degrees, methods, n, d, scale, device="cpu"):
    shape = (len(methods), len(ks), len(Bs), len(degrees), len(INPUTS))
    err = np.zeros(shape)
    rej = np.zeros(shape)
    vmax = np.zeros((len(ks), len(Bs), len(INPUTS)))
    lbound = np.zeros_like(vmax)
    to_dev, _ = device_tools(device)
    for ik, ib, ii, Qh, keys_h, values_h in error_inputs(rng, ks, Bs, n, d):
        B = Bs[ib]
        vm = float(np.prod([np.abs(V).max() for V in values_h]))
        vmax[ik, ib, ii] = vm
        lbound[ik, ib, ii] = sta.logit_range_bound(Qh, keys_h, scale=scale)
        Q, keys, values = to_dev(Qh), [to_dev(K) for K in keys_h], [to_dev(V) for V in values_h]
        exact = sta.kth_order_attention(Q, keys, values, scale=scale)
        for im, method in enumerate(methods):
            for ig, g in enumerate(degrees):
                try:
                    res = sta.polynomial_attention(Q, keys, values, degree=g, method=method,
                                                   B=B, scale=scale)
                    err[im, ik, ib, ig, ii] = float(abs(res.out - exact).max())  # NumPy or CuPy
                except sta.NonPositiveNormalizer:
                    rej[im, ik, ib, ig, ii] = 1.0
                    err[im, ik, ib, ig, ii] = vm
    return {"err_out": err, "rejected": rej, "vmax": vmax, "logit_bound": lbound}


def _error_cell(cell, **cfg):
    return _error_part(child_rng(cell.seed, "error"), **cfg)


def error_sweep(args):
    """The ``error`` group's sweep: one cell per replicate."""
    cfg = dict(ks=tuple(args.k), Bs=tuple(args.B), degrees=tuple(args.degrees), methods=tuple(args.methods),
               n=args.n_error, d=args.d, scale=SCALES[args.scale](args.d), device=args.device)
    dims5 = ("family", "k", "B", "degree", "inputs", "rep")
    return group_sweep(
        "error", args,
        own={"k": list(args.k), "B": list(args.B), "degrees": list(args.degrees), "methods": list(args.methods),
             "n": args.n_error, "inputs": list(INPUTS)},
        variables={"err_out": dims5, "rejected": dims5, "vmax": ("k", "B", "inputs", "rep"),
                   "logit_bound": ("k", "B", "inputs", "rep")},
        coords={"family": str_coord(args.methods), "k": np.asarray(args.k), "B": np.asarray(args.B, dtype=float),
                "degree": np.asarray(args.degrees), "inputs": str_coord(INPUTS)},
        run_cell=functools.partial(_error_cell, **cfg),
        var_attrs={
            "err_out": {"long_name": "max_i,l |T_approx - T_exact| over all n queries",
                        "note": "where rejected = 1 it holds vmax (no accuracy)"},
            "rejected": {"long_name": "1 where the approximation refused (non-positive normaliser)"},
            "vmax": {"long_name": "prod_m max |V_m| of the input"},
            "logit_bound": {"long_name": "cheap bound |s| sum_l max|Q_l| prod_m max|K_m,l| on max |logit|"},
        },
        attrs={"error_design_range": "R = |s| d B^k (the declared entry bound, k-th order)"},
        gpu_engines="exact k=2: gpu.attention; exact k=3: gpu.tensor_attention numba-cuda kernel; k=4: stream "
                    "(array-namespace) on CuPy; polynomial method: numba-cuda features + cuBLAS; inputs drawn on "
                    "the host and copied")


# --------------------------------------------------------------------------- analysis

def _exact_rounding(n: int, k: int, d: int) -> float:
    """Relative float64 allowance of the exact reference output: serial sums of ``n^{k-1}``
    weighted values, ``d``-term logits and the division (first order, declared)."""
    return 2.0 * (float(n) ** (k - 1) + 2 * d + 8) * th.UNIT_ROUNDOFF


def _theory(out, methods, ks, Bs, degs, d, s, n):
    """theory's eps, float64 allowance, proven bound, certified output bound, ranks and smallest
    certified degree on the group's grid, written into ``out``; returns ``(eps, allow, defined,
    factor)``, ``factor`` the certified bound over ``prod_m ||V_m||`` (inf where undefined)."""
    shape = (len(methods), len(ks), len(Bs), len(degs))
    eps, eps_proven, allow = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for im, m in enumerate(methods):
        for ik, k in enumerate(ks):
            for ib, B in enumerate(Bs):
                R = th.logit_range(B, int(k), d, s)
                for ig, g in enumerate(degs):
                    eps[im, ik, ib, ig] = th.reference_relative_error(int(g), R, m)
                    eps_proven[im, ik, ib, ig] = th.relative_error_bound(int(g), R, m)
                    allow[im, ik, ib, ig] = th.rounding_allowance(int(g), R, m, th.rank(d, int(g)) + n)
    big = np.finfo(float).max
    eps = np.minimum(eps, big)
    e_eff = eps + allow
    defined = e_eff < 1.0
    factor = np.where(defined, 2 * e_eff / np.where(defined, 1 - e_eff, 1.0), np.inf)  # bound / prod||V||
    Bk1 = Bs[None, :] ** (ks[:, None] - 1.0)  # (k, B): the largest prod ||V_m|| for entries in [-B, B]
    dims4 = ("family", "k", "B", "degree")
    out["theory_eps"] = (dims4, eps, {
        "long_name": "relative error of P on [-R, R], R = |s| d B^k: theory.reference_relative_error (computed "
                     "without the approximation's coefficients; notes tensor_attention §5 item 13 grid)"})
    out["theory_eps_proven"] = (dims4, np.minimum(eps_proven, big), {
        "long_name": "closed-form proven bound (Taylor: e^R R^(g+1)/(g+1)!; Chebyshev: e^(2R) R^(g+1)/(2^g (g+1)!))"})
    out["theory_rounding_allowance"] = (dims4, allow, {
        "long_name": "theory.rounding_allowance: relative float64 allowance on every kernel value (n_terms = r + n)"})
    out["theory_bound_defined"] = (dims4, defined, {"long_name": "eps + allowance < 1: the bound applies"})
    out["theory_err_bound"] = (dims4, np.where(defined, factor, 0.0) * Bk1[None, :, :, None], {
        "long_name": "2 e/(1 - e) B^(k-1), e = theory_eps + theory_rounding_allowance: the certified output error "
                     "for entries in [-B, B] (the claim uses the realised prod ||V_m|| instead of B^(k-1))",
        "note": "0 where theory_bound_defined is False (no bound)"})
    out["theory_logit_range"] = (("k", "B"), np.array([[th.logit_range(B, int(k), d, s) for B in Bs] for k in ks]))
    out["theory_rank"] = (("degree",), np.array([th.rank(d, int(g)) for g in degs], dtype=float),
                          {"long_name": "C(d+g, g), tight CP rank (any k)"})
    out["theory_rank_loose"] = (("k", "degree"), np.array([[float(th.rank_loose(d, int(g), int(k)))
                                                            for g in degs] for k in ks]),
                                {"long_name": "papers' bound C(k(g+d), k g) [C]"})
    out["theory_rank_redundant"] = (("degree",), np.array([float(th.rank_redundant(d, int(g))) for g in degs]))
    mind = np.zeros((len(methods), len(ks), len(Bs)), dtype=np.int64)
    for im, m in enumerate(methods):
        for ik, k in enumerate(ks):
            for ib, B in enumerate(Bs):
                e = ERR_TARGET / (2 * B ** (k - 1) + ERR_TARGET)
                try:
                    mind[im, ik, ib] = th.min_degree(th.logit_range(B, int(k), d, s), e, m, g_max=60)
                except ValueError:
                    mind[im, ik, ib] = 61
    out["theory_min_degree"] = (("family", "k", "B"), mind, {
        "long_name": f"smallest g whose certified output bound is <= {ERR_TARGET:g} (61 = not reached by g <= 60)"})
    return eps, allow, defined, factor


def analyze_error(ds: xr.Dataset):
    """Theory, measured maxima and certified ratios of the ``error`` group, and its claims."""
    p = run_params(ds)
    d = p["d"]
    s = SCALES[p["scale"]](d)
    methods = [str(m) for m in ds["family"].values]
    ks = ds["k"].values
    Bs = ds["B"].values
    degs = ds["degree"].values
    n = p["error"]["n"]
    out = xr.Dataset(coords={c: ds[c].values for c in ds.coords if c != "rep"})
    eps, allow, defined, factor = _theory(out, methods, ks, Bs, degs, d, s, n)
    dims4 = ("family", "k", "B", "degree")
    err = ds["err_out"].values  # (family, k, B, degree, inputs, rep)
    rej = ds["rejected"].values > 0.5
    vmax = ds["vmax"].values  # (k, B, inputs, rep)
    errm = np.where(rej, -np.inf, err).max(axis=-1)
    any_ok = (~rej).any(axis=-1)
    out["err_max"] = (dims4 + ("inputs",), np.where(any_ok, errm, 0.0),
                      {"long_name": "max over reps of err_out (accepted runs only; 0 where all rejected)"})
    out["err_mean"] = (dims4 + ("inputs",), np.where(any_ok, np.where(rej, 0, err).sum(-1) /
                                                      np.maximum((~rej).sum(-1), 1), 0.0))
    out["n_rejected"] = (dims4 + ("inputs",), rej.sum(axis=-1).astype(np.int64))
    # the certified limit of every run: the bound with its realised prod ||V_m|| + the exact reference's rounding
    vm = vmax[None, :, :, None, :, :]  # (1, k, B, 1, inputs, rep)
    slack = np.array([_exact_rounding(n, int(k), d) for k in ks])[None, :, None, None, None, None] * vm
    limit = factor[..., None, None] * vm + slack
    tested = defined[..., None, None] & np.ones_like(rej)
    ratio = np.where(tested & ~rej, err / np.where(np.isfinite(limit), limit, 1.0), 0.0)
    out["bound_ratio_max"] = (("family", "k"), ratio.max(axis=(2, 3, 4, 5)),
                              {"long_name": "max of err_out / certified limit over B, g, inputs, reps where defined"})
    claims = []
    for im, m in enumerate(methods):
        for ik, k in enumerate(ks):
            claims.append(_bound_claim(m, int(k), Bs, degs, defined[im, ik], ratio[im, ik], rej[im, ik] &
                                       tested[im, ik], out["theory_logit_range"].values[ik]))
    floor = allow + np.array([_exact_rounding(n, int(k), d) for k in ks])[None, :, None, None]
    claims += _profile_claims(ds, out, methods, ks, Bs, degs, d, s, n, eps, allow, defined, err, rej, vmax)
    claims += _decay_claims(methods, ks, Bs, degs, eps, floor, err, rej, out)
    out.attrs["d"] = int(d)
    out.attrs["claim_settings"] = SETTINGS
    return out, claims


def _bound_claim(method, k, Bs, degs, defined, ratio, bad_rej, R) -> object:
    where = f"{method}, k={k}"
    text = "err <= 2 eps/(1-eps) prod||V_m|| + rounding (ratio <= 1)"
    if not defined.any():
        return BOUND.not_tested(
            f"eps >= 1 at every (B, g) of the grid (R = {R.min():.3g}..{R.max():.3g}, g <= {int(degs.max())}): the "
            "certified bound 2 eps/(1 - eps) is undefined there", where=where, prediction_text=text)
    cover = f"tested at {int(defined.sum())} of {defined.size} (B, g) points (eps < 1)"
    src = ("no statistical tolerance: a deterministic bound (notes tensor_attention §2.5 [D]); the limit includes theory."
           "rounding_allowance on every kernel value and the exact reference's float64 rounding")
    worst = float(ratio.max())
    if bad_rej.any():
        return BOUND.decided(False, test="every run where eps < 1 has err <= limit", tolerance=0.0,
                             tolerance_source=src, where=where, prediction=1.0, prediction_text=text, measured=worst,
                             reason=f"the approximation refused (non-positive normaliser) at {int(bad_rej.sum())} "
                                    f"runs where eps < 1 guarantees a positive one; {cover}")
    i = np.unravel_index(np.argmax(ratio), ratio.shape)
    return BOUND.decided(worst <= 1.0, test="max over runs of err / certified limit <= 1", tolerance=0.0,
                         tolerance_source=src, where=where, prediction=1.0, prediction_text=text, measured=worst,
                         reason=f"{cover}; worst at B={Bs[i[0]]:g}, g={int(degs[i[1]])}, {INPUTS[i[2]]} inputs")


def _predicted_errors(ds, methods, ks, Bs, degs, d, s, n, need) -> np.ndarray:
    """theory's prediction of ``err_out`` ``(family, k, B, degree, inputs, rep)`` wherever ``need``
    ``(family, k, B, degree)`` asks for it (NaN elsewhere): the inputs drawn again from the stored
    seed (:func:`error_inputs`, the cell's own stream), the error from
    :func:`theory.tensor_attention.predicted_output_error`."""
    reps = ds["rep"].values
    pred = np.full((len(methods), len(ks), len(Bs), len(degs), len(INPUTS), len(reps)), np.nan)
    for ir, rep in enumerate(reps):
        rng = child_rng(cell_seed(int(ds.attrs["root_seed"]), (int(rep),)), "error")
        for ik, ib, ii, Q, keys, values in error_inputs(rng, [int(k) for k in ks], [float(B) for B in Bs], n, d):
            R = th.logit_range(float(Bs[ib]), int(ks[ik]), d, s)
            for im, m in enumerate(methods):
                gs = np.flatnonzero(need[im, ik, ib])
                if gs.size:
                    pred[im, ik, ib, gs, ii, ir] = th.predicted_output_error(
                        Q, keys, values, [int(degs[g]) for g in gs], [m], R, s)[0]
    return pred


def _profile_claims(ds, out, methods, ks, Bs, degs, d, s, n, eps, allow, defined, err, rej, vmax) -> list:
    """``error_profile`` per (family, k): every run where the certified bound is defined, its error
    against theory's prediction for that very input, within the float64 allowances (those of the
    approximation and of the prediction, both ``theory.rounding_allowance``, and the exact
    reference's); "not tested" where every predicted error is within that rounding."""
    exact = np.array([_exact_rounding(n, int(k), d) for k in ks])[None, :, None, None]
    e_round = 2.0 * allow + exact  # (family, k, B, degree): approximation + prediction + exact reference
    tol = (2 * e_round / np.maximum(1 - e_round, 1e-300))[..., None, None] * vmax[None, :, :, None, :, :]
    # a run whose certified bound is within rounding cannot resolve the profile (pred <= bound): not computed
    bound = np.where(defined, 2 * eps / np.where(defined, 1 - eps, 1.0), 0.0)[..., None, None] * vmax[None, :, :, None]
    need = defined & (bound > tol).any(axis=(-1, -2))
    pred = _predicted_errors(ds, methods, ks, Bs, degs, d, s, n, need)
    out["theory_err_out"] = (("family", "k", "B", "degree", "inputs", "rep"), np.nan_to_num(pred, nan=-1.0), {
        "long_name": "theory's prediction of err_out from the polynomial's relative-error profile at the realised "
                     "logits (notes tensor_attention §2.8; -1 where 1 + mean delta <= 0: no prediction)"})
    use = defined[..., None, None] & np.isfinite(pred)
    gap = np.abs(err - np.nan_to_num(pred))
    claims = []
    src = ("no statistical tolerance: a deterministic prediction (notes tensor_attention §2.8 [D]); the tolerance is float64 rounding: "
           "theory.rounding_allowance of the approximation and of the prediction's own profile, and the exact "
           "reference's rounding, each relative on every weight (2 e/(1 - e) prod ||V_m||)")
    for im, m in enumerate(methods):
        for ik, k in enumerate(ks):
            where = f"{m}, k={int(k)}"
            text = "err = theory's error from delta(logits) (ratio |err - pred| / tol <= 1)"
            u = use[im, ik]
            if not u.any():
                claims.append(PROFILE.not_tested(
                    "eps >= 1 at every (B, g) of the grid: the approximation's normaliser can vanish, no prediction",
                    where=where, prediction_text=text))
                continue
            resolved = u & (pred[im, ik] > tol[im, ik])
            if not resolved.any():
                claims.append(PROFILE.not_tested(
                    f"every predicted error is within float64 rounding (largest {np.nanmax(np.where(u, pred[im, ik], 0)):.3g}): "
                    "the effect it tests is not above its tolerance", where=where, prediction_text=text))
                continue
            bad_rej = u & rej[im, ik]
            ratio = np.where(u & ~rej[im, ik], gap[im, ik] / tol[im, ik], 0.0)
            worst = float(ratio.max())
            cover = (f"{int(resolved.sum())} of {int(u.sum())} runs resolved (predicted error above rounding); "
                     f"largest relative gap {float(np.max(np.where(resolved, gap[im, ik] / pred[im, ik], 0))):.2g}")
            if bad_rej.any():
                claims.append(PROFILE.decided(
                    False, test="every run where eps < 1 has |err - pred| <= tolerance", tolerance=1.0,
                    tolerance_source=src, where=where, prediction=0.0, prediction_text=text, measured=worst,
                    reason=f"the approximation refused (non-positive normaliser) at {int(bad_rej.sum())} runs where "
                           f"theory predicts a finite error; {cover}"))
                continue
            i = np.unravel_index(np.argmax(ratio), ratio.shape)
            claims.append(PROFILE.decided(
                worst <= 1.0, test="max over runs of |err - pred| / tolerance <= 1", tolerance=1.0,
                tolerance_source=src, where=where, prediction=0.0, prediction_text=text, measured=worst,
                reason=f"{cover}; worst at B={Bs[i[0]]:g}, g={int(degs[i[1]])}, {INPUTS[i[2]]} inputs (measured "
                       f"{err[im, ik][i]:.4g}, predicted {pred[im, ik][i]:.4g})"))
    return claims


def _decay_claims(methods, ks, Bs, degs, eps, floor, err, rej, out) -> list:
    """Per (family, k, B) on sign-aligned inputs: regress the deviation ``log10 err - log10 eps``
    (mean over reps) on g over the decay window; its slope is the measured minus the predicted
    rate, its standard error (from the residuals) carries the replicates' noise and any
    structure of the error that eps(g) does not follow."""
    ii = INPUTS.index("sign_aligned")
    slope_m = np.full((len(methods), len(ks), len(Bs)), np.nan)
    slope_se = np.full_like(slope_m, np.nan)
    slope_th = np.full_like(slope_m, np.nan)
    window = (eps >= DECAY_FLOOR * floor) & (eps <= DECAY_CEIL)  # (family, k, B, degree)
    rows = []
    g = degs.astype(float)
    for im in range(len(methods)):
        for ik in range(len(ks)):
            for ib in range(len(Bs)):
                use = window[im, ik, ib] & ~rej[im, ik, ib, :, ii, :].any(axis=-1)
                e = err[im, ik, ib, use, ii, :]  # (points, rep)
                if use.sum() >= MIN_DECAY_POINTS and np.all(e > 0):
                    gu = g[use]
                    pred = np.polyfit(gu, np.log10(eps[im, ik, ib, use]), 1)[0]
                    dev = np.log10(e).mean(axis=-1) - np.log10(eps[im, ik, ib, use])
                    b, a = np.polyfit(gu, dev, 1)
                    resid = dev - (a + b * gu)
                    slope_th[im, ik, ib] = pred
                    slope_m[im, ik, ib] = pred + b
                    slope_se[im, ik, ib] = math.sqrt(np.sum(resid**2) / (gu.size - 2) / np.sum((gu - gu.mean()) ** 2))
                rows.append((im, ik, ib, use))
    out["decay_slope"] = (("family", "k", "B"), slope_m, {
        "long_name": "OLS slope of log10 err_out (sign-aligned, mean over reps) on g over the decay window"})
    out["decay_slope_se"] = (("family", "k", "B"), slope_se, {
        "long_name": "standard error of decay_slope - theory_decay_slope from the residuals of that regression"})
    out["theory_decay_slope"] = (("family", "k", "B"), slope_th,
                                 {"long_name": "OLS slope of log10 theory_eps on g over the same degrees"})
    out["decay_window"] = (("family", "k", "B", "degree"), window, {
        "long_name": f"degrees with {DECAY_FLOOR:g} x (float64 allowance of approximation and exact reference) <= "
                     f"eps <= {DECAY_CEIL:g}"})
    m_tests = int(np.isfinite(slope_m).sum())
    claims = []
    for im, ik, ib, use in rows:
        where = f"{methods[im]}, k={int(ks[ik])}, B={Bs[ib]:g}"
        pred = slope_th[im, ik, ib]
        if not np.isfinite(slope_m[im, ik, ib]):
            claims.append(DECAY.not_tested(
                f"{int(use.sum())} degree(s) of the grid have eps between {DECAY_FLOOR:g} x the float64 rounding "
                f"allowances and {DECAY_CEIL:g}; a slope needs >= {MIN_DECAY_POINTS}", where=where,
                prediction_text="slope of log10 eps(g)"))
            continue
        gs = degs[use]
        z, zsrc = z_family(m_tests, dof=max(1, int(use.sum()) - 2))  # the SE comes from the residuals
        claims.append(DECAY.equal(
            slope_m[im, ik, ib], slope_se[im, ik, ib], pred, z=z, z_source=zsrc, effect=abs(pred),
            allowance=DECAY_ALLOWANCE * abs(pred),
            allowance_source=f"declared model error, {DECAY_ALLOWANCE:.0%} of the predicted rate: the output error "
                             "is a softmax-weighted difference of the polynomial's relative errors at the realised "
                             "logits (notes tensor_attention §2.5), which follows eps(g) at the edge of the range only up to the "
                             "variation of that error profile",
            where=where, prediction_text=f"{pred:.3f} decades/degree (log10 eps, g={int(gs.min())}..{int(gs.max())})"))
    return claims


def summary_error(an: xr.Dataset) -> str:
    """The error group's table: the largest degree's error per (family, k, B), g*, the decay rates."""
    rows = [("error part: max output error over reps (sign-aligned inputs) at the largest degree; "
             "min degree g* for a certified 1e-6")]
    methods = [str(m) for m in an["family"].values]
    degs = an["degree"].values
    rows.append(f"  {'family':<10} {'k':>2} " + " ".join(f"{'B=' + format(b, 'g'):>9}" for b in an["B"].values))
    for m in methods:
        for k in an["k"].values:
            e = an["err_max"].sel(family=m, k=k, inputs="sign_aligned", degree=degs[-1]).values
            rows.append(f"  {m:<10} {int(k):>2} " + " ".join(f"{v:>9.1e}" for v in e))
            gs = an["theory_min_degree"].sel(family=m, k=k).values
            rows.append(f"  {'  g*':<10} {'':>2} " + " ".join(f"{int(v) if v <= 60 else '>60':>9}" for v in gs))
            sl = an["decay_slope"].sel(family=m, k=k).values
            st = an["theory_decay_slope"].sel(family=m, k=k).values
            rows.append(f"  {'  decay':<10} {'':>2} " + " ".join(
                f"{a:>+9.2f}" if np.isfinite(a) else f"{'-':>9}" for a in sl) + "  (decades/degree, measured)")
            rows.append(f"  {'  theory':<10} {'':>2} " + " ".join(
                f"{a:>+9.2f}" if np.isfinite(a) else f"{'-':>9}" for a in st))
    rows.append("  max err / certified limit: " + "  ".join(
        f"{m}/k={int(k)}: {float(an['bound_ratio_max'].sel(family=m, k=k)):.2g}"
        for m in methods for k in an["k"].values))
    return "\n".join(rows)
