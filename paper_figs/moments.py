"""Figure of the moment-rate study: ``python -m paper_figs.moments STORE [--out FIG]``.

(a), (b) errors of the output mean and covariance against n (log-log, exact reference), one
curve per attention scale coloured by its horizon H_eff, with standard-error bars and the
fitted power laws (dashed);
(c), (d) ``|beta_hat|`` against the horizon, on the H_eff axis (exact exponent) and on the H_code
axis (the authors' convention), with the authors' curve 1/(2(1+H^2)) (the lower bound of the
claim ``rate_bound``), the finer heuristic (1/2 for H <= 1, 1/(1+H^2) above), the rate the
analysis predicts for the run's law (crosses, ``theory_beta_law``) and the line ``|beta| = 1/2``;
filled markers: exact reference, open markers: the finite reference (when the run has one).
The title counts the stored claims by outcome; the box in (c) lists them.

Reads the dataset written by ``python -m studies.moments`` and nothing else.
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

from matplotlib.colors import LogNorm  # noqa: E402

from paper_figs._common import claim_outcomes, claims_count, figure_main, open_store, save_figure  # noqa: E402




def _law_text(ds) -> str:
    try:
        law = json.loads(ds.attrs.get("token_law", "{}"))
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in law.items())
    except ValueError:
        return str(ds.attrs.get("token_law", ""))


def _claims_text(ds) -> tuple[str, str]:
    """(count line, one line per claim) from the stored ``claim_*`` variables."""
    outcomes = claim_outcomes(ds, short=True)
    if not outcomes:
        return "", ""
    return f"; claims: {claims_count(ds)}", "\n".join(f"{k}: {o}" for k, o in outcomes.items())


def draw(store, out=None, dpi: int = 150) -> list[Path]:
    ds = open_store(store, study="moments", needs="beta_mean")
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    refs = [str(r) for r in ds["ref"].values]
    ex = refs.index("exact")
    n = ds["n"].values.astype(float)
    H_eff = ds["H_eff"].values
    H_code = ds["H_code"].values
    S = H_eff.size
    sns.set_theme(style="whitegrid", context="paper")
    cmap = plt.get_cmap("plasma")
    pos = H_eff[H_eff > 0]
    norm = LogNorm(vmin=pos.min(), vmax=max(pos.max(), pos.min() * 1.0001))
    fig = plt.figure(figsize=(12.5, 9.0))
    gs = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.04], hspace=0.32, wspace=0.28)
    axes = [fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]),
            fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1])]
    cax = fig.add_subplot(gs[0, 2])

    for ax, key, mom, lab in ((axes[0], "mean_err", "mean", r"$\|\hat m_n - m\|_2$"),
                              (axes[1], "cov_err", "cov", r"$\|\hat\Sigma_n - \Sigma\|_F$")):
        for s in range(S):
            m = ds[f"{key}_mean"].values[ex, s]
            e = ds[f"{key}_sem"].values[ex, s]
            c = cmap(norm(max(H_eff[s], pos.min())))
            ax.errorbar(n, m, yerr=e, fmt="o", ms=3, color=c, capsize=1.5, lw=0.9)
            slope = -ds[f"beta_{mom}"].values[ex, s]
            anchor = np.exp(np.mean(np.log(m)) - slope * np.mean(np.log(n)))
            ax.plot(n, anchor * n**slope, "--", color=c, lw=0.9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens n")
        ax.set_ylabel(lab)
        ax.set_title(f"({'a' if mom == 'mean' else 'b'}) {'mean' if mom == 'mean' else 'covariance'} "
                     "error vs n (exact reference; dashed: WLS fits)", fontsize=9)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, cax=cax)
    cb.set_label(r"$H_{\rm eff}=\|\Sigma^{1/2}A\Sigma^{1/2}\|_2$ (colour of each scale)")

    for ax, H, axis, tag in ((axes[2], H_eff, "eff", "c"), (axes[3], H_code, "code", "d")):
        hh = np.geomspace(min(H.min(), 1e-3), max(H.max(), 10.0) * 1.5, 300)
        ax.plot(hh, 1 / (2 * (1 + hh**2)), "-", color="black", lw=1.4, label=r"$1/(2(1+H^2))$ (authors)")
        ax.plot(hh, np.where(hh <= 1, 0.5, 1 / (1 + hh**2)), "--", color="0.45", lw=1.2,
                label=r"finer heuristic: $1/2$ ($H\leq 1$), $1/(1+H^2)$")
        ax.axhline(0.5, color="C2", ls=":", lw=1.4, label=r"$|\beta|=1/2$")
        if "theory_beta_law" in ds and axis == "eff":
            ax.plot(H, ds["theory_beta_law"].values, "x", color="0.2", ms=6, mew=1.3,
                    label="predicted for this law (finer heuristic)")
        for mom, marker, col in (("mean", "o", "C0"), ("cov", "s", "C3")):
            b = ds[f"beta_{mom}"].values
            e = ds[f"beta_{mom}_se"].values
            ax.errorbar(H, b[ex], yerr=e[ex], fmt=marker, color=col, ms=5, capsize=2, lw=1,
                        label=rf"$|\hat\beta_{{\rm {mom}}}|$ exact ref.")
            if "finite" in refs:
                fi = refs.index("finite")
                ax.errorbar(H * 1.04, b[fi], yerr=e[fi], fmt=marker, mfc="white", color=col, ms=5,
                            capsize=2, lw=0.8, label=rf"$|\hat\beta_{{\rm {mom}}}|$ finite ref.")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo = min(np.nanmin(np.concatenate([ds["beta_mean"].values.ravel(), ds["beta_cov"].values.ravel()])), 0.5)
        ax.set_ylim(max(1e-3, 0.5 * max(lo, 1e-3)), 0.9)
        ax.set_xlim(hh[0], hh[-1])
        ax.set_xlabel(rf"horizon $H_{{\rm {axis}}}$" + (" (exact exponent)" if axis == "eff" else
                                                         r" $=\sqrt{d}\,H_{\rm eff}$ (authors' code)"))
        ax.set_ylabel(r"$|\hat\beta|$ (error $\propto n^{-\beta}$)")
        ax.set_title(f"({tag}) fitted rates vs the horizon on the H_{axis} axis", fontsize=9)
        ax.legend(fontsize=6.5, loc="lower left", framealpha=0.9)

    count, lines = _claims_text(ds)
    if lines:
        axes[2].text(0.98, 0.98, lines, transform=axes[2].transAxes, fontsize=6.2, va="top", ha="right",
                     bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    fig.suptitle(f"Token sample complexity, moments of the output law — tokens: {_law_text(ds)}; "
                 f"{ds.sizes['rep']} samples per n{count}", fontsize=9.5)
    save_figure(fig, out, dpi, bbox_inches="tight")
    return [out]


def main(argv=None) -> int:
    return figure_main("python -m paper_figs.moments", __doc__, draw, argv, study="moments")


if __name__ == "__main__":
    sys.exit(main())
