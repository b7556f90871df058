"""Open Images image-level labels (V6 and V7 file layouts), partial by construction.

Label files are CSV with the header `ImageID,Source,LabelName,Confidence`. Human-verified labels
have Confidence 1 (present) or 0 (verified absent). Machine-generated labels are a classifier's
predictions with a fractional confidence (the dataset's notes: "generally >= 0.5"): with
`sources="human+machine"` one with confidence >= `machine_threshold` is a positive and one below
it stays unknown, never a negative, since the classifier never asserted an absence. A human label
always wins over a machine label of the same (image, class); two human labels that disagree leave
it unknown. Every other (image, class) pair is unknown.

A split holds the images with at least one known label among the chosen classes, in the order
they first appear in the label files; items are `<split folder>/<ImageID>.jpg`. Classes are the
trainable list of the version (`oidv6-classes-trainable.txt` or `classes-trainable.txt`,
`oidv7-classes-trainable.txt`; 9,605 in V6) or `classes_file`, one LabelName a line; names come
from the class descriptions file (`LabelName,DisplayName`), a name shared by two classes getting
its LabelName appended so that every class keeps its own prompt.

The labels are read into (row, column, value) triples first (`read_image_labels`) and become the
split's sparse labels (clipml.data.sparse) without a dense [images, classes] matrix: memory grows
with the labels known (about 5 bytes each), not with images x classes.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from array import array
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from clipml.data._files import check_unique, finish_split, resolve_missing
from clipml.data.base import NEGATIVE, POSITIVE, MultiLabelSplit
from clipml.data.sparse import SparseLabels
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASET = "openimages"
SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
SOURCES = ("human", "human+machine")
VERSIONS = ("auto", "v6", "v7")
HEADER = ["ImageID", "Source", "LabelName", "Confidence"]
DESCRIPTION_HEADERS = (["LabelName", "DisplayName"], ["id", "name"])
HUMAN_VALUES = {"1": POSITIVE, "0": NEGATIVE, "1.0": POSITIVE, "0.0": NEGATIVE}

LAYOUTS = {
    # V6: train human labels and the class files carry the oidv6- prefix; the rest keep V5's names.
    "v6": {
        "human": {"train": "oidv6-train-annotations-human-imagelabels.csv",
                  "validation": "validation-annotations-human-imagelabels.csv",
                  "test": "test-annotations-human-imagelabels.csv"},
        "machine": {split: f"{split}-annotations-machine-imagelabels.csv" for split in ("train", "validation", "test")},
        "descriptions": "oidv6-class-descriptions.csv",
        "trainable": ("oidv6-classes-trainable.txt", "classes-trainable.txt"),
    },
    "v7": {
        kind: {split: f"oidv7-{split}-annotations-{kind}-imagelabels.csv" for split in ("train", "validation", "test")}
        for kind in ("human", "machine")
    } | {"descriptions": "oidv7-class-descriptions.csv", "trainable": ("oidv7-classes-trainable.txt",)},
}


@dataclasses.dataclass
class ImageLabels:
    """Known labels as triples: `values[k]` (1 or 0) of image `images[rows[k]]` and class
    `class_ids[cols[k]]`; every pair not listed is unknown."""

    images: List[str]
    class_ids: List[str]
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray

    def sparse(self) -> SparseLabels:
        """The split's labels straight from the triples: no [images, classes] matrix is built
        (9,605 classes x 9M training images would be 86 GB dense)."""
        return SparseLabels.from_triples(self.rows, self.cols, self.values, (len(self.images), len(self.class_ids)))


@dataclasses.dataclass
class OpenImagesSplit(MultiLabelSplit):
    """An Open Images split; `class_ids` are the LabelNames (`/m/...`) of `classes`, in order."""

    class_ids: List[str] = dataclasses.field(default_factory=list, repr=False)


def _check_options(version: str, sources: str, machine_threshold: float) -> None:
    if version not in VERSIONS:
        raise ConfigError(f"{DATASET}: data.options.version must be one of {list(VERSIONS)}, got {version!r}")
    if sources not in SOURCES:
        raise ConfigError(f"{DATASET}: data.options.sources must be one of {list(SOURCES)}, got {sources!r}")
    if isinstance(machine_threshold, bool) or not isinstance(machine_threshold, (int, float)) \
            or not 0.0 < machine_threshold <= 1.0:
        raise ConfigError(f"{DATASET}: data.options.machine_threshold must be a number in (0, 1], "
                          f"got {machine_threshold!r}")


def detect_version(folder: Path) -> str:
    """"v7" or "v6", from which class descriptions file `folder` holds."""
    found = [version for version, layout in LAYOUTS.items() if (folder / layout["descriptions"]).is_file()]
    if len(found) == 1:
        return found[0]
    names = " or ".join(layout["descriptions"] for layout in LAYOUTS.values())
    if not found:
        raise DataError(f"{DATASET}: no class descriptions file in {folder} (expected {names}); see the README "
                        "for the files to download")
    raise DataError(f"{DATASET}: {folder} holds both {names}; set data.options.version to v6 or v7")


def read_descriptions(path: Path) -> Dict[str, str]:
    """LabelName -> DisplayName from a class descriptions CSV (header optional)."""
    if not path.is_file():
        raise DataError(f"{DATASET}: class descriptions file not found: {path}")
    names: Dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        for fields in reader:
            if not fields or (reader.line_num == 1 and fields in DESCRIPTION_HEADERS):
                continue
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                raise DataError(f"{path} line {reader.line_num}: expected LabelName,DisplayName, found {fields!r:.120}")
            label, name = fields[0].strip(), fields[1].strip()
            if label in names:
                raise DataError(f"{path} line {reader.line_num}: LabelName {label} is listed twice")
            names[label] = name
    if not names:
        raise DataError(f"{path}: no class listed")
    return names


def read_class_ids(path: Path, descriptions: Dict[str, str], where_descriptions: Path) -> List[str]:
    """The LabelNames of a classes file (one a line), each described in the descriptions file."""
    if not path.is_file():
        raise DataError(f"{DATASET}: classes file not found: {path}")
    ids: List[str] = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            label = line.strip()
            if not label:
                continue
            if label not in descriptions:
                raise DataError(f"{path} line {number}: class {label!r} is not in {where_descriptions}")
            ids.append(label)
    check_unique(ids, str(path), "class")
    if not ids:
        raise DataError(f"{path}: no class listed")
    return ids


def display_names(class_ids: Sequence[str], descriptions: Dict[str, str]) -> List[str]:
    """DisplayName per class; a name two chosen classes share gets ' (LabelName)' appended."""
    names = [descriptions[label] for label in class_ids]
    counts: Dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    shared = {name for name, count in counts.items() if count > 1}
    if shared:
        logger.warning("%s: %d display name%s shared by several classes (e.g. %r); those classes are named "
                       "'DisplayName (LabelName)'", DATASET, len(shared), " is" if len(shared) == 1 else "s are",
                       sorted(shared)[0])
    return [f"{name} ({label})" if name in shared else name for name, label in zip(names, class_ids)]


def _human_value(text: str, path: Path, line: int) -> int:
    value = HUMAN_VALUES.get(text)
    if value is None:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number not in (0.0, 1.0):
            raise DataError(f"{path} line {line}: a human-verified label needs Confidence 1 (present) or 0 "
                            f"(absent), found {text!r}")
        value = POSITIVE if number == 1.0 else NEGATIVE
    return value


def _machine_confidence(text: str, path: Path, line: int) -> float:
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise DataError(f"{path} line {line}: a machine-generated label needs a Confidence in [0, 1], found {text!r}")
    return number


def read_label_file(path: Path, kind: str, columns: Dict[str, int], image_rows: Dict[str, int],
                    machine_threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of one label file's known labels for the classes in `columns`; images
    get rows in `image_rows` (updated in place) when first seen with a known label. `kind`:
    "human" (values 1/0) or "machine" (positives at confidence >= machine_threshold, the rest
    dropped). Every line's fields are checked, kept class or not."""
    if not path.is_file():
        raise DataError(f"{DATASET}: label file not found: {path}")
    human = kind == "human"
    rows, cols, values = array("i"), array("i"), array("b")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != HEADER:
            raise DataError(f"{path} line 1: header {header} must be {','.join(HEADER)}")
        for fields in reader:
            if len(fields) != 4:
                if not fields:
                    continue
                raise DataError(f"{path} line {reader.line_num}: {len(fields)} fields, expected 4 "
                                f"({','.join(HEADER)}): {fields!r:.120}")
            image, _, label, confidence = fields
            if not image:
                raise DataError(f"{path} line {reader.line_num}: empty ImageID")
            if human:
                value = HUMAN_VALUES.get(confidence)
                if value is None:
                    value = _human_value(confidence, path, reader.line_num)
            else:
                value = POSITIVE if _machine_confidence(confidence, path, reader.line_num) >= machine_threshold \
                    else None
            column = columns.get(label)
            if column is None or value is None:
                continue
            row = image_rows.get(image)
            if row is None:
                row = image_rows[image] = len(image_rows)
            rows.append(row)
            cols.append(column)
            values.append(value)
    return (np.frombuffer(rows, dtype=np.int32), np.frombuffer(cols, dtype=np.int32),
            np.frombuffer(values, dtype=np.int8))


def combine(human: Tuple[np.ndarray, ...], machine: Optional[Tuple[np.ndarray, ...]], num_classes: int
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Merge the triples: duplicates collapse, human labels that disagree become unknown, human
    labels override machine ones. Returns (rows, cols, values, disagreements)."""
    def keys(part):
        return part[0].astype(np.int64) * num_classes + part[1]

    human_keys = keys(human)
    positive = np.unique(human_keys[human[2] == POSITIVE])
    negative = np.unique(human_keys[human[2] == NEGATIVE])
    disputed = np.intersect1d(positive, negative, assume_unique=True)
    positive = np.setdiff1d(positive, disputed, assume_unique=True)
    negative = np.setdiff1d(negative, disputed, assume_unique=True)
    if machine is not None:
        from_machine = np.setdiff1d(np.unique(keys(machine)), np.unique(human_keys), assume_unique=True)
        positive = np.union1d(positive, from_machine)
    all_keys = np.concatenate([positive, negative])
    values = np.concatenate([np.full(len(positive), POSITIVE, np.int8), np.full(len(negative), NEGATIVE, np.int8)])
    return ((all_keys // num_classes).astype(np.int64), (all_keys % num_classes).astype(np.int64), values,
            int(len(disputed)))


def read_image_labels(folder: Path, split: str, *, version: str = "auto", sources: str = "human",
                      machine_threshold: float = 0.5, classes_file: Optional[Union[str, Path]] = None
                      ) -> Tuple[ImageLabels, List[str], str]:
    """(triples, class display names, version) of split `split` ("train", "validation", "test")
    from the files in `folder`."""
    _check_options(version, sources, machine_threshold)
    version = detect_version(folder) if version == "auto" else version
    layout = LAYOUTS[version]
    descriptions_path = folder / layout["descriptions"]
    descriptions = read_descriptions(descriptions_path)
    if classes_file is None:
        trainable = [folder / name for name in layout["trainable"] if (folder / name).is_file()]
        if trainable:
            class_ids = read_class_ids(trainable[0], descriptions, descriptions_path)
        else:
            logger.warning("%s: no trainable classes file (%s) in %s: using all %d classes of %s", DATASET,
                           " or ".join(layout["trainable"]), folder, len(descriptions), descriptions_path.name)
            class_ids = list(descriptions)
    else:
        class_ids = read_class_ids(Path(classes_file), descriptions, descriptions_path)
    columns = {label: c for c, label in enumerate(class_ids)}
    image_rows: Dict[str, int] = {}
    human = read_label_file(folder / layout["human"][split], "human", columns, image_rows)
    machine = None
    if sources == "human+machine":
        machine = read_label_file(folder / layout["machine"][split], "machine", columns, image_rows,
                                  machine_threshold)
    rows, cols, values, disputed = combine(human, machine, len(class_ids))
    if disputed:
        logger.warning("%s/%s: %d (image, class) pairs have human labels that disagree (1 and 0): left unknown",
                       DATASET, split, disputed)
    images = list(image_rows)
    # Images whose only known labels were disputed have no triple left: drop them, keep the order.
    kept = np.zeros(len(images), dtype=bool)
    kept[rows] = True
    if not kept.all():
        new_row = np.cumsum(kept) - 1
        rows = new_row[rows]
        images = [image for image, keep in zip(images, kept) if keep]
    labels = ImageLabels(images, class_ids, rows, cols, values)
    return labels, display_names(class_ids, descriptions), version


def load_openimages(
    root: Union[str, Path],
    split: str = "train",
    *,
    version: str = "auto",
    sources: str = "human",
    machine_threshold: float = 0.5,
    classes_file: Optional[Union[str, Path]] = None,
    labels_dir: Optional[Union[str, Path]] = None,
    image_dir: Optional[str] = None,
    check_images: bool = True,
    on_missing_image: str = "error",
) -> MultiLabelSplit:
    """Load one Open Images split with its own partial labels (see the module docstring).

    `labels_dir`: the folder of the label and class files (default `root`); `image_dir`: the
    image folder under `root` (default the split's: train, validation, test)."""
    _check_options(version, sources, machine_threshold)
    if split not in SPLITS:
        raise DataError(f"{DATASET}: unknown split {split!r}; expected one of {sorted(SPLITS)}")
    split = SPLITS[split]
    root = Path(root)
    labels, names, version = read_image_labels(
        Path(labels_dir) if labels_dir is not None else root, split, version=version, sources=sources,
        machine_threshold=machine_threshold, classes_file=classes_file)
    folder = image_dir if image_dir is not None else split
    items = [f"{folder}/{image}.jpg" if folder else f"{image}.jpg" for image in labels.images]
    sparse = labels.sparse()
    logger.info("%s %s/%s (%s labels): %d images, %d classes, %d known labels (%.3f%% of the matrix, %d positive); "
                "sparse labels %.1f MB", DATASET, version, split, sources, len(items), len(names),
                sparse.nnz, 100 * sparse.nnz / max(len(items) * len(names), 1),
                int((labels.values == POSITIVE).sum()), sparse.nbytes / 1e6)
    where = f"{DATASET}/{split}"
    items, sparse, skipped = resolve_missing(root, items, sparse, check_images=check_images,
                                             on_missing_image=on_missing_image, where=where)
    result = OpenImagesSplit(DATASET, split, names, items, sparse, root, labels_complete=False,
                             class_ids=list(labels.class_ids))
    return finish_split(result, skipped)
