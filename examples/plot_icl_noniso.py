"""
In-context regression (anisotropic): the learned preconditioner
===============================================================

The ``icl_noniso`` study trains multi-head attention on in-context regression with correlated
covariates, :math:`\\Sigma_{ij} = \\rho^{|i-j|}` (He, Pan, Chen, Yang, ICML 2025). The heads
combine into a preconditioner :math:`\\Gamma = \\sum_h \\mu_h W_h`. First-order theory says it
should become the optimal one-step preconditioner of debiased gradient descent,
:math:`\\Gamma^* = (\\Sigma + ((\\operatorname{tr}\\Sigma + d\\sigma^2)/L) I)^{-1}`. This example
computes :math:`\\Gamma^*` and its risk, runs the ``--quick`` training (:math:`\\rho = 0.5`,
:math:`H = 2`, 600 steps), reads the store, re-derives the claims and draws the figure. The
quick run is far too short for the claims' stage, and they say so.
"""

# %%
# The prediction for the quick run
# --------------------------------
# :math:`d = 5`, :math:`L = 40`, :math:`\sigma^2 = 0.1`, :math:`\rho = 0.5`:
# :func:`theory.icl_regression.optimal_preconditioner` (centred: debiased GD),
# its exact risk :func:`~theory.icl_regression.preconditioned_risk`, and how far it is from
# plain GD (the cosine with the identity).
import numpy as np

from theory import icl_regression as th

d, L, sigma2, rho = 5, 40, 0.1, 0.5
Sigma = th.toeplitz_cov(d, rho)
G_star = th.optimal_preconditioner(Sigma, L, sigma2, centered=True)
print(np.round(G_star, 3))
print(f"risk of debiased GD with Gamma*: {th.preconditioned_risk(G_star, Sigma, L, sigma2, centered=True):.4f}; "
      f"cos(Gamma*, I) = {th.cosine(G_star, np.eye(d)):.3f}")

# %%
# The quick run
# -------------
# The training runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="icl-noniso-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "icl_noniso.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("icl_noniso").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# The learned :math:`\Gamma` of each run, its cosines with :math:`\Gamma^*` and with
# :math:`I`, and the final MSE beside the exact risks of :math:`\Gamma` and of :math:`\Gamma^*`.
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; W {dict(ds['W'].sizes)}")
print(np.round(ds["Gamma"].isel(rho=0, H=0, seed=0).values, 3))
cols = ["final_val_mse", "theory_risk_learned_Gamma", "theory_risk_Gamma_star_centered", "cos_Gamma_star_centered",
        "cos_identity"]
print(ds[cols].to_dataframe().round(4).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="icl_noniso"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.icl.draw` reads the store and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.icl import draw

for png in draw(store, tmp / "icl_noniso.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
