"""studies/sweep.py: seeds per cell, executors, resumption, store checks."""
import functools
import shutil
import time

import numpy as np
import pytest
import zarr

from studies.sweep import (Sweep, StoreMismatch, SweepStore, cell_seed, open_result, run_sweep,
                           write_analysis)


def toy_cell(cell, scale=1.0, fail_after=None):
    """A cheap cell: a few normals drawn from the cell's own stream."""
    if fail_after is not None and cell.index[0] * 3 + cell.index[1] >= fail_after:
        raise KeyboardInterrupt  # simulate Ctrl-C in the middle of the sweep
    rng = np.random.default_rng(cell.seed)
    return {"x": scale * rng.standard_normal(4) + cell.coords["a"],
            "y": np.array(rng.random() + cell.coords["b"])}


def make(seed=0, scale=1.0, **kw):
    return Sweep(study="toy", cell_dims={"a": [10, 20, 30], "b": [0, 1, 2]},
                 variables={"x": ("k", "a", "b"), "y": ("a", "b")}, coords={"k": np.arange(4)},
                 params={"scale": scale}, run_cell=functools.partial(toy_cell, scale=scale, **kw),
                 root_seed=seed)


def test_cell_seeds_depend_only_on_root_and_index():
    s1 = cell_seed(5, (1, 2)).generate_state(4)
    assert np.array_equal(s1, cell_seed(5, (1, 2)).generate_state(4))
    assert not np.array_equal(s1, cell_seed(5, (2, 1)).generate_state(4))
    assert not np.array_equal(s1, cell_seed(6, (1, 2)).generate_state(4))


def test_sweep_writes_every_cell_with_provenance(tmp_path):
    ds, info = run_sweep(make(), tmp_path / "s.zarr", progress=False)
    assert info == {**info, "cells": 9, "computed": 9, "resumed": 0}
    assert ds["x"].dims == ("k", "a", "b") and bool(ds["done"].all())
    assert np.all(np.isfinite(ds["x"].values)) and np.all(ds["wall_s"].values >= 0)
    for key in ("study", "params_json", "root_seed", "versions", "git_sha", "created_utc", "seed_policy"):
        assert key in ds.attrs
    # the cell at (a=20, b=1) is its own seeded computation
    exp = toy_cell(make().cells([(1, 1)])[0])
    np.testing.assert_array_equal(ds["x"].sel(a=20, b=1).values, exp["x"])


def test_same_seed_identical_other_seed_differs(tmp_path):
    a, _ = run_sweep(make(seed=1), tmp_path / "a.zarr", progress=False)
    b, _ = run_sweep(make(seed=1), tmp_path / "b.zarr", progress=False)
    c, _ = run_sweep(make(seed=2), tmp_path / "c.zarr", progress=False)
    np.testing.assert_array_equal(a["x"].values, b["x"].values)
    assert not np.array_equal(a["x"].values, c["x"].values)


def test_process_pool_equals_serial(tmp_path):
    serial, _ = run_sweep(make(seed=3), tmp_path / "s.zarr", progress=False)
    pooled, _ = run_sweep(make(seed=3), tmp_path / "p.zarr", workers=2, progress=False)
    np.testing.assert_array_equal(serial["x"].values, pooled["x"].values)
    np.testing.assert_array_equal(serial["y"].values, pooled["y"].values)


def test_interrupted_sweep_resumes_to_the_same_dataset(tmp_path):
    full, _ = run_sweep(make(seed=4), tmp_path / "full.zarr", progress=False)
    path = tmp_path / "part.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(make(seed=4, fail_after=5), path, progress=False)
    part = open_result(path)
    assert int(part["done"].sum()) == 5  # the finished cells were kept
    assert np.isnan(part["x"].values).any()
    ds, info = run_sweep(make(seed=4), path, progress=False)
    assert info["computed"] == 4 and info["resumed"] == 5
    np.testing.assert_array_equal(ds["x"].values, full["x"].values)
    np.testing.assert_array_equal(ds["y"].values, full["y"].values)


def test_other_parameters_refuse_to_resume_unless_overwrite(tmp_path):
    path = tmp_path / "s.zarr"
    run_sweep(make(scale=1.0), path, progress=False)
    with pytest.raises(StoreMismatch, match="other parameters"):
        run_sweep(make(scale=2.0), path, progress=False)
    ds, info = run_sweep(make(scale=2.0), path, overwrite=True, progress=False)
    assert info["computed"] == 9 and '"scale": 2.0' in ds.attrs["params_json"]


def test_foreign_directory_is_never_deleted(tmp_path):
    path = tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    with pytest.raises(StoreMismatch, match="not a Zarr store"):
        run_sweep(make(), path, overwrite=True, progress=False)
    assert (path / "notes.txt").exists()


def test_non_finite_results_are_refused(tmp_path):
    sweep = make()
    store = SweepStore(tmp_path / "s.zarr", sweep).open()
    with pytest.raises(FloatingPointError):
        store.write_cell((0, 0), {"x": np.array([1.0, np.nan, 0, 0]), "y": np.array(1.0)}, 0.1)
    assert not bool(zarr.open_group(str(tmp_path / "s.zarr"))["done"][0, 0])


def test_analysis_keeps_provenance(tmp_path):
    import xarray as xr

    path = tmp_path / "s.zarr"
    ds, _ = run_sweep(make(), path, progress=False)
    an = xr.Dataset({"m": (("a",), ds["y"].mean("b").values)}, coords={"a": ds["a"].values},
                    attrs={"note": "analysis"})
    write_analysis(path, an)
    write_analysis(path, an)  # idempotent
    out = open_result(path)
    assert out.attrs["study"] == "toy" and out.attrs["note"] == "analysis" and "m" in out


def test_other_seed_refuses_to_resume(tmp_path):
    path = tmp_path / "s.zarr"
    run_sweep(make(seed=1), path, progress=False)
    with pytest.raises(StoreMismatch, match="seed"):
        run_sweep(make(seed=2), path, progress=False)


# ------------------------------------------------------------------ Dask (the dist extra)
def _local_cluster(n):
    distributed = pytest.importorskip("distributed")
    return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    dashboard_address=None)


def test_dask_local_cluster_equals_serial(tmp_path):
    pytest.importorskip("distributed")
    serial, _ = run_sweep(make(seed=7), tmp_path / "s.zarr", progress=False)
    dask, info = run_sweep(make(seed=7), tmp_path / "d.zarr", dask_local=2, progress=False)
    assert info["computed"] == 9
    np.testing.assert_array_equal(serial["x"].values, dask["x"].values)
    np.testing.assert_array_equal(serial["y"].values, dask["y"].values)


def slow_cell(cell, scale=1.0):
    import time

    time.sleep(0.3)
    return toy_cell(cell, scale)


def test_killing_a_dask_worker_loses_nothing(tmp_path):
    """SIGKILL one of two workers mid-sweep; whatever that run does (Dask may reschedule the
    lost task or give up on it), a rerun completes the store with exactly the serial values."""
    import os
    import signal
    import threading

    from distributed import Client

    serial, _ = run_sweep(make(seed=8), tmp_path / "s.zarr", progress=False)
    sweep = make(seed=8)
    sweep.run_cell = functools.partial(slow_cell, scale=1.0)
    path = tmp_path / "d.zarr"
    with _local_cluster(2) as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        errors = []

        def go():
            try:
                run_sweep(sweep, path, executor=client.get_executor(), progress=False)
            except BaseException as e:  # noqa: BLE001 - a lost task may surface here
                errors.append(e)

        t = threading.Thread(target=go)
        t.start()
        deadline = time.time() + 60
        while time.time() < deadline:
            time.sleep(0.05)
            try:
                if int(np.sum(zarr.open_group(str(path), mode="r")["done"][...])) >= 2:
                    break
            except Exception:
                continue
        os.kill(pids[0], signal.SIGKILL)
        t.join(timeout=120)
        assert not t.is_alive()
    ds, info = run_sweep(sweep, path, progress=False)  # the rerun: serial, only what is missing
    assert bool(ds["done"].all())
    np.testing.assert_array_equal(ds["x"].values, serial["x"].values)
    np.testing.assert_array_equal(ds["y"].values, serial["y"].values)


def test_other_variable_layout_refuses_to_resume(tmp_path):
    path = tmp_path / "s.zarr"
    run_sweep(make(seed=1), path, progress=False)
    other = make(seed=1)
    other.variables = {"x": ("k", "a", "b")}  # same parameters, one variable fewer
    with pytest.raises(StoreMismatch):
        run_sweep(other, path, progress=False)


# ------------------------------------------------------------------ the split, the lock
def test_names_other_modules_import_from_sweep_still_resolve():
    import studies.sweep as sw

    for name in ("Sweep", "SweepStore", "StoreSpec", "StoreMismatch", "StoreDamaged", "open_store", "open_group",
                 "open_result", "replace_group", "store_attrs", "str_coord", "write_analysis", "provenance",
                 "make_executor", "SerialExecutor", "consolidate", "cell_seed", "run_sweep", "_versions",
                 "_git_info", "store_lock", "StoreBusy"):
        assert hasattr(sw, name), name
    assert sum(1 for _ in open(sw.__file__)) < 600


def test_a_second_writer_is_refused_while_a_sweep_holds_the_lock(tmp_path):
    import threading

    from studies.sweep import StoreBusy, store_lock

    path = tmp_path / "s.zarr"
    got, release, errors = threading.Event(), threading.Event(), []

    def hold():
        with store_lock(path):
            got.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    got.wait(10)
    try:
        with pytest.raises(StoreBusy, match="pid"):
            run_sweep(make(), path, progress=False, wait=False)
        assert not path.exists()
    finally:
        release.set()
        t.join()
    ds, info = run_sweep(make(), path, progress=False, wait=False)
    assert info["computed"] == 9


# ------------------------------------------------------------- damaged parts, repaired
def _trunc(p):
    p.write_bytes(p.read_bytes()[:3])


def _chunk(store, var, i=0):
    return sorted(q for q in (store / var / "c").rglob("*") if q.is_file())[i]


PARTS = {
    "raw chunk": (lambda s: _trunc(_chunk(s, "x", 2)), 1),
    "raw metadata": (lambda s: (s / "x" / "zarr.json").write_text("{bad"), 0),
    "raw metadata deleted": (lambda s: (s / "y" / "zarr.json").unlink(), 0),
    "done chunk": (lambda s: _trunc(_chunk(s, "done", 4)), 0),
    "done metadata": (lambda s: (s / "done" / "zarr.json").write_text("{bad"), 0),
    "wall_s chunk": (lambda s: _trunc(_chunk(s, "wall_s", 1)), 1),
    "wall_s metadata": (lambda s: (s / "wall_s" / "zarr.json").write_text(""), 0),
    "coordinate chunk": (lambda s: _trunc(_chunk(s, "a", 0)), 0),
    "coordinate metadata": (lambda s: (s / "k" / "zarr.json").write_text("nope"), 0),
    "analysis chunk": (lambda s: _trunc(_chunk(s, "m", 0)), 0),
    "analysis metadata": (lambda s: (s / "m" / "zarr.json").write_text("nope"), 0),
    "root metadata": (lambda s: (s / "zarr.json").write_text("garbage"), 0),
    "root metadata deleted": (lambda s: (s / "zarr.json").unlink(), 0),
}


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    import xarray as xr

    path = tmp_path_factory.mktemp("toy") / "s.zarr"
    ds, _ = run_sweep(make(seed=3), path, progress=False)
    write_analysis(path, xr.Dataset({"m": (("a",), ds["y"].mean("b").values)}, coords={"a": ds["a"].values}))
    return path


@pytest.mark.parametrize("part", list(PARTS))
def test_each_damaged_part_is_refused_then_repaired_keeping_identity(toy_store, tmp_path, part):
    import xarray as xr

    from studies.sweep import IDENTITY_KEYS, StoreDamaged

    hurt, recomputed = PARTS[part]
    path = shutil.copytree(toy_store, tmp_path / "s.zarr")
    hurt(path)
    with pytest.raises(StoreDamaged, match="--repair") as e:
        run_sweep(make(seed=3), path, progress=False)
    assert len(str(e.value).splitlines()) == 1 and str(path) in str(e.value)
    ds, info = run_sweep(make(seed=3), path, progress=False, repair=True)
    assert info["computed"] == recomputed  # only a lost measurement (a value, a timing) is computed again
    write_analysis(path, xr.Dataset({"m": (("a",), ds["y"].mean("b").values)}, coords={"a": ds["a"].values}))
    got, want = open_result(path), open_result(toy_store)
    for v in ("x", "y", "done", "m"):
        np.testing.assert_array_equal(got[v].values, want[v].values)
    for c in ("a", "b", "k"):
        np.testing.assert_array_equal(got[c].values, want[c].values)
    assert np.all(np.isfinite(got["wall_s"].values))
    for k in (*IDENTITY_KEYS, "created_utc", "git_sha", "cli", "versions"):
        assert got.attrs[k] == want.attrs[k], k
    assert len(got.attrs["repairs"].splitlines()) == 1
    assert run_sweep(make(seed=3), path, progress=False)[1]["computed"] == 0  # healthy again


def test_a_root_whose_copy_is_another_runs_is_not_restored(toy_store, tmp_path):
    from studies.sweep import StoreDamaged

    path = shutil.copytree(toy_store, tmp_path / "s.zarr")
    (path / "zarr.json").write_text("garbage")
    with pytest.raises(StoreDamaged, match="cannot be recomputed.*--overwrite"):
        run_sweep(make(seed=4), path, progress=False, repair=True)  # another seed: not this store's run
    ds, info = run_sweep(make(seed=4), path, progress=False, overwrite=True)
    assert info["computed"] == 9 and ds.attrs["root_seed"] == "4"


def test_a_damaged_chunk_of_an_unfinished_cell_is_simply_written_over(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(make(seed=5, fail_after=4), path, progress=False)
    done = zarr.open_group(str(path))["done"][...]
    idx = tuple(int(i) for i in np.argwhere(~done)[0])
    chunk = path / "x" / "c" / "0" / str(idx[0]) / str(idx[1])
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(b"\x00\x01")  # a torn write of a cell that never finished
    ds, info = run_sweep(make(seed=5), path, progress=False)
    assert info["computed"] == 5
    full, _ = run_sweep(make(seed=5), tmp_path / "full.zarr", progress=False)
    np.testing.assert_array_equal(ds["x"].values, full["x"].values)
