"""python -m studies.moments, end to end, and its analysis on synthetic data."""
import argparse

import numpy as np
import pytest
import xarray as xr

from studies import moments
from studies.sweep import open_result

QUICK = ["--quick", "--no-progress"]


def run(argv):
    try:
        return moments.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


@pytest.fixture(scope="module")
def quick_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("moments") / "m.zarr"
    assert run(QUICK + ["--reference", "finite:1500", "--out", str(out), "--plot"]) == 0
    return out


def test_quick_run_writes_dataset_verdicts_and_figure(quick_store, capsys):
    ds = open_result(quick_store)
    assert ds["mean_err"].dims == ("ref", "scale", "n", "rep")
    assert ds["mean_err"].shape == (2, 5, 4, 6) and bool(ds["done"].all())
    assert list(ds["ref"].values) == ["exact", "finite"]
    for v in ("beta_mean", "beta_mean_se", "beta_cov", "beta_cov_se", "H_eff", "H_code", "theory_beta_eff",
              "theory_beta_code", "theory_beta_fine_eff", "exact_mean", "exact_cov", "finite_cov",
              "verdict_small_H_mean", "verdict_decreasing_cov", "verdict_above_theory_eff_mean",
              "verdict_above_theory_code_cov", "verdict_theory_bound_mean", "verdict_finite_flatter_mean",
              "finite_ref_rel_err_mean", "finite_ref_rel_err_cov"):
        assert v in ds, v
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f":
            assert np.all(np.isfinite(ds[v].values)), v
    np.testing.assert_allclose(ds["H_code"].values, np.sqrt(50) * ds["H_eff"].values)
    assert "verdict_tolerances" in ds.attrs and "H_eff" in ds.attrs["theory_axis"]
    assert quick_store.with_suffix(".png").stat().st_size > 10_000
    # the exact reference is the closed form, and the largest-H scale has a real covariance
    assert np.abs(ds["exact_mean"].values).max() == 0.0
    # rerunning resumes: nothing recomputed, same numbers
    before = ds["cov_err"].values.copy()
    assert run(QUICK + ["--reference", "finite:1500", "--out", str(quick_store)]) == 0
    assert "0 computed" in capsys.readouterr().out
    np.testing.assert_array_equal(open_result(quick_store)["cov_err"].values, before)


def test_small_horizon_rate_is_one_half_on_the_quick_grid(quick_store):
    ds = open_result(quick_store)
    ex = list(ds["ref"].values).index("exact")
    b, se = ds["beta_cov"].values[ex, 0], ds["beta_cov_se"].values[ex, 0]
    assert abs(b - 0.5) <= 0.05 + 3 * se, (b, se)  # the covariance fluctuation is the plain CLT one


def test_sphere_and_self_exclusion_run(tmp_path):
    out = tmp_path / "s.zarr"
    assert run(QUICK + ["--preset", "sphere", "--d", "8", "--scales", "0.5,5,50", "--self-token", "exclude",
                        "--out", str(out)]) == 0
    ds = open_result(out)
    assert ds["exact_cov_se_fro"].values.max() < 1e-2 * np.linalg.norm(ds["exact_cov"].values, axis=(1, 2)).max()
    assert "sphere" in ds.attrs["token_law"] and '"self_token": "exclude"' in ds.attrs["params_json"]


@pytest.mark.parametrize("argv, msg", [
    (["--reps", "1"], "--reps"),
    (["--n", "100,200"], "--n"),
    (["--scales", "0..1/3"], "geometric grid"),
    (["--scales", "abc"], "scale grid"),
    (["--reference", "finite:1"], "--reference"),
    (["--reference", "exactly"], "--reference"),
    (["--d", "1"], "--d"),
    (["--rho", "-1"], "--rho"),
    (["--self-token", "exclude", "--n", "1,2,3"], "--self-token"),
    (["--method", "naive", "--n", "1000,2000,40000"], "naive"),
    (["--preset", "nope"], "--preset"),
])
def test_bad_inputs_one_line_exit_2_nothing_written(usage_error, argv, msg):
    usage_error(moments.main, QUICK + argv, msg)


def test_out_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.zarr"
    f.write_text("x")
    assert run(QUICK + ["--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_parse_scales():
    assert moments.parse_scales("0.05..50/3") == pytest.approx((0.05, np.sqrt(0.05 * 50), 50.0))
    assert moments.parse_scales("1,0.5,2") == (0.5, 1.0, 2.0)
    assert moments.parse_scales("1..2:0.5") == (1.0, 1.5, 2.0)
    for bad in ("", "1..0.5/3", "-1", "x..y/2", "1..2:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            moments.parse_scales(bad)
    assert moments.parse_reference("finite:1e5") == ("finite", 100000)


def _synthetic(betas, H, k=40, seed=0):
    """Raw errors err = n^{-beta(H)} * lognormal noise, as the sweep would store them."""
    rng = np.random.default_rng(seed)
    n = np.array([1000, 2000, 4000, 8000, 16000])
    S = len(betas)
    base = n[None, :, None] ** -np.asarray(betas)[:, None, None]
    noise = np.exp(0.05 * rng.standard_normal((2, S, n.size, k)))
    err = base[None] * noise
    ds = xr.Dataset({key: (("ref", "scale", "n", "rep"), err * f) for key, f in
                     (("mean_err", 1.0), ("cov_err", 0.1), ("cov_err_op", 0.05))},
                    coords={"ref": np.array(["exact", "finite"], dtype=object), "scale": np.arange(S) + 1.0,
                            "n": n, "rep": np.arange(k)})
    return moments.analyze(ds, np.asarray(H), np.sqrt(50) * np.asarray(H))


def test_analysis_recovers_rates_and_verdicts_react():
    H = np.array([0.01, 0.1, 0.5, 1.0, 2.0])
    good = [0.5, 0.5, 0.47, 0.4, 0.3]
    an = _synthetic(good, H)
    np.testing.assert_allclose(an["beta_mean"].values[0], good, atol=0.02)
    assert bool(an["verdict_small_H_mean"]) and bool(an["verdict_decreasing_mean"])
    assert bool(an["verdict_above_theory_eff_mean"]) and bool(an["verdict_theory_bound_cov"])
    # a rate that increases with H, one below the theory curve, one far from 1/2 at small H
    assert not bool(_synthetic([0.3, 0.3, 0.35, 0.4, 0.45], H)["verdict_decreasing_mean"])
    assert not bool(_synthetic([0.5, 0.5, 0.3, 0.15, 0.02], H)["verdict_above_theory_eff_mean"])
    assert not bool(_synthetic([0.3, 0.3, 0.3, 0.25, 0.2], H)["verdict_small_H_mean"])


def test_benchmark_suite_quick(tmp_path, capsys):
    """The moments suite runs both implementations on the same tokens: identical moments, equal
    slopes, and a timing for each (the >= 3x target is a benchmark number, not a unit test)."""
    from studies import benchmark

    out = tmp_path / "b.zarr"
    assert benchmark.main(["--suite", "moments", "--quick", "--out", str(out)]) == 0
    ds = benchmark.open_suite(out, "moments")
    assert list(ds["impl"].values) == ["naive", "numba"]
    assert bool(ds["verdict_agree"]) and bool(ds["verdict_slopes"]) and "verdict_speedup" in ds
    assert float(ds["max_abs_moment_diff"]) <= 1e-10 and np.all(ds["time_s"].values > 0)
    assert "speedup" in capsys.readouterr().out
