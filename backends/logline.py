"""What a training run prints on the main process, readable in a terminal and in a log file alike.

A terminal shows the progress bar; elsewhere (SLURM, nohup, CI: stderr is no terminal and the bar is
not redrawn) a plain timestamped line every ``train.log_every_steps``. Both get a line when data
preparation starts and, at the end, the achieved figures next to the recipe's predicted ones.
"""
from __future__ import annotations

import datetime
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from clipa import rundir
from clipa.costmodels.calibration import measured_on
from clipa.recipe import DatasetSpec, Recipe, Stage


class Lines:
    """The run's console lines; silent off the main process."""

    def __init__(self, console: Console, main: bool, recipe: Recipe):
        self.console, self.main, self.recipe = console, main, recipe
        self.total = sum(st.steps * st.global_batch for st in recipe.stages)  # samples of the whole run

    def say(self, text: str) -> None:
        if self.main:
            self.console.print(text)

    def preparing(self, dataset: DatasetSpec) -> None:
        self.say(f"preparing data: {escape(str(dataset.train))}"
                 + (f", zero-shot eval on {escape(str(dataset.val))}" if dataset.val else ""))

    def progress(self, st: Stage, pos, loss: float, lr: float, sps: float) -> None:
        """The plain line (stderr not a terminal): stage, step, samples, loss, lr, samples/s, ETA of the run."""
        if not self.main or self.console.is_terminal:
            return
        k = next(i for i, s in enumerate(self.recipe.stages) if s.name == st.name)
        done = sum(s.steps * s.global_batch for s in self.recipe.stages[:k]) + pos.step * st.global_batch
        eta = datetime.timedelta(seconds=round((self.total - done) / max(sps, 1e-9)))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.console.print(f"{stamp} stage {st.name} step {pos.step}/{st.steps} samples {done:,}/{self.total:,} "
                           f"loss {loss:.4f} lr {lr:.3g} {sps:,.1f} samples/s ETA {eta}", markup=False)

    def versus_prediction(self, achieved: rundir.Achieved, run_dir: Path) -> None:
        """The achieved top-1, wall time and cost against the recipe's predictions; names clipa-report."""
        p = self.recipe.predictions
        got = (f"achieved top-1 {_pct(achieved.top1)} in {_hours(achieved.wall_seconds / 3600)} "
               f"({_usd(achieved.cost_usd)})")
        if p is None:
            self.say(f"{got}; the recipe has no prediction to compare with. Details: clipa-report {run_dir}")
            return
        lo, hi = p.predicted_top1_interval
        self.say(f"{got}; predicted {_pct(p.predicted_top1)} [{lo:.1f}, {hi:.1f}] ({measured_on(self.recipe)}) "
                 f"in {_hours(p.wall_hours)} "
                 f"({_usd(p.cost_usd)}). Compare stage by stage: clipa-report {run_dir}")


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


def _usd(x) -> str:
    return "cost unknown" if x is None else f"${x:,.2f}"


def _hours(h: float) -> str:
    return f"{h:.2f} h" if h >= 1 else f"{h * 60:.1f} min"
