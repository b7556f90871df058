"""PASCAL VOC 2007 from `Annotations/*.xml` and `ImageSets/Main/<split>.txt`.

`root` is the `VOC2007` folder (VOCdevkit/VOC2007). Images are `JPEGImages/<id>.jpg`, in the
order of the ImageSets list.

Difficult objects: with `difficult="ignore"` (default, the VOC devkit rule) a class present
only through difficult objects gets -1 ("ignore": left out of that class's AP ranking and
unknown in training); with `difficult="negative"` it gets 0, the rule of the SSGRL/SARB/DSRB
code (use it to compare with their numbers). A class with any non-difficult object is positive.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Union

import numpy as np

from clipml.data._files import check_unique, finish_split, read_lines, resolve_missing
from clipml.data.base import NEGATIVE, POSITIVE, UNKNOWN, MultiLabelSplit
from clipml.errors import ConfigError, DataError

DATASET = "voc2007"
CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
DIFFICULT_RULES = {"ignore": UNKNOWN, "negative": NEGATIVE}


def _objects(xml_path: Path):
    """(class name, difficult) for every object in one annotation file."""
    if not xml_path.is_file():
        raise DataError(f"{DATASET}: annotation file not found: {xml_path}")
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as error:
        raise DataError(f"{DATASET}: malformed XML in {xml_path}: {error}") from None
    for number, obj in enumerate(tree.getroot().iter("object"), start=1):
        name = obj.findtext("name")
        if not name or not name.strip():
            raise DataError(f"{DATASET}: object {number} in {xml_path} has no <name>")
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise DataError(
                f"{DATASET}: object {number} in {xml_path} has <difficult>{difficult}</difficult>, expected 0 or 1"
            )
        yield name.strip().lower(), difficult == "1"


def load_voc2007(
    root: Union[str, Path],
    split: str = "trainval",
    *,
    difficult: str = "ignore",
    check_images: bool = True,
    on_missing_image: str = "error",
) -> MultiLabelSplit:
    """Load one VOC 2007 split (`trainval`, `test`, `train` or `val`) with full labels."""
    if difficult not in DIFFICULT_RULES:
        raise ConfigError(f"{DATASET}: data.options.difficult must be one of {sorted(DIFFICULT_RULES)}, got {difficult!r}")
    root = Path(root)
    list_path = root / "ImageSets" / "Main" / f"{split}.txt"
    ids = [line.split()[0] for line in read_lines(list_path, f"{DATASET} image list")]
    check_unique(ids, f"{DATASET}/{split} ({list_path})", "image id")
    column = {name: c for c, name in enumerate(CLASSES)}
    labels = np.zeros((len(ids), len(CLASSES)), dtype=np.int8)
    difficult_code = DIFFICULT_RULES[difficult]
    for i, image_id in enumerate(ids):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        for name, is_difficult in _objects(xml_path):
            if name not in column:
                raise DataError(
                    f"{DATASET}: unknown class '{name}' in {xml_path}; expected one of the 20 VOC classes"
                )
            c = column[name]
            if not is_difficult:
                labels[i, c] = POSITIVE
            elif labels[i, c] != POSITIVE:
                labels[i, c] = difficult_code
    items = [f"JPEGImages/{image_id}.jpg" for image_id in ids]
    items, labels, skipped = resolve_missing(
        root, items, labels, check_images=check_images, on_missing_image=on_missing_image,
        where=f"{DATASET}/{split}",
    )
    return finish_split(MultiLabelSplit(DATASET, split, list(CLASSES), items, labels, root), skipped)
