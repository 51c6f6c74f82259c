"""Shared command-line machinery of the studies: the parser class, the shared run-control
options, defaults and ``--quick`` tables, and the runner every study goes through.

Option values are parsed by :mod:`studies.parsing` (ranges such as ``1..8``, sample-size grids
such as ``2^8..2^16``, bounded numbers); everything that must be checked before a run creates
anything (resources, score ranges, the output path, executor options) is in
:mod:`studies.guards`. Both are re-exported here, so a study imports its plumbing from one place.
"""
from __future__ import annotations

import argparse
import os
import contextlib
import errno
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from studies.guards import (MAX_SCORE, PAIR_RATE, UsageError, available_memory, check_out_path, check_resources,
                            check_scheduler, check_scores, executor_options)
from studies.parsing import (choice_list, finite_float, float_type, nonnegative_float, nonnegative_int, out_path,
                             parse_n_grid, parse_range, positive_float, positive_int)

__all__ = [
    "UsageError",
    "StudyParser",
    "parse_range",
    "parse_n_grid",
    "positive_int",
    "nonnegative_int",
    "choice_list",
    "float_type",
    "finite_float",
    "positive_float",
    "nonnegative_float",
    "check_resources",
    "check_scores",
    "available_memory",
    "PAIR_RATE",
    "MAX_SCORE",
    "check_scheduler",
    "add_common_arguments",
    "check_out_path",
    "executor_options",
    "validate_run_options",
    "run_study_sweep",
    "store_errors",
    "Part",
    "run_study",
    "apply_defaults",
    "option_types",
    "build_parser",
    "prepare",
    "study_main",
    "run_params",
    "group_of",
    "analyze_quietly",
    "Params",
    "StoreParamsError",
    "run_main",
]


class StudyParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_common_arguments(parser: argparse.ArgumentParser, study: str) -> None:
    """Options every study shares: --seed --out --overwrite --workers --dask-local --scheduler
    --device --quick --plot --no-progress, and --parts for a study whose catalogue entry has
    groups. Results never depend on how cells are executed."""
    from studies.catalog import by_name

    try:
        groups = by_name(study).groups
    except KeyError:
        groups = ()
    if groups:
        parser.add_argument("--parts", type=choice_list(groups, "group", in_allowed_order=True), default=None,
                            metavar="GROUPS", help=f"the groups of the store to run, a comma list of "
                                                   f"{', '.join(groups)} (default: all)")
    g = parser.add_argument_group("run control (shared by all studies)")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="root seed of the run (default 0)")
    g.add_argument("--out", type=out_path, default=Path("results") / f"{study}.zarr",
                   help=f"Zarr store to write (default results/{study}.zarr); an existing store "
                        "with the same parameters is resumed")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing store that holds a run with other parameters")
    g.add_argument("--repair", action="store_true",
                   help="restore the damaged parts of a store that cannot be read whole (truncated chunks, "
                        "unreadable metadata): cells are computed again, done/coordinates/metadata rewritten, the "
                        "analysis derived again; its identity and provenance are kept")
    g.add_argument("--no-wait", action="store_true",
                   help="refuse at once when another run is writing the same --out (default: wait for it)")
    g.add_argument("--workers", type=positive_int, default=None,
                   help="local worker processes (default 1, in-process, unless the study's catalogue entry "
                        "says otherwise for a full CPU run)")
    g.add_argument("--dask-local", type=positive_int, default=None, metavar="N",
                   help="run the cells on a local Dask cluster of N worker processes (needs the dist extra)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the cells on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 "
                        "(its workers must see --out)")
    g.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu",
                   help="where the Monte Carlo runs (gpu needs CuPy and a CUDA device)")
    g.add_argument("--quick", action="store_true", help="a small, fast version of the run (seconds)")
    g.add_argument("--plot", action="store_true", help="draw the study's figure next to the store")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def validate_run_options(args) -> None:
    """The checks of the shared run-control options, made by every study's validation:
    ``--device`` resolved (a one-line error without a usable GPU), ``--out`` writable, and the
    executor options (stored as ``args.executor``). Raises :class:`UsageError`.
    A GPU asked for (``gpu`` or ``auto``) imports :mod:`gpu` first, which registers the device
    detector and engines with :mod:`sim.backend`; a CPU run never imports it."""
    from sim.backend import DeviceUnavailable, resolve_device

    if args.device in ("gpu", "auto"):
        import gpu  # noqa: F401  (registers the device engines)
    try:
        args.device = resolve_device(args.device)
    except DeviceUnavailable as e:
        raise UsageError(str(e)) from None
    check_out_path(args.out)
    args.executor = executor_options(args)


def run_study_sweep(sweep, args, path=None, **kw):
    """:func:`studies.sweep.run_sweep` with the shared options of ``args``; a store that holds
    another run, or cannot be written, becomes a one-line usage error."""
    from studies.sweep import run_sweep

    opts = {"overwrite": args.overwrite, "progress": not args.no_progress, "repair": getattr(args, "repair", False),
            **({} if "executor" in kw else args.executor), **kw}
    # the template, the loaded dataset and its analysis live in memory together
    check_resources(f"the store of {sweep.study} ({sweep.nbytes / 2**20:.3g} MiB of raw data)", memory=3 * sweep.nbytes)
    with store_errors(args.out):
        return run_sweep(sweep, path if path is not None else args.out, **opts)


@contextlib.contextmanager
def store_errors(out):
    """The one error mapping of every runner: a store of another run, a damaged store
    (:class:`studies.sweep.StoreMismatch`), a store another run is writing
    (:class:`studies.lock.StoreBusy`), an unwritable path or a full disk becomes a one-line
    :class:`UsageError` (a full disk loses nothing: the rerun resumes)."""
    from studies.lock import StoreBusy
    from studies.sweep import StoreMismatch

    try:
        yield
    except (StoreMismatch, StoreBusy) as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UsageError(f"--out {out}: {e.strerror or 'no space left'}; what was computed is kept: free some "
                             "space and rerun the same command to resume") from None
        if isinstance(e, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)) or \
                e.errno in (errno.EROFS, errno.EACCES, errno.ENAMETOOLONG, errno.ELOOP):
            raise UsageError(f"--out {out}: {e.strerror or e}") from None
        raise


@dataclass
class Part:
    """One part of a study's store: the whole store for most studies, one group for studies
    with several (selected by the shared ``--parts`` flag):

    * ``group`` -- the group's name ("" = the store itself);
    * ``sweep`` -- a :class:`studies.sweep.Sweep` run by the shared runner, or ``run`` -- a
      callable ``run(path, args, executor) -> (dataset, info)`` for parts that are not a grid
      of independent cells (training runs); ``info`` has ``cells``, ``computed``, ``resumed``.

    The analysis and the summary are the study's own ``analyze(ds)`` and ``summary(analysis)``
    (:mod:`studies`), the same functions for every part: a study of several parts tells its
    groups apart by the stored name (:func:`group_of`)."""

    group: str
    sweep: Any = None
    run: Callable | None = None


class StoreParamsError(UsageError):
    """A store whose stored parameters cannot be read by this version of its study."""


class Params(dict):
    """A run's stored parameters (``params_json``); a missing one is a
    :class:`StoreParamsError` that says the store comes from another version."""

    store = ""

    def __missing__(self, key):
        raise StoreParamsError(f"{self.store or 'the store'}: no stored parameter {key!r}: it was written by "
                               "another version of the study; rerun the study (with --overwrite) to analyse it")


def run_params(ds) -> Params:
    """The parameters a run stored with its data (the ``params_json`` attribute of its store or
    group): what every ``analyze(ds)`` reads instead of the command line."""
    import json

    text = ds.attrs.get("params_json")
    try:
        out = Params(json.loads(text))
    except (TypeError, ValueError):
        raise StoreParamsError("the store's parameters (params_json) are missing or unreadable: it was written by "
                               "another version of the study; rerun the study (with --overwrite)") from None
    out.store = str(ds.attrs.get("study", ""))
    return out


def group_of(ds) -> str:
    """The group a dataset (or its analysis) belongs to in a study of several parts: the part of
    its stored ``study`` name after the slash (``"tails/sup"`` -> ``"sup"``), "" otherwise."""
    return str(ds.attrs.get("study", "")).partition("/")[2]


def analyze_quietly(analyze: Callable, ds):
    """``analyze(ds)`` with overflow warnings silenced: an exp that overflows in a prediction far
    outside the grid's regime is not something the user must act on (the claims say what could
    not be tested). The analysis carries the dataset's ``study`` name (:func:`group_of`)."""
    ds = stored_data(ds)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        analysis, claims = analyze(ds)
    if "study" in ds.attrs:
        analysis.attrs["study"] = ds.attrs["study"]
    return analysis, list(claims)


def stored_data(ds):
    """``ds`` without the analysis a previous run stored in it (the variables listed in its
    ``analysis_vars`` attribute, and the claims): what an analysis sees is the same on a first
    run, a resumed run and a re-analysis."""
    import json

    names = json.loads(ds.attrs.get("analysis_vars", "[]") or "[]")
    out = ds.drop_vars([n for n in names if n in ds.variables])
    from studies.claims import CLAIM_DIM

    return out.drop_dims(CLAIM_DIM) if CLAIM_DIM in out.dims else out


def run_study(args, study, draw=None):
    """The body of every study: run each of ``study.parts(args)`` (resuming what is stored),
    analyse it with ``study.analyze``, store the analysis and the claims next to its data, print
    each part's table (``study.summary``), then the claims in the one format of
    :func:`studies.claims.format_claims`, the closing line and (with ``--plot``) the figure of
    the study's catalogue entry, ``draw(store, figure_path) -> list[Path]``. Returns the claims.

    A study of several parts writes each into its own group of the store (the root carries the
    study's name and the list of its groups); each part's claims are stored with its analysis,
    and :func:`studies.claims.read_claims` gathers them from any store. Every part shares one
    executor (workers start once)."""
    import importlib
    import time

    from studies import claims as cl
    from studies.sweep import make_executor, write_analysis

    t0 = time.perf_counter()
    parts = list(study.parts(args))
    if draw is None and getattr(args, "plot", False):
        from studies.catalog import by_name

        draw = importlib.import_module(by_name(study.STUDY).figure).draw
    root = Path(args.out)
    multi = len(parts) > 1 or bool(parts[0].group)
    every: list = []
    infos = []
    with contextlib.ExitStack() as stack:
        from studies.lock import store_lock

        with store_errors(root):  # one writer per store, for the whole run (--no-wait: refuse at once)
            stack.enter_context(store_lock(root, wait=not getattr(args, "no_wait", False)))
        if multi:
            with store_errors(root):
                _open_root(root, study.STUDY, getattr(args, "seed", 0), [p.group for p in parts], args.overwrite)
        opts = getattr(args, "executor", None) or {"workers": 1, "scheduler": None, "dask_local": None}
        executor = None
        if len(parts) > 1 and (opts["workers"] > 1 or opts["scheduler"] or opts["dask_local"]):
            executor = stack.enter_context(make_executor(**opts))
        for part in parts:
            path = root / part.group if part.group else root
            t1 = time.perf_counter()
            try:
                if part.run is not None:
                    with store_errors(root):
                        ds, info = part.run(path, args, executor)
                else:
                    kw = {"executor": executor} if executor is not None else {}
                    ds, info = run_study_sweep(part.sweep, args, path, **kw)
            except UsageError as e:
                raise UsageError(f"group {part.group}: {e}" if part.group else str(e)) from None
            analysis, claims = analyze_quietly(study.analyze, ds)
            with store_errors(root):  # a full disk here is one line too; the rerun re-analyses
                write_analysis(path, analysis.merge(cl.to_dataset(claims)))
            every.extend(claims)
            infos.append(info)
            print((f"== {part.group}\n" if part.group else "") + study.summary(analysis), flush=True)
            if part.group:
                print(f"   ({info['cells']} cells, {info['computed']} computed, {info['resumed']} already done; "
                      f"{time.perf_counter() - t1:.1f} s)", flush=True)
        print(cl.format_claims(every))
        cells = sum(i["cells"] for i in infos)
        computed = sum(i["computed"] for i in infos)
        resumed = sum(i["resumed"] for i in infos)
        unit = infos[0].get("unit", "cells") if len(infos) == 1 else "cells"
        print(f"wrote {args.out}: {cells} {unit} ({computed} computed, {resumed} already done) "
              f"in {time.perf_counter() - t0:.1f} s")
        if getattr(args, "plot", False) and draw is not None:
            with store_errors(root):
                for path in draw(args.out, Path(args.out).with_suffix(".png")):
                    print(f"figure: {path}")
    return every


def _open_root(root: Path, study: str, seed: int, groups, overwrite: bool) -> None:
    """The root of a multi-part store: its identity is the study and the root seed (a store of
    another study or seed needs ``--overwrite``); it records every group written into it."""
    import zarr

    from studies.sweep import StoreSpec, open_store

    spec = StoreSpec(study=study, params={}, root_seed=seed, layout={"groups": "one group per part"},
                     seed_policy="each group carries its own seed policy")
    open_store(root, spec, spec.create_empty, overwrite=overwrite)
    grp = zarr.open_group(str(root), mode="r+")
    grp.attrs["groups"] = sorted(set(grp.attrs.get("groups", [])) | set(groups))


def apply_defaults(args, defaults: Mapping, quick: Mapping | None = None,
                   parse: Mapping[str, Callable] | argparse.ArgumentParser | None = None) -> None:
    """The one way studies fill their options: every option in ``defaults`` left at None takes
    its ``--quick`` value (from ``quick``) when ``--quick`` was given, else its default; string
    values are parsed by the option's own parser (the ``type`` of its argparse action when
    ``parse`` is the parser, or ``parse[name]``), so defaults are written in the command-line
    syntax shown by ``--help``."""
    if isinstance(parse, argparse.ArgumentParser):
        parse = option_types(parse)
    parse = parse or {}
    source = {**defaults, **(quick or {})} if getattr(args, "quick", False) else dict(defaults)
    for name, value in source.items():
        if getattr(args, name, None) is not None:
            continue
        if isinstance(value, str) and parse.get(name) is not None:
            value = parse[name](value)
        setattr(args, name, value)


def option_types(parser: argparse.ArgumentParser) -> dict[str, Callable]:
    """``dest -> type`` of every option of ``parser`` that has a parser of its own."""
    return {a.dest: a.type for a in parser._actions if callable(a.type)}


def build_parser(study, prog: str | None = None) -> StudyParser:
    """The command line of a study module: its ``DESCRIPTION`` and ``EXAMPLES``, its own options
    (``study.add_arguments``), ``--preset`` when it has ``PRESETS`` (name -> (defaults,
    quick values, description); a preset's defaults override ``DEFAULTS`` and its quick values
    replace ``QUICK``) and the shared run-control options."""
    p = StudyParser(prog=prog or _prog(study), description=study.DESCRIPTION,
                    epilog=study.EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    study.add_arguments(p)
    if study.PRESETS:
        p.add_argument("--preset", choices=("default", *study.PRESETS), default="default",
                       help="a named set of defaults: default, " + "; ".join(
                           f"{name} ({text})" for name, (_, _, text) in study.PRESETS.items())
                       + "; options given explicitly override the preset")
    add_common_arguments(p, study.STUDY)
    return p


def prepare(study, parser: argparse.ArgumentParser, args) -> None:
    """Everything between parsing and running, the same for every study: the defaults and
    ``--quick`` values (:func:`apply_defaults`, parsed by the options' own parsers), the device
    (one of the study's catalogue ``devices``), the study's own checks (``study.validate``,
    which sees the resolved device) and the shared output and executor checks. Raises
    :class:`UsageError`."""
    from studies.catalog import by_name

    defaults, quick = study.DEFAULTS, study.QUICK
    if getattr(args, "preset", "default") != "default":
        over, quick, _ = study.PRESETS[args.preset]
        defaults = {**defaults, **over}
    apply_defaults(args, defaults, quick, parser)
    entry = by_name(study.STUDY)
    if entry.groups and getattr(args, "parts", None) is None:
        args.parts = entry.groups
    devices = entry.devices
    if args.device == "gpu" and "gpu" not in devices:
        raise UsageError(f"{study.STUDY} runs on the CPU only; --device gpu does not apply")
    args.device = use_device(args.device if "gpu" in devices else "cpu")
    if getattr(args, "workers", 1) is None:
        # the catalogue's default for a full CPU run; one in-process worker owns a GPU
        busy = args.quick or args.scheduler or args.dask_local or args.device == "gpu"
        args.workers = 1 if busy else entry.workers
    study.validate(args)
    validate_run_options(args)


def use_device(device: str) -> str:
    """``cpu | gpu | auto`` -> ``cpu | gpu``: the device a run uses. A GPU asked for (``gpu`` or
    ``auto``) imports :mod:`gpu`, which registers its engines with :mod:`sim.backend`; without
    a usable one, ``gpu`` is a one-line :class:`UsageError` and ``auto`` is the CPU."""
    from sim.backend import DeviceUnavailable, resolve_device

    if device in ("gpu", "auto"):
        import gpu  # noqa: F401 - registers the device engines

    try:
        resolved = resolve_device(device)
    except DeviceUnavailable as e:
        raise UsageError(str(e)) from None
    if resolved == "gpu":  # worker processes register the engines too (studies.executors)
        from studies.executors import DEVICE_ENV

        os.environ[DEVICE_ENV] = "gpu"
    return resolved


def study_main(study, argv=None, prog: str | None = None) -> int:
    """``main(argv)`` of a study module: parse, :func:`prepare`, :func:`run_study`; usage
    errors are one line and exit status 2 (:func:`run_main`)."""
    def impl(argv):
        parser = build_parser(study, prog)
        args = parser.parse_args(argv)
        prepare(study, parser, args)
        run_study(args, study)
        return 0

    return run_main(impl, argv, prog=prog or _prog(study))


def _prog(study) -> str:
    """``python -m MODULE`` of a study module (its spec's name when it runs as ``__main__``)."""
    spec = getattr(study, "__spec__", None)
    return f"python -m {spec.name if spec is not None else study.__name__}"


def run_main(main_impl, argv=None, prog: str | None = None) -> int:
    """Run a study's ``main_impl(argv)``, turning usage errors into one line and exit 2,
    and Ctrl-C into a resumable stop (exit 130). Printing never fails on a narrow encoding
    (characters the terminal lacks are written in ASCII forms), and the stores' I/O is shut
    down before returning, so no asyncio noise follows the last line."""
    from studies.guards import ascii_fallback
    from studies.store import close_io

    with ascii_fallback():
        try:
            return int(main_impl(argv) or 0)
        except UsageError as e:
            print(f"{prog or 'study'}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\n{prog or 'study'}: interrupted; finished cells are saved — rerun the same "
                  "command to resume", file=sys.stderr)
            return 130
        finally:
            close_io(keep_loop=True)
