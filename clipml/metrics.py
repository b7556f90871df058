"""Multi-label metrics (METHODS §9): AP/mAP, the CP/CR/CF1/OP/OR/OF1 family, top-k, sweeps,
and per-class decision thresholds chosen on a validation split.

All values are fractions in [0, 1]; the papers print them x 100. Labels use clipml's codes:
1 positive, 0 negative, -1 ignore (left out of that class's ranking and counts).

Which AP (`AP_KINDS`): "envelope" is the VOC 2010+ all-point AP (area under the precision
envelope), as the SARB/DSRB evaluation code; "raw" is the non-interpolated AP of DualCoOp's and
ASL's code (equal to `sklearn.metrics.average_precision_score`), about 0.4-0.5 mAP lower on a
realistic case; "voc07" is VOC 2007's 11-point AP. A table compared with a paper uses its AP.

Which classes count (`class_coverage`): mAP averages the AP of the classes with at least one
known positive and one known negative, the rule of CSL's `AP_partial` for natively partial test
splits (Open Images, LVIS). A class without a known positive has no AP; one without a known
negative scores a perfect AP whatever the model does. Both are left out and counted, so a summary
can say how many classes were scored and why the others were not. On a fully labelled test split
(COCO, VOC, NUS) every class with a positive has negatives, and nothing changes.

Ties: images with equal scores form one threshold, as in scikit-learn, so the result does
not depend on the order of tied images; all three kinds read the same tie-grouped curve.
Everything is numpy: one sort of each class column, then per class a binary search of its
positives' scores (no loop over images); precision is needed only at the positives' thresholds.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from clipml.errors import ConfigError, DataError
from clipml.known_scores import KnownScores, top_k_mask

PROPORTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))
"""The known-label proportions of the papers' "Avg." column."""

AP_KINDS = ("envelope", "raw", "voc07")
TOP_K = 3
TOP_K_RULES = ("reference", "plain")
"""reference: a top-k class counts only if its logit is >= 0 (ML-GCN/SARB/DSRB code); plain: any top-k class."""


def sigmoid(logits) -> np.ndarray:
    """Probabilities of logits, in float64 (a logit below about -709 gives exactly 0, silently)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


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


def average_precision(scores, labels, kind: str = "envelope") -> np.ndarray:
    """Per-class AP [C]; nan for a class without a positive.

    `kind="envelope"`: area under the precision envelope (max precision at any recall >= r),
    the VOC 2010+ all-point rule of METHODS §9. `"raw"`: sum of precision x recall step, equal
    to scikit-learn's `average_precision_score`. `"voc07"`: mean over recall levels
    0, 0.1, ..., 1 of the best precision at that recall or higher (VOC 2007 devkit).
    """
    if kind not in AP_KINDS:
        raise DataError(f"AP kind must be one of {AP_KINDS}, got {kind!r}")
    scores, labels = _inputs(scores, labels)
    return known_average_precision(KnownScores.from_dense(scores, labels), kind)


def known_average_precision(known: KnownScores, kind: str = "envelope") -> np.ndarray:
    """Per-class AP [C] from the known entries alone (`average_precision`'s kinds); nan for a
    class without a known positive."""
    if kind not in AP_KINDS:
        raise DataError(f"AP kind must be one of {AP_KINDS}, got {kind!r}")
    ap = np.full(known.shape[1], np.nan)
    for c, scores, positive in known.by_class():
        if positive.any():
            ap[c] = class_average_precision(scores, positive, kind)
    return ap


_VOC07_LEVELS = np.arange(0.0, 1.1, 0.1)  # the devkit's recall levels, float rounding included


def class_average_precision(scores: np.ndarray, positive: np.ndarray, kind: str) -> float:
    """AP of one class over its known entries (`scores`, `positive` flags; at least one positive)."""
    ranked = np.sort(scores)
    positives = np.sort(scores[positive])
    # At the threshold of each positive (ties = one threshold): how many positives, and how
    # many known images, score at least as high.
    tp = positives.size - np.searchsorted(positives, positives, side="left")
    retrieved = ranked.size - np.searchsorted(ranked, positives, side="left")
    precision = tp / retrieved
    if kind == "raw":
        return float(precision.mean())
    # Envelope: best precision at this recall or any higher one (positives run from the
    # lowest score, i.e. the highest recall, upwards).
    envelope = np.maximum.accumulate(precision)
    if kind == "envelope":
        return float(envelope.mean())
    # voc07: recall falls along the positives, so the points with recall >= t are a prefix of
    # them and the best precision there is the envelope at its end.
    recall = tp / positives.size
    count = (recall[None, :] >= _VOC07_LEVELS[:, None]).sum(axis=1)
    return float(np.where(count > 0, envelope[np.maximum(count - 1, 0)], 0.0).mean())


def precision_recall_curve(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of one class at each distinct score threshold, from the highest
    recall down, ending at (1, 0): scikit-learn's `precision_recall_curve` convention. Unknown
    (-1) entries are left out; a class without a positive is a DataError."""
    scores, labels = _inputs(np.reshape(scores, (-1, 1)), np.reshape(labels, (-1, 1)))
    known = labels[:, 0] != -1
    scores, positive = scores[known, 0], labels[known, 0] == 1
    if not positive.any():
        raise DataError("a precision-recall curve needs at least one positive")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # the last image of each tied group
    tp = np.cumsum(positive)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


COVERAGE_REASONS = ("no known label", "no known positive", "no known negative")
"""Why a class is not scored, in the order they are checked (each class gets the first that holds)."""


def class_coverage(labels) -> Dict[str, object]:
    """Which classes an mAP scores: `scored` [C] bool (at least one known positive and one known
    negative), `reason` [C] ("" where scored, else one of COVERAGE_REASONS) and the counts
    `classes`, `scored_classes` and one per reason (`no_known_label`, ...)."""
    labels = _numpy(labels)
    if labels.ndim != 2:
        raise DataError(f"labels must be an [images, classes] array, got shape {labels.shape}")
    return coverage_of_counts((labels == 1).sum(axis=0), (labels == 0).sum(axis=0))


def coverage_of_counts(positives: np.ndarray, negatives: np.ndarray) -> Dict[str, object]:
    """`class_coverage` from the known positives and negatives [C] of each class."""
    positive, negative = np.asarray(positives) > 0, np.asarray(negatives) > 0
    reason = np.full(positive.size, "", dtype=object)
    reason[positive & ~negative] = "no known negative"
    reason[~positive & negative] = "no known positive"
    reason[~positive & ~negative] = "no known label"
    scored = positive & negative
    counts = {name.replace(" ", "_"): int((reason == name).sum()) for name in COVERAGE_REASONS}
    return {"scored": scored, "reason": reason.tolist(), "classes": int(positive.size),
            "scored_classes": int(scored.sum()), **counts}


def coverage_text(coverage: Mapping[str, object]) -> str:
    """'scored 4,728 of 7,186 classes; 2,400 without a known positive, 58 without a known negative'."""
    text = f"scored {coverage['scored_classes']:,} of {coverage['classes']:,} classes"
    missing = [f"{coverage[name.replace(' ', '_')]:,} with {name}".replace("with no known", "without a known")
               for name in COVERAGE_REASONS if coverage[name.replace(" ", "_")]]
    return text + ("; " + ", ".join(missing) if missing else "")


def _scored_map(ap: np.ndarray, coverage: Mapping[str, object]) -> Tuple[np.ndarray, float]:
    """(AP [C] with nan for the classes `coverage` (`class_coverage`) does not score, their mean)."""
    ap = np.where(coverage["scored"], ap, np.nan)
    if not coverage["scored_classes"]:
        raise DataError(f"no class has both a known positive and a known negative label, so mAP is undefined "
                        f"({coverage_text(coverage)})")
    return ap, float(np.nanmean(ap))


def mean_average_precision(scores, labels, kind: str = "envelope") -> float:
    """mAP over the classes with at least one known positive and one known negative (`class_coverage`)."""
    return _scored_map(average_precision(scores, labels, kind), class_coverage(labels))[1]


def _f1_family(predicted: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """The F1 family of a boolean [N, C] prediction against 1/0/-1 labels (see `_f1_counts`)."""
    valid, truth = labels != -1, labels == 1
    return _f1_counts((predicted & truth).sum(axis=0), (predicted & valid).sum(axis=0), truth.sum(axis=0))


def _known_f1_family(known: KnownScores, predicted: np.ndarray) -> Dict[str, float]:
    """The F1 family of a prediction [nnz] at the known entries."""
    truth = known.labels == 1
    return _f1_counts(known.counts(predicted & truth), known.counts(predicted), known.counts(truth))


def _f1_counts(correct: np.ndarray, predicted_n: np.ndarray, truth_n: np.ndarray) -> Dict[str, float]:
    """CP/CR/CF1 (per-class means over classes with a positive) and OP/OR/OF1 (pooled counts),
    from per-class counts of correct predictions, predictions on known entries and positives.

    CF1 is 2·CP·CR/(CP + CR), the ML-GCN/SSGRL/SARB formula; CF1_mean is the mean of the
    per-class F1s over the same classes, what DualCoOp's evaluation code reports as CF1.
    A class with no predicted positive has precision 0 (as in the reference code).
    """
    has_pos = truth_n > 0
    if not has_pos.any():
        raise DataError("no class has a positive label: CP/CR are undefined")
    cp = float(np.mean(correct[has_pos] / np.maximum(predicted_n[has_pos], 1)))
    cr = float(np.mean(correct[has_pos] / truth_n[has_pos]))
    op = float(correct.sum() / max(predicted_n.sum(), 1))
    orec = float(correct.sum() / truth_n.sum())
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0  # noqa: E731
    cf1_mean = float(np.mean(2 * correct[has_pos] / (predicted_n[has_pos] + truth_n[has_pos])))
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "CF1_mean": cf1_mean, "OP": op, "OR": orec, "OF1": f1(op, orec)}


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
    predicted = top_k_mask(scores, k)
    if threshold is not None:
        predicted &= scores >= threshold
    return _f1_family(predicted, labels)


def evaluate_scores(
    probs, labels, *, scores=None, threshold: float = 0.5, k: int = TOP_K, ap: str = "envelope",
    top_k_rule: str = "reference", tuned_thresholds=None,
) -> Dict[str, object]:
    """Everything of METHODS §9 for one evaluation: `mAP` (AP of kind `ap`), per-class `AP`
    (list, nan for classes without a positive), the F1 family at `threshold` and its top-k
    variant: keys suffixed `_top{k}` under the reference rule (a top-k class counts only if
    its probability is >= 0.5, i.e. its logit >= 0), `_top{k}_plain` under the plain one. With
    fewer than k classes the top-k keys are left out (there are no k classes to choose).
    `tuned_thresholds` [C] (on the ranking scores) adds the F1 family at them, suffixed `_tuned`.

    Rankings (AP, top-k, tuned thresholds) use `scores` when given, e.g. logits: probabilities
    of scaled-cosine logits saturate to exactly 1.0 in floating point, and ties would destroy
    the ranking.

    mAP and `AP` cover the classes `class_coverage` scores (nan for the others); `coverage`
    holds its counts and per-class `reason`, `coverage_text` the sentence a summary shows.
    """
    probs, labels = _inputs(probs, labels)
    if probs.min(initial=0) < 0 or probs.max(initial=1) > 1:
        raise DataError(f"threshold metrics need probabilities in [0, 1], found values in [{probs.min():.3g}, "
                        f"{probs.max():.3g}] (apply a sigmoid to logits)")
    if scores is not None:
        scores = _inputs(scores, labels)[0]
    if top_k_rule not in TOP_K_RULES:
        raise DataError(f"top-k rule must be one of {TOP_K_RULES}, got {top_k_rule!r}")
    known = KnownScores.from_dense(probs, labels, scores, k=k if labels.shape[1] >= k else 0)
    return evaluate_known(known, threshold=threshold, ap=ap, top_k_rule=top_k_rule, tuned_thresholds=tuned_thresholds,
                          logits=scores is not None)


def evaluate_known(known: KnownScores, *, threshold: float = 0.5, ap: str = "envelope",
                   top_k_rule: str = "reference", tuned_thresholds=None, logits: bool = True) -> Dict[str, object]:
    """`evaluate_scores` from the scores at the known entries alone (`logits`: whether
    `known.ranking` holds logits, whose reference top-k threshold is 0, or probabilities: 0.5)."""
    if top_k_rule not in TOP_K_RULES:
        raise DataError(f"top-k rule must be one of {TOP_K_RULES}, got {top_k_rule!r}")
    coverage = coverage_of_counts(known.counts(known.labels == 1), known.counts(known.labels == 0))
    average, mean = _scored_map(known_average_precision(known, ap), coverage)
    coverage = {key: value for key, value in coverage.items() if key != "scored"}
    result: Dict[str, object] = {"mAP": mean, "AP": average.tolist(), "coverage": coverage,
                                 "coverage_text": coverage_text(coverage)}
    result.update(_known_f1_family(known, known.probs >= threshold))
    if known.k:
        top = known.top
        if top_k_rule == "reference":  # logit >= 0 is probability >= 0.5
            top = top & (known.ranking >= (0.0 if logits else 0.5))
        suffix = f"_top{known.k}" + ("_plain" if top_k_rule == "plain" else "")
        result.update({key + suffix: value for key, value in _known_f1_family(known, top).items()})
    if tuned_thresholds is not None:
        tuned = _known_f1_family(known, known.ranking >= np.asarray(tuned_thresholds)[known.cols])
        result.update({key + "_tuned": value for key, value in tuned.items()})
    return result


def _best_f1_cut(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold t maximising F1 of `scores >= t` (ties form one cut; the highest such t
    wins a tie in F1): midway between the last score taken and the next one below it."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order]
    tp = np.cumsum(hits)
    f1 = 2 * tp / (np.arange(1, len(ranked) + 1) + hits.sum())  # 2PR/(P+R) = 2tp/(predicted + positives)
    f1[:-1][ranked[1:] == ranked[:-1]] = -1  # a cut inside a group of tied scores is impossible
    best = int(np.argmax(f1))
    return float(ranked[best] if best + 1 == len(ranked) else (ranked[best] + ranked[best + 1]) / 2)


def f1_thresholds(scores, labels, min_positives: int = 1) -> Tuple[np.ndarray, float, np.ndarray]:
    """Per-class decision thresholds on `scores` [N, C] (e.g. validation logits) with 1/0/-1
    `labels`: `known_f1_thresholds` of their known entries."""
    scores, labels = _inputs(scores, labels)
    return known_f1_thresholds(KnownScores.from_dense(scores, labels), min_positives)


def known_f1_thresholds(known: KnownScores, min_positives: int = 1) -> Tuple[np.ndarray, float, np.ndarray]:
    """Per-class decision thresholds on the ranking scores of the known entries, each maximising
    that class's F1 over its known entries: (thresholds [C], global, fallback [C] bool). Reads the
    known entries only, so a validation split of thousands of classes needs no [N, C] matrix.

    `global` maximises the pooled F1 (OF1) over all known entries; classes with fewer than
    `min_positives` known positives (`fallback`) get it: a class's own F1 maximum over one or
    two positives is noise (it can sit far below every negative).
    """
    if min_positives < 1:
        raise ConfigError(f"min_positives must be at least 1, got {min_positives}")
    if not (known.labels == 1).any():
        raise DataError("no positive label: decision thresholds are undefined")
    global_threshold = _best_f1_cut(known.ranking.astype(np.float64), known.labels == 1)
    thresholds = np.full(known.shape[1], global_threshold)
    fallback = np.ones(known.shape[1], dtype=bool)
    for c, column, truth in known.by_class():
        if truth.sum() >= min_positives:
            thresholds[c], fallback[c] = _best_f1_cut(column.astype(np.float64), truth), False
    return thresholds, global_threshold, fallback


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
