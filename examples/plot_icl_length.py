"""
In-context regression (length): trained models at other prompt lengths
=======================================================================

The ``icl_length`` study takes the models of a finished ``icl_train`` store, trained on prompts
of length :math:`L = 40`, and tests them at other lengths :math:`L'` (He, Pan, Chen, Yang, ICML
2025). Softmax attention normalises over the prompt, so its exact kernel risk keeps falling as
:math:`L'` grows. A linear-attention baseline, normalised by the fixed :math:`1/L`, acts as
gradient descent with a step scaled by :math:`L'/L` and blows up at long prompts. This example
computes both predictions, runs the quick ``icl_train`` and then the quick ``icl_length`` on its
store, reads the store, re-derives the claims and draws the figure.
"""

# %%
# The prediction for the quick run
# --------------------------------
# For models at the exact optima for :math:`d = 5`, :math:`L = 40`, :math:`\sigma^2 = 0.1`
# (:func:`theory.icl_regression.kernel_optimum`), :func:`~theory.icl_regression.kernel_risk` at
# the test lengths; for the baseline at GD's best step for :math:`L`,
# :func:`~theory.icl_regression.linear_baseline_risk`.
from theory import icl_regression as th

d, L, sigma2, L_test = 5, 40, 0.1, (10, 40, 100, 400)
optima = {h: th.kernel_optimum(d, L, sigma2, heads=h)[:2] for h in (1, 2)}
eta_lin = th.gd_optimal_step(d, L, sigma2)
for Lt in L_test:
    kern = ", ".join(f"H={h}: {th.kernel_risk(w, m, d, Lt, sigma2, heads=h):.4f}" for h, (w, m) in optima.items())
    print(f"L' = {Lt:3d}: softmax {kern}; linear {float(th.linear_baseline_risk(eta_lin, L, Lt, d, sigma2)):9.4f}")

# %%
# The quick runs: train, then length
# ----------------------------------
# Both studies run in this process into one temporary folder; ``--models`` points the length
# study at the trained store. Their printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="icl-length-")  # removed at the end of the session
tmp = Path(workdir.name)
models, store = tmp / "icl_train.zarr", tmp / "icl_length.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("icl_train").main(["--quick", "--no-progress", "--out", str(models)]) == 0
    assert by_name("icl_length").main(["--quick", "--no-progress", "--models", str(models), "--out", str(store)]) == 0
print("\n".join(line for line in log.getvalue().splitlines() if line.startswith("wrote")))

# %%
# The store
# ---------
# Test MSEs of the trained softmax models and of the linear baseline at each :math:`L'`, beside
# the exact risks at their *learned* parameters (read from the train store and kept here).
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; mse_softmax {dict(ds['mse_softmax'].sizes)}")
first = ds.isel(seed=0, drop=True)
print(first[["softmax_mse", "theory_kernel_risk"]].to_dataframe().unstack("H").round(4).to_string())
print(first[["linear_mse", "theory_linear_risk"]].to_dataframe().round(4).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
# The quick training stops before its stage, so every claim says "not tested", with the reason.
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="icl_length"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.icl.draw` reads the length store alone and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.icl import draw

for png in draw(store, tmp / "icl_length.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
