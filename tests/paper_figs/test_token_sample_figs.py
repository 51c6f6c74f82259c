"""paper_figs/{moments,hardmax,tails}.py draw from a store alone (token-sample part 2)."""
import matplotlib.image as mpimg
import numpy as np
import pytest
import xarray as xr

from paper_figs import hardmax as fig_hardmax
from paper_figs import moments as fig_moments
from paper_figs import tails as fig_tails
from studies import hardmax, moments, tails

TINY = {
    "moments": (moments, fig_moments, ["--quick", "--d", "10", "--n", "100,150,200", "--reps", "3",
                                       "--scales", "0.1,5,50", "--reference", "finite:300"]),
    "hardmax": (hardmax, fig_hardmax, ["--quick", "--n", "100,300,1000", "--lam", "3,30,300", "--reps", "3",
                                       "--queries", "8"]),
    "tails": (tails, fig_tails, ["--quick", "--R", "1,2,4,8", "--n", "2^8,2^9,2^10", "--reps", "3",
                                 "--queries", "8", "--c", "0.5,1,2,4", "--moment-n", "2^6..2^8", "--moment-reps", "3"]),
}


@pytest.fixture(scope="module", params=sorted(TINY))
def store(request, tmp_path_factory):
    study, fig, argv = TINY[request.param]
    out = tmp_path_factory.mktemp(request.param) / f"{request.param}.zarr"
    assert study.main(argv + ["--no-progress", "--out", str(out)]) == 0
    return request.param, fig, out


def test_figure_from_store_png_and_pdf(store, tmp_path, capsys):
    name, fig, out = store
    png = tmp_path / f"{name}.png"
    assert fig.main([str(out), "--out", str(png)]) == 0
    assert str(png) in capsys.readouterr().out
    img = mpimg.imread(png)
    assert img.shape[1] > 600 and img.shape[0] > 300 and np.std(img[..., :3]) > 0.05  # drawn, not blank
    paths = fig.draw(out, tmp_path / f"{name}.pdf")
    assert isinstance(paths, list) and paths[0].read_bytes()[:4] == b"%PDF"


def test_store_without_analysis_is_an_error(store, tmp_path, capsys):
    name, fig, out = store
    raw = tmp_path / "raw.zarr"
    keep = {"moments": "mean_err", "hardmax": "pure_err", "tails": "sup_err"}[name]
    group = "sup" if name == "tails" else None  # tails: one group per part
    with xr.open_zarr(str(out), group=group, consolidated=False) as ds:
        ds[[keep]].load().to_zarr(str(raw), group=group, consolidated=False)
    assert fig.main([str(raw)]) == 2
    assert "no analysis" in capsys.readouterr().err


@pytest.mark.parametrize("fig", [fig_moments, fig_hardmax, fig_tails])
def test_missing_store(fig, tmp_path, capsys):
    assert fig.main([str(tmp_path / "nope.zarr")]) == 2
    assert "no store" in capsys.readouterr().err
