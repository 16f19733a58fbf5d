"""Predicted vs achieved, as rows (plain data) and as rich tables.

Relative error is ``(predicted - achieved) / achieved``: positive means the model over-predicted.
Wall time and device-hours are compared in hours, money in US dollars, throughput in samples/s
(whole machine), MFU as a fraction of the hardware's peak FLOP/s (model FLOPs, recomputation not counted,
on both sides).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from rich.table import Table

from clipa import datasets, launching
from clipa.costmodels.calibration import top1_calibrated
from clipa.errors import UserError
from clipa.report.load import Run

METRICS = ("top-1 %", "wall", "device-h", "cost $", "samples/s", "MFU")


@dataclass
class Row:
    stage: str  # a stage name, or "total"
    metric: str  # one of METRICS
    predicted: Optional[float]
    achieved: Optional[float]
    interval: Optional[tuple[float, float]] = None  # top-1 only: the prediction's interval

    @property
    def rel_err(self) -> Optional[float]:
        if self.predicted is None or self.achieved is None or self.achieved == 0:
            return None
        return (self.predicted - self.achieved) / abs(self.achieved)

    @property
    def inside(self) -> Optional[bool]:
        if self.interval is None or self.achieved is None:
            return None
        return self.interval[0] <= self.achieved <= self.interval[1]


def peak_flops_per_device(hw_name: str) -> Optional[float]:
    """Peak FLOP/s of one device of ``hw_name`` (costmodels.hardware), or None if unknown."""
    from clipa.costmodels import hardware

    try:
        return hardware.get(hw_name).peak_flops
    except UserError:  # a name the cost models do not know: MFU is left blank, not guessed
        return None


def model_flops(run: Run, st) -> float:
    """Training FLOPs of ``st``'s samples without recomputation: what the achieved MFU in metrics.jsonl
    counts (``flops.stage_train_flops``), so predicted and achieved MFU are one quantity."""
    from clipa.costmodels import flops

    return flops.stage_train_flops(run.recipe.encoder.spec, st) * st.samples


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    return num / den if num is not None and den else None


def run_rows(run: Run) -> list[Row]:
    """Per stage then total: predicted vs achieved for every metric both sides have."""
    p, a = run.predictions, run.achieved
    peak = peak_flops_per_device(p.hardware if p else run.recipe.hardware.name)
    pstages = {s.name: s for s in (p.stages if p else [])}
    astages = {s.name: s for s in (a.stages if a else [])}
    rows: list[Row] = []
    for st in run.recipe.stages:
        ps, ach = pstages.get(st.name), astages.get(st.name)
        p_wall_s = ps.wall_hours * 3600 if ps else None
        a_cost = _ratio(a.cost_usd * ach.device_hours, a.device_hours) if a and ach and a.cost_usd is not None else None
        rows += [
            Row(st.name, "top-1 %", ps.predicted_top1 if ps else None, ach.top1 if ach else None),
            Row(st.name, "wall", ps.wall_hours if ps else None, ach.wall_seconds / 3600 if ach else None),
            Row(st.name, "device-h", ps.device_hours if ps else None, ach.device_hours if ach else None),
            Row(st.name, "cost $", ps.cost_usd if ps else None, a_cost),
            Row(st.name, "samples/s", _ratio(st.samples, p_wall_s), ach.samples_per_s if ach else None),
            Row(st.name, "MFU", _ratio(model_flops(run, st), ps.device_hours * 3600 * peak) if ps and peak else None,
                ach.mfu if ach else None),
        ]
    total_samples = sum(st.samples for st in run.recipe.stages)
    m_flops = sum(model_flops(run, st) for st in run.recipe.stages)
    rows += [
        Row("total", "top-1 %", p.predicted_top1 if p else None, a.top1 if a else None,
            interval=tuple(p.predicted_top1_interval) if p else None),
        Row("total", "wall", p.wall_hours if p else None, a.wall_seconds / 3600 if a else None),
        Row("total", "device-h", p.device_hours if p else None, a.device_hours if a else None),
        Row("total", "cost $", p.cost_usd if p else None, a.cost_usd if a else None),
        Row("total", "samples/s", _ratio(total_samples, p.wall_hours * 3600) if p else None,
            _ratio(total_samples - (a.skipped_samples if a else 0), a.wall_seconds) if a else None),
        Row("total", "MFU", _ratio(m_flops, p.device_hours * 3600 * peak) if p and peak else None,
            _ratio(m_flops, a.device_hours * 3600 * peak) if a and peak else None),
    ]
    return rows


# clipa-report --json: the metric names with their units
JSON_KEYS = {"top-1 %": "top1", "wall": "wall_hours", "device-h": "device_hours", "cost $": "cost_usd",
             "samples/s": "samples_per_s", "MFU": "mfu"}


def _finite(x: Optional[float]) -> Optional[float]:
    return x if x is None or math.isfinite(x) else None  # JSON has no NaN or infinity


def run_json(run: Run) -> dict:
    """The run's comparison as plain data (clipa-report --json): what the table and status lines say."""
    return {"run_dir": str(run.path), "name": run.name, "finished": run.finished,
            "predictions": run.predictions_source, "notes": status_lines(run),
            "rows": [{"stage": r.stage, "metric": JSON_KEYS[r.metric], "predicted": _finite(r.predicted),
                      "achieved": _finite(r.achieved), "rel_err": _finite(r.rel_err),
                      "interval": list(r.interval) if r.interval else None, "inside": r.inside}
                     for r in run_rows(run)]}


# ---------------------------------------------------------------- formatting

def fmt_hours(h: Optional[float]) -> str:
    if h is None:
        return "—"
    s = h * 3600
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if h < 72:
        return f"{h:.1f} h"
    return f"{h / 24:.1f} d"


def fmt_value(metric: str, v: Optional[float]) -> str:
    if v is None:
        return "—"
    if metric == "wall":
        return fmt_hours(v)
    if metric == "top-1 %":
        return f"{v:.2f}"
    if metric == "MFU":
        return f"{100 * v:.2f}%" if v < 0.1 else f"{100 * v:.1f}%"
    if metric == "cost $":
        return f"${v:,.2f}" if v < 100 else f"${v:,.0f}"
    if metric == "device-h":
        return f"{v:.3g}" if v < 100 else f"{v:,.0f}"
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def fmt_err(r: Row) -> str:
    e = r.rel_err
    return "—" if e is None else f"{100 * e:+.1f}%"


def fmt_interval(r: Row) -> str:
    if r.interval is None:
        return ""
    lo, hi = r.interval
    mark = "" if r.inside is None else ("inside" if r.inside else "OUTSIDE")
    return f"[{lo:.1f}, {hi:.1f}] {mark}".strip()


def rich_run_table(run: Run, rows: Optional[list[Row]] = None) -> Table:
    rows = rows if rows is not None else run_rows(run)
    p = run.predictions
    caption = (f"predictions: {run.predictions_source}" + (f", {p.cost_model_version} on {p.hardware}" if p else "")
               + ("" if run.finished else "; run unfinished: achieved figures missing"))
    t = Table(title=f"{run.name}  ({run.recipe.encoder.name}, {run.recipe.dataset.name})", caption=caption,
              title_justify="left")
    for col, just in (("stage", "left"), ("metric", "left"), ("predicted", "right"), ("achieved", "right"),
                      ("rel. err", "right"), ("interval", "left")):
        t.add_column(col, justify=just, no_wrap=col in ("metric", "interval"))
    last = None
    for r in rows:
        if last is not None and r.stage != last:
            t.add_section()
        err = fmt_err(r)
        if r.rel_err is not None and abs(r.rel_err) > 0.2:
            err = f"[yellow]{err}[/yellow]"
        interval = fmt_interval(r)
        if r.inside is False:
            interval = f"[red]{interval}[/red]"
        t.add_row(r.stage if r.stage != last else "", r.metric, fmt_value(r.metric, r.predicted),
                  fmt_value(r.metric, r.achieved), err, interval)
        last = r.stage
    return t


# Datasets with published runs behind the accuracy law; on any other, its prediction is a prior only.
LAW_DATASETS = datasets.published()


def caveat_lines(run: Run) -> list[str]:
    """What a reader must know before trusting the comparison: skipped data, a run on other devices than
    predicted for, a top-1 measured on another evaluation set than predicted, uncalibrated predictions."""
    out = []
    a = run.achieved
    if a is not None and a.skipped_samples:
        reasons = getattr(a, "skipped_reasons", None) or {}
        why = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items()))
        out.append(f"skipped samples: {a.skipped_samples:,}" + (f" ({why})" if why else ""))
    if a is not None:
        try:
            mismatch = launching.hardware_mismatch(run.recipe.hardware.name, a.n_devices, a.device, "the run trained")
        except UserError:  # hardware the cost models do not know: nothing to compare the devices with
            mismatch = None
        out += [mismatch] if mismatch else []
    p = run.predictions
    measure = datasets.eval_mismatch(run.recipe.dataset.name, a.eval_classes) if a and p else None
    out += [measure] if measure else []
    if p is not None and not top1_calibrated(p.cost_model_version) and run.recipe.dataset.name not in LAW_DATASETS:
        first = "" if run.finished else "finish the run (clipa-run resumes it; calibrating needs its top-1), then "
        out.append(f"top-1 prediction uncalibrated: no published run on dataset {run.recipe.dataset.name!r}. "
                   f"Run: {first}clipa-report --calibrate {run.path}, then clipa-plan --predict RECIPE --calibration "
                   f"{run.path.parent / 'calibration.yaml'}")
    return out


def status_lines(run: Run) -> list[str]:
    """What an unfinished run has (training now, or stopped or crashed): stages done, last metrics,
    checkpoints; and the caveats."""
    if run.finished:
        out = []
    elif run.training:
        out = [f"{run.path}: training now ({run.training})"]
    else:
        out = [f"{run.path}: unfinished or crashed run (no achieved.json)"]
    out += run.notes + caveat_lines(run)
    if run.finished:
        return out
    done = run.stages_done()
    out.append(f"stages done: {len(done)}/{len(run.recipe.stages)}" + (f" ({', '.join(done)})" if done else ""))
    tr, ev = run.last_metrics("train"), run.last_metrics("eval")
    if tr is None:
        out.append("no training metrics yet")
    else:
        target = next((s.samples for s in run.recipe.stages if s.name == tr.stage), None)
        loss = f", loss {tr.loss:.4f}" if tr.loss is not None else ""
        out.append(f"last train line: stage {tr.stage}, step {tr.step}, samples {tr.samples:,}"
                   + (f"/{target:,}" if target else "") + f"{loss}, {tr.time_s:.1f} s")
    if ev is not None and ev.top1 is not None:
        out.append(f"last eval: stage {ev.stage}, samples {ev.samples:,}, top-1 {ev.top1:.2f}%")
    out.append("checkpoints: " + (", ".join(run.checkpoints) if run.checkpoints else "none"))
    return out


# ---------------------------------------------------------------- comparison

def _flatten(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, d


def _stage_summary(st: dict) -> str:
    return f"{st['name']}: {st['samples']:,} samples, {st['image_size']} px, {st['text_len']} tokens"


def recipe_differences(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """Recipe fields (dotted paths) whose values differ between the runs; predictions and names left
    out. A stage that only some runs have is one row (its summary), not one row per field."""
    dumps = [r.recipe.model_dump(mode="json", exclude={"predictions", "name", "notes"}) for r in runs]
    n_common = min(len(d["stages"]) for d in dumps)
    flat = [dict(_flatten({**d, "stages": d["stages"][:n_common]})) for d in dumps]
    keys = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    out = [(k, [str(f.get(k, "—")) for f in flat]) for k in keys if len({str(f.get(k)) for f in flat}) > 1]
    for i in range(n_common, max(len(d["stages"]) for d in dumps)):
        out.append((f"stages[{i}]", [_stage_summary(d["stages"][i]) if i < len(d["stages"]) else "—" for d in dumps]))
    return out


def compare_table(runs: list[Run]) -> Table:
    """Runs side by side: totals as predicted -> achieved (rel. err), then the recipe fields that differ."""
    t = Table(title="comparison (totals: predicted → achieved, rel. err)", title_justify="left")
    t.add_column("")
    for r in runs:
        t.add_column(r.name, justify="right")
    per_run = [{row.metric: row for row in run_rows(r) if row.stage == "total"} for r in runs]
    for m in METRICS:
        cells = []
        for rows in per_run:
            r = rows[m]
            err = f" ({fmt_err(r)})" if r.rel_err is not None else ""
            cells.append(f"{fmt_value(m, r.predicted)} → {fmt_value(m, r.achieved)}{err}")
        t.add_row(m, *cells)
    t.add_row("status", *["finished" if r.finished else "[red]unfinished[/red]" for r in runs])
    diffs = recipe_differences(runs)
    if diffs:
        t.add_section()
        for k, vals in diffs:
            t.add_row(f"[dim]{k}[/dim]", *vals)
    return t
