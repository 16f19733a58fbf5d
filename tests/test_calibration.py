"""The calibration file (costmodels.calibration) and its fit (clipa.report.calibrate), without training.

The run directories here are written by the test with timings generated from a chosen utilisation
and overhead, so the fit must recover them; the slow test in test_calibration_e2e.py trains for real.
"""
import json

import pytest
import yaml
from report_rundirs import demo_recipe, write_run

from clipa import recipe as recipe_mod
from clipa import rundir
from clipa.cli._common import run_app
from clipa.cli.plan import app as plan_app
from clipa.cli.report import app
from clipa.costmodels import calibration as cal_mod
from clipa.costmodels import hardware
from clipa.costmodels.predict import predict_recipe
from clipa.errors import UserError
from clipa.report import calibrate, tables
from clipa.report.load import load_run


def _cal():
    return cal_mod.Calibration(
        hardware={"cpu": cal_mod.HardwareCalibration(utilisation=0.05, overhead_s_per_sample=0.002,
                                                     fixed_s_per_stage=3.0, points=2, rel_rmse=0.01)},
        datasets={"demo": cal_mod.DatasetCalibration(offset=4.5)})


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_roundtrip(tmp_path, suffix):
    cal = _cal()  # once: its `created` stamp is the clock's second, and a second call may fall in the next
    back = cal_mod.load(cal_mod.save(cal, tmp_path / f"cal{suffix}"))
    assert back == cal
    assert back.utilisation("cpu") == 0.05 and back.utilisation("a100x8") is None
    assert back.offset("demo") == 4.5 and back.offset("laion-2b") == 0.0


@pytest.mark.parametrize("content,needle", [
    ("hardware: {cpu: {utilisation: 1.5, points: 1, rel_rmse: 0}}", "hardware.cpu.utilisation"),
    ("hardware: {cpu: {utilisation: 0.5, points: 1, rel_rmse: 0, typo: 1}}", "hardware.cpu.typo"),
    ("[1, 2]", "must be a mapping"),
    ("version: 99", "format version 99"),
    ("a: [", "not a valid calibration file"),
    ("!!python/object/apply:os.system ['true']", "not a valid calibration file"),  # safe_load refuses tags
])
def test_bad_file_is_one_line(tmp_path, content, needle):
    p = tmp_path / "cal.yaml"
    p.write_text(content)
    with pytest.raises(UserError) as e:
        cal_mod.load(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("hw,dataset,suffix", [("cpu", "demo", "+calibrated"), ("cpu", "custom", "+calibrated-time"),
                                               ("a100x8", "demo", "+calibrated-top1"), ("a100x8", "custom", "")])
def test_a_prediction_says_what_its_calibration_calibrated(tmp_path, capsys, hw, dataset, suffix):
    """'+calibrated' on a prediction the file calibrates nothing of (other hardware, other data) hid the
    report's 'uncalibrated top-1' caveat and claimed what was not done."""
    rec = demo_recipe("v", dataset=dataset, hardware=hw, predictions=False)
    got = predict_recipe(rec, calibration=_cal()).cost_model_version
    assert got == predict_recipe(rec).cost_model_version + suffix
    assert cal_mod.top1_calibrated(got) == (dataset == "demo")
    # the report's caveat on a dataset no published run saw goes only with a calibrated top-1
    run = load_run(write_run(tmp_path / "run", rec.model_copy(update={"predictions": predict_recipe(rec, calibration=_cal())})))
    assert any("top-1 prediction uncalibrated" in n for n in tables.caveat_lines(run)) == (dataset != "demo")
    if dataset == "custom":  # an unfinished run cannot be calibrated on ('none of the runs finished', exit 2)
        stopped = load_run(write_run(tmp_path / "stopped", run.recipe, finished=False, stop_after=64))
        said = next(n for n in tables.caveat_lines(stopped) if "top-1 prediction uncalibrated" in n)
        assert "Run: finish the run (clipa-run resumes it; calibrating needs its top-1), then clipa-report" in said
        assert "Run: clipa-report --calibrate" in next(n for n in tables.caveat_lines(run) if "uncalibrated" in n)
    # --predict names a calibration that applies to nothing, on stderr (stdout stays JSON)
    path = cal_mod.save(_cal(), tmp_path / "cal.yaml")
    recipe_mod.dump(rec, tmp_path / "r.yaml")
    assert run_app(plan_app, ["--predict", str(tmp_path / "r.yaml"), "--calibration", str(path), "--json"]) == 0
    out = capsys.readouterr()
    json.loads(out.out)
    unused = f"--calibration: fitted on cpu, demo, neither hardware {hw} nor dataset {dataset}"
    assert (unused in out.err) == (suffix == "")


def test_calibrated_stage_adds_overhead_and_fixed_time():
    from clipa import encoders
    from clipa.costmodels import predict

    hw = hardware.get("a100x8")
    cal = cal_mod.Calibration(hardware={"a100x8": cal_mod.HardwareCalibration(
        utilisation=0.4, overhead_s_per_sample=1e-4, fixed_s_per_stage=360.0, points=2, rel_rmse=0.0)})
    enc, shape, n = encoders.get("B/16"), predict.StageShape(224, 0.0, 32), 1_000_000
    plain = predict.stage_rate(enc, shape, hw, grad_checkpointing=False, calibration=cal_mod.Calibration())
    at_u = predict.stage_rate(enc, shape, hw, grad_checkpointing=False,
                              calibration=cal_mod.Calibration(hardware={"a100x8": cal_mod.HardwareCalibration(
                                  utilisation=0.4, points=2, rel_rmse=0.0)}))
    cost, dev, wall = predict.stage_rate(enc, shape, hw, grad_checkpointing=False, calibration=cal).costs(n)
    expected = at_u.wall_hours(n) + (n * 1e-4 + 360.0) / 3600  # 100 s + 360 s on top of the FLOPs time
    assert wall == pytest.approx(expected, rel=1e-12)
    assert dev == pytest.approx(expected * hw.n_devices) and cost == pytest.approx(expected * hw.usd_per_hour)
    assert plain == predict.stage_rate(enc, shape, hw, grad_checkpointing=False)  # uncalibrated hardware: unchanged


def test_fit_recovers_utilisation_and_overhead():
    u, c = 0.07, 0.003
    pts = [calibrate.Point("r", f"s{i}", t1, 1e-7, t1 / u + c, 1000) for i, t1 in enumerate((2e-4, 9e-4, 3e-3))]
    fu, fc, rel, note = calibrate.fit_throughput(pts)
    assert fu == pytest.approx(u, rel=0.01) and fc == pytest.approx(c, rel=0.02)
    assert rel < 0.01 and note is None
    # one configuration cannot separate them: everything goes on the FLOPs term, and the file says so
    fu, fc, _, note = calibrate.fit_throughput(pts[:1])
    assert fc == 0.0 and fu == pytest.approx(2e-4 / (2e-4 / u + c), rel=0.01) and "not separable" in note


def test_steady_rate_skips_warmup_and_evaluations():
    L = rundir.MetricsLine
    lines = [L(stage="s", step=10, samples=100, time_s=50.0),  # the window before it holds the warm-up
             L(stage="s", step=20, samples=200, time_s=60.0),
             L(stage="s", step=30, samples=300, time_s=70.0),
             L(stage="s", step=40, samples=400, time_s=100.0),  # holds an evaluation: ignored
             L(stage="s", step=50, samples=500, time_s=110.0)]
    evals = [L(kind="eval", stage="s", step=35, samples=350, time_s=95.0, top1=3.0)]
    assert calibrate.steady_rate(lines, evals) == pytest.approx(10.0)
    # one interval slowed by a burst of load does not move it (the median of 10, 10, 2 samples/s)
    slow = lines + [L(stage="s", step=60, samples=600, time_s=160.0)]
    assert calibrate.steady_rate(slow, evals) == pytest.approx(10.0)
    # a short stage logs twice: the interval after its first line is steady (a pilot's 17-step fine-tune
    # used to fall back to its whole-stage rate, warm-up included: 60 samples/s against a steady 105)
    assert calibrate.steady_rate(lines[:2], []) == pytest.approx(10.0)
    assert calibrate.steady_rate(lines[:1], []) is None


def _timed_run(path, rec, u, c, fixed, top1, start=0.0):
    """A run dir whose stage times follow the calibrated model with (u, c, fixed, start): ``fixed`` in every
    stage, ``start`` a third in the first stage and the rest outside the stages."""
    hw = hardware.get(rec.hardware.name)
    run0 = load_run(write_run(path / "probe", rec, stage_wall=(1.0,) * len(rec.stages)))
    extra = tuple(fixed + (start / 3 if i == 0 else 0.0) for i in range(len(rec.stages)))
    walls = []
    for st, x in zip(rec.stages, extra):
        t1, d = calibrate.model_seconds_per_sample(run0, st, hw)
        walls.append(st.samples * (max(t1 / u, d) + c) + x)
    return write_run(path / "run", rec, stage_wall=tuple(walls), total_wall=sum(walls) + start * 2 / 3, top1=top1,
                     stage_extra=extra)


def test_calibrate_then_predict_another_recipe(tmp_path):
    u, c, fixed, start = 0.02, 0.004, 5.0, 12.0
    a = _timed_run(tmp_path / "a", demo_recipe("a"), u, c, fixed, top1=30.0, start=start)
    cal = calibrate.calibrate([load_run(a)])
    h = cal.hardware["cpu"]
    assert h.utilisation == pytest.approx(u, rel=0.02) and h.overhead_s_per_sample == pytest.approx(c, rel=0.05)
    # within a second: u and c come back within 2-5%, about 0.3 s of a stage of 200 s
    assert h.fixed_s_per_stage == pytest.approx(fixed, abs=1.0) and h.start_s_per_run == pytest.approx(start, abs=1.0)
    law = predict_recipe(demo_recipe("a", predictions=False))
    # recorded, but the demo dataset (no published run) is predicted by its own fitted law, not offset
    assert cal.datasets["demo"].offset == pytest.approx(30.0 - law.predicted_top1)
    assert cal.datasets["demo"].law is not None and cal.offset("demo") == 0.0
    # a different encoder and resolution, generated from the same machine model
    d = demo_recipe("b", predictions=False).model_dump(mode="json")
    d["encoder"]["name"] = "test"
    d["stages"][0]["image_size"] = 48
    b_rec = recipe_mod.from_dict(d)
    b = load_run(_timed_run(tmp_path / "b", b_rec, u, c, fixed, top1=20.0, start=start))
    pred = predict_recipe(b_rec, calibration=cal)
    assert pred.wall_hours * 3600 == pytest.approx(b.achieved.wall_seconds, rel=0.02)
    # a run of one stage more pays the start once: spread over the stages, it was counted per stage
    d["stages"].append({**d["stages"][1], "name": "finetune2"})
    c_rec = recipe_mod.from_dict(d)
    cc = load_run(_timed_run(tmp_path / "c", c_rec, u, c, fixed, top1=20.0, start=start))
    assert predict_recipe(c_rec, calibration=cal).wall_hours * 3600 == pytest.approx(cc.achieved.wall_seconds, rel=0.02)
    # one run, one parameter (the exponent is the published law's): the same samples, the run's own top-1
    assert pred.predicted_top1 == pytest.approx(30.0, abs=1e-3)


def test_a_run_whose_evaluation_set_is_unknown_is_refused_not_read_as_imagenet(tmp_path, capsys):
    """Chance sets the dataset law's floor: read as ImageNet's 0.1% instead of the demo's 10%, the demo's
    pilots predicted 33.6% [13.8, 61.7] instead of 44.8% [15.9, 86.6] (the run achieved 83.1%). A run
    that records neither its classes (achieved.json, older runs) nor readable paths is refused."""
    a = _timed_run(tmp_path / "a", demo_recipe("a"), 0.02, 0.004, 5.0, top1=30.0)
    ach = json.loads((a / rundir.ACHIEVED).read_text())
    assert ach["eval_classes"] == 10
    del ach["eval_classes"], ach["eval_images"]
    (a / rundir.ACHIEVED).write_text(json.dumps(ach))
    assert run_app(app, [str(a), "--no-plots", "--calibrate", "--calibration-out", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evaluation set" in err and str(a) in err
    assert not (tmp_path / "c.yaml").exists()


def test_cli_writes_a_file_the_planner_can_load(tmp_path, capsys):
    a = _timed_run(tmp_path / "a", demo_recipe("a"), 0.02, 0.004, 5.0, top1=30.0)
    out = tmp_path / "cal.yaml"
    assert run_app(app, [str(a), "--no-plots", "--calibrate", "--calibration-out", str(out)]) == 0
    cal = cal_mod.load(out)
    assert cal.utilisation("cpu") == pytest.approx(0.02, rel=0.02)
    assert str(a) in yaml.safe_load(out.read_text())["hardware"]["cpu"]["runs"]
    assert "calibration written" in capsys.readouterr().out
    # an unfinished run alone: nothing to calibrate, one line, exit 2, and no report written before it
    u = write_run(tmp_path / "u", demo_recipe("u"), finished=False, stop_after=1000)
    capsys.readouterr()
    assert run_app(app, [str(u), "--out", str(tmp_path / "rep"), "--calibrate", "--calibration-out",
                         str(tmp_path / "x.yaml")]) == 2
    said = capsys.readouterr()
    assert "nothing to calibrate on" in said.err and said.out == "", said.out[:300]
    assert not (tmp_path / "rep").exists() and not (tmp_path / "x.yaml").exists()


def test_a_run_named_twice_counts_once(tmp_path, capsys):
    """``clipa-report --calibrate runs/pilots/* runs/pilots/a``: the run counted twice (or thrice, spelled
    three ways) was three runs to the fit, a 2-parameter law with a residual degree of freedom from one run."""
    a = _timed_run(tmp_path / "a", demo_recipe("a"), 0.02, 0.004, 5.0, top1=30.0)
    out = tmp_path / "cal.yaml"
    same = [str(a), f"{a}/", str(tmp_path / "a" / ".." / "a" / "run")]
    assert run_app(app, [*same, "--no-plots", "--calibrate", "--calibration-out", str(out)]) == 0
    saved = yaml.safe_load(out.read_text())
    assert saved["hardware"]["cpu"]["runs"] == [str(a)] and saved["datasets"]["demo"]["runs"] == [str(a)]
    said = " ".join(capsys.readouterr().out.split())
    assert "fitted on 1 run(s) (run), 1 parameter(s), 0 residual degree(s)" in said, said


def test_fit_counts_the_same_flops_as_the_prediction_on_a_masked_stage(tmp_path):
    from clipa.costmodels import flops

    d = demo_recipe("m", predictions=False).model_dump(mode="json")
    d["stages"][1]["image_reduction"] = {"kind": "random_mask", "mask_ratio": 0.5}
    rec = recipe_mod.from_dict(d)
    run = load_run(write_run(tmp_path / "m", rec))
    hw = hardware.get("cpu")
    enc, st = rec.encoder.spec, rec.stages[1]
    assert st.image_tokens(enc) < enc.vision.tokens(st.image_size)  # the premise: a masked stage
    predicted = flops.train_flops_per_sample(enc, st.image_tokens(enc), st.text_len,
                                             patch_tokens=enc.vision.tokens(st.image_size))  # predict.stage_costs
    seconds, _ = calibrate.model_seconds_per_sample(run, st, hw)
    assert seconds == pytest.approx(predicted / (hw.n_devices * hw.peak_flops), rel=1e-9)
