"""Dataset loaders on tiny fixtures in the real file formats, and every bad-input case."""

import json
import logging

import numpy as np
import pytest

from clipml.data import (
    MultiLabelSplit,
    available_datasets,
    class_names,
    load_split,
    official_names,
    readable_names,
    register_dataset,
    templates,
)
from clipml.data.voc import CLASSES as VOC_CLASSES
from clipml.errors import ConfigError, DataError

from data_fixtures import (
    MANIFEST_CLASSES,
    NUS_CONCEPTS,
    NUS_TRAIN,
    NUS_TRAIN_LABELS,
    VG_CLASSES,
    VG_LABELS,
    make_coco,
    make_manifest,
    make_nuswide,
    make_vg,
    make_voc,
    voc_xml,
)


def column(split, name):
    return split.classes.index(name)


# ---------------------------------------------------------------- COCO 2014

def test_coco_classes_order_and_labels(tmp_path):
    data = make_coco(tmp_path, "train")
    split = load_split("coco2014", tmp_path, "train")
    assert split.dataset == "coco2014" and split.split == "train"
    assert split.classes == official_names("coco2014")  # sorted category id, as the vocabulary
    assert split.items == [f"train2014/{im['file_name']}" for im in data["images"]]  # JSON order
    expected = np.zeros((4, 80), dtype=np.int8)
    expected[0, [column(split, "person"), column(split, "dog")]] = 1
    expected[1, column(split, "toothbrush")] = 1
    expected[2, [column(split, "car"), column(split, "stop sign")]] = 1
    np.testing.assert_array_equal(split.labels, expected)  # image 40: no annotation, all negative
    assert split.skipped_images == []
    assert split.open_image(0).size == (8, 6)


def test_coco_test_alias_is_val(tmp_path):
    make_coco(tmp_path, "val")
    split = load_split("coco2014", tmp_path, "test")
    assert split.split == "val" and split.items[0].startswith("val2014/")


def test_coco_malformed_json(tmp_path):
    make_coco(tmp_path)
    (tmp_path / "annotations" / "instances_train2014.json").write_text('{"images": [')
    with pytest.raises(DataError, match="instances_train2014.json is not valid JSON"):
        load_split("coco2014", tmp_path, "train")


def test_coco_unknown_category(tmp_path):
    data = make_coco(tmp_path)
    data["annotations"].append({"id": 99, "image_id": 10, "category_id": 12, "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0})
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="category id 12"):
        load_split("coco2014", tmp_path, "train")


def test_coco_duplicate_image(tmp_path):
    data = make_coco(tmp_path)
    data["images"].append(dict(data["images"][0]))
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="duplicate image id '30'"):
        load_split("coco2014", tmp_path, "train")


def test_coco_missing_image_error_and_skip(tmp_path, caplog):
    data = make_coco(tmp_path)
    missing = tmp_path / "train2014" / data["images"][1]["file_name"]
    missing.unlink()
    with pytest.raises(DataError, match=f"1 of 4 image files not found.*{missing.name}"):
        load_split("coco2014", tmp_path, "train")
    with caplog.at_level(logging.WARNING):
        split = load_split("coco2014", tmp_path, "train", on_missing_image="skip")
    assert split.skipped_images == [f"train2014/{missing.name}"]
    assert len(split) == 3 and f"train2014/{missing.name}" not in split.items
    assert split.labels[:, column(split, "toothbrush")].sum() == 0  # the skipped image's row is gone
    assert "skipped 1 of 4" in caplog.text
    assert len(load_split("coco2014", tmp_path, "train", check_images=False)) == 4


# ---------------------------------------------------------------- VOC 2007

@pytest.mark.parametrize("rule, code", [("ignore", -1), ("negative", 0)])
def test_voc_difficult_rules(tmp_path, rule, code):
    make_voc(tmp_path)
    split = load_split("voc2007", tmp_path, "trainval", difficult=rule)
    assert split.classes == list(VOC_CLASSES) == official_names("voc2007")
    assert split.items == ["JPEGImages/000005.jpg", "JPEGImages/000007.jpg", "JPEGImages/000009.jpg"]
    expected = np.zeros((3, 20), dtype=np.int8)
    expected[0, column(split, "chair")] = 1          # difficult + non-difficult: positive
    expected[0, column(split, "diningtable")] = code  # only difficult
    expected[1, column(split, "car")] = 1
    expected[2, [column(split, "horse"), column(split, "person")]] = 1
    expected[2, column(split, "pottedplant")] = code
    np.testing.assert_array_equal(split.labels, expected)


def test_voc_default_is_ignore(tmp_path):
    make_voc(tmp_path)
    split = load_split("voc2007", tmp_path, "trainval")
    assert split.labels[0, column(split, "diningtable")] == -1


def test_voc_malformed_xml(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "Annotations" / "000007.xml").write_text("<annotation><object><name>car</name>")
    with pytest.raises(DataError, match="malformed XML in .*000007.xml"):
        load_split("voc2007", tmp_path, "trainval")


def test_voc_unknown_class(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "Annotations" / "000007.xml").write_text(voc_xml([("spaceship", 0)]))
    with pytest.raises(DataError, match="unknown class 'spaceship' in .*000007.xml"):
        load_split("voc2007", tmp_path, "trainval")


def test_voc_missing_annotation_and_list(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "Annotations" / "000009.xml").unlink()
    with pytest.raises(DataError, match="annotation file not found: .*000009.xml"):
        load_split("voc2007", tmp_path, "trainval")
    with pytest.raises(DataError, match="image list not found: .*test.txt"):
        load_split("voc2007", tmp_path, "test")


def test_voc_duplicate_image(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n000005\n")
    with pytest.raises(DataError, match="duplicate image id '000005' \\(entry 3\\)"):
        load_split("voc2007", tmp_path, "trainval")


def test_voc_bad_difficult_option(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(ConfigError, match="difficult must be one of"):
        load_split("voc2007", tmp_path, "trainval", difficult="positive")


# ---------------------------------------------------------------- VG 200

def test_vg200(tmp_path):
    make_vg(tmp_path)
    split = load_split("vg200", tmp_path, "train")
    assert split.dataset == "vg200" and split.classes == VG_CLASSES
    assert split.items == ["VG_100K/2.jpg", "VG_100K/1.jpg", "VG_100K/4.jpg"]
    for row, name in enumerate(["2.jpg", "1.jpg", "4.jpg"]):
        assert np.flatnonzero(split.labels[row]).tolist() == VG_LABELS[name]
    test = load_split("vg200", tmp_path, "test")
    assert test.labels.shape == (1, 5) and test.labels.sum() == 0
    assert readable_names(split) == VG_CLASSES  # no shipped vocabulary: its own names


def test_vg200_class_id_out_of_range(tmp_path):
    make_vg(tmp_path)
    labels = dict(VG_LABELS, **{"4.jpg": [1, 5]})
    (tmp_path / "vg_category_200_labels_index.json").write_text(json.dumps(labels))
    with pytest.raises(DataError, match=r"\['4.jpg'\] has class ids \[5\] outside 0..4"):
        load_split("vg200", tmp_path, "train")


def test_vg200_image_without_labels_and_bad_json(tmp_path):
    make_vg(tmp_path)
    (tmp_path / "train_list_500.txt").write_text("1.jpg\n77.jpg\n")
    with pytest.raises(DataError, match="image '77.jpg' .* has no entry"):
        load_split("vg200", tmp_path, "train", check_images=False)
    (tmp_path / "vg_category_200_labels_index.json").write_text("{'1.jpg': [0]}")
    with pytest.raises(DataError, match="is not valid JSON"):
        load_split("vg200", tmp_path, "train")


def test_vg200_missing_class_file(tmp_path):
    make_vg(tmp_path)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DataError, match="class-name file not found"):
        load_split("vg200", tmp_path, "train")


# ---------------------------------------------------------------- NUS-WIDE

def test_nuswide(tmp_path):
    make_nuswide(tmp_path)
    split = load_split("nuswide", tmp_path, "train")
    assert split.classes == NUS_CONCEPTS
    assert split.items == ["Flickr/" + n.replace("\\", "/") for n in NUS_TRAIN]
    for c, concept in enumerate(NUS_CONCEPTS):
        assert split.labels[:, c].tolist() == NUS_TRAIN_LABELS[concept]
    assert split.open_image(2).mode == "RGB"
    assert len(load_split("nuswide", tmp_path, "test")) == 1


def test_nuswide_label_file_length_and_values(tmp_path):
    make_nuswide(tmp_path)
    path = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_animal_Train.txt"
    path.write_text("0\n1\n")
    with pytest.raises(DataError, match="Labels_animal_Train.txt has 2 lines, expected 3"):
        load_split("nuswide", tmp_path, "train")
    path.write_text("0\n2\n1\n")
    with pytest.raises(DataError, match="Labels_animal_Train.txt line 2 is '2', expected 0 or 1"):
        load_split("nuswide", tmp_path, "train")


def test_nuswide_vocabulary_has_81_concepts():
    names = official_names("nuswide")
    assert len(names) == 81 == len(set(names)) and names == sorted(names)


# ---------------------------------------------------------------- manifest

EXPECTED_MANIFEST = np.array(
    [
        [1, 1, 0, -1],   # cat, dog positive; car negative; bus unknown
        [0, 0, 1, 0],    # car positive; rest unlisted -> negative (unlisted="negative")
        [-1, 0, 0, 0],   # cat unknown; rest unlisted -> negative
    ],
    dtype=np.int8,
)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_manifest_formats_agree(tmp_path, fmt):
    path = make_manifest(tmp_path / "mydata", fmt)
    split = load_split("manifest", path, "train", unlisted="negative")
    assert split.classes == MANIFEST_CLASSES
    assert split.items == ["img/a.jpg", "img/b.jpg", "img/c.jpg"]
    np.testing.assert_array_equal(split.labels, EXPECTED_MANIFEST)
    assert split.dataset == "mydata"
    assert split.open_image(1).size == (8, 6)
    # a folder finds <split>.<fmt>
    again = load_split("manifest", tmp_path / "mydata", "train", unlisted="negative")
    np.testing.assert_array_equal(again.labels, split.labels)


def test_manifest_unlisted_unknown_and_classes_option(tmp_path):
    path = make_manifest(tmp_path, "jsonl", classes=False)
    classes = tmp_path / "names.txt"
    classes.write_text("bus\ncar\ndog\ncat\n")
    split = load_split("manifest", path, "train", classes=str(classes), unlisted="unknown", name="pets")
    assert split.classes == ["bus", "car", "dog", "cat"] and split.dataset == "pets"
    np.testing.assert_array_equal(split.labels[1], [-1, 1, -1, -1])
    np.testing.assert_array_equal(split.labels[0], [-1, 0, 1, 1])


def test_manifest_image_root(tmp_path):
    path = make_manifest(tmp_path / "lists", "jsonl")
    (tmp_path / "lists" / "img").rename(tmp_path / "img")
    with pytest.raises(DataError, match="3 of 3 image files not found"):
        load_split("manifest", path, "train", unlisted="negative")  # default root: the manifest's folder
    split = load_split("manifest", path, "train", image_root=tmp_path, unlisted="negative")
    assert split.items[0] == "img/a.jpg" and split.root == tmp_path
    assert split.open_image(0).size == (8, 6)


def test_manifest_unknown_class_name(tmp_path):
    records = [{"image": "a.jpg", "positive": ["cat"]}, {"image": "b.jpg", "negative": ["zebra"]}]
    path = make_manifest(tmp_path, "jsonl", records=records)
    with pytest.raises(DataError, match=r"train.jsonl line 2: unknown class 'zebra' in 'negative'"):
        load_split("manifest", path, "train")
    path = make_manifest(tmp_path, "csv", records=records)
    with pytest.raises(DataError, match=r"train.csv line 3: unknown class 'zebra'"):
        load_split("manifest", path, "train")


def test_manifest_duplicate_image(tmp_path):
    records = [{"image": "a.jpg", "positive": ["cat"]}, {"image": "a.jpg", "positive": ["dog"]}]
    path = make_manifest(tmp_path, "jsonl", records=records)
    with pytest.raises(DataError, match="duplicate image 'a.jpg'"):
        load_split("manifest", path, "train")


def test_manifest_malformed_lines(tmp_path):
    path = make_manifest(tmp_path, "jsonl")
    path.write_text(path.read_text() + '{"image": "d.jpg", "positive": ["cat"\n')
    with pytest.raises(DataError, match="train.jsonl line 4: not valid JSON"):
        load_split("manifest", path, "train")
    path.write_text('{"image": "img/a.jpg", "positive": "cat"}\n')
    with pytest.raises(DataError, match="line 1: 'positive' must be a list"):
        load_split("manifest", path, "train")
    path.write_text('{"image": "img/a.jpg", "positive": ["cat"], "negative": ["cat"]}\n')
    with pytest.raises(DataError, match="class 'cat' listed in both 'positive' and 'negative'"):
        load_split("manifest", path, "train")
    csv_path = make_manifest(tmp_path, "csv")
    csv_path.write_text("image,positive,negative,unknown\nimg/a.jpg,cat,dog\n")
    with pytest.raises(DataError, match="train.csv line 2: 3 fields, expected 4"):
        load_split("manifest", csv_path, "train")
    csv_path.write_text("file,positive\nimg/a.jpg,cat\n")
    with pytest.raises(DataError, match="train.csv line 1: header"):
        load_split("manifest", csv_path, "train")


def test_manifest_missing_image_skip(tmp_path, caplog):
    path = make_manifest(tmp_path, "jsonl")
    (tmp_path / "img" / "b.jpg").unlink()
    with pytest.raises(DataError, match="1 of 3 image files not found .*img/b.jpg"):
        load_split("manifest", path, "train", unlisted="negative")
    with caplog.at_level(logging.WARNING):
        split = load_split("manifest", path, "train", on_missing_image="skip", unlisted="negative")
    assert split.items == ["img/a.jpg", "img/c.jpg"] and split.skipped_images == ["img/b.jpg"]
    np.testing.assert_array_equal(split.labels, EXPECTED_MANIFEST[[0, 2]])
    with pytest.raises(ConfigError, match="on_missing_image"):
        load_split("manifest", path, "train", on_missing_image="ignore", unlisted="negative")


def test_manifest_split_file_lookup(tmp_path):
    make_manifest(tmp_path, "jsonl", split="train")
    make_manifest(tmp_path, "csv", split="train")
    with pytest.raises(DataError, match="both exist"):
        load_split("manifest", tmp_path, "train")
    with pytest.raises(DataError, match="neither exists"):
        load_split("manifest", tmp_path, "test")


# ---------------------------------------------------------------- registry and vocabularies

def test_registry(tmp_path):
    assert {"coco2014", "voc2007", "vg200", "nuswide", "manifest"} <= set(available_datasets())
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_split("imagenet", tmp_path, "train")
    make_vg(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown data.options \['difficult'\]"):
        load_split("vg200", tmp_path, "train", difficult="ignore")

    def toy(root, split, **options):
        return MultiLabelSplit("toy", split, ["a"], ["x.jpg"], np.ones((1, 1)), root)

    register_dataset("toy-test", toy)
    assert load_split("toy-test", tmp_path, "val", anything=1).dataset == "toy"
    with pytest.raises(ConfigError, match="already registered"):
        register_dataset("toy-test", lambda root, split: None)
    register_dataset("toy-test", toy)  # the same function again is fine


def test_vocabularies_and_templates(tmp_path):
    coco = class_names("coco2014")
    assert len(coco) == 80 and coco[official_names("coco2014").index("hair drier")] == "hair dryer"
    voc = class_names("voc2007")
    assert voc[VOC_CLASSES.index("tvmonitor")] == "tv monitor" and voc[0] == "aeroplane"
    assert len(class_names("nuswide")) == 81
    for name in ("default", "single"):
        found = templates(name)
        assert found and all(t.count("{}") == 1 for t in found)
    assert templates("single") == ["a photo of a {}."]
    with pytest.raises(ConfigError):
        templates("nope")
    with pytest.raises(ConfigError, match="no shipped class vocabulary for 'vg200'"):
        class_names("vg200")

    make_voc(tmp_path)
    split = load_split("voc2007", tmp_path, "trainval")
    assert readable_names(split) == voc
    shuffled = MultiLabelSplit("voc2007", "x", split.classes[::-1], split.items, split.labels[:, ::-1], tmp_path)
    with pytest.raises(DataError, match="do not match the shipped vocabulary"):
        readable_names(shuffled)


# ------------------------------------------------ annotation errors name file and entry (issue 16)

@pytest.mark.parametrize("section,index,key", [
    ("categories", 2, "name"), ("categories", 0, "id"), ("images", 1, "file_name"), ("images", 3, "id"),
    ("annotations", 4, "category_id"), ("annotations", 0, "image_id"),
])
def test_coco_entry_without_a_field_names_file_and_entry(tmp_path, section, index, key):
    data = make_coco(tmp_path)
    del data[section][index][key]
    path = tmp_path / "annotations" / "instances_train2014.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"instances_train2014.json\): '{section}' entry {index + 1} .*has no '{key}'"):
        load_split("coco2014", tmp_path, "train")


def test_coco_malformed_sections_and_names(tmp_path):
    data = make_coco(tmp_path)
    path = tmp_path / "annotations" / "instances_train2014.json"
    path.write_text(json.dumps(dict(data, categories={"1": "person"})))
    with pytest.raises(DataError, match="instances_train2014.json.*needs a list 'categories'"):
        load_split("coco2014", tmp_path, "train")
    data["categories"][5]["name"] = ""
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="'categories' entry 6 .*expected a non-empty string"):
        load_split("coco2014", tmp_path, "train")
    data["categories"][5] = "person"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="'categories' entry 6 is str 'person', expected an object"):
        load_split("coco2014", tmp_path, "train")


# ------------------------------------------------ class names that read alike (issue 16)

def test_classes_that_read_alike_are_refused(tmp_path):
    from clipml.data import readable_names
    from clipml.model import ModelConfig, MultiLabelCLIP
    from conftest import tiny_backbone

    records = [{"image": "img/a.jpg", "positive": ["hot_dog"]}, {"image": "img/b.jpg", "positive": ["hot dog"]}]
    path = make_manifest(tmp_path, "jsonl", records=records, classes=False)
    (tmp_path / "classes.txt").write_text("hot_dog\nbun\nhot dog\n")
    split = load_split("manifest", path, "train", unlisted="negative")
    with pytest.raises(DataError, match=r"classes 'hot_dog' \(index 0\) and 'hot dog' \(index 2\) both read as 'hot dog'"):
        readable_names(split)
    with pytest.raises(ConfigError, match=r"class names must be distinct, found \['cat'\]"):
        MultiLabelCLIP(tiny_backbone("open_clip_vit"), ["cat", "dog", "cat"], ModelConfig.of(method="coop", n_ctx=2))
