"""The published accuracy law with the user's fitted dataset laws predicting their own datasets.

``Calibration.accuracy_law(base)`` returns one of these when a calibration file holds a dataset law
(``dataset_law.py``, fitted by ``clipa-report --calibrate`` on pilot runs). It answers the calls the
planner and ``predict_recipe`` make of an ``AccuracyLaw``; runs on any other dataset go to the
published law unchanged. numpy only.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from clipa.costmodels import accuracy_law
from clipa.costmodels.dataset_law import DatasetLaw, with_finetune


class CalibratedLaw:
    def __init__(self, base: accuracy_law.AccuracyLaw, laws: dict[str, DatasetLaw]):
        self.base, self.laws = base, dict(laws)

    def __getattr__(self, name):  # support, z, weights, ...: the published law's
        return getattr(self.base, name)

    @property
    def sd_floor(self) -> float:
        """0: a fitted dataset law's interval can be narrower than the published forms' spread, so the
        planner must not bound its objective by that spread."""
        return 0.0

    def _mine(self, feats) -> list[int]:
        return [i for i, f in enumerate(feats) if f.dataset in self.laws]

    def mean(self, feats: Sequence, family: Optional[Sequence[str]] = None) -> np.ndarray:
        out = np.array(self.base.mean(feats, family), float)
        for i in self._mine(feats):
            out[i] = self.laws[feats[i].dataset].mean(feats[i])
        return out

    def predict_many(self, feats: Sequence, offset: float = 0.0):
        top, low, high = (np.array(a, float) for a in self.base.predict_many(feats, offset))
        for i in self._mine(feats):
            top[i], low[i], high[i] = self.laws[feats[i].dataset].predict(feats[i])
        return top, low, high

    def predict(self, f, offset: float = 0.0) -> accuracy_law.Prediction:
        if f.dataset not in self.laws:
            return self.base.predict(f, offset)
        return accuracy_law.Prediction(*self.laws[f.dataset].predict(f), accuracy_law.LEVEL, self.notes(f))

    def notes(self, f) -> list[str]:
        if f.dataset not in self.laws:
            return self.base.notes(f)
        return self.laws[f.dataset].notes(f)

    def prior_dataset(self, dataset: str) -> Optional[str]:
        return None if dataset in self.laws else self.base.prior_dataset(dataset)

    def could_be_inside(self, f) -> bool:
        law = self.laws.get(f.dataset)
        return self.base.could_be_inside(f) if law is None else law.could_be_inside(f)

    def longest_inside(self, grid, dataset: str) -> Optional[float]:
        law = self.laws.get(dataset)
        return self.base.longest_inside(grid, dataset) if law is None else law.longest_inside(grid)

    def predict_stages(self, f, offset: float = 0.0) -> list[accuracy_law.Prediction]:
        if f.dataset not in self.laws:
            return self.base.predict_stages(f, offset)
        return [self.predict(with_finetune(f, j)) for j in range(1 + len(f.finetune))]
