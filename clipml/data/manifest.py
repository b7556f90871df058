"""The user's own data as a manifest file (JSONL or CSV), one image per record.

JSONL: one object per line,
    {"image": "rel/path.jpg", "positive": ["cat", "dog"], "negative": ["car"], "unknown": ["bus"]}
("negative" and "unknown" optional). CSV: header `image,positive,negative,unknown` (the last
two columns optional), class names separated by `;` inside a field.

A completed manifest (`clipml.completion`, JSONL) also has, per image, the entries a model filled:
    "predicted": {"positive": ["bus"], "negative": ["car"], "probability": {"bus": 0.83, "car": 0.12}}
They are not annotations: by default (`predicted="unknown"`) they read back as unknown, so the
completed file trains exactly like the original; `predicted="labels"` reads them as hard labels
(the split then still counts as partial: its labels are kept, never masked at p).

Classes come from the `classes` file (one name per line, in class order) or, if not given,
`classes.txt` next to the manifest. A record that leaves classes out must say what they are:
`unlisted="unknown"` (not annotated: partial labels) or `"negative"` (absent); without it such a
record is an error, since guessing "negative" would turn a user's missing labels into wrong
ones. A split with unknown entries declares its labels partial (`labels_complete=False`), so
training keeps them as they are instead of simulating more unknowns. Image paths are relative to `image_root` (default: the
manifest's folder). Which file is which split is the caller's choice: `load_split("manifest",
path_to_file, ...)`, or a folder holding `<split>.jsonl` or `<split>.csv`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from clipml.data._files import check_unique, finish_split, read_lines, read_text, resolve_missing
from clipml.data.base import NEGATIVE, POSITIVE, UNKNOWN, MultiLabelSplit
from clipml.errors import ConfigError, DataError

FIELDS = ("positive", "negative", "unknown")
CODES = {"positive": POSITIVE, "negative": NEGATIVE, "unknown": UNKNOWN}
UNLISTED = {"negative": NEGATIVE, "unknown": UNKNOWN}
PREDICTED = ("unknown", "labels")  # how predicted entries read: as unknown (default) or as their labels
PREDICTED_KEYS = ("positive", "negative", "probability")


def find_manifest(root: Path, split: str) -> Path:
    """`root` itself if it is a file, else the one `<split>.jsonl` / `<split>.csv` inside it."""
    if root.is_file():
        return root
    candidates = [root / f"{split}.jsonl", root / f"{split}.csv"]
    found = [path for path in candidates if path.is_file()]
    if len(found) != 1:
        state = "both exist" if found else "neither exists"
        raise DataError(f"manifest for split {split!r}: expected exactly one of {candidates[0]} or {candidates[1]}, {state}")
    return found[0]


def _jsonl_records(path: Path) -> List[tuple]:
    records = []
    for number, line in enumerate(read_text(path, "manifest").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} line {number}: not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, found {type(record).__name__}")
        extra = set(record) - {"image", *FIELDS, "predicted"}
        if extra:
            raise DataError(f"{path} line {number}: unexpected keys {sorted(extra)}; "
                            f"allowed: image, {', '.join(FIELDS)}, predicted")
        fields = {}
        for field in FIELDS:
            value = record.get(field, [])
            if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
                raise DataError(f"{path} line {number}: '{field}' must be a list of class names, found {value!r}")
            fields[field] = [name.strip() for name in value]
        if "predicted" in record:
            fields["predicted"] = _predicted(record["predicted"], f"{path} line {number}")
        records.append((number, record.get("image"), fields))
    return records


def _predicted(value: object, where: str) -> Dict[str, object]:
    """A record's "predicted" object, checked: lists of class names and a probability in [0, 1] for
    exactly the classes they list."""
    if not isinstance(value, dict) or set(value) - set(PREDICTED_KEYS):
        raise DataError(f"{where}: 'predicted' must be an object with keys {', '.join(PREDICTED_KEYS)}, "
                        f"found {value!r}")
    lists = {}
    for key in ("positive", "negative"):
        names = value.get(key, [])
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise DataError(f"{where}: 'predicted.{key}' must be a list of class names, found {names!r}")
        lists[key] = [name.strip() for name in names]
    probability = value.get("probability", {})
    listed = lists["positive"] + lists["negative"]
    if (not isinstance(probability, dict) or set(probability) != set(listed)
            or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1
                       for p in probability.values())):
        raise DataError(f"{where}: 'predicted.probability' must map each predicted class ({listed}) to a "
                        f"probability in [0, 1], found {probability!r}")
    return {**lists, "probability": {name.strip(): float(p) for name, p in probability.items()}}


def _csv_records(path: Path) -> List[tuple]:
    reader = csv.reader(io.StringIO(read_text(path, "manifest"), newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty CSV manifest, expected a header image,positive,negative,unknown") from None
    if not header or header[0] != "image" or not set(header[1:]) <= set(FIELDS) or len(set(header)) != len(header):
        raise DataError(f"{path} line 1: header {header} must be 'image' followed by any of {', '.join(FIELDS)}")
    records = []
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {number}: {len(row)} fields, expected {len(header)} ({','.join(header)})")
        cells = dict(zip(header, row))
        fields = {
            field: [name.strip() for name in cells.get(field, "").split(";") if name.strip()] for field in FIELDS
        }
        records.append((number, cells["image"].strip(), fields))
    return records


def read_records(path: Path) -> List[tuple]:
    """(line number, image, fields) of every record of a .jsonl or .csv manifest file, as written
    (fields: the class lists by field name, and "predicted" where a record has it)."""
    if path.suffix.lower() == ".jsonl":
        return _jsonl_records(path)
    if path.suffix.lower() == ".csv":
        return _csv_records(path)
    raise DataError(f"manifest {path}: unknown format '{path.suffix}', expected .jsonl or .csv")


def manifest_classes(path: Path, classes: Optional[Union[str, Path, Sequence[str]]]) -> Tuple[List[str], str]:
    """The class names (from `classes`: a file or a list, else `classes.txt` beside the manifest)
    and where they came from."""
    if classes is None or isinstance(classes, (str, Path)):
        classes_path = Path(classes) if classes is not None else path.parent / "classes.txt"
        class_names, where_classes = read_lines(classes_path, "manifest classes file"), str(classes_path)
    else:
        class_names, where_classes = [str(c) for c in classes], "the classes option"
    check_unique(class_names, where_classes, "class name")
    return class_names, where_classes


def _listed(fields: Dict[str, object]) -> List[Tuple[str, List[str]]]:
    """(field, class names) of a record: the annotated fields, then the predicted ones."""
    listed = [(field, fields[field]) for field in FIELDS]
    if "predicted" in fields:
        listed += [(f"predicted {key}", fields["predicted"][key]) for key in ("positive", "negative")]
    return listed


def load_manifest(
    root: Union[str, Path],
    split: str = "train",
    *,
    classes: Optional[Union[str, Path, Sequence[str]]] = None,
    unlisted: Optional[str] = None,
    image_root: Optional[Union[str, Path]] = None,
    name: Optional[str] = None,
    check_images: bool = True,
    on_missing_image: str = "error",
    predicted: str = "unknown",
) -> MultiLabelSplit:
    """Load a manifest split. The dataset identity is `name` (default: the manifest folder's name);
    `predicted` says how a completed manifest's predicted entries read (module docstring)."""
    if unlisted is not None and unlisted not in UNLISTED:
        raise ConfigError(f"manifest: data.options.unlisted must be one of {sorted(UNLISTED)}, got {unlisted!r}")
    if predicted not in PREDICTED:
        raise ConfigError(f"manifest: data.options.predicted must be one of {list(PREDICTED)}, got {predicted!r}")
    path = find_manifest(Path(root), split)
    records = read_records(path)
    class_names, where_classes = manifest_classes(path, classes)
    column: Dict[str, int] = {c: i for i, c in enumerate(class_names)}
    as_labels = predicted == "labels"
    codes = {**CODES, "predicted positive": POSITIVE if as_labels else UNKNOWN,
             "predicted negative": NEGATIVE if as_labels else UNKNOWN}

    items: List[str] = []
    first_incomplete = None  # (line, classes listed) of the first record leaving classes out
    labels = np.full((len(records), len(class_names)), UNLISTED.get(unlisted, UNKNOWN), dtype=np.int8)
    for i, (number, image, fields) in enumerate(records):
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{path} line {number}: missing or empty 'image'")
        seen: Dict[str, str] = {}
        for field, names in _listed(fields):
            for cls in names:
                if cls not in column:
                    raise DataError(f"{path} line {number}: unknown class '{cls}' in '{field}' (not in {where_classes})")
                if cls in seen:
                    raise DataError(f"{path} line {number}: class '{cls}' listed in both '{seen[cls]}' and '{field}'")
                seen[cls] = field
                labels[i, column[cls]] = codes[field]
        if unlisted is None and len(seen) < len(class_names) and first_incomplete is None:
            first_incomplete = (number, len(seen))
        items.append(image.strip())
    check_unique(items, str(path), "image")
    if first_incomplete is not None:
        number, listed = first_incomplete
        raise DataError(
            f"{path} line {number}: lists {listed} of the {len(class_names)} classes; say what the others are: "
            f"data.options.unlisted=unknown (not annotated: partial labels) or data.options.unlisted=negative "
            f"(absent from the image)")

    image_root = Path(image_root) if image_root is not None else path.parent
    dataset = name or path.parent.resolve().name or "manifest"
    items, labels, skipped = resolve_missing(
        image_root, items, labels, check_images=check_images, on_missing_image=on_missing_image,
        where=f"manifest {path}",
    )
    # Predicted entries read as labels are a model's guesses, not the full annotation: such a split
    # is partial too, so training keeps its labels as they are instead of masking them at p.
    guessed = as_labels and any(fields.get("predicted") for _, _, fields in records)
    complete = not (labels == UNKNOWN).any() and not guessed
    return finish_split(MultiLabelSplit(dataset, split, class_names, items, labels, image_root, complete), skipped)
