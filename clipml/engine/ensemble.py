"""Ensembles of trained checkpoints on a dataset: members are scored with their own backbones,
calibrated and weighted on the validation split carved from the training split (never the test
split), then scored on any split. The calibration, weights and ensemble file are clipml.ensemble's,
which works on logit arrays alone; this module brings the models and data. On image files an
ensemble is scored by clipml.predictor.Predictor.from_ensemble."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from clipml.backbones import FrozenCLIP, load_backbone
from clipml.data import readable_names
from clipml.data.base import MultiLabelSplit
from clipml.data.transforms import tower_eval_transform
from clipml.engine import Progress
from clipml.engine.builders import build_sources, build_splits, select_device
from clipml.engine.checkpoint import build_model, learned_backbone, read_prompt_checkpoint
from clipml.engine.evaluate import predict
from clipml.engine.features import ImageFeatureSource
from clipml.ensemble import Ensemble, file_digest, fit_ensemble
from clipml.experiment import ExperimentConfig, saved_config
from clipml.metrics import evaluate_scores, sigmoid
from clipml.model import MultiLabelCLIP

logger = logging.getLogger(__name__)
Memo = Dict[Tuple[str, str], np.ndarray]


def load_members(checkpoints: Sequence[str], classnames: Optional[Sequence[str]], device: str) -> List[MultiLabelCLIP]:
    """One model per checkpoint, each on the backbone it was learned on (shared where equal)."""
    backbones: Dict[str, FrozenCLIP] = {}
    models = []
    for path in checkpoints:
        tensors, metadata = read_prompt_checkpoint(path)
        # The member's whole backbone config (dense mode, resize kernel, ...): its own tower.
        saved = learned_backbone(saved_config(metadata["config"], source=str(path)), metadata)
        key = json.dumps(dataclasses.asdict(saved), sort_keys=True)
        if key not in backbones:
            backbones[key] = load_backbone(saved, device)
        models.append(build_model(tensors, metadata, path, classnames, backbones[key]))
    return models


@dataclasses.dataclass
class EnsembleEvaluation:
    ensemble: Ensemble
    metrics: Dict[str, object]  # of the ensemble on the evaluated split (clipml.metrics.evaluate_scores)
    member_metrics: List[Dict[str, object]]  # of each member alone on that split
    split: MultiLabelSplit


def _split_logits(model: MultiLabelCLIP, digest: str, source, memo: Optional[Memo], progress: Progress) -> np.ndarray:
    """A member's logits on the source's split, in the split's image order."""
    key = (digest, source.split.fingerprint())
    if memo is None or key not in memo:
        logits, _ = predict(model, source, progress)
        if memo is None:
            return logits
        memo[key] = logits
    return memo[key]


def evaluate_ensemble(cfg: ExperimentConfig, checkpoints: Sequence[str] = (), ensemble: Optional[Ensemble] = None,
                      split: Optional[MultiLabelSplit] = None, step: float = 0.05, progress: Progress = None,
                      memo: Optional[Memo] = None) -> EnsembleEvaluation:
    """Fit an ensemble of `checkpoints` on the validation split of `cfg`'s data (or take the
    fitted `ensemble`), then score `split` (default: `cfg`'s test split) with it.

    `memo` keeps member logits by (checkpoint digest, image list), so a sweep scores a fixed
    member (e.g. one TaI-DPT checkpoint) once for all its runs.
    """
    device = select_device(cfg.device)
    train, val, test = build_splits(cfg)
    target = test if split is None else split
    classnames = readable_names(target)
    paths = [m.checkpoint for m in ensemble.members] if ensemble is not None else [str(p) for p in checkpoints]
    models = load_members(paths, classnames, device)
    val_logits, eval_logits = [], []
    for path, model in zip(paths, models):
        digest = file_digest(path)
        _, val_source, test_source = build_sources(cfg, model.backbone, train, val, test)
        if split is not None:
            backbone = model.backbone
            transform = tower_eval_transform(backbone.preprocess, normalize=False)
            test_source = ImageFeatureSource(split, backbone, transform, cfg.data.eval_batch_size, cfg.data.workers)
        if ensemble is None:
            val_logits.append(_split_logits(model, digest, val_source, memo, progress))
        eval_logits.append(_split_logits(model, digest, test_source, memo, progress))
    if ensemble is None:
        ensemble = fit_ensemble(val_logits, val.labels, paths, classnames, step)
        logger.info("ensemble weights %s chosen on %d validation images: val mAP %.2f (members %s)",
                    [round(w, 3) for w in ensemble.weights], len(val), 100 * ensemble.validation["mAP"],
                    ", ".join(f"{100 * m:.2f}" for m in ensemble.validation["member_mAP"]))
    combined = ensemble.combine(eval_logits)
    labels = target.labels
    return EnsembleEvaluation(
        ensemble,
        evaluate_scores(sigmoid(combined), labels, scores=combined),
        [evaluate_scores(sigmoid(logits), labels, scores=logits) for logits in eval_logits],
        target,
    )


__all__ = ["EnsembleEvaluation", "evaluate_ensemble", "load_members", "probabilities"]
