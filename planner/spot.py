"""Spot (preemptible) plans: the price they pay and how often they checkpoint.

A preemption loses the work done since the last checkpoint: half a checkpoint interval on average.
No source at hand gives a preemption rate for spot VMs or TPUs (providers only say they may be
preempted at any time), so the rate is an assumption, stated in every spot plan:
``HOURS_BETWEEN_PREEMPTIONS``. Checkpointing at least every ``2 * LOST_FRACTION * HOURS_BETWEEN_PREEMPTIONS``
then loses at most ``LOST_FRACTION`` of the wall time on average (a whole interval, twice that, at worst).
Restart time (a new VM, reloading the checkpoint) and the time to save checkpoints are not counted.
"""
from __future__ import annotations

from clipa import recipe as recipe_mod
from clipa.costmodels import hardware

HOURS_BETWEEN_PREEMPTIONS = 24.0  # an assumption, not a measurement: see the module docstring
LOST_FRACTION = 0.02              # the expected work lost to preemptions, as a fraction of wall time


def checkpoint_minutes() -> int:
    """The longest interval between checkpoints that keeps the expected loss at LOST_FRACTION (whole minutes)."""
    return int(2 * LOST_FRACTION * HOURS_BETWEEN_PREEMPTIONS * 60)


def expected_loss(minutes: float) -> float:
    """Fraction of wall time lost to preemptions when checkpointing every ``minutes`` (the assumption above)."""
    return minutes / 2 / (HOURS_BETWEEN_PREEMPTIONS * 60)


def apply(rec: recipe_mod.Recipe) -> recipe_mod.Recipe:
    """``rec`` checkpointing at least every ``checkpoint_minutes()`` (a recipe that already checkpoints more
    often keeps its interval)."""
    current = rec.train.checkpoint_every_minutes
    minutes = checkpoint_minutes() if current is None else min(current, checkpoint_minutes())
    return rec.model_copy(update={"train": rec.train.model_copy(update={"checkpoint_every_minutes": minutes})})


def note(hw: hardware.Hardware, minutes: float) -> str:
    """What a spot plan checkpointing every ``minutes`` says about itself."""
    return (f"spot pricing on {hw.name}: the run can be preempted: it checkpoints every {minutes:g} min "
            f"(train.checkpoint_every_minutes), so, assuming at most one preemption per "
            f"{HOURS_BETWEEN_PREEMPTIONS:g} h of wall time, preemptions cost about {expected_loss(minutes):.1%} of "
            f"the wall time on average (restarts not counted; not in the $ above)")
