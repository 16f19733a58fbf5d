"""Zero-shot classification top-1 on an ImageNet-style val folder (CLIP's prompt-ensemble protocol)."""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipa.backends.torch.model import CLIPA


@torch.no_grad()
def class_embeddings(model: CLIPA, prompts: torch.Tensor, n_classes: int, batch_size: int, amp) -> torch.Tensor:
    """prompts [C*T, L] (class-major) -> [C, D]: per class the normalised mean of its normalised prompts."""
    feats = []
    for i in range(0, prompts.shape[0], batch_size):
        with amp():
            feats.append(F.normalize(model.encode_text(prompts[i:i + batch_size]).float(), dim=-1))
    f = torch.cat(feats).reshape(n_classes, -1, feats[0].shape[-1]).mean(dim=1)
    return F.normalize(f, dim=-1)


@torch.no_grad()
def zero_shot_top1(model: CLIPA, zs, tokenizer, *, image_size: int, text_len: int, batch_size: int,
                   device: torch.device, amp=contextlib.nullcontext, shard: bool = True) -> float:
    """Top-1 accuracy in percent of ``zs`` (a backends.data ZeroShotSet) at ``image_size`` px.

    With a process group and ``shard``, each rank reads and scores its share of the images
    (``ZeroShotSet.image_batches``' rank/world split); counts are summed over ranks.
    ``shard=False`` (FSDP: every rank must run every forward) has each rank score every batch.
    """
    was_training = model.training
    model.eval()
    prompts = torch.as_tensor(zs.prompts(tokenizer, text_len), device=device)
    classes = class_embeddings(model, prompts, len(zs.classnames), batch_size, amp)
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed and shard else (0, 1)
    correct = torch.zeros(2, dtype=torch.float64, device=device)  # [correct, total]
    for images, labels in zs.image_batches(image_size, batch_size, rank, world):
        with amp():
            img = F.normalize(model.encode_image(torch.as_tensor(images, device=device)).float(), dim=-1)
        pred = (img @ classes.T).argmax(dim=-1)
        correct[0] += (pred.cpu() == torch.as_tensor(labels)).sum().item()
        correct[1] += len(labels)
    if distributed and shard:
        dist.all_reduce(correct)
    model.train(was_training)
    return 100.0 * correct[0].item() / max(1.0, correct[1].item())
