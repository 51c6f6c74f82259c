"""Token selection: ``python -m studies.token_selection [--parts ...]``.

Attention over m of n keys -- uniform sampling, importance sampling from p, top-k, the hybrid
top-k + uniform tail (vAttention, MagicPIG), Token Sparse Attention's coverage rule -- measured
against the predictions of :mod:`theory.token_selection` (the token-sample theory at budget m;
derivations in ``docs/theory/token_selection.md``) for each run's own keys, laws and budgets.

Five groups of one Zarr store (default ``results/token_selection.zarr``), chosen by the shared
``--parts`` flag; each group's module holds its sweep, analysis, claims and table:

==============  ==============================================================================
``budget``      :mod:`.budget` -- error against budget f = m/n = 2^-1 .. 2^-10 per policy, token
                law (Gaussian, sphere, Gaussian mixture) and score spread sigma: claims
                ``uniform_rate``, ``uniform_constant``, ``importance_flat``, ``topk_law``,
                ``topk_tail_mass``, ``topk_identity`` (consistency), ``hybrid``
``phase``       :mod:`.phase` -- uniform vs top-k at equal budget over (sigma, f), d and n up to
                2^18: claim ``crossover`` (sigma* with the run's own finite-n B_n)
``vattention``  :mod:`.vattention` -- vAttention's budget rule, as published and as implemented:
                claim ``vattention_coverage``, and findings where its promise breaks
``coverage``    :mod:`.coverage` -- Token Sparse Attention's coverage rule: claim
                ``coverage_bound`` for scored queries; the window proxy's tail mass measured
``minilm``      :mod:`.minilm` -- the policies on every head of MiniLM (the encoder study's
                model and text, offline): claim ``minilm_winner``; skipped with a note when the
                weights are not installed
==============  ==============================================================================

Every analysis reads its parameters from the store (``params_json`` of its group), so
``python -m studies.reanalyze`` re-derives the claims of any finished store. ``--preset scale``
runs ``budget`` and ``phase`` at n = 2^20 on generated keys (:class:`sim.attention.TokenStream`:
O(budget + block) memory per query). CPU only (the selection kernels have no GPU twin yet).
"""
from __future__ import annotations

import sys

from studies.cli import (
    PAIR_RATE,
    Part,
    StoreParamsError,
    UsageError,
    check_resources,
    choice_list,
    float_type,
    group_of,
    parse_n_grid,
    parse_range,
    positive_int,
    run_params,
    study_main,
)
from studies.token_selection import budget, coverage, minilm, phase, vattention
from studies.token_selection import common as C

STUDY = C.STUDY
GROUPS = C.GROUPS
MODULES = {"budget": budget, "phase": phase, "vattention": vattention, "coverage": coverage, "minilm": minilm}

DESCRIPTION = ("Sparse attention over m of n keys -- uniform and importance sampling, top-k, the hybrid, "
               "vAttention's budget rule, Token Sparse Attention's coverage rule -- against the predictions of the "
               "token-sample theory for the run's own keys (groups budget, phase, vattention, coverage, minilm).")
EXAMPLES = """\
examples:
  python -m studies.token_selection                          # every group (a few minutes on 2 cores)
  python -m studies.token_selection --quick --plot --out /tmp/ts.zarr
  python -m studies.token_selection --parts budget,phase --sigma 0.5..2:0.5
  python -m studies.token_selection --preset scale           # n = 2^20 generated keys (budget, phase)
  python -m paper_figs.token_selection results/token_selection.zarr
"""

DEFAULTS = {
    "laws": "gaussian,sphere,mixture", "d": 8, "n": "2^15", "sigma": "0.25,0.5,0.75,1,1.5,2", "budgets": "1..10",
    "queries": 16, "reps": 8, "stream": False,
    "phase_d": "4,16", "phase_n": "2^14,2^16,2^18", "phase_sigma": "1..3:0.25", "phase_queries": 8, "phase_reps": 4,
    "va_d": 8, "va_n": "2^14", "va_sigma": "0.5,1,1.5,2,2.5,3", "va_k1": 32, "va_eps": 0.05, "va_eps_num": 0.2,
    "va_delta": 0.1, "va_queries": 16, "va_reps": 64,
    "cov_d": 8, "cov_n": "2^15", "cov_sigma": "0.5,1,2,3", "tau_cov": "0.005,0.05", "min_keep": 1024, "window": 16,
    "cov_corr": 0.5,
    "minilm_text": "pydoc", "minilm_sequences": 2, "minilm_layers": "0..5", "minilm_queries": 24, "minilm_reps": 8,
    "minilm_budgets": "2,4,6",
}
QUICK = {
    "n": "2^12", "sigma": "0.25,0.5,1,1.5", "budgets": "1..8", "queries": 8, "reps": 4,
    "phase_d": "4", "phase_n": "2^12,2^14", "phase_sigma": "1..2.75:0.25", "phase_queries": 8, "phase_reps": 4,
    "va_n": "2^12", "va_sigma": "0.5,1,2", "va_reps": 32, "va_queries": 12,
    "cov_n": "2^13", "cov_sigma": "1,3", "min_keep": 256,
    "minilm_sequences": 1, "minilm_layers": "0", "minilm_queries": 12, "minilm_reps": 4,
}
PRESETS = {
    "scale": ({"parts": "budget,phase", "laws": "gaussian,sphere", "n": "2^20", "stream": True, "sigma": "0.5,1,1.5",
               "queries": 8, "reps": 4, "phase_d": "4", "phase_n": "2^16,2^20", "phase_sigma": "1.5..2.5:0.25"},
              {"n": "2^16", "sigma": "0.5,0.75,1", "budgets": "1..8", "phase_n": "2^16", "phase_sigma": "1.5..2.5:0.5"},
              "budget and phase at n = 2^20 keys generated block by block (O(budget + block) memory per query)"),
}


def _one_size(text: str) -> int:
    vals = parse_n_grid(text)
    if len(vals) != 1:
        import argparse

        raise argparse.ArgumentTypeError(f"one size expected, got {len(vals)}")
    return vals[0]


def _floats(text: str) -> tuple:
    return parse_range(text, float)


def add_arguments(p) -> None:
    fr = float_type(0.0, 1.0, lo_open=True, hi_open=True)
    g = p.add_argument_group("group budget: error against budget per policy, law and sigma")
    g.add_argument("--laws", type=choice_list(C.LAWS, "law"), default=None, help="token laws (default all three)")
    g.add_argument("--d", type=positive_int, default=None, help=f"key dimension (default {DEFAULTS['d']})")
    g.add_argument("--n", type=_one_size, default=None, help=f"keys (default {DEFAULTS['n']})")
    g.add_argument("--sigma", type=_floats, default=None, metavar="RANGE",
                   help=f"score spreads (default {DEFAULTS['sigma']}; --quick {QUICK['sigma']})")
    g.add_argument("--budgets", type=parse_range, default=None, metavar="RANGE",
                   help="budget fractions as powers of two: 1..10 means f = m/n = 2^-1 .. 2^-10 (budget and phase; "
                        f"default {DEFAULTS['budgets']})")
    g.add_argument("--queries", type=positive_int, default=None, help="queries per cell (default 16)")
    g.add_argument("--reps", type=positive_int, default=None, help="repetitions of each random policy (default 8)")
    g.add_argument("--stream", action="store_true", default=None,
                   help="generate the keys block by block (gaussian and sphere; budget and phase groups)")
    g = p.add_argument_group("group phase: uniform vs top-k over (sigma, f)")
    g.add_argument("--phase-d", type=parse_range, default=None, help=f"dimensions (default {DEFAULTS['phase_d']})")
    g.add_argument("--phase-n", type=parse_n_grid, default=None, help=f"key counts (default {DEFAULTS['phase_n']})")
    g.add_argument("--phase-sigma", type=_floats, default=None, help=f"spreads (default {DEFAULTS['phase_sigma']})")
    g.add_argument("--phase-queries", type=positive_int, default=None, help="queries per cell (default 8)")
    g.add_argument("--phase-reps", type=positive_int, default=None, help="repetitions of uniform sampling (default 4)")
    g = p.add_argument_group("group vattention: vAttention's budget rule")
    g.add_argument("--va-d", type=positive_int, default=None, help="dimension (default 8)")
    g.add_argument("--va-n", type=_one_size, default=None, help=f"keys (default {DEFAULTS['va_n']})")
    g.add_argument("--va-sigma", type=_floats, default=None, help=f"spreads (default {DEFAULTS['va_sigma']})")
    g.add_argument("--va-k1", type=positive_int, default=None, help="heavy keys kept (default 32)")
    g.add_argument("--va-eps", type=fr, default=None, help="relative tolerance, denominator rule (default 0.05)")
    g.add_argument("--va-eps-num", type=fr, default=None, help="relative tolerance, numerator rule (default 0.2)")
    g.add_argument("--va-delta", type=fr, default=None, help="the rule's failure probability delta (default 0.1)")
    g.add_argument("--va-queries", type=positive_int, default=None, help="queries per cell (default 16)")
    g.add_argument("--va-reps", type=positive_int, default=None, help="repetitions per query (default 64)")
    g = p.add_argument_group("group coverage: Token Sparse Attention's coverage rule")
    g.add_argument("--cov-d", type=positive_int, default=None, help="dimension (default 8)")
    g.add_argument("--cov-n", type=_one_size, default=None, help=f"keys (default {DEFAULTS['cov_n']})")
    g.add_argument("--cov-sigma", type=_floats, default=None, help=f"spreads (default {DEFAULTS['cov_sigma']})")
    g.add_argument("--tau-cov", type=_floats, default=None, help=f"dropped shares (default {DEFAULTS['tau_cov']})")
    g.add_argument("--min-keep", type=positive_int, default=None, help="keys always kept (default 1024)")
    g.add_argument("--window", type=positive_int, default=None, help="window queries of the proxy (default 16)")
    g.add_argument("--cov-corr", type=float_type(0.0, 1.0), default=None,
                   help="squared cosine of the queries with their shared direction (default 0.5)")
    g = p.add_argument_group("group minilm: the policies on MiniLM's heads")
    g.add_argument("--minilm-text", default=None, help="text of the sequences, as studies.encoder --text "
                                                       "(default pydoc)")
    g.add_argument("--minilm-sequences", type=positive_int, default=None, help="512-token sequences (default 2)")
    g.add_argument("--minilm-layers", type=parse_range, default=None, help="layers (default 0..5)")
    g.add_argument("--minilm-queries", type=positive_int, default=None, help="query positions per head (default 24)")
    g.add_argument("--minilm-reps", type=positive_int, default=None, help="repetitions (default 8)")
    g.add_argument("--minilm-budgets", type=parse_range, default=None,
                   help="budgets as powers of two of T = 512 (default 2,4,6: m = 128, 32, 8)")


# ---------------------------------------------------------------------------------- checks
def _check_budget_group(args) -> None:
    if args.stream and set(args.laws) - set(C.STREAM_LAWS):
        raise UsageError(f"--stream: only {', '.join(C.STREAM_LAWS)} keys can be generated; drop mixture from --laws")
    if "mixture" in args.laws and args.d < C.MIX_K:
        raise UsageError(f"--d: the mixture law needs d >= {C.MIX_K}")
    if max(args.budgets) > 30 or min(args.budgets) < 1 or args.n >> max(args.budgets) < 2:
        raise UsageError(f"--budgets: need 1 <= e and m = n 2^-e >= 2 (n = {args.n})")
    if len(args.sigma) < 3:
        raise UsageError("--sigma: slopes against sigma need at least 3 spreads")


def _check_common(args) -> None:
    for opt in ("sigma", "phase_sigma", "va_sigma", "cov_sigma"):
        vals = getattr(args, opt)
        if min(vals) <= 0 or max(vals) > 6:
            raise UsageError(f"--{opt.replace('_', '-')}: spreads must lie in (0, 6] (the closed forms "
                             "exponentiate sigma^2)")
    for opt in ("reps", "queries", "phase_queries", "phase_reps", "va_queries", "va_reps", "minilm_queries",
                "minilm_reps", "window"):
        if getattr(args, opt) < 2:
            raise UsageError(f"--{opt.replace('_', '-')}: standard errors need at least 2")
    if len(args.phase_sigma) < 3:
        raise UsageError("--phase-sigma: a crossover needs at least 3 spreads")
    if args.phase_n and min(args.phase_n) >> max(args.budgets) < 1:
        raise UsageError("--phase-n: every budget m = n 2^-e must be >= 1")
    if args.va_k1 >= args.va_n - 2:
        raise UsageError("--va-k1 must leave at least two residual keys")
    if args.min_keep > args.cov_n or max(args.tau_cov) >= 1:
        raise UsageError("--min-keep must be <= --cov-n and --tau-cov < 1")
    if max(args.minilm_budgets) > 8 or min(args.minilm_budgets) < 1:
        raise UsageError("--minilm-budgets: exponents 1..8 (m = 512 2^-e >= 2)")


def _check_minilm(args) -> None:
    if "minilm" not in args.parts:
        return
    ok, why = minilm.available()
    if not ok:
        rest = tuple(g for g in args.parts if g != "minilm")
        if not rest:
            raise UsageError(f"--parts minilm: {why}")
        print(f"note: group minilm skipped: {why.splitlines()[0]}", file=sys.stderr)
        args.parts = rest
        return
    if max(args.minilm_layers) > 5 or min(args.minilm_layers) < 0:
        raise UsageError("--minilm-layers: MiniLM has layers 0..5")


def validate(args) -> None:
    """Every option checked, and memory and work estimated, before anything is created."""
    _check_budget_group(args)
    _check_common(args)
    _check_minilm(args)
    keys = 0 if args.stream else args.n * args.d * 8
    pk = 0 if args.stream else max(args.phase_n) * max(args.phase_d) * 8
    sel = 2 * 16.0 * args.reps * args.n / 2 * 4  # one query's selections at the largest budget, a few buffers
    check_resources("the token-selection run", memory=3 * max(keys, pk, args.va_n * args.va_d * 8) + sel + 2e8
                    + 3 * _raw_bytes(args),
                    work_s=(len(args.laws) * len(args.sigma) * args.queries * args.reps * args.n * args.d * 8
                            + len(args.phase_d) * len(args.phase_sigma) * args.phase_queries * args.phase_reps
                            * sum(args.phase_n) * max(args.phase_d) * 4) / PAIR_RATE)


def _raw_bytes(args) -> float:
    """Bytes of the raw data of the chosen groups (their stores are loaded whole for the analysis)."""
    F = len(args.budgets)
    size = {"budget": len(args.laws) * len(args.sigma) * (3 * F * args.reps + 8 * F + 8 + args.d) * args.queries,
            "phase": len(args.phase_d) * len(args.phase_n) * len(args.phase_sigma) * F * args.phase_queries
            * (args.phase_reps + 1),
            "vattention": len(args.va_sigma) * args.va_queries * (4 * args.va_reps + 8 + args.va_d ** 2),
            "coverage": 2 * len(args.cov_sigma) * len(args.tau_cov) * 2 * args.window * 5,
            "minilm": args.minilm_sequences * len(args.minilm_layers) * 12 * len(args.minilm_budgets)
            * args.minilm_queries * (3 * args.minilm_reps + 8)}
    return 8.0 * sum(v for k, v in size.items() if k in args.parts)


def parts(args) -> list[Part]:
    """The groups chosen by ``--parts`` (default all), in the catalogue's order."""
    out = []
    for group in GROUPS:
        if group not in args.parts:
            continue
        if group == "minilm":
            from sim.encoder import EncoderUnavailable

            try:
                loaded = minilm.load(args)
            except EncoderUnavailable as e:
                raise UsageError(f"group minilm: {e}") from None
            out.append(Part(group, sweep=minilm.sweep(args, loaded)))
        else:
            out.append(Part(group, sweep=MODULES[group].sweep(args)))
    return out


# -------------------------------------------------------------------------------- analysis
def analyze(ds):
    """The analysis of one group (:func:`studies.cli.group_of`), from its stored parameters."""
    group = group_of(ds)
    if group not in MODULES:
        raise StoreParamsError(f"{ds.attrs.get('study', '')!r} is not a group of the {STUDY} study "
                               f"({', '.join(GROUPS)})")
    return MODULES[group].analyze(ds, run_params(ds))


def summary(an) -> str:
    return MODULES[group_of(an)].summary(an)


def main(argv=None) -> int:
    return study_main(sys.modules[__name__], argv, prog="python -m studies.token_selection")


if __name__ == "__main__":
    sys.exit(main())
