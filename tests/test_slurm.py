"""clipa-run --slurm: the batch script (bash -n, its #SBATCH lines), one-line errors, SLURM's variables
as torchrun's, a 2-process gloo step started with SLURM-style variables equal to 1 process, and the
script itself run end to end with stand-ins for srun and scontrol (2 tasks on this machine)."""
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny_run import make_data, tiny, write

from clipa import rundir
from clipa.backends.torch import slurm
from clipa.errors import UserError

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", slurm.LAUNCHER_ENV):
    ENV.pop(k, None)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    rec = tiny(make_data(tmp_path_factory), stages=1, name="slurm-test")
    rec["stages"][0]["samples"] = 64
    return write(rec, tmp_path_factory.mktemp("slurm") / "r.yaml")


def _clipa_run(*args):
    return subprocess.run([sys.executable, "-m", "clipa.cli.run", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600)


def test_dry_run_prints_a_script_bash_accepts(recipe, tmp_path):
    run_dir = tmp_path / "run"
    r = _clipa_run(recipe, "--run-dir", run_dir, "--slurm", "--nodes", "2", "--gpus-per-node", "4",
                   "--partition", "gpu", "--time", "1-00:00:00", "--dry-run")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=1",                   # the recipe's 0 decoding workers + the trainer
                 "#SBATCH --partition=gpu", "#SBATCH --time=1-00:00:00", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@120"):
        assert line in text.splitlines(), line
    assert any(line.startswith("export CLIPA_LAUNCHER=slurm") for line in text.splitlines())
    assert "shared filesystem" in text and "srun " in text and "scontrol requeue" in text
    assert text.startswith("#!/bin/bash\n")
    check = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert not run_dir.exists()                                  # a dry run writes nothing
    r = _clipa_run(recipe, "--run-dir", tmp_path / "100%", "--slurm", "--dry-run")
    assert f"#SBATCH --output={tmp_path}/100%%/slurm-%j.out" in r.stdout.splitlines(), r.stdout  # %% is sbatch's %


@pytest.mark.parametrize("args,needle", [
    (("--slurm", "--time", "tomorrow", "--dry-run"), "--time: 'tomorrow' is not a SLURM time limit"),
    (("--slurm", "--partition", "gpu;rm", "--dry-run"), "--partition: 'gpu;rm' is not a partition name"),
    (("--nodes", "2", "--dry-run"), "--nodes: does not apply without --slurm"),
    (("--slurm", "--nproc", "2", "--dry-run"), "--nproc: does not apply with --slurm"),
    (("--slurm", "--backend", "jax", "--dry-run"), "--slurm: does not apply to --backend jax"),
    # sbatch splits an #SBATCH line at spaces: the job's log would have gone to '.../my'
    (("--slurm", "--run-dir", "my run", "--dry-run"), "cannot hold spaces, quotes or backslashes"),
])
def test_bad_options_are_one_line(recipe, tmp_path, args, needle):
    r = _clipa_run(recipe, "--run-dir", tmp_path / "run", *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_slurm_variables_become_torchruns():
    env = {"CLIPA_LAUNCHER": "slurm", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
           "SLURM_TASKS_PER_NODE": "4(x2)"}
    assert slurm.torch_env(env) == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}
    bound = slurm.torch_env({**env, "CUDA_VISIBLE_DEVICES": "3"})   # one GPU bound to the task: its device 0
    assert bound["LOCAL_RANK"] == "0" and bound["RANK"] == "5"
    assert slurm.torch_env({**env, "CUDA_VISIBLE_DEVICES": "0,1,2,3"})["LOCAL_RANK"] == "1"
    # without the script's marker (e.g. a plain clipa-run inside salloc), or under torchrun: untouched
    assert slurm.torch_env({k: v for k, v in env.items() if k != "CLIPA_LAUNCHER"}) == {}
    assert slurm.torch_env({**env, "WORLD_SIZE": "2"}) == {}
    with pytest.raises(UserError, match="SLURM_PROCID is None: start the workers with srun"):
        slurm.torch_env({"CLIPA_LAUNCHER": "slurm", "SLURM_NTASKS": "2"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_env(ntasks: int, **extra) -> dict:
    return {**ENV, "CLIPA_LAUNCHER": "slurm", "SLURM_NTASKS": str(ntasks), "SLURM_NTASKS_PER_NODE": str(ntasks),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), **extra}


def test_two_slurm_tasks_equal_one_process(tmp_path):
    # tests/test_torch_dist.py's worker: one step of the real model and loss, process group from dist.init
    # (the code path the script's workers take), gradients saved by rank 0.
    script = str(TESTS / "test_torch_dist.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one.npz")], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    env = _slurm_env(2)
    procs = [subprocess.Popen([sys.executable, script, str(tmp_path / "two.npz")], stderr=subprocess.PIPE, text=True,
                              env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    a, b = dict(np.load(tmp_path / "one.npz")), dict(np.load(tmp_path / "two.npz"))
    assert set(a) == set(b) and len(a) > 10
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-5, err_msg=name)
    assert max(np.abs(a[n]).max() for n in a if n != "loss") > 1e-3   # not trivially zero


# Stand-ins for SLURM's commands, enough to run the generated script on one machine: srun starts
# SLURM_NTASKS tasks with SLURM_PROCID/SLURM_LOCALID (as srun does), forwards SIGTERM to them and exits
# with the highest of their exit codes (as srun does);
# scontrol names this host and records requeues.
FAKE_SRUN = """#!/bin/bash
touch "$FAKE_SLURM_LOG.srun"
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$i "$@" & pids+=($!); done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
rc=0
for p in "${pids[@]}"; do
    while true; do wait "$p"; r=$?; kill -0 "$p" 2>/dev/null || break; done
    [ "$r" -gt "$rc" ] && rc=$r
done
exit $rc
"""
FAKE_SCONTROL = """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then echo 127.0.0.1; fi
if [ "$1" = "requeue" ]; then echo "$2" >> "$FAKE_SLURM_LOG"; fi
"""


def _fake_bin(tmp: Path) -> Path:
    b = tmp / "bin"
    b.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (b / name).write_text(text)
        (b / name).chmod((b / name).stat().st_mode | stat.S_IEXEC)
    return b


def _job(recipe: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    """(run directory, the script clipa-run --slurm --dry-run prints for 2 tasks, the job's environment with
    the stand-ins first on PATH and requeues logged to tmp_path/requeues)."""
    run_dir = tmp_path / "run"
    r = _clipa_run(recipe, "--run-dir", run_dir, "--slurm", "--gpus-per-node", "2", "--device", "cpu", "--dry-run")
    assert r.returncode == 0, r.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(r.stdout)
    env = _slurm_env(2, PATH=f"{_fake_bin(tmp_path)}{os.pathsep}{ENV['PATH']}", SLURM_JOB_ID="4242",
                     SLURM_JOB_NODELIST="node1", FAKE_SLURM_LOG=str(tmp_path / "requeues"))
    return run_dir, script, env


def test_script_trains_on_two_tasks_and_resumes_a_finished_run(recipe, tmp_path):
    run_dir, script, env = _job(recipe, tmp_path)
    env.pop("MASTER_ADDR")
    env.pop("MASTER_PORT")                                       # the script sets both
    job = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    ach = json.loads((run_dir / rundir.ACHIEVED).read_text())
    assert ach["n_devices"] == 2 and ach["stages"][0]["samples"] == 64
    assert (run_dir / rundir.RECIPE).exists()                    # prepared by the script itself
    # the same job again (a requeue after the end): nothing to train
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr
    assert not (tmp_path / "requeues").exists()


def test_time_limit_signal_stops_the_workers_and_requeues(recipe, tmp_path):
    import signal
    import time

    run_dir, script, env = _job(recipe, tmp_path)
    log = Path(env["FAKE_SLURM_LOG"])
    job = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not Path(f"{log}.srun").exists():                     # the workers are starting: the traps are set
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)                              # what --signal=B:USR1@120 sends
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert "time limit near" in err and log.read_text().split() == ["4242"]
    assert not (run_dir / rundir.ACHIEVED).exists()              # stopped before the end
    # the requeued job starts the same script again and finishes the run from its run directory
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / rundir.ACHIEVED).read_text())["n_devices"] == 2


def test_a_job_on_a_directory_another_run_trains_into_stops_in_one_line(recipe, tmp_path, monkeypatch):
    """Two jobs on one run directory (the same clipa-run --slurm submitted twice) both trained into it: the
    job's first task now holds the lock that clipa-run takes, and the second job stops at it. Its prepare
    step finds the recipe there and skips, as a requeued job does, so the task's own check is the one met."""
    from clipa import runlock

    run_dir, script, env = _job(recipe, tmp_path)
    monkeypatch.setenv("SLURM_NTASKS", "2")  # as in the first job: it records the parallelism for 2 tasks
    with runlock.scope():
        slurm.prepare(recipe, run_dir)
    with runlock.scope():
        runlock.claim(run_dir)  # the other run, training
        job = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 2, job.stderr[-3000:]
    said = [line for line in job.stderr.splitlines() if line.startswith("error: ")]
    assert said == [f"error: {run_dir}: another run is training into it (pid {os.getpid()} on "
                    f"{socket.gethostname()} since " + said[0].split(" since ", 1)[1]], job.stderr[-3000:]
    assert "Traceback" not in job.stderr and not (run_dir / rundir.METRICS).exists()
