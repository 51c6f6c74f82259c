"""Figure of the tails study: ``python -m paper_figs.tails STORE [--out FIG]``.

(a) the uniform constant C(R) = sqrt(n) E sup against the query radius R (log scale) for
    Gaussian, sphere and bounded-with-an-atom tokens, with the delta-method prediction
    (dashed); open markers: the largest n is below the CLT regime (n < 10 n_3);
(b) the same on log-log axes, where polynomial growth is a straight line and exponential or
    Gaussian growth bends upwards;
(c) the moment prefactor C' (output mean and covariance of self-attention) for truncated
    Gaussians against their support radius R_mu, next to the delta-method uniform constant
    C(R_mu) of the same laws (exponential);
(d) the moment errors against n for every truncation level, with the n^{-1/2} reference.

Reads the dataset written by ``python -m studies.tails`` (root group and group ``moments``)
and nothing else.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from matplotlib.ticker import NullFormatter  # noqa: E402

from paper_figs._common import figure_main, open_store, save_figure  # noqa: E402

COLORS = {"gaussian": "C0", "sphere": "C2", "atom": "C3"}
LABELS = {"gaussian": "Gaussian (log C quadratic)", "sphere": "uniform sphere (polynomial)",
          "atom": "bounded + tiny atom (exponential)"}




def draw(store, out=None, dpi: int = 150) -> Path:
    sup = open_store(store)
    if "C" not in sup:
        raise ValueError(f"{store} has no analysis yet (the sweep did not finish); rerun the study")
    try:
        mom = open_store(store, "moments")
    except (FileNotFoundError, KeyError, OSError):
        mom = None
    if mom is not None and "Cprime_mean" not in mom:
        mom = None
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    R = sup["R"].values
    laws = [str(v) for v in sup["law"].values]
    sns.set_theme(style="whitegrid", context="paper")
    fig, axs = plt.subplots(2, 2, figsize=(12.5, 9.0))
    (ax, bx), (cx, dx) = axs

    for i, law in enumerate(laws):
        col = COLORS.get(law, f"C{i}")
        C = sup["C"].values[i]
        se = sup["C_se"].values[i]
        clt = sup["clt_regime"].values[i].astype(bool)
        th = np.exp(sup["theory_log_C"].values[i])
        for axis in (ax, bx):
            axis.errorbar(R[clt], C[clt], yerr=se[clt], fmt="o", color=col, ms=5, capsize=2, label=LABELS.get(law, law))
            if (~clt).any():
                axis.errorbar(R[~clt], C[~clt], yerr=se[~clt], fmt="o", mfc="white", color=col, ms=5, capsize=2)
            axis.plot(R, th, "--", color=col, lw=1.1)
    ax.plot([], [], "--", color="0.4", label="delta method (dashed)")
    ax.plot([], [], "o", mfc="white", color="0.4", label="largest n below the CLT regime")
    ax.set_yscale("log")
    ax.set_xlabel("query radius R")
    ax.set_ylabel(r"$C(R)=\sqrt{n}\,\mathbb{E}\sup_{|x|\leq R}|\Gamma_{\mu_n}-\Gamma_\mu|$")
    ax.set_title(f"(a) growth of C(R) (n = {int(sup['n'].values[-1])}; log scale)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    txt = []
    for i, law in enumerate(laws):
        txt.append(f"{law}: log C ~ R^2 (R²={sup['logC_vs_R2_r2'].values[i]:.3f}), ~ R (R²={sup['logC_vs_R_r2'].values[i]:.3f}), "
                   f"~ log R (R²={sup['logC_vs_logR_r2'].values[i]:.3f}); exponent {sup['growth_exponent_low'].values[i]:.2f}"
                   f" -> {sup['growth_exponent_high'].values[i]:.2f}")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("query radius R (log scale)")
    bx.set_ylabel("C(R)")
    bx.set_title("(b) log-log: a polynomial is a straight line; local exponent low -> high half", fontsize=9)
    bx.text(0.02, 0.98, "\n".join(txt), transform=bx.transAxes, fontsize=6.3, va="top",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})

    if mom is not None:
        Rmu = mom["support_radius"].values
        for mkey, mk, col in (("mean", "o", "C0"), ("cov", "s", "C3")):
            cx.plot(Rmu, mom[f"Cprime_{mkey}"].values, mk + "-", color=col, ms=6,
                    label=f"C' of the output {mkey} (log-log slope {float(mom[f'Cprime_{mkey}_loglog_slope']):+.2f})")
        cx.plot(Rmu, np.exp(mom["theory_log_C_sup"].values), "^--", color="0.3", ms=6,
                label=r"uniform constant $C(R_\mu)$ of the same laws (delta method)")
        cx.set_xscale("log")
        cx.set_yscale("log")
        cx.set_xlabel(r"support radius $R_\mu = c\,\sigma\sqrt{d}$ of the truncated Gaussian")
        cx.set_ylabel("prefactor")
        cx.set_title("(c) moment prefactor C' (polynomial) vs the uniform constant (exponential)", fontsize=9)
        cx.legend(fontsize=7, loc="upper left")
        n = mom["n"].values.astype(float)
        cs = mom["c"].values
        cmap = plt.get_cmap("viridis")
        for i, c in enumerate(cs):
            col = cmap(i / max(1, len(cs) - 1))
            dx.errorbar(n, mom["mean_err_mean"].values[i], yerr=mom["mean_err_sem"].values[i], fmt="o-", color=col,
                        ms=3.5, lw=1, capsize=1.5,
                        label=f"c={c:g}: mean beta {mom['beta_mean'].values[i]:.2f}, cov beta {mom['beta_cov'].values[i]:.2f}")
            dx.errorbar(n, mom["cov_err_mean"].values[i], yerr=mom["cov_err_sem"].values[i], fmt="s--", color=col,
                        ms=3.5, lw=1, capsize=1.5)
        ref = mom["mean_err_mean"].values[0, 0]
        dx.plot(n, ref * (n / n[0]) ** -0.5, ":", color="black", lw=1.4, label=r"$n^{-1/2}$")
        dx.set_xscale("log")
        dx.set_yscale("log")
        dx.set_xlabel("tokens n")
        dx.set_ylabel("moment error (circles: mean; squares: covariance)")
        dx.set_title("(d) moment errors of truncated Gaussians vs n", fontsize=9)
        dx.legend(fontsize=6.5, loc="lower left")
    else:
        for axis in (cx, dx):
            axis.text(0.5, 0.5, "no moment-prefactor group in this store", ha="center", va="center")
            axis.set_axis_off()
    ticks = {bx: R}
    if mom is not None:
        ticks[cx] = mom["support_radius"].values
        ticks[dx] = mom["n"].values.astype(float)
    for axis, vals in ticks.items():  # label the grid points themselves (log axes over a short range)
        axis.set_xticks(vals)
        axis.set_xticklabels([f"{v:.0f}" if v >= 100 and float(v).is_integer() else f"{v:.3g}" for v in vals])
        axis.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"Token sample complexity, bounded vs unbounded tokens — {sup.sizes['rep']} samples per (law, n)",
                 fontsize=9.5)
    fig.tight_layout()
    save_figure(fig, out, dpi)
    return out


def main(argv=None) -> int:
    return figure_main("python -m paper_figs.tails", __doc__, draw, argv, study="tails")


if __name__ == "__main__":
    sys.exit(main())
