"""End-to-end tests of ``python -m studies.tensor_attention`` (in-process, small configurations):
the quick run and its claims, configurations off the defaults where the theory holds, and
deliberately broken ingredients that a named claim must catch."""
from __future__ import annotations

import numpy as np
import pytest

import sim.tensor_attention.match3 as sim_match3
import sim.tensor_attention.polynomial as sim_poly
from studies import tensor_attention as study
from studies.cli import run_params
from studies.sweep import open_result
from theory import tensor_attention as th


def run(argv):
    try:
        return study.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


def open_groups(out):
    """``{group: dataset}`` of the groups the store at ``out`` holds."""
    return {g: open_result(out / g) for g in study.GROUPS if (out / g).exists()}


def in_groups(groups, name):
    """The variable ``name`` from the group that holds it."""
    [ds] = [ds for ds in groups.values() if name in ds]
    return ds[name]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ta") / "quick.zarr"
    rc = run(["--quick", "--out", str(out), "--plot", "--no-progress"])
    return rc, out


def test_quick_end_to_end(quick_run, claims):
    rc, out = quick_run
    assert rc == 0
    assert out.exists() and out.with_suffix(".png").stat().st_size > 10_000
    groups = open_groups(out)
    assert sorted(groups) == sorted(study.GROUPS)
    for ds in groups.values():
        assert bool(ds["done"].all())
        assert not [v for v in ds.data_vars if v.startswith("verdict_")]
        assert "claim_outcome" in ds
    for name in ("err_out", "time_exact_tensor", "time_approx_tensor", "match3_acc"):
        assert np.all(np.isfinite(in_groups(groups, name).values))
    for name in ("theory_eps", "theory_eps_proven", "theory_rounding_allowance", "theory_err_bound", "theory_rank",
                 "theory_slope", "theory_decay_slope", "theory_crossover_n_tensor", "theory_match3_entry_bound",
                 "theory_match3_accuracy_tensor", "theory_entry_threshold"):
        assert any(name in ds for ds in groups.values()), name
    assert groups["error"]["err_out"].dims == ("family", "k", "B", "degree", "inputs", "rep")
    got = claims.none_fail(out)
    # guaranteed even in the tiny quick run: the certified bound holds, the construction is exact
    for m in th.METHODS:
        for k in (2, 3):
            assert got[f"tensor_attention.bound[{m}, k={k}]"].outcome == "holds"
    assert got["tensor_attention.match3_tensor[N=8]"].outcome == "holds"
    # the sharp claim: every run's error is theory's, from the polynomial's error profile at its logits
    for m in th.METHODS:
        for k in (2, 3):
            assert got[f"tensor_attention.error_profile[{m}, k={k}]"].outcome == "holds"
    ds = open_result(out / "error")
    assert "theory_err_out" in ds and ds["theory_err_out"].dims == ds["err_out"].dims
    # k = 3, B = 2 (R = 8): no degree <= 8 has eps <= 0.1, so the decay rate cannot be measured
    c = got["tensor_attention.decay[taylor, k=3, B=2]"]
    assert c.outcome == "not tested" and "a slope needs >= 3" in c.reason
    # quick timings are all below the measurable 30 ms: the runtime claims are not tested, and say why
    for impl in ("exact_slope[matrix]", "exact_slope[tensor]", "approx_slope[matrix]", "approx_slope[tensor]"):
        c = got[f"tensor_attention.{impl}"]
        assert c.outcome == "not tested" and "30 ms" in c.reason, impl


def test_summary_prints_claims_not_verdicts(tmp_path, capsys):
    out = tmp_path / "m3.zarr"
    assert run(["--parts", "match3", "--N", "6,8", "--sequences", "3", "--train", "6", "--reps", "2",
                "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "claims:" in text and "match3_tensor[N=6]" in text and "verdict" not in text
    groups = open_groups(out)
    assert list(groups) == ["match3"]
    assert "match3_accuracy" in groups["match3"]


def test_analysis_is_a_pure_function_of_the_raw_dataset(quick_run):
    _, out = quick_run
    names = {"error": ("err_max", "theory_eps", "theory_err_bound", "decay_slope", "theory_err_out"),
             "runtime": ("fit_slope",),
             "match3": ("match3_accuracy",)}
    for group, ds in open_groups(out).items():
        again, claims = study.analyze(ds)
        for name in names[group]:
            np.testing.assert_array_equal(again[name].values, ds[name].values)
        assert [c.key for c in claims] == [str(k) for k in ds["claim"].values]
        assert [c.outcome for c in claims] == [str(v) for v in ds["claim_outcome"].values]


def test_rerun_resumes_without_recomputing(quick_run, capsys):
    _, out = quick_run
    before = open_result(out / "error")["err_out"].values
    assert run(["--quick", "--out", str(out), "--no-progress"]) == 0
    assert "0 computed, 2 already done" in capsys.readouterr().out
    np.testing.assert_array_equal(open_result(out / "error")["err_out"].values, before)


# ------------------------------------------------------------- off the default configuration
OFF_DEFAULT = {
    # another head dimension and the 1/sqrt(d) scale: R = sqrt(d) B^k
    "d3_sqrt_scale": ["--parts", "error", "--d", "3", "--scale", "1/sqrt(d)", "--B", "0.5,0.8", "--degrees", "1..9",
                      "--n-error", "12", "--reps", "2"],
    # matrix attention only, Taylor only, a finer B grid
    "k2_taylor": ["--parts", "error", "--k", "2", "--methods", "taylor", "--B", "0.5..1.5:0.5", "--degrees", "1..12",
                  "--n-error", "16", "--reps", "2"],
    # orders 2, 3 and 4 (k = 4 through the streaming engine)
    # (every degree: a decay slope's standard error comes from the residuals of its window, and the
    # power rule needs 3 degrees of freedom, 5 degrees in the window)
    "k234": ["--parts", "error", "--k", "2,3,4", "--B", "0.5,0.75", "--degrees", "2..10", "--n-error", "8",
             "--reps", "2"],
    # a range where no degree of the grid certifies anything: the bound is not tested, not "true"
    "bound_undefined": ["--parts", "error", "--k", "3", "--methods", "taylor", "--B", "2", "--degrees", "1,2,3",
                        "--n-error", "8", "--reps", "2"],
    # other Match3 lengths (so other moduli M)
    "match3_other_N": ["--parts", "match3", "--N", "5,10,14", "--sequences", "10", "--train", "40", "--reps", "2"],
}


@pytest.mark.parametrize("name", sorted(OFF_DEFAULT))
def test_off_default_configurations_hold_or_say_why(tmp_path, claims, name):
    out = tmp_path / f"{name}.zarr"
    assert run(OFF_DEFAULT[name] + ["--no-progress", "--out", str(out)]) == 0
    got = claims.none_fail(out)
    outcomes = {k: c.outcome for k, c in got.items()}
    if name == "d3_sqrt_scale":
        assert outcomes["tensor_attention.bound[taylor, k=3]"] == "holds"
        assert sum(k.startswith("tensor_attention.decay") and v == "holds" for k, v in outcomes.items()) >= 4
    if name == "k2_taylor":
        assert set(k.split("[")[0] for k in outcomes) == {"tensor_attention.bound", "tensor_attention.decay",
                                                            "tensor_attention.error_profile"}
        assert all(v == "holds" for v in outcomes.values()), outcomes
    if name == "k234":
        assert outcomes["tensor_attention.bound[chebyshev, k=4]"] == "holds"
        assert outcomes["tensor_attention.decay[taylor, k=4, B=0.75]"] == "holds"
    if name == "bound_undefined":
        c = got["tensor_attention.bound[taylor, k=3]"]
        assert c.outcome == "not tested" and "eps >= 1" in c.reason
    if name == "match3_other_N":
        assert all(outcomes[f"tensor_attention.match3_tensor[N={n}]"] == "holds" for n in (5, 10, 14))


def _synthetic_times(ds, exact_power=None, approx_power=None, seed=0, reps=6):
    """The quick store's timings replaced by a machine whose time is proportional to theory's
    flops (5% log-normal noise, every size measurable, ``reps`` replicates: the slopes' standard
    errors need three degrees of freedom); ``*_power`` replaces a law by n^power."""
    rng = np.random.default_rng(seed)
    p = run_params(ds)
    d, g = p["d"], p["runtime"]["degree"]
    ds = ds.isel(rep=np.arange(reps) % ds.sizes["rep"]).assign_coords(rep=np.arange(reps)).copy()
    grids = {"exact_matrix": "n_matrix", "exact_tensor": "n_tensor", "approx_matrix": "n_approx",
             "approx_tensor": "n_approx"}
    for impl, grid in grids.items():
        n = ds[grid].values.astype(float)
        k = study.IMPL_ORDER[impl]
        flops = th.exact_flops(n, d, k, lower_order=True) if impl.startswith("exact") else \
            th.approx_flops(n, d, g, k, lower_order=True)
        power = exact_power if impl.startswith("exact") else approx_power
        if power is not None:
            flops = n**power
        t = 0.05 * (flops / flops[0])[:, None] * np.exp(0.05 * rng.standard_normal((n.size, ds.sizes["rep"])))
        ds[f"time_{impl}"] = ((grid, "rep"), t)
    return ds


def test_runtime_claims_hold_on_flop_proportional_times(quick_run, claims):
    _, out = quick_run
    _, got = study.analyze(_synthetic_times(open_result(out / "runtime")))
    got = claims.none_fail(got)
    for impl in ("exact_slope[matrix]", "exact_slope[tensor]", "approx_slope[matrix]", "approx_slope[tensor]"):
        assert got[f"tensor_attention.{impl}"].outcome == "holds", impl


# --------------------------------------------------------------------- broken ingredients
@pytest.mark.breaks("tensor_attention.exact_slope", "tensor_attention.approx_slope")
def test_broken_timer_fails_the_slopes(quick_run, claims):
    """Timings of an 'approximation' that hides quadratic work, and of an 'exact' engine that
    skips most tuples (time ~ n^1.5): the slope claims fail."""
    _, out = quick_run
    _, got = study.analyze(_synthetic_times(open_result(out / "runtime"), exact_power=1.5, approx_power=2.0))
    bad = claims.some_fail(got, "approx_slope")
    assert {c.where for c in bad.values()} == {"matrix", "tensor"}
    claims.some_fail(got, "exact_slope")


@pytest.mark.breaks("tensor_attention.bound", "tensor_attention.error_profile", "tensor_attention.decay")
def test_wrong_taylor_coefficient_fails_the_bound(tmp_path, monkeypatch, claims):
    """c_2 of the Taylor polynomial off by 1% in the approximation only: the certified bound
    (whose eps theory computes without those coefficients), the predicted error of every run and
    the decay rate catch it (the decay on a grid of degrees fine enough for its regression)."""
    real = sim_poly._coefficients

    def broken(g, R, method):
        c = np.array(real(g, R, method), dtype=float)
        if method == "taylor" and g >= 2:
            c[2] *= 1.01
        return c

    monkeypatch.setattr(sim_poly, "_coefficients", broken)
    out = tmp_path / "b.zarr"
    assert run(["--parts", "error", "--quick", "--no-progress", "--out", str(out)]) == 0
    bad = claims.some_fail(out, "bound")
    assert {c.where for c in bad.values() if c.name == "bound"} == {"taylor, k=2", "taylor, k=3"}
    bad = claims.some_fail(out, "error_profile")
    assert {c.where for c in bad.values()} == {"taylor, k=2", "taylor, k=3"}
    assert claims.outcome(out, "tensor_attention.bound[chebyshev, k=3]") == "holds"
    assert claims.outcome(out, "tensor_attention.error_profile[chebyshev, k=3]") == "holds"
    out2 = tmp_path / "b2.zarr"
    assert run(["--parts", "error", "--k", "2", "--methods", "taylor", "--B", "0.75", "--degrees", "2..9",
                "--n-error", "12", "--reps", "2", "--no-progress", "--out", str(out2)]) == 0
    claims.some_fail(out2, "decay")


@pytest.mark.breaks("tensor_attention.bound", "tensor_attention.error_profile")
def test_wrong_softmax_scale_in_exact_attention_fails_the_bound(tmp_path, monkeypatch, claims):
    real = study.sta.kth_order_attention
    monkeypatch.setattr(study.sta, "kth_order_attention",
                        lambda Q, keys, values, *, scale=None, **kw: real(Q, keys, values, scale=1.05 * scale, **kw))
    out = tmp_path / "b.zarr"
    assert run(["--parts", "error", "--quick", "--no-progress", "--out", str(out)]) == 0
    claims.some_fail(out, "bound")
    claims.some_fail(out, "error_profile")


@pytest.mark.breaks("tensor_attention.error_profile")
def test_transposed_feature_weights_fail_the_error_profile(tmp_path, monkeypatch, claims):
    """The CP weights w_alpha of the polynomial kernel reversed within each degree (a wrong
    multinomial factor for every mixed multi-index): the approximation is no longer P(logits), so
    its error departs from theory's prediction, while eps (theory's, on the polynomial) is unchanged."""
    real = sim_poly.th.feature_weights

    def broken(index, coeffs, scale):
        w = np.array(real(index, coeffs, scale), dtype=float)
        out = w.copy()
        for t in np.unique(index.degree):
            sel = np.flatnonzero(index.degree == t)
            out[sel] = w[sel[::-1]]
        return out
    monkeypatch.setattr(sim_poly.th, "feature_weights", broken)
    out = tmp_path / "b.zarr"
    assert run(["--parts", "error", "--quick", "--no-progress", "--out", str(out)]) == 0
    bad = claims.some_fail(out, "error_profile")
    assert any("k=3" in c.where for c in bad.values())


@pytest.mark.breaks("tensor_attention.bound", "tensor_attention.error_profile")
def test_permuted_value_tensor_fails_the_bound_and_match3(tmp_path, monkeypatch, claims):
    """The rows of the last value matrix no longer follow their keys, in the exact engine of
    the error part and in the Match3 construction."""
    real = study.sta.kth_order_attention

    def broken(Q, keys, values, **kw):
        values = list(values)
        values[-1] = values[-1][::-1]
        return real(Q, keys, values, **kw)

    monkeypatch.setattr(study.sta, "kth_order_attention", broken)
    real_t = sim_match3.tensor_attention
    monkeypatch.setattr(sim_match3, "tensor_attention",
                        lambda Q, K1, K2, V1, V2, **kw: real_t(Q, K1, K2, V1, V2[::-1], **kw))
    out = tmp_path / "b.zarr"
    assert run(["--parts", "error,match3", "--quick", "--no-progress", "--out", str(out)]) == 0
    claims.some_fail(out, "bound")
    claims.some_fail(out, "error_profile")
    claims.some_fail(out, "match3_tensor")  # a consistency check, broken here through the engine it runs on


def test_match3_construction_with_a_wrong_modulus_fails(tmp_path, monkeypatch, claims):
    real = sim_match3.match3_tensor_inputs
    monkeypatch.setattr(sim_match3, "match3_tensor_inputs", lambda x, M: real(x, M + 1))
    out = tmp_path / "b.zarr"
    assert run(["--parts", "match3", "--quick", "--no-progress", "--out", str(out)]) == 0
    bad = claims.some_fail(out, "match3_tensor")
    assert {c.where for c in bad.values()} == {"N=8", "N=12"}


@pytest.mark.breaks("tensor_attention.match3_pairwise")
def test_pairwise_baseline_that_sees_triples_fails_the_chance_claim(tmp_path, monkeypatch, claims):
    """A 'pairwise' head that secretly runs the triple-wise construction beats chance."""
    monkeypatch.setattr(study.sta, "match2_pairwise_scores", lambda x, M: study.sta.match3_tensor_scores(x, M))
    out = tmp_path / "b.zarr"
    assert run(["--parts", "match3", "--quick", "--no-progress", "--out", str(out)]) == 0
    claims.some_fail(out, "match3_pairwise")


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize("argv, message", [
    (["--degrees=-1..3"], "degree must be >= 0"),
    (["--degrees", "-1..3"], "--degrees"),  # argparse reads a leading dash as an option: still one line
    (["--B", "0,1"], "entry bounds must be positive"),
    (["--B=-1..1"], "entry bounds must be positive"),
    (["--timing-B", "0"], "must be a positive number"),
    (["--n-tensor", "512,1024,2048"], "--force"),
    (["--n-matrix", "2^15..2^17"], "--force"),
    (["--n-error", "2048", "--k", "3"], "--force"),
    (["--parts", "error,bogus"], "unknown group"),
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
    assert run(["--quick", "--device", "gpu", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpu" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.gpu
def test_quick_on_the_gpu(tmp_path, claims):
    """--device gpu runs every part on the GPU twins; the error part sees the same inputs as the
    CPU run (drawn on the host), so its errors agree with the CPU's to rounding."""
    out = tmp_path / "gpu.zarr"
    assert run(["--quick", "--device", "gpu", "--out", str(out), "--no-progress"]) == 0
    groups = open_groups(out)
    for ds in groups.values():
        assert ds.attrs["device"] == "gpu" and "gpu_engines" in ds.attrs
        assert bool(ds["done"].all())
    got = claims.none_fail(out)
    assert got["tensor_attention.bound[chebyshev, k=3]"].outcome == "holds"
    assert got["tensor_attention.match3_tensor[N=8]"].outcome == "holds"
    for name in ("err_out", "time_exact_tensor", "time_approx_tensor", "match3_acc"):
        assert np.all(np.isfinite(in_groups(groups, name).values))
    ds = groups["error"]
    cpu = tmp_path / "cpu.zarr"
    assert run(["--quick", "--parts", "error", "--out", str(cpu), "--no-progress"]) == 0
    ref = open_result(cpu / "error")
    np.testing.assert_array_equal(ds["rejected"].values, ref["rejected"].values)
    np.testing.assert_allclose(ds["err_out"].values, ref["err_out"].values, rtol=1e-6, atol=1e-11)
    np.testing.assert_array_equal(ds["vmax"].values, ref["vmax"].values)


def test_force_lifts_the_exact_size_limit_check():
    from studies.cli import build_parser, prepare

    parser = build_parser(study)
    args = parser.parse_args(["--quick", "--n-tensor", "512,1024,2048", "--force", "--out", "/tmp/unused-ta.zarr"])
    prepare(study, parser, args)  # no UsageError
    assert max(args.n_tensor) == 2048


def test_crossing_helper():
    n = np.array([10.0, 20.0, 40.0, 80.0])
    t_exact = np.array([1.0, 2.0, 8.0, 32.0])
    t_approx = np.array([4.0, 4.0, 4.0, 4.0])
    nx = study._crossing(n, t_exact, t_approx)
    assert 20 < nx < 40
    assert study._crossing(n, t_approx, t_approx * 2) is None
