"""
In-context regression (estimators): exact finite-L risks
========================================================

The ``icl_estimators`` study checks the closed-form predictors of in-context linear regression
(He, Pan, Chen, Yang, ICML 2025) by Monte Carlo. They are one-step gradient descent (GD),
debiased GD, the single-head and two-head softmax kernels, and ridge regression. The theory
gives each one's exact risk at every prompt length :math:`L`, no asymptotics needed. This
example computes those risks for the quick grid, runs the ``--quick`` sweep, reads the store,
re-derives the claims and draws the figure.
"""

# %%
# The prediction for the quick grid
# ---------------------------------
# :math:`d = 5`, :math:`\sigma^2 = 0.1`, :math:`L \in \{10, 40, 100\}`; the two-head kernel uses the
# study's :math:`(\omega, \mu) = (0.13, 3.45)`, i.e. the step :math:`\eta = 2\omega\mu`.
# :mod:`theory.icl_regression` gives the exact risks; ridge's Bayes risk is shown in its
# Marchenko–Pastur limit (the study compares ridge with the Bayes risk of each sampled design).
from theory import icl_regression as th

d, sigma2, omega, mu = 5, 0.1, 0.13, 3.45
for L in (10, 40, 100):
    risks = {"two heads": th.kernel_risk(omega, mu, d, L, sigma2, heads=2),
             "DGD, same step": th.dgd_risk(2 * omega * mu, d, L, sigma2),
             "GD, best step": th.gd_optimal_risk(d, L, sigma2), "DGD, best step": th.dgd_optimal_risk(d, L, sigma2),
             "ridge (MP limit)": th.ridge_bayes_risk_mp(sigma2, d / L)}
    print(f"L = {L:3d}: " + ", ".join(f"{k} {float(v):.4f}" for k, v in risks.items()))

# %%
# The quick run
# -------------
# The study runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="icl-estimators-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "icl_estimators.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("icl_estimators").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# Per-replicate squared errors are pooled into a Monte Carlo risk with its standard error,
# stored beside the exact risk (for ridge: the mean Bayes risk given the sampled designs).
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; mse {dict(ds['mse'].sizes)}")
print(ds[["mc_risk", "mc_se", "theory_risk"]].to_dataframe().unstack("L").round(4).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="icl_estimators"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.icl.draw` reads the store and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.icl import draw

for png in draw(store, tmp / "icl_estimators.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
