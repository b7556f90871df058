"""The rules behind `predict` that clipml.predictor.Predictor applies: finding image files, the
decision thresholds and calibration a checkpoint stores, choosing labels, and the CSV/JSON output
with every class's probability."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from clipml.engine.evaluate import class_thresholds
from clipml.ensemble import Calibration
from clipml.errors import ConfigError, DataError
from clipml.metrics import sigmoid

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
OUTPUT_SUFFIXES = (".csv", ".json")


def find_images(inputs: Sequence[str]) -> List[Path]:
    """Image files named in `inputs`, folders searched recursively by suffix (sorted)."""
    paths: List[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            paths += sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif entry.is_file():
            paths.append(entry)
        else:
            raise DataError(f"input not found: {entry}")
    if not paths:
        raise DataError(f"no images found in {', '.join(inputs)}")
    return paths


def check_output(path: Optional[str]) -> None:
    """An output file must be .csv or .json: anything else would be written in a format its name hides."""
    if path is not None and Path(path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--output {path}: unknown extension {Path(path).suffix or '(none)'!r}; "
                          f"expected {' or '.join(OUTPUT_SUFFIXES)}")


def logit_threshold(probability: float) -> float:
    """The logit at which sigmoid reaches `probability` in [0, 1] (±inf at the ends)."""
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"a probability threshold must be in [0, 1], got {probability}")
    with np.errstate(divide="ignore"):
        return float(np.log(probability) - np.log1p(-probability))


def checkpoint_calibration(metadata: dict) -> Tuple[Calibration, str]:
    """The Platt scaling a checkpoint stores with its thresholds (chosen on validation), and a
    few words on what its probabilities are; checkpoints from before calibration was stored (and
    zero-shot prediction, ensembles: already log-odds) get the identity, i.e. the plain sigmoid."""
    thresholds = metadata.get("thresholds")
    if thresholds is None:
        return Calibration(), ""
    if "calibration" not in thresholds:
        return Calibration(), "uncalibrated sigmoid probabilities (the checkpoint predates calibration)"
    stored = thresholds["calibration"]
    if stored is None or float(stored["scale"]) <= 0:  # a scale of 0 would make every class alike
        return Calibration(), "uncalibrated sigmoid probabilities (no calibration could be fit on validation)"
    return Calibration(float(stored["scale"]), float(stored["bias"])), \
        "probabilities Platt-calibrated on the validation split"


def decision_rule(metadata: dict, classnames: Sequence[str], threshold: Optional[float]
                  ) -> Tuple[np.ndarray, Calibration, str]:
    """(thresholds [C], calibration, a sentence saying where they come from). `calibration`
    turns the model's logits into the log-odds of the probabilities shown; the thresholds are
    on those log-odds: `threshold` (a probability) if given, else the checkpoint's per-class
    thresholds chosen on validation, else 0.5 (checkpoints written before thresholds were stored)."""
    calibration, calibrated = checkpoint_calibration(metadata)
    note = f"; {calibrated}" if calibrated else ""
    if threshold is not None:
        thresholds = np.full(len(classnames), logit_threshold(threshold))
        return thresholds, calibration, f"probability >= {threshold:g} (--threshold){note}"
    stored = metadata.get("thresholds")
    if stored is None:
        return (np.zeros(len(classnames)), calibration,
                "probability >= 0.5: the checkpoint holds no validation thresholds (it predates them)")
    floor = f", none below probability {stored['floor']:g}" if stored.get("floor_logit") is not None else ""
    own = f"; classes with fewer than {stored['min_positives']} known validation positives share one" \
        if "min_positives" in stored else ""
    return (calibration.apply(class_thresholds(stored, classnames)), calibration,
            f"per-class thresholds chosen on the validation split (checkpoint){own}{floor}{note}")


def choose_labels(logits: np.ndarray, thresholds: np.ndarray, classnames: Sequence[str],
                  top_k: Optional[int] = None) -> List[List[Tuple[str, float]]]:
    """Per image, (class, probability) of the classes at or above their threshold, most probable
    first; with `top_k`, at most that many."""
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top-k must be at least 1, got {top_k}")
    probabilities = sigmoid(logits)
    chosen = []
    for row, probs in zip(logits, probabilities):
        order = [c for c in np.argsort(-row, kind="stable") if row[c] >= thresholds[c]][:top_k]
        chosen.append([(classnames[c], float(probs[c])) for c in order])
    return chosen


def write_predictions(path: str, predictions) -> None:
    """CSV (image, labels, one probability column per class) or JSON (one record per image) of
    clipml.predictor.Predictions."""
    check_output(path)
    classnames, probabilities = predictions.classnames, predictions.probabilities
    if Path(path).suffix.lower() == ".json":
        records = [{"image": str(image), "labels": listed,
                    "probabilities": {c: round(float(p), 5) for c, p in zip(classnames, row)}}
                   for image, listed, row in zip(predictions.images, predictions.labels, probabilities)]
        Path(path).write_text(json.dumps(records, indent=1))
        return
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels", *classnames])
        for image, listed, row in zip(predictions.images, predictions.labels, probabilities):
            writer.writerow([str(image), ";".join(listed), *[f"{p:.5f}" for p in row]])
