"""Validation split carved from training data, so model selection never sees the test split."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from clipml.data.base import MultiLabelSplit
from clipml.errors import ConfigError


def carve_validation(
    split: MultiLabelSplit, fraction: float = 0.1, seed: int = 0, count: Optional[int] = None
) -> Tuple[MultiLabelSplit, MultiLabelSplit]:
    """(rest, validation): a seeded random `count` (or `fraction`) of `split`'s images.

    Both parts keep the original image order. Carve *after* masking a training split, so
    the training images keep the published protocol's masks; the validation part then has
    partial labels, whose unknown entries evaluation ignores.
    """
    n = len(split)
    if count is None:
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"validation fraction (data.val_fraction) must be in (0, 1), got {fraction}")
        count = int(round(fraction * n))
    if not 0 < count < n:
        raise ConfigError(f"validation size (data.val_fraction) must be between 1 and {n - 1} images of {split.dataset}/{split.split}, got {count}")
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.RandomState(seed).permutation(n)[:count]] = True
    rest = split.subset(np.flatnonzero(~chosen), split=f"{split.split}-fit")
    val = split.subset(np.flatnonzero(chosen), split=f"{split.split}-val")
    return rest, val
