"""Figure of the tensor-attention study: drawn from a quick-mode store, all panels or a subset;
the CLI's errors."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from paper_figs import tensor_attention as fig
from studies import tensor_attention as study


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("tafig") / "q.zarr"
    assert study.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_draw_png(store, tmp_path):
    paths = fig.draw(store, tmp_path / "f.png")
    assert paths == [tmp_path / "f.png"]
    png = paths[0]
    assert png.stat().st_size > 20_000
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[1] > img.shape[0] > 300  # a wide multi-panel figure, not an empty canvas
    assert np.std(img[..., :3]) > 0.05


def test_cli(store, tmp_path, capsys):
    assert fig.main([str(store), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").exists()
    assert fig.main([str(tmp_path / "missing.zarr")]) == 2
    assert "no store" in capsys.readouterr().err


def test_store_without_analysis_is_a_clear_error(tmp_path, capsys):
    raw = tmp_path / "raw.zarr"
    xr.Dataset({"x": ("a", np.arange(3.0))}).to_zarr(str(raw), consolidated=False)
    assert fig.main([str(raw)]) == 2
    assert "no analysis" in capsys.readouterr().err


def test_subset_of_parts(tmp_path):
    out = tmp_path / "err.zarr"
    assert study.main(["--parts", "error", "--quick", "--out", str(out), "--no-progress"]) == 0
    [path] = fig.draw(out, tmp_path / "err.pdf")
    assert path.stat().st_size > 5_000 and path.read_bytes()[:4] == b"%PDF"


def test_titles_carry_the_stored_claims(store):
    """The figure reads the claims' outcomes from the store (no recomputation)."""
    ds = fig.open_store(store, "error")
    got = fig._claims(ds)
    assert got["tensor_attention.bound[taylor, k=3]"] == "holds"
    assert fig._claims(ds.drop_vars([v for v in ds.data_vars if v.startswith("claim_")])) == {}
