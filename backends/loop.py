"""The stage loop both backends run: every stage of a recipe in sequence, resumable from the run directory.

Framework-free (no torch or jax import). It owns what a run does and when: resuming from the newest
checkpoint, skipping a stage that checkpoint closed, the data stream, the log window, evaluation,
checkpoints and the --max-samples stop, the stage-end record and weights, the final weights and
achieved.json. A backend supplies a ``Trainer``: the model and optimizer, one step, save/restore and
zero-shot evaluation, and nothing about cadence. Every process runs this; the main one writes the
shared files (metrics, weights files, achieved.json) to the run directory, a local path or a URL
(clipa/fs.py): on a pod it is one directory all hosts see (gs://).
"""
from __future__ import annotations

import errno
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
from rich.console import Console
from rich.markup import escape

from clipa import fs, launching, rundir
from clipa.backends import logline, runstate as rs
from clipa.backends.data import webdataset_io
from clipa.backends.schedule import lr_at
from clipa.backends.stopping import StopSignals
from clipa.errors import DecodersDied, Interrupted, NoRoom
from clipa.recipe import DatasetSpec, Recipe, Stage


class Trainer(Protocol):
    """What a backend provides. Methods marked collective are called by every process at the same point."""

    backend: str  # "torch" | "jax", for achieved.json
    device_name: str  # e.g. "cpu", "NVIDIA H100 80GB HBM3"
    n_devices: int  # devices the run trains on (MFU, cost)
    rank: int  # this process's share of the data stream ...
    world: int  # ... out of this many processes
    is_main: bool  # the process that writes metrics, weights files and achieved.json

    def checkpoints(self) -> list[str]:
        """The run directory's resumable checkpoints, newest first."""

    def restore(self, name: Optional[str]) -> Optional[dict]:
        """Build the model: from checkpoint ``name`` -> its saved position (rs.CorruptCheckpoint when it
        cannot be read), or from the seed (``name`` None) -> None."""

    def close_stage(self) -> None:
        """The restored checkpoint closed its stage: forget its optimizer state (the next stage starts afresh)."""

    def start_stage(self, k: int, st: Stage, step: int) -> None:
        """Ready stage ``k`` at optimizer step ``step``: without restored optimizer state, adapt the weights
        to ``st`` (position embedding) and build a fresh optimizer."""

    def step(self, batch: dict[str, np.ndarray]) -> Any:
        """One optimizer step on this process's rows of the global batch; the loss (may stay on device)."""

    def mean_loss(self, losses: list) -> float:
        """The mean of ``step``'s losses over all processes (collective)."""

    def logit_scale(self) -> float:
        """The inverse temperature the loss uses now: exp(logit_scale), clamped as in the forward (collective)."""

    def evaluate(self, zs, st: Stage) -> float:
        """Zero-shot top-1 in percent on ``zs`` at the stage's resolution (collective)."""

    def save(self, k: int, step: int, meta: dict) -> str:
        """A resumable checkpoint at step ``step`` of stage ``k`` holding ``meta``; returns its name (collective)."""

    def full_weights(self) -> Optional[dict[str, np.ndarray]]:
        """The whole model in the PyTorch layout on the main process, None elsewhere (collective)."""

    def all_gather(self, obj) -> list:
        """``obj`` (numbers, strings, lists, dicts) of every process, in rank order (collective)."""


def weights_meta(recipe: Recipe, st: Stage) -> dict[str, str]:
    """safetensors metadata of a weights file at the end of ``st`` (read by exports and tools)."""
    return {"encoder": recipe.encoder.name, "stage": st.name, "image_size": str(st.image_size),
            "pos_embed": st.pos_embed, "format": "clipa-torch-1"}


PROCESSES = "processes"  # checkpoint key: the processes that wrote it (their number sets each one's data)


@dataclass
class _Window:
    """The losses since the last log line, and when that line was written."""

    losses: list = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)


class _Run:
    """One process's run: position, data counters and the files it writes."""

    def __init__(self, recipe: Recipe, run_dir: Path, dataset: DatasetSpec, trainer: Trainer, console: Console,
                 max_samples: Optional[int], signals: StopSignals, resume: str):
        from clipa.backends.data import pipeline, zeroshot

        self.recipe, self.run_dir, self.dataset, self.tr = recipe, fs.path(run_dir), dataset, trainer
        self.console = console
        self.max_samples, self.signals, self.resume = max_samples, signals, resume
        self.metrics_path = self.run_dir / rundir.METRICS
        self.mfu = rs.mfu_fn(recipe, trainer.n_devices)
        self.t_start = self.saved_at = time.monotonic()
        self.log = logline.Lines(console, trainer.is_main, recipe)
        mismatch = launching.hardware_mismatch(recipe.hardware.name, trainer.n_devices, trainer.device_name)
        if mismatch:
            self.log.say(f"[yellow]warning:[/yellow] {escape(mismatch)}")
        self.log.preparing(dataset)
        self.pos = rs.RunProgress()
        self.last_ckpt, state = self._restore()
        if state is not None:
            self.pos = rs.RunProgress.from_state(state)
            self.log.say(f"resuming {self.run_dir} from {self.last_ckpt} "
                         f"(stage {recipe.stages[self.pos.stage].name}, step {self.pos.step})")
            was = state.get(PROCESSES)
            if was is not None and was != trainer.world:
                self.log.say(f"[yellow]warning:[/yellow] resumed on {trainer.world} processes from a checkpoint "
                             f"{was} wrote: training goes on, but each process's share of the data depends on their "
                             "number, so the samples from here are not those an uninterrupted run draws")
        if trainer.is_main:  # a fresh run drops the lines of a process killed before its first checkpoint
            rs.truncate_metrics(self.metrics_path, self.pos.metrics_bytes)
        self.bad_before = dict(state.get(rs.SKIPPED_KEYS, {})) if state else {}  # bad samples found earlier
        self.shard_counts = rs.load_shard_counts(self.run_dir) if state else {}
        webdataset_io.learn(self.shard_counts)
        self.stats = pipeline.DataStats(known=set(self.bad_before))
        ds = dataset
        self.zs = zeroshot.load_zeroshot(ds.val, ds.classnames, ds.templates, ds.val_images) if ds.val else None

    def _restore(self) -> tuple[Optional[str], Optional[dict]]:
        """The newest readable checkpoint (an unreadable one is reported and passed over), else a fresh model."""
        for name in self.tr.checkpoints():
            try:
                return name, self.tr.restore(name)
            except rs.CorruptCheckpoint as e:
                self.log.say(f"[yellow]checkpoint {name} is unreadable ({e}); trying the one before[/yellow]")
        self.tr.restore(None)
        return None, None

    def elapsed(self) -> float:
        """Wall seconds of the whole run: earlier processes and this one."""
        return self.pos.time_s + time.monotonic() - self.t_start

    def write_metrics(self, line: dict) -> None:
        if self.tr.is_main:
            rs.append_metrics(self.metrics_path, line)

    def finite_loss(self, st: Stage, win: _Window) -> Optional[float]:
        """The window's mean loss (None when empty); Diverged when it is NaN/inf (collective)."""
        if not win.losses:
            return None
        loss = self.tr.mean_loss(win.losses)
        if not math.isfinite(loss):
            keep = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else \
                "no checkpoint was written before it"
            raise rs.diverged(st.name, self.pos.step, keep)
        return loss

    def bad_found(self) -> dict:
        """Bad samples/shards this process's run found so far, all processes together (collective)."""
        found: dict = {}
        for d in self.tr.all_gather(self.stats.found):
            found.update(d)
        return found

    def save(self, k: int, st: Stage, win: _Window, stage_t0: float) -> None:
        """A checkpoint at the current position, only after finite losses (collective)."""
        self.finite_loss(st, win)
        found = self.bad_found()
        skipped, reasons = rs.count_skipped(found)
        if self.tr.is_main:
            fs.sync(self.metrics_path)  # the lines the checkpoint counts are on disk before it is
        meta = rs.checkpoint_meta(self.pos, skipped=skipped, reasons=reasons, time_s=self.elapsed(),
                                  stage_s=time.monotonic() - stage_t0, metrics_path=self.metrics_path)
        meta[rs.SKIPPED_KEYS] = {**self.bad_before, **found}
        meta[PROCESSES] = self.tr.world
        self.save_shard_counts()
        self.last_ckpt = self.tr.save(k, self.pos.step, meta)
        self.saved_at = time.monotonic()

    def save_shard_counts(self) -> None:
        """The shards every process counted since the last checkpoint, into RUN_DIR/shard_counts.json
        (collective), so that a resumed run fast-forwards without reading their tar headers again."""
        new: dict = {}
        for d in self.tr.all_gather(webdataset_io.take_unsaved()):
            new.update(d)
        if new and self.tr.is_main:
            self.shard_counts.update(new)
            fs.write_atomic(self.run_dir / rundir.SHARD_COUNTS, json.dumps(self.shard_counts))

    def boundary(self) -> tuple[Optional[int], bool]:
        """At a step boundary: (the stop signal, whether a wall-time checkpoint is due), the same on every
        process. Several processes agree once per log window (one collective), a single one every step."""
        minutes = self.recipe.train.checkpoint_every_minutes
        signum = self.signals.pending
        due = bool(minutes) and time.monotonic() - self.saved_at >= 60 * minutes
        if self.tr.world > 1:
            if self.pos.step % self.recipe.train.log_every_steps:
                return None, False
            every = self.tr.all_gather([signum, due])
            signum, due = next((s for s, _ in every if s), None), any(d for _, d in every)
        return signum, due

    def write_log(self, st: Stage, win: _Window, bar, task) -> None:
        """One metrics line for the window (and a plain line where stderr is no terminal), then a new window."""
        loss = self.finite_loss(st, win)
        sps = len(win.losses) * st.global_batch / (time.monotonic() - win.t0)
        lr = float(lr_at(st, self.pos.step - 1))  # the window's last step
        self.write_metrics(dict(stage=st.name, step=self.pos.step, samples=self.pos.step * st.global_batch,
                                time_s=self.elapsed(), loss=loss, lr=lr, samples_per_s=sps, mfu=self.mfu(st, sps),
                                logit_scale=self.tr.logit_scale()))
        bar.update(task, info=f"loss {loss:.3f}  {sps:,.0f} samples/s")
        self.log.progress(st, self.pos, loss, lr, sps)
        win.losses, win.t0 = [], time.monotonic()

    def eval_line(self, st: Stage, top1: Optional[float]) -> None:
        self.write_metrics(dict(kind="eval", stage=st.name, step=self.pos.step,
                                samples=self.pos.step * st.global_batch, time_s=self.elapsed(), top1=top1))

    def stop_or_save(self, k: int, st: Stage, win: _Window, stage_t0: float) -> bool:
        """Before a step: checkpoint and stop on a signal (Interrupted) or at --max-samples (True);
        checkpoint when the wall-time interval has passed."""
        signum, due = self.boundary()
        if signum is not None:
            self.save(k, st, win, stage_t0)
            raise Interrupted(signum, f"stopped by {signal.Signals(signum).name} at stage {st.name!r} step "
                                      f"{self.pos.step}, checkpoint {self.last_ckpt} written; "
                                      f"resume with: {self.resume}")
        if self.max_samples is not None and self.pos.samples_drawn >= self.max_samples:
            self.save(k, st, win, stage_t0)
            self.log.say(f"stopped at --max-samples {self.max_samples}; run again to continue")
            return True
        if due:
            self.save(k, st, win, stage_t0)
        return False

    def train_stage(self, k: int, st: Stage) -> bool:
        """Stage ``k`` from the current position to its end; False when stopped at --max-samples."""
        from clipa.backends.data import pipeline

        pos, tr, cfg = self.pos, self.tr, self.recipe.train
        stage_t0 = time.monotonic()
        tr.start_stage(k, st, pos.step)
        batches = pipeline.train_batches(self.dataset, st, self.recipe.encoder.spec,
                                         batch_size=st.global_batch // tr.world, rank=tr.rank, world_size=tr.world,
                                         seed=cfg.seed, start_sample=pos.samples_drawn, stats=self.stats)
        ckpt_every = st.every(cfg.checkpoint_every_samples)
        eval_every = st.every(cfg.eval_every_samples)
        win = _Window()
        with rs.progress_bar(tr.is_main, self.console) as bar:
            task = bar.add_task(st.name, total=st.steps, completed=pos.step, info="")
            while pos.step < st.steps:
                if self.stop_or_save(k, st, win, stage_t0):
                    return False
                try:
                    batch = next(batches)
                except DecodersDied:
                    if tr.world == 1:  # elsewhere the other processes may be inside a step: no checkpoint to join
                        self.save(k, st, win, stage_t0)
                    raise
                win.losses.append(tr.step(batch))
                pos.step += 1
                pos.samples_drawn += st.global_batch
                if pos.step % cfg.log_every_steps == 0 or pos.step == st.steps:
                    self.write_log(st, win, bar, task)
                mid_stage = pos.step < st.steps
                if eval_every and pos.step % eval_every == 0 and mid_stage and self.zs is not None:
                    self.eval_line(st, tr.evaluate(self.zs, st))
                if ckpt_every and pos.step % ckpt_every == 0 and mid_stage:
                    self.save(k, st, win, stage_t0)
                bar.update(task, completed=pos.step)
        self.end_stage(k, st, win, stage_t0)
        return True

    def end_stage(self, k: int, st: Stage, win: _Window, stage_t0: float) -> None:
        """The stage's record, its weights file and the checkpoint that closes it (step == steps)."""
        self.finite_loss(st, win)
        top1 = self.tr.evaluate(self.zs, st) if self.zs is not None else None
        stage_wall = self.pos.stage_time_s + time.monotonic() - stage_t0
        self.pos.history.append(rs.stage_record(st, top1, stage_wall, self.tr.n_devices, self.mfu))
        self.eval_line(st, top1)
        weights = self.tr.full_weights()
        if self.tr.is_main:
            samples = st.steps * st.global_batch
            self.log.say(f"stage {st.name}: {samples:,} samples in {stage_wall:.0f} s"
                         + (f", zero-shot top-1 {top1:.2f}%" if top1 is not None else ""))
            rs.save_weights(weights, self.run_dir / rundir.CHECKPOINTS /
                            f"stage-{k}-{rundir.safe_name(st.name)}.safetensors", weights_meta(self.recipe, st))
        self.save(k, st, _Window(), stage_t0)
        self.pos.stage_time_s = 0.0

    def finish(self) -> Optional[rundir.Achieved]:
        """The final weights and achieved.json (main process); None elsewhere."""
        skipped, reasons = rs.count_skipped(self.bad_found())
        skipped, reasons = self.pos.skipped + skipped, rs.merge_counts(self.pos.reasons, reasons)
        weights = self.tr.full_weights()
        if not self.tr.is_main:
            return None
        rs.print_skipped(self.console, skipped, reasons)
        rs.save_weights(weights, self.run_dir / rundir.CHECKPOINTS / "final.safetensors",
                        weights_meta(self.recipe, self.recipe.stages[-1]))
        achieved = rs.achieved(self.recipe, backend=self.tr.backend, device=self.tr.device_name,
                               n_devices=self.tr.n_devices, prog=self.pos, wall=self.elapsed(), skipped=skipped,
                               reasons=reasons, dataset=self.dataset, zs=self.zs)
        rundir.write_achieved(self.run_dir, achieved)
        self.log.say(f"finished: {self.run_dir}/{rundir.ACHIEVED} ({achieved.summary()})")
        self.log.versus_prediction(achieved, self.run_dir)
        return achieved


# What a write fails with when the storage, not clipa, is at fault: no traceback for those.
_NO_ROOM = NoRoom.FULL | {errno.EROFS}


def run(recipe: Recipe, run_dir: Path, dataset: DatasetSpec, trainer: Trainer, *,
        max_samples: Optional[int] = None, console: Optional[Console] = None,
        resume: Optional[str] = None) -> Optional[rundir.Achieved]:
    """Train every stage not yet done; the achieved figures (main process, finished run, also written to
    achieved.json) or None (another process, or stopped at ``max_samples`` samples drawn in total).

    SIGINT/SIGTERM/SIGHUP: a checkpoint at the next step boundary, then ``Interrupted`` (its message ends with
    ``resume``, the command that continues the run; default: clipa-run on the run directory's recipe).
    A full disk (or quota, or read-only filesystem) under the run directory: ``NoRoom``, naming the file, the
    newest complete checkpoint and ``resume``; a failed write never removes a complete checkpoint.
    Decoding processes that keep dying (workers.MAX_WORKER_DEATHS): a checkpoint (one process only: the
    others may be inside a step), then ``DecodersDied``, saying the same."""
    resume = resume or rs.resume_command(fs.path(run_dir) / rundir.RECIPE, run_dir, trainer.backend)
    r = None
    with StopSignals() as signals:
        try:
            r = _Run(recipe, run_dir, dataset, trainer, console or Console(stderr=True, soft_wrap=True),
                     max_samples, signals, resume)
            return _stages(r)
        except DecodersDied as e:
            raise DecodersDied(f"{e}; {_where(r)}; resume with: {resume}") from None
        except OSError as e:
            if e.errno not in _NO_ROOM:
                raise
            raise NoRoom(f"{e.filename or run_dir}: {e.strerror}; {_where(r)}; make room, then resume with: "
                         f"{resume}") from None


def _where(r: Optional[_Run]) -> str:
    """Where a run stopped and what it can resume from, for an error line."""
    if r is None:
        return "training had not started"
    stages = r.recipe.stages
    at = (f"stage {stages[r.pos.stage].name!r} step {r.pos.step}" if r.pos.stage < len(stages)
          else "the end of the last stage")
    newest = f"the newest complete checkpoint is {r.last_ckpt}" if r.last_ckpt else "there is no checkpoint yet"
    return f"training stopped at {at}, {newest}"


def _stages(r: _Run) -> Optional[rundir.Achieved]:
    stages = r.recipe.stages
    while r.pos.stage < len(stages):
        k, st = r.pos.stage, stages[r.pos.stage]
        if r.pos.step >= st.steps:  # the checkpoint (or the stage just trained) closed this stage
            r.pos.stage, r.pos.step, r.pos.stage_time_s = k + 1, 0, 0.0
            r.tr.close_stage()
            continue
        if not r.train_stage(k, st):
            return None
    return r.finish()
