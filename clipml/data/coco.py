"""MS-COCO 2014 from the official `annotations/instances_{train,val}2014.json` files.

Classes are the 80 categories in official order (sorted category id). Images keep the order
of the JSON `images` array, the order the SST/SARB/DSRB code masks in, so the reference
partial-label masks are reproduced. Crowd annotations count as positives (as in that code);
an image without any annotation is all-negative. The MLR-PL papers test on val2014, so
`split="test"` is accepted as an alias of "val".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np

from clipml.data._files import check_unique, finish_split, resolve_missing
from clipml.data.base import MultiLabelSplit
from clipml.errors import DataError

DATASET = "coco2014"
SPLITS = {"train": "train", "val": "val", "test": "val"}


def _entry_field(entry, key: str, where: str, section: str, number: int):
    """`entry[key]` of entry `number` (1-based) of the `section` list; a malformed entry is a
    DataError naming the file, the list, the entry and the missing key."""
    if not isinstance(entry, dict):
        raise DataError(
            f"{where}: '{section}' entry {number} is {type(entry).__name__} {entry!r:.80}, expected an object")
    if key not in entry:
        shown = {k: entry[k] for k in list(entry)[:4]}
        raise DataError(f"{where}: '{section}' entry {number} {shown} has no '{key}'")
    return entry[key]


def load_coco2014(
    root: Union[str, Path],
    split: str = "train",
    *,
    annotations: Optional[Union[str, Path]] = None,
    image_dir: Optional[str] = None,
    check_images: bool = True,
    on_missing_image: str = "error",
) -> MultiLabelSplit:
    """Load one COCO 2014 split as image paths (`train2014/...`) and a full label matrix.

    `check_images` stats every image file (about a second for the 83k train images on a
    local disk); turn it off on slow network file systems.
    """
    if split not in SPLITS:
        raise DataError(f"{DATASET}: unknown split {split!r}; expected one of {sorted(SPLITS)}")
    split = SPLITS[split]
    root = Path(root)
    ann_path = Path(annotations) if annotations else root / "annotations" / f"instances_{split}2014.json"
    image_dir = image_dir if image_dir is not None else f"{split}2014"
    if not ann_path.is_file():
        raise DataError(f"{DATASET}: annotation file not found: {ann_path}")
    try:
        with open(ann_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{DATASET}: {ann_path} is not valid JSON: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{DATASET}: {ann_path} cannot be read: {error}") from None
    where = f"{DATASET}/{split} ({ann_path})"
    sections = {}
    for section in ("images", "categories", "annotations"):
        value = data.get(section, [] if section == "annotations" else None) if isinstance(data, dict) else None
        if not isinstance(value, list):
            raise DataError(f"{where}: not a COCO instances file: needs a list '{section}'")
        sections[section] = value
    images, categories = sections["images"], sections["categories"]

    image_ids = [_entry_field(image, "id", where, "images", n) for n, image in enumerate(images, start=1)]
    files = [_entry_field(image, "file_name", where, "images", n) for n, image in enumerate(images, start=1)]
    check_unique([str(i) for i in image_ids], where, "image id")
    check_unique(files, where, "image file_name")
    names = {}
    for number, category in enumerate(categories, start=1):
        cat_id, name = (_entry_field(category, key, where, "categories", number) for key in ("id", "name"))
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: 'categories' entry {number} (id {cat_id}) has name {name!r}, "
                            "expected a non-empty string")
        check_unique([str(cat_id) for cat_id in names] + [str(cat_id)], where, "category id")
        names[cat_id] = name
    cat_ids = sorted(names)
    column = {cat_id: c for c, cat_id in enumerate(cat_ids)}
    row = {image_id: i for i, image_id in enumerate(image_ids)}

    labels = np.zeros((len(images), len(cat_ids)), dtype=np.int8)
    for number, ann in enumerate(sections["annotations"], start=1):
        image_id = _entry_field(ann, "image_id", where, "annotations", number)
        category_id = _entry_field(ann, "category_id", where, "annotations", number)
        if image_id not in row:
            raise DataError(f"{where}: annotation {ann.get('id')} refers to unknown image id {image_id}")
        if category_id not in column:
            raise DataError(
                f"{where}: annotation {ann.get('id')} has category id {category_id}, which is not in 'categories'"
            )
        labels[row[image_id], column[category_id]] = 1

    items = [f"{image_dir}/{name}" if image_dir else name for name in files]
    items, labels, skipped = resolve_missing(
        root, items, labels, check_images=check_images, on_missing_image=on_missing_image, where=where
    )
    split_obj = MultiLabelSplit(DATASET, split, [names[c] for c in cat_ids], items, labels, root)
    return finish_split(split_obj, skipped)
