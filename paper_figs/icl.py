"""Figures of the in-context-regression studies: ``python -m paper_figs.icl STORE [--out FIG]``.

One entry point, :func:`draw`, dispatches on the store's ``figure_kind`` attribute (written by
``python -m studies.icl SUB``) and returns the paths it wrote:

* ``train``      ``*_heatmaps``: KQ (W_h, rows = query entries, columns = key entries) and OV (u_h)
                 heat maps per head, one row per H; ``*_dynamics``: omega_h(t), mu_h(t) with
                 sum_h mu_h and eta(t) against the DGD optimal step, and the validation MSE against
                 the exact optimum; ``*_metrics``: pattern metrics vs H (bars), the final MSE
                 against the exact single-head and pair optima; ``*_evolution``: KQ of every head
                 at checkpoints (H = 4 or the largest H <= 4);
* ``estimators`` risks of the closed-form predictors vs L: Monte Carlo and the exact finite-L risks,
                 and the z-scores of their differences;
* ``ode``        the reduced gradient flow: trajectories, the loss with its three stages and the
                 predicted plateau exit, 2 mu omega against the valley and its limit, and the pairs
                 trained by gradient descent from the same start (omega_1, 2 mu omega) when stored;
* ``length``     MSE vs test length for each H against the exact kernel risks at the learned
                 parameters, the linear baseline and GD with the rescaled step;
* ``noniso``     learned preconditioner sum_h mu_h W_h next to Gamma*, with the cosines;
* ``multitask``  per-head KQ diagonals and OV y -> output maps, and Gamma_n per task.

Reads the dataset and nothing else (no recomputation; the theory curves are the store's
``theory_*`` variables); heat maps use the authors' colour map (#0D2758 / white / #A32015),
symmetric about zero. Each figure's title ends with the count of the study's claims by outcome.
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
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402

from paper_figs._common import claims_count, figure_main, open_store, save_figure  # noqa: E402

CMAP = LinearSegmentedColormap.from_list("icl", ["#0D2758", "#FFFFFF", "#A32015"])
KINDS = ("train", "estimators", "ode", "length", "noniso", "multitask")


_open = open_store
_save = save_figure


def _claims_line(ds) -> str:
    """'claims: N hold, M fail, K not tested' from the stored claims (empty if none)."""
    count = claims_count(ds)
    return f"claims: {count} (see the store's claim_* variables)" if count else ""


def _paths(store, out, names):
    base = Path(out) if out is not None else Path(store).with_suffix(".png")
    suffix = base.suffix or ".png"
    stem = base.with_suffix("")
    if len(names) == 1:
        return [stem.with_suffix(suffix)]
    return [stem.with_name(f"{stem.name}_{n}{suffix}") for n in names]


def draw(store, out=None, dpi: int = 150) -> list[Path]:
    """Draw the figure(s) of a study store; returns the written paths."""
    ds = _open(store, study="icl")
    kind = ds.attrs.get("figure_kind")
    if kind not in KINDS:
        raise ValueError(f"{store} is not an icl study store (figure_kind={kind!r})")
    needed = {"train": "final_omega", "estimators": "mc_risk", "ode": "two_mu_omega", "length": "softmax_mse",
              "noniso": "Gamma", "multitask": "kq_diag"}[kind]
    if needed not in ds:
        raise ValueError(f"{store} has no analysis yet (the run did not finish); rerun the study")
    sns.set_theme(style="whitegrid", context="paper")
    return globals()[f"_draw_{kind}"](ds, store, out, dpi)


# ================================================================================ train
def _labels(D, d):
    return [f"x{i + 1}" for i in range(d)] + (["y"] if D == d + 1 else [f"y{i + 1}" for i in range(D - d)])


def _heat(ax, M, vmax, xlabels=None, ylabels=None, annotate=False):
    im = ax.imshow(M, cmap=CMAP, vmin=-vmax, vmax=vmax, aspect="equal")
    ax.set_xticks(range(M.shape[1]))
    ax.set_yticks(range(M.shape[0]))
    ax.set_xticklabels(xlabels if xlabels is not None else [""] * M.shape[1], fontsize=5)
    ax.set_yticklabels(ylabels if ylabels is not None else [""] * M.shape[0], fontsize=5)
    ax.grid(False)
    if annotate:
        for (i, j), v in np.ndenumerate(M):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=4.5,
                        color="white" if abs(v) > 0.6 * vmax else "black")
    return im


def _draw_train(ds, store, out, dpi):
    """The four figures of a ``train`` store (module docstring)."""
    paths = _paths(store, out, ["heatmaps", "dynamics", "metrics", "evolution"])
    for draw_one, path in zip((_train_heatmaps, _train_dynamics, _train_metrics, _train_evolution), paths):
        draw_one(ds, path, dpi)
    return paths


def _train_heatmaps(ds, path, dpi, s0=0):
    """KQ and OV heat maps per head, one row per H: seed ``s0``, last step."""
    Hs = [int(h) for h in ds["H"].values]
    d = int(ds.attrs.get("d", ds.sizes["row"] - 1))
    D = ds.sizes["row"]
    lab = _labels(D, d)
    steps = ds["step"].values
    Hm = max(Hs)
    height = 1.0 + 1.6 * len(Hs)
    fig = plt.figure(figsize=(max(7.5, 1.0 + 1.75 * Hm), height))
    gs = fig.add_gridspec(len(Hs), 2 * Hm, width_ratios=[1.0, 0.22] * Hm, wspace=0.35, hspace=0.6,
                          top=1.0 - 0.85 / height, bottom=0.25 / height, left=0.04, right=0.96)
    for r, H in enumerate(Hs):
        W = ds["W"].values[r, s0, -1].copy()
        W[:, d:, :] = np.nan  # the query's y-slot is 0: those rows are irrelevant (blank)
        U = ds["U"].values[r, s0, -1][..., 0]
        vk = max(np.nanmax(np.abs(W[:H])), 1e-12)
        vo = max(np.abs(U[:H]).max(), 1e-12)
        for h in range(H):
            ax = fig.add_subplot(gs[r, 2 * h])
            im = _heat(ax, W[h], vk, lab, lab if h == 0 else None)
            mu = float(ds["final_mu"].values[r, s0, h])
            om = float(ds["final_omega"].values[r, s0, h])
            ax.set_title(f"H={H} head {h}\nω={om:+.3f}", fontsize=6)
            bx = fig.add_subplot(gs[r, 2 * h + 1])
            _heat(bx, U[h][:, None], vo, [""], lab)
            bx.set_title(f"μ={mu:+.2f}", fontsize=6)
        cax = bx.inset_axes([1.9, 0.0, 0.45, 1.0])  # just right of the row's last OV column
        fig.colorbar(im, cax=cax).ax.tick_params(labelsize=5)
    fig.suptitle(f"Trained KQ W_h = Q_hᵀK_h/√D (rows: query entry, columns: key entry; the query's y-row is 0 "
                 f"and left blank)\nand OV u_h = V_hᵀo_h per head; seed {s0}, step {int(steps[-1])}; "
                 "colour bar: KQ scale of the row (OV has its own symmetric scale)", fontsize=7)
    return _save(fig, path, dpi)


def _train_dynamics(ds, path, dpi, s0=0):
    """omega_h(t), mu_h(t) with their sums and eta(t), and the validation MSE, per H >= 2."""
    Hs = [int(h) for h in ds["H"].values]
    steps = ds["step"].values
    multi = [i for i, H in enumerate(Hs) if H >= 2] or list(range(len(Hs)))
    fig, axes = plt.subplots(3, len(multi), figsize=(3.3 * len(multi), 7.2), squeeze=False, sharex=True)
    for c, i in enumerate(multi):
        H = Hs[i]
        om = ds["omega"].values[i, s0]
        mu = ds["mu"].values[i, s0]
        pal = sns.color_palette("tab10", H)
        ax, bx, cx = axes[:, c]
        for h in range(H):
            ax.plot(steps, om[:, h], color=pal[h], lw=1, label=f"head {h}")
            bx.plot(steps, mu[:, h], color=pal[h], lw=1)
        bx.plot(steps, ds["sum_mu"].values[i, s0], color="black", lw=1.6, label="Σ_h μ_h")
        bx.plot(steps, ds["eta"].values[i, s0], color="0.5", lw=1.2, ls="-.", label="η = Σ μ_h ω_h")
        if "theory_dgd_optimal_step" in ds:
            bx.axhline(float(ds["theory_dgd_optimal_step"]), ls="--", color="C3", lw=0.9,
                       label="DGD optimal step (theory)")
        ax.axhline(0, color="0.6", lw=0.6)
        bx.axhline(0, color="0.6", lw=0.6)
        for s in ds["seed"].values:
            cx.plot(steps, ds["val_mse"].values[i, int(s), :, 0], lw=1, label=f"seed {int(s)}")
        cx.axhline(float(ds["theory_pair_risk"] if "theory_pair_risk" in ds else ds["theory_dgd_optimal_risk"]),
                   color="C3", ls="--", lw=1, label="exact pair optimum (theory)")
        cx.set_yscale("log")
        ax.set_title(f"H = {H}: ω_h(t)", fontsize=8)
        bx.set_title("μ_h(t), Σμ and η (dashed: the DGD optimal step)", fontsize=8)
        cx.set_title("validation MSE", fontsize=8)
        cx.set_xlabel("Adam step")
        ax.legend(fontsize=5, ncol=2, loc="best")
        bx.legend(fontsize=5, loc="best")
        cx.legend(fontsize=5, loc="upper right")
    fig.suptitle(f"Training dynamics (seed {s0}; positive heads ω, μ > 0 and negative heads ω, μ < 0)\n"
                 f"{_claims_line(ds)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _train_metrics(ds, path, dpi):
    """Pattern metrics and the final MSE against H (bars: kept heads; crosses: head groups)."""
    Hs = [int(h) for h in ds["H"].values]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    xs = np.arange(len(Hs))
    seeds = ds["seed"].values
    for ax, (var, title, log) in zip(axes, [("mean_diag_ratio", "KQ diag ratio ‖diag‖/‖·‖_F", False),
                                            ("mean_last_entry_ratio", "OV last-entry ratio", False),
                                            ("mean_diag_cv2", "KQ diag CV² (homogeneity)", True),
                                            ("final_val_mse", "final val MSE", False)]):
        vals = ds[var].values  # (H, seed)
        ax.bar(xs, vals.mean(1), color="C0", alpha=0.7, width=0.6)
        for j in range(len(seeds)):
            ax.plot(xs, vals[:, j], "o", color="black", ms=3)
        gvar = var.replace("mean_", "group_")
        if gvar != var and gvar in ds:
            g = ds[gvar].values
            for j in range(len(seeds)):
                ax.plot(xs, g[:, j], "x", color="C3", ms=5, mew=1.2, label="head groups (as the claims)" if j == 0 else None)
            ax.legend(fontsize=6, loc="lower left")
            vals = np.concatenate([vals, g], axis=1)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"H={h}" for h in Hs])
        ax.set_title(title, fontsize=8)
        if log:
            ax.set_yscale("log")
        elif var != "final_val_mse":
            lo = max(0.0, min(0.9, np.nanmin(vals) - 0.02))
            ax.set_ylim(lo, 1.002)
    axes[3].axhline(float(ds["theory_dgd_optimal_risk"]), color="C3", ls="--", lw=1, label="DGD optimal (exact)")
    if "theory_single_head_risk" in ds:
        axes[3].axhline(float(ds["theory_single_head_risk"]), color="C1", ls=":", lw=1,
                        label="single-head optimum (exact, finite L)")
    axes[3].legend(fontsize=6)
    fig.suptitle("Pattern metrics at the last step: bars = mean over kept heads (diag ratio > 0.7, the authors' "
                 "metric), dots = seeds; crosses: the worse of the two head groups (|μ|-weighted KQ, summed OV), "
                 "which the claims test", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _train_evolution(ds, path, dpi, s0=0):
    """KQ of every head at checkpoints, for H = 4 (or the largest H <= 4)."""
    Hs = [int(h) for h in ds["H"].values]
    steps = ds["step"].values
    cand = [i for i, H in enumerate(Hs) if H <= 4]
    i = cand[-1] if cand else 0
    H = Hs[i]
    want = [0, 1000, 2000, 10000, 100000, 500000]
    cols = sorted({int(steps[np.argmin(np.abs(steps - w))]) for w in want if w <= steps[-1]} | {int(steps[-1])})
    idx = [int(np.nonzero(steps == c)[0][0]) for c in cols]
    fig, axes = plt.subplots(H + 1, len(cols), figsize=(1.4 * len(cols) + 0.8, 1.4 * (H + 1)), squeeze=False)
    W = ds["W"].values[i, s0]
    U = ds["U"].values[i, s0][..., 0]
    vk = max(np.abs(W[idx][:, :H]).max(), 1e-12)
    vo = max(np.abs(U[idx][:, :H]).max(), 1e-12)
    for c, k in enumerate(idx):
        for h in range(H):
            _heat(axes[h, c], W[k, h], vk, None, None)
            if c == 0:
                axes[h, c].set_ylabel(f"head {h}", fontsize=7)
        _heat(axes[H, c], U[k, :H], vo, None, None)
        axes[0, c].set_title(f"step {cols[c]}", fontsize=7)
    axes[H, 0].set_ylabel("OV (heads × entries)", fontsize=6)
    fig.suptitle(f"Emergence of the KQ / OV patterns, H = {H}, seed {s0}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)


# =========================================================================== estimators
def _draw_estimators(ds, store, out, dpi):
    (path,) = _paths(store, out, ["fig"])
    L = ds["L"].values
    est = list(ds["estimator"].values)
    names = {"multihead_tf": "multi-head TF (±ω, ±μ)", "singlehead_tf": "single-head TF", "gd": "GD (η = 2ωμ)",
             "gd_opt": "GD (optimal η)", "dgd": "debiased GD (η = 2ωμ)", "dgd_opt": "debiased GD (optimal η)",
             "ridge": "ridge = Bayes"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.5, 1]})
    pal = sns.color_palette("tab10", len(est))
    for i, e in enumerate(est):
        ax.errorbar(L, ds["mc_risk"].values[i], yerr=ds["mc_se"].values[i], fmt="o", ms=3, color=pal[i],
                    capsize=1.5, label=f"{names.get(e, e)} (MC)")
        if e != "ridge":
            ls = "-" if bool(ds["theory_exact"].values[i]) else ":"
            ax.plot(L, ds["theory_risk"].values[i], ls, color=pal[i], lw=1)
    ir = est.index("ridge")
    ax.plot(L, ds["ridge_bayes_finite"].values, "-", color=pal[ir], lw=1)
    ax.plot(L, ds["theory_ridge_mp"].values, "--", color=pal[ir], lw=1, label="Bayes, Marchenko-Pastur")
    ax.set_yscale("log")
    ax.set_xlabel("prompt length L")
    ax.set_ylabel("risk E(ŷ − y_q)²  (includes σ²)")
    ax.set_title("MC (points ± SE); lines: exact finite-L risks (softmax kernels by quadrature; ridge: mean "
                 "Bayes risk given X)", fontsize=7)
    ax.legend(fontsize=6, ncol=2)
    for i, e in enumerate(est):
        if bool(ds["theory_exact"].values[i]):
            bx.plot(L, ds["z_vs_formula"].values[i], "o-", ms=3, color=pal[i], lw=0.8, label=names.get(e, e))
    zb = float(ds["z_family"]) if "z_family" in ds else 3.0
    bx.axhspan(-zb, zb, color="0.92", zorder=0, label=f"±{zb:.2f} SE (the claims' z)")
    bx.axhline(0, color="black", lw=0.7)
    bx.set_xlabel("prompt length L")
    bx.set_ylabel("(MC − formula) / SE")
    bx.set_title("exact formulas vs Monte Carlo", fontsize=8)
    bx.legend(fontsize=6)
    fig.suptitle(f"Closed-form predictors, d = {json.loads(ds.attrs['params_json'])['d']}, "
                 f"σ² = {json.loads(ds.attrs['params_json'])['sigma2']}\n{_claims_line(ds)}", fontsize=9)
    fig.tight_layout()
    return [_save(fig, path, dpi)]


# ================================================================================== ode
def _draw_ode(ds, store, out, dpi):
    (path,) = _paths(store, out, ["fig"])
    t = ds["time"].values
    names = list(ds["init_name"].values) if "init_name" in ds else ["antisymmetric", "random4"]
    i = names.index("antisymmetric")
    om = ds["omega"].values[i]
    mu = ds["mu"].values[i]
    loss = ds["loss"].values[i]
    t1, t2 = float(ds["stage1_end"]), float(ds["stage2_end"])
    pos = t > 0
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    for h, c in zip(range(2), ("C0", "C3")):
        ax.plot(t[pos], om[pos, h], color=c, lw=1.3, label=f"ω_{h + 1}")
        ax.plot(t[pos], mu[pos, h], color=c, lw=1.3, ls="--", label=f"μ_{h + 1}")
    late = t >= t2
    ax.plot(t[late], ds["mu_star"].values[late], color="0.4", lw=1, ls=":", label="μ*(ω(t))_1 (t ≥ t₂)")
    trained = "gd_two_mu_omega" in ds  # the pairs trained by gradient descent from the same start
    if trained:
        tg = ds["gd_time"].values
        ax.plot(tg[tg > 0], ds["gd_omega"].values[i, tg > 0, :, 0].mean(-1), color="C0", lw=0, marker=".", ms=2.5,
                label="ω_1 trained (mean)")
    lim = 1.1 * max(np.abs(om).max(), np.abs(mu).max())
    ax.set_ylim(-lim, lim)
    ax.set_xscale("log")
    ax.set_title("antisymmetric pair: ω(t), μ(t)", fontsize=8)
    ax.legend(fontsize=6, ncol=3)
    bx = axes[0, 1]
    bx.plot(t[pos], loss[pos], color="black", lw=1.4, label="L̃/2")
    bx.axhline(float(ds["theory_loss_limit"]), color="C3", ls="--", lw=1, label="limit σ²/2 + dc/(2(1+dc))")
    for (a, b), c, lab in (((t[pos][0], t1), "C0", "stage 1: plateau"), ((t1, t2), "C1", "stage 2: fast drop"),
                           ((t2, t[-1]), "C2", "stage 3: slow drift")):
        bx.axvspan(a, b, color=c, alpha=0.12, label=lab)
    if "theory_plateau_exit" in ds:
        bx.axvline(float(ds["theory_plateau_exit"]), color="C3", ls=":", lw=1, label="predicted plateau exit")
    if "theory_valley_loss" in ds:
        bx.plot(t[late], ds["theory_valley_loss"].values[late], color="C3", lw=0.8, ls="-.",
                label="valley: profiled L̃/2 at ω(t)")
    bx.set_xscale("log")
    bx.set_title(f"loss with its stages (t₁ = {t1:.2f}, t₂ = {t2:.2f})", fontsize=8)
    bx.legend(fontsize=6)
    cx = axes[1, 0]
    cx.plot(t[pos], ds["two_mu_omega"].values[pos], color="C4", lw=1.4, label="2 μ ω")
    cx.axhline(float(ds["theory_two_mu_omega_limit"]), color="C3", ls="--", lw=1, label="1/(1 + d(1+σ²)/L)")
    if "theory_valley_two_mu_omega" in ds:
        cx.plot(t[late], ds["theory_valley_two_mu_omega"].values[late], color="C1", lw=0.9, ls=":",
                label="valley at ω(t)")
    if trained:
        g2 = ds["gd_two_mu_omega"].values
        cx.fill_between(tg[tg > 0], g2[tg > 0].min(-1), g2[tg > 0].max(-1), color="C4", alpha=0.25, lw=0,
                        label=f"2 μ ω of {g2.shape[1]} trained pairs (range)")
    cx.set_xscale("log")
    cx.set_xlabel("time t")
    cx.set_title(f"2μω at t = {t[-1]:g}: {float(ds['two_mu_omega'][-1]):.4f} "
                 f"(limit {float(ds['theory_two_mu_omega_limit']):.4f})", fontsize=8)
    cx.legend(fontsize=6)
    dx = axes[1, 1]
    if len(names) > 1:
        j = 1 - i
        pal = sns.color_palette("tab10", 4)
        for h in range(4):
            dx.plot(t[pos], ds["omega"].values[j, pos, h], color=pal[h], lw=1.1)
            dx.plot(t[pos], ds["mu"].values[j, pos, h] / 10, color=pal[h], lw=1.1, ls="--")
        dx.plot(t[pos], ds["mu"].values[j, pos].sum(-1) / 10, color="black", lw=1.3, label="Σμ / 10")
        dx.set_xscale("log")
        dx.legend(fontsize=6)
        dx.set_title(f"{names[j]}: ω_h (solid), μ_h/10 (dashed), 4 heads", fontsize=8)
    dx.set_xlabel("time t")
    p = json.loads(ds.attrs["params_json"])
    fig.suptitle(f"Reduced (ω, μ) gradient flow, d = {p['d']}, L = {p['L']}, σ² = {p['sigma2']} "
                 f"({ds.attrs.get('integrator', '')})\n{_claims_line(ds)}", fontsize=9)
    fig.tight_layout()
    return [_save(fig, path, dpi)]


# =============================================================================== length
def _draw_length(ds, store, out, dpi):
    (path,) = _paths(store, out, ["fig"])
    Lt = ds["L_test"].values
    Hs = list(ds["H"].values)
    Ltr = int(ds.attrs.get("L_train", 40))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    pal = sns.color_palette("viridis", len(Hs) + 1)
    for k, H in enumerate(Hs):
        m = ds["softmax_mse"].values[:, k].mean(-1)
        se = np.sqrt((ds["softmax_se"].values[:, k] ** 2).mean(-1) / ds.sizes["seed"])
        for a in (ax, bx):
            a.errorbar(Lt, m, yerr=se, fmt="o-", ms=3, lw=1, color=pal[k], label=f"softmax H={H}")
        th = ds["theory_kernel_risk"] if "theory_kernel_risk" in ds else ds["theory_dgd_risk"]
        ax.plot(Lt, np.nanmean(th.values[:, k], axis=-1), "--", color=pal[k], lw=0.9)
    lm = ds["linear_mse"].values.mean(-1)
    ax.plot(Lt, lm, "s-", ms=3, color="C3", lw=1.2, label="linear attention (1/L_train)")
    ax.plot(Lt, ds["theory_linear_risk"].values.mean(-1), ":", color="C3", lw=1, label="GD with step η L'/L_train")
    for a in (ax, bx):
        a.plot(Lt, ds["theory_bayes_mp"].values, "-.", color="0.3", lw=1, label="Bayes (MP)")
        a.axvline(Ltr, color="0.5", lw=0.8, ls="--")
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("test prompt length L'")
    ax.set_ylabel("MSE (includes σ²)")
    ax.set_title(f"trained at L = {Ltr} (dashed grey); dashed: exact softmax-kernel risk at each model's learned "
                 "ω, μ", fontsize=7)
    ax.legend(fontsize=6)
    bx.set_title("softmax models only (zoom)", fontsize=8)
    bx.legend(fontsize=6)
    fig.suptitle("Length generalisation: softmax normalisation adapts to L', the fixed-normalisation linear model "
                 f"does not\n{_claims_line(ds)}", fontsize=9)
    fig.tight_layout()
    return [_save(fig, path, dpi)]


# =============================================================================== noniso
def _draw_noniso(ds, store, out, dpi):
    (path,) = _paths(store, out, ["fig"])
    rhos = ds["rho"].values
    Hs = list(ds["H"].values)
    k = len(Hs) - 1
    fig, axes = plt.subplots(2, len(rhos) + 1, figsize=(3.0 * (len(rhos) + 1), 5.8), squeeze=False)
    cvar = "cos_Gamma_star_centered" if "cos_Gamma_star_centered" in ds else "cos_Gamma_star"
    for c, r in enumerate(rhos):
        G = ds["Gamma"].values[c, k, 0]
        Gs = (ds["theory_Gamma_star_centered"] if "theory_Gamma_star_centered" in ds else ds["theory_Gamma_star"]).values[c]
        Gn = G / np.linalg.norm(G)
        Gsn = Gs / np.linalg.norm(Gs)
        v = max(np.abs(Gn).max(), np.abs(Gsn).max())
        _heat(axes[0, c], Gn, v, annotate=True)
        _heat(axes[1, c], Gsn, v, annotate=True)
        axes[0, c].set_title(f"ρ = {r:g}: learned Γ/‖Γ‖ (H = {Hs[k]})\ncos(Γ, Γ*) = "
                             f"{float(ds[cvar].values[c, k, 0]):.4f}, cos(Γ, I) = "
                             f"{float(ds['cos_identity'].values[c, k, 0]):.3f}", fontsize=6.5)
        axes[1, c].set_title(f"Γ*/‖Γ*‖ (cos(Γ*, I) = {float(ds['cos_Gamma_star_vs_identity'].values[c]):.3f})",
                             fontsize=6.5)
    ax = axes[0, -1]
    labels, cs, ci = [], [], []
    for c, r in enumerate(rhos):
        for j, H in enumerate(Hs):
            for s in ds["seed"].values:
                labels.append(f"ρ={r:g}\nH={H}")
                cs.append(float(ds[cvar].values[c, j, int(s)]))
                ci.append(float(ds["cos_identity"].values[c, j, int(s)]))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, cs, 0.4, label="cos(Γ, Γ*)")
    ax.bar(x + 0.2, ci, 0.4, label="cos(Γ, I)")
    ax.axhline(0.99, color="C3", ls="--", lw=0.8)
    ax.set_ylim(min(0.7, min(cs + ci) - 0.02), 1.005)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=5)
    ax.legend(fontsize=6, loc="lower left", framealpha=0.95)
    ax.set_title("all runs (dashed: 0.99)", fontsize=7)
    bx = axes[1, -1]
    vm = ds["final_val_mse"].values
    bx.bar(x, vm.ravel(), 0.5, color="C2", label="trained val MSE")
    tr = np.repeat(ds["theory_risk_Gamma_star_centered"].values, len(Hs) * ds.sizes["seed"])
    bx.plot(x, tr, "k_", ms=14, mew=2, label="Γ*-preconditioned DGD (exact)")
    bx.set_xticks(x)
    bx.set_xticklabels(labels, fontsize=5)
    bx.set_ylim(0, max(vm.max(), tr.max()) * 1.15)
    bx.legend(fontsize=6)
    fig.suptitle("Non-isotropic covariates Σ_ij = ρ^|i−j|: learned preconditioner Γ = Σ_h μ_h W_h[:d,:d]\n"
                 f"vs Γ* = (Σ + ((trΣ + dσ²)/L) I)⁻¹ of debiased GD (seed 0, largest H); {_claims_line(ds)}", fontsize=8)
    fig.tight_layout()
    return [_save(fig, path, dpi)]


# ============================================================================ multitask
def _draw_multitask(ds, store, out, dpi):
    (path,) = _paths(store, out, ["fig"])
    Hs = list(ds["H"].values)
    d = ds.sizes["coord"]
    N = ds.sizes["task"]
    fig, axes = plt.subplots(len(Hs), 3, figsize=(11, 2.2 + 1.6 * len(Hs)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.4, 1, 1.4]})
    sup = ds["theory_support"].values
    for r, H in enumerate(Hs):
        kq = ds["kq_diag"].values[r, 0, :H]
        ov = ds["ov_y"].values[r, 0, :H].reshape(H, N * N)
        a, b, c = axes[r]
        vk = max(np.abs(kq).max(), 1e-12)
        im = _heat(a, kq, vk, [f"x{i + 1}" for i in range(d)], [f"head {h}" for h in range(H)], annotate=True)
        fig.colorbar(im, ax=a, fraction=0.04).ax.tick_params(labelsize=5)
        a.set_title(f"H = {H}: KQ diagonal per coordinate", fontsize=7)
        vo = max(np.abs(ov).max(), 1e-12)
        cols = [f"y{m + 1}→out{n + 1}" for m in range(N) for n in range(N)]
        im = _heat(b, ov, vo, cols, [f"head {h}" for h in range(H)], annotate=True)
        fig.colorbar(im, ax=b, fraction=0.05).ax.tick_params(labelsize=5)
        b.set_title("OV: y_m → output n", fontsize=7)
        G = ds["Gamma_diag"].values[r, 0]
        x = np.arange(d)
        for n in range(N):
            c.bar(x + (n - 0.5) * 0.38, G[n], 0.38, label=f"Γ_{n + 1} (task {n + 1})")
            if "theory_Gamma_star_diag" in ds:
                c.plot(x + (n - 0.5) * 0.38, ds["theory_Gamma_star_diag"].values[n], "_", color="black", ms=9, mew=1.5,
                       label="Γ*_n (theory)" if n == 0 else None)
            for i in np.nonzero(sup[n])[0]:
                c.axvspan(i - 0.5, i + 0.5, ymin=0.97 - 0.05 * n, ymax=1.0 - 0.05 * n, color=f"C{n}", alpha=0.6)
        c.axhline(0, color="black", lw=0.6)
        c.set_xticks(x)
        c.set_xticklabels([f"x{i + 1}" for i in range(d)], fontsize=6)
        c.set_title("Γ_n = Σ_h μ_{h,n} diag(W_h) (strips: task supports)", fontsize=7)
        c.legend(fontsize=6)
    fig.suptitle(f"Multi-task in-context regression (tasks on x1..x4 and x3..x6; seed 0)\n{_claims_line(ds)}",
                 fontsize=9)
    fig.tight_layout()
    return [_save(fig, path, dpi)]


# ================================================================================= main
def main(argv=None) -> int:
    return figure_main("python -m paper_figs.icl", __doc__, draw, argv, study="icl SUB")


if __name__ == "__main__":
    sys.exit(main())
