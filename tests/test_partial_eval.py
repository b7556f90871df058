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


def write_known_scores(path, scores, labels):
    """A run's test_scores.npz in the known-entry form evaluate writes."""
    from clipml.engine.evaluate import write_score_arrays
    from clipml.known_scores import KnownScores

    split = type("Split", (), {"items": [f"{i}.jpg" for i in range(len(scores))]})()
    classes = [f"class{c}" for c in range(scores.shape[1])]
    write_score_arrays(str(path), split, classes, KnownScores.from_dense(scores, labels, scores))
    return classes


def test_the_report_draws_the_mean_curve_and_the_best_and_worst_classes_of_many(tmp_path):
    from clipml.report import _pr_curves

    scores, labels = partial_case(seed=3, images=60, classes=150)
    path = tmp_path / "test_scores.npz"
    classes = write_known_scores(path, scores, labels)
    aps = sklearn_partial_map(scores, labels)
    summary = {"test_ap": {name: (100 * aps[c] if c in aps else None) for c, name in enumerate(classes)}}
    html = _pr_curves(path, summary, curves=4)
    drawn = [line.split('"')[0] for line in html.split('data-label="')[1:]]
    ranked = sorted(aps, key=aps.get)
    assert drawn == ["mean"] + [classes[c] for c in ranked[::-1][:4]] + [classes[c] for c in ranked[:4]]
    assert "shown are the mean curve over the scored classes and the 4 best and 4 worst classes by AP" in html
    few = partial_case(seed=3, images=60, classes=12)
    write_known_scores(path, *few)
    html = _pr_curves(path, {"test_ap": {}}, curves=4)
    assert "mean" not in html and html.count("<polyline") == int(((few[1] == 1).any(axis=0)).sum())  # one per class


def test_the_report_draws_ap_bars_of_the_best_and_worst_classes_of_many():
    from clipml.report import _ap_bars

    rng = np.random.default_rng(4)
    ap = {f"class{c}": float(rng.uniform(0, 100)) for c in range(150)}
    ap["class7"] = None  # not scored
    html = _ap_bars({"test_ap": ap, "zero_shot_test_ap": {}}, curves=3)
    drawn = [line.split('"')[0] for line in html.split('data-label="')[1:]]
    ranked = sorted((value, name) for name, value in ap.items() if value is not None)
    assert drawn == [name for _, name in ranked[::-1][:3]] + [name for _, name in ranked[:3]]
    assert "Shown are the 3 best and 3 worst of 150 classes" in html
    few = {f"class{c}": 50.0 + c for c in range(12)}
    assert _ap_bars({"test_ap": few}, curves=3).count('class="bar"') == 12 and "Shown are" not in \
        _ap_bars({"test_ap": few}, curves=3)


def test_the_report_reads_the_known_entries_and_earlier_dense_score_files(tmp_path):
    from clipml.report import read_score_arrays

    scores, labels = partial_case(seed=4, images=30, classes=5)
    scores = scores.astype(np.float32)  # as a run saves them
    write_known_scores(tmp_path / "known.npz", scores, labels)
    np.savez(tmp_path / "dense.npz", classes=np.array([f"class{c}" for c in range(5)]), logits=scores, labels=labels)
    for name in ("known.npz", "dense.npz"):
        classes, by_class = read_score_arrays(tmp_path / name)
        for c, (logits, known) in enumerate(by_class):
            np.testing.assert_array_equal(logits, scores[labels[:, c] != -1, c])
            np.testing.assert_array_equal(known, labels[labels[:, c] != -1, c])
