"""Accuracy law: zero-shot ImageNet-1k top-1 (percent) of a CLIPA-style run, with an interval.

The law (CLIPA's inverse scaling law as a parametric fit to the published runs)::

    core(S)    = A - B * n**-alpha - C * (S/1e9)**-beta [+ o for OpenCLIP runs]  # full-token accuracy
    P_img(T)   = Ki * n**-gamma * ((256/T)**ci - 1)     for T <= 256       # fewer image tokens
               = -Ki * (1 - (256/T)**ci)                for T > 256        # (336 px: a small bonus)
    P_txt(L)   = Kt * n**-gamma * m_red * ((32/L)**ct - 1)+                # shorter captions
    top1       = 100 - m[dataset] * (100 - (core(S_total) - Q - R - strat))

with n = vision-tower weights / 302M (L/16 = 1), T = image patch tokens seen (after resize or
mask), L = text tokens, S_total = samples seen so far, m[laion-2b] = 1 (the dataset scales the
error: DataComp's published gain is 3.5 points after pre-training and 2.9 after fine-tuning,
a near-constant 0.87 x the error). After pre-training the penalty P0 = P_img(T0) + P_txt(L0)
splits into Q = keep * P0, which no fine-tune removes, and R = P0 - Q; each fine-tune stage (F
samples at T_k, L_k) moves R towards that stage's own penalty: R <- P_k + (R - P_k) * exp(-F/F0)
(only ever down: a stage with fewer tokens than before does not undo pre-training). ``strat``
is the fixed extra cost of mask strategies (IMAGE_STRATEGY_DELTA). ``n**-gamma`` is the inverse
scaling law: the cost of fewer tokens shrinks as the encoder grows (CLIPA; CLIPA-v2 Fig. 2: 50%
tokens cost 0.4 (H/14), 0.8 (L/16), 1.1 (B/16), 1.8 (S/16) points). Every term is monotone:
more samples or a larger encoder at equal tokens never lowers the prediction.

Free parameters: 15, fitted by least squares to 40 observations (36 published runs, 21 of them
CLIPA, 14 of those fine-tuned; 4 published masking drops; see ``training_runs``): A, m for
LAION-400M and DataComp, an offset o for OpenCLIP's full-token recipe (its runs pin the size and
samples terms but use a different recipe: CLS pooling, other batch/lr), B, alpha, C, beta, Ki,
ci, gamma, Kt, ct, F0, keep. That is few observations per parameter: the leave-one-out error
(``fit_report``), not the in-sample fit, is the honest figure. Fixed, not fitted (too few
published points; each from the source named at the constant): the text-reduction multipliers
m_red and the mask-strategy costs. The CLIPA runs come from 3 encoders (B/16, L/16|L/14, H/14),
so predictions for S/16, g/14 and bigG/14 are extrapolations and their intervals say so.

Uncertainty: a Laplace (linearised least-squares) interval: var = g' Cov g + s^2 with Cov =
s^2 (J'J)^-1 at the optimum, s^2 the residual variance, g the gradient of the prediction with
respect to the parameters. The interval is central at ``LEVEL`` (80%) under a normal
approximation; it widens away from the data (g grows when extrapolating in n, S or tokens).

Datasets 'demo' and 'custom' cannot be predicted from LAION figures: they are uncalibrated
priors (see ``AccuracyLaw.predict``) until a user's own runs give a per-dataset ``offset``.

The fitted parameters, covariance and leave-one-out predictions are stored in
``data/accuracy_fit.json`` (written by ``python -m clipa.costmodels.accuracy_law --refit``), so
``predict`` needs numpy only: no scipy import, no fit at planning time. No torch or jax.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

from clipa import encoders

FIT_FILE = Path(__file__).resolve().parent / "data" / "accuracy_fit.json"
LEVEL = 0.80  # central interval level of every Prediction
DATASETS = ("laion-400m", "laion-2b", "datacomp-1b")  # the ones with published runs
N_REF = 301_989_888  # L/16 vision-tower weights (encoders.py shapes): n = 1 at L/16
T_REF = 256  # image tokens of a /14 tower at 224 px: "full tokens" for the law
L_REF = 32  # CLIPA: 32 text tokens lose nothing against 77 (CLIPA paper; CLIPA-v2 fine-tunes at 32)
MAX_FT = 3  # fine-tune stages the vectorised model handles (CLIPA uses at most 2)
IN1K_CHANCE = 0.1  # percent: 1 in ImageNet-1k's 1000 classes, the floor of every prediction

# Text-reduction multipliers on the text penalty, relative to syntax masking: CLIPA paper Fig. 7
# as read by a third party (ext_clipa_inverse_scaling.csv rows 32-35: B/16 at 4 text tokens loses
# ~3.0 (syntax), ~4-5 (truncate, random), ~4 (block) points) -> 4.5/3, 4.5/3, 4/3.
TEXT_MULT = {"syntax": 1.0, "truncate": 1.5, "random": 1.5, "block": 4.0 / 3.0}
# Fine-tune stages read truncated captions (CLIPA fine-tune scripts, ext_clipa_recipes.csv rows 31-37).
FT_TEXT_MULT = TEXT_MULT["truncate"]
# Image masking strategies cost more than resizing, and fine-tuning does not recover it: L/16 at 75%
# token reduction, after fine-tune, resize 68.9, block 68.5, random 67.6, grid 67.3 (CLIPA paper
# Fig. 4 via ext_clipa_inverse_scaling.csv rows 28-31, third_party_unverified). Applied as
# DELTA * n**-gamma * reduction / STRATEGY_REF_REDUCTION points, reduction = 1 - tokens / T_REF (the
# L/16 figures: 49 of 196 tokens = 1 - 49/256 of T_REF); linear in the reduction is an assumption.
IMAGE_STRATEGY_DELTA = {"resize": 0.0, "block_mask": 68.9 - 68.5, "random_mask": 68.9 - 67.6, "grid_mask": 68.9 - 67.3}
STRATEGY_REF_REDUCTION = 1.0 - 49 / 256
# The CPU demo's held-out split has 10 classes (clipa demo data): chance = 10% is the prior lower bound.
DEMO_CLASSES = 10

PARAMS = ("A", "lnm_laion400m", "lnm_datacomp1b", "openclip_offset", "lnB", "alpha", "lnC", "beta",
          "lnKi", "ci", "gamma", "lnKt", "ct", "lnF0", "keep")


@dataclass(frozen=True)
class FinetuneStage:
    """A fine-tune stage: ``image_tokens`` after masking, ``samples`` seen, ``mask_ratio`` in [0, 1)."""

    image_size: int
    image_tokens: int
    samples: float
    text_len: int
    mask_ratio: float = 0.0


@dataclass(frozen=True)
class RunFeatures:
    """What the law needs of a run. ``image_tokens`` = patch tokens seen in pre-training (after
    resize/mask, no class token), ``samples`` = pre-training samples seen."""

    encoder: str
    dataset: str  # laion-400m | laion-2b | datacomp-1b | demo | custom
    image_tokens: int
    text_len: int
    samples: float
    image_reduction: str = "resize"
    text_reduction: str = "syntax"
    finetune: tuple[FinetuneStage, ...] = ()


@dataclass
class Prediction:
    """Zero-shot IN-1k top-1 in percent; [low, high] is the central ``level`` interval."""

    top1: float
    low: float
    high: float
    level: float = LEVEL


def features_from_recipe(recipe) -> RunFeatures:
    """Stage 0 is pre-training, the rest fine-tunes (clipa.recipe.Recipe -> RunFeatures)."""
    enc = recipe.encoder.spec
    st0 = recipe.stages[0]
    fts = tuple(FinetuneStage(s.image_size, s.image_tokens(enc), float(s.samples), s.text_len,
                              s.image_reduction.mask_ratio) for s in recipe.stages[1:])
    return RunFeatures(recipe.encoder.name, recipe.dataset.name, st0.image_tokens(enc), st0.text_len,
                       float(st0.samples), st0.image_reduction.kind, st0.text_reduction, fts)


@functools.lru_cache(maxsize=None)
def _enc_info(name: str) -> tuple[float, int]:
    """(log n, patch tokens at 224 px) of an encoder."""
    v = encoders.get(name).vision
    params = v.depth * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim)  # attention + MLP weights
    return math.log(params / N_REF), v.tokens(224)


def _design(feats: Sequence[RunFeatures], family: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Features -> arrays (m,) and (m, MAX_FT) for the vectorised model."""
    m = len(feats)
    d = {k: np.zeros(m) for k in ("logn", "T0", "L0", "S0", "mt0", "strat", "oc")}
    d["ds"] = np.zeros((m, len(DATASETS)))
    for k in ("T", "L", "F"):
        d[k] = np.ones((m, MAX_FT)) if k != "F" else np.zeros((m, MAX_FT))
    for i, f in enumerate(feats):
        logn, _ = _enc_info(f.encoder)
        d["logn"][i], d["T0"][i], d["L0"][i], d["S0"][i] = logn, max(f.image_tokens, 1), max(f.text_len, 1), f.samples
        d["mt0"][i] = TEXT_MULT[f.text_reduction]
        # Reduction measured against T_REF like the token penalty, so equal tokens cost the same on L/14 and L/16.
        red = max(0.0, 1.0 - f.image_tokens / T_REF)
        d["strat"][i] = IMAGE_STRATEGY_DELTA[f.image_reduction] * red / STRATEGY_REF_REDUCTION
        if f.dataset in DATASETS:
            d["ds"][i, DATASETS.index(f.dataset)] = 1.0
        d["oc"][i] = 1.0 if family is not None and family[i] == "openclip" else 0.0
        if len(f.finetune) > MAX_FT:
            raise ValueError(f"at most {MAX_FT} fine-tune stages, got {len(f.finetune)}")
        for j, s in enumerate(f.finetune):
            d["T"][i, j], d["L"][i, j], d["F"][i, j] = max(s.image_tokens, 1), max(s.text_len, 1), s.samples
    return d


def _model(theta: np.ndarray, d: dict[str, np.ndarray]) -> np.ndarray:
    """Accuracy after each stage: theta (k, p) -> (k, m, 1 + MAX_FT)."""
    th = np.atleast_2d(theta)[:, :, None]  # (k, p, 1)
    A = th[:, 0]
    # The dataset scales the error, 100 - top1 (LAION-2B = 1): DataComp's gain shrinks as accuracy grows.
    m_ds = np.exp(th[:, 1:3, 0] @ d["ds"][:, [0, 2]].T)  # (k, m)
    oc, B, alpha, C, beta = th[:, 3], np.exp(th[:, 4]), th[:, 5], np.exp(th[:, 6]), th[:, 7]
    Ki, ci, gamma, Kt, ct, F0 = np.exp(th[:, 8]), th[:, 9], th[:, 10], np.exp(th[:, 11]), th[:, 12], np.exp(th[:, 13]) * 1e8
    keep = th[:, 14]  # fraction of the pre-training penalty no fine-tune removes
    logn = d["logn"]
    shrink = np.exp(-gamma * logn)  # n**-gamma
    base = A + oc * d["oc"] - B * np.exp(-alpha * logn) - d["strat"] * shrink

    def p_img(T):
        ratio = T_REF / T
        below = Ki * shrink * (ratio ** ci - 1.0)
        above = -Ki * (1.0 - ratio ** ci)
        return np.where(T <= T_REF, below, above)

    def p_txt(L, mult):
        return Kt * shrink * mult * np.maximum((L_REF / L) ** ct - 1.0, 0.0)

    S = d["S0"].copy()
    P0 = p_img(d["T0"]) + p_txt(d["L0"], d["mt0"])
    Q = keep * np.maximum(P0, 0.0)  # the part of the pre-training penalty no fine-tune removes
    R = P0 - Q  # the part fine-tuning moves towards the fine-tune stage's own penalty
    out = [100.0 - m_ds * (100.0 - (base - C * (S / 1e9) ** -beta - P0))]
    for j in range(MAX_FT):
        F = d["F"][:, j]
        Pk = p_img(d["T"][:, j]) + p_txt(d["L"][:, j], FT_TEXT_MULT)
        R = np.where(Pk < R, Pk + (R - Pk) * np.exp(-F / F0), R)
        S = S + F
        out.append(100.0 - m_ds * (100.0 - (base - C * (S / 1e9) ** -beta - Q - R)))
    return np.stack(out, axis=-1)


def _clip(a):
    return np.clip(a, IN1K_CHANCE, 100.0)


class AccuracyLaw:
    """A fitted law: ``theta`` (PARAMS order), covariance ``cov``, residual std ``sigma`` (points)."""

    def __init__(self, theta: Sequence[float], cov: Sequence[Sequence[float]], sigma: float, meta: Optional[dict] = None):
        self.theta = np.asarray(theta, float)
        self.cov = np.asarray(cov, float)
        self.sigma = float(sigma)
        self.meta = meta or {}
        self._z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
        # Parameter points for a central-difference gradient: rows 0 = theta, then +h, -h per parameter.
        h = 1e-4 * np.maximum(1.0, np.abs(self.theta))
        self._h = h
        eye = np.eye(len(self.theta)) * h
        self._grid = np.vstack([self.theta, self.theta + eye, self.theta - eye])

    @property
    def params(self) -> dict[str, float]:
        return dict(zip(PARAMS, map(float, self.theta)))

    def _stages_with_var(self, feats: Sequence[RunFeatures]) -> tuple[np.ndarray, np.ndarray]:
        d = _design(feats)
        acc = _model(self._grid, d)  # (1 + 2p, m, stages)
        p = len(self.theta)
        g = (acc[1:1 + p] - acc[1 + p:]) / (2 * self._h[:, None, None])  # (p, m, stages)
        var = np.einsum("ims,ij,jms->ms", g, self.cov, g) + self.sigma ** 2
        return acc[0], var

    def predict_many(self, feats: Sequence[RunFeatures], offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised ``predict``: arrays (top1, low, high) for the final stage of each run, in percent."""
        pub = [i for i, f in enumerate(feats) if f.dataset in DATASETS]
        top = np.empty(len(feats))
        low, high = np.empty(len(feats)), np.empty(len(feats))
        if pub:
            sub = [feats[i] for i in pub]
            acc, var = self._stages_with_var(sub)
            d_ft = np.array([len(f.finetune) for f in sub])
            mean = acc[np.arange(len(sub)), d_ft]
            sd = np.sqrt(var[np.arange(len(sub)), d_ft])
            top[pub], low[pub], high[pub] = mean, mean - self._z * sd, mean + self._z * sd
        for i, f in enumerate(feats):
            if f.dataset not in DATASETS:
                p = self._prior(f)
                top[i], low[i], high[i] = p.top1, p.low, p.high
        return _clip(top + offset), _clip(low + offset), _clip(high + offset)

    def predict(self, f: RunFeatures, offset: float = 0.0) -> Prediction:
        """Top-1 after the last stage of ``f`` (percent) with its ``LEVEL`` interval.

        ``offset`` (points) is a per-dataset calibration from the user's own runs, added to all three.
        Dataset 'demo' (the CPU demo: tiny encoder, synthetic data) is uncalibrated: the published
        LAION runs say nothing about it, so the prediction is chance (1/DEMO_CLASSES) with the
        interval [chance, 100] until an offset calibrates it. Dataset 'custom' is uncalibrated too:
        the LAION-400M law as a prior with an interval from chance (0.1%) to the best published
        dataset's high.
        """
        t, lo, hi = self.predict_many([f], offset)
        return Prediction(float(t[0]), float(lo[0]), float(hi[0]), LEVEL)

    def predict_stages(self, f: RunFeatures, offset: float = 0.0) -> list[Prediction]:
        """Predictions after pre-training and after each fine-tune stage."""
        if f.dataset not in DATASETS:
            p = self._prior(f)
            return [Prediction(*(float(_clip(v + offset)) for v in (p.top1, p.low, p.high)), LEVEL)
                    for _ in range(1 + len(f.finetune))]
        acc, var = self._stages_with_var([f])
        out = []
        for j in range(1 + len(f.finetune)):
            m, sd = acc[0, j], math.sqrt(var[0, j])
            vals = [float(_clip(v + offset)) for v in (m, m - self._z * sd, m + self._z * sd)]
            out.append(Prediction(*vals, LEVEL))
        return out

    def _prior(self, f: RunFeatures) -> Prediction:
        if f.dataset == "demo":
            chance = 100.0 / DEMO_CLASSES
            return Prediction(chance, chance, 100.0, LEVEL)
        if f.dataset == "custom":
            from dataclasses import replace

            preds = [self.predict(replace(f, dataset=d)) for d in DATASETS]
            return Prediction(preds[0].top1, IN1K_CHANCE, max(p.high for p in preds), LEVEL)
        raise ValueError(f"unknown dataset {f.dataset!r}")


@functools.lru_cache(maxsize=1)
def default() -> AccuracyLaw:
    """The law fitted to the published runs (stored fit; refitted in memory if the data changed)."""
    from clipa.costmodels import accuracy_data

    if FIT_FILE.is_file():
        stored = json.loads(FIT_FILE.read_text())
        if stored.get("fingerprint") == accuracy_data.fingerprint() and stored.get("params_order") == list(PARAMS):
            return AccuracyLaw(stored["theta"], stored["cov"], stored["sigma"], stored)
    from clipa.costmodels import accuracy_fit

    return accuracy_fit.fit()


def training_runs() -> list[tuple[str, RunFeatures, float]]:
    """The published runs the law is fitted to: (name, features, top-1 percent)."""
    from clipa.costmodels import accuracy_data

    return [(r.name, r.features, r.top1) for r in accuracy_data.runs()]


def fit_report(law: Optional[AccuracyLaw] = None) -> dict:
    from clipa.costmodels import accuracy_fit

    return accuracy_fit.report(law)


def plot_fit(path: Path, law: Optional[AccuracyLaw] = None, rep: Optional[dict] = None) -> Path:
    """PNG of the fit; ``rep``: ``fit_report(law)`` if the caller already has it."""
    from clipa.costmodels import accuracy_fit

    return accuracy_fit.plot(Path(path), law, rep)


if __name__ == "__main__":
    from clipa.costmodels import accuracy_fit

    accuracy_fit.main()
