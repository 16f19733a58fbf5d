"""The run directory: what every backend writes and what ``clipa-report`` reads.

    RUN_DIR/recipe.yaml      the resolved recipe (with the planner's predictions)
    RUN_DIR/metrics.jsonl    one JSON object a line (see ``MetricsLine``)
    RUN_DIR/checkpoints/     backend-specific, resumable
    RUN_DIR/achieved.json    written last, only when the run finished (see ``Achieved``)
    RUN_DIR/shard_counts.json  each training shard's sample count, saved with the checkpoints (a cache:
                             a resumed run counts the samples drawn before it without reading every shard)
    RUN_DIR/.lock            locked by the process training into it, if any (``clipa/runlock.py``)

Both backends write the same files, so the report needs no backend code. RUN_DIR is a local path or
a URL (gs://BUCKET/RUN, one directory every host of a pod sees); every file in it is read and written
through ``clipa/fs.py``, and only the main process writes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from clipa import fs
from clipa.errors import UserError, validation_message

RECIPE = "recipe.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
ACHIEVED = "achieved.json"
SHARD_COUNTS = "shard_counts.json"
DEFAULT_ROOT = Path("runs")


class MetricsLine(BaseModel):
    """A training line (kind='train') or an evaluation line (kind='eval')."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["train", "eval"] = "train"
    stage: str
    step: int
    samples: int  # samples seen so far in this stage
    time_s: float  # wall seconds since the run started (resumed runs continue the count)
    loss: Optional[float] = None
    lr: Optional[float] = None
    samples_per_s: Optional[float] = None
    mfu: Optional[float] = None  # model FLOPs utilisation, 0..1, against the device's peak
    top1: Optional[float] = None  # eval lines: zero-shot top-1, percent


class StageAchieved(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    samples: int
    top1: Optional[float]  # zero-shot top-1 after this stage, percent
    wall_seconds: float
    device_hours: float
    samples_per_s: float
    mfu: Optional[float] = None


class Achieved(BaseModel):
    model_config = ConfigDict(extra="allow")
    backend: str  # "torch" | "jax"
    device: str  # e.g. "cpu", "NVIDIA A100-SXM4-80GB", "TPU v4"
    hardware: str  # the recipe's hardware name
    n_devices: int
    eval_set: str  # "demo-heldout", "imagenet-val", ...
    # The evaluation set's size, so that the run directory alone says what chance is (a calibration read
    # from another directory, or after the data moved, cannot read the recipe's relative paths).
    eval_classes: Optional[int] = None
    eval_images: Optional[int] = None
    top1: Optional[float]  # final zero-shot top-1, percent
    wall_seconds: float
    device_hours: float
    cost_usd: Optional[float]  # None: no price known for the hardware (never reported as free)
    usd_per_hour: Optional[float]
    skipped_samples: int = 0
    stages: list[StageAchieved]

    def summary(self) -> str:
        """One line for the console when a run finishes."""
        cost = (f"${self.cost_usd:.4f}" if self.cost_usd is not None
                else f"cost unknown: no $/hour for {self.hardware}, set hardware.usd_per_hour in the recipe")
        top1 = "n/a" if self.top1 is None else f"{self.top1}%"
        return f"top-1 {top1}, {self.wall_seconds:.0f} s, {cost}"


def write_achieved(run_dir, achieved: Achieved) -> None:
    """RUN_DIR/achieved.json (a local path or a URL, see clipa/fs.py), written atomically."""
    fs.write_atomic(fs.path(run_dir) / ACHIEVED, json.dumps(achieved.model_dump(mode="json"), indent=2))


def read_achieved(run_dir) -> Optional[Achieved]:
    """The achieved figures, or None for an unfinished run; UserError if the file is corrupt."""
    p = fs.path(run_dir) / ACHIEVED
    if not p.exists():
        return None
    try:
        return Achieved.model_validate_json(p.read_text())
    except ValidationError as e:
        raise UserError(validation_message(e, f"{p}: not a valid achieved.json")) from None


def read_metrics(run_dir) -> list[MetricsLine]:
    """All complete metric lines; a torn last line (killed run) is ignored, not an error."""
    p = fs.path(run_dir) / METRICS
    out = []
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(MetricsLine.model_validate_json(line))
        except ValidationError:
            continue
    return out


def safe_name(name: str) -> str:
    """``name`` usable as one path component: anything but letters, digits and -_. becomes -."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def default_run_dir(recipe_name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Deterministic from the recipe name, so running the same command again resumes."""
    return root / safe_name(recipe_name)


def latest_run(root: Path = DEFAULT_ROOT) -> Optional[Path]:
    if not root.is_dir():
        return None
    dirs = [d for d in root.iterdir() if (d / RECIPE).exists()]
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None
