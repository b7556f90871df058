"""COCO splits carry their objects: polygon and crowd-RLE masks per image, areas from the file."""

import json

import numpy as np
import pytest

from clipml.breakdown import object_sizes
from clipml.data import load_split
from clipml.errors import DataError
from data_fixtures import COCO_IDS, make_coco, make_coco_with_masks

PERSON, CAR, DOG = COCO_IDS.index(1), COCO_IDS.index(3), COCO_IDS.index(18)


def box(shape, x0, y0, x1, y1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_coco_instances_are_the_annotated_objects_with_their_masks(tmp_path):
    make_coco_with_masks(tmp_path)
    split = load_split("coco2014", tmp_path, "val")
    assert split.has_instances
    people_and_dog = split.instances(0)
    assert [o.class_index for o in people_and_dog] == [PERSON, DOG, PERSON]
    np.testing.assert_array_equal(people_and_dog[0].mask, box((10, 20), 2, 1, 6, 4))
    np.testing.assert_array_equal(people_and_dog[1].mask, box((10, 20), 10, 0, 18, 10))
    np.testing.assert_array_equal(people_and_dog[2].mask, box((10, 20), 0, 6, 2, 8) | box((10, 20), 4, 8, 6, 10))
    assert people_and_dog[0].mask.shape == split.open_image(0).size[::-1]  # the image's own resolution
    cars = split.instances(1)
    assert [o.class_index for o in cars] == [CAR]
    np.testing.assert_array_equal(cars[0].mask, box((12, 10), 3, 4, 6, 8))
    assert split.instances(2) == []
    for index in range(3):  # every object is a positive label of its image
        assert all(split.labels[index, o.class_index] == 1 for o in split.instances(index))


def test_coco_object_areas_come_from_the_annotations(tmp_path):
    make_coco_with_masks(tmp_path)
    split = load_split("coco2014", tmp_path, "val")
    assert split.object_areas(0) == [(PERSON, 11.5 / 200), (DOG, 80 / 200), (PERSON, 8 / 200)]
    sizes = object_sizes(split)
    assert sizes[0, PERSON] == 11.5 / 200 and sizes[0, DOG] == 80 / 200 and sizes[1, CAR] == 12 / 120
    assert np.isnan(sizes[2]).all()


def test_coco_instances_follow_their_images_into_subsets(tmp_path):
    make_coco_with_masks(tmp_path)
    split = load_split("coco2014", tmp_path, "val")
    part = split.subset([1, 0], split="part")
    assert part.has_instances
    np.testing.assert_array_equal(part.instances(0)[0].mask, split.instances(1)[0].mask)
    assert part.object_areas(1) == split.object_areas(0)


def test_coco_annotation_file_changed_after_loading_is_an_error(tmp_path):
    path, data = make_coco_with_masks(tmp_path)
    split = load_split("coco2014", tmp_path, "val")
    data["images"] = data["images"][1:]  # image 7 disappears
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 7]
    path.write_text(json.dumps(data) + " ")  # another size: read again
    with pytest.raises(DataError, match="changed since"):
        split.instances(0)


@pytest.mark.parametrize("segmentation, message", [
    ([[1, 2]], "annotation 2 has no valid 'segmentation'"),           # a polygon needs 3 points
    ({"counts": [4, 4], "size": [2, 4]}, "annotation 2 decodes to a \\(2, 4\\) mask"),  # not the 20x10 image
])
def test_coco_broken_segmentation_names_the_annotation(tmp_path, segmentation, message):
    path, data = make_coco_with_masks(tmp_path)
    data["annotations"][1]["segmentation"] = segmentation
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        load_split("coco2014", tmp_path, "val").instances(0)


def test_coco_file_without_segmentations_has_no_instances(tmp_path):
    make_coco(tmp_path, "val")  # boxes only, as a detection-style file
    split = load_split("coco2014", tmp_path, "val")
    assert not split.has_instances and split.instances(0) is None and split.object_areas(0) is None
