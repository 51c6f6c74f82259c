"""Guards that run before anything is created: resources, score ranges, the output path, the
executor options. Each raises :class:`UsageError` (one line, exit status 2 through
:func:`studies.cli.run_main`)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

__all__ = ["UsageError", "available_memory", "check_resources", "check_scores", "MAX_SCORE", "PAIR_RATE",
           "executor_options", "check_scheduler", "check_out_path"]


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
