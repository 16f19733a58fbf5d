"""The figures `make demo` ends with: the calibrated prediction of the demo run against what it achieved,
and what the pilots cost next to it (CPU seconds, user + system, as bash's `time` measured them).

    python scripts/demo_summary.py RUN_DIR TIMES_DIR

TIMES_DIR holds one file per measured command (``pilots``, ``demo``): "wall user sys" in seconds, one
line per attempt (a resumed make demo adds one);
``total``: the script's wall seconds; ``load_start`` / ``load_end``: /proc/loadavg at its start and end.
"""
from __future__ import annotations

import sys
from pathlib import Path

from clipa import recipe as recipe_mod
from clipa import rundir


def _times(d: Path, name: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds = user + sys), summed over the attempts (one line each)."""
    rows = [[float(x) for x in line.split()[:3]] for line in (d / name).read_text().splitlines() if line.strip()]
    return sum(r[0] for r in rows), sum(r[1] + r[2] for r in rows)


def main(run_dir: Path, times: Path) -> int:
    rec = recipe_mod.load(run_dir / rundir.RECIPE)
    ach = rundir.read_achieved(run_dir)
    p = rec.predictions
    if ach is None or ach.top1 is None or p is None:
        print("demo summary: the demo run has no achieved top-1 or no predictions", file=sys.stderr)
        return 1
    lo, hi = p.predicted_top1_interval
    inside = "inside" if lo <= ach.top1 <= hi else "OUTSIDE"
    wall_pred_s = p.wall_hours * 3600
    print(f"top-1:  predicted {p.predicted_top1:.1f}% [{lo:.1f}, {hi:.1f}] ({p.cost_model_version}), achieved "
          f"{ach.top1:.1f}%: {ach.top1 - p.predicted_top1:+.1f} points, {inside} the 80% interval")
    print(f"wall:   predicted {wall_pred_s:.0f} s, achieved {ach.wall_seconds:.0f} s "
          f"({100 * (wall_pred_s - ach.wall_seconds) / ach.wall_seconds:+.0f}%)")
    if (times / "pilots").is_file() and (times / "demo").is_file():
        pw, pc = _times(times, "pilots")
        dw, dc = _times(times, "demo")
        print(f"cost:   pilots {pc:.0f} CPU-s ({pw:.0f} s wall), demo run {dc:.0f} CPU-s ({dw:.0f} s wall): "
              f"pilots = {100 * pc / dc:.0f}% of the demo's CPU time")
    if (times / "total").is_file():
        print(f"make demo: {float((times / 'total').read_text().split()[0]):.0f} s wall from the pilots' planning "
              "to the report (set-up not counted)")
    for name in ("load_start", "load_end"):
        if (times / name).is_file():
            print(f"{name.replace('_', ' at ')}: {' '.join((times / name).read_text().split()[:3])} (1/5/15-min load average)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
