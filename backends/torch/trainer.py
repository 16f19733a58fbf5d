"""The torch trainer: the model, AdamW and one step on each process of a torchrun world, safetensors checkpoints.

``TorchTrainer`` is what the shared stage loop (``backends/loop.py``) drives. Stage k starts from stage
k-1's weights with the position embedding adapted (``CLIPA.set_stage``) and a fresh AdamW; every rank
reads the latest checkpoint on start and rank 0 writes checkpoints.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from clipa import fs
from clipa.backends import schedule
from clipa.backends.data import tokenizer
from clipa.backends.loop import weights_meta
from clipa.backends.runstate import CorruptCheckpoint
from clipa.backends.torch import checkpoint, dist as tdist, evaluate, launch
from clipa.backends.torch.model import CLIPA, LOGIT_SCALE_MAX
from clipa.recipe import Recipe, Stage


def build_optimizer(model: nn.Module, stage: Stage) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (the fixed sin-cos position embedding is not one), weight
    decay where backends/schedule.py's rule says."""
    o = stage.optimizer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if schedule.decays(n, p.ndim)], "weight_decay": o.weight_decay},
        {"params": [p for n, p in named if not schedule.decays(n, p.ndim)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=float(schedule.lr_at(stage, 0)), betas=o.betas, eps=o.eps)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], lr: float, *,
               amp=contextlib.nullcontext, grad_clip: Optional[float] = None) -> torch.Tensor:
    """One AdamW step at ``lr`` on ``batch`` (device tensors: image, int64 text, optional keep); the loss,
    detached and left on the device (no host sync per step). The benchmarks time this function."""
    for g in opt.param_groups:
        g["lr"] = lr
    with amp():
        img, txt, scale = model(*(batch[k] for k in ("image", "text", "keep") if k in batch))
        loss = tdist.contrastive_loss(img, txt, scale)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


class TorchTrainer:
    """The shared loop's ``Trainer`` for one torchrun process (DDP, or FSDP where clipa-run decided that a
    replica does not fit: RUN_DIR/parallelism.json, ``launch.parallelism``)."""

    backend = "torch"

    def __init__(self, recipe: Recipe, run_dir, world: tdist.World, compute_threads: Optional[dict[str, int]] = None):
        """``compute_threads``: torch's thread count for each stage, by name (CPU; None: leave torch's)."""
        launch.check_batches(recipe, world.world_size)  # clipa-run checked it; a SLURM job's tasks check here
        self.recipe, self.run_dir, self.w = recipe, fs.path(run_dir), world
        self.compute_threads = compute_threads
        self.n_devices = self.world = world.world_size
        self.rank, self.is_main = world.rank, world.is_main
        self.device_name = torch.cuda.get_device_name(world.device) if world.device.type == "cuda" else "cpu"
        self.amp = _amp(world, recipe)
        self.fsdp = launch.read_parallelism(run_dir, world.world_size) == "fsdp"  # decided by clipa-run
        self.model: Optional[CLIPA] = None
        self.ddp = self.opt = self.fwd = None
        self.st, self.n = recipe.stages[0], 0  # the stage being trained and its optimizer steps done
        self._opt_state: Optional[dict] = None  # restored, loaded when the stage starts
        self._weights: Optional[dict] = None  # full weights gathered since the last step

    def _build(self, st: Stage, weights: Optional[dict]) -> CLIPA:
        """A plain model on the device: built at the first stage's size (random init from torch's RNG),
        then, given ``weights``, set to stage ``st`` and loaded with them."""
        model = CLIPA(self.recipe.encoder.spec, self.recipe.stages[0].image_size)
        if weights is not None:
            model.set_stage(st.image_size, st.pos_embed)
            model.load_state_dict(weights)
        model.to(self.w.device)
        if self.recipe.train.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model

    def checkpoints(self) -> list[str]:
        return [p.name for p in checkpoint.complete(self.run_dir)]

    def restore(self, name: Optional[str]) -> Optional[dict]:
        torch.manual_seed(self.recipe.train.seed)
        weights, state = checkpoint.load(checkpoint.ckpt_dir(self.run_dir) / name) if name else (None, {})
        self.st = self.recipe.stages[state.get("stage", 0)]
        try:
            self.model = self._build(self.st, weights)
        except RuntimeError as e:  # weights that do not fit the model (a damaged or foreign file)
            raise CorruptCheckpoint(str(e).splitlines()[0]) from None
        if name is None:
            return None
        self._opt_state = state["optimizer"]
        torch.set_rng_state(state["rng"])  # after the build: a fresh run's init draws from the seed
        return state

    def close_stage(self) -> None:
        self._opt_state = None

    def start_stage(self, k: int, st: Stage, step: int) -> None:
        if self.compute_threads:
            torch.set_num_threads(self.compute_threads[st.name])
        if self.fsdp and self.ddp is not None:  # FSDP shards in place: go on from the full weights gathered
            self.model = self._build(self.st, self._weights)
        if self._opt_state is None:  # a fresh stage: adapt the previous stage's weights
            self.model.set_stage(st.image_size, st.pos_embed)
            self.model.to(self.w.device)
        self.ddp = tdist.wrap(self.model, self.w, fsdp=self.fsdp)
        self.opt = build_optimizer(self.ddp, st)
        if self._opt_state is not None:
            tdist.load_optim_state(self.ddp, self.opt, self._opt_state, self.fsdp)
            self._opt_state = None
        self.fwd = torch.compile(self.ddp) if self.recipe.train.compile else self.ddp
        self.st, self.n = st, step

    def step(self, batch: dict) -> torch.Tensor:
        self._weights = None
        b = {k: torch.from_numpy(v).to(self.w.device, non_blocking=True) for k, v in batch.items()}
        b["text"] = b["text"].long()
        loss = train_step(self.fwd, self.opt, b, float(schedule.lr_at(self.st, self.n)), amp=self.amp,
                          grad_clip=self.st.optimizer.grad_clip)
        self.n += 1
        return loss

    def mean_loss(self, losses: list) -> float:
        return tdist.mean_over_ranks(torch.stack(losses).mean()).item()

    def logit_scale(self) -> float:
        p = self.model.logit_scale.detach()
        p = p.full_tensor() if hasattr(p, "full_tensor") else p  # an FSDP-sharded DTensor (collective)
        return float(p.clamp(max=LOGIT_SCALE_MAX).exp())

    def evaluate(self, zs, st: Stage) -> float:
        return evaluate.zero_shot_top1(self.model, zs, tokenizer.get(), image_size=st.image_size,
                                       text_len=st.text_len, batch_size=st.global_batch // self.world,
                                       device=self.w.device, amp=self.amp, shard=not self.fsdp)

    def _gather(self) -> None:
        """The full weights as tensors in ``_weights``, on rank 0 (every rank under FSDP, where the gather
        is a collective and the next stage's rebuild needs them); kept until the next step, so the
        stage file, the checkpoint and the rebuild at one step share one gather."""
        if self._weights is None and (self.fsdp or self.is_main):
            model = self.ddp if self.ddp is not None else self.model
            self._weights = tdist.full_weights(model, self.fsdp and self.ddp is not None)

    def full_weights(self) -> Optional[dict[str, np.ndarray]]:
        self._gather()
        return {k: v.detach().cpu().numpy() for k, v in self._weights.items()} if self.is_main else None

    def save(self, k: int, step: int, meta: dict) -> str:
        self._gather()
        osd = None
        if self.ddp is not None and (self.fsdp or self.is_main):  # a collective under FSDP
            osd = tdist.optim_state(self.ddp, self.opt, self.fsdp)
        name = f"ckpt-{k:04d}-{step:09d}"
        if self.is_main:
            state = {**meta, "optimizer": osd, "rng": torch.get_rng_state()}
            name = checkpoint.save(self.run_dir, k, step, self._weights, state, weights_meta(self.recipe, self.st)).name
        if dist.is_initialized():
            dist.barrier()
        return name

    def all_gather(self, obj) -> list:
        if not dist.is_initialized():
            return [obj]
        every = [None] * self.world
        dist.all_gather_object(every, obj)
        return every


def _amp(world: tdist.World, recipe: Recipe):
    if world.device.type == "cuda" and recipe.train.precision == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext  # fp32 on CPU (bf16 matmuls there are slow and not what a GPU does)
