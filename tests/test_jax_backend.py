"""The JAX backend end to end: TPU launch command, user errors, a tiny run, resume, run-dir outputs."""
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("jax")

from tiny_run import tiny, write  # noqa: E402

from clipa import recipe as recipe_mod  # noqa: E402
from clipa import rundir  # noqa: E402
from clipa.backends.jax import launch as tpu_launch  # noqa: E402
from clipa.cli.run import app  # noqa: E402
from clipa.cli._common import run_app  # noqa: E402

def _recipe(tmp_path: Path, name="recipe.yaml") -> Path:
    """The shipped tiny recipe on 256 generated demo samples, checkpointing every 64 samples."""
    rec = tiny(dataset={"name": "demo", "train_samples": 256, "workers": 0}, name="jax-tiny",
               train={"checkpoint_every_samples": 64})
    return write(rec, tmp_path / name)


def test_tpu_dry_run_prints_gcloud_command(tmp_path, capsys):
    rec = _recipe(tmp_path, "my recipe.yaml")  # a space: the inner command must be quoted
    code = run_app(app, [str(rec), "--backend", "jax", "--tpu", "pod-1", "--zone", "us-central2-b",
                         "--project", "proj", "--run-dir", "runs/x y", "--dry-run"])
    assert code == 0
    argv = shlex.split(capsys.readouterr().out.strip())
    assert argv[:10] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1", "--zone", "us-central2-b",
                         "--project", "proj"]
    assert argv[10:12] == ["--worker=all", "--command"] and len(argv) == 13
    # The worker writes the recipe it was sent (the laptop's file is not on the pod), then trains it.
    inner = shlex.split(argv[12])
    path = inner[8]
    assert inner[:6] == ["mkdir", "-p", ".clipa/recipes", "&&", "printf", "%s"] and inner[7] == ">"
    assert path.startswith(".clipa/recipes/") and path.endswith(".yaml")
    sent = recipe_mod.from_dict(yaml.safe_load(inner[6]))
    assert sent.model_copy(update={"predictions": None}) == recipe_mod.load(rec) and sent.predictions is not None
    assert inner[9:] == ["&&", "env", "CLIPA_JAX_DISTRIBUTED=1", "clipa-run", path, "--backend", "jax",
                         "--run-dir", "runs/x y"]
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_the_recipe_a_tpu_worker_writes_is_the_one_sent_whatever_it_holds(tmp_path):
    """The shell on each worker runs ship_recipe's command: the recipe is the user's text, quoted as data."""
    rec = recipe_mod.load(_recipe(tmp_path))
    rec = rec.model_copy(update={"notes": "it's $(touch pwned) `touch pwned2` \"x\" ' && touch pwned3 ; \\n\nline 2 é"})
    write, path = tpu_launch.ship_recipe(rec)
    work = tmp_path / "worker"
    work.mkdir()
    subprocess.run(["bash", "-c", write], cwd=work, check=True)
    assert recipe_mod.load(work / path) == rec
    assert sorted(p.name for p in work.iterdir()) == [".clipa"]  # nothing else ran
    other, again = tpu_launch.ship_recipe(rec.model_copy(update={"notes": "edited"}))[1], tpu_launch.ship_recipe(rec)[1]
    assert other != path == again  # named by content


def test_tpu_without_project_leaves_it_out(tmp_path, capsys):
    rec = _recipe(tmp_path)
    assert run_app(app, [str(rec), "--backend", "jax", "--tpu", "v", "--zone", "z", "--dry-run"]) == 0
    assert "--project" not in shlex.split(capsys.readouterr().out)


@pytest.mark.parametrize("flags,needle", [
    (["--tpu", "pod-1"], "--zone is required"),
    (["--zone", "us-central2-b"], "--zone is only used with --tpu"),
    (["--nproc", "2"], "--nproc 2"),
    (["--nnodes", "2"], "--rdzv-endpoint"),
])
def test_bad_flags_are_one_line_errors(tmp_path, flags, needle):
    rec = _recipe(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "clipa.cli.run", str(rec), "--backend", "jax", *flags,
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def _run(rec: Path, run_dir: Path, *extra) -> int:
    return run_app(app, [str(rec), "--backend", "jax", "--device", "cpu", "--run-dir", str(run_dir), *extra])


def test_tiny_run_writes_run_dir_and_resumes_identically(tmp_path):
    from safetensors.numpy import load_file

    rec = _recipe(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(rec, a) == 0
    # b: stopped inside the first stage, then resumed with the same command
    assert _run(rec, b, "--max-samples", "64") == 0
    assert not (b / rundir.ACHIEVED).exists()
    assert _run(rec, b) == 0

    for d in (a, b):
        ach = rundir.read_achieved(d)
        assert ach.backend == "jax" and ach.eval_set == "demo-heldout" and ach.n_devices == 1
        assert [s.name for s in ach.stages] == ["pre", "ft"]
        # the final top-1 is the last stage's evaluation, and the resumed run's weights evaluate the same
        evals = [m.top1 for m in rundir.read_metrics(d) if m.kind == "eval"]
        assert ach.top1 is not None and ach.top1 == ach.stages[-1].top1 == evals[-1] == rundir.read_achieved(a).top1
        assert (d / rundir.RECIPE).exists()
    lines = rundir.read_metrics(a)
    train = [m for m in lines if m.kind == "train"]
    assert [m.step for m in train if m.stage == "pre"] == [2, 4, 6, 8]
    assert all(np.isfinite(m.loss) and m.lr > 0 and m.samples_per_s > 0 for m in train)
    # the resumed run logged each step once (metrics truncated to the checkpoint on resume)
    assert [(m.stage, m.step, m.kind) for m in rundir.read_metrics(b)] == [(m.stage, m.step, m.kind) for m in lines]
    wa, wb = load_file(str(a / "checkpoints/final.safetensors")), load_file(str(b / "checkpoints/final.safetensors"))
    assert set(wa) == set(wb) and "visual.pos_embed" in wa
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], atol=1e-6, err_msg=k)

    # final.safetensors is a PyTorch-backend checkpoint: it loads strictly into the torch model
    torch = pytest.importorskip("torch")
    from clipa import encoders
    from clipa.backends.torch.model import CLIPA

    m = CLIPA(encoders.get("test"), 40)
    m.set_stage(40, "learned")
    m.load_state_dict({k: torch.from_numpy(v) for k, v in wa.items()}, strict=True)

    # running a finished run again does nothing
    assert _run(rec, a) == 0
