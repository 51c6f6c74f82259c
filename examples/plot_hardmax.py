"""
Hardmax: from softmax to a logarithmic rate
===========================================

The ``hardmax`` study puts tokens uniformly on the sphere :math:`S^{d-1}` and lets the attention
parameter :math:`\\lambda` grow (Bohbot et al., Result 3). Softmax attention tends to hardmax,
with a bias that shrinks like :math:`(d-1)/(2\\lambda\\kappa_1)`. Pure hardmax over :math:`n`
tokens converges like :math:`n^{-1/(d-1)}`. Coupling :math:`\\lambda_n = c \\log n` gives a
logarithmic rate. This example computes the exact bias and the pure-hardmax error curve on the
quick grids, runs the ``--quick`` sweep, reads the store, re-derives the claims and draws the
figure.
"""

# %%
# The prediction for the quick grids
# ----------------------------------
# The quick run uses :math:`d = 3`, radius 1 and :math:`A = I` (so :math:`\kappa_1 = 1`),
# six values of :math:`\lambda` from 1 to 300 and :math:`n = 10^2..10^4`.
# :func:`theory.token_sample.sphere_hardmax_bias` is the exact population bias
# :math:`1 - A_d(\lambda\kappa_1)`; :func:`~theory.token_sample.sphere_hardmax_expected_error`
# is the exact pure-hardmax error, a one-dimensional integral.
import numpy as np

from theory import token_sample as ts

d, lam, n = 3, np.geomspace(1, 300, 6), np.geomspace(1e2, 1e4, 5)
for la, b, b_inf in zip(lam, ts.sphere_hardmax_bias(d, lam), ts.sphere_hardmax_bias_asymptotic(d, lam)):
    print(f"lam = {la:6.1f}: bias {b:.4f}  (asymptote (d-1)/(2 lam) = {b_inf:.4f})")
for nn, e in zip(n, ts.sphere_hardmax_expected_error(d, n)):
    print(f"n = {nn:6.0f}: pure hardmax error {e:.4f}")
print(f"slope as n -> infinity: {ts.sphere_hardmax_rate(d):+.2f}")

# %%
# The quick run
# -------------
# The study runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="hardmax-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "hardmax.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("hardmax").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# Raw errors per replicate (``lam_deficit(lam, n, rep)``, ``pure_err(n, rep)``, ...), then the
# measured bias at the largest :math:`n` beside its predictions, and the pure-hardmax error.
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; lam_deficit {dict(ds['lam_deficit'].sizes)}")
print(ds[["bias", "bias_se", "theory_bias", "theory_bias_finite_n", "nstar_over_n"]].to_dataframe().to_string())
print(ds[["pure_err_mean", "pure_err_sem", "theory_pure_err"]].to_dataframe().to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="hardmax"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.hardmax.draw` reads the store and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.hardmax import draw

for png in draw(store, tmp / "hardmax.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
