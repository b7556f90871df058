"""Open Images and LVIS loaders on hand-written files in the real formats: their own partial
labels kept, one clear error per malformed line, and the LVIS / COCO 2014 overlap refused."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from clipml.data import load_split
from clipml.data.lvis import check_disjoint
from clipml.data.openimages import LAYOUTS
from clipml.errors import ConfigError, DataError
from data_fixtures import write_jpeg

HEADER = "ImageID,Source,LabelName,Confidence\n"
DESCRIPTIONS = ("LabelName,DisplayName\n/m/cat,Cat\n/m/dog,Dog\n/m/car,Car\n/m/bus,Bus\n/m/jag,Jaguar\n"
                "/m/jagcar,Jaguar\n/m/other,Not trainable\n")
TRAINABLE = "/m/cat\n/m/dog\n/m/car\n/m/bus\n"
HUMAN = (HEADER +
         "img_a,verification,/m/cat,1\n"
         "img_a,verification,/m/dog,0\n"
         "img_b,verification,/m/cat,0\n"
         "img_b,crowdsource-verification,/m/car,1\n"
         "img_b,verification,/m/dog,1\n"
         "img_b,crowdsource-verification,/m/dog,0\n"  # two human verdicts that disagree: unknown
         "img_c,verification,/m/other,1\n")  # only a class outside the trainable list: not in the split
MACHINE = (HEADER +
           "img_a,machine,/m/dog,0.9\n"  # a human label (0) wins over a machine one
           "img_a,machine,/m/bus,0.7\n"
           "img_d,machine,/m/dog,0.8\n"  # an image with machine labels only
           "img_d,machine,/m/cat,0.3\n")  # below the threshold: unknown, not negative


def write_openimages(root: Path, version: str = "v6", split: str = "train", human: str = HUMAN,
                     machine: str = MACHINE, images=("img_a", "img_b", "img_c", "img_d")) -> Path:
    layout = LAYOUTS[version]
    root.mkdir(parents=True, exist_ok=True)
    (root / layout["descriptions"]).write_text(DESCRIPTIONS)
    (root / layout["trainable"][0]).write_text(TRAINABLE)
    (root / layout["human"][split]).write_text(human)
    (root / layout["machine"][split]).write_text(machine)
    for image in images:
        write_jpeg(root / split / f"{image}.jpg")
    return root


def rows(split):
    return {item: split.labels[i].tolist() for i, item in enumerate(split.items)}


@pytest.mark.parametrize("version", ["v6", "v7"])
def test_openimages_human_labels_kept_as_they_are(tmp_path, version, caplog):
    root = write_openimages(tmp_path, version)
    with caplog.at_level(logging.WARNING):
        split = load_split("openimages", root, "train")
    assert split.classes == ["Cat", "Dog", "Car", "Bus"] and split.class_ids == ["/m/cat", "/m/dog", "/m/car", "/m/bus"]
    assert not split.labels_complete
    # classes: cat dog car bus; img_b's dog is disputed, img_c has no trainable label
    assert rows(split) == {"train/img_a.jpg": [1, 0, -1, -1], "train/img_b.jpg": [0, -1, 1, -1]}
    assert "1 (image, class) pairs have human labels that disagree" in caplog.text


def test_openimages_machine_labels_threshold_and_human_precedence(tmp_path):
    root = write_openimages(tmp_path)
    split = load_split("openimages", root, "train", sources="human+machine")
    assert rows(split) == {"train/img_a.jpg": [1, 0, -1, 1], "train/img_b.jpg": [0, -1, 1, -1],
                           "train/img_d.jpg": [-1, 1, -1, -1]}
    strict = load_split("openimages", root, "train", sources="human+machine", machine_threshold=0.85)
    # img_d's best machine label (0.8) is below 0.85: no known label left, so no image
    assert rows(strict) == {"train/img_a.jpg": [1, 0, -1, -1], "train/img_b.jpg": [0, -1, 1, -1]}


def test_openimages_class_file_names_and_splits(tmp_path):
    root = write_openimages(tmp_path, split="validation")
    (root / "subset.txt").write_text("/m/bus\n/m/jag\n\n/m/jagcar\n/m/cat\n")
    split = load_split("openimages", root, "val", classes_file=str(root / "subset.txt"))
    assert split.split == "validation" and split.items == ["validation/img_a.jpg", "validation/img_b.jpg"]
    assert split.classes == ["Bus", "Jaguar (/m/jag)", "Jaguar (/m/jagcar)", "Cat"]
    assert split.labels.tolist() == [[-1, -1, -1, 1], [-1, -1, -1, 0]]
    (root / "bad.txt").write_text("/m/cat\n/m/nope\n")
    with pytest.raises(DataError, match=r"bad.txt line 2: class '/m/nope' is not in .*oidv6-class-descriptions.csv"):
        load_split("openimages", root, "validation", classes_file=str(root / "bad.txt"))


def test_openimages_without_a_trainable_file_uses_every_described_class(tmp_path):
    root = write_openimages(tmp_path)
    (root / LAYOUTS["v6"]["trainable"][0]).unlink()
    (root / "classes-trainable.txt").write_text("/m/dog\n")  # the older name is found too
    assert load_split("openimages", root, "train").classes == ["Dog"]
    (root / "classes-trainable.txt").unlink()
    assert len(load_split("openimages", root, "train", check_images=False).classes) == 7


def test_openimages_version_detection(tmp_path):
    root = write_openimages(tmp_path, "v6")
    write_openimages(root, "v7")
    with pytest.raises(DataError, match="set data.options.version"):
        load_split("openimages", root, "train")
    assert len(load_split("openimages", root, "train", version="v7")) == 2
    with pytest.raises(DataError, match="no class descriptions file"):
        load_split("openimages", tmp_path / "empty", "train")
    with pytest.raises(ConfigError, match="data.options.sources"):
        load_split("openimages", root, "train", sources="machine")
    with pytest.raises(ConfigError, match="machine_threshold"):
        load_split("openimages", root, "train", machine_threshold=0)


@pytest.mark.parametrize("kind, line, pattern", [
    ("human", "img_x,verification,/m/cat,0.5", "line 3: a human-verified label needs Confidence 1"),
    ("human", "img_x,verification,/m/other,yes", "line 3: a human-verified label needs Confidence 1"),
    ("human", "img_x,verification,/m/cat", "line 3: 3 fields, expected 4"),
    ("human", ",verification,/m/cat,1", "line 3: empty ImageID"),
    ("machine", "img_x,machine,/m/cat,1.5", r"line 3: a machine-generated label needs a Confidence in \[0, 1\]"),
    ("machine", "img_x,machine,/m/cat,high", r"line 3: a machine-generated label needs a Confidence in \[0, 1\]"),
])
def test_openimages_malformed_line_names_file_and_line(tmp_path, kind, line, pattern):
    text = HEADER + "img_a,verification,/m/cat,1\n" + line + "\n"
    files = {"human": text} if kind == "human" else {"machine": text}
    root = write_openimages(tmp_path, **files)
    name = LAYOUTS["v6"][kind]["train"]
    with pytest.raises(DataError, match=f"{name} {pattern}"):
        load_split("openimages", root, "train", sources="human+machine")


def test_openimages_bad_header_and_missing_images(tmp_path):
    root = write_openimages(tmp_path, human="ImageID,LabelName,Confidence\nimg_a,/m/cat,1\n")
    with pytest.raises(DataError, match="line 1: header .* must be ImageID,Source,LabelName,Confidence"):
        load_split("openimages", root, "train")
    root = write_openimages(tmp_path / "b", images=("img_a",))
    with pytest.raises(DataError, match="1 of 2 image files not found"):
        load_split("openimages", root, "train")
    assert load_split("openimages", root, "train", on_missing_image="skip").items == ["train/img_a.jpg"]
    (root / LAYOUTS["v6"]["descriptions"]).write_text("LabelName,DisplayName\n/m/cat\n")
    with pytest.raises(DataError, match="line 2: expected LabelName,DisplayName"):
        load_split("openimages", root, "train")


def lvis_file(root: Path, split: str = "train", **changes) -> Path:
    """4 classes listed out of id order; images 5 and 9 (COCO files) and 7 (no labels at all)."""
    data = {
        "categories": [{"id": 3, "name": "bow_(weapon)", "synonyms": ["bow"], "frequency": "r"},
                       {"id": 1, "name": "aerosol_can", "synonyms": ["spray_can"], "frequency": "c"},
                       {"id": 2, "name": "apple", "synonyms": ["apple"], "frequency": "f"},
                       {"id": 4, "name": "zebra", "synonyms": ["zebra"], "frequency": "f"}],
        "images": [
            {"id": 9, "coco_url": "http://images.cocodataset.org/train2017/000000000009.jpg",
             "neg_category_ids": [1], "not_exhaustive_category_ids": [2, 3]},
            {"id": 5, "coco_url": "http://images.cocodataset.org/val2017/000000000005.jpg",
             "neg_category_ids": [2, 4], "not_exhaustive_category_ids": []},
            {"id": 7, "coco_url": "http://images.cocodataset.org/train2017/000000000007.jpg",
             "neg_category_ids": [], "not_exhaustive_category_ids": []},
        ],
        # image 9: apple annotated (not exhaustive: stays positive), bow not exhaustive without
        # an annotation (unknown); image 5: zebra is only a negative, aerosol can positive
        "annotations": [{"id": 1, "image_id": 9, "category_id": 2, "bbox": [0, 0, 1, 1]},
                        {"id": 2, "image_id": 9, "category_id": 2, "bbox": [1, 1, 1, 1]},
                        {"id": 3, "image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1]}],
    }
    data.update(changes)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"lvis_v1_{split}.json"
    path.write_text(json.dumps(data))
    for image in data["images"]:
        if "coco_url" in image:
            write_jpeg(root / "/".join(image["coco_url"].split("/")[-2:]))
    return path


def test_lvis_labels_from_annotations_negatives_and_not_exhaustive(tmp_path):
    lvis_file(tmp_path, "val")
    split = load_split("lvis", tmp_path, "test")
    assert split.split == "val" and not split.labels_complete
    assert split.classes == ["aerosol_can", "apple", "bow_(weapon)", "zebra"]
    assert split.items == ["train2017/000000000009.jpg", "val2017/000000000005.jpg", "train2017/000000000007.jpg"]
    assert split.labels.tolist() == [[0, 1, -1, -1], [1, 0, -1, 0], [-1, -1, -1, -1]]


@pytest.mark.parametrize("change, pattern", [
    ({"neg_category_ids": [1], "not_exhaustive_category_ids": [1]},
     "image 9 lists category 1 in both neg_category_ids and not_exhaustive_category_ids"),
    ({"neg_category_ids": [2], "not_exhaustive_category_ids": [3]},
     "annotation 1 marks category 2 present in image 9, whose neg_category_ids"),
    ({"neg_category_ids": [8]}, r"'images' entry 1 \(id 9\): neg_category_ids holds category 8"),
    ({"neg_category_ids": 1}, "'neg_category_ids' must be a list"),
    ({"coco_url": "nowhere"}, r"'images' entry 1 \(id 9\) has coco_url 'nowhere'"),
])
def test_lvis_malformed_image_entries_name_the_entry(tmp_path, change, pattern):
    path = lvis_file(tmp_path)
    data = json.loads(path.read_text())
    data["images"][0].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=pattern):
        load_split("lvis", tmp_path, "train")


def test_lvis_missing_coco_url_and_unknown_category(tmp_path):
    path = lvis_file(tmp_path)
    data = json.loads(path.read_text())
    del data["images"][1]["coco_url"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="'images' entry 2 .* has no 'coco_url'"):
        load_split("lvis", tmp_path, "train")
    lvis_file(tmp_path, annotations=[{"id": 4, "image_id": 9, "category_id": 99}])
    with pytest.raises(DataError, match="annotation 4 has category id 99"):
        load_split("lvis", tmp_path, "train")


def test_lvis_and_coco2014_are_never_crossed():
    for trained, tested in (("lvis", "coco2014"), ("coco2014", "lvis")):
        with pytest.raises(ConfigError, match="contaminated"):
            check_disjoint(trained, tested, "the checkpoint")
    check_disjoint("lvis", "lvis", "x")
    check_disjoint("coco2014", "coco2014", "x")
    check_disjoint("openimages", "coco2014", "x")


def test_a_lvis_checkpoint_is_not_scored_on_coco2014(tmp_path, monkeypatch, capsys):
    from clipml import cli

    monkeypatch.setattr(cli, "_checkpoint_config", lambda path: {"data": {"dataset": "lvis"}})
    with pytest.raises(SystemExit):
        cli.zero_shot_eval(["--checkpoint", str(tmp_path / "p.safetensors"), "data.dataset=coco2014",
                            f"data.root={tmp_path}"])
    assert "trained on lvis and would be tested on coco2014" in capsys.readouterr().err


def test_a_run_on_openimages_keeps_its_labels_and_says_which_test_classes_were_scored(tmp_path):
    from clipml.config import load_config
    from clipml.engine.train import train
    from clipml.experiment import ExperimentConfig

    rng = np.random.RandomState(0)
    root = tmp_path / "oi"
    expected = {}
    for split in ("train", "validation", "test"):
        lines, images = [], [f"{split}_{k}" for k in range(12)]
        for image in images:
            for label in ("/m/cat", "/m/dog", "/m/car", "/m/bus"):
                if split == "test" and label == "/m/car":
                    continue  # no known label
                if rng.rand() < 0.6:
                    value = 1 if (split == "test" and label == "/m/bus") else int(rng.rand() < 0.5)
                    lines.append(f"{image},verification,{label},{value}\n")
        write_openimages(root, split=split, human=HEADER + "".join(lines), machine=HEADER, images=images)
        expected[split] = load_split("openimages", root, split)
    cfg = load_config(ExperimentConfig, Path(__file__).parents[1] / "configs" / "openimages" / "coop.yaml", [
        f"data.root={root}", "backbone.spec=open_clip:clipml-tiny-vit", "backbone.image_size=32",
        "backbone.allow_random=true", "backbone.precision=fp32", "data.workers=0", "data.batch_size=8",
        "data.augment=none", "model.n_ctx=4", "optim.epochs=1", f"data.mask_dir={tmp_path / 'masks'}",
        f"output_dir={tmp_path / 'runs' / '{name}'}"])
    summary = train(cfg, resume=False)
    test = expected["test"].labels
    positives, negatives = (test == 1).any(axis=0), (test == 0).any(axis=0)
    assert positives.tolist()[2:] == [False, True] and negatives.tolist()[2:] == [False, False]
    scored = int((positives & negatives).sum())
    assert summary["test_classes"]["text"] == (f"scored {scored} of 4 classes; 1 without a known label, "
                                               "1 without a known negative")
    assert summary["test_ap"]["Car"] is None and summary["test_ap"]["Bus"] is None
    assert summary["test_ap"]["Cat"] is not None
    assert summary["test_classes"]["text"] in (Path(cfg.run_dir()) / "summary.md").read_text()
    assert f"test mAP: {summary['test_classes']['text']}" in (Path(cfg.run_dir()) / "report.html").read_text()
