"""Figures of the random-feature attention study, drawn from a --quick store."""
from __future__ import annotations

import inspect

import matplotlib.image as mpimg
import pytest
import xarray as xr

from paper_figs import random_features as figs

GROUPS = ("kernel", "rate", "families", "N", "bias")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from studies import random_features as study

    out = tmp_path_factory.mktemp("rffig") / "rf.zarr"
    assert study.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_draws_one_figure_per_group(store, tmp_path):
    paths = figs.draw(store, tmp_path / "fig")
    assert [p.name for p in paths] == [f"fig_{g}.png" for g in GROUPS]
    for p in paths:
        img = mpimg.imread(p)
        assert img.shape[0] > 400 and img.shape[1] > 800
        assert img[..., :3].std() > 0.05  # not a blank canvas
    assert figs.available_groups(store) == list(GROUPS)


def test_subset_and_pdf(store, tmp_path):
    paths = figs.draw(store, tmp_path / "panel.pdf", groups=["bias", "N"])
    assert [p.name for p in paths] == ["panel_bias.pdf", "panel_N.pdf"]
    assert all(p.stat().st_size > 5_000 for p in paths)


def test_cli_and_errors(store, tmp_path, capsys):
    assert figs.main([str(store), "--out", str(tmp_path / "c"), "--groups", "kernel"]) == 0
    assert (tmp_path / "c_kernel.png").exists()
    assert figs.main([str(tmp_path / "missing.zarr")]) == 2
    assert figs.main([str(store), "--groups", "nope"]) == 2
    raw = tmp_path / "raw.zarr"
    xr.Dataset({"rel_err": (("r",), [0.5])}, coords={"r": [0.0]}).to_zarr(str(raw / "bias"), mode="w",
                                                                         consolidated=False)
    assert figs.main([str(raw)]) == 2  # no analysis yet
    assert figs.main([str(raw), "--groups", "rate"]) == 2  # group absent
    errs = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errs) == 4 and all(e.startswith("python -m paper_figs.random_features: error:") for e in errs)


def test_reads_only_the_dataset():
    src = inspect.getsource(figs)
    for forbidden in ("from sim", "import sim", "from theory", "import theory", "from studies", "import studies"):
        assert forbidden not in src
