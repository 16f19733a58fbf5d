"""The accuracy law on a dataset no published run saw, fitted to the user's own pilot runs.

The published law (accuracy_law.py) knows LAION and DataComp; on a user's data (and the demo's) its
dataset terms are unknown. Pilots identify them. The form keeps the law's samples term and adds the
floor every small run sits on, chance:

    top1 = c + (A - c) / (1 + exp(-z)),     z = b + k * ln(S_eff / S_REF)  [+ e * ln n] [+ g * ln T0]

- c: chance (100 / classes of the evaluation set), A: the ceiling, 100 (the published mixture's
  heavier form, "nofloor", 0.65 of its weight, has none below 100; pilots far below it cannot fit one);
- k: the dataset's data-efficiency exponent: for large S_eff the error is (A - c) exp(-b) (S_eff /
  S_REF)**-k, the published law's C * S**-beta with beta = k; b: the dataset's scale (S_eff at which
  half the way from chance to A is done: S_REF exp(-b / k));
- S_eff = pre-training samples + rho x fine-tune samples (rho: the published law's, a fine-tune sample
  at full resolution counts rho pre-training samples);
- e (encoder size, n = vision weights / L/16's) and g (pre-training image tokens) only when the pilots
  differ in them, and only while a degree of freedom is left for the residuals.

z is linear in the parameters, so the fit is weighted least squares on z_i = logit of each pilot's
top-1, weights 1 / (dz/dtop1)^2: equal noise in points (three seeds move the demo's final top-1 by
1.05 points at 97%, recipes/demo.yaml; on the demo's first data, by about 2 points at 27%), so a pilot near
chance, where the logit is steep, counts little. The 80% interval is the classical prediction interval of a new
run, in z, with Student's t at the residual degrees of freedom: with 3 pilots and 2 parameters,
t(0.90, 1 dof) = 3.08 where the normal would say 1.28 (how few pilots there are). The residual
variance is never below the evaluation's binomial variance p (1 - p) / images. Mapped back through
the logistic, the interval is bounded by chance and the ceiling and is asymmetric. Beyond the largest
pilot the form itself is in doubt: the high end also holds a curve still taking off, the low end one
bending down (``_high_if_taking_off``, ``_low_if_bending``).

numpy + pydantic only (predictions happen at planning time); the fit is in ``fit``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clipa.costmodels import accuracy_model as am
from clipa.costmodels.accuracy_support import DELTA, SAME

S_REF = 1e6  # samples: where b is read (ln S_eff / S_REF near 0 for pilots of 10^5..10^7 samples)
CEILING = 100.0
LEVEL = 0.80
# Student's t quantile at 0.90 (a central 80% interval) by degrees of freedom (standard table values,
# e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2); beyond 30 the normal's 1.2816.
T90 = {1: 3.078, 2: 1.886, 3: 1.638, 4: 1.533, 5: 1.476, 6: 1.440, 7: 1.415, 8: 1.397, 9: 1.383, 10: 1.372,
       12: 1.356, 15: 1.341, 20: 1.325, 30: 1.310}
Z90 = 1.2816
MARGIN = 1.0  # points: a top-1 within this of chance or the ceiling is read at that distance (logit finite)


def t90(dof: int) -> float:
    """t quantile at 0.90 for ``dof`` >= 1 degrees of freedom (the next smaller table entry: conservative)."""
    if dof < 1:
        raise ValueError("no degree of freedom")
    return Z90 if dof > 30 else T90[max(d for d in T90 if d <= dof)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FitPoint(_Strict):
    run: str
    samples_eff: float
    encoder: str
    image_tokens: int
    achieved: float = Field(description="top-1, percent")
    fitted: float = Field(description="the fitted law at this point, percent")
    finetune_samples: int = Field(0, ge=0, description="samples of the run's fine-tune stages")
    finetune_gain: Optional[float] = Field(None, description="final top-1 minus the pre-training stage's, points "
                                           "(None: no fine-tune or no stage top-1)")
    # The rest of the run's shape (None: a calibration file from before they were kept)
    image_reduction: Optional[str] = None
    text_len: Optional[int] = None
    text_reduction: Optional[str] = None
    finetune_px: Optional[list[int]] = Field(None, description="the fine-tune stages' resolutions")


# A run's shape beside its samples: FitPoint field -> (words, the law's column for it, the run's value)
SHAPE = {
    "encoder": ("encoder", "ln_encoder", lambda f: f.encoder),
    "image_tokens": ("pre-training image tokens", "ln_image_tokens", lambda f: f.image_tokens),
    "image_reduction": ("pre-training image reduction", None, lambda f: f.image_reduction),
    "text_len": ("pre-training text length", None, lambda f: f.text_len),
    "text_reduction": ("text reduction", None, lambda f: f.text_reduction),
    "finetune_px": ("fine-tune", None, lambda f: tuple(s.image_size for s in f.finetune)),
}


def shape_value(axis: str, v) -> str:
    if axis == "finetune_px":
        return "+".join(map(str, v)) + " px" if v else "none"
    return str(v)


class DatasetLaw(_Strict):
    """A fitted dataset law (stored in the calibration file under datasets.NAME.law)."""

    chance: float = Field(ge=0, lt=100, description="percent: 100 / classes of the evaluation set")
    ceiling: float = CEILING
    rho: float = Field(gt=0, description="a fine-tune sample counts rho pre-training samples (the published law's)")
    columns: list[str] = Field(description="1 | ln_samples | ln_encoder | ln_image_tokens")
    theta: list[float]
    cov: list[list[float]] = Field(description="covariance of theta (z units)")
    sigma: float = Field(ge=0, description="residual standard deviation, points")
    dof: int = Field(ge=0, description="residual degrees of freedom (points - parameters)")
    t: float = Field(gt=0, description="the interval's quantile: Student's t at dof (normal when dof is 0)")
    fixed: dict[str, float] = Field(default_factory=dict, description="parameters the pilots could not identify")
    points: list[FitPoint]
    note: Optional[str] = None

    @property
    def params(self) -> dict[str, float]:
        return {**dict(zip(self.columns, self.theta)), **self.fixed}

    # -- prediction ------------------------------------------------------------------------------

    def samples_eff(self, f) -> float:
        return f.samples + self.rho * sum(s.samples for s in f.finetune)

    def row(self, f) -> np.ndarray:
        return _row(self.columns, math.log(max(self.samples_eff(f), 1.0) / S_REF), f.encoder, f.image_tokens)

    def _z_fixed(self, f) -> float:
        x = math.log(max(self.samples_eff(f), 1.0) / S_REF)
        return self.fixed.get("k", 0.0) * x

    def to_top1(self, z):
        return self.chance + (self.ceiling - self.chance) / (1.0 + np.exp(-np.asarray(z, float)))

    def slope(self, p: float) -> float:
        """dz / dtop1 at top-1 ``p`` (percent), ``p`` kept MARGIN inside (chance, ceiling)."""
        return float(_slope(p, self.chance, self.ceiling))

    def _z(self, x: np.ndarray, f) -> float:
        return float(x @ np.array(self.theta)) + self._z_fixed(f)

    def mean(self, f) -> float:
        """The fit's top-1 (percent) without its interval: what the planner scores every search point by."""
        return float(self.to_top1(self._z(self.row(f), f)))

    def predict(self, f) -> tuple[float, float, float]:
        """(top-1, low, high) in percent: the fit's mean and the 80% prediction interval of a new run."""
        x = self.row(f)
        z = self._z(x, f)
        var_mean = float(x @ np.array(self.cov) @ x)
        p = float(self.to_top1(z))
        sd = math.sqrt(var_mean + (self.sigma * self.slope(p)) ** 2)
        top = math.log(self.largest() / S_REF) if self.points else None
        x = math.log(max(self.samples_eff(f), 1.0) / S_REF)
        if "k" in self.fixed and top is not None and x > top:
            # The exponent was not identified (fixed): beyond the runs, growth anywhere from none (the
            # low end stays at the largest run's level) to the ceiling.
            z_flat = z - self.fixed["k"] * (x - top)
            return p, float(self.to_top1(z_flat - self.t * sd)), self.ceiling
        low, high = float(self.to_top1(z - self.t * sd)), float(self.to_top1(z + self.t * sd))
        if top is not None and x > top:
            high = max(high, self._high_if_taking_off(f))
            low = self._low_if_bending(p, low, float(self.to_top1(z - self.params["ln_samples"] * (x - top))))
        return p, low, high

    def _low_if_bending(self, p: float, low: float, at_top: float) -> float:
        """The interval's low end beyond the largest pilot, where the pilots' curve may bend down: the
        published law's rule for samples beyond every run (accuracy_support), DELTA x the gain the law
        predicts past the largest pilot (``p - at_top``) as a standard deviation in points, added in
        quadrature to the fit's own half-width. Its parameters' covariance alone cannot do this: mapped
        through the logistic, a logit far above the pilots' reads as near 100% with or without doubt (demo
        pilots of at most 3,565 samples put an 8B-sample plan at 100.0% [99.6, 100.0])."""
        half = math.hypot(p - low, Z90 * DELTA * max(p - at_top, 0.0))
        return max(p - half, self.chance)

    def _high_if_taking_off(self, f) -> float:
        """The interval's high end under the other form the pilots cannot rule out: a logit growing
        linearly in samples, not in their log, as on a curve still taking off. On the demo, pilots at 0.2,
        0.3 and 0.5 of its samples (26.3, 37.6, 62.8%) fit the log form to 87.1% [75.0, 93.9] at full
        length, which reached 97.7% (README); this form puts it at 97.1%. Same columns, weights and
        quantile as the fit; its residual variance no smaller than the fit's."""
        top = max(pt.samples_eff for pt in self.points)
        fitted = _takeoff_fit(tuple(self.columns), tuple((pt.samples_eff / top, pt.encoder, pt.image_tokens,
                                                          pt.achieved) for pt in self.points),
                              self.chance, self.ceiling, self.sigma)
        if fitted is None:
            return self.chance  # no growth with samples: nothing to add
        theta, cov = fitted
        x = _row(self.columns, self.samples_eff(f) / top, f.encoder, f.image_tokens)
        z = float(x @ theta)
        sd = math.sqrt(float(x @ cov @ x) + (self.sigma * self.slope(float(self.to_top1(z)))) ** 2)
        return float(self.to_top1(z + self.t * sd))

    def unvaried(self) -> dict[str, tuple]:
        """The shape axes the law has no term for, with the pilots' values on them: the pilots did not vary
        them (or left too few degrees of freedom for a term), so the law predicts every value alike and a
        planner free on them would take the cheapest (demo-encoder pilots made an a100x8 plan S/16 at 64 px,
        the smallest encoder the space has, with 8 text tokens where the pilots had 12)."""
        out = {}
        for axis, (_, column, _) in SHAPE.items():
            vals = [getattr(p, axis) for p in self.points]
            if column not in self.columns and None not in vals:
                out[axis] = tuple(sorted({tuple(v) if isinstance(v, list) else v for v in vals}))
        return out

    def held_note(self) -> Optional[str]:
        """A line for a plan on this dataset saying what ``unvaried`` holds it to, or None."""
        held = self.unvaried()
        if not held:
            return None
        return (f"the plan keeps the pilots' {said(held)}: their law has no term for these (pilots of other shapes "
                "give it one)")

    def largest(self) -> float:
        """The largest pilot's samples (pre-training + rho x fine-tune)."""
        return max(p.samples_eff for p in self.points)

    def could_be_inside(self, f) -> bool:
        """A cheap necessary condition for ``notes(f)`` to be empty: a pilot's encoder, no more samples."""
        return f.encoder in {p.encoder for p in self.points} and self.samples_eff(f) <= self.largest() * (1 + SAME)

    def longest_inside(self, grid) -> Optional[float]:
        """The longest pre-training of ``grid`` within the largest pilot's samples (None: none is)."""
        return max((n for n in grid if n <= self.largest() * (1 + SAME)), default=None)

    def notes(self, f) -> list[str]:
        """The axes on which ``f`` lies outside the pilots (the law is fitted only on them)."""
        pts = self.points
        out = []
        top = self.largest()
        s = self.samples_eff(f)
        if s > top * (1 + SAME):
            out.append(f"samples {s:,.0f} (pre-training + {self.rho:.2g} x fine-tune) beyond the largest pilot's "
                       f"{top:,.0f} ({s / top:.1f}x)")
        encs = sorted({p.encoder for p in pts})
        if f.encoder not in encs:
            out.append(f"encoder {f.encoder}: no pilot on it (pilots: {', '.join(encs)})")
        toks = sorted({p.image_tokens for p in pts})
        if f.image_tokens not in toks:
            out.append(f"pre-training image tokens {f.image_tokens}: pilots had {', '.join(map(str, toks))}")
        for axis, values in self.unvaried().items():
            words, _, value = SHAPE[axis]
            if axis not in ("encoder", "image_tokens") and value(f) not in values:
                out.append(f"{words} {shape_value(axis, value(f))}: pilots had {said({axis: values}, words=False)} "
                           "(the law has no term for it)")
        out += self._finetune_note(f)
        return out

    def _finetune_note(self, f) -> list[str]:
        """The law counts a fine-tune sample as rho pre-training samples, a gain. Pilots whose fine-tune
        lowered their top-1 contradict that, and say nothing of a longer one: the demo's fine-tune
        lost 3.05, 6.35 and 0.5 points at 0.2x, 0.3x and 0.5x of its length and gained 1.6 at full length
        (README; on its first data: -2.9 and -9.3 at 0.25x and 0.5x, +17.5 at full length)."""
        gains = [p.finetune_gain for p in self.points if p.finetune_gain is not None]
        ft = sum(s.samples for s in f.finetune)
        longest = max((p.finetune_samples for p in self.points), default=0)
        if not gains or max(gains) > 0 or ft <= longest * (1 + SAME):
            return []
        return [f"fine-tune of {ft:,.0f} samples: every pilot's fine-tune (at most {longest:,}) lowered its "
                f"top-1 ({min(gains):+.1f} to {max(gains):+.1f} points): what a fine-tune {ft / longest:.1f}x "
                "longer gains is not identified"]


def said(held: dict, words: bool = True) -> str:
    return ", ".join((SHAPE[a][0] + " " if words else "") + " or ".join(shape_value(a, v) for v in vals)
                     for a, vals in held.items())


def _row(columns: Sequence[str], samples_term: float, encoder: str, image_tokens: int) -> np.ndarray:
    """One run's regressors, in ``columns`` order; ``samples_term`` is ln(S_eff / S_REF) in the law."""
    vals = {"1": 1.0, "ln_samples": samples_term, "ln_encoder": am.enc_info(encoder)[0],
            "ln_image_tokens": math.log(max(image_tokens, 1))}
    return np.array([vals[c] for c in columns])


def _slope(p, chance: float, ceiling: float):
    """dz / dtop1 at top-1 ``p`` (percent, a number or an array), kept MARGIN inside (chance, ceiling)."""
    p = np.clip(p, chance + MARGIN, ceiling - MARGIN)
    return (ceiling - chance) / ((p - chance) * (ceiling - p))


def _logit_wls(X: np.ndarray, top1: np.ndarray, chance: float, ceiling: float, offset=0.0):
    """Weighted least squares of each run's logit (minus ``offset``) on ``X``, weights 1 / (dz/dtop1)^2:
    (theta, (X' W X)^-1, the weighted residual sum of squares)."""
    pc = np.clip(top1, chance + MARGIN, ceiling - MARGIN)
    z = np.log((pc - chance) / (ceiling - pc)) - offset
    w = 1.0 / _slope(pc, chance, ceiling) ** 2
    inv = np.linalg.pinv(X.T @ (w[:, None] * X))
    theta = inv @ (X.T @ (w * z))
    return theta, inv, float(np.sum(w * (z - X @ theta) ** 2))


@functools.lru_cache(maxsize=16)
def _takeoff_fit(columns: tuple, points: tuple, chance: float, ceiling: float, sigma: float):
    """The logit-linear-in-samples form fitted once per set of pilots (``points``: samples as a fraction of
    the largest, encoder, tokens, top-1); (theta, covariance), or None when it does not grow with samples.
    Cached: the planner asks the law for every point of its search."""
    X = np.array([_row(columns, s, enc, tok) for s, enc, tok, _ in points])
    theta, inv, rss = _logit_wls(X, np.array([p[3] for p in points], float), chance, ceiling)
    if theta[columns.index("ln_samples")] <= 0:
        return None
    dof = len(points) - len(columns)
    return theta, max(rss / dof if dof > 0 else 0.0, sigma ** 2) * inv


# -- the fit --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One run's final top-1 on the dataset: its features (accuracy_law.RunFeatures), the top-1 (percent),
    the number of evaluation images (0: unknown) and, with a fine-tune, the top-1 before it."""

    run: str
    features: object
    top1: float
    n_eval: int = 0
    pretrain_top1: Optional[float] = None  # the last pre-training stage's top-1, when the run has a fine-tune


def _columns(obs: Sequence[Observation]) -> list[str]:
    cols = ["1", "ln_samples"]
    for name, key in (("ln_encoder", lambda o: o.features.encoder), ("ln_image_tokens", lambda o: o.features.image_tokens)):
        if len({key(o) for o in obs}) > 1:
            cols.append(name)
    while len(cols) > 1 and len(obs) - len(cols) < 1:
        cols.pop()  # the last added first: keep a degree of freedom for the residuals
    return cols


def fit(obs: Sequence[Observation], *, chance: float, rho: float, k_prior: float) -> DatasetLaw:
    """Weighted least squares in z. ``k_prior`` (the published law's beta) stands in for the exponent
    when the runs cannot identify it: a single run, or pilots whose top-1 does not grow with samples
    (all near chance: a fitted exponent <= 0 would predict less from more samples, which no run does)."""
    if not obs:
        raise ValueError("no observations")
    cols = _columns(obs)
    law = _solve(obs, cols, chance, rho, {} if "ln_samples" in cols else {"k": k_prior})
    if "ln_samples" in cols and law.params["ln_samples"] <= 0:
        k_fit = law.params["ln_samples"]
        law = _solve(obs, [c for c in cols if c != "ln_samples"], chance, rho, {"k": k_prior})
        law = law.model_copy(update={"note": (f"the runs' top-1 does not grow with samples (fitted exponent "
                                              f"{k_fit:.2g} <= 0): the exponent is the published law's; pilots "
                                              "further from chance would identify it")})
    pts = [FitPoint(run=o.run, samples_eff=law.samples_eff(o.features), encoder=o.features.encoder,
                    image_tokens=o.features.image_tokens, achieved=o.top1, fitted=law.predict(o.features)[0],
                    finetune_samples=int(sum(s.samples for s in o.features.finetune)),
                    finetune_gain=None if o.pretrain_top1 is None else o.top1 - o.pretrain_top1,
                    image_reduction=o.features.image_reduction, text_len=o.features.text_len,
                    text_reduction=o.features.text_reduction,
                    finetune_px=[s.image_size for s in o.features.finetune])
           for o in obs]
    return law.model_copy(update={"points": pts})


def _solve(obs, cols: list[str], chance: float, rho: float, fixed: dict) -> DatasetLaw:
    proto = DatasetLaw(chance=chance, rho=rho, columns=cols, theta=[0.0] * len(cols),
                       cov=[[0.0] * len(cols)] * len(cols), sigma=0.0, dof=0, t=Z90, fixed=fixed, points=[])
    X = np.array([proto.row(o.features) for o in obs])
    pc = np.clip([o.top1 for o in obs], chance + MARGIN, CEILING - MARGIN)
    theta, inv, rss = _logit_wls(X, pc, chance, CEILING, np.array([proto._z_fixed(o.features) for o in obs]))
    dof = len(obs) - len(cols)
    binom = [v * (100 - v) / o.n_eval for v, o in zip(pc, obs) if o.n_eval > 0]  # points^2
    floor = float(np.mean(binom)) if binom else 0.0
    s2 = max(rss / dof, floor) if dof > 0 else floor
    return proto.model_copy(update={
        "theta": [float(v) for v in theta], "cov": [[float(v) for v in row] for row in s2 * inv],
        "sigma": math.sqrt(s2), "dof": dof, "t": t90(dof) if dof > 0 else Z90,
        "note": None if dof > 0 else ("no degree of freedom left: the interval holds the evaluation's binomial "
                                      "noise and the parameters' uncertainty from it only"),
    })


def with_finetune(f, stages: int):
    """``f`` cut after its first ``stages`` fine-tune stages (per-stage predictions)."""
    return replace(f, finetune=f.finetune[:stages])
