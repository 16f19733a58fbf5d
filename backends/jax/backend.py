"""JaxBackend: ``launch(recipe_path, recipe, run_dir, opts)`` trains a recipe into a run directory.

One process per host drives all of that host's devices (a ``jax.sharding`` mesh); several hosts
join through ``jax.distributed.initialize`` (TPU pods: ``--tpu NAME --zone ZONE``; other
clusters: ``--nnodes N --node-rank R --rdzv-endpoint HOST:PORT`` on every host).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from clipa import fs
from clipa.backends.base import LaunchOptions
from clipa.backends.jax import launch
from clipa.errors import UserError
from clipa.recipe import Recipe

_PLATFORMS = {"cpu": "cpu", "cuda": "cuda", "gpu": "cuda", "tpu": "tpu"}


class JaxBackend:
    name = "jax"
    # --nproc is validated (launch.validate says why it must stay 1); rdzv_id has no JAX counterpart.
    flags = frozenset({"nproc", "nnodes", "node_rank", "rdzv_endpoint", "tpu", "zone", "project", "device", "dry_run",
                       "max_samples"})

    def launch(self, recipe_path: Path, recipe: Recipe, run_dir: Path, opts: LaunchOptions) -> int:
        launch.validate(opts)
        run_dir = fs.path(run_dir)
        fs.orbax_dir(run_dir)  # a URL orbax cannot write is refused before anything is written
        if opts.tpu:
            launch.check_shared_run_dir(recipe.hardware.name, run_dir)
            cmd = launch.tpu_command(recipe, run_dir, opts)
            print(f"every worker of {opts.tpu} runs this command and shares the run directory {run_dir}",
                  file=sys.stderr)
            if opts.dry_run:
                print(shlex.join(cmd))
                return 0
            cmd[0] = launch.require_gcloud()
            return subprocess.call(cmd)
        if opts.dry_run:
            print(shlex.join(launch.worker_command(recipe_path, run_dir, opts)))
            return 0
        return train(recipe, run_dir, opts, recipe_path)


def train(recipe: Recipe, run_dir: Path, opts: LaunchOptions, recipe_path: Path) -> int:
    """Train in this process (one host of possibly several); 0 when finished or stopped at max_samples."""
    import jax

    # The platform must be chosen before JAX touches a device.
    if opts.device:
        jax.config.update("jax_platforms", _PLATFORMS[opts.device])
    from clipa.backends import loop
    from clipa.backends.data import pipeline, resolve
    from clipa.backends.jax import sharding as shd
    from clipa.backends.jax.trainer import JaxTrainer
    from clipa.backends.runstate import prepare_run_dir, resume_command

    console = Console(stderr=True, soft_wrap=True)
    shd.maybe_initialize_distributed(shd.cluster_from_env_and_opts(opts.nnodes, opts.node_rank, opts.rdzv_endpoint))
    if opts.device:
        try:
            jax.devices()
        except (RuntimeError, AssertionError) as e:  # jax 0.10.2 asserts for a platform it has no plugin for
            raise UserError(f"--device {opts.device}: JAX finds no {_PLATFORMS[opts.device]} device on this host"
                            f"{f' ({e})' if str(e) else ''}") from None
    if not prepare_run_dir(recipe, run_dir, "jax", console, is_main=jax.process_index() == 0):
        return 0
    ds = resolve.resolve(recipe, run_dir, generate=True)
    pipeline.start_workers(recipe.dataset.workers)  # their start-up overlaps the model's construction
    loop.run(recipe, run_dir, ds, JaxTrainer(recipe, run_dir), max_samples=opts.max_samples, console=console,
             resume=resume_command(recipe_path, run_dir, "jax", opts))
    return 0
