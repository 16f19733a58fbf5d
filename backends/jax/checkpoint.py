"""Resumable checkpoints with orbax: the whole train state (sharded arrays) plus a JSON position.

    RUN_DIR/checkpoints/<N>/state/         params + optimizer state (orbax StandardSave)
    RUN_DIR/checkpoints/<N>/meta/          {"stage", "step", "samples", "data_samples", "time_s"}
    RUN_DIR/checkpoints/final.safetensors  weights at the end of the run, in the PyTorch layout

N counts optimizer steps over the whole run. Orbax writes each step under a temporary name and
renames it when complete (on gs:// it commits with a marker file instead), so a killed process leaves
whole checkpoints only. Saves are collective: every host calls ``save`` and writes its own shards, and
orbax's primary host writes the metadata; a multi-host RUN_DIR must be one all hosts see (gs://, see
clipa/fs.py's ``orbax_dir``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Optional

import jax
import orbax.checkpoint as ocp

from clipa import fs, rundir
from clipa.backends.runstate import KEEP_LAST, CorruptCheckpoint


def manager(run_dir) -> ocp.CheckpointManager:
    d = fs.orbax_dir(fs.path(run_dir) / rundir.CHECKPOINTS)
    # Synchronous saves: the run loop is simple and a save never overlaps the next step's donation.
    opts = ocp.CheckpointManagerOptions(max_to_keep=KEEP_LAST, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(d, options=opts)


def save(mngr: ocp.CheckpointManager, n: int, state, meta: dict) -> None:
    """Save checkpoint ``n``, replacing one of that number (an unreadable one the run passed over)."""
    if n in mngr.all_steps():
        mngr.delete(n)
    with _quiet_failed_writes():
        try:
            mngr.save(n, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
            mngr.wait_until_finished()
        except ValueError as e:
            # TensorStore reports a failed write as a ValueError whose text ends with the OS error's number; as
            # an OSError it reaches the run loop like the PyTorch backend's (a full disk: one line, not a
            # traceback).
            code = _os_error(e)
            if code is None:
                raise
            mngr.close()
            raise OSError(code, os.strerror(code), f"{mngr.directory}/{n}") from None


def _os_error(e: BaseException) -> Optional[int]:
    """The OS error number in TensorStore's ValueError for a failed write, else None."""
    code = re.search(r"os_error_code='(\d+)'", str(e)) if isinstance(e, ValueError) else None
    return int(code.group(1)) if code else None


class _FailedWrite(logging.Filter):
    def filter(self, record) -> bool:
        return not (record.exc_info and _os_error(record.exc_info[1]) is not None)


@contextlib.contextmanager
def _quiet_failed_writes():
    """When one write of a save fails, orbax logs it with its traceback (through absl) and TensorStore finishes
    the save's other writes, each reporting to the event loop orbax closed at the first failure (an
    unraisable "Event loop is closed") or failing on its own ("Task exception was never retrieved", logged
    by asyncio): dozens of tracebacks on the tiny run, before and after clipa's line, that say nothing the
    OSError does not. Quiet during a save; after a failed one for good, since they go on after it (the
    process is ending)."""
    hook, drop = sys.unraisablehook, _FailedWrite()
    logs = [logging.getLogger(name) for name in ("absl", "asyncio")]

    def quiet(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            hook(unraisable)

    sys.unraisablehook = quiet
    for log in logs:
        log.addFilter(drop)
    yield  # no finally: a failed save leaves them in place
    sys.unraisablehook = hook
    for log in logs:
        log.removeFilter(drop)


def steps(mngr: ocp.CheckpointManager) -> list[int]:
    """The complete checkpoints' numbers, newest first."""
    return sorted(mngr.all_steps(), reverse=True)


def restore(mngr: ocp.CheckpointManager, n: int, like=None, shardings=None) -> tuple[Optional[dict], dict]:
    """(state laid out as ``shardings``, position) of checkpoint ``n`` (``like`` gives shapes/dtypes; without
    it the position alone, state None). CorruptCheckpoint when it cannot be read."""
    args = {"meta": ocp.args.JsonRestore()}
    if like is not None:
        target = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like,
                                        shardings)
        args["state"] = ocp.args.StandardRestore(target)
    try:
        out = mngr.restore(n, args=ocp.args.Composite(**args))
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # orbax/tensorstore/JSON read errors
        raise CorruptCheckpoint.reading(e) from None
    return out.get("state") if like is not None else None, dict(out["meta"])
