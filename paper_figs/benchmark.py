"""Figure of the benchmark store: ``python -m paper_figs.benchmark results/benchmark.zarr``.

One panel per comparison: every variable ``time_s`` or ``<what>_time_s`` of a suite whose
implementations run along a dimension ``impl`` or ``<what>_impl`` (the contract of
:mod:`studies.benchmark`): the wall time of each implementation, median over any other dimension
with its range as an error bar, log scale, so the ratios the targets speak of read off as
distances. Reads the store and nothing else.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402
import zarr  # noqa: E402


def _groups(store):
    g = zarr.open_group(str(store), mode="r")
    return sorted(name for name, _ in g.groups())


def _comparisons(ds: xr.Dataset):
    """(label, time DataArray, impl dim) of each timed comparison in one suite's dataset."""
    for var in sorted(ds.data_vars):
        if var != "time_s" and not var.endswith("_time_s"):
            continue
        impl = [d for d in ds[var].dims if d == "impl" or d.endswith("_impl")]
        if len(impl) == 1:
            yield var[: -len("_time_s")] if var != "time_s" else "", ds[var], impl[0]


def draw(store, out=None, dpi: int = 150) -> Path:
    names = []
    data = []
    for name in _groups(store):
        with xr.open_zarr(str(store), group=name, consolidated=False) as ds:
            ds = ds.load()
        for what, t, impl in _comparisons(ds):
            other = [d for d in t.dims if d != impl]
            med = t.median(other) if other else t
            lo = t.min(other) if other else t
            hi = t.max(other) if other else t
            names.append((f"{name}: {what.replace('_', ' ')}" if what else name, ds.attrs.get("device", "?")))
            data.append((list(map(str, t[impl].values)), med.values, lo.values, hi.values))
    if not data:
        raise ValueError(f"{store} holds no suite with a time_s(impl, ...) comparison")
    out = Path(out) if out is not None else Path(store).with_suffix(".png")
    sns.set_theme(style="whitegrid", context="paper")
    ncol = min(3, len(data))
    nrow = -(-len(data) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(7.0, 3.6 * ncol + 0.6), 3.6 * nrow), squeeze=False)
    for ax in axes.flat[len(data):]:
        ax.set_visible(False)
    for ax, (name, device), (impls, med, lo, hi) in zip(axes.flat, names, data):
        x = np.arange(len(impls))
        colors = sns.color_palette("crest", len(impls))
        ax.bar(x, med, color=colors, yerr=[med - lo, hi - med], capsize=3)
        ax.set_yscale("log")
        ax.set_xticks(x, impls, rotation=30, ha="right")
        ax.set_ylabel("wall time (s)")
        ax.set_title(f"{name} ({device})", fontsize=9)
        for xi, v, top in zip(x, med, hi):
            ax.text(xi, top * 1.25, f"{med.max() / v:.1f}x", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(lo.min() / 2, hi.max() * 4)
    fig.suptitle("Benchmarks, implementations side by side (label: speed-up over the slowest; "
                 "bar: median over sizes, whiskers: range)", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m paper_figs.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("store", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.store.exists():
        print(f"{p.prog}: error: no store at {args.store}", file=sys.stderr)
        return 2
    try:
        print(f"figure: {draw(args.store, args.out)}")
    except ValueError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
