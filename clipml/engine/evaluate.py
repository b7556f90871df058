"""Scoring a split: text encoded once per evaluation, per-class probabilities, METHODS §9 metrics."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from clipml.engine import distributed
from clipml.engine.features import CountedPass
from clipml.metrics import evaluate_scores
from clipml.model import MultiLabelCLIP

logger = logging.getLogger(__name__)


def predict(model: MultiLabelCLIP, source, progress: Optional[Callable[[Iterable, str], Iterable]] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], int8 labels [N, C]) in the split's image order; under data
    parallelism every rank scores its shard and all ranks get the gathered result."""
    model.eval()
    count, classes = len(source.split), len(model.classnames)
    batches = source.batches()
    if progress is not None:
        batches = progress(CountedPass(batches, len(source)), "eval")
    indices, scores, labels = [np.zeros(0, dtype=np.int64)], [np.zeros((0, classes), np.float32)], \
        [np.zeros((0, classes), np.int8)]
    with torch.no_grad():
        text = model.text_features()
        for dense, batch_labels, index in batches:
            logits = model.forward_dense(dense, text).logits
            indices.append(index.numpy())
            scores.append(logits.float().cpu().numpy())
            labels.append(batch_labels.cpu().numpy())
    parts = [np.concatenate(indices), np.concatenate(scores), np.concatenate(labels)]
    context = getattr(source, "context", None)
    if context is not None:
        parts = distributed.gather_rows(context, parts)
    index, all_scores, all_labels = parts
    if len(index) != count or len(np.unique(index)) != count:
        raise RuntimeError(f"evaluation scored {len(np.unique(index))} of {count} images")
    out_scores = np.zeros((count, classes), dtype=np.float32)
    out_labels = np.zeros((count, classes), dtype=np.int8)
    out_scores[index], out_labels[index] = all_scores, all_labels
    return out_scores, out_labels


def evaluate(model: MultiLabelCLIP, source, progress=None, scores_path: Optional[str] = None) -> Dict[str, object]:
    """All metrics of `model` on `source`'s split; unknown (-1) entries are ignored.
    Rankings use the logits, thresholds the probabilities. `scores_path`: also write every
    (image, class) score there (see `write_scores`)."""
    logits, labels = predict(model, source, progress)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    context = getattr(source, "context", None)
    if scores_path is not None and (context is None or context.is_main):
        write_scores(scores_path, source.split, model.classnames, logits, probs, labels)
    return evaluate_scores(probs, labels, scores=logits)


def write_scores(path: str, split, classnames: Sequence[str], logits: np.ndarray, probs: np.ndarray,
                 labels: np.ndarray) -> None:
    """One CSV row per (image, class): image path as the split lists it, class, probability,
    logit (rankings use it: probabilities can saturate to ties) and label (1, 0, -1 unknown)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "class", "score", "logit", "label"])
        for image, row_logits, row_probs, row_labels in zip(split.items, logits, probs, labels):
            for name, logit, prob, label in zip(classnames, row_logits, row_probs, row_labels):
                writer.writerow([image, name, f"{prob:.9g}", f"{logit:.9g}", int(label)])  # float32 exactly
    logger.info("wrote %d x %d scores to %s", len(split.items), len(classnames), path)
