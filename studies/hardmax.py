"""The hardmax regime on the sphere: ``python -m studies.hardmax [--d 3]``.

Result 3 of Bohbot, Letrouit, Peyré, Vialard: as the attention parameter lam -> infinity,
softmax attention tends to hardmax, and the convergence in the number of tokens becomes
logarithmic. Tokens are uniform on the sphere S^{d-1}(rho), queries x_q = rho u_q on a
quasi-uniform set of directions, A = a I, V = I, so ``kappa_1 = rho |A x| = a rho^2`` and the
population hardmax limit is Gamma^inf(x) = rho u. Three measurements share every token sample
(every value is the mean over the queries, which all have the same law by rotation symmetry):

1. bias of Gamma at parameter lam against the hardmax limit: the radial deficit
   rho - <Gamma^lam_{mu_n}(x), u> at the largest n. Theory (:mod:`theory.token_sample.hardmax`):
   its expectation is rho (1 - A_d(lam kappa_1)) (exact population bias, ~ rho (d-1)/(2 lam
   kappa_1)) plus the first-order finite-n bias of the ratio estimator, (n*/n) rho (A_d(2 lam
   kappa_1) - A_d(lam kappa_1)), valid while n*/n << 1 (n* = E w^2/(E w)^2);
2. pure hardmax error ``|y_{j*} - rho u|`` against n: exact curve E = int (1 - I_{e^2/4})^n de
   (slope -> -1/(d-1));
3. coupled lam_n = c log n: E|Gamma^{lam_n}_{mu_n}(x) - Gamma^inf(x)| lies in the first-order band
   ``[|E e|, sqrt(|E e|^2 + tr M/n)]`` (Jensen), which tends to rho (d-1)/(2 c kappa_1 log n): a
   logarithmic rate once lam_n kappa_1 >> d, a slowly bending curve before.

Claims (:mod:`studies.claims`; each is the worst member of its family, at Bonferroni z):

* ``bias_exact``   -- the measured bias equals the predicted one at every lam where n*/n <= 0.1;
* ``bias_slope``   -- its log-log slope in lam equals the slope of the predicted curve over the
  same lams (same weights);
* ``pure_curve``   -- the pure-hardmax error equals the exact curve at every n;
* ``pure_rate``    -- its log-log slope equals the exact curve's slope over the grid;
* ``coupled_band`` -- the coupled error lies in the first-order band at every n with n*/n <= 0.1;
* ``coupled_form`` -- log error is linear in log log n (logarithmic) or in log n (power law),
  whichever the theory's band midpoint singles out over the grid; "not tested" when the two
  forms cannot be told apart on the grid.

Dataset (``results/hardmax.zarr``): raw ``pure_err(n, rep)``, ``lam_err(lam, n, rep)``,
``lam_deficit(lam, n, rep)``, ``coupled_err(n, rep)``, ``coupled_deficit(n, rep)``; fits with
standard errors, ``theory_*`` curves (exact bias, its asymptote, the finite-n prediction, exact
pure-hardmax error, the coupled band) and the claims (``claim_*`` over the ``claim`` dimension).
"""
from __future__ import annotations

import functools
import sys

import numpy as np
import xarray as xr

from sim.backend import make_rng
from sim.distributions import make_distribution
from sim.token_sample import hardmax_errors
from studies.claims import ClaimSpec, predicted_form, worst_of, z_family
from studies.cli import (PAIR_RATE, Part, UsageError, check_resources, check_scores, parse_n_grid, positive_float,
                         positive_int, run_params, study_main)
from studies.moments import parse_scales
from studies.sweep import Sweep
from theory import token_sample as ts

STUDY = "hardmax"
DEFAULTS = {"n": "1e2..1e6/9", "lam": "1..1000/10", "reps": 20, "queries": 64}
QUICK = {"n": "1e2..1e4/5", "lam": "1..300/6", "reps": 6, "queries": 16}
PRESETS: dict = {}

FIRST_ORDER_MAX = 0.1  # the finite-n expansions are used (and tested) where n*/n <= this
MIN_SLOPE_POINTS = 3  # a slope claim needs this many points
MIN_FORM_POINTS = 4  # a form comparison needs this many points

SOURCE = "Bohbot, Letrouit, Peyré, Vialard (2025), Result 3 (hardmax regime)"
BIAS_EXACT = ClaimSpec(
    "hardmax.bias_exact", f"{SOURCE}; notes token_sample §2.3, §3.2 [D], §6.8(i)",
    "The softmax-to-hardmax bias at parameter lam (radial deficit at the largest n) equals rho (1 - A_d(lam "
    "kappa_1)) plus the first-order finite-n bias of the ratio estimator.")
BIAS_SLOPE = ClaimSpec(
    "hardmax.bias_slope", f"{SOURCE}; notes token_sample §6.8(i) (slope -> -1 as lam kappa_1 >> d)",
    "The log-log slope of the bias in lam equals the slope of the predicted curve over the same lams.")
PURE_CURVE = ClaimSpec(
    "hardmax.pure_curve", "notes token_sample §2.3 [D], §6.8(ii): empirical hardmax on the sphere",
    "The error of the empirical hardmax, E|y_{j*} - rho u|, equals the exact 1-D integral at every n.")
PURE_RATE = ClaimSpec(
    "hardmax.pure_rate", "notes token_sample §2.3 [D], §6.8(ii): slope -> -1/(d-1)",
    "The log-log slope of the pure-hardmax error in n equals the exact curve's slope over the grid.")
COUPLED_BAND = ClaimSpec(
    "hardmax.coupled_band", f"{SOURCE}: lam_n = c log n (notes token_sample §2.3 [G], §6.8(iii))",
    "With lam_n = c log n the error lies in the first-order band [|E e|, sqrt(|E e|^2 + tr M/n)] at every n.")
COUPLED_FORM = ClaimSpec(
    "hardmax.coupled_form", f"{SOURCE}: 'a logarithmic rate of convergence' (notes token_sample §6.8(iii))",
    "With lam_n = c log n, log error against n follows the form the theory's curve takes on this grid: "
    "linear in log log n (logarithmic rate) once lam_n kappa_1 >> d, else possibly a slow power law.")
COUPLED_FORMS = {"log log n": lambda n: np.log(np.log(n)), "log n": np.log}

EXAMPLES = """\
examples:
  python -m studies.hardmax                              # d = 3 (about 1 minute)
  python -m studies.hardmax --d 5 --c 2 --plot
  python -m studies.hardmax --quick --plot --out /tmp/hardmax.zarr
  python -m paper_figs.hardmax results/hardmax.zarr
"""


DESCRIPTION = ("Softmax -> hardmax on sphere tokens: bias in lam, pure-hardmax error in n, and the logarithmic "
               "rate of lam_n = c log n.")


def add_arguments(p) -> None:
    p.add_argument("--d", type=positive_int, default=3, help="dimension of the token sphere S^{d-1} (default 3)")
    p.add_argument("--radius", type=positive_float, default=1.0, help="sphere radius rho (default 1)")
    p.add_argument("--A-scale", dest="a_scale", type=positive_float, default=1.0,
                   help="A = A_SCALE * I (default 1), so kappa_1 = A_SCALE * rho^2")
    p.add_argument("--n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"token counts (default {DEFAULTS['n']}; --quick {QUICK['n']})")
    p.add_argument("--lam", type=parse_scales, default=None, metavar="GRID",
                   help=f"attention parameters lam for the bias: 1..1000/10 (geometric) or a list "
                        f"(default {DEFAULTS['lam']}; --quick {QUICK['lam']})")
    p.add_argument("--c", type=positive_float, default=1.0, help="coupling lam_n = C log n (default 1)")
    p.add_argument("--reps", type=positive_int, default=None,
                   help=f"independent token samples per n (default {DEFAULTS['reps']}; --quick {QUICK['reps']})")
    p.add_argument("--queries", type=positive_int, default=None,
                   help=f"query directions (default {DEFAULTS['queries']}; --quick {QUICK['queries']})")


def _coupled_lam(c: float, n: int) -> float:
    """The attention parameter the measurement uses for n tokens: lam_n = c log n."""
    return c * np.log(n)


def _cell(cell, *, d, radius, A, queries, lams, c, device):
    dist = make_distribution("sphere", d, radius=radius)
    rng = make_rng(cell.seed, device)
    n = int(cell.coords["n"])
    tokens = dist.sample(rng, n)
    lam_all = np.concatenate([lams, [_coupled_lam(c, n)]])
    r = hardmax_errors(tokens, dist.law, A, queries, lam_all)
    return {"pure_err": r.pure_err, "lam_err": r.lam_err[:-1], "lam_deficit": r.lam_deficit[:-1],
            "coupled_err": r.lam_err[-1], "coupled_deficit": r.lam_deficit[-1]}


def _queries(args) -> np.ndarray:
    return args.radius * ts.sphere_directions(args.d, args.queries)


def make_sweep(args) -> Sweep:
    d = args.d
    A = args.a_scale * np.eye(d)
    n = np.asarray(args.n, dtype=np.int64)
    lams = np.asarray(args.lam, dtype=float)
    Q = _queries(args)
    params = {"d": d, "radius": args.radius, "A": A.tolist(), "V": "I", "n": n.tolist(), "lam": lams.tolist(),
              "c": args.c, "reps": args.reps, "queries": args.queries, "device": args.device}
    run_cell = functools.partial(_cell, d=d, radius=args.radius, A=A, queries=Q, lams=lams, c=args.c,
                                 device=args.device)
    return Sweep(
        study=STUDY,
        cell_dims={"n": n, "rep": np.arange(args.reps)},
        variables={"pure_err": ("n", "rep"), "coupled_err": ("n", "rep"), "coupled_deficit": ("n", "rep"),
                   "lam_err": ("lam", "n", "rep"), "lam_deficit": ("lam", "n", "rep")},
        coords={"lam": lams},
        params=params,
        run_cell=run_cell,
        root_seed=args.seed,
        attrs={"device": args.device, "token_law": f'{{"name": "sphere", "d": {d}, "radius": {args.radius}}}',
               "convention": "tokens uniform on S^{d-1}(rho); queries x_q = rho u_q (sphere_directions); A = a I, "
                             "V = I; scores lam <A x, y>; Gamma^inf(x) = rho u; every value is the mean over "
                             "the queries; tokens shared by the hardmax, every lam and lam_n = c log n",
               "kappa_1": float(args.a_scale * args.radius**2)},
        var_attrs={
            "pure_err": {"long_name": "mean_q |y_{j*} - rho u_q| (empirical hardmax)"},
            "coupled_err": {"long_name": "mean_q |Gamma^{c log n}_{mu_n}(x_q) - rho u_q|"},
            "coupled_deficit": {"long_name": "mean_q rho - <Gamma^{c log n}_{mu_n}(x_q), u_q>"},
            "lam_err": {"long_name": "mean_q |Gamma^lam_{mu_n}(x_q) - rho u_q|"},
            "lam_deficit": {"long_name": "mean_q rho - <Gamma^lam_{mu_n}(x_q), u_q> (radial deficit)"},
        },
    )


# ------------------------------------------------------------------------------ analysis
def _slope_vs_curve(x, m, se, curve):
    """Log-log slopes of a measured curve ``m`` (standard errors ``se``) and of a predicted
    ``curve`` on the same ``x``, both by weighted least squares with the measurement's weights
    1/Var(log m), Var(log m) = (se/m)^2. Returns ``(slope, slope_se, predicted_slope)``. The
    difference of the two slopes is a linear functional of log(m/curve), whose standard error
    is the known-variance one: the prediction is the exact curve, so under the claim the
    residuals are noise alone (a shape error shows as a slope difference, not as a larger SE)."""
    w = (m / se) ** 2
    lx = np.log(x)
    xb = np.sum(w * lx) / np.sum(w)
    sxx = np.sum(w * (lx - xb) ** 2)

    def fit(y):
        yb = np.sum(w * y) / np.sum(w)
        return float(np.sum(w * (lx - xb) * (y - yb)) / sxx)

    return fit(np.log(m)), float(np.sqrt(1.0 / sxx)), fit(np.log(curve))


def analyze(ds: xr.Dataset) -> tuple[xr.Dataset, list]:
    """Fits, theory and claims (a pure function of the dataset: d, the radius, A = a I and c are
    the run's stored parameters): every prediction is the theory's for this configuration."""
    params = run_params(ds)
    d, radius, c = int(params["d"]), float(params["radius"]), float(params["c"])
    A = np.asarray(params["A"], dtype=float)
    a_scale = float(A[0, 0])
    n = ds["n"].values.astype(float)
    lam = ds["lam"].values.astype(float)
    k = ds.sizes["rep"]
    kappa1 = a_scale * radius**2
    law = ts.SphereLaw(d, radius)
    x0 = np.zeros(d)
    x0[0] = radius
    u = x0 / radius
    hard = ts.hardmax_limit(law, x0, A)
    out = xr.Dataset(coords={"n": ds["n"].values, "lam": lam})

    # 1. bias vs lam at the largest n
    dfc = ds["lam_deficit"].values[:, -1, :]  # (lam, rep)
    bias = dfc.mean(axis=1)
    bias_se = dfc.std(axis=1, ddof=1) / np.sqrt(k)
    th_bias = ts.sphere_hardmax_bias(d, lam * kappa1, radius)
    b1 = np.array([ts.softmax_finite_n_bias(law, x0, A, la, n[-1]) for la in lam])  # first-order finite-n bias
    fin = np.array([u @ (hard - ts.attention_limit(law, x0, A, None, la)) for la in lam]) - b1 @ u
    ratio = np.array([float(ts.effective_sample_threshold(law, x0, A, la)) / n[-1] for la in lam])
    first_order = ratio <= FIRST_ORDER_MAX
    out["bias"] = (("lam",), bias, {"long_name": "mean over reps of lam_deficit at the largest n: the bias estimate"})
    out["bias_se"] = (("lam",), bias_se)
    out["theory_bias"] = (("lam",), th_bias, {"long_name": "rho (1 - A_d(lam kappa_1)), exact population bias"})
    out["theory_bias_asymptotic"] = (("lam",), ts.sphere_hardmax_bias_asymptotic(d, lam * kappa1, radius),
                                     {"long_name": "rho (d-1) / (2 lam kappa_1)"})
    out["theory_bias_finite_n"] = (("lam",), fin, {"long_name": "expected radial deficit at the largest n: exact "
                                                                  "bias + first-order finite-n bias (ratio estimator)"})
    out["nstar_over_n"] = (("lam",), ratio, {"long_name": "n*(lam) / n_max, n* = E w^2/(E w)^2"})
    out["bias_fit_mask"] = (("lam",), first_order & (bias > 0),
                            {"description": f"lams with n*/n_max <= {FIRST_ORDER_MAX} (first-order expansion valid) "
                                            "and a positive measured bias"})

    # 2. pure hardmax vs n
    pe = ds["pure_err"].values
    pm, ps = pe.mean(axis=1), pe.std(axis=1, ddof=1) / np.sqrt(k)
    th_pure = np.asarray(ts.sphere_hardmax_expected_error(d, n, radius))
    out["pure_err_mean"] = (("n",), pm)
    out["pure_err_sem"] = (("n",), ps)
    out["theory_pure_err"] = (("n",), th_pure, {"long_name": "exact E |y_{j*} - rho u| (1-D integral)"})
    out["theory_pure_slope"] = ((), ts.sphere_hardmax_rate(d), {"long_name": "-1/(d-1), the n -> infinity slope"})

    # 3. coupled lam_n = c log n
    ce = ds["coupled_err"].values
    cm, cs = ce.mean(axis=1), ce.std(axis=1, ddof=1) / np.sqrt(k)
    logn = np.log(n)
    lam_n = c * logn
    lo, hi, cratio = (np.asarray(v) for v in ts.hardmax_error_band(law, x0, A, lam_n, n))
    out["lam_n"] = (("n",), lam_n, {"long_name": "lam_n = c log n"})
    out["coupled_err_mean"] = (("n",), cm)
    out["coupled_err_sem"] = (("n",), cs)
    out["coupled_err_x_logn"] = (("n",), cm * logn, {"long_name": "coupled_err_mean * log n"})
    out["theory_coupled_lower"] = (("n",), lo, {"long_name": "|E e|: lower end of the first-order band"})
    out["theory_coupled_upper"] = (("n",), hi, {"long_name": "sqrt(|E e|^2 + tr M/n): upper end of the band"})
    out["theory_coupled_err"] = (("n",), 0.5 * (lo + hi), {"long_name": "midpoint of the first-order band"})
    out["coupled_nstar_over_n"] = (("n",), cratio, {"long_name": "n*(lam_n) / n"})
    out["theory_coupled_x_logn_limit"] = ((), radius * (d - 1) / (2 * c * kappa1),
                                          {"long_name": "rho (d-1) / (2 c kappa_1): the n -> infinity limit of error x log n"})

    # lam_err summary (error at fixed lam vs n: plateaus at the bias)
    out["lam_err_mean"] = (("lam", "n"), ds["lam_err"].values.mean(axis=2))
    out["lam_err_sem"] = (("lam", "n"), ds["lam_err"].values.std(axis=2, ddof=1) / np.sqrt(k))

    claims = []
    claims += _bias_claims(out, k, lam, first_order, bias, bias_se, th_bias, fin, ratio, np.linalg.norm(b1, axis=1))
    claims += _pure_claims(out, k, n, pm, ps, th_pure)
    b1n = np.array([np.linalg.norm(ts.softmax_finite_n_bias(law, x0, A, la, nn)) for la, nn in zip(lam_n, n)])
    claims += _coupled_claims(out, k, n, cm, cs, lo, hi, cratio, b1n)
    return out, claims


def _next_order(ratio, first):
    """Declared size of the neglected terms of an expansion in n*/n: n*/n times the size of
    its first-order terms."""
    return float(ratio * first), "declared next order of the expansion in n*/n: (n*/n) x the first-order terms"


def _bias_claims(out, k, lam, first_order, bias, bias_se, th_bias, fin, ratio, b1):
    claims = []
    z, zsrc = z_family(int(first_order.sum()), dof=k - 1)
    members = []
    for i in range(lam.size):
        where = f"lam={lam[i]:g}"
        if not first_order[i]:
            members.append(BIAS_EXACT.not_tested(
                f"n*(lam)/n_max = {ratio[i]:.3g} > {FIRST_ORDER_MAX}: the finite-n expansion does not hold",
                where=where, measured=bias[i], se=bias_se[i]))
            continue
        allow, asrc = _next_order(ratio[i], b1[i])
        members.append(BIAS_EXACT.equal(bias[i], bias_se[i], fin[i], z=z, z_source=zsrc, allowance=allow,
                                        allowance_source=asrc, where=where, effect=fin[i],
                                        prediction_text=f"{fin[i]:.4g} (exact {th_bias[i]:.4g} + finite n)"))
    claims.append(worst_of(members, every="lam"))

    w = out["bias_fit_mask"].values.astype(bool)
    w &= bias > z_family(1, dof=k - 1)[0] * bias_se  # a resolvable bias: its logarithm is meaningful
    out["bias_fit_mask"].values[:] = w
    if w.sum() < MIN_SLOPE_POINTS:
        claims.append(BIAS_SLOPE.not_tested(
            f"{int(w.sum())} lam(s) with n*/n_max <= {FIRST_ORDER_MAX} and a resolved positive bias; a slope "
            f"needs >= {MIN_SLOPE_POINTS}", prediction_text="the predicted curve's slope"))
        return claims
    slope, se, pred = _slope_vs_curve(lam[w], bias[w], bias_se[w], fin[w])
    _, _, exact = _slope_vs_curve(lam[w], bias[w], bias_se[w], th_bias[w])
    out["bias_slope"] = ((), slope, {"long_name": "WLS log-log slope of the bias vs lam over the fit window (weights 1/Var log bias)"})
    out["bias_slope_se"] = ((), se)
    out["theory_bias_slope"] = ((), pred, {"long_name": "slope of the predicted curve over the fit window (same weights)"})
    out["theory_bias_slope_exact"] = ((), exact, {"long_name": "slope of rho (1 - A_d) over the fit window"})
    z, zsrc = z_family(1, dof=k - 1)
    claims.append(BIAS_SLOPE.equal(
        slope, se, pred, z=z, z_source=zsrc, allowance=abs(pred - exact),
        allowance_source="declared: the finite-n correction's own effect on the slope bounds the neglected orders",
        effect=abs(pred),
        prediction_text=f"{pred:+.4f} over lam in {lam[w].min():g}..{lam[w].max():g} (asymptote -1)"))
    return claims


def _pure_claims(out, k, n, pm, ps, th_pure):
    z, zsrc = z_family(n.size, dof=k - 1)
    members = [PURE_CURVE.equal(pm[i], ps[i], th_pure[i], z=z, z_source=zsrc, where=f"n={int(n[i])}", effect=th_pure[i],
                                prediction_text=f"{th_pure[i]:.4g} (exact)") for i in range(n.size)]
    claims = [worst_of(members, every="n")]
    slope, se, pred = _slope_vs_curve(n, pm, ps, th_pure)
    out["pure_slope"] = ((), slope, {"long_name": "WLS log-log slope of the pure-hardmax error vs n"})
    out["pure_slope_se"] = ((), se)
    out["theory_pure_slope_grid"] = ((), pred, {"long_name": "log-log slope of the exact curve over the n grid "
                                                               "(same weights)"})
    z, zsrc = z_family(1, dof=k - 1)
    claims.append(PURE_RATE.equal(slope, se, pred, z=z, z_source=zsrc, effect=abs(pred),
                                  prediction_text=f"{pred:+.4f} (exact curve; asymptote "
                                                  f"{float(out['theory_pure_slope']):+.4f})"))
    return claims


def _coupled_claims(out, k, n, cm, cs, lo, hi, cratio, b1):
    ok = cratio <= FIRST_ORDER_MAX
    z, zsrc = z_family(int(ok.sum()), dof=k - 1)
    members = []
    for i in range(n.size):
        where = f"n={int(n[i])}"
        if not ok[i]:
            members.append(COUPLED_BAND.not_tested(
                f"n*(lam_n)/n = {cratio[i]:.3g} > {FIRST_ORDER_MAX}: the first-order band does not hold",
                where=where, measured=cm[i], se=cs[i]))
            continue
        allow, asrc = _next_order(cratio[i], b1[i] + hi[i] - lo[i])
        members.append(COUPLED_BAND.equal(
            cm[i], cs[i], 0.5 * (lo[i] + hi[i]), z=z, z_source=zsrc, allowance=0.5 * (hi[i] - lo[i]) + allow,
            allowance_source="half-width of the first-order band (Jensen: |E e| <= E|e| <= sqrt(E|e|^2)) + " + asrc,
            where=where, effect=0.5 * (lo[i] + hi[i]), prediction_text=f"in [{lo[i]:.4g}, {hi[i]:.4g}]"))
    claims = [worst_of(members, every="n")]
    z, zsrc = z_family(1)
    if ok.sum() < MIN_FORM_POINTS:
        claims.append(COUPLED_FORM.not_tested(
            f"{int(ok.sum())} sizes with n*(lam_n)/n <= {FIRST_ORDER_MAX}; comparing two forms needs >= "
            f"{MIN_FORM_POINTS}", prediction_text="the form of the theory's band"))
        return claims
    mid = 0.5 * (lo[ok] + hi[ok])
    form = predicted_form(n[ok], np.log(mid), COUPLED_FORMS)
    claims.append(COUPLED_FORM.forms(n[ok], np.log(cm[ok]), cs[ok] / cm[ok], COUPLED_FORMS, form, z=z,
                                     z_source=zsrc, min_points=MIN_FORM_POINTS, what="log error"))
    return claims


def summary(an: xr.Dataset) -> str:
    """The bias per lam, then the pure-hardmax and coupled errors per n."""
    rows = [f"{'lam':>8}  {'bias ± se':<22} {'predicted':>10} {'exact':>10} {'(d-1)/(2 lam k)':>16} {'n*/n':>8}"]
    for i, lam in enumerate(an["lam"].values):
        mark = "*" if bool(an["bias_fit_mask"].values[i]) else " "
        rows.append(f"{lam:>8.4g}{mark} {an['bias'].values[i]:.4e} ± {an['bias_se'].values[i]:.1e}  "
                    f"{an['theory_bias_finite_n'].values[i]:>10.4e} {an['theory_bias'].values[i]:>10.4e} "
                    f"{an['theory_bias_asymptotic'].values[i]:>16.4e} {an['nstar_over_n'].values[i]:>8.2g}")
    if "bias_slope" in an:
        rows.append(f"bias slope in lam (* = fit window): {float(an['bias_slope']):+.4f} ± {float(an['bias_slope_se']):.4f} "
                    f"(predicted curve {float(an['theory_bias_slope']):+.4f})")
    rows.append(f"{'n':>9} {'pure err':>10} {'exact':>10} {'lam_n':>7} {'coupled err':>12} {'band':>21} "
                f"{'x log n':>8}")
    for i, nn in enumerate(an["n"].values):
        band = f"[{an['theory_coupled_lower'].values[i]:.3e}, {an['theory_coupled_upper'].values[i]:.3e}]"
        rows.append(f"{nn:>9d} {an['pure_err_mean'].values[i]:>10.4e} {an['theory_pure_err'].values[i]:>10.4e} "
                    f"{an['lam_n'].values[i]:>7.2f} {an['coupled_err_mean'].values[i]:>12.4e} {band:>21} "
                    f"{an['coupled_err_x_logn'].values[i]:>8.3f}")
    rows.append(f"pure-hardmax slope {float(an['pure_slope']):+.3f} ± {float(an['pure_slope_se']):.3f} (exact curve "
                f"over the grid {float(an['theory_pure_slope_grid']):+.3f}; asymptote {float(an['theory_pure_slope']):+.3f}); "
                f"coupled error x log n -> {float(an['theory_coupled_x_logn_limit']):.3f} as n -> infinity")
    return "\n".join(rows)


def validate(args) -> None:
    if args.d < 2:
        raise UsageError("--d must be >= 2 (the sphere S^{d-1})")
    if len(args.n) < 3:
        raise UsageError("--n: a rate fit needs at least 3 token counts")
    if min(args.n) < 2:
        raise UsageError("--n: token counts must be >= 2 (log n > 0 for the coupled lam_n)")
    if len(args.lam) < 2:
        raise UsageError("--lam: a bias slope needs at least 2 values")
    if args.reps < 2:
        raise UsageError("--reps: standard errors need at least 2 replicates")
    n_max, d = max(args.n), args.d
    lam_max = max(max(args.lam), args.c * np.log(n_max))
    check_scores(lam_max * args.a_scale * args.radius**2, "--lam / --c x --A-scale x --radius^2")
    check_resources(f"--n up to {n_max} tokens on S^{d - 1}",
                    memory=8.0 * (3 * n_max * d + 4 * args.queries * d + 8 * d * d),
                    work_s=args.reps * sum(args.n) * args.queries * d * (len(args.lam) + 2) / PAIR_RATE)


def parts(args) -> list[Part]:
    return [Part("", sweep=make_sweep(args))]


def main(argv=None) -> int:
    return study_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
