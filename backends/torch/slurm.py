"""SLURM: the batch script that trains a recipe on every node of an allocation, and its submission.

    clipa-run R.yaml --slurm --nodes 4 --gpus-per-node 8 [--partition P] [--time 2-00:00:00] [--dry-run]

One SLURM task per GPU (``--ntasks-per-node G``), each one training process: ``srun`` starts them on
every node, and each reads its rank from SLURM (``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NTASKS``,
translated into torchrun's variables by ``apply_env``); they meet at ``MASTER_ADDR`` (the first node)
and ``MASTER_PORT`` through torch's ``env://`` rendezvous. The script exports ``CLIPA_LAUNCHER=slurm``:
only then are SLURM's variables read, so a plain ``clipa-run`` inside an allocation stays one process.

Preemption and the time limit: ``--requeue`` lets SLURM requeue a preempted job; 120 s before the time
limit SLURM sends the script SIGUSR1 (``--signal=B:USR1@120``), which it forwards to the workers as
SIGTERM and then requeues the job itself. A plain SIGTERM (preemption, ``scancel``) is forwarded the
same way but not requeued by the script (SLURM requeues a preempted ``--requeue`` job; a cancelled one
stays cancelled). Every start resumes from the latest checkpoint in the run directory (written every
``train.checkpoint_every_samples`` / ``checkpoint_every_minutes``), which therefore must be on a
filesystem that every node mounts.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import MutableMapping, Optional

from clipa import rundir
from clipa.backends.base import LaunchOptions
from clipa.backends.stopping import GRACE_S
from clipa.errors import UserError

LAUNCHER_ENV = "CLIPA_LAUNCHER"
SCRIPT = "slurm.sbatch"          # written into the run directory on submission
# SLURM's --time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (sbatch(1)).
_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.,-]+$")


@dataclass(frozen=True)
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 1
    partition: Optional[str] = None
    time: Optional[str] = None       # SLURM time limit, e.g. 2-00:00:00


def check(s: SlurmOptions) -> None:
    """One-line UserErrors for options sbatch would reject only after submission."""
    if s.nodes < 1 or s.gpus_per_node < 1:
        raise UserError(f"--nodes/--gpus-per-node: must be >= 1, got {s.nodes}/{s.gpus_per_node}")
    if s.time is not None and not _TIME.match(s.time):
        raise UserError(f"--time: {s.time!r} is not a SLURM time limit (minutes, HH:MM:SS or D-HH:MM:SS)")
    if s.partition is not None and not _PARTITION.match(s.partition):
        raise UserError(f"--partition: {s.partition!r} is not a partition name")


# --- inside a task: SLURM's variables as torchrun's ------------------------------------------

def _int(environ, name: str) -> int:
    v = environ.get(name)
    if v is None or not v.strip().isdigit():
        raise UserError(f"{LAUNCHER_ENV}=slurm but {name} is {v!r}: start the workers with srun (see "
                        f"clipa-run --slurm --dry-run)")
    return int(v)


def torch_env(environ) -> dict[str, str]:
    """torchrun's RANK/LOCAL_RANK/WORLD_SIZE/LOCAL_WORLD_SIZE from a SLURM task's variables; {} unless
    the process was started by the batch script (``CLIPA_LAUNCHER=slurm``) and not by torchrun."""
    if environ.get(LAUNCHER_ENV) != "slurm" or "WORLD_SIZE" in environ:
        return {}
    world = _int(environ, "SLURM_NTASKS")
    # SLURM_NTASKS_PER_NODE is set with --ntasks-per-node (the script's); SLURM_TASKS_PER_NODE is "8(x4)".
    per_node = environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "1").split("(")[0]
    rank, local = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_LOCALID")
    # A cluster that binds one GPU to each task (gres binding) shows each task only its own, as device 0.
    if len([d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]) == 1:
        local = 0
    return {"RANK": str(rank), "LOCAL_RANK": str(local),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": per_node}


def apply_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Export ``torch_env`` into ``environ`` (what torch's env:// rendezvous and the worker read)."""
    environ.update(torch_env(environ))


# --- the batch script --------------------------------------------------------------------------

def worker_command(run_dir: Path, opts: LaunchOptions, python: str = sys.executable) -> list[str]:
    """What srun starts in every task: the same worker torchrun starts."""
    from clipa.backends.torch import launch

    return [python, "-m", launch.WORKER, *launch.worker_args(run_dir, opts)]


def script(recipe_path: Path, rec, run_dir: Path, opts: LaunchOptions, s: SlurmOptions,
           python: str = sys.executable) -> str:
    """The sbatch script (bash) for the recipe ``rec`` at ``recipe_path`` trained into ``run_dir`` (made absolute)."""
    check(s)
    name = rec.name
    q = shlex.quote
    run_dir, recipe_path = Path(run_dir).absolute(), Path(recipe_path).absolute()
    if re.search(r"[\s\"'\\]", str(run_dir)):  # sbatch splits an #SBATCH line at spaces: the log would go elsewhere
        raise UserError(f"--run-dir {str(run_dir)!r}: the job's log file is named on an #SBATCH line, which cannot "
                        "hold spaces, quotes or backslashes; use a --run-dir without them")
    job = "clipa-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    # Each task runs its training process and dataset.workers decoding processes; SLURM's default is one
    # CPU per task, which would starve the decoders.
    sbatch = [f"--job-name={job}", f"--nodes={s.nodes}", f"--ntasks-per-node={s.gpus_per_node}",
              f"--gpus-per-node={s.gpus_per_node}", f"--cpus-per-task={rec.dataset.workers + 1}"]
    sbatch += [f"--partition={s.partition}"] if s.partition else []
    sbatch += [f"--time={s.time}"] if s.time else []
    # The output file's folder must exist when the job starts: clipa-run --slurm creates the run directory.
    # sbatch reads % in its name as a pattern (%j: the job id) and %% as a %.
    log = str(run_dir).replace("%", "%%") + "/slurm-%j.out"
    sbatch += ["--requeue", "--open-mode=append", f"--signal=B:USR1@{GRACE_S}", f"--output={log}"]
    worker = " ".join(q(a) for a in worker_command(run_dir, opts, python))
    lines = [
        "#!/bin/bash",
        f"# clipa: train recipe {name!r} on {s.nodes} node(s) x {s.gpus_per_node} GPU(s), one task per GPU.",
        "# Written by clipa-run --slurm; submit with: sbatch THIS_FILE (clipa-run --slurm without --dry-run does).",
        f"# The run directory {run_dir} must be on a shared filesystem that every node mounts:",
        "# all ranks write there, and a requeued job (preemption, time limit) resumes from its checkpoints.",
        *(f"#SBATCH {a}" for a in sbatch),
        "set -u",
        f"RUN_DIR={q(str(run_dir))}",
        f"export {LAUNCHER_ENV}=slurm  # workers read SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS for their rank",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))  # per job: two jobs on one node do not collide",
        f"# SIGUSR1: the time limit is {GRACE_S} s away; SIGTERM: preemption or scancel. Either way the workers get",
        "# SIGTERM; only the time limit requeues here (SLURM requeues a preempted job). A requeued job resumes",
        "# from the latest checkpoint in the run directory.",
        'stop() { kill -TERM $(jobs -p) 2>/dev/null; wait; }',
        "trap 'echo \"clipa: time limit near: stopping, then requeueing\" >&2; stop; "
        "scontrol requeue \"$SLURM_JOB_ID\"; exit 0' USR1",
        "trap 'echo \"clipa: SIGTERM: stopping\" >&2; stop; exit 143' TERM",
        f"{q(python)} -m {__name__} prepare {q(str(recipe_path))} \"$RUN_DIR\" || exit $?",
        f'if [ -e "$RUN_DIR/{rundir.ACHIEVED}" ]; then echo "clipa: $RUN_DIR already finished"; exit 0; fi',
        f"srun --kill-on-bad-exit=1 {worker} &",
        "wait $!",
        "exit $?",
    ]
    return "\n".join(lines) + "\n"


def prepare(recipe_path: Path, run_dir: Path) -> None:
    """Make ``run_dir`` ready for the workers (recipe.yaml, demo data) unless it already is (a requeue)."""
    from rich.console import Console

    from clipa import recipe as recipe_mod
    from clipa.backends.data import resolve
    from clipa.backends.runstate import prepare_run_dir

    run_dir = Path(run_dir)
    if (run_dir / rundir.RECIPE).exists():
        return                                                  # resume: the run directory holds the recipe
    rec = recipe_mod.load(recipe_path)
    if rec.predictions is None:
        from clipa.costmodels.predict import predict_recipe

        rec = rec.model_copy(update={"predictions": predict_recipe(rec)})
    prepare_run_dir(rec, run_dir, "torch", Console(stderr=True, soft_wrap=True))
    resolve.resolve(rec, run_dir, generate=True)
    if "SLURM_NTASKS" in os.environ:  # the job's processes (clipa-run --slurm records it before submitting)
        from clipa.backends.torch import launch as torch_launch

        torch_launch.record_parallelism(run_dir, rec, int(os.environ["SLURM_NTASKS"]), "cuda")


def launch(recipe_path: Path, rec, run_dir: Path, opts: LaunchOptions, s: SlurmOptions) -> int:
    """Print the script (``opts.dry_run``) or prepare the run directory and submit it with sbatch."""
    from rich.console import Console

    from clipa.backends.data import resolve
    from clipa.backends.runstate import prepare_run_dir
    from clipa.backends.torch import launch as torch_launch

    text = script(recipe_path, rec, run_dir, opts, s)
    if opts.dry_run:
        print(text, end="")
        return 0
    console = Console(stderr=True, soft_wrap=True)
    if not prepare_run_dir(rec, Path(run_dir), "torch", console):
        return 0
    resolve.resolve(rec, Path(run_dir), generate=True)
    torch_launch.record_parallelism(Path(run_dir), rec, s.nodes * s.gpus_per_node, "cuda")
    path = Path(run_dir) / SCRIPT
    path.write_text(text)
    try:
        return subprocess.call(["sbatch", str(path)])
    except FileNotFoundError:
        raise UserError(f"sbatch not found: submit {path} from a SLURM login node (sbatch {path})") from None


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "prepare":
        print(f"usage: python -m {__name__} prepare RECIPE RUN_DIR", file=sys.stderr)
        return 2
    try:
        prepare(Path(argv[1]), Path(argv[2]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
