"""Figures of the random-feature attention study: ``python -m paper_figs.random_features STORE``.

One figure per group of the store written by ``python -m studies.random_features``:

* ``kernel``   — largest ``|z|`` of the M-head empirical kernel against the closed form vs M, with
  the family-wise normal band of ``random_features.kernel_clt``, and its relative RMS error vs M
  with the M^(-1/2) reference (``kernel_rate``);
* ``rate``     — per target: heat map of the relative error over (n, M); excess risk vs n per M
  and vs M per n (fitted slopes ± SE), with the theory's bound sqrt(B R^2/n) + sqrt(B R^2/M)
  (constants 1, dashed) and the trivial risk Var f* (dotted) where the theory has B, else the
  bound's shape anchored at the first point (``below_bound``, ``risk_slope_n``, ``risk_slope_M``);
* ``families`` — relative error vs n per model, one panel per target (title: the
  ``beats_mlp`` / ``outside_class`` outcomes), and bars per target at the largest n with the
  predicted sample-complexity ratio n_mlp/n_rfa;
* ``N``        — relative error vs the number of keys N per model, one panel per target, with
  the fitted N-exponent ± SE against the table's (``attention_N_free``, ``mlp_degrades_in_N``);
* ``bias``     — the mean-shift comparison: relative error vs the bias ratio r per target (legend:
  the predicted direction and the claim's outcome), and bars of r = 0 against the best r > 0.

Reads the dataset and nothing else (mean ± standard error over replicates as stored; claim
outcomes from the stored ``claim_*`` variables).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from paper_figs._common import claim_outcomes, open_store, save_figure  # noqa: E402

GROUPS = ("kernel", "rate", "families", "N", "bias")
MODEL_COLORS = {"rfa": "C0", "brfa": "C2", "rfmlp": "C3"}
MODEL_LABELS = {"rfa": "RFA (zero mean)", "brfa": "BRFA (biased)", "rfmlp": "RF-MLP (flattened)"}
MODEL_MARKERS = {"rfa": "o", "brfa": "s", "rfmlp": "^"}


_open = open_store


def available_groups(store) -> list[str]:
    return [g for g in GROUPS if (Path(store) / g / "zarr.json").exists()]


_save = save_figure


_outcomes = claim_outcomes


def _outcome(ds, name, **where) -> str:
    """The outcome of claim ``random_features.<name>`` whose ``where`` starts with the given
    ``key=value`` pairs ("" when it is not stored)."""
    want = ", ".join(f"{k}={v}" for k, v in where.items())
    for key, out in _outcomes(ds).items():
        if key.startswith(f"random_features.{name}[{want}") or (not want and key == f"random_features.{name}"):
            return out
    return ""


def draw_kernel(ds, out, dpi=150):
    M = ds["M"].values
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, k in enumerate(ds["kmodel"].values):
        c = MODEL_COLORS.get(str(k), f"C{i}")
        ax.plot(M, ds["max_abs_z"].values[i], "o-", color=c,
                label=f"{MODEL_LABELS.get(str(k), str(k))} ({_outcome(ds, 'kernel_clt', kmodel=k) or '?'})")
        err = ds["rel_rms_err"].values[i]  # (M, rep)
        mean = err.mean(axis=1)
        sem = err.std(axis=1, ddof=1) / math.sqrt(err.shape[1])
        bx.errorbar(M, mean, yerr=sem, fmt="o-", color=c, capsize=2,
                    label=f"{k}: slope {float(ds['err_slope'][i]):+.2f} ± {float(ds['err_slope_se'][i]):.2f} "
                          f"({_outcome(ds, 'kernel_rate', kmodel=k) or '?'})")
    band = float(ds["kernel_z_band"])
    ax.axhline(band, color="k", ls="--", lw=1, label=f"family-wise normal band |z| = {band:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, max(band * 1.25, float(ds["max_abs_z"].max()) * 1.1))
    ax.set_xlabel("heads M (RF-MLP: features)")
    ax.set_ylabel(r"max over pairs and draws of $|z|$")
    ax.set_title("(a) empirical vs closed-form kernel: z-scores", fontsize=9)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.95)
    ref = ds["rel_rms_err"].values.mean(axis=2)[:, 0].max()
    bx.plot(M, ref * 1.3 * (M / M[0]) ** -0.5, ":", color="k", label=r"$M^{-1/2}$")
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.set_xlabel("heads M")
    bx.set_ylabel("relative RMS kernel error")
    bx.set_title("(b) error of the M-head kernel (mean ± se over draws)", fontsize=9)
    bx.legend(fontsize=7)
    fig.suptitle(f"Infinite-head kernel check — {ds.sizes['pair']} input pairs, {ds.sizes['rep']} head draws per M",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, out, dpi)


def _bound_lines(ds, t):
    """(bound over (n, M), Var f*) of target ``t`` when the theory has its B, else (None, None)."""
    if "bound_target" in ds.coords and t in [str(v) for v in ds["bound_target"].values]:
        return (ds["theory_bound"].sel(bound_target=t).values,
                float(ds["theory_target_var"].sel(bound_target=t)))
    return None, None


def draw_rate(ds, out, dpi=150):
    targets = [str(t) for t in ds["target"].values]
    n = ds["n"].values.astype(float)
    M = ds["M"].values.astype(float)
    fig, axes = plt.subplots(len(targets), 3, figsize=(14, 3.9 * len(targets)), squeeze=False)
    shape = ds["theory_bound_shape"].values
    for r, t in enumerate(targets):
        a = ds.sel(target=t)
        ax, bx, cx = axes[r]
        rel = a["mean_rel_err"].values  # (n, M)
        im = ax.imshow(rel.T, origin="lower", aspect="auto", cmap="viridis_r",
                       norm=LogNorm(vmin=max(rel.min(), 1e-4), vmax=max(rel.max(), 1.0)))
        ax.grid(False)
        mid = math.sqrt(max(rel.min(), 1e-4) * max(rel.max(), 1.0))
        for i in range(len(n)):
            for j in range(len(M)):
                ax.text(i, j, f"{rel[i, j]:.3g}", ha="center", va="center", fontsize=7,
                        color="black" if rel[i, j] < mid else "white")
        ax.set_xticks(range(len(n)), [f"{int(v)}" for v in n], fontsize=7)
        ax.set_yticks(range(len(M)), [f"{int(v)}" for v in M], fontsize=7)
        ax.set_xlabel("training size n")
        ax.set_ylabel("heads M")
        ax.set_title(f"(a) {t}: relative error over (n, M)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        risk = a["mean_excess_risk"].values
        sem = a["sem_excess_risk"].values
        bound, var = _bound_lines(ds, t)
        below = _outcome(ds, "below_bound", target=t) or "?"
        colors = sns.color_palette("crest", n_colors=len(M))
        for j, m in enumerate(M):
            bx.errorbar(n, risk[:, j], yerr=sem[:, j], fmt="o-", ms=3, color=colors[j], capsize=2,
                        label=f"M={int(m)}: slope {float(a['slope_n'][j]):+.2f} ± {float(a['slope_n_se'][j]):.2f}")
        j = len(M) - 1
        if bound is not None:
            bx.plot(n, bound[:, j], "--", color="k", lw=1, label=f"bound at M={int(M[j])} (constants 1; {below})")
            bx.axhline(var, color="0.4", ls=":", lw=1, label="Var f* (trivial risk)")
        else:
            bx.plot(n, risk[0, j] * shape[:, j] / shape[0, j], "--", color="k", lw=1,
                    label=f"bound shape at M={int(M[j])}, anchored (slope {float(ds['theory_slope_n'][j]):+.2f})")
        bx.set_xscale("log", base=2)
        bx.set_yscale("log")
        bx.set_xlabel("training size n")
        bx.set_ylabel("excess risk (test MSE)")
        bx.set_title(f"(b) {t}: risk vs n per M; risk_slope_n {_outcome(ds, 'risk_slope_n', target=t) or '?'}",
                     fontsize=9)
        top = max(float(np.max(risk + sem)), float(np.max(bound)) if bound is not None else 0.0)
        bx.set_ylim(top=top * 60)
        bx.legend(fontsize=6, loc="upper right", ncol=2)
        colors = sns.color_palette("flare", n_colors=len(n))
        for i, nv in enumerate(n):
            cx.errorbar(M, risk[i], yerr=sem[i], fmt="o-", ms=3, color=colors[i], capsize=2,
                        label=f"n={int(nv)}: slope {float(a['slope_M'][i]):+.2f} ± {float(a['slope_M_se'][i]):.2f}")
        i = len(n) - 1
        if bound is not None:
            cx.plot(M, bound[i], "--", color="k", lw=1, label=f"bound at n={int(n[i])} (constants 1)")
            cx.axhline(var, color="0.4", ls=":", lw=1, label="Var f* (trivial risk)")
        else:
            cx.plot(M, risk[i, 0] * shape[i] / shape[i, 0], "--", color="k", lw=1,
                    label=f"bound shape at n={int(n[i])}, anchored (slope {float(ds['theory_slope_M'][i]):+.2f})")
        cx.set_xscale("log", base=2)
        cx.set_yscale("log")
        cx.set_xlabel("heads M")
        cx.set_ylabel("excess risk (test MSE)")
        cx.set_title(f"(c) {t}: risk vs M per n; risk_slope_M {_outcome(ds, 'risk_slope_M', target=t) or '?'}",
                     fontsize=9)
        cx.set_ylim(top=top * 60)
        cx.legend(fontsize=6, loc="upper right", ncol=2)
    fig.suptitle("Zero-mean RFA: excess risk vs (n, M) against the bound sqrt(B R²/n) + sqrt(B R²/M) "
                 f"— {ds.sizes['rep']} replicates, mean ± se", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, dpi)


def draw_families(ds, out, dpi=150):
    targets = [str(t) for t in ds["target"].values]
    models = [str(m) for m in ds["model"].values]
    n = ds["n"].values.astype(float)
    ncol = 4
    nrow = math.ceil(len(targets) / ncol)
    fig = plt.figure(figsize=(14, 3.0 * nrow + 3.6))
    gs = fig.add_gridspec(nrow + 1, ncol, height_ratios=[1] * nrow + [1.15])
    mean = ds["mean_rel_err"].values
    sem = ds["sem_rel_err"].values
    lo = max(1e-4, float(mean.min()) / 2)
    for k, t in enumerate(targets):
        ax = fig.add_subplot(gs[k // ncol, k % ncol])
        for j, m in enumerate(models):
            ax.errorbar(n, mean[k, :, j], yerr=sem[k, :, j], fmt="-", marker=MODEL_MARKERS.get(m, "o"), ms=3.5,
                        capsize=2, color=MODEL_COLORS.get(m, f"C{j}"), label=MODEL_LABELS.get(m, m), alpha=0.85)
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylim(lo, 1.6)
        tags = [f"{name}: {o}" for name in ("beats_mlp", "outside_class")
                for o in [_outcome(ds, name, target=t)] if o]
        ax.set_title(f"{t}" + (f"\n{'; '.join(tags)}" if tags else ""), fontsize=8)
        ax.set_xlabel("n", fontsize=8)
        if k % ncol == 0:
            ax.set_ylabel("relative test error", fontsize=8)
        ax.tick_params(labelsize=7)
    if len(targets) % ncol:
        lax = fig.add_subplot(gs[(len(targets) - 1) // ncol, ncol - 1])
        lax.axis("off")
        handles = [plt.Line2D([], [], color=MODEL_COLORS.get(m, f"C{j}"), marker=MODEL_MARKERS.get(m, "o"),
                              label=MODEL_LABELS.get(m, m))
                   for j, m in enumerate(models)]
        lax.legend(handles=handles, loc="center", fontsize=8, title="model (mean ± se)")
    else:
        fig.axes[0].legend(fontsize=7)
    bx = fig.add_subplot(gs[nrow, :])
    width = 0.8 / len(models)
    x = np.arange(len(targets))
    for j, m in enumerate(models):
        bx.bar(x + (j - (len(models) - 1) / 2) * width, mean[:, -1, j], width, yerr=sem[:, -1, j], capsize=2,
               color=MODEL_COLORS.get(m, f"C{j}"), label=MODEL_LABELS.get(m, m))
    pred = dict(zip([str(v) for v in ds["exact_target"].values], ds["theory_n_ratio"].values)) \
        if "exact_target" in ds.coords else {}
    for k, t in enumerate(targets):
        text = f"MLP/RFA = {float(ds['mlp_over_model'].sel(target=t, model='rfa')[-1]):.1f}x" \
            if "rfa" in models else ""
        if t in pred:
            text += f"\nn ratio pred. ≥ {float(pred[t]):.3g}"
        bx.text(k, 1.25, text, ha="center", va="bottom", fontsize=6.5)
    bx.set_yscale("log")
    bx.grid(axis="x", visible=False)
    bx.set_ylim(lo, 4.0)
    bx.axhline(1.0, color="0.5", lw=0.8, ls=":")
    bx.set_xticks(x, targets)
    bx.set_ylabel("relative test error")
    bx.set_title(f"bars per target family at n = {int(n[-1])}", fontsize=9)
    bx.legend(fontsize=7, loc="lower right")
    fig.suptitle("Attention vs random-feature MLP per target family "
                 f"(M = {_param(ds, 'M')} heads, N = {_param(ds, 'N')} keys, d = {_param(ds, 'd')}; "
                 f"{ds.sizes['rep']} replicates)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, dpi)


def _param(ds, key):
    import json

    try:
        return json.loads(ds.attrs["params_json"]).get(key, "?")
    except (KeyError, ValueError):
        return "?"


def draw_N(ds, out, dpi=150):
    targets = [str(t) for t in ds["target"].values]
    models = [str(m) for m in ds["model"].values]
    Ns = ds["N"].values
    fig, axes = plt.subplots(1, len(targets), figsize=(4.6 * len(targets), 3.9), squeeze=False)
    for k, t in enumerate(targets):
        ax = axes[0, k]
        for j, m in enumerate(models):
            ax.errorbar(Ns, ds["mean_rel_err"].values[k, :, j], yerr=ds["sem_rel_err"].values[k, :, j],
                        fmt="-", marker=MODEL_MARKERS.get(m, "o"), capsize=2, color=MODEL_COLORS.get(m, f"C{j}"),
                        label=f"{MODEL_LABELS.get(m, m)}: N^({float(ds['N_exponent'][k, j]):+.2f} ± "
                              f"{float(ds['N_exponent_se'][k, j]):.2f}), table N^{float(ds['theory_N_exponent'][k, j]):g}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ns, [str(int(v)) for v in Ns])
        ax.set_ylim(0, max(1.15, float(ds["mean_rel_err"].max()) * 1.1))
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel("number of keys N")
        ax.set_ylabel("relative test error")
        ax.set_title(f"{t}: attention_N_free {_outcome(ds, 'attention_N_free', target=t) or '?'}; "
                     f"mlp_degrades_in_N {_outcome(ds, 'mlp_degrades_in_N', target=t) or '?'}", fontsize=8)
        ax.legend(fontsize=7, loc="center right")
    fig.suptitle(f"Independence of N at n = {_param(ds, 'n_fixed')} (M = {_param(ds, 'M')} heads; "
                 f"{ds.sizes['rep']} replicates, mean ± se)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, dpi)


def draw_bias(ds, out, dpi=150):
    targets = [str(t) for t in ds["target"].values]
    r = ds["r"].values.astype(float)
    mean = ds["mean_rel_err"].values
    sem = ds["sem_rel_err"].values
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.3), gridspec_kw={"width_ratios": [1.2, 1]})
    effect = {1: "theory: lowers", -1: "theory: raises", 0: "no prediction"}
    for k, t in enumerate(targets):
        eff = effect[int(ds["theory_bias_effect"].values[k])]
        name = {1: "bias_lowers_risk", -1: "bias_raises_risk"}.get(int(ds["theory_bias_effect"].values[k]))
        got = _outcome(ds, name, target=t) if name else ""
        ax.errorbar(r, mean[k], yerr=sem[k], fmt="o-", capsize=2, color=f"C{k}",
                    label=f"{t} ({eff}" + (f": {got}" if got else "") + ")")
    ax.set_yscale("log")
    ax.set_xlabel(r"bias ratio $r = \mu/\sqrt{d}$ (mean of the query-key matrix)")
    ax.set_ylabel("relative test error")
    ax.set_title("(a) relative error vs the mean shift r", fontsize=9)
    ax.legend(fontsize=7)
    x = np.arange(len(targets))
    i0 = int(np.where(r == 0)[0][0])
    best = ds["best_r"].values
    best_idx = [int(np.where(r == b)[0][0]) for b in best]
    bx.bar(x - 0.2, mean[:, i0], 0.4, yerr=sem[:, i0], capsize=2, color="C0", label="r = 0 (RFA)")
    bx.bar(x + 0.2, mean[x, best_idx], 0.4, yerr=sem[x, best_idx], capsize=2, color="C2", label="best r > 0 (BRFA)")
    for k in range(len(targets)):
        bx.text(k + 0.2, mean[k, best_idx[k]] * 1.15, f"r={best[k]:g}", ha="center", fontsize=7)
    bx.set_yscale("log")
    bx.grid(axis="x", visible=False)
    bx.set_xticks(x, targets)
    bx.set_ylabel("relative test error")
    bx.set_title("(b) zero mean vs the best non-zero mean", fontsize=9)
    bx.legend(fontsize=7)
    fig.suptitle(f"Non-zero-mean query-key matrices at n = {_param(ds, 'n_fixed')} (M = {_param(ds, 'M')}, "
                 f"N = {_param(ds, 'N')}; {ds.sizes['rep']} replicates, mean ± se)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, dpi)


DRAW = {"kernel": draw_kernel, "rate": draw_rate, "families": draw_families, "N": draw_N, "bias": draw_bias}


def draw(store, out=None, groups=None, dpi: int = 150) -> list[Path]:
    """Draw one figure per analysed group of ``store``; files ``<out>_<group>.png`` where
    ``out`` defaults to the store path without its suffix. Returns the paths."""
    store = Path(store)
    prefix = Path(out) if out is not None else store.with_suffix("")
    _open(store, study="random_features")  # whose store it is, and readable
    groups = list(groups) if groups is not None else available_groups(store)
    if not groups:
        raise ValueError(f"{store} holds no random_features groups")
    paths = []
    sns.set_theme(style="whitegrid", context="paper")
    for g in groups:
        ds = _open(store, g)
        if "claim_outcome" not in ds.data_vars:
            raise ValueError(f"{store}/{g} has no analysis yet (the sweep did not finish); rerun the study")
        suffix = prefix.suffix if prefix.suffix in (".png", ".pdf") else ".png"
        base = prefix.with_suffix("") if prefix.suffix in (".png", ".pdf") else prefix
        paths.append(DRAW[g](ds, base.parent / f"{base.name}_{g}{suffix}", dpi))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m paper_figs.random_features", description=__doc__.split("\n")[0])
    p.add_argument("store", type=Path, help="Zarr store written by python -m studies.random_features")
    p.add_argument("--out", type=Path, default=None,
                   help="figure path prefix: PREFIX_<group>.png (default: the store path without .zarr)")
    p.add_argument("--groups", default=None, help=f"comma list of groups (default: all present of {', '.join(GROUPS)})")
    args = p.parse_args(argv)
    if not args.store.exists():
        print(f"{p.prog}: error: no store at {args.store}", file=sys.stderr)
        return 2
    groups = None
    if args.groups:
        groups = [g.strip() for g in args.groups.split(",") if g.strip()]
        bad = [g for g in groups if g not in GROUPS]
        if bad:
            print(f"{p.prog}: error: unknown group(s) {', '.join(bad)}", file=sys.stderr)
            return 2
        missing = [g for g in groups if g not in available_groups(args.store)]
        if missing:
            print(f"{p.prog}: error: {args.store} has no group(s) {', '.join(missing)}", file=sys.stderr)
            return 2
    try:
        paths = draw(args.store, args.out, groups)
    except (ValueError, KeyError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
