"""Every synthetic object class draws deterministically, fills a fair share of its box, and has its own shape."""

import itertools
import math

import numpy as np
import pytest

from clipml.lab.shapes import SHAPE_NAMES, aspect, draw_object

FIRST_24 = [
    "sun", "moon", "star", "cloud", "tree", "house", "car", "fish", "boat", "flower", "umbrella", "heart",
    "ball", "kite", "balloon", "bird", "mountain", "key", "cup", "clock", "cactus", "lightning", "mushroom", "tent",
]
ADDED_24 = [
    "apple", "orange", "banana", "bottle", "wine glass", "fork", "knife", "spoon", "book", "lamp", "chair",
    "bicycle", "bus", "train", "airplane", "pine tree", "snowman", "butterfly", "turtle", "rainbow",
    "traffic light", "television", "candle", "pencil",
]


def box_for(name, scale):
    """The box a scene gives the class at this scale: area scale**2, width / height = aspect."""
    ratio = math.sqrt(aspect(name))
    return max(4, round(scale * ratio)), max(4, round(scale / ratio))


def test_class_order_keeps_the_old_labels_first():
    assert SHAPE_NAMES == FIRST_24 + ADDED_24


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_drawing_is_deterministic_and_flip_mirrors(name):
    width, height = box_for(name, 32)
    first = draw_object(name, width, height, seed=7)
    assert first.shape == (height, width, 4) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, draw_object(name, width, height, seed=7))
    np.testing.assert_array_equal(draw_object(name, width, height, seed=7, flip=True), first[:, ::-1])
    assert set(np.unique(first[..., 3])) <= {0, 255}


@pytest.mark.parametrize("name", SHAPE_NAMES)
@pytest.mark.parametrize("scale", [16, 48])
def test_object_fills_a_fair_share_of_its_box(name, scale):
    width, height = box_for(name, scale)
    for seed in range(5):
        coverage = (draw_object(name, width, height, seed)[..., 3] > 0).mean()
        assert 0.2 <= coverage <= 0.95, (name, scale, seed, coverage)


def test_seeds_vary_the_drawing():
    for name in SHAPE_NAMES:
        width, height = box_for(name, 32)
        drawings = [draw_object(name, width, height, seed) for seed in range(6)]
        assert any(not np.array_equal(drawings[0], other) for other in drawings[1:]), name


def test_no_two_classes_share_a_mask():
    """Drawn in the same 32 x 32 box no two masks are equal, and each added class differs from
    every other class in at least 5% of the pixels (mountain and tent, both triangles, predate this)."""
    masks = {name: draw_object(name, 32, 32, seed=0)[..., 3] > 0 for name in SHAPE_NAMES}
    for a, b in itertools.combinations(SHAPE_NAMES, 2):
        differ = (masks[a] != masks[b]).mean()
        assert differ > 0, (a, b)
        if a in ADDED_24 or b in ADDED_24:
            assert differ >= 0.05, (a, b, differ)


def test_unknown_class_is_named_in_the_error():
    with pytest.raises(KeyError, match="giraffe"):
        draw_object("giraffe", 16, 16, seed=0)
