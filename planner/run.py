"""make_plan: budget + hardware -> the best recipe, with the cost models' predictions attached."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clipa import recipe as recipe_mod
from clipa.costmodels import hardware
from clipa.costmodels.predict import for_hardware, predict_recipe
from clipa.errors import UserError
from clipa.planner import optimize, published, spot
from clipa.planner import search_space as ss
from clipa.planner.cost_point import Budget, Context, Plan, cheapest


@dataclass
class PlanResult:
    recipe: recipe_mod.Recipe
    search: optimize.Result
    objective: str = "low"
    nearest: Optional[published.PublishedRun] = None  # the published run closest in cost, for comparison


def recipe_name(p: optimize.Plan) -> str:
    pt = p.point
    samples = f"{p.samples / 1e9:g}B" if p.samples >= 1e9 else f"{p.samples / 1e6:g}M"
    return f"{pt.encoder.replace('/', '')}-{pt.image_size()}px-{pt.image_reduction}-t{pt.text_len}{pt.text_reduction}-{samples}-ft{pt.finetune}"


FRONT_POINTS = 12  # as many as the plan's Pareto table shows


def front_points(pareto: list[Plan]) -> list[recipe_mod.FrontPoint]:
    """The plan's Pareto front as the recipe keeps it (spread evenly, both ends kept), for clipa-report."""
    from clipa.planner.present import thin

    return [recipe_mod.FrontPoint(label=f"{p.point.encoder} {p.point.side}x{p.point.side} {p.samples:.3g}",
                                  top1=p.top1, device_hours=p.device_hours, cost_usd=p.cost_usd)
            for p in thin(pareto, FRONT_POINTS)]


def _usd(x: Optional[float]) -> str:
    return "" if x is None else f"${x:,.0f} / "


def make_plan(*, budget_usd: Optional[float], device_hours: Optional[float], hw_name: str, dataset: str,
              deadline_days: Optional[float] = None, objective: str = "low", risk: Optional[bool] = None,
              prices: Optional[Path] = None, calibration=None, name: Optional[str] = None,
              quiet: bool = False, pricing: str = "on-demand", max_samples: Optional[float] = None) -> PlanResult:
    """The best recipe under the budget. ``objective``: 'low' (the lower end of the predicted 80%
    interval, default) or 'mean' (the predicted top-1); ``risk=True`` is the old spelling of 'low',
    ``risk=False`` of 'mean'; ``max_samples``: the most samples the data allows, fine-tunes included. The search is
    an exact enumeration: no seed, no trial count."""
    if risk is not None:
        objective = "low" if risk else "mean"
    hw = hardware.get(hw_name, prices, pricing)
    if budget_usd is not None:
        hw.require_price()
        if hw.usd_per_hour <= 0:
            raise UserError(f"--budget: {hw.name} costs $0/hour, so a dollar budget means nothing; give --device-hours")
    ctx = Context(
        hw=hw, dataset=dataset, objective=objective,
        budget=Budget(usd=budget_usd, device_hours=device_hours,
                      wall_hours=deadline_days * 24 if deadline_days is not None else None),
        calibration=calibration, max_samples=max_samples,
    )
    result = _search(ctx, quiet)
    if result is None:
        low = cheapest(ctx)
        raise UserError(
            f"no plan fits {ctx.budget.describe()} on {hw.name}: the cheapest plan in the search space costs "
            f"{_usd(low.cost_usd)}{low.device_hours:,.1f} device-hours / {low.wall_hours / 24:,.2f} days "
            f"({low.point.encoder}, {low.point.image_size()} px, {low.samples:,.0f} samples, "
            f"{'no fine-tune' if low.point.finetune == 'none' else 'fine-tune ' + low.point.finetune})")
    best = result.best
    rec = ss.build_recipe(best.point, best.samples, dataset=dataset, hardware=hw.name, workers=ctx.workers,
                          name=name or recipe_name(best), ft_batch=best.ft_batch,
                          grad_checkpointing=best.grad_checkpointing)
    rec = for_hardware(rec, hw)
    if pricing == "spot":
        rec = spot.apply(rec)
    preds = predict_recipe(rec, hw_name, prices, calibration)
    rec = rec.model_copy(update={"predictions": preds.model_copy(update={"front": front_points(result.pareto)})})
    nearest = published.nearest(hw_name, dataset, rec.predictions.device_hours, prices=prices, pricing=pricing,
                                calibration=calibration)
    return PlanResult(rec, result, objective, nearest)


def _search(ctx: Context, quiet: bool):
    if quiet:
        return optimize.plan(ctx)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = len(ctx.space)
    with Progress(TextColumn("searching recipes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("search", total=total)
        return optimize.plan(ctx, progress=lambda n: bar.advance(task, n))
