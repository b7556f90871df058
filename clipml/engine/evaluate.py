"""Scoring a split: text encoded once per evaluation, per-class probabilities, METHODS §9 metrics."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch

from clipml.metrics import evaluate_scores
from clipml.model import MultiLabelCLIP


def predict(model: MultiLabelCLIP, source, progress: Optional[Callable[[Iterable, str], Iterable]] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], int8 labels [N, C]) in the split's image order."""
    model.eval()
    count = len(source.split)
    probs = np.zeros((count, len(model.classnames)), dtype=np.float32)
    labels = np.zeros((count, len(model.classnames)), dtype=np.int8)
    batches = source.batches()
    if progress is not None:
        batches = progress(batches, "eval")
    with torch.no_grad():
        text = model.text_features()
        for dense, batch_labels, index in batches:
            logits = model.forward_dense(dense, text).logits
            probs[index.numpy()] = torch.sigmoid(logits.float()).cpu().numpy()
            labels[index.numpy()] = batch_labels.cpu().numpy()
    return probs, labels


def evaluate(model: MultiLabelCLIP, source, progress=None) -> Dict[str, object]:
    """All metrics of `model` on `source`'s split; unknown (-1) entries are ignored."""
    probs, labels = predict(model, source, progress)
    return evaluate_scores(probs, labels)
