"""The one in-memory form every dataset loader returns: image ids plus their known labels, held
sparsely (clipml.data.sparse) so that natively partial datasets with thousands of classes fit."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from clipml.data.images import ImageDecodeError, open_image as read_image  # noqa: F401 (re-exported)
from clipml.data.sparse import SparseLabels
from clipml.errors import DataError


POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1
"""Label codes. UNKNOWN means "missing" in a training split and "ignore" in an evaluation split."""


@dataclasses.dataclass
class ObjectInstance:
    """One labelled object of an image: its class and its visible pixels.

    `mask` is boolean [H, W] at the resolution `open_image` returns; localisation metrics
    (pointing game, attention mass inside) and the object-size breakdown of mAP read it.
    """

    class_index: int
    mask: np.ndarray

    @property
    def area_fraction(self) -> float:
        """Share of the image's pixels the object covers."""
        return float(self.mask.mean())


@dataclasses.dataclass
class MultiLabelSplit:
    """One split of a multi-label dataset.

    Entry (i, c) is 1 (positive), 0 (negative) or -1 (unknown in training, ignored in
    evaluation). `targets` holds the known entries sparsely (a loader passes a `SparseLabels`
    built from its triples, or a dense [N, C] matrix that is converted): memory grows with the
    labels known, not N x C. `labels` and `known` are dense views for small splits and tests;
    library code reads `targets` (batches densify per batch, statistics come from the sparse
    form). Images are read from `root / items[i]`; subclasses that render images in memory
    override `open_image` (and set no root).

    `labels_complete` declares whether the labels are the full annotation (COCO, VOC, ...: the
    partial-label protocol simulates unknowns on them) or already partial (a user's manifest
    with unknown entries: kept as they are unless simulation is asked for).
    """

    dataset: str
    split: str
    classes: List[str]
    items: List[str]
    targets: Union[SparseLabels, np.ndarray]
    root: Optional[Path] = None
    labels_complete: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.targets, SparseLabels):
            self.targets = self._from_dense(np.asarray(self.targets))
        if self.targets.shape != (len(self.items), len(self.classes)):
            raise DataError(
                f"{self.dataset}/{self.split}: label matrix has shape {self.targets.shape}, "
                f"expected ({len(self.items)} images, {len(self.classes)} classes)"
            )
        if self.root is not None:
            self.root = Path(self.root)

    def _from_dense(self, labels: np.ndarray) -> SparseLabels:
        if labels.ndim != 2:
            raise DataError(f"{self.dataset}/{self.split}: labels must be an [images, classes] matrix, "
                            f"got shape {labels.shape}")
        valid = np.isin(labels, (POSITIVE, NEGATIVE, UNKNOWN))
        if not valid.all():
            raise DataError(f"{self.dataset}/{self.split}: labels must be 1, 0 or -1, "
                            f"found {np.unique(labels[~valid])[:5].tolist()}")
        return SparseLabels.from_dense(labels)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> np.ndarray:
        """The dense int8 [N, C] matrix, read-only (it is rebuilt on each access: change labels
        with `with_labels`). It costs N x C bytes: library code reads `targets` instead."""
        dense = self.targets.dense()
        dense.flags.writeable = False
        return dense

    @property
    def known(self) -> np.ndarray:
        """Boolean [N, C]: which entries are known (not -1); dense, as `labels`."""
        return self.labels != UNKNOWN

    @property
    def known_fraction(self) -> float:
        """Share of the N x C entries that are known."""
        return self.targets.nnz / max(len(self) * self.num_classes, 1)

    def image_path(self, index: int) -> Path:
        if self.root is None:
            raise DataError(f"{self.dataset}/{self.split}: no image root is set")
        return self.root / self.items[index]

    def open_image(self, index: int) -> Image.Image:
        """Image `index` as upright RGB (`clipml.data.images.open_image`); a missing, corrupt or
        truncated file is a DataError naming it."""
        return read_image(self.image_path(index))

    @property
    def has_instances(self) -> bool:
        """Whether `instances` gives object masks (the synthetic world, COCO with its annotations)."""
        return False

    def instances(self, index: int) -> Optional[List[ObjectInstance]]:
        """The labelled objects of image `index` with their masks, or None where the split has none."""
        return None

    def object_areas(self, index: int) -> Optional[List[Tuple[int, float]]]:
        """(class index, share of the image's area) of each labelled object of image `index`, or
        None. From the masks here; datasets that record areas (COCO) override it so the
        object-size breakdown of mAP decodes no mask."""
        instances = self.instances(index)
        return None if instances is None else [(o.class_index, o.area_fraction) for o in instances]

    def subset(self, indices: Sequence[int], split: Optional[str] = None) -> "MultiLabelSplit":
        """A new split holding `indices` (same classes, root and image source)."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self,
            split=split or self.split,
            items=[self.items[i] for i in indices],
            targets=self.targets.take(indices),
        )

    def with_labels(self, labels: Union[SparseLabels, np.ndarray]) -> "MultiLabelSplit":
        """The same images with other labels, sparse or a dense matrix (e.g. a partial-label mask applied)."""
        return dataclasses.replace(self, targets=labels)

    def files_digest(self) -> Optional[str]:
        """A digest of every image file's (name, size, modification time in ns), in order: it
        changes when an image is replaced, even under the same name, at one stat per file
        (COCO's 123k files: 1-2 s on 2 busy CPU cores, warm file cache). None where there are no files."""
        if self.root is None:
            return None
        root, lines = os.fspath(self.root), []
        for item in self.items:
            path = os.path.join(root, item)  # strings, not Paths: a third of the time at COCO's size
            try:
                info = os.stat(path)
            except OSError as error:
                raise DataError(f"{self.dataset}/{self.split}: cannot read image file {path}: {error.strerror}") from None
            lines.append(f"{item}\0{info.st_size}\0{info.st_mtime_ns}\n")
        return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]

    def labels_digest(self) -> str:
        """A hash of the dense label matrix (fed in row chunks: the same hash as before labels were
        sparse) with the class and image lists it belongs to."""
        digest = hashlib.sha256(self.fingerprint().encode())
        self.targets.update_digest(digest)
        return digest.hexdigest()[:16]

    def fingerprint(self) -> str:
        """A hash of the class list and image list, in order: detects any reordering."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.classes).encode())
        digest.update(b"\0")
        digest.update("\n".join(self.items).encode())
        return digest.hexdigest()[:16]
