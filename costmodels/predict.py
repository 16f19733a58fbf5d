"""Predictions for a whole recipe: accuracy with its interval, FLOPs, device-hours, wall time, dollars.

The one entry point the planner, ``clipa-plan --predict`` and ``clipa-report`` share, so a
recipe is always costed the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from clipa import recipe as recipe_mod
from clipa.costmodels import accuracy_law, flops, hardware, throughput

VERSION = "clipa-costmodels-0.2"  # 0.2: the accuracy law as a mixture of forms, with extrapolation notes


def stage_costs(enc, stage: recipe_mod.Stage, hw: hardware.Hardware, *, grad_checkpointing: bool,
                utilisation: Optional[float] = None) -> recipe_mod.StagePrediction:
    """FLOPs, device-hours, wall hours and dollars of one stage on ``hw``."""
    tokens = stage.image_tokens(enc)
    # The patch embedding runs on every patch, masked or not.
    patches = enc.vision.tokens(stage.image_size)
    fps = flops.train_flops_per_sample(enc, tokens, stage.text_len, recompute=grad_checkpointing, patch_tokens=patches)
    st = throughput.stage_time(enc, tokens, stage.text_len, stage.samples, hw, image_size=stage.image_size,
                               grad_checkpointing=grad_checkpointing, utilisation=utilisation, patch_tokens=patches)
    return recipe_mod.StagePrediction(
        name=stage.name, image_size=stage.image_size, image_tokens=tokens, text_len=stage.text_len,
        samples=stage.samples, train_flops_per_sample=fps, train_flops=fps * stage.samples,
        gpu_hours=st.device_hours, wall_hours=st.wall_hours, cost_usd=cost_usd(hw, st.wall_hours),
    )


def cost_usd(hw: hardware.Hardware, wall_hours: float) -> Optional[float]:
    """Dollars for ``wall_hours`` of ``hw``; None (unknown, never $0) when it has no price."""
    return None if hw.usd_per_hour is None else hw.cost_usd(wall_hours)


def resolve_hardware(rec: recipe_mod.Recipe, hw_name: Optional[str] = None,
                     prices: Optional[Path] = None) -> hardware.Hardware:
    """The hardware to cost on: ``hw_name`` if given, else the recipe's (with its price override)."""
    hw = hardware.get(hw_name or rec.hardware.name, prices, rec.hardware.pricing)
    if hw_name is None and rec.hardware.usd_per_hour is not None:
        from dataclasses import replace

        hw = replace(hw, usd_per_hour=rec.hardware.usd_per_hour)
    return hw


def predict_recipe(rec: recipe_mod.Recipe, hw_name: Optional[str] = None, prices: Optional[Path] = None,
                   calibration=None, law: Optional[accuracy_law.AccuracyLaw] = None) -> recipe_mod.Predictions:
    """Predict accuracy and cost of ``rec``; ``calibration`` (costmodels.calibration.Calibration) refines both."""
    hw = resolve_hardware(rec, hw_name, prices)
    enc = rec.encoder.spec
    law = law or accuracy_law.default()
    if calibration is not None:  # a dataset the user's pilots fitted is predicted by its own law
        law = calibration.accuracy_law(law)
    util = calibration.utilisation(hw.name) if calibration is not None else None
    offset = calibration.offset(rec.dataset.name) if calibration is not None else 0.0

    stages = [stage_costs(enc, st, hw, grad_checkpointing=rec.train.grad_checkpointing, utilisation=util)
              for st in rec.stages]
    if calibration is not None:
        stages = [calibration.adjust_stage(sp, hw) for sp in stages]
    feats = accuracy_law.features_from_recipe(rec)
    per_stage = law.predict_stages(feats)
    for sp, p in zip(stages, per_stage):
        sp.predicted_top1 = round(p.top1 + offset, 3)
    final = law.predict(feats, offset=offset)
    version = VERSION + ("+calibrated" if calibration is not None else "")
    return recipe_mod.Predictions(
        predicted_top1=round(final.top1, 3),
        predicted_top1_interval=(round(final.low, 3), round(final.high, 3)),
        gpu_hours=sum(s.gpu_hours for s in stages),
        wall_hours=sum(s.wall_hours for s in stages),
        cost_usd=None if hw.usd_per_hour is None else sum(s.cost_usd for s in stages),
        hardware=hw.name,
        cost_model_version=version,
        stages=stages,
        extrapolation=final.extrapolation,
    )
