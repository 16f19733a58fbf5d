"""The embedded demo end to end on both backends: clipa-run recipes/demo.yaml reaches >= 3x chance
zero-shot top-1 with PyTorch, at least 94% after the 64-px fine-tune (seeds 0/1/2 reached 96.65-97.7%,
recipes/demo.yaml's notes) and more than after pretraining, and the JAX backend lands within 2 points
of it on the same recipe (seed 0: 97.4% vs 97.7%)."""
import subprocess
import sys
from pathlib import Path

import pytest

from clipa import recipe, rundir

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.yaml"


def _run_demo(run_dir: Path, backend: str) -> rundir.Achieved:
    args = [sys.executable, "-m", "clipa.cli.run", str(DEMO), "--run-dir", str(run_dir), "--backend", backend]
    if backend == "torch":
        args += ["--device", "cpu"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return rundir.read_achieved(run_dir)


@pytest.fixture(scope="module")
def torch_demo(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo") / "torch"
    return run_dir, _run_demo(run_dir, "torch")


@pytest.mark.slow
def test_demo_recipe_beats_three_times_chance(torch_demo):
    run_dir, ach = torch_demo
    n_classes = len((run_dir / "data" / "classnames.txt").read_text().split())
    chance = 100.0 / n_classes
    assert ach.top1 >= 3 * chance, f"top-1 {ach.top1:.1f}% < 3x chance ({3 * chance:.1f}%)"
    rec = recipe.load(DEMO)
    assert [s.name for s in ach.stages] == [s.name for s in rec.stages]
    assert all(s.top1 is not None for s in ach.stages) and ach.eval_set == "demo-heldout"
    # Seeds 0/1/2 span 96.65-97.7% (pretraining: 95.15-96.55%): a run below 94% is no longer the measured demo.
    assert ach.top1 >= 94.0, f"top-1 {ach.top1:.1f}% < 94% (seeds 0/1/2 reached 96.65-97.7%)"
    # seed 0: 96.1% -> 97.7% (seeds 1 / 2: +2.2 / +0.1 points)
    assert ach.stages[-1].top1 > ach.stages[0].top1, "the 64-px fine-tune did not raise top-1"


@pytest.mark.slow
# The two backends draw different initial weights for one seed; on the demo data that is now stable
# (PyTorch seeds 0-2: 96.65-97.7% final) JAX's seed 0 reached 97.4% against PyTorch's 97.7%. Two points is
# twice the PyTorch seed spread (1.05): a miss is a backend difference, not the seed.
def test_jax_demo_within_two_points_of_torch(torch_demo, tmp_path):
    _, t = torch_demo
    j = _run_demo(tmp_path / "jax", "jax")
    assert j.backend == "jax" and t.backend == "torch"
    assert [s.name for s in j.stages] == [s.name for s in t.stages]
    assert abs(j.top1 - t.top1) <= 2.0, f"JAX {j.top1:.1f}% vs PyTorch {t.top1:.1f}% on {DEMO.name}"
