"""A full disk under the run directory (a real one: a 64 MB tmpfs in a mount namespace of its own) stops
training with one line that names the file, the newest complete checkpoint and the command that resumes,
exit 1 and no traceback; the checkpoints written before it survive, and resuming once there is room ends
with the weights of a run that never hit it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny_run import ENV, cmd, make_data, recipe, run, tiny

from clipa import recipe as recipe_mod
from clipa.backends import runstate as rs

# Each prefix makes a mount namespace where a tmpfs can be mounted: unprivileged (a user namespace), or as root.
_NAMESPACES = (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"])
# The tiny run's checkpoint is 40.7 MB (13.5 MB weights + 27.1 MB optimizer state) and the first stage's
# weights file 13.5 MB: 64 MB holds the checkpoint at step 10 and the stage's weights, not the checkpoint
# that closes the stage.
_SIZE = "64m"
# Mount the tmpfs on $1, train in it, then copy the run out to $2 before the namespace (and its tmpfs) ends.
_SCRIPT = 'mount -t tmpfs -o size="$3" clipa-test "$1" || exit 99; "${@:4}"; rc=$?; cp -a "$1/run" "$2/"; exit $rc'


def _namespace() -> list:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): a real full disk needs a mount namespace")
    for prefix in _NAMESPACES:
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("this machine allows no mount namespace (unshare failed): no real full disk to test with")


def _on_full_disk(prefix: list, mnt: Path, out: Path, command: list) -> subprocess.CompletedProcess:
    mnt.mkdir(), out.mkdir()
    return subprocess.run([*prefix, "bash", "-c", _SCRIPT, "bash", str(mnt), str(out), _SIZE, *command],
                          capture_output=True, text=True, env=ENV, timeout=600)


def test_full_disk_is_one_line_keeps_checkpoints_and_resumes(tmp_path_factory, tmp_path):
    prefix = _namespace()
    data = make_data(tmp_path_factory)
    rec = recipe(tmp_path, data, "full", pre=256, lr2=1e-4, checkpoint_every_samples=160)  # a checkpoint at step 10
    ref = run(rec, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    # The room estimated before a run starts, against what the finished reference keeps: the last two
    # checkpoints and three weights files (the estimate adds the checkpoint being written).
    need, ckpt, _ = rs.checkpoint_bytes(recipe_mod.load(rec))
    kept = sum(f.stat().st_size for f in (tmp_path / "ref" / "checkpoints").rglob("*") if f.is_file())
    assert need - ckpt == pytest.approx(kept, rel=0.002)
    assert "warning" not in ref.stderr

    mnt, out = tmp_path / "mnt", tmp_path / "out"
    full = _on_full_disk(prefix, mnt, out, cmd(rec, mnt / "run"))
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    # Said before training: 64 MB (67 MB) is not enough.
    assert f"warning: {mnt / 'run'}: 67 MB free, but its checkpoints need up to {need / 1e6:.0f} MB more" in \
        full.stderr, full.stderr[:2000]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last, last
    assert f"{mnt / 'run' / 'checkpoints'}/ckpt-0000-000000016/" in last, last  # the file that did not fit
    assert "training stopped at stage 'pre' step 16, the newest complete checkpoint is ckpt-0000-000000010" in last
    assert f"resume with: clipa-run {rec} --run-dir {mnt / 'run'}" in last, last

    # What was on the full disk: the step-10 checkpoint whole; nothing finished.
    kept = out / "run"
    assert (kept / "checkpoints" / "ckpt-0000-000000010" / "state.pt").is_file()
    assert not (kept / "checkpoints" / "ckpt-0000-000000016" / "state.pt").exists()
    assert not (kept / "achieved.json").exists()

    # With room (the copy), the run resumes from that checkpoint and ends where the reference did.
    res = run(rec, kept)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "from ckpt-0000-000000010" in res.stderr
    a, b = load_file(str(kept / "checkpoints" / "final.safetensors")), load_file(str(tmp_path / "ref" / "checkpoints"
                                                                                    / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_disk_on_the_jax_backend_says_the_same(tmp_path_factory, tmp_path):
    """Orbax reports the failed write as TensorStore's ValueError; the backend turns it into the same line.
    The save's other writes, which TensorStore finishes after it, report nothing (they printed dozens of
    tracebacks, some after clipa's line: a fresh-clone .ci/run on 2026-12-01 failed on it)."""
    prefix = _namespace()
    rec = recipe(tmp_path, make_data(tmp_path_factory), "fullj", pre=256, lr2=1e-4, checkpoint_every_samples=160)
    mnt = tmp_path / "mnt"
    full = _on_full_disk(prefix, mnt, tmp_path / "out",
                         [sys.executable, "-m", "clipa.cli.run", str(rec), "--run-dir", str(mnt / "run"),
                          "--backend", "jax"])
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), full.stderr[-3000:]
    assert "No space left on device; training stopped at stage" in line, line
    assert "the newest complete checkpoint is checkpoint " in line, line
    assert f"resume with: clipa-run {rec} --run-dir {mnt / 'run'} --backend jax" in line, line
    assert (tmp_path / "out" / "run" / "checkpoints" / "10" / "commit_success.txt").is_file()


def test_full_disk_in_a_two_process_run_names_the_command_as_launched(tmp_path_factory, tmp_path):
    """Under torchrun the main worker says it, and its resume command keeps clipa-run's launch flags."""
    prefix = _namespace()
    rec = recipe(tmp_path, make_data(tmp_path_factory), "full2", pre=256, lr2=1e-4, checkpoint_every_samples=160)
    mnt = tmp_path / "mnt"
    full = _on_full_disk(prefix, mnt, tmp_path / "out", cmd(rec, mnt / "run", "--nproc", "2"))
    assert full.returncode == 1, full.stderr[-3000:]
    said = [x for x in full.stderr.splitlines() if x.startswith("error: ")]
    assert len(said) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]  # the other rank and torchrun: quiet
    line = said[0]
    assert "No space left on device" in line, line
    assert line.endswith(f"resume with: clipa-run {rec} --run-dir {mnt / 'run'} --nproc 2 --device cpu"), line


def test_full_disk_in_a_pilot_suite_says_how_to_resume_the_suite(tmp_path_factory, tmp_path):
    """A suite's pilots take their data from the suite: the command to resume is the suite's."""
    from clipa.cli._common import run_app
    from clipa.cli.plan import app as plan_app

    prefix = _namespace()
    target = tmp_path / "t.yaml"
    target.write_text(yaml.safe_dump(tiny(name="t", dataset={"name": "demo", "train_samples": 512, "workers": 0})))
    suite = tmp_path / "suite"
    assert run_app(plan_app, ["--pilot", "--target", str(target), "--hw", "cpu", "--pilot-share", "0.6",
                              "--out", str(suite)]) == 0
    mnt = tmp_path / "mnt"
    full = _on_full_disk(prefix, mnt, tmp_path / "out", cmd(suite / "suite.yaml", mnt / "run"))
    assert full.returncode == 1, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last, last
    assert last.endswith(f"make room, then resume the suite with: clipa-run {suite / 'suite.yaml'} --run-dir "
                         f"{mnt / 'run'} --device cpu"), last
