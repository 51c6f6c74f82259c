"""Pattern metrics of trained heads (notes icl_regression §4, the authors' ``extract_kq_ov_details``) and
across-head sums (zero-sum ratio, the debiased-GD step eta)."""
from __future__ import annotations

import numpy as np


PATTERN_KEYS = ("omega", "mu", "diag_ratio", "diag_cv2", "last_entry_ratio", "offdiag_max", "key_y_max",
                "ov_x_max")


def pattern_metrics(W: np.ndarray, U: np.ndarray, d: int, out: int = 0) -> dict:
    """Per-head metrics (arrays over the leading axes of W (..., H, D, D), U (..., H, D, N)) for
    output ``out`` (notes icl_regression §4): omega, mu, diag_ratio, diag_cv2, last_entry_ratio, offdiag_max
    (``max |off-diagonal|`` of the x-block), key_y_max (``max |W[:d, d+out]|``, the key-y column) and
    ov_x_max (``max |u[:d, out]|``). Zero heads give omega = mu = 0 and ratios 0."""
    Wx = W[..., :d, :d]
    diag = np.diagonal(Wx, axis1=-2, axis2=-1)
    fro = np.sqrt(np.sum(Wx**2, axis=(-2, -1)))
    dn = np.sqrt(np.sum(diag**2, axis=-1))
    omega = diag.mean(axis=-1)
    var = diag.var(axis=-1)
    eye = np.eye(d, dtype=bool)
    off = np.where(eye, 0.0, np.abs(Wx)).max(axis=(-2, -1))
    u = U[..., :, out]
    mu = u[..., d + out]
    un = np.sqrt(np.sum(u**2, axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        diag_ratio = np.where(fro > 0, dn / np.where(fro > 0, fro, 1.0), 0.0)
        cv2 = np.where(omega**2 > 0, var / np.where(omega**2 > 0, omega**2, 1.0), 0.0)
        ler = np.where(un > 0, np.abs(mu) / np.where(un > 0, un, 1.0), 0.0)
    return {"omega": omega, "mu": mu, "diag_ratio": diag_ratio, "diag_cv2": cv2, "last_entry_ratio": ler,
            "offdiag_max": off, "key_y_max": np.abs(W[..., :d, d + out]).max(axis=-1),
            "ov_x_max": np.abs(u[..., :d]).max(axis=-1)}


def head_sums(omega, mu, exists=None) -> dict:
    """Across-head summaries over the last axis: ``sum_mu``, ``sum_abs_mu``, ``zero_sum_ratio`` =
    ``|sum_h mu_h| / sum_h |mu_h|`` (0 when all mu vanish) and ``eta`` = sum_h mu_h omega_h (the
    debiased-GD step the heads implement, notes icl_regression §6). ``exists`` masks padded heads."""
    omega = np.asarray(omega, dtype=float)
    mu = np.asarray(mu, dtype=float)
    if exists is not None:
        omega = np.where(exists, omega, 0.0)
        mu = np.where(exists, mu, 0.0)
    s = mu.sum(-1)
    a = np.abs(mu).sum(-1)
    return {"sum_mu": s, "sum_abs_mu": a, "zero_sum_ratio": np.abs(s) / np.where(a > 0, a, 1.0),
            "eta": (mu * omega).sum(-1)}
