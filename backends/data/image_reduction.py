"""Image token reduction by masking: which patch tokens a sample keeps (CLIPA Sec. 3, Fig. 2).

``keep_indices`` returns the sorted raster indices (row * side + col) of the K kept patches of a
``side`` x ``side`` grid; both backends gather these tokens after the position embedding. The
``resize`` reduction keeps every token of a smaller image and needs no indices.
"""
from __future__ import annotations

import math

import numpy as np

MASK_KINDS = ("random_mask", "grid_mask", "block_mask")


def keep_indices(kind: str, side: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """int32 [k] sorted indices of kept patches out of ``side**2``.

    random_mask: k patches uniformly without replacement.
    grid_mask: the grid is cut into g x g cells, g = ceil(sqrt(N / k)) (2 x 2 at CLIPA's 75 % ratio);
      kept patches are spread evenly over the cells (one per cell before any cell gets a second),
      random inside each cell.
    block_mask: a random near-square block of ceil(sqrt(k)) rows; the first k patches of it in
      raster order are kept (one contiguous region, the spatial opposite of grid_mask).
    """
    n = side * side
    if not 0 < k <= n:
        raise ValueError(f"keep {k} tokens out of {n}")
    if kind == "random_mask":
        idx = rng.choice(n, size=k, replace=False)
    elif kind == "grid_mask":
        g = max(1, math.ceil(math.sqrt(n / k) - 1e-9))
        rows, cols = np.divmod(np.arange(n), side)
        cell = (rows // g) * (-(-side // g)) + cols // g
        # rank of each patch inside its cell, in a random order
        perm = rng.permutation(n)
        rank = np.empty(n, np.int64)
        seen: dict[int, int] = {}
        for p in perm:
            c = int(cell[p])
            rank[p] = seen.get(c, 0)
            seen[c] = rank[p] + 1
        tie = rng.random(n)  # which cells get their (r+1)-th patch first
        idx = np.lexsort((tie, rank))[:k]
    elif kind == "block_mask":
        h = min(side, math.ceil(math.sqrt(k)))
        w = min(side, math.ceil(k / h))
        top = int(rng.integers(0, side - h + 1))
        left = int(rng.integers(0, side - w + 1))
        rr, cc = np.meshgrid(np.arange(top, top + h), np.arange(left, left + w), indexing="ij")
        idx = (rr * side + cc).reshape(-1)[:k]
    else:
        raise ValueError(f"unknown mask kind {kind!r}; known: {', '.join(MASK_KINDS)}")
    return np.sort(idx).astype(np.int32)
