"""The published CLIPA recipes shipped in ``recipes/published/`` (a baseline for every plan)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

from clipa import recipe as recipe_mod


def recipe_dir() -> Path:
    return Path(str(resources.files("clipa.recipes") / "published"))


def load_all() -> dict[str, recipe_mod.Recipe]:
    """name -> recipe, in file-name order (parsed once per process, with libyaml when present: every
    plan compares itself with them, and the pure-Python parser takes a noticeable part of a plan)."""
    return dict(_load_all())


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[tuple[str, recipe_mod.Recipe], ...]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple((p.stem, recipe_mod.from_dict(yaml.load(p.read_text(encoding="utf-8"), Loader=loader), str(p)))
                 for p in sorted(recipe_dir().glob("*.yaml")))


@dataclass
class PublishedRun:
    """A published recipe as it would run on the plan's hardware, with the top-1 its authors reported."""

    name: str
    file: str
    dataset: str
    published_top1: Optional[float]  # percent, read from costmodels/data/published_clipa_results.csv
    cost_usd: Optional[float]  # on the plan's hardware and pricing (None: no price)
    device_hours: float
    wall_hours: float
    predicted_top1: float  # the accuracy law's, for comparison with the plan's
    recipe: Optional[recipe_mod.Recipe] = None
    published_cost_usd: Optional[float] = None  # as its authors estimated it (CLIPA-v2: 8xA100 at $1.575/GPU-h)


def _row(rec: recipe_mod.Recipe) -> Optional[dict]:
    """A shipped published recipe's row in costmodels/data/published_clipa_results.csv (its name is
    the run's; the CLIPA-v1 rows add ' finetuned')."""
    from clipa.costmodels import accuracy_data

    rows = accuracy_data.read_rows(accuracy_data.PUB, "run")
    return rows.get(rec.name) or rows.get(f"{rec.name} finetuned")


def published_top1(rec: recipe_mod.Recipe) -> Optional[float]:
    """The reported zero-shot top-1 of a shipped published recipe, percent."""
    row = _row(rec)
    return None if row is None else float(row["zero_shot_in1k_top1"])


def published_cost(rec: recipe_mod.Recipe) -> Optional[float]:
    row = _row(rec)
    return float(row["cost_usd"]) if row is not None and row.get("cost_usd") else None


def nearest(hw_name: str, dataset: str, device_hours: float, *, prices=None, pricing: str = "on-demand",
            calibration=None) -> Optional[PublishedRun]:
    """The published run whose cost on ``hw_name`` is nearest ``device_hours`` (on a log scale), among
    those on ``dataset`` when there are any, else among all."""
    from clipa.costmodels.predict import predict_recipe

    runs = []
    for stem, rec in load_all().items():
        rec = rec.model_copy(update={"hardware": rec.hardware.model_copy(update={"name": hw_name, "pricing": pricing})})
        pred = predict_recipe(rec, prices=prices, calibration=calibration)
        runs.append(PublishedRun(rec.name, stem, rec.dataset.name, published_top1(rec), pred.cost_usd,
                                 pred.device_hours, pred.wall_hours, pred.predicted_top1, rec, published_cost(rec)))
    same = [r for r in runs if r.dataset == dataset] or runs
    if not same or device_hours <= 0:
        return None
    return min(same, key=lambda r: abs(math.log(r.device_hours / device_hours)))
