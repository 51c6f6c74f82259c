"""The trained twin of ``python -m studies.icl ode`` (notes icl_regression §5.7): every start of the
reduced ODE is also trained, as the one-layer softmax model on its pattern manifold, by plain
gradient descent with a small step on fresh prompts
(:func:`sim.icl_regression.manifold.manifold_gd`), and the evidence claim
``icl_ode.trained_dynamics`` sets the trained antisymmetric pair against the reduced flow from
the same start.

The step schedule (the GD's time is the sum of its steps, as the flow's): ``GD_STEP`` = 0.01
(the authors' Euler step) up to t = ``GD_SWITCH`` = 20, where the plateau and the fast drop
happen, then ``GD_LATE_STEP`` = 0.05 in the slow drift; the state is recorded every 0.05 up to
t = 20 (the flow's own grid) and every 1 after it. Each replicate sees ``GD_BATCH`` = 32 fresh
prompts per step, each used with its query and the mirrored one.
"""
from __future__ import annotations

import math

import numpy as np

from studies.claims import z_family
from studies.cli import PAIR_RATE, UsageError, check_resources
from theory import icl_regression as th

GD_STEP = 0.01
GD_LATE_STEP = 0.05
GD_SWITCH = 20.0
GD_BATCH = 32
GD_EARLY_LOG = 5  # steps between records up to GD_SWITCH (time 0.05)
GD_LATE_LOG = 20  # after it (time 1)
GD_MIN_TIME = 10.0  # a shorter run cannot reach the plateau exit of the default start (t = 4.8) with room to spare
VALLEY_WINDOW = 0.75  # the valley is read over the last quarter of the GD run
DROP = 0.05  # the plateau is left when the reduced loss is 5% below its start (the ode study's own definition)


def schedule(T: float):
    """``(dts, log_at, times)``: the step sizes of a GD run to time ``T``, the step counts after
    which the state is recorded, and the times of those records (module docstring)."""
    n1 = int(round(min(T, GD_SWITCH) / GD_STEP))
    n2 = int(round(max(T - GD_SWITCH, 0.0) / GD_LATE_STEP))
    dts = np.concatenate([np.full(n1, GD_STEP), np.full(n2, GD_LATE_STEP)])
    log_at = np.unique(np.concatenate([np.arange(0, n1 + 1, GD_EARLY_LOG), n1 + np.arange(0, n2 + 1, GD_LATE_LOG),
                                       [n1, n1 + n2]]))
    times = np.round(np.concatenate([[0.0], np.cumsum(dts)])[log_at], 9)
    return dts, log_at, times


def check(args, heads: int = 4) -> None:
    """The GD options: ``--gd-time`` 0 (no trained twin) or in [10, 1e4]; the work it needs."""
    T = float(args.gd_time)
    if T == 0:
        return
    if not GD_MIN_TIME <= T <= 1e4:
        raise UsageError(f"--gd-time must be 0 (no trained pair) or in [{GD_MIN_TIME:g}, 1e4], got {T:g}")
    dts, _, _ = schedule(T)
    D = args.d + 1
    per_step = args.gd_runs * 2 * GD_BATCH * args.L * D * heads * (D + 3)
    check_resources(f"--gd-time {T:g}: {dts.size} gradient steps of {args.gd_runs} replicates x {2 * GD_BATCH} "
                    f"prompts of length {args.L}", work_s=3.0 * len(("antisymmetric", "random4")) * dts.size
                    * per_step / PAIR_RATE,
                    memory=8.0 * args.gd_runs * 2 * GD_BATCH * args.L * D * 4)


def params(args) -> dict:
    """What the analysis reads back of the GD runs (their schedule is a function of these)."""
    return {"gd_time": float(args.gd_time), "gd_runs": int(args.gd_runs), "gd_batch": GD_BATCH, "gd_step": GD_STEP,
            "gd_late_step": GD_LATE_STEP, "gd_switch": GD_SWITCH}


def run(w0, m0, d, L, sigma2, T, runs, seed) -> dict:
    """The trained twin of one start: ``gd_omega``, ``gd_mu`` (time, rep, 4 heads, zero-padded)
    and ``gd_loss`` (time, rep), the mean batch MSE/2 between records."""
    from sim import icl_regression as sim
    from sim.icl_regression.manifold import manifold_gd

    dts, log_at, _ = schedule(T)
    key = sim.data_key(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, 1)))
    res = manifold_gd(w0, m0, sim.isotropic_task(d, sigma2), key, L=L, dts=dts, log_at=log_at, runs=runs,
                      batch=GD_BATCH)
    pad = np.zeros(res["omega"].shape[:2] + (4 - w0.size,))
    return {"gd_omega": np.concatenate([res["omega"], pad], axis=-1),
            "gd_mu": np.concatenate([res["mu"], pad], axis=-1), "gd_loss": res["loss"]}


def crossing(t, y, level):
    """First time y falls below level (linear interpolation), and the local grid step."""
    below = np.nonzero(y < level)[0]
    if below.size == 0 or below[0] == 0:
        return math.nan, math.nan
    k = int(below[0])
    t0, t1, y0, y1 = t[k - 1], t[k], y[k - 1], y[k]
    return float(t0 + (y0 - level) / (y0 - y1) * (t1 - t0)), float(t1 - t0)


def _pair(om, mu):
    """The positive head first (omega, mu: (..., 2))."""
    if om.reshape(-1, 2)[0, 0] < 0:
        return om[..., ::-1], mu[..., ::-1]
    return om, mu


def theory(ds, i, p, d, L, sigma2):
    """The reduced flow (LSODA) and its explicit Euler with the GD's own steps, from the GD's
    start, at the GD's record times: ``(t, gd, flow, euler)``, each of gd / flow / euler a pair
    ``(omega, mu)`` with the positive head first (gd: (time, rep, 2), the others (time, 2))."""
    t = ds["gd_time"].values
    om, mu = _pair(ds["gd_omega"].values[i, :, :, :2], ds["gd_mu"].values[i, :, :, :2])
    w0, m0 = om[0, 0], mu[0, 0]
    fw, fm, _ = th.integrate_reduced_ode(w0, m0, t, d, L, sigma2, method="LSODA")
    dts, log_at, _ = schedule(float(p["gd_time"]))
    _, ew, em, _ = th.integrate_reduced_euler(w0, m0, dts, log_at, d, L, sigma2)
    return t, (om, mu), (fw, fm), (ew, em)


def _loss(om, mu, d, L, sigma2):
    flat_w, flat_m = om.reshape(-1, om.shape[-1]), mu.reshape(-1, mu.shape[-1])
    out = np.array([th.reduced_loss(a, b, d, L, sigma2) / 2.0 for a, b in zip(flat_w, flat_m)])
    return out.reshape(om.shape[:-1])


def claims(spec, t, gd, flow, euler, d, L, sigma2) -> tuple[dict, list]:
    """The two members of ``trained_dynamics`` and the analysis variables behind them."""
    R = gd[0].shape[1]
    z, zs = z_family(2, dof=R - 1)
    exit_claim, ex = _exit_claim(spec, t, gd, flow, euler, d, L, sigma2, (z, zs))
    left = int(np.sum(np.isfinite(ex["gd_exit_time"][1])))
    valley_claim, va = _valley_claim(spec, t, gd, flow, euler, d, L, sigma2, (z, zs), left)
    return {**ex, **va}, [exit_claim, valley_claim]


def _dilation(flow, level, d, L, sigma2, eps: float = 0.02) -> float:
    """The exact pair's speed over the reduced flow's at the plateau exit: the ratio of the
    x-derivatives (x = mu omega) of the exact risk (notes icl_regression §6.5) and of L̃ on the
    diagonal mu = omega, at the x where L̃ crosses ``level`` (2 ``level`` = the exit's L̃);
    (L - 1)/L as x -> 0 (:func:`theory.icl_regression.exact_plateau_rate`)."""
    c = (1.0 + sigma2) / L
    k = 1.0 + c * d
    target = (1.0 + sigma2) - 2.0 * level  # the decrease of L̃ at the exit
    x = (1.0 - math.sqrt(max(1.0 - k * target, 0.0))) / (2.0 * k)
    w = math.sqrt(x)
    risk = lambda v: th.kernel_risk(v, v, d, L, sigma2, heads=2)  # noqa: E731
    d_exact = (risk(w * (1 + eps)) - risk(w * (1 - eps))) / (2 * w * eps) / (2 * w)
    d_red = -4.0 + 8.0 * x + 4.0 * c * (math.sinh(d * x) + d * x * math.cosh(d * x))
    return d_exact / d_red


def _exit_claim(spec, t, gd, flow, euler, d, L, sigma2, zz):
    """stage=plateau_exit: the replicates' exit times against the flow's."""
    z, zs = zz
    wh = "stage=plateau_exit"
    f_loss, e_loss, g_loss = (_loss(*flow, d, L, sigma2), _loss(*euler, d, L, sigma2), _loss(*gd, d, L, sigma2))
    level = (1.0 - DROP) * f_loss[0]
    t_flow, h = crossing(t, f_loss, level)
    t_eul, _ = crossing(t, e_loss, level)
    t_gd = np.array([crossing(t, g_loss[:, r], level)[0] for r in range(g_loss.shape[1])])
    var = {"gd_exit_time": (("rep",), t_gd), "theory_gd_flow_exit": ((), t_flow), "theory_gd_euler_exit": ((), t_eul)}
    ptxt = f"{t_flow:.4g} (the reduced flow from the same start)"
    if not math.isfinite(t_flow):
        return spec.not_tested(f"the reduced flow does not leave the plateau by t = {t[-1]:g} (--gd-time)", where=wh,
                               prediction_text="the flow's exit"), var
    disc = abs(t_eul - t_flow) if math.isfinite(t_eul) else math.inf
    rate = th.exact_plateau_rate(L)
    model = t_flow * (1.0 / rate - 1.0)
    second = 0.5 * abs(1.0 / _dilation(flow, level, d, L, sigma2) - 1.0 / rate)
    allow = disc + model + second + h * h / 2
    src = (f"declared: discretisation {disc:.3g} (explicit Euler of the reduced ODE with the GD's steps against "
           f"LSODA) + the reduced loss's early-rate error {model:.3g} (t_exit/(L-1): the exact pair's rate is "
           f"(L-1)/L) + its next order at the exit {second:.2g} (notes icl_regression §5.7) + interpolation on the "
           f"record grid (2 x h^2/4 = {h * h / 2:.2g})")
    if not np.all(np.isfinite(t_gd)):
        late = t_flow + allow < t[-1]
        if not late:
            return spec.not_tested(f"the GD run ends (t = {t[-1]:g}) before the plateau exit could be told from the "
                                   f"flow's {t_flow:.3g} within {allow:.3g}", where=wh, prediction=t_flow,
                                   prediction_text=ptxt), var
        return spec.decided(False, kind="equal", test="|measured - predicted| <= tolerance", tolerance=allow,
                            tolerance_source=src, where=wh, prediction=t_flow, prediction_text=ptxt,
                            measured=float(t[-1]), reason=f"{int(np.sum(~np.isfinite(t_gd)))} of {t_gd.size} trained "
                                                          f"pairs never left the plateau by t = {t[-1]:g}"), var
    return spec.equal(float(t_gd.mean()), float(t_gd.std(ddof=1) / math.sqrt(t_gd.size)), t_flow, z=z, z_source=zs,
                      allowance=allow, allowance_source=src, where=wh, prediction_text=ptxt, effect=t_flow), var


def _offset(om, mu, d, L, sigma2):
    """2 mu omega minus the reduced valley at omega (positive head)."""
    return 2 * om[..., 0] * mu[..., 0] - th.valley_eta(om[..., 0], d, L, sigma2)


def _valley_claim(spec, t, gd, flow, euler, d, L, sigma2, zz, left):
    """stage=valley: over the last quarter of the run, the trained pair's offset from the reduced
    valley against the flow's (not tested unless all ``left`` of the replicates left the plateau)."""
    z, zs = zz
    wh = "stage=valley"
    win = t >= VALLEY_WINDOW * t[-1]
    om, mu = gd
    peak = max(float(t[int(np.argmax(flow[0][:, 0]))]), *(float(t[int(np.argmax(om[:, r, 0]))])
                                                         for r in range(om.shape[1])))
    g_off = _offset(om, mu, d, L, sigma2)[win].mean(axis=0)  # (rep,)
    f_off = float(_offset(*flow, d, L, sigma2)[win].mean())
    var = {"gd_valley_offset": (("rep",), g_off), "theory_gd_flow_valley_offset": ((), f_off)}
    ptxt = f"{f_off:+.3g} (the reduced flow's 2 mu omega - valley, t >= {t[win][0]:g})"
    if left < om.shape[1]:
        return spec.not_tested(f"{om.shape[1] - left} of {om.shape[1]} trained pairs never left the plateau: there is "
                               "no drift stage to compare", where=wh, prediction=f_off, prediction_text=ptxt), var
    if win.sum() < 4 or peak >= t[win][0]:
        return spec.not_tested(f"the GD run ends (t = {t[-1]:g}) before the drift stage: omega peaks at "
                               f"t = {peak:.3g}, not before the last quarter (--gd-time)", where=wh, prediction=f_off,
                               prediction_text=ptxt), var
    disc = abs(float(_offset(*euler, d, L, sigma2)[win].mean()) - f_off)
    w_ends = om[win][[0, -1], :, 0].mean(axis=1)
    model = max(abs(th.exact_pair_valley_eta(w, d, L, sigma2) - float(th.valley_eta(w, d, L, sigma2)))
                for w in w_ends)
    step = float(th.valley_eta(float(om[win][-1, :, 0].mean()), d, L, sigma2))
    var["theory_gd_valley_model_error"] = ((), model)
    src = (f"declared: discretisation {disc:.2g} (explicit Euler of the reduced ODE with the GD's steps against LSODA) "
           f"+ the reduced valley's error {model:.3g} at the trained omega (against the exact pair's valley, notes "
           "icl_regression §5.7, §6.5)")
    return spec.equal(float(g_off.mean()), float(g_off.std(ddof=1) / math.sqrt(g_off.size)), f_off, z=z,
                      z_source=zs, allowance=disc + model, allowance_source=src, where=wh, prediction_text=ptxt,
                      effect=step), var
