"""Read run directories (``clipa.rundir``) into one ``Run`` object the tables, plots and calibration share.

No backend code: everything comes from recipe.yaml, metrics.jsonl, checkpoints/ and achieved.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from clipa import recipe as recipe_mod
from clipa import fs, rundir, runlock
from clipa.errors import UserError


@dataclass
class Run:
    path: Path
    recipe: recipe_mod.Recipe
    metrics: list[rundir.MetricsLine]
    achieved: Optional[rundir.Achieved]  # None: unfinished or crashed
    checkpoints: list[str]
    predictions: Optional[recipe_mod.Predictions]
    predictions_source: str  # "recipe" (frozen in the run's recipe.yaml), or why there are none
    notes: list[str] = field(default_factory=list)
    training: Optional[str] = None  # who is training into it now (clipa/runlock.py), if anyone

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.achieved is not None

    def stage_lines(self, stage: str, kind: str = "train") -> list[rundir.MetricsLine]:
        return [m for m in self.metrics if m.stage == stage and m.kind == kind]

    def stages_done(self) -> list[str]:
        """Stages that reached their sample count (by the last metrics line of each)."""
        done = []
        for st in self.recipe.stages:
            lines = [m for m in self.metrics if m.stage == st.name]
            if lines and max(m.samples for m in lines) >= st.samples:
                done.append(st.name)
        return done

    def last_metrics(self, kind: str = "train") -> Optional[rundir.MetricsLine]:
        lines = [m for m in self.metrics if m.kind == kind]
        return lines[-1] if lines else None


def _checkpoints(run_dir: Path) -> list[str]:
    d = run_dir / rundir.CHECKPOINTS
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".tmp"))


def _predictions(rec: recipe_mod.Recipe) -> tuple[Optional[recipe_mod.Predictions], str]:
    """The predictions frozen in the run's recipe (clipa-plan writes them; clipa-run adds them at launch
    to a recipe without): the report compares against what was predicted before training, never recomputes."""
    if rec.predictions is not None:
        return rec.predictions, "recipe"
    return None, "none in the run's recipe (started before clipa-run froze predictions at launch)"


def load_run(path: str | Path) -> Run:
    """Load one run directory (a path or a URL, clipa/fs.py); a path that is not one is a one-line ``UserError``."""
    path = fs.path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a run directory ({'a file' if path.exists() else 'no such directory'})")
    if not (path / rundir.RECIPE).is_file():
        raise UserError(f"{path}: not a run directory (no {rundir.RECIPE})")
    rec = recipe_mod.load(path / rundir.RECIPE)
    notes = []
    try:
        achieved = rundir.read_achieved(path)
    except UserError as e:  # a corrupt achieved.json: still show what the run has
        achieved = None
        notes.append(str(e))
    preds, source = _predictions(rec)
    return Run(path=path, recipe=rec, metrics=rundir.read_metrics(path), achieved=achieved,
               checkpoints=_checkpoints(path), predictions=preds, predictions_source=source, notes=notes,
               training=None if achieved else runlock.holder(path))


def resolve_dirs(dirs: list[str], root: Path = rundir.DEFAULT_ROOT) -> list:
    """The run directories to report: those given, each once, else the latest under ``root``. A shell glob
    and a name can both give one run (``runs/pilots/* runs/pilots/a``): counted twice, it would be two
    runs to the calibration's fits, which then claim a residual degree of freedom they do not have."""
    if dirs:
        once: dict = {}
        for d in map(fs.path, dirs):
            once.setdefault(d.resolve() if isinstance(d, Path) else d.url, d)
        return list(once.values())
    latest = rundir.latest_run(root)
    if latest is None:
        raise UserError(f"no run directories given and none found under {root}/")
    return [latest]
