"""benchmarks/gpu_torch.py's CPU smoke path: the GPU benchmark (clipa's own train step and OpenCLIP's
model at the same shape) runs between GPU sessions, so it cannot rot."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_torch_cpu_smoke():
    p = subprocess.run([sys.executable, "benchmarks/gpu_torch.py", "--cpu-smoke"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"clipa [\d.]+ samples/s, OpenCLIP [\d.]+, ratio [\d.]+", p.stdout), p.stdout
