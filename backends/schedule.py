"""What both backends' AdamW does at each step: the learning rate and which parameters decay.

Framework-free: the torch trainer calls ``lr_at`` with numpy once per step, the JAX trainer passes
``jax.numpy`` so that optax traces the same formula inside the jitted step.
"""
from __future__ import annotations

import numpy as np

from clipa.recipe import Stage

# open_clip's exclusion rule (training/main.py): gains, biases and the temperature are not decayed.
_NO_DECAY = ("norm", "bias", "logit_scale")


def lr_at(stage: Stage, step, xp=np):
    """Learning rate of optimizer step ``step`` (0-based) of ``stage``; ``xp`` is numpy or jax.numpy.

    Linear warmup to the peak over ``stage.warmup_steps`` (step 0 already gets peak/warm, never 0),
    then cosine from the peak to ``schedule.min_lr`` at the stage's last step (or constant)."""
    peak, low, total, warm = stage.optimizer.lr, stage.schedule.min_lr, stage.steps, stage.warmup_steps
    step = xp.asarray(step, xp.float32 if xp is not np else np.float64)
    warm_lr = peak * (step + 1.0) / max(warm, 1)
    if stage.schedule.name == "constant":
        after = xp.asarray(peak, step.dtype)
    else:
        frac = xp.clip((step - warm) / max(total - warm, 1), 0.0, 1.0)
        after = low + 0.5 * (peak - low) * (1.0 + xp.cos(xp.pi * frac))
    return xp.where(step < warm, warm_lr, after)


def decays(name: str, ndim: int) -> bool:
    """Whether weight decay applies to the parameter ``name`` (dotted or slashed path) of ``ndim`` dims:
    matrices and embeddings do; vectors, scalars and anything named like a norm or bias do not."""
    return ndim >= 2 and not any(s in name for s in _NO_DECAY)
