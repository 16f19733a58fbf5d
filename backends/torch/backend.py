"""TorchBackend: ``launch(recipe_path, recipe, run_dir, opts)`` trains a recipe into a run directory."""
from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console

from clipa import fs
from clipa.backends.base import LaunchOptions
from clipa.backends.runstate import prepare_run_dir, resume_command
from clipa.recipe import Recipe


class TorchBackend:
    name = "torch"
    flags = frozenset({"nproc", "nnodes", "node_rank", "rdzv_endpoint", "rdzv_id", "device", "dry_run", "max_samples"})

    def launch(self, recipe_path: Path, recipe: Recipe, run_dir: Path, opts: LaunchOptions) -> int:
        from clipa.backends.data import resolve
        from clipa.backends.torch import launch, worker

        launch.check(opts)
        launch.check_batches(recipe, opts.nproc * opts.nnodes)  # before the run directory is claimed
        console = Console(stderr=True, soft_wrap=True)
        run_dir = fs.path(run_dir)
        resume = resume_command(recipe_path, run_dir, self.name, opts)
        cmd = launch.command(run_dir, opts, resume)
        if opts.dry_run:
            print(shlex.join(cmd))
            return 0
        # Node 0 writes recipe.yaml; the other nodes' workers start after torchrun's rendezvous, so after it.
        if not prepare_run_dir(recipe, run_dir, "torch", console, is_main=opts.node_rank == 0):
            return 0
        resolve.resolve(recipe, run_dir, generate=True)  # missing paths fail here, before any worker starts
        launch.record_parallelism(run_dir, recipe, opts.nproc * opts.nnodes, opts.device)
        if opts.nproc * opts.nnodes == 1:
            return worker.main(run_dir, opts.device, opts.max_samples, resume)
        return launch.run(cmd, resume)
