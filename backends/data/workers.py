"""Decoding processes: spawned workers, each with its own pair of pipes, that a worker's death cannot hang.

Not concurrent.futures' pool for the training stream: its workers share one result pipe, and a worker
killed while it sends a batch back (the system ends a process with SIGKILL when memory runs out) leaves
half a message there; the pool's reader thread then waits for the rest forever, and the trainer with it
(a 200 MB result, SIGKILL at a random moment of its first 0.4 s: 6 hangs in 60 tries on the dev VM; here,
none in 30). Here only the worker holds the writing end of its result pipe, so its death ends the parent's
read with EOFError, half-way through a message or not, and its jobs go to a new worker in the same order.
"""
from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
from multiprocessing import resource_tracker
from typing import Any, Callable, Optional

from clipa.backends.stopping import die_with_parent
from clipa.errors import DecodersDied

# A process stops its data at this many worker deaths: one is the system ending a worker for memory once;
# three mean it will go on doing so (clipa's choice)
MAX_WORKER_DEATHS = 3
# SLURM's default KillWait (slurm.conf(5): "The default value is 30 seconds"): by then SLURM kills the
# whole job, so the grace never cuts a worker short there
TERM_GRACE_S = 30


class Ticket:
    """A job handed to a worker; ``Workers.result`` fills ``outcome`` (ok, value) when it reads it back."""

    __slots__ = ("job", "worker", "outcome")

    def __init__(self, job: tuple[Callable, tuple]):
        self.job, self.worker, self.outcome = job, None, None


class _Worker:
    """One spawned process and, here, two threads: one hands it jobs, one reads its outcomes as they come
    (so neither waits on the caller, as concurrent.futures' own threads do). ``pending``: its tickets,
    oldest first (it answers them in that order); ``inbox``: their outcomes, then ``_DEAD`` if it died."""

    def __init__(self):
        ctx = mp.get_context("spawn")
        job_out, self.jobs = ctx.Pipe(duplex=False)
        self.results, result_in = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_serve, args=(job_out, result_in, os.getpid()), daemon=True,
                                   name="clipa-decoder")
        self.process.start()
        job_out.close()  # the worker's ends: once it exits, nothing else can write its result pipe
        result_in.close()
        self.pending: collections.deque[Ticket] = collections.deque()
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._receive)]
        for t in self.threads:
            t.start()

    def hand(self, ticket: Ticket) -> None:
        ticket.worker = self
        self.pending.append(ticket)
        self.outbox.put(ticket.job)

    def _send(self) -> None:
        while (job := self.outbox.get()) is not None:
            try:
                self.jobs.send(job)
            except OSError:  # it died: the other thread says so
                return

    def _receive(self) -> None:
        while True:
            try:
                outcome = self.results.recv()
            except (EOFError, OSError):  # it died, half-way through a message or not
                self.inbox.put(_DEAD)
                return
            except Exception as e:  # noqa: BLE001  (a whole message that will not unpickle here: the job's error)
                outcome = (False, RuntimeError(f"a decoding job's outcome could not be read back: {e!r}"))
            self.inbox.put(outcome)

    def close(self) -> None:
        """End the process at once (it holds nothing a job cannot make again), then the threads."""
        self.process.kill()
        self.process.join()
        self.outbox.put(None)
        for t in self.threads:
            t.join()
        self.jobs.close()
        self.results.close()


_DEAD = object()


class Workers:
    """``n`` decoding processes; ``submit`` hands jobs round the workers, ``result`` reads one back.

    A dead worker (counted, a line on stderr) is replaced and its pending jobs handed to the new one in the
    same order, so results stay a function of the jobs. At ``MAX_WORKER_DEATHS`` deaths ``result`` raises
    ``DecodersDied``. A ticket nobody waits for any more is dropped when its result comes back."""

    def __init__(self, n: int):
        _start_resource_tracker()
        self.slots = [_Worker() for _ in range(n)]
        self.turn = self.deaths = 0

    def submit(self, fn: Callable, *args: Any) -> Ticket:
        ticket = Ticket((fn, args))
        self.slots[self.turn].hand(ticket)
        self.turn = (self.turn + 1) % len(self.slots)
        return ticket

    def result(self, ticket: Ticket) -> Any:
        """The job's return value, or its exception raised here."""
        while ticket.outcome is None:
            worker = ticket.worker
            outcome = worker.inbox.get()
            if outcome is _DEAD:
                self._replace(worker)
                continue
            worker.pending.popleft().outcome = outcome
        ok, value = ticket.outcome
        if not ok:
            raise value
        return value

    def _replace(self, dead: _Worker) -> None:
        self.deaths += 1
        dead.close()
        if self.deaths >= MAX_WORKER_DEATHS:
            self.close()
            raise DecodersDied(f"dataset.workers: a decoding process died {self.deaths} times (the system kills "
                               f"processes when memory runs out); lower dataset.workers or the batch size")
        print(f"clipa data: a decoding process died (the system kills processes when memory runs out); starting "
              f"another ({self.deaths} so far; the run stops at {MAX_WORKER_DEATHS})", file=sys.stderr)
        new = _Worker()
        self.slots[self.slots.index(dead)] = new
        for ticket in dead.pending:
            new.hand(ticket)

    def close(self) -> None:
        for worker in self.slots:
            worker.close()


def _serve(jobs, results, parent: int) -> None:
    """A worker: runs jobs in the order they come and sends each outcome back, until the parent closes."""
    worker_init(parent)
    while True:
        try:
            fn, args = jobs.recv()
        except (EOFError, OSError):
            return
        try:
            outcome = (True, fn(*args))
        except Exception as e:  # noqa: BLE001  (the parent raises it)
            outcome = (False, e)
        try:
            results.send(outcome)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            results.send((False, RuntimeError(f"a decoding job's outcome could not be sent back: {e!r}")))


def worker_init(parent: int, term_grace_s: int = TERM_GRACE_S) -> None:
    """A worker process (a decoder, or a syntax tagger of ``spawn_pool``): dies with its parent (a
    ``kill -9`` of the trainer must not leave it running), and leaves what the terminal sends the whole job
    (Ctrl-C's SIGINT, a hang-up's SIGHUP) to the parent, which stops at a step boundary: no worker traceback,
    no lost worker before its checkpoint.

    SIGTERM, which SLURM sends every process of a job it preempts, ends a worker ``term_grace_s`` later
    (SIGALRM), not at once, so it serves the trainer up to its checkpoint; the trainer closes its workers
    as it exits, or its exit ends them."""
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: signal.alarm(term_grace_s))
    die_with_parent(signal.SIGKILL, parent)


def spawn_pool(processes: int) -> cf.ProcessPoolExecutor:
    """A concurrent.futures pool of ``processes`` spawned processes set up by ``worker_init`` (the caller
    shuts it down), for jobs whose results are small (the syntax tagger's: a count per shard)."""
    _start_resource_tracker()
    return cf.ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"), initializer=worker_init,
                                  initargs=(os.getpid(),))


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (spawning a process starts one) with SIGHUP blocked, which it
    inherits. It ignores SIGINT and SIGTERM itself, but SIGHUP, which a closed terminal sends the whole
    job, would kill it while the trainer checkpoints, and the pool's next lock would print tracebacks."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_STARTED: dict[int, Workers] = {}


def start_workers(workers: int, warm_up: Optional[Callable] = None) -> Optional[Workers]:
    """This process's ``workers`` decoding processes, started on the first call and kept for every later
    stage: a spawned worker costs an interpreter start and the decoder's imports (~1 s on the dev VM), so
    a backend calls this before building its model to overlap the two (``warm_up``, a no-op job from the
    decoder's module, makes each worker import it now). Spawn, not fork: the caller may hold torch/JAX
    threads, which fork would copy half-way. None for ``workers`` 0 (decode in-process)."""
    if workers <= 0:
        return None
    pool = _STARTED.get(workers)
    if pool is None or pool.deaths >= MAX_WORKER_DEATHS:
        pool = _STARTED[workers] = Workers(workers)
        for _ in range(workers if warm_up else 0):
            pool.submit(warm_up)
    return pool


def close_all() -> None:
    """End every decoding process this process started."""
    for pool in _STARTED.values():
        pool.close()
    _STARTED.clear()


# Runs before multiprocessing's own exit handler (multiprocessing.util registers it when imported, above, by
# resource_tracker), which would SIGTERM the workers and then wait out their grace: an exit took 0.6 s
atexit.register(close_all)
