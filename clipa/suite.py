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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipa.errors import UserError


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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        suite = Suite.model_validate(data if isinstance(data, dict) else {})
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: not a valid suite file ({str(e).splitlines()[0]})") from None
    except ValidationError as e:
        if not isinstance(data, dict):
            raise UserError(f"{path}: not found or not a YAML mapping (a suite from clipa-plan --pilot)") from None
        first = e.errors()[0]
        raise UserError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    for p in suite.pilots:
        if not (path.parent / p.recipe).is_file():
            raise UserError(f"{path}: pilots[{p.name}].recipe: {path.parent / p.recipe} not found")
    return suite


def dump(suite: Suite, path: str | Path, header: str = "") -> Path:
    """Write atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    tmp.write_text(comment + yaml.safe_dump(suite.model_dump(mode="json", exclude_none=True), sort_keys=False),
                   encoding="utf-8")
    tmp.replace(path)
    return path
