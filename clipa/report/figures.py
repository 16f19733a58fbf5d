"""What goes into each picture: gathers the data (runs, the planner front saved in the recipe, published
runs, the law's fit) and calls ``plots``. Predictions and fronts are read as frozen in the run's recipe,
never recomputed; anything missing there is left out with a note, never faked.
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


def _front(runs: Sequence[Run], notes: list[str], front: bool) -> tuple[list, str]:
    """The Pareto front the first run's plan saved with its predictions (clipa-plan writes it into the
    recipe), as planned: the report never re-plans."""
    if not front:
        return [], "published runs"
    base = next((r for r in runs if r.predictions is not None and r.predictions.front), None)
    if base is None:
        notes.append("no planner front: no run's recipe carries one (recipes written by clipa-plan do)")
        return [], "published runs (no planner front)"
    hw, dataset = base.recipe.hardware.name, base.recipe.dataset.name
    pts = [(f.cost_usd, f.top1, f.label) for f in base.predictions.front if f.cost_usd]
    if not pts:
        notes.append(f"no planner front in dollars: {hw} has no price")
        return [], "published runs (no planner front)"
    return pts, f"the front {base.name}'s plan saved for {hw}, {dataset}"


def _law_rows() -> tuple[list[tuple[str, float, float, Optional[float]]], str]:
    """(run, published top-1, fitted top-1, leave-one-out top-1) from the accuracy law's fit report."""
    from clipa.costmodels import accuracy_law

    rep = accuracy_law.fit_report()
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
    front_pts, front_title = _front(runs, notes, front)
    chosen = []
    for r in runs:
        if r.predictions is not None:
            a = r.achieved
            chosen.append((r.name, r.predictions.cost_usd, r.predictions.predicted_top1,
                           a.cost_usd if a else None, a.top1 if a else None))
    p = plots.pareto(front_pts, chosen, published, out_dir / "pareto.png", title=f"accuracy vs cost: {front_title}")
    if p:
        images["Accuracy / cost"].append(p)
    law_rows, summary = _law_rows()
    p = plots.residuals(law_rows, out_dir / "law_residuals.png",
                        title=f"accuracy law on the published runs: predicted - published\n{summary}")
    if p:
        images["Accuracy law residuals"].append(p)
    return images, notes
