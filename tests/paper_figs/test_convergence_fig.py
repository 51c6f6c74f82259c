"""paper_figs/convergence.py draws from a store alone."""
import numpy as np

from paper_figs import convergence as fig
from studies import convergence


def test_figure_from_store(tmp_path, capsys):
    out = tmp_path / "c.zarr"
    assert convergence.main(["--R", "1,2,6", "--quick", "--no-progress", "--out", str(out)]) == 0
    png = tmp_path / "fig.png"
    assert fig.main([str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    [pdf] = fig.draw(out, tmp_path / "fig.pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[1] > img.shape[0] > 300 and np.std(img[..., :3]) > 0.05  # two panels, not blank


def test_missing_or_unfinished_store(tmp_path, capsys):
    assert fig.main([str(tmp_path / "nope.zarr")]) == 2
    assert "no store" in capsys.readouterr().err
