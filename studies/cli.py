"""Shared command-line machinery of the studies: the parser class, the shared run-control
options, defaults and ``--quick`` tables, and the runner every study goes through.

Option values are parsed by :mod:`studies.parsing` (ranges such as ``1..8``, sample-size grids
such as ``2^8..2^16``, bounded numbers); everything that must be checked before a run creates
anything (resources, score ranges, the output path, executor options) is in
:mod:`studies.guards`. Both are re-exported here, so a study imports its plumbing from one place.
"""
from __future__ import annotations

import argparse
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
from studies.parsing import (choice_list, finite_float, float_type, nonnegative_float, nonnegative_int, parse_n_grid,
                             parse_range, positive_float, positive_int)

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
    "run_main",
]


class StudyParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_common_arguments(parser: argparse.ArgumentParser, study: str) -> None:
    """Options every study shares: --seed --out --overwrite --workers --dask-local --scheduler
    --device --quick --plot --no-progress. Results never depend on how cells are executed."""
    g = parser.add_argument_group("run control (shared by all studies)")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="root seed of the run (default 0)")
    g.add_argument("--out", type=Path, default=Path("results") / f"{study}.zarr",
                   help=f"Zarr store to write (default results/{study}.zarr); an existing store "
                        "with the same parameters is resumed")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing store that holds a run with other parameters")
    g.add_argument("--repair", action="store_true",
                   help="recompute only the damaged cells of a store that cannot be read whole "
                        "(truncated chunks, unreadable array metadata)")
    g.add_argument("--workers", type=positive_int, default=1,
                   help="local worker processes (default 1: in-process)")
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
    executor options (stored as ``args.executor``). Raises :class:`UsageError`."""
    from sim.backend import DeviceUnavailable, resolve_device

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
    """The one error mapping of every runner: a store of another run
    (:class:`studies.sweep.StoreMismatch`) or an unwritable path becomes a one-line
    :class:`UsageError`."""
    from studies.sweep import StoreMismatch

    try:
        yield
    except StoreMismatch as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        if isinstance(e, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)) or \
                e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES):
            raise UsageError(f"--out {out}: {e.strerror or e}") from None
        raise


@dataclass
class Part:
    """One part of a study's store (the whole store for most studies, one group for studies
    with several sub-sweeps):

    * ``group`` -- the group's name ("" = the store itself);
    * ``sweep`` -- a :class:`studies.sweep.Sweep` run by the shared runner, or ``run`` -- a
      callable ``run(path, args, executor) -> (dataset, info)`` for parts that are not a grid
      of independent cells (training runs); ``info`` has ``cells``, ``computed``, ``resumed``;
    * ``analyze(ds) -> (analysis, claims)`` -- fits and ``theory_*`` variables (an
      ``xr.Dataset``) and the :class:`studies.claims.Claim` list, a pure function of the data;
    * ``summary(analysis) -> str`` -- the part's own table, printed before the claims.
    """

    group: str
    analyze: Callable
    sweep: Any = None
    run: Callable | None = None
    summary: Callable | None = None


def run_study(args, parts, draw=None, *, study: str | None = None):
    """The body of every study: run each part (resuming what is stored), analyse it, store
    the analysis and the claims next to its data, print each part's table, then the claims in
    the one format of :func:`studies.claims.format_claims`, the closing line and (with
    ``--plot``) the figure ``draw(store, figure_path) -> list[Path]``. Returns the claims.

    ``parts`` is a list of :class:`Part`, or one :class:`Part`. A study of several parts
    writes each into its own group of the store (the root carries the study's name and the
    list of its groups); each part's claims are stored with its analysis, and
    :func:`studies.claims.read_claims` gathers them from any store. Every part shares one
    executor (workers start once)."""
    import time

    from studies import claims as cl
    from studies.sweep import make_executor, write_analysis

    t0 = time.perf_counter()
    parts = [parts] if isinstance(parts, Part) else list(parts)
    root = Path(args.out)
    multi = len(parts) > 1 or bool(parts[0].group)
    every: list = []
    infos = []
    with contextlib.ExitStack() as stack:
        if multi:
            with store_errors(root):
                _open_root(root, study or parts[0].sweep.study.split("/")[0], getattr(args, "seed", 0),
                           [p.group for p in parts], args.overwrite)
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
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                # an exp that overflows in a prediction far outside the grid's regime is not
                # something the user must act on; the claims say what could not be tested
                warnings.simplefilter("ignore", RuntimeWarning)
                analysis, claims = part.analyze(ds)
            write_analysis(path, analysis.merge(cl.to_dataset(claims)))
            every.extend(claims)
            infos.append(info)
            if part.summary is not None:
                print((f"== {part.group}\n" if part.group else "") + part.summary(analysis), flush=True)
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
                   parse: Mapping[str, Callable] | None = None) -> None:
    """The one way studies fill their options: every option in ``defaults`` left at None takes
    its ``--quick`` value (from ``quick``) when ``--quick`` was given, else its default; string
    values are parsed by ``parse[name]`` (the option's own parser), so defaults are written in
    the command-line syntax shown by ``--help``."""
    parse = parse or {}
    source = {**defaults, **(quick or {})} if getattr(args, "quick", False) else dict(defaults)
    for name, value in source.items():
        if getattr(args, name, None) is not None:
            continue
        if isinstance(value, str) and name in parse:
            value = parse[name](value)
        setattr(args, name, value)


def run_main(main_impl, argv=None, prog: str | None = None) -> int:
    """Run a study's ``main_impl(argv)``, turning usage errors into one line and exit 2,
    and Ctrl-C into a resumable stop (exit 130)."""
    try:
        return int(main_impl(argv) or 0)
    except UsageError as e:
        print(f"{prog or 'study'}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog or 'study'}: interrupted; finished cells are saved — rerun the same "
              "command to resume", file=sys.stderr)
        return 130
