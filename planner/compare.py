"""One budget, several hardware targets: the best plan on each, side by side, and the pick among them.

    clipa-plan --budget 10000 --hw a100x8,h100x8,tpu-v4-64,tpu-v5e-64

Each target is planned alone (``make_plan``, the same search as a single ``--hw``); the pick is the
best by the plan's objective (the lower end of the 80% interval by default, the predicted top-1 with
``--objective mean``), then the cheaper, then the faster.
A target that cannot be planned (no price for a dollar budget, nothing fits) gets a row saying why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rich.table import Table

from clipa.costmodels import hardware, throughput
from clipa.errors import UserError
from clipa.planner import present, spot
from clipa.planner.run import PlanResult, make_plan


@dataclass
class Option:
    hw_name: str
    result: Optional[PlanResult] = None
    hw: Optional[hardware.Hardware] = None
    error: str = ""                          # why there is no plan on this hardware
    notes: list[str] = field(default_factory=list)

    def key(self, objective: str) -> tuple:
        """Sort key of a planned option: better first."""
        p = self.result.recipe.predictions
        cost = p.cost_usd if p.cost_usd is not None else float("inf")
        return (-(p.predicted_top1_interval[0] if objective == "low" else p.predicted_top1), cost, p.wall_hours)


@dataclass
class Comparison:
    options: list[Option]
    best: Option
    objective: str = "low"

    @property
    def result(self) -> PlanResult:
        return self.best.result


def hardware_list(hw: Optional[str]) -> list[str]:
    """``--hw a,b,c`` as names (each checked, duplicates dropped; default a100x8)."""
    names = list(dict.fromkeys(n.strip() for n in (hw or "a100x8").split(",")))
    if "" in names:
        raise UserError(f"--hw: empty name in {hw!r}; give names separated by commas, e.g. a100x8,h100x8")
    for n in names:
        hardware.check_name(n)
    return names


def plan_all(hw_names: list[str], *, pricing: str = "on-demand", prices=None, calibration=None,
             objective: str = "low", risk: Optional[bool] = None, **plan_kwargs) -> Comparison:
    """The best plan on each of ``hw_names`` and the pick among them. One name: ``make_plan``'s own errors
    propagate; several: a name that cannot be planned is kept with its reason, and only if none can is
    that an error. ``risk``: the old spelling of ``objective`` (True: 'low', False: 'mean')."""
    if risk is not None:
        objective = "low" if risk else "mean"
    hardware.check_pricing(pricing)
    options = []
    for name in hw_names:
        try:
            res = make_plan(hw_name=name, pricing=pricing, prices=prices, calibration=calibration, objective=objective,
                            **plan_kwargs)
        except UserError as e:
            if len(hw_names) == 1:
                raise
            options.append(Option(name, error=str(e)))
            continue
        hw = hardware.get(name, prices, pricing)
        unused = calibration.unused_note(name, res.recipe.dataset.name) if calibration is not None else None
        notes = [n for n in (throughput.uncalibrated_note(hw, calibration), unused, _held_note(calibration, res)) if n]
        if pricing == "spot":
            notes.append(spot.note(hw, res.recipe.train.checkpoint_every_minutes))
        if pricing.startswith("committed-") and hw.usd_per_hour is not None:
            notes.append(_commitment_note(hw, res.recipe.predictions.wall_hours))
        options.append(Option(name, res, hw, notes=notes))
    planned = [o for o in options if o.result is not None]
    if not planned:
        raise UserError("no hardware could be planned: " + "; ".join(f"{o.hw_name}: {o.error}" for o in options))
    return Comparison(options, min(planned, key=lambda o: o.key(objective)), objective)


def _held_note(calibration, res) -> Optional[str]:
    law = calibration.law(res.recipe.dataset.name) if calibration is not None else None
    return law.held_note() if law is not None else None


def _commitment_note(hw: hardware.Hardware, wall_hours: float) -> str:
    """What a committed-use price hides: the commitment is paid for its whole term, used or not."""
    years = int(hw.pricing.removeprefix("committed-").removesuffix("y"))
    term_hours = years * 365 * 24
    return (f"{hw.pricing} pricing on {hw.name}: ${hw.usd_per_hour:,.2f}/hour is a {years}-year commitment's "
            f"rate, billed for all {term_hours:,} hours of the term whether used or not "
            f"(${hw.usd_per_hour * term_hours:,.0f}); this run's {wall_hours:,.0f} hours of wall time are "
            f"{wall_hours / term_hours:.1%} of it, and its $ above are that share")


def _usd(x: Optional[float]) -> str:
    return "unknown" if x is None else f"{x:,.0f}"


def table(cmp: Comparison, title: str) -> Table:
    """The best plan per hardware, side by side; the pick marked with '*'."""
    t = Table(title=title, title_justify="left")
    for col in ("", "hardware", "$/hour", "price basis", "best plan", "top-1 [interval]", "wall days", "$", "throughput"):
        t.add_column(col, justify="right" if col in ("$/hour", "wall days", "$") else "left")
    for o in cmp.options:
        if o.result is None:
            t.add_row("", o.hw_name, "", "", "no plan (below)", "", "", "", "")
            continue
        p = o.result.recipe.predictions
        lo, hi = p.predicted_top1_interval
        price = "unknown" if o.hw.usd_per_hour is None else f"{o.hw.usd_per_hour:,.2f}"
        uncalibrated = any(n.startswith("throughput uncalibrated") for n in o.notes)
        t.add_row("*" if o is cmp.best else "", o.hw_name, f"{price} {o.hw.pricing}", o.hw.price_basis,
                  o.result.recipe.name, f"{p.predicted_top1:.1f} [{lo:.1f}, {hi:.1f}]", f"{p.wall_hours / 24:,.2f}",
                  _usd(p.cost_usd), "uncalibrated" if uncalibrated else "fitted")
    t.caption = (f"* picked: {cmp.best.hw_name} (highest predicted top-1{' lower bound' if cmp.objective == 'low' else ''}, then "
                 f"cheapest). Prices differ by provider, region and date (see price basis; override: --prices FILE)")
    t.caption += "".join(f"\n{o.hw_name}: {o.error}" for o in cmp.options if o.result is None)
    return t


def price_json(hw: hardware.Hardware) -> dict:
    """The price a plan on ``hw`` is costed at, and where it comes from."""
    return {"pricing": hw.pricing, "usd_per_hour": hw.usd_per_hour, "price_basis": hw.price_basis,
            "price_source": hw.price_source}


def price_line(hw: hardware.Hardware) -> str:
    """The plan's price in one line: a user's own price differs by provider, region and date."""
    if hw.usd_per_hour is None:
        return f"price: no {hw.pricing} price known for {hw.name}: costs in device-hours only"
    return (f"price: ${hw.usd_per_hour:,.2f}/hour for {hw.name} ({hw.pricing}; {hw.price_source}); "
            f"yours differs? --prices FILE")


def json_rows(cmp: Comparison) -> list[dict]:
    rows = []
    for o in cmp.options:
        row = {"hardware": o.hw_name, "picked": o is cmp.best, "error": o.error or None, "notes": o.notes}
        if o.result is not None:
            p = o.result.recipe.predictions
            row.update(**price_json(o.hw), recipe_name=o.result.recipe.name, predicted_top1=p.predicted_top1,
                       predicted_top1_interval=list(p.predicted_top1_interval), wall_hours=p.wall_hours,
                       **present.hours_json(p.device_hours), cost_usd=p.cost_usd)
        rows.append(row)
    return rows
