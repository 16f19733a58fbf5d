"""Fitting the accuracy law's forms (accuracy_model.py) and weighting them into one law.

Only ``python -m clipa.costmodels.accuracy_law --refit``, the validation and ``fit_report`` come
here; planning reads the stored fit and never imports scipy.

Each form is fitted by maximum a posteriori least squares: the squared errors on the published runs,
the published masking and text-length drops, plus weak priors (accuracy_model.Form) that keep a
parameter the data cannot pin at a plausible value instead of at a bound. Its covariance is the
Laplace one, (J'J / s^2 + diag(1 / prior_sd^2))^-1, with s the form's residual standard deviation.
Each form's AICc (41 observations for 17-18 parameters, hence the small-sample correction) is
kept for the report and gives the default weights of a fit on its own (Akaike weights); the shipped
law's weights come from how the forms predict runs they never saw (accuracy_validate.weigh).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from clipa.costmodels import accuracy_data
from clipa.costmodels import accuracy_model as am
from clipa.costmodels.accuracy_law import AccuracyLaw, Component, FinetuneStage, RunFeatures
from clipa.costmodels import accuracy_support

SIGMA0 = 0.8  # points: the residual scale the priors are weighed against (about the fits' own)


def _drop_pairs(drops: Sequence[accuracy_data.MaskDrop], texts: Sequence[accuracy_data.TextDrop]):
    """Design rows (reduced, full) for each published drop; the drop is full - reduced after fine-tune.

    The masking drop the law predicts does not depend on the pre-training as long as pre-training
    used fewer tokens than the fine-tune (true of every CLIPA run), so a 36-token, 8-text
    pre-training stands in for the unpublished one. The text drop (CLIPA Fig. 7) is a 6.4-epoch
    (2.56B) LAION-400M pre-training at full tokens, then the 131M fine-tune at 32 text tokens.
    """
    low, full = [], []
    for dr in drops:
        _, t224 = am.enc_info(dr.encoder)
        pre = dict(encoder=dr.encoder, dataset="laion-400m", image_tokens=36, text_len=8, samples=accuracy_data.V1_PRETRAIN)
        low.append(RunFeatures(**pre, finetune=(FinetuneStage(224, t224 // 2, dr.samples, 32, 0.5),)))
        full.append(RunFeatures(**pre, finetune=(FinetuneStage(224, t224, dr.samples, 32, 0.0),)))
    for dr in texts:
        _, t224 = am.enc_info(dr.encoder)
        ft = (FinetuneStage(224, t224, accuracy_data.V1_FT, 32, 0.0),)
        pre = dict(encoder=dr.encoder, dataset="laion-400m", image_tokens=t224, samples=accuracy_data.V1_PRETRAIN, finetune=ft)
        low.append(RunFeatures(**pre, text_len=dr.text_len, text_reduction=dr.reduction))
        full.append(RunFeatures(**pre, text_len=32, text_reduction=dr.reduction))
    return am.design(low), am.design(full), np.array([d.drop for d in (*drops, *texts)])


class Problem:
    """The observations of one fit: runs (top-1) and published drops."""

    def __init__(self, runs: Sequence[accuracy_data.Run], drops=None, texts=None):
        self.runs = list(runs)
        self.drops = accuracy_data.mask_drops() if drops is None else list(drops)
        self.texts = accuracy_data.text_drops() if texts is None else list(texts)
        self.d = am.design([r.features for r in self.runs], [r.family for r in self.runs])
        self.y = np.array([r.top1 for r in self.runs])
        self.last = np.array([len(r.features.finetune) for r in self.runs])
        self.dl, self.df, self.dy = _drop_pairs(self.drops, self.texts)
        self.n_obs = len(self.y) + len(self.dy)

    def predict(self, theta: np.ndarray, form: am.Form) -> np.ndarray:
        """Top-1 of every run (k, m) for parameter rows theta (k, p)."""
        acc = am.model(theta, self.d, *am.form_codes([form]))
        return acc[:, np.arange(len(self.last)), self.last]

    def residuals(self, theta: np.ndarray, form: am.Form) -> np.ndarray:
        """(k, n_obs) predicted - observed, points."""
        th = np.atleast_2d(theta)
        out = [self.predict(th, form) - self.y]
        if len(self.dy):
            codes = am.form_codes([form])  # every drop row ends with its one fine-tune stage
            out.append(am.model(th, self.df, *codes)[:, :, 1] - am.model(th, self.dl, *codes)[:, :, 1] - self.dy)
        return np.concatenate(out, axis=1)


@dataclass
class FormFit:
    form: am.Form
    theta: np.ndarray
    cov: np.ndarray
    sigma: float
    sse: float
    n_obs: int
    n_free: int
    aicc: float = field(init=False)

    def __post_init__(self):
        n, k = self.n_obs, self.n_free + 1  # + the residual variance
        self.aicc = n * math.log(self.sse / n) + 2 * k + 2 * k * (k + 1) / max(1, n - k - 1)


def fit_form(prob: Problem, form: am.Form, x0: Optional[np.ndarray] = None, with_cov: bool = True) -> FormFit:
    from scipy.optimize import least_squares

    start, lo, hi, mu, sd = form.start_bounds_prior()
    free = np.array([am.IDX[k] for k in form.free])
    base = start.copy()
    x_init = np.clip((start if x0 is None else x0)[free], lo[free] + 1e-9, hi[free] - 1e-9)

    def full(x):  # free values (k, f) -> parameter rows (k, p)
        x = np.atleast_2d(x)
        th = np.repeat(base[None], len(x), axis=0)
        th[:, free] = x
        return th

    def resid(x):
        x = np.atleast_2d(x)
        prior = SIGMA0 * (x - mu[free]) / sd[free]
        return np.concatenate([prob.residuals(full(x), form), prior], axis=1)

    def jac(x):  # forward differences, every perturbed row in one vectorised call
        h = 1e-6 * np.maximum(1.0, np.abs(x))
        rows = np.vstack([x, x + np.diag(h)])
        r = resid(rows)
        return ((r[1:] - r[0]) / h[:, None]).T

    res = least_squares(lambda x: resid(x)[0], x_init, jac=jac, bounds=(lo[free], hi[free]), method="trf",
                        x_scale="jac", max_nfev=2000, xtol=1e-10, ftol=1e-10, gtol=1e-10)
    theta = full(res.x)[0]
    r_data = prob.residuals(theta, form)[0]
    sse = float(r_data @ r_data)
    sigma = math.sqrt(sse / max(1, prob.n_obs - len(free)))
    cov = np.diag(np.where(lo == hi, sd, 0.0) ** 2)  # fixed published constants: their own uncertainty
    if form.size == "nofloor":
        cov[am.IDX["A"], am.IDX["A"]] = 0.0  # A = 100 by the form's definition, not a reading
    if with_cov:
        J = jac(res.x)[: prob.n_obs]
        prec = J.T @ J / sigma ** 2 + np.diag(1.0 / sd[free] ** 2)
        cov[np.ix_(free, free)] = np.linalg.inv(prec)
    return FormFit(form, theta, cov, sigma, sse, prob.n_obs, len(free))


def akaike_weights(aicc: Sequence[float]) -> np.ndarray:
    a = np.asarray(aicc, float)
    w = np.exp(-0.5 * (a - a.min()))
    return w / w.sum()


def fit(runs: Optional[Sequence[accuracy_data.Run]] = None, drops=None, texts=None,
        forms: Sequence[am.Form] = am.FORMS, with_cov: bool = True, weights: Optional[Sequence[float]] = None,
        kappa: float = accuracy_support.KAPPA, x0: Optional[dict] = None) -> AccuracyLaw:
    """Fit every form to ``runs`` (default: all published runs) and the published drops.

    ``weights`` (one per form; default: Akaike weights from each form's AICc) and ``kappa`` make the
    mixture; the shipped law's come from validation (accuracy_validate.weigh). ``x0``: {form:
    parameter vector} to start from (a refit without a few runs starts from the full fit)."""
    runs = accuracy_data.runs() if runs is None else list(runs)
    prob = Problem(runs, drops, texts)
    fits = [fit_form(prob, f, x0=None if x0 is None else x0.get(f), with_cov=with_cov) for f in forms]
    w = akaike_weights([f.aicc for f in fits]) if weights is None else np.asarray(weights, float)
    comps = [Component(f.form, f.theta, f.cov, f.sigma, float(wi), {"aicc": f.aicc, "sse": f.sse})
             for f, wi in zip(fits, w)]
    support = accuracy_support.Support.from_runs(runs, prob.drops, prob.texts)
    return AccuracyLaw(comps, support, kappa=kappa, meta={"n_obs": prob.n_obs, "n_runs": len(runs)})
