"""Sweeps: a grid of cells, one seed per cell, any executor, a resumable Zarr store.

A study describes its sweep as a :class:`Sweep`:

* ``cell_dims`` — the dimensions iterated over, e.g. ``{"n": [...], "rep": [0..63]}``; a cell
  is one point of their product, with a grid index such as ``(3, 17)``;
* ``variables`` — per-cell outputs ``name -> dims`` (dims must include every cell dim; the
  others, e.g. ``R``, are filled whole by one cell), with coordinates in ``coords``;
* ``run_cell(cell) -> {name: array}`` — a *picklable* function (module level, or a
  ``functools.partial`` of one) returning, for each variable, an array shaped by its non-cell
  dims in order.

Seeds: cell ``index`` draws from ``SeedSequence(root_seed, spawn_key=index)``, so its numbers
do not depend on execution order, worker count or resumption.

Storage (``results/<study>.zarr``): the first run writes a template (NaN data, ``done`` all
False, chunk size 1 along every cell dim) with the provenance attributes; each finished cell
is written into its own chunks, data first and ``done`` last, so a killed run leaves only whole
cells behind and a rerun computes exactly the missing ones. An existing store is resumed only
if its study, ``params_json``, root seed, variable layout and ``schema_version`` equal the new
run's; otherwise the run stops with
a message (or replaces it with ``overwrite=True``). Cells are written by the process that computed them.

Executors: anything with the ``concurrent.futures.Executor`` interface. ``make_executor``
gives an in-process serial executor (``workers=1``; plain tracebacks), a local process pool
(``workers>1``), a Dask ``LocalCluster`` (``dask_local=N``) or an existing Dask cluster
(``scheduler=ADDRESS``, ``Client(address).get_executor()``). Every executor runs the same task,
:func:`compute_and_store`: the process that computes a cell also writes it (each cell owns its
chunks, so concurrent writers never collide), and the driver only tracks completion.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import xarray as xr

__all__ = [
    "Cell",
    "Sweep",
    "StoreMismatch",
    "StoreDamaged",
    "consolidate",
    "SweepStore",
    "CellWriter",
    "compute_and_store",
    "SerialExecutor",
    "make_executor",
    "cell_seed",
    "run_sweep",
    "provenance",
    "write_analysis",
    "open_result",
    "str_coord",
]

SCHEMA_VERSION = 2  # 2: verdicts are claims (studies/claims.py)


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

    def template(self) -> xr.Dataset:
        data = {}
        for name, dims in self.variables.items():
            shape = tuple(len(self.coords[d]) for d in dims)
            data[name] = (dims, np.full(shape, np.nan), self.var_attrs.get(name, {}))
        cdims = tuple(self.cell_dims)
        data["done"] = (cdims, np.zeros(self.shape, dtype=bool),
                        {"description": "cell finished and written"})
        data["wall_s"] = (cdims, np.full(self.shape, np.nan),
                          {"units": "s", "description": "wall time of the cell"})
        used = {d for dims in self.variables.values() for d in dims} | set(cdims)
        coords = {k: v for k, v in self.coords.items() if k in used}
        ds = xr.Dataset(data, coords=coords)
        ds.attrs.update(provenance(self))
        return ds


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _git_info() -> tuple[str, bool]:
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=here, capture_output=True, text=True, timeout=5).stdout.strip())
        return sha or "unknown", dirty
    except Exception:
        return "unknown", False


def _versions() -> str:
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "numba", "xarray", "zarr", "sympy", "cupy-cuda13x", "dask"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return json.dumps(out, sort_keys=True)


def provenance(sweep) -> dict:
    """The one provenance writer: flat attributes (str/int/float only, so a netCDF export works
    as is) of a :class:`Sweep` or a :class:`StoreSpec` -- its identity (:func:`identity`),
    seed policy, package versions, git commit, host, time, command line and its own attrs."""
    sha, dirty = _git_info()
    policy = getattr(sweep, "seed_policy", None) or (
        "cell seed = SeedSequence(root_seed, spawn_key=cell grid index); "
        f"cell dims {list(getattr(sweep, 'cell_dims', []))}")
    return {
        **identity(sweep),
        "seed_policy": policy,
        "versions": _versions(),
        "git_sha": sha,
        "git_dirty": int(dirty),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cli": " ".join(sys.argv),
        **{k: (json.dumps(v, default=_json_default) if isinstance(v, (dict, list, tuple)) else v)
           for k, v in sweep.attrs.items()},
    }


class StoreMismatch(Exception):
    """The store at the output path holds a different run."""


class StoreDamaged(StoreMismatch):
    """The store's data or metadata cannot be read (a truncated chunk, garbled metadata); the
    message names the store and the variable and gives the remedy (``--repair``,
    ``--overwrite``)."""


IDENTITY_KEYS = ("study", "schema_version", "params_json", "root_seed", "layout_json")


def identity(spec) -> dict:
    """What makes two runs the same run: study, schema version, parameters, root seed and the
    store layout. ``spec`` is a :class:`Sweep` or a :class:`StoreSpec`."""
    return {"study": spec.study, "schema_version": SCHEMA_VERSION, "params_json": spec.params_json,
            "root_seed": str(spec.root_seed), "layout_json": spec.layout_json}


def _same_identity(attrs: Mapping, spec) -> bool:
    want = identity(spec)
    try:
        return all(str(attrs.get(k)) == str(want[k]) for k in IDENTITY_KEYS)
    except Exception:  # noqa: BLE001 - malformed attributes: not the same run
        return False


def store_attrs(path) -> dict | None:
    """The root attributes of the Zarr store at ``path`` (None if there is no store there)."""
    import zarr

    path = Path(path)
    if not SweepStore.is_store(path):
        return None
    try:
        return dict(zarr.open_group(str(path), mode="r", use_consolidated=False).attrs)
    except Exception as e:  # noqa: BLE001 - unreadable root metadata
        raise StoreDamaged(f"{path}: the store's metadata is unreadable ({type(e).__name__}); its run cannot be "
                           "identified: rerun with --overwrite to start again") from None


def open_store(path, spec, create: Callable[[Path], None], *, overwrite: bool = False) -> bool:
    """The one identity check of every study's store: make ``path`` the store of ``spec``.

    * no store there (or an empty directory): ``create(path)`` writes it (it must write the
      provenance attributes, :func:`provenance`), and the call returns True;
    * a store of the same run (:func:`identity`): it is kept, to be resumed (False);
    * a store of another run: :class:`StoreMismatch`, or with ``overwrite`` it is replaced;
    * something that is not a store: :class:`StoreMismatch`.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise StoreMismatch(f"{path} exists and is not a Zarr store")
        attrs = store_attrs(path)
        if attrs is None:
            if any(path.iterdir()):
                raise StoreMismatch(f"{path} is a non-empty directory that is not a Zarr store; "
                                    "choose another --out")
            path.rmdir()
        elif not _same_identity(attrs, spec):
            if not overwrite:
                raise StoreMismatch(
                    f"{path} holds a {attrs.get('study', '?')} run with other parameters or seed; "
                    "pass --overwrite to replace it, or choose another --out")
            shutil.rmtree(path)
    if path.exists():
        return False
    _OPEN_GROUPS.pop(str(path), None)  # a store recreated here must be reopened
    path.parent.mkdir(parents=True, exist_ok=True)
    create(path)
    return True


@dataclass
class StoreSpec:
    """The identity and provenance of a store that is not filled by a :class:`Sweep` (a
    training run, a multi-group root): ``study``, ``params`` (the run's identity), ``root_seed``,
    ``layout`` (the variables it will hold) and extra flat ``attrs``."""

    study: str
    params: dict
    root_seed: int = 0
    layout: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    seed_policy: str = ""

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=_json_default)

    @property
    def layout_json(self) -> str:
        return json.dumps(self.layout, sort_keys=True, default=_json_default)

    def create_empty(self, path) -> None:
        """Write an empty store carrying only the provenance attributes."""
        import zarr

        grp = zarr.open_group(str(path), mode="w")
        grp.attrs.update(provenance(self))


def replace_group(path, group: str, ds: xr.Dataset) -> None:
    """Write ``ds`` as the group ``group`` of the store at ``path``, replacing it whole and
    atomically: written beside it under a temporary name, then renamed over it, so a reader or
    an interrupted writer sees the old group or the new one, never a mixture."""
    path = Path(path)
    target = path / group
    tmp = path / f".{group}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.to_zarr(str(tmp), mode="w", consolidated=False)
    old = path / f".{group}.old{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)
    _OPEN_GROUPS.pop(str(target), None)


def open_group(path, group: str | None = None) -> xr.Dataset | None:
    """A group of a store as an in-memory Dataset (None if it does not exist)."""
    p = Path(path) / group if group else Path(path)
    if not SweepStore.is_store(p):
        return None
    return open_result(p)


class SweepStore:
    """The Zarr store of one sweep (template, cell writes, resume bookkeeping)."""

    def __init__(self, path: Path, sweep: Sweep):
        self.path = Path(path)
        self.sweep = sweep
        self._group = None

    @staticmethod
    def is_store(path: Path) -> bool:
        return (Path(path) / "zarr.json").exists() or (Path(path) / ".zgroup").exists()

    def open(self, overwrite: bool = False) -> "SweepStore":
        import zarr

        sweep = self.sweep

        def create(path):
            ds = sweep.template()
            enc = {}
            for name, dims in sweep.variables.items():
                enc[name] = {"chunks": tuple(1 if d in sweep.cell_dims else len(ds[d]) for d in dims)}
            for name in ("done", "wall_s"):
                enc[name] = {"chunks": tuple(1 for _ in sweep.cell_dims)}
            ds.to_zarr(str(path), mode="w", consolidated=False, encoding=enc)

        open_store(self.path, sweep, create, overwrite=overwrite)
        self._group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        self.recomputed = 0
        return self

    def pending(self, repair: bool = False) -> list[tuple[int, ...]]:
        """The cells still to compute: those not marked done, and those marked done whose data
        is missing or not finite (a deleted chunk reads as NaN) -- those are unmarked and
        counted in :attr:`recomputed`, so a damaged store never reaches an analysis. A chunk or
        array that cannot be read at all (truncated, garbled metadata) raises
        :class:`StoreDamaged` naming the variable, unless ``repair`` is set: then only the
        damaged cells (or, for unreadable metadata, the whole variable) are reset and
        recomputed."""
        g = self._group
        shape = self.sweep.shape
        try:
            done = np.asarray(g["done"][...], dtype=bool).reshape(shape)
        except Exception as e:  # noqa: BLE001 - any read error is damage
            if not repair:
                raise StoreDamaged(self._damage("done", e)) from None
            self._recreate("done")
            done = np.zeros(shape, dtype=bool)
        bad = np.zeros(shape, dtype=bool)
        for name, dims in self.sweep.variables.items():
            bad |= done & ~self._cells_readable(name, dims, done, repair)
        self.recomputed = int(bad.sum())
        if bad.any():
            for idx in zip(*np.nonzero(bad)):
                g["done"][tuple(int(i) for i in idx)] = False
            done &= ~bad
        return [tuple(int(i) for i in idx) for idx in zip(*np.nonzero(~done))]

    def _damage(self, name, e) -> str:
        return (f"{self.path}: variable {name} is damaged ({type(e).__name__}); rerun the same command with "
                "--repair to recompute the damaged cells, or with --overwrite to start again")

    def _cells_readable(self, name, dims, done, repair) -> np.ndarray:
        """Boolean over the cell grid: the cell's values of ``name`` are present and finite."""
        g = self._group
        cdims = list(self.sweep.cell_dims)
        try:
            arr = np.asarray(g[name][...], dtype=float)
        except Exception as e:  # noqa: BLE001
            if not repair:
                raise StoreDamaged(self._damage(name, e)) from None
            return self._repair_cells(name, dims, done)
        fin = np.isfinite(arr)
        other = tuple(i for i, d in enumerate(dims) if d not in cdims)
        ok = fin.all(axis=other) if other else fin
        kept = [d for d in dims if d in cdims]
        return np.transpose(ok, [kept.index(d) for d in cdims])

    def _repair_cells(self, name, dims, done) -> np.ndarray:
        """Reset the unreadable cells of ``name`` (or the whole variable when its metadata is
        unreadable); returns the readable-cells mask."""
        g = self._group
        shape = self.sweep.shape
        try:
            arr = g[name]
        except Exception:  # noqa: BLE001 - unreadable metadata: recreate the variable empty
            self._recreate(name)
            return np.zeros(shape, dtype=bool)
        ok = np.ones(shape, dtype=bool)
        pos = {d: i for i, d in enumerate(self.sweep.cell_dims)}
        for idx in zip(*np.nonzero(done)):
            region = tuple(int(idx[pos[d]]) if d in pos else slice(None) for d in dims)
            try:
                val = np.asarray(arr[region], dtype=float)
                ok[idx] = bool(np.all(np.isfinite(val)))
            except Exception:  # noqa: BLE001 - a damaged chunk: overwrite it whole with NaN
                arr[region] = np.nan
                ok[idx] = False
        return ok

    def _recreate(self, name) -> None:
        """Replace an unreadable array by the template's (NaN data, nothing done)."""
        import zarr

        target = self.path / name
        if target.exists():
            shutil.rmtree(target)
        tmpl = self.sweep.template()[[name]]
        dims = tmpl[name].dims
        enc = {name: {"chunks": tuple(1 if d in self.sweep.cell_dims else tmpl.sizes[d] for d in dims)}}
        tmpl.attrs = {}
        tmpl.to_zarr(str(self.path), mode="a", consolidated=False, encoding=enc)
        _OPEN_GROUPS.pop(str(self.path), None)
        self._group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)

    def writer(self) -> "CellWriter":
        return CellWriter(str(self.path), dict(self.sweep.variables), tuple(self.sweep.cell_dims))

    def write_cell(self, index: tuple[int, ...], result: Mapping[str, Any], wall_s: float) -> None:
        self.writer().write(index, result, wall_s)

    def load(self) -> xr.Dataset:
        return open_result(self.path)


_OPEN_GROUPS: dict = {}


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


def str_coord(values) -> np.ndarray:
    """String coordinate values as an object array: Zarr v3 stores those as variable-length
    UTF-8 (fixed-width unicode has no v3 specification and draws a warning)."""
    return np.array([str(v) for v in values], dtype=object)


def open_result(path) -> xr.Dataset:
    """Open a study's store as an in-memory xarray Dataset."""
    with xr.open_zarr(str(path), consolidated=False) as ds:
        return ds.load()


def write_analysis(path, analysis: xr.Dataset) -> None:
    """Store a study's analysis -- fits, ``theory_*`` variables and its claims -- next to the
    raw data, replacing the previous analysis whole.

    The names written are recorded in the ``analysis_vars`` attribute, so a rerun first removes
    every variable of the previous analysis (its claims may differ in number; a variable it no
    longer makes must not linger). The store's own attributes (provenance) are kept:
    ``to_zarr(mode="a")`` would replace them with the analysis' attributes, so the two are
    merged first."""
    import zarr

    grp = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    existing = dict(grp.attrs)
    keep = set(json.loads(existing.get("layout_json", "{}") or "{}").get("variables", {}))
    keep |= {"done", "wall_s"} | raw_dims(existing)
    previous = set(json.loads(existing.get("analysis_vars", "[]")))
    stale = (previous | set(analysis.data_vars) | set(analysis.dims)) - keep
    arrays = set(grp.array_keys())
    for name in sorted(stale & arrays):
        del grp[name]
    _OPEN_GROUPS.pop(str(path), None)
    analysis = analysis.copy()
    written = sorted((set(analysis.data_vars) | set(analysis.coords)) - keep)
    analysis.attrs = {**existing, **analysis.attrs, "analysis_vars": json.dumps(written)}
    analysis.to_zarr(str(path), mode="a", consolidated=False)
    consolidate(path)


def consolidate(path) -> None:
    """Consolidate the metadata of the store that holds ``path`` (its root, for a group), so
    ``xr.open_zarr(store)`` opens it quietly and fast. Any later write of metadata drops the
    consolidation, and every writer here consolidates again when it is done, so a resumed
    store is never read through stale metadata."""
    import warnings

    import zarr

    root = Path(path)
    while SweepStore.is_store(root.parent):
        root = root.parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
        zarr.consolidate_metadata(str(root))


def raw_dims(attrs: Mapping) -> set:
    """The dimensions of a store's raw (swept) variables, from its ``layout_json``."""
    layout = json.loads(attrs.get("layout_json", "{}") or "{}")
    dims = set(layout.get("cell_dims", []))
    for v in layout.get("variables", {}).values():
        dims |= set(v)
    return dims


class SerialExecutor(cf.Executor):
    """Runs each call at once in this process (plain tracebacks; the default)."""

    def submit(self, fn, /, *args, **kwargs):
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            if isinstance(e, KeyboardInterrupt):
                raise
            fut.set_exception(e)
        return fut


def _init_worker(threads: int) -> None:
    """Give each worker process its share of the cores, for Numba and for BLAS."""
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    threadpool_limits(limits=threads)


def numba_features() -> str:
    """The CPU feature string this process's Numba compiles for. Worker processes are given it
    (``NUMBA_CPU_FEATURES``), so they compile exactly the code the driver does -- same vector
    width, same summation order, the same bits -- whichever of numba and :mod:`sim` each
    process imported first (``sim`` widens the vectors only when it comes first)."""
    import numba

    if numba.config.CPU_FEATURES:
        return numba.config.CPU_FEATURES
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_features().flatten()


@contextlib.contextmanager
def make_executor(workers: int = 1, scheduler: str | None = None, dask_local: int | None = None):
    """Yield an executor with the ``concurrent.futures`` interface:

    * ``scheduler="tcp://host:port"`` — a Dask distributed cluster (``Client(addr).get_executor()``);
    * ``dask_local=N`` — a Dask ``LocalCluster`` of N single-threaded worker processes;
    * ``workers=N > 1`` — a local process pool (spawned processes);
    * otherwise — the in-process serial executor.

    Worker processes get ``cpu_count // N`` Numba and BLAS threads each, so N workers do not
    oversubscribe the cores.
    """
    threads = max(1, (os.cpu_count() or 1) // max(1, dask_local or workers))
    if scheduler is not None or dask_local:
        import logging

        # Dask's shutdown after an error or Ctrl-C logs "Task was destroyed but it is pending"
        # and connection chatter: nothing the user must act on (the error itself is reported)
        for name in ("distributed", "asyncio", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:  # pragma: no cover - depends on the dist extra
            raise RuntimeError("Dask execution needs the 'dist' extra: pip install -e '.[dist]'") from e
        if scheduler is not None:
            with Client(scheduler) as client:
                yield client.get_executor()
            return
        env = {k: str(threads) for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        env["NUMBA_CPU_FEATURES"] = numba_features()
        with LocalCluster(n_workers=dask_local, threads_per_worker=1, processes=True,
                          dashboard_address=None, env=env) as cluster, \
                Client(cluster) as client:
            yield client.get_executor()
        return
    if workers <= 1:
        yield SerialExecutor()
        return
    import multiprocessing as mp

    os.environ["NUMBA_CPU_FEATURES"] = numba_features()  # spawned workers inherit it
    ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=_init_worker, initargs=(threads,))
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def compute_and_store(run_cell, writer: CellWriter, cell: Cell) -> tuple[tuple[int, ...], float]:
    """The task every executor runs: compute one cell, write it into the store, report timing."""
    t0 = time.perf_counter()
    out = run_cell(cell)
    wall = time.perf_counter() - t0
    writer.write(cell.index, out, wall)
    return cell.index, wall


def run_sweep(sweep: Sweep, path, *, workers: int = 1, scheduler: str | None = None,
              dask_local: int | None = None, executor: cf.Executor | None = None,
              overwrite: bool = False, progress: bool = True, repair: bool = False) -> tuple[xr.Dataset, dict]:
    """Run every pending cell of ``sweep`` into the store at ``path``; return the dataset and
    a summary ``{"cells": total, "computed": k, "resumed": j, "wall_s": t}``.

    Cells marked done whose data is missing or not finite are recomputed (and said so); an
    unreadable store is a :class:`StoreDamaged` error unless ``repair`` (see
    :meth:`SweepStore.pending`).

    The executor (see :func:`make_executor`, or pass one) runs :func:`compute_and_store` on each
    cell, so the cell is written by the process that computed it; the driver only submits a
    bounded window of cells, waits, and advances the progress bar. A cell whose task fails or
    is lost (a killed worker) stays ``done = False`` and is computed by the next run.
    """
    from tqdm.auto import tqdm

    store = SweepStore(path, sweep).open(overwrite=overwrite)
    writer = store.writer()
    pending = store.pending(repair=repair)
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
