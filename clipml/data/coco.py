"""MS-COCO 2014 from the official `annotations/instances_{train,val}2014.json` files.

Classes are the 80 categories in official order (sorted category id). Images keep the order
of the JSON `images` array, the order the SST/SARB/DSRB code masks in, so the reference
partial-label masks are reproduced. Crowd annotations count as positives (as in that code);
an image without any annotation is all-negative. `image_list="annotated"` keeps only images
with an annotation, in the order of their first annotation (pycocotools' `imgToAnns` keys):
the images DualCoOp's code trains and tests on. The MLR-PL papers test on val2014, so
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
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from clipml.data._files import check_unique, entry_field, finish_split, read_json, resolve_missing
from clipml.data.base import MultiLabelSplit, ObjectInstance
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASET = "coco2014"
SPLITS = {"train": "train", "val": "val", "test": "val"}
IMAGE_LISTS = ("all", "annotated")


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
    image_list: str = "all",
) -> MultiLabelSplit:
    """Load one COCO 2014 split as image paths (`train2014/...`) and a full label matrix.

    `check_images` stats every image file (about a second for the 83k train images on a
    local disk); turn it off on slow network file systems. `image_list`: "all" images of the
    JSON, or the "annotated" ones in first-annotation order (see the module docstring).
    """
    if image_list not in IMAGE_LISTS:
        raise ConfigError(f"{DATASET}: data.options.image_list must be one of {list(IMAGE_LISTS)}, "
                          f"got {image_list!r}")
    if split not in SPLITS:
        raise DataError(f"{DATASET}: unknown split {split!r}; expected one of {sorted(SPLITS)}")
    split = SPLITS[split]
    root = Path(root)
    ann_path = Path(annotations) if annotations else root / "annotations" / f"instances_{split}2014.json"
    image_dir = image_dir if image_dir is not None else f"{split}2014"
    data = read_json(ann_path, f"{DATASET}: annotation file")
    where = f"{DATASET}/{split} ({ann_path})"
    sections = {}
    for section in ("images", "categories", "annotations"):
        value = data.get(section, [] if section == "annotations" else None) if isinstance(data, dict) else None
        if not isinstance(value, list):
            raise DataError(f"{where}: not a COCO instances file: needs a list '{section}'")
        sections[section] = value
    images, categories = sections["images"], sections["categories"]

    image_ids = [entry_field(image, "id", where, "images", n) for n, image in enumerate(images, start=1)]
    files = [entry_field(image, "file_name", where, "images", n) for n, image in enumerate(images, start=1)]
    check_unique([str(i) for i in image_ids], where, "image id")
    check_unique(files, where, "image file_name")
    names = {}
    for number, category in enumerate(categories, start=1):
        cat_id, name = (entry_field(category, key, where, "categories", number) for key in ("id", "name"))
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: 'categories' entry {number} (id {cat_id}) has name {name!r}, "
                            "expected a non-empty string")
        check_unique([str(cat_id) for cat_id in names] + [str(cat_id)], where, "category id")
        names[cat_id] = name
    cat_ids = sorted(names)
    column = {cat_id: c for c, cat_id in enumerate(cat_ids)}
    row = {image_id: i for i, image_id in enumerate(image_ids)}

    labels = np.zeros((len(images), len(cat_ids)), dtype=np.int8)
    annotated: Dict[int, None] = {}  # image ids in first-annotation order
    for number, ann in enumerate(sections["annotations"], start=1):
        image_id = entry_field(ann, "image_id", where, "annotations", number)
        category_id = entry_field(ann, "category_id", where, "annotations", number)
        if image_id not in row:
            raise DataError(f"{where}: annotation {ann.get('id')} refers to unknown image id {image_id}")
        if category_id not in column:
            raise DataError(
                f"{where}: annotation {ann.get('id')} has category id {category_id}, which is not in 'categories'"
            )
        labels[row[image_id], column[category_id]] = 1
        annotated.setdefault(image_id)

    if image_list == "annotated":
        keep = [row[image_id] for image_id in annotated]
        image_ids, files, labels = [image_ids[i] for i in keep], [files[i] for i in keep], labels[keep]
    items = [f"{image_dir}/{name}" if image_dir else name for name in files]
    item_ids = dict(zip(items, image_ids))
    items, labels, skipped = resolve_missing(
        root, items, labels, check_images=check_images, on_missing_image=on_missing_image, where=where
    )
    # A detection-style file (boxes only) gives labels but no object masks.
    segmented = all("segmentation" in ann and "area" in ann for ann in sections["annotations"])
    if not segmented:
        logger.info("%s: annotations without 'segmentation' or 'area': no object masks, so no localisation "
                    "metrics or object-size breakdown", where)
    split_obj = CocoSplit(DATASET, split, [names[c] for c in cat_ids], items, labels, root,
                          annotations=ann_path if segmented else None, image_ids=item_ids)
    return finish_split(split_obj, skipped)
