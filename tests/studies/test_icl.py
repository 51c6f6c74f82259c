"""python -m studies.icl SUB, end to end: --quick runs, resumption, usage errors, claims on
off-default configurations (where the theory holds) and with deliberately broken ingredients (a
named claim must fail); ``--device gpu`` end to end against the CPU results (``gpu`` marker:
skipped without a usable CUDA GPU)."""
import dataclasses
import json

import numpy as np
import pytest
import zarr

from sim import icl_regression as sim
from studies import icl
from studies.icl import estimators
from studies.sweep import open_group, open_result
from theory import icl_regression as th

QUIET = ["--quick", "--no-progress"]
# a small configuration that trains to its stage in seconds (d = 3, L = 24)
SMALL_TRAIN = ["--d", "3", "--L", "24", "--H", "1,2", "--seeds", "1", "--steps", "4000", "--log-every", "100",
               "--val-prompts", "2000", "--final-prompts", "20000", "--no-progress"]


def run(argv):
    try:
        return icl.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


def finite(ds):
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f" and not v.startswith("claim_") and not v.startswith("theory_kernel"):
            assert np.all(np.isfinite(ds[v].values)), v


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("icl") / "train.zarr"
    assert run(["train", *QUIET, "--out", str(out), "--plot"]) == 0
    return out


@pytest.fixture(scope="module")
def trained_small(tmp_path_factory):
    """Models trained to their stage at d = 3, L = 24 (an off-default configuration)."""
    out = tmp_path_factory.mktemp("icl") / "small.zarr"
    assert run(["train", *SMALL_TRAIN, "--out", str(out)]) == 0
    return out


# ============================================================================ quick runs
def test_train_quick_writes_dataset_claims_and_figures(trained, capsys, claims):
    ds = open_result(trained)
    assert ds["W"].dims == ("H", "seed", "step", "head", "row", "col")
    assert list(ds["H"].values) == [1, 2] and ds.sizes["step"] == 11 and ds.sizes["head"] == 2
    assert not ds["head_exists"].values[0, 0, 1] and ds["head_exists"].values[1, 0, 1]
    np.testing.assert_array_equal(ds["W"].values[0, :, :, 1], 0.0)  # padding stays zero
    for v in ("omega", "mu", "sum_mu", "eta", "final_val_mse", "final_diag_ratio", "final_last_entry_ratio",
              "theory_dgd_optimal_risk", "theory_single_head_omega", "theory_kernel_risk_learned", "claim_outcome"):
        assert v in ds, v
    assert not any(v.startswith("verdict_") for v in ds.data_vars)
    finite(ds)
    assert np.all(ds["val_mse"].values[:, :, -1] < ds["val_mse"].values[:, :, 0])  # it learned something
    assert ds.attrs["study"] == "icl_train" and ds.attrs["train_complete"] == 1 and ds.attrs["steps"] == 1000
    ck = open_group(trained, "checkpoint")  # the checkpoint lives inside the store
    assert int(ck["step"]) == 1000 and not trained.with_name("train.zarr.ckpt.npz").exists()
    for name in ("heatmaps", "dynamics", "metrics", "evolution"):
        assert trained.with_name(f"train_{name}.png").stat().st_size > 10_000
    # 1000 steps do not reach the stage: every claim says so, none is decided
    got = claims.none_fail(trained)
    assert all(c.outcome == "not tested" and "training stopped before the stage" in c.reason for c in got.values())
    assert "icl_train.multihead_beats_single[H=2,seed=0]" in got
    # rerun: nothing to train, same numbers
    capsys.readouterr()
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
    assert int(open_group(cut, "checkpoint")["step"]) == 200  # the checkpoint is a group of the store
    attrs = dict(zarr.open_group(str(cut), mode="r").attrs)
    assert not attrs.get("train_complete") and "W" not in open_result(cut)
    monkeypatch.setattr(sim.BatchedTrainer, "step", original)
    assert run(args + ["--out", str(cut)]) == 0
    a, b = open_result(full), open_result(cut)
    for v in ("W", "U", "train_loss", "val_mse", "final_val_blocks", "final_val_mse", "eta"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    np.testing.assert_array_equal(a["claim_outcome"].values, b["claim_outcome"].values)
    # raising --steps continues the same run: its first 500 steps are the ones above
    assert run(args[:-4] + ["--steps", "600", "--checkpoint-every", "200", "--out", str(cut)]) == 0
    c = open_result(cut)
    assert c.sizes["step"] == 7 and c.attrs["steps"] == 600
    np.testing.assert_array_equal(c["W"].values[..., :6, :, :, :], a["W"].values)
    # and the same seed gives the same run
    again = tmp_path / "again.zarr"
    assert run(args + ["--out", str(again)]) == 0
    np.testing.assert_array_equal(open_result(again)["W"].values, a["W"].values)


def _first_chunk(store, *parts):
    return sorted(p for p in store.joinpath(*parts, "c").rglob("*") if p.is_file())[0]


def _one_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return len(lines) == 1 and "Traceback" not in err


CKPT = ["train", *QUIET, "--H", "2", "--checkpoint-every", "200"]
RAW = ("W", "U", "train_loss", "val_mse", "final_val_blocks")


@pytest.fixture(scope="module")
def full_500(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "full.zarr"
    assert run(CKPT + ["--steps", "500", "--out", str(out)]) == 0
    return out


def _same_run(a_path, b_path):
    a, b = open_result(a_path), open_result(b_path)
    for v in RAW:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    np.testing.assert_array_equal(a["claim_outcome"].values, b["claim_outcome"].values)


def test_damaged_checkpoint_is_one_line_then_restored_to_the_last_intact_one(full_500, tmp_path, capsys):
    cut = tmp_path / "cut.zarr"
    assert run(CKPT + ["--steps", "400", "--out", str(cut)]) == 0  # checkpoints at 200 (kept) and 400
    identity = {k: v for k, v in zarr.open_group(str(cut), mode="r").attrs.items()
                if k in ("study", "params_json", "root_seed", "git_sha", "created")}
    chunk = _first_chunk(cut, "checkpoint", "theta")
    chunk.write_bytes(chunk.read_bytes()[:7])  # a truncated chunk
    capsys.readouterr()
    assert run(CKPT + ["--steps", "500", "--out", str(cut)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and str(cut) in err and "theta" in err and "checkpoint" in err and "--repair" in err, err
    assert run(CKPT + ["--steps", "500", "--out", str(cut), "--repair"]) == 0
    err = capsys.readouterr().err
    assert "repaired" in err and "step 200" in err and "Traceback" not in err, err
    _same_run(full_500, cut)  # resumed from step 200: the run ends where the undamaged one does
    attrs = dict(zarr.open_group(str(cut), mode="r").attrs)
    assert {k: attrs[k] for k in identity} == identity  # identity and provenance kept
    assert "training checkpoint checkpoint" in attrs["repairs"] and "step 200" in attrs["repairs"]


def test_no_intact_checkpoint_left_trains_from_the_start(full_500, tmp_path, capsys):
    cut = tmp_path / "cut.zarr"
    assert run(CKPT + ["--steps", "400", "--out", str(cut)]) == 0
    chunk = _first_chunk(cut, "checkpoint", "adam_v")
    chunk.write_bytes(chunk.read_bytes()[:5])
    _first_chunk(cut, "checkpoint_previous", "theta").unlink()  # a lost chunk reads as NaN
    capsys.readouterr()
    assert run(CKPT + ["--steps", "500", "--out", str(cut)]) == 2
    assert "adam_v" in capsys.readouterr().err
    assert run(CKPT + ["--steps", "500", "--out", str(cut), "--repair"]) == 0
    assert "training restarts from step 0" in capsys.readouterr().err
    _same_run(full_500, cut)


def test_damaged_raw_training_data_is_rebuilt_from_the_final_checkpoint(full_500, tmp_path, capsys):
    import shutil

    store = tmp_path / "r.zarr"
    shutil.copytree(full_500, store)
    chunk = _first_chunk(store, "W")
    chunk.write_bytes(chunk.read_bytes()[:9])
    capsys.readouterr()
    assert run(CKPT + ["--steps", "500", "--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "variable W is damaged" in err and "--repair" in err, err
    assert run(CKPT + ["--steps", "500", "--out", str(store), "--repair"]) == 0
    assert "rebuilt from the final training checkpoint" in capsys.readouterr().err
    _same_run(full_500, store)


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


def test_estimators_quick(tmp_path, claims):
    out = tmp_path / "e.zarr"
    assert run(["estimators", *QUIET, "--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    assert ds["mse"].dims == ("estimator", "L", "rep") and bool(ds["done"].all())
    finite(ds)
    got = claims.none_fail(out)
    for e in estimators.ESTIMATORS:  # every estimator against an exact finite-L risk, none True by construction
        assert got[f"icl_estimators.exact_risk[estimator={e}]"].outcome == "holds", e
    assert got["icl_estimators.multihead_beats_single"].outcome == "holds"
    assert "theory_ridge_mp" in ds and out.with_suffix(".png").stat().st_size > 10_000


def test_ode_quick(tmp_path, claims):
    out = tmp_path / "o.zarr"
    assert run(["ode", *QUIET, "--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    finite(ds)
    got = claims.none_fail(out)
    assert {c.name for c in got.values() if c.outcome == "holds"} == {
        "plateau_exit", "drop", "drift_limit", "drift_direction", "symmetry", "random_zero_sum"}
    assert 4 < float(ds["stage1_end"]) < 6 and 6 < float(ds["stage2_end"]) < 9
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_length_quick_on_unfinished_models_tests_nothing(trained, tmp_path, claims):
    out = tmp_path / "l.zarr"
    assert run(["length", *QUIET, "--models", str(trained), "--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    finite(ds)
    assert ds["softmax_mse"].dims == ("L_test", "H", "seed") and ds["linear_mse"].dims == ("L_test", "seed")
    assert "theory_kernel_risk" in ds and "theory_linear_risk" in ds
    assert int(open_group(out, "linear_checkpoint")["step"]) == 300  # the baseline's checkpoint is in the store
    got = claims.none_fail(out)
    assert all(c.outcome == "not tested" for c in got.values())  # 1000-step models, 300-step baseline
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.parametrize("sub", ["noniso", "multitask"])
def test_noniso_and_multitask_quick_say_the_stage_is_not_reached(sub, tmp_path, claims):
    out = tmp_path / f"{sub}.zarr"
    assert run([sub, *QUIET, "--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    finite(ds)
    got = claims.none_fail(out)
    assert got and all(c.outcome == "not tested" and "before the stage" in c.reason for c in got.values())
    assert out.with_suffix(".png").stat().st_size > 10_000


# ================================================================== off-default configurations
OFF_DEFAULT = {
    # estimators at another dimension and noise level, and at short prompts with another kernel
    "estimators_d10_s03": ["estimators", "--d", "10", "--sigma2", "0.3", "--L", "20,40", "--prompts", "6000",
                           "--reps", "3"],
    "estimators_d3_short": ["estimators", "--d", "3", "--L", "6,12", "--omega", "0.3", "--mu", "1.5", "--prompts",
                            "6000", "--reps", "3"],
    # the reduced flow at d = 10 (floor 0.158) and at L = 20
    "ode_d10": ["ode", "--d", "10", "--t-max", "300"],
    "ode_L20": ["ode", "--L", "20", "--t-max", "300", "--sigma2", "0.3"],
    # anisotropic covariates at d = 3, L = 24 (a larger learning rate reaches the stage in 4000 steps)
    "noniso_d3": ["noniso", "--d", "3", "--L", "24", "--rho", "0.5", "--H", "2", "--steps", "4000", "--lr", "2e-3",
                  "--log-every", "100", "--val-prompts", "2000", "--final-prompts", "20000"],
    # two tasks with shorter prompts
    "multitask_L24": ["multitask", "--L", "24", "--H", "3", "--steps", "4000", "--lr", "2e-3", "--log-every", "100",
                      "--val-prompts", "2000", "--final-prompts", "20000"],
}


@pytest.mark.parametrize("name", sorted(OFF_DEFAULT))
def test_off_default_configurations_hold_or_say_why(tmp_path, claims, name):
    out = tmp_path / f"{name}.zarr"
    assert run(OFF_DEFAULT[name] + ["--no-progress", "--out", str(out)]) == 0
    got = claims.none_fail(out)
    tested = [c for c in got.values() if c.outcome == "holds"]
    assert tested, "nothing was tested"
    if name.startswith("estimators"):
        assert all(got[f"icl_estimators.exact_risk[estimator={e}]"].outcome == "holds" for e in estimators.ESTIMATORS)
    if name == "ode_d10":  # the floor of the run's configuration, not the paper's 0.15
        ds = open_result(out)
        assert float(ds["theory_loss_limit"]) == pytest.approx(th.multihead_loss_limit(10, 40, 0.1) / 2)
        assert got["icl_ode.drop"].outcome == "holds" and float(ds["theory_loss_limit"]) > 0.15
    if name == "noniso_d3":
        assert got["icl_noniso.not_identity[rho=0.5,H=2,seed=0]"].outcome == "holds"
    if name == "multitask_L24":
        assert got["icl_multitask.superposition[H=3,seed=0]"].outcome == "holds"


def test_small_training_reaches_the_exact_optima(trained_small, claims):
    got = claims.none_fail(trained_small)
    assert all(c.outcome == "holds" for c in got.values()), {k: c.reason for k, c in got.items()}
    ds = open_result(trained_small)
    w1 = float(ds["theory_single_head_omega"])  # the exact finite-L optimum, not the reduced model's 1/sqrt(d)
    assert abs(float(ds["theory_single_head_omega_reduced"]) - w1) > 0.1
    assert abs(abs(float(ds["final_omega"].values[0, 0, 0])) - w1) < 0.05


def test_length_on_models_that_reached_their_stage(trained_small, tmp_path, claims):
    out = tmp_path / "l.zarr"
    assert run(["length", "--quick", "--no-progress", "--models", str(trained_small), "--L-test", "6,24,48,96",
                "--linear-steps", "3000", "--out", str(out)]) == 0
    got = claims.none_fail(out)
    for key in ("softmax_exact[H=1,seed=0]", "softmax_exact[H=2,seed=0]", "softmax_generalises[H=2,seed=0]",
                "multihead_beats_single[H=2,seed=0]"):
        assert got[f"icl_length.{key}"].outcome == "holds", key
    assert got["icl_length.linear_blows_up[seed=0]"].outcome in ("holds", "not tested")


# ====================================================================== broken ingredients
def test_broken_noise_variance_fails_the_optima(tmp_path, monkeypatch, claims):
    """Prompts drawn with label-noise variance 0.4 where the run (and its theory) says 0.1."""
    real = sim.isotropic_task
    monkeypatch.setattr(sim, "isotropic_task", lambda d, sigma2=0.1, query_noise=True: real(d, sigma2 + 0.3,
                                                                                            query_noise))
    out = tmp_path / "b.zarr"
    assert run(["train", *SMALL_TRAIN, "--out", str(out)]) == 0
    claims.some_fail(out, "single_head_optimum")
    claims.some_fail(out, "multihead_optimum")


def test_broken_debiased_gd_step_fails_its_exact_risk(tmp_path, monkeypatch, claims):
    real = sim.predict_dgd
    monkeypatch.setattr(sim, "predict_dgd", lambda p, eta, out=0: real(p, 1.3 * np.asarray(eta), out))
    out = tmp_path / "b.zarr"
    assert run(["estimators", *QUIET, "--out", str(out)]) == 0
    bad = claims.some_fail(out, "exact_risk")
    assert "icl_estimators.exact_risk[estimator=dgd]" in bad


def test_broken_ridge_lambda_fails_the_bayes_risk(tmp_path, monkeypatch, claims):
    real = sim.predict_ridge
    monkeypatch.setattr(sim, "predict_ridge", lambda p, lam, out=0: real(p, 3.0 * lam, out))
    out = tmp_path / "b.zarr"
    assert run(["estimators", *QUIET, "--out", str(out)]) == 0
    assert "icl_estimators.exact_risk[estimator=ridge]" in claims.some_fail(out, "exact_risk")


def test_broken_ode_coefficient_fails_the_plateau_exit(tmp_path, monkeypatch, claims):
    """dmu/dt scaled by 1.3: the flow has the same fixed points but leaves the plateau early."""
    real = th.ode_rhs
    monkeypatch.setattr(th, "ode_rhs", lambda w, m, *a: (real(w, m, *a)[0], 1.3 * real(w, m, *a)[1]))
    out = tmp_path / "b.zarr"
    assert run(["ode", *QUIET, "--out", str(out)]) == 0
    claims.some_fail(out, "plateau_exit")


def test_broken_A_matrix_fails_the_drift_limit(tmp_path, monkeypatch, claims):
    """A(omega) with twice the fluctuation coefficient c: the flow drifts to another valley."""
    monkeypatch.setattr(th, "A_matrix", lambda w, d, L, s2: np.outer(w, w) + 2 * (1 + s2) / L * np.exp(
        d * np.outer(w, w)))
    out = tmp_path / "b.zarr"
    assert run(["ode", *QUIET, "--out", str(out)]) == 0
    claims.some_fail(out, "drift_limit")


def test_broken_covariance_sampler_fails_the_preconditioner(tmp_path, monkeypatch, claims):
    """A sampler that ignores Sigma (isotropic covariates) while the run says rho = 0.5."""
    real = sim.toeplitz_task
    monkeypatch.setattr(sim, "toeplitz_task", lambda d, rho, sigma2=0.1: real(d, 0.0, sigma2))
    out = tmp_path / "b.zarr"
    assert run(OFF_DEFAULT["noniso_d3"] + ["--no-progress", "--out", str(out)]) == 0
    claims.some_fail(out, "cos_Gamma_star")


def test_broken_multitask_noise_fails_the_task_risks(tmp_path, monkeypatch, claims):
    """The training prompts of every run get twice the label-noise standard deviation."""
    real = sim.RunSpec

    def noisy(H, task, data_seed, init_seed, kind="softmax"):
        return real(H, dataclasses.replace(task, noise_sd=2 * task.noise_sd), data_seed, init_seed, kind)

    monkeypatch.setattr(sim, "RunSpec", noisy)
    out = tmp_path / "b.zarr"
    assert run(OFF_DEFAULT["multitask_L24"] + ["--no-progress", "--out", str(out)]) == 0
    claims.some_fail(out, "task_optimal")


def test_broken_transposed_kq_fails_the_length_claims(trained_small, tmp_path, monkeypatch, claims):
    """Test-time scores z_qᵀ W_hᵀ z_i (a transposed KQ): the query's y-row of W, left at its
    initial values, now weighs the labels."""
    real = sim.evaluate_sq_errors

    def transposed(W, U, nh, kind, *a, **kw):
        return real(np.swapaxes(W, -1, -2) if kind == "softmax" else W, U, nh, kind, *a, **kw)

    monkeypatch.setattr(sim, "evaluate_sq_errors", transposed)
    out = tmp_path / "b.zarr"
    assert run(["length", "--quick", "--no-progress", "--models", str(trained_small), "--L-test", "6,24,48,96",
                "--out", str(out)]) == 0
    claims.some_fail(out, "softmax_exact")


# ============================================================================ usage errors
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
    assert not out.exists()


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
def test_train_quick_on_the_gpu_follows_the_cpu_run(trained, tmp_path, claims):
    out = tmp_path / "g.zarr"
    assert run(["train", *QUIET, "--device", "gpu", "--out", str(out), "--plot"]) == 0
    g, c = open_result(out), open_result(trained)
    assert json.loads(g.attrs["params_json"])["device"] == "gpu" and g.attrs["device"] != "cpu"
    assert g.attrs["train_complete"] == 1 and claims.read(out).keys() == claims.read(trained).keys()
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
def test_other_substudies_quick_on_the_gpu(sub, tmp_path, claims):
    out = tmp_path / f"{sub}.zarr"
    assert run([sub, *QUIET, "--device", "gpu", "--out", str(out)]) == 0
    ds = open_result(out)
    finite(ds)
    claims.none_fail(out)
    if sub == "estimators":  # GPU prompts (equal to the CPU's up to an ulp), host predictors
        ref = tmp_path / "cpu.zarr"
        assert run([sub, *QUIET, "--out", str(ref)]) == 0
        np.testing.assert_allclose(ds["mse"].values, open_result(ref)["mse"].values, rtol=1e-10)
