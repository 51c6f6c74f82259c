"""python -m studies.hardmax, end to end."""
import numpy as np
import pytest

from studies import hardmax
from studies.sweep import open_result

QUICK = ["--quick", "--no-progress"]


def run(argv):
    try:
        return hardmax.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


def test_quick_run_meets_the_acceptance_checks(tmp_path, capsys):
    """Bias slope in lam within [-1.15, -0.85]; coupled error x log n varies by < 2x; the
    pure-hardmax error follows its exact curve. The quick grid already resolves all three."""
    out = tmp_path / "h.zarr"
    assert run(QUICK + ["--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    assert ds["lam_deficit"].dims == ("lam", "n", "rep") and ds["pure_err"].dims == ("n", "rep")
    assert bool(ds["done"].all())
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f":
            assert np.all(np.isfinite(ds[v].values)), v
    assert -1.15 <= float(ds["bias_slope"]) <= -0.85
    assert float(ds["coupled_ratio"]) < 2.0
    for v in ("verdict_bias_slope", "verdict_bias_exact", "verdict_pure_curve", "verdict_pure_slope",
              "verdict_coupled_log_rate"):
        assert bool(ds[v]), v
    # measured bias vs the exact rho (1 - A_d): the estimator is O(1/n)-accurate
    w = ds["bias_fit_mask"].values.astype(bool)
    np.testing.assert_allclose(ds["bias"].values[w], ds["theory_bias"].values[w], rtol=0.05)
    assert out.with_suffix(".png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "bias slope in lam" in text and "verdicts:" in text


def test_other_dimension_changes_the_pure_rate(tmp_path):
    out = tmp_path / "h5.zarr"
    assert run(QUICK + ["--d", "5", "--n", "100,1000,10000", "--lam", "10,100", "--out", str(out)]) == 0
    ds = open_result(out)
    assert float(ds["theory_pure_slope"]) == pytest.approx(-0.25)
    assert abs(float(ds["pure_slope"]) - float(ds["theory_pure_slope_grid"])) <= 0.05 + 3 * float(ds["pure_slope_se"])
    # the coupled limit rho (d-1) / (2 c kappa_1) = 2 for d = 5, c = 1
    assert float(ds["theory_coupled_x_logn_limit"]) == pytest.approx(2.0)


@pytest.mark.parametrize("argv, msg", [
    (["--d", "1"], "--d"),
    (["--reps", "1"], "--reps"),
    (["--n", "1,10,100"], "--n"),
    (["--n", "10,100"], "--n"),
    (["--lam", "10"], "--lam"),
    (["--lam", "0..10/3"], "geometric grid"),
    (["--c", "0"], "--c"),
    (["--radius", "-1"], "--radius"),
    (["--A-scale", "nan"], "--A-scale"),
])
def test_bad_inputs_one_line_exit_2_nothing_written(usage_error, argv, msg):
    usage_error(hardmax.main, QUICK + argv, msg)
