"""Fit the dataset law (``costmodels/dataset_law.py``) to finished runs on a dataset no published run saw.

Each finished run with a final zero-shot top-1 is one observation: its recipe's features (samples,
fine-tune, encoder, tokens) and that top-1, the stable figure (the demo's pre-training top-1 moves by
15 points with the seed, its final top-1 by 1.9: recipes/demo.yaml). Chance and the binomial floor
of the residual variance come from the run's own evaluation set (classnames and val images).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from clipa.costmodels import dataset_law
from clipa.report.load import Run

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")


def _eval_set(run: Run) -> tuple[Optional[int], int]:
    """(classes, images) of the run's zero-shot evaluation set as the run resolved it (None, 0: unknown)."""
    ds = run.recipe.dataset
    classes = None
    if ds.classnames and Path(ds.classnames).is_file():
        classes = sum(1 for line in Path(ds.classnames).read_text().splitlines() if line.strip()) or None
    images = 0
    if ds.val and Path(ds.val).is_dir():
        images = sum(1 for p in Path(ds.val).rglob("*") if p.suffix.lower() in IMAGE_EXT)
    return classes, images


def observations(runs: Sequence[Run]) -> tuple[list[dataset_law.Observation], Optional[int]]:
    """The runs' observations and the number of classes of their evaluation set (None: unknown)."""
    from clipa.costmodels import accuracy_law

    obs, classes = [], set()
    for r in runs:
        if not r.finished or r.achieved.top1 is None:
            continue
        c, n = _eval_set(r)
        classes.add(c)
        obs.append(dataset_law.Observation(str(r.path), accuracy_law.features_from_recipe(r.recipe),
                                           float(r.achieved.top1), n))
    known = {c for c in classes if c}
    return obs, (known.pop() if len(known) == 1 else None)


def fit(runs: Sequence[Run]) -> Optional[dataset_law.DatasetLaw]:
    """The dataset law of ``runs`` (all on one dataset), or None when no run has a final top-1."""
    from clipa.costmodels import accuracy_law

    obs, classes = observations(runs)
    if not obs:
        return None
    # ImageNet-1k's chance when the evaluation set cannot be read (a user's val folder moved).
    chance = 100.0 / classes if classes else accuracy_law.IN1K_CHANCE
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
                     f"fitted {p.fitted:.2f}%")
    return lines
