"""LVIS v1 image-level labels from `lvis_v1_{train,val}.json`, partial by construction.

LVIS is annotated federatedly: per image, a class is positive if the image has an annotation of
it, negative if it is in the image's `neg_category_ids` (verified absent), and unknown otherwise.
`not_exhaustive_category_ids` lists classes whose instances were not all annotated: that leaves
image-level positives positive, and a class listed there cannot also be a verified negative (such
an image is refused). Classes are the `categories` in id order (1203 in v1), named by `name`
(underscores read as spaces); images keep the JSON order and live where their `coco_url` says
(`train2017/...` or `val2017/...`) under the root. The test annotations are not public, so
`split="test"` is an alias of "val". Labels are built straight into sparse form (clipml.data.sparse):
no [images, classes] matrix.

LVIS train holds COCO 2014 val images (and LVIS val COCO 2014 train images), so a model trained on
one must not be scored on the other: see `check_disjoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union
from urllib.parse import urlparse

import numpy as np

from clipml.data._files import check_unique, entry_field, finish_split, first_file, read_json, resolve_missing
from clipml.data.base import NEGATIVE, POSITIVE, MultiLabelSplit
from clipml.data.sparse import SparseLabels
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASET = "lvis"
SPLITS = {"train": "train", "val": "val", "test": "val"}
OVERLAPPING = frozenset({"lvis", "coco2014"})
"""Datasets whose images overlap across their train and test splits (LVIS v1 is built on COCO 2017)."""


def check_disjoint(trained_on: str, tested_on: str, what: str) -> None:
    """A ConfigError when a model trained on one of LVIS and COCO 2014 is scored on the other: their
    images overlap (LVIS train holds COCO val2014 images), so the test would reward memorising it."""
    if trained_on != tested_on and {trained_on, tested_on} <= OVERLAPPING:
        raise ConfigError(
            f"{what} was trained on {trained_on} and would be tested on {tested_on}: LVIS v1 train holds most COCO "
            f"val2014 images (and LVIS val COCO train2014 ones), so the score would be contaminated; test on "
            f"{trained_on}'s own test split")


def _id_list(entry, key: str, where: str, number: int) -> list:
    value = entry.get(key, [])
    if not isinstance(value, list):
        raise DataError(f"{where}: 'images' entry {number} (id {entry.get('id')}): '{key}' must be a list of "
                        f"category ids, found {value!r:.80}")
    return value


def _image_file(entry, where: str, number: int) -> str:
    """`train2017/000000391895.jpg` from the image's coco_url."""
    url = entry_field(entry, "coco_url", where, "images", number)
    parts = urlparse(url).path.strip("/").split("/") if isinstance(url, str) else []
    if len(parts) < 2 or not parts[-1]:
        raise DataError(f"{where}: 'images' entry {number} (id {entry.get('id')}) has coco_url {url!r}, expected "
                        "http://images.cocodataset.org/<folder>/<file>.jpg")
    return f"{parts[-2]}/{parts[-1]}"


def find_annotations(root: Path, split: str) -> Path:
    """`root/annotations/lvis_v1_<split>.json` or `root/lvis_v1_<split>.json`."""
    return first_file([root / "annotations" / f"lvis_v1_{split}.json", root / f"lvis_v1_{split}.json"],
                      f"{DATASET}: annotation file")


def load_lvis(
    root: Union[str, Path],
    split: str = "train",
    *,
    annotations: Optional[Union[str, Path]] = None,
    check_images: bool = True,
    on_missing_image: str = "error",
) -> MultiLabelSplit:
    """Load one LVIS v1 split as image paths and its own partial label matrix (module docstring)."""
    if split not in SPLITS:
        raise DataError(f"{DATASET}: unknown split {split!r}; expected one of {sorted(SPLITS)}")
    split = SPLITS[split]
    root = Path(root)
    path = Path(annotations) if annotations else find_annotations(root, split)
    data = read_json(path, f"{DATASET}: annotation file")
    where = f"{DATASET}/{split} ({path})"
    sections = {}
    for section in ("images", "categories", "annotations"):
        value = data.get(section) if isinstance(data, dict) else None
        if not isinstance(value, list):
            raise DataError(f"{where}: not an LVIS file: needs a list '{section}'")
        sections[section] = value

    names: Dict[int, str] = {}
    for number, category in enumerate(sections["categories"], start=1):
        cat_id, name = (entry_field(category, key, where, "categories", number) for key in ("id", "name"))
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: 'categories' entry {number} (id {cat_id}) has name {name!r}")
        if cat_id in names:
            raise DataError(f"{where}: 'categories' entry {number}: duplicate category id {cat_id}")
        names[cat_id] = name
    column = {cat_id: c for c, cat_id in enumerate(sorted(names))}

    images = sections["images"]
    image_ids = [entry_field(image, "id", where, "images", n) for n, image in enumerate(images, start=1)]
    files = [_image_file(image, where, n) for n, image in enumerate(images, start=1)]
    check_unique([str(i) for i in image_ids], where, "image id")
    check_unique(files, where, "image file")
    row = {image_id: i for i, image_id in enumerate(image_ids)}

    # (image row, class column) -> value, built straight into sparse labels: no [images, classes] matrix
    known: Dict[Tuple[int, int], int] = {}
    not_exhaustive = set()
    for number, image in enumerate(images, start=1):
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            for cat_id in _id_list(image, key, where, number):
                if cat_id not in column:
                    raise DataError(f"{where}: 'images' entry {number} (id {image['id']}): {key} holds category "
                                    f"{cat_id!r}, which is not in 'categories'")
                entry = (number - 1, column[cat_id])
                if key == "neg_category_ids":
                    known[entry] = NEGATIVE
                else:
                    not_exhaustive.add(entry)
    both = sorted(entry for entry in not_exhaustive if known.get(entry) == NEGATIVE)
    if both:
        i, c = both[0]
        raise DataError(f"{where}: image {image_ids[i]} lists category {sorted(names)[c]} in both neg_category_ids "
                        "and not_exhaustive_category_ids (absent and present at once)")
    for number, ann in enumerate(sections["annotations"], start=1):
        image_id = entry_field(ann, "image_id", where, "annotations", number)
        cat_id = entry_field(ann, "category_id", where, "annotations", number)
        if image_id not in row:
            raise DataError(f"{where}: annotation {ann.get('id')} refers to unknown image id {image_id!r}")
        if cat_id not in column:
            raise DataError(f"{where}: annotation {ann.get('id')} has category id {cat_id!r}, not in 'categories'")
        entry = (row[image_id], column[cat_id])
        if known.get(entry) == NEGATIVE:
            raise DataError(f"{where}: annotation {ann.get('id')} marks category {cat_id} present in image "
                            f"{image_id}, whose neg_category_ids list it as absent")
        known[entry] = POSITIVE
    entries = np.array(list(known), dtype=np.int64).reshape(-1, 2)
    values = np.fromiter(known.values(), dtype=np.int8, count=len(known))
    labels = SparseLabels.from_triples(entries[:, 0], entries[:, 1], values, (len(images), len(column)))

    logger.info("%s/%s: %d images, %d classes, %.3f%% of labels known (%d positive, %d negative)", DATASET, split,
                len(images), len(column), 100 * labels.nnz / max(len(images) * len(column), 1),
                int((values == POSITIVE).sum()), int((values == NEGATIVE).sum()))
    items, labels, skipped = resolve_missing(root, files, labels, check_images=check_images,
                                             on_missing_image=on_missing_image, where=where)
    classes: List[str] = [names[cat_id] for cat_id in sorted(names)]
    return finish_split(MultiLabelSplit(DATASET, split, classes, items, labels, root, labels_complete=False), skipped)

