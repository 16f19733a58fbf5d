"""train.report_to: [tensorboard]: a real tiny run's event file, read back with TensorBoard's own reader,
holds the metrics.jsonl values; a resumed process's file supersedes the killed one's later points."""
import json
import math
import sys

import numpy as np
import pytest
import yaml
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_torch_run import _recipe, _run, data  # noqa: F401  (data: the shared shard fixture)
from tiny_run import tiny

from clipa import recipe as recipe_mod
from clipa import rundir
from clipa.backends import runstate, tracking
from clipa.errors import UserError


def _scalars(logdir) -> dict:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(run_dir, recipe) -> dict:
    """metrics.jsonl as TensorBoard should show it: x = samples since the run started, float32 values."""
    offset, total = {}, 0
    for st in recipe.stages:
        offset[st.name], total = total, total + st.steps * st.global_batch
    out: dict = {}
    for line in (run_dir / rundir.METRICS).read_text().splitlines():
        m = json.loads(line)
        for key, tag in tracking.TAGS.items():
            if m.get(key) is not None:
                out.setdefault(tag, []).append((offset[m["stage"]] + m["samples"], float(np.float32(m[key]))))
    return out


def test_run_reports_every_metrics_line_to_tensorboard(tmp_path, data):  # noqa: F811
    recipe = _recipe(tmp_path, data, report_to=["tensorboard"], eval_every_samples=64)
    res = _run(recipe, tmp_path / "run")
    assert res.returncode == 0, res.stderr[-2000:]
    run_dir = tmp_path / "run"
    got = _scalars(run_dir / tracking.TENSORBOARD_DIR)
    want = _expected(run_dir, recipe_mod.load(recipe))
    assert {"train/loss", "train/lr", "train/samples_per_s", "train/mfu", "train/logit_scale",
            "eval/top1"} <= set(want), sorted(want)
    assert got == want
    # a mid-stage and the stage-end evaluation of stage 1 (128 samples), stage 2's end: one x axis for both
    assert [s for s, _ in got["eval/top1"]] == [64, 128, 128 + 64]
    # exp(logit_scale): CLIP's 1/0.07 at init; AdamW moves the log by about lr (<= 1e-3) a step at most,
    # so 12 steps leave it within 2.4% (a raw log scale, 2.66, or a diverged one would not be).
    steps = sum(st.steps for st in recipe_mod.load(recipe).stages)
    assert all(abs(math.log(v) - math.log(1 / 0.07)) <= 2e-3 * steps for _, v in got["train/logit_scale"])


def test_no_report_to_writes_no_event_file(tmp_path):
    rec = _tiny_recipe(report_to=[])
    recipe_mod.dump(rec, tmp_path / rundir.RECIPE)
    runstate.append_metrics(tmp_path / rundir.METRICS, dict(stage="a", step=1, samples=8, time_s=1.0, loss=2.0))
    assert (tmp_path / rundir.METRICS).exists()
    assert not (tmp_path / tracking.TENSORBOARD_DIR).exists()


def test_resumed_process_replaces_the_killed_ones_later_points(tmp_path):
    """A process killed after step 3 of a checkpoint at step 2 wrote points 1..3; the resumed one writes
    3.. again. TensorBoard must show 1, 2 from the first file and 3, 4 from the second, as metrics.jsonl."""
    recipe_mod.dump(_tiny_recipe(report_to=["tensorboard"]), tmp_path / rundir.RECIPE)
    metrics = tmp_path / rundir.METRICS

    def line(step, loss):
        return dict(stage="a", step=step, samples=8 * step, time_s=float(step), loss=loss)

    for step in (1, 2, 3):
        runstate.append_metrics(metrics, line(step, 10.0 + step))
    tracking.close(tmp_path)  # the killed process's file ends here
    for step in (3, 4):
        runstate.append_metrics(metrics, line(step, 20.0 + step))
    tracking.close(tmp_path)
    assert len(list((tmp_path / tracking.TENSORBOARD_DIR).iterdir())) == 2
    assert _scalars(tmp_path / tracking.TENSORBOARD_DIR)["train/loss"] == [(8, 11.0), (16, 12.0), (24, 23.0),
                                                                            (32, 24.0)]


def _tiny_recipe(report_to):
    return recipe_mod.from_dict(tiny(stages=1, train={"report_to": report_to}))


def test_report_to_rejects_an_unknown_tracker():
    with pytest.raises(UserError, match="report_to"):
        _tiny_recipe(report_to=["wandb"])
    assert yaml.safe_load(recipe_mod.to_yaml(_tiny_recipe(["tensorboard"])))["train"]["report_to"] == ["tensorboard"]


def test_missing_tensorboard_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` meets when it is not installed
    with pytest.raises(UserError, match=r"train.report_to: tensorboard needs"):
        runstate.prepare_run_dir(_tiny_recipe(report_to=["tensorboard"]), tmp_path / "run", "torch", Console())
    assert not (tmp_path / "run" / rundir.RECIPE).exists()  # refused before the run directory is claimed
    tracking.check(_tiny_recipe(report_to=[]))  # no tracker asked for: tensorboard is not needed
