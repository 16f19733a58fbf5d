"""`python -m clipa.backends.data.resolve`: the demo data generated once and a recipe that points at it
(make demo's pilots and demo run read that one copy)."""
from __future__ import annotations

import subprocess
import sys
import tarfile

from clipa import recipe as recipe_mod
from clipa.backends.data import resolve, webdataset_io
from tiny_run import ENV, tiny, write


def _resolve(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipa.backends.data.resolve", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=300)


def test_writes_the_recipe_with_the_paths_of_one_generated_copy(tmp_path):
    src = write({**tiny(), "dataset": {"name": "demo", "train_samples": 64, "workers": 0}}, tmp_path / "r.yaml")
    out, root = tmp_path / "with-data.yaml", tmp_path / "runs"
    r = _resolve(src, root, out)
    assert r.returncode == 0, r.stderr
    ds = recipe_mod.load(out).dataset
    assert ds.name == "demo" and ds.train_samples == 64
    shards = webdataset_io.expand_shards(ds.train)
    assert all(str(s).startswith(str(root / "data")) for s in shards)
    texts = 0
    for s in shards:
        with tarfile.open(s) as tf:
            texts += sum(m.name.endswith(".txt") for m in tf.getmembers())
    assert texts == 64
    assert sum(1 for _ in (root / "data" / "val").rglob("*.jpg")) == resolve.DEMO_VAL
    assert recipe_mod.load(out).stages == recipe_mod.load(src).stages

    done = (root / "data" / "DONE").stat().st_mtime_ns
    assert _resolve(src, root, out).returncode == 0
    assert (root / "data" / "DONE").stat().st_mtime_ns == done  # the second call reuses the data
    # The written recipe needs no generation wherever it runs (a run directory elsewhere gets no copy).
    assert resolve.resolve(recipe_mod.load(out), tmp_path / "elsewhere", generate=False) == ds
    assert not (tmp_path / "elsewhere").exists()


def test_a_missing_recipe_is_one_line_and_exit_2(tmp_path):
    r = _resolve(tmp_path / "nope.yaml", tmp_path, tmp_path / "out.yaml")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.yaml").exists()
