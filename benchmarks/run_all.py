"""Run every benchmark in turn (`make bench`); each prints its figure, its baseline and the ratio."""
from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    ["benchmarks.plan_speed"],
    ["benchmarks.data_pipeline"],
    ["benchmarks.data_resume"],
    ["benchmarks.decode_rate"],
    ["benchmarks.train_step_torch"],
    ["benchmarks.train_step_jax"],
    ["benchmarks.gpu_torch"],
    ["benchmarks.peer_openclip"],   # both trainers end to end, then 3 seeds at equal wall time (~1 h on 2 cores)
]


def main() -> int:
    failed = []
    for mod in BENCHMARKS:
        print(f"\n=== {mod[0]}", flush=True)
        if subprocess.run([sys.executable, "-m", *mod]).returncode != 0:
            failed.append(mod[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
