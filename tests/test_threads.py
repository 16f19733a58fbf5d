"""backends/threads.py: compute threads from the decode demand, free cores and the recipe override."""
import math
import os
from pathlib import Path

import pytest

from clipa.backends import threads


def test_light_decoding_keeps_every_core_computing():
    # issue 13: 2 cores, 1 mostly idle decoding worker; the old rule gave 1 thread
    c = threads.choose(2, 1, 1, 0.2)
    assert (c.threads, c.reserved) == (2, 0)


def test_heavy_decoding_reserves_a_core_per_busy_worker():
    assert threads.choose(2, 1, 1, 0.6).threads == 1
    # the demo's 32-px pre-training, whose measured demand varies 0.43-0.58 from run to run: 1 thread each time
    # (2 threads against the worker ran at about 175 samples/s, 1 thread at about 250)
    assert threads.choose(2, 1, 1, 0.43).threads == 1 and threads.choose(2, 1, 1, 0.3).threads == 2
    assert threads.choose(16, 1, 4, 2.6) == threads.Choice(13, 3, 2.6, threads.choose(16, 1, 4, 2.6).reason)
    assert threads.choose(16, 1, 2, 9.0).reserved == 2          # never more cores than workers
    assert threads.choose(2, 1, 0, 5.0).threads == 2            # no workers: decoding is inline


def test_ranks_share_cores_and_one_thread_is_the_floor():
    assert threads.choose(16, 8, 1, 0.1).threads == 2
    assert threads.choose(16, 8, 1, 1.0).threads == 1
    assert threads.choose(1, 4, 2, 3.0).threads == 1


def test_cores_other_processes_use_are_not_counted():
    assert threads.choose(2, 1, 1, 0.1, busy=1.2).threads == 1
    assert threads.choose(2, 1, 1, 0.1, busy=0.3).threads == 2
    assert threads.choose(2, 1, 1, 0.1, busy=5.0).threads == 1


def test_override_wins():
    c = threads.choose(2, 1, 1, 3.0, override=2)
    assert c.threads == 2 and math.isnan(c.decode_cores)
    with pytest.raises(ValueError):
        threads.choose(2, 1, 1, 0.0, override=0)


def test_busy_cores_is_within_the_host():
    assert 0.0 <= threads.busy_cores(0.05) <= (os.cpu_count() or 1) + 1e-9


def test_for_recipe_measures_the_runs_own_shards(tmp_path):
    """The demo's 64-px shards decode far faster than the web photos the model assumes."""
    from clipa import recipe
    from clipa.backends.data import demo_data

    paths = demo_data.generate(tmp_path / "data", 64, 10, 64)
    rec = recipe.load(Path(__file__).parents[1] / "recipes" / "demo.yaml")
    rec = rec.model_copy(update={"dataset": rec.dataset.model_copy(update={
        k: str(v) for k, v in paths.items() if k in ("train", "val", "classnames", "templates")})})
    st = rec.stages[-1]
    measured = threads.measure_decode_s(rec.dataset, st, rec.encoder.spec, batch_size=8, batches=1)
    assert measured is not None and 0 < measured < threads.modelled_decode_s(st.image_size)
    cs = threads.for_recipe(rec, tmp_path)
    assert list(cs) == [s.name for s in rec.stages]
    assert all(1 <= c.threads <= (os.cpu_count() or 1) and c.decode_cores > 0 for c in cs.values())
    # Per stage: at 32 px compute can run about 4x as many samples/s as at 64 px (a quarter of the FLOPs)
    # while a sample decodes in about the same time, so the pre-training stage's decoding weighs more.
    pre, ft = cs.values()
    assert pre.decode_cores > 2 * ft.decode_cores


def test_recipe_override(tmp_path):
    import yaml

    from clipa import recipe

    d = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "demo.yaml").read_text())
    d["train"]["compute_threads"] = 3
    cs = threads.for_recipe(recipe.Recipe.model_validate(d), tmp_path)
    assert [(c.threads, "train.compute_threads" in c.reason) for c in cs.values()] == [(3, True)] * len(d["stages"])
    d["train"]["compute_threads"] = 0
    with pytest.raises(Exception, match="compute_threads"):
        recipe.Recipe.model_validate(d)


def test_the_choice_is_made_once_per_run_directory(tmp_path):
    """A resumed process uses the thread counts the run started with, whatever the load is now."""
    import json

    from clipa import recipe

    rec = recipe.load(Path(__file__).parents[1] / "recipes" / "demo.yaml")
    first = threads.for_run(rec, tmp_path)
    stored = tmp_path / threads.THREADS_FILE
    assert stored.exists() and list(first) == [s.name for s in rec.stages]
    d = json.loads(stored.read_text())
    for name, c in first.items():   # counts the machine would not pick now
        d["stages"][name]["threads"] = 3 - c.threads if c.threads in (1, 2) else 1
    stored.write_text(json.dumps(d))
    again = threads.for_run(rec, tmp_path)
    assert [c.threads for c in again.values()] == [d["stages"][n]["threads"] for n in again]
    assert all("as this run started" in c.reason for c in again.values())


def test_a_run_started_with_one_count_resumes_with_it_in_every_stage(tmp_path):
    """threads.json as runs wrote it before the choice was per stage."""
    from clipa import recipe

    rec = recipe.load(Path(__file__).parents[1] / "recipes" / "demo.yaml")
    (tmp_path / threads.THREADS_FILE).write_text('{"threads": 2, "reserved": 0, "reason": "old"}')
    assert {n: c.threads for n, c in threads.for_run(rec, tmp_path).items()} == {s.name: 2 for s in rec.stages}


def test_the_trainer_sets_each_stages_count_when_the_stage_starts(tmp_path):
    """The real torch trainer on the tiny recipe: stage 'pre' at 1 thread, 'ft' at 2, as given."""
    import torch

    from clipa import recipe
    from clipa.backends.torch import dist as tdist
    from clipa.backends.torch import launch
    from clipa.backends.torch.trainer import TorchTrainer

    rec = recipe.load(Path(__file__).parents[1] / "recipes" / "test.yaml")
    launch.record_parallelism(tmp_path, rec, 1, "cpu")
    before = torch.get_num_threads()
    try:
        tr = TorchTrainer(rec, tmp_path, tdist.init("cpu"), {"pre": 1, "ft": 2})
        tr.restore(None)
        seen = []
        for k, st in enumerate(rec.stages):
            tr.start_stage(k, st, 0)
            seen.append(torch.get_num_threads())
        assert seen == [1, 2]
    finally:
        torch.set_num_threads(before)
