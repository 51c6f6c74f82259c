"""
Tails: bounded against unbounded tokens
=======================================

The ``tails`` study asks how the constants of the token sample complexity grow with the size of
the tokens (Bohbot et al.). Its store has two groups. ``sup`` holds the uniform constant
:math:`C(R)` against the query radius for Gaussian tokens, tokens on a sphere, and a bounded law
with a rare far atom. ``moments`` holds the moment prefactor :math:`C'` for box-truncated
Gaussians of growing support. This example computes the delta-method predictions for the quick
grids, runs the ``--quick`` study, reads both groups, re-derives the claims and draws the figure.
"""

# %%
# The prediction for the quick grids
# ----------------------------------
# :func:`theory.token_sample.predicted_log_C` is the delta-method :math:`\log C(R)` for each
# law with its own :math:`A`, here at the quick radii 1, 3, 5, 8 and with the quick run's sup
# search. Gaussian tokens grow like :math:`e^{a^2R^2/2}`; the sphere grows polynomially.
# :func:`~theory.token_sample.truncated_moment_prefactors` gives :math:`C'` of the output mean
# and covariance for truncation levels :math:`c = 0.5, 1, 2, 3` (:math:`A = 0.5\,I`, :math:`d = 2`).
import numpy as np

from sim.distributions import make_atom_distribution, make_distribution
from theory import token_sample as ts

laws = {"gaussian": (make_distribution("gaussian", 2), 0.2), "sphere": (make_distribution("sphere", 5), 4.0),
        "atom": (make_atom_distribution(2, eps=1e-4, atom_radius=1.0, bulk="ball", bulk_radius=0.5), 1.0)}
for name, (dist, a) in laws.items():
    A = a * np.eye(dist.dim)
    C = [np.exp(ts.predicted_log_C(dist.law, r, A, np.eye(dist.dim), n_dirs=16, n_shells=4, refine=1))
         for r in (1, 3, 5, 8)]
    print(f"{name:>8}: C(R) at R = 1, 3, 5, 8: " + ", ".join(f"{v:.3g}" for v in C))
for c in (0.5, 1, 2, 3):
    law = ts.TruncatedGaussianLaw(2, 1.0, c)
    mean_c, cov_c = ts.truncated_moment_prefactors(law, 0.5)
    print(f"c = {c}: support radius {law.support_radius:.2f}, C'_mean = {mean_c:.3f}, C'_cov = {cov_c:.4f}")

# %%
# The quick run
# -------------
# The study runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="tails-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "tails.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("tails").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store: one group per experiment
# -----------------------------------
import xarray as xr

sup = xr.open_zarr(store, group="sup", consolidated=False)
print(f"sup: sup_err {dict(sup['sup_err'].sizes)}")
sup = sup.assign(theory_C=np.exp(sup["theory_log_C"]))  # the delta method, stored as log C
print(sup[["C", "C_se", "theory_C"]].to_dataframe().unstack("law").round(3).to_string())
mom = xr.open_zarr(store, group="moments", consolidated=False)
print(mom[["support_radius", "H", "Cprime_mean", "theory_Cprime_mean", "Cprime_cov", "theory_Cprime_cov"]]
      .to_dataframe().round(4).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
# :func:`studies.reanalyze.reanalyze` analyses every group of the store.
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="tails"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.tails.draw` reads both groups and writes one PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.tails import draw

for png in draw(store, tmp / "tails.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
