"""Training batches from webdataset shards: the one entry point both backends call.

INTERFACE PUBLISHED EARLY (implementation in progress): names and semantics below are fixed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from clipa.encoders import Encoder
from clipa.recipe import DatasetSpec, Stage


@dataclass
class DataStats:
    """What the pipeline saw; the backend logs it. ``skipped`` counts samples (or shards) dropped."""

    seen: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def train_batches(dataset: DatasetSpec, stage: Stage, encoder: Encoder, *, batch_size: int, rank: int = 0,
                  world_size: int = 1, seed: int = 0, start_sample: int = 0, workers: Optional[int] = None,
                  stats: Optional[DataStats] = None) -> Iterator[dict[str, np.ndarray]]:
    """Infinite (epoch-free) per-rank batches of ``batch_size`` samples (= global_batch // world_size).

    Batch dict per backends/README.md: ``image`` float32 [B,3,H,W] (CLIP mean/std), ``text`` int32
    [B, stage.text_len], ``keep`` int32 [B, K] (mask reductions only, K = stage.image_tokens(encoder)).

    ``start_sample``: samples (all ranks together) already drawn from this dataset in this run, earlier
    stages included (sum of steps * global_batch); must be a multiple of ``world_size``. Given the same
    (seed, rank, world_size, start_sample) the batches equal an uninterrupted run's from that point.
    ``workers``: decoding processes (default ``dataset.workers``; 0 = decode in the calling process).
    """
    raise NotImplementedError("in progress")
