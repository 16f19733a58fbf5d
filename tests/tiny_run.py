"""The tiny two-stage run the torch end-to-end tests train through real `clipa-run` subprocesses:
its data (real shards), its recipe and the command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def make_data(tmp_path_factory) -> dict:
    from clipa.backends.data import demo_data

    out = tmp_path_factory.mktemp("data")
    return {k: str(v) for k, v in demo_data.generate(out, 192, 30, 32, 0).items()}


def recipe(tmp: Path, data: dict, name: str = "t", *, pre: int = 128, lr2: float = 1e-3, workers: int = 0,
           **train) -> Path:
    """A 32 px sin-cos stage of ``pre`` samples, then 64 samples at 40 px, learned positions, 50% masked."""
    stage = dict(global_batch=16, image_size=32, text_len=12, schedule={"warmup_samples": 32})
    rec = {
        "name": name, "encoder": {"name": "test"}, "hardware": {"name": "cpu"},
        "dataset": {"name": "custom", "train": data["train"], "val": data["val"], "classnames": data["classnames"],
                    "templates": data["templates"], "workers": workers},
        "stages": [
            {**stage, "name": "pre", "samples": pre, "optimizer": {"lr": 1e-3}},
            {**stage, "name": "ft", "samples": 64, "image_size": 40, "pos_embed": "learned",
             "image_reduction": {"kind": "random_mask", "mask_ratio": 0.5}, "optimizer": {"lr": lr2}},
        ],
        # one compute thread: the default choice follows the machine's load, and these runs compare weights
        "train": {"seed": 0, "precision": "fp32", "log_every_steps": 2, "compute_threads": 1, **train},
    }
    p = tmp / f"{name}-{pre}-{lr2}.yaml"
    p.write_text(yaml.safe_dump(rec))
    return p


def cmd(recipe: Path, run_dir: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "clipa.cli.run", str(recipe), "--run-dir", str(run_dir), "--device", "cpu", *extra]


def run(recipe: Path, run_dir: Path, *extra, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(recipe, run_dir, *extra), capture_output=True, text=True, env=ENV, timeout=timeout)
