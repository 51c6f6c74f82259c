"""
Random features: what one attention layer learns, against an MLP
================================================================

The ``random_features`` study fits a single random-feature attention layer (frozen random
query-key matrices, trained values) and a random-feature MLP with the same number of trained
parameters to target functions of a query and :math:`N` keys (Fu, Guo, Bai, Mei, NeurIPS 2023).
For targets in the attention class the theory predicts how many more samples the MLP needs to
reach the same error. This example computes that ratio for the quick run's targets, runs the
``--quick`` study (five store groups), reads the ``families`` group, re-derives every claim and
draws the families figure.
"""

# %%
# The prediction for the quick run
# --------------------------------
# The quick run uses :math:`d = 6` and :math:`N = 4` keys with the study's default conventions
# (ReLU features, inputs and values augmented by a constant coordinate), passed explicitly here.
# :func:`theory.random_features.sample_complexity_ratio` is
# :math:`B_{\mathrm{mlp}} R_{\mathrm{mlp}}^2 / (B_{\mathrm{rfa}} R_{\mathrm{rfa}}^2)`, the
# predicted ratio of sample sizes; :func:`~theory.random_features.in_attention_class` says
# whether attention can learn the target at all (never the key-key control).
from sim.random_features import parse_target
from theory import random_features as rft

d, N, conv = 6, 4, {"activation": "relu", "augment": True, "value": "augmented"}
for target in ("keys1", "keys2", "keys3", "pair1", "pair2", "attn", "keykey"):
    family, p = parse_target(target)
    in_class = rft.in_attention_class(family, p, d, **conv)
    exact = family in ("keys", "pair")  # the targets with closed-form complexities here
    ratio = f"{rft.sample_complexity_ratio(family, p, d, N, **conv):8.3g}" if exact else "no closed form"
    print(f"{target:>6}: in the attention class: {in_class!s:5}  n_mlp / n_rfa = {ratio}")

# %%
# The quick run
# -------------
# The study runs in this process into a temporary folder; its printed tables are set aside.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="random-features-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "random_features.zarr"
with contextlib.redirect_stdout(io.StringIO()) as log:
    assert by_name("random_features").main(["--quick", "--no-progress", "--out", str(store)]) == 0
print(log.getvalue().strip().splitlines()[-1])

# %%
# The store: the ``families`` group
# ---------------------------------
# Relative test errors per target, training size, model and replicate; below, their means at
# the largest :math:`n`, and the predicted ratios stored beside them.
import xarray as xr

ds = xr.open_zarr(store, group="families", consolidated=False)
print(f"groups: {by_name('random_features').groups}; families: rel_err {dict(ds['rel_err'].sizes)}")
print(ds["mean_rel_err"].isel(n=-1).to_pandas().round(3).to_string())
print(ds["theory_n_ratio"].to_pandas().round(2).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
# Every group is analysed again. At quick sizes most claims are "not tested", each with the
# reason (the grid is too small to resolve what the claim tests).
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

table, claims = reanalyze(store)
print(format_claims(claims, title="random_features"))
print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure of the ``families`` group
# ------------------------------------
# :func:`paper_figs.random_features.draw` writes one PNG per group (``groups`` picks them).
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.random_features import draw

for png in draw(store, tmp / "random_features.png", groups=["families"]):
    img = imread(png)
    fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
    fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
plt.show()
