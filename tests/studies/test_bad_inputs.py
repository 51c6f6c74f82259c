"""Bad inputs over every study and subcommand: exit 2, at most one line on stderr, no
traceback, nothing created or changed; and damaged stores: recomputed, repaired or named.

The table is grouped by the class of mistake (issue "Hardening"): sizes that cannot fit,
non-finite or extreme floats, run-control errors, and malformed options. Extend it whenever a
study gains an option."""
import hashlib
import importlib
from pathlib import Path

import numpy as np
import pytest

from studies.catalog import STUDIES, by_name, requirement_met
from studies.sweep import open_result

GB = "of memory at its peak"  # the resource check's wording
WORK = "would take about"
SCORES = "leave float64's range"

# (catalogue name, argv, expected fragment of the one-line message); commands that are not studies
# (the report, the icl dispatcher itself) are named by their module in COMMANDS
SIZES = [
    ("convergence", ["--quick", "--d", "100000"], GB),
    ("convergence", ["--quick", "--n", "1e9..1e10/3"], GB),
    ("convergence", ["--quick", "--reps", "100000000"], GB),
    ("moments", ["--quick", "--d", "100000"], GB),
    ("moments", ["--quick", "--reference", "finite:10000000000"], GB),
    ("hardmax", ["--quick", "--n", "1e9..1e11/3"], GB),
    ("hardmax", ["--quick", "--queries", "1000000000"], GB),
    ("tails", ["--quick", "--moment-n", "1e9..1e10/3"], GB),
    ("random_features", ["--quick", "--M", "100000"], GB),
    ("random_features", ["--quick", "--n", "2^30..2^32"], GB),
    ("tensor_attention", ["--quick", "--d", "60", "--degrees", "30"], GB),
    ("icl_train", ["--quick", "--batch", "2^40"], GB),
    ("icl_estimators", ["--quick", "--prompts", "2^40", "--reps", "2"], GB),
    ("icl_length", ["--quick", "--prompts", "2^40", "--reps", "2"], ""),
    ("icl_noniso", ["--quick", "--steps", "1000000000000"], GB),
    ("icl_multitask", ["--quick", "--steps", "100000000000", "--log-every", "100000000000"], WORK),
    ("encoder", ["--quick", "--draws", "1e12"], WORK),
    ("token_selection", ["--quick", "--queries", "100000000"], GB),
]
FLOATS = [
    ("convergence", ["--quick", "--A-scale", "nan"], "not a number"),
    ("convergence", ["--quick", "--A-scale", "inf"], "not a number"),
    ("convergence", ["--quick", "--A-scale", "1e999"], "finite"),
    ("convergence", ["--quick", "--A-scale", "1e308"], SCORES),
    ("convergence", ["--quick", "--A-scale", "-1"], "positive"),
    ("moments", ["--quick", "--rho", "nan"], "not a number"),
    ("moments", ["--quick", "--rho", "0"], "positive"),
    ("moments", ["--quick", "--radius", "-2"], "positive"),
    ("moments", ["--quick", "--scales", "1e200,1e300"], SCORES),
    ("hardmax", ["--quick", "--A-scale", "1e308"], SCORES),
    ("hardmax", ["--quick", "--c", "inf"], "not a number"),
    ("hardmax", ["--quick", "--radius", "0"], "positive"),
    ("tails", ["--quick", "--gauss-A", "nan"], "not a number"),
    ("tails", ["--quick", "--atom-eps", "2"], "(0, 1)"),
    ("tails", ["--quick", "--trunc-sigma", "-1"], "positive"),
    ("random_features", ["--quick", "--noise", "nan"], "not a number"),
    ("random_features", ["--quick", "--noise", "-0.5"], "non-negative"),
    ("random_features", ["--quick", "--lambda-min", "0"], "positive"),
    ("random_features", ["--quick", "--w-var", "-1"], "positive"),
    ("tensor_attention", ["--quick", "--timing-B", "0"], "positive"),
    ("tensor_attention", ["--quick", "--B", "1e200"], SCORES),
    ("icl_estimators", ["--quick", "--omega", "nan"], "not a number"),
    ("icl_estimators", ["--quick", "--sigma2", "0"], "positive"),
    ("icl_train", ["--quick", "--lr", "2"], "< 1"),
    ("icl_train", ["--quick", "--sigma2", "-1"], "non-negative"),
    ("icl_ode", ["--quick", "--t-max", "1e9"], "<= 1e+07"),
    ("icl_ode", ["--quick", "--init", "nan"], "not a number"),
    ("icl_ode", ["--quick", "--random-sigma2", "-1"], "non-negative"),
    ("icl_noniso", ["--quick", "--rho", "1.5"], "[0, 1)"),
    ("token_selection", ["--quick", "--va-eps", "nan"], "not a number"),
    ("token_selection", ["--quick", "--sigma", "0.5,1,7"], "(0, 6]"),
]
RUN_CONTROL = [
    ("convergence", ["--quick", "--scheduler", "not an address"], "--scheduler"),
    ("convergence", ["--quick", "--scheduler", "tcp://127.0.0.1:1"], "cannot connect"),
    ("moments", ["--quick", "--scheduler", "tcp://127.0.0.1:99999"], "--scheduler"),
    ("hardmax", ["--quick", "--dask-local", "2", "--scheduler", "tcp://127.0.0.1:1"], "choose one"),
    ("tails", ["--quick", "--workers", "0"], "positive integer"),
    ("random_features", ["--quick", "--scheduler", "tcp://:1"], "--scheduler"),
    ("tensor_attention", ["--quick", "--seed", "-1"], "non-negative"),
    ("icl_train", ["--quick", "--workers", "2"], "one process"),
    ("icl_estimators", ["--quick", "--scheduler", "tcp://127.0.0.1:1"], "cannot connect"),
    ("icl_ode", ["--quick", "--device", "gpu"], "CPU"),
    ("encoder", ["--quick", "--scheduler", "bogus"], "--scheduler"),
    ("token_selection", ["--quick", "--device", "gpu"], "CPU"),
]
MALFORMED = [
    ("convergence", ["--quick", "--R", "8..1"], "descending"),
    ("convergence", ["--quick", "--n", "2^8..2^9"], "at least 3"),
    ("moments", ["--quick", "--reference", "finite:1.5"], "finite:N"),
    ("moments", ["--quick", "--scales", "5..1/4"], "0 < A <= B"),
    ("hardmax", ["--quick", "--d", "1"], ">= 2"),
    ("hardmax", ["--quick", "--lam", "3"], "at least 2"),
    ("tails", ["--quick", "--R", "1,2"], "at least 4"),
    ("random_features", ["--quick", "--parts", "kernel,bogus"], "unknown group"),
    ("random_features", ["--quick", "--targets", "nope3"], "target"),
    ("tensor_attention", ["--quick", "--parts", "nope"], "unknown group"),
    ("tensor_attention", ["--quick", "--k", "5"], "2, 3 or 4"),
    ("icl_estimators", ["--quick", "--reps", "3", "--prompts", "100"], "divide"),
    ("icl_multitask", ["--quick", "--d", "5"], "--d 6"),
    ("icl_length", ["--quick", "--models", "/nonexistent/m.zarr"], "no trained models"),
    ("encoder", ["--quick", "--n", "5000,6000,7000"], "n <= 4096"),
    ("encoder", ["--quick", "--text", "nope"], "text"),
    ("token_selection", ["--quick", "--n", "2^10,2^12"], "one size"),
    ("token_selection", ["--quick", "--parts", "budget,nope"], "unknown group"),
]
COMMANDS = [
    ("studies.report", ["--quick", "--only", "nonsense"], "unknown study"),
    ("studies.report", ["--quick", "--scheduler", "tcp://127.0.0.1:1", "--dask-local", "2"], "choose one"),
    ("studies.icl", ["nope"], "invalid choice"),
]
TABLE = [("sizes", *r) for r in SIZES] + [("floats", *r) for r in FLOATS] + \
        [("run-control", *r) for r in RUN_CONTROL] + [("malformed", *r) for r in MALFORMED] + \
        [("command", *r) for r in COMMANDS]


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _main(name):
    """The ``main(argv)`` of a catalogue study (its runner with its subcommand) or a command."""
    if name.startswith("studies."):
        return importlib.import_module(name).main
    return by_name(name).main


def _exit(main, argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_the_table_is_large_and_covers_every_study_and_class():
    """Every study of the catalogue has rows (the generic ones every study shares are the
    contract's ``usage_errors`` check), and every class of mistake is present."""
    assert len(TABLE) >= 60
    assert {c for c, *_ in TABLE} == {"sizes", "floats", "run-control", "malformed", "command"}
    named = {m for _, m, *_ in TABLE}
    assert {e.name for e in STUDIES} <= named, {e.name for e in STUDIES} - named
    assert named - {e.name for e in STUDIES} == {"studies.report", "studies.icl"}


@pytest.mark.parametrize("cls,name,argv,msg", TABLE, ids=[f"{c}:{m.split('.')[-1]}:{' '.join(a)[:40]}"
                                                            for c, m, a, _ in TABLE])
def test_bad_input(tmp_path, monkeypatch, capsys, cls, name, argv, msg):
    if not name.startswith("studies."):
        ok, why = requirement_met(by_name(name))
        if not ok:
            pytest.skip(why)
    monkeypatch.chdir(tmp_path)  # anything written by mistake would land here
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "marker.txt").write_text("untouched")
    before = _snapshot(tmp_path)
    out = ["--results", str(tmp_path / "r")] if name == "studies.report" else ["--out", str(tmp_path / "x.zarr")]
    rc = _exit(_main(name), argv + out)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) <= 1 and "Traceback" not in err, err
    assert msg in err, err
    assert _snapshot(tmp_path) == before, "something was created or changed"


# ------------------------------------------------------------------------ damaged stores
QUICK = ["--R", "1,8", "--quick", "--no-progress"]


def _conv(argv):
    from studies import convergence

    return _exit(convergence.main, argv)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "c.zarr"
    assert _conv(QUICK + ["--out", str(out)]) == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _chunks(store, var):
    return sorted(p for p in (store / var / "c").rglob("*") if p.is_file())


def test_deleted_chunk_is_recomputed_and_equals_the_undamaged_run(clean_store, tmp_path, capsys):
    store = _copy(clean_store, tmp_path / "d.zarr")
    _chunks(store, "sup_err")[3].unlink()
    assert _conv(QUICK + ["--out", str(store)]) == 0
    captured = capsys.readouterr()
    assert "1 finished cell(s) had missing or unreadable data; recomputing them" in captured.err
    assert "(1 computed" in captured.out
    a, b = open_result(store), open_result(clean_store)
    np.testing.assert_array_equal(a["sup_err"].values, b["sup_err"].values)
    np.testing.assert_array_equal(a["claim_outcome"].values, b["claim_outcome"].values)
    assert np.all(np.isfinite(a["fit_slope"].values))


def test_truncated_chunk_is_one_line_then_repaired(clean_store, tmp_path, capsys):
    store = _copy(clean_store, tmp_path / "t.zarr")
    chunk = _chunks(store, "sup_err")[5]
    chunk.write_bytes(chunk.read_bytes()[:7])
    before = _snapshot(store)
    assert _conv(QUICK + ["--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(store) in err and "variable sup_err is damaged" in err and "--repair" in err
    assert _snapshot(store) == before
    from paper_figs import convergence as fig

    assert fig.main([str(store), "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "sup_err is damaged" in err
    assert _conv(QUICK + ["--out", str(store), "--repair"]) == 0
    np.testing.assert_array_equal(open_result(store)["sup_err"].values, open_result(clean_store)["sup_err"].values)


def test_garbled_metadata_is_one_line_naming_the_variable_then_repaired(clean_store, tmp_path, capsys):
    store = _copy(clean_store, tmp_path / "g.zarr")
    (store / "argmax_radius" / "zarr.json").write_text("{not json")
    assert _conv(QUICK + ["--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "variable argmax_radius is damaged" in err
    assert _conv(QUICK + ["--out", str(store), "--repair"]) == 0
    a, b = open_result(store), open_result(clean_store)
    np.testing.assert_array_equal(a["argmax_radius"].values, b["argmax_radius"].values)


def test_garbled_root_metadata_is_one_line(clean_store, tmp_path, capsys):
    store = _copy(clean_store, tmp_path / "r.zarr")
    (store / "zarr.json").write_text("garbage")
    assert _conv(QUICK + ["--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "metadata is unreadable" in err and "--overwrite" in err


def test_figure_of_another_study_says_whose_store(clean_store, capsys):
    from paper_figs import hardmax as fig

    assert fig.main([str(clean_store)]) == 2
    err = capsys.readouterr().err
    assert "store of the convergence study" in err and "paper_figs.convergence" in err


def test_store_opens_quietly_with_plain_xarray(clean_store):
    """Finished stores are consolidated: plain xr.open_zarr(path) reads them without warnings."""
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with xr.open_zarr(str(clean_store)) as ds:
            assert "claim_outcome" in ds
