"""Search the recipe space under a budget: Optuna TPE, then a deterministic local polish.

Optuna explores the categorical space (its objective is the predicted top-1, or the lower
bound of its interval with ``risk``); the polish then moves one coordinate at a time while
that improves the objective, which closes most of the gap to an exhaustive search at a tiny
cost. Published recipes that fit the budget are enqueued as first trials, so the plan is
never worse than the published recipe one could have run instead.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import optuna

from clipa.planner import search_space as ss
from clipa.planner.evaluate import Context, Plan, evaluate

DIMENSIONS = {
    "encoder": None,  # from the context
    "side": ss.SIDES,
    "image_reduction": ss.IMAGE_REDUCTIONS,
    "text_len": ss.TEXT_LENS,
    "text_reduction": ss.TEXT_REDUCTIONS,
    "global_batch": ss.GLOBAL_BATCHES,
    "finetune": tuple(ss.FINETUNES),
}


@dataclass
class Result:
    best: Plan
    alternatives: list[Plan]  # the next best plans with a different encoder or token budget
    pareto: list[Plan]  # accuracy/cost front, cheapest first
    n_evaluated: int


def _choices(ctx: Context) -> dict[str, tuple]:
    return {k: (ctx.encoders if v is None else v) for k, v in DIMENSIONS.items()}


# Pairs of coordinates that trade against each other under a fixed budget (a bigger encoder
# wants fewer tokens; a longer fine-tune leaves fewer pretraining samples), moved together.
_PAIRS = (("encoder", "side"), ("encoder", "finetune"), ("side", "finetune"), ("side", "image_reduction"),
          ("text_len", "text_reduction"), ("encoder", "text_len"))


def _moves(point: ss.Point, choices: dict):
    for dim, values in choices.items():
        for v in values:
            yield dataclasses.replace(point, **{dim: v})
    for a, b in _PAIRS:
        for va in choices[a]:
            for vb in choices[b]:
                yield dataclasses.replace(point, **{a: va, b: vb})


def _polish(plan: Plan, ctx: Context, cache: dict) -> Plan:
    """Hill-climb over single and paired coordinate moves until none improves the objective."""
    choices = _choices(ctx)
    improved = True
    while improved:
        improved = False
        for cand in _moves(plan.point, choices):
            other = _eval_cached(cand, ctx, cache)
            if other is not None and other.objective(ctx.risk) > plan.objective(ctx.risk) + 1e-9:
                plan, improved = other, True
    return plan


def _eval_cached(p: ss.Point, ctx: Context, cache: dict):
    if p not in cache:
        cache[p] = evaluate(p, ctx) if p.valid() else None
    return cache[p]


def pareto_front(plans: list[Plan]) -> list[Plan]:
    """Plans no other plan beats on both cost (lower) and predicted top-1 (higher); cheapest first."""
    front, best_acc = [], float("-inf")
    # On one machine dollars are proportional to device-hours, which exist even without a price.
    for p in sorted(plans, key=lambda p: (p.device_hours, -p.top1)):
        if p.top1 > best_acc + 1e-9:
            front.append(p)
            best_acc = p.top1
    return front


def plan(ctx: Context, *, seed: int = 0, n_trials: int = 200, enqueue: list[ss.Point] = (),
         progress=None) -> Result | None:
    """The best plan under ``ctx.budget``, or None if nothing in the space fits."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    choices = _choices(ctx)
    cache: dict = {}
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=40)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for p in enqueue:
        if p.encoder in ctx.encoders:
            study.enqueue_trial(dataclasses.asdict(p))

    def objective(trial: optuna.Trial) -> float:
        p = ss.Point(**{k: trial.suggest_categorical(k, v) for k, v in choices.items()})
        res = _eval_cached(p, ctx, cache)
        if progress is not None:
            progress()
        return res.objective(ctx.risk) if res is not None else 0.0

    study.optimize(objective, n_trials=n_trials)
    feasible = [p for p in cache.values() if p is not None]
    if not feasible:
        return None
    # Polish the best few distinct starting points: TPE's best alone can sit on a local step.
    starts = sorted(feasible, key=lambda p: -p.objective(ctx.risk))[:3]
    best = max((_polish(p, ctx, cache) for p in starts), key=lambda p: p.objective(ctx.risk))
    feasible = [p for p in cache.values() if p is not None]

    ranked = sorted(feasible, key=lambda p: -p.objective(ctx.risk))
    seen, alternatives = {(best.point.encoder, best.point.side)}, []
    for p in ranked:
        key = (p.point.encoder, p.point.side)
        if key not in seen:
            seen.add(key)
            alternatives.append(p)
        if len(alternatives) == 5:
            break
    # The front also varies pretraining samples: a cheaper budget is a shorter run of a good point.
    swept = list(feasible)
    for p in ranked[:20]:
        for n in ss.SAMPLES_GRID:
            if n < p.samples:
                q = evaluate(p.point, ctx, samples=n)
                if q is not None:
                    swept.append(q)
    return Result(best=best, alternatives=alternatives, pareto=pareto_front(swept), n_evaluated=len(cache))
