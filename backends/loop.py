"""The stage loop both backends run: every stage of a recipe in sequence, resumable from the run directory.

Framework-free (no torch or jax import). It owns what a run does and when: resuming from the newest
checkpoint, skipping a stage that checkpoint closed, the data stream, the log window, evaluation,
checkpoints and the --max-samples stop, the stage-end record and weights, the final weights and
achieved.json. A backend supplies a ``Trainer``: the model and optimizer, one step, save/restore and
zero-shot evaluation, and nothing about cadence. Every process runs this; the main one writes files.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
from rich.console import Console

from clipa import rundir
from clipa.backends import runstate as rs
from clipa.backends.schedule import lr_at
from clipa.recipe import DatasetSpec, Recipe, Stage


class Trainer(Protocol):
    """What a backend provides. Methods marked collective are called by every process at the same point."""

    backend: str  # "torch" | "jax", for achieved.json
    device_name: str  # e.g. "cpu", "NVIDIA H100 80GB HBM3"
    n_devices: int  # devices the run trains on (MFU, cost)
    rank: int  # this process's share of the data stream ...
    world: int  # ... out of this many processes
    is_main: bool  # the process that writes metrics, weights files and achieved.json

    def restore(self) -> Optional[tuple[str, dict]]:
        """Build the model: from the newest checkpoint -> (its name, its saved position), else from the seed -> None."""

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

    def sum_counts(self, skipped: int, reasons: dict) -> tuple[int, dict]:
        """Skipped-sample counts summed over processes (collective)."""


def weights_meta(recipe: Recipe, st: Stage) -> dict[str, str]:
    """safetensors metadata of a weights file at the end of ``st`` (read by exports and tools)."""
    return {"encoder": recipe.encoder.name, "stage": st.name, "image_size": str(st.image_size),
            "pos_embed": st.pos_embed, "format": "clipa-torch-1"}


@dataclass
class _Window:
    """The losses since the last log line, and when that line was written."""

    losses: list = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)


class _Run:
    """One process's run: position, data counters and the files it writes."""

    def __init__(self, recipe: Recipe, run_dir: Path, dataset: DatasetSpec, trainer: Trainer, console: Console,
                 max_samples: Optional[int]):
        from clipa.backends.data import pipeline, zeroshot

        self.recipe, self.run_dir, self.dataset, self.tr, self.console = recipe, Path(run_dir), dataset, trainer, console
        self.max_samples = max_samples
        self.metrics_path = self.run_dir / rundir.METRICS
        self.mfu = rs.mfu_fn(recipe, trainer.n_devices)
        self.t_start = time.monotonic()
        self.pos, self.last_ckpt = rs.RunProgress(), None
        found = trainer.restore()
        if found is not None:
            self.last_ckpt, state = found
            self.pos = rs.RunProgress.from_state(state)
            if trainer.is_main:
                console.print(f"resuming {self.run_dir} from {self.last_ckpt} "
                              f"(stage {recipe.stages[self.pos.stage].name}, step {self.pos.step})")
                rs.truncate_metrics(self.metrics_path, self.pos.metrics_bytes)
        ds = dataset
        self.zs = zeroshot.load_zeroshot(ds.val, ds.classnames, ds.templates) if ds.val else None
        self.stats = pipeline.DataStats()

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

    def save(self, k: int, st: Stage, win: _Window, stage_t0: float) -> None:
        """A checkpoint at the current position, only after finite losses (collective)."""
        self.finite_loss(st, win)
        skipped, reasons = self.tr.sum_counts(self.stats.skipped, self.stats.reasons)
        meta = rs.checkpoint_meta(self.pos, skipped=skipped, reasons=reasons, time_s=self.elapsed(),
                                  stage_s=time.monotonic() - stage_t0, metrics_path=self.metrics_path)
        self.last_ckpt = self.tr.save(k, self.pos.step, meta)

    def log(self, st: Stage, win: _Window, bar, task) -> None:
        """One metrics line for the window, then a new window."""
        loss = self.finite_loss(st, win)
        sps = len(win.losses) * st.global_batch / (time.monotonic() - win.t0)
        lr = float(lr_at(st, self.pos.step - 1))  # the window's last step
        self.write_metrics(dict(stage=st.name, step=self.pos.step, samples=self.pos.step * st.global_batch,
                                time_s=self.elapsed(), loss=loss, lr=lr, samples_per_s=sps, mfu=self.mfu(st, sps),
                                logit_scale=self.tr.logit_scale()))
        bar.update(task, info=f"loss {loss:.3f}  {sps:,.0f} samples/s")
        win.losses, win.t0 = [], time.monotonic()

    def eval_line(self, st: Stage, top1: Optional[float]) -> None:
        self.write_metrics(dict(kind="eval", stage=st.name, step=self.pos.step,
                                samples=self.pos.step * st.global_batch, time_s=self.elapsed(), top1=top1))

    def train_stage(self, k: int, st: Stage) -> bool:
        """Stage ``k`` from the current position to its end; False when stopped at --max-samples."""
        from clipa.backends.data import pipeline

        pos, tr, cfg = self.pos, self.tr, self.recipe.train
        stage_t0 = time.monotonic()
        tr.start_stage(k, st, pos.step)
        batches = pipeline.train_batches(self.dataset, st, self.recipe.encoder.spec,
                                         batch_size=st.global_batch // tr.world, rank=tr.rank, world_size=tr.world,
                                         seed=cfg.seed, start_sample=pos.samples_drawn, stats=self.stats)
        ckpt_every = rs.every(cfg.checkpoint_every_samples, st.global_batch)
        eval_every = rs.every(cfg.eval_every_samples, st.global_batch)
        win = _Window()
        with rs.progress_bar(tr.is_main, self.console) as bar:
            task = bar.add_task(st.name, total=st.steps, completed=pos.step, info="")
            while pos.step < st.steps:
                if self.max_samples is not None and pos.samples_drawn >= self.max_samples:
                    self.save(k, st, win, stage_t0)
                    if tr.is_main:
                        self.console.print(f"stopped at --max-samples {self.max_samples}; run again to continue")
                    return False
                win.losses.append(tr.step(next(batches)))
                pos.step += 1
                pos.samples_drawn += st.global_batch
                if pos.step % cfg.log_every_steps == 0 or pos.step == st.steps:
                    self.log(st, win, bar, task)
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
            self.console.print(f"stage {st.name}: {samples:,} samples in {stage_wall:.0f} s"
                               + (f", zero-shot top-1 {top1:.2f}%" if top1 is not None else ""))
            rs.save_weights(weights, self.run_dir / rundir.CHECKPOINTS /
                            f"stage-{k}-{rundir.safe_name(st.name)}.safetensors", weights_meta(self.recipe, st))
        self.save(k, st, _Window(), stage_t0)
        self.pos.stage_time_s = 0.0

    def finish(self) -> Optional[rundir.Achieved]:
        """The final weights and achieved.json (main process); None elsewhere."""
        skipped, reasons = self.tr.sum_counts(self.stats.skipped, self.stats.reasons)
        skipped, reasons = self.pos.skipped + skipped, rs.merge_counts(self.pos.reasons, reasons)
        weights = self.tr.full_weights()
        if not self.tr.is_main:
            return None
        rs.print_skipped(self.console, skipped, reasons)
        rs.save_weights(weights, self.run_dir / rundir.CHECKPOINTS / "final.safetensors",
                        weights_meta(self.recipe, self.recipe.stages[-1]))
        achieved = rs.achieved(self.recipe, backend=self.tr.backend, device=self.tr.device_name,
                               n_devices=self.tr.n_devices, prog=self.pos, wall=self.elapsed(), skipped=skipped,
                               reasons=reasons, dataset=self.dataset)
        rundir.write_achieved(self.run_dir, achieved)
        self.console.print(f"finished: {self.run_dir}/{rundir.ACHIEVED} ({achieved.summary()})")
        return achieved


def run(recipe: Recipe, run_dir: Path, dataset: DatasetSpec, trainer: Trainer, *,
        max_samples: Optional[int] = None, console: Optional[Console] = None) -> Optional[rundir.Achieved]:
    """Train every stage not yet done; the achieved figures (main process, finished run, also written to
    achieved.json) or None (another process, or stopped at ``max_samples`` samples drawn in total)."""
    r = _Run(recipe, run_dir, dataset, trainer, console or Console(stderr=True, soft_wrap=True), max_samples)
    stages = recipe.stages
    while r.pos.stage < len(stages):
        k, st = r.pos.stage, stages[r.pos.stage]
        if r.pos.step >= st.steps:  # the checkpoint (or the stage just trained) closed this stage
            r.pos.stage, r.pos.step, r.pos.stage_time_s = k + 1, 0, 0.0
            trainer.close_stage()
            continue
        if not r.train_stage(k, st):
            return None
    return r.finish()
