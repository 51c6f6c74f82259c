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

from studies.sweep import open_result

GB = "of memory at its peak"  # the resource check's wording
WORK = "would take about"
SCORES = "leave float64's range"

# (module, argv, expected fragment of the one-line message)
SIZES = [
    ("studies.convergence", ["--quick", "--d", "100000"], GB),
    ("studies.convergence", ["--quick", "--n", "1e9..1e10/3"], GB),
    ("studies.convergence", ["--quick", "--reps", "100000000"], GB),
    ("studies.moments", ["--quick", "--d", "100000"], GB),
    ("studies.moments", ["--quick", "--reference", "finite:10000000000"], GB),
    ("studies.hardmax", ["--quick", "--n", "1e9..1e11/3"], GB),
    ("studies.hardmax", ["--quick", "--queries", "1000000000"], GB),
    ("studies.tails", ["--quick", "--moment-n", "1e9..1e10/3"], GB),
    ("studies.random_features", ["--quick", "--M", "100000"], GB),
    ("studies.random_features", ["--quick", "--n", "2^30..2^32"], GB),
    ("studies.tensor_attention", ["--quick", "--d", "60", "--degrees", "30"], GB),
    ("studies.icl", ["train", "--quick", "--batch", "2^40"], GB),
    ("studies.icl", ["estimators", "--quick", "--prompts", "2^40", "--reps", "2"], GB),
    ("studies.icl", ["length", "--quick", "--prompts", "2^40", "--reps", "2"], ""),
    ("studies.icl", ["noniso", "--quick", "--steps", "1000000000000"], GB),
    ("studies.icl", ["multitask", "--quick", "--steps", "100000000000", "--log-every", "100000000000"], WORK),
    ("studies.encoder", ["--quick", "--draws", "1e12"], WORK),
]
FLOATS = [
    ("studies.convergence", ["--quick", "--A-scale", "nan"], "not a number"),
    ("studies.convergence", ["--quick", "--A-scale", "inf"], "not a number"),
    ("studies.convergence", ["--quick", "--A-scale", "1e999"], "finite"),
    ("studies.convergence", ["--quick", "--A-scale", "1e308"], SCORES),
    ("studies.convergence", ["--quick", "--A-scale", "-1"], "positive"),
    ("studies.moments", ["--quick", "--rho", "nan"], "not a number"),
    ("studies.moments", ["--quick", "--rho", "0"], "positive"),
    ("studies.moments", ["--quick", "--radius", "-2"], "positive"),
    ("studies.moments", ["--quick", "--scales", "1e200,1e300"], SCORES),
    ("studies.hardmax", ["--quick", "--A-scale", "1e308"], SCORES),
    ("studies.hardmax", ["--quick", "--c", "inf"], "not a number"),
    ("studies.hardmax", ["--quick", "--radius", "0"], "positive"),
    ("studies.tails", ["--quick", "--gauss-A", "nan"], "not a number"),
    ("studies.tails", ["--quick", "--atom-eps", "2"], "(0, 1)"),
    ("studies.tails", ["--quick", "--trunc-sigma", "-1"], "positive"),
    ("studies.random_features", ["--quick", "--noise", "nan"], "not a number"),
    ("studies.random_features", ["--quick", "--noise", "-0.5"], "non-negative"),
    ("studies.random_features", ["--quick", "--lambda-min", "0"], "positive"),
    ("studies.random_features", ["--quick", "--w-var", "-1"], "positive"),
    ("studies.tensor_attention", ["--quick", "--timing-B", "0"], "positive"),
    ("studies.tensor_attention", ["--quick", "--B", "1e200"], SCORES),
    ("studies.icl", ["estimators", "--quick", "--omega", "nan"], "not a number"),
    ("studies.icl", ["estimators", "--quick", "--sigma2", "0"], "positive"),
    ("studies.icl", ["train", "--quick", "--lr", "2"], "< 1"),
    ("studies.icl", ["train", "--quick", "--sigma2", "-1"], "non-negative"),
    ("studies.icl", ["ode", "--quick", "--t-max", "1e9"], "<= 1e+07"),
    ("studies.icl", ["ode", "--quick", "--init", "nan"], "not a number"),
    ("studies.icl", ["ode", "--quick", "--random-sigma2", "-1"], "non-negative"),
    ("studies.icl", ["noniso", "--quick", "--rho", "1.5"], "[0, 1)"),
]
RUN_CONTROL = [
    ("studies.convergence", ["--quick", "--scheduler", "not an address"], "--scheduler"),
    ("studies.convergence", ["--quick", "--scheduler", "tcp://127.0.0.1:1"], "cannot connect"),
    ("studies.moments", ["--quick", "--scheduler", "tcp://127.0.0.1:99999"], "--scheduler"),
    ("studies.hardmax", ["--quick", "--dask-local", "2", "--scheduler", "tcp://127.0.0.1:1"], "choose one"),
    ("studies.tails", ["--quick", "--workers", "0"], "positive integer"),
    ("studies.random_features", ["--quick", "--scheduler", "tcp://:1"], "--scheduler"),
    ("studies.tensor_attention", ["--quick", "--seed", "-1"], "non-negative"),
    ("studies.icl", ["train", "--quick", "--workers", "2"], "one process"),
    ("studies.icl", ["estimators", "--quick", "--scheduler", "tcp://127.0.0.1:1"], "cannot connect"),
    ("studies.icl", ["ode", "--quick", "--device", "gpu"], "CPU"),
    ("studies.encoder", ["--quick", "--scheduler", "bogus"], "--scheduler"),
    ("studies.report", ["--quick", "--only", "nonsense"], "unknown study"),
    ("studies.report", ["--quick", "--scheduler", "tcp://127.0.0.1:1", "--dask-local", "2"], "choose one"),
]
MALFORMED = [
    ("studies.convergence", ["--quick", "--R", "8..1"], "descending"),
    ("studies.convergence", ["--quick", "--n", "2^8..2^9"], "at least 3"),
    ("studies.moments", ["--quick", "--reference", "finite:1.5"], "finite:N"),
    ("studies.moments", ["--quick", "--scales", "5..1/4"], "0 < A <= B"),
    ("studies.hardmax", ["--quick", "--d", "1"], ">= 2"),
    ("studies.hardmax", ["--quick", "--lam", "3"], "at least 2"),
    ("studies.tails", ["--quick", "--R", "1,2"], "at least 4"),
    ("studies.random_features", ["--quick", "--sweeps", "kernel,bogus"], "unknown sweep"),
    ("studies.random_features", ["--quick", "--targets", "nope3"], "target"),
    ("studies.tensor_attention", ["--quick", "--parts", "nope"], "unknown part"),
    ("studies.tensor_attention", ["--quick", "--k", "5"], "2, 3 or 4"),
    ("studies.icl", ["nope"], "invalid choice"),
    ("studies.icl", ["estimators", "--quick", "--reps", "3", "--prompts", "100"], "divide"),
    ("studies.icl", ["multitask", "--quick", "--d", "5"], "--d 6"),
    ("studies.icl", ["length", "--quick", "--models", "/nonexistent/m.zarr"], "no trained models"),
    ("studies.encoder", ["--quick", "--n", "5000,6000,7000"], "n <= 4096"),
    ("studies.encoder", ["--quick", "--text", "nope"], "text"),
]
TABLE = [("sizes", *r) for r in SIZES] + [("floats", *r) for r in FLOATS] + \
        [("run-control", *r) for r in RUN_CONTROL] + [("malformed", *r) for r in MALFORMED]


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _main(module):
    return importlib.import_module(module).main


def _exit(main, argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_the_table_is_large_and_covers_every_study_and_class():
    assert len(TABLE) >= 60
    assert {c for c, *_ in TABLE} == {"sizes", "floats", "run-control", "malformed"}
    studies = {m for _, m, *_ in TABLE} | {f"studies.icl {a[0]}" for _, m, a, _ in TABLE if m == "studies.icl"}
    for name in ("convergence", "moments", "hardmax", "tails", "random_features", "tensor_attention", "encoder",
                 "report", "icl train", "icl estimators", "icl ode", "icl length", "icl noniso", "icl multitask"):
        assert f"studies.{name}" in studies, name


@pytest.mark.parametrize("cls,module,argv,msg", TABLE, ids=[f"{c}:{m.split('.')[-1]}:{' '.join(a)[:40]}"
                                                              for c, m, a, _ in TABLE])
def test_bad_input(tmp_path, monkeypatch, capsys, cls, module, argv, msg):
    if module == "studies.encoder":
        pytest.importorskip("tokenizers")
    monkeypatch.chdir(tmp_path)  # anything written by mistake would land here
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "marker.txt").write_text("untouched")
    before = _snapshot(tmp_path)
    out = ["--results", str(tmp_path / "r")] if module == "studies.report" else ["--out", str(tmp_path / "x.zarr")]
    rc = _exit(_main(module), argv + out)
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
