"""Metrics against scikit-learn, brute-force loops and hand-computed cases."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from clipml.errors import DataError
from clipml.metrics import (
    PROPORTIONS,
    average_precision,
    evaluate_scores,
    mean_average_precision,
    sweep_average,
    threshold_metrics,
    topk_metrics,
)


def random_case(n=300, c=12, seed=0, decimals=None, ignore=0.0):
    rng = np.random.RandomState(seed)
    scores = rng.random_sample((n, c))
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties
    labels = (rng.random_sample((n, c)) < 0.25).astype(np.int8)
    labels[:, 0] = 0
    labels[5, 0] = 1  # a class with a single positive
    if ignore:
        labels[rng.random_sample((n, c)) < ignore] = -1
    return scores, labels


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_noninterpolated_equals_sklearn_including_ties(decimals):
    scores, labels = random_case(decimals=decimals)
    ours = average_precision(scores, labels, kind="raw")
    for c in range(labels.shape[1]):
        assert ours[c] == pytest.approx(average_precision_score(labels[:, c], scores[:, c]), abs=1e-12)


def test_ignored_entries_are_left_out_of_the_ranking():
    scores, labels = random_case(decimals=2, ignore=0.2)
    for kind in ("raw", "envelope", "voc07"):
        ours = average_precision(scores, labels, kind=kind)
        for c in range(labels.shape[1]):
            keep = labels[:, c] != -1
            alone = average_precision(scores[keep, c : c + 1], labels[keep, c : c + 1], kind=kind)
            assert ours[c] == pytest.approx(alone[0], abs=1e-12)
            if kind == "raw":
                assert ours[c] == pytest.approx(average_precision_score(labels[keep, c], scores[keep, c]), abs=1e-12)


def voc_devkit_ap(scores, labels):
    """Brute force VOC 2010+ AP: per-rank precision/recall, envelope, area (distinct scores)."""
    order = np.argsort(-scores)
    tp = fp = 0
    recall, precision = [0.0], [0.0]
    for i in order:
        tp += labels[i] == 1
        fp += labels[i] == 0
        recall.append(tp / (labels == 1).sum())
        precision.append(tp / (tp + fp))
    for k in range(len(precision) - 2, -1, -1):
        precision[k] = max(precision[k], precision[k + 1])
    return sum((recall[k] - recall[k - 1]) * precision[k] for k in range(1, len(recall)))


def test_interpolated_equals_brute_force_envelope():
    scores, labels = random_case(n=200, c=6, seed=3)
    ours = average_precision(scores, labels, kind="envelope")
    for c in range(labels.shape[1]):
        assert ours[c] == pytest.approx(voc_devkit_ap(scores[:, c], labels[:, c]), abs=1e-12)


def test_hand_computed_ap():
    # ranking P N N P P: precision at the positives 1, 2/4, 3/5
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    labels = np.array([[1], [0], [0], [1], [1]])
    assert average_precision(scores, labels, kind="raw")[0] == pytest.approx((1 + 0.5 + 0.6) / 3)
    assert average_precision(scores, labels, kind="envelope")[0] == pytest.approx((1 + 0.6 + 0.6) / 3)
    # a tie between a positive and a negative is one threshold: precision 1/2 there
    scores = np.array([[0.9], [0.9], [0.1]])
    labels = np.array([[1], [0], [1]])
    assert average_precision(scores, labels, kind="raw")[0] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(scores, labels, kind="envelope")[0] == pytest.approx(2 / 3)
    # the order of tied images does not matter
    assert average_precision(scores[[1, 0, 2]], labels[[1, 0, 2]])[0] == pytest.approx(2 / 3)


def test_classes_without_positive_are_nan_and_skipped_in_map():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.5, 0.3]])
    labels = np.array([[1, 0], [0, -1], [0, 0]])
    ap = average_precision(scores, labels)
    assert ap[0] == 1.0 and np.isnan(ap[1])
    assert mean_average_precision(scores, labels) == 1.0
    with pytest.raises(DataError, match="no class has both a known positive and a known negative"):
        mean_average_precision(scores, np.zeros_like(labels))


def test_threshold_metrics_hand_case():
    probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.4], [0.8, 0.3, 0.55], [0.95, 0.9, 0.9]])
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 1], [-1, -1, 0]])
    # predicted (>= 0.5) among valid entries: class0 rows 0,2 (both right); class1 rows 0,1 (1 right);
    # class2 rows 2,3 (1 right). Row 3's ignored entries count nowhere.
    m = threshold_metrics(probs, labels)
    cp, cr = (1 + 0.5 + 0.5) / 3, (2 / 2 + 1 / 1 + 1 / 2) / 3
    op, orec = 4 / 6, 4 / 5
    assert m["CP"] == pytest.approx(cp) and m["CR"] == pytest.approx(cr)
    assert m["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert m["OP"] == pytest.approx(op) and m["OR"] == pytest.approx(orec)
    assert m["OF1"] == pytest.approx(2 * op * orec / (op + orec))
    with pytest.raises(DataError, match="apply a sigmoid"):
        threshold_metrics(probs * 4 - 2, labels)


def test_topk_metrics_hand_case():
    scores = np.array([[0.9, 0.6, 0.1, 0.0], [0.2, 0.7, 0.4, 0.3], [0.1, 0.1, 0.1, 0.2]])
    labels = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 0, -1]])
    # top-2: row0 {0,1}; row1 {1,2}; row2 {3, 0} (tie 0.1 broken to the lower index; class 3 ignored)
    m = topk_metrics(scores, labels, k=2)
    correct = np.array([2, 1, 1, 0])
    predicted = np.array([2, 2, 1, 0])
    truth = np.array([2, 1, 1, 1])
    cp = np.mean(correct / np.maximum(predicted, 1))
    cr = np.mean(correct / truth)
    assert m["CP"] == pytest.approx(cp) and m["CR"] == pytest.approx(cr)
    assert m["OP"] == pytest.approx(4 / 5) and m["OR"] == pytest.approx(4 / 5)
    # with a threshold, a top-k class must also reach it (reference-code rule)
    m = topk_metrics(scores, labels, k=2, threshold=0.5)
    assert m["OP"] == pytest.approx(2 / 3) and m["OR"] == pytest.approx(2 / 5)


def test_evaluate_scores_and_torch_input():
    scores, labels = random_case(n=100, c=5, seed=2)
    result = evaluate_scores(torch.from_numpy(scores), torch.from_numpy(labels), k=3)
    assert result["mAP"] == pytest.approx(mean_average_precision(scores, labels))
    assert len(result["AP"]) == 5
    assert result["CF1"] == pytest.approx(threshold_metrics(scores, labels)["CF1"])
    # probabilities only: the reference top-3 rule reads probability >= 0.5
    assert result["OF1_top3"] == pytest.approx(topk_metrics(scores, labels, k=3, threshold=0.5)["OF1"])
    with pytest.raises(DataError, match="labels must be 1, 0 or -1"):
        average_precision(scores, labels * 2)
    with pytest.raises(DataError, match="NaN"):
        average_precision(np.full((2, 2), np.nan), np.ones((2, 2)))


def test_sweep_average():
    results = {p: 0.5 + p / 10 for p in PROPORTIONS}
    assert sweep_average(results) == pytest.approx(np.mean(list(results.values())))
    del results[0.9]
    with pytest.raises(DataError, match=r"missing \[0.9\]"):
        sweep_average(results)
    assert sweep_average(results, expected=None) == pytest.approx(np.mean(list(results.values())))
    assert sweep_average({0.1 + 0.2: 1.0, 0.1: 0.0}, expected=(0.3, 0.1)) == 0.5


def test_rankings_use_scores_when_probabilities_saturate():
    """sigmoid(100 * cos) is exactly 1.0 in float32 for typical cosines: rank by the logits."""
    logits = np.array([[30.0, -5.0], [25.0, 40.0], [20.0, 35.0]], dtype=np.float32)
    labels = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.int8)
    probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    assert (probs[:, 0] == 1.0).all()  # the saturation this guards against
    from_scores = evaluate_scores(probs, labels, scores=logits, k=1)
    assert from_scores["mAP"] == 1.0
    assert evaluate_scores(probs, labels, k=1)["mAP"] < 1.0
    assert from_scores["CP"] == evaluate_scores(probs, labels, k=1)["CP"]  # thresholds still on probabilities


# Which AP, top-k rules, few classes, decision thresholds (issue 16) -------------------------


def voc07_devkit_ap(scores, labels):
    """VOC 2007 devkit's 11-point AP (VOCevalcls.m / voc_eval.py): rank, cumulate, read the best
    precision at recall >= t for t = 0, 0.1, ..., 1 (distinct scores, no ignored entries)."""
    order = np.argsort(-scores)
    hits = labels[order] == 1
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    recall, precision = tp / float(hits.sum()), tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        ap += (np.max(precision[recall >= t]) if np.sum(recall >= t) else 0.0) / 11.0
    return ap


def test_voc07_eleven_point_ap_equals_the_devkit():
    scores, labels = random_case(n=150, c=6, seed=4)
    ours = average_precision(scores, labels, kind="voc07")
    for c in range(labels.shape[1]):
        assert ours[c] == pytest.approx(voc07_devkit_ap(scores[:, c], labels[:, c]), abs=1e-12)
    # hand case: ranking P N N P P; precision at recall >= t is 1 (t <= 1/3) and 0.6 above
    hand = average_precision(np.array([[0.9], [0.8], [0.7], [0.6], [0.5]]), np.array([[1], [0], [0], [1], [1]]),
                             kind="voc07")
    assert hand[0] == pytest.approx((4 * 1.0 + 7 * 0.6) / 11)
    with pytest.raises(DataError, match="AP kind must be one of"):
        average_precision(scores, labels, kind="11point")


def test_evaluate_scores_names_the_ap_it_uses():
    scores, labels = random_case(n=120, c=5, seed=5, decimals=2)
    for kind in ("envelope", "raw", "voc07"):
        assert evaluate_scores(scores, labels, ap=kind)["mAP"] == pytest.approx(
            mean_average_precision(scores, labels, kind))
    raw = evaluate_scores(scores, labels, ap="raw")["mAP"]
    assert raw == pytest.approx(np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in range(5)]))
    assert raw < evaluate_scores(scores, labels)["mAP"]  # the envelope never lies below the raw AP


def test_top3_follows_the_reference_rule_by_default():
    """ML-GCN/SARB/DSRB count a top-3 class only if its logit is >= 0. Hand case: every image has
    one positive with a positive logit and two negative logits among its top 3."""
    logits = np.array([[2.0, -1.0, -2.0, -3.0], [-1.0, 3.0, -0.5, -4.0], [-2.0, -3.0, 1.0, -0.1]])
    labels = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]])
    probs = 1 / (1 + np.exp(-logits))
    reference = evaluate_scores(probs, labels, scores=logits)
    plain = evaluate_scores(probs, labels, scores=logits, top_k_rule="plain")
    # reference: predicted = the positive logits only: 3 predictions, 3 right, of 4 positives
    assert reference["OP_top3"] == pytest.approx(1.0) and reference["OR_top3"] == pytest.approx(3 / 4)
    # plain: 9 predictions, 4 right (image 2's two positives are both in its top 3)
    assert plain["OP_top3_plain"] == pytest.approx(4 / 9) and plain["OR_top3_plain"] == pytest.approx(1.0)
    assert "OP_top3_plain" not in reference and "OP_top3" not in plain  # the columns say which rule
    # without logits, the rule reads probability >= 0.5: the same predictions
    assert evaluate_scores(probs, labels)["OP_top3"] == pytest.approx(1.0)


def test_fewer_classes_than_top_k_leave_top_k_out():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]])
    labels = np.array([[1, 0], [0, 1], [1, 0]])
    result = evaluate_scores(scores, labels)
    assert result["mAP"] == pytest.approx(1.0) and "CF1" in result
    assert not [key for key in result if "_top" in key]


def test_f1_thresholds_maximise_each_class_f1():
    from sklearn.metrics import f1_score

    from clipml.metrics import f1_thresholds

    scores, labels = random_case(n=200, c=6, seed=6, decimals=2, ignore=0.3)
    labels[:, 4] = np.where(labels[:, 4] == 1, 0, labels[:, 4])  # a class without a positive
    labels[5, 0] = 1  # class 0's single positive stays known
    thresholds, global_threshold, fallback = f1_thresholds(scores, labels)
    assert fallback.tolist() == [False, False, False, False, True, False]
    assert thresholds[4] == global_threshold
    for c in (0, 1, 2, 3, 5):
        keep = labels[:, c] != -1
        y, s = labels[keep, c], scores[keep, c]
        best = max(f1_score(y, s >= t) for t in np.unique(s))  # every possible cut, brute force
        assert f1_score(y, s >= thresholds[c]) == pytest.approx(best)
    keep = labels != -1
    pooled = max(f1_score(labels[keep], scores[keep] >= t) for t in np.unique(scores[keep]))
    assert f1_score(labels[keep], scores[keep] >= global_threshold) == pytest.approx(pooled)
    tuned = evaluate_scores(scores, labels, tuned_thresholds=thresholds)
    assert tuned["OF1_tuned"] == pytest.approx(threshold_metrics(
        (scores >= thresholds).astype(float), labels)["OF1"])
    # a threshold between two scores, not on one: a cut after the single top positive
    t, _, _ = f1_thresholds(np.array([[0.9], [0.5], [0.1]]), np.array([[1], [0], [0]]))
    assert t[0] == pytest.approx(0.7)


def test_f1_thresholds_give_classes_with_few_positives_the_global_threshold():
    """Issue 24: a class's own F1 cut needs `min_positives` known positives; below that it shares
    the pooled one (one positive below every negative would otherwise put its cut under all of them)."""
    from clipml.errors import ConfigError
    from clipml.metrics import f1_thresholds

    scores, labels = random_case(n=200, c=4, seed=7, decimals=2, ignore=0.3)
    labels[:, 1] = np.where(labels[:, 1] == 1, 0, labels[:, 1])
    labels[0, 1], scores[0, 1] = 1, scores[:, 1].min() - 1  # one positive, under every negative
    alone, global_threshold, fallback = f1_thresholds(scores, labels)
    assert not fallback[1] and alone[1] < scores[labels[:, 1] == 0, 1].min()
    positives = (labels == 1).sum(axis=0)
    needed = 3
    shared, same_global, fallback = f1_thresholds(scores, labels, min_positives=needed)
    assert same_global == global_threshold
    assert fallback.tolist() == (positives < needed).tolist() and fallback[1]
    np.testing.assert_array_equal(shared, np.where(positives < needed, global_threshold, alone))
    with pytest.raises(ConfigError, match="min_positives"):
        f1_thresholds(scores, labels, min_positives=0)
