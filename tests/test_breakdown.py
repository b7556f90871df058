"""mAP by labels per image and by object size (METHODS §11), against scikit-learn."""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from clipml.breakdown import map_by_label_count, map_by_object_size, object_sizes
from clipml.data.base import MultiLabelSplit, ObjectInstance
from clipml.errors import DataError


def sklearn_map(scores, labels, rows_per_class):
    """mAP over classes with a positive among their rows, each class's AP by scikit-learn."""
    aps = []
    for c, rows in enumerate(rows_per_class):
        y = labels[rows, c]
        if (y == 1).any():
            aps.append(average_precision_score(y == 1, scores[rows, c]))
    return float(np.mean(aps))


@pytest.fixture
def case():
    rng = np.random.RandomState(3)
    count, classes = 60, 6
    labels = np.zeros((count, classes), dtype=np.int8)
    for i in range(count):  # 0 to 5 positives per image
        labels[i, rng.choice(classes, size=i % 6, replace=False)] = 1
    scores = rng.randn(count, classes) + 1.5 * labels  # informative but not perfect
    return scores, labels


def test_label_count_buckets_match_sklearn_on_each_subset(case):
    scores, labels = case
    result = map_by_label_count(scores, labels, kind="raw")
    count = labels.sum(axis=1)
    for name, rows in (("1", count == 1), ("2-3", (count >= 2) & (count <= 3)), ("4+", count >= 4)):
        assert result["images_by_labels"][name] == rows.sum()
        expected = sklearn_map(scores[rows], labels[rows], [slice(None)] * labels.shape[1])
        assert result["mAP_by_labels"][name] == pytest.approx(expected, abs=1e-12)
    assert sum(result["images_by_labels"].values()) == (count > 0).sum()  # all-negative images: no bucket


def test_an_empty_label_bucket_has_no_map():
    labels = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.int8)
    result = map_by_label_count(np.random.rand(3, 2), labels)
    assert result["mAP_by_labels"]["2-3"] is None and result["images_by_labels"]["4+"] == 0


def test_size_buckets_rank_their_positives_against_all_negatives(case):
    scores, labels = case
    rng = np.random.RandomState(4)
    sizes = np.where(labels == 1, rng.choice([0.01, 0.05, 0.5, np.nan], size=labels.shape), np.nan)
    result = map_by_object_size(scores, labels, sizes, kind="raw")
    for name, low, high in (("small", 0, 0.02), ("medium", 0.02, 0.10), ("large", 0.10, 1.1)):
        inside = (labels == 1) & (sizes >= low) & (sizes < high)
        rows = [np.flatnonzero((labels[:, c] == 0) | inside[:, c]) for c in range(labels.shape[1])]
        assert result["mAP_by_size"][name] == pytest.approx(sklearn_map(scores, labels, rows), abs=1e-12)
        assert result["positives_by_size"][name] == inside.sum()


def test_size_breakdown_on_a_hand_case():
    # One class: a small positive ranked first, a large one ranked below a negative.
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    labels = np.array([[1], [0], [1], [0]], dtype=np.int8)
    sizes = np.array([[0.01], [np.nan], [0.3], [np.nan]])
    result = map_by_object_size(scores, labels, sizes)
    assert result["mAP_by_size"] == {"small": 1.0, "medium": None, "large": 0.5}
    # Thresholds are parameters: with small < 0.5 both positives are small.
    assert map_by_object_size(scores, labels, sizes, thresholds=(0.5, 0.8))["positives_by_size"]["small"] == 2
    with pytest.raises(DataError, match="thresholds"):
        map_by_object_size(scores, labels, sizes, thresholds=(0.2, 0.1))


@dataclasses.dataclass
class BoxSplit(MultiLabelSplit):
    """Objects as boxes in 10x10 images: image -> [(class, rows, cols)]."""

    boxes: dict = dataclasses.field(default_factory=dict)

    @property
    def has_instances(self):
        return True

    def instances(self, index):
        objects = []
        for class_index, (r0, r1), (c0, c1) in self.boxes.get(index, []):
            mask = np.zeros((10, 10), bool)
            mask[r0:r1, c0:c1] = True
            objects.append(ObjectInstance(class_index, mask))
        return objects


def test_object_sizes_take_each_class_largest_object():
    split = BoxSplit("boxes", "test", ["a", "b"], ["0", "1"], np.array([[1, 1], [0, 1]]),
                     boxes={0: [(0, (0, 1), (0, 1)), (0, (0, 5), (0, 4)), (1, (0, 10), (0, 10))], 1: []})
    sizes = object_sizes(split)
    np.testing.assert_allclose(sizes[0], [0.2, 1.0])
    assert np.isnan(sizes[1]).all()  # class b is labelled but has no object: no size


def partial_sklearn_map(scores, labels, rows_per_class):
    """mAP over the classes with a known positive and a known negative among their rows, each
    class's AP by scikit-learn on its known entries there (the partial rule)."""
    aps = []
    for c, rows in enumerate(rows_per_class):
        y, s = labels[rows, c], scores[rows, c]
        if (y == 1).any() and (y == 0).any():
            aps.append(average_precision_score(y[y != -1] == 1, s[y != -1]))
    return float(np.mean(aps))


def test_on_a_partial_split_buckets_score_only_classes_with_a_known_negative(case):
    scores, labels = case
    labels = labels.copy()
    labels[np.random.RandomState(5).rand(*labels.shape) < 0.4] = -1
    labels[(labels == 1).sum(axis=1) >= 2, 0] = 1  # class 0: no known negative in the larger buckets
    count = (labels == 1).sum(axis=1)
    result = map_by_label_count(scores, labels, kind="raw")
    for name, rows in (("1", count == 1), ("2-3", (count >= 2) & (count <= 3)), ("4+", count >= 4)):
        assert result["images_by_labels"][name] == rows.sum()
        expected = partial_sklearn_map(scores[rows], labels[rows], [slice(None)] * labels.shape[1])
        assert result["mAP_by_labels"][name] == pytest.approx(expected, abs=1e-12)
        assert expected != pytest.approx(sklearn_map(scores[rows], labels[rows], [slice(None)] * labels.shape[1]))
    sizes = np.where(labels == 1, np.random.RandomState(4).choice([0.01, 0.05, 0.5], size=labels.shape), np.nan)
    result = map_by_object_size(scores, labels, sizes, kind="raw")
    for name, low, high in (("small", 0, 0.02), ("medium", 0.02, 0.10), ("large", 0.10, 1.1)):
        inside = (labels == 1) & (sizes >= low) & (sizes < high)
        rows = [np.flatnonzero((labels[:, c] != 1) | inside[:, c]) for c in range(labels.shape[1])]
        assert result["mAP_by_size"][name] == pytest.approx(partial_sklearn_map(scores, labels, rows), abs=1e-12)
