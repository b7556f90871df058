"""Small file helpers shared by the dataset loaders: reading lists, checking images exist and decode."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from clipml.data.base import MultiLabelSplit
from clipml.data.images import image_problem
from clipml.data.sparse import SparseLabels
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "skip")


def read_text(path: Path, what: str) -> str:
    """The whole file as text; a missing or non-UTF-8 file is a DataError naming `what`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{what} {path} is not UTF-8 text: {error}") from None


def read_json(path: Path, what: str) -> object:
    """A JSON file's content; a missing, unreadable or malformed file is a DataError naming `what` and the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{what} {path} is not valid JSON: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{what} {path} cannot be read: {error}") from None


def entry_field(entry, key: str, where: str, section: str, number: int):
    """`entry[key]` of entry `number` (1-based) of the `section` list of a JSON annotation file; a
    malformed entry is a DataError naming the file, the list, the entry and the missing key."""
    if not isinstance(entry, dict):
        raise DataError(
            f"{where}: '{section}' entry {number} is {type(entry).__name__} {entry!r:.80}, expected an object")
    if key not in entry:
        shown = {k: entry[k] for k in list(entry)[:4]}
        raise DataError(f"{where}: '{section}' entry {number} {shown!r:.120} has no '{key}'")
    return entry[key]


def first_file(candidates: Sequence[Path], what: str) -> Path:
    """The first of `candidates` that is a file (datasets ship their files in more than one layout)."""
    for path in candidates:
        if Path(path).is_file():
            return Path(path)
    raise DataError(f"{what} not found: {' or '.join(str(path) for path in candidates)}")


def read_lines(path: Path, what: str) -> List[str]:
    """Non-empty, stripped lines of a text file (any line ending)."""
    return [line.strip() for line in read_text(path, what).splitlines() if line.strip()]


def check_unique(names: Sequence[str], where: str, what: str = "image") -> None:
    """A repeated image or class name is an error: it would silently double-count in metrics."""
    seen = set()
    for number, name in enumerate(names, start=1):
        if name in seen:
            raise DataError(f"{where}: duplicate {what} '{name}' (entry {number})")
        seen.add(name)


def resolve_missing(
    root: Optional[Path],
    items: List[str],
    labels: Union[np.ndarray, SparseLabels],
    *,
    check_images: bool,
    on_missing_image: str,
    where: str,
) -> Tuple[List[str], Union[np.ndarray, SparseLabels], List[str]]:
    """Check that every image file exists (cheap stat loop) and apply the missing-image policy.

    Returns the kept items and labels and the list of skipped items (empty unless
    `on_missing_image="skip"`).
    """
    if on_missing_image not in MISSING_POLICIES:
        raise ConfigError(
            f"data.options.on_missing_image must be one of {MISSING_POLICIES}, got {on_missing_image!r}"
        )
    if not check_images or root is None:
        return items, labels, []
    root_str = str(root)
    exists = np.fromiter(
        (os.path.isfile(os.path.join(root_str, item)) for item in items), dtype=bool, count=len(items)
    )
    if exists.all():
        return items, labels, []
    missing = [items[i] for i in np.flatnonzero(~exists)]
    if on_missing_image == "error":
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{where}: {len(missing)} of {len(items)} image files not found under {root} "
            f"(first: {shown}); set data.options.on_missing_image=skip to leave them out"
        )
    logger.warning(
        "%s: skipped %d of %d images whose files are missing under %s (first: %s)",
        where, len(missing), len(items), root, missing[:5],
    )
    kept = [item for item, ok in zip(items, exists) if ok]
    rows = np.flatnonzero(exists)
    return kept, labels.take(rows) if isinstance(labels, SparseLabels) else labels[rows], missing


def decode_problem(split, index: int) -> Optional[str]:
    """Why image `index` of `split` cannot be decoded, or None: files through
    `clipml.data.images.image_problem`, splits that render in memory through their `open_image`."""
    if split.root is None or type(split).open_image is not MultiLabelSplit.open_image:
        try:
            split.open_image(index)
            return None
        except DataError as error:
            return str(error)
    return image_problem(split.image_path(index))


def drop_undecodable(split, on_undecodable_image: str):
    """Apply the undecodable-image policy: "error" (default) leaves the split as it is (a bad
    image stops the run when it is read), "skip" decodes every image now, once, and leaves out
    those that fail, with a warning naming them (`split.skipped_images` lists them)."""
    if on_undecodable_image not in MISSING_POLICIES:
        raise ConfigError(f"data.options.on_undecodable_image must be one of {MISSING_POLICIES}, "
                          f"got {on_undecodable_image!r}")
    if on_undecodable_image == "error" or not len(split):
        return split
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # decoders release the GIL
        problems = list(pool.map(lambda index: decode_problem(split, index), range(len(split))))
    bad = [index for index, problem in enumerate(problems) if problem]
    if not bad:
        return split
    logger.warning("%s/%s: skipped %d of %d images that cannot be decoded (first: %s)", split.dataset,
                   split.split, len(bad), len(split), "; ".join(problems[i] for i in bad[:3]))
    previous = list(getattr(split, "skipped_images", []))
    kept = split.subset([index for index, problem in enumerate(problems) if not problem])
    return finish_split(kept, previous + [split.items[i] for i in bad])


def finish_split(split, skipped: List[str]):
    """Record which images a loader skipped (`split.skipped_images`) so callers can report it."""
    split.skipped_images = list(skipped)
    return split
