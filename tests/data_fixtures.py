"""Tiny datasets in the real file formats, written into a temp dir by the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from PIL import Image

from clipml.data.vocab import official_names

COCO_SKIPPED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_IDS = [i for i in range(1, 91) if i not in COCO_SKIPPED_IDS]  # the real 80 category ids


def write_jpeg(path: Path, size=(8, 6), color=(120, 30, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def make_coco(root: Path, split: str = "train") -> Dict:
    """4 images in JSON order 30, 10, 20, 40; image 40 has no annotation.

    Categories are listed in reverse id order, so the loader must sort them.
    """
    names = official_names("coco2014")
    categories = [{"id": cid, "name": name, "supercategory": "x"} for cid, name in zip(COCO_IDS, names)][::-1]
    images = [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg", "width": 8, "height": 6} for i in (30, 10, 20, 40)]
    anns = [
        (30, 1), (30, 1), (30, 18),   # person twice, dog
        (10, 90),                      # toothbrush (last class)
        (20, 3), (20, 13),             # car, stop sign
    ]
    annotations = [
        {"id": k, "image_id": img, "category_id": cat, "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0}
        for k, (img, cat) in enumerate(anns, start=1)
    ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    (ann_dir / f"instances_{split}2014.json").write_text(json.dumps(data))
    for image in images:
        write_jpeg(root / f"{split}2014" / image["file_name"])
    return data


def polygon(x0, y0, x1, y1):
    """A rectangle as a COCO polygon: it rasterises to pixels x0..x1-1, y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_coco_with_masks(root: Path, split: str = "val"):
    """Images 7 (20x10: two people, one of them in two parts, and a dog), 3 (10x12: a crowd of
    cars as an uncompressed RLE) and 5 (6x6: nothing), in that JSON order."""
    names = official_names("coco2014")
    categories = [{"id": cid, "name": name, "supercategory": "x"} for cid, name in zip(COCO_IDS, names)]
    images = [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg", "width": w, "height": h}
              for i, w, h in ((7, 20, 10), (3, 10, 12), (5, 6, 6))]
    # Cars in rows 4..7 of columns 3..5 of the 12 x 10 image, column-major run lengths.
    crowd = {"counts": [40, 4, 8, 4, 8, 4, 52], "size": [12, 10]}
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [polygon(2, 1, 6, 4)], "area": 11.5,
         "bbox": [2, 1, 4, 3], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 18, "segmentation": [polygon(10, 0, 18, 10)], "area": 80.0,
         "bbox": [10, 0, 8, 10], "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 1, "segmentation": [polygon(0, 6, 2, 8), polygon(4, 8, 6, 10)],
         "area": 8.0, "bbox": [0, 6, 6, 4], "iscrowd": 0},
        {"id": 4, "image_id": 3, "category_id": 3, "segmentation": crowd, "area": 12.0, "bbox": [3, 4, 3, 4],
         "iscrowd": 1},
    ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}2014.json"
    path.write_text(json.dumps(data))
    for image in images:
        write_jpeg(root / f"{split}2014" / image["file_name"], size=(image["width"], image["height"]))
    return path, data


VOC_OBJECTS = {
    # image id -> [(class, difficult)]
    "000005": [("chair", 0), ("chair", 1), ("diningtable", 1)],
    "000007": [("car", 0)],
    "000009": [("horse", 0), ("person", 1), ("person", 0), ("pottedplant", 1)],
}


def voc_xml(objects: Sequence) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
        f"</bndbox></object>"
        for name, difficult in objects
    )
    return f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename>{body}</annotation>"


def make_voc(root: Path, split: str = "trainval", objects: Dict = None) -> None:
    objects = objects or VOC_OBJECTS
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects) + "\n")
    for image_id, objs in objects.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objs))
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg")


VG_CLASSES = ["man", "window", "tree", "building", "shirt"]
VG_LABELS = {"1.jpg": [0, 2], "2.jpg": [4], "3.jpg": [], "4.jpg": [1, 3, 4]}


def make_vg(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(VG_CLASSES) + "\n")
    (root / "vg_category_200_labels_index.json").write_text(json.dumps(VG_LABELS))
    (root / "train_list_500.txt").write_text("2.jpg\n1.jpg\n4.jpg\n")
    (root / "test_list_500.txt").write_text("3.jpg\n")
    for name in VG_LABELS:
        write_jpeg(root / "VG_100K" / name)


NUS_CONCEPTS = ["airport", "animal", "beach"]
NUS_TRAIN = ["actor\\0001_1.jpg", "beach\\0002_2.jpg", "zoo\\0003_3.jpg"]
NUS_TRAIN_LABELS = {"airport": [1, 0, 0], "animal": [0, 0, 1], "beach": [1, 1, 0]}


def make_nuswide(root: Path) -> None:
    (root / "ImageList").mkdir(parents=True, exist_ok=True)
    (root / "ConceptsList").mkdir(parents=True, exist_ok=True)
    (root / "ConceptsList" / "Concepts81.txt").write_text("\r\n".join(NUS_CONCEPTS) + "\r\n")
    (root / "ImageList" / "TrainImagelist.txt").write_text("\r\n".join(NUS_TRAIN) + "\r\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("actor\\0009_9.jpg\r\n")
    labels_dir = root / "Groundtruth" / "TrainTestLabels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    for concept in NUS_CONCEPTS:
        (labels_dir / f"Labels_{concept}_Train.txt").write_text("".join(f"{v} \n" for v in NUS_TRAIN_LABELS[concept]))
        (labels_dir / f"Labels_{concept}_Test.txt").write_text("0\n")
    for name in NUS_TRAIN + ["actor\\0009_9.jpg"]:
        write_jpeg(root / "Flickr" / name.replace("\\", "/"))


MANIFEST_CLASSES = ["cat", "dog", "car", "bus"]
MANIFEST_RECORDS: List[Dict] = [
    {"image": "img/a.jpg", "positive": ["cat", "dog"], "negative": ["car"], "unknown": ["bus"]},
    {"image": "img/b.jpg", "positive": ["car"]},
    {"image": "img/c.jpg", "positive": [], "unknown": ["cat"]},
]


def make_manifest(root: Path, fmt: str = "jsonl", split: str = "train", records=None, classes=True) -> Path:
    records = MANIFEST_RECORDS if records is None else records
    root.mkdir(parents=True, exist_ok=True)
    if classes:
        (root / "classes.txt").write_text("\n".join(MANIFEST_CLASSES) + "\n")
    path = root / f"{split}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        lines = ["image,positive,negative,unknown"]
        for r in records:
            lines.append(",".join([r["image"]] + [";".join(r.get(f, [])) for f in ("positive", "negative", "unknown")]))
        path.write_text("\n".join(lines) + "\n")
    for r in records:
        if not (root / r["image"]).exists():
            write_jpeg(root / r["image"])
    return path
