"""MS-COCO 2014 from the official `annotations/instances_{train,val}2014.json` files.

Classes are the 80 categories in official order (sorted category id). Images keep the order
of the JSON `images` array, the order the SST/SARB/DSRB code masks in, so the reference
partial-label masks are reproduced. Crowd annotations count as positives (as in that code);
an image without any annotation is all-negative. The MLR-PL papers test on val2014, so
`split="test"` is accepted as an alias of "val".
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Optional, Union

import numpy as np

from clipml.data._files import check_unique, finish_split, resolve_missing
from clipml.data.base import MultiLabelSplit
from clipml.errors import DataError

DATASET = "coco2014"
SPLITS = {"train": "train", "val": "val", "test": "val"}


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
    from pycocotools.coco import COCO

    if split not in SPLITS:
        raise DataError(f"{DATASET}: unknown split {split!r}; expected one of {sorted(SPLITS)}")
    split = SPLITS[split]
    root = Path(root)
    ann_path = Path(annotations) if annotations else root / "annotations" / f"instances_{split}2014.json"
    image_dir = image_dir if image_dir is not None else f"{split}2014"
    if not ann_path.is_file():
        raise DataError(f"{DATASET}: annotation file not found: {ann_path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(ann_path))
        images = coco.dataset["images"]
        categories = coco.dataset["categories"]
    except json.JSONDecodeError as error:
        raise DataError(f"{DATASET}: {ann_path} is not valid JSON: {error}") from None
    except (KeyError, TypeError, AssertionError) as error:
        raise DataError(
            f"{DATASET}: {ann_path} is not a COCO instances file "
            f"(needs 'images', 'annotations', 'categories'): {error!r}"
        ) from None

    where = f"{DATASET}/{split} ({ann_path})"
    check_unique([str(image["id"]) for image in images], where, "image id")
    check_unique([image["file_name"] for image in images], where, "image file_name")
    cat_ids = sorted(category["id"] for category in categories)
    check_unique([str(c) for c in cat_ids], where, "category id")
    column = {cat_id: c for c, cat_id in enumerate(cat_ids)}
    names = {category["id"]: category["name"] for category in categories}
    row = {image["id"]: i for i, image in enumerate(images)}

    labels = np.zeros((len(images), len(cat_ids)), dtype=np.int8)
    for ann in coco.dataset.get("annotations", []):
        if ann["image_id"] not in row:
            raise DataError(f"{where}: annotation {ann.get('id')} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in column:
            raise DataError(
                f"{where}: annotation {ann.get('id')} has category id {ann['category_id']}, "
                f"which is not in 'categories'"
            )
        labels[row[ann["image_id"]], column[ann["category_id"]]] = 1

    items = [f"{image_dir}/{image['file_name']}" if image_dir else image["file_name"] for image in images]
    items, labels, skipped = resolve_missing(
        root, items, labels, check_images=check_images, on_missing_image=on_missing_image, where=where
    )
    split_obj = MultiLabelSplit(DATASET, split, [names[c] for c in cat_ids], items, labels, root)
    return finish_split(split_obj, skipped)
