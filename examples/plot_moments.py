"""
Moments: how the attention horizon slows the moment rate
========================================================

The ``moments`` study measures how fast the mean and the covariance of the outputs of
self-attention over :math:`n` tokens approach their infinite-token limits, for a sweep of
attention scales (Bohbot et al., Result 2). The error decays like :math:`C'/n^\\beta`. The theory
ties :math:`\\beta` to the horizon :math:`H` of the score matrix: :math:`\\beta \\to 1/2` as
:math:`H \\to 0`, and the authors' curve :math:`1/(2(1+H^2))` bounds the rate from below. This
example computes the horizons and the predicted rates, runs the ``--quick`` sweep, reads the
store, re-derives the claims and draws the figure.
"""

# %%
# The prediction for the quick run
# --------------------------------
# The quick run uses Gaussian tokens :math:`N(0, 0.1\,I_{50})`, fixed weights from seed 42 and
# five scales from 0.05 to 50. :class:`sim.token_moments.MomentProblem` builds the score matrices
# :math:`A(s)`, and their horizons :math:`H_{\mathrm{eff}} = \|\Sigma^{1/2} A \Sigma^{1/2}\|_2`.
# ``theory/`` then gives the authors' curve and the finer rate predicted for this law.
import numpy as np

from sim.distributions import make_distribution
from sim.token_moments import MomentProblem
from theory import token_sample as ts

scales = np.geomspace(0.05, 50, 5)
dist = make_distribution("gaussian", 50, scale=float(np.sqrt(0.1)))
H_eff, H_code = MomentProblem.build(dist, scales, convention="normalized", weight_seed=42).horizons()
beta_low, beta_law = ts.beta_of_horizon(H_eff), ts.predicted_moment_rate(dist.law, H_eff)
for s, h, lo, b in zip(scales, H_eff, beta_low, beta_law):
    print(f"scale {s:6.3g}: H_eff = {h:7.4f}, 1/(2(1+H^2)) = {lo:.3f}, predicted beta = {b:.3f}")

# %%
# The quick run
# -------------
# The study runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="moments-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "moments.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("moments").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# Raw errors over ``(ref, scale, n, rep)``; the fitted rates per scale against the reference
# ``exact`` (the closed-form output moments of the Gaussian law) and the theory's rates.
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; mean_err {dict(ds['mean_err'].sizes)}")
cols = ["H_eff", "beta_mean", "beta_mean_se", "beta_cov", "beta_cov_se", "theory_beta_eff", "theory_beta_law"]
print(ds[cols].sel(ref="exact", drop=True).to_dataframe().round(3).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="moments"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.moments.draw` reads the store and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.moments import draw

for png in draw(store, tmp / "moments.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
