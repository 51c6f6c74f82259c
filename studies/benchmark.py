"""Speed benchmarks of the workbench: ``python -m studies.benchmark [--suite NAME,...]``.

Every speed target of the project is checked here, never in unit tests: each *suite* runs the
implementations it compares side by side in one process (naive reference, CPU fast path, GPU
path when present), checks they agree, and returns an xarray Dataset of timings and
throughputs with the device and package versions in its attributes. All suites of a run go to
one Zarr store (default ``results/benchmark.zarr``), one group per suite.

A suite is a module ``studies/benchmarks/<name>.py`` defining

    DESCRIPTION: str
    def run(quick: bool) -> xr.Dataset        # timings; attrs hold targets and verdicts
    def summary(ds: xr.Dataset) -> str        # the lines printed after the run

and listed in :data:`SUITES` below (modules that do not exist yet are skipped). Its dataset has
a ``time_s`` variable with an ``impl`` dimension (the implementations compared), which is what
``python -m paper_figs.benchmark`` draws. A suite that cannot run on this machine (the ``gpu``
suite without a GPU) raises an exception named ``SuiteUnavailable``: it is skipped with a note,
or is a usage error when asked for by name.
"""
from __future__ import annotations

import argparse
import importlib
import contextlib
import importlib.util
import platform
import sys
import time
from pathlib import Path

import xarray as xr

from studies.cli import StudyParser, UsageError, run_main, store_errors
from studies.guards import check_output
from studies.lock import store_lock
from studies.parsing import out_path

SUITES = ("attention", "moments", "random_features", "icl", "tensor_attention", "token_selection", "gpu")


def available_suites() -> list[str]:
    return [s for s in SUITES if importlib.util.find_spec(f"studies.benchmarks.{s}") is not None]


def machine_attrs() -> dict:
    import numba

    import gpu  # noqa: F401  (a benchmark always asks for the device: registers it with sim.backend)
    from sim.backend import device_name
    from studies.sweep import _versions

    return {"device": device_name(), "cpu": platform.processor() or platform.machine(),
            "host": platform.node(), "numba_threads": numba.get_num_threads(),
            "versions": _versions(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _parse_suites(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    avail = available_suites()
    if not names:
        raise argparse.ArgumentTypeError(f"empty list of suites; choose from {', '.join(avail)} (or leave "
                                         "--suite out to run them all)")
    bad = [n for n in names if n not in avail]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown suite(s) {', '.join(bad)}; available: {', '.join(avail)}")
    return names


def build_parser():
    p = StudyParser(prog="python -m studies.benchmark", description=__doc__.split("\n")[0],
                    epilog="suites: " + ", ".join(available_suites()))
    p.add_argument("--suite", type=_parse_suites, default=None,
                   help="comma list of suites to run (default: all available)")
    p.add_argument("--out", type=out_path, default=Path("results") / "benchmark.zarr",
                   help="Zarr store for the timings (default results/benchmark.zarr)")
    p.add_argument("--no-wait", action="store_true",
                   help="refuse at once when another run is writing the same --out (default: wait for it)")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds): checks the machinery, not the targets")
    p.add_argument("--plot", action="store_true", help="draw the timings figure next to the store")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_output(args.out, kind="store", study=STUDY, option="--out")
    suites = args.suite or available_suites()
    if not suites:
        raise UsageError("no benchmark suites are installed")
    explicit = args.suite is not None
    with contextlib.ExitStack() as stack:
        with store_errors(args.out):  # one writer per store, for the whole run
            stack.enter_context(store_lock(args.out, wait=not args.no_wait))
        _run_suites(args, suites, explicit)
    if args.plot:
        from paper_figs.benchmark import draw

        print(f"figure: {draw(args.out)}")
    return 0


STUDY = "benchmark"  # the ``study`` attribute of the store's root: the output rule tells it from a study's store


def _open_root(out: Path) -> None:
    """The store's root carries ``study = "benchmark"`` (a store written before it did, whose
    root has no study, gets it), so other commands know whose store it is."""
    import zarr

    grp = zarr.open_group(str(out), mode="a")
    if grp.attrs.get("study") != STUDY:
        grp.attrs.update({"study": STUDY, "layout": "one group per suite"})


def _run_suites(args, suites, explicit: bool) -> None:
    for name in suites:
        mod = importlib.import_module(f"studies.benchmarks.{name}")
        print(f"== {name}: {mod.DESCRIPTION}", flush=True)
        t0 = time.perf_counter()
        try:
            ds = mod.run(quick=args.quick)
        except RuntimeError as e:
            if type(e).__name__ != "SuiteUnavailable":
                raise
            if explicit:
                raise UsageError(f"suite {name!r} cannot run here: {e}") from None
            print(f"   skipped: {e}")
            continue
        ds.attrs.update({k: v for k, v in machine_attrs().items() if k not in ds.attrs})
        ds.attrs.update({"suite": name, "quick": int(args.quick), "cli": " ".join(sys.argv)})
        print(mod.summary(ds), flush=True)  # first: a store that cannot be written loses no result
        with store_errors(args.out):  # a full disk or an unwritable place is one line
            args.out.parent.mkdir(parents=True, exist_ok=True)
            _open_root(args.out)
            ds.to_zarr(str(args.out), group=name, mode="w", consolidated=False)
        print(f"   ({time.perf_counter() - t0:.1f} s; stored in {args.out} group {name!r})", flush=True)


def open_suite(store, name: str) -> xr.Dataset:
    """Open one suite's timings from a benchmark store."""
    with xr.open_zarr(str(store), group=name, consolidated=False) as ds:
        return ds.load()


def main(argv=None) -> int:
    return run_main(_main, argv, prog="python -m studies.benchmark")


if __name__ == "__main__":
    sys.exit(main())
