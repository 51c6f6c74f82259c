"""Hardening, second round (issue 21): limits before work, one output rule, run control,
encoder inputs, the environment; damaged stores part by part; two writers on one store.

The table is data: one row a case, grouped by class. Every row must exit with status 2, print
exactly one line on stderr (no traceback) containing its fragment, and leave the test folder
exactly as it was (files, links and folders). Placeholders in a row's argv (``{loop}``,
``{other}``...) are made by :class:`Places` before the snapshot is taken.
"""
import contextlib
import errno
import functools
import hashlib
import importlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from studies.store import IDENTITY_KEYS, open_result
from tests.studies.conftest import ci_subset

ROOT = Path(__file__).resolve().parents[2]
TOO_LONG = "x" * 300
MODEL_VARIANTS = {  # config.json of a model folder -> what the one line says
    "empty": ("", "not valid JSON"),
    "broken": ("{\"hidden_size\": 384,", "not valid JSON"),
    "list": ("[1, 2]", "expected a JSON object"),
    "no_layers": (None, "num_hidden_layers is missing"),
    "zero_heads": ({"num_attention_heads": 0}, "num_attention_heads must be an integer"),
    "float_width": ({"hidden_size": 384.5}, "hidden_size must be an integer"),
    "more_layers": ({"num_hidden_layers": 12}, "no weight encoder.layer.6"),
}

LIMITS = [
    ("studies.convergence", ["--quick", "--R", "1..1e12"], "at most 100000"),
    ("studies.convergence", ["--quick", "--n", "1e3..1e5/1e10"], "at most 100000"),
    ("studies.convergence", ["--quick", "--n", "2^8..2^99999999"], "too large"),
    ("studies.convergence", ["--quick", "--seed", "9^99999999"], "too large"),
    ("studies.convergence", ["--quick", "--R", "1..1e999"], "finite"),
    ("studies.convergence", ["--quick", "--d", "9" * 500], "characters long"),
    ("studies.convergence", ["--quick", "--workers", "99999999999999999999"], "too large"),
    ("studies.convergence", ["--quick", "--workers", "100000"], "core(s)"),
    ("studies.hardmax", ["--quick", "--dask-local", "99999999999999999999"], "too large"),
    ("studies.hardmax", ["--quick", "--n", "2^8..2^63"], "too large"),
    ("studies.hardmax", ["--quick", "--reps", "2^64"], "too large"),
    ("studies.tails", ["--quick", "--moment-n", "1..1e7"], "at most 100000"),
    ("studies.moments", ["--quick", "--n", "1," * 100_000 + "2"], "at most 100000"),
    ("studies.benchmark", ["--quick", "--suite", ""], "empty list of suites"),
]
OUTPUT_PATHS = [
    *[(m, ["--quick", "--out", out], msg) for m in ("studies.convergence", "studies.benchmark") for out, msg in [
        ("", "empty path"),
        ("{loop}", "symlink loop"),
        ("{loop}/x.zarr", "symlink loop"),
        ("{dangling}", "dangling symlink"),
        ("{tmp}/" + TOO_LONG, "bytes long"),
        ("{tmp}/" + "d" * 40 + "/" + TOO_LONG + "/x.zarr", "bytes long"),
        ("{store}/inner.zarr", "inside the Zarr store"),
        ("{store}/done/x.zarr", "inside the Zarr store"),
        ("{folder}", "folder with content that is not a Zarr store"),
        ("{file}", "not a directory"),
        ("{other}", "store of the moments study"),
    ]],
    ("studies.hardmax", ["--quick", "--out", "."], "names the current directory, not a store"),
]
RUN_CONTROL = [
    ("studies.convergence", ["--quick", "--scheduler", ""], "--scheduler '': an empty address"),
    ("studies.convergence", ["--quick", "--scheduler", "  "], "--scheduler"),
    ("studies.convergence", ["--quick", "--scheduler", "{silent}"], "not a Dask scheduler"),
    ("studies.hardmax", ["--quick", "--dask-local", "100000"], "core(s)"),
    ("studies.hardmax", ["--quick", "--no-wait", "--out", "{held}"], "is being written by another run (pid"),
    ("studies.benchmark", ["--quick", "--suite", "attention", "--no-wait", "--out", "{held}"],
     "is being written by another run (pid"),
]
ENCODER = [
    ("studies.encoder", ["--quick", "--text", "file:/dev/zero"], "not a regular file"),
    ("studies.encoder", ["--quick", "--text", "file:~nosuchuser_h21/t.txt"], "cannot expand ~nosuchuser_h21"),
    ("studies.encoder", ["--quick", "--text", "file:{bigtext}"], "at most 64 MiB is read"),
    ("studies.encoder", ["--quick", "--text", "file:{latin1}"], "not UTF-8"),
    ("studies.encoder", ["--quick", "--text", "file:{tmp}/missing.txt"], "No such file"),
    ("studies.encoder", ["--quick", "--model", "~nosuchuser_h21/m"], "cannot expand ~nosuchuser_h21"),
    *[("studies.encoder", ["--quick", "--model", f"{{model_{k}}}"], msg) for k, (_, msg) in MODEL_VARIANTS.items()],
]
ENVIRONMENT = [  # (variable, value): run in a fresh process, the check is at import
    ("NUMBA_NUM_THREADS", "0"), ("NUMBA_NUM_THREADS", "100000"), ("NUMBA_NUM_THREADS", "abc"),
    ("OMP_NUM_THREADS", "abc"), ("OMP_NUM_THREADS", "0"), ("OPENBLAS_NUM_THREADS", "-2"),
    ("NUMBA_THREADING_LAYER", "foo"), ("NUMBA_CPU_FEATURES", "garbage"), ("NUMBA_CPU_FEATURES", "+nosuchfeature"),
    ("NUMBA_OPT", "9"), ("NUMBA_DISABLE_JIT", "x"),
]
TABLE = ([("limits", *r) for r in LIMITS] + [("output paths", *r) for r in OUTPUT_PATHS]
         + [("run control", *r) for r in RUN_CONTROL] + [("encoder inputs", *r) for r in ENCODER])


def _exit(main, argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def snapshot(root: Path) -> dict:
    """Every file (its hash), link (its target) and folder under ``root``, links not followed."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Places:
    """The things a row's placeholders name, made on first use inside ``tmp``."""

    def __init__(self, tmp: Path, stack: contextlib.ExitStack):
        self.tmp = tmp
        self.stack = stack

    def fmt(self, text: str) -> str:
        import re

        return re.sub(r"\{(\w+)\}", lambda m: str(getattr(self, m.group(1))), text)

    def __getattr__(self, name):
        if name.startswith("model_"):
            return self._model(name[6:])
        raise AttributeError(name)

    @functools.cached_property
    def loop(self):
        p = self.tmp / "loop"
        os.symlink(p, p)
        return p

    @functools.cached_property
    def dangling(self):
        p = self.tmp / "dangling.zarr"
        os.symlink(self.tmp / "nowhere" / "x.zarr", p)
        return p

    @functools.cached_property
    def store(self):
        p = self.tmp / "a.zarr"
        g = zarr.open_group(str(p), mode="w")
        g.attrs["study"] = "convergence"
        g.create_array("done", shape=(2,), dtype=bool)
        return p

    @functools.cached_property
    def other(self):
        p = self.tmp / "other.zarr"
        zarr.open_group(str(p), mode="w").attrs.update({"study": "moments", "params_json": "{}"})
        return p

    @functools.cached_property
    def folder(self):
        p = self.tmp / "mine"
        p.mkdir()
        (p / "notes.txt").write_text("keep me")
        return p

    @functools.cached_property
    def file(self):
        p = self.tmp / "file.zarr"
        p.write_text("not a store")
        return p

    @functools.cached_property
    def silent(self):
        """A port that accepts TCP connections and never says a word (not a Dask scheduler)."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        self.stack.callback(s.close)
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"

    @functools.cached_property
    def held(self):
        """A store path whose writer's lock another thread holds."""
        from studies.lock import store_lock

        p = self.tmp / "held.zarr"
        got, release = threading.Event(), threading.Event()

        def hold():
            with store_lock(p):
                got.set()
                release.wait(60)

        t = threading.Thread(target=hold, daemon=True)
        t.start()
        assert got.wait(10)
        self.stack.callback(t.join, 10)
        self.stack.callback(release.set)
        return p

    @functools.cached_property
    def bigtext(self):
        p = self.tmp / "big.txt"
        with open(p, "wb") as f:
            f.truncate(65 << 20)  # sparse: no disk used
        return p

    @functools.cached_property
    def latin1(self):
        p = self.tmp / "latin1.txt"
        p.write_bytes("caf\xe9 au lait ".encode("latin-1") * 100)
        return p

    def _model(self, kind):
        import sim.encoder as enc

        src = enc.model_dir()
        p = self.tmp / f"model_{kind}"
        p.mkdir()
        for f in ("model.safetensors", "tokenizer.json"):
            os.symlink(src / f, p / f)
        text, _ = MODEL_VARIANTS[kind]
        if text is None or isinstance(text, dict):
            cfg = json.loads((src / "config.json").read_text())
            cfg = {k: v for k, v in cfg.items() if k != "num_hidden_layers"} if text is None else {**cfg, **text}
            text = json.dumps(cfg)
        (p / "config.json").write_text(text)
        return p


def test_the_table_covers_every_class():
    classes = {}
    for cls, *_ in TABLE:
        classes[cls] = classes.get(cls, 0) + 1
    classes["environment"] = len(ENVIRONMENT)
    assert set(classes) == {"limits", "output paths", "run control", "encoder inputs", "environment"}
    assert all(n >= 5 for n in classes.values()), classes
    assert sum(classes.values()) >= 60


@pytest.mark.parametrize("cls,module,argv,msg", TABLE,
                         ids=[f"{c}:{m.split('.')[-1]}:{' '.join(a)[:48]}" for c, m, a, _ in TABLE])
def test_bad_input(tmp_path, monkeypatch, capsys, cls, module, argv, msg):
    if module == "studies.encoder":
        pytest.importorskip("tokenizers")
        import sim.encoder as enc

        if not enc.encoder_available()[0]:
            pytest.skip("the encoder's model is not installed")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # anything written by mistake would land here
    with contextlib.ExitStack() as stack:
        places = Places(work, stack)
        argv = [places.fmt(a.replace("{tmp}", str(work))) for a in argv]
        if "--out" not in argv:
            argv += ["--out", str(work / "x.zarr")]
        before = snapshot(work)
        t0 = time.perf_counter()
        rc = _exit(importlib.import_module(module).main, argv)
        took = time.perf_counter() - t0
        err = capsys.readouterr().err
        after = snapshot(work)
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert msg in err, err
    assert after == before, "something was created or changed"
    assert took < 30, f"{took:.1f} s to refuse"


@pytest.mark.parametrize("name,value", ENVIRONMENT, ids=[f"{n}={v}" for n, v in ENVIRONMENT])
def test_bad_environment_is_one_line_before_anything(tmp_path, name, value):
    env = {**os.environ, name: value, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "studies.convergence", "--quick", "--out", str(tmp_path / "x.zarr")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr and name in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_check_environment_accepts_what_the_libraries_accept():
    from sim import BadEnvironment, check_environment

    check_environment({"NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "4,2", "NUMBA_THREADING_LAYER": "workqueue",
                       "NUMBA_OPT": "max", "OPENBLAS_NUM_THREADS": "", "NUMBA_CPU_FEATURES": "+sse2,-prefer-256-bit"})
    with pytest.raises(BadEnvironment, match="NUMBA_NUM_THREADS"):
        check_environment({"NUMBA_NUM_THREADS": "0"})


# ------------------------------------------------------------------------------ limits
@pytest.mark.parametrize("option,text", [("--R", "1..1e12"), ("--n", "2^8..2^99999999")])
def test_limits_refuse_in_constant_time_and_memory(option, text):
    """The issue's two examples are refused in under 50 ms and 1 MiB (a range is counted, a power
    is bounded by its logarithm, before anything is expanded)."""
    import argparse
    import tracemalloc

    from studies.parsing import parse_n_grid, parse_range

    parse = (lambda t: parse_range(t, float)) if option == "--R" else parse_n_grid
    with contextlib.suppress(argparse.ArgumentTypeError):
        parse(text)  # warm: regular expressions compiled
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert took < 0.05 and peak < 1 << 20, (took, peak)


# -------------------------------------------------------------------- the output rule
def test_folder_of_stores_rule(tmp_path):
    """kind="folder" (the report's --results): a folder of stores and the command's own files."""
    from studies.guards import UsageError, check_output

    own = ("report.*", "claims.csv", "logs", "figures", "*.png")
    res = tmp_path / "results"
    assert check_output(res, kind="folder", option="--results", allowed=own) == res  # absent: fine
    res.mkdir()
    zarr.open_group(str(res / "convergence.zarr"), mode="w").attrs["study"] = "convergence"
    (res / "report.html").write_text("<html/>")
    (res / "logs").mkdir()
    check_output(res, kind="folder", option="--results", allowed=own)
    check_output(res / "convergence.zarr", kind="store", study="convergence")
    with pytest.raises(UsageError, match="store of the convergence study, not of moments"):
        check_output(res / "convergence.zarr", kind="store", study="moments")
    with pytest.raises(UsageError, match="is a Zarr store, not a folder"):
        check_output(res / "convergence.zarr", kind="folder", option="--results", allowed=own)
    with pytest.raises(UsageError, match="lies inside the Zarr store"):
        check_output(res / "convergence.zarr" / "r", kind="folder", option="--results", allowed=own)
    (res / "thesis.tex").write_text("mine")
    with pytest.raises(UsageError, match="holds files of its own \\('thesis.tex'\\)"):
        check_output(res, kind="folder", option="--results", allowed=own)
    check_output(Path("."), kind="folder", option="--results", allowed=("*",))  # '.' is a folder, not a store


# ------------------------------------------------------------------------ run control
def test_a_real_dask_scheduler_passes_the_handshake():
    distributed = pytest.importorskip("distributed")
    from studies.guards import check_scheduler

    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp://",
                                  dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        t0 = time.perf_counter()
        check_scheduler(cluster.scheduler_address)
        assert time.perf_counter() - t0 < 3


def test_lock_is_reentrant_and_leaves_no_file(tmp_path, capsys):
    from studies.lock import StoreBusy, lock_file, lock_holder, store_lock

    out = tmp_path / "new" / "deeper" / "s.zarr"
    with store_lock(out):
        assert lock_holder(out)["pid"] == os.getpid()
        with store_lock(out, wait=False):  # the same thread: reentrant
            pass
        errors = []

        def other():
            try:
                with store_lock(out, wait=False):
                    pass
            except StoreBusy as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0]
    assert not lock_file(out).exists()
    assert not (tmp_path / "new").exists()  # the folders made for the lock are removed again


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys):
    from studies.lock import lock_file, store_lock

    out = tmp_path / "s.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    import platform

    lock_file(out).write_text(json.dumps({"pid": int(dead), "host": platform.node(), "cmd": "killed run"}))
    t0 = time.perf_counter()
    with store_lock(out, wait=False):
        pass
    assert time.perf_counter() - t0 < 5
    assert f"took over the lock left by pid {dead}" in capsys.readouterr().err


def test_a_waiting_writer_says_so_then_runs(tmp_path, capsys):
    from studies.lock import store_lock

    out = tmp_path / "s.zarr"
    order = []
    got = threading.Event()

    def first():
        with store_lock(out):
            got.set()
            time.sleep(0.5)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    got.wait(5)
    with store_lock(out):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    assert "waiting for the run writing it to finish" in capsys.readouterr().err


# --------------------------------------------------------------------- encoder inputs
def test_text_lee_reads_gensims_corpus(tmp_path, monkeypatch):
    """``--text lee`` used to fail always (a local import shadowed importlib); with a gensim
    installation that has the corpus it is read, bounded like any text file."""
    import sim.encoder as enc

    pkg = tmp_path / "site" / "gensim"
    (pkg / "test" / "test_data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "test" / "test_data" / "lee_background.cor").write_text("Hundreds of fires were burning.\n" * 10)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    text, desc = enc.load_text("lee")
    assert text.startswith("Hundreds of fires") and "lee_background" in desc


# ------------------------------------------------------------------ damaged stores (CLI)
QUICK = ["--R", "1,8", "--quick", "--no-progress"]


def _conv(argv):
    from studies import convergence

    return _exit(convergence.main, argv)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    """The undamaged store, written with an ASCII-only terminal: the summary's ``±`` must come
    out as ``+/-``, not as a UnicodeEncodeError after the store was written."""
    out = tmp_path_factory.mktemp("clean") / "c.zarr"
    buf = io.BytesIO()
    ascii_out = io.TextIOWrapper(buf, encoding="ascii")
    with contextlib.redirect_stdout(ascii_out):
        rc = _conv(QUICK + ["--out", str(out)])
        ascii_out.flush()
    printed = buf.getvalue().decode("ascii")
    assert rc == 0 and "+/-" in printed and "wrote" in printed
    return out


def _chunks(store, var):
    return sorted(p for p in (store / var / "c").rglob("*") if p.is_file())


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[:3])


DAMAGE = {  # part -> (how, the variable the refusal names)
    "raw chunk": (lambda s: _truncate(_chunks(s, "sup_err")[4]), "variable sup_err"),
    "done chunk": (lambda s: _truncate(_chunks(s, "done")[7]), "variable done"),
    "done metadata": (lambda s: (s / "done" / "zarr.json").write_text("{"), "variable done"),
    "analysis variable": (lambda s: _truncate(_chunks(s, "fit_slope")[0]), "variable fit_slope"),
    "claims": (lambda s: (s / "claim_outcome" / "zarr.json").write_text("[]"), "variable claim_outcome"),
    "coordinate": (lambda s: _truncate(_chunks(s, "n")[0]), "variable n"),
    "wall_s": (lambda s: _truncate(_chunks(s, "wall_s")[2]), "variable wall_s"),
    "root metadata": (lambda s: (s / "zarr.json").write_text("garbage"), "metadata is unreadable"),
    "root metadata deleted": (lambda s: (s / "zarr.json").unlink(), "root metadata (zarr.json) is missing"),
    "array metadata": (lambda s: (s / "argmax_radius" / "zarr.json").write_text(""), "variable argmax_radius"),
}
KEEP = (*IDENTITY_KEYS, "created_utc", "git_sha", "cli", "versions", "host", "seed_policy")


def _same_numbers(a: xr.Dataset, b: xr.Dataset):
    assert set(a.data_vars) == set(b.data_vars)
    for v in b.data_vars:
        if v == "wall_s":  # a recomputed cell is timed again
            assert np.all(np.isfinite(a[v].values))
            continue
        x, y = a[v].values, b[v].values
        same = np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)
        assert same, v
    for c in b.coords:
        assert np.array_equal(a[c].values, b[c].values), c


@pytest.mark.parametrize("part", ci_subset(list(DAMAGE), keep=("raw chunk", "done metadata", "claims",
                                                             "root metadata deleted")))
def test_damaged_part_is_refused_then_repaired_to_the_same_store(clean_store, tmp_path, capsys, part):
    hurt, names = DAMAGE[part]
    store = shutil.copytree(clean_store, tmp_path / "d.zarr")
    hurt(store)
    before = snapshot(tmp_path)
    assert _conv(QUICK + ["--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(store) in err and names in err and "--repair" in err, err
    assert snapshot(tmp_path) == before
    assert _conv(QUICK + ["--out", str(store), "--repair"]) == 0
    err = capsys.readouterr().err
    assert "repaired" in err and "Traceback" not in err, err
    got, want = open_result(store), open_result(clean_store)
    _same_numbers(got, want)
    assert {k: got.attrs.get(k) for k in KEEP} == {k: want.attrs.get(k) for k in KEEP}
    assert got.attrs["repairs"].count("\n") == 0 and "(by: " in got.attrs["repairs"]  # one provenance line
    assert _conv(QUICK + ["--out", str(store)]) == 0  # and it resumes as a healthy store
    assert "(0 computed, 50 already done)" in capsys.readouterr().out


def test_a_refusal_has_no_asyncio_noise(clean_store, tmp_path):
    """In a fresh process (the noise appears at interpreter exit): one line, nothing after it."""
    store = shutil.copytree(clean_store, tmp_path / "d.zarr")
    _truncate(_chunks(store, "done")[3])
    r = subprocess.run([sys.executable, "-m", "studies.convergence", *QUICK, "--out", str(store)], cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for noise in ("Task was destroyed", "Event loop is closed", "Traceback"):
        assert noise not in r.stderr


# ----------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("when", ["cells", "analysis"])
def test_full_disk_is_one_line_and_the_store_resumes(clean_store, tmp_path, capsys, monkeypatch, when):
    """No space left while cells are written, or while the analysis is: one line, exit 2; the
    rerun (space freed) resumes and ends equal to the undamaged store."""
    import zarr.storage._local as local

    real = local._put
    state = {"n": 0}

    def full(path, value, exclusive=False):
        p = str(path)
        cell = "/sup_err/c/" in p
        analysis = "/fit_slope/" in p or "/claim_" in p
        if (when == "cells" and cell and state["n"] >= 20) or (when == "analysis" and analysis):
            raise OSError(errno.ENOSPC, "No space left on device")
        state["n"] += cell
        return real(path, value, exclusive)

    out = tmp_path / "full.zarr"
    monkeypatch.setattr(local, "_put", full)
    assert _conv(QUICK + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err and "resume" in err, err
    monkeypatch.setattr(local, "_put", real)
    assert _conv(QUICK + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("(30 computed, 20 already done)" if when == "cells" else "(0 computed, 50 already done)") in printed
    got, want = open_result(out), open_result(clean_store)
    _same_numbers(got, want)
    assert got.attrs["params_json"] == want.attrs["params_json"]


# ------------------------------------------------------------------------ two writers
RACER = textwrap.dedent('''
    """A small study run: the shared lock, sweep, analysis write and one-line errors."""
    import sys

    import numpy as np
    import xarray as xr

    from studies.cli import UsageError, run_main, store_errors
    from studies.lock import store_lock
    from studies.sweep import Sweep, run_sweep, write_analysis


    def cell(c):
        rng = np.random.default_rng(c.seed)
        return {"x": rng.standard_normal(4) + c.coords["a"], "y": np.array(rng.random())}


    def impl(argv):
        out, wait = argv[0], argv[1] == "wait"
        sweep = Sweep(study="racer", cell_dims={"a": np.arange(3), "b": np.arange(4)},
                      variables={"x": ("k", "a", "b"), "y": ("a", "b")}, coords={"k": np.arange(4)},
                      params={"v": 1}, run_cell=cell, root_seed=11)
        with store_errors(out):
            with store_lock(out, wait=wait):
                ds, info = run_sweep(sweep, out, progress=False)
                write_analysis(out, xr.Dataset({"m": ds["x"].mean("k")}))
        print(f"computed {info['computed']}")


    sys.exit(run_main(impl, sys.argv[1:], prog="racer"))
''')


def _race(tmp_path, rounds: int, seed: int):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref.zarr"
    subprocess.run([sys.executable, str(script), str(ref), "wait"], env=env, check=True, capture_output=True)
    want = open_result(ref)
    rng = random.Random(seed)
    outcomes = {"both ran": 0, "one refused": 0}
    for i in range(rounds):
        out = tmp_path / f"race{i}.zarr"
        delay = rng.uniform(0.0, 1.5)  # the second start, after the first
        second_waits = rng.random() < 0.5
        procs = [subprocess.Popen([sys.executable, str(script), str(out), "wait"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
        time.sleep(delay)
        procs.append(subprocess.Popen([sys.executable, str(script), str(out), "wait" if second_waits else "nowait"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        ran = [r for r in results if r[0] == 0]
        refused = [r for r in results if r[0] != 0]
        for rc, _, err in refused:  # a refusal is one clear line naming the holder
            assert rc == 2 and not second_waits, (delay, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "is being written by another run (pid" in lines[0], err
        assert ran, results
        computed = sorted(int(o.split()[-1]) for _, o, _ in ran)
        assert computed in ([12], [0, 12]), (delay, results)  # one writer computed it all, nobody twice
        got = open_result(out)
        assert bool(got["done"].all())
        for v in ("x", "y", "m"):
            np.testing.assert_array_equal(got[v].values, want[v].values)
        assert not (tmp_path / f".race{i}.zarr.lock").exists()
        assert not list(tmp_path.glob(f".race{i}.zarr.*"))  # no lock, no half-made store left behind
        outcomes["one refused" if refused else "both ran"] += 1
    return outcomes


def test_two_writers_race(tmp_path):
    """Two runs (processes) on one --out, started 0 to 1.5 s apart (seeded), the second waiting
    or not: every outcome is a store identical to a clean run's, or that plus one clear refusal."""
    outcomes = _race(tmp_path, rounds=4, seed=21)
    assert sum(outcomes.values()) == 4


@pytest.mark.slow
def test_two_writers_race_many_times(tmp_path):
    outcomes = _race(tmp_path, rounds=40, seed=2121)
    print(f"two-writer race, 40 rounds: {outcomes}")
    assert sum(outcomes.values()) == 40 and outcomes["one refused"] > 0


def _toy_sweep():
    def cell(c):
        rng = np.random.default_rng(c.seed)
        return {"x": rng.standard_normal(4) + c.coords["a"], "y": np.array(rng.random())}

    from studies.sweep import Sweep

    return Sweep(study="racer", cell_dims={"a": np.arange(3), "b": np.arange(4)},
                 variables={"x": ("k", "a", "b"), "y": ("a", "b")}, coords={"k": np.arange(4)},
                 params={"v": 1}, run_cell=cell, root_seed=11)


def test_two_writers_race_in_threads(tmp_path):
    """The same race many times, cheaply: two threads of one process are two writers too (the
    lock is per thread), started 0 to 60 ms apart (seeded) -- they interleave at every stage
    of a run: lock, creation, cells, analysis."""
    from studies.lock import StoreBusy, store_lock
    from studies.sweep import run_sweep, write_analysis

    sweep = _toy_sweep()
    ref, _ = run_sweep(sweep, tmp_path / "ref.zarr", progress=False)
    rng = random.Random(7)
    refusals = 0
    for i in range(30):
        out = tmp_path / f"t{i}.zarr"
        results = {}
        waits = [True, rng.random() < 0.5]
        delays = [0.0, rng.uniform(0.0, 0.06)]

        def writer(k):
            time.sleep(delays[k])
            try:
                with store_lock(out, wait=waits[k]):
                    ds, info = run_sweep(_toy_sweep(), out, progress=False, wait=False)
                    write_analysis(out, xr.Dataset({"m": ds["x"].mean("k")}))
                results[k] = info["computed"]
            except StoreBusy as e:
                results[k] = str(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        computed = sorted(v for v in results.values() if isinstance(v, int))
        busy = [v for v in results.values() if isinstance(v, str)]
        assert computed in ([12], [0, 12]) and len(computed) + len(busy) == 2, results
        assert all("is being written by another run (pid" in b for b in busy)
        refusals += len(busy)
        got = open_result(out)
        for v in ("x", "y"):
            np.testing.assert_array_equal(got[v].values, ref[v].values)
        np.testing.assert_array_equal(got["m"].values, ref["x"].mean("k").values)
        assert not list(tmp_path.glob(f".t{i}.zarr*"))
    print(f"thread race, 30 rounds: {refusals} refusal(s), the rest both ran")
    assert refusals > 0
