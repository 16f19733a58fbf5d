"""Image-token masks and text-token reductions: counts and semantics."""
from __future__ import annotations

import numpy as np
import pytest

from clipa import encoders, reductions
from clipa.recipe import ImageReductionSpec, OptimizerSpec, Stage


def keep_indices(kind, side, k, rng):
    return reductions.IMAGE.get(kind).keep_indices(side, k, rng)


def reduce_ids(ids, kind, budget, rng, prio=None):
    return reductions.TEXT.get(kind).reduce(ids, budget, rng, prio)


@pytest.mark.parametrize("kind", [r.name for r in reductions.IMAGE if r.masks])
@pytest.mark.parametrize("size,ratio", [(64, 0.5), (64, 0.75), (224, 0.75), (112, 0.9)])
def test_mask_counts_match_stage_tokens(kind, size, ratio):
    enc = encoders.get("B/16") if size >= 112 else encoders.get("test")
    st = Stage(name="m", samples=1, global_batch=1, image_size=size, text_len=8, optimizer=OptimizerSpec(lr=1),
               image_reduction=ImageReductionSpec(kind=kind, mask_ratio=ratio))
    side = size // enc.vision.patch
    k = st.image_tokens(enc)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = keep_indices(kind, side, k, rng)
        assert idx.dtype == np.int32 and idx.shape == (k,)
        assert (np.diff(idx) > 0).all() and idx[0] >= 0 and idx[-1] < side * side  # sorted, unique, in range


def test_grid_mask_keeps_one_patch_per_2x2_cell_at_75_percent():
    side = 14
    idx = keep_indices("grid_mask", side, side * side // 4, np.random.default_rng(1))
    r, c = np.divmod(idx, side)
    cells = (r // 2) * 7 + c // 2
    assert sorted(cells.tolist()) == list(range(49))
    # and it is random inside the cells: not always the same corner
    assert len(set(zip((r % 2).tolist(), (c % 2).tolist()))) > 1


def test_block_mask_is_one_compact_region_and_random_mask_is_spread():
    side, k = 14, 49
    rng = np.random.default_rng(2)
    blk = keep_indices("block_mask", side, k, rng)
    r, c = np.divmod(blk, side)
    assert (r.max() - r.min() + 1) * (c.max() - c.min() + 1) == k  # 7 x 7 square exactly
    rnd = keep_indices("random_mask", side, k, rng)
    r, c = np.divmod(rnd, side)
    assert (r.max() - r.min() + 1) * (c.max() - c.min() + 1) > 2 * k


def _is_subsequence(small, big):
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def test_text_reductions_counts_and_order():
    ids = list(range(100, 130))  # 30 distinct tokens
    rng = np.random.default_rng(0)
    assert reduce_ids(ids, "truncate", 10, rng) == ids[:10]
    r = reduce_ids(ids, "random", 10, rng)
    assert len(r) == 10 and _is_subsequence(r, ids) and r != ids[:10]
    b = reduce_ids(ids, "block", 10, rng)
    assert len(b) == 10 and b == list(range(b[0], b[0] + 10))
    prio = [2] * 30
    prio[5] = prio[20] = prio[25] = 0
    prio[3] = prio[28] = 1
    s = reduce_ids(ids, "syntax", 6, rng, prio)
    assert s == [100, 103, 105, 120, 125, 128]  # 3 nouns, 2 adjectives, then the earliest other, in order
    for kind in reductions.TEXT.names():  # short captions are never cut
        assert reduce_ids(ids[:4], kind, 10, rng, prio[:4]) == ids[:4]
