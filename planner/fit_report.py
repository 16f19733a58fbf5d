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
    for t in accuracy_tables(acc):
        console.print(t)
    console.print(_throughput_table(thr))
    console.print(f"plot of predicted vs published accuracy: [bold]{plot_path}[/bold]")
    return report


def accuracy_tables(acc: dict) -> list[Table]:
    """The accuracy law's forms and weights, its held-out validation, and the published runs."""
    shown = ("A", "alpha", "beta", "gamma", "gamma_t", "ct", "keep")  # the shape parameters (--json: all)
    forms = Table(title="Accuracy law: forms (weights from held-out predictions)", title_justify="left")
    for col in ("form (size/dataset/tokens)", "weight", "sigma", "AICc", *shown):
        forms.add_column(col, justify="left" if col.startswith("form") else "right")
    for f in sorted(acc["forms"], key=lambda f: -f["weight"]):
        forms.add_row(f["name"], f"{f['weight']:.3f}", f"{f['sigma']:.2f}", f"{f.get('aicc', float('nan')):.1f}",
                      *[f"{f['parameters'][k]:.3g}" for k in shown])
    forms.caption = (f"weights and kappa ({acc['kappa']:.2f} points per log unit outside the CLIPA runs): "
                     f"{acc['weights_from']}")
    val = Table(title="Accuracy law: predictions of runs the refit never saw", title_justify="left")
    for col in ("held out", "runs", "n", "MAE", "bias", "inside 80%", "median half-width"):
        val.add_column(col, justify="left" if col in ("held out", "runs") else "right")
    names = {"loo": "leave-one-out", "loeo": "leave-one-encoder-out", "lodo": "leave-one-dataset-out"}
    for t in acc["validation"]:
        label = names[t["kind"]] + ("" if t["kind"] == "loo" else f": {t['fold']}")
        for who in ("all", "clipa"):
            x = t[who]
            if x["n"] and not (who == "clipa" and x["n"] == t["all"]["n"]):
                val.add_row(label, who, str(x["n"]), f"{x['mae']:.2f}", f"{x['bias']:+.2f}",
                            f"{x['inside']} ({x['coverage']:.0%})", f"{x['median_half_width']:.2f}")
    val.caption = ("each row refits every form without the runs held out (an encoder: all its runs and its "
                   "published drops) and predicts them; bias = predicted - published, points")
    runs = Table(title="Accuracy law: published runs", title_justify="left")
    for col in ("run", "published", "predicted", "residual", "leave-one-out [80%]"):
        runs.add_column(col, justify="left" if col == "run" else "right")
    for r in acc["runs"]:
        loo, iv = r.get("loo_predicted"), r.get("loo_interval")
        runs.add_row(r["name"], f"{r['published']:.1f}", f"{r['predicted']:.1f}", f"{r['residual']:+.2f}",
                     f"{loo:.1f} [{iv[0]:.1f}, {iv[1]:.1f}]" if loo is not None else "")
    runs.caption = (f"{acc['n_runs']} runs; leave-one-out MAE on fine-tuned CLIPA runs "
                    f"{acc['loo_mae_finetuned']:.2f} points")
    return [forms, val, runs]


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
