"""Planner speed: `clipa-plan --budget 10000 --hw a100x8` wall time (target < 2 s on a 2-core machine).

Baselines measured in the same run: the interpreter's own start-up (`python -c pass`), and an
exhaustive point-by-point enumeration of the same discretised space (what the pruned exact search replaces).

    python -m benchmarks.plan_speed [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def exhaustive_seconds() -> tuple[float, int]:
    from clipa.costmodels import hardware
    from clipa.planner import search_space as ss
    from clipa.planner.cost_point import Budget, Context, cost_point

    ctx = Context(hw=hardware.get("a100x8"), dataset="datacomp-1b", budget=Budget(usd=10000))
    t, n = time.perf_counter(), 0
    for p in ss.all_points():
        cost_point(p, ctx)
        n += 1
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "plan.yaml")
        plan = wall([sys.executable, "-m", "clipa.cli.plan", "--budget", "10000", "--hw", "a100x8", "--json",
                     "--out", out], args.reps)
    python = wall([sys.executable, "-c", "pass"], args.reps)
    ex, n = exhaustive_seconds()
    print(f"clipa-plan --budget 10000 --hw a100x8: {plan:.2f} s wall (median of {args.reps}); target < 2 s: "
          f"{'PASS' if plan < 2 else 'FAIL'}")
    print(f"baseline python start-up: {python:.2f} s  -> planner is {plan / python:.1f}x an empty interpreter")
    print(f"baseline exhaustive enumeration of the same space ({n} points, in-process): {ex:.2f} s "
          f"-> search is {ex / plan:.1f}x faster end to end")


if __name__ == "__main__":
    main()
