"""
In-context regression (train): what multi-head attention learns
===============================================================

The ``icl_train`` study trains one-layer multi-head softmax attention by Adam on prompts of
in-context linear regression (He, Pan, Chen, Yang, ICML 2025). The exact finite-:math:`L` theory
gives the best single head, and the best antisymmetric pair of heads, which acts as debiased
gradient descent with a learned step. This example computes those optima, runs the ``--quick``
training (:math:`H = 1, 2`, 1000 Adam steps), reads the store, re-derives the claims and draws
two of the study's figures. The quick run stops long before the stages the claims are about, so
they say "not tested" with the reason; the default run (``python -m studies.icl train``) trains
60 000 steps.
"""

# %%
# The prediction for the quick run
# --------------------------------
# The run uses :math:`d = 5`, prompts of :math:`L = 40` examples and noise :math:`\sigma^2 = 0.1`.
# :func:`theory.icl_regression.kernel_optimum` returns the optimal :math:`(\omega, \mu)` and risk
# for one head and for the pair; :func:`~theory.icl_regression.dgd_optimal_step` is the step
# :math:`1/(1 + d(1+\sigma^2)/L)` that the pair's :math:`\eta = \sum_h \mu_h\omega_h` tends to.
from theory import icl_regression as th

d, L, sigma2 = 5, 40, 0.1
for heads in (1, 2):
    omega, mu, risk = th.kernel_optimum(d, L, sigma2, heads=heads)
    print(f"{heads} head(s): omega* = {omega:.4f}, mu* = {mu:.3f}, optimal risk = {risk:.4f}")
print(f"debiased GD: step {th.dgd_optimal_step(d, L, sigma2):.4f}, risk {th.dgd_optimal_risk(d, L, sigma2):.4f}")

# %%
# The quick run
# -------------
# The training runs in this process into a temporary folder (the checkpoints live in the
# store, so a longer ``--steps`` continues the same run); its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="icl-train-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "icl_train.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("icl_train").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# Raw weights of every head at every logged step (``W``, ``U``), the validation curve, then the
# final MSE of each run beside the exact risk of the kernel at its learned parameters, with the
# learned step :math:`\eta` and :math:`\sum_h \mu_h` at the last logged step.
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; W {dict(ds['W'].sizes)}")
cols = ["final_val_mse", "final_val_se", "theory_kernel_risk_learned", "eta", "sum_mu"]
print(ds[cols].isel(step=-1, drop=True).to_dataframe().round(4).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="icl_train"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figures
# -----------
# :func:`paper_figs.icl.draw` writes four PNGs for a ``train`` store; the heat maps of the
# heads' weights and the training dynamics are shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.icl import draw

for png in draw(store, tmp / "icl_train.png"):
    if png.stem.endswith(("heatmaps", "dynamics")):
        img = imread(png)
        fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
        fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
