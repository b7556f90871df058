"""mAP broken down by how many labels an image has and by object size (METHODS §11): where
a method that separates classes (a decoupler) should gain over a single global feature.

Both read the scores at the known entries (clipml.known_scores). On a split with unknown entries
(Open Images, LVIS, a partial manifest) a bucket scores a class only where it has a known positive
and a known negative among the bucket's entries, the partial rule of the headline mAP
(clipml.metrics.class_coverage); on a complete split, every class with a positive there, as before.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from clipml.data.base import MultiLabelSplit
from clipml.errors import DataError
from clipml.known_scores import KnownScores
from clipml.metrics import known_average_precision

LABEL_BUCKETS: Tuple[Tuple[str, int, Optional[int]], ...] = (("1", 1, 1), ("2-3", 2, 3), ("4+", 4, None))
"""(name, least, most) positive labels per image; None: no upper bound."""

SIZE_THRESHOLDS = (0.02, 0.10)
"""Object area as a share of the image: small below the first, large from the second on."""
SIZE_BUCKETS = ("small", "medium", "large")


def _bucket_map(known: KnownScores, complete: bool, kind: str) -> Optional[float]:
    """mAP of the entries in `known` (one bucket); on a partial split (not `complete`) only over
    the classes with a known negative there too. None where no class qualifies."""
    ap = known_average_precision(known, kind)
    if not complete:
        ap = np.where(known.counts(known.labels == 0) > 0, ap, np.nan)
    return None if np.isnan(ap).all() else float(np.nanmean(ap))


def _known(scores, labels) -> KnownScores:
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape or labels.ndim != 2:
        raise DataError(f"scores {scores.shape} and labels {labels.shape} must be matching [images, classes] arrays")
    return KnownScores.from_dense(scores, labels)


def map_by_label_count(scores, labels, buckets=LABEL_BUCKETS, kind: str = "envelope") -> Dict[str, object]:
    """mAP on the images with 1, 2-3 and 4+ positive labels (known positives; images
    without one fall in no bucket). Each bucket's mAP is over the classes with a positive
    among its images (and, on a partial split, a known negative); None for a bucket without any.

    Returns `mAP_by_labels` and `images_by_labels`, both keyed by bucket name.
    """
    return known_map_by_label_count(_known(scores, labels), buckets, kind)


def known_map_by_label_count(known: KnownScores, buckets=LABEL_BUCKETS, kind: str = "envelope") -> Dict[str, object]:
    """`map_by_label_count` from the scores at the known entries."""
    count = np.bincount(known.rows[known.labels == 1], minlength=known.shape[0])
    result: Dict[str, Dict[str, object]] = {"mAP_by_labels": {}, "images_by_labels": {}}
    for name, least, most in buckets:
        rows = (count >= least) & (count <= (np.inf if most is None else most))
        result["images_by_labels"][name] = int(rows.sum())
        result["mAP_by_labels"][name] = (_bucket_map(known.select(rows[known.rows]), known.complete, kind)
                                         if rows.any() else None)
    return result


def object_sizes(split: MultiLabelSplit) -> np.ndarray:
    """[N, C]: per image and class, the area share of the class's largest object (nan where
    the image has none); from `split.object_areas`, so datasets with recorded areas (COCO)
    decode no mask."""
    sizes = np.full((len(split), split.num_classes), np.nan)
    for index in range(len(split)):
        for class_index, share in split.object_areas(index) or ():
            if not 0 <= class_index < split.num_classes:
                raise DataError(f"{split.dataset}/{split.split}: image {split.items[index]!r} has an object "
                                f"of class index {class_index}, expected 0..{split.num_classes - 1}")
            sizes[index, class_index] = np.fmax(sizes[index, class_index], share)
    return sizes


def map_by_object_size(scores, labels, sizes, thresholds: Sequence[float] = SIZE_THRESHOLDS,
                       kind: str = "envelope") -> Dict[str, object]:
    """mAP by object size: small (share < thresholds[0]), medium, large (>= thresholds[1]).

    `sizes` [N, C] is the area share of the image that each positive's largest object of
    its class covers (`object_sizes`). A class's AP in a bucket ranks the positives of that
    bucket against all the class's negatives; its other positives are left out, as are
    positives without a size. The shares are relative because images differ in size: the
    defaults (2 % and 10 %) suit the synthetic world's 96-128 px scenes, where COCO's
    absolute convention (small < 32^2 px, large >= 96^2 px, about 0.3 % and 3 % of a
    640 x 480 image) would put nearly every object in "large".

    Returns `mAP_by_size` (None for an empty bucket) and `positives_by_size`.
    """
    scores, labels, sizes = np.asarray(scores), np.asarray(labels), np.asarray(sizes, dtype=np.float64)
    if not scores.shape == labels.shape == sizes.shape or labels.ndim != 2:
        raise DataError(f"scores {scores.shape}, labels {labels.shape} and sizes {sizes.shape} "
                        "must be matching [images, classes] arrays")
    known = KnownScores.from_dense(scores, labels)
    return known_map_by_object_size(known, sizes[known.rows, known.cols], thresholds, kind)


def known_map_by_object_size(known: KnownScores, sizes: np.ndarray, thresholds: Sequence[float] = SIZE_THRESHOLDS,
                             kind: str = "envelope") -> Dict[str, object]:
    """`map_by_object_size` from the scores at the known entries and the sizes there [nnz]."""
    small, large = thresholds
    if not 0 < small <= large <= 1:
        raise DataError(f"size thresholds must satisfy 0 < small <= large <= 1, got {tuple(thresholds)}")
    positive = known.labels == 1
    sized = ~np.isnan(sizes)
    buckets = {"small": sized & (sizes < small), "medium": sized & (sizes >= small) & (sizes < large),
               "large": sized & (sizes >= large)}
    result: Dict[str, Dict[str, object]] = {"mAP_by_size": {}, "positives_by_size": {}}
    for name in SIZE_BUCKETS:
        inside = positive & buckets[name]
        result["positives_by_size"][name] = int(inside.sum())
        result["mAP_by_size"][name] = (_bucket_map(known.select(~positive | inside), known.complete, kind)
                                       if inside.any() else None)
    return result
