"""
In-context regression (ODE): plateau, drop and drift of the gradient flow
=========================================================================

The ``icl_ode`` study integrates the reduced gradient flow of multi-head attention on in-context
linear regression: the head scales :math:`\\omega_h` and value weights :math:`\\mu_h` only (He,
Pan, Chen, Yang, ICML 2025). From a small antisymmetric start the loss sits on a plateau at
:math:`(1+\\sigma^2)/2`, drops to a floor, then drifts along a valley where :math:`2\\mu\\omega`
tends to the optimal step of debiased gradient descent. This example computes the predicted
plateau exit, floor and limit, runs the ``--quick`` flow, reads the store, re-derives the claims
and draws the figure.
"""

# %%
# The prediction for the quick run
# --------------------------------
# :math:`d = 5`, :math:`L = 40`, :math:`\sigma^2 = 0.1`, start :math:`\omega = \mu = (a, -a)` with
# :math:`a = 10^{-3}`. :func:`theory.icl_regression.plateau_exit_time` linearises the flow around
# the start: the time at which the loss is 5 % below its start, to first and second order.
# :func:`~theory.icl_regression.multihead_loss_limit` is the floor, and
# :func:`~theory.icl_regression.dgd_optimal_step` the limit of :math:`2\mu\omega`.
from theory import icl_regression as th

d, L, sigma2, a = 5, 40, 0.1, 1e-3
t1, t2, _ = th.plateau_exit_time(a, d, L, sigma2, drop=0.05)
print(f"plateau exit: t = {t1:.3f} (first order), {t2:.3f} (second order)")
print(f"loss: plateau {(1 + sigma2) / 2:.4f} -> floor {th.multihead_loss_limit(d, L, sigma2) / 2:.4f}")
print(f"2 mu omega -> {th.dgd_optimal_step(d, L, sigma2):.4f} = 1/(1 + d(1+sigma2)/L)")

# %%
# The quick run
# -------------
# The flow is integrated to :math:`t = 1000` (scipy's LSODA) in this process, into a temporary
# folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="icl-ode-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "icl_ode.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("icl_ode").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# Trajectories of both starts (antisymmetric pair, random four heads), the measured stage times
# beside the predicted ones, and the pair's end point against the valley.
import xarray as xr

ds = xr.open_zarr(store, consolidated=False)
print(f"{len(ds.data_vars)} variables; omega {dict(ds['omega'].sizes)}; starts {ds['init_name'].values}")
print(ds[["stage1_end", "theory_plateau_exit", "stage2_end", "theory_loss_limit"]].to_pandas().to_string())
end = ds.isel(time=-1)
print(f"t = {float(end.time):g}: loss {float(end.loss[0]):.4f}, 2 mu omega {float(end.two_mu_omega):.4f} "
      f"(valley at the reached omega: {float(end.theory_valley_two_mu_omega):.4f})")

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="icl_ode"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.icl.draw` reads the store and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.icl import draw

for png in draw(store, tmp / "icl_ode.png"):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
