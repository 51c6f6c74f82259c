"""Plumbing shared by the figure scripts: open a store, save a figure, the command line.

Figures read datasets and nothing else, so this module imports nothing of the workbench.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import xarray as xr

__all__ = ["open_store", "save_figure", "figure_main", "claim_outcomes", "claims_count"]


def claim_outcomes(ds, short: bool = False) -> dict:
    """``{claim key: outcome}`` of the claims stored with a study's analysis (``claim_*``
    variables over the ``claim`` dimension; empty if there are none). ``short`` drops the
    study prefix of the keys (``clt_rate[R=1]`` instead of ``convergence.clt_rate[R=1]``)."""
    if "claim_outcome" not in ds:
        return {}
    keys = [str(k) for k in ds["claim"].values]
    if short:
        keys = [k.split(".", 1)[-1] for k in keys]
    return dict(zip(keys, (str(v) for v in ds["claim_outcome"].values)))


def claims_count(ds) -> str:
    """'N holds, M fails, K not tested' for a figure's caption ('' without claims)."""
    outs = list(claim_outcomes(ds).values())
    return ", ".join(f"{outs.count(k)} {k}" for k in ("holds", "fails", "not tested")) if outs else ""


def open_store(path, group: str | None = None, *, study: str | None = None, needs: str | None = None) -> xr.Dataset:
    """A study's store (or one of its groups) loaded into memory.

    Every failure is a ``ValueError`` with one line that names the store and what is wrong: no
    store there; another study's store (``study`` names the expected one, checked against the
    store's ``study`` attribute); unreadable metadata; a damaged variable (a truncated or
    garbled chunk), with the remedy; no analysis yet (``needs`` names a variable the analysis
    writes)."""
    import json

    where = f"{path}" + (f" (group {group})" if group else "")
    if study is not None:
        owner = _root_study(path).split("/")[0]
        if owner and owner != study and not owner.startswith(study + "_"):
            figure = owner.split("_")[0] if owner.startswith("icl") else owner
            raise ValueError(f"{path} is a store of the {owner} study, not of {study}: draw it with "
                             f"python -m paper_figs.{figure}")
    try:
        ds = xr.open_zarr(str(path), group=group, consolidated=False)
    except FileNotFoundError:
        raise ValueError(f"{where}: no study store there") from None
    except (ValueError, KeyError, OSError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{where}: the store's metadata is unreadable ({type(e).__name__}); rerun the study "
                         "with --overwrite") from None
    with ds:
        if needs is not None and needs not in ds:
            raise ValueError(f"{where} has no analysis yet (its run did not finish); rerun the same command")
        try:
            return ds.load()
        except Exception:  # noqa: BLE001 - a decoding error: find which variable is damaged
            for name in list(ds.variables):
                try:
                    ds[name].load()
                except Exception as e:  # noqa: BLE001
                    raise ValueError(f"{where}: variable {name} is damaged ({type(e).__name__}); rerun the study "
                                     "with --repair to recompute the damaged cells, or --overwrite") from None
            raise


def _root_study(path) -> str:
    try:
        import zarr

        return str(zarr.open_group(str(path), mode="r").attrs.get("study", ""))
    except Exception:  # noqa: BLE001
        return ""


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
