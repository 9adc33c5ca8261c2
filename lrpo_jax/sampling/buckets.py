"""Shape buckets and padding, so a run compiles a small fixed set of programs."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pick_bucket(n: int, buckets: Sequence[int] | None, what: str = "length") -> int:
    """Smallest bucket >= n (buckets=None: n itself). Errors when n exceeds every bucket."""
    if not buckets:
        return n
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"{what} {n} exceeds the largest configured bucket {max(buckets)}; "
                     f"add a bigger bucket or shorten the input")


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to `length`. Returns (tokens int32 [N, length], mask int32 [N, length])."""
    tokens = np.full((len(rows), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the padded length {length}")
        if len(row):
            tokens[i, length - len(row):] = row
            mask[i, length - len(row):] = 1
    return tokens, mask


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Per-row positions for padded rows: 0 at the first real token, pads clamped to 0."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)
