"""Figures of the token-selection study: ``python -m paper_figs.token_selection STORE [--out FIG]``.

Three files, each drawn when its groups are in the store:

* ``FIG`` (group ``budget``) -- the error E|yhat - ybar|^2 against the budget m (log-log), one
  panel per (token law, sigma): uniform sampling, importance sampling from p, the hybrid and
  top-k (points with standard-error bars), and their predictions from the run's own keys
  (lines: c1/m + c2/m^2, Var_p/m, the hybrid's delta method, and for Gaussian keys top-k's
  bias^2 + var/n); the faint dotted line is the law's B/m. Open markers: uniform budgets below
  4 m_2 (pre-asymptotic).
* ``FIG-phase`` (groups ``phase``, ``vattention``, ``coverage``) -- the phase diagram: log(MSE_uniform
  / MSE_topk) over (sigma, f) for each (d, n), blue where uniform wins and red where top-k wins,
  with the predicted crossover sigma*(f) (run's B_n: solid; law-level B: dashed) and the measured
  crossings (dots); vAttention's exceedance frequency against sigma per variant with the
  prediction and the promised delta; the coverage rule's tail mass for scored and other queries.
* ``FIG-minilm`` (group ``minilm``) -- per MiniLM head, log(MSE_uniform / MSE_topk) against the
  head's score spread, one panel per budget, with the Gaussian-law crossover sigma*(f, T, d_h);
  filled markers: heads with a decisive given-token prediction.

Reads the store written by ``python -m studies.token_selection`` and nothing else.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from paper_figs._common import claims_count, figure_main, open_store, save_figure  # noqa: E402

STUDY = "token_selection"
POLICY = {"uniform": ("C0", "o"), "importance": ("C2", "s"), "hybrid": ("C4", "D"), "topk": ("C3", "^")}


def _groups(store) -> list[str]:
    import zarr

    try:
        return list(zarr.open_group(str(store), mode="r").attrs.get("groups", []))
    except Exception:  # noqa: BLE001 - no store: open_store says so below
        return []


def _open(store, group, needs):
    return open_store(store, group, study=STUDY, needs=needs)


def draw(store, out=None, dpi: int = 150) -> list[Path]:
    groups = _groups(store)
    if not groups:
        _open(store, None, None)  # the one-line error for a missing or foreign store
        raise ValueError(f"{store}: no token_selection groups in the store")
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    sns.set_theme(style="whitegrid", context="paper")
    paths = []
    if "budget" in groups:
        paths.append(_budget_figure(_open(store, "budget", "mse"), out, dpi))
    side = [g for g in ("phase", "vattention", "coverage") if g in groups]
    if side:
        data = {g: _open(store, g, {"phase": "log_ratio", "vattention": "exceed_freq", "coverage": "exact_tau_max"}[g])
                for g in side}
        paths.append(_phase_figure(data, out.with_name(out.stem + "-phase" + out.suffix), dpi))
    if "minilm" in groups:
        paths.append(_minilm_figure(_open(store, "minilm", "log_ratio"),
                                    out.with_name(out.stem + "-minilm" + out.suffix), dpi))
    if not paths:
        raise ValueError(f"{store}: none of its groups has an analysis yet; rerun the study")
    return paths


# ---------------------------------------------------------------------------------- budget
def _budget_figure(ds, out, dpi):
    laws = [str(v) for v in ds["law"].values]
    sig = ds["sigma"].values
    cols = _spread(sig.size, 4)
    fig, axes = plt.subplots(len(laws), len(cols), figsize=(3.3 * len(cols), 2.9 * len(laws)), squeeze=False,
                             sharex=True)
    m = ds["budget_m"].values
    for i, law in enumerate(laws):
        for c, j in enumerate(cols):
            ax = axes[i, c]
            _budget_panel(ax, ds, i, j, m)
            ax.set_title(f"{law}, sigma = {sig[j]:g}", fontsize=8)
            if c == 0:
                ax.set_ylabel(r"$\mathbb{E}\,|\hat y - \bar y|^2$")
            if i == len(laws) - 1:
                ax.set_xlabel(f"budget m (of n = {int(ds['n_keys'])})")
    axes[0, 0].legend(fontsize=6, loc="lower left")
    cc = claims_count(ds)
    fig.suptitle("Error against budget per policy (points: measured ± SE; lines: predicted for the run's own keys;\n"
                 f"dotted: law-level B/m; open: m < 4 m_2){'; claims: ' + cc if cc else ''}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, dpi)


def _spread(k, most):
    """At most ``most`` indices spread over range(k), ends included."""
    return sorted(set(np.linspace(0, k - 1, min(k, most)).round().astype(int).tolist()))


def _budget_panel(ax, ds, i, j, m):
    mse, se = ds["mse"].values[i, j], ds["mse_se"].values[i, j]  # (policy, f)
    policies = [str(p) for p in ds["policy"].values]
    regime = ds["rate_regime"].values[i, j]
    for k, pol in enumerate(policies):
        color, mk = POLICY[pol]
        filled = regime if pol == "uniform" else np.ones_like(regime)
        for sel, face in ((filled, color), (~filled, "none")):
            if sel.any():
                ax.errorbar(m[sel], mse[k, sel], yerr=se[k, sel], fmt=mk, ms=3.5, color=color, mfc=face, lw=0.8,
                            capsize=1.5, label=pol if face != "none" else None)
        th = ds[f"theory_{pol}_mse"].values[i, j]
        ok = np.isfinite(th) & (th > 0) & (regime if pol == "uniform" else ds["hybrid_regime"].values[i, j]
                                           if pol == "hybrid" else True)
        ax.plot(m[ok], th[ok], "-", color=color, lw=1.0, alpha=0.8)
    color, mk = POLICY["topk"]
    ax.errorbar(m, ds["topk_mse"].values[i, j], yerr=ds["topk_mse_se"].values[i, j], fmt=mk, ms=3.5, color=color,
                lw=0.8, capsize=1.5, label="top-k")
    th = ds["theory_topk_mse"].values[i, j]
    if np.isfinite(th).any():
        ax.plot(m, th, "-", color=color, lw=1.0, alpha=0.8)
    ax.plot(m, ds["theory_B_law"].values[i, j] / m, ":", color=POLICY["uniform"][0], lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")


# ----------------------------------------------------------------------------------- phase
def _phase_figure(data, out, dpi):
    ph = data.get("phase")
    panels = []
    if ph is not None:
        panels += [("phase", a, b) for a in range(ph.sizes["d"]) for b in range(ph.sizes["n"])]
    panels += [(g, None, None) for g in ("vattention", "coverage") if g in data]
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.6 * nrow), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    first = True
    for ax, (g, a, b) in zip(axes.flat, panels):
        if g == "phase":
            _phase_panel(ax, ph, a, b)
            if first:
                handles, labels = ax.get_legend_handles_labels()
                fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
                first = False
        elif g == "vattention":
            _vattention_panel(ax, data[g])
        else:
            _coverage_panel(ax, data[g])
    counts = "; ".join(f"{g}: {claims_count(ds)}" for g, ds in data.items() if claims_count(ds))
    fig.suptitle(f"Uniform vs top-k at equal budget, vAttention's rule, the coverage rule ({counts})", fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if ph is not None else 0, 1, 1))
    return save_figure(fig, out, dpi)


def _phase_panel(ax, ph, a, b):
    sig = ph["sigma"].values
    f = ph["f"].values
    L = ph["log_ratio"].values[a, b]  # (sigma, f)
    lim = max(1.0, float(np.nanpercentile(np.abs(L), 95)))
    y = -np.log2(f)
    mesh = ax.pcolormesh(sig, y, L.T, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="nearest")
    plt.colorbar(mesh, ax=ax, label="log(MSE_uniform / MSE_topk)")
    pred = ph["theory_sigma_star"].values[a, b]
    tested = ph["crossover_tested"].values[a, b]
    ax.plot(pred, y, ":", color="k", lw=1.0)
    ax.plot(np.where(tested, pred, np.nan), y, "-", color="k", lw=1.6, label="predicted sigma* (run's B_n; dotted: "
                                                                          "m < 4 m_2, not tested)")
    ax.plot(ph["theory_sigma_star_law"].values[a, b], y, "--", color="k", lw=1.0, label="sigma* with the law's B")
    ss, se = ph["sigma_star"].values[a, b], ph["sigma_star_se"].values[a, b]
    ok = np.isfinite(ss)
    ax.errorbar(ss[ok], y[ok], xerr=se[ok], fmt="o", ms=3.5, color="gold", mec="k", lw=0.8, label="measured crossing")
    ax.set_xlim(sig[0] - 0.5 * (sig[1] - sig[0]), sig[-1] + 0.5 * (sig[1] - sig[0]))
    ax.set_xlabel("score spread sigma")
    ax.set_ylabel("budget f = 2^-y: y")
    ax.invert_yaxis()
    d, n = int(ph["d"].values[a]), int(ph["n"].values[b])
    ax.set_title(f"d = {d}, n = 2^{round(math.log2(n))}: red = top-k wins", fontsize=8)


def _vattention_panel(ax, va):
    sig = va["sigma"].values
    delta = float(va.attrs.get("delta", np.nan))
    for v, name in enumerate(va["variant"].values):
        color = f"C{v}"
        ax.errorbar(sig, va["exceed_freq"].values[:, v], yerr=va["exceed_freq_se"].values[:, v], fmt="o", ms=3.5,
                    color=color, capsize=1.5, label=str(name))
        ax.plot(sig, va["theory_exceed_freq"].values[:, v], "-", color=color, lw=1.0)
        out = ~va["clt_regime"].values[:, v]
        if out.any():
            ax.plot(sig[out], va["exceed_freq"].values[out, v], "x", color="k", ms=6)
    ax.axhline(delta, color="k", ls="--", lw=1.0, label=f"promise delta = {delta:g}")
    ax.set_xlabel("score spread sigma")
    ax.set_ylabel("P(error > tolerance)")
    ax.set_title("vAttention: measured, CLT prediction (lines); x: outside CLT", fontsize=8)
    ax.legend(fontsize=6)


def _coverage_panel(ax, cov):
    sig = cov["sigma"].values
    for i, law in enumerate(cov["law"].values):
        for t, tc in enumerate(cov["tau_cov"].values):
            color = f"C{2 * i + t}"
            ax.errorbar(sig, cov["proxy_tau_others"].values[i, :, t], yerr=cov["proxy_tau_others_se"].values[i, :, t],
                        fmt="o-", ms=3.5, color=color, lw=1.0, capsize=1.5,
                        label=f"{law}, tau_cov={tc:g}: others (proxy)")
            ax.plot(sig, cov["exact_tau_max"].values[i, :, t], "s--", ms=3, color=color, lw=0.8, mfc="none")
    ax.set_yscale("log")
    ax.set_xlabel("score spread sigma")
    ax.set_ylabel("attention mass dropped tau_S")
    ax.set_title("Coverage rule: tau_S of other queries (proxy, dots)\nvs the largest of scored queries (squares)",
                 fontsize=8)
    ax.legend(fontsize=6)


# ---------------------------------------------------------------------------------- minilm
def _minilm_figure(ds, out, dpi):
    f = ds["f"].values
    layers = ds["layer"].values
    spread = ds["score_spread"].values  # (layer, head)
    fig, axes = plt.subplots(1, f.size, figsize=(4.2 * f.size, 3.8), squeeze=False)
    colors = sns.color_palette("viridis", len(layers))
    for k, ax in enumerate(axes[0]):
        L, se = ds["log_ratio"].values[..., k], ds["log_ratio_se"].values[..., k]
        dec = ds["decisive"].values[..., k]
        for li, layer in enumerate(layers):
            for sel, face in ((dec[li], colors[li]), (~dec[li], "none")):
                if sel.any():
                    ax.errorbar(spread[li, sel], L[li, sel], yerr=se[li, sel], fmt="o", ms=4, color=colors[li],
                                mfc=face, lw=0.7, capsize=1.2, label=f"layer {layer}" if face != "none" else None)
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(float(ds["theory_sigma_star_gauss"].values[k]), color="k", ls="--", lw=1.0,
                   label="Gaussian-law sigma*")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("head's score spread (mean std of the scores)")
        ax.set_ylabel("log(MSE_uniform / MSE_topk)  (> 0: top-k wins)")
        agree = float(ds["horizon_rule_agreement"].values[k])
        ax.set_title(f"f = 2^-{round(-math.log2(f[k]))}: horizon rule agrees on {agree:.0%} of heads",
                     fontsize=8)
        if k == 0:
            ax.legend(fontsize=6)
    cc = claims_count(ds)
    fig.suptitle("MiniLM heads: uniform sampling vs top-k (filled: decisive given-token prediction)"
                 f"{'; claims: ' + cc if cc else ''}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, dpi)


def main(argv=None) -> int:
    return figure_main("python -m paper_figs.token_selection", __doc__, draw, argv, study=STUDY)


if __name__ == "__main__":
    sys.exit(main())
