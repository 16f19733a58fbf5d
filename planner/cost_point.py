"""Cost and accuracy of one point of the search space under a budget.

A point is costed through the costing path of ``costmodels.predict`` (``stage_rate`` per stage,
``totals`` over them), on light ``StageShape``s and cached, so a plan's figures are those
``predict_recipe`` gives the recipe it writes (tests/test_planner.py checks it). It takes the most
pretraining samples its budget allows (``costed``); ``cost_point`` adds the accuracy law's prediction. The plan's objective is the lower end of the prediction's 80%
interval by default ('low': a plan on an encoder, token count or schedule no run has tried pays
for its doubt) or the predicted top-1 ('mean').
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from typing import Optional

from clipa import encoders
from clipa.costmodels import accuracy_law, dataset_law, hardware, memory, predict, throughput
from clipa.costmodels.accuracy_law import FinetuneStage, RunFeatures
from clipa.costmodels.predict import StageShape
from clipa.errors import UserError
from clipa.planner import search_space as ss


OBJECTIVES = ("low", "mean")


@dataclass
class Budget:
    usd: Optional[float] = None  # dollars for the whole recipe
    device_hours: Optional[float] = None  # GPU- (or TPU-chip-) hours
    wall_hours: Optional[float] = None  # deadline

    def allows(self, cost: Optional[float], device_hours: float, wall_hours: float) -> bool:
        eps = 1e-9
        return ((self.usd is None or (cost is not None and cost <= self.usd * (1 + eps)))  # unpriced: never within $
                and (self.device_hours is None or device_hours <= self.device_hours * (1 + eps))
                and (self.wall_hours is None or wall_hours <= self.wall_hours * (1 + eps)))

    def describe(self) -> str:
        parts = []
        if self.usd is not None:
            parts.append(f"${_shown(self.usd, 0)}")
        if self.device_hours is not None:
            parts.append(f"{_shown(self.device_hours, 1)} device-hours")
        if self.wall_hours is not None:
            parts.append(f"a {_shown(self.wall_hours / 24, 2)}-day deadline")
        return " and ".join(parts)


def _shown(x: float, decimals: int) -> str:
    """x to `decimals` places, or to two significant digits where those places would show it as 0."""
    return f"{x:,.{decimals}f}" if round(x, decimals) != 0 else f"{x:.2g}"


@dataclass
class Context:
    hw: hardware.Hardware
    dataset: str
    budget: Budget
    objective: str = "low"  # 'low': the lower end of the 80% interval; 'mean': the predicted top-1
    calibration: Optional[object] = None  # costmodels.calibration.Calibration
    encoders: tuple[str, ...] = ss.ENCODERS
    law: accuracy_law.AccuracyLaw = field(default_factory=accuracy_law.default)
    max_samples: Optional[float] = None  # samples the data allows (its size x passes), fine-tunes included, if capped
    held: dict = field(default_factory=dict, init=False)  # axis -> the pilots' values, where their law has no term
    _costs: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _rates: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def workers(self) -> int:
        """The decoding workers the plan's recipe gets (``throughput.plan_workers``): its points are costed with them."""
        return throughput.plan_workers(self.hw)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective: {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.calibration is not None:  # a dataset the user's pilots fitted is predicted by its own law
            self.law = self.calibration.accuracy_law(self.law)
            law = self.calibration.law(self.dataset)
            self.held = law.unvaried() if law is not None else {}
            self.encoders = self.held.get("encoder", self.encoders)
            if not self.space:
                raise UserError(f"--calibration: no plan in the search space has the pilots' "
                                f"{dataset_law.said(self.held)}, and their law has no term for these, so a plan must "
                                "keep them: predict a recipe of the pilots' shape with --predict, or pilot a planned "
                                "one (clipa-plan --pilot)")

    @cached_property
    def space(self) -> tuple[ss.Point, ...]:
        """The points the search costs: the whole space, or the points of the pilots' shape (``held``)."""
        pts = ss.points(tuple(self.encoders))
        held = [(dataset_law.SHAPE[a][2], v) for a, v in self.held.items() if a != "encoder"]
        if not held:
            return pts
        return tuple(p for p in pts if all(value(features(p, 0.0, self.dataset)) in v for value, v in held))

    @property
    def offset(self) -> float:
        return self.calibration.offset(self.dataset) if self.calibration is not None else 0.0


@dataclass(frozen=True)
class Costed:
    """What a point costs under the budget: the pre-training samples it takes and the totals."""

    samples: float
    cost_usd: Optional[float]  # None: the hardware has no price
    device_hours: float
    wall_hours: float
    grad_checkpointing: bool
    ft_batch: int
    binding: str  # what stops more samples: 'budget', 'device-hours', 'deadline', 'dataset size', 'samples grid'


@dataclass(frozen=True)
class Plan(Costed):
    """A costed point with the accuracy law's prediction for it (top-1 and its 80% interval, percent)."""

    point: ss.Point
    top1: float
    low: float
    high: float
    extrapolation: list[str]  # axes outside the law's fitted data

    @classmethod
    def of(cls, p: ss.Point, c: Costed, top1: float, low: float, high: float, extrapolation) -> "Plan":
        return cls(**{f.name: getattr(c, f.name) for f in fields(Costed)}, point=p, top1=top1, low=low, high=high,
                   extrapolation=list(extrapolation))

    def objective(self, objective: str) -> float:
        return self.low if objective == "low" else self.top1

    @property
    def inside(self) -> bool:
        """True when the law's prediction lies inside its fitted data on every axis."""
        return not self.extrapolation


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
                 if all(_fits(enc_name, b, sh.image_tokens(enc), sh.text_len, hw, ckpt) for sh, _ in _ft_shapes(finetune))]
        if ft_ok:  # no fine-tune: every batch "fits", so the largest
            return ckpt, max(ft_ok)
    return None


@lru_cache(maxsize=None)
def _ft_shapes(finetune: str) -> tuple[tuple[StageShape, int], ...]:
    """(shape, samples) of each stage of a ``ss.FINETUNES`` schedule, as ``ss.build_recipe`` writes them."""
    return tuple((StageShape(s.image_size, s.mask_ratio, s.text_len), s.samples)
                 for s in ss.FINETUNES.get(finetune).stages)


def features(p: ss.Point, samples: float, dataset: str) -> RunFeatures:
    return RunFeatures(encoder=p.encoder, dataset=dataset, image_tokens=p.side ** 2, text_len=p.text_len,
                       samples=samples, image_reduction=p.image_reduction, text_reduction=p.text_reduction,
                       finetune=_ft_features(p.encoder, p.finetune))


@lru_cache(maxsize=None)
def _ft_features(enc_name: str, finetune: str) -> tuple[FinetuneStage, ...]:
    enc = encoders.get(enc_name)
    return tuple(FinetuneStage(image_size=sh.image_size, image_tokens=sh.image_tokens(enc), samples=n,
                               text_len=sh.text_len, mask_ratio=sh.mask_ratio) for sh, n in _ft_shapes(finetune))


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

    def rate(shape: StageShape, first: bool = False) -> predict.StageRate:
        key = (p.encoder, shape, ckpt, first)  # cheaper to hash than the encoder and hardware stage_rate caches on
        if key not in ctx._rates:
            ctx._rates[key] = predict.stage_rate(enc, shape, ctx.hw, grad_checkpointing=ckpt, workers=ctx.workers,
                                                 calibration=ctx.calibration, first=first)
        return ctx._rates[key]

    pre = rate(StageShape(p.image_size(), p.mask_ratio(), p.text_len), first=True)
    fts = [(rate(shape), n) for shape, n in _ft_shapes(p.finetune)]

    def totals(n: float) -> tuple[Optional[float], float, float]:
        return predict.totals([(pre, n), *fts])  # the recipe's stage order: pre-training first

    # The data's cap counts every pass over it, the fine-tune's samples too.
    cap = None if ctx.max_samples is None else ctx.max_samples - sum(n for _, n in fts)
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


def _binding(budget: Budget, cost: Optional[float], device_hours: float, wall_hours: float) -> str:
    """The limit that the next larger sample count would break (the one that binds)."""
    for name, limit, value in (("budget", budget.usd, cost), ("device-hours", budget.device_hours, device_hours),
                               ("deadline", budget.wall_hours, wall_hours)):
        if limit is not None and (value is None or not value <= limit * (1 + 1e-9)):
            return name
    return "budget"


def cost_point(p: ss.Point, ctx: Context, samples: Optional[float] = None) -> Optional[Plan]:
    """Cost and accuracy of ``p``; with ``samples=None``, the most pretraining samples the budget allows."""
    c = costed(p, ctx, samples)
    if c is None:
        return None
    pred = ctx.law.predict(features(p, c.samples, ctx.dataset), offset=ctx.offset)
    return Plan.of(p, c, pred.top1, pred.low, pred.high, pred.extrapolation)


def cheapest(ctx: Context) -> Plan:
    """The cheapest plan of the space (for the 'budget too small' message)."""
    free = replace(ctx, budget=Budget())
    best = None
    for enc in ctx.encoders:
        p = min((p for p in ctx.space if p.encoder == enc), default=None,
                key=lambda p: (p.side, p.text_len, len(ss.FINETUNES.get(p.finetune).stages), p.global_batch, p.masks))
        plan = p and cost_point(p, free, samples=min(ss.SAMPLES_GRID))
        if plan and (best is None or plan.device_hours < best.device_hours):
            best = plan
    if best is None:
        raise UserError(f"no encoder fits the memory of {ctx.hw.name}")
    return best
