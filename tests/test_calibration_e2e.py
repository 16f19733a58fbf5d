"""The calibration loop, end to end on CPU: train a demo recipe, calibrate on it, then predict the
wall time of a second recipe at other resolutions and text lengths and train it for real.

Requirement (issue "clipa-report and the calibration loop"): the calibrated prediction is within
20% of the achieved wall time. On CPU, tiny models spend much of their time per sample outside the
matmuls (decoding, augmentation, tokenisation, Python): the calibration's per-sample overhead term
carries it, the FLOPs term carries the rest (clipa/report/calibrate.py).
"""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipa import recipe as recipe_mod
from clipa import rundir
from clipa.cli._common import run_app
from clipa.cli.report import app
from clipa.costmodels import calibration as cal_mod
from clipa.costmodels.predict import predict_recipe

CLIPA_RUN = str(Path(sys.executable).parent / "clipa-run")


def _recipe(name, encoder, stages):
    return {
        "name": name, "encoder": {"name": encoder},
        # a small synthetic set, one loader worker: the same data path in both runs
        "dataset": {"name": "demo", "train_samples": 512, "workers": 1},
        "hardware": {"name": "cpu"},
        "stages": [{"name": n, "samples": s, "global_batch": 64, "image_size": px, "text_len": t,
                    "optimizer": {"lr": 5e-4}} for n, s, px, t in stages],
        "train": {"seed": 0, "precision": "fp32", "log_every_steps": 2},
    }


def _train(tmp_path: Path, d: dict) -> Path:
    path = tmp_path / f"{d['name']}.yaml"
    path.write_text(yaml.safe_dump(d))
    run_dir = tmp_path / d["name"]
    p = subprocess.run([CLIPA_RUN, str(path), "--run-dir", str(run_dir), "--device", "cpu"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (run_dir / rundir.ACHIEVED).is_file()
    return run_dir


@pytest.mark.slow
def test_calibrated_wall_time_of_another_recipe_within_20_percent(tmp_path):
    pytest.importorskip("torch")
    # calibration run: the demo encoder at three resolutions (FLOPs levels that separate u from the overhead).
    # Both runs last about 30 s: at half that, a burst of load on the shared 2-core machine that slowed
    # every stage of one run by 20% missed the target (-20.1% and +24.4% in two full-suite runs).
    a = _train(tmp_path, _recipe("cal", "demo", [("s32", 1536, 32, 12), ("s48", 1024, 48, 16), ("s64", 1024, 64, 32)]))
    cal_path = tmp_path / "calibration.yaml"
    assert run_app(app, [str(a), "--no-plots", "--calibrate", "--calibration-out", str(cal_path)]) == 0
    cal = cal_mod.load(cal_path)
    assert cal.utilisation("cpu") is not None

    # resolutions and text lengths the calibration never saw (80 px lies beyond it); more than one
    # stage like the demo, so it pays the same kind of fixed costs (start-up, stage switches, evaluations).
    # Same encoder: on CPU much of a tiny model's time is per-step work proportional to its parameters
    # (AdamW over the 49408-token embedding table, checkpoints), which neither FLOPs nor a per-sample
    # constant carries to another encoder (measured: the `test` encoder came out 2.4x over-predicted).
    b_dict = _recipe("other", "demo", [("s40", 2048, 40, 8), ("s80", 1024, 80, 24)])
    b_rec = recipe_mod.from_dict(b_dict)
    predicted_s = predict_recipe(b_rec, calibration=cal).wall_hours * 3600
    uncalibrated_s = predict_recipe(b_rec).wall_hours * 3600
    b = _train(tmp_path, b_dict)
    achieved_s = rundir.read_achieved(b).wall_seconds
    err = (predicted_s - achieved_s) / achieved_s
    print(f"\nwall time of 'other': achieved {achieved_s:.1f} s, calibrated prediction {predicted_s:.1f} s "
          f"({100 * err:+.1f}%), uncalibrated {uncalibrated_s:.1f} s")
    assert abs(err) < 0.20
