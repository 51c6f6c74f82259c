"""
Token selection: sampling or top-k over m of n keys
===================================================

The ``token_selection`` study asks what sparse attention costs when it keeps only :math:`m = f n`
of :math:`n` keys. The policies are uniform sampling, importance sampling, top-:math:`k`, a
hybrid of the two, vAttention's budget rule and Token Sparse Attention's coverage rule. It sets
each against predictions that extend the token-sample theory. Uniform sampling pays the constant
:math:`B` of the scores' spread :math:`\\sigma`, which grows like :math:`e^{\\sigma^2}`.
Top-:math:`k` pays the weight of the tail it drops. So uniform sampling wins for flat scores and
top-:math:`k` wins for peaked ones, with a crossover at :math:`\\sigma^*(f, n, d)`. This example
computes :math:`B` and :math:`\\sigma^*`, runs the ``--quick`` study (five store groups), reads
the ``phase`` group, re-derives the claims and draws the figures.
"""

# %%
# The prediction for the quick grids
# ----------------------------------
# For isotropic Gaussian keys and :math:`V = I`,
# :func:`theory.token_selection.gaussian_uniform_constant` is
# :math:`B = e^{\sigma^2}(d + \sigma^2)`: uniform sampling's error is about :math:`B/m` (budget
# group, :math:`d = 8`). :func:`~theory.token_selection.crossover_sigma` solves for the spread
# where top-:math:`k` and uniform sampling have equal error, here for the phase group's
# :math:`d = 4` and :math:`n = 2^{12}, 2^{14}` at a few budget fractions :math:`f`.
import numpy as np

from theory import token_selection as tsel

for sigma in (0.25, 0.5, 1.0, 1.5):
    print(f"sigma = {sigma}: B = {float(tsel.gaussian_uniform_constant(np.r_[sigma, np.zeros(7)], np.eye(8))):.2f}")
for n in (2**12, 2**14):
    stars = {k: tsel.crossover_sigma(2.0**-k, n, 4, replace=True) for k in (1, 2, 4, 8)}
    print(f"n = {n}: sigma* = " + ", ".join(f"{s:.3f} at f = 2^-{k}" for k, s in stars.items()))

# %%
# The quick run
# -------------
# The study runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="token-selection-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "token_selection.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("token_selection").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store: the ``phase`` group
# ------------------------------
# Squared errors of both policies per query over :math:`(\sigma, f)`. Below is the measured
# crossover beside the prediction made with the run's own finite-:math:`n` constant
# :math:`B_n` and with the law's :math:`B`; the claim tests the budgets marked ``tested``.
import xarray as xr

ds = xr.open_zarr(store, group="phase", consolidated=False)
print(f"groups: {by_name('token_selection').groups}; phase: uni_err2 {dict(ds['uni_err2'].sizes)}")
cols = ["sigma_star", "sigma_star_se", "theory_sigma_star", "theory_sigma_star_law", "crossover_tested"]
print(ds[cols].isel(d=0, drop=True).to_dataframe().round(3).rename(columns={"crossover_tested": "tested"}).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="token_selection"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figures
# -----------
# :func:`paper_figs.token_selection.draw` writes one PNG for the budget group, one for the phase
# diagram (with vAttention and coverage), and one for MiniLM's heads when that group ran.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.token_selection import draw

for png in draw(store, tmp / "token_selection.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
