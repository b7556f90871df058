"""MS-COCO 2014 from the official `annotations/instances_{train,val}2014.json` files.

Classes are the 80 categories in official order (sorted category id). Images keep the order
of the JSON `images` array, the order the SST/SARB/DSRB code masks in, so the reference
partial-label masks are reproduced. Crowd annotations count as positives (as in that code);
an image without any annotation is all-negative. The MLR-PL papers test on val2014, so
`split="test"` is accepted as an alias of "val".

A split carries its images' objects (`instances`, `object_areas`) for the localisation
metrics and the object-size breakdown of mAP: masks by pycocotools' `annToMask` (polygons
and crowd RLEs), decoded per image when asked for; areas from the annotations' `area`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from clipml.data._files import check_unique, finish_split, resolve_missing
from clipml.data.base import MultiLabelSplit, ObjectInstance
from clipml.errors import DataError

logger = logging.getLogger(__name__)

DATASET = "coco2014"
SPLITS = {"train": "train", "val": "val", "test": "val"}


@functools.lru_cache(maxsize=1)  # an evaluation reads one split's objects at a time
def _read_objects(path: str, stamp: Tuple[int, int]):
    """(pycocotools COCO, category id -> column, class names) of an annotation file, read again
    only when the file changes (`stamp`: mtime and size); the splits hold only its path."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(path)
    cat_ids = sorted(coco.cats)
    return coco, {cat_id: c for c, cat_id in enumerate(cat_ids)}, [coco.cats[c]["name"] for c in cat_ids]


@dataclasses.dataclass
class CocoSplit(MultiLabelSplit):
    """A COCO split whose images carry their annotated objects; `image_ids` maps each item
    to its COCO image id (kept by `subset`, which keeps items)."""

    annotations: Optional[Path] = None
    image_ids: Dict[str, int] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def has_instances(self) -> bool:
        return self.annotations is not None

    def _annotations_of(self, index: int):
        """(COCO, category id -> column, image record, the image's annotations)."""
        path = Path(self.annotations)
        try:
            info = path.stat()
        except OSError as error:
            raise DataError(f"{DATASET}: cannot read the object annotations {path}: {error}") from None
        coco, column, names = _read_objects(str(path), (info.st_mtime_ns, info.st_size))
        item = self.items[index]
        image_id = self.image_ids.get(item)
        if names != self.classes or image_id not in coco.imgs:
            raise DataError(f"{DATASET}: {path} changed since {self.split} was loaded "
                            f"(categories or image {item!r} no longer match); load the split again")
        return coco, column, coco.imgs[image_id], coco.imgToAnns.get(image_id, [])

    def instances(self, index: int) -> Optional[List[ObjectInstance]]:
        if not self.has_instances:
            return None
        coco, column, image, annotations = self._annotations_of(index)
        objects = []
        for ann in annotations:
            try:
                mask = coco.annToMask(ann).astype(bool)
                valid = mask.shape == (image["height"], image["width"])
            except Exception as error:  # pycocotools raises a bare Exception for unknown formats
                raise DataError(f"{DATASET}: {self.annotations}: annotation {ann.get('id')} has no valid "
                                f"'segmentation' (or its image no 'height'/'width'): {error!r}") from None
            if not valid:
                raise DataError(f"{DATASET}: {self.annotations}: annotation {ann.get('id')} decodes to a "
                                f"{mask.shape} mask, its image is {image['height']}x{image['width']}")
            objects.append(ObjectInstance(column[ann["category_id"]], mask))
        return objects

    def object_areas(self, index: int) -> Optional[List[Tuple[int, float]]]:
        if not self.has_instances:
            return None
        _, column, image, annotations = self._annotations_of(index)
        try:
            pixels = float(image["width"]) * float(image["height"])
            return [(column[ann["category_id"]], float(ann["area"]) / pixels) for ann in annotations]
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
            raise DataError(f"{DATASET}: {self.annotations}: image {image.get('id')} needs 'width' and 'height' "
                            f"and each of its annotations an 'area': {error!r}") from None


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
    annotations = coco.dataset.get("annotations", [])
    for ann in annotations:
        if ann["image_id"] not in row:
            raise DataError(f"{where}: annotation {ann.get('id')} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in column:
            raise DataError(
                f"{where}: annotation {ann.get('id')} has category id {ann['category_id']}, "
                f"which is not in 'categories'"
            )
        labels[row[ann["image_id"]], column[ann["category_id"]]] = 1

    items = [f"{image_dir}/{image['file_name']}" if image_dir else image["file_name"] for image in images]
    image_ids = {item: image["id"] for item, image in zip(items, images)}
    items, labels, skipped = resolve_missing(
        root, items, labels, check_images=check_images, on_missing_image=on_missing_image, where=where
    )
    # A detection-style file (boxes only) gives labels but no object masks.
    segmented = all("segmentation" in ann and "area" in ann for ann in annotations)
    if not segmented:
        logger.info("%s: annotations without 'segmentation' or 'area': no object masks, so no localisation "
                    "metrics or object-size breakdown", where)
    split_obj = CocoSplit(DATASET, split, [names[c] for c in cat_ids], items, labels, root,
                          annotations=ann_path if segmented else None, image_ids=image_ids)
    return finish_split(split_obj, skipped)
