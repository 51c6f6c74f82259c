"""Guards that run before anything is created: resources, score ranges, the output path, the
executor options. Each raises :class:`UsageError` (one line, exit status 2 through
:func:`studies.cli.run_main`).

The output rule (:func:`check_output`) is one function for every command that writes: a
study's store (``--out``), the benchmark's store, the report's folder of stores. It refuses,
each in one line: an empty name or the current directory as a store, a name too long for the
file system, a symlink loop or a dangling link on the way, a location inside a Zarr store,
an existing file, a folder with content that is not a store (or, for a folder of stores,
content that is neither a store nor one of the command's own files), another study's store,
and a place that cannot be written.
"""
from __future__ import annotations

import errno
import fnmatch
import math
import os
import re
from pathlib import Path

__all__ = ["UsageError", "available_memory", "check_resources", "check_scores", "MAX_SCORE", "PAIR_RATE",
           "executor_options", "check_scheduler", "check_out_path", "check_output", "usable_cores", "ascii_fallback"]


class UsageError(Exception):
    """A user error found after parsing (bad combination, unwritable path...): exit 2."""


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


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


WORKERS_PER_CORE = 4  # more local worker processes than this per core only adds memory and switching


def executor_options(args) -> dict:
    """The run_sweep keywords selected by --workers / --dask-local / --scheduler (validated):
    local worker counts bounded by this machine's cores, a scheduler address that answers a
    Dask handshake."""
    scheduler = getattr(args, "scheduler", None)
    if scheduler is not None and not str(scheduler).strip():
        raise UsageError("--scheduler '': an empty address; give one like tcp://10.0.0.5:8786, or leave the "
                         "option out to run here")
    if scheduler and args.dask_local:
        raise UsageError("choose one of --scheduler and --dask-local")
    cores = usable_cores()
    for opt, n in (("--workers", args.workers), ("--dask-local", args.dask_local)):
        if n is not None and n > WORKERS_PER_CORE * cores:
            raise UsageError(f"{opt} {n}: this machine has {cores} core(s); use at most {WORKERS_PER_CORE * cores} "
                             "local worker processes (a larger cluster goes through --scheduler)")
    if scheduler or args.dask_local:
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise UsageError("Dask execution needs the 'dist' extra: pip install -e '.[dist]'")
    if scheduler:
        check_scheduler(scheduler)
    return {"workers": args.workers, "scheduler": scheduler, "dask_local": args.dask_local}


_SCHEDULER = re.compile(r"(?:(tcp|tls|ws|wss)://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})/?")


def check_scheduler(address: str, timeout: float = 3.0) -> None:
    """``--scheduler`` must be ``[tcp|tls|ws|wss://]HOST:PORT``, accept a connection and answer
    a Dask handshake (``identity``: a scheduler) within ``timeout`` seconds -- a port that takes
    the connection but is not a Dask scheduler is refused, not waited on. Checked before any
    store is created (a one-line :class:`UsageError` naming ``--scheduler``)."""
    import socket

    m = _SCHEDULER.fullmatch(address.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise UsageError(f"--scheduler {address!r}: expected an address like tcp://10.0.0.5:8786")
    host, port = m.group(2).strip("[]"), int(m.group(3))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except (OSError, UnicodeError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
        raise UsageError(f"--scheduler {address}: cannot connect ({why}); is the Dask scheduler running "
                         "and reachable from here?") from None
    kind = _dask_identity(address.strip() if m.group(1) else f"tcp://{address.strip()}", timeout)
    if kind != "Scheduler":
        what = f"a Dask {kind}" if kind else "no Dask handshake"
        raise UsageError(f"--scheduler {address}: the port accepts connections but answered with {what} within "
                         f"{timeout:g} s; it is not a Dask scheduler (check the address and port)")


def _dask_identity(address: str, timeout: float) -> str | None:
    """The ``type`` a Dask server at ``address`` gives in answer to ``identity`` ("Scheduler",
    "Worker", ...), or None when no Dask handshake completes within ``timeout`` seconds."""
    import asyncio
    import logging

    from distributed.comm import connect

    async def probe():
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    quiet = [logging.getLogger(n) for n in ("distributed", "asyncio", "tornado")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        answer = asyncio.run(asyncio.wait_for(probe(), timeout))
    except Exception:  # noqa: BLE001 - a timeout, a closed comm, bytes that are not Dask's
        return None
    finally:
        for lg, lvl in zip(quiet, levels):
            lg.setLevel(lvl)
    return str(answer.get("type")) if isinstance(answer, dict) and answer.get("type") else None


def check_out_path(path: Path, study: str | None = None) -> Path:
    """The studies' ``--out``: :func:`check_output` for one store (of ``study``, when given)."""
    return check_output(path, kind="store", study=study, option="--out")


LOCK_NAME_EXTRA = 16  # the lock file and the temporary store beside the store: ".NAME.new<pid>", ".NAME.lock"


def check_output(path, *, kind: str = "store", study: str | None = None, option: str = "--out",
                 allowed=()) -> Path:
    """The one output rule of every command that writes, checked before anything is created:
    returns ``path``, or raises :class:`UsageError` (one line naming ``option``).

    ``kind="store"`` -- ``path`` is (or will be) one Zarr store: absent, an empty folder, or a
    store (of ``study`` when given: a store of another study is refused; whether it holds the
    same run is :func:`studies.store.open_store`'s check, which may offer ``--overwrite``).

    ``kind="folder"`` -- ``path`` is a folder of stores and the command's own files (the
    report: ``results/`` with ``NAME.zarr`` stores and ``report.html``): absent, or a folder
    whose entries are Zarr stores or match one of the glob patterns ``allowed`` (e.g.
    ``("report.*", "claims.csv", "logs", "figures", "*.png")``); never a store itself. Check each
    store inside with ``kind="store"`` and its study.

    Both refuse: an empty name (``''``, ``'.'`` for a store), a name too long for the file
    system, a symlink loop or a dangling link anywhere on the path, a location inside a Zarr
    store, an existing file, and a place that cannot be written (tried, not guessed).
    """
    from studies.store import StoreMismatch, is_store, looks_like_store, store_attrs

    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
    what = "a folder" if kind == "folder" else "a store"
    if not text.strip() or (kind == "store" and os.path.normpath(text) == "."):
        raise UsageError(f"{option} {text!r}: names the current directory, not {what}; give a path such as "
                         f"{'results' if kind == 'folder' else 'results/NAME.zarr'}")
    if "\x00" in text:
        raise UsageError(f"{option}: a path cannot contain a NUL byte")
    path = Path(text)
    absolute = Path(os.path.abspath(text))
    _check_lengths(absolute, option, kind)
    _check_links(absolute, option)
    for above in absolute.parents:
        if is_store(above):
            raise UsageError(f"{option} {path} lies inside the Zarr store {above}; choose a path outside it")
    real = Path(os.path.realpath(absolute))
    if real != absolute:
        for above in [real, *real.parents]:
            if above != real and is_store(above):
                raise UsageError(f"{option} {path} leads (through a link) inside the Zarr store {above}; choose a "
                                 "path outside it")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} exists and is not a directory")
    if path.is_dir():
        if kind == "folder":
            if is_store(path):
                raise UsageError(f"{option} {path} is a Zarr store, not a folder of stores; choose another {option}")
            stray = [p.name for p in sorted(path.iterdir()) if not is_store(p) and p.name != ".DS_Store"
                     and not p.name.startswith(".") and not any(fnmatch.fnmatch(p.name, pat) for pat in allowed)]
            if stray:
                more = ", ..." if len(stray) > 1 else ""
                raise UsageError(f"{option} {path} holds files of its own ({stray[0]!r}{more}); choose an empty or "
                                 "new folder")
        elif is_store(path):
            try:
                attrs = store_attrs(path) or {}
            except StoreMismatch:
                attrs = {}  # damaged: the run itself names it and offers --repair
            other = attrs.get("study")
            if study is not None and other is not None and str(other).split("/")[0] != study:
                raise UsageError(f"{option} {path} holds a store of the {other} study, not of {study}; choose another "
                                 f"{option}")
        elif any(p.name for p in path.iterdir()) and not looks_like_store(path):
            raise UsageError(f"{option} {path} is a folder with content that is not a Zarr store; choose another "
                             f"{option}")
    _check_writable(path, absolute, option)
    return path


def _name_max(directory: Path) -> tuple[int, int]:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _check_lengths(absolute: Path, option: str, kind: str) -> None:
    name_max, path_max = _name_max(absolute.parent)
    extra = LOCK_NAME_EXTRA if kind == "store" else 0
    for part in absolute.parts[1:]:
        size = len(os.fsencode(part))
        room = name_max - (extra if part == absolute.name else 0)
        if size > room:
            short = part if len(part) <= 24 else part[:16] + "..." + part[-5:]
            why = " for a store (its lock file adds to the name)" if extra and part == absolute.name else ""
            raise UsageError(f"{option}: the name {short!r} is {size} bytes long; this file system allows at most "
                             f"{room}{why}")
    if len(os.fsencode(str(absolute))) > path_max - 64:
        raise UsageError(f"{option}: the path is {len(os.fsencode(str(absolute)))} bytes long; this file system "
                         f"allows at most {path_max - 64} for a store's files")


def _check_links(absolute: Path, option: str) -> None:
    for p in [*reversed(absolute.parents), absolute]:
        if not os.path.islink(p):
            continue
        try:
            os.stat(p)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UsageError(f"{option} {absolute}: {p} is a symlink loop") from None
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise UsageError(f"{option} {absolute}: {p} is a dangling symlink (to {os.readlink(p)}, which does "
                                 "not exist)") from None
            raise UsageError(f"{option} {absolute}: {p} cannot be followed ({e.strerror})") from None


def _check_writable(path: Path, absolute: Path, option: str) -> None:
    """Permission bits do not tell everything (root on /proc, a read-only mount): try it, in
    the folder that will receive the store and its lock file (never inside a store)."""
    import tempfile

    probe = absolute.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{option} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {probe} is not writable")
    if path.exists() and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path} is not writable")
    try:
        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError as e:
        raise UsageError(f"{option} {path}: {probe} is not writable ({e.strerror or type(e).__name__})") from None


# ------------------------------------------------------------------------ output encoding
_ASCII_FORMS = {
    "±": "+/-", "×": "x", "·": "*", "÷": "/", "≤": "<=", "≥": ">=", "≈": "~", "≠": "!=", "≪": "<<", "≫": ">>",
    "→": "->", "←": "<-", "↔": "<->", "⇒": "=>", "—": "--", "–": "-", "…": "...", "√": "sqrt", "∞": "inf",
    "∑": "sum", "∏": "prod", "∈": " in ", "∝": "~", "′": "'", "‘": "'", "’": "'", "“": '"', "”": '"', "•": "*",
    "²": "^2", "³": "^3", "¹": "^1", "⁻": "^-", "ᵀ": "^T", "½": "1/2", "°": " deg", "µ": "u", "μ": "mu",
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "Δ": "Delta", "ε": "eps", "η": "eta", "θ": "theta",
    "κ": "kappa", "λ": "lambda", "ν": "nu", "ξ": "xi", "π": "pi", "ρ": "rho", "σ": "sigma", "Σ": "Sigma",
    "τ": "tau", "φ": "phi", "χ": "chi", "ψ": "psi", "ω": "omega", "Ω": "Omega", "ŷ": "y^", "█": "#", "░": ".",
}
_HANDLER = "studies-ascii-forms"


def _ascii_forms(err: UnicodeError):
    """Codec error handler: each character the stream's encoding lacks becomes its ASCII form
    (``±`` -> ``+/-``, ``≤`` -> ``<=``, Greek letters by name), else its decomposition without
    accents, else ``?``."""
    import unicodedata

    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start:err.end]:
        form = _ASCII_FORMS.get(ch)
        if form is None:
            form = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii") or "?"
        out.append(form)
    return "".join(out), err.end


def ascii_fallback():
    """A context manager under which printing never fails on a narrow encoding
    (``PYTHONIOENCODING=ascii``, a C locale): stdout and stderr write the characters their
    encoding lacks in ASCII forms (:func:`_ascii_forms`) instead of raising. Restores the
    streams' error handling on exit."""
    import codecs
    import contextlib
    import sys

    try:
        codecs.lookup_error(_HANDLER)
    except LookupError:
        codecs.register_error(_HANDLER, _ascii_forms)

    @contextlib.contextmanager
    def manage():
        changed = []
        for stream in (sys.stdout, sys.stderr):
            errors = getattr(stream, "errors", None)
            if errors in ("strict", "backslashreplace") and hasattr(stream, "reconfigure"):
                try:
                    stream.reconfigure(errors=_HANDLER)
                    changed.append((stream, errors))
                except (ValueError, OSError, AttributeError):  # a detached or closed stream
                    pass
        try:
            yield
        finally:
            for stream, errors in changed:
                with contextlib.suppress(ValueError, OSError, AttributeError):
                    stream.reconfigure(errors=errors)

    return manage()
