"""The study contract as named checks, run over every study of the catalogue.

In the manner of a library's "check every estimator" suite: each check is a function
``check_NAME(entry, bench)`` that raises :class:`AssertionError` with a message when the study of
catalogue ``entry`` breaks the contract (:mod:`studies`), and :func:`checks_for` yields the
checks that apply to an entry, decided from its capabilities (``quick``, ``groups``, ``reads``,
``devices``, ``trains``, ``needs``), never from its name. ``bench`` (:class:`Bench`) runs studies
in this process into a scratch folder and keeps each study's ``--quick`` store, so the checks of
one study share one run.

The checks:

==========================  =====================================================================
``check_shape``             the module exports every name of :data:`studies.SHAPE`, its ``STUDY``
                            is its catalogue name, its figure module has ``draw``
``check_help``              ``--help`` exits 0 and lists ``--quick`` and (with groups) ``--parts``
``check_usage_errors``      bad shared options (a negative seed, zero workers, an unknown option,
                            ``--out`` on a file, an unknown group) are one line on stderr, exit
                            status 2, nothing created
``check_no_gpu``            without a usable GPU, ``--device gpu`` is one line and exit 2
``check_missing_input``     a study that reads another's store refuses a missing one in one line
``check_quick_run``         ``--quick --plot`` exits 0; the store opens with xarray and carries its
                            provenance; every claim has an outcome, a prediction and the source of
                            its tolerance (or the reason it was not tested); the summary prints
                            the claims in the one format; the figure is drawn and redrawn from
                            the store alone, ``draw`` returning the files it wrote
``check_reanalyze``         ``python -m studies.reanalyze`` on the quick store re-derives claims
                            equal to the stored ones (outcomes and numbers)
``check_resume``            the same command again computes nothing new and ends with the same
                            claims
``check_citations``         every claim's source cites a section of the theory notes
                            (``notes <page> §N``, :mod:`studies.citations`), and every citation in
                            its sources and tolerance sources resolves
==========================  =====================================================================
"""
from __future__ import annotations

import contextlib
import importlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["Bench", "Outcome", "checks_for", "CHECKS"]


@dataclass
class Outcome:
    """What one in-process run of a command printed and returned."""

    rc: int
    out: str
    err: str


def call(main: Callable, argv: list[str]) -> Outcome:
    """Run ``main(argv)`` in this process with its output captured (argparse's ``SystemExit``
    becomes the exit status)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return Outcome(int(rc or 0), out.getvalue(), err.getvalue())


@dataclass
class Bench:
    """A scratch folder where studies run in this process, with each study's ``--quick`` store
    kept once made (studies that read another's store get it made first)."""

    root: Path
    stores: dict = field(default_factory=dict)

    def quick_argv(self, entry, out: Path) -> list[str]:
        argv = [*entry.quick_args, "--quick", "--no-progress", "--out", str(out)]
        if entry.reads:
            argv += ["--models", str(self.quick_store(_entry(entry.reads))[0])]
        return argv

    def quick_store(self, entry) -> tuple[Path, Outcome]:
        """The study's ``--quick --plot`` store (made on first use) and what its run printed."""
        if entry.name not in self.stores:
            out = self.root / f"{entry.name}.zarr"
            self.stores[entry.name] = (out, call(entry.main, self.quick_argv(entry, out) + ["--plot"]))
        return self.stores[entry.name]


def _entry(name):
    from studies.catalog import by_name

    return by_name(name)


# ---------------------------------------------------------------------------------- checks
def check_shape(entry, bench) -> None:
    from studies import missing_names

    module = entry.load()
    missing = missing_names(module)
    assert not missing, f"{entry.module} lacks the study shape's {', '.join(missing)}"
    assert module.STUDY == entry.name, f"{entry.module}.STUDY is {module.STUDY!r}, its catalogue name {entry.name!r}"
    assert isinstance(module.DEFAULTS, dict) and isinstance(module.QUICK, dict) and isinstance(module.PRESETS, dict)
    for name, value in module.PRESETS.items():
        assert isinstance(value, tuple) and len(value) == 3, f"{entry.module}.PRESETS[{name!r}] is not (defaults, " \
                                                             "quick, description)"
    figure = importlib.import_module(entry.figure)
    assert callable(getattr(figure, "draw", None)), f"{entry.figure} has no draw(store, out)"
    assert callable(getattr(importlib.import_module(entry.runner), "main", None)), f"{entry.runner} has no main"


def check_help(entry, bench) -> None:
    res = call(entry.main, ["--help"])
    assert res.rc == 0, f"--help exited {res.rc}: {res.err}"
    if entry.quick:
        assert "--quick" in res.out, "--help does not list --quick"
    assert ("--parts" in res.out) == bool(entry.groups), "--parts is offered exactly when the study has groups"


def _refused(entry, bench, argv, what) -> None:
    out = bench.root / "refused" / f"{entry.name}.zarr"
    res = call(entry.main, argv + ["--out", str(out)])
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert res.rc == 2, f"{what}: exit status {res.rc}, not 2 ({res.err.strip()[:300]})"
    assert len(lines) == 1 and "Traceback" not in res.err, f"{what}: not one line: {res.err[:500]}"
    assert not out.exists(), f"{what}: {out} was created"


def check_usage_errors(entry, bench) -> None:
    quick = ["--quick"] if entry.quick else []
    cases = [(["--seed", "-1"], "a negative seed"), (["--no-such-option"], "an unknown option")]
    if entry.executor:
        cases.append((["--workers", "0"], "zero workers"))
    if entry.groups:
        cases.append((["--parts", "no-such-group"], "an unknown group"))
    for argv, what in cases:
        _refused(entry, bench, quick + argv, what)
    afile = bench.root / "refused" / "a-file"
    afile.parent.mkdir(parents=True, exist_ok=True)
    afile.write_text("not a store")
    res = call(entry.main, quick + ["--out", str(afile)])
    assert res.rc == 2 and len(res.err.strip().splitlines()) == 1, f"--out on a file: {res.rc} {res.err[:300]}"
    assert afile.read_text() == "not a store"


def check_no_gpu(entry, bench) -> None:
    quick = ["--quick"] if entry.quick else []
    _refused(entry, bench, quick + ["--device", "gpu"], "--device gpu without a GPU")


def check_missing_input(entry, bench) -> None:
    _refused(entry, bench, ["--quick", "--models", str(bench.root / "no-such-store.zarr")], "a missing --models store")


def check_quick_run(entry, bench) -> None:
    import xarray as xr

    from studies.claims import OUTCOMES, ROLES, read_claims

    out, res = bench.quick_store(entry)
    assert res.rc == 0, f"--quick exited {res.rc}: {res.err[-2000:]}"
    with xr.open_zarr(str(out), consolidated=False) as ds:
        assert ds.attrs.get("study") == entry.name, f"the store's study is {ds.attrs.get('study')!r}"
        assert ds.attrs.get("params_json") and ds.attrs.get("git_sha"), "no parameters or provenance stored"
    claims = read_claims(out)
    assert claims, "no claims stored"
    for c in claims:
        assert c.id.split(".")[0] == entry.name, f"{c.key}: a claim id outside the study's {entry.name}.*"
        assert c.outcome in OUTCOMES and c.role in ROLES, c.key
        assert c.source and c.statement, f"{c.key}: no source or statement"
        assert c.prediction_text or c.prediction == c.prediction, f"{c.key}: no prediction"
        if c.outcome == "not tested":
            assert c.reason, f"{c.key}: not tested without a reason"
        else:
            assert c.tolerance_source and c.test, f"{c.key}: tested without a tolerance source"
    assert re.search(r"claims: \d+ hold, \d+ fail, \d+ not tested", res.out), "no claims summary printed"
    figures = [Path(line.split("figure: ", 1)[1]) for line in res.out.splitlines() if line.startswith("figure: ")]
    assert figures and all(f.stat().st_size > 5_000 for f in figures), f"no figure drawn: {res.out[-500:]}"
    paths = importlib.import_module(entry.figure).draw(out, bench.root / f"{entry.name}-redrawn.png")
    assert isinstance(paths, list) and paths and all(Path(p).exists() for p in paths), "draw did not return its files"


def check_reanalyze(entry, bench) -> None:
    from studies.claims import read_claims
    from studies.reanalyze import compare, reanalyze

    out, res = bench.quick_store(entry)
    assert res.rc == 0, f"--quick exited {res.rc}"
    stored = read_claims(out)
    _, derived = reanalyze(out)
    diff = compare(stored, derived)
    assert not diff, "re-analysis differs from the stored claims:\n" + "\n".join(diff)


def check_resume(entry, bench) -> None:
    from studies.claims import read_claims
    from studies.reanalyze import compare

    out, res = bench.quick_store(entry)
    assert res.rc == 0, f"--quick exited {res.rc}"
    before = read_claims(out)
    again = call(entry.main, bench.quick_argv(entry, out))
    assert again.rc == 0, f"rerun exited {again.rc}: {again.err[-1000:]}"
    m = re.search(r"wrote .*?: (\d+) [\w ]+? \((\d+) computed, (\d+) already done\)", again.out)
    assert m and int(m.group(2)) == 0, f"the rerun computed again: {m.group(0) if m else again.out[-300:]}"
    diff = compare(before, read_claims(out))
    assert not diff, "the resumed run changed the claims:\n" + "\n".join(diff)


def check_citations(entry, bench) -> None:
    from studies import citations
    from studies.claims import read_claims

    out, res = bench.quick_store(entry)
    assert res.rc == 0, f"--quick exited {res.rc}"
    uncited, broken = [], []
    for c in read_claims(out):
        refs = citations.find(c.source)
        if not refs:
            uncited.append(c.key)
        for page, section in refs + citations.find(c.tolerance_source):
            if not citations.resolves(page, section):
                broken.append(f"{c.key}: notes {page} §{section}")
    assert not uncited, f"claims whose source cites no section of the theory notes: {sorted(set(uncited))}"
    assert not broken, f"citations that point nowhere: {broken}"


CHECKS = {
    "shape": check_shape,
    "help": check_help,
    "usage_errors": check_usage_errors,
    "no_gpu": check_no_gpu,
    "missing_input": check_missing_input,
    "quick_run": check_quick_run,
    "reanalyze": check_reanalyze,
    "resume": check_resume,
    "citations": check_citations,
}


def checks_for(entry, *, gpu: bool | None = None) -> Iterator[tuple[str, Callable]]:
    """The checks that apply to ``entry``, from its capabilities: runs need ``quick`` and what
    ``needs`` names (see :func:`studies.catalog.requirement_met`, checked by the caller),
    ``no_gpu`` applies where no GPU is usable, ``missing_input`` where the study ``reads``
    another's store."""
    if gpu is None:
        from studies.cli import use_device

        gpu = use_device("auto") == "gpu"
    yield "shape", check_shape
    yield "help", check_help
    if entry.quick:
        yield "usage_errors", check_usage_errors
    if not gpu:
        yield "no_gpu", check_no_gpu
    if entry.reads:
        yield "missing_input", check_missing_input
    if entry.quick:
        yield "quick_run", check_quick_run
        yield "reanalyze", check_reanalyze
        yield "resume", check_resume
        yield "citations", check_citations
