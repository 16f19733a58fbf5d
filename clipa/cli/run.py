"""clipa-run RECIPE: train a recipe on a backend (PyTorch by default, JAX with --backend jax).

Examples:

    clipa-run recipes/generated.yaml                # one process: a GPU if there is one, else the CPU
    clipa-run recipes/generated.yaml --dry-run      # check recipe and data, print the command, write nothing
    clipa-run R.yaml --nproc 8                      # torchrun: DDP (FSDP where the encoder does not fit)
    clipa-run R.yaml --nproc 8 --nnodes 4 --node-rank 0 --rdzv-endpoint host0:29500
    clipa-run R.yaml --backend jax --tpu my-v4-64 --zone us-central2-b --run-dir gs://my-bucket/run --dry-run
    clipa-run R.yaml --slurm --nodes 4 --gpus-per-node 8 --partition gpu --time 2-00:00:00 --dry-run
    clipa-run pilots/suite.yaml --run-dir runs/pilots  # a pilot suite: each pilot in runs/pilots/NAME

The same command again resumes an unfinished run. Ctrl-C (exit 130), SIGTERM (exit 143) and a closed
terminal (SIGHUP, exit 129) save a checkpoint first.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from clipa import recipe as recipe_mod
from clipa import fs, rundir
from clipa.cli._common import entry, err_console, load_recipe, not_with, version_option
from clipa.errors import UserError

app = typer.Typer(name="clipa-run", add_completion=False, help=__doc__, rich_markup_mode="markdown")
WHERE, TORCH, SLURM, JAX, DEBUG = ("Where to run", "PyTorch (torchrun)", "PyTorch on SLURM (sbatch)", "JAX / TPU",
                                   "Checks and debugging")


@app.command(help=__doc__)
def run(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="recipe YAML (from clipa-plan, or written by hand), or a pilot suite "
                                  "(clipa-plan --pilot)"),
    backend: str = typer.Option("torch", help="torch | jax", rich_help_panel=WHERE),
    run_dir: Optional[str] = typer.Option(None, help="run directory (default: runs/NAME, the recipe's name): a path, or "
                                          "a URL every host sees (gs://BUCKET/RUN, needs gcsfs); an unfinished one is "
                                          "resumed", rich_help_panel=WHERE),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when available)", rich_help_panel=WHERE),
    nproc: int = typer.Option(1, min=1, help="processes (devices) per node; >1 launches torchrun", rich_help_panel=TORCH),
    nnodes: int = typer.Option(1, min=1, help="nodes", rich_help_panel=TORCH),
    node_rank: int = typer.Option(0, min=0, help="this node's rank", rich_help_panel=TORCH),
    rdzv_endpoint: Optional[str] = typer.Option(None, help="HOST:PORT rendezvous (multi-node)", rich_help_panel=TORCH),
    rdzv_id: Optional[str] = typer.Option(None, help="rendezvous id", rich_help_panel=TORCH),
    slurm: bool = typer.Option(False, "--slurm", help="submit with sbatch (print the script with --dry-run); the run "
                               "directory must be on a shared filesystem", rich_help_panel=SLURM),
    nodes: int = typer.Option(1, min=1, help="--slurm: nodes", rich_help_panel=SLURM),
    gpus_per_node: int = typer.Option(1, min=1, help="--slurm: GPUs (training processes) per node", rich_help_panel=SLURM),
    partition: Optional[str] = typer.Option(None, help="--slurm: partition", rich_help_panel=SLURM),
    time: Optional[str] = typer.Option(None, help="--slurm: time limit, e.g. 2-00:00:00 (the job requeues itself "
                                       "before it)", rich_help_panel=SLURM),
    tpu: Optional[str] = typer.Option(None, help="TPU VM name: run on all its workers (--backend jax)", rich_help_panel=JAX),
    zone: Optional[str] = typer.Option(None, help="TPU zone", rich_help_panel=JAX),
    project: Optional[str] = typer.Option(None, help="cloud project (TPU)", rich_help_panel=JAX),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate the recipe and its data, print the launch "
                                 "command, write nothing", rich_help_panel=DEBUG),
    max_samples: Optional[int] = typer.Option(None, min=1, help="stop after this many samples in total (debugging)",
                                              rich_help_panel=DEBUG),
    version: bool = version_option(),
) -> None:
    from clipa import backends, runlock
    from clipa import suite as suite_mod

    is_suite = suite_mod.is_suite(recipe)
    rec = None if is_suite else load_recipe(recipe)
    if rec is not None:
        rec.check_predictions(str(recipe))
    bk = backends.get(backend)
    given = {k for k in ctx.params if ctx.get_parameter_source(k).name not in ("DEFAULT", "DEFAULT_MAP")}
    for name in sorted(backends.LAUNCH_FLAGS - bk.flags):  # a flag the backend would ignore is an error
        not_with("--" + name.replace("_", "-"), name in given, f"to --backend {backend}")
    opts = backends.LaunchOptions(
        nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id,
        tpu=tpu, zone=zone, project=project, dry_run=dry_run, device=device, max_samples=max_samples,
    )
    if is_suite:
        return _suite(recipe, bk, run_dir, opts, given)
    for name in ("nodes", "gpus_per_node", "partition", "time"):
        not_with("--" + name.replace("_", "-"), name in given and not slurm, "without --slurm")
    for name in ("nproc", "nnodes", "node_rank", "rdzv_endpoint", "rdzv_id"):
        not_with("--" + name.replace("_", "-"), name in given and slurm, "with --slurm (use --nodes/--gpus-per-node)")
    not_with("--slurm", slurm and backend != "torch", f"to --backend {backend}")
    if slurm and fs.is_url(run_dir):
        raise UserError(f"--run-dir {run_dir}: --slurm needs a path on the cluster's shared filesystem (sbatch "
                        "writes its log there), not a URL")
    run_dir = fs.path(run_dir) if run_dir else rundir.default_run_dir(rec.name)
    _check_before_claiming(rec, run_dir)
    rec = _frozen_predictions(rec, run_dir, read_existing=not dry_run)
    _warn_untagged(rec)
    if not slurm and tpu is None:  # here is where the workers decode: SLURM's and a TPU's hosts are elsewhere
        _check_cores(rec, nproc if backend == "torch" else 1, dry_run)
    if backend == "jax":
        _warn_jax_decoders(rec)
    with runlock.scope():
        if slurm:
            from clipa.backends.torch import slurm as slurm_mod

            raise typer.Exit(slurm_mod.launch(recipe, rec, run_dir, opts, slurm_mod.SlurmOptions(
                nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, time=time)))
        code = bk.launch(recipe, rec, run_dir, opts)
    raise typer.Exit(code)


# What a pilot suite takes besides the suite: each pilot is launched as a recipe would be, one after the
# other (torchrun on every GPU of the machine, or of several nodes), into RUN_DIR/NAME.
_SUITE_FLAGS = {"recipe", "backend", "run_dir", "device", "dry_run", "max_samples",
                "nproc", "nnodes", "node_rank", "rdzv_endpoint", "rdzv_id"}


def _suite(path: Path, bk, root, opts, given: set) -> None:
    """A suite file (clipa-plan --pilot): its pilots one after the other (clipa/cli/run_suite.py)."""
    from clipa import runlock
    from clipa.cli.run_suite import run_suite

    extra = sorted(given - _SUITE_FLAGS)
    if extra:
        not_with("--" + extra[0].replace("_", "-"), True, "to a pilot suite (it runs its pilots from this host; "
                 "launch each pilot recipe with it instead)")
    with runlock.scope():
        code = run_suite(path, bk, root, opts, _check_before_claiming, _frozen_predictions)
    raise typer.Exit(code)


def _check_before_claiming(rec, run_dir: Path) -> None:
    """Everything a user can get wrong, checked before the run directory is touched: a typo fixed and the
    same command run again then starts cleanly instead of meeting a half-made run directory."""
    from clipa.backends.data import resolve

    if rec.dataset.name == "demo" and rec.dataset.train is None:
        return  # generated into the run directory at launch
    ds = resolve.resolve(rec, run_dir, generate=False)
    resolve.check_readable(ds.train)
    if ds.val:  # the training loop loads it at its start too: a class-name count that does not match its folders
        from clipa.backends.data import zeroshot

        zeroshot.load_zeroshot(ds.val, ds.classnames, ds.templates, ds.val_images)


def _check_cores(rec, processes: int, dry_run: bool) -> None:
    """More decoding workers than this host has cores: one process's alone is an error when it launches here
    (a typo would start thousands), all of them a warning (a plan sizes them for the hardware it planned
    for, every core of an 8-GPU machine; on a smaller host they compete with training). A dry run only
    warns: it may check a recipe on a login node for another machine."""
    cores, total = os.cpu_count() or 1, rec.dataset.workers * processes
    if rec.dataset.workers > cores and not dry_run:
        raise UserError(f"dataset.workers: {rec.dataset.workers} decode workers per device, but this host has "
                        f"{cores} cores")
    if total > cores:
        err_console.print(f"[yellow]warning:[/yellow] dataset.workers: {rec.dataset.workers} decoding workers x "
                          f"{processes} process{'es' if processes > 1 else ''} = {total} on this host's {cores} "
                          f"cores: they compete with training here (lower dataset.workers for this machine, then "
                          f"predict the recipe again)", soft_wrap=True)


def _warn_jax_decoders(rec) -> None:
    """A recipe whose decoders were counted per GPU process (torchrun), run by the JAX backend, which trains
    every GPU of a host from one process: its ``dataset.workers`` then decode for all of them, fewer than
    the prediction's data-loading bound counted (a100x8's plan: 11 where it counted 88)."""
    from clipa.costmodels import hardware, throughput

    try:
        hw = hardware.get(rec.hardware.name)
    except UserError:
        return  # hardware the cost models do not know: the recipe's prediction says so
    machines = hardware.machine_count(hw.name)
    per_machine = throughput.training_processes(hw) // machines
    if hw.name.startswith("tpu-") or per_machine <= 1:
        return
    cores = hw.cpu_cores // machines
    counted, here = throughput.decoders(hw, rec.dataset.workers), machines * min(cores, max(1, rec.dataset.workers))
    if here < min(counted, machines * (cores - 1)):  # a JAX machine keeps a core for its one trainer
        err_console.print(f"[yellow]warning:[/yellow] dataset.workers: {rec.dataset.workers} decoding workers per "
                          f"training process, sized for one process per GPU (torchrun); the JAX backend trains a "
                          f"machine's {per_machine} GPUs from one process, so {here} decode on {hw.name} where the "
                          f"prediction counted {counted}: for JAX set dataset.workers: {max(1, cores - 1)} and "
                          "predict the recipe again (clipa-plan --predict)", soft_wrap=True)


def _warn_untagged(rec) -> None:
    """Said before training: untagged captions that would hold a syntax stage below its prediction."""
    from clipa.backends.data.syntax_prep import untagged_note

    note = untagged_note(rec)
    if note:
        err_console.print(f"[yellow]warning:[/yellow] {escape(note)}", soft_wrap=True)


def _frozen_predictions(rec, run_dir, read_existing: bool = True):
    """A recipe without predictions gets them now, at launch, and they are stored with the run: the report
    then compares against what was predicted before training, not against a later cost model. A resumed
    run keeps the predictions it started with (``read_existing``: a dry run reads no run directory, which
    may be a gs:// one only the workers can reach)."""
    if rec.predictions is not None:
        return rec
    existing = run_dir / rundir.RECIPE
    if read_existing and existing.exists():
        try:
            old = recipe_mod.load(existing)
        except UserError:
            old = None
        if old is not None and old.model_copy(update={"predictions": None}) == rec:
            return old
    from clipa.costmodels.predict import predict_recipe

    return rec.model_copy(update={"predictions": predict_recipe(rec)})


main = entry(app)

if __name__ == "__main__":
    main()
