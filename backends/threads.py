"""How many compute threads a CPU training process gets next to its decoding workers.

The old rule, ``cores // local_ranks - dataset.workers``, reserved one whole core per decoding worker. On a
2-core machine with one worker that left one compute thread while the worker sat mostly idle: at the
demo's sizes decoding needs a small fraction of a core (issue 13: clipa ran at 0.75-0.8x OpenCLIP's
trainer, which used both cores). A core is worth reserving only when decoding would keep it busy.

So: decode demand (cores) = the rate compute could reach x the decode time per sample, where

- the decode time per sample is measured on the run's own shards with the stage's own pipeline
  (``measure_decode_s``), or else modelled from ``costmodels/data/hardware.yaml``'s per-core rate;
- the compute rate is its upper bound, the host's measured peak over the stage's training FLOPs per
  sample (``costmodels.flops``): overstating it can only reserve a core too many, never starve decoding.

Cores reserved = that demand rounded up from a third (``RESERVE_FROM``: a third of a core of decoding
or more earns a core), at most one per worker and at most all but one core, decided for each stage: a
stage whose decoding is light gets the core a heavier stage reserved (the demo on 2 cores: its 32-px
pre-training reserves a core, its 64-px fine-tune need not, and with 2 compute threads instead of 1 it
ran at 167 instead of 114 samples/s, 2026-11-30). Cores other processes are using right now are not ours: OpenMP
threads that outnumber the free cores spin against the other processes (one stage at 64 px ran 3.2x
slower with 2 threads than with 1 while 4 other processes loaded this 2-core machine: 441 s vs 136 s
for 3,200 samples, load average 5.6, measured 2026-11-30), so ``busy_cores`` samples /proc/stat.
``train.compute_threads`` in the recipe, when set, overrides all of this.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Optional

from clipa.errors import UserError


# Decode demand (cores) from which a core is reserved. Measured on the demo, 2 cores, one decoding worker:
# at a demand of 0.1 (the 64-px fine-tune) 2 compute threads beat 1 (167 vs 114 samples/s, 2026-11-30); at
# 0.43-0.58 (the 32-px pre-training, the measured demand varies run to run) 1 thread and a reserved core beat
# 2 (about 250 vs 175 samples/s, three pilots and the demo run of one `make demo`, 2026-12-02), where a
# threshold of a half had reserved at 0.58 and not at 0.43-0.48. With the contention loss linear in
# between, the two break even at about 0.34.
RESERVE_FROM = 1 / 3


@dataclass(frozen=True)
class Choice:
    threads: int          # torch.set_num_threads for this process
    reserved: int         # cores left to this process's decoding workers
    decode_cores: float   # decode demand, cores (nan when overridden)
    reason: str           # one line for the run's log

    def __str__(self) -> str:
        return f"{self.threads} compute thread(s): {self.reason}"


def choose(cores: int, local_ranks: int, workers: int, decode_cores: float, *, busy: float = 0.0,
           override: Optional[int] = None) -> Choice:
    """Compute threads for one of ``local_ranks`` processes on a host of ``cores`` cores, each with
    ``workers`` decoding workers whose demand is ``decode_cores``; ``busy``: cores other processes use."""
    if override is not None:
        if override < 1:
            raise ValueError(f"compute threads must be >= 1, got {override}")
        return Choice(override, 0, math.nan, "train.compute_threads in the recipe")
    per_rank = max(1, cores // max(1, local_ranks))
    free = max(1, min(per_rank, math.floor((cores - busy) / max(1, local_ranks) + 0.5)))
    reserved = 0 if workers <= 0 else min(workers, free - 1, math.floor(decode_cores + 1.0 - RESERVE_FROM))
    reserved = max(0, reserved)
    reason = (f"{per_rank} core(s) per process, {per_rank - free} busy with other processes, decoding needs "
              f"{decode_cores:.2f} core(s) -> {reserved} reserved for {workers} worker(s)")
    return Choice(max(1, free - reserved), reserved, decode_cores, reason)


def passive_openmp_wait() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, unless the user set it);
    call before torch loads its OpenMP runtime. The thread choice is made once, at start; when other
    processes take cores later, spinning threads collapse throughput. Measured (issue 13, 2026-11-30,
    this 2-core VM loaded 4.3-6.9 by other jobs, one 64-px stage of 640 samples, /tmp/i13/omp.py):
    2 threads spinning (libgomp's default) 23.9 and 6.7 samples/s, 2 threads passive 42.2 and 31.4,
    1 thread 45.0 and 34.7. On the quiet machine (load 1.0-1.2, same script) passive costs nothing
    measurable: 152.1 and 140.0 samples/s vs 144.3 and 151.1 spinning (1 thread: 91.7 and 100.4)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def busy_cores(seconds: float = 0.3) -> float:
    """Cores in use (by anyone) over the next ``seconds``, from /proc/stat; 0 where it cannot be read."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)   # idle + iowait
        return sum(v[:8]), idle

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    if t1 <= t0:
        return 0.0
    return (os.cpu_count() or 1) * (1.0 - (i1 - i0) / (t1 - t0))


def measure_decode_s(dataset, stage, encoder, batch_size: int = 32, batches: int = 2) -> Optional[float]:
    """Seconds of one core per sample that the stage's pipeline spends on the run's own shards (decode,
    augment, tokenize), in this process; None if the shards cannot be read."""
    from clipa.backends.data import pipeline

    try:
        it = pipeline.train_batches(dataset, stage, encoder, batch_size=batch_size, workers=0)
        next(it)                     # warm-up: tokenizer, first shard index
        t0 = time.process_time()
        for _ in range(batches):
            next(it)
        return (time.process_time() - t0) / (batches * batch_size)
    except (OSError, UserError, StopIteration):  # shards unreadable or empty: the model stands in; a bug raises
        return None


def modelled_decode_s(image_size: int) -> float:
    """One core's seconds per image at ``image_size`` from the measured web-photo decode rates."""
    from clipa.costmodels import throughput

    return 1.0 / throughput.decode_rate_per_core(image_size)


def peak_samples_per_s(encoder, stage, cores: int) -> float:
    """Upper bound of the samples/s ``cores`` cores compute for ``stage``: the measured peak, all used."""
    from clipa.costmodels import flops, hardware

    peak, _ = hardware.cpu_peak_flops()
    per_core = peak / (os.cpu_count() or 1)
    f = flops.stage_train_flops(encoder, stage)
    return cores * per_core / f


def for_recipe(rec, run_dir, local_ranks: int = 1) -> dict[str, Choice]:
    """The choice for each stage (by name) of a CPU training process of ``rec`` in ``run_dir``."""
    override = getattr(rec.train, "compute_threads", None)
    cores = os.cpu_count() or 1
    if override is not None:
        c = choose(cores, local_ranks, rec.dataset.workers, 0.0, override=override)
        return {st.name: c for st in rec.stages}
    try:
        from clipa.backends.data import resolve

        dataset = resolve.resolve(rec, run_dir, generate=False)
    except (OSError, UserError):     # the worker reports a missing dataset itself, in one line
        dataset = None
    enc = rec.encoder.spec
    per_rank = max(1, cores // max(1, local_ranks))
    busy = busy_cores()
    out = {}
    for st in rec.stages:
        d = measure_decode_s(dataset, st, enc) if dataset is not None and rec.dataset.workers > 0 else None
        if d is None:
            d = modelled_decode_s(st.image_size)
        out[st.name] = choose(cores, local_ranks, rec.dataset.workers, peak_samples_per_s(enc, st, per_rank) * d,
                              busy=busy)
    return out


THREADS_FILE = "threads.json"


def for_run(rec, run_dir, local_ranks: int = 1) -> dict[str, Choice]:
    """``for_recipe``, decided once per run directory: a resumed process (and every local rank) uses the
    counts the run started with, since the thread count changes float reduction order and a resume must
    end with the same weights as an uninterrupted run. The first process to write the file wins."""
    import json

    from clipa import fs

    if getattr(rec.train, "compute_threads", None) is not None:
        return for_recipe(rec, run_dir, local_ranks)
    path = fs.path(run_dir) / THREADS_FILE
    if not path.exists():
        stages = {name: {"threads": c.threads, "reserved": c.reserved, "reason": c.reason}
                  for name, c in for_recipe(rec, run_dir, local_ranks).items()}
        fs.write_atomic(path, json.dumps({"stages": stages}), exclusive=True)
    d = json.loads(path.read_text())
    # A run started before the choice was made per stage has one count for all of them.
    per_stage = d.get("stages") or {st.name: d for st in rec.stages}
    return {st.name: Choice(int(per_stage[st.name]["threads"]), int(per_stage[st.name]["reserved"]), math.nan,
                            f"as this run started: {per_stage[st.name]['reason']}") for st in rec.stages}
