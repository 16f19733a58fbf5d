"""The calibration file: what finished runs taught the cost models, read back by ``clipa-plan --calibration``.

Written by ``clipa-report --calibrate RUN_DIR ...`` (``clipa.report.calibrate``), as YAML (or JSON
when the path ends in ``.json``), loaded with ``yaml.safe_load`` and validated (extra fields fail).

Per hardware name, the wall time of a stage of ``samples`` samples is modelled as

    wall_s = samples * (flops_s_per_sample(u) + overhead_s_per_sample)
             + evaluations * eval_s_per_gflop * image_forward_gflop + fixed_s_per_stage
             [+ start_s_per_run on a run's first stage]

- ``u`` (``utilisation``): the fraction of the hardware's peak FLOP/s the training step reaches on
  the FLOPs model's count; it replaces the throughput model's default (``throughput.stage_time``).
- ``overhead_s_per_sample``: machine-seconds per sample that do not scale with model FLOPs (data
  decoding, augmentation, tokenisation, host-side Python). On accelerators fed by async loaders it
  is small; on CPU for tiny models it dominates, which is why it is a separate term.
- ``eval_s_per_gflop``: seconds of one zero-shot evaluation per GFLOP of one image's forward pass at
  the stage's resolution. An evaluation encodes the whole eval set at that resolution, so its time
  follows the image tower's FLOPs (measured on the demo: 1.4 s at 32 px, 7.0 s at 80 px), not a
  constant; the size of the calibration runs' eval set is folded in, so it holds for recipes that
  evaluate on the same set.
- ``fixed_s_per_stage``: seconds per stage outside the steady-state loop and the evaluations
  (warm-up, checkpointing, the stage's start).
- ``start_s_per_run``: seconds once per run, on its first stage: the set-up outside the stages and the
  first stage's warm-up beyond a later stage's (first allocations, thread pools, the data pipeline's
  first fill). On the demo's CPU runs the first stage ran 2.4-3.3 s over the model and a later stage
  -0.7-0.6 s; spread over the stages it under-predicted a 2-stage run calibrated on a 3-stage one.

Per dataset, ``offset`` is added (percentage points) to the accuracy law's zero-shot top-1, unless
the dataset has a fitted ``law`` (``costmodels/dataset_law.py``, from pilot runs): then that law
predicts the dataset's top-1 and its interval (``accuracy_law``), and the offset is only reported.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field

from clipa import fs
from clipa.datasets import eval_label
from clipa.costmodels.dataset_law import DatasetLaw
from clipa.errors import UserError, load_yaml, validate

FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HardwareCalibration(_Strict):
    utilisation: float = Field(gt=0, le=1, description="achieved fraction of peak FLOP/s on the FLOPs model")
    overhead_s_per_sample: float = Field(0.0, ge=0, description="machine-seconds per sample not explained by FLOPs")
    eval_s_per_gflop: float = Field(0.0, ge=0, description="seconds of one evaluation per GFLOP of one image's "
                                    "forward pass at the stage's resolution (the calibration runs' eval set)")
    fixed_s_per_stage: float = Field(0.0, ge=0, description="seconds per stage outside the steady-state loop "
                                     "and the evaluations")
    start_s_per_run: float = Field(0.0, ge=0, description="seconds once per run, on its first stage: set-up "
                                   "outside the stages and the first stage's extra warm-up")
    points: int = Field(ge=1, description="(configuration, throughput) points the fit used")
    rel_rmse: float = Field(ge=0, description="relative RMS error of the fit on its own points")
    runs: list[str] = Field(default_factory=list, description="run directories it was fitted on")
    note: Optional[str] = None


class DatasetCalibration(_Strict):
    offset: float = Field(description="percentage points added to the accuracy law's top-1")
    runs: list[str] = Field(default_factory=list)
    residuals: list[float] = Field(default_factory=list, description="achieved - law (offset 0) per run, points")
    law: Optional[DatasetLaw] = Field(None, description="the dataset's own law, fitted to these runs (pilots)")


class Calibration(_Strict):
    version: int = FORMAT_VERSION
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    hardware: dict[str, HardwareCalibration] = Field(default_factory=dict)
    datasets: dict[str, DatasetCalibration] = Field(default_factory=dict)

    def utilisation(self, hw_name: str) -> Optional[float]:
        """Calibrated fraction of peak FLOP/s on ``hw_name``, or None (use the model's default)."""
        h = self.hardware.get(hw_name)
        return h.utilisation if h else None

    def offset(self, dataset: str) -> float:
        """Percentage points to add to the accuracy law's top-1 on ``dataset`` (0 if never calibrated, or
        when the dataset has its own fitted law, which replaces the published one's prediction)."""
        d = self.datasets.get(dataset)
        return d.offset if d and d.law is None else 0.0

    def accuracy_law(self, base):
        """``base`` (an accuracy_law.AccuracyLaw) with the fitted dataset laws predicting their datasets."""
        laws = {name: d.law for name, d in self.datasets.items() if d.law is not None}
        if not laws:
            return base
        from clipa.costmodels.calibrated_law import CalibratedLaw

        return CalibratedLaw(base, laws)

    def version_suffix(self, hw_name: str, dataset: str) -> str:
        """What it calibrates of a prediction on ``hw_name`` and ``dataset``, for cost_model_version:
        '+calibrated' (time and top-1), '+calibrated-time', '+calibrated-top1', or '' (neither: fitted on
        other hardware and data)."""
        time, top1 = hw_name in self.hardware, dataset in self.datasets
        if not (time or top1):
            return ""
        return "+calibrated" + ("" if time and top1 else "-time" if time else "-top1")

    def unused_note(self, hw_name: str, dataset: str) -> Optional[str]:
        """A line for a prediction the calibration calibrates nothing of, else None."""
        if self.version_suffix(hw_name, dataset):
            return None
        fitted = ", ".join([*self.hardware, *self.datasets]) or "nothing"
        return (f"--calibration: fitted on {fitted}, neither hardware {hw_name} nor dataset {dataset}: these "
                f"predictions are uncalibrated")

    def overhead_s_per_sample(self, hw_name: str) -> float:
        h = self.hardware.get(hw_name)
        return h.overhead_s_per_sample if h else 0.0

    def eval_s_per_gflop(self, hw_name: str) -> float:
        h = self.hardware.get(hw_name)
        return h.eval_s_per_gflop if h else 0.0

    def fixed_s_per_stage(self, hw_name: str) -> float:
        h = self.hardware.get(hw_name)
        return h.fixed_s_per_stage if h else 0.0

    def law(self, dataset: str) -> Optional[DatasetLaw]:
        """``dataset``'s own fitted law, or None."""
        d = self.datasets.get(dataset)
        return d.law if d is not None else None

    def start_s_per_run(self, hw_name: str) -> float:
        h = self.hardware.get(hw_name)
        return h.start_s_per_run if h else 0.0


def save(cal: Calibration, path: str | Path) -> Path:
    """Write atomically (``fs.write_atomic``; a path or a URL); ``.json`` -> JSON, anything else -> YAML."""
    path = fs.path(path)
    data = cal.model_dump(mode="json")
    text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    fs.write_atomic(path, text)
    return path


def load(path: str | Path) -> Calibration:
    """Read and validate a calibration file; a bad file is a one-line ``UserError`` naming it."""
    path = fs.path(path)
    data = load_yaml(path, "calibration file")
    if isinstance(data, dict) and data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise UserError(f"{path}: calibration format version {data.get('version')!r}; this clipa reads {FORMAT_VERSION}")
    return validate(Calibration, data, str(path), "calibration file")


def top1_calibrated(cost_model_version: str) -> bool:
    """Whether a prediction's top-1 came from a calibration of its dataset (``Calibration.version_suffix``)."""
    return cost_model_version.endswith(("+calibrated", "+calibrated-top1"))


def measured_on(recipe) -> str:
    """What ``recipe``'s predicted top-1 is measured on (``datasets.eval_label``), as its predictions say."""
    return eval_label(recipe.dataset.name, recipe.dataset.val,
                      calibrated=top1_calibrated(recipe.predictions.cost_model_version))
