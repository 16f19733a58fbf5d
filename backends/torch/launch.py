"""The torchrun command line: ``clipa-run --nproc N --nnodes M ...`` re-launches itself through it."""
from __future__ import annotations

import sys
from pathlib import Path

from clipa.backends.base import LaunchOptions

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
