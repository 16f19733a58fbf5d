"""Training that survives preemption (issue 10 item 4), through real clipa-run subprocesses on the torch
backend: SIGTERM/Ctrl-C/a closed terminal checkpoint and exit 143/130/129, resuming gives the uninterrupted run's weights,
an unreadable newest checkpoint falls back to the one before, decoding workers die with their parent,
metrics.jsonl holds each line once, and each bad sample counts once per run."""
import fcntl
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import termios
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_run import ENV, cmd as _cmd, make_data, recipe, run as _run

from clipa import rundir
from clipa.backends import runstate as rs

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory)


def _recipe(tmp: Path, data: dict, name: str, *, pre=256, workers=0, **train) -> Path:
    return recipe(tmp, data, name, pre=pre, lr2=1e-4, workers=workers, **train)


def _start(recipe, run_dir, *extra):
    """clipa-run, the leader of its own process group as a shell starts a job."""
    return subprocess.Popen(_cmd(recipe, run_dir, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)


def _wait_for(proc, ready, what: str, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-2000:]}"
    assert ready(), f"timed out waiting for {what}"


def _train_steps(run_dir: Path) -> list:
    """(stage, step) of the complete train lines (the run may be writing the last one)."""
    p = run_dir / rundir.METRICS
    lines = p.read_text().split("\n")[:-1] if p.exists() else []
    return [(m["stage"], m["step"]) for m in map(json.loads, lines) if m.get("kind", "train") == "train"]


def _same_weights(a: Path, b: Path) -> None:
    # tensors, not file bytes: the order of safetensors' header entries may differ between writers
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]


def test_sigterm_checkpoints_exits_143_and_resumes_to_the_same_weights(tmp_path, data):
    # periodic checkpoints every 10 steps of the first stage's 16
    recipe = _recipe(tmp_path, data, "term", checkpoint_every_samples=160)
    ref = _run(recipe, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]

    run_dir = tmp_path / "run"
    proc = _start(recipe, run_dir)
    periodic = run_dir / "checkpoints" / "ckpt-0000-000000010"
    # stop after the step-12 line: past the periodic checkpoint, whatever the scheduling
    _wait_for(proc, lambda: periodic.exists() and ("pre", 12) in _train_steps(run_dir), "step 12 of 'pre'")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    hint = f"resume with: clipa-run {recipe} --run-dir {run_dir}"
    assert hint in " ".join(err.split())
    *_, before, newest = sorted((run_dir / "checkpoints").glob("ckpt-*"), key=lambda p: p.name)
    assert newest.name > periodic.name, newest.name  # written on the signal, after the periodic one
    assert not (run_dir / rundir.ACHIEVED).exists()

    # a copy of the stopped run whose newest checkpoint is torn: it resumes from the one before
    torn = tmp_path / "torn"
    shutil.copytree(run_dir, torn)
    (torn / "checkpoints" / newest.name / "model.safetensors").write_bytes(b"\x00" * 100)

    for d in (run_dir, torn):
        resumed = _run(recipe, d)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"resuming {d} from " in resumed.stderr
        _same_weights(tmp_path / "ref" / "checkpoints" / "final.safetensors", d / "checkpoints" / "final.safetensors")
        steps = _train_steps(d)
        assert len(steps) == len(set(steps)) and steps == _train_steps(tmp_path / "ref")
    assert f"checkpoint {newest.name} is unreadable" in " ".join(resumed.stderr.split())
    assert f"from {before.name}" in resumed.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM], ids=["ctrl-c", "hang-up", "sigterm"])
def test_a_signal_to_the_job_with_a_decoding_worker_checkpoints_without_traceback(tmp_path, data, sig):
    """Sent to the job's whole process group, as the terminal sends Ctrl-C, a shell whose terminal closed
    sends SIGHUP, and SLURM sends SIGTERM to every process of a job it preempts: the decoding worker gets it
    too and leaves it to the trainer (for SIGTERM, see test_data_pipeline's grace test)."""
    recipe = _recipe(tmp_path, data, "int", workers=1)
    run_dir = tmp_path / "run"
    proc = _start(recipe, run_dir)
    _wait_for(proc, lambda: bool(_train_steps(run_dir)), "the first metrics line")
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "resume with: clipa-run" in err and f"stopped by {sig.name}" in err
    assert list((run_dir / "checkpoints").glob("ckpt-0000-*"))


@pytest.mark.parametrize("nproc, workers", [(1, 2), (2, 0)], ids=["one-process-two-decoders", "two-processes"])
def test_a_closed_terminal_checkpoints_exits_129_and_resumes(tmp_path, data, nproc, workers):
    """A dropped ssh session: clipa-run leads a session on a pseudo-terminal, as ``ssh -t host clipa-run ...``
    starts it, and the terminal hangs up (its other side closes). The run used to die at once, losing the
    steps since its last checkpoint; now it checkpoints, and writing to the dead terminal (the progress
    bar, the closing line) does not end it first."""
    recipe, run_dir = _recipe(tmp_path, data, "hup", pre=2560, workers=workers), tmp_path / "run"
    extra = ("--nproc", "2") if nproc > 1 else ()
    other_side, terminal = pty.openpty()

    def lead_a_session_on_the_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(_cmd(recipe, run_dir, *extra), stdin=terminal, stdout=terminal, stderr=terminal,
                            env=ENV, preexec_fn=lead_a_session_on_the_terminal)
    os.close(terminal)
    shown, deadline = bytearray(), time.time() + 300
    while proc.poll() is None and len(_train_steps(run_dir)) < 3 and time.time() < deadline:
        if select.select([other_side], [], [], 0.05)[0]:  # read what it shows: a full terminal would block it
            shown += os.read(other_side, 1 << 16)
    assert proc.poll() is None and len(_train_steps(run_dir)) >= 3, shown.decode(errors="replace")[-2000:]
    os.close(other_side)
    assert proc.wait(timeout=300) == 128 + signal.SIGHUP
    assert list((run_dir / "checkpoints").glob("ckpt-0000-*")), "no checkpoint on the way out"
    assert not (run_dir / rundir.ACHIEVED).exists()
    resumed = _run(recipe, run_dir, *extra)
    assert resumed.returncode == 0 and f"resuming {run_dir} from ckpt-0000-" in resumed.stderr, resumed.stderr[-3000:]
    assert rundir.read_achieved(run_dir).stages[0].samples == 2560


def test_a_second_run_on_a_directory_in_use_is_refused_in_one_line(tmp_path, data):
    """clipa-run started again on a directory while a first one trains into it (another terminal): both used
    to train into it, writing the same checkpoints and metrics, and both exited 0. clipa-report meanwhile
    says the run is training now, not "unfinished or crashed", and says the latter once it stopped."""
    recipe, run_dir = _recipe(tmp_path, data, "busy", pre=25600), tmp_path / "run"
    first = _start(recipe, run_dir)
    _wait_for(first, lambda: bool(_train_steps(run_dir)), "the first metrics line")
    second = _run(recipe, run_dir)
    assert second.returncode == 2, second.stderr[-3000:]
    said = second.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"error: {run_dir}: another run is training into it "
                                                 f"(pid {first.pid} on "), said
    report = [sys.executable, "-m", "clipa.cli.report", str(run_dir), "--no-plots"]
    shown = subprocess.run(report, capture_output=True, text=True, env=ENV, timeout=300)
    assert f"{run_dir}: training now (pid {first.pid} on " in " ".join(shown.stdout.split()), shown.stdout
    assert first.poll() is None, "the first run stopped"
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 143
    shown = subprocess.run(report, capture_output=True, text=True, env=ENV, timeout=300)
    assert f"{run_dir}: unfinished or crashed run" in " ".join(shown.stdout.split()), shown.stdout


def _two_running(tmp_path: Path, data: dict, name: str):
    """(recipe, run directory, process) of clipa-run --nproc 2 past its first metrics line."""
    recipe, run_dir = _recipe(tmp_path, data, name, pre=2560), tmp_path / "run"
    proc = _start(recipe, run_dir, "--nproc", "2")
    _wait_for(proc, lambda: bool(_train_steps(run_dir)), "the first metrics line")
    return recipe, run_dir, proc


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "sigterm"])
def test_a_stopped_two_process_run_says_it_once_and_resumes(tmp_path, data, sig, group):
    """Ctrl-C at the terminal (the job's whole process group) or SIGTERM to clipa-run: both processes
    checkpoint, the main one says so in one line; neither the other process nor torchrun adds a traceback."""
    recipe, run_dir, proc = _two_running(tmp_path, data, "two")
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and "Traceback" not in err, err[-3000:]
    assert f"stopped by {sig.name} at stage 'pre'" in said[0], said
    assert said[0].endswith(f"resume with: clipa-run {recipe} --run-dir {run_dir} --nproc 2 --device cpu"), said
    resumed = _run(recipe, run_dir, "--nproc", "2")
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert f"resuming {run_dir} from ckpt-0000-" in resumed.stderr
    assert rundir.read_achieved(run_dir).stages[0].samples == 2560


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_killed_worker_of_a_two_process_run_is_named_in_one_line(tmp_path, data):
    """A worker that could say nothing (killed, e.g. by the kernel out of memory): torchrun's line names it;
    rank 0, whose next collective fails for it, says so in a line, not a traceback."""
    recipe, run_dir, proc = _two_running(tmp_path, data, "kill")
    torchrun, = _children(proc.pid)
    victim, = (p for p in _children(torchrun) if b"\0RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes())
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGKILL, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err, err[-3000:]
    killed = f"error: rank 1 (pid {victim}) was killed by SIGKILL"
    assert killed in said, said
    assert all(x == killed or x.startswith("error: rank 0: another process of this run stopped (") for x in said), said


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            out.append(int(stat.parent.name))
    return out


def _gone(pids: list[int], timeout: float) -> bool:
    """Whether every one of ``pids`` has exited within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    return not any(Path(f"/proc/{p}").exists() for p in pids)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill9_of_a_two_process_run_stops_its_workers_after_a_checkpoint(tmp_path, data):
    """torchrun and its workers do not outlive clipa-run (they used to train on, unattended, into a run
    directory the next clipa-run would resume from): they checkpoint and stop, and the run resumes."""
    recipe, run_dir, proc = _two_running(tmp_path, data, "k9two")
    torchrun, = _children(proc.pid)
    workers = _children(torchrun)
    for w in workers:  # held, as if writing a large checkpoint: torchrun waits for them, and keeps the lock
        os.kill(w, signal.SIGSTOP)
    proc.kill()
    proc.wait()  # not communicate(): torchrun holds the pipes until it exits
    busy = _run(recipe, run_dir, "--nproc", "2")
    assert busy.returncode == 2 and "another run is training into it" in busy.stderr, busy.stderr[-3000:]
    for w in workers:
        os.kill(w, signal.SIGCONT)
    assert _gone([torchrun, *workers], 120), "torchrun or a worker outlived clipa-run"
    proc.communicate()
    assert not (run_dir / rundir.ACHIEVED).exists(), "the workers trained on after clipa-run was killed"
    assert list((run_dir / "checkpoints").glob("ckpt-0000-*")), "no checkpoint on the way out"
    resumed = _run(recipe, run_dir, "--nproc", "2")
    assert resumed.returncode == 0 and f"resuming {run_dir} from ckpt-0000-" in resumed.stderr, resumed.stderr[-3000:]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill9_leaves_no_worker_and_no_duplicated_metrics(tmp_path, data):
    recipe = _recipe(tmp_path, data, "k9", workers=1)  # no periodic checkpoint: killed before the first one
    run_dir = tmp_path / "run"
    proc = _start(recipe, run_dir)
    _wait_for(proc, lambda: bool(_train_steps(run_dir)), "the first metrics line")
    workers = _children(proc.pid)
    assert workers, "the run has a decoding worker"
    proc.kill()
    proc.communicate()
    assert _gone(workers, 30), "a decoding worker outlived its parent"
    assert not list((run_dir / "checkpoints").glob("ckpt-*"))

    again = _run(recipe, run_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    steps = _train_steps(run_dir)
    assert steps and len(steps) == len(set(steps))


def test_plain_log_lines_and_the_final_comparison_on_a_non_terminal(tmp_path, data):
    r = _run(_recipe(tmp_path, data, "log", pre=64), tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stderr.splitlines()
    plain = [ln for ln in lines if " stage pre step " in ln]
    prep = [i for i, ln in enumerate(lines) if ln.startswith("preparing data: ")]
    assert len(prep) == 1 and prep[0] < lines.index(plain[0])
    assert [ln.split(" step ")[1].split()[0] for ln in plain] == ["2/4", "4/4"]
    for field in ("samples ", "loss ", "lr ", "samples/s", "ETA "):
        assert field in plain[0]
    assert plain[0][:20].endswith("Z") and time.strptime(plain[0][:20], "%Y-%m-%dT%H:%M:%SZ")
    assert "achieved top-1" in lines[-1] and f"clipa-report {tmp_path / 'run'}" in lines[-1]
    # the tiny recipe's data is 'custom', uncalibrated: its prediction is the LAION-400M law's ImageNet-1k figure
    prior = "] (ImageNet-1k, the LAION-400M law as a prior: not your evaluation set until calibrated) in "
    assert prior in lines[-1], lines[-1]


def test_each_bad_sample_counts_once_per_run_across_stages_and_resume(tmp_path, data):
    from clipa.backends.data.webdataset_io import read_shard_samples, write_shard

    src = sorted(Path(data["train"].split("{")[0]).parent.glob("*.tar"))[0]
    samples, _ = read_shard_samples(src)
    mixed = [dict(s) for s in samples[:24]]
    for s in mixed[:3]:
        s["jpg"] = b"this is not a jpeg"
    for s in mixed[3:5]:
        s["txt"] = b"   "
    d = tmp_path / "shards"
    write_shard(d / "mixed.tar", mixed)
    with tarfile.open(write_shard(d / "cut.tar", samples[24:32])) as tf:
        m = tf.getmembers()[9]  # a download cut inside a file: the complete samples before it stay
    with open(d / "cut.tar", "r+b") as fh:
        fh.truncate(m.offset_data + m.size // 2)
    # both stages pass over the ~28 samples several times (64 + 64 draws)
    recipe = _recipe(tmp_path, {**data, "train": str(d)}, "bad", pre=64)
    want = {"undecodable_image": 3, "empty_caption": 2, "corrupt_shard": 1}
    whole = _run(recipe, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = _run(recipe, tmp_path / "split", "--max-samples", "48")
    assert stopped.returncode == 0 and not (tmp_path / "split" / rundir.ACHIEVED).exists()
    resumed = _run(recipe, tmp_path / "split")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for run in ("whole", "split"):
        ach = rundir.read_achieved(tmp_path / run)
        assert ach.skipped_reasons == want and ach.skipped_samples == 6, (run, ach.skipped_reasons)


def test_resume_keeps_whole_lines_never_nul_padding(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    rs.truncate_metrics(p, 100)  # a checkpoint that counted more than the file kept
    assert p.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    p.write_bytes(b'{"a": 1}\n{"b": 2}\n\x00\x00\x00\x00{"c"')  # a torn tail after a crash
    rs.truncate_metrics(p, 30)
    assert p.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    rs.truncate_metrics(p, 0)  # a fresh run: the lines of a process killed before its first checkpoint go
    assert p.read_bytes() == b""
