"""Figure of the tails study: ``python -m paper_figs.tails STORE [--out FIG]``.

(a) the uniform constant C(R) = sqrt(n) E sup against the query radius R (log scale) for
    Gaussian, sphere and bounded-with-an-atom tokens, beside the limit's constant E sup|G|
    (open diamonds with their Monte Carlo error, claim ``C_limit``; CLT radii of the laws in
    d <= 3), the delta-method prediction (dashed) and the lower bound sup_x E|G(x)| (dotted,
    claim ``C_lower``); open circles: the largest n is below the CLT regime (n < 100 n_3);
(b) the same on log-log axes, where polynomial growth is a straight line and exponential or
    Gaussian growth bends upwards; the legend gives, per law, the form of log C the delta
    method singles out and the outcome of ``C_growth``;
(c) the moment prefactor C' (output mean and covariance of self-attention) for truncated
    Gaussians against their support radius R_mu, with the delta-method C' (lines, claims
    ``Cprime_level`` / ``Cprime_form``) and the delta-method uniform constant C(R_mu) of the same
    laws (exponential);
(d) the moment errors against n for every truncation level, with the n^{-1/2} reference.

The title counts the claims of both groups by outcome.

Reads the dataset written by ``python -m studies.tails`` (groups ``sup`` and ``moments``) and
nothing else.
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

from paper_figs._common import claim_outcomes, figure_main, open_store, save_figure  # noqa: E402

COLORS = {"gaussian": "C0", "sphere": "C2", "atom": "C3"}
LABELS = {"gaussian": "Gaussian", "sphere": "uniform sphere", "atom": "bounded + tiny atom"}


def _claims(ds) -> dict:
    return claim_outcomes(ds, short=True)


def draw(store, out=None, dpi: int = 150) -> list[Path]:
    sup = open_store(store, "sup", study="tails", needs="C")
    try:
        mom = open_store(store, "moments")
    except ValueError:
        mom = None
    if mom is not None and "Cprime_mean" not in mom:
        mom = None
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    sns.set_theme(style="whitegrid", context="paper")
    fig, axs = plt.subplots(2, 2, figsize=(12.5, 9.0))
    (ax, bx), (cx, dx) = axs
    cl_sup = _claims(sup)
    _growth_panels(ax, bx, sup, cl_sup)
    if mom is not None:
        _prefactor_panel(cx, mom)
        _moment_errors_panel(dx, mom)
    else:
        for axis in (cx, dx):
            axis.text(0.5, 0.5, "no moment-prefactor group in this store", ha="center", va="center")
            axis.set_axis_off()
    ticks = {bx: sup["R"].values}
    if mom is not None:
        ticks[cx] = mom["support_radius"].values
        ticks[dx] = mom["n"].values.astype(float)
    _label_grid_points(ticks)
    outs = list(cl_sup.values()) + (list(_claims(mom).values()) if mom is not None else [])
    count = ("; claims: " + ", ".join(f"{outs.count(k)} {k}" for k in ("holds", "fails", "not tested"))) if outs else ""
    fig.suptitle(f"Token sample complexity, bounded vs unbounded tokens — {sup.sizes['rep']} samples per (law, n)"
                 f"{count}", fontsize=9.5)
    fig.tight_layout()
    save_figure(fig, out, dpi)
    return [out]


def _growth_panels(ax, bx, sup, cl_sup: dict) -> None:
    """(a) and (b): C(R) per law with its delta-method curve and lower bound, on a log scale and
    on log-log axes."""
    R = sup["R"].values
    laws = [str(v) for v in sup["law"].values]
    for i, law in enumerate(laws):
        col = COLORS.get(law, f"C{i}")
        C = sup["C"].values[i]
        se = sup["C_se"].values[i]
        clt = sup["clt_regime"].values[i].astype(bool)
        th = np.exp(sup["theory_log_C"].values[i])
        form = str(sup["theory_growth_form"].values[i]) if "theory_growth_form" in sup else "?"
        lab_b = f"{LABELS.get(law, law)}: predicted log C ~ {form}; C_growth {cl_sup.get(f'C_growth[{law}]', '?')}"
        for axis, lab in ((ax, LABELS.get(law, law)), (bx, lab_b)):
            axis.errorbar(R[clt], C[clt], yerr=se[clt], fmt="o", color=col, ms=5, capsize=2, label=lab)
            if (~clt).any():
                axis.errorbar(R[~clt], C[~clt], yerr=se[~clt], fmt="o", mfc="white", color=col, ms=5, capsize=2)
            axis.plot(R, th, "--", color=col, lw=1.1)
            if "theory_log_C_lower" in sup:
                axis.plot(R, np.exp(sup["theory_log_C_lower"].values[i]), ":", color=col, lw=1.1)
            if "theory_C_limit" in sup and np.isfinite(sup["theory_C_limit"].values[i]).any():
                lim = sup["theory_C_limit"].values[i]
                ok = np.isfinite(lim)
                axis.errorbar(R[ok], lim[ok], yerr=sup["theory_C_limit_se"].values[i][ok], fmt="D", mfc="none",
                              color=col, ms=6, capsize=2, lw=0.8)
    ax.plot([], [], "D", mfc="none", color="0.4", label=r"limit $\mathbb{E}\sup|G|$ (diamonds, claim C_limit)")
    ax.plot([], [], "--", color="0.4", label="delta method (dashed)")
    ax.plot([], [], ":", color="0.4", label=r"lower bound $\sup_x E|G(x)|$ (dotted)")
    ax.plot([], [], "o", mfc="white", color="0.4", label="largest n below the CLT regime")
    ax.set_yscale("log")
    ax.set_xlabel("query radius R")
    ax.set_ylabel(r"$C(R)=\sqrt{n}\,\mathbb{E}\sup_{|x|\leq R}|\Gamma_{\mu_n}-\Gamma_\mu|$")
    ax.set_title(f"(a) growth of C(R) (n = {int(sup['n'].values[-1])}; log scale)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("query radius R (log scale)")
    bx.set_ylabel("C(R)")
    bx.set_title("(b) log-log: a polynomial is a straight line", fontsize=9)
    bx.legend(fontsize=6.5, loc="upper left")


def _prefactor_panel(cx, mom) -> None:
    """(c) the moment prefactor C' against the support radius, with the delta-method C' and the
    uniform constant C(R_mu) of the same laws."""
    Rmu = mom["support_radius"].values
    cl_mom = _claims(mom)
    for mkey, mk, col in (("mean", "o", "C0"), ("cov", "s", "C3")):
        cx.errorbar(Rmu, mom[f"Cprime_{mkey}"].values, yerr=mom[f"Cprime_{mkey}_se"].values, fmt=mk, color=col,
                    ms=6, capsize=2, label=f"C' of the output {mkey}: level {cl_mom.get(f'Cprime_level[{mkey}]', '?')}, "
                                          f"form {cl_mom.get(f'Cprime_form[{mkey}]', '?')}")
        cx.plot(Rmu, mom[f"theory_Cprime_{mkey}"].values, "-", color=col, lw=1.2)
    cx.plot([], [], "-", color="0.4", label="delta-method C' (lines)")
    cx.plot(Rmu, np.exp(mom["theory_log_C_sup"].values), "^--", color="0.3", ms=6,
            label=r"uniform constant $C(R_\mu)$ of the same laws (delta method)")
    cx.set_xscale("log")
    cx.set_yscale("log")
    cx.set_xlabel(r"support radius $R_\mu = c\,\sigma\sqrt{d}$ of the truncated Gaussian")
    cx.set_ylabel("prefactor")
    cx.set_title("(c) moment prefactor C' (polynomial) vs the uniform constant (exponential)", fontsize=9)
    cx.legend(fontsize=7, loc="upper left")


def _moment_errors_panel(dx, mom) -> None:
    """(d) the moment errors against n per truncation level, with the n^{-1/2} reference."""
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
    ref = mom["mean_err_mean"].values[-1, 0]
    dx.plot(n, ref * (n / n[0]) ** -0.5, ":", color="black", lw=1.4, label=r"$n^{-1/2}$")
    dx.set_xscale("log")
    dx.set_yscale("log")
    dx.set_xlabel("tokens n")
    dx.set_ylabel("moment error (circles: mean; squares: covariance)")
    dx.set_title("(d) moment errors of truncated Gaussians vs n", fontsize=9)
    dx.legend(fontsize=6.5, loc="lower left")


def _label_grid_points(ticks: dict) -> None:
    """Tick labels at the grid points themselves (log axes over a short range)."""
    for axis, vals in ticks.items():
        axis.set_xticks(vals)
        axis.set_xticklabels([f"{v:.0f}" if v >= 100 and float(v).is_integer() else f"{v:.3g}" for v in vals])
        axis.xaxis.set_minor_formatter(NullFormatter())


def main(argv=None) -> int:
    return figure_main("python -m paper_figs.tails", __doc__, draw, argv, study="tails")


if __name__ == "__main__":
    sys.exit(main())
