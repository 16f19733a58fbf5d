"""A tiny pilot suite end to end on CPU: clipa-plan --pilot writes it, one clipa-run trains all its pilots
(one process, shared demo data), clipa-report --calibrate fits the dataset law and the throughput, and
clipa-plan --predict --calibration predicts the target with the fitted law."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clipa import rundir
from clipa import suite as suite_mod
from clipa.cli._common import run_app
from clipa.cli.plan import app as plan_app
from clipa.cli.report import app as report_app
from clipa.backends.data import resolve
from clipa.costmodels import calibration as cal_mod
from clipa.planner import pilot

TARGET = {
    "name": "tiny", "encoder": {"name": "test"},
    "dataset": {"name": "demo", "train_samples": 512, "workers": 0},
    "hardware": {"name": "cpu"},
    "stages": [
        {"name": "pre", "samples": 1536, "global_batch": 32, "image_size": 32, "text_len": 12,
         "text_reduction": "syntax", "optimizer": {"lr": 1e-3}, "schedule": {"warmup_samples": 64}},
        {"name": "ft", "samples": 384, "global_batch": 32, "image_size": 48, "text_len": 32,
         "optimizer": {"lr": 1e-3}, "pos_embed": "learned"},
    ],
    "train": {"seed": 0, "precision": "fp32", "log_every_steps": 4, "compute_threads": 1},
}


def _tiny_suite(tmp_path) -> tuple:
    """TARGET's pilots (clipa-plan --pilot at share 0.6) in tmp_path/suite: (target, suite folder, suite, the
    clipa-run command that trains them into tmp_path/pilots on the CPU)."""
    target = tmp_path / "tiny.yaml"
    target.write_text(yaml.safe_dump(TARGET))
    suite_dir = tmp_path / "suite"
    assert run_app(plan_app, ["--pilot", "--target", str(target), "--hw", "cpu", "--pilot-share", "0.6",
                              "--out", str(suite_dir)]) == 0
    cmd = [sys.executable, "-m", "clipa.cli.run", str(suite_dir / "suite.yaml"), "--run-dir", str(tmp_path / "pilots"),
           "--device", "cpu"]
    return target, suite_dir, suite_mod.load(suite_dir / "suite.yaml"), cmd


@pytest.mark.slow
def test_pilot_suite_runs_in_one_command_and_calibrates(tmp_path, capsys):
    pytest.importorskip("torch")
    target, _, suite, cmd = _tiny_suite(tmp_path)
    root = tmp_path / "pilots"
    assert len(suite.pilots) == 3
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    dirs = [root / e.name for e in suite.pilots]
    assert all((d / rundir.ACHIEVED).is_file() for d in dirs)
    assert (root / "data" / "DONE").is_file() and not any((d / "data").exists() for d in dirs)  # generated once
    # evaluated on pilot.VAL_IMAGES of the demo's held-out images, and calibrated with that count's noise
    assert {rundir.read_achieved(d).eval_images for d in dirs} == {min(pilot.VAL_IMAGES, resolve.DEMO_VAL)}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # resumable: all finished
    assert again.returncode == 0 and again.stderr.count("already finished") == 3

    cal_path = tmp_path / "cal.yaml"
    assert run_app(report_app, [*map(str, dirs), "--no-plots", "--calibrate", "--calibration-out", str(cal_path)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy law for dataset 'demo': fitted on 3 run(s)" in printed
    cal = cal_mod.load(cal_path)
    law = cal.datasets["demo"].law
    assert law is not None and len(law.points) == 3 and law.chance == pytest.approx(10.0)
    # pilots this small sit near chance: the exponent is fitted (1 dof left) or, where their top-1 does
    # not grow with samples, the published one stands in (2 dof, noted)
    assert (law.dof, "k" in law.fixed) in ((1, False), (2, True)), (law.dof, law.fixed)
    assert cal.utilisation("cpu") is not None
    assert run_app(plan_app, ["--predict", str(target), "--calibration", str(cal_path), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    lo, hi = pred["predicted_top1_interval"]
    assert 10.0 <= lo <= pred["predicted_top1"] <= hi <= 100.0
    assert any("beyond the largest pilot" in e for e in pred["extrapolation"])  # the dataset law's own notes


def test_a_suite_trains_each_pilot_on_every_process_it_is_given(tmp_path):
    """clipa-run SUITE --nproc 2 launches each pilot through torchrun on 2 processes, as a plan for a GPU
    machine's pilots train on all its GPUs (a suite refused --nproc: an a100x8 plan's pilots, sized for 8
    GPUs, trained on one)."""
    pytest.importorskip("torch")
    _, suite_dir, suite, cmd = _tiny_suite(tmp_path)
    root = tmp_path / "pilots"
    cmd += ["--nproc", "2", "--max-samples", "64"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "0 of 3 finished: run the same command again without --max-samples" in p.stderr  # not "Calibrate with"
    for e in suite.pilots:
        assert json.loads((root / e.name / "parallelism.json").read_text())["processes"] == 2
        assert [m.samples for m in rundir.read_metrics(root / e.name) if m.kind == "train"][-1] == 64
    refused = subprocess.run([*cmd[:-4], "--backend", "jax", "--tpu", "x", "--zone", "z"], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "--tpu: does not apply to a pilot suite" in refused.stderr
    # Ctrl-C in the terminal (SIGINT to the process group) during a pilot: its workers say how to resume the
    # pilot alone, then the suite how to resume the suite (the pilots after it too)
    proc = subprocess.Popen(cmd[:-2], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stderr:
        if " stage pre step " in line:  # training (past the 64 samples of the first run)
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest[-3000:]
    assert rest.strip().splitlines()[-1].endswith(f"resume the suite with: clipa-run {suite_dir / 'suite.yaml'} "
                                                   f"--run-dir {root} --nproc 2 --device cpu"), rest[-3000:]


def test_decoders_dying_in_a_pilot_say_how_to_resume_the_suite(tmp_path):
    """A pilot whose decoding processes the system kills again and again (out of memory) stops after a
    checkpoint, and says how to resume the suite (the pilots take their data from it), as Ctrl-C and a full
    disk do; it said how to resume the pilot alone."""
    pytest.importorskip("torch")
    target = tmp_path / "tiny.yaml"
    stages = [{**TARGET["stages"][0], "samples": 8 * 1536}, TARGET["stages"][1]]
    target.write_text(yaml.safe_dump({**TARGET, "dataset": {**TARGET["dataset"], "workers": 1}, "stages": stages}))
    suite_dir, root = tmp_path / "suite", tmp_path / "pilots"
    assert run_app(plan_app, ["--pilot", "--target", str(target), "--hw", "cpu", "--pilot-share", "0.6",
                              "--out", str(suite_dir)]) == 0
    cmd = [sys.executable, "-m", "clipa.cli.run", str(suite_dir / "suite.yaml"), "--run-dir", str(root), "--device",
           "cpu"]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would stop the run before the kills
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stderr=fh, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    killed: set[int] = set()
    deadline = time.time() + 300
    while proc.poll() is None and len(killed) < 3 and time.time() < deadline:  # each decoder as it starts
        found = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
        for pid in map(int, found.stdout.split()):
            if pid not in killed and len(killed) < 3:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.05)
    code = proc.wait(timeout=300)
    err = log.read_text()
    assert code == 1 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: dataset.workers: a decoding process died 3 times"), last
    assert "the newest complete checkpoint is " in last, last
    assert last.endswith(f"resume the suite with: clipa-run {suite_dir / 'suite.yaml'} --run-dir {root} "
                         "--device cpu"), last
