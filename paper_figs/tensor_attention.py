"""Figure of the bounded-entry tensor-attention study: ``python -m paper_figs.tensor_attention STORE``.

One figure with the panels of every group the store holds (``error``, ``runtime``, ``match3``, each
read from its own group of the store):

* (error) error vs degree g, one panel per (polynomial family, order k): the measured max output error
  ``||T_approx - T_exact||_inf`` on sign-aligned inputs (solid, one colour per entry bound B;
  crosses where the approximation refused) and the certified bound ``2 e/(1-e) B^(k-1)`` with
  ``e`` = theory's independently computed eps + the float64 allowance (dashed, where ``e < 1``);
  the title gives the outcome of the ``bound`` claim and how many ``decay`` claims hold;
* (error) blow-up past the threshold: error against the logit range ``R = B^k`` at fixed degrees;
* (error) rank ``C(d+g, g)`` against the papers' looser bounds and the redundant tensor-power basis;
* (runtime) runtime against n (log-log) for exact matrix/tensor and the approximations, with the fitted
  power laws over the measurable windows (legend: measured slope vs the flop model's) and the
  measured crossover n;
* (match3) Match3 accuracy of exact tensor attention, its polynomial approximation, the pairwise
  baselines and the majority class (chance), with standard errors, and theory's predicted
  accuracy of the exact construction.

The suptitle counts the claims stored with the groups' analyses. Reads the store written by
``python -m studies.tensor_attention`` and nothing else; a store none of whose groups has been
analysed is a one-line error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from paper_figs._common import claim_outcomes, figure_main, open_store, save_figure  # noqa: E402


GROUPS = ("error", "runtime", "match3")
FLOOR = 1e-17  # errors are drawn no lower than this on log axes
IMPL_STYLE = {"exact_matrix": ("C0", "o", "exact matrix"), "exact_tensor": ("C3", "s", "exact tensor"),
              "approx_matrix": ("C0", "^", "approx. matrix"), "approx_tensor": ("C3", "v", "approx. tensor")}
MODEL_LABEL = {"tensor_exact": "tensor (exact)", "tensor_poly": "tensor (poly. approx.)",
               "pairwise_match2": "pairwise: Match2 head", "pairwise_readout": "pairwise: trained readout",
               "majority": "majority class"}


_claims = claim_outcomes


def _error_panel(ax, ds, family, k, colors):
    Bs = ds["B"].values
    g = ds["degree"].values
    for ib, B in enumerate(Bs):
        sel = dict(family=family, k=k, B=B)
        e = ds["err_max"].sel(**sel, inputs="sign_aligned").values
        nrej = ds["n_rejected"].sel(**sel, inputs="sign_aligned").values
        reps = ds.sizes["rep"]
        ok = nrej < reps
        ax.plot(g[ok], np.maximum(e[ok], FLOOR), "o-", color=colors[ib], ms=3, lw=1.2,
                label=f"B={B:g}")
        if (nrej > 0).any():
            ax.plot(g[nrej > 0], np.full((nrej > 0).sum(), 1.0), "x", color=colors[ib], ms=5)
        bnd = ds["theory_err_bound"].sel(**sel).values
        bd = bnd > 0
        if bd.any():
            ax.plot(g[bd], np.maximum(bnd[bd], FLOOR), "--", color=colors[ib], lw=1)
    ax.set_yscale("log")
    ax.set_ylim(FLOOR * 0.5, 1e1)
    ax.set_xlabel("degree g")
    ax.set_ylabel(r"$\|T_{approx}-T\|_\infty$")
    name = "matrix" if k == 2 else ("tensor" if k == 3 else f"order {k}")
    cl = _claims(ds)
    bound = cl.get(f"tensor_attention.bound[{family}, k={k}]", "-")
    decay = [v for key, v in cl.items() if key.startswith(f"tensor_attention.decay[{family}, k={k},")]
    ax.set_title(f"{family}, k={k} ({name}), sign-aligned inputs: measured max error (solid),\n"
                 f"certified bound + float64 (dashed); bound: {bound}; decay: {decay.count('holds')} hold, "
                 f"{decay.count('fails')} fail, {decay.count('not tested')} not tested", fontsize=8)


def _blowup_panel(ax, ds, family):
    degs = ds["degree"].values
    pick = np.unique(np.clip(np.round(np.linspace(0, len(degs) - 1, 4)).astype(int), 0, len(degs) - 1))
    pal = sns.color_palette("viridis", len(pick))
    for c, ig in zip(pal, pick):
        for k, mk in zip(ds["k"].values, ("o", "s", "^")):
            R = ds["theory_logit_range"].sel(k=k).values
            sel = dict(family=family, k=k, degree=degs[ig], inputs="sign_aligned")
            e = ds["err_max"].sel(**sel).values
            ok = ds["n_rejected"].sel(**sel).values < ds.sizes["rep"]
            ax.plot(R[ok], np.maximum(e[ok], FLOOR), mk + "-", color=c, ms=3.5, lw=1,
                    label=f"g={int(degs[ig])}, k={int(k)}")
    ax.set_xscale("log")
    Rall = ds["theory_logit_range"].values
    ticks = [t for t in 2.0 ** np.arange(-12, 13) if Rall.min() / 1.01 <= t <= Rall.max() * 1.01]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yscale("log")
    ax.set_ylim(FLOOR * 0.5, 1e1)
    ax.set_xlabel(r"logit range $R = B^k$ (sign-aligned inputs reach it)")
    ax.set_ylabel(r"$\|T_{approx}-T\|_\infty$")
    ax.set_title(f"blow-up past the threshold ({family})", fontsize=8.5)
    ax.legend(fontsize=6, ncol=2, loc="lower right")


def _rank_panel(ax, ds):
    g = ds["degree"].values
    ax.plot(g, ds["theory_rank"].values, "o-", color="black", ms=3, label=r"tight $\binom{d+g}{g}$ (any k)")
    for k, c in zip(ds["k"].values, ("C0", "C3", "C2")):
        ax.plot(g, ds["theory_rank_loose"].sel(k=k).values, "--", color=c,
                label=rf"papers' bound $\binom{{{int(k)}(g+d)}}{{{int(k)}g}}$ [C]")
    ax.plot(g, ds["theory_rank_redundant"].values, ":", color="gray", label=r"redundant $\sum_t d^t$")
    ax.set_yscale("log")
    ax.set_xlabel("degree g")
    ax.set_ylabel("rank r (features)")
    ax.set_title("rank of the polynomial kernel", fontsize=8.5)
    ax.legend(fontsize=6.5)


def _runtime_panel(ax, ds):
    grids = {"exact_matrix": "n_matrix", "exact_tensor": "n_tensor", "approx_matrix": "n_approx",
             "approx_tensor": "n_approx"}
    for i, impl in enumerate(ds["impl"].values):
        impl = str(impl)
        c, mk, lab = IMPL_STYLE[impl]
        n = ds[grids[impl]].values.astype(float)
        t = ds[f"time_{impl}"].values
        med = np.median(t, axis=-1)
        ls = "-" if impl.startswith("exact") else "--"
        ax.errorbar(n, med, yerr=[med - t.min(-1), t.max(-1) - med], fmt=mk, color=c, ms=4, capsize=2, lw=0.8,
                    mfc="white" if impl.startswith("approx") else c)
        s, se = ds["fit_slope"].values[i], ds["fit_slope_se"].values[i]
        if not np.isfinite(s):
            ax.plot([], [], mk, color=c, label=f"{lab}: < 3 measurable sizes (not tested)")
            continue
        lo, hi = ds["fit_n_min"].values[i], ds["fit_n_max"].values[i]
        nn = np.geomspace(lo, hi, 20)
        ax.plot(nn, np.exp(ds["fit_intercept"].values[i]) * nn**s, ls, color=c, lw=1.3,
                label=f"{lab}: slope {s:.2f}±{se:.2f} (flop model {ds['theory_slope'].values[i]:.2f})")
    for kind, c, grid in (("matrix", "C0", "n_matrix"), ("tensor", "C3", "n_tensor")):
        key = f"time_approx_{kind}_x_best"
        if key in ds:
            ax.plot(ds[grid].values, ds[key].values, ":", color=c, lw=1, alpha=0.8,
                    label=f"approx. {kind} on the exact grid (best)")
            ax.plot(ds[grid].values, ds[f"time_exact_{kind}_best"].values, "-", color=c, lw=0.6, alpha=0.5)
        key = f"crossover_n_{kind}"
        if key in ds:
            nx = float(ds[key])
            ax.axvline(nx, color=c, ls=":", lw=1.2, label=f"measured crossover ({kind}) n≈{nx:.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens n")
    ax.set_ylabel("wall time (s), median and range over reps")
    g = json.loads(ds.attrs["params_json"])["runtime"]["degree"]
    ax.set_title(f"runtime vs n (d={json.loads(ds.attrs['params_json'])['d']}, g={g})", fontsize=8.5)
    ax.legend(fontsize=5.8, loc="lower right", framealpha=0.85)


def _match3_panel(ax, ds):
    models = [str(m) for m in ds["model"].values]
    N = ds["N"].values
    acc = ds["match3_accuracy"].values
    se = ds["match3_accuracy_se"].values
    w = 0.8 / len(models)
    pal = sns.color_palette("deep", len(models))
    x = np.arange(len(N))
    for j, m in enumerate(models):
        label = MODEL_LABEL.get(m, m)
        if m == "tensor_poly":
            label = f"tensor (Taylor g={json.loads(ds.attrs['params_json'])['match3']['degree']} approx.)"
        ax.bar(x + (j - (len(models) - 1) / 2) * w, acc[:, j], w, yerr=se[:, j], color=pal[j],
               capsize=2, label=label)
    pred = ds["theory_match3_accuracy_tensor"].values
    ax.plot(x - (len(models) - 1) / 2 * w, pred, "k_", ms=14, mew=2, label="theory: exact construction")
    ax.set_xticks(x, [f"N={int(n)}\nM={int(m)}\nB={b:.0f}" for n, m, b in
                      zip(N, ds["match3_M"].values, ds["theory_match3_entry_bound"].values)], fontsize=7)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy (mean ± se over sequences)")
    cl = _claims(ds)
    pw = [v for key, v in cl.items() if key.startswith("tensor_attention.match3_pairwise")]
    ax.set_title(f"Match3: tensor vs pairwise attention (pairwise at chance: {pw.count('holds')}/{len(pw)} "
                 "claims hold)", fontsize=8.5)
    ax.legend(fontsize=6, loc="upper center", ncol=3, bbox_to_anchor=(0.5, -0.22))


def _analysed_groups(store) -> dict:
    """``{group: dataset}`` of the store's analysed groups, in the order of :data:`GROUPS`."""
    open_store(store, study="tensor_attention")  # whose store it is, and readable
    present = [g for g in GROUPS if (Path(store) / g / "zarr.json").exists()]
    if not present:
        raise ValueError(f"{store} has no analysis of any group ({', '.join(GROUPS)}) yet; run "
                         "python -m studies.tensor_attention")
    return {g: open_store(store, g, needs="claim_outcome") for g in present}


def _panels(groups: dict) -> list:
    """``(kind, dataset, family, k)`` of every panel the analysed groups give."""
    panels = []
    if "error" in groups:
        ds = groups["error"]
        panels += [("error", ds, str(family), int(k)) for family in ds["family"].values for k in ds["k"].values]
        families = [str(f) for f in ds["family"].values]
        panels.append(("blowup", ds, "chebyshev" if "chebyshev" in families else families[0], 0))
        panels.append(("rank", ds, None, 0))
    if "runtime" in groups:
        panels.append(("runtime", groups["runtime"], None, 0))
    if "match3" in groups:
        panels.append(("match3", groups["match3"], None, 0))
    return panels


def draw(store, out=None, dpi: int = 130) -> list[Path]:
    """One figure of every analysed group of ``store`` (default ``STORE.png``); returns ``[path]``."""
    groups = _analysed_groups(store)
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    sns.set_theme(style="whitegrid", context="paper")
    panels = _panels(groups)
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.6 * ncols, 6.0), 4.1 * nrows + 0.4), squeeze=False)
    err = groups.get("error")
    colors = sns.color_palette("rocket_r", n_colors=err.sizes["B"] + 2)[1:-1] if err is not None else None
    for ax, (kind, ds, family, k) in zip(axes.flat, panels):
        if kind == "error":
            _error_panel(ax, ds, family, k, colors)
        elif kind == "blowup":
            _blowup_panel(ax, ds, family)
        elif kind == "rank":
            _rank_panel(ax, ds)
        elif kind == "runtime":
            _runtime_panel(ax, ds)
        else:
            _match3_panel(ax, ds)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if err is not None:
        h, lab = axes.flat[0].get_legend_handles_labels()
        axes.flat[0].legend(h, lab, fontsize=6.5, ncol=2, loc="lower left", title="entry bound",
                            title_fontsize=6.5)
    first = next(iter(groups.values()))
    p = json.loads(first.attrs["params_json"])
    sep = "; " if ncols >= 3 else "\n"
    outcomes = [o for ds in groups.values() for o in _claims(ds).values()]
    counts = (f"; claims: {outcomes.count('holds')} hold, {outcomes.count('fails')} fail, "
              f"{outcomes.count('not tested')} not tested" if outcomes else "")
    fig.suptitle(f"Bounded-entry tensor attention (Alman & Song): polynomial method vs exact{sep}"
                 f"d={p['d']}, scale {p['scale']}, {first.sizes['rep']} replicates{counts}",
                 fontsize=10 if ncols >= 3 else 8.5)
    fig.tight_layout()
    save_figure(fig, out, dpi)
    return [out]


def main(argv=None) -> int:
    return figure_main("python -m paper_figs.tensor_attention", __doc__, draw, argv, study="tensor_attention")


if __name__ == "__main__":
    sys.exit(main())
