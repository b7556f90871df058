"""Scoring a split: text encoded once per evaluation, per-class probabilities, METHODS §9 metrics."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch

from clipml.engine import distributed
from clipml.metrics import evaluate_scores
from clipml.model import MultiLabelCLIP


def predict(model: MultiLabelCLIP, source, progress: Optional[Callable[[Iterable, str], Iterable]] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], int8 labels [N, C]) in the split's image order; under data
    parallelism every rank scores its shard and all ranks get the gathered result."""
    model.eval()
    count, classes = len(source.split), len(model.classnames)
    batches = source.batches()
    if progress is not None:
        batches = progress(batches, "eval")
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


def evaluate(model: MultiLabelCLIP, source, progress=None) -> Dict[str, object]:
    """All metrics of `model` on `source`'s split; unknown (-1) entries are ignored.
    Rankings use the logits, thresholds the probabilities."""
    logits, labels = predict(model, source, progress)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return evaluate_scores(probs, labels, scores=logits)
