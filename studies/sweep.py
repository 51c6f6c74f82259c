"""Sweeps: a grid of cells, one seed per cell, any executor, a resumable Zarr store.

A study describes its sweep as a :class:`Sweep`:

* ``cell_dims`` -- the dimensions iterated over, e.g. ``{"n": [...], "rep": [0..63]}``; a cell
  is one point of their product, with a grid index such as ``(3, 17)``;
* ``variables`` -- per-cell outputs ``name -> dims`` (dims must include every cell dim; the
  others, e.g. ``R``, are filled whole by one cell), with coordinates in ``coords``;
* ``run_cell(cell) -> {name: array}`` -- a *picklable* function (module level, or a
  ``functools.partial`` of one) returning, for each variable, an array shaped by its non-cell
  dims in order.

Seeds: cell ``index`` draws from ``SeedSequence(root_seed, spawn_key=index)``, so its numbers
do not depend on execution order, worker count or resumption.

Storage (``results/<study>.zarr``, :class:`SweepStore`): the first run writes a template (NaN
data, ``done`` all False, chunk size 1 along every cell dim) with the provenance attributes;
each finished cell is written into its own chunks, data first and ``done`` last, so a killed
run leaves only whole cells behind and a rerun computes exactly the missing ones. An existing
store is resumed only if its identity (:func:`studies.store.identity`) equals the new run's;
otherwise the run stops with a message (or replaces it with ``overwrite=True``). One run writes
a store at a time (:func:`studies.lock.store_lock`, held by :func:`run_sweep`).

Damage: every run starts by checking each part of the store it relies on (:meth:`SweepStore.pending`):
the metadata of every array, the coordinates, ``done``, the raw variables and ``wall_s`` of the
finished cells, and the arrays of the previous analysis. A part that cannot be read is a
one-line :class:`StoreDamaged` naming it, or with ``repair`` it is restored from what can be
recomputed: array metadata from a template (the chunks are kept), coordinates from the run's
parameters, ``done`` from the data, damaged cells (data or timing) by computing them again,
the analysis by deriving it again. The root identity and provenance are always kept, and a
``repairs`` attribute says what was repaired.

Executors (:mod:`studies.executors`): every executor runs the same task,
:func:`compute_and_store`: the process that computes a cell also writes it (each cell owns its
chunks, so concurrent writers never collide), and the driver only tracks completion.

The store and executor pieces live in :mod:`studies.store`, :mod:`studies.lock` and
:mod:`studies.executors`; their names are re-exported here.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import xarray as xr

from studies.executors import SerialExecutor, make_executor, numba_features  # noqa: F401 - re-exported
from studies.lock import StoreBusy, store_lock
from studies.store import (  # noqa: F401 - re-exported: studies import these from here
    _OPEN_GROUPS, IDENTITY_KEYS, SCHEMA_VERSION, StoreDamaged, StoreMismatch, StoreSpec, _git_info, _json_default,
    _versions, close_io, consolidate, copy_array_metadata, damaged, drop_array, forget_group, identity, is_store,
    note_repair, open_group, open_result, open_store, provenance, raw_dims, replace_group, store_attrs, str_coord,
    write_analysis)

__all__ = [
    "Cell", "Sweep", "StoreMismatch", "StoreDamaged", "StoreBusy", "consolidate", "SweepStore", "CellWriter",
    "compute_and_store", "SerialExecutor", "make_executor", "cell_seed", "run_sweep", "provenance",
    "write_analysis", "open_result", "str_coord", "store_lock", "StoreSpec", "open_store", "open_group",
    "replace_group", "store_attrs",
]


def cell_seed(root_seed: int, index: tuple[int, ...]) -> np.random.SeedSequence:
    """The seed of the cell at grid ``index``: ``SeedSequence(root_seed, spawn_key=index)``."""
    return np.random.SeedSequence(int(root_seed), spawn_key=tuple(int(i) for i in index))


@dataclass(frozen=True)
class Cell:
    index: tuple[int, ...]
    coords: dict
    seed: np.random.SeedSequence


@dataclass
class Sweep:
    study: str
    cell_dims: dict[str, Any]
    variables: dict[str, tuple[str, ...]]
    coords: dict[str, Any]
    params: dict
    run_cell: Callable[[Cell], Mapping[str, Any]]
    root_seed: int = 0
    attrs: dict = field(default_factory=dict)
    var_attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.cell_dims = {k: np.asarray(v) for k, v in self.cell_dims.items()}
        self.coords = {**{k: np.asarray(v) for k, v in self.coords.items()}, **self.cell_dims}
        for name, dims in self.variables.items():
            missing = set(self.cell_dims) - set(dims)
            if missing:
                raise ValueError(f"variable {name} lacks cell dims {sorted(missing)}")
            unknown = set(dims) - set(self.coords)
            if unknown:
                raise ValueError(f"variable {name} has dims without coordinates: {sorted(unknown)}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.cell_dims.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the sweep's raw data (float64), the size of its template and of the dataset
        a finished run loads."""
        return int(sum(8 * np.prod([len(self.coords[d]) for d in dims]) for dims in self.variables.values())
                   + 16 * np.prod(self.shape))

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=_json_default)

    @property
    def layout_json(self) -> str:
        """The store layout: variables with their dims, and the cell dims. Part of the identity
        of a store, so a changed layout never resumes into an old store."""
        return json.dumps({"variables": {k: list(v) for k, v in self.variables.items()},
                           "cell_dims": list(self.cell_dims)}, sort_keys=True)

    def cells(self, indices: Iterable[tuple[int, ...]] | None = None) -> list[Cell]:
        if indices is None:
            indices = itertools.product(*(range(n) for n in self.shape))
        names = list(self.cell_dims)
        out = []
        for idx in indices:
            idx = tuple(int(i) for i in idx)
            coords = {}
            for k, i in zip(names, idx):
                v = self.cell_dims[k][i]
                coords[k] = v.item() if hasattr(v, "item") else v  # numpy scalar, or str/object

            out.append(Cell(idx, coords, cell_seed(self.root_seed, idx)))
        return out

    def template(self, names: Iterable[str] | None = None) -> xr.Dataset:
        """The empty store: NaN data, ``done`` all False, ``wall_s`` NaN, the coordinates and the
        provenance. ``names``: only those arrays (variables and coordinates), for repairs."""
        cdims = tuple(self.cell_dims)
        layout = {**self.variables, "done": cdims, "wall_s": cdims}
        want = set(layout) | set(self.coords) if names is None else set(names)
        data = {}
        for name, dims in self.variables.items():
            if name in want:
                shape = tuple(len(self.coords[d]) for d in dims)
                data[name] = (dims, np.full(shape, np.nan), self.var_attrs.get(name, {}))
        if "done" in want:
            data["done"] = (cdims, np.zeros(self.shape, dtype=bool), {"description": "cell finished and written"})
        if "wall_s" in want:
            data["wall_s"] = (cdims, np.full(self.shape, np.nan),
                              {"units": "s", "description": "wall time of the cell"})
        used = {d for dims in layout.values() for d in dims}
        coords = {k: v for k, v in self.coords.items()
                  if k in used and (names is None or k in want or any(k in layout[n] for n in data))}
        ds = xr.Dataset(data, coords=coords)
        ds.attrs.update(provenance(self))
        return ds

    def encoding(self, ds: xr.Dataset) -> dict:
        """Chunks of one cell: size 1 along every cell dim, whole along the others."""
        layout = {**self.variables, "done": tuple(self.cell_dims), "wall_s": tuple(self.cell_dims)}
        return {name: {"chunks": tuple(1 if d in self.cell_dims else ds.sizes[d] for d in layout[name])}
                for name in ds.data_vars if name in layout}


def _same_values(stored, wanted) -> bool:
    """A stored coordinate equals the run's (NaN equal to NaN; strings compared as text)."""
    a, b = np.asarray(stored), np.asarray(wanted)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fciu":
        return bool(np.array_equal(a, b, equal_nan=True))
    return a.tolist() == b.tolist()


REMEDY = {"done": "restore it from the data", "wall_s": "time the damaged cells again (they are recomputed)"}


class SweepStore:
    """The Zarr store of one sweep (template, cell writes, resume bookkeeping, repairs)."""

    is_store = staticmethod(is_store)

    def __init__(self, path: Path, sweep: Sweep):
        self.path = Path(path)
        self.sweep = sweep
        self._group = None
        self.recomputed = 0
        self.repaired: list[str] = []

    def _create(self, path) -> None:
        ds = self.sweep.template()
        ds.to_zarr(str(path), mode="w", consolidated=False, encoding=self.sweep.encoding(ds))

    def open(self, overwrite: bool = False, repair: bool = False) -> "SweepStore":
        open_store(self.path, self.sweep, self._create, overwrite=overwrite, repair=repair)
        self._reopen()
        return self

    def _reopen(self) -> None:
        import zarr

        forget_group(self.path)
        self._group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)

    @property
    def _cdims(self) -> tuple:
        return tuple(self.sweep.cell_dims)

    def _raw(self) -> dict:
        return {**self.sweep.variables, "wall_s": self._cdims}

    def _coords(self) -> list[str]:
        used = {d for dims in self.sweep.variables.values() for d in dims} | set(self._cdims)
        return [c for c in self.sweep.coords if c in used]

    def pending(self, repair: bool = False) -> list[tuple[int, ...]]:
        """The cells still to compute: those not marked done, and those marked done whose data
        or timing is missing or not finite (a deleted chunk reads as NaN) -- those are unmarked
        and counted in :attr:`recomputed`, so a damaged store never reaches an analysis.

        A part that cannot be read at all (a truncated chunk of a finished cell, garbled array
        metadata, a wrong coordinate, an unreadable analysis array) raises :class:`StoreDamaged`
        naming it, unless ``repair`` is set: then it is restored (module docstring) and
        :attr:`repaired` lists what was done (also recorded in the ``repairs`` attribute)."""
        self.recomputed = 0
        self.repaired = []
        self._check_layout(repair)
        self._check_analysis(repair)
        done, unknown = self._read_done(repair)
        ok = np.ones(self.sweep.shape, dtype=bool)
        for name, dims in self._raw().items():
            ok &= self._cells_ok(name, dims, done | unknown, repair)
        bad = done & ~ok
        self.recomputed = int(bad.sum())
        g = self._group
        for idx in zip(*np.nonzero(bad | (unknown & ~ok))):
            g["done"][tuple(int(i) for i in idx)] = False
        inferred = unknown & ok
        for idx in zip(*np.nonzero(inferred)):
            g["done"][tuple(int(i) for i in idx)] = True
        if unknown.any():
            self.repaired.append(f"done: {int(unknown.sum())} unreadable chunk(s) restored from the data "
                                 f"({int(inferred.sum())} finished, {int((unknown & ~ok).sum())} to compute)")
        done = (done & ok) | inferred
        if self.repaired:
            note_repair(self.path, "; ".join(self.repaired))
        return [tuple(int(i) for i in idx) for idx in zip(*np.nonzero(~done))]

    def _damage(self, name, e, remedy=None) -> StoreDamaged:
        return damaged(self.path, name, e, remedy or REMEDY.get(name, "recompute the damaged cells"))

    def _check_layout(self, repair: bool) -> None:
        """Metadata of every raw array and the values of the coordinates."""
        g = self._group
        arrays = [*self.sweep.variables, "done", "wall_s"]
        bad_meta, bad_coord = {}, {}
        for name in arrays + self._coords():
            try:
                arr = g[name]
            except Exception as e:  # noqa: BLE001 - unreadable or missing metadata
                (bad_coord if name in self.sweep.coords else bad_meta)[name] = e
                continue
            if name in self.sweep.coords:
                try:
                    same = _same_values(arr[...], self.sweep.coords[name])
                except Exception as e:  # noqa: BLE001
                    bad_coord[name] = e
                    continue
                if not same:
                    bad_coord[name] = "values differ from the run's parameters"
        if not (bad_meta or bad_coord):
            return
        if not repair:
            name, e = next(iter({**bad_meta, **bad_coord}.items()))
            raise self._damage(name, e, "rewrite it from the run's parameters" if name in bad_coord else None)
        tmp = self.path.parent / f".{self.path.name}.repair{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            ds = self.sweep.template([*bad_meta, *bad_coord])
            ds.to_zarr(str(tmp), mode="w", consolidated=False, encoding=self.sweep.encoding(ds))
            for name in bad_meta:
                copy_array_metadata(tmp, self.path, name)
            for name in bad_coord:
                shutil.rmtree(self.path / name, ignore_errors=True)
                shutil.copytree(tmp / name, self.path / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if bad_meta:
            self.repaired.append(f"metadata of {', '.join(bad_meta)} rewritten (chunks kept)")
        if bad_coord:
            self.repaired.append(f"coordinate(s) {', '.join(bad_coord)} rewritten from the run's parameters")
        self._reopen()

    def _check_analysis(self, repair: bool) -> None:
        """The arrays of the previous analysis: readable, or removed (every run derives the
        analysis again)."""
        from studies.store import array_dirs, unreadable_arrays

        raw = set(self._raw()) | {"done"} | set(self._coords())
        others = [name for name in array_dirs(self.path) if name not in raw]
        bad = unreadable_arrays(self.path, others) if others else {}
        if not bad:
            return
        if not repair:
            name, e = next(iter(bad.items()))
            raise self._damage(name, e, "derive the analysis again from the data")
        for name in bad:
            drop_array(self._group, self.path, name)
        self.repaired.append(f"analysis variable(s) {', '.join(bad)} removed, derived again from the data")
        self._reopen()

    def _read_done(self, repair: bool) -> tuple[np.ndarray, np.ndarray]:
        """``done`` over the cell grid, and the cells whose ``done`` chunk is unreadable."""
        shape = self.sweep.shape
        unknown = np.zeros(shape, dtype=bool)
        try:
            return np.asarray(self._group["done"][...], dtype=bool).reshape(shape), unknown
        except Exception as e:  # noqa: BLE001 - any read error is damage
            if not repair:
                raise self._damage("done", e) from None
        done = np.zeros(shape, dtype=bool)
        arr = self._group["done"]
        for idx in np.ndindex(*shape):
            try:
                done[idx] = bool(arr[idx])
            except Exception:  # noqa: BLE001 - this cell's chunk: restored from its data
                unknown[idx] = True
        return done, unknown

    def _cells_ok(self, name, dims, finished, repair) -> np.ndarray:
        """Boolean over the cell grid: the cell's values of ``name`` are present and finite
        (checked for the ``finished`` cells; a damaged chunk of an unfinished cell is simply
        written over when the cell is computed)."""
        cdims = list(self._cdims)
        try:
            arr = np.asarray(self._group[name][...], dtype=float)
        except Exception as e:  # noqa: BLE001
            return self._cells_ok_one_by_one(name, dims, finished, repair, e)
        fin = np.isfinite(arr)
        other = tuple(i for i, d in enumerate(dims) if d not in cdims)
        ok = fin.all(axis=other) if other else fin
        kept = [d for d in dims if d in cdims]
        return np.transpose(ok, [kept.index(d) for d in cdims])

    def _cells_ok_one_by_one(self, name, dims, finished, repair, error) -> np.ndarray:
        arr = self._group[name]
        ok = np.zeros(self.sweep.shape, dtype=bool)
        pos = {d: i for i, d in enumerate(self._cdims)}
        lost = []
        for idx in zip(*np.nonzero(finished)):
            region = tuple(int(idx[pos[d]]) if d in pos else slice(None) for d in dims)
            try:
                ok[idx] = bool(np.all(np.isfinite(np.asarray(arr[region], dtype=float))))
            except Exception:  # noqa: BLE001 - a damaged chunk of a finished cell
                lost.append(region)
        if lost and not repair:
            raise self._damage(name, error)
        for region in lost:
            arr[region] = np.nan  # a fresh chunk; the cell is computed again
        if lost:
            self.repaired.append(f"{name}: {len(lost)} damaged chunk(s) of finished cells reset and computed again")
        return ok

    def writer(self) -> "CellWriter":
        return CellWriter(str(self.path), dict(self.sweep.variables), self._cdims)

    def write_cell(self, index: tuple[int, ...], result: Mapping[str, Any], wall_s: float) -> None:
        self.writer().write(index, result, wall_s)

    def load(self) -> xr.Dataset:
        return open_result(self.path)


@dataclass(frozen=True)
class CellWriter:
    """Writes one cell's results into the store, from whichever process computed it (the
    driver, a pool worker, a Dask worker): every cell owns its own chunks, so concurrent
    writers never touch the same chunk. Picklable: it carries a path, not an open store."""

    path: str
    variables: dict
    cell_dims: tuple

    def _group(self):
        import zarr

        g = _OPEN_GROUPS.get(self.path)
        if g is None:
            g = _OPEN_GROUPS[self.path] = zarr.open_group(self.path, mode="r+", use_consolidated=False)
        return g

    def write(self, index: tuple[int, ...], result: Mapping[str, Any], wall_s: float) -> None:
        pos = dict(zip(self.cell_dims, index))
        arrays = {}
        for name, dims in self.variables.items():  # validate everything before writing anything
            if name not in result:
                raise KeyError(f"cell {index} returned no {name!r}")
            value = np.asarray(result[name], dtype=float)
            if not np.all(np.isfinite(value)):
                raise FloatingPointError(f"cell {index}: non-finite values in {name!r}")
            arrays[name] = (tuple(pos[d] if d in pos else slice(None) for d in dims), value)
        g = self._group()
        for name, (region, value) in arrays.items():
            g[name][region] = value
        g["wall_s"][index] = float(wall_s)
        g["done"][index] = True  # last: a cell counts only once all of it is written


def compute_and_store(run_cell, writer: CellWriter, cell: Cell) -> tuple[tuple[int, ...], float]:
    """The task every executor runs: compute one cell, write it into the store, report timing."""
    t0 = time.perf_counter()
    out = run_cell(cell)
    wall = time.perf_counter() - t0
    writer.write(cell.index, out, wall)
    return cell.index, wall


def run_sweep(sweep: Sweep, path, *, workers: int = 1, scheduler: str | None = None,
              dask_local: int | None = None, executor: cf.Executor | None = None,
              overwrite: bool = False, progress: bool = True, repair: bool = False,
              wait: bool = True) -> tuple[xr.Dataset, dict]:
    """Run every pending cell of ``sweep`` into the store at ``path``; return the dataset and
    a summary ``{"cells": total, "computed": k, "resumed": j, "wall_s": t}``.

    Holds the store's writer lock throughout (:func:`studies.lock.store_lock`; ``wait`` False:
    :class:`StoreBusy` at once when another run holds it). Cells marked done whose data is
    missing or not finite are recomputed (and said so); a damaged store is a
    :class:`StoreDamaged` error unless ``repair`` (see :meth:`SweepStore.pending`).

    The executor (see :func:`make_executor`, or pass one) runs :func:`compute_and_store` on each
    cell, so the cell is written by the process that computed it; the driver only submits a
    bounded window of cells, waits, and advances the progress bar. A cell whose task fails or
    is lost (a killed worker) stays ``done = False`` and is computed by the next run.
    """
    with store_lock(path, wait=wait):
        return _run_locked(sweep, path, workers, scheduler, dask_local, executor, overwrite, progress, repair)


def _run_locked(sweep, path, workers, scheduler, dask_local, executor, overwrite, progress, repair):
    from tqdm.auto import tqdm

    store = SweepStore(path, sweep).open(overwrite=overwrite, repair=repair)
    writer = store.writer()
    pending = store.pending(repair=repair)
    if store.repaired:
        print(f"{path}: repaired: {'; '.join(store.repaired)}", file=sys.stderr, flush=True)
    if store.recomputed:
        print(f"{path}: {store.recomputed} finished cell(s) had missing or unreadable data; recomputing them",
              file=sys.stderr, flush=True)
    total = int(np.prod(sweep.shape))
    t0 = time.perf_counter()
    cells = sweep.cells(pending)
    bar = tqdm(total=total, initial=total - len(cells), desc=sweep.study, unit="cell",
               disable=None if progress else True, leave=False)
    parallel = executor is not None or scheduler is not None or dask_local or workers > 1
    window = max(2, 2 * max(workers, dask_local or 1, 8 if (executor or scheduler) else 1)) if parallel else 1
    ctx = (contextlib.nullcontext(executor) if executor is not None
           else make_executor(workers, scheduler, dask_local))
    todo = iter(cells)
    try:
        with ctx as ex:
            inflight: dict = {}
            try:
                while True:
                    while len(inflight) < window:
                        c = next(todo, None)
                        if c is None:
                            break
                        inflight[ex.submit(compute_and_store, sweep.run_cell, writer, c)] = c
                    if not inflight:
                        break
                    finished, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        inflight.pop(fut)
                        fut.result()
                        bar.update(1)
            except BaseException:
                for f in inflight:
                    f.cancel()
                raise
    finally:
        bar.close()
    summary = {"cells": total, "computed": len(cells), "resumed": total - len(cells),
               "wall_s": time.perf_counter() - t0}
    consolidate(path)
    return store.load(), summary
