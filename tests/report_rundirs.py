"""Build real run directories (the clipa.rundir format) for the report tests, without training."""
from __future__ import annotations

import json
from pathlib import Path

from clipa import recipe as recipe_mod
from clipa import rundir


def demo_recipe(name="r", *, text_reduction="truncate", predictions=True, hardware="cpu", dataset="demo",
                usd_per_hour=2.0, pricing="on-demand"):
    d = {
        "name": name,
        "encoder": {"name": "demo"},
        "dataset": {"name": dataset},
        "hardware": {"name": hardware, "usd_per_hour": usd_per_hour, "pricing": pricing},
        "stages": [
            {"name": "pretrain", "samples": 4000, "global_batch": 40, "image_size": 32, "text_len": 8,
             "text_reduction": text_reduction, "optimizer": {"lr": 1e-3}},
            {"name": "finetune", "samples": 1000, "global_batch": 20, "image_size": 64, "text_len": 16,
             "optimizer": {"lr": 1e-4}},
        ],
    }
    if predictions:
        d["predictions"] = {
            "predicted_top1": 20.0, "predicted_top1_interval": [10.0, 30.0], "gpu_hours": 0.02,
            "wall_hours": 0.02, "cost_usd": 0.04, "hardware": hardware, "cost_model_version": "test",
            "stages": [
                {"name": "pretrain", "image_size": 32, "image_tokens": 16, "text_len": 8, "samples": 4000,
                 "train_flops_per_sample": 1e8, "train_flops": 4e11, "gpu_hours": 0.01, "wall_hours": 0.01,
                 "cost_usd": 0.02, "predicted_top1": 15.0},
                {"name": "finetune", "image_size": 64, "image_tokens": 64, "text_len": 16, "samples": 1000,
                 "train_flops_per_sample": 4e8, "train_flops": 4e11, "gpu_hours": 0.01, "wall_hours": 0.01,
                 "cost_usd": 0.02, "predicted_top1": 20.0},
            ],
        }
    return recipe_mod.from_dict(d)


def write_run(run_dir: Path, rec, *, finished=True, top1=25.0, stage_wall=(45.0, 27.0), total_wall=80.0,
              stop_after=None, checkpoints=("step_000100",), usd_per_hour=2.0, stage_extra=None) -> Path:
    """A run dir with metrics every 10 steps; ``finished=False`` stops after ``stop_after`` samples of stage 0.
    ``stage_extra``: seconds of each stage's ``stage_wall`` outside its steady loop (the lines' rate)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_mod.dump(rec, run_dir / rundir.RECIPE)
    lines, t = [], 0.0
    for i, st in enumerate(rec.stages):
        warm = stage_extra[i] if stage_extra else 0.0  # before the stage's first line, as a warm-up is
        rate = st.samples / (stage_wall[i] - warm)
        for step in range(10, st.steps + 1, 10):
            samples = step * st.global_batch
            if stop_after is not None and (i > 0 or samples > stop_after):
                break
            lines.append({"kind": "train", "stage": st.name, "step": step, "samples": samples,
                          "time_s": t + warm + samples / rate, "loss": 4.0 - 0.5 * i - samples / st.samples,
                          "samples_per_s": rate})
        if stop_after is not None:
            break
        t += stage_wall[i]
        lines.append({"kind": "eval", "stage": st.name, "step": st.steps, "samples": st.samples, "time_s": t,
                      "top1": top1 - 5.0 * (len(rec.stages) - 1 - i)})
    (run_dir / rundir.METRICS).write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run_dir / rundir.CHECKPOINTS).mkdir(exist_ok=True)
    for c in checkpoints:
        (run_dir / rundir.CHECKPOINTS / c).mkdir()
    if finished:
        stages = [rundir.StageAchieved(name=st.name, samples=st.samples, top1=top1 - 5.0 * (len(rec.stages) - 1 - i),
                                       wall_seconds=stage_wall[i], device_hours=stage_wall[i] / 3600,
                                       samples_per_s=st.samples / stage_wall[i], mfu=0.01)
                  for i, st in enumerate(rec.stages)]
        rundir.write_achieved(run_dir, rundir.Achieved(
            backend="torch", device="cpu", hardware=rec.hardware.name, n_devices=1, eval_set="demo-heldout",
            eval_classes=10, eval_images=2000, top1=top1, wall_seconds=total_wall, device_hours=total_wall / 3600,
            cost_usd=None if usd_per_hour is None else usd_per_hour * total_wall / 3600,
            usd_per_hour=usd_per_hour, stages=stages))
    return run_dir
