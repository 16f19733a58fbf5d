"""Checkpoints: safetensors weights + a torch.save'd dict of plain tensors (optimizer, data position, RNG).

    RUN_DIR/checkpoints/ckpt-SSSS-TTTTTTTTT/model.safetensors   weights (full, unsharded)
    RUN_DIR/checkpoints/ckpt-SSSS-TTTTTTTTT/state.pt            {"stage", "step", "optimizer", ...}
    RUN_DIR/checkpoints/stage-S-NAME.safetensors                 weights at the end of stage S
    RUN_DIR/checkpoints/final.safetensors                        weights at the end of the run

SSSS = stage index, T = optimizer steps done in that stage. A checkpoint directory is written under a
temporary name and renamed into place, so a killed process leaves either a whole checkpoint or none.
``state.pt`` holds only tensors, dicts, lists and numbers: it loads with ``weights_only=True``.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipa import rundir
from clipa.backends.runstate import CorruptCheckpoint

KEEP_LAST = 2  # resumable checkpoints kept; stage-end weights are always kept
_CKPT = re.compile(r"^ckpt-(\d{4})-(\d{9})$")


def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / rundir.CHECKPOINTS


def complete(run_dir: Path) -> list[Path]:
    """The complete checkpoint directories, newest first."""
    d = ckpt_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _CKPT.match(p.name) and (p / "state.pt").exists()),
                  key=lambda p: p.name, reverse=True)


def save(run_dir: Path, stage: int, step: int, weights: dict[str, torch.Tensor], state: dict,
         metadata: dict[str, str]) -> Path:
    """Write one resumable checkpoint atomically and prune old ones; returns its directory."""
    d = ckpt_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"ckpt-{stage:04d}-{step:09d}"
    tmp = d / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
              metadata=metadata)
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():  # the data reaches the disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    old = sorted(p for p in d.iterdir() if _CKPT.match(p.name))[:-KEEP_LAST]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, state) of a checkpoint directory; state loaded with weights_only=True (no pickle code).
    CorruptCheckpoint when either file cannot be read."""
    try:
        return load_file(str(path / "model.safetensors")), torch.load(path / "state.pt", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as e:  # what torch.load
        # (weights_only: its own unpickler, no code run) and safetensors raise on torn or damaged files
        raise CorruptCheckpoint.reading(e) from None
