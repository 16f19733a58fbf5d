"""clipa-report [RUN_DIR ...]: predicted vs achieved per run and stage, plots, one HTML report.

With no RUN_DIR, reports the latest run under ./runs. Two or more runs are also put side by side.
With --calibrate, fits the throughput model (per hardware) and the accuracy law's offset (per
dataset) to the runs and writes a calibration file for `clipa-plan --calibration FILE`; a dataset no
published run saw (the demo, your own) gets its own accuracy law, fitted to the runs (pilots from
`clipa-plan --pilot`), with intervals for how few they are.

Examples:

    clipa-report                              # the latest run under ./runs
    clipa-report runs/a runs/b --no-plots     # side by side, tables only
    clipa-report --calibrate runs/a           # then: clipa-plan --calibration runs/calibration.yaml ...
    clipa-report --calibrate runs/pilots/* --no-plots --calibration-out runs/pilots/calibration.yaml
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from clipa import fs, rundir
from clipa.cli._common import entry, version_option

app = typer.Typer(name="clipa-report", add_completion=False, help=__doc__, rich_markup_mode="markdown")


def _fit(runs, out: Path):
    """The calibration of ``runs`` (on top of the file at ``out`` when there is one), or a UserError: fitted
    before the report, so that runs it cannot use stop the command before it writes anything."""
    from clipa.costmodels import calibration as cal_mod
    from clipa.report.calibrate import calibrate

    return calibrate(runs, cal_mod.load(out) if out.exists() else None)


def _write_calibration(console: Console, cal, runs, out: Path) -> None:
    from clipa.costmodels import calibration as cal_mod
    from clipa.costmodels.predict import predict_recipe
    from clipa.report.tables import fmt_hours

    cal_mod.save(cal, out)
    t = Table(title=f"calibration written to {out}", title_justify="left")
    for col in ("hardware", "utilisation", "overhead s/sample", "eval s/GFLOP", "start s/run", "fixed s/stage",
                "points", "fit rel. RMSE", "note"):
        t.add_column(col)
    for name, h in cal.hardware.items():
        t.add_row(name, f"{h.utilisation:.4f}", f"{h.overhead_s_per_sample:.3g}", f"{h.eval_s_per_gflop:.3g}",
                  f"{h.start_s_per_run:.1f}", f"{h.fixed_s_per_stage:.1f}", str(h.points), f"{100 * h.rel_rmse:.1f}%",
                  h.note or "")
    console.print(t)
    from clipa.report.calibrate_accuracy import describe

    for ds, d in cal.datasets.items():
        if d.law is not None:
            for line in describe(ds, d.law):
                console.print(line, soft_wrap=True)
        else:
            console.print(f"accuracy offset for {ds}: {d.offset:+.2f} points (from {len(d.runs)} run(s))")
    t = Table(title="wall time on the calibration runs", title_justify="left")
    for col in ("run", "predicted (before)", "predicted (calibrated)", "achieved"):
        t.add_column(col, justify="right")
    for r in runs:
        if r.achieved is None:
            continue
        before = predict_recipe(r.recipe).wall_hours
        after = predict_recipe(r.recipe, calibration=cal).wall_hours
        t.add_row(r.name, fmt_hours(before), fmt_hours(after), fmt_hours(r.achieved.wall_seconds / 3600))
    console.print(t)


@app.command(help=__doc__)
def report(
    run_dirs: Optional[List[str]] = typer.Argument(None, help="run directories, paths or URLs (gs://BUCKET/RUN) "
                                                   "(default: the latest under --root)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the PNGs and report.html (default: RUN_DIR/report; "
                                       "a local folder for a URL run directory)"),
    calibrate: bool = typer.Option(False, "--calibrate", help="fit a calibration file to these runs"),
    calibration_out: Optional[Path] = typer.Option(None, "--calibration-out",
                                                   help="calibration file (default: calibration.yaml next to the first run); updated if it exists"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="write the PNGs and the HTML report"),
    front: bool = typer.Option(True, "--front/--no-front", help="draw the accuracy/cost Pareto front the plan saved in the recipe"),
    root: Path = typer.Option(rundir.DEFAULT_ROOT, "--root", help="where to look for the latest run"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables (per run: its "
                                 "notes and rows of stage, metric, predicted, achieved, rel_err, interval, inside)"),
    version: bool = version_option(),
) -> None:
    from clipa.report import tables
    from clipa.report.load import load_run, resolve_dirs

    console = Console(highlight=False, stderr=as_json)  # with --json, stdout carries the JSON alone
    dirs = resolve_dirs(run_dirs or [], root)
    runs = [load_run(d) for d in dirs]
    cal_out = calibration_out or dirs[0].parent / "calibration.yaml"
    cal = _fit(runs, cal_out) if calibrate else None
    if not as_json:
        if len(runs) > 1:
            console.print(tables.compare_table(runs))
        for r in runs:
            for i, line in enumerate(tables.status_lines(r)):
                console.print(f"[red]{line}[/red]" if i == 0 and not r.finished else f"  {line}")
            console.print(tables.rich_run_table(r))
    page = None
    if plots:
        from clipa.report import figures, html

        out_dir = out or fs.local_dir(dirs[0], "report")
        images, notes = figures.build(runs, out_dir, front=front)
        page = html.write(runs, images, out_dir / "report.html", notes)
        console.print(f"report: {page} ({sum(len(v) for v in images.values())} figures)")
        for n in notes:
            console.print(f"[dim]{n}[/dim]")
    if cal is not None:
        _write_calibration(console, cal, runs, cal_out)
    if as_json:
        print(json.dumps({"runs": [tables.run_json(r) for r in runs], "report": str(page) if page else None,
                          "calibration": str(cal_out) if cal is not None else None}, allow_nan=False))


main = entry(app)

if __name__ == "__main__":
    main()
