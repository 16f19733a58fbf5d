"""Fit the dataset law (``costmodels/dataset_law.py``) to finished runs on a dataset no published run saw.

Each finished run with a final zero-shot top-1 is one observation: its recipe's features (samples,
fine-tune, encoder, tokens) and that top-1, the figure the target run is judged by. Chance and the
binomial floor of the residual variance come from the run's own evaluation set (its classes and images,
recorded in achieved.json).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from clipa.costmodels import dataset_law
from clipa.errors import UserError
from clipa.report.load import Run


def _eval_set(run: Run) -> tuple[int, int]:
    """(classes, images) of the run's zero-shot evaluation set: as achieved.json records them, else (runs
    finished before it did) read from the recipe's paths; UserError when neither says, because chance
    moves the whole law (the demo's pilots: 44.8% [15.9, 86.6] with chance 10%, 33.6% [13.8, 61.7]
    with ImageNet's 0.1%)."""
    a = run.achieved
    if a.eval_classes:
        return a.eval_classes, a.eval_images or 0
    ds = run.recipe.dataset
    classes = 0
    if ds.classnames and Path(ds.classnames).is_file():
        classes = sum(1 for line in Path(ds.classnames).read_text().splitlines() if line.strip())
    elif ds.val and Path(ds.val).is_dir():
        classes = sum(1 for p in Path(ds.val).iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{run.path}: its evaluation set ({ds.classnames or ds.val or 'none recorded'}) cannot be "
                        "read from here and achieved.json does not record its classes; run clipa-report from "
                        "the directory the run was launched in")
    from clipa.backends.data.zeroshot import is_image  # the images the evaluation counts

    images = sum(1 for p in Path(ds.val).rglob("*") if is_image(p)) if ds.val else 0
    return classes, images


def _pretrain_top1(run: Run, f) -> Optional[float]:
    """The top-1 after the last pre-training stage (before the fine-tune), None without a fine-tune."""
    n_pre = len(run.recipe.stages) - len(f.finetune)
    stages = run.achieved.stages
    return stages[n_pre - 1].top1 if f.finetune and 0 < n_pre <= len(stages) else None


def observations(runs: Sequence[Run]) -> tuple[list[dataset_law.Observation], int]:
    """The runs' observations and the number of classes of their evaluation set (0: no observation);
    UserError when the runs were evaluated on sets of different classes (one law, one chance level)."""
    from clipa.costmodels import accuracy_law

    obs, classes = [], {}
    for r in runs:
        if not r.finished or r.achieved.top1 is None:
            continue
        c, n = _eval_set(r)
        classes.setdefault(c, r.path)
        f = accuracy_law.features_from_recipe(r.recipe)
        obs.append(dataset_law.Observation(str(r.path), f, float(r.achieved.top1), n, _pretrain_top1(r, f)))
    if len(classes) > 1:
        raise UserError("runs evaluated on different sets (" + ", ".join(f"{p}: {c} classes" for c, p in
                        classes.items()) + "): one dataset law needs one evaluation set")
    return obs, next(iter(classes), 0)


def fit(runs: Sequence[Run]) -> Optional[dataset_law.DatasetLaw]:
    """The dataset law of ``runs`` (all on one dataset), or None when no run has a final top-1."""
    from clipa.costmodels import accuracy_law

    obs, classes = observations(runs)
    if not obs:
        return None
    chance = 100.0 / classes
    heavy = max(accuracy_law.default().components, key=lambda c: c.weight).params
    return dataset_law.fit(obs, chance=chance, rho=math.exp(heavy["lnrho"]), k_prior=heavy["beta"])


def describe(name: str, law: dataset_law.DatasetLaw) -> list[str]:
    """What was calibrated from what: runs, points, parameters with their intervals."""
    pars = law.params
    se = {c: math.sqrt(max(law.cov[i][i], 0.0)) for i, c in enumerate(law.columns)}
    words = {"1": "b (scale)", "ln_samples": "k (data-efficiency exponent)", "ln_encoder": "e (encoder size)",
             "ln_image_tokens": "g (image tokens)"}
    lines = [f"accuracy law for dataset {name!r}: fitted on {len(law.points)} run(s) "
             f"({', '.join(Path(p.run).name for p in law.points)}), {len(law.columns)} parameter(s), "
             f"{law.dof} residual degree(s) of freedom; chance {law.chance:.3g}%, ceiling {law.ceiling:.0f}%, "
             f"fine-tune sample = {law.rho:.2f} pre-training samples (published law)"]
    for i, c in enumerate(law.columns):
        lines.append(f"  {words[c]} = {pars[c]:.3f}, 80% interval [{pars[c] - law.t * se[c]:.3f}, "
                     f"{pars[c] + law.t * se[c]:.3f}] (t = {law.t:.2f})")
    for k, v in law.fixed.items():
        lines.append(f"  {k} = {v:.3f} fixed (the published law's: one run cannot identify it)")
    lines.append(f"  residual sd {law.sigma:.2f} points" + (f"; {law.note}" if law.note else ""))
    for p in law.points:
        lines.append(f"  {Path(p.run).name}: {p.samples_eff:,.0f} effective samples, achieved {p.achieved:.2f}%, "
                     f"fitted {p.fitted:.2f}%" + ("" if p.finetune_gain is None else
                                                 f", its fine-tune {p.finetune_gain:+.2f} points"))
    return lines
