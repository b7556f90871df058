"""Sparse labels (clipml.data.sparse): the dense matrix's behaviour at the memory of the known
labels, masks identical to the dense protocol bit for bit, and an Open-Images-sized split that
builds, masks, batches and evaluates far below N x C bytes."""

import hashlib
import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from clipml.data import partial
from clipml.data.base import MultiLabelSplit
from clipml.data.partial import load_mask, mask_path, partial_split
from clipml.data.sparse import SparseLabels
from clipml.errors import DataError
from clipml.known_scores import KnownScoresBuilder
from clipml.metrics import evaluate_known, evaluate_scores, sigmoid


def random_labels(rows, classes, seed=0, unknown=0.5):
    rng = np.random.RandomState(seed)
    labels = (rng.rand(rows, classes) < 0.3).astype(np.int8)
    labels[rng.rand(rows, classes) < unknown] = -1
    return labels


def test_sparse_labels_behave_as_the_dense_matrix():
    dense = random_labels(37, 11)
    dense[5] = -1  # an image without a known label
    sparse = SparseLabels.from_dense(dense)
    assert sparse.nnz == (dense != -1).sum() and np.array_equal(sparse.dense(), dense)
    rows = [30, 5, 0, 30]
    assert np.array_equal(sparse.dense(rows), dense[rows]) and np.array_equal(sparse.take(rows).dense(), dense[rows])
    assert np.array_equal(sparse.count_per_class(1), (dense == 1).sum(0))
    assert np.array_equal(sparse.count_per_class(0), (dense == 0).sum(0))
    assert np.array_equal(sparse.count_per_row(1), (dense == 1).sum(1))
    kept = np.random.RandomState(1).rand(sparse.nnz) < 0.5
    expected = dense.copy()
    expected[tuple(np.argwhere(dense != -1)[~kept].T)] = -1  # stored entries run in row-major order
    assert np.array_equal(sparse.keep(kept).dense(), expected)
    both = SparseLabels.concatenate([sparse, sparse.take([1, 2])])
    assert np.array_equal(both.dense(), np.concatenate([dense, dense[[1, 2]]]))
    rows, cols = np.nonzero(dense != -1)
    order = np.random.RandomState(2).permutation(rows.size)
    assert SparseLabels.from_triples(rows[order], cols[order], dense[rows, cols][order], dense.shape) == sparse


@pytest.mark.parametrize("indptr, indices, values, pattern", [
    ([0, 2], [3, 1], [1, 0], "unique and increasing"),
    ([0, 2], [1, 1], [1, 0], "unique and increasing"),
    ([0, 1], [9], [1], "class ids must lie in 0..3"),
    ([0, 1], [1], [-1], "must be 1 or 0"),
    ([0, 3], [1, 2], [1, 0], "2 class ids and 2 values for 3 entries"),
])
def test_malformed_sparse_labels_are_refused(indptr, indices, values, pattern):
    with pytest.raises(DataError, match=pattern):
        SparseLabels(indptr, indices, values, (1, 4))


def test_a_triple_given_twice_is_refused():
    with pytest.raises(DataError, match="image row 1, class 2 is given twice"):
        SparseLabels.from_triples([1, 0, 1], [2, 0, 2], [1, 1, 0], (2, 3))


def test_a_split_holds_sparse_labels_and_keeps_its_digest():
    dense = random_labels(9, 4)
    split = MultiLabelSplit("toy", "train", list("abcd"), [f"{i}.jpg" for i in range(9)], dense)
    assert isinstance(split.targets, SparseLabels) and np.array_equal(split.labels, dense)
    assert split.known_fraction == (dense != -1).mean()
    with pytest.raises(ValueError):
        split.labels[0, 0] = 1  # a view: labels change through with_labels
    digest = hashlib.sha256(split.fingerprint().encode())
    digest.update(dense.tobytes())  # the digest of the dense matrix, as before labels were sparse
    assert split.labels_digest() == digest.hexdigest()[:16]
    assert split.subset([3, 1]).labels.tolist() == dense[[3, 1]].tolist()


@pytest.mark.parametrize("chunk", [8, 1 << 20])  # 8: every chunk a row or two, across the mask file's bytes
def test_masks_are_the_dense_protocol_bit_for_bit(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(partial, "CHUNK_ENTRIES", chunk)
    dense = random_labels(23, 5, unknown=0.2)  # 23 x 5: chunks of 8 rows do not end on a byte of the file
    split = MultiLabelSplit("toy", "train", list("abcde"), [f"{i}.jpg" for i in range(23)], dense)
    draws = np.random.RandomState(7).random_sample(dense.shape) < 0.4
    expected = np.where(draws, dense, -1)
    assert np.array_equal(partial_split(split, 0.4, seed=7).labels, expected)
    written = partial_split(split, 0.4, seed=7, mask_dir=tmp_path)
    path = mask_path(tmp_path, split, 0.4, 7)
    assert np.array_equal(written.labels, expected) and np.array_equal(load_mask(path, split), draws)
    with np.load(path) as data:
        assert np.array_equal(data["known"], np.packbits(draws, axis=None))  # the file's format, unchanged
    assert np.array_equal(partial_split(split, 0.4, seed=7, mask_dir=tmp_path).labels, expected)  # read back


def test_known_scores_collected_by_batch_give_the_dense_evaluation():
    labels = random_labels(40, 6, seed=3)
    logits = np.random.RandomState(4).randn(40, 6).astype(np.float32) + 2 * (labels == 1)
    builder = KnownScoresBuilder(6, k=3)
    order = np.random.RandomState(5).permutation(40)
    for index in np.array_split(order, 7):  # batches in shuffled order, as under data parallelism
        builder.add(index, logits[index], labels[index])
    tuned = np.linspace(-1, 1, 6)
    expected = evaluate_scores(sigmoid(logits), labels, scores=logits, tuned_thresholds=tuned)
    got = evaluate_known(builder.finish(40), tuned_thresholds=tuned)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == value or (key == "AP" and np.allclose(got[key], value, equal_nan=True)), key
    raw = evaluate_known(builder.finish(40), ap="raw")["AP"]
    for c in range(6):  # raw AP on the known entries is scikit-learn's
        known = labels[:, c] != -1
        assert raw[c] == pytest.approx(average_precision_score(labels[known, c] == 1, logits[known, c]), abs=1e-12)


def test_an_open_images_sized_split_builds_masks_batches_and_evaluates_far_below_n_x_c():
    images, classes, per_image = 20_000, 9_605, 10
    rng = np.random.RandomState(0)
    tracemalloc.start()
    try:
        rows = np.repeat(np.arange(images), per_image)
        cols = (rng.randint(0, classes // per_image, size=rows.size)
                + np.tile(np.arange(per_image) * (classes // per_image), images))  # distinct per image
        values = (rng.rand(rows.size) < 0.4).astype(np.int8)
        split = MultiLabelSplit("openimages-like", "test", [f"c{j}" for j in range(classes)],
                                [f"{i}.jpg" for i in range(images)],
                                SparseLabels.from_triples(rows, cols, values, (images, classes)), labels_complete=False)
        masked = partial_split(split, 0.5, seed=0)
        assert 0.45 < masked.targets.nnz / split.targets.nnz < 0.55
        builder, generator = KnownScoresBuilder(classes, k=3), np.random.default_rng(1)
        for start in range(0, images, 128):
            index = np.arange(start, min(start + 128, images))
            batch = masked.targets.dense(index)  # what the loop receives: [B, C] of 1/0/-1
            logits = generator.standard_normal(batch.shape, dtype=np.float32)
            logits[batch == 1] += 2
            builder.add(index, logits, batch)
        result = evaluate_known(builder.finish(images))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["coverage"]["scored_classes"] > 8_000 and 0.5 < result["mAP"] <= 1
    print(f"peak {peak / 1e6:.1f} MB against N x C = {images * classes / 1e6:.0f} MB")
    assert peak < images * classes / 4, f"peak {peak / 1e6:.0f} MB; N x C = {images * classes / 1e6:.0f} MB"
