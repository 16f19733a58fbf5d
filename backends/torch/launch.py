"""The torchrun command line: ``clipa-run --nproc N --nnodes M ...`` re-launches itself through it; and
the parallelism (DDP or FSDP), decided here at launch and recorded in RUN_DIR/parallelism.json for the
workers to read, so it never depends on what a worker process happens to be able to import."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from clipa import fs, runlock
from clipa.backends.base import LaunchOptions
from clipa.errors import Interrupted, UserError
from clipa.recipe import Recipe

PARALLELISM = "parallelism.json"  # in the run directory: {"parallelism", "processes", "reason"}


def parallelism(recipe: Recipe, processes: int, device: Optional[str]) -> tuple[str, str]:
    """('ddp' | 'fsdp', why) for ``processes`` training processes: FSDP (per-block sharding) only where a
    replica of the model and its optimizer state would not fit one device of the recipe's hardware, by
    the memory model (costmodels/memory.py) at each stage's per-device batch; DDP otherwise."""
    from clipa.costmodels import hardware, memory

    if processes == 1:
        return "ddp", "one process: nothing to replicate or shard"
    if device == "cpu":
        return "ddp", "CPU processes: FSDP is used on GPUs only"
    hw, enc = hardware.get(recipe.hardware.name), recipe.encoder.spec
    for i, st in enumerate(recipe.stages):
        if not memory.fits(enc, st.global_batch // processes, st.image_tokens(enc), st.text_len, hw,
                           grad_checkpointing=recipe.train.grad_checkpointing, precision=recipe.train.precision):
            return "fsdp", (f"stages[{i}] ({st.name}) does not fit one {hw.device} replicated "
                            f"({st.global_batch // processes} samples per device; costmodels/memory.py)")
    return "ddp", f"every stage fits one {hw.device} replicated (costmodels/memory.py)"


def record_parallelism(run_dir: Path, recipe: Recipe, processes: int, device: Optional[str]) -> str:
    """Decide the parallelism for this launch and write it into ``run_dir`` (atomically); returns it."""
    kind, reason = parallelism(recipe, processes, device)
    fs.write_atomic(fs.path(run_dir) / PARALLELISM,
                    json.dumps({"parallelism": kind, "processes": processes, "reason": reason}))
    return kind


def read_parallelism(run_dir: Path, processes: int) -> str:
    """What the launch decided for this run ('ddp' | 'fsdp'); UserError if it is missing or was decided
    for another number of processes (the workers were not started by clipa-run)."""
    path = fs.path(run_dir) / PARALLELISM
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing; start the workers with clipa-run, which decides DDP or FSDP") from None
    if d.get("processes") != processes or d.get("parallelism") not in ("ddp", "fsdp"):
        raise UserError(f"{path}: decided {d.get('parallelism')!r} for {d.get('processes')} processes, but "
                        f"{processes} started; launch them with clipa-run")
    return d["parallelism"]

WORKER = "clipa.backends.torch.worker"
TORCHRUN = "clipa.backends.torch.torchrun"  # torchrun, quiet where a worker said why it stopped


def check_batches(recipe: Recipe, processes: int) -> None:
    """UserError naming the first stage whose global batch the processes cannot share evenly."""
    for i, st in enumerate(recipe.stages):
        if st.global_batch % processes:
            raise UserError(f"stages[{i}].global_batch: {st.global_batch} is not divisible by {processes} processes")


def check(opts: LaunchOptions) -> None:
    """UserError for a device this backend does not know, or (launching, not a dry run) one this machine
    lacks: a worker would otherwise fail in torch with a traceback, or "gpu" train on the CPU; and nodes
    that could never meet."""
    opts.check_nodes()
    if opts.device not in (None, "cpu", "cuda"):
        raise UserError(f"--device {opts.device!r}: the torch backend knows cpu, cuda")
    if opts.device != "cuda" or opts.dry_run:
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError("--device cuda: torch finds no CUDA device on this machine; use --device cpu")
    if opts.nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {opts.nproc}: one process per CUDA device, and this node has "
                        f"{torch.cuda.device_count()}")


def worker_args(run_dir: Path, opts: LaunchOptions, resume: Optional[str] = None) -> list[str]:
    """The worker's flags; ``resume``: the command a stopped worker prints (clipa-run's, with its flags)."""
    args = ["--run-dir", str(run_dir)] + (["--resume", resume] if resume else [])
    if opts.device:
        args += ["--device", opts.device]
    if opts.max_samples is not None:
        args += ["--max-samples", str(opts.max_samples)]
    return args


def command(run_dir: Path, opts: LaunchOptions, resume: Optional[str] = None) -> list[str]:
    """An argument list (never a shell string): torchrun for several processes, else the worker alone."""
    if opts.nproc * opts.nnodes == 1:
        return [sys.executable, "-m", WORKER, *worker_args(run_dir, opts, resume)]
    cmd = [sys.executable, "-m", TORCHRUN, "--nproc-per-node", str(opts.nproc),
           "--nnodes", str(opts.nnodes)]
    if opts.nnodes > 1 or opts.rdzv_endpoint:
        # c10d rendezvous: every node runs the same command with the same endpoint and id.
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", opts.rdzv_endpoint,
                "--rdzv-id", opts.rdzv_id or "clipa", "--node-rank", str(opts.node_rank)]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", WORKER, *worker_args(run_dir, opts, resume)]


def run(cmd: list[str], resume: str) -> int:
    """Run torchrun and wait for it; its exit code (the failed worker's: backends/torch/torchrun.py).

    torchrun has a session of its own, so that a signal for the run reaches it once, from here. SIGINT,
    SIGTERM and SIGHUP sent to clipa-run or to its process group (Ctrl-C, a closed terminal) are passed
    on; torchrun passes them to the workers, which checkpoint at their next step boundary, and the main
    one says so, naming ``resume``. A repeat within FORCE_AFTER_S is not passed on: reaching torchrun
    while it waits for its workers, it would end the wait and leave them unattended. Interrupted, naming
    ``resume``, where torchrun exited otherwise after a signal. clipa-run killed outright (``kill -9``) is
    a SIGTERM to torchrun: its workers checkpoint and stop, and no second clipa-run on the run directory
    meets them still writing."""
    from clipa.backends.stopping import FORCE_AFTER_S, SIGNALS, die_with_parent, leave_hung_up_terminal

    # The kernel's death signal only: a polling thread (elsewhere) would not survive the exec.
    dies = functools.partial(die_with_parent, signal.SIGTERM, os.getpid()) if sys.platform == "linux" else None
    # torchrun keeps the run directory's lock until its workers are gone, even if clipa-run is killed first.
    proc = subprocess.Popen(cmd, preexec_fn=dies, start_new_session=True, pass_fds=runlock.held())
    got: list[int] = []
    last = 0.0

    def handle(signum, frame):
        nonlocal last
        if signum == signal.SIGHUP:
            leave_hung_up_terminal()
        if got and time.monotonic() - last < FORCE_AFTER_S:
            return  # the same request twice (Ctrl-C pressed twice), as StopSignals counts it
        got.append(signum)
        last = time.monotonic()
        proc.send_signal(signum)

    old = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got and code != 128 + got[0]:
        raise Interrupted(got[0], f"stopped by {signal.Signals(got[0]).name} (torchrun exit {code}); "
                                  f"resume with: {resume}")
    return code
