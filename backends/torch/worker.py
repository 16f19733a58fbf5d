"""One training process (run by clipa-run directly, or by torchrun once per device).

    python -m clipa.backends.torch.worker --run-dir RUN_DIR [--device cpu|cuda] [--max-samples N]

Reads the resolved recipe from RUN_DIR/recipe.yaml; clipa-run wrote it (and any demo data) first.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from typing import Optional

from rich.console import Console

from clipa import recipe as recipe_mod
from clipa import fs, rundir, runlock
from clipa.errors import Interrupted, UserError


def main(run_dir, device: Optional[str] = None, max_samples: Optional[int] = None,
         resume: Optional[str] = None) -> int:
    """Train; returns 0 when finished or stopped at max_samples, raises UserError on user mistakes
    (Interrupted on SIGINT/SIGTERM/SIGHUP, its message ending with ``resume``)."""
    from clipa.backends import allocator, threads

    threads.passive_openmp_wait()  # before torch loads OpenMP
    allocator.keep_freed_memory()
    import torch

    from clipa.backends import loop
    from clipa.backends.data import pipeline, resolve
    from clipa.backends.torch import dist as tdist
    from clipa.backends.torch import slurm
    from clipa.backends.torch.trainer import TorchTrainer

    rec = recipe_mod.load(fs.path(run_dir) / rundir.RECIPE)
    world = tdist.init(device)
    if world.is_main and os.environ.get(slurm.LAUNCHER_ENV) == "slurm":
        runlock.claim(fs.path(run_dir))  # srun started the tasks: no clipa-run holds the directory for them
    if world.device.type == "cpu":
        # Threads from the decode demand and the free cores (backends/threads.py): OpenMP threads beyond
        # the cores left spin against the decoders and other processes. Chosen once per run (resumes match),
        # per stage: the trainer sets each stage's count when the stage starts.
        choices = threads.for_run(rec, run_dir, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        compute_threads = {name: c.threads for name, c in choices.items()}
        torch.set_num_threads(compute_threads[rec.stages[0].name])
        if len({str(c) for c in choices.values()}) == 1:
            print(f"cpu: {choices[rec.stages[0].name]}", file=sys.stderr, flush=True)
        else:
            for name, c in choices.items():
                print(f"cpu: {c} (stage {name})", file=sys.stderr, flush=True)
    else:
        compute_threads = None
    console = Console(stderr=True, soft_wrap=True)
    try:
        ds = resolve.resolve(rec, run_dir, generate=False)
        pipeline.start_workers(rec.dataset.workers)  # their start-up overlaps the model's construction
        loop.run(rec, run_dir, ds, TorchTrainer(rec, run_dir, world, compute_threads), max_samples=max_samples,
                 console=console, resume=resume)
    finally:
        if world.world_size > 1:
            # Once one process has exited, torchrun SIGTERMs the others: let this one finish saying why it stopped.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        tdist.shutdown()
    return 0


def cli(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="clipa.backends.torch.worker")
    p.add_argument("--run-dir", required=True)  # a local path or a URL (clipa/fs.py)
    p.add_argument("--device", default=None)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--resume", default=None)  # the clipa-run command that continues the run, as launched
    a = p.parse_args(argv)
    try:
        return main(a.run_dir, a.device, a.max_samples, a.resume)
    except UserError as e:
        rank = int(os.environ.get("RANK", "0"))  # torchrun's, or SLURM's once main has read it
        if rank == 0 or not isinstance(e, Interrupted):  # every process stops on a signal; one says so
            Console(stderr=True, highlight=False).print(f"[red]error:[/red] {e}", soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to checkpoint yet
        if int(os.environ.get("RANK", "0")) == 0:
            print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if int(os.environ.get("WORLD_SIZE", "1")) == 1 or not _peer_stopped(e):
            raise
        # Another process stopped first and this one's next collective failed for it; that process said why
        # (clipa's line, a traceback, or torchrun's line for one killed). Said again, in a line, by rank 0
        # (so never silent, even where every process failed so) and by processes on other nodes than it.
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if rank == 0 or int(os.environ.get("LOCAL_WORLD_SIZE", world)) < world:
            # gloo's message: "[its source file:line] Connection closed by peer [address]. This is typically ..."
            why = re.sub(r"^\[[^\]]*\] ", "", str(e).splitlines()[0] if str(e) else type(e).__name__).split(". ")[0]
            print(f"error: rank {rank}: another process of this run stopped ({why[:200]})", file=sys.stderr)
        return 1


def _peer_stopped(e: Exception) -> bool:
    """Whether ``e`` is a collective that failed because another process has gone: one of torch's
    distributed errors, or gloo's RuntimeError for a closed connection (its message with torch 2.14)."""
    import torch.distributed as dist

    gone = ("Connection closed by peer", "Connection reset by peer")
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(g in str(e) for g in gone))


if __name__ == "__main__":
    sys.exit(cli())
