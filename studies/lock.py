"""One writer per store: an advisory lock held for the whole of a run.

``with store_lock(path):`` takes an exclusive ``fcntl.flock`` on the lock file
``<parent>/.<name>.lock`` beside the store (the top store, when ``path`` is a group inside one),
which records the holder's pid, host and command line. A second writer of the same store

* waits, after one line on stderr naming the holder (``wait=True``), or
* is refused at once (``wait=False``): :class:`StoreBusy`, a one-line message naming the
  holder's pid (the studies' ``--no-wait``).

The kernel releases a flock when its process dies, so a lock left by a killed run (its file
still names the dead pid) is simply taken over, with a note. The holder removes the file when
it is done: a waiter that then wakes up on the removed file sees that the path no longer
names it and locks afresh, so two writers never hold "the" lock at once.

The lock is reentrant within a thread (a runner, and the sweep it calls, both take it) and
per thread otherwise. Readers (xarray, the figures, a re-analysis that only reads) never take
it. The lock file is beside the store rather than inside it, so creating, replacing
(``--overwrite``) or repairing the store never touches the file that guards it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import sys
import threading
from pathlib import Path

__all__ = ["StoreBusy", "store_lock", "lock_file", "lock_holder"]


class StoreBusy(RuntimeError):
    """Another run holds the store's lock (raised with ``wait=False``); its message is one line
    naming the holder's pid (:func:`studies.cli.store_errors` maps it to a usage error)."""


_HELD: dict = {}  # (lock file, thread id) -> [fd, depth]
_GUARD = threading.Lock()


def _top_store(path: Path) -> Path:
    from studies.store import is_store

    root = Path(os.path.abspath(path))
    while is_store(root.parent):
        root = root.parent
    return root


def lock_file(path) -> Path:
    """The lock file that guards the store at ``path`` (or the store that holds it)."""
    root = _top_store(Path(path))
    parent = Path(os.path.realpath(root.parent))
    return parent / f".{root.name}.lock"


def _read(fd) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_holder(path) -> dict:
    """What the lock file of ``path`` says about its last holder (``pid``, ``host``, ``cmd``);
    empty when there is none. Informative only: whether the lock is held is flock's answer."""
    try:
        fd = os.open(lock_file(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _who(info: dict) -> str:
    cmd = str(info.get("cmd", ""))
    cmd = cmd if len(cmd) <= 80 else cmd[:77] + "..."
    where = f" on {info['host']}" if info.get("host") not in (None, platform.node()) else ""
    return f"pid {info.get('pid', '?')}{where}" + (f": {cmd}" if cmd else "")


def _make_parents(directory: Path) -> list[Path]:
    made = []
    for d in reversed([directory, *directory.parents]):
        if not d.exists():
            d.mkdir()
            made.append(d)
    return made


def _acquire(lf: Path, store: Path, wait: bool) -> int:
    told = False
    while True:
        fd = os.open(lf, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                if not wait:
                    raise StoreBusy(f"{store} is being written by another run ({_who(holder)}); wait for it to "
                                    "finish, or choose another --out") from None
                if not told:
                    print(f"{store}: waiting for the run writing it to finish ({_who(holder)}); "
                          "--no-wait refuses instead", file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(lf)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                return fd
            os.close(fd)  # the holder removed the file as it finished: lock the new one
        except BaseException:
            os.close(fd)
            raise


@contextlib.contextmanager
def store_lock(path, wait: bool = True):
    """Hold the writer's lock of the store at ``path`` for the ``with`` block (module doc).
    Raises :class:`StoreBusy` when ``wait`` is False and another run holds it."""
    store = Path(path)
    lf = lock_file(store)
    key = (str(lf), threading.get_ident())
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with _GUARD:
                held[1] -= 1
        return
    made = _make_parents(lf.parent)
    try:
        fd = _acquire(lf, store, wait)
    except BaseException:
        _remove_dirs(made)
        raise
    try:
        before = _read(fd)
        if before.get("pid") not in (None, os.getpid()) and before.get("host") == platform.node() \
                and not _alive(before["pid"]):
            print(f"{store}: took over the lock left by {_who(before)}, which is no longer running",
                  file=sys.stderr, flush=True)
        me = json.dumps({"pid": os.getpid(), "host": platform.node(), "cmd": " ".join(sys.argv)}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        with _GUARD:
            _HELD[key] = [fd, 1]
        yield
    finally:
        with _GUARD:
            _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            os.unlink(lf)  # while still holding it: a waiter then sees the file is gone
        os.close(fd)
        _remove_dirs(made)


def _remove_dirs(made: list[Path]) -> None:
    """Remove the folders made for the lock file, if nothing else was put in them."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
                raise
            break
