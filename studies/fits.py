"""Fits shared by the studies: log-log rates from replicated measurements, and plain OLS.

``loglog_rate(x, y)`` fits ``log mean_rep y = c + slope log x`` by weighted least squares,
weights ``1 / Var(log mean)`` with ``Var(log mean) ~ (sd / sqrt(k) / mean)^2`` (delta method;
the authors' ``fit_convergence`` protocol, notes token_sample §4). The reported standard error is
the known-variance WLS error inflated by ``sqrt(chi2 / dof)`` when the points scatter more than
their error bars say (a misfit of the power law), never deflated. Replicates at different x
must be independent (they are: every sweep cell has its own seed).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["RateFit", "loglog_rate", "LineFit", "ols"]


@dataclass(frozen=True)
class RateFit:
    slope: float
    se: float
    intercept: float
    chi2_red: float
    n_points: int

    def as_dict(self):
        return asdict(self)


def loglog_rate(x, y, axis: int = -1) -> RateFit:
    """WLS slope of ``log(mean y)`` on ``log x``; ``y`` has shape ``(len(x), k)`` replicates
    (``axis`` names the replicate axis). Needs >= 2 points and k >= 2 replicates."""
    x = np.asarray(x, dtype=float)
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)
    if y.shape[0] != x.shape[0]:
        raise ValueError("y must have one row per x value")
    if x.size < 2 or y.shape[-1] < 2:
        raise ValueError("a rate fit needs >= 2 x values and >= 2 replicates")
    if np.any(y <= 0) or np.any(x <= 0):
        raise ValueError("log-log fits need positive data")
    k = y.shape[-1]
    mean = y.mean(axis=-1)
    sd = y.std(axis=-1, ddof=1)
    var_log = np.maximum((sd / np.sqrt(k) / mean) ** 2, 1e-300)
    w = 1.0 / var_log
    lx, ly = np.log(x), np.log(mean)
    xb = np.sum(w * lx) / np.sum(w)
    yb = np.sum(w * ly) / np.sum(w)
    sxx = np.sum(w * (lx - xb) ** 2)
    slope = np.sum(w * (lx - xb) * (ly - yb)) / sxx
    intercept = yb - slope * xb
    resid = ly - (intercept + slope * lx)
    dof = x.size - 2
    chi2_red = float(np.sum(w * resid**2) / dof) if dof > 0 else 1.0
    se = float(np.sqrt(1.0 / sxx) * np.sqrt(max(1.0, chi2_red)))
    return RateFit(float(slope), se, float(intercept), chi2_red, int(x.size))


@dataclass(frozen=True)
class LineFit:
    slope: float
    intercept: float
    r2: float
    se: float

    def as_dict(self):
        return asdict(self)


def ols(x, y) -> LineFit:
    """Ordinary least squares ``y = intercept + slope x`` with R^2 and the slope's SE."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size < 2:
        raise ValueError("a line fit needs >= 2 points")
    A = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    ss_tot = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(resid**2) / ss_tot if ss_tot > 0 else 1.0
    dof = x.size - 2
    if dof > 0:
        s2 = np.sum(resid**2) / dof
        se = float(np.sqrt(s2 / np.sum((x - x.mean()) ** 2)))
    else:
        se = 0.0
    return LineFit(float(coef[1]), float(coef[0]), float(r2), se)
