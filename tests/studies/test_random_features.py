"""End to end: ``python -m studies.random_features --quick`` in-process, resumption, usage errors,
off-default configurations whose claims must hold or say why not, deliberately broken ingredients
that a named claim must catch, and the claim logic of the analysis on synthetic datasets with
known answers."""
from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import numpy as np
import pytest
import xarray as xr

from sim import random_features as rs
from studies import random_features as study
from studies.random_features import cells
from studies.sweep import open_result, str_coord
from theory import random_features as rft
from tests.studies.conftest import ci_subset

GROUPS = ("kernel", "rate", "families", "N", "bias")


def run(argv, out):
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = study.main(argv + ["--out", str(out), "--no-progress"])
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rf") / "rf.zarr"
    rc, text = run(["--quick", "--plot"], out)
    return rc, out, text


def test_quick_run_writes_every_group_with_theory_and_claims(quick_run, claims):
    rc, out, text = quick_run
    assert rc == 0, text
    for g in GROUPS:
        ds = xr.open_zarr(str(out), group=g, consolidated=False)
        assert not [k for k in ds.data_vars if k.startswith("verdict_")], g
        assert "claim_outcome" in ds and ds.sizes["claim"] >= 1, g
        assert any(k.startswith("theory_") for k in ds.data_vars), g
        assert bool(ds["done"].all())
        for k in ds.data_vars:  # no NaN or inf reaches the dataset (claims hold NaN where not measured)
            if np.issubdtype(ds[k].dtype, np.floating) and not k.startswith("claim_"):
                assert np.isfinite(ds[k].values).all(), (g, k)
        params = json.loads(ds.attrs["params_json"])
        assert params["conventions"]["activation"] == "relu"
        assert ds.attrs["study"] == f"random_features/{g}"
        assert (out.parent / f"rf_{g}.png").stat().st_size > 10_000
    root = xr.open_zarr(str(out), consolidated=False)
    assert root.attrs["study"] == "random_features"
    import zarr

    assert sorted(zarr.open_group(str(out), mode="r").attrs["groups"]) == sorted(GROUPS)
    for g in GROUPS:
        assert f"== {g}" in text
    assert "verdicts:" not in text and "claims:" in text
    got = claims.none_fail(out)
    # the exact checks hold even in the quick run; the vacuous bound says so
    for k in ("rfa", "brfa", "rfmlp"):
        assert got[f"random_features.kernel_clt[kmodel={k}]"].outcome == "holds"
    assert got["random_features.permutation_invariance[kmodel=rfa]"].outcome == "holds"
    assert got["random_features.below_bound[target=keys2]"].outcome == "not tested"
    assert "vacuous" in got["random_features.below_bound[target=keys2]"].reason
    assert got["random_features.beats_mlp[target=keys3]"].outcome == "not tested"
    assert "not resolved on this grid" in got["random_features.beats_mlp[target=keys3]"].reason
    # two replicates (one degree of freedom) cannot resolve a paired log ratio: not tested, never "holds"
    c = got["random_features.bias_lowers_risk[target=attn, r=1]"]
    assert c.outcome == "not tested" and "Student t with 1 dof" in c.reason
    c = got["random_features.risk_exponent_n[target=keys2, M=32, n=64..256]"]
    assert c.outcome == "not tested" and "too few samples" in c.reason


def test_quick_run_resumes_without_recomputing(quick_run, capsys, claims):
    rc, out, _ = quick_run
    before = open_result(out / "families")
    rc2, text = run(["--quick", "--parts", "families,bias"], out)
    assert rc2 == 0
    assert text.count(", 0 computed") == 2 and "(0 computed" in text
    after = open_result(out / "families")
    np.testing.assert_array_equal(before["rel_err"].values, after["rel_err"].values)
    np.testing.assert_array_equal(before["claim_outcome"].values, after["claim_outcome"].values)


def test_changed_parameters_need_overwrite(quick_run, capsys):
    rc, out, _ = quick_run
    rc2 = study.main(["--quick", "--out", str(out), "--no-progress", "--parts", "bias", "--r-grid", "0,2"])
    err = capsys.readouterr().err
    assert rc2 == 2
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err


def test_same_seed_identical_and_workers_equal_serial(tmp_path):
    argv = ["--quick", "--parts", "bias,N"]
    assert run(argv, tmp_path / "a.zarr")[0] == 0
    assert run(argv + ["--workers", "2"], tmp_path / "b.zarr")[0] == 0
    assert run(argv + ["--seed", "1"], tmp_path / "c.zarr")[0] == 0
    for g in ("bias", "N"):
        a, b, c = (open_result(tmp_path / f"{k}.zarr" / g)["rel_err"].values for k in "abc")
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("argv", [
    ["--parts", "kernel,foo"],
    ["--reps", "1"],
    ["--d", "1"],
    ["--r-grid", "0.5,1", "--parts", "bias"],
    ["--r-grid", "0,-1", "--parts", "bias"],
    ["--targets", "keys0"],
    ["--targets", "keys2,wobble"],
    ["--activation", "softmax"],
    ["--N", "1", "--parts", "families"],
    ["--N-grid", "1,4", "--parts", "N", "--N-targets", "keykey"],
    ["--lambda-min", "0"],
    ["--lambda-min", "2", "--lambda-max", "1"],
    ["--noise", "-0.1"],
    ["--noise", "nan"],
    ["--models", "rfa,brfa", "--parts", "families"],
    ["--kernel-M", "8,16", "--parts", "kernel"],
    ["--kernel-pairs", "2", "--parts", "kernel"],
    ["--n", "256", "--parts", "rate"],
    ["--M-grid", "16", "--parts", "rate"],
    ["--N-grid", "8", "--parts", "N"],
    ["--w-var", "-1"],
    ["--r-bias", "0"],
    ["--M", "100000", "--n", "2^14..2^15", "--parts", "families"],
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


@pytest.mark.parametrize("argv", [["--reps", "1"], ["--parts", "nope"], ["--targets", "pair"]])
def test_argparse_errors_exit_2(argv, tmp_path, capsys):
    out = tmp_path / "x.zarr"
    assert _exit_code(lambda: study.main(argv + ["--out", str(out)])) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_out_holding_another_study_is_refused(tmp_path, capsys):
    import zarr

    out = tmp_path / "other.zarr"
    zarr.open_group(str(out), mode="w").attrs["study"] = "convergence"
    assert study.main(["--quick", "--out", str(out), "--parts", "bias", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert not (out / "bias").exists()
    file_out = tmp_path / "file"
    file_out.write_text("x")
    assert study.main(["--quick", "--out", str(file_out)]) == 2


def test_help_has_examples(capsys):
    assert _exit_code(lambda: study.main(["--help"])) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--parts" in text and "--r-grid" in text


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


# ---------------------------------------------------------------- off the defaults: hold or say why

OFF_DEFAULT = {
    # another d and N (the theory's B, R^2, Var f* and complexity ratios all change)
    "d4_N3": ["--d", "4", "--N", "3", "--N-grid", "2,3,6", "--quick"],
    # linear attention: keys3 is outside its class (degree <= 2 in the key), bias not covered
    "identity": ["--activation", "identity", "--quick", "--parts", "kernel,families,bias",
                 "--targets", "keys1,keys2,keys3,keykey", "--bias-targets", "keys2,pair1", "--reps", "4"],
    # no constant coordinate: ReLU features are odd, so every even target is outside the class
    "no_augment": ["--no-augment", "--quick", "--parts", "kernel,rate,families,bias",
                   "--targets", "keys1,keys2,pair1,keykey", "--rate-targets", "keys1,query1",
                   "--bias-targets", "pair1,keys2", "--reps", "4"],
    # Hermite terms: no closed-form B, so the bound and the ratio are not tested
    "hermite": ["--poly", "hermite", "--quick", "--parts", "rate,families", "--targets", "keys2,pair1,keykey"],
    # the mean on I_{d+1}: the kernel has its closed form, the bias argument does not apply
    "mean_identity": ["--mean-shape", "identity", "--quick", "--parts", "kernel,bias"],
    # softmax over keys: the theory covers none of it
    "softmax": ["--activation", "softmax", "--quick", "--parts", "rate,families,bias",
                "--targets", "keys2,keykey"],
    # small d, one key, many heads: the bound drops below Var f* and is tested
    "bound_informative": ["--parts", "rate", "--d", "3", "--N", "1", "--rate-targets", "keys1,query1",
                          "--M-grid", "32,64,128", "--n", "64,128,256", "--quick", "--reps", "4"],
}


@pytest.mark.parametrize("name", ci_subset(sorted(OFF_DEFAULT), keep=("identity", "hermite", "softmax")))
def test_off_default_configurations_hold_or_say_why(tmp_path, claims, name):
    out = tmp_path / f"{name}.zarr"
    rc, text = run(OFF_DEFAULT[name], out)
    assert rc == 0, text
    got = claims.none_fail(out)
    outcome = {k: c.outcome for k, c in got.items()}
    if name == "identity":
        for m in ("rfa", "brfa"):
            assert outcome[f"random_features.outside_class[target=keys3, model={m}]"] == "holds"
        assert "outside" in got["random_features.beats_mlp[target=keys3]"].reason
        assert "ReLU" in got["random_features.bias_lowers_risk[target=pair1]"].reason
    if name == "no_augment":
        for t in ("keys2", "pair1", "keykey"):
            assert outcome[f"random_features.outside_class[target={t}, model=rfa]"] == "holds"
        assert "constant coordinate" in got["random_features.bias_lowers_risk[target=pair1]"].reason
    if name == "hermite":
        assert "Gegenbauer" in got["random_features.beats_mlp[target=keys2]"].reason
        assert got["random_features.below_bound[target=pair1]"].outcome == "not tested"
    if name == "mean_identity":
        assert all(o == "not tested" for k, o in outcome.items() if ".bias_" in k)
        assert outcome["random_features.kernel_clt[kmodel=brfa]"] == "holds"
    if name == "softmax":
        assert all(o == "not tested" for o in outcome.values())
    if name == "bound_informative":
        assert outcome["random_features.below_bound[target=keys1]"] == "holds"
        assert outcome["random_features.below_bound[target=query1]"] == "holds"


# ---------------------------------------------------------------- broken ingredients: a named claim fails

@pytest.mark.breaks("random_features.kernel_clt")
def test_broken_feature_variance_fails_the_kernel(tmp_path, monkeypatch, claims):
    """Query-key matrices drawn with 1.2x the theory's variance: the kernel scales by 1.2."""
    real = rs.draw_heads
    monkeypatch.setattr(rs, "draw_heads", lambda *a, **k: real(*a, **k) * math.sqrt(1.2))
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "kernel", "--kernel-M", "2^8,2^12"], out)[0] == 0
    hit = claims.some_fail(out, "kernel_clt")
    assert any("kmodel=rfa" in k for k in hit)


@pytest.mark.breaks("random_features.kernel_clt")
def test_broken_activation_moment_fails_the_kernel(tmp_path, monkeypatch, claims):
    """The biased kernel evaluated with the zero-mean arc-cosine moment (the score means dropped)."""
    monkeypatch.setattr(rft, "relu_moment", lambda m1, m2, rho: rft.kappa1(rho))
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "kernel"], out)[0] == 0
    hit = claims.some_fail(out, "kernel_clt")
    assert "random_features.kernel_clt[kmodel=brfa]" in hit


@pytest.mark.breaks("random_features.kernel_rate")
def test_reused_heads_fail_the_kernel_rate(tmp_path, monkeypatch, claims):
    """Only 16 distinct heads, tiled to M: the M-head kernel stops converging beyond M = 16."""
    real = rs.draw_heads

    def reused(rng, M, d, **kw):
        W = real(rng, min(M, 16), d, **kw)
        return np.concatenate([W] * (M // W.shape[0]) + [W[: M % W.shape[0]]], axis=0)
    monkeypatch.setattr(rs, "draw_heads", reused)
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "kernel", "--kernel-M", "2^6,2^8,2^10,2^12", "--kernel-reps", "4"], out)[0] == 0
    hit = claims.some_fail(out, "kernel_rate")
    assert "random_features.kernel_rate[kmodel=rfa]" in hit


def test_transposed_query_key_matrix_is_equal_in_law(tmp_path, monkeypatch, claims):
    """W^T has the law of W (i.i.d. entries, symmetric mean): no claim may fail."""
    real = rs.draw_heads
    monkeypatch.setattr(rs, "draw_heads", lambda *a, **k: np.swapaxes(real(*a, **k), 1, 2))
    out = tmp_path / "t.zarr"
    assert run(["--quick", "--parts", "kernel"], out)[0] == 0
    claims.none_fail(out)


def test_broken_key_window_fails_permutation_invariance(tmp_path, monkeypatch, claims):
    """Attention that sees only the first two keys."""
    real = rs.rfa_features
    monkeypatch.setattr(rs, "rfa_features", lambda x0, X, W, **k: real(x0, X[:, :2], W, **k))
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "kernel"], out)[0] == 0
    claims.some_fail(out, "permutation_invariance")


@pytest.mark.breaks("random_features.outside_class")
def test_query_mixed_with_keys_fails_the_function_class(tmp_path, monkeypatch, claims):
    """A query contaminated by the mean key lets key-key terms into the features."""
    real = rs.rfa_features

    def broken(x0, X, W, **kw):
        q = x0 + X.mean(axis=1)
        return real(q / np.linalg.norm(q, axis=-1, keepdims=True), X, W, **kw)
    monkeypatch.setattr(rs, "rfa_features", broken)
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "families", "--targets", "keys2,keykey", "--reps", "8"], out)[0] == 0
    claims.some_fail(out, "outside_class")


@pytest.mark.breaks("random_features.risk_slope_n", "random_features.risk_slope_M", "random_features.risk_exponent_n",
                    "random_features.below_bound")
def test_label_mismatch_fails_the_rate_and_the_bound(tmp_path, monkeypatch, claims):
    """Training labels of another target than the one tested (six replicates and a 16x range of n:
    the claims' standard errors need their degrees of freedom, the exponent a range to show in)."""
    real = cells._replicate_data

    def broken(*a, **kw):
        x0, X, F, Y = real(*a, **kw)
        return x0, X, F, Y[:, ::-1]
    monkeypatch.setattr(cells, "_replicate_data", broken)
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "rate", "--reps", "6", "--n", "2^6..2^10/5", "--M-grid", "8,16,64"], out)[0] == 0
    claims.some_fail(out, "risk_slope_n")
    claims.some_fail(out, "risk_slope_M")
    claims.some_fail(out, "risk_exponent_n")
    out2 = tmp_path / "b2.zarr"
    assert run(OFF_DEFAULT["bound_informative"] + ["--reps", "8"], out2)[0] == 0
    claims.some_fail(out2, "below_bound")


@pytest.mark.breaks("random_features.risk_slope_n", "random_features.risk_slope_M", "random_features.risk_exponent_n")
def test_biased_ridge_fit_fails_the_rate(tmp_path, monkeypatch, claims):
    """A fit on half the labels (predictions shrunk to half): the risk stalls at Var f*/4."""
    real = rs.ridge_path
    monkeypatch.setattr(rs, "ridge_path",
                        lambda phi, y, nl, pv, yv, pt, ft, lam: real(phi, 0.5 * y, nl, pv, 0.5 * yv, pt, ft, lam))
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "rate", "--rate-targets", "keys1,pair1", "--reps", "6", "--n", "2^6..2^10/5",
                "--M-grid", "8,16,64"], out)[0] == 0
    claims.some_fail(out, "risk_slope_n", "risk_slope_M")
    claims.some_fail(out, "risk_exponent_n")


@pytest.mark.breaks("random_features.bias_raises_risk")
def test_bias_on_the_wrong_coordinate_fails_the_bias_claims(tmp_path, monkeypatch, claims):
    """The mean put on the constant coordinate (a shift of every score) instead of diag(I_d, 0)."""
    real = rs.draw_heads

    def broken(rng, M, d, *, r_bias=0.0, augment=True, w_var=None, mean_shape="diag"):
        W = real(rng, M, d, r_bias=0.0, augment=augment, w_var=w_var, mean_shape=mean_shape)
        W[:, d, d] += rft.bias_mu(r_bias, d, augment, w_var)
        return W
    monkeypatch.setattr(rs, "draw_heads", broken)
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "bias", "--reps", "8"], out)[0] == 0
    claims.some_fail(out, "bias_raises_risk")


def test_baseline_mixup_leaves_no_advantage(tmp_path, monkeypatch, claims):
    """The 'RF-MLP' built from attention features: no advantage left to measure (the measured
    ratio is ~1 where the predicted one is 8.8). On this small grid the jackknife SE cannot make
    beats_mlp fail (its negative control is the synthetic test_families_claims_follow_the_data);
    it must not hold with room to spare either."""
    real = rs.model_features
    monkeypatch.setattr(rs, "model_features", lambda model, *a, **kw: real("rfa" if model == "rfmlp" else model,
                                                                           *a, **kw))
    out = tmp_path / "b.zarr"
    assert run(["--quick", "--parts", "families", "--targets", "pair1", "--reps", "6", "--n", "2^6..2^10/5"],
               out)[0] == 0
    from studies.claims import slack

    c = claims.read(out)["random_features.beats_mlp[target=pair1]"]
    assert c.outcome != "holds" or (c.measured < 0.5 * c.prediction and slack(c) < 0.1)


# ---------------------------------------------------------------- claim logic on known data

def _params(tmp_path, extra):
    from studies.cli import build_parser, prepare

    parser = build_parser(study)
    args = parser.parse_args(["--out", str(tmp_path / "p.zarr")])
    prepare(study, parser, args)
    return {**study._common_params(args), "N": args.N, **extra}


def _ds(tmp_path, dims, coords, rel, extra=None, test_mse=None):
    ds = xr.Dataset({"rel_err": (dims, rel), "test_mse": (dims, rel if test_mse is None else test_mse)},
                    coords=coords)
    ds.attrs["params_json"] = json.dumps(_params(tmp_path, extra or {}))
    return ds


def _by_name(claims_list):
    return {c.key: c for c in claims_list}


@pytest.mark.breaks("random_features.bias_raises_risk", "random_features.bias_lowers_risk")
def test_bias_claims_follow_the_data(tmp_path):
    rng = np.random.default_rng(0)
    r = np.array([0.0, 0.5, 1.0])
    base = np.array([[0.05, 0.1, 0.3],     # keys2: rises with r
                     [0.2, 0.05, 0.04],    # pair1: falls
                     [0.5, 0.5, 0.5]])     # bilin1: no prediction
    rel = base[:, :, None] * np.exp(0.02 * rng.standard_normal((3, 3, 4)))
    coords = {"target": str_coord(["keys2", "pair1", "bilin1"]), "r": r, "rep": np.arange(4)}
    an, cl = study.analyze_bias(_ds(tmp_path, ("target", "r", "rep"), coords, rel, {"n_fixed": 2048, "M": 8}))
    got = _by_name(cl)
    assert got["random_features.bias_raises_risk[target=keys2, r=1]"].outcome == "holds"
    assert got["random_features.bias_lowers_risk[target=pair1, r=1]"].outcome == "holds"
    assert got["random_features.bias_lowers_risk[target=bilin1]"].outcome == "not tested"
    assert float(an["best_r"].sel(target="pair1")) == 1.0
    # swap the roles: both claims must fail
    rel2 = rel.copy()
    rel2[:2] = rel[1::-1]
    _, cl2 = study.analyze_bias(_ds(tmp_path, ("target", "r", "rep"), coords, rel2, {"n_fixed": 2048, "M": 8}))
    got2 = _by_name(cl2)
    assert got2["random_features.bias_raises_risk[target=keys2, r=1]"].outcome == "fails"
    assert got2["random_features.bias_lowers_risk[target=pair1, r=1]"].outcome == "fails"


@pytest.mark.breaks("random_features.attention_N_free", "random_features.mlp_degrades_in_N")
def test_N_claims_follow_the_data(tmp_path):
    rng = np.random.default_rng(1)
    N = np.array([2, 8, 32])
    rel = np.empty((1, 3, 2, 4))
    rel[0, :, 0] = 0.05  # rfa flat
    rel[0, :, 1] = np.array([0.1, 0.6, 0.95])[:, None]  # rfmlp degrades
    rel *= np.exp(0.02 * rng.standard_normal(rel.shape))
    coords = {"target": str_coord(["keys2"]), "N": N, "model": str_coord(["rfa", "rfmlp"]), "rep": np.arange(4)}
    extra = {"n_fixed": 2048, "M": 8}
    an, cl = study.analyze_N(_ds(tmp_path, ("target", "N", "model", "rep"), coords, rel, extra))
    got = _by_name(cl)
    assert got["random_features.attention_N_free[target=keys2]"].outcome == "holds"
    assert got["random_features.mlp_degrades_in_N[target=keys2, N=2->32]"].outcome == "holds"
    B = an["theory_log10_B"].sel(B_target="keys2")  # keys2 with Gegenbauer terms has an exact complexity
    assert float(B.sel(kernel_model="rfa").max() - B.sel(kernel_model="rfa").min()) < 1e-9
    assert np.all(np.diff(B.sel(kernel_model="rfmlp").values) > 0)
    # attention that grows like the MLP's table exponent (err ~ N) and an MLP that improves with N
    rel2 = rel.copy()
    rel2[0, :, 0] = (0.01 * N)[:, None] * np.exp(0.02 * rng.standard_normal((3, 4)))
    rel2[0, :, 1] = np.array([0.6, 0.3, 0.1])[:, None] * np.exp(0.02 * rng.standard_normal((3, 4)))
    _, cl2 = study.analyze_N(_ds(tmp_path, ("target", "N", "model", "rep"), coords, rel2, extra))
    got2 = _by_name(cl2)
    assert got2["random_features.attention_N_free[target=keys2]"].outcome == "fails"
    assert got2["random_features.mlp_degrades_in_N[target=keys2, N=2->32]"].outcome == "fails"


@pytest.mark.breaks("random_features.beats_mlp", "random_features.outside_class")
def test_families_claims_follow_the_data(tmp_path):
    rng = np.random.default_rng(2)
    targets = ["keys2", "pair1", "keys3", "keykey"]
    models = ["rfa", "brfa", "rfmlp"]
    n = np.array([256, 512, 1024, 2048])
    rel = np.empty((4, 4, 3, 4))
    rel[0] = np.array([0.05, 0.3, 0.9])[None, :, None]   # keys2: RFA below the MLP's final error at n_min
    rel[1, :, 0] = (0.8 * (n / 256.0) ** -1.0)[:, None]  # pair1: RFA reaches the MLP's 0.75 near n = 273
    rel[1, :, 1] = 0.05
    rel[1, :, 2] = 0.75
    rel[2] = np.array([0.9, 0.95, 1.0])[None, :, None]   # keys3: the MLP learns nothing
    rel[3] = np.array([1.0, 1.0, 0.5])[None, :, None]    # keykey: attention stuck at 1
    rel *= np.exp(0.01 * rng.standard_normal(rel.shape))
    coords = {"target": str_coord(targets), "n": n, "model": str_coord(models), "rep": np.arange(4)}
    extra = {"models": models, "M": 8}
    an, cl = study.analyze_families(_ds(tmp_path, ("target", "n", "model", "rep"), coords, rel, extra))
    got = _by_name(cl)
    pred = dict(zip(an["exact_target"].values, an["theory_n_ratio"].values))
    assert pred["keys2"] > 8  # the theory's ratio for d = 8, N = 8 exceeds the grid's span 2048/256
    assert got["random_features.beats_mlp[target=keys2]"].outcome == "not tested"
    assert "span 8" in got["random_features.beats_mlp[target=keys2]"].reason
    # pair1: measured ratio 2048/273 ~ 7.5 against the predicted ~ 15: fails
    assert got["random_features.beats_mlp[target=pair1]"].outcome == "fails"
    assert float(an["measured_n_ratio"].sel(target="pair1")) == pytest.approx(2048 / 273, rel=0.1)
    assert got["random_features.beats_mlp[target=keys3]"].outcome == "not tested"
    assert "not resolved" in got["random_features.beats_mlp[target=keys3]"].reason
    assert got["random_features.outside_class[target=keykey, model=rfa]"].outcome == "holds"
    # attention learning the key-key control contradicts the class
    rel[3, :, 0] = 0.5
    _, cl2 = study.analyze_families(_ds(tmp_path, ("target", "n", "model", "rep"), coords, rel, extra))
    assert any(c.name == "outside_class" and "model=rfa" in c.where and c.outcome == "fails" for c in cl2)


@pytest.mark.breaks("random_features.risk_slope_n", "random_features.risk_slope_M", "random_features.risk_exponent_n")
def test_rate_claims_follow_the_data(tmp_path):
    rng = np.random.default_rng(3)
    n = np.array([256, 512, 1024, 2048, 4096])
    M = np.array([16, 32, 64, 128])
    mse = 5.0 * n[None, :, None, None] ** -0.9 * M[None, None, :, None] ** -0.7
    mse = mse * np.exp(0.03 * rng.standard_normal((1, 5, 4, 5)))
    coords = {"target": str_coord(["keys2"]), "n": n, "M": M, "rep": np.arange(5)}
    an, cl = study.analyze_rate(_ds(tmp_path, ("target", "n", "M", "rep"), coords, mse, {"N": 8}, test_mse=mse))
    got = {c.name: c for c in cl}
    # the fitted slopes recover the true exponents within 5 standard errors
    assert abs(float(an["slope_n"][0, -1]) + 0.9) <= 5 * float(an["slope_n_se"][0, -1])
    assert abs(float(an["slope_M"][0, -1]) + 0.7) <= 5 * float(an["slope_M_se"][0, -1])
    assert got["risk_slope_n"].outcome == "holds" and got["risk_slope_M"].outcome == "holds"
    assert got["below_bound"].outcome == "not tested" and "vacuous" in got["below_bound"].reason
    # two-sided: a risk falling like n^-0.9, faster than ridge regression on these heads can (theory's
    # deterministic equivalent for keys2 at d = N = 8, M = 128: n^-0.64), passes the bound but not the sharp claim
    pred = float(an["theory_exponent_n"].sel(target="keys2"))
    assert -0.75 < pred < -0.55
    assert got["risk_exponent_n"].outcome == "fails"
    assert "theory_bound" in an and np.all(an["theory_bound"].values > 0)
    # a risk that decays more slowly than the bound contradicts both slope claims
    flat = mse * (n[None, :, None, None] / 256.0) ** 0.85 * (M[None, None, :, None] / 16.0) ** 0.6
    _, cl2 = study.analyze_rate(_ds(tmp_path, ("target", "n", "M", "rep"), coords, flat, {"N": 8}, test_mse=flat))
    got2 = {c.name: c for c in cl2}
    assert got2["risk_slope_n"].outcome == "fails" and got2["risk_slope_M"].outcome == "fails"
    assert got2["risk_exponent_n"].outcome == "fails"
    # the same risk falling at theory's own exponent holds the sharp claim
    on = 5.0 * n[None, :, None, None] ** pred * M[None, None, :, None] ** -0.7
    on = on * np.exp(0.03 * rng.standard_normal((1, 5, 4, 5)))
    _, cl3 = study.analyze_rate(_ds(tmp_path, ("target", "n", "M", "rep"), coords, on, {"N": 8}, test_mse=on))
    assert {c.name: c for c in cl3}["risk_exponent_n"].outcome == "holds"


def test_fits_at_the_numerical_floor_are_not_read_for_an_exponent(tmp_path):
    """Linear attention fits keys2 exactly: relative errors of 1e-8..1e-5 with the smallest ridge of
    the grid in every fit. Their growth in N (~N^2, the ridge's bias) is not a sample-complexity
    effect: attention_N_free is not tested, and says why; the same errors with a larger ridge are
    read as data (and then no form fits them)."""
    rng = np.random.default_rng(5)
    N = np.array([2, 8, 32])
    rel = np.empty((1, 3, 2, 4))
    rel[0, :, 0] = (2e-8 * N**2)[:, None] * np.exp(0.1 * rng.standard_normal((3, 4)))
    rel[0, :, 1] = np.array([0.1, 0.6, 0.95])[:, None] * np.exp(0.02 * rng.standard_normal((3, 4)))
    coords = {"target": str_coord(["keys2"]), "N": N, "model": str_coord(["rfa", "rfmlp"]), "rep": np.arange(4)}
    ds = _ds(tmp_path, ("target", "N", "model", "rep"), coords, rel, {"n_fixed": 2048, "M": 8})
    lam_min = min(json.loads(ds.attrs["params_json"])["lambdas"])
    ds["best_lambda"] = (("target", "N", "model", "rep"), np.full(rel.shape, lam_min))
    an, cl = study.analyze_N(ds)
    c = _by_name(cl)["random_features.attention_N_free[target=keys2]"]
    assert c.outcome == "not tested" and "numerical floor" in c.reason and "float64" in c.reason
    assert bool(an["at_numerical_floor"].sel(target="keys2"))
    ds["best_lambda"] = (("target", "N", "model", "rep"), np.full(rel.shape, 100 * lam_min))
    _, cl2 = study.analyze_N(ds)
    c2 = _by_name(cl2)["random_features.attention_N_free[target=keys2]"]
    assert "numerical floor" not in c2.reason  # read as data: neither N^0 nor N^1 fits an N^2 growth
    assert not bool(_by_name(cl2) and study.analyze_N(ds)[0]["at_numerical_floor"].sel(target="keys2"))


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
def test_quick_run_on_the_gpu(tmp_path, capsys, claims):
    """``--quick --device gpu`` end to end: CuPy streams, CUDA features, device Gram and eigh;
    every group written with finite values and claims, the exact kernel checks holding."""
    out = tmp_path / "rf_gpu.zarr"
    assert study.main(["--quick", "--device", "gpu", "--out", str(out), "--no-progress"]) == 0
    for g in GROUPS:
        ds = xr.open_zarr(str(out), group=g, consolidated=False)
        assert bool(ds["done"].all())
        assert json.loads(ds.attrs["params_json"])["device"] == "gpu"
        assert "claim_outcome" in ds, g
        for k in ds.data_vars:
            if np.issubdtype(ds[k].dtype, np.floating) and not k.startswith("claim_"):
                assert np.isfinite(ds[k].values).all(), (g, k)
    got = claims.read(out)
    assert got["random_features.kernel_clt[kmodel=rfa]"].outcome == "holds"
    assert got["random_features.permutation_invariance[kmodel=rfa]"].outcome == "holds"
    fam = xr.open_zarr(str(out), group="families", consolidated=False)
    rel = fam["rel_err"].values
    assert np.all((rel > 0) & (rel < 10))
