"""What clipa-run decides at launch: the flags each backend honours, and DDP or FSDP (recorded in the run
directory for the torch workers to read)."""
import json

import pytest

from clipa import backends
from clipa import recipe as recipe_mod
from clipa.backends.torch import launch
from clipa.cli._common import run_app
from clipa.cli.run import app
from clipa.errors import UserError

DEMO = "recipes/demo.yaml"
H14 = "recipes/published/clipa_v2_h14_datacomp_70_224.yaml"


def test_every_launch_flag_is_honoured_by_some_backend_and_refused_by_the_others():
    known = {name: backends.get(name).flags for name in backends.names()}
    assert set().union(*known.values()) == backends.LAUNCH_FLAGS
    assert "tpu" not in known["torch"] and "rdzv_id" not in known["jax"]


@pytest.mark.parametrize("backend,flags,needle", [
    ("torch", ["--zone", "us-central2-b"], "--zone: does not apply to --backend torch"),
    ("torch", ["--project", "p"], "--project: does not apply to --backend torch"),
    ("jax", ["--rdzv-id", "job-1"], "--rdzv-id: does not apply to --backend jax"),
    # torch used to wait forever for nodes meeting at each one's own localhost, or ignore the rank
    ("torch", ["--nnodes", "2"], "--rdzv-endpoint HOST:PORT is required with --nnodes 2"),
    ("torch", ["--nproc", "2", "--node-rank", "3"], "--node-rank 3 must be in [0, 1)"),
    ("jax", ["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h0:1234"], "--node-rank 2 must be in [0, 2)"),
])
def test_a_flag_the_backend_would_ignore_or_cannot_use_is_an_error(tmp_path, capsys, backend, flags, needle):
    code = run_app(app, [DEMO, "--backend", backend, *flags, "--dry-run", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_parallelism_is_fsdp_only_where_a_replica_does_not_fit():
    demo, h14 = recipe_mod.load(DEMO), recipe_mod.load(H14)
    assert launch.parallelism(demo, 2, None)[0] == "ddp"
    assert launch.parallelism(h14, 1, None)[0] == "ddp"  # one process: nothing to shard
    assert launch.parallelism(h14, 2, "cpu")[0] == "ddp"  # FSDP on GPUs only
    kind, reason = launch.parallelism(h14, 2, "cuda")  # 16,384 samples per A100 at 70 px: far beyond 80 GB
    assert kind == "fsdp" and "stages[0]" in reason


def test_the_launch_decision_is_recorded_and_read_back(tmp_path):
    h14 = recipe_mod.load(H14)
    assert launch.record_parallelism(tmp_path, h14, 2, "cuda") == "fsdp"
    assert json.loads((tmp_path / launch.PARALLELISM).read_text())["parallelism"] == "fsdp"
    assert launch.read_parallelism(tmp_path, 2) == "fsdp"
    with pytest.raises(UserError, match="decided 'fsdp' for 2 processes, but 4 started"):
        launch.read_parallelism(tmp_path, 4)
    with pytest.raises(UserError, match="missing; start the workers with clipa-run"):
        launch.read_parallelism(tmp_path / "none", 1)
