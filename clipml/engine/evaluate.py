"""Scoring a split: text encoded once per evaluation, per-class probabilities, METHODS §9 metrics."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from clipml.engine import distributed
from clipml.experiment import EvalConfig
from clipml.metrics import TOP_K, evaluate_scores, f1_thresholds
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


def evaluate(model: MultiLabelCLIP, source, progress=None, settings: Optional[EvalConfig] = None,
             thresholds: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """All metrics of `model` on `source`'s split; unknown (-1) entries are ignored. Rankings
    use the logits, thresholds the probabilities; `settings` choose the AP and the top-3 rule
    (default: envelope AP, reference rule). With `thresholds` (from `decision_thresholds`) the
    F1 family at them is added, suffixed `_tuned`."""
    settings = settings or EvalConfig()
    logits, labels = predict(model, source, progress)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    tuned = None if thresholds is None else class_thresholds(thresholds, model.classnames)
    return evaluate_scores(probs, labels, scores=logits, ap=settings.ap, top_k_rule=settings.top3,
                           tuned_thresholds=tuned)


AP_NAMES = {
    "envelope": "envelope (VOC 2010+ all-point, as the SARB/DSRB code)",
    "raw": "raw (non-interpolated, as DualCoOp's and ASL's code and scikit-learn)",
    "voc07": "voc07 (VOC 2007 11-point)",
}


def evaluation_notes(settings: EvalConfig, classes: int) -> Dict[str, str]:
    """What the numbers of a summary are, in words: which AP, which top-3 rule, which thresholds."""
    if classes < TOP_K:
        top = f"left out: {classes} classes, fewer than {TOP_K}"
    elif settings.top3 == "reference":
        top = "reference rule: the 3 highest-scoring classes of an image that have logit >= 0 (ML-GCN/SARB/DSRB code)"
    else:
        top = "plain: the 3 highest-scoring classes of an image, whatever their logit"
    return {
        "AP": AP_NAMES[settings.ap],
        "top3": top,
        "thresholds": "CF1/OF1 at probability 0.5; _tuned at per-class thresholds chosen on the validation split "
                      "(max F1; classes without a validation positive: the max-OF1 threshold)",
    }


THRESHOLD_RULE = ("per class, the logit threshold maximising its F1 on the validation split; classes without "
                  "a validation positive use the one maximising the pooled F1 (OF1)")


def decision_thresholds(model: MultiLabelCLIP, source, progress=None) -> Dict[str, object]:
    """Per-class decision thresholds chosen on `source` (the validation split), as stored in a
    prompt checkpoint: logit thresholds by class name (`per_class`), the `global` one for
    classes without a validation positive (`fallback`) and for classes a checkpoint does not know."""
    logits, labels = predict(model, source, progress)
    values, global_threshold, fallback = f1_thresholds(logits, labels)
    return {
        "rule": THRESHOLD_RULE,
        "space": "logit",
        "global": global_threshold,
        "per_class": {name: float(v) for name, v, used in zip(model.classnames, values, fallback) if not used},
        "fallback": [name for name, used in zip(model.classnames, fallback) if used],
    }


def class_thresholds(thresholds: Dict[str, object], classnames: Sequence[str]) -> np.ndarray:
    """Logit thresholds [C] for `classnames` from stored thresholds (the global one where a class has none)."""
    per_class = thresholds["per_class"]
    return np.array([per_class.get(name, thresholds["global"]) for name in classnames], dtype=np.float64)
