"""TorchBackend: ``launch(recipe_path, recipe, run_dir, opts)`` trains a recipe into a run directory."""
from __future__ import annotations

import subprocess
from pathlib import Path

from rich.console import Console

from clipa import recipe as recipe_mod
from clipa import rundir
from clipa.backends.base import LaunchOptions
from clipa.errors import UserError
from clipa.recipe import Recipe


def prepare_run_dir(recipe: Recipe, run_dir: Path) -> str:
    """"new" (recipe.yaml written), "resume" (same recipe, unfinished) or "finished"; UserError when
    the directory holds a different recipe (never mix two runs' checkpoints)."""
    run_dir = Path(run_dir)
    existing = run_dir / rundir.RECIPE
    if existing.exists():
        try:
            old = recipe_mod.to_yaml(recipe_mod.load(existing))
        except UserError:
            old = None
        if old != recipe_mod.to_yaml(recipe):
            raise UserError(f"{run_dir}: holds a different recipe ({existing}); use --run-dir for a new run")
        return "finished" if (run_dir / rundir.ACHIEVED).exists() else "resume"
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_mod.dump(recipe, existing)
    return "new"


class TorchBackend:
    name = "torch"

    def launch(self, recipe_path: Path, recipe: Recipe, run_dir: Path, opts: LaunchOptions) -> int:
        from clipa.backends.torch import datasets, launch, worker

        console = Console(stderr=True, soft_wrap=True)
        run_dir = Path(run_dir)
        cmd = launch.command(run_dir, opts)
        if opts.dry_run:
            print(" ".join(cmd))
            return 0
        state = prepare_run_dir(recipe, run_dir)
        if state == "finished":
            console.print(f"{run_dir}: already finished ({rundir.ACHIEVED} exists); nothing to do")
            return 0
        datasets.resolve(recipe, run_dir, generate=True)  # missing paths fail here, before any worker starts
        if opts.nproc * opts.nnodes == 1:
            return worker.main(run_dir, opts.device, opts.max_samples)
        return subprocess.call(cmd)
