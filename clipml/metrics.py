"""Multi-label metrics (METHODS §9): AP/mAP, the CP/CR/CF1/OP/OR/OF1 family, top-k, sweeps.

All values are fractions in [0, 1]; the papers print them x 100. Labels use clipml's codes:
1 positive, 0 negative, -1 ignore (left out of that class's ranking and counts).

Ties: images with equal scores form one threshold, as in scikit-learn, so the result does
not depend on the order of tied images. The non-interpolated AP equals
`sklearn.metrics.average_precision_score` exactly, ties included; the interpolated AP
(VOC 2010+ all-point) applies the precision envelope to the same tie-grouped curve.
Everything is numpy: one sort of each class column, then per class a binary search of its
positives' scores (no loop over images); precision is needed only at the positives' thresholds.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from clipml.errors import DataError

PROPORTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))
"""The known-label proportions of the papers' "Avg." column."""


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _inputs(scores, labels):
    scores, labels = _numpy(scores), _numpy(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise DataError(f"scores {scores.shape} and labels {labels.shape} must be matching [images, classes] arrays")
    if not np.isfinite(scores).all():
        raise DataError("scores contain NaN or infinite values")
    bad = ~np.isin(labels, (1, 0, -1))
    if bad.any():
        raise DataError(f"labels must be 1, 0 or -1 (ignore), found {np.unique(labels[bad])[:5].tolist()}")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    return scores, labels.astype(np.int8, copy=False)


def average_precision(scores, labels, interpolated: bool = True) -> np.ndarray:
    """Per-class AP [C]; nan for a class without a positive.

    `interpolated=True`: area under the precision envelope (max precision at any recall
    >= r), the VOC 2010+ all-point rule of METHODS §9. `False`: sum of precision x recall
    step, equal to scikit-learn's `average_precision_score`.
    """
    scores, labels = _inputs(scores, labels)
    s = np.ascontiguousarray(scores.T)  # [C, N]
    y = np.ascontiguousarray(labels.T)
    # One sort per class column; ignored entries sink below every real score.
    ranked = np.sort(np.where(y == -1, -np.inf, s), axis=1)
    n = s.shape[1]
    ap = np.full(s.shape[0], np.nan)
    for c in range(s.shape[0]):  # per class: searches over its positives only
        positives = np.sort(s[c, y[c] == 1])
        if positives.size == 0:
            continue
        # At the threshold of each positive (ties = one threshold): how many positives,
        # and how many known images, score at least as high.
        tp = positives.size - np.searchsorted(positives, positives, side="left")
        retrieved = n - np.searchsorted(ranked[c], positives, side="left")
        precision = tp / retrieved
        if interpolated:  # envelope: best precision at this recall or any higher one
            precision = np.maximum.accumulate(precision)
        ap[c] = precision.mean()
    return ap


def mean_average_precision(scores, labels, interpolated: bool = True) -> float:
    """mAP over the classes with at least one positive."""
    ap = average_precision(scores, labels, interpolated)
    if np.isnan(ap).all():
        raise DataError("no class has a positive label: mAP is undefined")
    return float(np.nanmean(ap))


def _f1_family(predicted: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """CP/CR/CF1 (per-class means over classes with a positive) and OP/OR/OF1 (pooled counts).

    A class with no predicted positive has precision 0 (as in the reference code).
    """
    valid, truth = labels != -1, labels == 1
    correct = (predicted & truth).sum(axis=0)
    predicted_n = (predicted & valid).sum(axis=0)
    truth_n = truth.sum(axis=0)
    has_pos = truth_n > 0
    if not has_pos.any():
        raise DataError("no class has a positive label: CP/CR are undefined")
    cp = float(np.mean(correct[has_pos] / np.maximum(predicted_n[has_pos], 1)))
    cr = float(np.mean(correct[has_pos] / truth_n[has_pos]))
    op = float(correct.sum() / max(predicted_n.sum(), 1))
    orec = float(correct.sum() / truth_n.sum())
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0  # noqa: E731
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orec, "OF1": f1(op, orec)}


def threshold_metrics(probs, labels, threshold: float = 0.5) -> Dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 with `probs >= threshold` predicted positive.

    `probs` must be probabilities (sigmoid of the logits): values outside [0, 1] are refused.
    """
    probs, labels = _inputs(probs, labels)
    if probs.min() < 0 or probs.max() > 1:
        raise DataError(
            f"threshold metrics need probabilities in [0, 1], found values in [{probs.min():.3g}, {probs.max():.3g}] "
            "(apply a sigmoid to logits)"
        )
    return _f1_family(probs >= threshold, labels)


def topk_metrics(scores, labels, k: int = 3, threshold: Optional[float] = None) -> Dict[str, float]:
    """The F1 family with the k highest-scoring classes of each image predicted positive.

    Ties are broken towards the lower class index. With `threshold`, a top-k class must also
    reach it (the rule of the ML-GCN/SSGRL/SARB evaluation code, there on logits >= 0).
    """
    scores, labels = _inputs(scores, labels)
    if not 1 <= k <= scores.shape[1]:
        raise DataError(f"k must be between 1 and the number of classes ({scores.shape[1]}), got {k}")
    predicted = np.zeros(scores.shape, dtype=bool)
    remaining = scores.copy()
    rows = np.arange(scores.shape[0])
    for _ in range(k):  # argmax takes the first of tied maxima: the lower class index
        best = remaining.argmax(axis=1)
        predicted[rows, best] = True
        remaining[rows, best] = -np.inf
    if threshold is not None:
        predicted &= scores >= threshold
    return _f1_family(predicted, labels)


def evaluate_scores(
    probs, labels, *, scores=None, threshold: float = 0.5, k: int = 3, interpolated: bool = True
) -> Dict[str, object]:
    """Everything of METHODS §9 for one evaluation: `mAP`, per-class `AP` (list, nan for
    classes without a positive), the F1 family at `threshold` and its top-k variant
    (keys suffixed `_top{k}`).

    Rankings (AP, top-k) use `scores` when given, e.g. logits: probabilities of scaled-cosine
    logits saturate to exactly 1.0 in floating point, and ties would destroy the ranking.
    """
    ranking = probs if scores is None else scores
    ap = average_precision(ranking, labels, interpolated)
    if np.isnan(ap).all():
        raise DataError("no class has a positive label: mAP is undefined")
    result: Dict[str, object] = {"mAP": float(np.nanmean(ap)), "AP": ap.tolist()}
    result.update(threshold_metrics(probs, labels, threshold))
    result.update({f"{key}_top{k}": value for key, value in topk_metrics(ranking, labels, k).items()})
    return result


def sweep_average(results: Mapping[float, float], expected: Optional[Sequence[float]] = PROPORTIONS) -> float:
    """Mean of a metric over known-label proportions (the papers' "Avg." column).

    With `expected` (default p = 0.1 ... 0.9) the proportions must be exactly those, so a
    partial sweep is never averaged as if it were the full one; pass None to average any set.
    """
    if not results:
        raise DataError("sweep_average: no results")
    if expected is not None:
        have = {round(float(p), 6) for p in results}
        want = {round(float(p), 6) for p in expected}
        if have != want:
            raise DataError(
                f"sweep_average: proportions {sorted(have)} differ from the expected {sorted(want)} "
                f"(missing {sorted(want - have)}, extra {sorted(have - want)}); pass expected=None to average anyway"
            )
    return float(np.mean([float(v) for v in results.values()]))
