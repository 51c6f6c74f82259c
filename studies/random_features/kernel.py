"""The ``kernel`` group of the random-feature attention study: the M-head empirical kernel against
the closed-form infinite-head kernel.

Data (the group's store): ``K_emp(pair, kmodel, M, rep)``, the mean over M heads of the per-head
products ``<phi_m(X_p), phi_m(X'_p)>`` on the fixed input pairs of
:func:`studies.random_features.cells.kernel_inputs` (a function of the root seed, so the analysis
rebuilds them from the store), and ``K_head_sd``, the standard deviation over heads.

:func:`analyze_kernel` computes the closed forms of :mod:`theory.random_features` for this run's
conventions (``theory_K(kmodel, pair)``), the z-scores of ``K_emp`` against them with the per-head
variance pooled over M and draws (the products have one law at every M), the relative RMS error
and its rate in M, and the permutation gap; it decides the claims ``kernel_clt`` (every z-score
within the family's normal band), ``kernel_rate`` (slope -1/2) and ``permutation_invariance``
(attention only, against a declared float64 allowance).

The rate: ``S(M)``, the mean over draws and distinct pairs of ``(K_emp - K)^2``, has expectation
``c / M`` exactly; for Gaussian errors of variance ``s_p^2 / M`` its log has variance
``2 sum_p s_p^4 / (R (sum_p s_p^2)^2)`` (R draws), which weights the slope's SE, inflated by the
reduced chi^2 of the fit when that exceeds 1.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from sim import random_features as rs
from studies.claims import z_family
from studies.cli import run_params
from studies.random_features.cells import _conv_kwargs, kernel_inputs
from studies.random_features.common import (
    KERNEL_CLT,
    KERNEL_RATE,
    PERMUTATION,
    PERMUTATION_TOL,
    _conv,
)
from studies.sweep import str_coord
from theory import random_features as rft

__all__ = ["analyze_kernel", "summary_kernel"]


def _theory_kernel(conv, kmodels, a0, A, b0, B) -> np.ndarray:
    """``(kmodel, pair)``: the closed-form infinite-head kernel of each model on each pair."""
    kw = _conv_kwargs(conv)
    th = np.zeros((len(kmodels), A.shape[0]))
    for i, km in enumerate(kmodels):
        if km == "rfmlp":
            th[i] = np.diag(rft.mlp_kernel(rs.flatten_inputs(a0, A, conv["augment"]),
                                           rs.flatten_inputs(b0, B, conv["augment"])))
        else:
            r = conv["r_bias_brfa"] if km == "brfa" else 0.0
            th[i] = np.diag(rft.rfa_kernel(a0, A, b0, B, r_bias=r, key_norm=conv["key_norm"], **kw))
    return th


def _rate_fit(K, th, var_head, M, distinct):
    """Half the log-log slope of the mean squared kernel error in M, per model, with its SE."""
    R = K.shape[2]
    nk = K.shape[0]
    slope, se = np.zeros(nk), np.zeros(nk)
    lx = np.log(M)
    for i in range(nk):
        S = np.mean((K[i][..., distinct] - th[i, distinct]) ** 2, axis=(1, 2))
        v = var_head[i, distinct]
        var_log = 2.0 * np.sum(v**2) / (R * np.sum(v) ** 2)
        xc = lx - lx.mean()
        b = float(xc @ np.log(S) / (xc @ xc))
        resid = np.log(S) - np.log(S).mean() - b * xc
        chi2_red = float(np.sum(resid**2) / var_log / (M.size - 2)) if M.size > 2 else 1.0
        slope[i] = b / 2.0
        se[i] = 0.5 * math.sqrt(var_log / (xc @ xc) * max(1.0, chi2_red))
    return slope, se


def analyze_kernel(ds: xr.Dataset):
    """Theory, z-scores, rate and permutation gap of the ``kernel`` group, and its claims."""
    params = run_params(ds)
    d, N, P = params["d"], params["N"], params["kernel_pairs"]
    a0, A, b0, B, kinds = kernel_inputs(int(ds.attrs["root_seed"]), d, N, P)
    kmodels = [str(k) for k in ds["kmodel"].values]
    th = _theory_kernel(_conv(params), kmodels, a0, A, b0, B)
    K = ds["K_emp"].transpose("kmodel", "M", "rep", "pair").values
    sd = ds["K_head_sd"].transpose("kmodel", "M", "rep", "pair").values
    M = ds["M"].values.astype(float)
    # the per-head products have the same law at every M: pool their variance over M and draws
    dof = np.broadcast_to((M - 1)[None, :, None, None], sd.shape)
    var_head = np.sum(dof * sd**2, axis=(1, 2)) / np.sum(dof, axis=(1, 2))  # (kmodel, pair)
    z = (K - th[:, None, None, :]) / np.sqrt(var_head[:, None, None, :] / M[None, :, None, None])
    scale = np.mean(np.abs(th), axis=1)
    rel = np.sqrt(np.mean((K - th[:, None, None, :]) ** 2, axis=-1)) / scale[:, None, None]  # (k, M, rep)
    slope, se = _rate_fit(K, th, var_head, M, np.array([k != "permuted" for k in kinds]))
    maxz = np.abs(z).max(axis=(2, 3))
    same, permuted = kinds.index("same"), kinds.index("permuted")
    gap = np.abs(K[..., permuted] - K[..., same]).max(axis=(1, 2)) / scale
    z_band, z_src = z_family(z.size)
    out = xr.Dataset(coords={"kmodel": ds["kmodel"].values, "M": ds["M"].values, "rep": ds["rep"].values,
                             "pair": ds["pair"].values})
    out["pair_kind"] = (("pair",), str_coord(kinds))
    out["input_x0"] = (("pair", "coord"), a0, {"long_name": "query of the first input of each pair"})
    out["input_X"] = (("pair", "key", "coord"), A, {"long_name": "keys of the first input"})
    out["input_x0_prime"] = (("pair", "coord"), b0)
    out["input_X_prime"] = (("pair", "key", "coord"), B)
    out["theory_K"] = (("kmodel", "pair"), th, {"long_name": "closed-form infinite-head kernel (theory.random_features)"})
    out["z_score"] = (("kmodel", "M", "rep", "pair"), z,
                      {"long_name": "(K_emp - theory_K) / (s / sqrt(M)), s^2 the per-head variance pooled over M "
                                    "and draws"})
    out["head_var"] = (("kmodel", "pair"), var_head, {"long_name": "per-head variance of the products, pooled"})
    out["max_abs_z"] = (("kmodel", "M"), maxz)
    out["kernel_z_band"] = ((), z_band, {"long_name": f"family-wise normal band of the z-scores: {z_src}"})
    out["rel_rms_err"] = (("kmodel", "M", "rep"), rel,
                          {"long_name": "RMS over pairs of K_emp - theory_K, over mean |theory_K|"})
    out["mean_rel_rms_err"] = (("kmodel", "M"), rel.mean(axis=-1))
    out["err_slope"] = (("kmodel",), slope, {"long_name": "half the log-log slope of the mean squared kernel error "
                                                          "(over draws and distinct pairs) vs M"})
    out["err_slope_se"] = (("kmodel",), se)
    out["theory_err_slope"] = (("kmodel",), np.full(len(kmodels), -0.5), {"long_name": "CLT rate M^(-1/2)"})
    out["permutation_gap"] = (("kmodel",), gap, {"long_name": "max |K_emp(X, perm X) - K_emp(X, X)| / scale "
                                                              "(0 for attention: exact key-permutation invariance)"})
    return out, _kernel_claims(kmodels, maxz, z_band, z_src, slope, se, gap)


def _kernel_claims(kmodels, maxz, z_band, z_src, slope, se, gap) -> list:
    claims = []
    for i, km in enumerate(kmodels):
        claims.append(KERNEL_CLT.decided(
            maxz[i].max() <= z_band, test="max |z| over every M, head draw and input pair <= z", tolerance=z_band,
            tolerance_source=f"{z_src}: every z-score of every model (per-head variance pooled over M and draws)",
            where=f"kmodel={km}", prediction=0.0,
            prediction_text=f"z ~ N(0, 1): max |z| <= {z_band:.3g}", measured=float(maxz[i].max()),
            reason="" if maxz[i].max() <= z_band else f"max |z| = {maxz[i].max():.3g} > {z_band:.3g}"))
    zr, zr_src = z_family(len(kmodels))
    for i, km in enumerate(kmodels):
        claims.append(KERNEL_RATE.equal(slope[i], se[i], -0.5, z=zr, z_source=zr_src, where=f"kmodel={km}", effect=0.5,
                                        prediction_text="slope -0.5 (error ~ M^-1/2)"))
    for i, km in enumerate(kmodels):
        if km == "rfmlp":
            continue
        claims.append(PERMUTATION.decided(
            gap[i] <= PERMUTATION_TOL, test="max relative |K(X, perm X) - K(X, X)| <= tolerance",
            tolerance=PERMUTATION_TOL,
            tolerance_source="declared float64 rounding allowance (sums over N keys in another order differ by "
                             "~1e-16 N, relative)", where=f"kmodel={km}", prediction=0.0,
            prediction_text="0 (exact invariance)", measured=float(gap[i]),
            reason="" if gap[i] <= PERMUTATION_TOL else f"relative gap {gap[i]:.3g}"))
    return claims


def summary_kernel(an: xr.Dataset) -> str:
    """The kernel group's table: max ``|z|`` against the band, the error at M_max, the rate, the gap."""
    rows = [f"   {'model':<7} {'max|z|':>7} {'band':>6} {'rel err @M_max':>15} {'slope ± se':>16}  theory  perm. gap"]
    for i, k in enumerate(an["kmodel"].values):
        gap = float(an["permutation_gap"][i])
        rows.append(f"   {k:<7} {float(an['max_abs_z'][i].max()):7.2f} {float(an['kernel_z_band']):6.2f} "
                    f"{float(an['mean_rel_rms_err'][i, -1]):15.2e} "
                    f"{float(an['err_slope'][i]):+8.3f} ± {float(an['err_slope_se'][i]):.3f}   -0.5   {gap:.1e}")
    return "\n".join(rows)
