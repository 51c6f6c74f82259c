"""Measurements: token laws and samplers, streaming attention kernels, estimators, trainers.

Importing ``sim`` lets LLVM use the full 512-bit vectors of a CPU with AVX-512: by default it
prefers 256-bit ones on Intel server CPUs, which halves the lanes of every vectorised kernel
here (measured on the convergence workload: 6.9 vs 4.8 G token-query pairs/s in float32, 2.7
vs 1.8 in float64, on 2 cores). This is done by adding ``-prefer-256-bit`` to the host's own
feature string in ``NUMBA_CPU_FEATURES`` -- no instruction the CPU lacks, and Numba's on-disk
caches are keyed by it -- and only when numba is not imported yet and the user has not set
``NUMBA_CPU_FEATURES`` themselves (set it, even to the host's plain features, to opt out).

Importing ``sim`` also checks the environment variables that steer Numba and the thread pools
before Numba reads them (:func:`check_environment`): a thread count of 0, a misspelt threading
layer or a malformed feature string would otherwise be a traceback at import, a multi-line
warning, a hang (``NUMBA_NUM_THREADS=100000`` starts that many threads) or an LLVM abort. A bad
value stops the program with one line on stderr and exit status 2 (:class:`BadEnvironment`
from :func:`check_environment` for a caller that wants to handle it).
"""
import os as _os
import sys as _sys

MAX_THREADS = 1024  # a thread count above this is a typo, not a machine


class BadEnvironment(RuntimeError):
    """An environment variable read by Numba, OpenMP or BLAS has a value they cannot use."""


def _thread_count(name: str, value: str, *, listed: bool = False) -> None:
    parts = value.split(",") if listed else [value]
    for p in parts:
        p = p.strip()
        if not p.isdigit() or not 1 <= int(p) <= MAX_THREADS:
            more = " (or a comma list of them)" if listed else ""
            raise BadEnvironment(f"environment variable {name}={value!r}: must be a thread count, an integer in "
                                 f"1..{MAX_THREADS}{more}; unset it or fix it")


_LAYERS = ("default", "safe", "threadsafe", "forksafe", "omp", "tbb", "workqueue")


# LLVM tuning flags (not host features) that a feature string may carry; -prefer-256-bit is
# the one this package adds (module docstring), the others are its relatives
_TUNING = {"prefer-256-bit", "prefer-128-bit", "prefer-mask-registers", "prefer-no-gather", "prefer-no-scatter"}


def _cpu_features(value: str) -> None:
    import re

    tokens = [t for t in value.split(",") if t]
    bad = [t for t in tokens if not re.fullmatch(r"[+-][A-Za-z0-9_.-]+", t)]
    if not bad:
        try:
            import llvmlite.binding as llvm

            known = set(llvm.get_host_cpu_features()) | _TUNING
        except Exception:  # noqa: BLE001 - no llvmlite: the form is all that can be checked
            known = set()
        bad = [t for t in tokens if known and t[1:] not in known]
    if bad:
        raise BadEnvironment(f"environment variable NUMBA_CPU_FEATURES: {bad[0]!r} is not a CPU feature of this "
                             "machine (a comma list of +feature / -feature); unset it or fix it")


def check_environment(env=None) -> None:
    """Raise :class:`BadEnvironment` (one line) if a Numba / OpenMP / BLAS variable of ``env``
    (default ``os.environ``) has a value those libraries cannot use. Empty values are unset."""
    env = _os.environ if env is None else env

    def get(name):
        v = env.get(name)
        return v if v is not None and v.strip() else None

    for name in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS", "OMP_THREAD_LIMIT"):
        if get(name) is not None:
            _thread_count(name, env[name])
    if get("OMP_NUM_THREADS") is not None:
        _thread_count("OMP_NUM_THREADS", env["OMP_NUM_THREADS"], listed=True)
    layer = get("NUMBA_THREADING_LAYER")
    if layer is not None and layer.strip().lower() not in _LAYERS:
        raise BadEnvironment(f"environment variable NUMBA_THREADING_LAYER={layer!r}: choose one of "
                             f"{', '.join(_LAYERS)}; unset it or fix it")
    prio = get("NUMBA_THREADING_LAYER_PRIORITY")
    if prio is not None and sorted(prio.split()) != ["omp", "tbb", "workqueue"]:
        raise BadEnvironment(f"environment variable NUMBA_THREADING_LAYER_PRIORITY={prio!r}: must order the three "
                             "layers 'tbb omp workqueue'; unset it or fix it")
    opt = get("NUMBA_OPT")
    if opt is not None and opt.strip() not in ("0", "1", "2", "3", "max"):
        raise BadEnvironment(f"environment variable NUMBA_OPT={opt!r}: choose 0, 1, 2, 3 or max; unset it or fix it")
    if get("NUMBA_CPU_FEATURES") is not None:
        _cpu_features(env["NUMBA_CPU_FEATURES"])


def _import_numba_checked() -> None:
    """Import numba with its environment parsing watched: a ``NUMBA_*`` value it cannot parse
    (it warns with a traceback in the message, then ignores the value) is a BadEnvironment."""
    import re
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import numba  # noqa: F401
        except (ValueError, RuntimeError) as e:  # a value numba rejects at import
            raise BadEnvironment(f"numba cannot start with this environment: {str(e).splitlines()[0]}") from None
    for w in caught:
        m = re.search(r"Environment variable '(\w+)' is defined but its associated value '(.*?)' could not be "
                      r"parsed", str(w.message), re.S)
        if m:
            raise BadEnvironment(f"environment variable {m.group(1)}={m.group(2)!r}: Numba cannot parse it; unset it "
                                 "or fix it")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _prefer_wide_vectors() -> None:
    if "NUMBA_CPU_FEATURES" in _os.environ or "numba" in _sys.modules:
        return
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features().flatten()
    except Exception:  # noqa: BLE001 - no llvmlite or an unknown host: leave LLVM's default
        return
    if "+avx512f" in features.split(","):
        _os.environ["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit"


def _startup() -> None:
    try:
        check_environment()
        _prefer_wide_vectors()
        if "numba" not in _sys.modules:
            _import_numba_checked()
    except BadEnvironment as e:
        print(f"error: {e}", file=_sys.stderr, flush=True)
        raise SystemExit(2) from None


_startup()
