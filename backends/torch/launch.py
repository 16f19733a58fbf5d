"""The torchrun command line: ``clipa-run --nproc N --nnodes M ...`` re-launches itself through it."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from clipa.backends.base import LaunchOptions
from clipa.errors import Interrupted

WORKER = "clipa.backends.torch.worker"


def worker_args(run_dir: Path, opts: LaunchOptions) -> list[str]:
    args = ["--run-dir", str(run_dir)]
    if opts.device:
        args += ["--device", opts.device]
    if opts.max_samples is not None:
        args += ["--max-samples", str(opts.max_samples)]
    return args


def command(run_dir: Path, opts: LaunchOptions) -> list[str]:
    """An argument list (never a shell string): torchrun for several processes, else the worker alone."""
    if opts.nproc * opts.nnodes == 1:
        return [sys.executable, "-m", WORKER, *worker_args(run_dir, opts)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(opts.nproc),
           "--nnodes", str(opts.nnodes)]
    if opts.nnodes > 1 or opts.rdzv_endpoint:
        # c10d rendezvous: every node runs the same command with the same endpoint and id.
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", opts.rdzv_endpoint or "localhost:29500",
                "--rdzv-id", opts.rdzv_id or "clipa", "--node-rank", str(opts.node_rank)]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", WORKER, *worker_args(run_dir, opts)]


def run(cmd: list[str], resume: str) -> int:
    """Run torchrun and wait for it; its exit code. SIGTERM sent to clipa-run is passed on (torchrun
    passes it to the workers, which checkpoint at their next step boundary); Ctrl-C reaches every
    process of the terminal's group by itself. After either: Interrupted, naming ``resume``."""
    proc = subprocess.Popen(cmd)
    got: list[int] = []

    def handle(signum, frame):
        got.append(signum)
        if signum == signal.SIGTERM:
            proc.send_signal(signum)

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        raise Interrupted(got[0], f"stopped by {signal.Signals(got[0]).name} (torchrun exit {code}); "
                                  f"resume with: {resume}")
    return code
