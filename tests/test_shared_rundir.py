"""A run directory at a URL (issue 11 item 4): every run-directory file and both checkpoint formats go
through clipa/fs.py, tested on fsspec's in-memory filesystem (memory://, in-process) and on file:// URLs
(the URL code path in real subprocesses; gs:// takes the same path through gcsfs, not reachable here).
A run on it resumes after all its processes are killed, to the uninterrupted run's weights and metrics;
a TPU launch prints the pod command for a gs:// run directory and refuses a local one on a multi-host slice."""
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from tiny_run import ENV, cmd as tiny_cmd, make_data, recipe as tiny_recipe

from clipa import fs, recipe as recipe_mod, rundir
from clipa.backends import runstate as rs
from clipa.cli._common import run_app
from clipa.cli.report import app as report_app
from clipa.cli.run import app


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory)


@pytest.fixture(autouse=True)
def _temp_in_tmp_path(tmp_path, monkeypatch):
    """A URL run keeps its local files (the demo's shards) in the temp folder (fs.local_dir): this test's,
    removed with it, not the machine's /tmp, where they stayed after the suite (9 MB)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setitem(ENV, "TMPDIR", str(tmp_path))


def _mem(name: str) -> str:
    return f"memory://clipa-test-{uuid.uuid4().hex[:8]}/{name}"


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_atomic_replaces_whole_files_and_exclusive_keeps_the_first(tmp_path, where):
    base = fs.path(str(tmp_path) if where == "local" else _mem("w"))
    p = base / "sub" / "a.json"
    assert fs.write_atomic(p, '{"v": 1}') and p.read_text() == '{"v": 1}'
    assert fs.write_atomic(p, b'{"v": 2}') and p.read_bytes() == b'{"v": 2}'
    assert not fs.write_atomic(p, '{"v": 3}', exclusive=True) and p.read_text() == '{"v": 2}'
    assert fs.write_atomic(base / "b", "x", exclusive=True)
    assert sorted(q.name for q in (base / "sub").iterdir()) == ["a.json"]  # no temporary file left behind
    fs.append_text(base / "m.jsonl", "1\n")
    fs.append_text(base / "m.jsonl", "2\n")
    rs.truncate_metrics(base / "m.jsonl", 3)  # a torn second line is dropped, the first kept
    assert (base / "m.jsonl").read_bytes() == b"1\n" and (base / "m.jsonl").stat().st_size == 2


def test_a_url_is_never_a_local_path():
    p = fs.path("gs://bucket/run") / "checkpoints"
    assert str(p) == "gs://bucket/run/checkpoints" and p.name == "checkpoints" and str(p.parent) == "gs://bucket/run"
    with pytest.raises(TypeError):
        open(p)  # no __fspath__: a URL never becomes a file named "gs:" in the working directory
    assert isinstance(fs.path("runs/x"), Path) and fs.local_dir("runs/x", "data") == Path("runs/x/data")


def test_only_the_main_process_writes_the_recipe(tmp_path):
    rec = recipe_mod.load(tiny_recipe(tmp_path, {k: "x" for k in ("train", "val", "classnames", "templates")}))
    url = _mem("r")
    console = Console(stderr=True)
    assert rs.prepare_run_dir(rec, url, "jax", console, is_main=False)
    assert not (fs.path(url) / rundir.RECIPE).exists()
    assert rs.prepare_run_dir(rec, url, "jax", console, is_main=True)
    assert recipe_mod.load(fs.path(url) / rundir.RECIPE) == rec


def _weights(run_dir) -> dict:
    from safetensors.numpy import load

    return load((fs.path(run_dir) / rundir.CHECKPOINTS / "final.safetensors").read_bytes())


def _same_run(a, b) -> None:
    """Same final weights (bit for bit) and the same metrics lines, each once."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    la, lb = rundir.read_metrics(a), rundir.read_metrics(b)
    assert [(m.kind, m.stage, m.step, m.loss, m.top1) for m in la] == [(m.kind, m.stage, m.step, m.loss, m.top1)
                                                                       for m in lb]


def _run(recipe: Path, run_dir: str, *extra) -> int:
    return run_app(app, [str(recipe), "--run-dir", run_dir, "--device", "cpu", *extra])


def test_torch_run_on_a_memory_url_resumes_after_every_worker_is_killed(tmp_path, data):
    recipe = tiny_recipe(tmp_path, data, "mem", pre=128, report_to=["tensorboard"])
    ref, run = _mem("ref"), _mem("run")
    assert _run(recipe, ref) == 0
    assert _run(recipe, run, "--max-samples", "96") == 0  # a checkpoint at step 6 of 'pre'
    # What a kill after that checkpoint leaves on an object store: lines logged after it, and a newer
    # checkpoint whose weights were uploaded but whose state.pt (written last) was not.
    r = fs.path(run)
    fs.append_text(r / rundir.METRICS, json.dumps(dict(stage="pre", step=8, samples=128, time_s=9.0, loss=1.0)) + "\n")
    newer = r / rundir.CHECKPOINTS / "ckpt-0000-000000008"
    fs.write_atomic(newer / "model.safetensors", b"\0" * 64)
    assert not (r / rundir.ACHIEVED).exists()

    assert _run(recipe, run) == 0
    _same_run(ref, run)
    assert rundir.read_achieved(run).stages[-1].name == "ft"
    assert list((r / "tensorboard").glob("events.out.tfevents.*"))
    assert _run(recipe, run) == 0  # finished: nothing to do, nothing changed
    _same_run(ref, run)
    # the report reads the URL run directory and writes its figures locally
    assert run_app(report_app, [run, "--no-front", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").exists()


def _train_steps(run_dir: str) -> list:
    p = fs.path(run_dir) / rundir.METRICS
    lines = p.read_text().split("\n")[:-1] if p.exists() else []
    return [(m["stage"], m["step"]) for m in map(json.loads, lines) if m.get("kind", "train") == "train"]


def test_kill9_of_a_run_on_a_file_url_then_the_same_command_resumes_it(tmp_path, data):
    recipe = tiny_recipe(tmp_path, data, "k9", pre=256, lr2=1e-4, checkpoint_every_samples=64)
    ref, run = f"file://{tmp_path}/ref", f"file://{tmp_path}/run"
    for d in (ref, run):
        assert not fs.path(d).exists()
    done = subprocess.run(tiny_cmd(recipe, ref), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.Popen(tiny_cmd(recipe, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    state = fs.path(run) / rundir.CHECKPOINTS / "ckpt-0000-000000008" / "state.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (state.exists() and ("pre", 10) in _train_steps(run)):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (fs.path(run) / rundir.ACHIEVED).exists()

    again = subprocess.run(tiny_cmd(recipe, run), capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming {run} from ckpt-0000-" in again.stderr
    _same_run(ref, run)


@pytest.mark.slow
def test_jax_run_on_a_file_url_resumes_to_the_uninterrupted_runs_weights(tmp_path):
    # orbax cannot write fsspec's memory:// (it is refused in one line); file:// takes the URL code path
    # of every other run-directory file, and orbax writes the local folder it names.
    pytest.importorskip("jax")
    from test_jax_backend import _recipe

    rec = _recipe(tmp_path)
    ref, run = str(tmp_path / "ref"), f"file://{tmp_path}/run"
    assert _run(rec, ref, "--backend", "jax") == 0
    assert _run(rec, run, "--backend", "jax", "--max-samples", "64") == 0
    assert not (fs.path(run) / rundir.ACHIEVED).exists()
    assert _run(rec, run, "--backend", "jax") == 0
    wa, wb = _weights(ref), _weights(run)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], atol=1e-6, err_msg=k)
    assert [(m.kind, m.stage, m.step) for m in rundir.read_metrics(ref)] == \
        [(m.kind, m.stage, m.step) for m in rundir.read_metrics(run)]


def _tpu_recipe(tmp_path: Path, hardware: str) -> Path:
    stage = {"name": "s", "samples": 128, "global_batch": 32, "image_size": 32, "text_len": 8,
             "optimizer": {"lr": 1e-3}}
    p = tmp_path / f"{hardware}.yaml"
    p.write_text(yaml.safe_dump({"name": "pod", "encoder": {"name": "test"}, "hardware": {"name": hardware},
                                 "dataset": {"name": "demo", "workers": 0}, "stages": [stage]}))
    return p


def _clipa_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipa.cli.run", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def test_tpu_pod_dry_run_with_a_gs_run_dir_prints_the_command_for_every_worker(tmp_path):
    rec = _tpu_recipe(tmp_path, "tpu-v4-64")
    p = _clipa_run(rec, "--backend", "jax", "--tpu", "my-v4-64", "--zone", "us-central2-b", "--run-dir",
                   "gs://my-bucket/pod-run", "--dry-run")
    assert p.returncode == 0, p.stderr
    argv = shlex.split(p.stdout.strip())
    assert argv[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-64", "--zone"]
    assert argv[-3:-1] == ["--worker=all", "--command"]
    assert shlex.split(argv[-1])[-2:] == ["--run-dir", "gs://my-bucket/pod-run"]
    assert "shares the run directory gs://my-bucket/pod-run" in p.stderr


def test_tpu_pod_refuses_a_local_run_dir_on_a_multi_host_slice(tmp_path):
    flags = ["--backend", "jax", "--tpu", "my-tpu", "--zone", "us-central2-b", "--dry-run", "--run-dir"]
    p = _clipa_run(_tpu_recipe(tmp_path, "tpu-v4-64"), *flags, tmp_path / "run")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--run-dir" in lines[0] and "8 hosts" in lines[0] and "gs://" in lines[0]
    assert not p.stdout and not (tmp_path / "run").exists()
    # one host (tpu-v4-8: 4 chips, 4 per host): a local run directory is the host's own, and fine
    assert _clipa_run(_tpu_recipe(tmp_path, "tpu-v4-8"), *flags, tmp_path / "run").returncode == 0


@pytest.mark.parametrize("flags,needle", [
    (["--slurm", "--run-dir", "gs://b/run"], "--slurm needs a path on the cluster's shared filesystem"),
    (["--backend", "jax", "--run-dir", "memory://b/run"], "orbax) need a local path or a gs:// URL"),
])
def test_a_url_the_launch_cannot_use_is_refused_in_one_line(tmp_path, flags, needle):
    p = _clipa_run(_tpu_recipe(tmp_path, "cpu"), *flags, "--dry-run")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
