"""Launch commands for the JAX backend: one host in-process, or every worker of a TPU VM via gcloud.

``clipa-run RECIPE --backend jax --tpu NAME --zone ZONE [--project P]`` runs

    gcloud compute tpus tpu-vm ssh NAME --zone ZONE [--project P] --worker=all --command \
        'mkdir -p .clipa/recipes && printf %s RECIPE_TEXT > .clipa/recipes/HASH.yaml &&
         env CLIPA_JAX_DISTRIBUTED=1 clipa-run .clipa/recipes/HASH.yaml --backend jax --run-dir RUN_DIR'

so every worker runs the same recipe and joins the others through ``jax.distributed.initialize``
(which finds the pod's peers itself on Cloud TPU). The recipe goes with the command (with the
predictions frozen at launch), so a recipe planned on a laptop launches as written; its ``dataset``
paths must be ones every worker can read (gs:// shards, or the same path on each). The run directory
must be one directory every worker sees, big_vision's gs:// workdir convention: orbax writes each
host's shards there and process 0 the metrics and achieved.json, and a restarted pod resumes from it.
A local path on a multi-host slice (more chips than one host holds, ``costmodels/data/hardware.yaml``)
is refused.
"""
from __future__ import annotations

import hashlib
import shlex
import shutil
from pathlib import Path

from clipa import fs
from clipa import recipe as recipe_mod
from clipa.backends.base import LaunchOptions
from clipa.backends.jax.sharding import ENV_DISTRIBUTED
from clipa.errors import UserError
from clipa.recipe import Recipe


def validate(opts: LaunchOptions) -> None:
    """One-line errors for flag combinations the JAX backend cannot honour."""
    if opts.tpu is not None and not opts.tpu.strip():
        raise UserError("--tpu: empty TPU VM name")
    if opts.tpu and not opts.zone:
        raise UserError(f"--zone is required with --tpu {opts.tpu} (the TPU VM's zone, e.g. us-central2-b)")
    if not opts.tpu and (opts.zone or opts.project):
        flag = "--zone" if opts.zone else "--project"
        raise UserError(f"{flag} is only used with --tpu NAME (a TPU VM to run on)")
    if opts.tpu and (opts.nnodes > 1 or opts.rdzv_endpoint):
        raise UserError("--tpu runs on every worker of the TPU VM itself; drop --nnodes/--rdzv-endpoint")
    if opts.nproc != 1:
        raise UserError(f"--nproc {opts.nproc}: the JAX backend drives every local device from one process "
                        "per host; use --nnodes/--node-rank/--rdzv-endpoint for several hosts")
    opts.check_nodes()
    if opts.device not in (None, "cpu", "cuda", "gpu", "tpu"):
        raise UserError(f"--device {opts.device!r}: the JAX backend knows cpu, cuda, tpu")


def check_shared_run_dir(hardware_name: str, run_dir) -> None:
    """UserError when the recipe's TPU slice spans several hosts (or may: v5p's host size is in no source)
    and ``run_dir`` is a local path, which each worker would fill on its own disk."""
    from clipa import launching
    from clipa.costmodels import hardware

    if fs.is_url(run_dir) or not launching.multi_host_tpu(hardware_name):
        return
    hosts = hardware.tpu_hosts(hardware_name)
    why = f"{hardware_name} has {hosts} hosts" if hosts else f"the host count of {hardware_name} is in no source at hand"
    raise UserError(f"--run-dir {run_dir}: {why}; the run directory must be shared by every worker "
                    f"(--run-dir gs://BUCKET/RUN), a local path would split checkpoints and metrics across hosts")


def worker_command(recipe_path, run_dir: Path, opts: LaunchOptions) -> list[str]:
    """What each host runs (argument list)."""
    cmd = ["clipa-run", str(recipe_path), "--backend", "jax", "--run-dir", str(run_dir)]
    if opts.device:
        cmd += ["--device", opts.device]
    if opts.max_samples is not None:
        cmd += ["--max-samples", str(opts.max_samples)]
    if opts.nnodes > 1:
        cmd += ["--nnodes", str(opts.nnodes), "--node-rank", str(opts.node_rank), "--rdzv-endpoint", opts.rdzv_endpoint]
    return cmd


# Where each worker keeps the recipes --tpu ships to it, relative to the ssh session's directory (the home).
WORKER_RECIPES = ".clipa/recipes"


def ship_recipe(recipe: Recipe) -> tuple[str, str]:
    """(the shell command that writes ``recipe`` on a worker, its path there), named by its content so that
    an edited recipe never meets an old file. Every word is quoted: the recipe is the user's text."""
    text = recipe_mod.to_yaml(recipe)
    path = f"{WORKER_RECIPES}/{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    return f"mkdir -p {WORKER_RECIPES} && printf %s {shlex.quote(text)} > {path}", path


def tpu_command(recipe: Recipe, run_dir: Path, opts: LaunchOptions) -> list[str]:
    """The gcloud argument list that ships ``recipe`` to all workers of ``opts.tpu`` and runs
    ``worker_command`` on it there."""
    validate(opts)
    write, path = ship_recipe(recipe)
    inner = write + " && " + shlex.join(["env", f"{ENV_DISTRIBUTED}=1", *worker_command(path, run_dir, opts)])
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", opts.tpu, "--zone", opts.zone]
    if opts.project:
        cmd += ["--project", opts.project]
    return cmd + ["--worker=all", "--command", inner]


def require_gcloud() -> str:
    path = shutil.which("gcloud")
    if path is None:
        raise UserError("--tpu: the gcloud CLI is not on PATH (install the Google Cloud SDK, or use --dry-run)")
    return path
