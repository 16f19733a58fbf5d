"""The dataset registry: every dataset a recipe can name.

``published``: the accuracy law is fitted to published runs on it (costmodels/accuracy_data.py);
on any other its top-1 prediction is a prior until calibrated on the user's runs. ``plannable``:
clipa-plan can plan for it (``custom`` has no prior of its own, only the LAION law as a bound).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clipa.registry import Registry


@dataclass(frozen=True)
class Dataset:
    name: str
    help: str
    published: bool = False
    plannable: bool = True


DATASETS = Registry[Dataset]("dataset")
# The order of the published ones is the accuracy law's (its dataset parameters, accuracy_model.py).
for _d in (
    Dataset("laion-400m", "LAION-400M (CLIPA-v1's pre-training data)", published=True),
    Dataset("laion-2b", "LAION-2B English (CLIPA-v2)", published=True),
    Dataset("datacomp-1b", "DataComp-1B (CLIPA-v2's best runs)", published=True),
    Dataset("demo", "clipa's generated CPU demo data (backends/data/demo_data.py)"),
    Dataset("custom", "your own webdataset shards", plannable=False),
):
    DATASETS.register(_d)


def eval_label(dataset: str, val: Optional[str], calibrated: bool) -> str:
    """What a top-1 predicted for ``dataset`` is measured on: the published runs' ImageNet-1k, the demo's
    held-out split, or, for the user's own data, the evaluation set its pilots were calibrated on (``calibrated``:
    the prediction came from that calibration). Uncalibrated, a prediction on the user's data is the LAION-400M
    law's ImageNet-1k figure, which can lie below the user's set's chance (0.1% for a 10-class set)."""
    if dataset == "demo":
        return "held-out demo split"
    if dataset in published():
        return "ImageNet-1k"
    if not calibrated:
        return "ImageNet-1k, the LAION-400M law as a prior: not your evaluation set until calibrated"
    return f"your evaluation set, {val}" if val else "your evaluation set"


def published() -> tuple[str, ...]:
    """Names of the datasets with published runs behind the accuracy law, in the law's order."""
    return tuple(d.name for d in DATASETS if d.published)


def plannable() -> tuple[str, ...]:
    return tuple(d.name for d in DATASETS if d.plannable)


# What the law predicts on a published dataset: the published runs' figure, zero-shot top-1 on ImageNet-1k's
# 1,000 classes (column zero_shot_in1k_top1 of costmodels/data/published_clipa_results.csv).
PUBLISHED_EVAL_CLASSES = 1000


def eval_mismatch(dataset: str, n_classes: Optional[int]) -> Optional[str]:
    """Why a top-1 measured on ``n_classes`` classes is not what was predicted for ``dataset`` (None when it is)."""
    if n_classes in (None, PUBLISHED_EVAL_CLASSES) or dataset not in published():
        return None
    return (f"the top-1 predicted on {dataset} is ImageNet-1k zero-shot ({PUBLISHED_EVAL_CLASSES:,} classes, the "
            f"published runs' figure); the evaluation set has {n_classes:,} classes, so its top-1 is not comparable "
            "with the prediction (evaluate on ImageNet-1k's val to compare; for a prediction on this set, calibrate "
            "on --dataset custom pilots)")
