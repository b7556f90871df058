"""Evaluation on natively partial test splits (Open Images, LVIS): CSL's AP_partial rule, a class
is scored only with at least one known positive and one known negative, against scikit-learn on
the known entries of each scored class."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from clipml.errors import DataError
from clipml.metrics import class_coverage, coverage_text, evaluate_scores, mean_average_precision


def partial_case(seed=0, images=80, classes=12):
    """Scores and a test label matrix with most entries unknown, plus classes of every kind:
    0 no known label, 1 known negatives only, 2 known positives only."""
    rng = np.random.RandomState(seed)
    truth = (rng.rand(images, classes) < 0.3).astype(np.int8)
    scores = rng.randn(images, classes) + 1.2 * truth
    labels = np.where(rng.rand(images, classes) < 0.35, truth, -1).astype(np.int8)
    labels[:, 0] = -1
    labels[:, 1] = np.where(labels[:, 1] == 1, -1, labels[:, 1])
    labels[:, 2] = np.where(labels[:, 2] == 0, -1, labels[:, 2])
    return scores, labels


def sklearn_partial_map(scores, labels):
    """Oracle: per class, scikit-learn's AP on the known entries, for classes with both kinds."""
    aps = {}
    for c in range(labels.shape[1]):
        known = labels[:, c] != -1
        y = labels[known, c]
        if (y == 1).any() and (y == 0).any():
            aps[c] = average_precision_score(y == 1, scores[known, c])
    return aps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partial_map_equals_sklearn_on_the_known_entries_of_scored_classes(seed):
    scores, labels = partial_case(seed)
    oracle = sklearn_partial_map(scores, labels)
    result = evaluate_scores(1 / (1 + np.exp(-scores)), labels, scores=scores, ap="raw")
    assert result["mAP"] == pytest.approx(np.mean(list(oracle.values())), abs=1e-12)
    assert mean_average_precision(scores, labels, "raw") == pytest.approx(result["mAP"], abs=1e-15)
    for c, ap in enumerate(result["AP"]):
        if c in oracle:
            assert ap == pytest.approx(oracle[c], abs=1e-12)
        else:
            assert np.isnan(ap)


def test_a_class_without_a_known_negative_is_not_scored():
    # Class 1 has positives only: its AP would be 1 whatever the scores; it must not lift the mAP.
    scores = np.array([[0.9, 0.1], [0.2, 0.2], [0.4, 0.3]])
    labels = np.array([[1, 1], [0, -1], [1, 1]], dtype=np.int8)
    result = evaluate_scores(scores, labels, ap="raw")
    assert result["mAP"] == pytest.approx(average_precision_score([1, 0, 1], scores[:, 0]))
    assert np.isnan(result["AP"][1])
    assert result["coverage"]["reason"] == ["", "no known negative"]


def test_coverage_counts_and_sentence():
    _, labels = partial_case(0)
    coverage = class_coverage(labels)
    assert coverage["reason"][:3] == ["no known label", "no known positive", "no known negative"]
    assert coverage["scored_classes"] == 9 and coverage["classes"] == 12
    assert (coverage["no_known_label"], coverage["no_known_positive"], coverage["no_known_negative"]) == (1, 1, 1)
    assert coverage_text(coverage) == ("scored 9 of 12 classes; 1 without a known label, 1 without a known positive, "
                                       "1 without a known negative")
    big = {"classes": 7186, "scored_classes": 4728, "no_known_label": 0, "no_known_positive": 2400,
           "no_known_negative": 58}
    assert coverage_text(big) == ("scored 4,728 of 7,186 classes; 2,400 without a known positive, "
                                  "58 without a known negative")


def test_no_scorable_class_is_an_error_naming_the_counts():
    labels = np.array([[1, -1], [1, 0]], dtype=np.int8)
    with pytest.raises(DataError, match="scored 0 of 2 classes; 1 without a known positive, 1 without a known neg"):
        mean_average_precision(np.random.rand(2, 2), labels)
