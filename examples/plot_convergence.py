"""
Convergence: the uniform rate C(R)/√n and where it stops
========================================================

The ``convergence`` study measures the worst error of softmax attention over a ball of queries
:math:`|x| \\le R` when the token law is replaced by :math:`n` samples (Bohbot et al., Result 1).
The theory says which radii reach the :math:`1/\\sqrt n` regime on a given grid, and with which
constant. Larger radii stay in a *saturated* regime where a few extreme tokens dominate. This
example computes those predictions, runs the study's ``--quick`` grid, reads the store,
re-derives the claims and draws the figure.
"""

# %%
# The prediction for the quick grid
# ---------------------------------
# The quick run uses Gaussian tokens in :math:`d = 2`, :math:`A = V = I`, radii 1..8 and
# :math:`n = 2^8..2^{12}`. :func:`theory.token_sample.uniform_regimes` classifies each radius
# from two scales: :math:`n_3(R)` (CLT once :math:`n \ge 10\,n_3`) and :math:`n^*(R)`
# (saturated while :math:`n_{\max} < n^*`). The delta method gives the constant :math:`C(R)`.
import numpy as np

from sim.distributions import make_distribution
from theory import token_sample as ts

law, A = make_distribution("gaussian", 2).law, np.eye(2)
R, n = np.arange(1.0, 9.0), 2.0 ** np.arange(8, 13)
log_C = [ts.predicted_log_C(law, r, A, A) for r in R]
log_n3 = np.array([ts.log_normal_approx_threshold_sup(law, r, A) for r in R])
log_nstar = np.array([ts.log_effective_sample_threshold_sup(law, r, A) for r in R])
regime, _ = ts.uniform_regimes(log_n3, log_nstar, n, clt_factor=10.0, min_points=3)
for r, lc, l3, k in zip(R, log_C, log_n3, regime):
    print(f"R = {r:g}: C(R) = {np.exp(lc):9.3g}, n_3 = {np.exp(l3):8.2g}, regime {ts.REGIMES[k]}")

# %%
# The quick run
# -------------
# The study runs in this process and writes a Zarr store in a temporary folder. Its printed
# tables are kept aside: the claims are derived again from the store below.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="convergence-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "convergence.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("convergence").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# The raw sup errors keep every replicate (``sup_err(R, n, rep)``); the analysis adds the fits
# and the ``theory_*`` predictions on the same coordinates.
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; sup_err {dict(ds['sup_err'].sizes)}")
print(ds[["fit_slope", "fit_slope_se", "C", "C_se", "theory_C_limit"]].to_dataframe().round(3))

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
# :func:`studies.reanalyze.reanalyze` runs the study's own ``analyze`` on the stored data and
# parameters; :func:`studies.reanalyze.compare` checks the result against the stored claims.
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="convergence"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.convergence.draw` reads the store and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.convergence import draw

for png in draw(store, tmp / "convergence.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
