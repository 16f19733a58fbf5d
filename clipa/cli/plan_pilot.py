"""``clipa-plan --pilot``: write a pilot suite for a target run (planner/pilot.py) and say what it costs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clipa import recipe as recipe_mod
from clipa.costmodels import accuracy_law
from clipa.errors import UserError

DEFAULT_DIR = Path("pilots")


def _demo_recipe() -> recipe_mod.Recipe:
    import clipa.recipes

    return recipe_mod.load(Path(clipa.recipes.__file__).parent / "demo.yaml")


def _target(target: Optional[Path], dataset: str, hw: str, plan_kwargs: dict, with_data) -> recipe_mod.Recipe:
    """The run the pilots prepare: --target, the shipped demo for --dataset demo, else the plan for the budget."""
    if target is not None:
        rec = recipe_mod.load(target)
    elif dataset == "demo":
        rec = _demo_recipe()
    else:
        from clipa.planner import compare

        rec = compare.plan_all([hw], dataset=dataset, quiet=True, **plan_kwargs).result.recipe
    return with_data(rec)


def _budget_hours(rec, hw_name: str, budget: Optional[float], device_hours: Optional[float], prices, cal,
                  from_target: bool) -> float:
    """The budget in device-hours: --gpu-hours, --budget at the hardware's price, or the target's own cost."""
    from clipa.costmodels.predict import predict_recipe, resolve_hardware

    if device_hours is not None:
        return device_hours
    if budget is not None:
        hw = resolve_hardware(rec, hw_name, prices)
        hw.require_price()
        if hw.usd_per_hour <= 0:
            raise UserError(f"--budget: {hw.name} costs $0/hour, so a dollar budget means nothing; give --gpu-hours")
        return budget / hw.usd_per_hour * hw.n_devices
    if from_target:
        return predict_recipe(rec, hw_name, prices, cal).device_hours
    raise UserError("--pilot: give a budget (--budget DOLLARS or --gpu-hours HOURS) or a --target recipe")


def run(console: Console, *, target: Optional[Path], dataset: str, hw: Optional[str], budget: Optional[float],
        device_hours: Optional[float], share: float, prices, cal, out: Optional[Path], as_json: bool, plan_kwargs: dict,
        with_data) -> None:
    from clipa.costmodels.predict import for_hardware, resolve_hardware
    from clipa.planner import pilot as pilot_mod

    if hw is not None and "," in hw:
        raise UserError(f"--hw: one hardware name for --pilot, got {hw!r}")
    if target is None and dataset != "demo" and budget is None and device_hours is None:
        raise UserError("--pilot: give a budget (--budget DOLLARS or --gpu-hours HOURS) or a --target recipe")
    hw_name = hw or (recipe_mod.load(target).hardware.name if target is not None else
                     "cpu" if dataset == "demo" else "a100x8")
    rec = _target(target, dataset, hw_name, {**plan_kwargs, "budget_usd": budget, "device_hours": device_hours,
                                             "prices": prices, "calibration": cal}, with_data)
    rec = for_hardware(rec, resolve_hardware(rec, hw_name, prices))  # the pilots run, and are priced, as predicted
    hours = _budget_hours(rec, hw_name, budget, device_hours, prices, cal, target is not None or dataset == "demo")
    pilots = pilot_mod.design(rec, hours, share, hw_name=hw_name, prices=prices, calibration=cal)
    out_dir = out or DEFAULT_DIR
    path = pilot_mod.write(pilots, rec, out_dir, budget_device_hours=hours, budget_usd=budget, share=share)
    total = sum(p.recipe.predictions.device_hours for p in pilots)
    if as_json:
        print(json.dumps(recipe_mod.round_figures({
            "suite": str(path), "target": rec.name, "budget_device_hours": hours, "share": share,
            "predicted_device_hours": total,
            "pilots": [{"name": p.name, "scale": p.scale, "recipe": str(out_dir / f"{p.name}.yaml"),
                        "samples": [s.samples for s in p.recipe.stages],
                        "predicted_device_hours": p.recipe.predictions.device_hours,
                        "predicted_top1": p.recipe.predictions.predicted_top1} for p in pilots]}), indent=2))
        return
    t = Table(title=f"Pilots of {rec.name} on {hw_name}", title_justify="left")
    for col in ("pilot", "scale", "samples per stage", "device-h", "wall"):
        t.add_column(col, justify="right")
    for p in pilots:
        pr = p.recipe.predictions
        t.add_row(p.name, f"{p.scale:.4g}", " + ".join(f"{s.samples:,}" for s in p.recipe.stages),
                  f"{pr.device_hours:.4g}", f"{pr.wall_hours * 3600:,.0f} s")
    console.print(t)
    console.print(f"predicted total {total:.4g} device-hours = {100 * total / hours:.1f}% of the budget's "
                  f"{hours:.4g} (at most {100 * share:g}%)", highlight=False)
    law = accuracy_law.default() if cal is None else cal.accuracy_law(accuracy_law.default())
    if target is None and (prior := law.prior_dataset(dataset)) is not None:
        console.print(f"target: the plan for this budget under the {prior} law, your data's prior until the pilots "
                      f"calibrate it; to pilot another run: --target RECIPE", highlight=False, soft_wrap=True)
    if rec.dataset.train is not None and rec.dataset.val is None:
        console.print("[yellow]warning:[/yellow] no --val: the pilots will not measure their zero-shot top-1, so "
                      "clipa-report --calibrate can fit their throughput but not the accuracy law (add --val, "
                      "--classnames and --templates)", highlight=False, soft_wrap=True)
    console.print(f"suite written to [bold]{escape(str(path))}[/bold]; run it with: "
                  f"{escape(pilot_mod.suite_command(path, hw_name))}, then clipa-report --calibrate RUN_DIRS... and "
                  "clipa-plan --calibration FILE", soft_wrap=True)
