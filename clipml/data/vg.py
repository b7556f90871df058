"""Visual Genome 200 in the form the MLR-PL papers (SST, SARB, DSRB) distribute it.

Files under `root` (each name can be overridden by an option):

- `{split}_list_500.txt`: one image file name per line (e.g. `2345.jpg`), in split order;
- `vg_category_200_labels_index.json`: `{"2345.jpg": [3, 17, ...], ...}`, the 0-based class
  ids present in each image (one file for both splits);
- `classes.txt`: the class names, one per line, line k = class id k. The papers' code does not
  ship names, so the user supplies this file; its length fixes the number of classes.

Images are read from `VG_100K/<name>` (option `image_dir`; merge VG_100K_2 into it or point
it elsewhere). Classes not listed for an image are negative, as in the reference code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np

from clipml.data._files import check_unique, finish_split, read_lines, read_text, resolve_missing
from clipml.data.base import MultiLabelSplit
from clipml.errors import DataError

DATASET = "vg200"


def load_vg200(
    root: Union[str, Path],
    split: str = "train",
    *,
    image_list: Optional[Union[str, Path]] = None,
    labels: Optional[Union[str, Path]] = None,
    classes: Optional[Union[str, Path]] = None,
    image_dir: str = "VG_100K",
    check_images: bool = True,
    on_missing_image: str = "error",
) -> MultiLabelSplit:
    """Load one VG-200 split (`train` or `test`) with full labels."""
    root = Path(root)
    list_path = Path(image_list) if image_list else root / f"{split}_list_500.txt"
    labels_path = Path(labels) if labels else root / "vg_category_200_labels_index.json"
    classes_path = Path(classes) if classes else root / "classes.txt"

    class_names = read_lines(classes_path, f"{DATASET} class-name file")
    check_unique(class_names, f"{DATASET} ({classes_path})", "class name")
    names = read_lines(list_path, f"{DATASET} image list")
    check_unique(names, f"{DATASET}/{split} ({list_path})", "image")
    try:
        index = json.loads(read_text(labels_path, f"{DATASET} label file"))
    except json.JSONDecodeError as error:
        raise DataError(f"{DATASET}: {labels_path} is not valid JSON: {error}") from None
    if not isinstance(index, dict):
        raise DataError(f"{DATASET}: {labels_path} must map image name -> list of class ids")

    num_classes = len(class_names)
    matrix = np.zeros((len(names), num_classes), dtype=np.int8)
    for i, name in enumerate(names):
        if name not in index:
            raise DataError(f"{DATASET}: image '{name}' of {list_path} has no entry in {labels_path}")
        ids = index[name]
        if not isinstance(ids, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in ids):
            raise DataError(f"{DATASET}: {labels_path}['{name}'] must be a list of integer class ids, got {ids!r}")
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise DataError(
                f"{DATASET}: {labels_path}['{name}'] has class ids {bad} outside 0..{num_classes - 1} "
                f"({num_classes} names in {classes_path})"
            )
        matrix[i, ids] = 1
    items = [f"{image_dir}/{name}" if image_dir else name for name in names]
    items, matrix, skipped = resolve_missing(
        root, items, matrix, check_images=check_images, on_missing_image=on_missing_image,
        where=f"{DATASET}/{split}",
    )
    return finish_split(MultiLabelSplit(DATASET, split, class_names, items, matrix, root), skipped)
