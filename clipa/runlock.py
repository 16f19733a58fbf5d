"""One run at a time in a run directory: the process that trains into it holds a lock on RUN_DIR/.lock,
and ``holder`` tells the report that a run is training now rather than stopped.

Without it, a second clipa-run on the same directory (another terminal, a job started again while the first
still writes its last checkpoint) trained alongside the first: both wrote checkpoints, metrics.jsonl and
achieved.json, and both exited 0. Now the second stops with one line naming the holder. The lock is the
kernel's (``flock``): it goes when the last process holding it exits, ``kill -9`` included, so a crash
never leaves a stale one, and torchrun inherits it (``held``) so that it lasts until the workers are gone.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from clipa.errors import UserError

NAME = ".lock"
_HELD: dict[Path, int] = {}  # run directory -> the descriptor holding its lock


def claim(run_dir: Path) -> None:
    """Hold ``run_dir``'s lock (making the directory) until the end of the ``scope`` around the call, else of
    this process (a second claim from it holds it already); UserError naming the holder when another process
    has it. An object store, or a filesystem that cannot lock (Lustre without ``flock``), is used unlocked,
    as before."""
    if not isinstance(run_dir, Path):
        return  # an object store has no lock
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD:
        return
    fd = _open(run_dir / NAME)
    if fd is None:
        return  # a directory nobody here may write: the run's own first write says so
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = _who(fd)
        os.close(fd)
        raise UserError(f"{run_dir}: another run is training into it ({who}, or the processes it started); "
                        "wait for it or stop it, or use another --run-dir") from None
    except OSError:
        os.close(fd)
        return
    with contextlib.suppress(OSError):  # who holds it, for the next one; a full disk is for the run's writes to say
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}".encode())
    _HELD[key] = fd


def _open(path: Path):
    """A descriptor to lock ``path`` with, or None. flock needs no write access, so another user's lock
    file (mode 644) still locks."""
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags, 0o644)
        except OSError:
            pass
    return None


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Release the locks claimed inside at its end: clipa-run holds a run directory's for one launch, and a
    caller in the same process (a test, a notebook) may then start another run on it, here or elsewhere."""
    before = set(_HELD)
    try:
        yield
    finally:
        for key in set(_HELD) - before:
            os.close(_HELD.pop(key))


def held() -> tuple[int, ...]:
    """The descriptors of the locks this process holds, for a child that must keep them (torchrun)."""
    return tuple(_HELD.values())


def holder(run_dir) -> Optional[str]:
    """Who is training into ``run_dir`` now (what the holder wrote), or None: nobody, or a directory whose
    lock cannot be tested (an object store, no lock file, a filesystem without flock)."""
    if not isinstance(run_dir, Path):
        return None
    try:
        fd = os.open(run_dir / NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # held only until the close below
    except BlockingIOError:
        return _who(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _who(fd: int) -> str:
    """What the holder of the lock on ``fd``'s file wrote there (``claim``)."""
    return os.read(fd, 1024).decode(errors="replace").strip() or "another process"
