"""Accuracy law: zero-shot ImageNet-1k top-1 (percent) of a CLIPA-style run, with an honest interval.

CLIPA's inverse scaling law as a parametric fit to the published runs (accuracy_model.py holds the
forms): a full-token accuracy that grows with encoder size and samples seen, image-token and
text-length penalties that shrink as the encoder grows, a fine-tune that recovers part of the
pre-training penalty, a dataset effect. Fitted (accuracy_fit.py) to 36 deduplicated published runs
(21 CLIPA, 15 OpenCLIP full-token) plus 5 published drops (4 masking, 1 text length).

The published runs cannot tell apart several shapes that fit them about equally well (does accuracy
saturate in encoder size or keep growing? is the dataset effect additive, on the error, or on the
effective samples? how steep are the token penalties?), and those shapes disagree outside the data.
So a prediction is a mixture over the forms, weighted by how well each predicted runs it never
saw (stacking on leave-one-out and leave-one-encoder-out, accuracy_validate.weigh):

    mean = sum_k w_k mu_k
    var  = sum_k w_k (var_k + (mu_k - mean)^2)  +  sum_settings (DELTA * effect * scale)^2
                                                +  sum_axes (kappa * distance)^2

with var_k = g_k' Cov_k g_k + s_k^2 the Laplace variance of form k (its parameters, including the
fixed published constants with their own standard deviations, plus its residual variance). The two
last terms are the doubt no form carries (accuracy_support.py): each setting the CLIPA runs saw only
at other encoder sizes, or never, is doubted in proportion to its effect on this run and how far it
is carried; kappa scales the log-distance outside the CLIPA runs (fitted with the weights). The
interval is central at ``LEVEL`` (80%) under a normal approximation, and every prediction names the
axes on which it extrapolates (``Prediction.extrapolation``).

Datasets 'demo' and 'custom' cannot be predicted from LAION figures: they are uncalibrated priors
(see ``AccuracyLaw.predict``) until a user's own runs give a per-dataset ``offset``.

The fitted forms, weights, support and validation are stored in ``data/accuracy_fit.json`` (written
by ``python -m clipa.costmodels.accuracy_law --refit``), so ``predict`` needs numpy only: no scipy
import, no fit at planning time. No torch or jax.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

from clipa.costmodels import accuracy_model as am
from clipa.costmodels.accuracy_model import DATASETS, PARAMS  # noqa: F401  (re-exported)
from clipa.costmodels.accuracy_support import DELTA, KAPPA, Flag, Support

FIT_FILE = Path(__file__).resolve().parent / "data" / "accuracy_fit.json"
FORMAT = 2  # of FIT_FILE: 1 was the single-form law (before model-form uncertainty)
LEVEL = 0.80  # central interval level of every Prediction
IN1K_CHANCE = 0.1  # percent: 1 in ImageNet-1k's 1000 classes, the floor of every prediction
CUSTOM_PRIOR = "laion-400m"  # whose law is the prior of an uncalibrated 'custom' dataset (its mean)
# The CPU demo's held-out split has 10 classes (clipa demo data): chance = 10% is the prior lower bound.
DEMO_CLASSES = 10
W_MIN = 1e-3  # forms weighing less are dropped at prediction time (and the rest renormalised)


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
    """Zero-shot IN-1k top-1 in percent; [low, high] is the central ``level`` interval;
    ``extrapolation`` names each axis on which the run lies outside the fitted data (empty: inside)."""

    top1: float
    low: float
    high: float
    level: float = LEVEL
    extrapolation: list[str] = field(default_factory=list)


def features_from_recipe(recipe) -> RunFeatures:
    """Stage 0 is pre-training, the rest fine-tunes (clipa.recipe.Recipe -> RunFeatures)."""
    enc = recipe.encoder.spec
    st0 = recipe.stages[0]
    fts = tuple(FinetuneStage(s.image_size, s.image_tokens(enc), float(s.samples), s.text_len,
                              s.image_reduction.mask_ratio) for s in recipe.stages[1:])
    return RunFeatures(recipe.encoder.name, recipe.dataset.name, st0.image_tokens(enc), st0.text_len,
                       float(st0.samples), st0.image_reduction.kind, st0.text_reduction, fts)


@dataclass
class Component:
    """One fitted form: parameters ``theta`` (PARAMS order), their covariance, residual std ``sigma``
    (points) and its weight in the mixture."""

    form: am.Form
    theta: np.ndarray
    cov: np.ndarray
    sigma: float
    weight: float
    meta: dict = field(default_factory=dict)

    @property
    def params(self) -> dict[str, float]:
        return dict(zip(PARAMS, map(float, self.theta)))


def mix(means: np.ndarray, variances: np.ndarray, w) -> tuple[np.ndarray, np.ndarray]:
    """Moment-matched mixture over axis 0: mean = sum w mu, variance = sum w (var + (mu - mean)^2)."""
    w = np.asarray(w, float).reshape((-1,) + (1,) * (np.ndim(means) - 1))
    mean = (w * means).sum(0)
    return mean, (w * (variances + (means - mean) ** 2)).sum(0)


def _clip(a):
    return np.clip(a, IN1K_CHANCE, 100.0)


class AccuracyLaw:
    """A mixture of fitted forms, the support it was fitted on and the extrapolation scale ``kappa``."""

    def __init__(self, components: Sequence[Component], support: Support, kappa: float = KAPPA,
                 meta: Optional[dict] = None):
        self.all_components = list(components)
        keep = [c for c in components if c.weight >= W_MIN] or [max(components, key=lambda c: c.weight)]
        total = sum(c.weight for c in keep)
        self.components = [replace(c, weight=c.weight / total) for c in keep]
        self.support, self.kappa, self.meta = support, float(kappa), meta or {}
        self.z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
        self._flags: dict = {}
        self._rowsets: dict = {}

    def _rowset(self, which: str):
        """Parameter rows for a forward-difference gradient of every form in one model call: per
        component, theta then theta + h e_i for each parameter with a variance. ``which``: 'active'
        (the forms the mixture uses) or 'all' (validation)."""
        if which not in self._rowsets:
            comps = self.components if which == "active" else self.all_components
            rows, ds, tok, parts = [], [], [], []
            for c in comps:
                idx = np.flatnonzero(np.diag(c.cov) > 0)
                h = 1e-5 * np.maximum(1.0, np.abs(c.theta[idx]))
                start = len(rows)
                rows.append(c.theta)
                rows.extend(c.theta + np.eye(len(PARAMS))[i] * hi for i, hi in zip(idx, h))
                codes = am.form_codes([c.form])
                ds += [codes[0][0]] * (1 + len(idx))
                tok += [codes[1][0]] * (1 + len(idx))
                parts.append((c, start, idx, h, c.cov[np.ix_(idx, idx)]))
            self._rowsets[which] = (np.array(rows), np.array(ds), np.array(tok), parts)
        return self._rowsets[which]

    @property
    def weights(self) -> np.ndarray:
        """Weight of each form, in ``all_components`` order."""
        return np.array([c.weight for c in self.all_components])

    @property
    def params(self) -> dict[str, float]:
        """The heaviest form's parameters (the report lists every form's)."""
        return max(self.components, key=lambda c: c.weight).params

    def extrapolation(self, f: RunFeatures) -> list[Flag]:
        """The axes on which ``f`` lies outside the fitted data (cached per features)."""
        if f not in self._flags:
            self._flags[f] = self.support.check(f)
        return self._flags[f]

    def prior_dataset(self, dataset: str) -> Optional[str]:
        """The published dataset whose law is ``dataset``'s prior where its own interval cannot rank plans
        (uncalibrated 'custom': the low end is chance for all), else None."""
        return CUSTOM_PRIOR if dataset == "custom" else None

    def could_be_inside(self, f: RunFeatures) -> bool:
        """A cheap necessary condition for ``extrapolation(f)`` to be empty (``Support.could_be_inside``)."""
        return self.support.could_be_inside(f)

    def longest_inside(self, grid, dataset: str) -> Optional[float]:
        """The longest pre-training of ``grid`` the fitted data holds for ``dataset`` (None: none, or no CLIPA
        run on ``dataset``)."""
        return self.support.longest_inside(grid) if dataset in self.support.datasets else None

    def dist2(self, f: RunFeatures) -> float:
        """Sum of squared log-distances outside the fitted data (scaled by ``kappa``)."""
        return sum(fl.distance ** 2 for fl in self.extrapolation(f))

    def doubt(self, feats: Sequence[RunFeatures], family: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Per run: (sum of squared log-distances outside the data, the variance of its settings seen
        only at other encoders or beyond every run). The latter is (DELTA x effect x scale)^2 per
        setting (accuracy_support), the effect being the mixture's change in final top-1 when the
        setting is replaced by the nearest one the encoder's own runs had (``Flag.ref``)."""
        d2 = np.array([self.dist2(f) for f in feats])
        refs, owner, scales = [], [], []
        for i, f in enumerate(feats):
            by_term: dict[str, tuple] = {}
            for fl in self.extrapolation(f):
                if fl.term is not None and fl.scale > 0:
                    ref, s2 = by_term.get(fl.term, (fl.ref, 0.0))  # one effect per setting, its largest scale
                    by_term[fl.term] = (ref, max(s2, fl.scale ** 2))
            for ref, s2 in by_term.values():
                refs.append(replace(f, **dict(ref)))
                owner.append(i)
                scales.append(s2)
        cond = np.zeros(len(feats))
        if refs:
            both = list(feats) + refs
            fam = None if family is None else list(family) + [family[i] for i in owner]
            top = self.mean(both, fam)
            for k, (i, s2) in enumerate(zip(owner, scales)):
                cond[i] += (DELTA * (top[i] - top[len(feats) + k])) ** 2 * s2
        return d2, cond

    def _extra_var(self, feats: Sequence[RunFeatures]) -> np.ndarray:
        d2, cond = self.doubt(feats)
        return self.kappa ** 2 * d2 + cond

    @property
    def sd_floor(self) -> float:
        """No prediction's standard deviation is below this (the forms' residual spread), points."""
        return float(np.sqrt(sum(c.weight * c.sigma ** 2 for c in self.components)))

    def mean(self, feats: Sequence[RunFeatures], family: Optional[Sequence[str]] = None) -> np.ndarray:
        """The mixture's mean top-1 after the last stage of each run, unclipped (no interval: cheap)."""
        out = np.empty(len(feats))
        pub = [i for i, f in enumerate(feats) if f.dataset in DATASETS]
        if pub:
            sub = [feats[i] for i in pub]
            rows, ds, tok, parts = self._rowset("active")
            starts = [start for _, start, _, _, _ in parts]
            acc = am.model(rows[starts], am.design(sub, None if family is None else [family[i] for i in pub]),
                           ds[starts], tok[starts])
            last = np.array([len(f.finetune) for f in sub])
            out[pub] = np.array([c.weight for c in self.components]) @ acc[:, np.arange(len(sub)), last]
        custom = [i for i, f in enumerate(feats) if f.dataset == "custom"]
        if custom:  # the prior's mean: the LAION-400M law
            out[custom] = self.mean([replace(feats[i], dataset=CUSTOM_PRIOR) for i in custom])
        for i, f in enumerate(feats):
            if f.dataset not in DATASETS and f.dataset != "custom":
                out[i] = self._prior(f).top1
        return out

    def moments(self, feats: Sequence[RunFeatures], family: Optional[Sequence[str]] = None, which: str = "active"):
        """Per-form mean and Laplace variance after each stage: two arrays (forms, m, 1 + n_ft).

        ``family`` ('clipa'/'openclip' per run) adds the OpenCLIP recipe offset (validation only);
        ``which``: the 'active' forms or 'all' of them."""
        rows, ds, tok, parts = self._rowset(which)
        acc = am.model(rows, am.design(feats, family), ds, tok)  # (rows, m, stages)
        means, variances = [], []
        for c, start, idx, h, cov in parts:
            mu = acc[start]
            g = (acc[start + 1:start + 1 + len(idx)] - mu) / h[:, None, None]  # (q, m, stages)
            means.append(mu)
            variances.append(np.einsum("ims,ij,jms->ms", g, cov, g) + c.sigma ** 2)
        return np.array(means), np.array(variances)

    def _stages_with_var(self, feats: Sequence[RunFeatures]) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean and variance after each stage, (m, 1 + n_ft), without the extrapolation term."""
        return mix(*self.moments(feats), [c.weight for c in self.components])

    def predict_many(self, feats: Sequence[RunFeatures], offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised ``predict``: arrays (top1, low, high) for the final stage of each run, in percent."""
        pub = [i for i, f in enumerate(feats) if f.dataset in DATASETS]
        top, low, high = np.empty(len(feats)), np.empty(len(feats)), np.empty(len(feats))
        if pub:
            sub = [feats[i] for i in pub]
            acc, var = self._stages_with_var(sub)
            last = np.array([len(f.finetune) for f in sub])
            mean = acc[np.arange(len(sub)), last]
            sd = np.sqrt(var[np.arange(len(sub)), last] + self._extra_var(sub))
            top[pub], low[pub], high[pub] = mean, mean - self.z * sd, mean + self.z * sd
        custom = [i for i, f in enumerate(feats) if f.dataset == "custom"]
        if custom:  # the LAION-400M law as a prior, from chance to the best published dataset's high
            variants = [replace(feats[i], dataset=d) for d in DATASETS for i in custom]
            t, _, h = self.predict_many(variants)
            t, h = t.reshape(len(DATASETS), -1), h.reshape(len(DATASETS), -1)
            top[custom], low[custom], high[custom] = t[DATASETS.index(CUSTOM_PRIOR)], IN1K_CHANCE, h.max(0)
        for i, f in enumerate(feats):
            if f.dataset not in DATASETS and f.dataset != "custom":
                p = self._prior(f)
                top[i], low[i], high[i] = p.top1, p.low, p.high
        return _clip(top + offset), _clip(low + offset), _clip(high + offset)

    def predict(self, f: RunFeatures, offset: float = 0.0) -> Prediction:
        """Top-1 after the last stage of ``f`` (percent) with its ``LEVEL`` interval and extrapolation notes.

        ``offset`` (points) is a per-dataset calibration from the user's own runs, added to all three.
        Dataset 'demo' (the CPU demo: tiny encoder, synthetic data) is uncalibrated: the published
        LAION runs say nothing about it, so the prediction is chance (1/DEMO_CLASSES) with the
        interval [chance, 100] until an offset calibrates it. Dataset 'custom' is uncalibrated too:
        the LAION-400M law as a prior with an interval from chance (0.1%) to the best published
        dataset's high.
        """
        t, lo, hi = self.predict_many([f], offset)
        return Prediction(float(t[0]), float(lo[0]), float(hi[0]), LEVEL, self.notes(f))

    def notes(self, f: RunFeatures) -> list[str]:
        """The extrapolation strings of ``f``: empty when it lies inside the fitted data."""
        if f.dataset == "demo":
            return ["dataset demo: no published run (chance to 100% until calibrated on your runs)"]
        if f.dataset == "custom":  # and where even the prior extrapolates (its own dataset's coverage aside)
            prior = [fl.text for fl in self.extrapolation(replace(f, dataset=CUSTOM_PRIOR))
                     if fl.text and fl.term != "dataset"]
            return ["dataset custom: no published run (the LAION laws as a prior until calibrated on your runs)",
                    *(f"prior: {t}" for t in prior)]
        return [fl.text for fl in self.extrapolation(f) if fl.text]

    def predict_stages(self, f: RunFeatures, offset: float = 0.0) -> list[Prediction]:
        """Predictions after pre-training and after each fine-tune stage."""
        if f.dataset not in DATASETS:
            p = self._prior(f)
            return [Prediction(*(float(_clip(v + offset)) for v in (p.top1, p.low, p.high)), LEVEL, self.notes(f))
                    for _ in range(1 + len(f.finetune))]
        acc, var = self._stages_with_var([f])
        out = []
        for j in range(1 + len(f.finetune)):
            part = replace(f, finetune=f.finetune[:j])  # a stage extrapolates only on what it has seen
            m, sd = acc[0, j], float(np.sqrt(var[0, j] + self._extra_var([part])[0]))
            vals = [float(_clip(v + offset)) for v in (m, m - self.z * sd, m + self.z * sd)]
            out.append(Prediction(*vals, LEVEL, self.notes(part)))
        return out

    def _prior(self, f: RunFeatures) -> Prediction:
        if f.dataset == "demo":
            chance = 100.0 / DEMO_CLASSES
            return Prediction(chance, chance, 100.0, LEVEL)
        if f.dataset == "custom":
            t, lo, hi = self.predict_many([f])
            return Prediction(float(t[0]), float(lo[0]), float(hi[0]), LEVEL)
        raise ValueError(f"unknown dataset {f.dataset!r}")

    def to_json(self) -> dict:
        return {
            "forms": [{"name": c.form.name, "size": c.form.size, "dataset": c.form.dataset, "tokens": c.form.tokens,
                       "weight": c.weight, "sigma": c.sigma, "theta": [float(v) for v in c.theta],
                       "cov": [[float(v) for v in row] for row in c.cov], **c.meta} for c in self.all_components],
            "support": self.support.to_json(),
            "kappa": self.kappa,
        }

    @classmethod
    def from_json(cls, d: dict) -> "AccuracyLaw":
        comps = [Component(am.Form(c["size"], c["dataset"], c["tokens"]), np.array(c["theta"]), np.array(c["cov"]),
                           c["sigma"], c["weight"], {k: c[k] for k in ("aicc", "sse") if k in c}) for c in d["forms"]]
        return cls(comps, Support.from_json(d["support"]), d["kappa"], d)


@functools.lru_cache(maxsize=1)
def default() -> AccuracyLaw:
    """The law fitted to the published runs (stored fit; refitted in memory if the data changed)."""
    from clipa.costmodels import accuracy_data

    if FIT_FILE.is_file():
        stored = json.loads(FIT_FILE.read_text())
        if (stored.get("format") == FORMAT and stored.get("fingerprint") == accuracy_data.fingerprint()
                and stored.get("params_order") == list(PARAMS)):
            return AccuracyLaw.from_json(stored)
    from clipa.costmodels import accuracy_fit

    return accuracy_fit.fit()


def training_runs() -> list[tuple[str, RunFeatures, float]]:
    """The published runs the law is fitted to: (name, features, top-1 percent)."""
    from clipa.costmodels import accuracy_data

    return [(r.name, r.features, r.top1) for r in accuracy_data.runs()]


def fit_report(law: Optional[AccuracyLaw] = None) -> dict:
    from clipa.costmodels import accuracy_validate

    return accuracy_validate.report(law)


def plot_fit(path: Path, law: Optional[AccuracyLaw] = None, rep: Optional[dict] = None) -> Path:
    """PNG of the fit; ``rep``: ``fit_report(law)`` if the caller already has it."""
    from clipa.costmodels import accuracy_validate

    return accuracy_validate.plot(Path(path), law, rep)


if __name__ == "__main__":
    from clipa.costmodels import accuracy_validate

    accuracy_validate.main()
