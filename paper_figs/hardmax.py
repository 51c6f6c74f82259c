"""Figure of the hardmax study: ``python -m paper_figs.hardmax STORE [--out FIG]``.

(a) bias of Gamma at parameter lam against the hardmax limit (radial deficit at the largest n)
    vs lam, log-log: measured with standard errors (filled: the lams of the claims), the exact
    rho (1 - A_d(lam kappa_1)), the finite-n prediction the claims use, its asymptote
    rho (d-1)/(2 lam kappa_1) (slope -1) and the fitted slope against the predicted one;
(b) error against n at fixed lam (each plateaus at its bias), the pure-hardmax error with its
    exact curve (slope -> -1/(d-1)), and the coupled lam_n = c log n with its first-order band;
(c) the coupled error times log n against n (flat: the logarithmic rate), with the band and its
    n -> infinity limit rho (d-1)/(2 c kappa_1); the title gives the ``coupled_form`` outcome.

The suptitle counts the stored claims by outcome.

Reads the dataset written by ``python -m studies.hardmax`` and nothing else.
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

from paper_figs._common import claim_outcomes, figure_main, open_store, save_figure  # noqa: E402


def _claims(ds) -> dict:
    return claim_outcomes(ds, short=True)


def draw(store, out=None, dpi: int = 150) -> list[Path]:
    ds = open_store(store, study="hardmax", needs="bias")
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    params = json.loads(ds.attrs.get("params_json", "{}"))
    d, c = params.get("d", "?"), params.get("c", "?")
    sns.set_theme(style="whitegrid", context="paper")
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15.5, 4.8), gridspec_kw={"width_ratios": [1, 1.25, 1]})
    claims = _claims(ds)
    _bias_panel(ax, ds)
    _errors_panel(fig, bx, ds, c)
    _coupled_panel(cx, ds, claims)
    outs = list(claims.values())
    count = ("; claims: " + ", ".join(f"{outs.count(k)} {k}" for k in ("holds", "fails", "not tested"))) if outs else ""
    fig.suptitle(f"Token sample complexity, hardmax regime — tokens uniform on S^{int(d) - 1 if d != '?' else '?'} "
                 f"(d = {d}), kappa_1 = {ds.attrs.get('kappa_1', '?')}, c = {c}; {ds.sizes['rep']} samples per n{count}",
                 fontsize=9.5)
    fig.tight_layout()
    save_figure(fig, out, dpi)
    return [out]


def _bias_panel(ax, ds) -> None:
    """(a) the bias against lam: measured, exact, finite-n prediction, asymptote, fitted slope."""
    lam = ds["lam"].values
    n = ds["n"].values.astype(float)
    ll = np.geomspace(lam.min(), lam.max(), 200)
    ax.plot(lam, ds["theory_bias"].values, "-", color="black", lw=1.4, label=r"exact $\rho(1-A_d(\lambda\kappa_1))$")
    if "theory_bias_finite_n" in ds:
        ax.plot(lam, ds["theory_bias_finite_n"].values, ":", color="C1", lw=1.4,
                label="exact + finite-n bias at this n (the claims' prediction)")
    ax.plot(lam, ds["theory_bias_asymptotic"].values, "--", color="0.5", lw=1.2,
            label=r"$\rho(d-1)/(2\lambda\kappa_1)$ (slope $-1$)")
    mask = ds["bias_fit_mask"].values.astype(bool)
    ax.errorbar(lam[mask], ds["bias"].values[mask], yerr=ds["bias_se"].values[mask], fmt="o", color="C0", ms=5,
                capsize=2, label="measured (slope window)")
    ax.errorbar(lam[~mask], ds["bias"].values[~mask], yerr=ds["bias_se"].values[~mask], fmt="o", mfc="white",
                color="C0", ms=5, capsize=2, label="measured (outside the window)")
    if "bias_slope" in ds:
        ax.text(0.04, 0.05, f"fitted slope {float(ds['bias_slope']):+.4f} ± {float(ds['bias_slope_se']):.4f}\n"
                            f"(predicted curve {float(ds['theory_bias_slope']):+.4f})", transform=ax.transAxes, fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(ll[0] * 0.8, ll[-1] * 1.25)
    ax.set_xlabel(r"attention parameter $\lambda$")
    ax.set_ylabel(r"bias $|\Gamma^\lambda_\mu(x)-\Gamma^\infty_\mu(x)|$")
    ax.set_title(f"(a) softmax -> hardmax bias at n = {int(n[-1])}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def _errors_panel(fig, bx, ds, c) -> None:
    """(b) the errors against n: fixed lam (colour bar), pure hardmax with its exact curve, and
    the coupled lam_n = c log n with its first-order band."""
    lam = ds["lam"].values
    n = ds["n"].values.astype(float)
    cmap = plt.get_cmap("viridis")
    norm = LogNorm(vmin=lam.min(), vmax=lam.max() if lam.max() > lam.min() else lam.min() * 1.01)
    for i, lv in enumerate(lam):
        bx.plot(n, ds["lam_err_mean"].values[i], "-", color=cmap(norm(lv)), lw=1.0, alpha=0.9)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, ax=bx, pad=0.01)
    cb.set_label(r"fixed $\lambda$ (thin lines: error vs n)")
    bx.errorbar(n, ds["pure_err_mean"].values, yerr=ds["pure_err_sem"].values, fmt="s", color="C3", ms=4,
                capsize=2, label=f"pure hardmax: slope {float(ds['pure_slope']):+.3f} ± {float(ds['pure_slope_se']):.3f}")
    bx.plot(n, ds["theory_pure_err"].values, "-", color="C3", lw=1.2, alpha=0.7,
            label=f"exact E|y_j* - rho u| (asymptotic slope {float(ds['theory_pure_slope']):+.3f})")
    bx.errorbar(n, ds["coupled_err_mean"].values, yerr=ds["coupled_err_sem"].values, fmt="D", color="C1", ms=4,
                capsize=2, label=rf"coupled $\lambda_n = {c}\,\log n$")
    bx.fill_between(n, ds["theory_coupled_lower"].values, ds["theory_coupled_upper"].values, color="C1", alpha=0.25,
                    label="coupled: first-order band")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("tokens n")
    bx.set_ylabel(r"mean error $|\Gamma_{\mu_n}(x)-\Gamma^\infty_\mu(x)|$")
    bx.set_title("(b) errors vs n: fixed lam (plateau at the bias), hardmax, coupled", fontsize=9)
    bx.legend(fontsize=6.5, loc="lower left", framealpha=0.9)


def _coupled_panel(cx, ds, claims: dict) -> None:
    """(c) the coupled error times log n, its band and its n -> infinity limit."""
    n = ds["n"].values.astype(float)
    cx.errorbar(n, ds["coupled_err_x_logn"].values, yerr=ds["coupled_err_sem"].values * np.log(n), fmt="D",
                color="C1", ms=5, capsize=2, label="measured error x log n")
    cx.fill_between(n, ds["theory_coupled_lower"].values * np.log(n), ds["theory_coupled_upper"].values * np.log(n),
                    color="C1", alpha=0.25, label="first-order band x log n")
    lim = float(ds["theory_coupled_x_logn_limit"])
    cx.axhline(lim, color="black", ls="--", lw=1.2, label=rf"limit $\rho(d-1)/(2c\kappa_1)$ = {lim:.3g}")
    top = max(ds["coupled_err_x_logn"].values.max(), lim) * 1.6
    cx.set_ylim(0, top)
    cx.set_xscale("log")
    cx.set_xlabel("tokens n")
    cx.set_ylabel(r"error $\times \log n$")
    cx.set_title(f"(c) coupled error x log n (flat: logarithmic rate); coupled_form: "
                 f"{claims.get('coupled_form', '?')}", fontsize=9)
    cx.legend(fontsize=7, loc="lower right")


def main(argv=None) -> int:
    return figure_main("python -m paper_figs.hardmax", __doc__, draw, argv, study="hardmax")


if __name__ == "__main__":
    sys.exit(main())
