"""python -m studies.convergence, end to end."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from gpu import gpu_available
from studies import convergence
from studies.sweep import open_result

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--R", "1..8:7", "--quick", "--no-progress"]


def run(argv):
    try:
        return convergence.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


def test_quick_run_writes_dataset_verdicts_and_figure(tmp_path, capsys):
    out = tmp_path / "conv.zarr"
    assert run(QUICK + ["--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    assert ds["sup_err"].dims == ("R", "n", "rep")
    assert ds["sup_err"].shape == (2, 5, 10) and bool(ds["done"].all())
    for v in ("fit_slope", "fit_slope_se", "fit_n_min", "fit_n_max", "C", "theory_log_C", "theory_slope",
              "logC_vs_R_slope", "logC_vs_R2_slope", "verdict_rate", "verdict_clt_rate", "verdict_log_regime"):
        assert v in ds, v
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f":
            assert np.all(np.isfinite(ds[v].values)), v
    assert out.with_suffix(".png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "slope ± se" in text and "verdicts:" in text
    # rerunning the same command resumes: nothing recomputed, same numbers
    assert run(QUICK + ["--out", str(out)]) == 0
    assert "0 computed" in capsys.readouterr().out
    np.testing.assert_array_equal(open_result(out)["sup_err"].values, ds["sup_err"].values)


def test_rates_at_small_and_large_radius(tmp_path):
    """The acceptance checks on a reduced grid: R = 1 is in the CLT regime (slope -1/2 +- 0.08),
    R = 8 is saturated (local slope flatter than -0.15), and the verdicts say so."""
    out = tmp_path / "c.zarr"
    assert run(["--R", "1,8", "--n", "2^8..2^14", "--reps", "16", "--queries", "32",
                "--no-progress", "--out", str(out)]) == 0
    ds = open_result(out)
    s1, s8 = ds["fit_slope"].values
    assert -0.58 <= s1 <= -0.42 and s8 > -0.15, (s1, s8)
    assert list(ds["regime"].values) == [0, 2]
    assert bool(ds["verdict_clt_rate"]) and bool(ds["verdict_log_regime"]) and bool(ds["verdict_flattening"])


def test_same_seed_identical_and_workers_equal_serial(tmp_path):
    args = ["--R", "1,3", "--n", "2^8..2^10", "--reps", "3", "--queries", "12", "--no-progress"]
    assert run(args + ["--out", str(tmp_path / "a.zarr")]) == 0
    assert run(args + ["--out", str(tmp_path / "b.zarr"), "--workers", "2"]) == 0
    assert run(args + ["--out", str(tmp_path / "c.zarr"), "--seed", "1"]) == 0
    assert run(args + ["--out", str(tmp_path / "d.zarr"), "--dask-local", "2"]) == 0
    a, b, c, d = (open_result(tmp_path / f"{k}.zarr")["sup_err"].values for k in "abcd")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)
    assert not np.array_equal(a, c)


def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    args = ["--R", "1,4", "--n", "2^15..2^18", "--reps", "6", "--queries", "32", "--no-progress"]
    killed = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "studies.convergence", *args, "--out", str(killed)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            done = int(np.sum(zarr.open_group(str(killed), mode="r")["done"][...]))
        except Exception:
            continue
        if done >= 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    partial = int(np.sum(zarr.open_group(str(killed), mode="r")["done"][...]))
    assert 3 <= partial < 24
    assert run(args + ["--out", str(killed)]) == 0
    assert run(args + ["--out", str(tmp_path / "clean.zarr")]) == 0
    resumed, clean = open_result(killed), open_result(tmp_path / "clean.zarr")
    np.testing.assert_array_equal(resumed["sup_err"].values, clean["sup_err"].values)
    np.testing.assert_array_equal(resumed["fit_slope"].values, clean["fit_slope"].values)


BAD = [
    (["--R", "8..1"], "descending"),
    (["--R", "0..3"], "positive"),
    (["--R", "a"], "not a number"),
    (["--reps", "0"], "positive integer"),
    (["--d", "0"], "positive integer"),
    (["--dist", "cauchy"], "invalid choice"),
    (["--n", "2^8..2^9"], "at least 3"),
    (["--reps", "1"], "at least 2"),
    (["--A-scale", "-1"], "positive"),
    (["--dask-local", "2", "--scheduler", "tcp://127.0.0.1:1"], "choose one"),
]


@pytest.mark.parametrize("argv,msg", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, msg):
    out = tmp_path / "never.zarr"
    assert run(argv + ["--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    assert not out.exists() and not (tmp_path / "results").exists()


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert run(["--quick", "--out", str(blocker / "sub" / "x.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a directory" in err
    assert run(["--quick", "--out", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_device_gpu_without_gpu(tmp_path, capsys):
    out = tmp_path / "g.zarr"
    assert run(["--quick", "--device", "gpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable CUDA GPU" in err and not out.exists()


def test_other_parameters_need_overwrite(tmp_path, capsys):
    out = tmp_path / "c.zarr"
    assert run(QUICK + ["--out", str(out)]) == 0
    capsys.readouterr()
    assert run(QUICK + ["--out", str(out), "--seed", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(QUICK + ["--out", str(out), "--seed", "3", "--overwrite"]) == 0


def test_help_mentions_inclusive_ranges(capsys):
    assert run(["--help"]) == 0
    text = capsys.readouterr().out
    assert "1..8 (inclusive)" in text and "examples:" in text
