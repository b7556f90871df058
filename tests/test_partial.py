"""Partial-label masks: the reference protocol, mask files, imported masks, validation carving."""

import logging

import numpy as np
import pytest

from clipml.data import (
    MultiLabelSplit,
    carve_validation,
    import_mask,
    load_mask,
    mask_path,
    partial_split,
    simulate_known,
)
from clipml.data import partial as partial_module
from clipml.errors import ConfigError, DataError


def make_split(n=2000, c=20, seed=1, dataset="toy"):
    rng = np.random.RandomState(seed)
    labels = (rng.random_sample((n, c)) < 0.2).astype(np.int8)
    items = [f"img/{i:05d}.jpg" for i in range(n)]
    return MultiLabelSplit(dataset, "train", [f"class{j}" for j in range(c)], items, labels)


def test_known_ratio_within_sampling_error():
    split = make_split()
    n = split.labels.size
    for p in (0.1, 0.3, 0.5, 0.9):
        known = simulate_known(split.labels, p, seed=0)
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs(known.mean() - p) < 4 * sigma
        # positives and negatives are dropped alike
        pos, neg = split.labels == 1, split.labels == 0
        assert abs(known[pos].mean() - p) < 4 * np.sqrt(p * (1 - p) / pos.sum())
        assert abs(known[neg].mean() - p) < 4 * np.sqrt(p * (1 - p) / neg.sum())


def test_masks_nested_across_p_and_seeded():
    labels = make_split(500, 10).labels
    masks = [simulate_known(labels, p, seed=3) for p in np.arange(1, 10) / 10]
    for smaller, larger in zip(masks, masks[1:]):
        assert not (smaller & ~larger).any()  # known at p implies known at every larger p
        assert larger.sum() > smaller.sum()
    np.testing.assert_array_equal(simulate_known(labels, 0.4, seed=3), simulate_known(labels, 0.4, seed=3))
    assert (simulate_known(labels, 0.4, seed=3) != simulate_known(labels, 0.4, seed=4)).any()
    assert simulate_known(labels, 1.0, seed=0).all()
    with pytest.raises(ConfigError, match="must be in \\(0, 1\\]"):
        simulate_known(labels, 0.0, seed=0)


def test_matches_reference_code_draws():
    """The SST/SARB/DSRB code: np.random.seed(0); mask = np.random.random(shape) < p."""
    labels = make_split(300, 80).labels
    state = np.random.get_state()
    try:
        np.random.seed(0)
        reference = np.random.random(labels.shape) < 0.3
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(simulate_known(labels, 0.3, seed=0), reference)


def test_partial_split_labels_and_existing_unknowns(caplog):
    split = make_split(400, 10)
    labels = split.labels.copy()
    labels[0, :] = -1
    split = split.with_labels(labels)
    with caplog.at_level(logging.INFO):
        part = partial_split(split, 0.5, seed=0)
    known = simulate_known(split.labels, 0.5, 0) & (labels != -1)
    np.testing.assert_array_equal(part.known, known)
    np.testing.assert_array_equal(part.labels[known], labels[known])
    assert (part.labels[0] == -1).all()
    assert part.items == split.items and part.dataset == split.dataset
    assert "keeps 0.4" in caplog.text or "keeps 0.5" in caplog.text


def test_mask_file_written_then_reused(tmp_path, monkeypatch):
    split = make_split(300, 8)
    first = partial_split(split, 0.3, seed=7, mask_dir=tmp_path)
    path = mask_path(tmp_path, split, 0.3, 7)
    assert path.name == f"toy_train_{split.fingerprint()[:8]}_p0.3_seed7.npz" and path.exists()
    np.testing.assert_array_equal(load_mask(path, split, 0.3, 7), first.known)

    def refuse(*args, **kwargs):
        raise AssertionError("the mask must be read from its file, not simulated again")

    monkeypatch.setattr(partial_module, "simulate_known", refuse)
    second = partial_split(split, 0.3, seed=7, mask_dir=tmp_path)
    np.testing.assert_array_equal(second.labels, first.labels)
    with pytest.raises(DataError, match="holds seed=7, expected seed=8"):
        load_mask(path, split, 0.3, 8)


def test_mask_file_detects_other_image_or_class_order(tmp_path):
    split = make_split(300, 8)
    partial_split(split, 0.3, seed=0, mask_dir=tmp_path)
    path = mask_path(tmp_path, split, 0.3, 0)
    reordered = split.subset(np.random.RandomState(0).permutation(len(split)))
    with pytest.raises(DataError, match="different images, image order or classes"):
        load_mask(path, reordered)
    classes_swapped = MultiLabelSplit(
        "toy", "train", split.classes[::-1], split.items, split.labels[:, ::-1]
    )
    with pytest.raises(DataError, match="fingerprint"):
        load_mask(path, classes_swapped)
    # Another version of the split (e.g. another synthetic world) gets a file of its own.
    assert mask_path(tmp_path, reordered, 0.3, 0) != path
    partial_split(reordered, 0.3, seed=0, mask_dir=tmp_path)
    assert mask_path(tmp_path, reordered, 0.3, 0).exists()
    np.testing.assert_array_equal(load_mask(path, split), simulate_known(split.labels, 0.3, 0))


def test_corrupt_mask_file(tmp_path):
    split = make_split(50, 4)
    path = mask_path(tmp_path, split, 0.5, 0)
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="not a clipml mask file or is corrupt"):
        partial_split(split, 0.5, seed=0, mask_dir=tmp_path)
    with pytest.raises(DataError, match="mask file not found"):
        load_mask(tmp_path / "nope.npz", split)


def external_matrix(split, known):
    """A mask as the SST/SARB/DSRB code holds it: 1 positive, -1 negative, 0 unknown."""
    return np.where(known, np.where(split.labels == 1, 1, -1), 0)


@pytest.mark.parametrize("suffix", [".npy", ".txt"])
def test_import_reference_convention(tmp_path, suffix):
    split = make_split(200, 6)
    expected = partial_split(split, 0.4, seed=0)
    matrix = external_matrix(split, expected.known)
    path = tmp_path / f"mask{suffix}"
    if suffix == ".npy":
        np.save(path, matrix.astype(np.float64))
    else:
        np.savetxt(path, matrix, fmt="%d")
    imported = import_mask(path, split, convention="pm1")
    np.testing.assert_array_equal(imported.labels, expected.labels)
    ours = tmp_path / "ours.npy"
    np.save(ours, expected.labels)
    np.testing.assert_array_equal(import_mask(ours, split, convention="clipml").labels, expected.labels)


def test_import_mask_bad_inputs(tmp_path):
    split = make_split(100, 5)
    matrix = external_matrix(split, simulate_known(split.labels, 0.5, 0))
    path = tmp_path / "mask.npy"
    np.save(path, matrix[:, :4])
    with pytest.raises(DataError, match=r"has shape \(100, 4\), expected \(100, 5\)"):
        import_mask(path, split)
    bad = matrix.copy()
    bad[3, 2] = 2
    np.save(path, bad)
    with pytest.raises(DataError, match="row 4, column 3 holds 2"):
        import_mask(path, split)
    rng = np.random.RandomState(0)
    np.save(path, matrix[rng.permutation(100)])  # another image order
    with pytest.raises(DataError, match="known entries disagree with the full labels"):
        import_mask(path, split)
    # the clipml reading of a pm1 file turns negatives into unknowns and 0 into negatives: caught
    np.save(path, matrix)
    with pytest.raises(DataError, match="disagree"):
        import_mask(path, split, convention="clipml")
    (tmp_path / "text.txt").write_text("1 0 x\n")
    with pytest.raises(DataError, match="line 1: 'x' is not a number"):
        import_mask(tmp_path / "text.txt", split)
    with pytest.raises(ConfigError, match="convention"):
        import_mask(path, split, convention="sarb")


def test_carve_validation():
    split = make_split(200, 4)
    rest, val = carve_validation(split, fraction=0.1, seed=5)
    assert len(val) == 20 and len(rest) == 180
    assert set(rest.items) | set(val.items) == set(split.items) and not set(rest.items) & set(val.items)
    assert rest.items == sorted(rest.items) and val.items == sorted(val.items)  # original order kept
    index = {item: i for i, item in enumerate(split.items)}
    np.testing.assert_array_equal(val.labels, split.labels[[index[i] for i in val.items]])
    assert carve_validation(split, fraction=0.1, seed=5)[1].items == val.items
    assert carve_validation(split, fraction=0.1, seed=6)[1].items != val.items
    assert len(carve_validation(split, count=7, seed=0)[1]) == 7
    assert (rest.split, val.split) == ("train-fit", "train-val")
    with pytest.raises(ConfigError):
        carve_validation(split, fraction=1.5)
    with pytest.raises(ConfigError):
        carve_validation(split, count=200)
