"""The tiny run the tests train: the shipped recipe (recipes/test.yaml) with real shards for data, and
the `clipa-run` command line the end-to-end tests start it with."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

SHIPPED = Path(__file__).resolve().parents[1] / "recipes" / "test.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def default_sigint() -> None:
    """``preexec_fn`` of a child a test stops with SIGINT, Ctrl-C as in a terminal: a test run started in the
    background of a non-interactive shell (``cmd &``) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler in the child (a plan, and syntax_prep, ran to the end with rc 0 in such runs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_data(tmp_path_factory) -> dict:
    from clipa.backends.data import demo_data

    out = tmp_path_factory.mktemp("data")
    return {k: str(v) for k, v in demo_data.generate(out, 192, 30, 32, 0).items()}


def tiny(data: Optional[dict] = None, *, stages: int = 2, workers: int = 0, train: Optional[dict] = None,
         **sections) -> dict:
    """recipes/test.yaml as a dict: its first ``stages`` stages; ``data`` (``make_data``'s paths) as a
    custom dataset with ``workers`` decoders; other top-level ``sections`` replaced, ``train`` merged."""
    rec = yaml.safe_load(SHIPPED.read_text())
    rec["stages"] = rec["stages"][:stages]
    if data is not None:
        rec["dataset"] = {"name": "custom", **{k: data[k] for k in ("train", "val", "classnames", "templates")},
                          "workers": workers}
    rec["train"].update(train or {})
    return {**rec, **sections}


def write(rec: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(rec))
    return path


def recipe(tmp: Path, data: dict, name: str = "t", *, pre: int = 128, lr2: float = 1e-3, workers: int = 0,
           **train) -> Path:
    """The shipped two stages on ``data``: ``pre`` samples at 32 px, then the fine-tune at ``lr2``."""
    rec = tiny(data, workers=workers, train=train, name=name)
    rec["stages"][0]["samples"] = pre
    rec["stages"][1]["optimizer"]["lr"] = lr2
    return write(rec, tmp / f"{name}-{pre}-{lr2}.yaml")


def cmd(recipe: Path, run_dir: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "clipa.cli.run", str(recipe), "--run-dir", str(run_dir), "--device", "cpu", *extra]


def run(recipe: Path, run_dir: Path, *extra, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(recipe, run_dir, *extra), capture_output=True, text=True, env=ENV, timeout=timeout)
