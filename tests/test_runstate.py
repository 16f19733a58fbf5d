"""Shared run bookkeeping (backends/runstate.py): cost in achieved.json, the checkpointed progress format."""
import json
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from clipa import recipe as recipe_mod, rundir
from clipa.backends import runstate as rs
from clipa.costmodels import hardware
from clipa.errors import UserError
from clipa.recipe import HardwareSpec, Stage


def _recipe(name, usd_per_hour=None, pricing="on-demand"):
    r = recipe_mod.load("recipes/demo.yaml")
    return r.model_copy(update={"hardware": HardwareSpec(name=name, usd_per_hour=usd_per_hour, pricing=pricing)})


def _achieved(r, n_devices=2, wall=7200.0):
    prog = rs.RunProgress(history=[dict(name="s", samples=8, top1=12.5, wall_seconds=wall, device_hours=4.0,
                                        samples_per_s=1.0, mfu=None)])
    return rs.achieved(r, backend="torch", device="cpu", n_devices=n_devices, prog=prog, wall=wall, skipped=0,
                       reasons={}, dataset=r.dataset)


def test_cost_is_the_runs_share_of_the_machine_price():
    hw = hardware.get("a100x8")
    a = _achieved(_recipe("a100x8"))
    assert a.usd_per_hour == hw.usd_per_hour
    assert a.cost_usd == pytest.approx(2.0 * hw.usd_per_hour * 2 / hw.n_devices)  # 2 h on 2 of its devices
    assert a.device_hours == pytest.approx(4.0) and a.top1 == 12.5 and a.eval_set == "demo-heldout"


def test_recipe_price_overrides_and_unknown_price_is_unknown_not_free():
    assert _achieved(_recipe("a100x8", usd_per_hour=20.0)).cost_usd == pytest.approx(2.0 * 20.0 * 2 / 8)
    # the premise of the next lines: no cited spot price for a100x8 (the run is costed at its recipe's pricing)
    assert hardware.get("a100x8", pricing="spot").usd_per_hour is None
    a = _achieved(_recipe("a100x8", pricing="spot"))
    assert a.cost_usd is None and a.usd_per_hour is None
    assert "cost unknown: no $/hour for a100x8" in a.summary()
    a = rundir.Achieved.model_validate_json(a.model_dump_json())  # achieved.json round trip
    assert a.cost_usd is None


def test_unknown_hardware_is_refused_where_the_recipe_is_used(tmp_path):
    """clipa.recipe imports no cost model, so the hardware name is checked by the commands that use it
    (clipa-run, clipa-plan --predict), naming the file and field; the recipe itself still loads."""
    from clipa.cli._common import load_recipe

    d = recipe_mod.load("recipes/demo.yaml").model_dump(mode="json")
    d["hardware"] = {"name": "no-such-machine"}
    path = recipe_mod.dump(recipe_mod.from_dict(d), tmp_path / "r.yaml")
    with pytest.raises(UserError, match=f"{path}: hardware.name: unknown hardware 'no-such-machine'"):
        load_recipe(path)
    code = "import sys, clipa.recipe; bad = [m for m in sys.modules if m.startswith('clipa.costmodels')]; assert not bad, bad"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_progress_round_trips_through_a_checkpoints_json_and_keeps_its_field_names(tmp_path):
    # The names are the checkpoint format of both backends: renaming one breaks resuming old runs.
    assert [f.name for f in fields(rs.RunProgress)] == ["stage", "step", "samples_drawn", "time_s", "stage_time_s",
                                                        "skipped", "reasons", "metrics_bytes", "history"]
    p = rs.RunProgress(stage=1, step=7, samples_drawn=56, reasons={"decode": 2}, history=[{"name": "a"}])
    saved = json.loads(json.dumps({**asdict(p), "optimizer": {}, "rng": [1, 2]}))
    assert rs.RunProgress.from_state(saved) == p
    # The checkpoint's position: this process's counts added to the earlier processes', metrics size now.
    (tmp_path / "m.jsonl").write_text("x" * 13)
    p.skipped, p.stage_time_s = 3, 10.0
    meta = rs.checkpoint_meta(p, skipped=2, reasons={"decode": 1, "shard": 4}, time_s=99.0, stage_s=5.0,
                              metrics_path=tmp_path / "m.jsonl")
    assert meta == {**asdict(p), "skipped": 5, "reasons": {"decode": 3, "shard": 4}, "time_s": 99.0,
                    "stage_time_s": 15.0, "metrics_bytes": 13}
    assert p.reasons == {"decode": 2} and meta["history"] is not p.history  # a copy: later progress leaves it be
    assert rs.checkpoint_meta(p, skipped=0, reasons={}, time_s=1.0, stage_s=0.0,
                              metrics_path=tmp_path / "none.jsonl")["metrics_bytes"] == 0


def test_intervals_and_counts():
    st = Stage(name="s", samples=100, global_batch=8, image_size=32, text_len=8, optimizer={"lr": 1e-3})
    assert st.every(None) == 0 and st.every(3) == 1 and st.every(100) == 12
    # 13 steps: the end-of-stage evaluation, plus one every 4 steps before the last (steps 4, 8, 12)
    assert st.evaluations(None) == 1 and st.evaluations(32) == 4 and st.evaluations(104) == 1
    assert rs.merge_counts({"a": 1}, {"a": 2, "b": 1}) == {"a": 3, "b": 1}


def test_no_framework_import():
    # A fresh process: other tests in this one may have imported torch or jax already.
    code = ("import sys, clipa.backends.runstate, clipa.backends.data.resolve; "
            "sys.exit(any(m.split('.')[0] in ('torch', 'jax') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_resume_command_keeps_the_launch_shape_and_quotes_paths():
    from clipa.backends.base import LaunchOptions

    opts = LaunchOptions(nproc=8, nnodes=2, node_rank=1, rdzv_endpoint="h0:29500", device="cuda", max_samples=10)
    assert rs.resume_command(Path("r s.yaml"), Path("runs/x"), "torch", opts) == (
        "clipa-run 'r s.yaml' --run-dir runs/x --nproc 8 --nnodes 2 --node-rank 1 --rdzv-endpoint h0:29500 "
        "--device cuda")
    assert rs.resume_command(Path("r.yaml"), Path("d"), "jax", LaunchOptions(tpu="v4", zone="z")) == (
        "clipa-run r.yaml --run-dir d --backend jax --tpu v4 --zone z")
    assert rs.resume_command(Path("r.yaml"), Path("d"), "torch") == "clipa-run r.yaml --run-dir d"
