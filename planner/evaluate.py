"""Cost and accuracy of one point of the search space under a budget.

A point is costed stage by stage with the same throughput and memory models that
``costmodels.predict.predict_recipe`` uses (a test checks they agree on the written recipe),
and takes the most pretraining samples its budget allows (``costed``); ``evaluate`` adds the
accuracy law's prediction. The plan's objective is the lower end of the prediction's 80%
interval by default ('low': a plan on an encoder, token count or schedule no run has tried pays
for its doubt) or the predicted top-1 ('mean').
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


OBJECTIVES = ("low", "mean")


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
    objective: str = "low"  # 'low': the lower end of the 80% interval; 'mean': the predicted top-1
    calibration: Optional[object] = None  # costmodels.calibration.Calibration
    encoders: tuple[str, ...] = ss.ENCODERS
    law: accuracy_law.AccuracyLaw = field(default_factory=accuracy_law.default)
    max_samples: Optional[float] = None  # pre-training samples the data allows (its size x passes), if capped
    _costs: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective: {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.calibration is not None:  # a dataset the user's pilots fitted is predicted by its own law
            self.law = self.calibration.accuracy_law(self.law)

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


@dataclass(frozen=True)
class Costed:
    """What a point costs under the budget: the pre-training samples it takes and the totals."""

    samples: float
    cost_usd: float  # nan: the hardware has no price
    device_hours: float
    wall_hours: float
    grad_checkpointing: bool
    ft_batch: int
    binding: str  # what stops more samples: 'budget', 'device-hours', 'deadline', 'dataset size', 'samples grid'


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
    extrapolation: list[str] = field(default_factory=list)  # axes outside the law's fitted data
    binding: str = ""

    def objective(self, objective: str) -> float:
        return self.low if objective == "low" else self.top1

    @property
    def inside(self) -> bool:
        """True when the law's prediction lies inside its fitted data on every axis."""
        return not self.extrapolation


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
    return _memory(p.encoder, p.side, p.text_len, p.global_batch, p.finetune, ctx.hw)


@lru_cache(maxsize=None)
def _memory(enc_name: str, side: int, text_len: int, batch: int, finetune: str,
            hw: hardware.Hardware) -> Optional[tuple[bool, int]]:
    enc = encoders.get(enc_name)
    for ckpt in (False, True):
        if not _fits(enc_name, batch, side ** 2, text_len, hw, ckpt):
            continue
        ft_ok = [b for b in ss.FT_BATCHES
                 if all(_fits(enc_name, b, _ft_tokens(enc, s), s[5], hw, ckpt) for s in ss.FINETUNES[finetune])]
        if ft_ok:  # no fine-tune: every batch "fits", so the largest
            return ckpt, max(ft_ok)
    return None


def _ft_tokens(enc: encoders.Encoder, ft) -> int:
    """Image tokens of a ``ss.FINETUNES`` entry (image_size, samples, mask_ratio, ...)."""
    return enc.vision.kept_tokens(ft[0], ft[2])


def features(p: ss.Point, samples: float, dataset: str) -> RunFeatures:
    return RunFeatures(encoder=p.encoder, dataset=dataset, image_tokens=p.side ** 2, text_len=p.text_len,
                       samples=samples, image_reduction=p.image_reduction, text_reduction=p.text_reduction,
                       finetune=_ft_features(p.encoder, p.finetune))


@lru_cache(maxsize=None)
def _ft_features(enc_name: str, finetune: str) -> tuple[FinetuneStage, ...]:
    enc = encoders.get(enc_name)
    return tuple(FinetuneStage(image_size=s[0], image_tokens=_ft_tokens(enc, s), samples=s[1], text_len=s[5],
                               mask_ratio=s[2]) for s in ss.FINETUNES[finetune])


def costed(p: ss.Point, ctx: Context, samples: Optional[float] = None) -> Optional[Costed]:
    """Cost of ``p``; with ``samples=None``, the most pretraining samples the budget allows. None if
    it does not fit the memory or the budget. Cached per context: the text reduction changes no cost."""
    mem = _memory_plan(p, ctx)
    if mem is None:
        return None
    # The global batch and text reduction change no cost once the memory plan is fixed.
    key = (p.encoder, p.side, p.image_reduction, p.text_len, p.finetune, mem, samples)
    if key not in ctx._costs:
        ctx._costs[key] = _cost(p, ctx, samples, *mem)
    return ctx._costs[key]


def _cost(p: ss.Point, ctx: Context, samples: Optional[float], ckpt: bool, ft_batch: int) -> Optional[Costed]:
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

    cap = ctx.max_samples
    grid = [samples] if samples is not None else sorted((n for n in ss.SAMPLES_GRID if cap is None or n <= cap),
                                                        reverse=True)
    n = next((n for n in grid if ctx.budget.allows(*totals(n))), None)
    if n is None:
        return None
    bigger = [m for m in ss.SAMPLES_GRID if m > n]
    if samples is not None:
        binding = ""
    elif not bigger:
        binding = "samples grid"
    elif cap is not None and bigger[0] > cap:
        binding = "dataset size"
    else:
        binding = _binding(ctx.budget, *totals(bigger[0]))
    cost, dev, wall = totals(n)
    return Costed(n, cost, dev, wall, ckpt, ft_batch, binding)


def _binding(budget: Budget, cost: float, device_hours: float, wall_hours: float) -> str:
    """The limit that the next larger sample count would break (the one that binds)."""
    for name, limit, value in (("budget", budget.usd, cost), ("device-hours", budget.device_hours, device_hours),
                               ("deadline", budget.wall_hours, wall_hours)):
        if limit is not None and not value <= limit * (1 + 1e-9):
            return name
    return "budget"


def plan_from(p: ss.Point, c: Costed, pred) -> Plan:
    return Plan(p, c.samples, pred.top1, pred.low, pred.high, c.cost_usd, c.device_hours, c.wall_hours,
                c.grad_checkpointing, c.ft_batch, list(pred.extrapolation), c.binding)


def evaluate(p: ss.Point, ctx: Context, samples: Optional[float] = None) -> Optional[Plan]:
    """Cost and accuracy of ``p``; with ``samples=None``, the most pretraining samples the budget allows."""
    c = costed(p, ctx, samples)
    if c is None:
        return None
    return plan_from(p, c, ctx.law.predict(features(p, c.samples, ctx.dataset), offset=ctx.offset))


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
