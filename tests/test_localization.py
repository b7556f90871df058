"""Pointing game and attention mass inside (METHODS §11) on hand-built attention maps and masks."""

import numpy as np
import pytest

from clipml.data.base import ObjectInstance
from clipml.errors import DataError
from clipml.localization import (ChunkedLocalization, MapCorrelation, axis_weights, class_map_correlation,
                                 grid_coverage, localize_image, summarize_localization)


def box(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def supersampled_coverage(mask, grid):
    """Independent oracle: repeat every pixel h x w times, so each cell is a whole block of
    H x W sub-pixels, and average the blocks."""
    (H, W), (h, w) = mask.shape, grid
    fine = np.repeat(np.repeat(mask.astype(float), h, axis=0), w, axis=1)  # [H h, W w]
    return fine.reshape(h, H, w, W).mean(axis=(1, 3))


def test_axis_weights_split_pixels_exactly_at_fractional_cell_edges():
    # 5 pixels onto 2 cells: cell 0 = [0, 2.5) holds pixels 0, 1 and half of pixel 2.
    np.testing.assert_allclose(axis_weights(5, 2), [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]])
    np.testing.assert_allclose(axis_weights(6, 3), np.kron(np.eye(3), [0.5, 0.5]))
    np.testing.assert_allclose(axis_weights(7, 3).sum(axis=1), 1.0)


@pytest.mark.parametrize("image, grid", [((8, 8), (4, 4)), ((5, 7), (2, 3)), ((13, 9), (7, 7)), ((3, 4), (7, 7))])
def test_grid_coverage_matches_supersampling(image, grid):
    mask = np.random.RandomState(sum(image) + sum(grid)).rand(*image) < 0.3
    np.testing.assert_allclose(grid_coverage(mask, grid), supersampled_coverage(mask, grid), atol=1e-6)
    assert ((grid_coverage(mask, grid) > 0) == (supersampled_coverage(mask, grid) > 0)).all()


def test_pointing_game_and_mass_inside_on_a_divisible_grid():
    # 4x4 image, 2x2 grid: each cell is one 2x2 block.
    objects = [ObjectInstance(0, box((4, 4), (0, 2), (0, 2))),   # class 0: the whole top-left cell
               ObjectInstance(1, box((4, 4), (2, 4), (3, 4)))]   # class 1: half of the bottom-right cell
    attention = np.array([
        [0.7, 0.1, 0.1, 0.1],   # peak on its object's cell: hit, mass 0.7
        [0.4, 0.3, 0.1, 0.2],   # peak top-left, object bottom-right: miss, mass 0.2 * 0.5
        [0.25, 0.25, 0.25, 0.25],  # class 2 has no object: no trial
    ])
    hits, mass = localize_image(attention, (2, 2), objects)
    np.testing.assert_array_equal(hits, [1.0, 0.0, np.nan])
    np.testing.assert_allclose(mass, [0.7, 0.1, np.nan])


def test_non_divisible_grid_counts_a_cell_that_overlaps_one_pixel():
    # 5x5 image, 2x2 grid: cell rows [0, 2.5) and [2.5, 5). Pixel (2, 0) lies in cells (0,0) and (1,0).
    objects = [ObjectInstance(0, box((5, 5), (2, 3), (0, 1)))]
    on_lower_cell = np.array([[0.1, 0.2, 0.6, 0.1]])   # peak on cell (1, 0): overlaps half the pixel
    on_right_cell = np.array([[0.1, 0.6, 0.2, 0.1]])   # peak on cell (0, 1): no pixel of the object
    assert localize_image(on_lower_cell, (2, 2), objects)[0][0] == 1.0
    assert localize_image(on_right_cell, (2, 2), objects)[0][0] == 0.0
    # Each of cells (0,0) and (1,0) holds half the pixel: 0.5 of 6.25 px = 0.08 of the cell.
    hits, mass = localize_image(np.array([[0.5, 0.25, 0.25, 0.0]]), (2, 2), objects)
    np.testing.assert_allclose(mass, [0.5 * 0.08 + 0.25 * 0.08])


def test_objects_of_one_class_count_once_where_they_overlap():
    first = box((4, 4), (0, 2), (0, 2))
    attention = np.array([[0.4, 0.3, 0.2, 0.1]])
    one = localize_image(attention, (2, 2), [ObjectInstance(0, first)])
    overlapping = localize_image(attention, (2, 2), [ObjectInstance(0, first), ObjectInstance(0, first.copy())])
    np.testing.assert_allclose(overlapping[1], one[1])
    assert overlapping[1][0] <= 1.0


def test_ties_go_to_the_first_cell_and_empty_masks_are_no_trial():
    objects = [ObjectInstance(0, box((4, 4), (0, 1), (0, 1))), ObjectInstance(1, np.zeros((4, 4), bool))]
    hits, mass = localize_image(np.full((2, 4), 0.25), (2, 2), objects)
    assert hits[0] == 1.0  # uniform map: the first (top-left) cell, which holds the object
    assert np.isnan(hits[1]) and np.isnan(mass[1])


def test_summary_averages_trials_per_class_then_classes():
    nan = np.nan
    hits = np.array([[1, nan, nan], [0, 1, nan], [1, nan, nan]], dtype=float)
    mass = np.array([[0.6, nan, nan], [0.2, 0.9, nan], [0.4, nan, nan]])
    result = summarize_localization(hits, mass)
    np.testing.assert_allclose(result["pointing_game_per_class"][:2], [2 / 3, 1.0])
    assert np.isnan(result["pointing_game_per_class"][2])
    assert result["pointing_game"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert result["mass_inside"] == pytest.approx((0.4 + 0.9) / 2)
    assert result["localization_trials"] == 4


def test_bad_inputs_are_clear_errors():
    objects = [ObjectInstance(0, box((4, 4), (0, 2), (0, 2)))]
    with pytest.raises(DataError, match="2x2 grid"):
        localize_image(np.ones((1, 5)) / 5, (2, 2), objects)
    with pytest.raises(DataError, match="share one 2-D shape"):
        localize_image(np.ones((1, 4)) / 4, (2, 2), objects + [ObjectInstance(0, np.ones((3, 4), bool))])
    with pytest.raises(DataError, match="class index 3"):
        localize_image(np.ones((1, 4)) / 4, (2, 2), [ObjectInstance(3, objects[0].mask)])
    with pytest.raises(DataError, match="no \\(image, class\\)"):
        summarize_localization(np.full((2, 2), np.nan), np.full((2, 2), np.nan))


def test_class_map_correlation_is_the_mean_pairwise_pearson_correlation():
    """Issue 24: one number for "the per-class maps are one map" (numpy's corrcoef as the oracle)."""
    import torch

    rng = np.random.default_rng(0)
    attention = rng.random((3, 5, 16))
    attention[1, 2] = 1 / 16  # a flat map takes no part
    attention[2] = attention[2, :1] * rng.uniform(0.5, 2.0, size=(5, 1))  # one map, rescaled per class
    found = class_map_correlation(torch.from_numpy(attention).float())
    for image, value in zip(attention, found[:2]):
        varying = image[image.std(axis=1) > 0]
        matrix = np.corrcoef(varying)
        pairs = len(varying) * (len(varying) - 1)
        assert value == pytest.approx((matrix.sum() - len(varying)) / pairs, abs=1e-6)
    assert found[2] == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(class_map_correlation(np.full((1, 3, 4), 0.25))[0])  # no map varies
    with pytest.raises(DataError, match="attention"):
        class_map_correlation(attention[0])


def gram_correlation(attention):
    """The [B, C, C] form that evaluation used before issue #27: the mean off-diagonal entry of
    each image's correlation matrix over its varying maps (numpy's corrcoef)."""
    values = []
    for image in attention:
        varying = image[image.std(axis=1) > 0]
        pairs = len(varying) * (len(varying) - 1)
        values.append((np.corrcoef(varying).sum() - len(varying)) / pairs if pairs else np.nan)
    return np.array(values)


def chunks(count, size):
    return [np.arange(start, min(start + size, count)) for start in range(0, count, size)]


def test_map_correlation_added_in_class_chunks_equals_the_whole_matrix():
    """Issue #27: streamed over class chunks (sizes that do not divide C too), the correlation
    equals the [B, C, C] computation, without building it."""
    import torch

    rng = np.random.default_rng(1)
    attention = rng.random((4, 23, 12)) ** 3
    attention[0, [3, 17]] = 0.5  # flat maps take no part, in any chunk
    attention[1] = attention[1, :1] * rng.uniform(0.5, 2.0, size=(23, 1))  # one map: correlation 1
    attention[2, 1:] = 1 / 12  # a single varying map: no pair
    expected = gram_correlation(attention)
    for size in (1, 4, 5, 22, 23, 40):
        streamed = MapCorrelation()
        for classes in chunks(23, size):
            streamed.add(torch.from_numpy(attention[:, classes]))
        found = streamed.result()
        np.testing.assert_allclose(found[[0, 1, 3]], expected[[0, 1, 3]], rtol=1e-10, atol=1e-12)
        assert found[1] == pytest.approx(1.0, abs=1e-12) and np.isnan(found[2])
    with pytest.raises(DataError, match="does not match"):
        streamed.add(attention[:2, :3])
    with pytest.raises(DataError, match="no attention maps"):
        MapCorrelation().result()


def test_chunked_localization_equals_localize_image_per_image():
    import torch

    rng = np.random.default_rng(2)
    grid, shape, classes = (3, 4), (11, 13), 9
    images = [[ObjectInstance(int(c), box(shape, sorted(rng.integers(0, 12, 2) + [0, 1]),
                                          sorted(rng.integers(0, 14, 2) + [0, 1])))
               for c in rng.choice(classes, size=3)] for _ in range(5)]  # a class can repeat: union
    attention = rng.random((5, classes, 12))
    for size in (1, 4, 9):
        chunked = ChunkedLocalization(images, grid, classes)
        for part in chunks(classes, size):
            chunked.add(torch.from_numpy(part), torch.from_numpy(attention[:, part]))
        for row, objects in enumerate(images):
            hits, mass = localize_image(attention[row], grid, objects)
            np.testing.assert_array_equal(chunked.hits[row], hits)
            np.testing.assert_allclose(chunked.mass[row], mass, rtol=1e-12)
    with pytest.raises(DataError, match="3x4 grid"):
        chunked.add(torch.arange(2), torch.zeros(5, 2, 10))
