"""The embedded demo end to end: clipa-run recipes/demo.yaml reaches >= 3x chance zero-shot top-1."""
import subprocess
import sys
from pathlib import Path

import pytest

from clipa import recipe, rundir

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_recipe_beats_three_times_chance(tmp_path):
    run_dir = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "clipa.cli.run", str(REPO / "recipes" / "demo.yaml"), "--run-dir",
                        str(run_dir), "--device", "cpu"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    ach = rundir.read_achieved(run_dir)
    n_classes = len((run_dir / "data" / "classnames.txt").read_text().split())
    chance = 100.0 / n_classes
    assert ach.top1 >= 3 * chance, f"top-1 {ach.top1:.1f}% < 3x chance ({3 * chance:.1f}%)"
    rec = recipe.load(REPO / "recipes" / "demo.yaml")
    assert [s.name for s in ach.stages] == [s.name for s in rec.stages]
    assert all(s.top1 is not None for s in ach.stages) and ach.eval_set == "demo-heldout"
