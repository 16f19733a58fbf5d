"""Pilot suites: a few scaled-down copies of a target run, costed to a share of the budget.

What a user's own data does to the accuracy law (its scale and its data-efficiency exponent,
``costmodels/dataset_law.py``) is read off how accuracy grows with samples, so the pilots differ in
samples seen: each is the target recipe with every stage's samples multiplied by one
``scale``, the scales in a fixed ratio (``RATIOS``). Keeping the target's shape (encoder, tokens,
text length, the fine-tune after pre-training, batch, learning rate) keeps each pilot's figure the
same kind of figure as the target's: the final top-1 after a fine-tune.

The largest scale is the largest one whose pilots' total predicted cost (``predict_recipe``, the
one costing path) stays within ``share`` of the budget, found by bisection on the real rounded
recipes, so the bound holds exactly as costed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from clipa import launching
from clipa.costmodels import hardware
from clipa import recipe as recipe_mod
from clipa import suite as suite_mod
from clipa.errors import UserError

DEFAULT_SHARE = 0.10  # issue 9: pilots cost at most 10% of the budget unless the user says otherwise
# Relative sizes of the pilots (largest = 1). Three points for a two-parameter fit leave one degree of
# freedom for the interval. Close together rather than spread: a small pilot sits near chance, where
# its top-1 says little (the fit weighs it accordingly), so the budget is better spent near the top.
RATIOS = (1.0, 0.75, 0.5)
LOG_LINES = 8  # training lines per stage at least, for the throughput calibration
# Held-out images a pilot is evaluated on, at most (``dataset.val_images``). A pilot is evaluated after
# each stage, and on the demo's 2,000 images those evaluations were a third of the pilots' CPU time
# (17 of 53 CPU-s, cProfile of the suite, 2026-11-30). At 1,000 the binomial noise is at most 1.6 points
# sd (at 50% top-1), and the calibration counts it: a run's noise floor is its own evaluation's.
VAL_IMAGES = 1000


@dataclass
class Pilot:
    name: str
    scale: float
    recipe: recipe_mod.Recipe


def _round(samples: float, batch: int) -> int:
    return max(batch, int(round(samples / batch)) * batch)


def scaled(target: recipe_mod.Recipe, scale: float, name: str) -> recipe_mod.Recipe:
    """``target`` with each stage's samples times ``scale`` (whole batches, at least one). The warm-up
    keeps its length (at most half the stage): it is there for the optimizer's stability, which does not
    shrink with the run (a demo pilot whose 64-px fine-tune warmed up for 1 step instead of 8 fell from
    22.2% to chance, 10.0%; measured, seed 0)."""
    stages = []
    for st in target.stages:
        n = _round(st.samples * scale, st.global_batch)
        warm = min(st.schedule.warmup_samples, n // 2)
        stages.append(st.model_copy(update={"samples": n, "schedule": st.schedule.model_copy(
            update={"warmup_samples": warm})}))
    # Each stage logs at least LOG_LINES times: its steady rate is read between log lines
    # (report/calibrate.steady_rate), and a pilot's few-step fine-tune at the target's cadence gave one.
    steps = min(st.steps for st in stages)
    log_every = max(1, min(target.train.log_every_steps, steps // LOG_LINES))
    train = target.train.model_copy(update={"checkpoint_every_samples": None, "eval_every_samples": None,
                                            "log_every_steps": log_every})
    ds = target.dataset
    ds = ds.model_copy(update={"val_images": min(ds.val_images or VAL_IMAGES, VAL_IMAGES)})
    return target.model_copy(update={"name": name, "stages": stages, "train": train, "dataset": ds, "predictions": None,
                                     "provenance": None, "notes": f"pilot of {target.name} at {scale:.4g}x its samples"})


def _suite_at(target, top: float, hw_name, prices, calibration) -> list[Pilot]:
    from clipa.costmodels.predict import predict_recipe

    out = []
    for i, r in enumerate(RATIOS):
        rec = scaled(target, top * r, f"{target.name}-pilot{i + 1}")
        rec = rec.model_copy(update={"predictions": predict_recipe(rec, hw_name, prices, calibration)})
        out.append(Pilot(rec.name, top * r, rec))
    return out


def _hours(pilots: Sequence[Pilot]) -> float:
    return sum(p.recipe.predictions.device_hours for p in pilots)


def suite_command(path, hardware_name: str) -> str:
    """How to run a suite's pilots on ``hardware_name``: the suite's command, or on a multi-host TPU slice
    (a suite runs its pilots from one host) each pilot recipe's."""
    if launching.multi_host_tpu(hardware_name):
        return (f"each pilot recipe, as a suite runs from one host and {hardware_name} has several: "
                f"{launching.launch_command('PILOT.yaml', hardware_name, 'PILOT')}")
    command = launching.launch_command(path, hardware_name, "", suite=True)
    machines = hardware.machine_count(hardware_name)
    return f"{command} (on each of the {machines} machines)" if machines > 1 else command


def design(target: recipe_mod.Recipe, budget_device_hours: float, share: float = DEFAULT_SHARE, *,
           hw_name: Optional[str] = None, prices=None, calibration=None) -> list[Pilot]:
    """The pilots of ``target``: total predicted device-hours <= ``share`` x ``budget_device_hours``."""
    if not 0 < share <= 1:
        raise UserError(f"--pilot-share: must be in (0, 1], got {share:g}")
    cap = share * budget_device_hours
    lo, hi = 0.0, 1.0 / max(RATIOS)
    smallest = _suite_at(target, 1e-12, hw_name, prices, calibration)  # one batch per stage
    if _hours(smallest) > cap:
        raise UserError(f"--pilot-share: {share:g} of the budget is {cap:.4g} device-hours, but the smallest pilots "
                        f"(one batch per stage) cost {_hours(smallest):.4g}; give a larger budget or share")
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _hours(_suite_at(target, mid, hw_name, prices, calibration)) <= cap else (lo, mid)
    return _suite_at(target, lo, hw_name, prices, calibration)


def write(pilots: Sequence[Pilot], target: recipe_mod.Recipe, out_dir: Path, *, budget_device_hours: float,
          budget_usd: Optional[float], share: float) -> Path:
    """The pilots' recipes and ``suite.yaml`` into ``out_dir``; returns the suite file's path."""
    out_dir = Path(out_dir)
    entries = []
    for p in pilots:
        recipe_mod.dump(p.recipe, out_dir / f"{p.name}.yaml", header=p.recipe.notes or "")
        entries.append(suite_mod.PilotEntry(name=p.name, recipe=f"{p.name}.yaml", scale=p.scale,
                                            predicted_device_hours=p.recipe.predictions.device_hours,
                                            predicted_cost_usd=p.recipe.predictions.cost_usd))
    suite = suite_mod.Suite(name=f"{target.name}-pilots", target=target.name, dataset=target.dataset.name,
                            hardware=pilots[0].recipe.predictions.hardware, budget_device_hours=budget_device_hours,
                            budget_usd=budget_usd, share=share, pilots=entries)
    header = (f"Pilots of {target.name}: run them with {suite_command(out_dir / 'suite.yaml', target.hardware.name)},\n"
              f"then clipa-report --calibrate RUN_DIRS... and clipa-plan --calibration FILE.")
    return suite_mod.dump(suite, out_dir / "suite.yaml", header=header)
