"""python -m studies.benchmark: machinery (the targets are measured by the real run)."""
import pytest

from studies import benchmark


def test_attention_suite_quick(tmp_path, capsys):
    out = tmp_path / "b.zarr"
    assert benchmark.main(["--suite", "attention", "--quick", "--out", str(out)]) == 0
    ds = benchmark.open_suite(out, "attention")
    ours = {"naive", "stream", "numba", "numba_f32", "generated_f32"}
    try:
        import torch  # noqa: F401  (an optional peer)
        peers = {"torch_sdpa_f32", "torch_sdpa_f64"}
    except ImportError:
        peers = set()
    assert set(ds["impl"].values) == ours | peers
    assert (ds["pairs_per_s"] > 0).all() and bool(ds["verdict_agree"])
    assert ("verdict_vs_torch" in ds) == bool(peers)
    for k in ("device", "versions", "numba_threads", "peers"):
        assert k in ds.attrs
    text = capsys.readouterr().out
    assert "G pairs/s" in text and ("vs-PyTorch target" in text if peers else "PyTorch not installed" in text)


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


def test_every_cpu_suite_has_a_drawn_comparison(tmp_path):
    """Each suite stores its timings under the figure's contract (``time_s`` / ``<what>_time_s``
    along an ``impl`` dimension), so none is silently left out of the figure."""
    import matplotlib.image as mpimg
    import xarray as xr

    from paper_figs import benchmark as fig

    out = tmp_path / "b.zarr"
    suites = [s for s in benchmark.SUITES if s != "gpu"]
    assert benchmark.main(["--suite", ",".join(suites), "--quick", "--out", str(out), "--plot"]) == 0
    n_panels = 0
    for name in suites:
        ds = xr.open_zarr(str(out), group=name, consolidated=False)
        comps = list(fig._comparisons(ds))
        assert comps, f"suite {name} has no time_s(impl) comparison"
        for _, t, impl in comps:
            assert t.sizes[impl] >= 2 and bool((t > 0).all()), name
        n_panels += len(comps)
    assert n_panels >= len(suites)
    h, w = mpimg.imread(out.with_suffix(".png")).shape[:2]
    assert h > 0.5 * w  # more than one row of panels: 3 per row
