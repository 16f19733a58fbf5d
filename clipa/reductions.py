"""The token-reduction registries (CLIPA Sec. 3, Fig. 2): every image and text reduction a recipe can name.

An entry holds all clipa knows about a reduction: its code (numpy, run by the data pipeline both
backends share) and its published cost (the accuracy law's constant, with its source). Adding a
reduction is one ``register`` call here: the recipe's allowed values, the planner's search space,
the help text, the pipeline's mask indices and the law's strategy cost all read these entries. A new
entry adds a constant to the accuracy law, which then refits in memory at first use until
``python -m clipa.costmodels.accuracy_validate --refit`` stores the fit again (accuracy_fit.json).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from clipa.registry import Registry

Rng = np.random.Generator


@dataclass(frozen=True)
class ImageReduction:
    name: str
    help: str
    # (side, k, rng) -> raster indices (row * side + col) of the k patches kept out of side**2. None:
    # the reduction keeps every token of a smaller image (the stage's image_size) and needs no indices.
    keep: Optional[Callable[[int, int, Rng], np.ndarray]]
    # Points of zero-shot top-1 lost against resize at the same tokens (the accuracy law's constant
    # ``delta_<name>``) and the standard deviation carried for it.
    law_delta: float = 0.0
    law_delta_sd: float = 0.0

    @property
    def masks(self) -> bool:
        """Whether a batch carries ``keep`` indices (both backends gather those tokens)."""
        return self.keep is not None

    def keep_indices(self, side: int, k: int, rng: Rng) -> np.ndarray:
        """int32 [k] sorted indices of the kept patches of a ``side`` x ``side`` grid."""
        if not 0 < k <= side * side:
            raise ValueError(f"keep {k} tokens out of {side * side}")
        return np.sort(self.keep(side, k, rng)).astype(np.int32)


def _random(side: int, k: int, rng: Rng) -> np.ndarray:
    return rng.choice(side * side, size=k, replace=False)


def _grid(side: int, k: int, rng: Rng) -> np.ndarray:
    """The grid cut into g x g cells, g = ceil(sqrt(N / k)) (2 x 2 at CLIPA's 75 % ratio); kept patches
    spread evenly over the cells (one per cell before any cell gets a second), random inside each cell."""
    n = side * side
    g = max(1, math.ceil(math.sqrt(n / k) - 1e-9))
    rows, cols = np.divmod(np.arange(n), side)
    cell = (rows // g) * (-(-side // g)) + cols // g
    # rank of each patch inside its cell, in a random order
    rank = np.empty(n, np.int64)
    seen: dict[int, int] = {}
    for p in rng.permutation(n):
        c = int(cell[p])
        rank[p] = seen.get(c, 0)
        seen[c] = rank[p] + 1
    tie = rng.random(n)  # which cells get their (r+1)-th patch first
    return np.lexsort((tie, rank))[:k]


def _block(side: int, k: int, rng: Rng) -> np.ndarray:
    """A random near-square block of ceil(sqrt(k)) rows; its first k patches in raster order (one
    contiguous region, the spatial opposite of grid_mask)."""
    h = min(side, math.ceil(math.sqrt(k)))
    w = min(side, math.ceil(k / h))
    top = int(rng.integers(0, side - h + 1))
    left = int(rng.integers(0, side - w + 1))
    rr, cc = np.meshgrid(np.arange(top, top + h), np.arange(left, left + w), indexing="ij")
    return (rr * side + cc).reshape(-1)[:k]


IMAGE = Registry[ImageReduction]("image reduction")
# Masking costs more than resizing, and fine-tuning does not recover it: L/16 at 75% token reduction,
# after fine-tune, resize 68.9, block 68.5, random 67.6, grid 67.3 (CLIPA paper Fig. 4 via
# ext_clipa_inverse_scaling.csv rows 28-31, third_party_unverified): the deltas below. Unverified
# third-party readings: +-0.5 point each is carried as their standard deviation. The order is the
# accuracy law's parameter order (costmodels/data/accuracy_fit.json) and the search space's.
for _r in (
    ImageReduction("resize", "a smaller image: every patch token of it (the law's reference)", None),
    ImageReduction("block_mask", "one random contiguous block of patches", _block, 68.9 - 68.5, 0.5),
    ImageReduction("random_mask", "patches drawn uniformly without replacement", _random, 68.9 - 67.6, 0.5),
    ImageReduction("grid_mask", "patches spread evenly over a grid of cells", _grid, 68.9 - 67.3, 0.5),
):
    IMAGE.register(_r)


@dataclass(frozen=True)
class TextReduction:
    name: str
    help: str
    # (n, budget, rng, priorities) -> positions of the ``budget`` ids kept out of n (budget < n).
    keep: Callable[[int, int, Rng, Optional[np.ndarray]], np.ndarray]
    # Reads each token's part-of-speech priority (backends/data/syntax_prep.py, spaCy).
    needs_pos: bool = False
    # The accuracy law's multiplier on the text penalty (``mult_<name>``), against syntax, and its sd.
    law_mult: float = 1.0
    law_mult_sd: float = 0.0

    def reduce(self, ids: Sequence[int], budget: int, rng: Rng,
               priorities: Optional[Sequence[int]] = None) -> list[int]:
        """At most ``budget`` of ``ids``, in their original order; a caption that fits is kept whole."""
        n = len(ids)
        if n <= budget:
            return list(ids)
        if self.needs_pos and (priorities is None or len(priorities) != n):
            raise ValueError(f"{self.name} reduction needs one priority per token")
        prio = None if priorities is None else np.asarray(priorities)
        return [ids[i] for i in np.sort(self.keep(n, budget, rng, prio))]


def _syntax(n: int, budget: int, rng: Rng, prio) -> np.ndarray:
    return np.lexsort((np.arange(n), prio))[:budget]


def _truncate(n: int, budget: int, rng: Rng, prio) -> np.ndarray:
    return np.arange(budget)


def _random_subset(n: int, budget: int, rng: Rng, prio) -> np.ndarray:
    return rng.choice(n, size=budget, replace=False)


def _block_run(n: int, budget: int, rng: Rng, prio) -> np.ndarray:
    start = int(rng.integers(0, n - budget + 1))
    return np.arange(start, start + budget)


TEXT = Registry[TextReduction]("text reduction")
# Multipliers: CLIPA paper Fig. 7 as read by a third party (ext_clipa_inverse_scaling.csv rows 32-35:
# B/16 at 4 text tokens loses ~3.0 (syntax), ~4-5 (truncate, random), ~4 (block) points) -> 4.5/3,
# 4.5/3, 4/3. Read off a figure: +-0.17 (the "4-5" range / 3 / 2) is carried as their sd. The order
# is the law's parameter order and the search space's. Syntax: nouns first, then adjectives, then the
# rest (CLIPA's ranking; earlier words first within a class), re-sorted into the caption's order.
for _t in (
    TextReduction("syntax", "nouns, then adjectives, then the rest (the law's reference)", _syntax, needs_pos=True),
    TextReduction("truncate", "the first tokens", _truncate, law_mult=4.5 / 3, law_mult_sd=0.17),
    TextReduction("random", "a random subset, in order", _random_subset, law_mult=4.5 / 3, law_mult_sd=0.17),
    TextReduction("block", "a random contiguous run", _block_run, law_mult=4.0 / 3, law_mult_sd=0.17),
):
    TEXT.register(_t)
