"""Run bookkeeping shared by the torch and JAX training loops (no torch or jax import here).

Where a run is (``RunProgress``, saved in every checkpoint), what it achieved (``achieved``), MFU,
metrics.jsonl lines, the progress bar, weights files, and the run directory's checks (``prepare_run_dir``).
The stage loop (``backends/loop.py``) calls these; this module gets plain numbers and numpy arrays.
"""
from __future__ import annotations

import contextlib
import json
import shlex
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clipa import fs, rundir, runlock
from clipa import recipe as recipe_mod
from clipa.backends import tracking
from clipa.costmodels import flops, hardware, memory
from clipa.errors import UserError
from clipa.recipe import DatasetSpec, Recipe, Stage


class Diverged(UserError):
    """The loss became NaN/inf: the run stops, the last good checkpoint stays."""

    exit_code = 3


def diverged(stage: str, step: int, keep: str) -> Diverged:
    """The error for a NaN/inf loss in ``stage`` by optimizer step ``step``; ``keep`` says which checkpoint is left."""
    return Diverged(f"loss is NaN/inf in stage {stage!r} by step {step}: training diverged (lower optimizer.lr "
                    f"or add optimizer.grad_clip); {keep}")


class CorruptCheckpoint(Exception):
    """A checkpoint that cannot be read (torn by a crash, damaged on disk): the loop tries the one before."""

    @classmethod
    def reading(cls, e: Exception) -> "CorruptCheckpoint":
        """From the error a reader raised: its type and first line."""
        return cls(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")


# The checkpoint key of every bad sample/shard found so far (key -> [reason, n], DataStats.found):
# a resumed process does not count them again.
SKIPPED_KEYS = "skipped_keys"


@dataclass
class RunProgress:
    """Where the run is; saved in every checkpoint (plain numbers, lists, dicts; field names are the format)."""

    stage: int = 0
    step: int = 0  # optimizer steps done in ``stage``
    samples_drawn: int = 0  # samples drawn from the dataset so far, all stages and ranks/hosts
    time_s: float = 0.0  # wall seconds of all earlier processes of this run
    stage_time_s: float = 0.0  # wall seconds spent in ``stage`` by earlier processes
    skipped: int = 0
    reasons: dict = field(default_factory=dict)
    metrics_bytes: int = 0  # metrics.jsonl is truncated to this on resume (no duplicated lines)
    history: list = field(default_factory=list)  # one dict per finished stage (StageAchieved fields)

    @classmethod
    def from_state(cls, state: dict) -> "RunProgress":
        """From a checkpoint's saved state; keys that are not fields (optimizer, rng, ...) are ignored."""
        return cls(**{k: v for k, v in state.items() if k in cls.__dataclass_fields__})


MfuFn = Callable[[Stage, float], Optional[float]]


def mfu_fn(recipe: Recipe, n_devices: int) -> MfuFn:
    """(stage, samples/s) -> model FLOPs utilisation against the recipe hardware's peak on ``n_devices``.

    UserError for a hardware name the cost models do not know (before any training starts)."""
    peak = hardware.get(recipe.hardware.name).peak_flops * n_devices  # FLOP/s of all devices
    enc = recipe.encoder.spec
    return lambda st, sps: flops.stage_train_flops(enc, st) * sps / peak  # as clipa-report's predicted MFU


def achieved(recipe: Recipe, *, backend: str, device: str, n_devices: int, prog: RunProgress, wall: float,
             skipped: int, reasons: dict, dataset: DatasetSpec, zs=None) -> rundir.Achieved:
    """The run's achieved.json: ``wall`` seconds over all processes of the run on ``n_devices`` devices;
    ``zs``: the zero-shot set it was evaluated on (data.zeroshot.ZeroShotSet), None if none."""
    hw = hardware.get(recipe.hardware.name, pricing=recipe.hardware.pricing)
    usd_per_hour = recipe.hardware.usd_per_hour  # the recipe's own price wins over the cost models'
    if usd_per_hour is None:
        usd_per_hour = hw.usd_per_hour
    # The price is for a whole machine/slice of ``hw.n_devices`` devices; a run on fewer pays its share.
    # No known price: the cost is unknown (None), neither guessed nor reported as free.
    cost = None if usd_per_hour is None else wall / 3600 * usd_per_hour * n_devices / max(1, hw.n_devices)
    return rundir.Achieved(
        backend=backend, device=device, hardware=recipe.hardware.name, n_devices=n_devices,
        eval_set="demo-heldout" if recipe.dataset.name == "demo" else Path(dataset.val or "none").name,
        eval_classes=len(zs.classnames) if zs else None, eval_images=zs.n_images if zs else None,
        top1=prog.history[-1]["top1"] if prog.history else None, wall_seconds=wall,
        device_hours=wall * n_devices / 3600, cost_usd=cost, usd_per_hour=usd_per_hour, skipped_samples=skipped,
        skipped_reasons=reasons, stages=[rundir.StageAchieved(**h) for h in prog.history],
    )


def stage_record(st: Stage, top1: Optional[float], wall: float, n_devices: int, mfu: MfuFn) -> dict:
    """One finished stage for ``RunProgress.history`` (StageAchieved fields); ``wall`` in seconds."""
    samples = st.steps * st.global_batch
    sps = samples / max(wall, 1e-9)
    return dict(name=st.name, samples=samples, top1=top1, wall_seconds=wall, device_hours=wall * n_devices / 3600,
                samples_per_s=sps, mfu=mfu(st, sps))


def merge_counts(a: dict, b: dict) -> dict:
    """Two name -> count dicts summed."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def checkpoint_meta(prog: RunProgress, *, skipped: int, reasons: dict, time_s: float, stage_s: float,
                    metrics_path: Path) -> dict:
    """The position a checkpoint saves: ``prog`` (a deep copy) with this process's counts added.

    ``skipped``/``reasons``: samples skipped since this process started (all ranks/hosts); ``time_s``:
    wall seconds of the whole run so far; ``stage_s``: wall seconds this process spent in the current
    stage; ``metrics_bytes`` is metrics.jsonl's size now (resuming truncates it back to this)."""
    return {**asdict(prog), "skipped": prog.skipped + skipped, "reasons": merge_counts(prog.reasons, reasons),
            "time_s": time_s, "stage_time_s": prog.stage_time_s + stage_s,
            "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0}


def append_metrics(path, line: dict) -> None:
    """One validated ``MetricsLine`` appended to metrics.jsonl, then handed to the recipe's trackers
    (``train.report_to``; backends/tracking.py): every line of both backends passes here."""
    line = rundir.MetricsLine(**line).model_dump(mode="json", exclude_none=True)
    fs.append_text(path, json.dumps(line) + "\n")
    tracking.report(fs.path(path).parent, line)


def truncate_metrics(path, n_bytes: int) -> None:
    """Keep the lines the resumed checkpoint counted (the first ``n_bytes``; 0 for a fresh run), never
    more than the file holds (truncate would pad it with NULs) and never a torn or NUL-filled tail (what
    a crash can leave of lines written after the last fsync): the dropped lines will be written again."""
    path = fs.path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    kept = data[:n_bytes].split(b"\0", 1)[0]
    kept = kept[:kept.rfind(b"\n") + 1]
    if kept != data:
        fs.write_atomic(path, kept)


def load_shard_counts(run_dir) -> dict:
    """RUN_DIR/shard_counts.json (webdataset_io.take_unsaved's form); {} when missing or unreadable: it is a
    cache, and the shards are indexed again without it."""
    try:
        data = json.loads((fs.path(run_dir) / rundir.SHARD_COUNTS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def count_skipped(found: dict) -> tuple[int, dict]:
    """Bad samples/shards (key -> [reason, n], ``DataStats.found``) -> (total, reason -> count)."""
    reasons: dict = {}
    for reason, n in found.values():
        reasons[reason] = reasons.get(reason, 0) + n
    return sum(reasons.values()), reasons


def resume_command(recipe_path: Path, run_dir: Path, backend: str, opts=None) -> str:
    """The command line that continues a stopped run (printed when a signal or a full disk stops it): the
    same recipe, run directory, backend and, from ``opts``, every LaunchOptions field that is not its default
    (processes, nodes, rendezvous, device, TPU). --dry-run and --max-samples are left out: the resumed run
    trains, to the end."""
    from clipa.backends.base import LaunchOptions

    cmd = ["clipa-run", str(recipe_path), "--run-dir", str(run_dir)] + (["--backend", backend] if backend != "torch"
                                                                          else [])
    default = LaunchOptions()
    for name in (f.name for f in fields(LaunchOptions) if f.name not in ("dry_run", "max_samples")):
        value = getattr(opts, name, None)
        if value is not None and value != getattr(default, name):
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(cmd)


def print_skipped(console: Console, skipped: int, reasons: dict) -> None:
    if skipped:
        console.print(f"[yellow]skipped {skipped} undecodable samples/shards[/yellow]: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))


@contextlib.contextmanager
def progress_bar(main: bool, console: Console) -> Iterator:
    """A rich progress bar on the main process; elsewhere one that shows nothing (same methods)."""
    if not main:
        yield _NoBar()
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as p:
        yield p


class _NoBar:
    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass


# Each backend's resumable checkpoint folders under RUN_DIR/checkpoints (torch: ckpt-SSSS-TTTTTTTTT,
# orbax: the run's optimizer step count); a run directory holds one backend's only.
_CHECKPOINT_GLOBS = {"torch": "ckpt-*", "jax": "[0-9]*"}


KEEP_LAST = 2  # resumable checkpoints each backend keeps; stage-end weights files are always kept


def checkpoint_bytes(recipe: Recipe) -> tuple[int, int, int]:
    """(the most RUN_DIR/checkpoints holds, one resumable checkpoint, one weights file), in bytes. Weights
    are fp32 and a checkpoint holds them with AdamW's two moments; KEEP_LAST checkpoints stay while the next
    is written, beside a weights file per stage and the final one. On the tiny test run the estimate of what a
    finished run keeps matches its files to 0.2% (tests/test_disk_full.py)."""
    enc = recipe.encoder.spec
    weights = 4 * max(memory.param_count(enc, st.image_size) for st in recipe.stages)  # learned positions: the most
    ckpt = 3 * weights
    return (KEEP_LAST + 1) * ckpt + (len(recipe.stages) + 1) * weights, ckpt, weights


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def warn_if_no_room(recipe: Recipe, run_dir, console: Console) -> None:
    """Say before training when a local run directory has less free space than its checkpoints still need: a
    write that does not fit stops the run (``clipa.errors.NoRoom``), maybe hours in. A warning, not an
    error: other files may be deleted meanwhile."""
    if not isinstance(run_dir, Path):
        return  # an object store has no free space to ask
    need, ckpt, weights = checkpoint_bytes(recipe)
    d = run_dir / rundir.CHECKPOINTS
    have = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.is_dir() else 0
    free = shutil.disk_usage(run_dir).free
    if free < need - have:
        console.print(f"[yellow]warning:[/yellow] {run_dir}: {_size(free)} free, but its checkpoints need up to "
                      f"{_size(need - have)} more ({_parts(recipe, ckpt, weights)}); a write that does not fit stops "
                      f"the run", soft_wrap=True)


def _parts(recipe: Recipe, ckpt: int, weights: int) -> str:
    """What ``checkpoint_bytes`` counts, in words (the room warning and clipa-plan say it)."""
    return (f"{KEEP_LAST + 1} checkpoints of {_size(ckpt)} while one is written, {len(recipe.stages) + 1} "
            f"weights files of {_size(weights)}")


def storage_line(recipe: Recipe) -> str:
    """One line for a plan: the most a run directory holds, so a user can size the disk before launching."""
    need, ckpt, weights = checkpoint_bytes(recipe)
    return f"disk: the run directory holds up to {_size(need)} ({_parts(recipe, ckpt, weights)})"


def prepare_run_dir(recipe: Recipe, run_dir, backend: str, console: Console, *, is_main: bool = True) -> bool:
    """Whether there is anything to train: False (said on ``console``) when the run finished; recipe.yaml
    written for a new run (by the main process only: the others of a pod read the same shared directory).
    UserError when the directory holds a different recipe or the other backend's checkpoints (never mix
    two runs' or two backends' checkpoints), or when another run is training into it (``runlock``: the
    main process of a local run directory holds its lock from here on)."""
    run_dir = fs.path(run_dir)
    tracking.check(recipe)
    if is_main:
        runlock.claim(run_dir)
    for other, pattern in _CHECKPOINT_GLOBS.items():
        found = sorted((run_dir / rundir.CHECKPOINTS).glob(pattern)) if other != backend else []
        if found:
            raise UserError(f"{run_dir}: holds {other}-backend checkpoints ({found[0].name}); resume it with "
                            f"--backend {other} or use a new --run-dir")
    existing = run_dir / rundir.RECIPE
    if existing.exists():
        try:
            old = recipe_mod.to_yaml(recipe_mod.load(existing))
        except UserError:
            old = None
        if old != recipe_mod.to_yaml(recipe):
            raise UserError(f"{run_dir}: holds a different recipe ({existing}); use --run-dir for a new run")
        if (run_dir / rundir.ACHIEVED).exists():
            console.print(f"{run_dir}: already finished ({rundir.ACHIEVED} exists); nothing to do")
            return False
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        if is_main:
            recipe_mod.dump(recipe, existing)
    if is_main:
        warn_if_no_room(recipe, run_dir, console)
    return True


def save_weights(weights: dict, path, metadata: dict[str, str]) -> None:
    """numpy arrays (the PyTorch layout) -> a safetensors file, atomically (``fs.write_atomic``)."""
    from safetensors.numpy import save

    fs.write_atomic(path, save({k: np.ascontiguousarray(v) for k, v in weights.items()}, metadata=metadata))
