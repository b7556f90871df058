"""Validation split carved from training data, so model selection never sees the test split,
and the checks that say when a validation or test split is too small to mean much."""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np

from clipml.data.base import POSITIVE, MultiLabelSplit
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SMALL_VALIDATION = 50  # fewer validation images than this get a warning
FEW_POSITIVES = 2  # classes with fewer known validation positives than this count as "few"


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
    if n < 2:
        raise DataError(f"split '{split.split}' of {split.dataset} has {n} image(s): at least 2 are needed to carve a "
                        f"validation part from it (data.val_fraction) and train on the rest; check data.root and "
                        f"data.train_split, or name a validation split (data.val_split)")
    if not 0 < count < n:
        raise ConfigError(f"data.val_fraction={fraction} carves {count} of the {n} images of split '{split.split}' "
                          f"of {split.dataset}; it must leave between 1 and {n - 1} for validation")
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.RandomState(seed).permutation(n)[:count]] = True
    rest = split.subset(np.flatnonzero(~chosen), split=f"{split.split}-fit")
    val = split.subset(np.flatnonzero(chosen), split=f"{split.split}-val")
    return rest, val


def require_positives(split: MultiLabelSplit) -> None:
    """A DataError naming the split, its size and the likely cause when no image has a known
    positive label: its mAP and decision thresholds are undefined."""
    if (split.targets.values == POSITIVE).any():
        return
    hint = ("a validation part carved from few images at a small p (data.known_ratio) often has none: raise "
            "data.val_fraction or data.known_ratio, or name your own validation split (data.val_split)"
            if split.split.endswith("-val") else "check that the split's labels list positives")
    raise DataError(f"split {split.dataset}/{split.split} ({len(split)} images, {split.targets.nnz} known labels) "
                    f"has no known positive label, so its mAP is undefined; {hint}")


def warn_small_validation(val: MultiLabelSplit, where: str) -> None:
    """Warn, with the numbers, when a validation split is too small for epoch selection: its mAP
    moves in big steps (a flat or jumping curve) and the best epoch is mostly chance."""
    positives = val.targets.count_per_class(POSITIVE)
    few = int((positives < FEW_POSITIVES).sum())
    none = int((positives == 0).sum())
    if len(val) >= SMALL_VALIDATION and few * 2 <= val.num_classes:
        return
    logger.warning("the validation split (%s) holds little to select epochs on: %d images, %d known positives; "
                   "%d of %d classes have fewer than %d known positives there (%d none). Validation mAP will move "
                   "in large steps and the best epoch is chosen mostly by chance: raise data.val_fraction or give "
                   "your own data.val_split",
                   where, len(val), int(positives.sum()), few, val.num_classes, FEW_POSITIVES, none)
