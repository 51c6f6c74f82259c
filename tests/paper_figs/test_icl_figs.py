"""paper_figs/icl.py on small synthetic stores (no training): every figure kind renders, with
shapes the quick runs do not produce (H = 1, 4, 8; several seeds), and errors are clean."""
import json

import numpy as np
import pytest
import xarray as xr

from paper_figs import icl as figs
from studies.icl import estimators, length, multitask, noniso, ode, train
from studies.sweep import write_analysis
from theory import icl_regression as th


def _write(path, raw, analysis_fn, **attrs):
    from studies.claims import to_dataset

    layout = {"variables": {v: list(raw[v].dims) for v in raw.data_vars}, "cell_dims": []}  # raw, as a run writes
    raw.attrs.update({"params_json": json.dumps(attrs.pop("params", {})), "layout_json": json.dumps(layout), **attrs})
    raw.to_zarr(str(path), mode="w", consolidated=False)
    analysis, claims = analysis_fn(raw)
    write_analysis(path, analysis.merge(to_dataset(claims)))
    return path


def _pattern_weights(rng, Hs, S, T, d, N=1):
    Hm, D = max(Hs), d + N
    W = 0.01 * rng.standard_normal((len(Hs), S, T, Hm, D, D))
    U = 0.01 * rng.standard_normal((len(Hs), S, T, Hm, D, N))
    for i, H in enumerate(Hs):
        for h in range(H):
            sign = 1 if h % 2 == 0 else -1
            grow = np.linspace(0.1, 1.0, T)[None, :, None, None]
            W[i, :, :, h, :d, :d] += sign * 0.14 * grow * np.eye(d)
            for n in range(N):
                U[i, :, :, h, d + n, n] += sign * 3.0 / max(1, H // 2) * grow[..., 0, 0]
        W[i, :, :, H:] = 0
        U[i, :, :, H:] = 0
    return W, U


def _train_raw(rng, Hs=(1, 4, 8), S=2, T=6, d=5, N=1, extra=None):
    W, U = _pattern_weights(rng, list(Hs), S, T, d, N)
    grid = {"H": np.array(Hs), "seed": np.arange(S)}
    if extra:
        grid = {**extra, **grid}
        W = np.broadcast_to(W, tuple(len(v) for v in extra.values()) + W.shape).copy()
        U = np.broadcast_to(U, tuple(len(v) for v in extra.values()) + U.shape).copy()
    gd = list(grid)
    shape = tuple(len(v) for v in grid.values())
    nh = np.broadcast_to(np.array(Hs)[:, None], shape[-2:]).copy()
    nh = np.broadcast_to(nh, shape).copy()
    ds = xr.Dataset(coords={**grid, "step": np.arange(T) * 1000, "head": np.arange(max(Hs)), "row": np.arange(d + N),
                            "col": np.arange(d + N), "out": np.arange(N), "vblock": np.arange(20)})
    ds["W"] = (gd + ["step", "head", "row", "col"], W)
    ds["U"] = (gd + ["step", "head", "row", "out"], U)
    ds["train_loss"] = (gd + ["step"], np.linspace(1.1, 0.25, T) * np.ones(shape + (T,)))
    ds["val_mse"] = (gd + ["step", "out"], np.linspace(1.1, 0.25, T)[:, None] * np.ones(shape + (T, N)))
    ds["final_val_blocks"] = (gd + ["vblock", "out"], 0.245 + 0.01 * rng.standard_normal(shape + (20, N)))
    ds["n_heads"] = (gd, nh)
    ds["head_exists"] = (gd + ["head"], np.arange(max(Hs)) < nh[..., None])
    return ds


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_train_figures(tmp_path, rng):
    store = _write(tmp_path / "tr.zarr", _train_raw(rng, Hs=(1, 4)), train.analyze,
                   figure_kind="train", d=5, params={"d": 5, "L": 40, "sigma2": 0.1})
    paths = figs.draw(store, tmp_path / "custom.png")
    assert [p.name for p in paths] == [f"custom_{n}.png" for n in ("heatmaps", "dynamics", "metrics", "evolution")]
    for p in paths:
        assert p.stat().st_size > 10_000


def test_noniso_and_multitask_figures(tmp_path, rng):
    raw = _train_raw(rng, Hs=(2, 4), S=1, extra={"rho": np.array([0.0, 0.5])})
    store = _write(tmp_path / "n.zarr", raw, noniso.analyze, figure_kind="noniso", d=5,
                   params={"L": 40, "task": {"d": 5, "sigma2": 0.1}})
    (p,) = figs.draw(store)
    assert p.stat().st_size > 10_000
    from sim.icl_regression import multitask_task

    raw = _train_raw(rng, Hs=(3, 4), S=1, d=6, N=2)
    store = _write(tmp_path / "m.zarr", raw, multitask.analyze, figure_kind="multitask", d=6,
                   params={"L": 48, "task": multitask_task().describe()})
    (p,) = figs.draw(store)
    assert p.stat().st_size > 10_000


def test_estimators_ode_and_length_figures(tmp_path, rng):
    L = np.array([10, 20, 40])
    est = estimators.ESTIMATORS
    base = np.array([[th.dgd_risk(0.9, 5, l, 0.1) for l in L] for _ in est])
    raw = xr.Dataset(coords={"estimator": np.array(est, dtype=object), "L": L, "rep": np.arange(3)})
    m = base[..., None] + 0.002 * rng.standard_normal((len(est), 3, 3))
    raw["mse"] = (("estimator", "L", "rep"), m)
    raw["m2"] = (("estimator", "L", "rep"), 3 * m**2)
    for k in ("ridge_cond_risk", "ridge_diff", "md_diff"):
        v = (0.12 if k == "ridge_cond_risk" else 0.0) + 0.001 * rng.standard_normal((3, 3))
        raw[k] = (("L", "rep"), v)
        raw[k.replace("risk", "m2") if k == "ridge_cond_risk" else k + "_m2"] = (("L", "rep"), v**2 + 1e-4)
    store = _write(tmp_path / "e.zarr", raw, estimators.analyze, figure_kind="estimators",
                   params={"d": 5, "sigma2": 0.1, "omega": 0.13, "mu": 3.45, "prompts": 3000, "reps": 3})
    assert figs.draw(store)[0].stat().st_size > 10_000

    t = ode.ode_times(30.0)
    om, mu, loss = th.integrate_reduced_ode([1e-3, -1e-3], [1e-3, -1e-3], t, 5, 40, 0.1, method="LSODA")
    om4, mu4, loss4 = th.integrate_reduced_ode(rng.normal(0, .1, 4), rng.normal(0, .1, 4), t, 5, 40, 0.01,
                                               method="LSODA")
    pad = np.zeros((len(t), 2))
    raw = xr.Dataset(coords={"init": np.arange(2), "time": t, "head": np.arange(4)})
    raw["omega"] = (("init", "time", "head"), np.stack([np.hstack([om, pad]), om4]))
    raw["mu"] = (("init", "time", "head"), np.stack([np.hstack([mu, pad]), mu4]))
    raw["loss"] = (("init", "time"), np.stack([loss, loss4]))
    # trained twins: the Euler discretisation of the flow with the GD's steps, jittered per replicate
    from studies.icl import _ode_gd as G

    dts, log_at, tg = G.schedule(30.0)
    _, ew, em, _ = th.integrate_reduced_euler([1e-3, -1e-3], [1e-3, -1e-3], dts, log_at, 5, 40, 0.1)
    jit = 1 + 0.002 * rng.standard_normal((1, 4, 1))
    gw = np.concatenate([ew[:, None, :] * jit, np.zeros((len(tg), 4, 2))], axis=-1)
    gm = np.concatenate([em[:, None, :] * jit, np.zeros((len(tg), 4, 2))], axis=-1)
    raw = raw.assign_coords(gd_time=tg, rep=np.arange(4))
    raw["gd_omega"] = (("init", "gd_time", "rep", "head"), np.stack([gw, gw]))
    raw["gd_mu"] = (("init", "gd_time", "rep", "head"), np.stack([gm, gm]))
    raw["gd_loss"] = (("init", "gd_time", "rep"), np.full((2, len(tg), 4), 0.5))
    store = _write(tmp_path / "o.zarr", raw, ode.analyze, figure_kind="ode",
                   integrator="LSODA", params={"d": 5, "L": 40, "sigma2": 0.1, "init": 1e-3, "gd_time": 30.0,
                                               "gd_runs": 4})
    assert "gd_exit_time" in xr.open_zarr(str(store), consolidated=False)
    (pdf,) = figs.draw(store, tmp_path / "ode.pdf")
    assert pdf.name == "ode.pdf" and pdf.stat().st_size > 10_000

    Lt = np.array([10, 40, 100, 400])
    Hs = np.array([1, 4])
    raw = xr.Dataset(coords={"L_test": Lt, "rep": np.arange(2), "H": Hs, "seed": np.arange(2)})
    sm = np.stack([th.dgd_risk(0.88, 5, Lt, 0.1), th.gd_risk(0.77, 5, Lt, 0.1) + 0.15])[::-1].T  # (L, H)
    for k, val in (("softmax", sm[:, None, :, None]), ("dgd", sm[:, None, :, None])):
        v = np.broadcast_to(val, (4, 2, 2, 2)).copy()
        raw[f"mse_{k}"] = (("L_test", "rep", "H", "seed"), v)
        raw[f"m2_{k}"] = (("L_test", "rep", "H", "seed"), 3 * v**2)
    lin = np.broadcast_to(th.linear_baseline_risk(0.86, 40, Lt, 5, 0.1)[:, None, None], (4, 2, 2)).copy()
    raw["mse_linear"] = (("L_test", "rep", "seed"), lin)
    raw["m2_linear"] = (("L_test", "rep", "seed"), 3 * lin**2)
    raw["softmax_eta"] = (("H", "seed"), np.array([[0.77, 0.77], [0.88, 0.88]]))
    raw["linear_eta"] = (("seed",), np.array([0.86, 0.86]))
    om = np.zeros((2, 2, 4))
    mu = np.zeros((2, 2, 4))
    om[0, :, 0], mu[0, :, 0] = 0.518, 1.497  # the exact single-head optimum
    om[1, :, :2], mu[1, :, :2] = [0.14, -0.14], [3.14, -3.14]  # an antisymmetric pair
    raw["model_omega"] = (("H", "seed", "mhead"), om)
    raw["model_mu"] = (("H", "seed", "mhead"), mu)
    raw["model_exists"] = (("H", "seed", "mhead"), np.array([[[1, 0, 0, 0]] * 2, [[1, 1, 1, 1]] * 2], dtype=bool))
    store = _write(tmp_path / "l.zarr", raw, length.analyze, figure_kind="length", L_train=40,
                   params={"d": 5, "L_train": 40, "sigma2": 0.1, "prompts": 2000, "reps": 2})
    ds = xr.open_zarr(str(store), consolidated=False)
    assert "theory_kernel_risk" in ds and not any(v.startswith("verdict_") for v in ds.data_vars)
    outcomes = dict(zip(ds["claim"].values, ds["claim_outcome"].values))
    assert outcomes["icl_length.linear_blows_up[seed=0]"] == "holds"  # GD with the rescaled step blows up
    assert figs.draw(store)[0].stat().st_size > 10_000


def test_unfinished_or_foreign_stores_are_errors(tmp_path, rng, capsys):
    raw = _train_raw(rng, Hs=(1,), S=1)
    raw.attrs["figure_kind"] = "train"
    raw.to_zarr(str(tmp_path / "raw.zarr"), mode="w", consolidated=False)
    with pytest.raises(ValueError, match="no analysis"):
        figs.draw(tmp_path / "raw.zarr")
    xr.Dataset({"a": ("x", [1.0])}).to_zarr(str(tmp_path / "other.zarr"), mode="w", consolidated=False)
    with pytest.raises(ValueError, match="not an icl study store"):
        figs.draw(tmp_path / "other.zarr")
    assert figs.main([str(tmp_path / "missing.zarr")]) == 2
    assert figs.main([str(tmp_path / "other.zarr")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
