"""The study stores: identity, provenance, creation, the analysis write, repair primitives.

Every study writes one Zarr store (or a group of one). This module holds what every kind of
store shares, whatever fills it (a :class:`studies.sweep.Sweep`, a training run, a root of
several groups):

* **identity** (:func:`identity`): study, schema version, parameters, root seed and layout.
  :func:`open_store` is the one check: a store of the same run is resumed, another run's store
  needs ``overwrite``, anything else is refused. A new store is written beside its final name
  and renamed into place, so a store either does not exist or is whole.
* **provenance** (:func:`provenance`): flat attributes (str/int/float only, so a netCDF export
  works as is). A copy of the root's attributes at creation is kept inside the store
  (:data:`BACKUP`, in the folder of the ``done`` array, where Zarr never looks), so a store
  whose root metadata is destroyed gets its identity back (``repair``) instead of being
  discarded.
* **repairs**: :func:`unreadable_arrays` finds the arrays (metadata or chunks) that cannot be
  read, :func:`copy_array_metadata` puts back an array's metadata and keeps its chunks,
  :func:`drop_array` removes a derived array, :func:`note_repair` adds a line to the
  ``repairs`` attribute -- the pieces :class:`studies.sweep.SweepStore` (and a training
  checkpoint) repair with. A part that cannot be recomputed is a :class:`StoreDamaged` whose
  one-line message names the store, the variable and the remedy (:func:`damaged`).
* **I/O shutdown** (:func:`close_io`): zarr runs its reads on an asyncio loop in a thread; a
  failed read leaves sibling tasks pending, which print "Task was destroyed but it is
  pending" at exit. :func:`close_io` cancels and awaits them.

The writer's lock (:func:`store_lock`) lives in :mod:`studies.lock` and is re-exported here.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import xarray as xr

from studies.lock import StoreBusy, store_lock

__all__ = [
    "SCHEMA_VERSION", "IDENTITY_KEYS", "BACKUP", "StoreMismatch", "StoreDamaged", "StoreBusy", "store_lock",
    "provenance", "identity", "is_store", "store_attrs", "open_store", "StoreSpec", "replace_group", "open_group",
    "open_result", "str_coord", "write_analysis", "consolidate", "raw_dims", "damaged", "unreadable_arrays",
    "copy_array_metadata", "drop_array", "note_repair", "close_io", "forget_group", "array_dirs", "raw_names",
    "looks_like_store",
]

SCHEMA_VERSION = 2  # 2: verdicts are claims (studies/claims.py)
BACKUP = "done/.root-attributes.json"  # the root's attributes at creation, kept where Zarr never looks


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
    """The one provenance writer: flat attributes of a :class:`~studies.sweep.Sweep` or a
    :class:`StoreSpec` -- its identity (:func:`identity`), seed policy, package versions, git
    commit, host, time, command line and its own attrs."""
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
    """The store at the output path holds a different run (or cannot be used as it is)."""


class StoreDamaged(StoreMismatch):
    """A part of the store cannot be read (a truncated chunk, garbled metadata); the message
    names the store and the variable and gives the remedy (``--repair``, ``--overwrite``)."""


def damaged(path, name: str, error, remedy: str) -> StoreDamaged:
    """The one-line refusal of a damaged part: ``PATH: variable NAME is damaged (Error);
    rerun the same command with --repair to REMEDY, or with --overwrite to start again``.
    ``remedy`` None: the part cannot be recomputed, and only ``--overwrite`` is offered."""
    why = type(error).__name__ if isinstance(error, BaseException) else str(error)
    if remedy is None:
        return StoreDamaged(f"{path}: {name} is damaged ({why}) and cannot be recomputed; rerun with --overwrite "
                            "to start again, or choose another --out")
    return StoreDamaged(f"{path}: variable {name} is damaged ({why}); rerun the same command with --repair to "
                        f"{remedy}, or with --overwrite to start again")


IDENTITY_KEYS = ("study", "schema_version", "params_json", "root_seed", "layout_json")


def identity(spec) -> dict:
    """What makes two runs the same run: study, schema version, parameters, root seed and the
    store layout. ``spec`` is a :class:`~studies.sweep.Sweep` or a :class:`StoreSpec`."""
    return {"study": spec.study, "schema_version": SCHEMA_VERSION, "params_json": spec.params_json,
            "root_seed": str(spec.root_seed), "layout_json": spec.layout_json}


def _same_identity(attrs: Mapping, spec) -> bool:
    want = identity(spec)
    try:
        return all(str(attrs.get(k)) == str(want[k]) for k in IDENTITY_KEYS)
    except Exception:  # noqa: BLE001 - malformed attributes: not the same run
        return False


def is_store(path) -> bool:
    """A Zarr group or array lives at ``path`` (v3 ``zarr.json`` or v2 ``.zgroup``)."""
    path = Path(path)
    try:
        return (path / "zarr.json").exists() or (path / ".zgroup").exists()
    except OSError:  # a name too long, a symlink loop: nothing of ours
        return False


def looks_like_store(path) -> bool:
    """A store, or the remains of one whose root metadata was lost: its copy of the root
    attributes, or arrays, are there (such a folder is the store's, not the user's)."""
    path = Path(path)
    if is_store(path) or _read_backup(path) is not None:
        return True
    try:
        return any((p / "zarr.json").is_file() for p in path.iterdir() if p.is_dir())
    except OSError:
        return False


def _read_backup(path) -> dict | None:
    try:
        attrs = json.loads((Path(path) / BACKUP).read_text())["attributes"]
        return attrs if isinstance(attrs, dict) else None
    except Exception:  # noqa: BLE001 - absent or unreadable: no copy to restore from
        return None


def _write_backup(path, attrs: Mapping) -> None:
    """Keep a copy of the root attributes inside the ``done`` array's folder: zarr never lists
    an array's folder, so the file draws no "not a component of a Zarr hierarchy" warning (a
    file at the root would). A store without ``done`` keeps no copy."""
    if (Path(path) / BACKUP).parent.is_dir():
        (Path(path) / BACKUP).write_text(json.dumps({"attributes": dict(attrs)}, default=_json_default))


def store_attrs(path) -> dict | None:
    """The root attributes of the Zarr store at ``path`` (None if there is no store there)."""
    import zarr

    path = Path(path)
    if not is_store(path):
        if _read_backup(path) is not None:  # a store whose root metadata was deleted
            raise StoreDamaged(f"{path}: the store's root metadata (zarr.json) is missing; rerun the same command "
                               "with --repair to restore it from the store's copy, or with --overwrite to start again")
        return None
    try:
        return dict(zarr.open_group(str(path), mode="r", use_consolidated=False).attrs)
    except Exception as e:  # noqa: BLE001 - unreadable root metadata
        how = ("rerun the same command with --repair to restore it from the store's copy, or with --overwrite to "
               "start again") if _read_backup(path) is not None else "rerun with --overwrite to start again"
        raise StoreDamaged(f"{path}: the store's metadata is unreadable ({type(e).__name__}); its run cannot be "
                           f"identified: {how}") from None


def _restore_root(path: Path, spec) -> dict:
    """Rewrite an unreadable root ``zarr.json`` from the store's copy of its attributes, if that
    copy is the identity of ``spec`` (so a store is never given another run's identity)."""
    attrs = _read_backup(path)
    if attrs is None or not _same_identity(attrs, spec):
        raise StoreDamaged(f"{path}: the store's root metadata is unreadable and its copy is missing or of another "
                           "run, so its identity cannot be recomputed; rerun with --overwrite to start again")
    meta = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    tmp = path.parent / f".{path.name}.zarr.json.repair{os.getpid()}"
    tmp.write_text(json.dumps(meta, default=_json_default))
    os.replace(tmp, path / "zarr.json")
    forget_group(path)
    note_repair(path, "root metadata restored from " + BACKUP)
    print(f"{path}: repaired: root metadata restored from the store's copy ({BACKUP})", file=sys.stderr, flush=True)
    return attrs


def open_store(path, spec, create: Callable[[Path], None], *, overwrite: bool = False,
               repair: bool = False) -> bool:
    """The one identity check of every study's store: make ``path`` the store of ``spec``.

    * no store there (or an empty directory): ``create(tmp)`` writes it beside ``path`` (it
      must write the provenance attributes, :func:`provenance`), the copy of its attributes is
      added and it is renamed to ``path`` -- an interrupted creation leaves nothing -- and the
      call returns True;
    * a store of the same run (:func:`identity`): it is kept, to be resumed (False);
    * a store whose root metadata is unreadable: :class:`StoreDamaged`, or with ``repair`` it is
      restored from its copy when that copy is this run's;
    * a store of another run: :class:`StoreMismatch`, or with ``overwrite`` it is replaced;
    * something that is not a store: :class:`StoreMismatch`.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise StoreMismatch(f"{path} exists and is not a Zarr store")
        try:
            attrs = store_attrs(path)
        except StoreDamaged:
            if overwrite:
                attrs = {}
            elif not repair:
                raise
            else:
                attrs = _restore_root(path, spec)
        if attrs is None:
            if any(path.iterdir()):
                raise StoreMismatch(f"{path} is a non-empty directory that is not a Zarr store; "
                                    "choose another --out")
            path.rmdir()
        elif not _same_identity(attrs, spec):
            if not overwrite:
                other = attrs.get("study", "?")
                what = (f"a {other} run with other parameters or seed" if other == spec.study
                        else f"a store of the {other} study, not of {spec.study}")
                raise StoreMismatch(f"{path} holds {what}; pass --overwrite to replace it, or choose another --out")
            shutil.rmtree(path)
    if path.exists():
        return False
    forget_group(path)  # a store recreated here must be reopened
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.new{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        create(tmp)
        import zarr

        _write_backup(tmp, zarr.open_group(str(tmp), mode="r", use_consolidated=False).attrs)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


@dataclass
class StoreSpec:
    """The identity and provenance of a store that is not filled by a Sweep (a training run,
    a multi-group root): ``study``, ``params`` (the run's identity), ``root_seed``, ``layout``
    (the variables it will hold) and extra flat ``attrs``."""

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


_OPEN_GROUPS: dict = {}  # path -> open zarr group, per process (the cell writers' cache)


def forget_group(path) -> None:
    """Drop the cached open group of ``path`` (after it was replaced or repaired)."""
    _OPEN_GROUPS.pop(str(path), None)


def replace_group(path, group: str, ds: xr.Dataset) -> None:
    """Write ``ds`` as the group ``group`` of the store at ``path``, replacing it whole and
    atomically: written beside it under a temporary name, then renamed over it, so a reader or
    an interrupted writer sees the old group or the new one, never a mixture."""
    path = Path(path)
    target = path / group
    tmp = path / f".{group}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        ds.to_zarr(str(tmp), mode="w", consolidated=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half group behind
        raise
    old = path / f".{group}.old{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)
    forget_group(target)


def open_group(path, group: str | None = None) -> xr.Dataset | None:
    """A group of a store as an in-memory Dataset (None if it does not exist)."""
    p = Path(path) / group if group else Path(path)
    if not is_store(p):
        return None
    return open_result(p)


def str_coord(values) -> np.ndarray:
    """String coordinate values as an object array: Zarr v3 stores those as variable-length
    UTF-8 (fixed-width unicode has no v3 specification and draws a warning)."""
    return np.array([str(v) for v in values], dtype=object)


def open_result(path) -> xr.Dataset:
    """Open a study's store as an in-memory xarray Dataset."""
    with xr.open_zarr(str(path), consolidated=False) as ds:
        return ds.load()


def raw_dims(attrs: Mapping) -> set:
    """The dimensions of a store's raw (swept) variables, from its ``layout_json``."""
    layout = json.loads(attrs.get("layout_json", "{}") or "{}")
    dims = set(layout.get("cell_dims", []))
    for v in layout.get("variables", {}).values():
        dims |= set(v)
    return dims


def raw_names(attrs: Mapping) -> set:
    """Every array of a store's raw part: its variables, ``done``, ``wall_s`` and the raw dims'
    coordinates. Everything else in the group is derived (analysis, claims)."""
    layout = json.loads(attrs.get("layout_json", "{}") or "{}")
    return set(layout.get("variables", {})) | {"done", "wall_s"} | raw_dims(attrs)


WRITING = "analysis_writing"  # attribute present while write_analysis replaces a store's analysis


def write_analysis(path, analysis: xr.Dataset) -> None:
    """Store a study's analysis -- fits, ``theory_*`` variables and its claims -- next to the
    raw data, replacing the previous analysis whole.

    Every array of the group that is not raw (:func:`raw_names`) belongs to the previous
    analysis and is removed first (its claims may differ in number; a variable it no longer
    makes must not linger); the names written are recorded in ``analysis_vars``. The store's
    own attributes (provenance, repairs) are kept: ``to_zarr(mode="a")`` would replace them
    with the analysis' attributes, so the two are merged first."""
    import zarr

    grp = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    existing = dict(grp.attrs)
    existing.pop(WRITING, None)
    keep = raw_names(existing)
    previous = set(json.loads(existing.get("analysis_vars", "[]")))
    arrays = set(grp.array_keys())
    stale = (previous | set(analysis.data_vars) | set(analysis.dims)) & arrays
    if existing.get("layout_json"):  # only a store that names its raw arrays can lose the others
        stale |= arrays - keep
    # readers see an analysis being replaced as such (studies.claims.read_claims refuses it),
    # never a mixture of the old and the new one; the flag goes with the last write
    grp.attrs[WRITING] = "the analysis and claims are being replaced"
    for name in sorted(stale - keep):
        drop_array(grp, path, name)
    forget_group(path)
    analysis = analysis.copy()
    written = sorted((set(analysis.data_vars) | set(analysis.coords)) - keep)
    analysis.attrs = {**existing, **analysis.attrs, "analysis_vars": json.dumps(written)}
    analysis.to_zarr(str(path), mode="a", consolidated=False)
    grp = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    grp.attrs.put({k: v for k, v in grp.attrs.asdict().items() if k != WRITING})
    consolidate(path)


def consolidate(path) -> None:
    """Consolidate the metadata of the store that holds ``path`` (its root, for a group), so
    ``xr.open_zarr(store)`` opens it quietly and fast. Any later write of metadata drops the
    consolidation, and every writer here consolidates again when it is done, so a resumed
    store is never read through stale metadata."""
    import warnings

    import zarr

    root = Path(path)
    while is_store(root.parent):
        root = root.parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
        zarr.consolidate_metadata(str(root))


# ------------------------------------------------------------------------------ repairs
def array_dirs(path) -> list[str]:
    """The arrays of the group at ``path`` as the file system shows them (so also those whose
    metadata is garbled): every child folder with a ``zarr.json`` that is not a group's."""
    out = []
    for p in sorted(Path(path).iterdir()) if Path(path).is_dir() else []:
        if p.name.startswith(".") or not (p / "zarr.json").is_file():
            continue
        try:
            if json.loads((p / "zarr.json").read_text()).get("node_type") == "group":
                continue
        except Exception:  # noqa: BLE001 - garbled metadata: an array to check
            pass
        out.append(p.name)
    return out


def unreadable_arrays(path, names=None) -> dict[str, BaseException]:
    """The arrays of the group at ``path`` (``names``, default all) whose metadata or data
    cannot be read, with the error of each. Reads every array whole: meant for a run's start
    and for repairs, not for hot loops."""
    import zarr

    grp = zarr.open_group(str(path), mode="r", use_consolidated=False)
    names = array_dirs(path) if names is None else names
    bad = {}
    for name in names:
        try:
            grp[name][...]
        except Exception as e:  # noqa: BLE001 - every read error is damage
            bad[name] = e
    return bad


def copy_array_metadata(src_group, dst_group, name: str) -> None:
    """Give the array ``name`` of ``dst_group`` the metadata (``zarr.json``) of the same array
    in ``src_group`` -- a fresh template written with the same encoding -- keeping its chunks:
    what was computed stays, and a chunk the restored metadata cannot decode is found (and
    reset) by the next read."""
    src = Path(src_group) / name / "zarr.json"
    dst = Path(dst_group) / name
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / f".zarr.json.repair{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst / "zarr.json")
    forget_group(dst_group)


def drop_array(grp, path, name: str) -> None:
    """Remove the array ``name`` from the group (``grp`` open on ``path``), even when its
    metadata cannot be read."""
    try:
        del grp[name]
    except Exception:  # noqa: BLE001 - garbled metadata: remove its files
        shutil.rmtree(Path(path) / name, ignore_errors=True)
    forget_group(path)


def note_repair(path, what: str) -> None:
    """Add a line to the ``repairs`` attribute of the group at ``path`` (provenance: what was
    repaired, when, by which command). The store's other attributes are kept."""
    import zarr

    grp = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    line = f"{stamp}: {what} (by: {' '.join(sys.argv)})"
    old = str(grp.attrs.get("repairs", ""))
    grp.attrs["repairs"] = f"{old}\n{line}" if old else line
    forget_group(path)


def close_io(keep_loop: bool = False, timeout: float = 5.0) -> None:
    """Shut the stores' I/O down cleanly: cancel and await every task still pending on
    zarr's event loop (a read that failed leaves its sibling reads pending), then, unless
    ``keep_loop``, stop the loop -- so nothing prints "Task was destroyed but it is pending"
    or "Event loop is closed" at exit. Safe to call at any time, and more than once."""
    import asyncio

    zsync = sys.modules.get("zarr.core.sync")
    if zsync is None:
        return
    loop = zsync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def cancel_rest():
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        for t in rest:
            t.cancel()
        if rest:
            await asyncio.wait(rest, timeout=timeout)
        for t in rest:  # retrieve every outcome, so none is reported as never retrieved
            if t.done() and not t.cancelled():
                t.exception()

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(timeout + 1)
    if not keep_loop:
        with contextlib.suppress(Exception):
            zsync.cleanup_resources()
