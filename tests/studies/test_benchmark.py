"""python -m studies.benchmark: machinery (the targets are measured by the real run)."""
import pytest

from studies import benchmark


def test_attention_suite_quick(tmp_path, capsys):
    out = tmp_path / "b.zarr"
    assert benchmark.main(["--suite", "attention", "--quick", "--out", str(out)]) == 0
    ds = benchmark.open_suite(out, "attention")
    assert set(ds["impl"].values) == {"naive", "stream", "numba"}
    assert (ds["pairs_per_s"] > 0).all() and bool(ds["verdict_agree"])
    for k in ("device", "versions", "numba_threads"):
        assert k in ds.attrs
    assert "numba/naive" in capsys.readouterr().out


def test_unknown_suite(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--suite", "nope", "--out", str(tmp_path / "b.zarr")])
    assert e.value.code == 2 and "unknown suite" in capsys.readouterr().err


def test_gpu_suite_without_gpu_is_a_usage_error(tmp_path, capsys):
    from gpu import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    assert benchmark.main(["--suite", "gpu", "--out", str(tmp_path / "b.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable CUDA GPU" in err


def test_benchmark_figure(tmp_path):
    from paper_figs import benchmark as fig

    out = tmp_path / "b.zarr"
    assert benchmark.main(["--suite", "attention", "--quick", "--out", str(out), "--plot"]) == 0
    png = out.with_suffix(".png")
    assert png.stat().st_size > 10_000
    assert fig.main([str(tmp_path / "missing.zarr")]) == 2
