"""python -m studies.hardmax, end to end."""
import numpy as np
import pytest

from studies import hardmax
from studies.sweep import open_result

QUICK = ["--quick", "--no-progress"]
NAMES = ("bias_exact", "bias_slope", "pure_curve", "pure_rate", "coupled_band", "coupled_form")


def run(argv):
    try:
        return hardmax.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


def test_quick_run_writes_dataset_claims_and_figure(tmp_path, capsys, claims):
    out = tmp_path / "h.zarr"
    assert run(QUICK + ["--out", str(out), "--plot"]) == 0
    ds = open_result(out)
    assert ds["lam_deficit"].dims == ("lam", "n", "rep") and ds["pure_err"].dims == ("n", "rep")
    assert bool(ds["done"].all())
    for v in ("bias", "bias_se", "theory_bias", "theory_bias_finite_n", "bias_slope", "theory_bias_slope",
              "theory_pure_err", "theory_coupled_lower", "theory_coupled_upper", "claim_outcome"):
        assert v in ds, v
    assert not [v for v in ds.data_vars if v.startswith("verdict_")]
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f" and not v.startswith("claim_"):
            assert np.all(np.isfinite(ds[v].values)), v
    # measured bias vs the exact rho (1 - A_d): the estimator is O(n*/n)-accurate
    w = ds["bias_fit_mask"].values.astype(bool)
    np.testing.assert_allclose(ds["bias"].values[w], ds["theory_bias"].values[w], rtol=0.05)
    assert out.with_suffix(".png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "bias slope in lam" in text and "claims:" in text and "verdict" not in text
    got = claims.none_fail(out)
    assert {c.name for c in got.values()} == set(NAMES)
    # d = 3 on this grid: every claim is tested, and the coupled rate is logarithmic
    assert all(c.outcome == "holds" for c in got.values()), {k: c.reason for k, c in got.items()}
    assert got["hardmax.coupled_form"].prediction_text.endswith("log log n")
    # rerunning resumes: nothing recomputed, same claims
    assert run(QUICK + ["--out", str(out)]) == 0
    assert "0 computed" in capsys.readouterr().out
    assert claims.read(out).keys() == got.keys()


OFF_DEFAULT = {
    # the case: d = 50, where lam_n kappa_1 << d and the coupled error is a slow power law
    "d50": ["--d", "50"],
    "d5_c2": ["--d", "5", "--c", "2", "--n", "100,1000,10000", "--lam", "10,100,1000"],
    "radius2_weak_A": ["--radius", "2", "--A-scale", "0.5", "--lam", "1..100/4"],
    # a strong coupling: lam_n kappa_1 so large that n*(lam_n)/n is not small at the smallest n
    "d3_c20": ["--c", "20", "--n", "100..1e4/5"],
}


@pytest.mark.parametrize("name", sorted(OFF_DEFAULT))
def test_off_default_configurations_hold_or_say_why(tmp_path, claims, name):
    out = tmp_path / f"{name}.zarr"
    assert run(QUICK + OFF_DEFAULT[name] + ["--out", str(out)]) == 0
    got = claims.none_fail(out)
    ds = open_result(out)
    if name == "d50":
        # the theory's band is no logarithmic curve on this grid: the form is not claimed logarithmic
        form = got["hardmax.coupled_form"]
        assert not form.prediction_text.endswith("log log n")
        assert float(ds["theory_pure_slope"]) == pytest.approx(-1 / 49)
    if name == "d5_c2":
        assert float(ds["theory_pure_slope"]) == pytest.approx(-0.25)
        # the coupled limit rho (d-1) / (2 c kappa_1) = 1 for d = 5, c = 2
        assert float(ds["theory_coupled_x_logn_limit"]) == pytest.approx(1.0)
    if name == "d3_c20":
        band = got["hardmax.coupled_band"]
        assert "of 5" in band.prediction_text and "(5 of 5" not in band.prediction_text


# ------------------------------------------------------------------------ broken ingredients
BROKEN = QUICK + ["--reps", "10"]


@pytest.mark.breaks("hardmax.pure_curve")
def test_hardmax_that_skips_half_the_tokens_fails_the_curve(tmp_path, monkeypatch, claims):
    """An argmax over the first half of the keys only (a lost chunk): the empirical hardmax
    then picks the wrong token, and its error is that of n/2 tokens."""
    from sim import token_sample as sts

    real = sts._hardmax_attention
    monkeypatch.setattr(sts, "_hardmax_attention", lambda a, keys, *r, **kw: real(a, keys[: keys.shape[0] // 2], **kw))
    out = tmp_path / "b.zarr"
    assert run(BROKEN + ["--out", str(out)]) == 0
    claims.some_fail(out, "pure_curve")


@pytest.mark.breaks("hardmax.pure_rate")
def test_hardmax_with_a_capped_buffer_fails_the_rate(tmp_path, monkeypatch, claims):
    """An argmax that only ever sees the first 1000 keys (a fixed-size buffer): the error stops
    falling past n = 1000, so the rate is wrong, not just the level."""
    from sim import token_sample as sts

    real = sts._hardmax_attention
    monkeypatch.setattr(sts, "_hardmax_attention", lambda a, keys, *r, **kw: real(a, keys[:1000], **kw))
    out = tmp_path / "b.zarr"
    assert run(BROKEN + ["--out", str(out)]) == 0
    claims.some_fail(out, "pure_rate")


@pytest.mark.breaks("hardmax.coupled_form")
def test_power_law_coupling_fails_the_logarithmic_form(tmp_path, monkeypatch, claims):
    """lam_n = c sqrt(n) in the measurement: the error becomes a power law n^(-1/2), which the
    form comparison tells from the predicted logarithmic rate."""
    monkeypatch.setattr(hardmax, "_coupled_lam", lambda c, n: c * np.sqrt(n))
    out = tmp_path / "b.zarr"
    assert run(BROKEN + ["--out", str(out)]) == 0
    claims.some_fail(out, "coupled_form")


@pytest.mark.breaks("hardmax.coupled_band")
@pytest.mark.parametrize("name, coupling", [("log10", lambda c, n: c * np.log10(n)),
                                            ("x1.3", lambda c, n: 1.3 * c * np.log(n))], ids=["log10", "x1.3"])
def test_wrong_coupled_parameter_fails_the_band(tmp_path, monkeypatch, claims, name, coupling):
    """lam_n = c log10 n, or a coupling 1.3 times too large, in the measurement where the theory
    has c log n: the error leaves the first-order band."""
    monkeypatch.setattr(hardmax, "_coupled_lam", coupling)
    out = tmp_path / "b.zarr"
    assert run(BROKEN + ["--out", str(out)]) == 0
    claims.some_fail(out, "coupled_band")


@pytest.mark.breaks("hardmax.bias_exact", "hardmax.bias_slope")
def test_clipped_attention_parameter_fails_the_bias(tmp_path, monkeypatch, claims):
    """Scores clipped at lam = 30 (a saturating temperature): the bias stops falling."""
    from sim import token_sample as sts

    real = sts.empirical_attention
    monkeypatch.setattr(sts, "empirical_attention",
                        lambda x, t, A, V=None, lam=1.0, **kw: real(x, t, A, V, min(lam, 30.0), **kw))
    out = tmp_path / "b.zarr"
    assert run(BROKEN + ["--out", str(out)]) == 0
    claims.some_fail(out, "bias_exact")
    claims.some_fail(out, "bias_slope")


# ------------------------------------------------------------------------------ input checks
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
