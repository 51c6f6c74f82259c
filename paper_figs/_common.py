"""Plumbing shared by the figure scripts: open a store, save a figure, the command line.

Figures read datasets and nothing else, so this module imports nothing of the workbench.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import xarray as xr

__all__ = ["open_store", "save_figure", "figure_main"]


def open_store(path, group: str | None = None) -> xr.Dataset:
    """A study's store (or one of its groups) loaded into memory."""
    with xr.open_zarr(str(path), group=group, consolidated=False) as ds:
        return ds.load()


def save_figure(fig, out, dpi: int = 150, **kw) -> Path:
    """Save ``fig`` to ``out`` (parents created) with byte-stable metadata, and close it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"Software": None} if out.suffix == ".png" else {"CreationDate": None}
    fig.savefig(out, dpi=dpi, metadata=meta, **kw)
    plt.close(fig)
    return out


def figure_main(prog: str, doc: str, draw, argv=None, *, study: str) -> int:
    """``python -m paper_figs.<name> STORE [--out FIG]``: draw ``draw(store, out)`` (which
    returns the path, or a list of paths, it wrote); a missing store or a store without the
    study's analysis is a one-line error with exit status 2."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    p.add_argument("store", type=Path, help=f"Zarr store written by python -m studies.{study}")
    p.add_argument("--out", type=Path, default=None, help="figure path (.png or .pdf; default STORE.png)")
    args = p.parse_args(argv)
    if not args.store.exists():
        print(f"{prog}: error: no store at {args.store}", file=sys.stderr)
        return 2
    try:
        paths = draw(args.store, args.out)
    except (ValueError, KeyError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    for path in paths if isinstance(paths, (list, tuple)) else [paths]:
        print(f"figure: {path}")
    return 0
