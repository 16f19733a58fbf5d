"""AdamW and the learning-rate schedule of one stage; durations arrive in samples, steps are derived here."""
from __future__ import annotations

import math

import torch
from torch import nn

from clipa.recipe import Stage


def lr_at(stage: Stage, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``stage``: linear warmup from 0, then cosine
    (or constant) down to ``schedule.min_lr`` at the stage's last step."""
    peak, low, total, warm = stage.optimizer.lr, stage.schedule.min_lr, stage.steps, stage.warmup_steps
    if step < warm:
        return peak * (step + 1) / warm
    if stage.schedule.name == "constant":
        return peak
    progress = (step - warm) / max(1, total - warm)
    return low + 0.5 * (peak - low) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # open_clip's exclusion rule (training/main.py): gains, biases and the temperature are not decayed.
    return p.ndim < 2 or "norm" in name or "bias" in name or "logit_scale" in name


def build(model: nn.Module, stage: Stage) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (the fixed sin-cos position embedding is not one)."""
    o = stage.optimizer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not _no_decay(n, p)], "weight_decay": o.weight_decay},
        {"params": [p for n, p in named if _no_decay(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr_at(stage, 0), betas=o.betas, eps=o.eps)
