"""Figure of the encoder study: ``python -m paper_figs.encoder STORE [--out FIG]``.

* (a) ``|m_n - m|_2`` and (b) ``|S_n - S|_F`` against n (log-log), one colour per layer: the
  mean over sequences of the per-sequence mean error, bars = standard error across sequences,
  dashed = the power law with the layer's ``|beta|`` (mean over sequences);
* (c) ``|beta|`` against H_max, the largest applied per-head horizon (the axis of the theory),
  with the curve ``1/(2(1+H^2))`` -- a lower bound on ``|beta|`` -- and the 1/2 of the CLT;
  per-head rates as small dots when the run has them; markers = layers, filled = mean, open =
  covariance;
* (d) the same rates against the authors' H_code (all heads, no ``1/sqrt(d_h)``), with the same
  curve for comparison (not a bound on this axis).

The title counts the claims by outcome.

Reads the dataset written by ``python -m studies.encoder`` and nothing else.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from paper_figs._common import claims_count, figure_main, open_store, save_figure  # noqa: E402


def _curve(ax, H):
    hh = np.geomspace(max(1e-2, 0.5 * np.nanmin(H)), 2.0 * np.nanmax(H), 200)
    ax.plot(hh, 1.0 / (2.0 * (1.0 + hh**2)), "-", color="black", lw=1.3, label=r"$1/(2(1+H^2))$")
    ax.axhline(0.5, ls=":", color="grey", lw=1, label="1/2 (CLT)")
    ax.set_xscale("log")


def draw(store, out=None, dpi: int = 150) -> list[Path]:
    ds = open_store(store, study="encoder", needs="beta_mean")
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    layers = ds["layer"].values
    n = ds["n"].values.astype(float)
    S = ds.sizes["seq"]
    sns.set_theme(style="whitegrid", context="paper")
    colors = sns.color_palette("viridis", n_colors=max(2, len(layers)))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.3))
    for j, mom in enumerate(("mean", "cov")):
        ax = axes[j]
        m_seq = ds[f"{mom}_err_mean"].values  # (layer, n, seq)
        for i, layer in enumerate(layers):
            m = m_seq[i].mean(axis=-1)
            e = m_seq[i].std(axis=-1, ddof=1) / np.sqrt(S) if S > 1 else ds[f"{mom}_err_sem"].values[i, :, 0]
            b = float(ds[f"beta_{mom}"].values[i])
            se = float(ds[f"beta_{mom}_se"].values[i])
            ax.errorbar(n, m, yerr=e, fmt="o", ms=3, color=colors[i], capsize=2, lw=1,
                        label=f"layer {layer}: {b:.2f}±{se:.2f}")
            anchor = np.exp(np.mean(np.log(m)) + b * np.mean(np.log(n)))
            ax.plot(n, anchor * n ** (-b), "--", color=colors[i], lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens drawn n")
        ax.set_ylabel(r"$|m_n - m|_2$" if mom == "mean" else r"$|S_n - S|_F$")
        ax.set_title(f"({'ab'[j]}) {mom} error vs n (dashed: fitted power law)", fontsize=9)
        ax.legend(fontsize=6.5, title="|beta| ± se", title_fontsize=6.5, loc="lower left")
    for j, (axis, var, label) in enumerate((("applied", "H_max", r"$H_{\max}$ (applied, largest head)"),
                                            ("code", "H_code", r"$H_{\rm code}$ (authors: $W_k^\top W_q$, no scale)"))):
        ax = axes[2 + j]
        H = ds[var].values.mean(axis=-1)
        if axis == "applied" and "beta_mean_head" in ds:
            Hh = ds["H_head"].values.mean(axis=-1)
            ax.scatter(Hh.ravel(), ds["beta_mean_head"].values.ravel(), s=6, color="grey", alpha=0.5,
                       label="heads (mean error)", zorder=1)
        for i, layer in enumerate(layers):
            for mom, mk, face in (("mean", "o", colors[i]), ("cov", "s", "none")):
                ax.errorbar(H[i], ds[f"beta_{mom}"].values[i], yerr=ds[f"beta_{mom}_se"].values[i], fmt=mk,
                            ms=6, color=colors[i], mfc=face, capsize=2, zorder=3,
                            label=f"layer {layer}" if mom == "mean" else None)
        allH = np.concatenate([H, ds["H_head"].values.ravel()]) if axis == "applied" and "beta_mean_head" in ds else H
        _curve(ax, allH)
        ax.set_xlabel(label)
        ax.set_ylabel(r"$|\hat\beta|$")
        ax.set_ylim(0, max(0.85, 1.15 * float(np.nanmax([ds["beta_mean"].max(), ds["beta_cov"].max()]))))
        ax.set_title(f"({'cd'[j]}) |beta| vs horizon, {axis} axis"
                     + (" (the bound's)" if axis == "applied" else " (not a bound)"), fontsize=9)
        ax.legend(fontsize=6.5, loc="lower right", ncol=2, title="filled: mean, open: cov", title_fontsize=6.5)
    try:
        model = json.loads(ds.attrs.get("model", "{}")).get("model", "?")
    except ValueError:
        model = "?"
    outcome = f"; claims: {claims_count(ds)}" if claims_count(ds) else ""
    fig.suptitle(f"Token sample complexity on a pretrained encoder ({model}) — text: {ds.attrs.get('text', '?')}; "
                 f"{S} sequences x {ds.sizes['draw']} draws per n{outcome}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi)
    return [out]


def main(argv=None) -> int:
    return figure_main("python -m paper_figs.encoder", __doc__, draw, argv, study="encoder")


if __name__ == "__main__":
    sys.exit(main())
