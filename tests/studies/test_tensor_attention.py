"""End-to-end tests of ``python -m studies.tensor_attention`` (its --quick mode, in-process)."""
from __future__ import annotations

import numpy as np
import pytest

from studies import tensor_attention as study
from studies.sweep import open_result


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ta") / "quick.zarr"
    rc = study.main(["--quick", "--out", str(out), "--plot", "--no-progress"])
    return rc, out


def test_quick_end_to_end(quick_run, capsys):
    rc, out = quick_run
    assert rc == 0
    assert out.exists() and out.with_suffix(".png").stat().st_size > 10_000
    ds = open_result(out)
    assert bool(ds["done"].all())
    verdicts = [v for v in ds.data_vars if v.startswith("verdict_")]
    for v in ("verdict_bound", "verdict_decay", "verdict_approx_slope", "verdict_exact_tensor_slope",
              "verdict_exact_matrix_slope", "verdict_match3_tensor", "verdict_match3_pairwise"):
        assert v in verdicts
        assert ds[v].dtype == bool
    # guaranteed even in the tiny quick run: the certified bound holds, the construction is exact
    assert bool(ds["verdict_bound"].all())
    assert bool(ds["verdict_match3_tensor"])
    for name in ("err_out", "time_exact_tensor", "time_approx_tensor", "match3_acc"):
        assert np.all(np.isfinite(ds[name].values))
    for name in ("theory_eps", "theory_err_bound", "theory_rank", "theory_slope", "theory_crossover_n_tensor",
                 "theory_match3_entry_bound", "theory_entry_threshold"):
        assert name in ds
    assert "tolerance" not in ds.attrs.get("verdict_tolerances", "tolerance")  # recorded, non-empty
    assert "MATCH3_TARGET" in ds.attrs["verdict_tolerances"]
    assert ds["err_out"].dims == ("family", "k", "B", "degree", "inputs", "rep")


def test_analysis_is_a_pure_function_of_the_raw_dataset(quick_run):
    _, out = quick_run
    ds = open_result(out)
    again = study.analyze(ds)
    for name in ("err_max", "fit_slope", "match3_accuracy", "verdict_bound", "theory_err_bound"):
        np.testing.assert_array_equal(again[name].values, ds[name].values)


def test_rerun_resumes_without_recomputing(quick_run, capsys):
    _, out = quick_run
    before = open_result(out)["err_out"].values
    assert study.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    assert "0 computed, 2 already done" in capsys.readouterr().out
    np.testing.assert_array_equal(open_result(out)["err_out"].values, before)


def test_single_part_run(tmp_path, capsys):
    out = tmp_path / "m3.zarr"
    rc = study.main(["--parts", "match3", "--N", "6,8", "--sequences", "3", "--train", "6", "--reps", "2",
                     "--out", str(out), "--no-progress"])
    assert rc == 0
    ds = open_result(out)
    assert "match3_accuracy" in ds and "err_out" not in ds and "fit_slope" not in ds
    assert "verdicts:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--degrees=-1..3"], "degree must be >= 0"),
    (["--degrees", "-1..3"], "--degrees"),  # argparse reads a leading dash as an option: still one line
    (["--B", "0,1"], "entry bounds must be positive"),
    (["--B=-1..1"], "entry bounds must be positive"),
    (["--timing-B", "0"], "entry bound must be positive"),
    (["--n-tensor", "512,1024,2048"], "--force"),
    (["--n-matrix", "2^15..2^17"], "--force"),
    (["--n-error", "2048", "--k", "3"], "--force"),
    (["--parts", "error,bogus"], "unknown part"),
    (["--methods", "pade"], "unknown method"),
    (["--match3-degree", "3"], "must be even"),
    (["--reps", "1"], "at least 2 replicates"),
    (["--k", "5"], "orders must be 2, 3 or 4"),
    (["--B", "2.6", "--k", "3", "--methods", "chebyshev"], "cannot be converted"),
    (["--n-approx", "2^10,2^11"], "at least 3 sizes"),
])
def test_bad_inputs_exit_2_with_one_line(usage_error, argv, message):
    usage_error(study.main, ["--quick", "--no-progress", *argv], message)


def test_device_gpu_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    from gpu import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: --device gpu runs (test_quick_on_the_gpu)")
    out = tmp_path / "gpu.zarr"
    assert study.main(["--quick", "--device", "gpu", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpu" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.gpu
def test_quick_on_the_gpu(tmp_path, capsys):
    """--device gpu runs every part on the GPU twins; the error part sees the same inputs as the
    CPU run (drawn on the host), so its errors agree with the CPU's to rounding."""
    out = tmp_path / "gpu.zarr"
    assert study.main(["--quick", "--device", "gpu", "--out", str(out), "--no-progress"]) == 0
    ds = open_result(out)
    assert ds.attrs["device"] == "gpu" and "gpu_engines" in ds.attrs
    assert bool(ds["done"].all())
    assert bool(ds["verdict_bound"].all()) and bool(ds["verdict_match3_tensor"])
    for name in ("err_out", "time_exact_tensor", "time_approx_tensor", "match3_acc"):
        assert np.all(np.isfinite(ds[name].values))
    cpu = tmp_path / "cpu.zarr"
    assert study.main(["--quick", "--parts", "error", "--out", str(cpu), "--no-progress"]) == 0
    ref = open_result(cpu)
    np.testing.assert_array_equal(ds["rejected"].values, ref["rejected"].values)
    np.testing.assert_allclose(ds["err_out"].values, ref["err_out"].values, rtol=1e-6, atol=1e-11)
    np.testing.assert_array_equal(ds["vmax"].values, ref["vmax"].values)


def test_force_lifts_the_exact_size_limit_check():
    args = study.build_parser().parse_args(["--quick", "--n-tensor", "512,1024,2048", "--force",
                                            "--out", "/tmp/unused-ta.zarr"])
    study._validate(args)  # no UsageError
    assert max(args.n_tensor) == 2048


def test_crossing_helper():
    n = np.array([10.0, 20.0, 40.0, 80.0])
    t_exact = np.array([1.0, 2.0, 8.0, 32.0])
    t_approx = np.array([4.0, 4.0, 4.0, 4.0])
    nx = study._crossing(n, t_exact, t_approx)
    assert 20 < nx < 40
    assert study._crossing(n, t_approx, t_approx * 2) is None
