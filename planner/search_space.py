"""The planner's discretised search space, and how a point in it becomes a recipe.

A point fixes the encoder, the pretraining image tokens (as tokens per side) and how they
are reduced, the text length and its reduction, the global batch and the fine-tune
schedule. Pretraining samples are not searched: more samples never predict lower accuracy
(a tested property of the accuracy law), so each point takes the largest value of
``SAMPLES_GRID`` that the budget leaves after fine-tuning. Hyperparameters follow the
published CLIPA configs (sources inline).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Iterator, Optional

from clipa import encoders, reductions
from clipa import recipe as recipe_mod
from clipa.registry import Registry

ENCODERS = ("S/16", "B/16", "L/16", "L/14", "H/14", "g/14", "bigG/14")
# Pretraining tokens per side: 4x4 = 16 (CLIPA L/16 I17) ... 16x16 (full 224 px at /14).
SIDES = (4, 5, 6, 7, 8, 10, 12, 14, 16)
IMAGE_REDUCTIONS = reductions.IMAGE.names()
TEXT_LENS = (8, 16, 32)
TEXT_REDUCTIONS = reductions.TEXT.names()
GLOBAL_BATCHES = (16384, 32768, 65536)
# Samples seen in pretraining; includes the published 2.4e9 (6 LAION-400M epochs, open_clip docs/clipa.md),
# 2.56e9 (CLIPA-v2 Table 1) and 12.8e9 (CLIPA-v2).
SAMPLES_GRID = (1e8, 2e8, 4e8, 8e8, 1.28e9, 2.4e9, 2.56e9, 4e9, 6.4e9, 8e9, 12.8e9, 16e9, 25.6e9, 32e9)
FULL_RES = 224  # the fine-tune / evaluation resolution of every published CLIPA run



@dataclass(frozen=True)
class FinetuneStage:
    """One stage of a fine-tune schedule, at full resolution with a random mask (CLIPA-v2's)."""

    image_size: int  # px
    samples: int
    mask_ratio: float  # fraction of patch tokens removed (random_mask; 0: every token)
    lr_per_256: float  # peak learning rate per 256 samples of global batch
    warmup_steps: int
    text_len: int  # tokens, truncated captions


@dataclass(frozen=True)
class Finetune:
    name: str
    stages: tuple[FinetuneStage, ...]


# CLIPA-v1: 131,072,000 samples @224, full tokens (open_clip docs/clipa.md, i37_t8_finetune.sh).
# CLIPA-v2: 512M @224 with 30% random mask, lr 4e-7 x batch/256, warmup 800
# (CLIPA clipa_jax/configs/model_h/unmask_tuning_224_scheduleX4.py); then 128M @336 with 40% mask,
# lr 1e-7 x batch/256, warmup 1600 (model_h/unmask_tuning_336_scheduleX1.py).
FT_224_V1 = FinetuneStage(224, 131_072_000, 0.0, 4e-7, 800, 32)
FT_224_V2 = FinetuneStage(224, 512_000_000, 0.3, 4e-7, 800, 32)
FT_336_V2 = FinetuneStage(336, 128_000_000, 0.4, 1e-7, 1600, 32)
FINETUNES = Registry[Finetune]("fine-tune schedule")
for _f in (Finetune("none", ()), Finetune("224-short", (FT_224_V1,)), Finetune("224", (FT_224_V2,)),
           Finetune("224+336", (FT_224_V2, FT_336_V2))):
    FINETUNES.register(_f)
FT_BATCHES = (4096, 8192, 16384, 32768)

# Pretraining: lr = 8e-6 x batch/256, warmup 3200 steps of 65536 (CLIPA clipa_jax/configs/model_h/84_8_pre_training.py),
# AdamW betas (0.9, 0.95), weight decay 0.2 (recipes_clipa_reference.md).
PRETRAIN_LR_PER_256 = 8e-6
PRETRAIN_WARMUP_SAMPLES = 3200 * 65536
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.2
# CLIPA's augmentation (recipes_clipa_reference.md): RRC scale (0.4, 1.0); jitter/grayscale only in
# the v1 torch scripts, so the planner leaves them off.
RRC_SCALE = (0.4, 1.0)


@dataclass(frozen=True)
class Point:
    encoder: str
    side: int
    image_reduction: str
    text_len: int
    text_reduction: str
    global_batch: int
    finetune: str

    def image_size(self) -> int:
        """Pretraining resolution in px: resize shrinks the image; masks keep full resolution."""
        patch = encoders.get(self.encoder).vision.patch
        return _full_size(patch) if self.masks else self.side * patch

    @property
    def masks(self) -> bool:
        return reductions.IMAGE.get(self.image_reduction).masks

    def mask_ratio(self) -> float:
        if not self.masks:
            return 0.0
        patch = encoders.get(self.encoder).vision.patch
        full = (_full_size(patch) // patch) ** 2
        return 1.0 - (self.side ** 2) / full


def _full_size(patch: int) -> int:
    return (FULL_RES // patch) * patch


def all_points(encoders_: tuple[str, ...] = ENCODERS) -> Iterator[Point]:
    yield from points(tuple(encoders_))


@functools.lru_cache(maxsize=8)
def points(encoders_: tuple[str, ...] = ENCODERS) -> tuple[Point, ...]:
    """Every valid point of the space, in a fixed order (built once per process)."""
    full = {e: _full_size(encoders.get(e).vision.patch) // encoders.get(e).vision.patch for e in encoders_}
    masks = {r.name: r.masks for r in reductions.IMAGE}
    out = []
    for enc, side, ired, tl, tr, b, ft in itertools.product(encoders_, SIDES, IMAGE_REDUCTIONS, TEXT_LENS,
                                                            TEXT_REDUCTIONS, GLOBAL_BATCHES, FINETUNES.names()):
        # Point.valid, inlined: no side beyond full resolution, no mask that keeps every token.
        if side <= full[enc] and not (masks[ired] and side == full[enc]):
            out.append(Point(enc, side, ired, tl, tr, b, ft))
    return tuple(out)


def build_recipe(p: Point, samples: float, *, dataset: str, hardware: str, name: str, workers: int,
                 ft_batch: int = 32768, grad_checkpointing: bool = False,
                 usd_per_hour: Optional[float] = None) -> recipe_mod.Recipe:
    """The recipe for point ``p`` with ``samples`` pretraining samples, decoded by ``workers`` per
    training process."""
    stages = [dict(
        name="pretrain", samples=int(samples), global_batch=p.global_batch, image_size=p.image_size(),
        image_reduction={"kind": p.image_reduction, "mask_ratio": p.mask_ratio()},
        text_len=p.text_len, text_reduction=p.text_reduction,
        optimizer={"lr": PRETRAIN_LR_PER_256 * p.global_batch / 256, "betas": BETAS, "weight_decay": WEIGHT_DECAY},
        schedule={"warmup_samples": min(PRETRAIN_WARMUP_SAMPLES, int(samples) // 10)},
        augment={"random_resized_crop": RRC_SCALE}, pos_embed="sincos",
    )]
    for ft in FINETUNES.get(p.finetune).stages:
        kind = "random_mask" if ft.mask_ratio > 0 else "resize"
        stages.append(dict(
            name=f"finetune{ft.image_size}", samples=ft.samples, global_batch=ft_batch, image_size=ft.image_size,
            image_reduction={"kind": kind, "mask_ratio": ft.mask_ratio}, text_len=ft.text_len,
            text_reduction="truncate",
            optimizer={"lr": ft.lr_per_256 * ft_batch / 256, "betas": BETAS, "weight_decay": WEIGHT_DECAY},
            schedule={"warmup_samples": ft.warmup_steps * ft_batch},
            augment={"random_resized_crop": RRC_SCALE}, pos_embed="learned",
        ))
    hw = {"name": hardware}
    if usd_per_hour is not None:
        hw["usd_per_hour"] = usd_per_hour
    return recipe_mod.from_dict(dict(
        name=name, encoder={"name": p.encoder}, dataset={"name": dataset, "workers": workers}, hardware=hw,
        stages=stages,
        train={"grad_checkpointing": grad_checkpointing, "precision": "bf16"},
    ), source="planner")


def point_from_recipe(rec: recipe_mod.Recipe) -> Optional[Point]:
    """The search-space point closest to a (published) recipe, or None if it lies outside the space."""
    enc = rec.encoder.spec
    pre = rec.stages[0]
    tokens = pre.image_tokens(enc)
    side = round(tokens ** 0.5)
    ft = [(s.image_size, s.samples, s.image_reduction.mask_ratio) for s in rec.stages[1:]]
    name = next((f.name for f in FINETUNES
                 if [(s.image_size, s.samples, s.mask_ratio) for s in f.stages] == ft), None)
    if name is None or side not in SIDES or pre.text_len not in TEXT_LENS:
        return None
    batch = min(GLOBAL_BATCHES, key=lambda b: abs(b - pre.global_batch))
    return Point(enc.name, side, pre.image_reduction.kind, pre.text_len, pre.text_reduction, batch, name)
