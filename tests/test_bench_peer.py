"""benchmarks/peer_openclip.py --quick runs both trainers end to end and prints both comparisons, so the
peer benchmark (and the launcher that makes OpenCLIP's trainer run here) cannot rot."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_openclip_launcher_fixes_end_of_shard_markers():
    """The launcher binds eof_value=None into open_clip_train.data only (installed files unchanged)."""
    code = ("import benchmarks.openclip_launch, open_clip_train.data as d, webdataset.tariterators as t;"
            "assert d.tar_file_expander.keywords == {'eof_value': None};"
            "assert t.tar_file_expander.__defaults__[-1] == {}")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.mark.slow
def test_quick_mode(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmarks.peer_openclip", "--quick", "--work", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    ratio = re.search(r"ratio clipa / OpenCLIP: end to end ([\d.]+)x, steady ([\d.]+)x", p.stdout)
    assert ratio and float(ratio.group(1)) > 0, p.stdout
    assert re.search(r"clipa CLIPA recipe: [\d.]+", p.stdout) and re.search(r"OpenCLIP 64 px: +[\d.]+", p.stdout)
