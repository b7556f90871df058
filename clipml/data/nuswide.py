"""NUS-WIDE (81 concepts) from the files of the official distribution.

Files under `root`:

- `Concepts81.txt` (or `ConceptsList/Concepts81.txt`): the 81 concept names, in class order;
- `ImageList/TrainImagelist.txt`, `ImageList/TestImagelist.txt`: one image per line, relative
  to the image folder, with Windows separators as distributed (`actor\\0001_2124494179.jpg`);
- `Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt`: one 0/1 per line, line i
  = image i of the matching list.

Images are read from `Flickr/<path>` (option `image_dir`). Many distributions lack some
images (dead Flickr links): pass `on_missing_image="skip"` to leave them out; the split then
lists them in `skipped_images` and its fingerprint changes accordingly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from clipml.data._files import check_unique, finish_split, first_file, read_lines, resolve_missing
from clipml.data.base import MultiLabelSplit
from clipml.errors import DataError

DATASET = "nuswide"
SPLITS = {"train": "Train", "test": "Test"}


def _concepts_file(root: Path) -> Path:
    return first_file([root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt"], f"{DATASET}: concept list")


def load_nuswide(
    root: Union[str, Path],
    split: str = "train",
    *,
    image_dir: str = "Flickr",
    check_images: bool = True,
    on_missing_image: str = "error",
) -> MultiLabelSplit:
    """Load the NUS-WIDE `train` or `test` split with the 81-concept ground truth."""
    if split not in SPLITS:
        raise DataError(f"{DATASET}: unknown split {split!r}; expected one of {sorted(SPLITS)}")
    root = Path(root)
    tag = SPLITS[split]
    concepts_path = _concepts_file(root)
    concepts = read_lines(concepts_path, f"{DATASET} concept list")
    check_unique(concepts, f"{DATASET} ({concepts_path})", "concept")
    list_path = root / "ImageList" / f"{tag}Imagelist.txt"
    names = [line.replace("\\", "/") for line in read_lines(list_path, f"{DATASET} image list")]
    check_unique(names, f"{DATASET}/{split} ({list_path})", "image")

    labels = np.zeros((len(names), len(concepts)), dtype=np.int8)
    for c, concept in enumerate(concepts):
        path = root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{tag}.txt"
        values = read_lines(path, f"{DATASET} label file")
        if len(values) != len(names):
            raise DataError(f"{DATASET}: {path} has {len(values)} lines, expected {len(names)} (one per image of {list_path})")
        column = np.asarray(values)
        bad = ~np.isin(column, ("0", "1"))
        if bad.any():
            line = int(np.flatnonzero(bad)[0]) + 1
            raise DataError(f"{DATASET}: {path} line {line} is {values[line - 1]!r}, expected 0 or 1")
        labels[:, c] = column == "1"
    items = [f"{image_dir}/{name}" if image_dir else name for name in names]
    items, labels, skipped = resolve_missing(
        root, items, labels, check_images=check_images, on_missing_image=on_missing_image,
        where=f"{DATASET}/{split}",
    )
    return finish_split(MultiLabelSplit(DATASET, split, concepts, items, labels, root), skipped)
