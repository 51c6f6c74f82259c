"""Figure of the uniform-convergence study: ``python -m paper_figs.convergence STORE [--out FIG]``.

(a) ``sup_{|x|<=R} |Gamma_{mu_n} - Gamma_mu|`` against n (log-log), one curve per radius R with its
    standard-error bars and its fitted power law over the fit window, and a -1/2 reference; the
    legend gives each fitted slope and, at saturated radii, the slope of the theory's
    pre-asymptotic curve at the worst query (the claim saturated_rate);
(b) C(R) = sqrt(n) E sup against R (log scale): measured with its standard error beside the
    limit's constant ``E sup_{|x|<=R} |G(x)|`` at the CLT radii (with its Monte Carlo error; the
    claim C_limit), the delta-method prediction sup_x sqrt(tr V M V^T) and the lower bound
    sup_x E|G(x)| (the claim C_lower), the fits of log C against R and R^2 over the CLT-regime
    radii, and the radii outside that regime shaded. The title counts the claims by outcome.

Reads the dataset written by ``python -m studies.convergence`` and nothing else.
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


REGIMES = ("clt", "transition", "saturated")




def draw(store, out=None, dpi: int = 150) -> Path:
    ds = open_store(store, study="convergence", needs="fit_slope")
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    R = ds["R"].values
    n = ds["n"].values.astype(float)
    sns.set_theme(style="whitegrid", context="paper")
    colors = sns.color_palette("rocket_r", n_colors=len(R) + 2)[1:-1] if len(R) > 1 else ["C0"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})

    for i, r in enumerate(R):
        m = ds["mean_sup_err"].values[i]
        e = ds["sem_sup_err"].values[i]
        sat = ds["theory_saturated_slope"].values[i] if "theory_saturated_slope" in ds else np.nan
        ax.errorbar(n, m, yerr=e, fmt="o", ms=3.5, color=colors[i], capsize=2, lw=1,
                    label=f"R={r:g}: {ds['fit_slope'].values[i]:+.2f}±{ds['fit_slope_se'].values[i]:.2f}"
                          f" ({REGIMES[int(ds['regime'].values[i])]}" + (f"; curve {sat:+.2f})" if np.isfinite(sat)
                                                                          else ")"))
        lo, hi = ds["fit_n_min"].values[i], ds["fit_n_max"].values[i]
        w = (n >= lo) & (n <= hi)
        nn = np.geomspace(lo, hi, 20)
        # fitted power law through the window's weighted centre
        anchor = np.exp(np.mean(np.log(m[w])) - ds["fit_slope"].values[i] * np.mean(np.log(n[w])))
        ax.plot(nn, anchor * nn ** ds["fit_slope"].values[i], "--", color=colors[i], lw=1.2)
    ref0 = ds["mean_sup_err"].values[0, 0]
    ax.plot(n, ref0 * 0.6 * (n / n[0]) ** -0.5, ":", color="black", lw=1.5, label=r"$n^{-1/2}$ reference")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens n")
    ax.set_ylabel(r"$\sup_{|x|\leq R}\,|\Gamma_{\mu_n}(x)-\Gamma_\mu(x)|$")
    ax.set_title("(a) uniform error vs n (dashed: WLS fit over each fit window)", fontsize=9)
    ax.legend(fontsize=6.5, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9,
              title="R: slope ± se (regime)", title_fontsize=6.5)

    C = ds["C"].values
    logC_th = ds["theory_log_C"].values
    bx.errorbar(R, C, yerr=ds["C_se"].values if "C_se" in ds else None, fmt="o", color="C0", ms=6, capsize=2,
                label=r"measured $C(R)=\sqrt{n}\,\mathbb{E}\sup$", zorder=3)
    visible = logC_th <= np.log(C.max()) + np.log(1e3)
    bx.plot(R[visible], np.exp(logC_th[visible]), "-", color="C3", lw=1.5,
            label=r"delta method $\sup_x\sqrt{\mathrm{tr}\,VMV^\top}$")
    if "theory_log_C_lower" in ds:
        lo = ds["theory_log_C_lower"].values
        bx.plot(R[visible], np.exp(lo[visible]), "--", color="C3", lw=1.2,
                label=r"lower bound $\sup_x \mathbb{E}|G(x)|$ (claim C_lower)")
    if "theory_C_limit" in ds and np.isfinite(ds["theory_C_limit"].values).any():
        lim = ds["theory_C_limit"].values
        ok = np.isfinite(lim)
        bx.errorbar(R[ok] + 0.02 * np.ptp(R), lim[ok], yerr=ds["theory_C_limit_se"].values[ok], fmt="D", color="C2",
                    ms=5, mfc="none", capsize=2, label=r"limit $\mathbb{E}\sup_{|x|\leq R}|G(x)|$ (claim C_limit)",
                    zorder=4)
    mask = ds["logC_fit_mask"].values.astype(bool)
    rr = np.linspace(R[mask].min(), R[mask].max(), 100) if mask.any() else R
    if "logC_vs_R_slope" in ds:
        for tag, xf, ls in (("R", rr, "--"), ("R2", rr**2, "-.")):
            b, a, r2 = (float(ds[f"logC_vs_{tag}_{k}"]) for k in ("slope", "intercept", "r2"))
            lab = "R" if tag == "R" else "R^2"
            bx.plot(rr, np.exp(a + b * xf), ls, color="gray", lw=1.2,
                    label=rf"fit $\log C = {a:.2f} {b:+.3f}\,{lab}$ ($R^2$={r2:.3f})")
    clt = ds["regime"].values == 0
    if (~clt).any():
        bx.axvspan(R[~clt].min() - 0.25 * (R[1] - R[0] if len(R) > 1 else 1), R.max() * 1.02,
                   color="0.92", zorder=0, label=r"grid below the $1/\sqrt{n}$ regime ($n < 10\,n_3$)")
    bx.set_yscale("log")
    bx.set_xlabel("radius R of the query ball")
    bx.set_ylabel("C(R)")
    bx.set_title("(b) growth of the constant C(R)", fontsize=9)
    bx.legend(fontsize=6.5, loc="upper left", framealpha=0.9)
    try:
        law = json.loads(ds.attrs.get("token_law", "{}"))
        law_txt = ", ".join(f"{k}={v}" for k, v in law.items())
    except ValueError:
        law_txt = ds.attrs.get("token_law", "")
    outcome = f"; claims: {claims_count(ds)}" if claims_count(ds) else ""
    fig.suptitle(f"Token sample complexity of attention, uniform rate — tokens: {law_txt}; "
                 f"{ds.sizes['rep']} samples per n{outcome}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi)
    return [out]


def main(argv=None) -> int:
    return figure_main("python -m paper_figs.convergence", __doc__, draw, argv, study="convergence")


if __name__ == "__main__":
    sys.exit(main())
