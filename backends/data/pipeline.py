"""Training batches from webdataset shards: the one entry point both backends call.

The sample order of a rank is a pure function of (seed, rank, world_size) and the shards' sample
counts (read from tar headers), never of the image bytes:
  epoch e: shards permuted by rng(seed, e); rank r takes every world_size-th shard (or, with fewer
  shards than ranks, every world_size-th sample of all shards); the rank's samples are cut into
  blocks of ``SHUFFLE_BLOCK`` and each block is permuted by rng(seed, rank, e, block).
Epochs follow each other without end (epoch-free): the caller stops after the stage's samples.
Because the order needs no decoding, ``start_sample`` fast-forwards by counting, and a resumed run
yields exactly the batches of an uninterrupted one. The shuffle holds references, not bytes, so a
block can span many shards at no memory cost (webdataset's byte buffer holds ~1000 samples).

A sample that cannot be decoded is replaced by a copy of another sample of the same batch (counted
in ``DataStats``), so batch i always consists of stream positions [i*B, (i+1)*B) and resume stays
exact. Corrupt shards and samples without image or caption are dropped when the shard is indexed.
"""
from __future__ import annotations

import collections
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from clipa import reductions
from clipa.backends.data import batch_job
from clipa.backends.data import workers as workers_mod
from clipa.backends.data.decode import normalize
from clipa.backends.data.webdataset_io import (MAX_OPEN_SHARDS, SampleEntry, ShardIndex, ShardReader, describe,
                                               expand_shards, index_shard, shard_summary)
from clipa.encoders import Encoder
from clipa.errors import UserError
from clipa.recipe import DatasetSpec, Stage

# References per shuffle block: ~1 LAION shard (10k samples). A reference is a few dozen bytes.
SHUFFLE_BLOCK = 10_000
# Epochs in a row that give this rank no sample before we call the data unusable.
_MAX_EMPTY_EPOCHS = 64


@dataclass
class DataStats:
    """What the pipeline saw; the backend logs it. ``seen``: samples delivered in batches;
    ``skipped``: samples (or whole corrupt shards) dropped; ``reasons``: reason -> count.

    Each bad sample or shard counts once per run, however often a stage, an epoch or a resumed process
    meets it again: ``found`` maps its key (a shard's path and reason, or ``shard:sample``) to
    [reason, count]; keys in ``known`` (found earlier in the run, from the checkpoint) are not counted."""

    seen: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    found: dict[str, list] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)

    def add(self, reason: str, n: int = 1, key: Optional[str] = None) -> bool:
        """Count ``n`` skipped under ``reason``; False (nothing counted) when ``key`` was counted before."""
        if key is not None:
            if key in self.known or key in self.found:
                return False
            self.found[key] = [reason, n]
        self.skipped += n
        self.reasons[reason] = self.reasons.get(reason, 0) + n
        return True


class RankStream:
    """The infinite, deterministic sequence of (position, shard path, entry) for one rank.

    ``on_live(paths)`` is called as each shuffle block starts, with the shards that block reads: every
    other shard is no longer needed (until a later block reaches it again), so the caller can release
    it. batches_for closes those shards' file handles, which keeps open files bounded over a long run."""

    def __init__(self, shards: list[Path], rank: int, world_size: int, seed: int,
                 stats: DataStats, block: int = SHUFFLE_BLOCK,
                 on_live: Optional[Callable[[set[Path]], None]] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.shards, self.rank, self.world, self.seed, self.block = shards, rank, world_size, seed, block
        self.stats, self.on_live = stats, on_live
        self._counts: dict[int, int] = {}
        self._index: dict[int, ShardIndex] = {}

    def _record(self, s: int, count: int, errors: dict[str, int]) -> None:
        if s in self._counts:  # report a shard's problems once, not every epoch
            return
        self._counts[s] = count
        path = self.shards[s]
        new = [self.stats.add(reason, n, key=f"{path}#{reason}") for reason, n in errors.items()]
        if "corrupt_shard" in errors and any(new):  # said once per run, as it is counted
            print(f"clipa data: {path}: corrupt shard, kept {count} complete samples", file=sys.stderr)

    def _shard(self, s: int) -> ShardIndex:
        idx = self._index.get(s)
        if idx is None:
            idx = self._index[s] = index_shard(self.shards[s])
            self._record(s, len(idx.entries), idx.errors)
        return idx

    def _count(self, s: int) -> int:
        if s not in self._counts:  # counted without its index: only the current block's shards stay in memory
            summary = shard_summary(self.shards[s])
            self._record(s, summary.count, summary.errors)
        return self._counts[s]

    def _plan(self, e: int) -> tuple[np.ndarray, int, int]:
        """Epoch ``e``: this rank's shards (in order), and the stride/offset of its samples among them."""
        order = np.random.default_rng([self.seed, e]).permutation(len(self.shards))
        if len(self.shards) >= self.world:
            return order[self.rank::self.world], 1, 0
        return order, self.world, self.rank

    def epoch_length(self, e: int) -> int:
        """Samples this rank draws in epoch ``e`` (indexes every shard of the epoch)."""
        mine, stride, offset = self._plan(e)
        total = sum(self._count(int(s)) for s in mine)
        return max(0, -(-(total - offset) // stride))

    def refs(self, start: int = 0) -> Iterator[tuple[int, Path, SampleEntry]]:
        """Samples from rank position ``start`` on; shards are indexed lazily, as the blocks reach them."""
        skip, pos, e, empty = start, start, 0, 0
        n = len(self.shards)
        while True:
            mine, stride, offset = self._plan(e)
            cum: list[int] = []

            def covered(raw_last: int) -> int:
                """Samples of this rank in the epoch, counting shards until ``raw_last`` is inside."""
                while len(cum) < len(mine) and (not cum or cum[-1] <= raw_last):
                    cum.append((cum[-1] if cum else 0) + self._count(int(mine[len(cum)])))
                total = cum[-1] if cum else 0
                return max(0, -(-(total - offset) // stride))

            b, produced = 0, 0
            while True:
                lo = b * self.block
                hi = min((b + 1) * self.block, covered(offset + ((b + 1) * self.block - 1) * stride))
                if lo >= hi:
                    break
                produced += hi - lo
                if skip >= hi - lo:  # fast-forward a whole block by counting
                    skip -= hi - lo
                    b += 1
                    continue
                perm = np.random.default_rng([self.seed, self.rank, e, b]).permutation(hi - lo)
                raw = offset + (lo + perm[skip:]) * stride
                where = np.searchsorted(cum, raw, side="right")
                live = {int(mine[w]) for w in np.unique(where)}
                self._index = {s: i for s, i in self._index.items() if s in live}
                if self.on_live is not None:
                    self.on_live({self.shards[s] for s in live})
                for r, w in zip(raw.tolist(), where.tolist()):
                    s = int(mine[w])
                    yield pos, self.shards[s], self._shard(s).entries[r - (cum[w - 1] if w else 0)]
                    pos += 1
                skip = 0
                b += 1
            empty = empty + 1 if produced == 0 else 0
            if empty >= _MAX_EMPTY_EPOCHS:
                raise UserError(f"no readable samples for rank {self.rank} in {n} shards (first: {self.shards[0]}; "
                                f"skipped: {describe(self.stats.reasons)})")
            e += 1


def _job_config(stage: Stage, encoder: Encoder, seed: int, rank: int) -> batch_job.JobConfig:
    kind = stage.image_reduction.kind
    return batch_job.JobConfig(
        image_size=stage.image_size, augment=stage.augment,
        mask_kind=kind if reductions.IMAGE.get(kind).masks else None,
        grid_side=stage.image_size // encoder.vision.patch,
        keep_tokens=stage.image_tokens(encoder),
        text_len=stage.text_len, text_kind=stage.text_reduction, seed=seed, rank=rank)


def _finish(out: dict, stats: DataStats) -> dict[str, np.ndarray]:
    """Fill failed slots with copies of good samples of the same batch; normalise the images."""
    n = len(out["image"])
    failed = out["failed"]
    if failed:
        bad = {i for i, _, _ in failed}
        good = [i for i in range(n) if i not in bad]
        if not good:
            i, name, why = failed[0]
            raise UserError(f"every sample of a batch failed to decode (first: {name}: {why})")
        for k, (i, name, why) in enumerate(failed):
            j = good[k % len(good)]
            for key in ("image", "text", "keep"):
                if out[key] is not None:
                    out[key][i] = out[key][j]
            stats.add(why.split(":")[0], key=name)
    batch = {"image": normalize(out["image"]), "text": out["text"]}
    if out["keep"] is not None:
        batch["keep"] = out["keep"]
    stats.seen += n
    return batch


def train_batches(dataset: DatasetSpec, stage: Stage, encoder: Encoder, *, batch_size: int, rank: int = 0,
                  world_size: int = 1, seed: int = 0, start_sample: int = 0, workers: Optional[int] = None,
                  stats: Optional[DataStats] = None) -> Iterator[dict[str, np.ndarray]]:
    """Infinite (epoch-free) per-rank batches of ``batch_size`` samples (= global_batch // world_size).

    Batch dict per backends/README.md: ``image`` float32 [B,3,H,W] (CLIP mean/std), ``text`` int32
    [B, stage.text_len], ``keep`` int32 [B, K] (mask reductions only, K = stage.image_tokens(encoder)).

    ``start_sample``: samples (all ranks together) already drawn from this dataset in this run, earlier
    stages included (sum of steps * global_batch); must be a multiple of ``world_size``. Given the same
    (seed, rank, world_size, start_sample) the batches equal an uninterrupted run's from that point.
    ``workers``: decoding processes (default ``dataset.workers``; 0 = decode in the calling process);
    batches come back in order, so the result does not depend on ``workers``.
    """
    if not dataset.train:
        raise UserError("dataset.train: no training shards given")
    if start_sample % world_size:
        raise ValueError(f"start_sample {start_sample} is not a multiple of world_size {world_size}")
    shards = expand_shards(dataset.train)  # UserError naming a missing path, before the generator starts
    return batches_for(shards, _job_config(stage, encoder, seed, rank), batch_size, rank, world_size,
                       start_sample // world_size, dataset.workers if workers is None else workers,
                       stats if stats is not None else DataStats())


def batches_for(shards: list[Path], cfg: batch_job.JobConfig, batch_size: int, rank: int, world_size: int,
                start: int, workers: int, stats: DataStats, *, block: int = SHUFFLE_BLOCK,
                max_open: int = MAX_OPEN_SHARDS) -> Iterator[dict[str, np.ndarray]]:
    """``train_batches`` below the recipe: an explicit job config and the rank's own ``start``
    position (benchmarks/data_pipeline.py uses it to switch draft decoding off). ``block``: references
    per shuffle block; ``max_open``: open shard files at most.

    Shards are read here, in the calling process (workers get bytes), so only this process holds shard
    files: those of the current shuffle block, at most ``max_open``."""
    reader = ShardReader(max_open)
    stream = RankStream(shards, rank, world_size, cfg.seed, stats, block, on_live=reader.keep_only)

    def jobs():
        items = []
        for position, path, entry in stream.refs(start):
            items.append((position, f"{path}:{entry.key}", reader.read(path, entry)))
            if len(items) == batch_size:
                yield items
                items = []

    try:
        if workers <= 0:
            for items in jobs():
                yield _finish(batch_job.run(cfg, items), stats)
            return
        pool = start_workers(workers)
        handed: collections.deque = collections.deque()  # tickets of the jobs given out, oldest first
        for items in jobs():
            handed.append(pool.submit(batch_job.run, cfg, items))
            if len(handed) == 2 * workers:
                yield _finish(pool.result(handed.popleft()), stats)
    finally:
        reader.close()


def start_workers(workers: int) -> Optional[workers_mod.Workers]:
    """This process's decoding processes (``workers.start_workers``), each made to load the decoder now."""
    return workers_mod.start_workers(workers, _ready)


def _ready() -> None:
    """A no-op job: unpickling it in a worker imports this module, so the decoder is loaded before work."""
