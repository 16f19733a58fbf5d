"""Experiment trackers fed by the metrics lines: TensorBoard, for ``train.report_to: [tensorboard]``.

Every metrics line of both backends goes through ``runstate.append_metrics``, which hands it to
``report`` after writing it to metrics.jsonl, so a tracker sees exactly what the file holds:

    RUN_DIR/tensorboard/events.out.tfevents.*   one event file per process that wrote metrics

Scalars (x axis: samples seen since the run started, all stages; the stages' own step counts restart):
    train/loss  train/lr  train/samples_per_s  train/mfu  train/logit_scale  eval/top1 (percent)

Events are written with TensorBoard's own event-file writer and proto classes (``simple_value``
scalars, what ``torch.utils.tensorboard`` and TensorFlow 1 write), so neither torch nor jax is imported.
A resumed run starts its file with a ``SessionLog.START`` event at its first step: TensorBoard then
drops the points a killed process wrote after the checkpoint it resumed from, as metrics.jsonl drops
those lines.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from clipa import recipe as recipe_mod
from clipa import fs, rundir
from clipa.errors import UserError
from clipa.recipe import Recipe

TENSORBOARD_DIR = "tensorboard"
# metrics.jsonl field -> TensorBoard tag; eval lines carry only top1.
TAGS = {"loss": "train/loss", "lr": "train/lr", "samples_per_s": "train/samples_per_s", "mfu": "train/mfu",
        "logit_scale": "train/logit_scale", "top1": "eval/top1"}


def check(recipe: Recipe) -> None:
    """UserError before training starts (``runstate.prepare_run_dir``) when a tracker the recipe asks for
    is not installed, rather than at the first metrics line."""
    if "tensorboard" in recipe.train.report_to:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError("train.report_to: tensorboard needs the tensorboard package "
                            "(pip install 'clipa[tensorboard]')") from None


class TensorBoard:
    """An event file under RUN_DIR/tensorboard for one process; scalars at run-wide sample counts."""

    def __init__(self, run_dir: Path, recipe: Recipe):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(fs.path(run_dir) / TENSORBOARD_DIR))  # TensorBoard's gfile: URLs via fsspec
        # Samples seen before each stage: the x axis runs on through the stages.
        self._offset, total = {}, 0
        for st in recipe.stages:
            self._offset.setdefault(st.name, total)
            total += st.steps * st.global_batch
        self._started = False

    def write(self, line: dict) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        step = self._offset.get(line["stage"], 0) + int(line["samples"])
        now = time.time()
        if not self._started:  # drops a killed process's points at or after this one (see the module doc)
            self._writer.add_event(event_pb2.Event(wall_time=now, step=step, session_log=event_pb2.SessionLog(
                status=event_pb2.SessionLog.START)))
            self._started = True
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(line[key]))
                  for key, tag in TAGS.items() if line.get(key) is not None]
        if values:
            self._writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary_pb2.Summary(value=values)))
        # Lines come every few seconds at most; flushing each keeps the file whole if the process is killed.
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


_open: dict[object, Optional[TensorBoard]] = {}  # run dir -> its tracker in this process (None: none asked for)


def report(run_dir: Path, line: dict) -> None:
    """Hand one metrics line (metrics.jsonl's fields) to the trackers RUN_DIR/recipe.yaml asks for."""
    key = fs.path(run_dir).resolve()
    if key not in _open:
        recipe_file = key / rundir.RECIPE
        recipe = recipe_mod.load(recipe_file) if recipe_file.exists() else None
        _open[key] = TensorBoard(key, recipe) if recipe and "tensorboard" in recipe.train.report_to else None
    if _open[key] is not None:
        _open[key].write(line)


def close(run_dir: Path) -> None:
    """Close RUN_DIR's tracker in this process (a later line opens a new event file)."""
    tracker = _open.pop(fs.path(run_dir).resolve(), None)
    if tracker is not None:
        tracker.close()
