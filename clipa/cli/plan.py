"""clipa-plan: from a budget and a hardware target to the CLIPA recipe predicted to be most accurate.

    clipa-plan --budget 10000 --hw a100x8            # dollars
    clipa-plan --gpu-hours 2000 --hw tpu-v4-64       # device-hours
    clipa-plan --predict recipes/published/clipa_v2_h14_datacomp_70_224.yaml --json
    clipa-plan --fit-report
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from clipa import recipe as recipe_mod
from clipa.cli._common import entry
from clipa.errors import UserError

app = typer.Typer(name="clipa-plan", add_completion=False, help=__doc__, rich_markup_mode=None)
DATASETS = tuple(d for d in recipe_mod.DATASETS if d != "custom")  # a plan needs a dataset the law knows


@app.command()
def plan(
    budget: Optional[float] = typer.Option(None, help="budget in dollars for the whole recipe"),
    gpu_hours: Optional[float] = typer.Option(None, help="budget in device-hours (GPU or TPU chip)"),
    hw: Optional[str] = typer.Option(None, help="hardware: a100x8 (default), a100-40gbx8, h100x8, tpu-v4-64, cpu, ...; "
                                     "with --predict, default: the recipe's"),
    dataset: str = typer.Option("datacomp-1b", help="laion-400m | laion-2b | datacomp-1b | demo"),
    deadline: Optional[float] = typer.Option(None, help="wall-clock deadline in days"),
    seed: int = typer.Option(0, help="search seed (the plan is deterministic for a seed)"),
    risk: bool = typer.Option(False, "--risk", help="maximise the lower end of the predicted interval"),
    trials: int = typer.Option(200, min=1, help="Optuna trials"),
    out: Path = typer.Option(Path("recipes/generated.yaml"), help="where to write the recipe"),
    name: Optional[str] = typer.Option(None, help="recipe name (default: derived from the plan)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
    prices: Optional[Path] = typer.Option(None, help="YAML file overriding hardware prices/peaks"),
    calibration: Optional[Path] = typer.Option(None, help="calibration file from clipa-report --calibrate"),
    predict: Optional[Path] = typer.Option(None, help="predict an existing recipe instead of planning"),
    fit_report: bool = typer.Option(False, "--fit-report", help="print the cost models' fits and plot them"),
    plot: Path = typer.Option(Path("fit_report.png"), help="--fit-report: where to write the plot"),
) -> None:
    # Piped output gets a wide table instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    if fit_report:
        from clipa.planner.fit_report import show

        show(console, plot, as_json=as_json)
        return
    from clipa.costmodels import calibration as calib_mod
    from clipa.costmodels.predict import predict_recipe
    from clipa.planner import present

    cal = calib_mod.load(calibration) if calibration else None
    if predict is not None:
        rec = recipe_mod.load(predict)
        rec = rec.model_copy(update={"predictions": predict_recipe(rec, hw, prices, cal)})
        _emit(console, rec, str(predict), as_json, f"Predictions for {predict}")
        return

    from clipa.planner.run import make_plan

    if budget is None and gpu_hours is None:
        raise UserError("give a budget: --budget DOLLARS or --gpu-hours HOURS")
    if dataset not in DATASETS:
        raise UserError(f"--dataset: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    for flag, v in (("--budget", budget), ("--gpu-hours", gpu_hours), ("--deadline", deadline)):
        if v is not None and v <= 0:
            raise UserError(f"{flag}: must be positive, got {v:g}")
    result = make_plan(budget_usd=budget, gpu_hours=gpu_hours, hw_name=hw or "a100x8", dataset=dataset, deadline_days=deadline,
                       seed=seed, risk=risk, trials=trials, prices=prices, calibration=cal, name=name,
                       quiet=as_json)
    path = recipe_mod.dump(result.recipe, out)
    if as_json:
        obj = present.prediction_json(result.recipe, str(path))
        obj["alternatives"] = [present.plan_json(p) for p in result.search.alternatives]
        obj["pareto"] = [present.plan_json(p) for p in result.search.pareto]
        print(json.dumps(obj, indent=2))
        return
    present.print_tables(
        console,
        present.stage_table(result.recipe, f"Best plan: {result.recipe.name}"),
        present.plans_table(result.search.alternatives, "Top alternatives"),
        present.plans_table(present.thin(result.search.pareto, 12), "Accuracy/cost Pareto front (sampled)"),
    )
    console.print(f"recipe written to [bold]{path}[/bold]; launch it with: clipa-run {path}")


def _emit(console: Console, rec, path: str, as_json: bool, title: str) -> None:
    from clipa.planner import present

    if as_json:
        print(json.dumps(present.prediction_json(rec, path), indent=2))
    else:
        present.print_tables(console, present.stage_table(rec, title))


main = entry(app)

if __name__ == "__main__":
    main()
