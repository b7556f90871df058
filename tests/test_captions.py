"""Captions as training data: class labels read off caption words, caption files, the synthetic
world's pretrain captions (clipml.data.captions)."""

import json

import numpy as np
import pytest

from clipml.data import class_names, official_names
from clipml.data.captions import (
    CaptionConfig,
    CaptionLabeler,
    class_phrases,
    label_report,
    load_captions,
    plural_forms,
    read_caption_file,
)
from clipml.errors import ConfigError, DataError
from clipml.lab.captions import synthetic_captions
from clipml.lab.world import SceneGenerator

CLASSES = ["dog", "hot dog", "person", "teddy bear", "bear", "cell phone", "bus", "knife"]
PHRASES = [[name] for name in CLASSES]
PHRASES[2] += ["man", "woman"]
PHRASES[5] += ["phone"]


def named(caption, labeler=CaptionLabeler(PHRASES), classes=CLASSES):
    return sorted(classes[i] for i in labeler.classes_named(caption))


@pytest.mark.parametrize("word, plural", [("dog", "dogs"), ("bus", "buses"), ("box", "boxes"), ("berry", "berries"),
                                          ("knife", "knives"), ("person", "people"), ("man", "men"),
                                          ("mouse", "mice"), ("sheep", "sheep"), ("match", "matches")])
def test_plural_forms(word, plural):
    assert plural in plural_forms(word)


def test_plural_forms_keep_vowel_y():
    assert "toys" in plural_forms("toy") and "toies" not in plural_forms("toy")


@pytest.mark.parametrize("caption, expected", [
    ("Two men walking their dogs.", ["dog", "person"]),  # synonym with an irregular plural, a plural
    ("A hot dog on a plate.", ["hot dog"]),  # the multi-word name wins over its last word
    ("A teddy bear next to a grizzly bear", ["bear", "teddy bear"]),
    ("A woman talking on her cellphone", ["cell phone", "person"]),  # a multi-word name written as one word
    ("A Hot-Dog stand with BUSES behind", ["bus", "hot dog"]),  # case and hyphens
    ("Knives and a phone.", ["cell phone", "knife"]),
    ("A red sky over the sea.", []),  # no class named
    ("The doghouse and a mandolin", []),  # whole words only
])
def test_classes_named(caption, expected):
    assert named(caption) == expected


def test_labels_matrix():
    labels = CaptionLabeler(PHRASES).labels(["a dog", "nothing here", "a man and a bus"])
    assert labels.dtype == np.int8 and labels.shape == (3, len(CLASSES))
    assert labels.sum(axis=1).tolist() == [1, 0, 2]
    assert labels[2, CLASSES.index("person")] == 1 and labels[2, CLASSES.index("bus")] == 1


def test_shipped_coco_vocabulary_labels_captions():
    official, readable = official_names("coco2014"), class_names("coco2014")
    labeler = CaptionLabeler(class_phrases("coco2014", official, readable))
    assert named("A man riding a motorbike past a TV.", labeler, readable) == ["motorcycle", "person", "television"]
    assert named("Three teddy bears and a hair dryer", labeler, readable) == ["hair dryer", "teddy bear"]
    assert named("Skis leaning on the couch", labeler, official) == ["couch", "skis"]


def test_user_synonyms_file(tmp_path):
    path = tmp_path / "syn.yaml"
    path.write_text("synonyms:\n  dining table: [desk]\n  person: surfer\n")
    official, readable = official_names("voc2007"), class_names("voc2007")
    labeler = CaptionLabeler(class_phrases("voc2007", official, readable, str(path)))
    assert named("surfers at a desk", labeler, official) == ["diningtable", "person"]

    path.write_text("synonyms:\n  unicorn: [horn]\n")
    with pytest.raises(DataError, match="unicorn.*not one of the dataset's classes"):
        class_phrases("voc2007", official, readable, str(path))
    path.write_text("synonyms:\n  person: {a: 1}\n")
    with pytest.raises(DataError, match="synonyms of 'person' must be a list"):
        class_phrases("voc2007", official, readable, str(path))


def test_caption_files(tmp_path):
    captions = ["A dog.", "Two buses", "a red sky"]
    (tmp_path / "c.txt").write_text("\n".join(captions) + "\n\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"caption": c}) + "\n" for c in captions))
    (tmp_path / "c.csv").write_text("id,text\n" + "".join(f'{i},"{c}"\n' for i, c in enumerate(captions)))
    coco = {"images": [], "annotations": [{"id": i, "image_id": 7, "caption": c} for i, c in enumerate(captions)]}
    (tmp_path / "captions_train2014.json").write_text(json.dumps(coco))
    assert read_caption_file(tmp_path / "c.txt") == captions
    assert read_caption_file(tmp_path / "c.jsonl") == captions
    assert read_caption_file(tmp_path / "c.csv", column="text") == captions
    assert read_caption_file(tmp_path / "captions_train2014.json") == captions
    subset = read_caption_file(tmp_path / "c.txt", limit=2, seed=3)
    assert len(subset) == 2 and set(subset) < set(captions)
    assert subset == read_caption_file(tmp_path / "c.txt", limit=2, seed=3)


def test_caption_file_errors_name_the_place(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"caption": "a dog"}\n{"text": "a cat"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: .*'caption'"):
        read_caption_file(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("id,text\n1,a dog\n")
    with pytest.raises(DataError, match="no column 'caption'"):
        read_caption_file(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="caption file not found: .*missing.txt"):
        read_caption_file(tmp_path / "missing.txt")
    (tmp_path / "instances.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="expected COCO captions"):
        read_caption_file(tmp_path / "instances.json")


def test_synthetic_captions_come_from_the_pretrain_stream():
    captions, labels, classes = synthetic_captions(5, seed=2, image_size=32)
    generator = SceneGenerator(2, image_size=32, stream="pretrain")
    assert captions == [generator.scene(i).caption for i in range(5)]
    assert (labels == np.stack([generator.scene(i).labels for i in range(5)])).all()
    assert classes == list(generator.classes)
    train = SceneGenerator(2, image_size=32, stream="train")
    assert captions != [train.scene(i).caption for i in range(5)]


def test_synthetic_world_synonyms_label_its_captions():
    """The lab's world publishes the other words its captions use (clipml.lab.world.SYNONYMS)."""
    classes = SceneGenerator(0, preset="coco_like").classes
    labeler = CaptionLabeler(class_phrases("synthetic", classes, classes))
    assert named("a photo of two fir trees, a mug and many bikes.", labeler, classes) == ["bicycle", "cup", "pine tree"]
    classic = SceneGenerator(0, preset="classic").classes  # synonyms of classes it lacks are left out
    assert named("a plane and a ship", CaptionLabeler(class_phrases("synthetic", classic, classic)), classic) == ["boat"]


def test_synthetic_caption_options_are_forwarded(monkeypatch):
    """Generator options (e.g. a world preset) reach SceneGenerator; the dataset's own options are
    the defaults, and the caption options win."""
    import clipml.lab.captions as module

    calls = []

    class Recorder:
        classes = ["dog", "bus"]

        def __init__(self, seed, stream, **options):
            calls.append((seed, stream, options))

        def scene(self, index):
            labels = np.array([1, index % 2], dtype=np.int8)
            caption = "a dog and a bus" if index % 2 else "a dog"
            return type("Scene", (), {"caption": caption, "labels": labels})()

    monkeypatch.setattr(module, "SceneGenerator", Recorder)
    module._synthetic.cache_clear()
    try:
        config = CaptionConfig(source="synthetic", options={"num_captions": 4, "preset": "coco_like"},
                               class_prompts=False)
        result = load_captions(config, "synthetic", ["dog", "bus"], ["dog", "bus"],
                               {"num_images": 100, "seed": 5, "image_size": 48})
    finally:
        module._synthetic.cache_clear()
    assert calls == [(5, "pretrain", {"image_size": 48, "preset": "coco_like"})]
    assert result.captions == ["a dog", "a dog and a bus"] * 2
    assert result.report["exact_match_fraction"] == 1.0


def test_load_captions_drops_unlabelled_and_adds_class_prompts(tmp_path):
    (tmp_path / "c.txt").write_text("A dog.\nA red sky\nA man on a bus\n")
    config = CaptionConfig(source=str(tmp_path / "c.txt"))
    result = load_captions(config, "mine", ["dog", "bus", "person"], ["dog", "bus", "person"])
    assert result.report["captions"] == 3 and result.report["with_label"] == 2
    assert result.captions[:2] == ["A dog.", "A man on a bus"]
    assert result.labels[:2].tolist() == [[1, 0, 0], [0, 1, 0]]  # "man" is no synonym of this dataset
    prompts = result.captions[2:]
    assert "a photo of a dog." in prompts and len(prompts) == 3 * 16
    assert (result.labels[2:].sum(axis=1) == 1).all()
    assert result.labels[2 + prompts.index("a photo of a bus.")].tolist() == [0, 1, 0]
    assert result.report["training_captions"] == 2 + 48


def test_load_captions_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.captions.source is not set"):
        load_captions(CaptionConfig(), "voc2007", ["dog"], ["dog"])
    (tmp_path / "c.txt").write_text("a red sky\n")
    with pytest.raises(DataError, match="names any class"):
        load_captions(CaptionConfig(source=str(tmp_path / "c.txt")), "mine", ["dog"], ["dog"])
    with pytest.raises(ConfigError, match="unknown keys \\['preset'\\]"):
        load_captions(CaptionConfig(source=str(tmp_path / "c.txt"), options={"preset": "x"}), "mine", ["dog"], ["dog"])


def test_label_report_agreement():
    derived = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=np.int8)
    true = np.array([[1, 0, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1]], dtype=np.int8)
    report = label_report(derived, true)
    assert report["with_label"] == 3 and report["with_label_fraction"] == 0.75
    assert report["exact_match_fraction"] == 0.5
    assert report["precision"] == 3 / 4 and report["recall"] == 3 / 5
    assert label_report(derived, true, np.array([True, False, False]))["recall"] == 2 / 3
