"""End to end: ``python -m studies.random_features --quick`` in-process, resumption, usage errors,
and the verdict logic of the analysis on synthetic datasets with known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from studies import random_features as study
from studies.sweep import open_result, str_coord

GROUPS = ("kernel", "rate", "families", "N", "bias")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rf") / "rf.zarr"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = study.main(["--quick", "--out", str(out), "--no-progress", "--plot"])
    return rc, out, buf.getvalue()


def test_quick_run_writes_every_group_with_theory_and_verdicts(quick_run):
    rc, out, text = quick_run
    assert rc == 0
    for g in GROUPS:
        ds = xr.open_zarr(str(out), group=g, consolidated=False)
        verdicts = [k for k in ds.data_vars if k.startswith("verdict_")]
        assert verdicts, g
        assert all(ds[k].dtype == bool for k in verdicts)
        assert any(k.startswith("theory_") for k in ds.data_vars), g
        assert bool(ds["done"].all())
        for k in ds.data_vars:  # no NaN or inf reaches the dataset
            if np.issubdtype(ds[k].dtype, np.floating):
                assert np.isfinite(ds[k].values).all(), (g, k)
        params = json.loads(ds.attrs["params_json"])
        assert params["conventions"]["activation"] == "relu"
        assert ds.attrs["study"] == f"random_features/{g}"
        assert (out.parent / f"rf_{g}.png").stat().st_size > 10_000
    for g in GROUPS:
        assert f"== {g}" in text
    assert text.count("verdicts:") == len(GROUPS)
    # the kernel check passes even in the quick run (exact theory, CLT bands)
    k = xr.open_zarr(str(out), group="kernel", consolidated=False)
    assert bool(k["verdict_kernel_clt"]) and bool(k["verdict_permutation_invariance"])


def test_quick_run_resumes_without_recomputing(quick_run, capsys):
    rc, out, _ = quick_run
    before = open_result(out / "families")
    assert study.main(["--quick", "--out", str(out), "--no-progress", "--sweeps", "families,bias"]) == 0
    text = capsys.readouterr().out
    assert text.count(" 0 computed") == 2
    after = open_result(out / "families")
    np.testing.assert_array_equal(before["rel_err"].values, after["rel_err"].values)


def test_changed_parameters_need_overwrite(quick_run, capsys):
    rc, out, _ = quick_run
    rc2 = study.main(["--quick", "--out", str(out), "--no-progress", "--sweeps", "bias", "--r-grid", "0,2"])
    err = capsys.readouterr().err
    assert rc2 == 2
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err


@pytest.mark.parametrize("argv", [
    ["--sweeps", "kernel,foo"],
    ["--reps", "1"],
    ["--d", "1"],
    ["--r-grid", "0.5,1", "--sweeps", "bias"],
    ["--r-grid", "0,-1", "--sweeps", "bias"],
    ["--targets", "keys0"],
    ["--targets", "keys2,wobble"],
    ["--activation", "softmax"],
    ["--N", "1", "--sweeps", "families"],
    ["--N-grid", "1,4", "--sweeps", "N", "--N-targets", "keykey"],
    ["--lambda-min", "0"],
    ["--lambda-min", "2", "--lambda-max", "1"],
    ["--noise", "-0.1"],
    ["--noise", "nan"],
    ["--models", "rfa,brfa", "--sweeps", "families"],
    ["--kernel-M", "8,16", "--sweeps", "kernel"],
    ["--kernel-pairs", "2", "--sweeps", "kernel"],
    ["--n", "256", "--sweeps", "rate"],
    ["--M-grid", "16", "--sweeps", "rate"],
    ["--N-grid", "8", "--sweeps", "N"],
    ["--w-var", "-1"],
    ["--r-bias", "0"],
    ["--M", "100000", "--n", "2^14..2^15", "--sweeps", "families"],
    ["--device", "tpu"],
    ["--workers", "0"],
])
def test_bad_inputs_one_line_exit_2_nothing_written(usage_error, argv):
    usage_error(study.main, argv + ["--quick"])


def _exit_code(fn):
    try:
        return fn()
    except SystemExit as e:  # argparse errors exit through the parser
        return e.code


@pytest.mark.parametrize("argv", [["--reps", "1"], ["--sweeps", "nope"], ["--targets", "pair"]])
def test_argparse_errors_exit_2(argv, tmp_path, capsys):
    out = tmp_path / "x.zarr"
    assert _exit_code(lambda: study.main(argv + ["--out", str(out)])) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_out_holding_another_study_is_refused(tmp_path, capsys):
    import zarr

    out = tmp_path / "other.zarr"
    zarr.open_group(str(out), mode="w").attrs["study"] = "convergence"
    assert study.main(["--quick", "--out", str(out), "--sweeps", "bias"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not (out / "bias").exists()
    file_out = tmp_path / "file"
    file_out.write_text("x")
    assert study.main(["--quick", "--out", str(file_out)]) == 2


def test_help_has_examples(capsys):
    assert _exit_code(lambda: study.main(["--help"])) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--sweeps" in text and "--r-grid" in text


def test_kernel_inputs_are_deterministic_and_structured():
    a = study.kernel_inputs(3, 5, 4, 8)
    b = study.kernel_inputs(3, 5, 4, 8)
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x, y)
    a0, A, b0, B, kinds = a
    assert kinds[:4] == ["same", "permuted", "same_query", "same_keys"]
    np.testing.assert_array_equal(A[1], A[0])
    np.testing.assert_array_equal(np.sort(B[1], axis=0), np.sort(A[0], axis=0))
    assert not np.array_equal(B[1], A[0])
    np.testing.assert_array_equal(b0[2], a0[2])
    np.testing.assert_array_equal(B[3], A[3])
    np.testing.assert_allclose(np.linalg.norm(B, axis=-1), 1.0)


# ---------------------------------------------------------------- verdict logic on known data

def _params(tmp_path, extra):
    args = study.build_parser().parse_args(["--out", str(tmp_path / "p.zarr")])
    study._validate(args)
    return {**study._common_params(args), "N": args.N, **extra}


def _ds(tmp_path, dims, coords, rel, extra=None, test_mse=None):
    ds = xr.Dataset({"rel_err": (dims, rel), "test_mse": (dims, rel if test_mse is None else test_mse)},
                    coords=coords)
    ds.attrs["params_json"] = json.dumps(_params(tmp_path, extra or {}))
    return ds


def test_bias_verdicts_follow_the_data(tmp_path):
    rng = np.random.default_rng(0)
    r = np.array([0.0, 0.5, 1.0])
    base = np.array([[0.05, 0.1, 0.3],     # keys2: rises with r
                     [0.2, 0.05, 0.04]])   # pair1: falls
    rel = base[:, :, None] * np.exp(0.02 * rng.standard_normal((2, 3, 4)))
    ds = _ds(tmp_path, ("target", "r", "rep"), {"target": str_coord(["keys2", "pair1"]), "r": r, "rep": np.arange(4)}, rel)
    an = study.analyze_bias(ds)
    assert bool(an["verdict_bias_lowers_risk"]) and bool(an["verdict_bias_raises_risk"])
    assert float(an["best_r"].sel(target="pair1")) == 1.0
    assert float(an["gain_at_best_r"].sel(target="pair1")) == pytest.approx(5.0, rel=0.05)
    # swap the roles: both verdicts must fail
    ds2 = ds.copy(deep=True)
    ds2["rel_err"].values[:] = rel[::-1]
    an2 = study.analyze_bias(ds2)
    assert not bool(an2["verdict_bias_lowers_risk"]) and not bool(an2["verdict_bias_raises_risk"])


def test_N_verdicts_follow_the_data(tmp_path):
    rng = np.random.default_rng(1)
    N = np.array([2, 8, 32])
    rel = np.empty((1, 3, 2, 3))
    rel[0, :, 0] = 0.05  # rfa flat
    rel[0, :, 1] = np.array([0.1, 0.6, 0.95])[:, None]  # rfmlp degrades
    rel *= np.exp(0.01 * rng.standard_normal(rel.shape))
    coords = {"target": str_coord(["keys2"]), "N": N, "model": str_coord(["rfa", "rfmlp"]), "rep": np.arange(3)}
    an = study.analyze_N(_ds(tmp_path, ("target", "N", "model", "rep"), coords, rel))
    assert bool(an["verdict_attention_flat_in_N"]) and bool(an["verdict_mlp_degrades_in_N"])
    assert "theory_log10_B" in an  # keys2 with Gegenbauer terms has an exact complexity
    B = an["theory_log10_B"].sel(target="keys2")
    assert float(B.sel(kernel_model="rfa").max() - B.sel(kernel_model="rfa").min()) < 1e-9
    assert np.all(np.diff(B.sel(kernel_model="rfmlp").values) > 0)
    rel2 = rel.copy()
    rel2[0, :, 0] = np.array([0.05, 0.3, 0.6])[:, None]
    an2 = study.analyze_N(_ds(tmp_path, ("target", "N", "model", "rep"), coords, rel2))
    assert not bool(an2["verdict_attention_flat_in_N"])


def test_families_verdicts_follow_the_data(tmp_path):
    rng = np.random.default_rng(2)
    targets = ["keys2", "pair1", "keys3", "keykey"]
    models = ["rfa", "brfa", "rfmlp"]
    n = np.array([256, 1024])
    rel = np.empty((4, 2, 3, 3))
    rel[0] = np.array([0.05, 0.3, 0.9])[None, :, None]   # keys2: rfa wins by 18x
    rel[1] = np.array([0.1, 0.02, 0.8])[None, :, None]   # pair1: brfa wins by 40x
    rel[2] = np.array([0.9, 0.95, 1.0])[None, :, None]   # keys3: unresolved
    rel[3] = np.array([1.0, 1.0, 0.5])[None, :, None]    # keykey: attention stuck at 1
    rel *= np.exp(0.02 * rng.standard_normal(rel.shape))
    coords = {"target": str_coord(targets), "n": n, "model": str_coord(models), "rep": np.arange(3)}
    extra = {"models": models, "M": 8}
    an = study.analyze_families(_ds(tmp_path, ("target", "n", "model", "rep"), coords, rel, extra))
    assert bool(an["verdict_attention_beats_mlp"]) and bool(an["verdict_keykey_not_learned"])
    assert list(an["attention_model"].values) == ["rfa", "brfa", "rfa", "rfa"]
    assert not bool(an["resolved"].sel(target="keys3"))
    assert float(an["mlp_over_attention"].sel(target="pair1")[-1]) == pytest.approx(40, rel=0.1)
    assert float(an["theory_B_ratio"].sel(exact_target="keys2")) > 1
    rel[0, :, 2] = rel[0, :, 0] * 1.5  # the MLP now nearly matches attention on keys2
    an2 = study.analyze_families(_ds(tmp_path, ("target", "n", "model", "rep"), coords, rel, extra))
    assert not bool(an2["verdict_attention_beats_mlp"])


def test_rate_fits_recover_known_slopes(tmp_path):
    rng = np.random.default_rng(3)
    n = np.array([256, 512, 1024, 2048])
    M = np.array([16, 32, 64])
    mse = 5.0 * n[None, :, None, None] ** -0.9 * M[None, None, :, None] ** -0.7
    mse = mse * np.exp(0.03 * rng.standard_normal((1, 4, 3, 5)))
    coords = {"target": str_coord(["keys2"]), "n": n, "M": M, "rep": np.arange(5)}
    an = study.analyze_rate(_ds(tmp_path, ("target", "n", "M", "rep"), coords, mse, {"N": 8}, test_mse=mse))
    # true exponents within 5 standard errors (the stored CIs are 95%, too narrow for a test)
    assert abs(float(an["slope_n"][0, -1]) + 0.9) <= 5 * float(an["slope_n_se"][0, -1])
    assert abs(float(an["slope_M"][0, -1]) + 0.7) <= 5 * float(an["slope_M_se"][0, -1])
    assert float(an["slope_n_ci_low"][0, -1]) < float(an["slope_n"][0, -1]) < float(an["slope_n_ci_high"][0, -1])
    assert bool(an["verdict_risk_decreases"]) and bool(an["verdict_consistent_with_bound"])
    assert "theory_bound" in an and np.all(an["theory_bound"].values > 0)
    # a risk that grows with n contradicts both
    flat = mse * (n[None, :, None, None] / 256.0) ** 1.2
    an2 = study.analyze_rate(_ds(tmp_path, ("target", "n", "M", "rep"), coords, flat, {"N": 8}, test_mse=flat))
    assert not bool(an2["verdict_risk_decreases"]) and not bool(an2["verdict_consistent_with_bound"])


def test_device_gpu_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    from gpu import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "gpu.zarr"
    assert _exit_code(lambda: study.main(["--quick", "--device", "gpu", "--out", str(out)])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gpu" in err.lower() and "Traceback" not in err
    assert not out.exists()


@pytest.mark.gpu
def test_quick_run_on_the_gpu(tmp_path, capsys):
    """``--quick --device gpu`` end to end: CuPy streams, CUDA features, device Gram and eigh;
    every group written with finite values and verdicts, the exact kernel checks passing."""
    out = tmp_path / "rf_gpu.zarr"
    assert study.main(["--quick", "--device", "gpu", "--out", str(out), "--no-progress"]) == 0
    for g in GROUPS:
        ds = xr.open_zarr(str(out), group=g, consolidated=False)
        assert bool(ds["done"].all())
        assert json.loads(ds.attrs["params_json"])["device"] == "gpu"
        assert [k for k in ds.data_vars if k.startswith("verdict_")], g
        for k in ds.data_vars:
            if np.issubdtype(ds[k].dtype, np.floating):
                assert np.isfinite(ds[k].values).all(), (g, k)
    k = xr.open_zarr(str(out), group="kernel", consolidated=False)
    assert bool(k["verdict_kernel_clt"]) and bool(k["verdict_permutation_invariance"])
    fam = xr.open_zarr(str(out), group="families", consolidated=False)
    rel = fam["rel_err"].values
    assert np.all((rel > 0) & (rel < 10))
