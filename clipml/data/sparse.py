"""Known labels held sparsely, so that memory grows with the labels known, not images x classes.

Open Images' 9M training images x 9,605 classes take 86 GB as a dense int8 matrix, while each
image has only about 10-20 known labels. `SparseLabels` keeps, per image, the class ids and values
(1 positive, 0 negative) of its known entries in compressed-sparse-row form (`indptr`, `indices`,
`values`); every entry not stored is unknown (-1). A complete dataset (COCO, VOC) stores every
entry, which costs 5 bytes per entry instead of 1: still a few tens of MB at COCO's size.

Consumers densify only what they need: a batch of rows (`dense(rows)`), counts per class or per
image, or the entries of each class in turn (`class_order`) for per-class metrics.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from clipml.errors import DataError

UNKNOWN = -1
CHUNK_ENTRIES = 1 << 20
"""Dense entries handled at once where a dense form is read or written in pieces (1 MB of int8, 8 MB of
the float64 draws that simulate a mask)."""


class SparseLabels:
    """Known labels of an [images, classes] split: per image (row), the sorted class ids of its
    known entries and their values (1 or 0)."""

    __slots__ = ("shape", "indptr", "indices", "values")

    def __init__(self, indptr, indices, values, shape: Tuple[int, int]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.values = np.ascontiguousarray(values, dtype=np.int8)
        rows, classes = self.shape
        if self.indptr.shape != (rows + 1,) or self.indptr[0] != 0 or (np.diff(self.indptr) < 0).any():
            raise DataError(f"sparse labels: indptr must rise from 0 over {rows + 1} positions")
        if self.indices.shape != self.values.shape or self.indptr[-1] != self.indices.size:
            raise DataError(f"sparse labels: {self.indices.size} class ids and {self.values.size} values for "
                            f"{int(self.indptr[-1])} entries")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= classes):
            raise DataError(f"sparse labels: class ids must lie in 0..{classes - 1}")
        if not np.isin(self.values, (0, 1)).all():
            raise DataError("sparse labels: known values must be 1 or 0")
        rising = np.diff(self.indices.astype(np.int64)) > 0
        starts = self.indptr[1:-1]
        rising[starts[(starts > 0) & (starts < self.indices.size)] - 1] = True  # a new row may start lower
        if not rising.all():
            raise DataError("sparse labels: class ids must be unique and increasing within each image")

    # --- building -------------------------------------------------------------------------

    @classmethod
    def from_dense(cls, labels: np.ndarray) -> "SparseLabels":
        """From an int8-compatible [N, C] matrix of 1/0/-1 (values already checked), read in row chunks."""
        labels = np.asarray(labels)
        rows, classes = labels.shape
        step = max(1, CHUNK_ENTRIES // max(classes, 1))
        counts, indices, values = [], [], []
        for start in range(0, rows, step):
            chunk = labels[start:start + step]
            known = chunk != UNKNOWN
            counts.append(known.sum(axis=1))
            _, cols = np.nonzero(known)
            indices.append(cols.astype(np.int32))
            values.append(chunk[known].astype(np.int8))
        indptr = np.zeros(rows + 1, dtype=np.int64)
        if rows:
            np.cumsum(np.concatenate(counts), out=indptr[1:])
        return cls(indptr, _joined(indices, np.int32), _joined(values, np.int8), (rows, classes))

    @classmethod
    def unknown(cls, shape: Tuple[int, int]) -> "SparseLabels":
        """Labels with every entry unknown."""
        return cls(np.zeros(int(shape[0]) + 1, dtype=np.int64), [], [], shape)

    @classmethod
    def from_triples(cls, rows, cols, values, shape: Tuple[int, int]) -> "SparseLabels":
        """From (row, class, value) triples in any order; each (row, class) at most once."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], np.asarray(values)[order]
        if rows.size and (rows[0] < 0 or rows[-1] >= shape[0]):
            raise DataError(f"sparse labels: image rows must lie in 0..{shape[0] - 1}")
        same = (np.diff(rows) == 0) & (np.diff(cols) == 0)
        if same.any():
            k = int(np.flatnonzero(same)[0])
            raise DataError(f"sparse labels: image row {rows[k]}, class {cols[k]} is given twice")
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
        return cls(indptr, cols, values, shape)

    @classmethod
    def concatenate(cls, parts: Sequence["SparseLabels"]) -> "SparseLabels":
        """The images of `parts` one after another (same classes)."""
        classes = {part.shape[1] for part in parts}
        if len(classes) != 1:
            raise DataError(f"sparse labels: cannot stack splits of {sorted(classes)} classes")
        offsets = np.cumsum([0] + [part.nnz for part in parts])
        indptr = np.concatenate([[0]] + [part.indptr[1:] + offset for part, offset in zip(parts, offsets)])
        return cls(indptr, _joined([p.indices for p in parts], np.int32), _joined([p.values for p in parts], np.int8),
                   (sum(p.shape[0] for p in parts), classes.pop()))

    # --- reading --------------------------------------------------------------------------

    @property
    def nnz(self) -> int:
        """How many entries are known."""
        return int(self.indices.size)

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    @property
    def complete(self) -> bool:
        """Whether every entry is known."""
        return self.nnz == self.shape[0] * self.shape[1]

    def entry_rows(self) -> np.ndarray:
        """int64 [nnz]: the image row of each stored entry."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr))

    def positions(self, rows) -> np.ndarray:
        """int64: the stored entries of `rows`, row after row."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        total = int(counts.sum())
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return offsets + np.arange(total, dtype=np.int64)

    def dense(self, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """int8 [len(rows), C] (all rows when None): what a batch of the training loop receives."""
        rows = np.arange(self.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.full((rows.size, self.shape[1]), UNKNOWN, dtype=np.int8)
        where = self.positions(rows)
        out[np.repeat(np.arange(rows.size), self.indptr[rows + 1] - self.indptr[rows]), self.indices[where]] = \
            self.values[where]
        return out

    def dense_chunks(self) -> Iterator[np.ndarray]:
        """The dense matrix in row chunks of about CHUNK_ENTRIES entries."""
        step = max(1, CHUNK_ENTRIES // max(self.shape[1], 1))
        for start in range(0, self.shape[0], step):
            yield self.dense(np.arange(start, min(start + step, self.shape[0])))

    def take(self, rows: Sequence[int]) -> "SparseLabels":
        """The labels of `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        where = self.positions(rows)
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(self.indptr[rows + 1] - self.indptr[rows], out=indptr[1:])
        return SparseLabels(indptr, self.indices[where], self.values[where], (rows.size, self.shape[1]))

    def keep(self, kept: np.ndarray) -> "SparseLabels":
        """These labels with only the stored entries where `kept` [nnz] is true (the rest unknown)."""
        kept = np.asarray(kept, dtype=bool)
        indptr = np.zeros(self.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.entry_rows()[kept], minlength=self.shape[0]), out=indptr[1:])
        return SparseLabels(indptr, self.indices[kept], self.values[kept], self.shape)

    def count_per_class(self, value: int) -> np.ndarray:
        """int64 [C]: known entries equal to `value` (1 or 0) in each class."""
        return np.bincount(self.indices[self.values == value], minlength=self.shape[1])

    def count_per_row(self, value: Optional[int] = None) -> np.ndarray:
        """int64 [N]: known entries of each image (only those equal to `value` when given)."""
        if value is None:
            return np.diff(self.indptr)
        return np.bincount(self.entry_rows()[self.values == value], minlength=self.shape[0])

    def class_order(self) -> Tuple[np.ndarray, np.ndarray]:
        """(order [nnz], starts [C + 1]): the stored entries grouped by class (stable, so images keep
        their order), class c's being `order[starts[c]:starts[c + 1]]`."""
        order = np.argsort(self.indices, kind="stable")
        starts = np.zeros(self.shape[1] + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.indices, minlength=self.shape[1]), out=starts[1:])
        return order, starts

    def update_digest(self, digest: "hashlib._Hash") -> None:
        """Feed the dense int8 matrix's bytes to `digest` in row chunks: the same hash a dense
        matrix gives, without holding it."""
        for chunk in self.dense_chunks():
            digest.update(chunk.tobytes())

    def __eq__(self, other) -> bool:
        return (isinstance(other, SparseLabels) and self.shape == other.shape
                and np.array_equal(self.indptr, other.indptr) and np.array_equal(self.indices, other.indices)
                and np.array_equal(self.values, other.values))

    def __repr__(self) -> str:
        return f"SparseLabels({self.shape[0]} images x {self.shape[1]} classes, {self.nnz} known)"


def _joined(parts, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
