"""clipa-report's tables and run loading, on run directories written by the test."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from report_rundirs import demo_recipe, write_run

from clipa.cli._common import run_app
from clipa.cli.report import app
from clipa import rundir
from clipa.costmodels import hardware
from clipa.errors import UserError
from clipa.report import tables
from clipa.report.load import load_run


def _row(rows, stage, metric):
    return next(r for r in rows if r.stage == stage and r.metric == metric)


def test_rows_compare_stored_predictions_with_achieved(tmp_path):
    run = load_run(write_run(tmp_path / "a", demo_recipe(), top1=25.0, stage_wall=(45.0, 27.0), total_wall=80.0))
    assert run.predictions_source == "recipe"
    rows = tables.run_rows(run)
    top = _row(rows, "total", "top-1 %")
    assert (top.predicted, top.achieved, top.interval) == (20.0, 25.0, (10.0, 30.0))
    assert top.inside is True
    assert top.rel_err == pytest.approx((20.0 - 25.0) / 25.0)
    wall = _row(rows, "total", "wall")
    assert wall.predicted == pytest.approx(0.02) and wall.achieved == pytest.approx(80.0 / 3600)
    assert wall.rel_err == pytest.approx((0.02 * 3600 - 80.0) / 80.0)
    # per stage: predicted samples/s = samples / predicted wall seconds; cost split by device-hours
    sps = _row(rows, "pretrain", "samples/s")
    assert sps.predicted == pytest.approx(4000 / 36.0) and sps.achieved == pytest.approx(4000 / 45.0)
    cost = _row(rows, "finetune", "cost $")
    assert cost.achieved == pytest.approx(2.0 * 80.0 / 3600 * 27.0 / 80.0)
    assert _row(rows, "pretrain", "top-1 %").achieved == 20.0


def test_predicted_and_achieved_mfu_count_the_same_flops(tmp_path):
    """The report's predicted MFU and the training loop's achieved MFU (metrics.jsonl) are one function
    of samples/s: with recomputation on and a masked stage (where counts used to differ) they agree."""
    from clipa import recipe as recipe_mod
    from clipa.backends import runstate

    d = demo_recipe("m").model_dump(mode="json")
    d["train"]["grad_checkpointing"] = True
    d["stages"][1]["image_reduction"] = {"kind": "random_mask", "mask_ratio": 0.5}
    rec = recipe_mod.from_dict(d)
    run = load_run(write_run(tmp_path / "m", rec))
    rows = tables.run_rows(run)
    loop_mfu = runstate.mfu_fn(rec, hardware.get("cpu").n_devices)
    for st, ps in zip(rec.stages, rec.predictions.stages):
        predicted_sps = st.samples / (ps.wall_hours * 3600)
        assert _row(rows, st.name, "MFU").predicted == pytest.approx(loop_mfu(st, predicted_sps), rel=1e-12)


def test_the_report_plots_the_front_the_plan_saved_and_recomputes_nothing(tmp_path):
    """Predictions and the Pareto front come from the run's recipe as written before training: clipa-report
    imports neither the planner nor predict_recipe."""
    d = demo_recipe("f", hardware="a100x8").model_dump(mode="json")
    d["predictions"]["front"] = [{"label": "B/16 4x4 1e+08", "top1": 40.0, "device_hours": 10.0, "cost_usd": 20.0},
                                 {"label": "L/16 6x6 4e+08", "top1": 55.0, "device_hours": 90.0, "cost_usd": 180.0}]
    from clipa import recipe as recipe_mod

    run_dir = write_run(tmp_path / "f", recipe_mod.from_dict(d))
    code = ("import sys; from pathlib import Path; from clipa.report import figures; from clipa.report.load import load_run; "
            f"imgs, notes = figures.build([load_run({str(run_dir)!r})], Path({str(tmp_path / 'out')!r})); "
            "bad = [m for m in ('clipa.planner.optimize', 'clipa.costmodels.predict') if m in sys.modules]; "
            "assert not bad, bad; assert not [n for n in notes if 'front' in n], notes; print(imgs['Accuracy / cost'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "pareto.png" in r.stdout


def test_a_run_without_a_price_reports_its_cost_as_unknown(tmp_path, capsys):
    # the premise: no cited spot price for a100x8 (the only A100 spot quotes price whole VMs)
    assert hardware.get("a100x8", pricing="spot").usd_per_hour is None
    rec = demo_recipe(hardware="a100x8", usd_per_hour=None, predictions=False, pricing="spot")
    d = write_run(tmp_path / "a100-spot", rec, usd_per_hour=None)
    rows = tables.run_rows(load_run(d))
    assert _row(rows, "total", "cost $").achieved is None and _row(rows, "finetune", "cost $").achieved is None
    assert _row(rows, "total", "top-1 %").achieved == 25.0
    code = run_app(app, [str(d), "--out", str(tmp_path / "report")])  # with plots
    out = capsys.readouterr()
    assert code == 0 and "Traceback" not in out.out + out.err
    assert "$0.00" not in out.out  # unknown, never shown as free


def test_achieved_outside_interval_is_flagged(tmp_path):
    run = load_run(write_run(tmp_path / "a", demo_recipe(), top1=31.0))
    top = _row(tables.run_rows(run), "total", "top-1 %")
    assert top.inside is False
    assert "OUTSIDE" in tables.fmt_interval(top)


def test_unfinished_run_reports_what_it_has(tmp_path, capsys):
    d = write_run(tmp_path / "crashed", demo_recipe(), finished=False, stop_after=2000,
                  checkpoints=("step_000040",))
    run = load_run(d)
    assert not run.finished and run.stages_done() == []
    lines = tables.status_lines(run)
    assert "unfinished" in lines[0]
    assert any("stages done: 0/2" in s for s in lines)
    assert any("samples 2,000/4,000" in s for s in lines)
    assert any("step_000040" in s for s in lines)
    code = run_app(app, [str(d), "--no-plots"])
    out = capsys.readouterr()
    assert code == 0
    assert "unfinished" in out.out and "Traceback" not in out.out + out.err


def test_json_carries_the_comparison_and_nothing_else_on_stdout(tmp_path):
    """For scripts and CI: one JSON object with what the tables and status lines say, units in the keys."""
    done = write_run(tmp_path / "done", demo_recipe(name="done"), top1=31.0, total_wall=80.0)
    crashed = write_run(tmp_path / "crashed", demo_recipe(name="crashed"), finished=False, stop_after=2000)
    p = subprocess.run([sys.executable, "-m", "clipa.cli.report", str(done), str(crashed), "--json",
                        "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    obj = json.loads(p.stdout)                                  # stdout is the JSON alone
    assert obj["report"] == str(tmp_path / "report" / "report.html") and obj["calibration"] is None
    a, b = obj["runs"]
    assert (a["name"], a["finished"], b["finished"]) == ("done", True, False)
    top = next(r for r in a["rows"] if (r["stage"], r["metric"]) == ("total", "top1"))
    assert top == {"stage": "total", "metric": "top1", "predicted": 20.0, "achieved": 31.0,
                   "rel_err": pytest.approx((20.0 - 31.0) / 31.0), "interval": [10.0, 30.0], "inside": False}
    wall = next(r for r in a["rows"] if (r["stage"], r["metric"]) == ("total", "wall_hours"))
    assert wall["achieved"] == pytest.approx(80.0 / 3600)
    assert {r["metric"] for r in a["rows"]} == set(tables.JSON_KEYS.values())
    assert "unfinished" in b["notes"][0] and any("stages done: 0/2" in n for n in b["notes"])
    assert all(r["achieved"] is None for r in b["rows"] if r["stage"] == "total")


def test_not_a_run_dir_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        load_run(tmp_path / "empty")
    (tmp_path / "recipe.yaml").write_text("name: x\n")  # a file given where a run directory goes
    with pytest.raises(UserError, match=r"recipe.yaml: not a run directory \(a file\)"):
        load_run(tmp_path / "recipe.yaml")
    # the installed entry point, as a user calls it
    exe = Path(sys.executable).parent / "clipa-report"
    p = subprocess.run([str(exe), str(tmp_path / "empty")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "not a run directory" in p.stderr
    assert "Traceback" not in p.stderr


def test_two_runs_side_by_side_show_the_recipe_difference(tmp_path, capsys):
    a = write_run(tmp_path / "syntax", demo_recipe("s", text_reduction="syntax"), top1=26.0)
    b = write_run(tmp_path / "trunc", demo_recipe("t", text_reduction="truncate"), top1=22.0)
    diffs = dict(tables.recipe_differences([load_run(a), load_run(b)]))
    assert diffs == {"stages[0].text_reduction": ["syntax", "truncate"]}
    assert run_app(app, [str(a), str(b), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "comparison" in out and "syntax" in out and "truncate" in out


def test_latest_run_is_the_default(tmp_path, capsys, monkeypatch):
    import os
    import time

    old = write_run(tmp_path / "runs" / "old", demo_recipe("old"))
    new = write_run(tmp_path / "runs" / "new", demo_recipe("new"))
    past = time.time() - 100
    os.utime(old, (past, past))
    monkeypatch.chdir(tmp_path)
    assert run_app(app, ["--no-plots"]) == 0
    out = capsys.readouterr().out
    assert new.name in out and "old" not in out
    monkeypatch.chdir(tmp_path / "runs")
    assert run_app(app, ["--no-plots"]) == 2  # no ./runs here


@pytest.mark.parametrize("device,n,said", [
    ("cpu", 1, "the run trained on cpu (1 process)"),
    ("NVIDIA A100-SXM4-80GB", 1, "the run trained on 1 x NVIDIA A100-SXM4-80GB"),
    ("NVIDIA A100-SXM4-80GB", 8, "the run trained on 8 x NVIDIA A100-SXM4-80GB"),       # an H100 plan on A100s
    ("NVIDIA H100 80GB HBM3", 8, None),
    ("NVIDIA H200", 8, None),                                                         # the H100's dense peak
])
def test_report_says_when_the_run_trained_on_other_devices_than_predicted_for(tmp_path, device, n, said):
    d = write_run(tmp_path / "run", demo_recipe(hardware="h100x8"))
    a = rundir.read_achieved(d).model_dump()
    a.update(device=device, n_devices=n)
    rundir.write_achieved(d, rundir.Achieved.model_validate(a))
    lines = [s for s in tables.status_lines(load_run(d)) if s.startswith("the recipe is planned for")]
    assert lines == ([] if said is None else [f"the recipe is planned for h100x8 (8 x H100-80GB) and {said}: its "
                     "predicted time and cost, and the per-device batch its memory plan assumed, are for h100x8; "
                     "on that machine: clipa-run ... --nproc 8"])


def test_a_run_on_fewer_machines_than_planned_says_so_and_how_to_launch_on_all(tmp_path):
    d = write_run(tmp_path / "run", demo_recipe(hardware="a100x32"))
    a = rundir.read_achieved(d).model_dump()
    a.update(device="NVIDIA A100-SXM4-80GB", n_devices=8)         # one machine of the four
    rundir.write_achieved(d, rundir.Achieved.model_validate(a))
    assert ("the recipe is planned for a100x32 (32 x A100-80GB) and the run trained on 8 x NVIDIA A100-SXM4-80GB: "
            "its predicted time and cost, and the per-device batch its memory plan assumed, are for a100x32; on those "
            "machines: clipa-run ... --slurm --nodes 4 --gpus-per-node 8") in tables.status_lines(load_run(d))
    a.update(n_devices=32)
    rundir.write_achieved(d, rundir.Achieved.model_validate(a))
    assert not any(s.startswith("the recipe is planned for") for s in tables.status_lines(load_run(d)))


def test_report_names_skipped_samples_and_uncalibrated_predictions(tmp_path):
    d = write_run(tmp_path / "run", demo_recipe())
    a = rundir.read_achieved(d).model_dump()
    a.update(skipped_samples=7, skipped_reasons={"corrupt_shard": 5, "empty_caption": 2})
    rundir.write_achieved(d, rundir.Achieved.model_validate(a))
    lines = tables.status_lines(load_run(d))
    assert "skipped samples: 7 (corrupt_shard 5, empty_caption 2)" in lines
    hint = next(s for s in lines if "uncalibrated" in s)
    assert "'demo'" in hint and f"clipa-report --calibrate {d}" in hint
    # a dataset the law was fitted on, or a calibrated prediction, carries no such caveat
    laion = write_run(tmp_path / "laion", demo_recipe(dataset="laion-400m"))
    assert not any("uncalibrated" in s for s in tables.status_lines(load_run(laion)))
    cal = demo_recipe(name="c")
    cal = cal.model_copy(update={"predictions": cal.predictions.model_copy(
        update={"cost_model_version": "clipa-costmodels-0.1+calibrated"})})
    assert not any("uncalibrated" in s for s in tables.status_lines(load_run(write_run(tmp_path / "cal", cal))))


@pytest.mark.parametrize("dataset,classes,said", [
    ("laion-400m", 10, True),     # the law's ImageNet-1k figure against a 10-class set
    ("laion-400m", 1000, False),
    ("demo", 10, False),          # the demo's prediction is for its own held-out set
])
def test_report_says_when_the_top1_was_measured_on_another_set_than_predicted(tmp_path, dataset, classes, said):
    d = write_run(tmp_path / "run", demo_recipe(dataset=dataset))
    a = rundir.read_achieved(d).model_dump()
    a.update(eval_classes=classes)
    rundir.write_achieved(d, rundir.Achieved.model_validate(a))
    lines = [s for s in tables.status_lines(load_run(d)) if "not comparable" in s]
    assert lines == ([f"the top-1 predicted on laion-400m is ImageNet-1k zero-shot (1,000 classes, the published "
                      f"runs' figure); the evaluation set has {classes:,} classes, so its top-1 is not comparable with "
                      "the prediction (evaluate on ImageNet-1k's val to compare; for a prediction on this set, "
                      "calibrate on --dataset custom pilots)"]
                     if said else [])
