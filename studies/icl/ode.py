"""``python -m studies.icl ode``: the reduced (omega, mu) gradient flow and a softmax pair trained
by gradient descent from the same start (notes icl_regression §5, §5.7, §11 figure 9, §13.4;
sweep S5).

Two initialisations: ``antisymmetric`` (H = 2 from omega = mu = (a, -a), at the run's sigma2)
and ``random4`` (H = 4, omega, mu ~ N(0, 0.1^2), at ``--random-sigma2``). Each is integrated
numerically (scipy, or the authors' Euler) and, with ``--gd-time T > 0``, also *trained*: the
one-layer softmax model on its pattern manifold (KQ = omega_h I, OV = mu_h e_D) by plain
gradient descent with a small step on fresh prompts, ``--gd-runs`` independent replicates
(:func:`sim.icl_regression.manifold.manifold_gd`, notes icl_regression §5.7).

Evidence (the trained model against the theory):

* ``trained_dynamics``: the trained pair follows the reduced flow from the same start -- it
  leaves the plateau when the flow does (``stage=plateau_exit``) and sits where the flow sits
  relative to the reduced valley in the drift stage (``stage=valley``), each within the
  discretisation error of the GD step (explicit Euler of the same ODE against the adaptive
  integrator), the reduced loss's declared error (its early rate (L-1)/L; its valley against
  the exact pair's of §6.5) and z standard errors over the replicates.

Consistency (the reduced ODE's numerical solution against its own closed forms, notes
icl_regression §5; no ingredient outside the theory enters, so nothing outside it can break
them):

* ``plateau_exit``: the loss leaves its plateau (falls 5% below its start) at the time the
  expansion of the flow predicts, :func:`theory.icl_regression.plateau_exit_time` (second
  order; tolerance: the declared size of the next order plus the time grid's interpolation
  error);
* ``drop``: by the end the loss has dropped from the plateau (1+sigma2)/2 to the floor
  sigma2/2 + dc/(2(1 + dc)) (:func:`~theory.icl_regression.multihead_loss_limit`, c =
  (1+sigma2)/L), up to the valley's remaining gap at the reached omega (tolerance: 1% of the
  plateau-floor gap, notes icl_regression §13.4);
* ``drift_limit``: 2 mu omega at the end is the valley's 1/(1 + c sinh(d omega^2)/omega^2)
  at the reached omega (-> 1/(1 + d(1+sigma2)/L)); 1% (notes icl_regression §13.4);
* ``drift_direction``: after the drop omega decreases and mu grows (the profiled loss
  increases with omega); "not tested" when the run ends before the drift stage;
* ``symmetry``: mu_1 = -mu_2, omega_1 = -omega_2 are preserved (exact symmetry of the flow);
* ``random_zero_sum``: from the random 4-head start the value weights end zero-sum (the floor is
  reached only by zero-sum heads; 0.05, notes icl_regression §13.5).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

from studies.claims import CONSISTENCY, ClaimSpec
from studies.cli import Part, UsageError, finite_float, float_type, nonnegative_float, positive_int, run_params
from studies.icl import _common as C
from studies.icl import _ode_gd as G
from studies.sweep import Sweep, cell_seed, str_coord
from theory import icl_regression as th

STUDY = "icl_ode"
DESCRIPTION = ("The reduced (omega, mu) gradient flow against its closed-form stages (plateau, drop, drift), and "
               "against a softmax pair trained by gradient descent from the same start.")
EXAMPLES = """\
examples:
  python -m studies.icl ode                         # reduced gradient flow to t = 1e4 (seconds)
  python -m studies.icl ode --t-max 1e4 --method euler
  python -m studies.icl ode --gd-time 0              # the reduced flow only, no trained pair
"""
INITS = ("antisymmetric", "random4")
DEFAULTS = {"d": 5, "L": 40, "sigma2": 0.1, "t_max": 1e4, "init": 1e-3, "method": "LSODA", "random_sigma2": 0.01,
            "gd_time": 100.0, "gd_runs": 8}
QUICK = {"t_max": 1e3, "gd_time": 40.0}
PRESETS: dict = {}
DROP = 0.05  # the plateau is left when the loss is 5% below its start

S = C.SOURCE
_WHY = ("the reduced ODE's numerical solution against a closed form of the same ODE (notes icl_regression §5): "
        "both sides are the theory, so no ingredient outside it (data, a model, a trainer) enters; ")
EXIT = ClaimSpec("icl_ode.plateau_exit", f"{S}: stage 1, the plateau (notes icl_regression §5.5, §13.4)",
                 "The loss leaves the plateau when the linearised flow from the small start says it does.",
                 role=CONSISTENCY, why=_WHY + "the flow's exit against its own second-order expansion")
DROP_C = ClaimSpec("icl_ode.drop", f"{S}: stage 2, the fast drop (notes icl_regression §5.4, §5.6, §13.4)",
                   "The loss drops from the plateau (1+sigma2)/2 to the floor sigma2/2 + dc/(2(1+dc)), "
                   "up to the valley's remaining gap at the reached omega.",
                   role=CONSISTENCY, why=_WHY + "the flow's end loss against the profiled loss of the same L̃")
LIMIT = ClaimSpec("icl_ode.drift_limit",
                  f"{S}: stage 3, 2 mu omega -> 1/(1 + d(1+sigma2)/L) (notes icl_regression §5.6, §13.4)",
                  "Along the slow drift 2 mu omega sits on the valley 1/(1 + c sinh(d omega^2)/omega^2) of the "
                  "reached omega, which tends to the debiased-GD optimal step.",
                  role=CONSISTENCY, why=_WHY + "the flow's 2 mu omega against the valley of the same L̃")
DIRECTION = ClaimSpec("icl_ode.drift_direction", f"{S}: stage 3, the slow drift (notes icl_regression §5.6)",
                      "After the drop omega decreases and mu grows.",
                      role=CONSISTENCY, why=_WHY + "the flow's monotone drift against the sign of the profile's slope")
SYMMETRY = ClaimSpec("icl_ode.symmetry", f"{S}: antisymmetric heads (notes icl_regression §5.2, §13.4)",
                     "mu_1 = -mu_2 and omega_1 = -omega_2 are preserved by the flow.",
                     role=CONSISTENCY, why="an exact symmetry of the ODE's right-hand side (notes icl_regression "
                                           "§5.2): it checks the integrator's rounding, not the theory against data")
RAND_ZS = ClaimSpec("icl_ode.random_zero_sum",
                    f"{S}: zero-sum heads from a random start (notes icl_regression §5.4, §13.5)",
                    "From a random 4-head start the value weights end zero-sum.",
                    role=CONSISTENCY, why=_WHY + "the flow's end state against the floor's zero-sum consequence")
TRAINED = ClaimSpec("icl_ode.trained_dynamics",
                    f"{S}: the reduced dynamics describe training (notes icl_regression §5.5-5.7, §13.4)",
                    "A softmax pair trained from the same start by plain gradient descent with a small step on fresh "
                    "prompts leaves the plateau when the reduced flow does and drifts along the valley as it does.")


def add_arguments(p) -> None:
    C.data_args(p, DEFAULTS)
    p.add_argument("--t-max", type=float_type(10.0, 1e7), default=None, help="end time (default 1e4; --quick 1e3)")
    p.add_argument("--init", type=finite_float, default=None,
                   help=f"antisymmetric start omega = mu = (+a, -a) (default {DEFAULTS['init']:g})")
    p.add_argument("--method", choices=("LSODA", "DOP853", "RK45", "euler"), default=None,
                   help="integrator: adaptive LSODA (default), DOP853, RK45, or the authors' Euler with dt = 0.01 "
                        "(slow)")
    p.add_argument("--random-sigma2", type=nonnegative_float, default=None,
                   help=f"noise variance of the second, random-init 4-head experiment (default "
                        f"{DEFAULTS['random_sigma2']})")
    p.add_argument("--gd-time", type=float_type(0.0, 1e4), default=None,
                   help=f"time to which each start is also trained by plain gradient descent on fresh prompts "
                        f"(steps {G.GD_STEP:g} to t = {G.GD_SWITCH:g}, then {G.GD_LATE_STEP:g}; at most --t-max); "
                        "0: no trained pair "
                        f"(default {DEFAULTS['gd_time']:g}; --quick {QUICK['gd_time']:g})")
    p.add_argument("--gd-runs", type=positive_int, default=None,
                   help=f"independent trained replicates per start (default {DEFAULTS['gd_runs']})")


def main(argv=None) -> int:
    return C.sub_main(STUDY, argv)


EXP_SCORE_MAX = 30.0
"""Largest exponent d omega_h omega_k the ODE starts from. A(omega) holds exp(d omega omega^T), so
the flow's stiffness (its fastest rate over its slowest) is about e^(d omega^2): e^30 = 1e13
keeps it more than two orders inside float64's 1/eps = 4.5e15, where the implicit integrator's
Newton steps stop converging (measured on the random 4-head start: d omega^2 = 31 integrates in
seconds, 47 never finishes). Past the start the flow keeps d omega^2 of order 1 (the valley's
omega ~ 1/sqrt(d))."""
RESOLVE = 1e10
"""Largest ratio of the two scales of the pair's A(omega) -- omega^2 and c = (1+sigma2)/L -- for
which mu* = A^-1 omega, the valley and the profiled loss keep six digits in float64."""


def validate(args) -> None:
    if not (math.isfinite(args.t_max) and 10 <= args.t_max <= 1e7):
        raise UsageError("--t-max must be in [10, 1e7]")
    if not (math.isfinite(args.init) and 0 < abs(args.init) < 1):
        raise UsageError("--init must be a small non-zero number")
    if args.method == "euler" and args.t_max > 1e5:
        raise UsageError("--method euler: t-max above 1e5 would take hours (1e7 Euler steps); use DOP853")
    if not (math.isfinite(args.random_sigma2) and args.random_sigma2 >= 0):
        raise UsageError("--random-sigma2 must be >= 0")
    C.check_variance(1.0 + args.sigma2, "--sigma2")
    C.check_variance(1.0 + args.random_sigma2, "--random-sigma2")
    if not 2 <= args.gd_runs <= 256:
        raise UsageError("--gd-runs must be in 2..256 (a standard error needs two replicates)")

    if args.L < 2:
        raise UsageError("--L: prompts need at least 2 examples")
    for k, init in enumerate(INITS):
        w0, _ = _start(init, args.init, cell_seed(args.seed, (k,)))
        score = args.d * float(np.max(w0**2))
        if score > EXP_SCORE_MAX:
            raise UsageError(f"--d {args.d}: exp(d omega omega^T) of the reduced ODE leaves float64 at the {init} "
                             f"start (d x max omega_0^2 = {score:.3g} > {EXP_SCORE_MAX:g}); use a smaller --d"
                             + (" or --init" if init == "antisymmetric" else ""))
    _check_resolved(args.init, args.d, args.L, args.sigma2)
    _check_plateau(args.init, args.d, args.L, args.sigma2)
    args.gd_time = min(args.gd_time, args.t_max)  # the trained twin runs at most as long as the flow
    G.check(args)


def _check_plateau(a0, d, L, sigma2) -> None:
    """The plateau-exit prediction expands the flow around a small start: the start must lie on
    the plateau (a positive first-order exit time)."""
    try:
        t1 = th.plateau_exit_time(a0, d, L, sigma2, drop=DROP)[0]
    except (ValueError, ZeroDivisionError, OverflowError):
        t1 = math.nan
    if not t1 > 0:
        raise UsageError(f"--init {a0:g}: the antisymmetric start is not on the plateau (its loss is already near "
                         f"or below {1 - DROP:.0%} of the plateau's), so the stages cannot be told apart; use a "
                         "smaller |--init| (the plateau needs omega_0^2 well below 1/(1 + d(1+sigma2)/L))")


def _check_resolved(a0, d, L, sigma2) -> None:
    """The pair's A(omega) at the start (omega = (a, -a)) and along the flow (omega^2 up to 1)
    must keep its two scales within :data:`RESOLVE` of each other."""
    c = (1.0 + sigma2) / L
    if c * RESOLVE < 1.0:
        raise UsageError(f"--L {L}: the fluctuation term (1 + sigma2)/L = {c:.3g} of A(omega) is below what float64 "
                         f"resolves next to omega omega^T (omega^2 up to 1: ratio > {RESOLVE:g}); use --L <= "
                         f"{math.floor((1.0 + sigma2) * RESOLVE):.3g}")
    ratio = c / (a0 * a0 * (1.0 + c * d))
    if ratio > RESOLVE:
        low = math.sqrt(c / (RESOLVE * (1.0 + c * d)))
        raise UsageError(f"--init {a0:g}: the start omega = mu = (a, -a) is below what float64 resolves next to the "
                         f"fluctuation term (1 + sigma2)/L of A(omega) (ratio {ratio:.3g} > {RESOLVE:g}: mu* = "
                         f"A^-1 omega would be singular); use |--init| >= {low:.2g}")


def _start(init: str, a0: float, seed):
    """(omega_0, mu_0) of an initialisation: ``antisymmetric`` (a, -a) for both, ``random4`` four
    heads drawn N(0, 0.1^2) from the cell's seed."""
    if init == "antisymmetric":
        return np.array([a0, -a0]), np.array([a0, -a0])
    rng = np.random.Generator(np.random.Philox(seed))
    w0 = rng.normal(0.0, 0.1, 4)
    return w0, rng.normal(0.0, 0.1, 4)


def ode_times(t_max):
    """The time grid: every 0.05 up to 20 (the plateau and the drop), then 399 geometric steps
    to ``t_max``; a ``t_max`` below 20 ends the fine grid there."""
    early = np.arange(0.0, min(20.0, t_max) + 1e-9, 0.05)
    if t_max <= 20.0:
        return early if early[-1] >= t_max - 1e-9 else np.append(early, t_max)
    late = np.geomspace(20.0, t_max, 400)[1:]
    return np.concatenate([early, late])


def _cell(cell, *, d, L, sigma2, sigma2_random, a0, t, method, gd_time, gd_runs):
    """One start: its reduced flow and, with ``gd_time`` > 0, its trained twin (module docstring)."""
    init = INITS[int(cell.index[0])]
    w0, m0 = _start(init, a0, cell.seed)
    s2 = sigma2 if init == "antisymmetric" else sigma2_random
    om, mu, loss = th.integrate_reduced_ode(w0, m0, t, d, L, s2, method=method)
    H = w0.size
    pad = lambda a: np.concatenate([a, np.zeros((a.shape[0], 4 - H))], axis=1)  # noqa: E731
    out = {"omega": pad(om), "mu": pad(mu), "loss": loss}
    if gd_time > 0:
        out.update(G.run(w0, m0, d, L, s2, gd_time, gd_runs, cell.seed))
    return out


def make_sweep(args) -> Sweep:
    t = ode_times(args.t_max)
    params = {"d": args.d, "L": args.L, "sigma2": args.sigma2, "sigma2_random": args.random_sigma2,
              "init": args.init, "t_max": args.t_max, "method": args.method, "times": len(t), **G.params(args)}
    variables = {"omega": ("init", "time", "head"), "mu": ("init", "time", "head"), "loss": ("init", "time")}
    coords = {"time": t, "head": np.arange(4)}
    if args.gd_time > 0:
        variables.update({"gd_omega": ("init", "gd_time", "rep", "head"), "gd_mu": ("init", "gd_time", "rep", "head"),
                          "gd_loss": ("init", "gd_time", "rep")})
        coords.update({"gd_time": G.schedule(args.gd_time)[2], "rep": np.arange(args.gd_runs)})
    return Sweep(
        study=STUDY, cell_dims={"init": np.arange(len(INITS))},  # (Sweep cells need numeric dims)
        variables=variables, coords=coords, params=params,
        run_cell=functools.partial(_cell, d=args.d, L=args.L, sigma2=args.sigma2,
                                   sigma2_random=args.random_sigma2, a0=args.init, t=t, method=args.method,
                                   gd_time=args.gd_time, gd_runs=args.gd_runs),
        root_seed=args.seed,
        attrs={"substudy": "ode", "figure_kind": "ode", "device": "cpu", "init_names": list(INITS),
               "convention": "gradient flow on L̃/2 (the authors' Euler step 0.01 = time 0.01); loss = L̃/2; "
                             "antisymmetric: H = 2 from omega = mu = (+a, -a) at sigma2; random4: H = 4, "
                             "omega, mu ~ N(0, 0.1^2) at sigma2_random; heads >= H are zero padding",
               "integrator": args.method},
        var_attrs={"loss": {"long_name": "L̃/2"},
                   "gd_omega": {"long_name": "omega_h of the trained twin (plain GD on the pattern manifold, fresh "
                                             "prompts; notes icl_regression §5.7)"},
                   "gd_mu": {"long_name": "mu_h of the trained twin"},
                   "gd_loss": {"long_name": "mean batch MSE/2 of the trained twin between records"}})


def parts(args) -> list[Part]:
    return [Part("", sweep=make_sweep(args))]


def analyze(ds):
    """The stages of the stored flow against the closed forms, and the claims (d, L, sigma2 and
    the start a are the run's stored parameters)."""
    p = run_params(ds)
    d, L, sigma2, a0 = int(p["d"]), int(p["L"]), float(p["sigma2"]), float(p["init"])
    out = _flow_variables(ds, d, L, sigma2, a0)
    return out, _claims(ds, out, d, L, sigma2, a0) + _trained_claim(ds, out, p, d, L, sigma2)


def _trained_claim(ds, out, p, d, L, sigma2):
    """trained_dynamics (both members) and the variables behind it; not tested without a trained
    twin. The random start's twin is summarised (its zero-sum ratio), not claimed."""
    if "gd_omega" not in ds:
        return [TRAINED.not_tested("no trained pair in this run (--gd-time 0)", where="stage=plateau_exit",
                                   prediction_text="the reduced flow's exit")]
    i = INITS.index("antisymmetric")
    t, gd, flow, euler = G.theory(ds, i, p, d, L, sigma2)
    var, members = G.claims(TRAINED, t, gd, flow, euler, d, L, sigma2)
    out.coords["gd_time"] = ds["gd_time"]
    out.coords["rep"] = ds["rep"]
    for k, v in var.items():
        out[k] = v
    out["gd_omega_end"] = ((), float(gd[0][-1, :, 0].mean()), {"long_name": "omega_1 of the trained pairs at the end"})
    out["gd_two_mu_omega"] = (("gd_time", "rep"), 2 * gd[0][..., 0] * gd[1][..., 0],
                              {"long_name": "2 mu_1 omega_1 of the trained antisymmetric pairs"})
    out["theory_gd_flow_two_mu_omega"] = (("gd_time",), 2 * flow[0][:, 0] * flow[1][:, 0],
                                          {"long_name": "2 mu_1 omega_1 of the reduced flow at the GD's times"})
    out["theory_gd_flow_omega"] = (("gd_time",), flow[0][:, 0], {"long_name": "omega_1 of the reduced flow"})
    out["theory_gd_euler_omega"] = (("gd_time",), euler[0][:, 0],
                                    {"long_name": "omega_1 of the reduced ODE by Euler with the GD's steps"})
    if "random4" in INITS and ds.sizes["init"] > 1:
        mu4 = ds["gd_mu"].values[INITS.index("random4"), -1]  # (rep, head)
        out["gd_random4_zero_sum_ratio"] = (("rep",), np.abs(mu4.sum(-1)) / np.abs(mu4).sum(-1))
    return members


def _pair(ds):
    """omega, mu (time, 2) and the loss of the antisymmetric pair, its positive head first (a
    negative --init starts the same flow with the heads' roles swapped)."""
    i = INITS.index("antisymmetric")
    om, mu = ds["omega"].values[i, :, :2], ds["mu"].values[i, :, :2]
    if om[0, 0] < 0:
        om, mu = om[:, ::-1], mu[:, ::-1]
    return om, mu, ds["loss"].values[i]


def _flow_variables(ds, d, L, sigma2, a0) -> xr.Dataset:
    """2 mu omega, the valley and its limit, the loss plateau and floor, the predicted plateau
    exit, the stage ends and the antisymmetry error of the pair."""
    t = ds["time"].values
    om, mu, loss = _pair(ds)
    out = xr.Dataset(coords={"init": ds["init"], "time": ds["time"]})
    out["init_name"] = (("init",), str_coord(INITS[k] for k in ds["init"].values))
    out["two_mu_omega"] = (("time",), 2 * mu[:, 0] * om[:, 0], {"long_name": "2 mu_1 omega_1 (antisymmetric pair)"})
    c = (1.0 + sigma2) / L
    out["theory_two_mu_omega_limit"] = ((), 1.0 / (1.0 + d * c),
                                        {"long_name": "1/(1 + d(1+sigma2)/L) = the DGD optimal step"})
    out["theory_loss_limit"] = ((), th.multihead_loss_limit(d, L, sigma2) / 2,
                                {"long_name": "the floor of L̃/2 over all H: sigma2/2 + dc/(2(1+dc))"})
    out["theory_loss_plateau"] = ((), (1.0 + sigma2) / 2)
    out["mu_star"] = (("time",), np.array([th.mu_star(w, d, L, sigma2)[0] for w in om]),
                      {"long_name": "mu*(omega(t))_1 = (A^-1 omega)_1"})
    out["theory_valley_two_mu_omega"] = (("time",), th.valley_eta(om[:, 0], d, L, sigma2),
                                         {"long_name": "2 mu* omega on the valley at omega(t)"})
    out["theory_valley_loss"] = (("time",), th.two_head_profiled_loss(om[:, 0], d, L, sigma2) / 2,
                                 {"long_name": "profiled L̃/2 of the pair at omega(t)"})
    t_exit, _ = G.crossing(t, loss, (1.0 - DROP) * loss[0])
    t1, t2, _ = th.plateau_exit_time(a0, d, L, sigma2, drop=DROP)
    out["theory_plateau_exit"] = ((), t2, {"long_name": "second-order prediction of the plateau exit"})
    out["theory_plateau_exit_first_order"] = ((), t1)
    out["stage1_end"] = ((), t_exit if math.isfinite(t_exit) else float(t[-1]),
                         {"long_name": f"first time the loss is {DROP:.0%} below its start (interpolated)"})
    out["stage2_end"] = ((), float(t[int(np.argmax(om[:, 0]))]),
                         {"long_name": "time of the peak of omega_1 (fast drop ends)"})
    iT = len(t) - 1
    out["omega_end"] = ((), float(om[iT, 0]))
    out["mu_end"] = ((), float(mu[iT, 0]))
    out["time_end"] = ((), float(t[iT]))
    asym = max(np.abs(mu.sum(1)).max() / np.abs(mu).max(), np.abs(om.sum(1)).max() / np.abs(om).max())
    out["antisymmetry_error"] = ((), float(asym), {"long_name": "max |x_1 + x_2| / max |x| over time, x = mu, omega"})
    return out


def _drift_stage(t, om) -> str:
    """"" when the run ends in the drift stage (omega peaked well before the end), else why not."""
    iT = len(t) - 1
    ipk = int(np.argmax(om[:, 0]))
    if ipk < iT - 5 and t[iT] > 2 * t[ipk]:
        return ""
    return f"the run ends (t = {t[iT]:g}) before the drift stage: omega peaks at t = {t[ipk]:g} (--t-max)"


def _claims(ds, out, d, L, sigma2, a0) -> list:
    t = ds["time"].values
    om, mu, loss = _pair(ds)
    iT = len(t) - 1
    claims = [_exit_claim(t, loss, d, L, sigma2, a0)]
    w_end = float(om[iT, 0])
    plateau, floor = float(out["theory_loss_plateau"]), float(out["theory_loss_limit"])
    valley_loss = float(th.two_head_profiled_loss(w_end, d, L, sigma2)) / 2
    v_eta = float(th.valley_eta(w_end, d, L, sigma2))
    limit = float(out["theory_two_mu_omega_limit"])
    dtxt = f"floor {floor:.4g} + valley gap {valley_loss - floor:.3g} at omega {w_end:.3g} (plateau {plateau:.4g})"
    ltxt = f"{v_eta:.4g} (valley at omega {w_end:.3g}; limit {limit:.4g})"
    early = _drift_stage(t, om)
    if early:  # the drop and the valley are statements about the drift stage
        claims += [DROP_C.not_tested(early, prediction=valley_loss, prediction_text=dtxt),
                   LIMIT.not_tested(early, prediction=v_eta, prediction_text=ltxt)]
    else:
        claims.append(DROP_C.at_most(float(loss[iT]), math.nan, valley_loss, z=0.0, z_source="",
                                     allowance=0.01 * (plateau - floor),
                                     allowance_source="1% of the plateau-floor gap (notes icl_regression §13.4: the 1% "
                                                      "precision of the drift stage)", prediction_text=dtxt))
        claims.append(LIMIT.equal(float(out["two_mu_omega"].values[iT]), math.nan, v_eta, z=0.0, z_source="",
                                  allowance=0.01 * v_eta, allowance_source=C.spec("1% (relative)", "§13.4"),
                                  prediction_text=ltxt))
    claims.append(_direction_claim(t, om, mu))
    claims.append(SYMMETRY.at_most(float(out["antisymmetry_error"]), math.nan, 0.0, z=0.0, z_source="",
                                   allowance=1e-12,
                                   allowance_source="exact symmetry of the flow; 1e-12 for floating-point rounding",
                                   prediction_text="0 (max |x_1 + x_2| / max |x|)"))
    if "random4" in INITS and ds.sizes["init"] > 1:
        claims.append(_random_claim(ds, out, t))
    return claims


def _random_claim(ds, out, t):
    """random_zero_sum, tested once the random start's zero-sum ratio has stopped moving at its
    tolerance over the last quarter of the (log-spaced) time grid."""
    mu4 = ds["mu"].values[INITS.index("random4")]  # (time, head)
    ratio = np.abs(mu4.sum(-1)) / np.maximum(np.abs(mu4).sum(-1), 1e-300)
    out["random4_zero_sum_ratio"] = ((), float(ratio[-1]))
    k = max(4, t.size // 4)
    moved = float(np.ptp(ratio[-k:]))
    ptxt = "0 (|sum mu| / sum |mu| at the end)"
    if moved > C.ZERO_SUM_FRAC:
        return RAND_ZS.not_tested(f"the random start's flow has not settled: its zero-sum ratio still moved by "
                                  f"{moved:.3g} over t in [{t[-k]:.3g}, {t[-1]:g}] (tolerance {C.ZERO_SUM_FRAC}; "
                                  "--t-max)", where="init=random4", prediction=0.0, prediction_text=ptxt)
    return RAND_ZS.at_most(float(ratio[-1]), math.nan, 0.0, z=0.0, z_source="", allowance=C.ZERO_SUM_FRAC,
                           allowance_source=C.spec(C.ZERO_SUM_FRAC, "§13.5"), where="init=random4",
                           prediction_text=ptxt)


def _exit_claim(t, loss, d, L, sigma2, a0):
    """plateau_exit: the interpolated exit time against the second-order prediction."""
    t_exit, h = G.crossing(t, loss, (1.0 - DROP) * loss[0])
    t1, t2, rem = th.plateau_exit_time(a0, d, L, sigma2, drop=DROP)
    if not math.isfinite(t_exit):
        return EXIT.not_tested(f"the loss never fell {DROP:.0%} below its start by t = {t[-1]:g}",
                               prediction=t2, prediction_text=f"{t2:.4g} (second order)")
    grid_err = h * h / 4
    return EXIT.equal(t_exit, math.nan, t2, z=0.0, z_source="", allowance=rem + grid_err,
                      allowance_source=f"declared: the next order of the plateau expansion ({rem:.2g}) + "
                                       f"linear interpolation on the time grid (h^2/4 = {grid_err:.2g})",
                      prediction_text=f"{t2:.4g} (second order; first order {t1:.4g})")


def _direction_claim(t, om, mu):
    """drift_direction: after the peak of omega, omega falls and mu grows."""
    iT = len(t) - 1
    ipk = int(np.argmax(om[:, 0]))
    early = _drift_stage(t, om)
    if early:
        return DIRECTION.not_tested(early, prediction_text="omega falls, mu grows")
    ok = bool(om[iT, 0] < om[ipk, 0] and mu[iT, 0] >= mu[:, 0].max() - 1e-12)
    return DIRECTION.decided(ok, test="omega(t_end) < max omega and mu(t_end) = max mu",
                             tolerance_source="exact monotone condition (1e-12: rounding)",
                             prediction_text="omega falls, mu grows", measured=float(om[iT, 0] / om[ipk, 0]),
                             reason="" if ok else "omega or mu moved the other way after the drop")


def summary(a):
    rows = [
        f"stages: plateau until t ≈ {float(a['stage1_end']):.3f} (predicted {float(a['theory_plateau_exit']):.3f}), "
        f"fast drop until t ≈ {float(a['stage2_end']):.2f}, then slow drift",
        f"at t = {float(a['time_end']):g}: omega = {float(a['omega_end']):.4f}, mu = {float(a['mu_end']):.4f}, "
        f"2 mu omega = {float(a['two_mu_omega'][-1]):.4f} (valley {float(a['theory_valley_two_mu_omega'][-1]):.4f}, "
        f"limit {float(a['theory_two_mu_omega_limit']):.4f}); loss {float(a['theory_valley_loss'][-1]):.4f} on the "
        f"valley, floor {float(a['theory_loss_limit']):.4f}; antisymmetry error {float(a['antisymmetry_error']):.1e}"]
    if "gd_exit_time" in a:
        ex, off = a["gd_exit_time"].values, a["gd_valley_offset"].values
        left = ex[np.isfinite(ex)]
        exit_txt = (f"{left.mean():.3f} ± {left.std(ddof=1) / np.sqrt(left.size):.3f}" if left.size > 1 else
                    f"reached by {left.size} of {ex.size}")
        rows.append(f"trained pair (plain GD, {ex.size} replicates to t = {float(a['gd_time'][-1]):g}): plateau exit "
                    f"{exit_txt} (flow "
                    f"{float(a['theory_gd_flow_exit']):.3f}, its Euler {float(a['theory_gd_euler_exit']):.3f}); "
                    f"2 mu omega - valley {off.mean():+.4f} ± {off.std(ddof=1) / np.sqrt(off.size):.4f} (flow "
                    f"{float(a['theory_gd_flow_valley_offset']):+.4f}); omega at the end "
                    f"{float(a['gd_omega_end']):.4f} (flow {float(a['theory_gd_flow_omega'][-1]):.4f})")
    if "gd_random4_zero_sum_ratio" in a:
        rows.append(f"trained random 4-head start: |sum mu| / sum |mu| = "
                    f"{float(a['gd_random4_zero_sum_ratio'].mean()):.3f} at t = {float(a['gd_time'][-1]):g}")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    sys.exit(main())
