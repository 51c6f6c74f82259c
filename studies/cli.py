"""Shared command-line machinery of the studies.

Range syntax (``parse_range``), always *inclusive* of the upper bound:

=================  =======================================
``1..8``           1, 2, ..., 8
``1..8:2``         1, 3, 5, 7         (step 2)
``0.5..2:0.5``     0.5, 1, 1.5, 2     (with ``kind=float``; the default step is 1)
``1,2,5``          a comma list
``1..4,8``         pieces combine; the result is sorted and de-duplicated
=================  =======================================

Sample-size grids (``parse_n_grid``) also accept geometric forms:

=================  =======================================
``2^8..2^16``      every power of two from 256 to 65536
``2^8..2^16:2``    every other power: 256, 1024, ..., 65536
``1e3..1e5/9``     9 geometrically spaced integers from 1000 to 100000
``1000,3000,1e4``  a comma list (``1e4`` and ``2^10`` are numbers too)
=================  =======================================

Errors raise :class:`argparse.ArgumentTypeError` with a message meant for the user;
:class:`StudyParser` prints any usage error as a single line and exits with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

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


class UsageError(Exception):
    """A user error found after parsing (bad combination, unwritable path...): exit 2."""


class StudyParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _number(tok: str, kind):
    tok = tok.strip()
    m = re.fullmatch(r"(\d+)\^(\d+)", tok)
    if m:
        val = int(m.group(1)) ** int(m.group(2))
        return val if kind is int else float(val)
    if not re.fullmatch(_NUM, tok):
        raise argparse.ArgumentTypeError(f"not a number: {tok!r}")
    val = float(tok)
    if kind is int:
        if not val.is_integer():
            raise argparse.ArgumentTypeError(f"not an integer: {tok!r}")
        return int(val)
    return val


def _arith(lo, hi, step, kind, piece):
    if hi < lo:
        raise argparse.ArgumentTypeError(f"descending range {piece!r}: write the smaller bound first")
    if step <= 0:
        raise argparse.ArgumentTypeError(f"range step must be positive in {piece!r}")
    count = int(math.floor((hi - lo) / step + 1e-9)) + 1
    vals = [lo + k * step for k in range(count)]
    if kind is int:
        return [int(v) for v in vals]
    return [round(v, 12) for v in vals]


def parse_range(text: str, kind=int) -> tuple:
    """Parse ``1..8``, ``1..8:2``, ``1,2,5`` (and combinations); inclusive upper bounds."""
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError("empty range")
    out = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            raise argparse.ArgumentTypeError(f"empty item in {text!r}")
        if ".." in piece:
            body, _, step_txt = piece.partition(":")
            lo_txt, _, hi_txt = body.partition("..")
            lo, hi = _number(lo_txt, kind), _number(hi_txt, kind)
            step = _number(step_txt, kind) if step_txt else kind(1)
            out.extend(_arith(lo, hi, step, kind, piece))
        else:
            if ":" in piece:
                raise argparse.ArgumentTypeError(f"a step needs a range: {piece!r}")
            out.append(_number(piece, kind))
    return tuple(sorted(set(out)))


def parse_n_grid(text: str) -> tuple[int, ...]:
    """Parse a sample-size grid: the forms of :func:`parse_range` plus ``2^a..2^b[:s]`` and
    ``A..B/K`` (K geometric points). All values must be integers >= 1."""
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError("empty grid")
    out = []
    for piece in text.split(","):
        piece = piece.strip()
        m_pow = re.fullmatch(r"(\d+)\^(\d+)\.\.(\d+)\^(\d+)(?::(\d+))?", piece)
        m_geo = re.fullmatch(rf"({_NUM}|\d+\^\d+)\.\.({_NUM}|\d+\^\d+)/(\d+)", piece)
        if m_pow:
            b1, e1, b2, e2 = (int(m_pow.group(i)) for i in range(1, 5))
            if b1 != b2 or b1 < 2:
                raise argparse.ArgumentTypeError(f"power range {piece!r} needs one base >= 2 on both sides")
            step = int(m_pow.group(5) or 1)
            out.extend(b1**e for e in _arith(e1, e2, step, int, piece))
        elif m_geo:
            lo, hi = _number(m_geo.group(1), int), _number(m_geo.group(2), int)
            k = int(m_geo.group(3))
            if lo < 1 or hi < lo or k < 1:
                raise argparse.ArgumentTypeError(f"geometric grid {piece!r} needs 1 <= A <= B and K >= 1")
            out.extend(int(round(v)) for v in np.geomspace(lo, hi, k))
        else:
            out.extend(parse_range(piece, int))
    vals = tuple(sorted(set(out)))
    if vals[0] < 1:
        raise argparse.ArgumentTypeError("sample sizes must be >= 1")
    return vals


def choice_list(allowed, what: str, *, in_allowed_order: bool = False):
    """An argparse ``type=`` for a comma list of names from ``allowed`` (``--sweeps a,b``):
    duplicates dropped, the order given (or the order of ``allowed``); an empty list or an
    unknown name is a one-line usage error naming the choices."""
    allowed = tuple(allowed)

    def parse(text: str) -> tuple:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or repr(text)}; "
                                             f"choose from {', '.join(allowed)}")
        return tuple(t for t in allowed if t in items) if in_allowed_order else tuple(dict.fromkeys(items))

    parse.__name__ = what.replace(" ", "_")
    return parse


def positive_int(text: str) -> int:
    val = _number(text, int)
    if val < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return val


def nonnegative_int(text: str) -> int:
    val = _number(text, int)
    if val < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return val


def float_type(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
               hi_open: bool = False):
    """An argparse ``type=`` for a float option: finite (no nan, inf or overflow such as 1e999)
    and inside ``[lo, hi]`` (``lo_open``/``hi_open`` exclude the bound); a value outside is a
    one-line usage error at parse time, before anything is created."""
    def parse(text: str) -> float:
        val = _number(text, float)
        if not math.isfinite(val):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (val < lo or (lo_open and val == lo)):
            if lo == 0:
                raise argparse.ArgumentTypeError(f"must be a {'positive' if lo_open else 'non-negative'} number, "
                                                 f"got {text!r}")
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text!r}")
        if hi is not None and (val > hi or (hi_open and val == hi)):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi:g}, got {text!r}")
        return val

    parse.__name__ = "number"
    return parse


finite_float = float_type()
positive_float = float_type(0.0, lo_open=True)
nonnegative_float = float_type(0.0)


def available_memory() -> int:
    """Bytes of memory this machine can still give a process (MemAvailable), or its total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1024:.3g} KiB"


def check_resources(what: str, *, memory: float = 0.0, work_s: float = 0.0, max_work_s: float = 30 * 86400.0,
                    fraction: float = 0.8) -> None:
    """Refuse, before anything is created, a run whose estimated peak ``memory`` (bytes)
    exceeds ``fraction`` of the memory available here, or whose estimated ``work_s`` (seconds
    on this machine) is absurd (more than ``max_work_s``): one line that says what it would
    need and what this machine has (:class:`UsageError`)."""
    avail = available_memory()
    if memory > fraction * avail:
        raise UsageError(f"{what} needs about {_bytes(memory)} of memory at its peak; this machine has "
                         f"{_bytes(avail)} available")
    if work_s > max_work_s:
        years = work_s / (365.25 * 86400)
        span = f"{years:.3g} years" if years >= 1 else f"{work_s / 86400:.3g} days"
        raise UsageError(f"{what} would take about {span} here; reduce it")


MAX_SCORE = 1e100  # largest |score| the closed forms keep inside float64 (they square and exponentiate it)
PAIR_RATE = 2e9  # token-query multiply-adds per second on this class of machine, for work estimates


def check_scores(max_score: float, what: str) -> None:
    """Refuse parameters whose attention scores leave the range where the theory's closed forms
    (which square and exponentiate them) stay finite in float64."""
    if not (math.isfinite(max_score) and max_score <= MAX_SCORE):
        raise UsageError(f"{what}: scores as large as {max_score:.3g} leave float64's range in the closed forms "
                         f"(at most {MAX_SCORE:g})")


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


def executor_options(args) -> dict:
    """The run_sweep keywords selected by --workers / --dask-local / --scheduler (validated)."""
    if args.scheduler and args.dask_local:
        raise UsageError("choose one of --scheduler and --dask-local")
    if args.scheduler or args.dask_local:
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise UsageError("Dask execution needs the 'dist' extra: pip install -e '.[dist]'")
    if args.scheduler:
        check_scheduler(args.scheduler)
    return {"workers": args.workers, "scheduler": args.scheduler, "dask_local": args.dask_local}


_SCHEDULER = re.compile(r"(?:(tcp|tls|ws|wss)://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})/?")


def check_scheduler(address: str, timeout: float = 3.0) -> None:
    """``--scheduler`` must be ``[tcp|tls|ws|wss://]HOST:PORT`` and accept a connection, checked
    before any store is created (a one-line :class:`UsageError` naming ``--scheduler``)."""
    import socket

    m = _SCHEDULER.fullmatch(address.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise UsageError(f"--scheduler {address!r}: expected an address like tcp://10.0.0.5:8786")
    host, port = m.group(2).strip("[]"), int(m.group(3))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise UsageError(f"--scheduler {address}: cannot connect ({why}); is the Dask scheduler running "
                         "and reachable from here?") from None


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


def check_out_path(path: Path) -> Path:
    """Fail early (UsageError) if ``path`` cannot become a Zarr store; leaves nothing behind
    (a temporary directory is made and removed where the store would go)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} exists and is not a directory")
    parent = path.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: {probe} is not writable")
    if path.exists() and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path} is not writable")
    # permission bits do not tell everything (root on /proc or a read-only mount): try it
    import tempfile

    try:
        tempfile.TemporaryDirectory(dir=path if path.exists() else probe).cleanup()
    except OSError as e:
        raise UsageError(f"--out {path}: {probe if not path.exists() else path} is not writable "
                         f"({e.strerror or type(e).__name__})") from None
    return path


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
