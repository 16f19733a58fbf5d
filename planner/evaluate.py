"""Cost and accuracy of one point of the search space under a budget.

A point is costed stage by stage with the same throughput and memory models that
``costmodels.predict.predict_recipe`` uses (a test checks they agree on the written recipe),
and takes the most pretraining samples its budget allows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Optional

from clipa import encoders
from clipa.costmodels import accuracy_law, hardware, memory, throughput
from clipa.costmodels.accuracy_law import FinetuneStage, RunFeatures
from clipa.errors import UserError
from clipa.planner import search_space as ss


@dataclass
class Budget:
    usd: Optional[float] = None  # dollars for the whole recipe
    device_hours: Optional[float] = None  # GPU- (or TPU-chip-) hours
    wall_hours: Optional[float] = None  # deadline

    def allows(self, cost: float, device_hours: float, wall_hours: float) -> bool:
        eps = 1e-9
        return ((self.usd is None or cost <= self.usd * (1 + eps))  # nan cost never passes a $ budget
                and (self.device_hours is None or device_hours <= self.device_hours * (1 + eps))
                and (self.wall_hours is None or wall_hours <= self.wall_hours * (1 + eps)))

    def describe(self) -> str:
        parts = []
        if self.usd is not None:
            parts.append(f"${self.usd:,.0f}")
        if self.device_hours is not None:
            parts.append(f"{self.device_hours:,.1f} device-hours")
        if self.wall_hours is not None:
            parts.append(f"a {self.wall_hours / 24:,.2f}-day deadline")
        return " and ".join(parts)


@dataclass
class Context:
    hw: hardware.Hardware
    dataset: str
    budget: Budget
    risk: bool = False  # maximise the interval's lower bound instead of the mean
    calibration: Optional[object] = None  # costmodels.calibration.Calibration
    encoders: tuple[str, ...] = ss.ENCODERS
    law: accuracy_law.AccuracyLaw = field(default_factory=accuracy_law.default)

    @property
    def utilisation(self) -> Optional[float]:
        return self.calibration.utilisation(self.hw.name) if self.calibration is not None else None

    @property
    def offset(self) -> float:
        return self.calibration.offset(self.dataset) if self.calibration is not None else 0.0

    def overheads(self) -> tuple[float, float]:
        """(seconds per sample, seconds per stage) of non-FLOPs time, as calibrated on this hardware."""
        if self.calibration is None:
            return 0.0, 0.0
        return self.calibration.overhead_s_per_sample(self.hw.name), self.calibration.fixed_s_per_stage(self.hw.name)


@dataclass
class Plan:
    point: ss.Point
    samples: float
    top1: float
    low: float
    high: float
    cost_usd: float
    device_hours: float
    wall_hours: float
    grad_checkpointing: bool
    ft_batch: int

    def objective(self, risk: bool) -> float:
        return self.low if risk else self.top1


@lru_cache(maxsize=None)
def _stage_rate(enc_name: str, tokens: int, text_len: int, image_size: int, hw: hardware.Hardware,
                ckpt: bool, util: Optional[float]) -> tuple[float, float]:
    """(device-hours, wall-hours) per sample of one stage; time is linear in samples."""
    n = 1e9
    enc = encoders.get(enc_name)
    st = throughput.stage_time(enc, tokens, text_len, n, hw, image_size=image_size, grad_checkpointing=ckpt,
                               utilisation=util, patch_tokens=enc.vision.tokens(image_size))
    return st.device_hours / n, st.wall_hours / n


@lru_cache(maxsize=None)
def _fits(enc_name: str, batch: int, tokens: int, text_len: int, hw: hardware.Hardware, ckpt: bool) -> bool:
    per_device = max(1, batch // hw.n_devices)
    return memory.fits(encoders.get(enc_name), per_device, tokens, text_len, hw, grad_checkpointing=ckpt)


def _memory_plan(p: ss.Point, ctx: Context) -> Optional[tuple[bool, int]]:
    """(gradient checkpointing, fine-tune batch) that fit the device memory, or None."""
    enc = encoders.get(p.encoder)
    pre_tokens = p.side ** 2
    for ckpt in (False, True):
        if not _fits(p.encoder, p.global_batch, pre_tokens, p.text_len, ctx.hw, ckpt):
            continue
        ft_ok = [b for b in ss.FT_BATCHES
                 if all(_fits(p.encoder, b, _ft_tokens(enc, s), s[5], ctx.hw, ckpt) for s in ss.FINETUNES[p.finetune])]
        if ft_ok:  # no fine-tune: every batch "fits", so the largest
            return ckpt, max(ft_ok)
    return None


def _ft_tokens(enc: encoders.Encoder, ft) -> int:
    """Image tokens of a ``ss.FINETUNES`` entry (image_size, samples, mask_ratio, ...)."""
    return enc.vision.kept_tokens(ft[0], ft[2])


def features(p: ss.Point, samples: float, dataset: str) -> RunFeatures:
    enc = encoders.get(p.encoder)
    fts = tuple(FinetuneStage(image_size=s[0], image_tokens=_ft_tokens(enc, s), samples=s[1], text_len=s[5],
                              mask_ratio=s[2]) for s in ss.FINETUNES[p.finetune])
    return RunFeatures(encoder=p.encoder, dataset=dataset, image_tokens=p.side ** 2, text_len=p.text_len,
                       samples=samples, image_reduction=p.image_reduction, text_reduction=p.text_reduction,
                       finetune=fts)


def evaluate(p: ss.Point, ctx: Context, samples: Optional[float] = None) -> Optional[Plan]:
    """Cost and accuracy of ``p``; with ``samples=None``, the most pretraining samples the budget allows."""
    mem = _memory_plan(p, ctx)
    if mem is None:
        return None
    ckpt, ft_batch = mem
    enc = encoders.get(p.encoder)
    per_sample_s, per_stage_s = ctx.overheads()
    # Unpriced hardware (only device-hour budgets reach here) costs nan dollars: unknown, never $0.
    n_dev = ctx.hw.n_devices
    price = ctx.hw.usd_per_hour if ctx.hw.usd_per_hour is not None else math.nan

    def rate(tokens, text_len, size):
        d, w = _stage_rate(p.encoder, tokens, text_len, size, ctx.hw, ckpt, ctx.utilisation)
        if per_sample_s:  # calibrated non-FLOPs time: the whole machine is held meanwhile
            w += per_sample_s / 3600.0
            d = w * n_dev
        return d, w

    ft_dev = ft_wall = 0.0
    for s in ss.FINETUNES[p.finetune]:
        d, w = rate(_ft_tokens(enc, s), s[5], s[0])
        ft_wall += w * s[1] + per_stage_s / 3600.0
        ft_dev += d * s[1] + n_dev * per_stage_s / 3600.0
    d_pre, w_pre = rate(p.side ** 2, p.text_len, p.image_size())
    fixed_h = per_stage_s / 3600.0

    def totals(n):
        wall = ft_wall + w_pre * n + fixed_h
        return wall * price, ft_dev + d_pre * n + fixed_h * n_dev, wall

    grid = [samples] if samples is not None else sorted(ss.SAMPLES_GRID, reverse=True)
    n = next((n for n in grid if ctx.budget.allows(*totals(n))), None)
    if n is None:
        return None
    pred = ctx.law.predict(features(p, n, ctx.dataset), offset=ctx.offset)
    cost, dev, wall = totals(n)
    return Plan(p, n, pred.top1, pred.low, pred.high, cost, dev, wall, ckpt, ft_batch)


def cheapest(ctx: Context) -> Plan:
    """The cheapest plan of the space (for the 'budget too small' message)."""
    free = replace(ctx, budget=Budget())
    best = None
    for enc in ctx.encoders:
        p = ss.Point(enc, min(ss.SIDES), "resize", min(ss.TEXT_LENS), "syntax", min(ss.GLOBAL_BATCHES), "none")
        plan = evaluate(p, free, samples=min(ss.SAMPLES_GRID))
        if plan and (best is None or plan.device_hours < best.device_hours):
            best = plan
    if best is None:
        raise UserError(f"no encoder fits the memory of {ctx.hw.name}")
    return best
