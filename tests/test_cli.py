"""The three CLIs as a shell, CI job or SLURM script meets them: real subprocesses, exit codes, one-line
errors and no tracebacks for user mistakes; a plan that launches as written."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tiny_run import default_sigint, tiny, write

from clipa import __version__, recipe

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
CLIS = {"clipa-plan": "clipa.cli.plan", "clipa-run": "clipa.cli.run", "clipa-report": "clipa.cli.report"}


def _cli(name: str, *args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", CLIS[name], *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def _one_line_error(r: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("name,args,needle", [
    ("clipa-plan", ["--bugdet", "5"], "No such option: --bugdet"),
    ("clipa-plan", ["--budget", "ten"], "'--budget'"),
    ("clipa-plan", ["--budget", "5", "--train-samples", "0"], "'--train-samples'"),
    ("clipa-plan", ["--budget", "5", "--trials", "200"], "No such option: --trials"),
    ("clipa-plan", ["--budget", "nan"], "--budget: must be a finite number"),
    ("clipa-plan", ["--budget", "inf"], "--budget: must be a finite number"),
    ("clipa-plan", ["--budget", "-3"], "--budget: must be positive"),
    ("clipa-plan", ["--budget", "5000", "--hw", ""], "--hw: empty"),
    ("clipa-plan", ["--budget", "5000", "--hw", "a100x9"], "a100x9"),
    ("clipa-plan", ["--budget", "5000", "--plot", "x.png"], "--plot: does not apply without --fit-report"),
    ("clipa-plan", ["--fit-report", "--budget", "5"], "--budget: does not apply to --fit-report"),
    ("clipa-plan", ["--budget", "5000", "--dataset", "laion-2b", "--train-data", "shards/{00..03}.tar"],
     "--train-data: shards/00.tar: shard not found (from 'shards/{00..03}.tar')"),
    # the default dataset is DataComp-1B: a user's own shards must not be predicted as DataComp's unsaid
    ("clipa-plan", ["--budget", "5000", "--train-data", "shards/{00..03}.tar"],
     "--train-data: say what these shards hold: --dataset datacomp-1b, laion-2b or laion-400m"),
    ("clipa-plan", ["--pilot", "--budget", "5000", "--train-data", "shards/{00..03}.tar"],
     "or --dataset custom (your own data"),
    ("clipa-plan", ["--budget", "5000", "--dataset", "custom"],
     "--dataset custom: no published run on it to plan from: plan its pilots (clipa-plan --pilot --dataset custom"),
    ("clipa-run", [], "Missing argument"),
    ("clipa-run", ["no-such.yaml"], "no-such.yaml: recipe file not found"),
    ("clipa-run", ["runs/[exp1].yaml"], "runs/[exp1].yaml: recipe file not found"),  # brackets are text
    ("clipa-report", ["--bogus"], "No such option: --bogus"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path, name, args, needle):
    _one_line_error(_cli(name, *args, cwd=tmp_path), 2, needle)


@pytest.mark.parametrize("name,args,needle", [
    ("clipa-plan", ["--budget", "10000", "--out", "{file}/plan.yaml"], "{file}: a file where a folder is needed"),
    ("clipa-plan", ["--budget", "10000", "--out", "{dir}"], "{dir}: Is a directory"),
    ("clipa-run", ["{recipe}", "--run-dir", "{file}/run"], "{file}/run: Not a directory"),
    ("clipa-report", ["--calibrate", "{run}", "--no-plots", "--calibration-out", "{file}/c.yaml"],
     "{file}: a file where a folder is needed"),
    ("clipa-report", ["{run}", "--out", "{file}/report"], "{file}/report: Not a directory"),
])
def test_a_path_that_cannot_be_written_is_one_line_exit_2(tmp_path, name, args, needle):
    from report_rundirs import demo_recipe, write_run

    paths = {"file": tmp_path / "a-file", "dir": tmp_path, "recipe": Path(recipe.__file__).parents[1] / "recipes"
             / "test.yaml", "run": tmp_path / "run"}
    paths["file"].write_text("x")
    write_run(paths["run"], demo_recipe())
    _one_line_error(_cli(name, *(a.format(**paths) for a in args), cwd=tmp_path), 2, needle.format(**paths))


def test_predict_refuses_planning_flags(tmp_path):
    rec = Path(recipe.__file__).parent.parent / "recipes" / "demo.yaml"
    _one_line_error(_cli("clipa-plan", "--predict", rec, "--name", "x", "--out", tmp_path / "x.yaml"), 2,
                    "--name: does not apply to --predict")
    assert not (tmp_path / "x.yaml").exists()
    _one_line_error(_cli("clipa-plan", "--predict", rec, "--budget", "100"), 2, "--budget: does not apply to --predict")


def test_run_refuses_a_flag_its_backend_does_not_know(tmp_path):
    rec = Path(recipe.__file__).parent.parent / "recipes" / "demo.yaml"
    _one_line_error(_cli("clipa-run", rec, "--tpu", "pod-1", "--run-dir", tmp_path / "r"), 2,
                    "--tpu: does not apply to --backend torch")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", list(CLIS))
def test_version_and_help(name):
    v = _cli(name, "--version")
    assert v.returncode == 0 and v.stdout.strip() == f"clipa {__version__}"
    h = _cli(name, "--help")
    assert h.returncode == 0 and "Examples" in h.stdout and "Traceback" not in h.stderr


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # already gone: the caller's poll() says so
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ctrl_c_at(proc: subprocess.Popen, cpu_s: float) -> None:
    """SIGINT once the child has used ``cpu_s`` of its own CPU time (not the clock: a loaded machine cannot
    move the signal into another phase); it must then exit 130 without a traceback."""
    while proc.poll() is None and _cpu_seconds(proc.pid) < cpu_s:
        time.sleep(0.002)
    assert proc.poll() is None, "the command finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]


def test_ctrl_c_during_planning_exits_130_without_traceback(tmp_path):
    # The search is exact and takes about a second per hardware target: 28 targets keep it busy.
    many = ["a100x8", "a100-40gbx8", "h100x8"] + [f"tpu-{g}-{n}" for g, top in (("v4", 4096), ("v5e", 256), ("v3", 2048))
                                                   for n in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if n <= top]
    proc = subprocess.Popen([sys.executable, "-m", CLIS["clipa-plan"], "--budget", "10000", "--hw", ",".join(many),
                             "--out", str(tmp_path / "g.yaml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, preexec_fn=default_sigint)
    _ctrl_c_at(proc, 3.0)  # past the imports (about 1.5 CPU-s), inside the search (8-15 CPU-s)
    assert not (tmp_path / "g.yaml").exists()


@pytest.mark.parametrize("name", ["clipa-plan", "clipa-run"])
def test_ctrl_c_while_the_command_is_still_importing_exits_130_without_traceback(name):
    # The console script a user types (not `python -m`): its entry point imports the command's module.
    exe = Path(sys.executable).parent / name
    args = ["--budget", "100", "--hw", "a100x8"] if name == "clipa-plan" else ["recipes/demo.yaml", "--dry-run"]
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=Path(recipe.__file__).parent.parent, preexec_fn=default_sigint)
    # Past the interpreter's own start-up (its site imports, about 0.03 CPU-s: Python's, not clipa's), inside
    # the imports of typer, numpy and the rest (about half a CPU-second).
    _ctrl_c_at(proc, 0.1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from clipa.backends.data import demo_data

    out = tmp_path_factory.mktemp("data")
    return {k: str(v) for k, v in demo_data.generate(out, 64, 20, 32, 0).items()}


@pytest.mark.parametrize("hw,launch,dry", [
    ("a100x8", ["--nproc", "8"], "--nproc-per-node 8"),
    ("a100x32", ["--slurm", "--nodes", "4", "--gpus-per-node", "8"], "#SBATCH --nodes=4"),   # 4 machines: SLURM
])
def test_plan_with_data_flags_launches_as_written(tmp_path, shards, hw, launch, dry):
    """clipa-plan with the user's data writes a recipe that clipa-run --dry-run accepts, writing nothing."""
    out = tmp_path / "plan.yaml"
    r = _cli("clipa-plan", "--budget", "10000", "--hw", hw, "--out", out, "--dataset", "datacomp-1b",
             "--train-data", shards["train"], "--val", shards["val"], "--classnames", shards["classnames"],
             "--templates", shards["templates"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    # its prediction is ImageNet-1k's top-1; this val set has 10 classes: said before the money is spent
    assert ("warning: the top-1 predicted on datacomp-1b is ImageNet-1k zero-shot (1,000 classes, the published "
            "runs' figure); the evaluation set has 10 classes") in " ".join(r.stdout.split())
    rec = recipe.load(out)
    assert rec.dataset.train == shards["train"] and rec.dataset.val == shards["val"]
    assert rec.provenance.command.startswith(f"clipa-plan --budget 10000 --hw {hw}")
    assert rec.provenance.budget_usd == 10000 and rec.provenance.clipa_version == __version__
    before = sorted(p.name for p in tmp_path.iterdir())
    said = shlex.split(" ".join(r.stdout.split()).split("launch it with: ")[1])  # on the GPUs it was planned for
    assert said == ["clipa-run", str(out), *launch], said
    d = _cli(*said, "--dry-run", cwd=tmp_path)
    assert d.returncode == 0, d.stderr[-2000:]
    assert dry in d.stdout, d.stdout
    # the plan's workers use every core of a100x8 (11 per GPU): a dry run on a smaller host says what they cost here
    if hw == "a100x8" and (os.cpu_count() or 1) < 88:
        assert ("warning: dataset.workers: 11 decoding workers x 8 processes = 88 on this host's "
                in " ".join(d.stderr.split())), d.stderr
    # counted per GPU process (torchrun): JAX trains a machine's 8 GPUs from one process, so its decoders are
    # fewer than the prediction's bound counted, said before a GPU is paid for (it ran 8x data-bound silently)
    machines = 1 if hw == "a100x8" else 4
    j = _cli("clipa-run", out, "--backend", "jax", "--dry-run", cwd=tmp_path)
    assert j.returncode == 0, j.stderr[-2000:]
    assert (f"the JAX backend trains a machine's 8 GPUs from one process, so {11 * machines} decode on {hw} where the "
            f"prediction counted {88 * machines}: for JAX set dataset.workers: 95" in " ".join(j.stderr.split()))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run directory claimed


@pytest.mark.parametrize("dataset,measured_on", [
    # uncalibrated, the user's data gets the LAION-400M law's ImageNet figure (0.1% below a 10-class set's
    # chance); calibrated, the user's val set (test_pilot: test_a_calibrated_prediction_is_on_the_users_val_set)
    ("custom", "ImageNet-1k, the LAION-400M law as a prior: not your evaluation set until calibrated"),
    ("laion-400m", "ImageNet-1k"),                 # the published runs' figure
    ("demo", "held-out demo split"),
])
def test_a_prediction_names_the_set_its_top1_is_measured_on(tmp_path, shards, dataset, measured_on):
    rec = tiny(shards)
    rec["dataset"]["name"] = dataset
    r = _cli("clipa-plan", "--predict", write(rec, tmp_path / "r.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"predicted zero-shot top-1 ({measured_on.format(val=shards['val'])}) " in " ".join(r.stdout.split())
    j = _cli("clipa-plan", "--predict", tmp_path / "r.yaml", "--json", cwd=tmp_path)
    assert json.loads(j.stdout)["top1_measured_on"] == measured_on.format(val=shards["val"])


def test_a_recipe_edited_after_its_predictions_is_refused_until_predicted_again(tmp_path, shards):
    """The report compares a run with its recipe's predictions: after an edit they describe another run."""
    out = tmp_path / "plan.yaml"
    r = _cli("clipa-plan", "--budget", "10000", "--hw", "a100x8", "--out", out, "--dataset", "datacomp-1b",
             "--train-data", shards["train"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    planned = yaml.safe_load(out.read_text())
    edited = {**planned, "train": {**planned["train"], "log_every_steps": 7}}   # not what predictions depend on
    write(edited, out)
    assert _cli("clipa-run", out, "--dry-run", "--nproc", "8", cwd=tmp_path).returncode == 0
    write({**edited, "dataset": {**planned["dataset"], "workers": 1}}, out)      # the data-loading bound counts them
    _one_line_error(_cli("clipa-run", out, "--dry-run", "--nproc", "8", cwd=tmp_path), 2, "predictions: made for")
    edited["stages"][0]["samples"] //= 2                                       # half the pre-training
    write(edited, out)
    _one_line_error(_cli("clipa-run", out, "--dry-run", "--nproc", "8", cwd=tmp_path), 2,
                    f"{out}: predictions: made for this recipe before an edit of its encoder, dataset, hardware, stages")
    write({**edited, "hardware": {"name": "h100x8"}}, out)
    _one_line_error(_cli("clipa-run", out, "--dry-run", "--nproc", "8", cwd=tmp_path), 2,
                    "predictions: made for hardware a100x8, the recipe says h100x8")
    # The edit the plan itself suggests, for a model OpenCLIP loads, and the command that follows it
    said = " ".join(r.stdout.split())
    assert (f"OpenCLIP: clipa-export writes a model OpenCLIP loads only from a run trained with encoder: "
            f"{{name: {planned['encoder']['name']}, class_token: true}}") in said
    write({**edited, "encoder": {**planned["encoder"], "class_token": True}}, out)
    _one_line_error(_cli("clipa-run", out, "--dry-run", "--nproc", "8", cwd=tmp_path), 2, "predictions: made for")
    write(edited, out)
    assert _cli("clipa-plan", "--predict", out, "--out", out, cwd=tmp_path).returncode == 0   # the fix it names
    assert _cli("clipa-run", out, "--dry-run", "--nproc", "8", cwd=tmp_path).returncode == 0
    again = recipe.load(out).predictions
    assert again.stages[0].samples == edited["stages"][0]["samples"] and again.device_hours < planned["predictions"]["device_hours"]


def test_plan_checks_the_zero_shot_set_as_clipa_run_will(tmp_path, shards):
    """The plan's recipe launches as is: a class-name file short of the folders, a file given for the val
    folder, or class names without images are refused by the planner, not at launch; no --val is said."""
    few = tmp_path / "few.txt"
    few.write_text("circle\nsquare\n")
    base = ["--budget", "10000", "--hw", "a100x8", "--out", tmp_path / "p.yaml", "--dataset", "laion-2b",
            "--train-data", shards["train"]]
    for extra, needle in (
        (["--val", shards["val"], "--classnames", few, "--templates", shards["templates"]], "2 class names for 10 folders"),
        (["--val", shards["classnames"], "--classnames", shards["classnames"], "--templates", shards["templates"]],
         "zero-shot val folder not found"),
        (["--classnames", shards["classnames"]], "--classnames: needs --val"),
    ):
        _one_line_error(_cli("clipa-plan", *base, *extra, cwd=tmp_path), 2, needle)
        assert not (tmp_path / "p.yaml").exists()
    r = _cli("clipa-plan", *base, cwd=tmp_path)
    assert r.returncode == 0 and "warning: no --val: the run will not measure its zero-shot top-1" in r.stdout


@pytest.mark.parametrize("hw,flags", [
    ("a100x8", ["--nproc", "8"]),
    ("a100x32", ["--slurm", "--nodes", "4", "--gpus-per-node", "8"]),                # four machines
    ("tpu-v4-8", ["--backend", "jax", "--tpu", "TPU_NAME", "--zone", "ZONE"]),  # one host
    ("tpu-v4-64", ["--backend", "jax", "--tpu", "TPU_NAME", "--zone", "ZONE", "--run-dir", "gs://BUCKET/t"]),
    ("cpu", []),
])
def test_the_launch_command_trains_on_the_hardware_planned_for(hw, flags):
    from clipa.launching import launch_command

    assert shlex.split(launch_command("my plan.yaml", hw, "t")) == ["clipa-run", "my plan.yaml", *flags]


def test_plan_without_data_says_what_to_fill_and_run_names_the_field(tmp_path):
    out = tmp_path / "plan.yaml"
    r = _cli("clipa-plan", "--budget", "10000", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_text().startswith("# set dataset.train")
    assert "set dataset.train" in " ".join(r.stdout.split())
    _one_line_error(_cli("clipa-run", out, "--dry-run", cwd=tmp_path), 2, "dataset.train: required")
    assert not (tmp_path / "runs").exists()


def test_bad_data_is_refused_before_the_run_directory_is_claimed(tmp_path, shards):
    rec = tiny(stages=1, dataset={"name": "custom", "train": str(tmp_path / "missing-{0..3}.tar"), "workers": 0})
    p = write(rec, tmp_path / "r.yaml")
    _one_line_error(_cli("clipa-run", p, "--run-dir", tmp_path / "run"), 2, "shard not found")
    assert not (tmp_path / "run").exists()
    not_tar = tmp_path / "bad.tar"
    not_tar.write_bytes(b"this is no tar file" * 100)
    rec["dataset"]["train"] = str(not_tar)
    write(rec, p)
    _one_line_error(_cli("clipa-run", p, "--dry-run", "--run-dir", tmp_path / "run"), 2, "not a readable tar shard")
    rec["dataset"]["train"], rec["dataset"]["workers"] = shards["train"], 10_000
    write(rec, p)
    _one_line_error(_cli("clipa-run", p, "--run-dir", tmp_path / "run"), 2, "dataset.workers")
    assert not (tmp_path / "run").exists()
    few = tmp_path / "classnames.txt"  # the first 3 of the zero-shot set's class names
    few.write_text("\n".join(Path(shards["classnames"]).read_text().splitlines()[:3]) + "\n")
    rec["dataset"].update(workers=0, val=shards["val"], classnames=str(few), templates=shards["templates"])
    write(rec, p)
    for extra in (["--dry-run"], []):
        _one_line_error(_cli("clipa-run", p, *extra, "--run-dir", tmp_path / "run"), 2, "3 class names for 10 folders")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--device", "gpu"], "--device 'gpu': the torch backend knows cpu, cuda"),  # it used to train on the CPU
    (["--nproc", "2", "--device", "cuda"], "--device cuda: torch finds no CUDA device"),
    (["--backend", "jax", "--device", "cuda"], "--device cuda: JAX finds no cuda device"),
])
def test_a_device_this_machine_lacks_is_one_line_before_the_run_directory(tmp_path, shards, flags, needle):
    """Before: torch's or JAX's traceback from the workers, after a half-made run directory."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    p = write(tiny(shards, stages=1), tmp_path / "r.yaml")
    _one_line_error(_cli("clipa-run", p, *flags, "--run-dir", tmp_path / "run"), 2, needle)
    assert not (tmp_path / "run").exists()


def test_piped_plan_tables_fit_100_columns_without_cutting_digits(tmp_path):
    r = _cli("clipa-plan", "--budget", "10000", "--out", tmp_path / "g.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    table_lines = [ln for ln in r.stdout.splitlines() if any(c in ln for c in "│┃┏└")]
    assert len(table_lines) > 20
    assert max(len(ln) for ln in table_lines) <= 100
    assert "…" not in r.stdout  # rich's ellipsis: a cut cell


def test_plan_says_how_much_disk_the_run_directory_needs(tmp_path):
    """The figure clipa-run's room warning uses (measured against a finished run in test_disk_full.py), for
    the recipe the plan wrote: a user sizes the disk before launching."""
    from clipa.backends import runstate as rs

    r = _cli("clipa-plan", "--budget", "10000", "--out", tmp_path / "g.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = recipe.load(tmp_path / "g.yaml")
    assert rs.storage_line(rec) in " ".join(r.stdout.split()), r.stdout[-1500:]


def test_plan_warns_when_it_passes_over_the_users_data_more_often_than_any_published_run(tmp_path):
    r = _cli("clipa-plan", "--budget", "10000", "--train-samples", "1000000", "--json", "--out", tmp_path / "g.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    obj = json.loads(r.stdout)
    warning = next(n for n in obj["notes"] if "passes over the 1,000,000 samples" in n)
    assert "no run with more than 6 passes" in warning
    r = _cli("clipa-plan", "--budget", "10000", "--train-samples", "100000000000", "--json", "--out", tmp_path / "h.yaml")
    assert not any("passes over" in n for n in json.loads(r.stdout)["notes"])


def test_the_datas_size_binds_a_plan_at_the_passes_the_accuracy_law_has_seen(tmp_path):
    """100M samples of data: the plan trains at most 6 passes over them (the most any published run made),
    fine-tune included, and says the dataset's size binds; $10,000 would otherwise buy 12.8B samples."""
    r = _cli("clipa-plan", "--budget", "10000", "--train-samples", "100000000", "--json", "--out", tmp_path / "g.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    obj = json.loads(r.stdout)
    assert obj["binding"] == "dataset size" and sum(s["samples"] for s in obj["stages"]) <= 6 * 100_000_000
    assert not any("passes over" in n for n in obj["notes"]) and obj["cost_usd"] < 10_000
    free = json.loads(_cli("clipa-plan", "--budget", "10000", "--json", "--out", tmp_path / "h.yaml").stdout)
    assert free["binding"] == "budget" and free["stages"][0]["samples"] == 12_800_000_000


def test_without_train_samples_the_plan_counts_the_shards_to_warn_of_repeated_data(tmp_path):
    """No --train-samples: the shards' size, estimated from the first shard's tar headers, still warns."""
    from clipa.backends.data import webdataset_io

    for i in range(3):
        webdataset_io.write_shard(tmp_path / f"s{i}.tar", [{"__key__": f"k{i}{j}", "jpg": b"x", "txt": b"a cat"}
                                                           for j in range(5)])
    r = _cli("clipa-plan", "--budget", "10000", "--dataset", "laion-2b", "--train-data", tmp_path / "s{0..2}.tar",
             "--json", "--out", tmp_path / "g.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    warning = next(n for n in json.loads(r.stdout)["notes"] if "passes over" in n)
    assert warning.startswith("the plan passes over the 15 samples of dataset.train (about: 3 shards x the first's "
                              "5; --train-samples for the exact count)"), warning
