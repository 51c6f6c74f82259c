"""The ``match3`` group of the tensor-attention study: Match3 (notes tensor_attention §5.1) solved by tensor attention
and not by pairwise attention.

Cell (one replicate): for every sequence length N (modulus ``M = round(N^2/ln 4)``, about half the
labels positive), a pairwise readout trained on ``--train`` sequences, then ``--sequences`` test
sequences, each classified by the models of :data:`MODELS`: the exact tensor-attention construction
(d = 4, logits ``lam cos(2 pi (x_i + x_j1 + x_j2)/M)``), its even Taylor approximation of degree
``--match3-degree``, the Match2 pairwise head, random pairwise heads with the trained bilinear
readout, and the majority class. Stored: ``match3_acc(N, model, seq, rep)`` (the fraction of a
sequence's tokens labelled correctly) and ``match3_positive(N, seq, rep)``.

Analysis (:func:`analyze_match3`, from the store alone): mean accuracies with SEs over sequences,
theory's construction (lam, entry bound, readout margin, float64 rounding bound, predicted
accuracy). Claims: ``match3_tensor`` (per N: every token classified correctly wherever the margin
exceeds the rounding; no statistical tolerance) and ``match3_pairwise`` (per baseline and N: its
accuracy does not exceed the majority class's by more than z paired SEs).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

from sim import tensor_attention as sta
from studies.claims import CONSISTENCY, ClaimSpec, z_family
from studies.cli import run_params
from studies.sweep import str_coord
from studies.tensor_attention.common import child_rng, group_sweep
from theory import tensor_attention as th

__all__ = ["MODELS", "PAIRWISE", "MATCH3_TENSOR", "MATCH3_PAIRWISE", "match3_sweep", "analyze_match3",
           "summary_match3"]

MODELS = ("tensor_exact", "tensor_poly", "pairwise_match2", "pairwise_readout", "majority")
PAIRWISE = ("pairwise_match2", "pairwise_readout")

MATCH3_TENSOR = ClaimSpec(
    "tensor_attention.match3_tensor", "AS24 motivation; Sanford, Hsu, Telgarsky 2023 (SHT23) Match3; "
    "construction of notes tensor_attention §5.1 [D]",
    "The exact tensor-attention construction (d = 4, logits lam cos(2 pi (x_i + x_j1 + x_j2)/M)) classifies "
    "every token correctly wherever its readout margin exceeds the float64 rounding of the readout.",
    role=CONSISTENCY,
    why="an exact construction: the addition formula makes the logits lam cos(2 pi (x_i + x_j1 + x_j2)/M) for every "
        "input, and the margin proof bounds the readout, so no sampler, law or size can make it fail; only the "
        "construction's own code or the exact tensor engine it runs on can (the engines' oracle tests check those)")
MATCH3_PAIRWISE = ClaimSpec(
    "tensor_attention.match3_pairwise", "SHT23 (one-layer pairwise attention needs m p H = Omega~(N) for "
    "Match3); Kozachinskiy et al. 2025 (one-layer softmax attention cannot solve Match3); notes tensor_attention §5.1",
    "A one-layer pairwise-attention baseline does no better on Match3 than the majority class (chance).")


def _match3_part(rng, *, Ns, sequences, train, degree, device="cpu"):
    acc = np.zeros((len(Ns), len(MODELS), sequences))
    pos = np.zeros((len(Ns), sequences))
    exact_method = "cuda" if device == "gpu" else "auto"  # host arrays, copied to the device
    for iN, N in enumerate(Ns):
        M = th.match3_balanced_M(N)
        thr = th.match3_threshold(M)
        train_x = [rng.integers(0, M, N) for _ in range(train)]
        train_y = [sta.match3_labels(x, M) for x in train_x]
        readout = sta.PairwiseReadout(M, rng).fit(train_x, train_y)
        majority = bool(np.mean(np.concatenate(train_y)) > 0.5)
        for s in range(sequences):
            x = rng.integers(0, M, N)
            y = sta.match3_labels(x, M)
            pos[iN, s] = y.mean()
            preds = {
                "tensor_exact": sta.match3_tensor_scores(x, M, method=exact_method) > thr,
                "tensor_poly": sta.match3_poly_scores(x, M, degree) > thr,
                "pairwise_match2": sta.match2_pairwise_scores(x, M) > thr,
                "pairwise_readout": readout.predict(x),
                "majority": np.full(N, majority),
            }
            for im, model in enumerate(MODELS):
                acc[iN, im, s] = np.mean(preds[model] == y)
    return {"match3_acc": acc, "match3_positive": pos}


def _match3_cell(cell, **cfg):
    return _match3_part(child_rng(cell.seed, "match3"), **cfg)


def match3_sweep(args):
    """The ``match3`` group's sweep: one cell per replicate."""
    cfg = dict(Ns=tuple(args.N), sequences=args.sequences, train=args.train, degree=args.match3_degree,
               device=args.device)
    return group_sweep(
        "match3", args,
        own={"N": list(args.N), "sequences": args.sequences, "train": args.train, "degree": args.match3_degree,
             "distinct": False, "M": [th.match3_balanced_M(N) for N in args.N]},
        variables={"match3_acc": ("N", "model", "seq", "rep"), "match3_positive": ("N", "seq", "rep")},
        coords={"N": np.asarray(args.N), "model": str_coord(MODELS), "seq": np.arange(args.sequences)},
        run_cell=functools.partial(_match3_cell, **cfg),
        var_attrs={"match3_acc": {"long_name": "fraction of the N tokens of a test sequence whose Match3 label is "
                                               "predicted correctly"},
                   "match3_positive": {"long_name": "fraction of positive labels of the sequence"}},
        attrs={"match3_convention": "indices unrestricted (SHT23 form [C]); M = round(N^2/ln 4); construction of "
                                    "notes tensor_attention §5.1 with d = 4 and scale lam"},
        gpu_engines="match3: exact construction on the GPU kernel, baselines and the polynomial readout on the CPU")


# --------------------------------------------------------------------------- analysis

def analyze_match3(ds: xr.Dataset):
    """Accuracies, the construction's theory and the claims of the ``match3`` group."""
    p = run_params(ds)
    out = xr.Dataset(coords={c: ds[c].values for c in ds.coords if c != "rep"})
    acc = ds["match3_acc"].values  # (N, model, seq, rep)
    N = ds["N"].values
    models = [str(m) for m in ds["model"].values]
    a = acc.reshape(acc.shape[0], acc.shape[1], -1)  # (N, model, sequences x reps)
    k = a.shape[-1]
    mean = a.mean(-1)
    se = a.std(-1, ddof=1) / math.sqrt(k) if k > 1 else np.full_like(mean, np.nan)
    out["match3_accuracy"] = (("N", "model"), mean, {"long_name": "mean accuracy over test sequences"})
    out["match3_accuracy_se"] = (("N", "model"), se, {"long_name": "standard error over sequences"})
    out["match3_positive_rate"] = (("N",), ds["match3_positive"].values.reshape(len(N), -1).mean(-1))
    Ms = np.array(p["match3"]["M"], dtype=np.int64)
    out["match3_M"] = (("N",), Ms)
    out["theory_match3_lambda"] = (("N",), np.array([th.match3_lambda(int(n), int(m)) for n, m in zip(N, Ms)]))
    out["theory_match3_entry_bound"] = (("N",), np.array([th.match3_entry_bound(int(n), int(m), 4)
                                                          for n, m in zip(N, Ms)]),
                                        {"long_name": "(4 lam)^(1/3): the construction's B in the 1/d convention"})
    margin = np.array([th.match3_readout_margin(int(m)) for m in Ms])
    rnd = np.array([th.match3_rounding_error(int(n), int(m)) for n, m in zip(N, Ms)])
    pred = np.array([th.match3_predicted_accuracy(int(n), int(m)) for n, m in zip(N, Ms)])
    out["theory_match3_margin"] = (("N",), margin, {"long_name": "readout margin 0.49 (1 - cos(2 pi/M))"})
    out["theory_match3_rounding"] = (("N",), rnd, {"long_name": "float64 bound on the readout's rounding"})
    out["theory_match3_accuracy_tensor"] = (("N",), pred, {
        "long_name": "predicted accuracy of the exact construction: 1 where margin > rounding, NaN (none) elsewhere"})
    out.attrs["d"] = int(p["d"])
    out.attrs["claim_settings"] = "match3_tensor: no tolerance (exact construction); match3_pairwise: z x paired SE"
    return out, _claims(a, N, Ms, models, mean, se, margin, rnd, pred, k)


def _claims(a, N, Ms, models, mean, se, margin, rnd, pred, k) -> list:
    """``match3_tensor`` per N and ``match3_pairwise`` per (baseline, N); ``a`` holds the
    accuracies over (N, model, sequence x replicate)."""
    ten = models.index("tensor_exact")
    maj = models.index("majority")
    claims = []
    for i, n in enumerate(N):
        where = f"N={int(n)}"
        wrong = int(round(float(np.sum(1.0 - a[i, ten]) * int(n))))
        if not np.isfinite(pred[i]):
            claims.append(MATCH3_TENSOR.not_tested(
                f"the readout margin {margin[i]:.3g} does not exceed the float64 rounding bound {rnd[i]:.3g} at M = "
                f"{int(Ms[i])}: theory predicts nothing", where=where, measured=mean[i, ten], se=se[i, ten]))
            continue
        claims.append(MATCH3_TENSOR.decided(
            wrong == 0, test="every token of every test sequence classified correctly", tolerance=0.0,
            tolerance_source="no statistical tolerance: an exact construction (margin proof in theory."
                             "match3_readout_margin, float64 rounding bounded by theory.match3_rounding_error)",
            where=where, prediction=float(pred[i]),
            prediction_text=f"accuracy 1 (M={int(Ms[i])}, margin {margin[i]:.2g} > rounding {rnd[i]:.1g})",
            measured=mean[i, ten], se=se[i, ten],
            reason="" if wrong == 0 else f"{wrong} token(s) misclassified"))
    z, zsrc = z_family(len(N) * len(PAIRWISE), dof=max(1, a.shape[-1] - 1))
    for i, n in enumerate(N):
        for m in PAIRWISE:
            diff = a[i, models.index(m)] - a[i, maj]  # paired by sequence
            dse = diff.std(ddof=1) / math.sqrt(diff.size) if diff.size > 1 else math.nan
            if not (np.isfinite(dse) and dse > 0):
                dse = math.sqrt(max(mean[i, maj] * (1 - mean[i, maj]), 0.25 / (k * int(n))) / (k * int(n)))
            claims.append(MATCH3_PAIRWISE.at_most(
                float(diff.mean()), dse, 0.0, z=z, z_source=zsrc, where=f"{m}, N={int(n)}",
                effect=1.0 - mean[i, maj],
                prediction_text=f"accuracy - majority-class accuracy ({mean[i, maj]:.3f}) <= 0"))
    return claims


def summary_match3(an: xr.Dataset) -> str:
    """The match3 group's table: accuracy per model and N, the construction's entry bound."""
    models = [str(m) for m in an["model"].values]
    rows = ["match3 part: accuracy (± se over sequences); positive-label rate",
            f"  {'N':>3} {'M':>4} {'B_constr':>8} " + " ".join(f"{m:>17}" for m in models) + "  positive"]
    for i, N in enumerate(an["N"].values):
        cells = " ".join(f"{an['match3_accuracy'].values[i, j]:>9.3f} ± {an['match3_accuracy_se'].values[i, j]:.3f}"
                         for j in range(len(models)))
        rows.append(f"  {int(N):>3} {int(an['match3_M'].values[i]):>4} "
                    f"{an['theory_match3_entry_bound'].values[i]:>8.1f} {cells}  "
                    f"{an['match3_positive_rate'].values[i]:.3f}")
    return "\n".join(rows)
