"""Predictions for a whole recipe: accuracy with its interval, FLOPs, device-hours, wall time, dollars.

One costing path: ``stage_rate`` costs a stage and ``totals`` adds stages up, for ``predict_recipe``
(``clipa-plan --predict``, the plan's written predictions, clipa-run's frozen ones) and for the
planner's search points alike (``planner/cost_point.py``, on light ``StageShape``s), so a plan's
figures are those of the recipe it writes (tests/test_planner.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from clipa import recipe as recipe_mod
from clipa.costmodels import accuracy_law, flops, hardware, throughput

VERSION = "clipa-costmodels-0.2"  # 0.2: the accuracy law as a mixture of forms, with extrapolation notes


@dataclass(frozen=True)
class StageShape:
    """What a stage's cost depends on, without the rest of a ``clipa.recipe.Stage``: the light stage the
    planner costs its search points with (building a validated recipe per point would be too slow)."""

    image_size: int  # px
    mask_ratio: float  # fraction of patch tokens dropped
    text_len: int  # tokens per caption

    def image_tokens(self, enc) -> int:
        return enc.vision.kept_tokens(self.image_size, self.mask_ratio)

    @classmethod
    def of(cls, stage: recipe_mod.Stage) -> "StageShape":
        return cls(stage.image_size, stage.image_reduction.mask_ratio, stage.text_len)


@dataclass(frozen=True)
class StageRate:
    """The cost of a stage, affine in its samples ``n``: wall hours = n x ``wall_h_per_sample`` +
    ``fixed_wall_h``. The whole machine is held meanwhile, so device-hours and dollars follow the wall time."""

    train_flops_per_sample: float  # as executed (recomputation included)
    wall_h_per_sample: float
    fixed_wall_h: float  # calibrated time per stage outside the steady-state loop
    n_devices: int
    usd_per_hour: Optional[float]  # whole machine; None: no known price

    def wall_hours(self, samples: float) -> float:
        return samples * self.wall_h_per_sample + self.fixed_wall_h

    def costs(self, samples: float) -> tuple[Optional[float], float, float]:
        """(dollars, None when unpriced; device-hours; wall hours) of ``samples`` samples."""
        wall = self.wall_hours(samples)
        return (None if self.usd_per_hour is None else wall * self.usd_per_hour), wall * self.n_devices, wall


def stage_rate(enc, shape: StageShape, hw: hardware.Hardware, *, grad_checkpointing: bool,
               workers: Optional[int] = None, calibration=None, evaluations: int = 1, first: bool = False) -> StageRate:
    """How ``hw`` runs a stage of ``shape``, decoded by ``workers`` per training process (None: every host
    core, as ``throughput.decoders`` says): the throughput
    model at the calibrated utilisation (if any), plus the calibrated per-sample and per-stage overheads
    and the stage's ``evaluations`` zero-shot evaluations (``costmodels.calibration``; a planned recipe
    evaluates once, at the stage's end); the ``first`` stage of a run also carries the run's start."""
    cal = calibration
    fps = flops.stage_train_flops(enc, shape, recompute=grad_checkpointing)
    st = throughput.time_of(fps, 1.0, hw, image_size=shape.image_size, utilisation=cal and cal.utilisation(hw.name),
                            workers=workers)
    overhead_s, fixed_s = 0.0, 0.0
    if cal:
        eval_s = cal.eval_s_per_gflop(hw.name) * flops.eval_image_flops(enc, shape.image_size) / 1e9
        start_s = cal.start_s_per_run(hw.name) if first else 0.0
        overhead_s = cal.overhead_s_per_sample(hw.name)
        fixed_s = cal.fixed_s_per_stage(hw.name) + evaluations * eval_s + start_s
    return StageRate(fps, st.wall_hours + overhead_s / 3600.0, fixed_s / 3600.0, hw.n_devices, hw.usd_per_hour)


def totals(stages: Sequence[tuple[StageRate, float]]) -> tuple[Optional[float], float, float]:
    """(dollars, None when unpriced; device-hours; wall hours) of (rate, samples) stages run in turn."""
    cost, dev, wall = 0.0, 0.0, 0.0
    for rate, n in stages:
        c, d, w = rate.costs(n)
        cost = None if c is None or cost is None else cost + c
        dev, wall = dev + d, wall + w
    return cost, dev, wall


def resolve_hardware(rec: recipe_mod.Recipe, hw_name: Optional[str] = None,
                     prices: Optional[Path] = None) -> hardware.Hardware:
    """The hardware to cost on: ``hw_name`` if given, else the recipe's. Its price: a ``prices`` file's, else the
    recipe's own ``hardware.usd_per_hour`` (on the recipe's hardware), else the cost models'."""
    hw = hardware.get(hw_name or rec.hardware.name, prices, rec.hardware.pricing)
    own = rec.hardware.usd_per_hour
    if own is not None and hw.name == rec.hardware.name and not hw.price_given:
        hw = replace(hw, usd_per_hour=own, price_source="the recipe's hardware.usd_per_hour",
                     price_basis="the recipe's price")
    return hw


def for_hardware(rec: recipe_mod.Recipe, hw: hardware.Hardware) -> recipe_mod.Recipe:
    """``rec`` to run on ``hw``, with the pricing kind and $/hour its predictions use written in: clipa-run
    takes no --prices, and the run's achieved cost must be at the price it is compared with."""
    spec = rec.hardware.model_copy(update={"name": hw.name, "pricing": hw.pricing, "usd_per_hour": hw.usd_per_hour})
    return rec.model_copy(update={"hardware": spec})


def _stage_prediction(enc, stage: recipe_mod.Stage, rate: StageRate) -> recipe_mod.StagePrediction:
    cost, device_hours, wall_hours = rate.costs(stage.samples)
    return recipe_mod.StagePrediction(
        name=stage.name, image_size=stage.image_size, image_tokens=stage.image_tokens(enc), text_len=stage.text_len,
        samples=stage.samples, train_flops_per_sample=rate.train_flops_per_sample,
        train_flops=rate.train_flops_per_sample * stage.samples, device_hours=device_hours, wall_hours=wall_hours,
        cost_usd=cost)


def predict_recipe(rec: recipe_mod.Recipe, hw_name: Optional[str] = None, prices: Optional[Path] = None,
                   calibration=None, law: Optional[accuracy_law.AccuracyLaw] = None) -> recipe_mod.Predictions:
    """Predict accuracy and cost of ``rec``; ``calibration`` (costmodels.calibration.Calibration) refines both."""
    hw = resolve_hardware(rec, hw_name, prices)
    enc = rec.encoder.spec
    law = law or accuracy_law.default()
    if calibration is not None:  # a dataset the user's pilots fitted is predicted by its own law
        law = calibration.accuracy_law(law)
    offset = calibration.offset(rec.dataset.name) if calibration is not None else 0.0

    rates = [stage_rate(enc, StageShape.of(st), hw, grad_checkpointing=rec.train.grad_checkpointing,
                        workers=rec.dataset.workers, calibration=calibration,
                        evaluations=st.evaluations(rec.train.eval_every_samples), first=i == 0)
             for i, st in enumerate(rec.stages)]
    stages = [_stage_prediction(enc, st, r) for st, r in zip(rec.stages, rates)]
    cost, device_hours, wall_hours = totals([(r, st.samples) for st, r in zip(rec.stages, rates)])
    feats = accuracy_law.features_from_recipe(rec)
    per_stage = law.predict_stages(feats)
    for sp, p in zip(stages, per_stage):
        sp.predicted_top1 = round(p.top1 + offset, 3)
    final = law.predict(feats, offset=offset)
    version = VERSION + (calibration.version_suffix(hw.name, rec.dataset.name) if calibration is not None else "")
    return recipe_mod.Predictions(
        predicted_top1=round(final.top1, 3),
        predicted_top1_interval=(round(final.low, 3), round(final.high, 3)),
        device_hours=device_hours,
        wall_hours=wall_hours,
        cost_usd=cost,
        hardware=hw.name,
        cost_model_version=version,
        stages=stages,
        extrapolation=final.extrapolation,
        recipe_digest=rec.digest(),
    )
