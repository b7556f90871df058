"""Score ensembling (METHODS §12): the logits of several trained models, each calibrated on the
validation split, added up with weights that are also chosen on the validation split.

Calibration is Platt scaling per model: one scale a and one bias b for all classes, fit by
logistic regression of the validation split's known labels on the model's logits, so that
a·s + b is the model's calibrated log-odds. Why this and not the raw logits or probabilities:
the members' logits live on unrelated scales (TaI-DPT scores 4·cos, DualCoOp a difference of
100·cos terms, sdm_csp 100·cos plus a bias), and a ranking-trained TaI-DPT logit is not a
log-odds at all, so neither a sum of logits nor of sigmoid probabilities weighs like with like.
After calibration each member speaks in log-odds measured against the same labels; the weighted
sum is again a log-odds (thresholds at 0.5 and `predict` probabilities stay meaningful); one
(a, b) per model is stable with the few known labels of a partially labelled validation split,
keeps each model's own confidence differences between classes, and changes no member's ranking,
so weight 1 on one member gives exactly that member's mAP. (A member whose logits rank against
the validation labels would get a < 0; it gets a = 0 instead, i.e. no say.)

The weights lie on a grid over the simplex (w_k >= 0, Σ w_k = 1); the grid point with the best
validation mAP wins (the first one, in grid order, on a tie).

This module is the arithmetic and the ensemble file, on logit arrays only (no model, backbone
or dataset); clipml.engine.ensemble loads the member checkpoints and scores them on data with it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from clipml.errors import CheckpointError, ConfigError, DataError
from clipml.metrics import mean_average_precision, sigmoid

logger = logging.getLogger(__name__)
ENSEMBLE_FORMAT = "clipml-ensemble-1"


@dataclasses.dataclass
class Calibration:
    """Platt scaling: logits -> calibrated log-odds `scale · logits + bias`."""

    scale: float = 1.0
    bias: float = 0.0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(logits, dtype=np.float64) + self.bias


def fit_calibration(logits: np.ndarray, labels: np.ndarray, ridge: float = 1e-6, steps: int = 100) -> Calibration:
    """Logistic regression of the known labels (1/0; -1 ignored) on the logits, by damped Newton
    steps in float64. A tiny ridge keeps (a, b) finite when the labels are perfectly separable."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if logits.shape != labels.shape:
        raise DataError(f"calibration: logits {logits.shape} and labels {labels.shape} differ in shape")
    known = labels != -1
    x, y = logits[known], (labels[known] == 1).astype(np.float64)
    if y.size == 0 or y.min() == y.max():
        raise DataError("calibration needs known positive and negative labels on the validation split")
    design = np.stack([x, np.ones_like(x)], axis=1)
    penalty = ridge * len(y)

    def loss(theta: np.ndarray) -> float:
        z = design @ theta
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * penalty * theta @ theta)

    theta = np.array([0.0, np.log(y.mean() / (1 - y.mean()))])
    current = loss(theta)
    for _ in range(steps):
        p = sigmoid(design @ theta)
        gradient = design.T @ (p - y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-8:  # halve the Newton step until the loss does not rise
            candidate = theta - size * step
            value = loss(candidate)
            if value <= current:
                break
            size /= 2
        else:
            break
        converged = abs(current - value) <= 1e-12 * max(1.0, abs(current))
        theta, current = candidate, value
        if converged:
            break
    if theta[0] < 0:  # scores that rank against the labels: use none of them, not their reverse
        logger.warning("a member's logits rank against the validation labels (Platt scale %.3g); it gets scale 0",
                       theta[0])
        return Calibration(0.0, float(np.log(y.mean() / (1 - y.mean()))))
    return Calibration(float(theta[0]), float(theta[1]))


def weight_grid(members: int, step: float = 0.05) -> List[Tuple[float, ...]]:
    """Points of the simplex with coordinates on multiples of `step` (1/step must be whole)."""
    if members < 1:
        raise ConfigError("an ensemble needs at least one member")
    parts = round(1 / step)
    if parts < 1 or abs(parts * step - 1) > 1e-9:
        raise ConfigError(f"ensemble weight step must divide 1 (e.g. 0.05, 0.1), got {step}")
    points = []
    for cut in itertools.combinations_with_replacement(range(parts + 1), members - 1):
        edges = (0, *cut, parts)
        points.append(tuple((edges[k + 1] - edges[k]) / parts for k in range(members)))
    return points


def file_digest(path: Union[str, Path]) -> str:
    """Short sha256 of a checkpoint: an ensemble's calibration belongs to that exact file."""
    from clipml.backbones.open_clip import file_digest as digest

    return digest(Path(path))


@dataclasses.dataclass
class EnsembleMember:
    checkpoint: str
    weight: float
    calibration: Calibration
    digest: str = ""


@dataclasses.dataclass
class Ensemble:
    """Weighted sum of calibrated member logits; `validation` records how it was chosen."""

    members: List[EnsembleMember]
    classes: List[str]
    validation: Dict[str, object] = dataclasses.field(default_factory=dict)

    def combine(self, logits: Sequence[np.ndarray]) -> np.ndarray:
        """Ensemble logits (a calibrated log-odds) from each member's logits, in member order."""
        if len(logits) != len(self.members):
            raise ConfigError(f"the ensemble has {len(self.members)} members, got logits of {len(logits)}")
        total = np.zeros(np.shape(logits[0]), dtype=np.float64)
        for member, scores in zip(self.members, logits):
            total += member.weight * member.calibration.apply(scores)
        return total

    @property
    def weights(self) -> List[float]:
        return [member.weight for member in self.members]

    def save(self, path: Union[str, Path]) -> Path:
        """JSON; member checkpoints are stored relative to the file's folder, with their digests."""
        path = Path(path)
        folder = path.resolve().parent
        data = {
            "format": ENSEMBLE_FORMAT,
            "classes": self.classes,
            "members": [{"checkpoint": os.path.relpath(Path(m.checkpoint).resolve(), folder), "digest": m.digest,
                         "weight": m.weight, "scale": m.calibration.scale, "bias": m.calibration.bias}
                        for m in self.members],
            "validation": self.validation,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: Union[str, Path], check_files: bool = True) -> "Ensemble":
        """An ensemble spec written by `save`; each member checkpoint must still be the file the
        ensemble was fit with (same digest)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"ensemble spec not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path} is not a readable ensemble spec: {error}") from None
        if not isinstance(data, dict) or data.get("format") != ENSEMBLE_FORMAT:
            raise CheckpointError(f"{path} is not a clipml ensemble spec (expected format {ENSEMBLE_FORMAT!r})")
        members = []
        for entry in data["members"]:
            checkpoint = path.resolve().parent / entry["checkpoint"]
            if check_files:
                if not checkpoint.is_file():
                    raise CheckpointError(f"{path}: member checkpoint not found: {checkpoint}")
                if file_digest(checkpoint) != entry["digest"]:
                    raise CheckpointError(f"{path}: member {checkpoint} changed since the ensemble was fit "
                                          f"(its calibration and weight belong to the old file); fit it again")
            members.append(EnsembleMember(str(checkpoint), float(entry["weight"]),
                                          Calibration(float(entry["scale"]), float(entry["bias"])), entry["digest"]))
        return cls(members, list(data["classes"]), dict(data.get("validation") or {}))


def fit_ensemble(val_logits: Sequence[np.ndarray], labels: np.ndarray, checkpoints: Sequence[str],
                 classes: Sequence[str], step: float = 0.05) -> Ensemble:
    """Calibrate every member and choose the weights on the validation split (logits [N, C] per
    member, labels int8 [N, C] with -1 ignored)."""
    if len(val_logits) != len(checkpoints):
        raise ConfigError(f"{len(checkpoints)} checkpoints but logits of {len(val_logits)} members")
    calibrations = [fit_calibration(logits, labels) for logits in val_logits]
    calibrated = [c.apply(logits) for c, logits in zip(calibrations, val_logits)]
    scored = []
    for weights in weight_grid(len(calibrated), step):
        combined = sum(w * scores for w, scores in zip(weights, calibrated))
        scored.append((mean_average_precision(combined, labels), weights))
    best_map, best = max(scored, key=lambda item: item[0])  # max keeps the first of equal maxima
    members = [EnsembleMember(str(path), float(w), c, file_digest(path))
               for path, w, c in zip(checkpoints, best, calibrations)]
    validation = {
        "mAP": best_map,
        "member_mAP": [mean_average_precision(logits, labels) for logits in val_logits],
        "step": step,
        "grid": [[*weights, value] for value, weights in scored],
    }
    return Ensemble(members, list(classes), validation)


__all__ = ["Calibration", "Ensemble", "EnsembleMember", "fit_calibration", "fit_ensemble", "weight_grid"]
