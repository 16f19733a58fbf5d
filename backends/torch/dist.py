"""Process groups, the all-gather with gradients and the contrastive loss (local-loss form).

Parallelism lives here, apart from the model (torchtitan's split): ``wrap`` gives DDP by default and
FSDP (per-block sharding) when the caller says the replicated model does not fit a device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str | None = None) -> World:
    """Join torchrun's process group (env RANK/WORLD_SIZE/LOCAL_RANK; under clipa's SLURM script, read
    from SLURM's variables: backends/torch/slurm.py) or run as a single process.

    gloo on CPU, nccl on CUDA. ``device``: "cpu" | "cuda" | None (cuda when available).
    """
    from clipa.backends.torch import slurm

    slurm.apply_env(os.environ)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, D] from all ranks into [world*B, D]; gradients flow back to every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows, in rank order; the backward sums every rank's gradient for this rank's rows (what
    torch.distributed.nn's all_gather does; torch 2.14 deprecates that, with a FutureWarning per process)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        every = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(every, x.contiguous())
        return torch.cat(every, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * rows:(dist.get_rank() + 1) * rows]


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch, computed for this rank's rows only (open_clip's local loss).

    ``img``/``txt`` [B, D] L2-normalised local features. Each rank's loss is the mean over its own B
    rows against all world*B columns; the mean of the ranks' losses (what DDP's gradient averaging
    optimises) equals the single-process loss over the global batch.
    """
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
    rank = dist.get_rank() if dist.is_initialized() else 0
    labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
    logits_i = scale * img @ all_txt.T
    logits_t = scale * txt @ all_img.T
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average a scalar tensor over ranks (for logging; no gradient)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def wrap(model: nn.Module, world: World, fsdp: bool = False) -> nn.Module:
    """DDP (or FSDP2 ``fully_shard`` per transformer block when ``fsdp``) for world > 1; else the model."""
    if world.world_size == 1:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        from torch.distributed.fsdp import register_fsdp_forward_method

        for blk in list(model.visual.blocks) + list(model.text.blocks):
            fully_shard(blk)
        fully_shard(model)
        for name in ("encode_image", "encode_text"):  # evaluation calls these, not forward
            register_fsdp_forward_method(model, name)
        return model
    ids = [world.local_rank] if world.device.type == "cuda" else None
    # The fixed sin-cos position embedding has requires_grad=False; DDP skips it (no broadcast needed:
    # every rank computes it identically).
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_weights(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """The whole model's weights as plain CPU tensors (a collective under FSDP: every rank calls it)."""
    if not fsdp:
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


def optim_state(model: nn.Module, opt: torch.optim.Optimizer, fsdp: bool) -> dict:
    """Optimizer state as plain tensors/dicts (loadable with weights_only=True); collective under FSDP."""
    if not fsdp:
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optim_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    if not fsdp:
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
