"""Bounded vs unbounded tokens: ``python -m studies.tails``.

How the constants of the token sample complexity grow with the size of the tokens
(Bohbot, Letrouit, Peyré, Vialard; notes token_sample §2.1-2.2, §6.3, §6.5). The store
has two groups, ``sup`` and ``moments`` (the shared ``--parts`` flag selects them; the root
records them); :func:`analyze` and :func:`summary` tell them apart by the stored group name:

Group ``sup``: the uniform constant ``C(R) = sqrt(n) E sup_{|x|<=R} |Gamma_{mu_n}(x) - Gamma_mu(x)|``
against the query radius R, for three token laws, each set against the delta method for its
own law, A and grid (:mod:`theory.token_sample`):

* ``gaussian``  N(0, I_2), A = a I: log C(R) ~ 1/2 a^2 R^2 (quadratic in R);
* ``sphere``    uniform on S^{d-1} (d = 5), A = a_s I: C(R) ~ kappa^{(d-3)/4} once kappa = a_s R >> 1;
* ``atom``      (1 - eps) Uniform(ball of radius r_0) + eps delta_{R_mu e_1}, tiny eps: C(R) grows
                like sqrt(eps) e^{a R (R_mu - r_0)} once the atom dominates E w^2, then saturates.

Group ``moments``: the moment prefactor C' of the output mean and covariance of self-attention
(error ~ C'/sqrt(n)) for box-truncated Gaussians of growing support (c sigma per coordinate,
c = 0.5..4: from nearly uniform boxes to the Gaussian limit): C' follows the delta-method limit
:func:`theory.token_sample.truncated_moment_prefactors`, a power of the support radius R_mu
that bends to a constant once the truncation stops mattering (H < 1: the Gaussian limit has a
finite-variance influence function), i.e. polynomial in R_mu; the same laws' C(R_mu) grows exponentially.

Claims (:mod:`studies.claims`; a family over a grid is shown by its worst member, at
Bonferroni z with Student-t quantiles for replicate standard errors):

* ``clt_rate[law]``     -- where every n of the grid is >= 100 n_3(R) (the CLT regime of
  :func:`theory.token_sample.uniform_regimes`: Berry-Esseen distance sqrt(n_3/n) <= 0.1), the sup
  error decays like n^(-1/2) (± z SE + the declared 0.05);
* ``C_limit[law]``      -- where the largest n is in the CLT regime, C(R) = E sup|G|, G the Gaussian
  limit process (:func:`theory.token_sample.expected_sup_norm`; laws in d <= 3), two-sided;
* ``C_lower[law]``      -- there, C(R) >= sup_x E|G(x)| (the weaker, one-sided bound);
* ``C_growth[law]``     -- over those radii (>= 4), log C(R) has the form (R^2, R or log R) that the
  law's own delta-method curve :func:`theory.token_sample.predicted_log_C` singles out; "not
  tested" when the curve singles out none;
* ``moment_rate[mean|cov]``  -- at every truncation level with H < 1, beta_hat = 1/2;
* ``Cprime_level[mean|cov]`` -- sqrt(n) E err at the largest n equals the delta-method C';
* ``Cprime_form[mean|cov]``  -- log C' against the support radius R_mu has the form the
  delta-method curve singles out (log R: polynomial; R or R^2: exponential).

Dataset (``results/tails.zarr``, groups ``sup`` and ``moments``): raw ``sup_err(law, R, n, rep)``
and ``mean_err``/``cov_err(c, n, rep)``; C(R), C'(c), fits, ``theory_*`` (delta method, lower
bound, E sup|G|, Berry-Esseen scale, prefactors) and the claims of each group. Each group's stored
parameters hold everything its analysis reads: the laws and ``theory_search`` (the sup search of
the delta-method curves, coarser with ``--quick``); the root seed seeds the theory's Monte Carlo.
"""
from __future__ import annotations

import functools
import sys

import numpy as np
import xarray as xr

from sim.attention import self_attention_moments
from sim.backend import make_rng, to_numpy
from sim.distributions import make_atom_distribution, make_distribution
from sim.token_moments import moment_errors
from sim.token_sample import sup_errors
from studies.claims import ClaimSpec, predicted_form, worst_of, z_family
from studies.convergence import LIMIT_MAX_DIM, LIMIT_SAMPLES, THEORY_SPAWN  # the limit process' Monte Carlo
from studies.cli import (PAIR_RATE, Part, StoreParamsError, UsageError, check_resources, check_scores, group_of,
                         parse_n_grid, parse_range, positive_float, positive_int, run_params, study_main)
from studies.fits import loglog_rate, ols
from studies.sweep import Sweep, str_coord
from theory import token_sample as ts

STUDY = "tails"
LAWS = ("gaussian", "sphere", "atom")
SUP_GROUP, MOMENT_GROUP = "sup", "moments"
SEARCH = {"n_shells": 4, "n_refine": 4, "refine_iters": 5}
THEORY_SEARCH = {"n_dirs": 32, "n_shells": 6, "refine": 2}  # sup search of the delta-method C(R)
THEORY_SEARCH_QUICK = {"n_dirs": 16, "n_shells": 4, "refine": 1}
# theory_search (no option of its own): the sup search of the delta-method curves, stored with
# each group's parameters so the analysis reads it from the store
DEFAULTS = {"R": "1..8", "n": "2^12,2^14,2^16", "reps": 24, "queries": 48,
            "c": "0.5,0.75,1,1.5,2,3,4", "moment_n": "2^8..2^13", "moment_reps": 32, "theory_search": THEORY_SEARCH}
QUICK = {"R": "1,3,5,8", "n": "2^9,2^10,2^11", "reps": 4, "queries": 8,
         "c": "0.5,1,2,3", "moment_n": "2^7..2^9", "moment_reps": 6, "theory_search": THEORY_SEARCH_QUICK}
PRESETS: dict = {}
GROUPS = (SUP_GROUP, MOMENT_GROUP)
LAYOUT = "tails-v3: groups sup (cells (n, rep) x laws) and moments (cells (n, rep) x truncation levels)"

CLT_FACTOR = 100.0  # the CLT regime: n >= CLT_FACTOR n_3(R), i.e. the Berry-Esseen distance of the
# weights' average to the normal, ~ sqrt(n_3/n), is <= 0.1 (the atom law, whose heavy weight is a rare
# atom, is where that bound is nearly tight; studies.convergence, on laws without atoms, uses 10)
RATE_ALLOWANCE = 0.05  # declared pre-asymptotic error of a rate fit (notes token_sample §6.2)
MIN_FORM_POINTS = 4
GROWTH_FORMS = {"R^2": lambda R: R**2, "R": lambda R: R, "log R": np.log}

SOURCE = "Bohbot, Letrouit, Peyré, Vialard (2025)"
CLT_RATE = ClaimSpec(
    "tails.clt_rate", f"{SOURCE}, Result 1: rate C(R)/sqrt(n) (notes token_sample §2.1, §6.2)",
    "Where every n of the grid is in the CLT regime (n >= 100 n_3(R)), the sup error decays like n^(-1/2).")
C_LIMIT = ClaimSpec(
    "tails.C_limit", f"{SOURCE}, Result 1: the constant C(R) = E sup|G| of the limit process (notes token_sample §2.5)",
    "Where the largest n is in the CLT regime, C(R) = sqrt(n) E sup equals E sup_{|x|<=R} |G(x)|, G the Gaussian "
    "process with covariance E[IF_x IF_x'^T] (laws of dimension <= 3).")
C_LOWER = ClaimSpec(
    "tails.C_lower", f"{SOURCE}, Result 1: the constant C(R), delta method (notes token_sample §2.1 [D])",
    "Where the largest n is in the CLT regime, C(R) = sqrt(n) E sup is at least sup_x E|G(x)|, G(x) ~ N(0, M(x)).")
C_GROWTH = ClaimSpec(
    "tails.C_growth", f"{SOURCE}, Result 1: C(R) grows exponentially in R in the worst case; polynomially for "
                      "the sphere (notes token_sample §3.1, §3.2, §6.3)",
    "Across the CLT-regime radii, log C(R) follows the form (R^2, R or log R) that the law's delta-method curve "
    "singles out, not the other candidates.")
MOMENT_RATE = ClaimSpec(
    "tails.moment_rate", f"{SOURCE}, Result 2 (notes token_sample §2.2 [D], §6.5)",
    "For truncated Gaussians with H < 1 (finite-variance influence function) the moment error decays like n^(-1/2).")
CPRIME_LEVEL = ClaimSpec(
    "tails.Cprime_level", f"{SOURCE}, Result 2: the prefactor C' (delta method, notes token_sample §2.2, §6.5; "
                          "theory.token_sample.truncated_moment_prefactors)",
    "sqrt(n) E|moment error| at the largest n equals the delta-method limit C' of the truncated law.")
CPRIME_FORM = ClaimSpec(
    "tails.Cprime_form", f"{SOURCE}, Result 2: 'C'(R) depends polynomially on the size of the support' "
                         "(notes token_sample §1.2, §6.5)",
    "Across the truncation levels, log C' against the support radius R_mu follows the form the delta-method "
    "C' curve singles out (log R: polynomial), not the other candidates.")

EXAMPLES = """\
examples:
  python -m studies.tails                               # both groups (about 2 minutes)
  python -m studies.tails --R 1..10 --atom-eps 1e-5 --plot
  python -m studies.tails --quick --plot --out /tmp/tails.zarr
  python -m paper_figs.tails results/tails.zarr
"""


DESCRIPTION = ("Growth of the token-sample constants with the token size: C(R) for Gaussian, sphere and "
               "bounded-with-an-atom tokens (group sup); the moment prefactor C' for truncated Gaussians of "
               "growing support (group moments).")


def add_arguments(p) -> None:
    g = p.add_argument_group("group sup: the uniform constant C(R)")
    g.add_argument("--R", type=lambda t: parse_range(t, float), default=None, metavar="RANGE",
                   help=f"query-ball radii, inclusive ranges (default {DEFAULTS['R']}; --quick {QUICK['R']})")
    g.add_argument("--n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"token counts; C(R) is read at the largest (default {DEFAULTS['n']}; --quick {QUICK['n']})")
    g.add_argument("--reps", type=positive_int, default=None,
                   help=f"samples per (law, n) (default {DEFAULTS['reps']}; --quick {QUICK['reps']})")
    g.add_argument("--queries", type=positive_int, default=None,
                   help=f"directions per shell in the sup search (default {DEFAULTS['queries']}; --quick {QUICK['queries']})")
    g.add_argument("--gauss-A", dest="gauss_a", type=positive_float, default=0.2,
                   help="gaussian law: A = GAUSS_A * I, tokens N(0, I_2) (default 0.2)")
    g.add_argument("--sphere-d", type=positive_int, default=5, help="sphere law: dimension d of S^{d-1} (default 5)")
    g.add_argument("--sphere-A", dest="sphere_a", type=positive_float, default=4.0,
                   help="sphere law: A = SPHERE_A * I, so kappa = SPHERE_A * R (default 4: the polynomial regime "
                        "kappa >> 1 over R >= 1)")
    g.add_argument("--atom-eps", type=positive_float, default=1e-4, help="atom law: mass of the atom (default 1e-4)")
    g.add_argument("--atom-radius", type=positive_float, default=1.0, help="atom law: |atom| = R_mu (default 1)")
    g.add_argument("--bulk-radius", type=positive_float, default=0.5,
                   help="atom law: radius r_0 of the uniform ball (d = 2) around the origin (default 0.5)")
    g.add_argument("--atom-A", dest="atom_a", type=positive_float, default=1.0, help="atom law: A = ATOM_A * I (default 1)")
    m = p.add_argument_group("group moments: the moment prefactor C' for truncated Gaussians")
    m.add_argument("--c", type=lambda t: parse_range(t, float), default=None, metavar="RANGE",
                   help=f"truncation levels c (support [-c sigma, c sigma]^d) (default {DEFAULTS['c']}; --quick {QUICK['c']})")
    m.add_argument("--moment-n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"token counts (default {DEFAULTS['moment_n']}; --quick {QUICK['moment_n']})")
    m.add_argument("--moment-reps", type=positive_int, default=None,
                   help=f"samples per (c, n) (default {DEFAULTS['moment_reps']}; --quick {QUICK['moment_reps']})")
    m.add_argument("--trunc-d", type=positive_int, default=2, help="dimension (default 2)")
    m.add_argument("--trunc-sigma", type=positive_float, default=1.0, help="sigma (default 1)")
    m.add_argument("--trunc-A", dest="trunc_a", type=positive_float, default=0.5,
                   help="A = TRUNC_A * I, V = I (default 0.5: horizon ~0.5, the CLT regime)")


# ------------------------------------------------------------------------------- the laws
def _law_setup(name: str, laws: dict):
    """(distribution, A) of one law of the sup group, from the laws' stored parameters
    (:func:`_law_params`): the run's cells and its analysis build them the same way."""
    law = laws[name]
    d = int(law["d"])
    A = _scale_of(law["A"]) * np.eye(d)
    if name == "gaussian":
        return make_distribution("gaussian", d), A
    if name == "sphere":
        return make_distribution("sphere", d), A
    if name == "atom":
        return (make_atom_distribution(d, eps=float(law["eps"]), atom_radius=float(law["atom_radius"]),
                                       bulk=law["bulk"], bulk_radius=float(law["bulk_radius"])), A)
    raise ValueError(name)


def _scale_of(text: str) -> float:
    """``a`` of a stored matrix ``"a I"`` (written with the float's repr, so it reads back exactly)."""
    value, _, unit = str(text).partition(" ")
    try:
        if unit == "I":
            return float(value)
    except ValueError:
        pass
    raise StoreParamsError(f"the stored matrix {text!r} is not of the form 'a I': the store was written by another "
                           "version of the study; rerun it (with --overwrite)")


def _law_params(args) -> dict:
    return {"gaussian": {"d": 2, "A": f"{args.gauss_a} I", "law": "N(0, I)"},
            "sphere": {"d": args.sphere_d, "A": f"{args.sphere_a} I", "law": "uniform on the unit sphere"},
            "atom": {"d": 2, "A": f"{args.atom_a} I", "eps": args.atom_eps, "atom_radius": args.atom_radius,
                     "bulk": "ball", "bulk_radius": args.bulk_radius}}


def _sup_cell(cell, *, setups, radii, n_dirs, device):
    """One (n, rep) cell: a token sample of every law (drawn in turn from the cell's stream),
    the searched sup error at every radius."""
    rng = make_rng(cell.seed, device)
    sup, arg = [], []
    for name in LAWS:
        dist, A = setups[name]
        tokens = dist.sample(rng, int(cell.coords["n"]))
        res = sup_errors(tokens, dist, A, np.eye(dist.dim), radii, n_dirs=n_dirs, **SEARCH)
        sup.append(res.value)
        arg.append(np.linalg.norm(res.argmax, axis=1))
    return {"sup_err": np.stack(sup), "argmax_radius": np.stack(arg)}


def _trunc(c, d: int, sigma: float):
    return make_distribution("truncated", d, sigma=sigma, c=float(c))


def _moment_cell(cell, *, args_t, cs, refs, device):
    """One (n, rep) cell of the moments group: a sample of every truncated law (drawn in turn), the output
    moments of its self-attention, errors against the exact output moments."""
    d, sigma, a = args_t
    rng = make_rng(cell.seed, device)
    me, ce = [], []
    for c in cs:
        dist = make_distribution("truncated", d, sigma=sigma, c=float(c))
        X = dist.sample(rng, int(cell.coords["n"]))
        mean, cov = self_attention_moments(X, a * np.eye(d), None, (1.0,))
        ref_m, ref_c = refs[float(c)]
        e = moment_errors(to_numpy(mean), to_numpy(cov), ref_m[None], ref_c[None])
        me.append(e["mean_err"][0])
        ce.append(e["cov_err"][0])
    return {"mean_err": np.asarray(me), "cov_err": np.asarray(ce)}


def sup_sweep(args) -> Sweep:
    """The sweep of group ``sup``: every law's searched sup error per (R, n, rep)."""
    radii = np.asarray(args.R, dtype=float)
    n = np.asarray(args.n, dtype=np.int64)
    laws = _law_params(args)
    setups = {name: _law_setup(name, laws) for name in LAWS}
    params = {"layout": LAYOUT, "R": radii.tolist(), "n": n.tolist(), "reps": args.reps, "laws": laws,
              "search": {"n_dirs": args.queries, **SEARCH}, "V": "I", "device": args.device,
              "theory_search": dict(args.theory_search)}
    return Sweep(
        study=f"{STUDY}/{SUP_GROUP}",
        cell_dims={"n": n, "rep": np.arange(args.reps)},
        variables={"sup_err": ("law", "R", "n", "rep"), "argmax_radius": ("law", "R", "n", "rep")},
        coords={"law": str_coord(LAWS), "R": radii},
        params=params,
        run_cell=functools.partial(_sup_cell, setups=setups, radii=radii, n_dirs=args.queries, device=args.device),
        root_seed=args.seed,
        attrs={"device": args.device, "part": "uniform constant C(R) per token law",
               "laws": _law_params(args),
               "convention": "scores <A x, y>, V = I; sup over |x| <= R searched (sim.token_sample.sup_errors); "
                             "each (n, rep) cell draws one sample per law, shared across R"},
        var_attrs={"sup_err": {"long_name": "sup_{|x|<=R} |Gamma_{mu_n}(x) - Gamma_mu(x)|_2 (searched)"},
                   "argmax_radius": {"long_name": "|x| where the largest error was found"}},
    )


def moment_sweep(args) -> Sweep:
    """The sweep of group ``moments``: the moment errors of every truncation level per (n, rep)."""
    cs = np.asarray(args.c, dtype=float)
    mn = np.asarray(args.moment_n, dtype=np.int64)
    mparams = {"layout": LAYOUT, "c": cs.tolist(), "n": mn.tolist(), "reps": args.moment_reps, "d": args.trunc_d,
               "sigma": args.trunc_sigma, "A": f"{args.trunc_a} I", "V": "I", "device": args.device,
               "theory_search": dict(args.theory_search)}
    return Sweep(
        study=f"{STUDY}/{MOMENT_GROUP}",
        cell_dims={"n": mn, "rep": np.arange(args.moment_reps)},
        variables={"mean_err": ("c", "n", "rep"), "cov_err": ("c", "n", "rep")},
        coords={"c": cs},
        params=mparams,
        run_cell=functools.partial(_moment_cell, args_t=(args.trunc_d, args.trunc_sigma, args.trunc_a), cs=cs,
                                   refs={float(c): ts.truncated_output_moments(
                                       _trunc(c, args.trunc_d, args.trunc_sigma).law, args.trunc_a) for c in cs},
                                   device=args.device),
        root_seed=args.seed + 1,
        attrs={"device": args.device, "part": "moment prefactor C' for box-truncated Gaussians",
               "convention": "self-attention of n tokens (self token included), A = a I, V = I, one scale; "
                             "tokens N(0, sigma^2) per coordinate truncated to [-c sigma, c sigma] (each (n, rep) cell "
                             "draws one sample per c); errors against "
                             "the exact output moments (1-D quadrature, theory.token_sample.truncated_output_moments)"},
        var_attrs={"mean_err": {"long_name": "|mean(o) - mean_ref|_2"},
                   "cov_err": {"long_name": "|cov(o) - cov_ref|_F"}},
    )


# ------------------------------------------------------------------------------ analysis
def analyze(ds: xr.Dataset) -> tuple[xr.Dataset, list]:
    """The analysis of one group (:func:`studies.cli.group_of`), a pure function of its stored
    data and parameters: the laws (group ``sup``) or the truncated law (group ``moments``), and
    the sup search of the delta-method curves (``theory_search``, chosen by ``--quick``); the
    seeds of the theory's Monte Carlo of the limit process come from the stored root seed."""
    params = run_params(ds)
    group = group_of(ds)
    search = dict(params["theory_search"])
    if group == SUP_GROUP:
        setups = {name: _law_setup(name, params["laws"]) for name in (str(v) for v in ds["law"].values)}
        out, claims = _analyze_sup(ds, setups, search, int(ds.attrs.get("root_seed", 0)))
    elif group == MOMENT_GROUP:
        out, claims = _analyze_moments(ds, int(params["d"]), float(params["sigma"]), _scale_of(params["A"]), search)
    else:
        raise StoreParamsError(f"{ds.attrs.get('study', '')!r} is not a group of the {STUDY} study "
                               f"({', '.join(GROUPS)})")
    out.attrs["theory_sup_search"] = str(search)
    return out, claims


def _sup_theory(setups: dict, laws: list, R, n, theory_search: dict, root_seed: int) -> dict:
    """Per law and radius: the delta-method C, the lower bound, n_3, n*, the CLT regime at the
    largest n and, at its radii, E sup|G| of the limit process (notes token_sample §2.5) with its
    Monte Carlo and grid errors (laws of dimension <= LIMIT_MAX_DIM)."""
    L = len(laws)
    th, lower, ln3, lns = (np.zeros((L, R.size)) for _ in range(4))
    lim = {k: np.full((L, R.size), np.nan) for k in ("esup", "esup_se", "disc", "points")}
    for i, name in enumerate(laws):
        dist, A = setups[name]
        V = np.eye(dist.dim)
        th[i] = [ts.predicted_log_C(dist.law, r, A, V, **theory_search) for r in R]
        lower[i] = [ts.predicted_log_C_lower(dist.law, r, A, V, **theory_search) for r in R]
        ln3[i] = [ts.log_normal_approx_threshold_sup(dist.law, r, A, **theory_search) for r in R]
        lns[i] = [ts.log_effective_sample_threshold_sup(dist.law, r, A, **theory_search) for r in R]
    clt = np.log(n[-1]) >= np.log(CLT_FACTOR) + ln3
    for i, name in enumerate(laws):
        dist, A = setups[name]
        if dist.dim > LIMIT_MAX_DIM:
            continue
        for j in np.where(clt[i])[0]:
            res = ts.expected_sup_norm(dist.law, float(R[j]), A, np.eye(dist.dim), n_samples=LIMIT_SAMPLES,
                                       seed=np.random.SeedSequence(root_seed, spawn_key=(THEORY_SPAWN, i, j)))
            lim["esup"][i, j], lim["esup_se"][i, j], lim["disc"][i, j] = res.value, res.se, res.discretisation
            lim["points"][i, j] = res.points[-1]
    dims = np.array([setups[name][0].dim for name in laws])
    return dict(log_C=th, log_C_lo=lower, log_n3=ln3, log_nstar=lns, clt=clt, pre=np.exp(ln3) / n[-1], dim=dims, **lim)


def _analyze_sup(ds: xr.Dataset, setups: dict, theory_search: dict, root_seed: int) -> tuple[xr.Dataset, list]:
    """C(R) per law, the theory for each law's own A and grid, and the claims."""
    R = ds["R"].values.astype(float)
    n = ds["n"].values.astype(float)
    laws = [str(v) for v in ds["law"].values]
    err = ds["sup_err"].values  # (law, R, n, rep)
    k = err.shape[-1]
    mean = err.mean(axis=-1)
    sem = err.std(axis=-1, ddof=1) / np.sqrt(k)
    C, C_se = np.sqrt(n[-1]) * mean[:, :, -1], np.sqrt(n[-1]) * sem[:, :, -1]
    t = _sup_theory(setups, laws, R, n, theory_search, root_seed)
    out = xr.Dataset(coords={"law": ds["law"].values, "R": R, "n": ds["n"].values})
    lr = ("law", "R")
    out["mean_sup_err"] = (("law", "R", "n"), mean)
    out["sem_sup_err"] = (("law", "R", "n"), sem)
    out["C_hat"] = (("law", "R", "n"), np.sqrt(n)[None, None, :] * mean, {"long_name": "sqrt(n) * mean_sup_err"})
    out["C"] = (lr, C, {"long_name": "C(R) = sqrt(n) E sup at the largest n"})
    out["C_se"] = (lr, C_se)
    out["theory_log_C"] = (lr, t["log_C"], {"long_name": "log sup_x sqrt(tr M(x)) (delta method)"})
    out["theory_log_C_lower"] = (lr, t["log_C_lo"], {"long_name": "log sup_x E|G(x)|, G(x) ~ N(0, M(x))"})
    out["theory_C_limit"] = (lr, t["esup"], {"long_name": "E sup_{|x|<=R} |G(x)| (limit process, grid Monte Carlo)"})
    out["theory_C_limit_se"] = (lr, t["esup_se"], {"long_name": "Monte Carlo standard error of theory_C_limit"})
    out["theory_C_limit_grid_error"] = (lr, t["disc"], {"long_name": "declared discretisation error of the grid"})
    out["theory_log_n_3"] = (lr, t["log_n3"], {"long_name": "log Berry-Esseen scale; CLT needs n >> n_3"})
    out["theory_log_n_star"] = (lr, t["log_nstar"], {"long_name": "log effective-sample threshold n*"})
    out["clt_regime"] = (lr, t["clt"], {"description": f"largest n >= {CLT_FACTOR:g} n_3(R)"})
    out["C_over_theory"] = (lr, C / np.exp(t["log_C"]))
    out["C_over_lower"] = (lr, C / np.exp(t["log_C_lo"]))
    out["C_over_limit"] = (lr, C / t["esup"])
    slope, slope_se, regime = (np.zeros((len(laws), R.size), dtype=dt) for dt in (float, float, np.int8))
    for i in range(len(laws)):
        regime[i], _ = ts.uniform_regimes(t["log_n3"][i], t["log_nstar"][i], n, clt_factor=CLT_FACTOR,
                                          min_points=n.size)
        for j in range(R.size):
            f = loglog_rate(n, err[i, j])
            slope[i, j], slope_se[i, j] = f.slope, f.se
    out["fit_slope"] = (lr, slope, {"long_name": "WLS log-log slope of mean_sup_err vs n"})
    out["fit_slope_se"] = (lr, slope_se)
    out["regime"] = (lr, regime, {"flag_values": [0, 1, 2], "flag_meanings": " ".join(ts.REGIMES), "description":
                                  f"uniform_regimes with every n of the grid >= {CLT_FACTOR:g} n_3(R) for clt"})
    clt = t["clt"]
    forms = [predicted_form(R[c], t["log_C"][i, c], GROWTH_FORMS) if c.sum() >= 3 else None for i, c in enumerate(clt)]
    out["theory_growth_form"] = (("law",), str_coord([f or "none" for f in forms]), {
        "long_name": "form of log C(R) singled out by the delta-method curve over the CLT-regime radii"})
    claims = []
    for i, name in enumerate(laws):
        per_law = {key: v[i] for key, v in t.items()}
        claims += _sup_claims(name, R, k, regime[i], slope[i], slope_se[i], C[i], C_se[i], per_law, forms[i])
    return out, claims


def _sup_claims(law, R, k, regime, slope, slope_se, C, C_se, t, form) -> list:
    out = []
    inside, clt = regime == 0, t["clt"]
    z, zsrc = z_family(int(inside.sum()), dof=k - 1)
    if inside.any():
        out.append(worst_of([CLT_RATE.equal(slope[j], slope_se[j], -0.5, z=z, z_source=zsrc, allowance=RATE_ALLOWANCE,
                                            allowance_source="declared pre-asymptotic error of the slope (notes "
                                                             "token_sample §6.2: -0.5 ± 0.05)",
                                            where=f"R={R[j]:g}", prediction_text="slope -0.5", effect=0.5)
                             for j in np.where(inside)[0]], where=law, every="CLT radius"))
    else:
        out.append(CLT_RATE.not_tested(f"no radius has every n of the grid >= {CLT_FACTOR:g} n_3(R) (raise the "
                                       "smallest n)", where=law, prediction_text="slope -0.5"))
    out += _constant_claims(law, R, k, C, C_se, t)
    z, zsrc = z_family(1)
    if clt.sum() < MIN_FORM_POINTS:
        out.append(C_GROWTH.not_tested(f"{int(clt.sum())} radius(es) with the largest n in the CLT regime; comparing "
                                       f"the forms needs >= {MIN_FORM_POINTS}", where=law,
                                       prediction_text="the delta-method form"))
    else:
        out.append(C_GROWTH.forms(R[clt], np.log(C[clt]), C_se[clt] / C[clt], GROWTH_FORMS, form, z=z, z_source=zsrc,
                                  where=law, min_points=MIN_FORM_POINTS, what="log C"))
    return out


def _constant_claims(law, R, k, C, C_se, t) -> list:
    """C_limit (two-sided, against E sup|G|) and C_lower (one-sided) over the radii whose largest
    n is in the CLT regime."""
    clt = t["clt"]
    if not clt.any():
        why = f"the largest n is below {CLT_FACTOR:g} n_3(R) at every radius"
        return [C_LIMIT.not_tested(why, where=law, prediction_text="C(R) = E sup|G|"),
                C_LOWER.not_tested(why, where=law, prediction_text="C(R) >= sup_x E|G(x)|")]
    z, zsrc = z_family(int(clt.sum()), dof=k - 1)
    lims, lows = [], []
    for j in np.where(clt)[0]:
        where, lower, esup = f"R={R[j]:g}", float(np.exp(t["log_C_lo"][j])), float(t["esup"][j])
        lows.append(C_LOWER.at_least(C[j], C_se[j], lower, z=z, z_source=zsrc, where=where, effect=lower,
                                     prediction_text=f">= {lower:.4g} (Gaussian limit, worst query)"))
        if not np.isfinite(esup):
            lims.append(C_LIMIT.not_tested(f"a grid of the {int(t['dim'])}-dimensional ball fine enough for "
                                           f"the sup of G is out of reach (d > {LIMIT_MAX_DIM}; notes token_sample "
                                           "§2.5)", where=where, measured=C[j], se=C_se[j],
                                           prediction_text="C(R) = E sup|G|"))
            continue
        lims.append(C_LIMIT.equal(
            C[j], float(np.hypot(C_se[j], t["esup_se"][j])), esup, z=z,
            z_source=f"{zsrc}, on the combined SE of C and of the E sup|G| Monte Carlo",
            allowance=esup * t["pre"][j] + t["disc"][j],
            allowance_source=f"declared pre-asymptotic error, relative size n_3(R)/n_max = {t['pre'][j]:.2g} (notes "
                             f"token_sample §2.5); + grid discretisation {t['disc'][j]:.2g} (refinement to "
                             f"{int(t['points'][j])} points, below the tolerance)",
            where=where, effect=0.5 * esup, prediction_text=f"{esup:.4g} ± {t['esup_se'][j]:.2g} (E sup|G|)"))
    return [worst_of(lims, where=law, every="CLT radius"), worst_of(lows, where=law, every="CLT radius")]


def _analyze_moments(ds: xr.Dataset, d: int, sigma: float, a: float, theory_search: dict) -> tuple[xr.Dataset, list]:
    """beta_hat and C' per truncation level, the delta-method C' and the claims."""
    cs = ds["c"].values.astype(float)
    n = ds["n"].values.astype(float)
    k = ds.sizes["rep"]
    out = xr.Dataset(coords={"c": cs, "n": ds["n"].values})
    laws = [ts.TruncatedGaussianLaw(d, sigma, c) for c in cs]
    Rmu = np.array([law.support_radius for law in laws])
    out["support_radius"] = (("c",), Rmu, {"long_name": "R_mu = c sigma sqrt(d): radius of the support"})
    A = a * np.eye(d)
    H = np.array([ts.horizon(law.cov, A) for law in laws])
    out["H"] = (("c",), H, {"long_name": "||Sigma^1/2 A Sigma^1/2||_2"})
    pref = np.array([ts.truncated_moment_prefactors(law, a) for law in laws])  # (c, 2)
    claims = []
    for j, (key, mom) in enumerate((("mean_err", "mean"), ("cov_err", "cov"))):
        e = ds[key].values  # (c, n, rep)
        out[f"{key}_mean"] = (("c", "n"), e.mean(axis=-1))
        out[f"{key}_sem"] = (("c", "n"), e.std(axis=-1, ddof=1) / np.sqrt(k))
        beta, se = np.zeros(cs.size), np.zeros(cs.size)
        for i in range(cs.size):
            f = loglog_rate(n, e[i])
            beta[i], se[i] = -f.slope, f.se
        out[f"beta_{mom}"] = (("c",), beta)
        out[f"beta_{mom}_se"] = (("c",), se)
        Cp = np.sqrt(n[-1]) * e[:, -1, :].mean(axis=-1)
        Cp_se = np.sqrt(n[-1]) * e[:, -1, :].std(axis=-1, ddof=1) / np.sqrt(k)
        out[f"Cprime_{mom}"] = (("c",), Cp, {"long_name": f"C' = sqrt(n) E {key} at the largest n"})
        out[f"Cprime_{mom}_se"] = (("c",), Cp_se)
        out[f"theory_Cprime_{mom}"] = (("c",), pref[:, j], {"long_name": "delta-method limit of sqrt(n) E "
                                                                          f"{key} (truncated_moment_prefactors)"})
        out[f"Cprime_{mom}_loglog_slope"] = ((), ols(np.log(Rmu), np.log(Cp)).slope,
                                              {"long_name": "slope of log C' vs log R_mu"})
        claims += _moment_claims(mom, cs, Rmu, H, k, beta, se, Cp, Cp_se, pref[:, j])
    th_sup = np.array([ts.predicted_log_C(law, r, A, np.eye(d), **theory_search) for law, r in zip(laws, Rmu)])
    out["theory_log_C_sup"] = (("c",), th_sup, {"long_name": "log C(R_mu): delta-method uniform constant on the "
                                                              "support ball of the same law"})
    out["theory_beta"] = (("c",), ts.beta_of_horizon(H), {"long_name": "1/(2(1+H^2)), the authors' curve"})
    return out, claims


def _moment_claims(mom, cs, Rmu, H, k, beta, se, Cp, Cp_se, pref) -> list:
    """The moment claims at the truncation levels with H < 1, where both the Gaussian-tail
    heuristic and the bounded-law argument give the CLT rate, so the delta-method limits apply
    on the run's n grid; at H >= 1 they are not tested."""
    ok = H < 1
    why = ("H = {:.3g} >= 1: the Gaussian-tail heuristic predicts a slower rate and the bounded law's CLT limit "
           "holds only past the effective sample size of its weights, which the run does not check")
    out = []
    for spec, tested in ((MOMENT_RATE, lambda i, z, zs: MOMENT_RATE.equal(
            beta[i], se[i], 0.5, z=z, z_source=zs, where=f"c={cs[i]:g}", effect=0.5,
            prediction_text=f"beta 0.5 (H={H[i]:.3g} < 1)")),
                         (CPRIME_LEVEL, lambda i, z, zs: CPRIME_LEVEL.equal(
            Cp[i], Cp_se[i], pref[i], z=z, z_source=zs, where=f"c={cs[i]:g}", effect=0.5 * pref[i],
            prediction_text=f"{pref[i]:.4g} (delta method)"))):
        z, zsrc = z_family(int(ok.sum()), dof=k - 1)
        members = [tested(i, z, zsrc) if ok[i] else spec.not_tested(why.format(H[i]), where=f"c={cs[i]:g}")
                   for i in range(cs.size)]
        out.append(worst_of(members, where=mom, every="truncation level"))
    z, zsrc = z_family(1)
    if ok.sum() < MIN_FORM_POINTS:
        out.append(CPRIME_FORM.not_tested(f"{int(ok.sum())} truncation level(s) with H < 1; comparing the forms "
                                          f"needs >= {MIN_FORM_POINTS}", where=mom,
                                          prediction_text="the delta-method form"))
        return out
    form = predicted_form(Rmu[ok], np.log(pref[ok]), GROWTH_FORMS)
    out.append(CPRIME_FORM.forms(Rmu[ok], np.log(Cp[ok]), Cp_se[ok] / Cp[ok], GROWTH_FORMS, form, z=z, z_source=zsrc,
                                 where=mom, min_points=MIN_FORM_POINTS, what="log C'"))
    return out


def summary(an: xr.Dataset) -> str:
    """The table of the analysis' group (:func:`studies.cli.group_of`)."""
    return {SUP_GROUP: _summary_sup, MOMENT_GROUP: _summary_moments}[group_of(an)](an)


def _summary_sup(sup: xr.Dataset) -> str:
    laws = [str(v) for v in sup["law"].values]
    rows = [f"C(R) = sqrt(n) E sup at n = {int(sup['n'].values[-1])}  (limit: E sup|G|; lower: sup_x E|G(x)|; "
            "* = largest n in the CLT regime)", f"{'R':>5} " + " ".join(f"{nm + ' C':>13} {'limit':>8} {'lower':>8}"
                                                                        for nm in laws)]
    for j, r in enumerate(sup["R"].values):
        cells = [f"{sup['C'].values[i, j]:>12.4g}{'*' if bool(sup['clt_regime'].values[i, j]) else ' '} "
                 f"{sup['theory_C_limit'].values[i, j]:>8.4g} {np.exp(sup['theory_log_C_lower'].values[i, j]):>8.4g}"
                 .replace("nan", "  -")
                 for i in range(len(laws))]
        rows.append(f"{r:>5g} " + " ".join(cells))
    for i, nm in enumerate(laws):
        rows.append(f"{nm:>9}: delta-method form of log C over the CLT radii: {sup['theory_growth_form'].values[i]}; "
                    "slopes vs n " + " ".join(f"{v:+.2f}" for v in sup["fit_slope"].values[i]))
    return "\n".join(rows)


def _summary_moments(mom: xr.Dataset) -> str:
    rows = [f"{'c':>5} {'R_mu':>6} {'H':>6} {'beta_mean':>16} {'beta_cov':>16} {'C_mean (theory)':>18} "
            f"{'C_cov (theory)':>18} {'log C_sup(th)':>13}"]
    for i, c in enumerate(mom["c"].values):
        rows.append(f"{c:>5g} {mom['support_radius'].values[i]:>6.2f} {mom['H'].values[i]:>6.3f} "
                    f"{mom['beta_mean'].values[i]:+.3f} ± {mom['beta_mean_se'].values[i]:.3f}   "
                    f"{mom['beta_cov'].values[i]:+.3f} ± {mom['beta_cov_se'].values[i]:.3f} "
                    f"{mom['Cprime_mean'].values[i]:>8.4f} ({mom['theory_Cprime_mean'].values[i]:.4f}) "
                    f"{mom['Cprime_cov'].values[i]:>8.4f} ({mom['theory_Cprime_cov'].values[i]:.4f}) "
                    f"{mom['theory_log_C_sup'].values[i]:>13.2f}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------- main
def validate(args) -> None:
    if min(args.R) <= 0 or len(args.R) < 4:
        raise UsageError(f"--R: radii must be positive (got {min(args.R):g})" if min(args.R) <= 0 else
                         "--R: growth fits need at least 4 radii")
    if len(args.c) < 3 or min(args.c) <= 0:
        raise UsageError("--c: need at least 3 positive truncation levels")
    if len(args.n) < 2:
        raise UsageError("--n: a rate fit needs at least 2 token counts")
    if len(args.moment_n) < 3 or min(args.moment_n) < 2:
        raise UsageError("--moment-n: a rate fit needs at least 3 token counts" if len(args.moment_n) < 3 else
                         "--moment-n: token counts must be >= 2")
    if args.reps < 2 or args.moment_reps < 2:
        raise UsageError("--reps / --moment-reps: standard errors need at least 2 replicates")
    if args.sphere_d < 2:
        raise UsageError("--sphere-d must be >= 2")
    if not args.atom_eps < 1:
        raise UsageError("--atom-eps must lie in (0, 1)")
    if args.atom_radius <= args.bulk_radius:
        raise UsageError("--atom-radius must exceed --bulk-radius (the atom is the extreme point)")
    R_max, n_max = max(args.R), max(args.n)
    a_max = max(args.gauss_a, args.sphere_a, args.atom_a)
    check_scores(a_max * R_max * max(1.0 + np.sqrt(2 * np.log(n_max)), args.atom_radius), "--R x the A scales")
    check_scores(args.trunc_a * max(args.c) * args.trunc_sigma ** 2 * args.trunc_d, "--trunc-A x --c")
    d_sup = max(2, args.sphere_d)
    queries = len(args.R) * (1 + 4 * (args.queries + 4) + 6 * 6 * (2 * d_sup + 2))
    check_resources(f"--n up to {n_max} tokens and --moment-n up to {max(args.moment_n)} in d = {args.trunc_d}",
                    memory=8.0 * (3 * n_max * d_sup + 3 * max(args.moment_n) * args.trunc_d
                                  + 8 * max(d_sup, args.trunc_d) ** 2),
                    work_s=(3 * args.reps * sum(args.n) * queries * d_sup
                            + len(args.c) * args.moment_reps * sum(n * n for n in args.moment_n) * args.trunc_d)
                    / PAIR_RATE)


def parts(args) -> list[Part]:
    """The groups selected by ``--parts`` (default both), in the order sup, moments."""
    chosen = getattr(args, "parts", None) or GROUPS
    make = {SUP_GROUP: sup_sweep, MOMENT_GROUP: moment_sweep}
    return [Part(group, sweep=make[group](args)) for group in GROUPS if group in chosen]


def main(argv=None) -> int:
    return study_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
