"""python -m studies.tails, end to end, and its growth classification."""
import numpy as np
import pytest
import xarray as xr

from studies import tails
from studies.sweep import open_result

QUICK = ["--quick", "--no-progress"]


def run(argv):
    try:
        return tails.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


def test_quick_run_writes_both_parts_verdicts_and_figure(tmp_path, capsys):
    out = tmp_path / "t.zarr"
    assert run(QUICK + ["--out", str(out), "--plot"]) == 0
    sup = open_result(out)
    with xr.open_zarr(str(out), group="moments", consolidated=False) as g:
        mom = g.load()
    assert sup["sup_err"].dims == ("law", "R", "n", "rep") and list(sup["law"].values) == ["gaussian", "sphere", "atom"]
    assert mom["mean_err"].dims == ("c", "n", "rep")
    for ds in (sup, mom):
        assert bool(ds["done"].all())
        for v in ds.data_vars:
            if ds[v].dtype.kind == "f":
                assert np.all(np.isfinite(ds[v].values)), v
    for v in ("verdict_gaussian_quadratic", "verdict_sphere_polynomial", "verdict_atom_exponential", "verdict_C_order"):
        assert v in sup, v
    for v in ("verdict_moment_rate", "verdict_prefactor_polynomial", "verdict_sup_faster"):
        assert v in mom, v
    # the classification on the quick grid already separates the laws
    assert bool(sup["verdict_gaussian_quadratic"]) and bool(sup["verdict_sphere_polynomial"])
    assert bool(sup["verdict_atom_exponential"])
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "verdicts:" in capsys.readouterr().out
    # rerun resumes both parts
    assert run(QUICK + ["--out", str(out)]) == 0
    assert "0 computed" in capsys.readouterr().out


def test_growth_exponents_separate_polynomial_from_exponential():
    R = np.arange(1.0, 9.0)
    lo, hi = tails._loglog_exponents(R, 0.5 * np.log(R))
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    lo, hi = tails._loglog_exponents(R, 0.6 * R)
    assert hi > tails.P_EXP_MIN > tails.P_POLY_MAX > lo - 0.5
    assert hi - lo > tails.ACCEL_TOL


@pytest.mark.parametrize("argv, msg", [
    (["--R", "1,2,3"], "--R"),
    (["--R", "0..3"], "--R"),
    (["--c", "2,4"], "--c"),
    (["--reps", "1"], "--reps"),
    (["--moment-n", "10,20"], "--moment-n"),
    (["--atom-eps", "2"], "--atom-eps"),
    (["--atom-radius", "0.4"], "--atom-radius"),
    (["--sphere-d", "1"], "--sphere-d"),
    (["--gauss-A", "-1"], "--gauss-A"),
])
def test_bad_inputs_one_line_exit_2_nothing_written(usage_error, argv, msg):
    usage_error(tails.main, QUICK + argv, msg)
