"""A model's scores at the known entries of a split: all that any METHODS §9 metric reads.

Every metric leaves unknown (-1) entries out, and top-k is the only one that looks at a whole
image's row; so an evaluation keeps, per known (image, class) entry, its label, ranking score,
probability and whether it is among its image's top k. On a natively partial test split (Open
Images: about 10 known labels per image among 9,605 classes) that is a few hundred times less
than the [N, C] score matrix, and `KnownScoresBuilder` collects it batch by batch so the matrix
never exists. On a complete split every entry is known and nothing is saved, nor lost.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional, Tuple

import numpy as np

from clipml.errors import DataError


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean [N, C]: the k highest scores of each row, ties broken towards the lower class index."""
    predicted = np.zeros(scores.shape, dtype=bool)
    remaining = np.array(scores, dtype=np.result_type(scores, np.float32))  # a copy, float32 kept
    rows = np.arange(scores.shape[0])
    for _ in range(k):  # argmax takes the first of tied maxima: the lower class index
        best = remaining.argmax(axis=1)
        predicted[rows, best] = True
        remaining[rows, best] = -np.inf
    return predicted


@dataclasses.dataclass
class KnownScores:
    """Per known entry: its image `rows`, class `cols`, `labels` (1 or 0), `ranking` score (the
    logit, or the probability where no logit is given), `probs` and `top` (among its image's `k`
    best ranking scores over all classes; `k` is 0 where the split has fewer classes than asked)."""

    shape: Tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    labels: np.ndarray
    ranking: np.ndarray
    probs: np.ndarray
    top: np.ndarray
    k: int

    @classmethod
    def from_dense(cls, probs, labels, scores=None, k: int = 0) -> "KnownScores":
        """From [N, C] probabilities and 1/0/-1 labels (and ranking scores, e.g. logits)."""
        probs, labels = np.asarray(probs), np.asarray(labels)
        ranking = probs if scores is None else np.asarray(scores)
        rows, cols = np.nonzero(labels != -1)
        top = top_k_mask(ranking, k)[rows, cols] if k else np.zeros(rows.size, dtype=bool)
        return cls(labels.shape, rows, cols.astype(np.int32), labels[rows, cols].astype(np.int8), ranking[rows, cols],
                   probs[rows, cols], top, k)

    @property
    def nnz(self) -> int:
        return int(self.rows.size)

    @property
    def complete(self) -> bool:
        """Whether every entry of the split is known."""
        return self.nnz == self.shape[0] * self.shape[1]

    def counts(self, mask: np.ndarray) -> np.ndarray:
        """int64 [C]: entries where `mask` [nnz] holds, per class."""
        return np.bincount(self.cols[mask], minlength=self.shape[1])

    def select(self, mask: np.ndarray, labels: Optional[np.ndarray] = None) -> "KnownScores":
        """The entries where `mask` [nnz] holds (with other labels where given), same shape."""
        return dataclasses.replace(self, rows=self.rows[mask], cols=self.cols[mask],
                                   labels=(self.labels if labels is None else labels)[mask],
                                   ranking=self.ranking[mask], probs=self.probs[mask], top=self.top[mask])

    def by_class(self) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        """(class, ranking scores, positive flags) of each class's known entries, every class in turn."""
        order = np.argsort(self.cols, kind="stable")
        starts = np.zeros(self.shape[1] + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.cols, minlength=self.shape[1]), out=starts[1:])
        ranking, positive = self.ranking[order], self.labels[order] == 1
        for c in range(self.shape[1]):
            yield c, ranking[starts[c]:starts[c + 1]], positive[starts[c]:starts[c + 1]]


class KnownScoresBuilder:
    """Collects `KnownScores` batch by batch: each batch's [B, C] logits are read at its known
    entries and dropped, so memory grows with the known entries only."""

    def __init__(self, classes: int, k: int) -> None:
        self.classes, self.k = classes, k
        self.parts: List[Tuple[np.ndarray, ...]] = []

    def add(self, index: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> None:
        """One batch: global image `index` [B], `logits` [B, C], `labels` [B, C] (1/0/-1)."""
        rows, cols = np.nonzero(labels != -1)
        top = top_k_mask(logits, self.k)[rows, cols] if self.k else np.zeros(rows.size, dtype=bool)
        self.parts.append((np.asarray(index)[rows], cols.astype(np.int32), labels[rows, cols].astype(np.int8),
                           logits[rows, cols].astype(np.float32), top))

    def arrays(self) -> List[np.ndarray]:
        """The collected (rows, cols, labels, logits, top), each joined over the batches."""
        if not self.parts:
            return [np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.float32),
                    np.zeros(0, bool)]
        return [np.concatenate(column) for column in zip(*self.parts)]

    def finish(self, count: int, arrays: Optional[List[np.ndarray]] = None) -> "KnownScores":
        """The `KnownScores` of a split of `count` images, from `arrays` (default: this builder's;
        pass the arrays gathered over data-parallel ranks), in (image, class) order."""
        from clipml.metrics import sigmoid

        rows, cols, labels, logits, top = self.arrays() if arrays is None else arrays
        if rows.size and (rows.min() < 0 or rows.max() >= count):
            raise DataError(f"known scores: image rows must lie in 0..{count - 1}")
        order = np.lexsort((cols, rows))
        logits = logits[order]
        return KnownScores((count, self.classes), rows[order], cols[order], labels[order], logits, sigmoid(logits),
                           top[order], self.k)
