"""Search the recipe space under a budget: an exact enumeration, fast because it is bounded.

Every point of the discretised space (``search_space.all_points``) is costed and takes the most
pre-training samples its budget allows (a point beyond the law's data also the longest the data holds,
below); the plan is the point with the best objective: the lower
end of the accuracy law's 80% interval ('low', the default: an extrapolated plan pays for its
doubt; on uncalibrated custom data, where every low end is chance, its prior's) or the predicted
top-1 ('mean'). Ties go to the cheaper plan, then to the earlier point.

The law's mean is computed for every distinct point in one vectorised call; its interval, which
needs a gradient per form and the extrapolation checks, only for the points whose mean minus the
narrowest interval the law can give (its forms' residual spread) could still beat what has been
found. That bound never prunes a point that could win, so the result is the exhaustive optimum of
the space (tested against a point-by-point enumeration), in a fraction of its time. The same
bound certifies the runners-up shown beside the plan: the best plan with a different encoder or
token count, and the best plan that lies inside the law's fitted data (the CLIPA runs, or on a calibrated
dataset the user's pilots). For that one, a point whose budget buys a longer pre-training than the data
holds is also tried at the longest pre-training of the grid that could lie inside it: a larger budget
must not leave no plan inside the data.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from clipa.costmodels.accuracy_law import DATASETS
from clipa.planner import search_space as ss
from clipa.planner.cost_point import Context, Plan, costed, features

N_ALTERNATIVES = 5
CHUNK = 64  # points whose interval is computed per vectorised call


@dataclass
class Result:
    best: Plan
    best_inside: Optional[Plan]  # the best plan inside the law's fitted data (None: no such plan fits)
    alternatives: list[Plan]  # the next best plans with a different encoder or token budget
    pareto: list[Plan]  # predicted top-1 / cost front, cheapest first
    n_evaluated: int  # points costed
    n_predicted: int  # distinct points whose interval was computed
    none_inside: str = "none fits"  # why best_inside is None: the budget, or no run of the law is that short


class _Scorer:
    """Exact predictions of distinct run features, computed in chunks and kept.

    ``prior``: the dataset whose law ranks the points where their own low ends cannot. An uncalibrated
    'custom' dataset's interval starts at chance for every point, so the cheapest point won (an S/16
    100M-sample plan for $10,000, and so the pilots' target); its prior, the LAION-400M law, ranks them,
    and the pilots then fit that plan's shape."""

    def __init__(self, ctx: Context, feats: list):
        self.ctx, self.feats = ctx, feats
        self.pred: dict[int, tuple[float, float, float, list[str]]] = {}
        self.prior = ctx.law.prior_dataset(ctx.dataset) if ctx.objective == "low" else None
        self.by_prior: dict[int, float] = {}

    def run(self, idx: list[int]) -> None:
        todo = [i for i in idx if i not in self.pred]
        for k in range(0, len(todo), CHUNK):
            part = todo[k:k + CHUNK]
            fs = [self.feats[i] for i in part]
            top, low, high = self.ctx.law.predict_many(fs, offset=self.ctx.offset)
            for j, i in enumerate(part):
                self.pred[i] = (float(top[j]), float(low[j]), float(high[j]), self.ctx.law.notes(fs[j]))
            if self.prior is not None:
                _, low, _ = self.ctx.law.predict_many([replace(f, dataset=self.prior) for f in fs])
                self.by_prior.update(zip(part, map(float, low)))

    def objective(self, i: int) -> float:
        top, low, _, _ = self.pred[i]
        return low if self.ctx.objective == "low" else top

    def value(self, i: int) -> float:
        """What ranks the points: the objective, or where it is the same for all (``prior``), the prior's."""
        return self.objective(i) if self.prior is None else self.by_prior[i]


def plan(ctx: Context, *, progress=None, **_ignored) -> Optional[Result]:
    """The best plan under ``ctx.budget``, or None if nothing in the space fits.

    ``progress`` (optional callable) is called with the number of points costed since its last call."""
    pts = _costed_points(ctx, progress)
    return _Search(ctx, pts, _shortened_into_the_data(ctx, pts)).run() if pts else None


def _costed_points(ctx: Context, progress) -> list[tuple]:
    """(point, costed) of every point of the space that fits the budget."""
    pts = []
    space = ctx.space
    for k, p in enumerate(space):
        c = costed(p, ctx)
        if c is not None:
            pts.append((p, c))
        if progress is not None and (k + 1) % 1000 == 0:
            progress(1000)
    if progress is not None:
        progress(len(space) % 1000)
    return pts


def _shortened_into_the_data(ctx: Context, pts: list[tuple]) -> list[tuple]:
    """(point, costed) at the longest pre-training of the grid that could lie inside the law's data with the
    point's fine-tune (a pilots' law counts its samples too), for each point the budget makes longer:
    candidates for the best plan inside the data, and for the plan where the objective ranks them higher."""
    longest = ctx.law.longest_inside(ss.SAMPLES_GRID, ctx.dataset)
    if longest is None:
        return []
    grid = sorted((n for n in ss.SAMPLES_GRID if n <= longest), reverse=True)
    out, memo = [], {}
    for p, c in pts:
        key = (p.encoder, p.finetune)  # all that could_be_inside reads of a point besides its samples
        if key not in memo:
            memo[key] = next((n for n in grid if ctx.law.could_be_inside(features(p, n, ctx.dataset))), None)
        n = memo[key]
        if n is not None and c.samples > n and (s := costed(p, ctx, samples=n)) is not None:
            out.append((p, replace(s, binding="objective")))  # what stops it, should it win: a longer run scores lower
    return out


class _Search:
    """The bounded exhaustive search over costed points (the module docstring says why it is exact).

    Points that differ only in their batch (or in a cost-free way) share the law's features: ``fid[k]``
    is point k's distinct-features index, ``bound[i]`` the most its objective can be. Points from
    ``shortened`` (k >= ``n_full``) compete for the best plan and the best inside the data, not as runners-up."""

    def __init__(self, ctx: Context, pts: list[tuple], shortened: list[tuple] = ()):
        self.ctx, self.pts, self.n_full, law = ctx, pts + list(shortened), len(pts), ctx.law
        index: dict = {}
        self.fid = [index.setdefault((p.encoder, p.side, p.image_reduction, p.text_len, p.text_reduction,
                                      p.finetune, c.samples), len(index)) for p, c in self.pts]
        self.by_feat: dict[int, list[int]] = {}
        for k, i in enumerate(self.fid):
            self.by_feat.setdefault(i, []).append(k)
        self.feats = [features(*self._first(i), ctx.dataset) for i in range(len(index))]
        self.mean = law.mean(self.feats) + ctx.offset
        self.scorer = _Scorer(ctx, self.feats)
        self.bound = self._bounds()
        self.order = sorted(range(len(self.feats)), key=lambda i: (-self.bound[i], self.by_feat[i][0]))
        self.best: Optional[int] = None
        self.groups: dict[tuple, int] = {}  # (encoder, side) -> its best point
        self.inside: Optional[int] = None

    def _first(self, i: int) -> tuple:
        p, c = self.pts[self.by_feat[i][0]]
        return p, c.samples

    def _bounds(self) -> np.ndarray:
        """Upper bound of each point's ``_Scorer.value``: no interval is narrower than the forms' residual spread."""
        law, feats, prior = self.ctx.law, self.feats, self.scorer.prior
        floor = law.z * law.sd_floor if self.ctx.objective == "low" else 0.0
        if prior is not None:
            return np.clip(law.mean([replace(f, dataset=prior) for f in feats]) - floor, 0.1, 100.0)
        bound = np.clip(self.mean - np.where([f.dataset in DATASETS for f in feats], floor, 0.0), 0.1, 100.0)
        if self.ctx.objective == "low":  # priors (demo, custom) have intervals of their own: bound by them exactly
            for i, f in enumerate(feats):
                if f.dataset not in DATASETS:
                    bound[i] = law.predict(f, self.ctx.offset).low
        return bound

    def rank(self, k: int) -> tuple:
        """Larger is better: objective (``_Scorer.value``), then cheaper, then earlier point."""
        return (self.scorer.value(self.fid[k]), -self.pts[k][1].device_hours, -k)

    def _better(self, k: int, than: Optional[int]) -> bool:
        return than is None or self.rank(k) > self.rank(than)

    def score(self, batch: list[int]) -> None:
        self.scorer.run(batch)
        for i in batch:
            for k in self.by_feat[i]:
                if self._better(k, self.best):  # a shortened point too: beyond the data a low end can fall
                    self.best = k
                g = (self.pts[k][0].encoder, self.pts[k][0].side)
                if k < self.n_full and self._better(k, self.groups.get(g)):
                    self.groups[g] = k
                if not self.scorer.pred[i][3] and self._better(k, self.inside):
                    self.inside = k

    def thresholds(self) -> tuple[float, float]:
        """(objective the winner and runners-up must be certified at, the inside plan's)."""
        if self.best is None:
            return -np.inf, -np.inf
        obj = self.scorer.value
        bg = (self.pts[self.best][0].encoder, self.pts[self.best][0].side)
        others = sorted((obj(self.fid[k]) for g, k in self.groups.items() if g != bg), reverse=True)
        alt = others[N_ALTERNATIVES - 1] if len(others) >= N_ALTERNATIVES else -np.inf
        inside = obj(self.fid[self.inside]) if self.inside is not None else -np.inf
        return min(obj(self.fid[self.best]), alt), inside

    def run(self) -> Result:
        # Phase 1: the winner and the runners-up. Phase 2: the best plan inside the fitted data, among
        # the points that could be inside (an encoder and sample count within the law's runs: CLIPA's or pilots').
        bound, pos = self.bound, 0
        order = [i for i in self.order if self.by_feat[i][0] < self.n_full]
        while pos < len(order):
            cut, _ = self.thresholds()
            if bound[order[pos]] < cut - 1e-9:
                break
            self.score([i for i in order[pos:pos + CHUNK] if bound[i] >= cut - 1e-9])
            pos += CHUNK
        law = self.ctx.law
        could = [i for i in self.order if i not in self.scorer.pred and law.could_be_inside(self.feats[i])]
        for k in range(0, len(could), CHUNK):
            _, cut = self.thresholds()
            batch = [i for i in could[k:k + CHUNK] if bound[i] >= cut - 1e-9]
            if not batch:
                break
            self.score(batch)
        best = self.make(self.best)
        bg = (best.point.encoder, best.point.side)
        alts = sorted((k for g, k in self.groups.items() if g != bg), key=self.rank, reverse=True)[:N_ALTERNATIVES]
        return Result(best=best, best_inside=None if self.inside is None else self.make(self.inside),
                      alternatives=[self.make(k) for k in alts],
                      pareto=_front(self.ctx, self.pts[:self.n_full], self.fid, self.feats, self.mean, self.scorer),
                      n_evaluated=len(self.pts), n_predicted=len(self.scorer.pred), none_inside=self._none_inside())

    def _none_inside(self) -> str:
        ctx = self.ctx
        if ctx.law.longest_inside(ss.SAMPLES_GRID, ctx.dataset) is None:  # the law's own runs: the notes say how far
            return f"none: no plan lies within the law's runs on {ctx.dataset}"
        return "none fits"

    def make(self, k: int) -> Plan:
        p, c = self.pts[k]
        top, low, high, notes = self.scorer.pred[self.fid[k]]
        return Plan.of(p, c, top, low, high, notes)


def _front(ctx: Context, pts, fid, feats, mean, scorer: _Scorer) -> list[Plan]:
    """The predicted top-1 / cost front over every point, each also shortened to the smaller sample
    counts of the grid (a cheaper budget is a shorter run of a good point); intervals for its plans."""
    # (device-hours, -top-1, point, costed): the front of the full-length runs first.
    cands = [(c.device_hours, -float(mean[fid[k]]), k, p, c) for k, (p, c) in enumerate(pts)]
    short, seen = [], set()
    for _, _, _, p, c in _front_of(cands):
        for n in ss.SAMPLES_GRID:
            if n < c.samples and (p, n) not in seen:
                seen.add((p, n))
                cs = costed(p, ctx, samples=n)
                if cs is not None:
                    short.append((p, cs))
    if short:
        m = ctx.law.mean([features(p, cs.samples, ctx.dataset) for p, cs in short]) + ctx.offset
        cands += [(cs.device_hours, -float(mi), len(pts) + j, p, cs) for j, ((p, cs), mi) in enumerate(zip(short, m))]
    front = _front_of(cands)
    fs = [features(p, c.samples, ctx.dataset) for _, _, _, p, c in front]
    top, low, high = ctx.law.predict_many(fs, offset=ctx.offset)
    return [Plan.of(p, c, float(t), float(lo), float(hi), ctx.law.notes(f))
            for (_, _, _, p, c), t, lo, hi, f in zip(front, top, low, high, fs)]


def _front_of(cands: list[tuple]) -> list[tuple]:
    """Candidates no other beats on both device-hours (lower) and top-1 (higher), cheapest first.

    Candidates are (device-hours, -top-1, order, point, costed) tuples; on one machine dollars are
    proportional to device-hours, which exist even without a price."""
    front, best = [], float("-inf")
    for cand in sorted(cands, key=lambda x: x[:3]):
        if -cand[1] > best + 1e-9:
            front.append(cand)
            best = -cand[1]
    return front
