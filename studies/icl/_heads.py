"""The heads of a trained model as the theory sees them (notes icl_regression §4, §6.5): per-head
pattern metrics, the antisymmetric pair a set of heads amounts to, the two head groups the pair
reduction merges, the exact optima of a run's configuration, and the logged trajectories of the
quantities the claims are about (what the settling gate reads, notes icl_regression §13.11).
Shared by ``train``, ``noniso`` and ``multitask``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim import icl_regression as sim
from studies.icl import _common as C
from theory import icl_regression as th

__all__ = ["head_stats", "pair_parameters", "group_patterns", "Optima", "multi_head_series", "zero_sum_ratio"]


def head_stats(ds, d, out=0):
    """Per-head final metrics, active / kept masks and the omega, mu trajectories."""
    Wf = ds["W"].isel(step=-1).values
    Uf = ds["U"].isel(step=-1).values
    m = sim.pattern_metrics(Wf, Uf, d, out=out)
    exists = ds["head_exists"].values
    mu = np.where(exists, m["mu"], 0.0)
    maxmu = np.abs(mu).max(axis=-1, keepdims=True)
    active = exists & (np.abs(mu) > C.ACTIVE_MU_FRAC * maxmu)
    kept = exists & (m["diag_ratio"] > C.KEPT_DIAG_RATIO)
    traj = sim.pattern_metrics(ds["W"].values, ds["U"].values, d, out=out)
    return m, active, kept, traj


def _masked_mean(x, mask):
    n = mask.sum(axis=-1)
    return np.where(n > 0, np.where(mask, x, 0.0).sum(axis=-1) / np.maximum(n, 1), 0.0)


def pair_parameters(omega, mu, exists):
    """The antisymmetric pair a set of heads amounts to: eta = sum_h mu_h omega_h, the
    |mu|-weighted mean |omega| (a head's weight in the output is |mu_h|, so near-zero dummy
    heads do not count), and mu = eta / (2 omega)."""
    omega = np.where(exists, omega, 0.0)
    mu = np.where(exists, mu, 0.0)
    eta = float(np.sum(mu * omega))
    wts = np.abs(mu)
    wbar = float(np.sum(wts * np.abs(omega)) / max(np.sum(wts), 1e-300))
    return eta, wbar, eta / (2.0 * wbar) if wbar > 0 else math.nan


def group_patterns(W, U, omega, mu, exists, d, out=0):
    """Pattern metrics of the two head groups (sign of omega) the pair reduction merges: each
    group's |mu|-weighted mean KQ and summed OV (what the output depends on; the individual
    heads of a group are not identifiable, notes icl_regression §4). Returns the worst group's diag ratio,
    diag CV^2 and last-entry ratio."""
    ratios, cv2s, lasts = [], [], []
    for sgn in (1.0, -1.0):
        g = exists & (np.sign(omega) == sgn) & (np.abs(mu) > 0)
        if not g.any():
            continue
        w = np.abs(mu[g])
        Wg = np.einsum("h,hij->ij", w / w.sum(), W[g])[None]
        Ug = U[g].sum(axis=0)[None]
        m = sim.pattern_metrics(Wg, Ug, d, out=out)
        ratios.append(float(m["diag_ratio"][0]))
        cv2s.append(float(m["diag_cv2"][0]))
        lasts.append(float(m["last_entry_ratio"][0]))
    if not ratios:
        return math.nan, math.nan, math.nan
    return min(ratios), max(cv2s), min(lasts)


@dataclass(frozen=True)
class Optima:
    """The exact finite-L theory of a run's (d, L, sigma2): the single-head and pair optima
    (omega, mu, risk) and the debiased-GD optimal step and risk."""

    d: int
    L: int
    sigma2: float
    single: tuple
    pair: tuple
    eta_star: float
    dgd_risk: float

    @classmethod
    def of(cls, d: int, L: int, sigma2: float) -> "Optima":
        return cls(d, L, sigma2, th.kernel_optimum(d, L, sigma2, heads=1), th.kernel_optimum(d, L, sigma2, heads=2),
                   float(th.dgd_optimal_step(d, L, sigma2)), float(th.dgd_optimal_risk(d, L, sigma2)))


def zero_sum_ratio(mu, exists=None):
    """|sum_h mu_h| / sum_h |mu_h| over the last axis (0 when every mu vanishes)."""
    mu = np.asarray(mu, dtype=float)
    if exists is not None:
        mu = np.where(exists, mu, 0.0)
    tot = np.abs(mu).sum(-1)
    return np.abs(mu.sum(-1)) / np.where(tot > 0, tot, 1.0)


def multi_head_series(W, U, exists, active, d: int, out: int = 0) -> dict:
    """The logged trajectories (one value per logged step) of what the multi-head claims of one
    run are about: ``eta``, the pair's ``omega`` (|mu|-weighted), the ``zero_sum`` ratio, the
    worse group's ``diag_ratio``, ``diag_cv2``, ``last_entry`` and the fraction ``signs`` of the
    heads active at the end whose sign(mu) = sign(omega). ``W`` (step, head, D, D), ``U`` (step,
    head, D, N)."""
    m = sim.pattern_metrics(W, U, d, out=out)
    om = np.where(exists, m["omega"], 0.0)
    mu = np.where(exists, m["mu"], 0.0)
    T = W.shape[0]
    res = {k: np.zeros(T) for k in ("eta", "omega", "zero_sum", "diag_ratio", "diag_cv2", "last_entry", "signs")}
    for t in range(T):
        res["eta"][t], res["omega"][t], _ = pair_parameters(om[t], mu[t], exists)
        res["diag_ratio"][t], res["diag_cv2"][t], res["last_entry"][t] = group_patterns(W[t], U[t], om[t], mu[t],
                                                                                      exists, d, out=out)
        res["signs"][t] = float(np.mean(np.sign(mu[t][active]) == np.sign(om[t][active]))) if active.any() else 1.0
    res["zero_sum"] = zero_sum_ratio(mu)
    return res
