"""clipa-run on the torch backend, end to end in subprocesses: resume after kill -9, corrupt data,
divergence, user mistakes, and a 2-process torchrun launch. Real shards written by the test."""
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny_run import ENV, cmd as _cmd, make_data, recipe as _recipe, run as _run

from clipa import rundir
from clipa.backends.torch import launch

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory)


def test_kill9_then_resume_equals_uninterrupted(tmp_path, data):
    recipe = _recipe(tmp_path, data, checkpoint_every_samples=32)
    ref = _run(recipe, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(recipe, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list((run_dir / "checkpoints").glob("ckpt-0000-*/state.pt")):  # complete: state.pt is written last
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / rundir.ACHIEVED).exists()
    resumed = _run(recipe, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr

    a = load_file(str(tmp_path / "ref" / "checkpoints" / "final.safetensors"))
    b = load_file(str(run_dir / "checkpoints" / "final.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # metrics: no duplicated steps after the resume
    steps = [(m.stage, m.step) for m in rundir.read_metrics(run_dir) if m.kind == "train"]
    assert len(steps) == len(set(steps))
    ach = rundir.read_achieved(run_dir)
    assert [s.name for s in ach.stages] == ["pre", "ft"] and ach.top1 is not None and ach.wall_seconds > 0
    assert (ach.eval_classes, ach.eval_images) == (10, 30)  # tiny_run's held-out split: 10 shapes, 30 images
    # the shards' sample counts, saved with the checkpoints, for a resumed run to fast-forward by
    counts = json.loads((run_dir / rundir.SHARD_COUNTS).read_text())
    assert sum(c for _, _, c, _ in counts.values()) == 192 and all(Path(p).is_file() for p in counts)

    # the same command on a finished run says so and exits 0; a different recipe there is refused
    again = _run(recipe, run_dir)
    assert again.returncode == 0 and "already finished" in again.stderr
    other = _run(_recipe(tmp_path, data, lr2=5e-4, checkpoint_every_samples=32), run_dir)
    assert other.returncode == 2 and "different recipe" in other.stderr and "Traceback" not in other.stderr


def test_corrupt_shard_and_undecodable_image_are_skipped(tmp_path, data):
    from clipa.backends.data.webdataset_io import read_shard_samples, write_shard

    shards = sorted(Path(data["train"]).parent.glob("*.tar")) if "{" in data["train"] else None
    src = shards[0] if shards else Path(data["train"])
    samples, _ = read_shard_samples(src)
    bad = [dict(s) for s in samples[:40]]
    for s in bad[:5]:
        s["jpg"] = b"this is not a jpeg"
    d = tmp_path / "shards"
    d.mkdir()
    write_shard(d / "good.tar", samples)
    write_shard(d / "badimg.tar", bad)
    (d / "corrupt.tar").write_bytes(b"\x00garbage" * 1000)
    spec = {**data, "train": str(d)}
    recipe = _recipe(tmp_path, spec)
    r = _run(recipe, tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    ach = rundir.read_achieved(tmp_path / "run")
    assert ach.skipped_samples >= 5
    assert "skipped" in r.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data):
    recipe = _recipe(tmp_path, data, lr2=1e10)  # the second stage's lr blows the weights up
    r = _run(recipe, tmp_path / "run")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "NaN/inf" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / rundir.ACHIEVED).exists()
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*"))
    assert ckpts and ckpts[-1].name.startswith("ckpt-0000-")  # only the first stage's checkpoints
    w = load_file(str(ckpts[-1] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())


def test_user_mistakes_are_one_line_exit_2(tmp_path, data):
    bad = tmp_path / "bad.yaml"
    bad.write_text(_recipe(tmp_path, data).read_text().replace("global_batch: 16", "global_btch: 16", 1))
    r = _run(bad, tmp_path / "r1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "stages[0].global_batch" in r.stderr

    rec = yaml.safe_load(_recipe(tmp_path, data).read_text())
    rec["dataset"]["train"] = str(tmp_path / "nowhere" / "shard-{0000..0003}.tar")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(rec))
    r = _run(missing, tmp_path / "r2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "dataset.train" in r.stderr and "nowhere" in r.stderr

    r = _run(_recipe(tmp_path, data), tmp_path / "r3", "--nproc", "3")  # each of the 3 workers said it, after
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [  # the run directory was made
        "error: stages[0].global_batch: 16 is not divisible by 3 processes"], r.stderr
    assert not (tmp_path / "r3").exists()


def test_two_process_torchrun_launch(tmp_path, data):
    rec = yaml.safe_load(_recipe(tmp_path, data).read_text())
    rec["stages"] = rec["stages"][:1]
    rec["stages"][0]["samples"] = 64
    p = tmp_path / "two.yaml"
    p.write_text(yaml.safe_dump(rec))
    r = _run(p, tmp_path / "run", "--nproc", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    ach = json.loads((tmp_path / "run" / rundir.ACHIEVED).read_text())
    assert ach["n_devices"] == 2 and ach["stages"][0]["samples"] == 64
    assert "planned for" not in r.stderr  # the local 'cpu' hardware matches any process count


def test_a_run_on_other_devices_than_its_recipe_was_planned_for_says_so(tmp_path, data):
    """A plan for a100x8 started without --nproc 8, or where torch finds no GPU, trains; its first line says
    that the predictions are for other devices (it trained without a word before)."""
    rec = yaml.safe_load(_recipe(tmp_path, data).read_text())
    rec["hardware"] = {"name": "a100x8"}
    p = tmp_path / "a100.yaml"
    p.write_text(yaml.safe_dump(rec))
    r = _run(p, tmp_path / "run", "--max-samples", "16")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: the recipe is planned for")]
    assert lines == ["warning: the recipe is planned for a100x8 (8 x A100-80GB) and this run trains on cpu (1 process): "
                     "its predicted time and cost, and the per-device batch its memory plan assumed, are for a100x8; on "
                     "that machine: clipa-run ... --nproc 8"], r.stderr[-3000:]


def test_a_resume_on_another_number_of_processes_says_the_data_order_changed(tmp_path, data):
    recipe = _recipe(tmp_path, data)
    first = _run(recipe, tmp_path / "run", "--max-samples", "32")  # stops after a checkpoint
    assert first.returncode == 0 and "warning: resumed" not in first.stderr, first.stderr[-3000:]
    again = _run(recipe, tmp_path / "run", "--nproc", "2", "--max-samples", "64")
    assert again.returncode == 0, again.stderr[-3000:]
    assert ("warning: resumed on 2 processes from a checkpoint 1 wrote: training goes on, but each process's share "
            "of the data depends on their number") in again.stderr, again.stderr[-3000:]


def test_nodes_that_never_meet_are_one_line(tmp_path):
    """Node 1 of 2 never comes: torchrun's rendezvous times out (here after 3 s, by default 900 s) in one
    line naming the address, not its traceback."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", launch.TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "t", "--rdzv-conf", "join_timeout=3",
           "-m", launch.WORKER, "--run-dir", str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: the 2 nodes did not all meet at localhost:{port} "), r.stderr
