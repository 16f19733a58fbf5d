"""Zero-shot classification top-1 of the torch model (the protocol is backends/data/zeroshot.py's)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.distributed as dist

from clipa.backends.data import zeroshot
from clipa.backends.torch.model import CLIPA


@torch.no_grad()
def zero_shot_top1(model: CLIPA, zs, tokenizer, *, image_size: int, text_len: int, batch_size: int,
                   device: torch.device, amp=contextlib.nullcontext, shard: bool = True) -> float:
    """Top-1 accuracy in percent of ``zs`` (a backends.data ZeroShotSet) at ``image_size`` px.

    With a process group and ``shard``, each rank reads and scores its share of the images; counts
    are summed over ranks. ``shard=False`` (FSDP: every rank must run every forward) has each rank
    score every batch."""
    was_training = model.training
    model.eval()

    def encoder(fn):
        def encode(x: np.ndarray) -> np.ndarray:
            with amp():
                return fn(torch.as_tensor(x, device=device)).float().cpu().numpy()
        return encode

    def total(counts: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(counts, device=device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    sharded = shard and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    top1 = zeroshot.top1_percent(zs, tokenizer, text_len, image_size, batch_size, encoder(model.encode_text),
                                 encoder(model.encode_image), rank, world, total if sharded else lambda c: c)
    model.train(was_training)
    return top1
