"""
Tensor attention: the polynomial method needs bounded entries
=============================================================

The ``tensor_attention`` study tests Alman & Song's results on matrix (:math:`k = 2`) and tensor
(:math:`k = 3`) attention. With entries bounded by :math:`B`, the logits lie in :math:`[-R, R]`
with :math:`R = |s|\\,d\\,B^k`. A degree-:math:`g` polynomial of relative error :math:`\\varepsilon`
on that interval gives a fast approximation whose output error is at most
:math:`2\\varepsilon/(1-\\varepsilon)` times the value scale. Once :math:`B` is large, no small
degree works. This example computes :math:`\\varepsilon` for the quick grid, runs the ``--quick``
study (groups ``error``, ``runtime``, ``match3``), reads the ``error`` group, re-derives the
claims and draws the figure.
"""

# %%
# The prediction for the quick grid
# ---------------------------------
# The quick run uses :math:`d = 4`, scale :math:`s = 1/d`, :math:`B \in \{0.5, 1, 2\}` and degrees
# 2, 4, 8. :func:`theory.tensor_attention.logit_range` gives :math:`R`;
# :func:`~theory.tensor_attention.reference_relative_error` gives :math:`\varepsilon` of the
# Taylor and Chebyshev polynomials of :math:`e^x` on :math:`[-R, R]`.
from theory import tensor_attention as th

d, degrees = 4, (2, 4, 8)
for k in (2, 3):
    for B in (0.5, 1.0, 2.0):
        R = th.logit_range(B, k, d, 1 / d)
        eps = {m: [th.reference_relative_error(g, R, m) for g in degrees] for m in th.METHODS}
        print(f"k = {k}, B = {B}: R = {R:5.3g}; eps at g = 2, 4, 8: "
              + "; ".join(f"{m} " + ", ".join(f"{e:.1e}" for e in v) for m, v in eps.items()))

# %%
# The quick run
# -------------
# The study runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="tensor-attention-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "tensor_attention.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("tensor_attention").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store: the ``error`` group
# ------------------------------
# The largest output error over the replicates, for Chebyshev at :math:`k = 2` on sign-aligned
# inputs (the worst case), beside the certified bound (0 where :math:`\varepsilon \ge 1`: no bound).
import xarray as xr

ds = xr.open_zarr(store, group="error", consolidated=False)
print(f"groups: {by_name('tensor_attention').groups}; error: err_out {dict(ds['err_out'].sizes)}")
worst = ds[["err_max", "theory_err_bound"]].sel(family="chebyshev", k=2, inputs="sign_aligned", drop=True)
print(worst.to_dataframe().unstack("degree").to_string(float_format="%.2e"))

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="tensor_attention"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.tensor_attention.draw` puts a panel of every group on one PNG.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.tensor_attention import draw

for png in draw(store, tmp / "tensor_attention.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
