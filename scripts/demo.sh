#!/usr/bin/env bash
# The embedded demo, plan -> run -> report, on CPU (about 5-10 minutes on 2 cores):
#   1. clipa-plan predicts cost and accuracy of recipes/demo.yaml on this CPU,
#   2. clipa-run trains it (generating the synthetic data into runs/demo/data on first use) and writes
#      zero-shot top-1 on the held-out split to runs/demo/achieved.json,
#   3. clipa-report compares what was predicted with what was achieved.
# Running it again resumes an unfinished run, or reports a finished one.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CLIPA_BIN:-.venv/bin}"
[ -x "$BIN/python" ] || BIN="$(dirname "$(command -v python)")"
RUN_DIR="runs/demo"

"$BIN/python" -m clipa.cli.plan --predict recipes/demo.yaml --hw cpu
"$BIN/python" -m clipa.cli.run recipes/demo.yaml --run-dir "$RUN_DIR" "$@"
"$BIN/python" -m clipa.cli.report "$RUN_DIR"
