"""Executors of a sweep's cells: anything with the ``concurrent.futures.Executor`` interface.

:func:`make_executor` gives an in-process serial executor (``workers=1``; plain tracebacks), a
local process pool (``workers>1``), a Dask ``LocalCluster`` (``dask_local=N``) or an existing
Dask cluster (``scheduler=ADDRESS``, ``Client(address).get_executor()``). The options are
checked before a run creates anything (:func:`studies.guards.executor_options`): counts bounded
by the machine, a scheduler address that answers a Dask handshake.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os

__all__ = ["SerialExecutor", "make_executor", "numba_features", "quiet_dask_logs"]


class SerialExecutor(cf.Executor):
    """Runs each call at once in this process (plain tracebacks; the default)."""

    def submit(self, fn, /, *args, **kwargs):
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            if isinstance(e, KeyboardInterrupt):
                raise
            fut.set_exception(e)
        return fut


DEVICE_ENV = "WORKBENCH_DEVICE"  # set by the driver of a GPU run; its worker processes inherit it


def _init_worker(threads: int) -> None:
    """Give each worker process its share of the cores, for Numba and for BLAS; in a GPU run
    (:data:`DEVICE_ENV`), register the device engines as the driver did."""
    import numba
    from threadpoolctl import threadpool_limits

    if os.environ.get(DEVICE_ENV) == "gpu":
        import gpu  # noqa: F401 - registers the device engines with sim.backend

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    threadpool_limits(limits=threads)


def _register_gpu() -> None:
    import gpu  # noqa: F401 - registers the device engines with sim.backend


def numba_features() -> str:
    """The CPU feature string this process's Numba compiles for. Worker processes are given it
    (``NUMBA_CPU_FEATURES``), so they compile exactly the code the driver does -- same vector
    width, same summation order, the same bits -- whichever of numba and :mod:`sim` each
    process imported first (``sim`` widens the vectors only when it comes first)."""
    import numba

    if numba.config.CPU_FEATURES:
        return numba.config.CPU_FEATURES
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_features().flatten()


def quiet_dask_logs() -> None:
    """Dask's shutdown after an error or Ctrl-C logs "Task was destroyed but it is pending"
    and connection chatter: nothing the user must act on (the error itself is reported)."""
    import logging

    for name in ("distributed", "asyncio", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def make_executor(workers: int = 1, scheduler: str | None = None, dask_local: int | None = None):
    """Yield an executor with the ``concurrent.futures`` interface:

    * ``scheduler="tcp://host:port"`` -- a Dask distributed cluster (``Client(addr).get_executor()``);
    * ``dask_local=N`` -- a Dask ``LocalCluster`` of N single-threaded worker processes;
    * ``workers=N > 1`` -- a local process pool (spawned processes);
    * otherwise -- the in-process serial executor.

    Worker processes get ``cpu_count // N`` Numba and BLAS threads each, so N workers do not
    oversubscribe the cores.
    """
    threads = max(1, (os.cpu_count() or 1) // max(1, dask_local or workers))
    if scheduler is not None or dask_local:
        quiet_dask_logs()
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:  # pragma: no cover - depends on the dist extra
            raise RuntimeError("Dask execution needs the 'dist' extra: pip install -e '.[dist]'") from e
        if scheduler is not None:
            with Client(scheduler) as client:
                yield client.get_executor()
            return
        env = {k: str(threads) for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        env["NUMBA_CPU_FEATURES"] = numba_features()
        if os.environ.get(DEVICE_ENV):
            env[DEVICE_ENV] = os.environ[DEVICE_ENV]
        with LocalCluster(n_workers=dask_local, threads_per_worker=1, processes=True,
                          dashboard_address=None, env=env) as cluster, \
                Client(cluster) as client:
            if os.environ.get(DEVICE_ENV) == "gpu":
                client.run(_register_gpu)
            yield client.get_executor()
        return
    if workers <= 1:
        yield SerialExecutor()
        return
    import multiprocessing as mp

    os.environ["NUMBA_CPU_FEATURES"] = numba_features()  # spawned workers inherit it
    ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=_init_worker, initargs=(threads,))
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
