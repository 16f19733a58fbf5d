"""SIGINT/SIGTERM/SIGHUP during training: a flag the stage loop reads at step boundaries, never a torn process.

Ctrl-C, SIGTERM (what SLURM and preemptible VMs send before they stop a job) and SIGHUP (the terminal
closed: a dropped ssh session) set ``pending``; the loop writes a checkpoint at the next step boundary and
raises ``clipa.errors.Interrupted`` (exit 130, 143 or 129). A repeat after ``FORCE_AFTER_S`` stops at once
with the signal's usual action; a repeat sooner is the same request delivered twice.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import termios
import threading
import time
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORCE_AFTER_S = 5.0  # a second Ctrl-C this long after the first means "stop now, skip the checkpoint"
# What a launcher gives a signalled run to reach a step boundary and write its checkpoint before it kills
# it: clipa's choice, for checkpoints of many GB (the $10k g/14 plan's is 16.4 GB); torchrun's default is 30 s.
GRACE_S = 120


class StopSignals:
    """While entered (in the main thread), SIGINT/SIGTERM/SIGHUP set ``pending`` to the signal number."""

    def __init__(self):
        self.pending: Optional[int] = None
        self._at = 0.0
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python runs handlers there only
            self._old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGHUP:
            leave_hung_up_terminal()
        if self.pending is None:
            self.pending, self._at = signum, time.monotonic()
            return
        if time.monotonic() - self._at < FORCE_AFTER_S:
            return
        old = self._old.get(signum, signal.SIG_DFL)
        signal.signal(signum, old)
        if callable(old):
            old(signum, frame)  # Python's own Ctrl-C handler: KeyboardInterrupt
        else:
            os.kill(os.getpid(), signum)


def leave_hung_up_terminal() -> None:
    """Point stdout and stderr at /dev/null where they went to a terminal that has hung up (a closed ssh
    session): every write there fails (EIO), and the progress bar's next one would end the run before it
    reaches the step boundary that writes its checkpoint. A terminal still there, a file or a pipe is kept."""
    for fd in (1, 2):
        try:
            termios.tcgetattr(fd)
        except termios.error as e:
            if e.args[0] == errno.EIO:  # a hung-up terminal; a file or a pipe is ENOTTY
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)


def die_with_parent(signum: int, parent: int) -> None:
    """In a child process: the kernel sends it ``signum`` when ``parent`` exits, even by ``kill -9``
    (Linux's prctl(PR_SET_PDEATHSIG), <linux/prctl.h>: 1); elsewhere a thread polls for it once a second.
    Exits at once if ``parent`` has already gone."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)
    else:
        threading.Thread(target=_signal_when_orphaned, args=(signum, parent), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _signal_when_orphaned(signum: int, parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signum)
