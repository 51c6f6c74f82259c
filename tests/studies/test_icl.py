"""python -m studies.icl SUB, end to end (--quick), resumption and usage errors; ``--device gpu``
end to end against the CPU results (``gpu`` marker: skipped without a usable CUDA GPU)."""
import json

import numpy as np
import pytest
import zarr

from sim import icl_regression as sim
from studies import icl
from studies.sweep import open_result

QUIET = ["--quick", "--no-progress"]


def run(argv):
    try:
        return icl.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


def finite(ds):
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f":
            assert np.all(np.isfinite(ds[v].values)), v


def verdicts(ds):
    return [v for v in ds.data_vars if v.startswith("verdict_")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("icl") / "train.zarr"
    assert run(["train", *QUIET, "--out", str(out), "--plot"]) == 0
    return out


def test_train_quick_writes_dataset_verdicts_and_figures(trained, capsys):
    ds = open_result(trained)
    assert ds["W"].dims == ("H", "seed", "step", "head", "row", "col")
    assert list(ds["H"].values) == [1, 2] and ds.sizes["step"] == 11 and ds.sizes["head"] == 2
    assert not ds["head_exists"].values[0, 0, 1] and ds["head_exists"].values[1, 0, 1]
    np.testing.assert_array_equal(ds["W"].values[0, :, :, 1], 0.0)  # padding stays zero
    for v in ("omega", "mu", "sum_mu", "eta", "final_val_mse", "final_diag_ratio", "final_last_entry_ratio",
              "theory_dgd_optimal_risk", "theory_single_head_omega", "verdict_h1_val_mse",
              "verdict_multihead_beats_single"):
        assert v in ds, v
    finite(ds)
    assert np.all(ds["val_mse"].values[:, :, -1] < ds["val_mse"].values[:, :, 0])  # it learned something
    assert ds.attrs["study"] == "icl_train" and ds.attrs["train_complete"] == 1
    for name in ("heatmaps", "dynamics", "metrics", "evolution"):
        assert trained.with_name(f"train_{name}.png").stat().st_size > 10_000
    # rerun: nothing to train, same numbers
    assert run(["train", *QUIET, "--out", str(trained)]) == 0
    assert "already complete" in capsys.readouterr().out
    np.testing.assert_array_equal(open_result(trained)["W"].values, ds["W"].values)


def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    args = ["train", *QUIET, "--H", "2", "--steps", "500", "--checkpoint-every", "200"]
    full = tmp_path / "full.zarr"
    assert run(args + ["--out", str(full)]) == 0
    cut = tmp_path / "cut.zarr"
    original = sim.BatchedTrainer.step

    def interrupted(self):
        if self.step_count == 350:  # after the checkpoint at 200, before the next at 400
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(sim.BatchedTrainer, "step", interrupted)
    assert run(args + ["--out", str(cut)]) == 130
    assert not cut.exists() and cut.with_name("cut.zarr.ckpt.npz").exists()
    with np.load(cut.with_name("cut.zarr.ckpt.npz")) as z:
        assert int(z["step"]) == 200
    monkeypatch.setattr(sim.BatchedTrainer, "step", original)
    assert run(args + ["--out", str(cut)]) == 0
    a, b = open_result(full), open_result(cut)
    for v in ("W", "U", "train_loss", "val_mse", "final_val_blocks", "final_val_mse", "eta"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    # raising --steps continues the same run: its first 500 steps are the ones above
    assert run(args[:-4] + ["--steps", "600", "--checkpoint-every", "200", "--out", str(cut)]) == 0
    c = open_result(cut)
    assert c.sizes["step"] == 7
    np.testing.assert_array_equal(c["W"].values[..., :6, :, :, :], a["W"].values)


def test_store_of_another_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "t.zarr"
    base = ["train", *QUIET, "--H", "1", "--steps", "200", "--out", str(out)]
    assert run(base) == 0
    capsys.readouterr()
    assert run(base[:-2] + ["--lr", "2e-3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert run(base[:-2] + ["--lr", "2e-3", "--out", str(out), "--overwrite"]) == 0
    assert '"lr": 0.002' in open_result(out).attrs["params_json"]


def test_estimators_quick(tmp_path):
    out = tmp_path / "e.zarr"
    assert run(["estimators", *QUIET, "--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    assert ds["mse"].dims == ("estimator", "L", "rep") and bool(ds["done"].all())
    finite(ds)
    assert bool(ds["verdict_exact_formulas"].all()) and bool(ds["verdict_ridge_finite"].all())
    assert bool(ds["verdict_single_head_worse"].all()) and bool(ds["verdict_ridge_lowest"].all())
    assert "verdict_ridge_0114" in ds and "theory_ridge_mp" in ds
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_ode_quick(tmp_path):
    out = tmp_path / "o.zarr"
    assert run(["ode", *QUIET, "--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    finite(ds)
    for v in ("verdict_plateau", "verdict_drop", "verdict_drift", "verdict_drift_limit", "verdict_symmetry"):
        assert bool(ds[v]), v
    assert 4 < float(ds["stage1_end"]) < 6 and 6 < float(ds["stage2_end"]) < 9
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_length_quick_uses_the_trained_models(trained, tmp_path):
    out = tmp_path / "l.zarr"
    assert run(["length", *QUIET, "--models", str(trained), "--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    finite(ds)
    assert ds["softmax_mse"].dims == ("L_test", "H", "seed") and ds["linear_mse"].dims == ("L_test", "seed")
    assert "verdict_multihead_beats_single" in ds and "verdict_linear_blows_up" in ds
    assert "theory_dgd_risk" in ds and "theory_linear_risk" in ds
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.parametrize("sub,verdict", [("noniso", "verdict_cos_Gamma_star"), ("multitask", "verdict_h3_zero_sum")])
def test_noniso_and_multitask_quick(sub, verdict, tmp_path):
    out = tmp_path / f"{sub}.zarr"
    assert run([sub, *QUIET, "--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    finite(ds)
    assert verdict in ds and len(verdicts(ds)) >= 3
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.parametrize("argv", [
    [],
    ["bogus"],
    ["train", "--H", "0"],
    ["train", "--H", "1..x"],
    ["train", "--steps", "150"],
    ["train", "--lr", "abc"],
    ["train", "--lr", "2"],
    ["train", "--workers", "2"],
    ["ode", "--device", "gpu"],
    ["train", "--sigma2", "-1"],
    ["train", "--checkpoint-every", "150"],
    ["estimators", "--L", "1"],
    ["estimators", "--reps", "3"],
    ["estimators", "--sigma2", "0"],
    ["ode", "--t-max", "5"],
    ["ode", "--init", "0"],
    ["length", "--models", "no/such/store.zarr"],
    ["noniso", "--rho", "1.5"],
    ["multitask", "--d", "5"],
])
def test_bad_input_is_one_line_and_exit_2(argv, tmp_path, capsys):
    out = tmp_path / "never.zarr"
    full = argv + (["--quick", "--out", str(out)] if argv and argv[0] in icl.SUBSTUDIES else [])
    assert run(full) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0], err
    assert not out.exists() and not out.with_name("never.zarr.ckpt.npz").exists()


@pytest.mark.parametrize("sub", ["train", "estimators", "noniso"])
def test_device_gpu_without_a_gpu_is_a_one_line_error(sub, tmp_path, capsys):
    from gpu import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: --device gpu runs (see the gpu-marked tests)")
    out = tmp_path / "never.zarr"
    assert run([sub, "--quick", "--device", "gpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "GPU" in err[0], err
    assert not out.exists()


def test_help_lists_the_substudies(capsys):
    assert run(["--help"]) == 0
    text = capsys.readouterr().out
    for s in icl.SUBSTUDIES:
        assert s in text
    assert run(["train", "--help"]) == 0
    assert "--steps" in capsys.readouterr().out


def test_length_refuses_a_store_of_another_study(tmp_path):
    other = tmp_path / "o.zarr"
    assert run(["ode", *QUIET, "--out", str(other)]) == 0
    assert zarr.open_group(str(other), mode="r").attrs["study"] == "icl_ode"
    assert run(["length", *QUIET, "--models", str(other), "--out", str(tmp_path / "l.zarr")]) == 2


def test_benchmark_suite_quick(tmp_path, capsys):
    """The icl suite runs through the benchmark CLI; its timing target is measured by the real run."""
    from studies import benchmark

    out = tmp_path / "b.zarr"
    assert benchmark.main(["--suite", "icl", "--quick", "--out", str(out)]) == 0
    ds = benchmark.open_suite(out, "icl")
    from gpu import gpu_available

    gpu_rows = {"gpu_batched", "gpu_h1248x3"} if gpu_available() else set()
    assert set(ds["impl"].values) == {"numpy_per_run", "batched", "batched_R1"} | gpu_rows
    assert (ds["ms_per_run_step"] > 0).all() and bool(ds["verdict_agree"]) and "verdict_target" in ds
    assert "ms/run-step" in capsys.readouterr().out


# ------------------------------------------------------------------- --device gpu (real GPU)
@pytest.mark.gpu
def test_train_quick_on_the_gpu_follows_the_cpu_run(trained, tmp_path):
    out = tmp_path / "g.zarr"
    assert run(["train", *QUIET, "--device", "gpu", "--out", str(out), "--plot"]) == 0
    g, c = open_result(out), open_result(trained)
    assert json.loads(g.attrs["params_json"])["device"] == "gpu" and g.attrs["device"] != "cpu"
    assert g.attrs["train_complete"] == 1 and len(verdicts(g)) == len(verdicts(c))
    finite(g)
    # same prompts and initialisation: the trajectories agree up to floating-point reassociation
    w = c["W"].values
    assert np.abs(g["W"].values - w).max() <= 1e-6 * np.abs(w).max()
    np.testing.assert_allclose(g["val_mse"].values, c["val_mse"].values, rtol=1e-6)
    np.testing.assert_allclose(g["train_loss"].values, c["train_loss"].values, rtol=1e-6)
    # the GPU store is not resumed by a CPU run (the device is part of the identity)
    assert run(["train", *QUIET, "--out", str(out)]) == 2
    # length generalisation of the GPU-trained models, on the GPU
    lo = tmp_path / "l.zarr"
    assert run(["length", *QUIET, "--device", "gpu", "--models", str(out), "--out", str(lo)]) == 0
    finite(open_result(lo))


@pytest.mark.gpu
def test_training_resumes_on_the_gpu_to_the_uninterrupted_result(tmp_path):
    args = ["train", *QUIET, "--device", "gpu", "--H", "2", "--steps", "600", "--checkpoint-every", "200"]
    full = tmp_path / "full.zarr"
    assert run(args + ["--out", str(full)]) == 0
    part = tmp_path / "part.zarr"
    assert run(args[:-4] + ["--steps", "400", "--checkpoint-every", "200", "--out", str(part)]) == 0
    assert run(args + ["--out", str(part)]) == 0  # --steps raised: continues from the step-400 checkpoint
    for v in ("W", "U", "train_loss", "val_mse"):
        np.testing.assert_array_equal(open_result(full)[v].values, open_result(part)[v].values, err_msg=v)


@pytest.mark.gpu
@pytest.mark.parametrize("sub", ["estimators", "noniso", "multitask"])
def test_other_substudies_quick_on_the_gpu(sub, tmp_path):
    out = tmp_path / f"{sub}.zarr"
    assert run([sub, *QUIET, "--device", "gpu", "--out", str(out)]) == 0
    ds = open_result(out)
    finite(ds)
    assert len(verdicts(ds)) >= 3
    if sub == "estimators":  # GPU prompts (equal to the CPU's up to an ulp), host predictors
        ref = tmp_path / "cpu.zarr"
        assert run([sub, *QUIET, "--out", str(ref)]) == 0
        np.testing.assert_allclose(ds["mse"].values, open_result(ref)["mse"].values, rtol=1e-10)
