"""Figures of the token-selection study: drawn from a small store of every group (the minilm
group where the weights are installed), from a subset of groups, from the store alone; the CLI's
errors."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from paper_figs import token_selection as fig
from studies import token_selection as study

SMALL = ["--n", "2^12", "--sigma", "0.25,0.5,1", "--budgets", "1..6", "--queries", "8", "--reps", "4",
         "--phase-d", "4", "--phase-n", "2^12", "--phase-sigma", "1..2.5:0.25", "--phase-queries", "8",
         "--va-n", "2^12", "--va-sigma", "0.5,1", "--va-queries", "8", "--va-reps", "16",
         "--cov-n", "2^12", "--cov-sigma", "1,3", "--min-keep", "64", "--window", "8",
         "--minilm-sequences", "1", "--minilm-layers", "0", "--minilm-queries", "8", "--minilm-reps", "2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("tsfig") / "s.zarr"
    assert study.main([*SMALL, "--out", str(out), "--no-progress"]) == 0
    return out


def _image(path):
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def test_draw_every_group(store, tmp_path):
    from sim.encoder import encoder_available

    paths = fig.draw(store, tmp_path / "f.png")
    names = [p.name for p in paths]
    want = ["f.png", "f-phase.png"] + (["f-minilm.png"] if encoder_available()[0] else [])
    assert names == want
    for p in paths:
        img = _image(p)
        assert p.stat().st_size > 20_000 and img.shape[0] > 300 and np.std(img[..., :3]) > 0.05
    assert _image(paths[1]).shape[1] > 1500  # three panels: the phase diagram, vAttention, the coverage rule


def test_subset_of_groups(tmp_path):
    out = tmp_path / "b.zarr"
    assert study.main([*SMALL, "--parts", "budget", "--out", str(out), "--no-progress"]) == 0
    [path] = fig.draw(out, tmp_path / "b.pdf")
    assert path.stat().st_size > 5_000 and path.read_bytes()[:4] == b"%PDF"


def test_figure_reads_the_store_alone():
    """paper_figs imports nothing of the workbench: the figure module's imports are the
    plotting libraries and paper_figs._common only."""
    tree = ast.parse(Path(fig.__file__).read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in mods if m and m.split(".")[0] in ("studies", "sim", "theory", "gpu")}, mods


def test_predicted_curves_come_from_the_store(store):
    """The drawn predictions are stored theory variables: top-k's predicted curve for Gaussian keys
    is the analysis' theory_topk_mse, NaN for the other laws (no closed form drawn)."""
    ds = fig._open(store, "budget", "mse")
    th = ds["theory_topk_mse"]
    laws = [str(v) for v in ds["law"].values]
    assert np.isfinite(th.sel(law="gaussian")).all()
    assert all(np.isnan(th.sel(law=law)).all() for law in laws if law != "gaussian")
    ph = fig._open(store, "phase", "log_ratio")
    assert ph["crossover_tested"].any() and np.isfinite(ph["theory_sigma_star"]).all()


def test_cli_and_errors(store, tmp_path, capsys):
    assert fig.main([str(store), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").exists()
    assert fig.main([str(tmp_path / "missing.zarr")]) == 2
    assert "no store" in capsys.readouterr().err
    raw = tmp_path / "raw.zarr"
    xr.Dataset({"x": ("a", np.arange(3.0))}).to_zarr(str(raw), consolidated=False)
    assert fig.main([str(raw)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no token_selection groups" in err
