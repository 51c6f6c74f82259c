"""
In-context regression (multi-task): heads shared between two tasks
===================================================================

The ``icl_multitask`` study trains attention on two regression tasks at once (He, Pan, Chen,
Yang, ICML 2025). Task 1 reads coordinates :math:`x_{0:4}` and task 2 reads :math:`x_{2:6}`
(:math:`d = 6`), so the two share two coordinates. Per task, first-order theory predicts a
debiased-GD preconditioner :math:`\\Gamma^*_n` supported on that task's coordinates. The heads
realise it as :math:`\\Gamma_n = \\sum_h \\mu_{h,n} W_h`, and with fewer than four heads some
must serve both tasks. This example computes :math:`\\Gamma^*_n` and its risk, runs the
``--quick`` training (three heads, 600 steps), reads the store, re-derives the claims and draws
the figure. The quick run stops before the claims' stage, and they say so.
"""

# %%
# The prediction for the quick run
# --------------------------------
# Each task draws :math:`\beta_n \sim N(0, I_4)` on its support, with label-noise variance 0.4 and
# a noiseless query; prompts have :math:`L = 48` examples. With the task's prior covariance
# :math:`B_n` as ``beta_cov``, :func:`theory.icl_regression.optimal_preconditioner` gives
# :math:`\Gamma^*_n`, and :func:`~theory.icl_regression.preconditioned_risk` its risk, divided by
# the task variance :math:`\operatorname{tr} B_n`.
import numpy as np

from theory import icl_regression as th

for task, support in ((1, [0, 1, 2, 3]), (2, [2, 3, 4, 5])):
    B = np.diag(np.isin(np.arange(6), support).astype(float))
    G = th.optimal_preconditioner(np.eye(6), 48, 0.4, centered=True, beta_cov=B)
    risk = th.preconditioned_risk(G, np.eye(6), 48, 0.4, centered=True, beta_cov=B, query_noise=False)
    print(f"task {task}: diag Gamma* = {np.round(np.diag(G), 3)}, MSE / variance = {risk / np.trace(B):.4f}")

# %%
# The quick run
# -------------
# The training runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="icl-multitask-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "icl_multitask.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("icl_multitask").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# Per task: the final MSE over the task variance beside the theory's, and the learned
# :math:`\Gamma_n` on and off the task's support; then the diagonal of each :math:`\Gamma_n`
# (the store numbers the tasks from 0).
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; W {dict(ds['W'].sizes)}; mu {dict(ds['mu'].sizes)}")
cols = ["final_val_mse_per_task", "theory_task_risk", "Gamma_on_support", "Gamma_off_support_max", "zero_sum_ratio"]
print(ds[cols].to_dataframe().round(4).to_string())
print(ds["Gamma_diag"].isel(H=0, seed=0).to_pandas().round(3).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="icl_multitask"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.icl.draw` reads the store and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.icl import draw

for png in draw(store, tmp / "icl_multitask.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
