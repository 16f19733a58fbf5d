"""The pilot suite file: the small recipes ``clipa-plan --pilot`` wrote, run by one ``clipa-run SUITE``.

A suite is data like a recipe: a name, the run the pilots prepare (``target``, what they are scaled
from), the budget they were sized against and one entry per pilot (its recipe file, relative to the
suite file, and its predicted cost). Loaded with ``yaml.safe_load`` and validated (extra fields fail);
a file is a suite when it has a ``pilots`` key (a recipe has ``stages``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field

from clipa import fs
from clipa.errors import UserError, load_yaml, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PilotEntry(_Strict):
    name: str = Field(description="names the pilot's run directory (ROOT/NAME)")
    recipe: str = Field(description="recipe file, relative to the suite file")
    scale: float = Field(gt=0, le=1, description="its samples as a fraction of the target's, per stage")
    predicted_device_hours: float = Field(ge=0)
    predicted_cost_usd: Optional[float] = None


class Suite(_Strict):
    name: str
    target: str = Field(description="the run the pilots are scaled from (a recipe name)")
    dataset: str
    hardware: str
    budget_device_hours: float = Field(gt=0, description="what the share was taken of, device-hours")
    budget_usd: Optional[float] = None
    share: float = Field(gt=0, le=1, description="the pilots' total predicted cost is at most this share of the budget")
    pilots: list[PilotEntry] = Field(min_length=1)

    @property
    def predicted_device_hours(self) -> float:
        return sum(p.predicted_device_hours for p in self.pilots)


def is_suite(path: Path) -> bool:
    """True for a YAML mapping with a ``pilots`` key (read cheaply; the full check is ``load``)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False
    return isinstance(data, dict) and "pilots" in data


def load(path: str | Path) -> Suite:
    path = Path(path)
    suite = validate(Suite, load_yaml(path, "suite file (from clipa-plan --pilot)"), str(path), "suite file")
    for p in suite.pilots:
        if not (path.parent / p.recipe).is_file():
            raise UserError(f"{path}: pilots[{p.name}].recipe: {path.parent / p.recipe} not found")
    return suite


def dump(suite: Suite, path: str | Path, header: str = "") -> Path:
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    fs.write_atomic(path, comment + yaml.safe_dump(suite.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return Path(path)
