"""Fit a calibration (``clipa.costmodels.calibration``) to finished runs.

Throughput, per hardware name: every stage of every run gives one point (FLOPs-model seconds per
sample at 100% of peak, ``t1``; the throughput model's data-bound seconds per sample, ``d``;
measured steady-state seconds per sample, ``s``). We fit, exactly as ``predict_recipe`` then
predicts (``throughput.stage_time`` takes the slower of compute and data, the calibration adds
``c``),

    s = max(t1 / u, d) + c      (u: utilisation of peak, 0 < u <= 1; c: overhead s/sample, c >= 0)

minimising the relative squared error: a log-spaced search over ``u`` with ``c`` in closed form. The steady-state rate comes from the run's own metrics.jsonl (samples and
wall-clock between consecutive training lines, skipping the first line of a stage, which holds
warm-up, and any interval with an evaluation in it; the median interval, robust to bursts of load). Two or more points with different FLOPs
separate ``u`` from ``c``; a single configuration cannot, and then everything is put on the FLOPs
term (c = 0) and the file says so. What the loop does not explain (warm-up, checkpointing,
start-up) is split in two: ``fixed_s_per_stage``, the mean excess of a stage after a run's first
(each stage's achieved wall time minus its modelled loop and evaluations), and ``start_s_per_run``,
what the first stage and the time outside the stages add beyond it, averaged over runs (one-stage
runs put it all on the start). Evaluations are the exception: each is timed in the metrics (from the
training line at its step to its own line) and fitted as ``eval_s_per_gflop``, seconds per GFLOP of
one image's forward pass at the stage's resolution, because an evaluation encodes the whole eval set
at that resolution (demo: 1.4 s at 32 px, 7.0 s at 80 px) and a constant would carry the
calibration's resolutions to a recipe at others.

Why a per-sample term at all: for tiny models on CPU, data loading and augmentation cost about as
much per sample as the matmuls, so a FLOPs-only model fitted on one resolution mispredicts another.

Accuracy, per dataset: the offset is the mean of (achieved top-1 - law's top-1 with offset 0). A
dataset no published run saw (the demo, a user's own) also gets its own law, fitted to the runs'
final top-1 (calibrate_accuracy.py, costmodels/dataset_law.py): that law then predicts it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from clipa import rundir
from clipa.costmodels import calibration as cal_mod, flops
from clipa.errors import UserError
from clipa.report.load import Run

TOO_CLOSE = 0.05  # relative spread of t1 below which u and c are not separable


@dataclass
class Point:
    run: str
    stage: str
    t1: float  # FLOPs-model seconds per sample at 100% of peak (whole machine)
    d: float  # the throughput model's data-bound seconds per sample
    s: float  # measured steady-state seconds per sample (whole machine)
    samples: int


def steady_rate(lines: Sequence[rundir.MetricsLine], evals: Sequence[rundir.MetricsLine]) -> Optional[float]:
    """Median samples/s over the intervals between consecutive training lines, warm-up and evaluations
    excluded. The warm-up (compilation, the first allocations, filling the data pipeline) is in the
    window before a stage's first line, which no interval spans; an interval from that line on is
    steady, and a short stage may have only that one. The median, not the total: a burst of load from
    another process (a shared machine) slows a few intervals and should not move the fit."""
    lines = sorted(lines, key=lambda m: m.step)
    eval_times = [e.time_s for e in evals]
    rates = sorted((b.samples - a.samples) / (b.time_s - a.time_s) for a, b in zip(lines, lines[1:])
                   if b.time_s > a.time_s and b.samples > a.samples
                   and not any(a.time_s < t <= b.time_s for t in eval_times))
    if not rates:
        return None
    mid = len(rates) // 2
    return rates[mid] if len(rates) % 2 else 0.5 * (rates[mid - 1] + rates[mid])


def model_seconds_per_sample(run: Run, stage, hw) -> tuple[float, float]:
    """(compute seconds per sample at 100% of peak, data-bound seconds per sample), whole machine."""
    from clipa.costmodels import throughput

    # The FLOPs predict.stage_rate counts, through the same function, so the fitted utilisation means
    # the same thing in the fit and in the prediction.
    fps = flops.stage_train_flops(run.recipe.encoder.spec, stage, recompute=run.recipe.train.grad_checkpointing)
    st = throughput.time_of(fps, 1.0, hw, image_size=stage.image_size, utilisation=1.0,
                            workers=run.recipe.dataset.workers)
    return 1.0 / st.compute_samples_per_s, 1.0 / st.data_samples_per_s


def points(run: Run, hw) -> list[Point]:
    out = []
    done = {s.name: s for s in run.achieved.stages} if run.achieved else {}
    for st in run.recipe.stages:
        rate = steady_rate(run.stage_lines(st.name), run.stage_lines(st.name, "eval"))
        if rate is None and st.name in done and done[st.name].samples_per_s > 0:
            rate = done[st.name].samples_per_s
        if rate is None:
            continue
        t1, d = model_seconds_per_sample(run, st, hw)
        out.append(Point(run.name, st.name, t1, d, 1.0 / rate,
                         done[st.name].samples if st.name in done else st.samples))
    return out


def _best_c(m: Sequence[float], s: Sequence[float]) -> float:
    """argmin over c >= 0 of sum(((m + c) / s - 1)^2)."""
    num = sum((1.0 - mi / si) / si for mi, si in zip(m, s))
    return max(0.0, num / sum(1.0 / (si * si) for si in s))


def fit_throughput(pts: Sequence[Point]) -> tuple[float, float, float, Optional[str]]:
    """(u, c, relative RMS error, note) for s = max(t1/u, d) + c with 0 < u <= 1 and c >= 0."""
    if not pts:
        raise UserError("no throughput points: the runs have no training metrics")
    t1, s = [p.t1 for p in pts], [p.s for p in pts]
    separable = (max(t1) - min(t1)) / max(t1) >= TOO_CLOSE

    def fit_at(u: float) -> tuple[float, float]:
        m = [max(p.t1 / u, p.d) for p in pts]
        c = _best_c(m, s) if separable else 0.0
        return sum(((mi + c) / si - 1.0) ** 2 for mi, si in zip(m, s)), c

    grid = [10 ** (-6 + 6 * i / 3000) for i in range(3001)]  # 1e-6 .. 1, 0.2% steps
    err, u = min((fit_at(u)[0], u) for u in grid)
    c = fit_at(u)[1]
    note = None if separable else ("one configuration: utilisation and per-sample overhead not separable; "
                                   "all time put on FLOPs")
    return u, c, math.sqrt(err / len(pts)), note


def eval_points(run: Run) -> list[tuple[float, float]]:
    """(GFLOPs of one image's evaluation forward pass, measured seconds) per evaluation: the time from
    the training line logged at the evaluation's step to the evaluation's line (the loop writes the
    one, evaluates, then writes the other)."""
    enc = run.recipe.encoder.spec
    out = []
    for st in run.recipe.stages:
        train_at = {m.step: m.time_s for m in run.stage_lines(st.name)}
        for e in run.stage_lines(st.name, "eval"):
            if e.step in train_at and e.time_s > train_at[e.step]:
                out.append((flops.eval_image_flops(enc, st.image_size) / 1e9, e.time_s - train_at[e.step]))
    return out


def fit_eval(pts: Sequence[tuple[float, float]]) -> float:
    """argmin over e >= 0 of sum((e * g / d - 1)^2): seconds of one evaluation per image-forward GFLOP."""
    den = sum((g / d) ** 2 for g, d in pts)
    return sum(g / d for g, d in pts) / den if den > 0 else 0.0


def fixed_seconds(runs: Sequence[Run], u: float, c: float, e: float, hw) -> tuple[float, float]:
    """(seconds once per run, seconds per stage), at least 0: what finished runs spent beyond their
    modelled loops and evaluations, the stages after each run's first giving the per-stage part."""
    later, first = [], []
    for r in runs:
        if not r.achieved:
            continue
        enc, done = r.recipe.encoder.spec, {s.name: s.wall_seconds for s in r.achieved.stages}
        excess = []
        for st in r.recipe.stages:
            if st.name in done:
                t1, d = model_seconds_per_sample(r, st, hw)
                evals = len(r.stage_lines(st.name, "eval")) * e * flops.eval_image_flops(enc, st.image_size) / 1e9
                excess.append(done[st.name] - st.samples * (max(t1 / u, d) + c) - evals)
        later += excess[1:]
        first.append(r.achieved.wall_seconds - sum(done.values()) + (excess[0] if excess else 0.0))
    per_stage = max(0.0, sum(later) / len(later)) if later else 0.0
    return (max(0.0, sum(first) / len(first) - per_stage) if first else 0.0), per_stage


def accuracy_residual(run: Run) -> Optional[float]:
    """Achieved top-1 minus the accuracy law's (offset 0), points; None when either is missing."""
    if not run.achieved or run.achieved.top1 is None:
        return None
    from clipa.costmodels import accuracy_law

    pred = accuracy_law.default().predict(accuracy_law.features_from_recipe(run.recipe), offset=0.0)
    return run.achieved.top1 - pred.top1


def calibrate(runs: Sequence[Run], base: Optional[cal_mod.Calibration] = None) -> cal_mod.Calibration:
    """Fit throughput per hardware and accuracy offset per dataset; entries in ``base`` for other
    hardware or datasets are kept."""
    from clipa.costmodels import hardware

    finished = [r for r in runs if r.finished]
    if not finished:
        raise UserError("nothing to calibrate on: none of the runs finished (no achieved.json)")
    cal = base.model_copy(deep=True) if base else cal_mod.Calibration()
    by_hw: dict[str, list[Run]] = {}
    for r in finished:
        by_hw.setdefault(r.recipe.hardware.name, []).append(r)
    for hw_name, rs in by_hw.items():
        hw = hardware.get(hw_name)
        pts = [p for r in rs for p in points(r, hw)]
        u, c, rel, note = fit_throughput(pts)
        e = fit_eval([p for r in rs for p in eval_points(r)])
        start, per_stage = fixed_seconds(rs, u, c, e, hw)
        cal.hardware[hw_name] = cal_mod.HardwareCalibration(
            utilisation=u, overhead_s_per_sample=c, eval_s_per_gflop=e,
            start_s_per_run=start, fixed_s_per_stage=per_stage,
            points=len(pts), rel_rmse=rel, runs=[str(r.path) for r in rs], note=note)
    by_ds: dict[str, list[tuple[Run, float]]] = {}
    for r in finished:
        res = accuracy_residual(r)
        if res is not None:
            by_ds.setdefault(r.recipe.dataset.name, []).append((r, res))
    for ds, items in by_ds.items():
        res = [x for _, x in items]
        cal.datasets[ds] = cal_mod.DatasetCalibration(offset=sum(res) / len(res), runs=[str(r.path) for r, _ in items],
                                                      residuals=res, law=_dataset_law(ds, [r for r, _ in items]))
    return cal


def _dataset_law(ds: str, runs: Sequence[Run]):
    """A dataset no published run saw gets its own law, fitted to these runs (calibrate_accuracy.py)."""
    from clipa.costmodels.accuracy_model import DATASETS
    from clipa.report import calibrate_accuracy

    return None if ds in DATASETS else calibrate_accuracy.fit(runs)
