"""Checkpoints: safetensors weights + a torch.save'd dict of plain tensors (optimizer, data position, RNG).

    RUN_DIR/checkpoints/ckpt-SSSS-TTTTTTTTT/model.safetensors   weights (full, unsharded)
    RUN_DIR/checkpoints/ckpt-SSSS-TTTTTTTTT/state.pt            {"stage", "step", "optimizer", ...}
    RUN_DIR/checkpoints/stage-S-NAME.safetensors                 weights at the end of stage S
    RUN_DIR/checkpoints/final.safetensors                        weights at the end of the run

SSSS = stage index, T = optimizer steps done in that stage. RUN_DIR is a local path or a URL (gs://;
clipa/fs.py). Each file is written atomically and ``state.pt`` last: a checkpoint is complete when its
``state.pt`` exists, so a killed process leaves whole checkpoints only (object stores have no atomic
folder rename, so none is used). ``state.pt`` holds only tensors, dicts, lists and numbers: it loads
with ``weights_only=True``.
"""
from __future__ import annotations

import io
import pickle
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes, save as save_bytes

from clipa import fs, rundir
from clipa.backends.runstate import KEEP_LAST, CorruptCheckpoint

_CKPT = re.compile(r"^ckpt-(\d{4})-(\d{9})$")


def ckpt_dir(run_dir):
    return fs.path(run_dir) / rundir.CHECKPOINTS


def complete(run_dir) -> list:
    """The complete checkpoint directories, newest first."""
    d = ckpt_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _CKPT.match(p.name) and (p / "state.pt").exists()),
                  key=lambda p: p.name, reverse=True)


def save(run_dir, stage: int, step: int, weights: dict[str, torch.Tensor], state: dict,
         metadata: dict[str, str]):
    """Write one resumable checkpoint (state.pt last, see the module doc) and prune old ones; returns its
    directory."""
    d = ckpt_dir(run_dir)
    final = d / f"ckpt-{stage:04d}-{step:09d}"
    (final / "state.pt").unlink(missing_ok=True)  # one of this name (passed over as unreadable) is incomplete now
    fs.write_atomic(final / "model.safetensors",
                    save_bytes({k: v.detach().cpu().contiguous() for k, v in weights.items()}, metadata=metadata))
    buf = io.BytesIO()
    torch.save(state, buf)
    fs.write_atomic(final / "state.pt", buf.getvalue())
    for p in sorted(p for p in d.iterdir() if _CKPT.match(p.name))[:-KEEP_LAST]:
        fs.rmtree(p)
    return final


def load(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, state) of a checkpoint directory; state loaded with weights_only=True (no pickle code).
    CorruptCheckpoint when either file cannot be read."""
    try:
        return (load_bytes((path / "model.safetensors").read_bytes()),
                torch.load(io.BytesIO((path / "state.pt").read_bytes()), weights_only=True))
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as e:  # what torch.load
        # (weights_only: its own unpickler, no code run) and safetensors raise on torn or damaged files
        raise CorruptCheckpoint.reading(e) from None
