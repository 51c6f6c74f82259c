"""Training checkpoints inside a study's store, and the damage checks of a training store.

A checkpoint is a group of the store (``checkpoint``; the linear baseline of ``length`` uses
``linear_checkpoint``) holding a training run's whole state: parameters, Adam's moments and
step, data keys, the logs so far, the wall time. Contract:

* **Saving** (:func:`save_checkpoint`) writes the new group beside the old one under a
  temporary name, then rotates: the group it replaces becomes ``<group>_previous`` and the new one
  takes the name. At every instant the store holds an intact checkpoint under one of the two
  names (a save killed half-way leaves the previous pair as it was).
* **Loading** (:func:`load_checkpoint`) reads the group whole and checks it: every array
  readable, every state variable present, every float finite (a deleted chunk reads as the fill
  value, NaN). A damaged checkpoint is a one-line :class:`studies.store.StoreDamaged` naming the
  store, the variable and the remedy; with ``repair`` it is restored to the last intact one --
  the previous checkpoint when that one is intact, else nothing (training restarts at step 0) --
  and the store's ``repairs`` attribute says what was done (its identity and provenance, the
  root attributes, are never touched). A missing checkpoint beside an intact previous one (a
  save interrupted between its two renames) resumes from the previous one.
* **The store's root** (:func:`check_root`): a training store's raw variables (written once,
  when training completes) and its analysis are checked before they are used; a damaged raw
  array is rebuilt from the final checkpoint with ``repair`` (the logs and the final state are
  all in it), a damaged analysis array is removed and derived again.

Because the data of step t is a pure function of the run's key and t, a run resumed from any
intact checkpoint ends bit for bit where an uninterrupted one would.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from studies.store import (close_io, damaged, drop_array, forget_group, is_store, note_repair, open_result,
                           unreadable_arrays)

__all__ = ["PREVIOUS", "STATE", "save_checkpoint", "load_checkpoint", "check_root"]

PREVIOUS = "_previous"  # suffix of the checkpoint kept from the save before the last
STATE = ("theta", "adam_m", "adam_v", "adam_t", "step", "keys", "wall_s")  # what a resume needs
REMEDY = "restore the checkpoint to the last intact one (or train from the start)"


def save_checkpoint(path, group: str, ds: xr.Dataset) -> None:
    """Write ``ds`` as the checkpoint ``group`` of the store at ``path`` (module docstring)."""
    path = Path(path)
    target, prev = path / group, path / f"{group}{PREVIOUS}"
    tmp = path / f".{group}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds.to_zarr(str(tmp), mode="w", consolidated=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half group behind
        raise
    if target.exists():
        old = path / f".{prev.name}.old{os.getpid()}"
        if prev.exists():
            os.replace(prev, old)
        os.replace(target, prev)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, target)
    forget_group(target)
    forget_group(prev)


def _read(where: Path):
    """``(dataset, None)`` for an intact checkpoint group, ``(None, (name, error))`` for a
    damaged one, ``(None, None)`` when there is none."""
    if not where.exists():
        return None, None
    if not is_store(where):
        return None, ("group metadata", "missing")
    bad = unreadable_arrays(where)
    if bad:
        name, err = next(iter(bad.items()))
        return None, (name, err)
    try:
        ds = open_result(where)
    except Exception as e:  # noqa: BLE001 - unreadable group metadata
        close_io(keep_loop=True)
        return None, ("group metadata", e)
    for name in STATE:
        if name not in ds:
            return None, (name, "missing")
    for name, var in ds.data_vars.items():
        if var.dtype.kind == "f" and not np.all(np.isfinite(var.values)):
            return None, (name, "not finite: a lost chunk")
    return ds, None


def load_checkpoint(path, group: str, *, repair: bool = False) -> xr.Dataset | None:
    """The checkpoint ``group`` of the store at ``path`` to resume from, or None to start at
    step 0 (module docstring). Raises :class:`studies.store.StoreDamaged` for a damaged one
    without ``repair``."""
    path = Path(path)
    target, prev = path / group, path / f"{group}{PREVIOUS}"
    ds, bad = _read(target)
    if ds is not None:
        return ds
    if bad is None:  # no checkpoint: a fresh run, or a save interrupted between its renames
        before, _ = _read(prev)
        if before is not None:
            print(f"{path}: resuming from the previous checkpoint ({group}{PREVIOUS}, step {int(before['step'])}): "
                  "the last save was interrupted", file=sys.stderr, flush=True)
        return before
    name, err = bad
    if not repair:
        raise damaged(path, f"{name} of the training checkpoint (group {group})", err, REMEDY)
    before, _ = _read(prev)
    shutil.rmtree(target, ignore_errors=True)
    if before is not None:
        shutil.copytree(prev, target)
        what = f"training checkpoint {group}: {name} was damaged; restored to the previous checkpoint (step " \
               f"{int(before['step'])})"
    else:
        shutil.rmtree(prev, ignore_errors=True)
        what = f"training checkpoint {group}: {name} was damaged and no intact earlier checkpoint was kept; " \
               "training restarts from step 0"
    forget_group(target)
    note_repair(path, what)
    print(f"{path}: repaired: {what}", file=sys.stderr, flush=True)
    return before


def check_root(path, raw_names, *, repair: bool = False) -> bool:
    """Check the arrays at the root of a training store before they are used: returns True when
    its raw variables must be rebuilt from the final checkpoint (``repair`` and a damaged raw
    array); a damaged analysis array is removed (``repair``). Without ``repair``, damage is a
    one-line :class:`studies.store.StoreDamaged`."""
    import zarr

    path = Path(path)
    bad = unreadable_arrays(path)
    if not bad:
        return False
    raw = {name: e for name, e in bad.items() if name in raw_names}
    if not repair:
        name, err = next(iter((raw or bad).items()))
        remedy = "rebuild the raw data from the final training checkpoint" if raw else \
            "derive the analysis again from the data"
        raise damaged(path, name, err, remedy)
    grp = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for name in bad:
        drop_array(grp, path, name)
    done = []
    if raw:
        zarr.open_group(str(path), mode="r+", use_consolidated=False).attrs["train_complete"] = 0
        done.append(f"raw variable(s) {', '.join(raw)} rebuilt from the final training checkpoint")
    if set(bad) - set(raw):
        done.append(f"analysis variable(s) {', '.join(n for n in bad if n not in raw)} removed, derived again")
    note_repair(path, "; ".join(done))
    print(f"{path}: repaired: {'; '.join(done)}", file=sys.stderr, flush=True)
    return bool(raw)
