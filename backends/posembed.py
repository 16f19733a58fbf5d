"""The fixed 2-D sin-cos position embedding both backends' image towers use (numpy; each converts)."""
from __future__ import annotations

import numpy as np


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """float32 [grid*grid, width], row-major tokens.

    The layout of open_clip ``pos_embed.get_2d_sincos_pos_embed`` (MAE/MoCo v3): the first half of the
    channels encodes the column index, the second half the row index; each half is
    [sin(pos * omega), cos(pos * omega)] with omega = 1 / temperature ** (k / (width / 4))."""
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def half(pos: np.ndarray) -> np.ndarray:
        out = pos.reshape(-1, 1) * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([half(cols), half(rows)], axis=1).astype(np.float32)
