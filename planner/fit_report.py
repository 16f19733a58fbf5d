"""clipa-plan --fit-report: how well the cost models fit the published runs."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clipa.costmodels import accuracy_law, throughput


def show(console: Console, plot: Path, as_json: bool = False) -> dict:
    acc = accuracy_law.fit_report()
    thr = throughput.fit_report()
    plot_path = accuracy_law.plot_fit(Path(plot), rep=acc)
    report = {"accuracy_law": acc, "throughput": thr, "plot": str(plot_path)}
    if as_json:
        print(json.dumps(report, indent=2, default=float))
        return report
    params = Table(title="Accuracy law: fitted parameters", title_justify="left")
    params.add_column("parameter")
    params.add_column("value", justify="right")
    for k, v in acc["parameters"].items():
        params.add_row(k, f"{v:.4g}")
    runs = Table(title="Accuracy law: published runs", title_justify="left")
    for col in ("run", "published", "predicted", "residual", "leave-one-out"):
        runs.add_column(col, justify="left" if col == "run" else "right")
    for r in acc["runs"]:
        loo = r.get("loo_predicted")
        runs.add_row(r["name"], f"{r['published']:.1f}", f"{r['predicted']:.1f}", f"{r['residual']:+.2f}",
                     f"{loo:.1f}" if loo is not None else "")
    runs.caption = (f"{acc['n_runs']} runs; leave-one-out MAE on fine-tuned runs "
                    f"{acc['loo_mae_finetuned']:.2f} points")
    console.print(params)
    console.print(runs)
    console.print(_throughput_table(thr))
    console.print(f"plot of predicted vs published accuracy: [bold]{plot_path}[/bold]")
    return report


def _throughput_table(thr: dict) -> Table:
    t = Table(title="Throughput model: published GPU-hours", title_justify="left")
    rows = thr.get("runs", [])
    cols = list(rows[0].keys()) if rows else []
    for c in cols:
        t.add_column(str(c), justify="left" if c in ("name", "run", "hardware") else "right")
    for r in rows:
        t.add_row(*[f"{v:,.3g}" if isinstance(v, float) else str(v) for v in r.values()])
    params = {k: v for k, v in thr.items() if k != "runs"}
    t.caption = "fitted: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return t
