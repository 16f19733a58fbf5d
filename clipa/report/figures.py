"""What goes into each picture: gathers the data (runs, planner front, published runs, the law's
fit) and calls ``plots``. Anything a cost model cannot provide is left out with a note, never faked.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional, Sequence

from clipa.report import plots
from clipa.report.load import Run

PUBLISHED_RESULTS = "ext_clipa_results.csv"  # CLIPA-v2 paper Table 4 et al. (est. cost in $, top-1 in %)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def published_runs() -> list[tuple[float, float, str]]:
    """(cost $, top-1 %, label) of every published run with a stated dollar cost, duplicates once."""
    from clipa import costmodels

    path = Path(costmodels.__file__).resolve().parent / "data" / PUBLISHED_RESULTS
    out, seen = [], set()
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            try:
                cost, top1 = float(r["est_cost_usd"]), float(r["in1k_zeroshot_top1"])
            except ValueError:
                continue
            key = (r["dataset"], top1, round(cost, -2))
            if key in seen:
                continue
            seen.add(key)
            sched = r["schedule_as_written"].replace("^2", "").replace(" ", "")
            out.append((cost, top1, f"{r['model']} {r['dataset']} {sched}"))
    out.sort()
    return out


def published_recipes_predicted() -> list[tuple[float, float, str]]:
    """predict_recipe over recipes/published/*.yaml: (predicted cost $, predicted top-1, name)."""
    from clipa import recipe as recipe_mod
    from clipa import recipes
    from clipa.costmodels.predict import predict_recipe

    out = []
    for path in sorted((Path(recipes.__file__).resolve().parent / "published").glob("*.yaml")):
        p = predict_recipe(recipe_mod.load(path))
        out.append((p.cost_usd, p.predicted_top1, path.stem))
    return out


def planner_front(run: Run, budget_usd: float, n_trials: int = 60) -> list[tuple[float, float, str]]:
    """The planner's accuracy/cost front for the run's hardware and dataset, up to ``budget_usd``."""
    from clipa.costmodels import hardware
    from clipa.planner.cost_point import Budget, Context
    from clipa.planner.optimize import plan

    ctx = Context(hw=hardware.get(run.recipe.hardware.name), dataset=run.recipe.dataset.name,
                  budget=Budget(usd=budget_usd))
    res = plan(ctx, n_trials=n_trials)
    if res is None:
        return []
    return [(p.cost_usd, p.top1, f"{p.point.encoder} {p.point.side}x{p.point.side}") for p in res.pareto]


def _front(runs: Sequence[Run], published, notes: list[str], front: bool) -> tuple[list, str]:
    """The planner's front for the first run with predictions, else the published recipes' predictions."""
    if front:
        base = next((r for r in runs if r.predictions is not None), None)
        if base is not None and not base.predictions.cost_usd:
            notes.append(f"no planner front: {base.recipe.hardware.name} has no price, so no accuracy/cost front")
        elif base is not None:
            budget = max([base.predictions.cost_usd * 2] + [c for c, _, _ in published])
            try:
                pts = planner_front(base, budget)
                if pts:
                    return pts, (f"planner front for {base.recipe.hardware.name}, {base.recipe.dataset.name}, "
                                 f"up to ${budget:,.0f}")
                notes.append(f"the planner found no plan for {base.recipe.hardware.name}/{base.recipe.dataset.name}")
            except Exception as e:  # the planner is optional here: report without its front, say why
                notes.append(f"planner front unavailable ({type(e).__name__}: {e})")
    return [], "published recipes as predicted (no planner front)"


def _law_rows(notes: list[str]) -> tuple[list[tuple[str, float, float, Optional[float]]], str]:
    """(run, published top-1, fitted top-1, leave-one-out top-1) from the accuracy law's fit report."""
    try:
        from clipa.costmodels import accuracy_law

        rep = accuracy_law.fit_report()
    except Exception as e:  # the law is optional for the report: draw the rest, say why
        notes.append(f"accuracy-law residuals unavailable ({type(e).__name__}: {e})")
        return [], ""
    rows = [(f"{r['name']} [{r['family']}]", float(r["published"]), float(r["predicted"]), r.get("loo_predicted"))
            for r in rep.get("runs", [])]
    summary = (f"in-sample MAE {rep['mae_in_sample']:.2f}, leave-one-out MAE {rep['loo_mae_all']:.2f} points "
               f"({rep['n_runs']} runs)") if rows else ""
    return rows, summary


def build(runs: Sequence[Run], out_dir: Path, *, front: bool = True) -> tuple[dict[str, list[Path]], list[str]]:
    """Write every PNG under ``out_dir``; return {section title: [png, ...]} and notes on what is missing."""
    notes: list[str] = []
    images: dict[str, list[Path]] = {"Training curves": [], "Predicted vs achieved": [],
                                     "Accuracy / cost": [], "Accuracy law residuals": []}
    for r in runs:
        p = plots.curves(r, out_dir / f"curves_{_safe(r.name)}.png")
        if p:
            images["Training curves"].append(p)
        else:
            notes.append(f"{r.name}: no metrics to plot")
    p = plots.scatter(runs, out_dir / "predicted_vs_achieved.png")
    if p:
        images["Predicted vs achieved"].append(p)

    published = published_runs()
    try:
        predicted_pub = published_recipes_predicted()
    except Exception as e:  # cost models still missing: draw without them, say why
        predicted_pub = []
        notes.append(f"published recipes not predicted ({type(e).__name__}: {e})")
    front_pts, front_title = _front(runs, published, notes, front)
    chosen = []
    for r in runs:
        if r.predictions is not None:
            a = r.achieved
            chosen.append((r.name, r.predictions.cost_usd, r.predictions.predicted_top1,
                           a.cost_usd if a else None, a.top1 if a else None))
    p = plots.pareto(front_pts, chosen, published, out_dir / "pareto.png", title=f"accuracy vs cost: {front_title}",
                     predicted_published=predicted_pub)
    if p:
        images["Accuracy / cost"].append(p)
    law_rows, summary = _law_rows(notes)
    p = plots.residuals(law_rows, out_dir / "law_residuals.png",
                        title=f"accuracy law on the published runs: predicted - published\n{summary}")
    if p:
        images["Accuracy law residuals"].append(p)
    return images, notes
