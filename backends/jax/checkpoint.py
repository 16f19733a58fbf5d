"""Resumable checkpoints with orbax: the whole train state (sharded arrays) plus a JSON position.

    RUN_DIR/checkpoints/<N>/state/         params + optimizer state (orbax StandardSave)
    RUN_DIR/checkpoints/<N>/meta/          {"stage", "step", "samples", "data_samples", "time_s"}
    RUN_DIR/checkpoints/final.safetensors  weights at the end of the run, in the PyTorch layout

N counts optimizer steps over the whole run. Orbax writes each step under a temporary name and
renames it when complete, so a killed process leaves whole checkpoints only; every host writes
its own shards (multi-host needs ``RUN_DIR`` on a filesystem all hosts see).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax
import orbax.checkpoint as ocp

from clipa import rundir

KEEP_LAST = 2  # resumable checkpoints kept (as the PyTorch backend)


def manager(run_dir: Path) -> ocp.CheckpointManager:
    d = (Path(run_dir) / rundir.CHECKPOINTS).absolute()
    # Synchronous saves: the run loop is simple and a save never overlaps the next step's donation.
    opts = ocp.CheckpointManagerOptions(max_to_keep=KEEP_LAST, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(d, options=opts)


def save(mngr: ocp.CheckpointManager, n: int, state, meta: dict) -> None:
    """Save checkpoint ``n`` unless it exists (nothing trained since: e.g. --max-samples right after
    a periodic checkpoint)."""
    if n in mngr.all_steps():
        return
    mngr.save(n, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)
    mngr.wait_until_finished()


def latest_meta(mngr: ocp.CheckpointManager) -> Optional[tuple[int, dict]]:
    """(N, position) of the newest complete checkpoint, or None for a fresh run."""
    n = mngr.latest_step()
    if n is None:
        return None
    meta = mngr.restore(n, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return n, dict(meta)


def restore_state(mngr: ocp.CheckpointManager, n: int, like, shardings):
    """The state of checkpoint ``n``, laid out as ``shardings`` (``like`` gives shapes/dtypes)."""
    target = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
    return mngr.restore(n, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
