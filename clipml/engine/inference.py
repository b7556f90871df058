"""Labels for a user's image files from a prompt checkpoint (the `predict` tool): finding the
images, scoring them in batches while skipping files that cannot be decoded (saying which and
why), the decision thresholds, and the CSV/JSON output with every class's probability."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from clipml.data.images import decode_image
from clipml.data.transforms import Normalize255, eval_transform
from clipml.engine import Progress
from clipml.engine.evaluate import class_thresholds
from clipml.ensemble import Calibration
from clipml.errors import ConfigError, DataError
from clipml.metrics import sigmoid
from clipml.model import MultiLabelCLIP

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


@dataclasses.dataclass
class ScoredImages:
    paths: List[Path]  # the images that were read, in input order
    logits: np.ndarray  # [N, C]
    skipped: List[Tuple[Path, str]]  # files that could not be decoded, with the reason

    @property
    def probabilities(self) -> np.ndarray:
        return sigmoid(self.logits)


def _score_files(paths: Sequence[Path], batch_size: int, classes: int, decode: Callable,
                 logits_of: Callable, progress: Progress = None) -> ScoredImages:
    """Logits of every decodable image, a batch at a time; an undecodable one (corrupt, truncated,
    not an image) is skipped and listed with the reason, so one bad file does not cost the others."""
    kept: List[Path] = []
    skipped: List[Tuple[Path, str]] = []
    logits = [np.zeros((0, classes), np.float32)]
    starts = range(0, len(paths), batch_size)
    for start in (progress(starts, "predict") if progress is not None else starts):
        images = []
        for path in paths[start:start + batch_size]:
            try:
                images.append(decode(decode_image(path)))
                kept.append(path)
            except DataError as error:
                skipped.append((path, str(error)))
        if images:
            logits.append(np.asarray(logits_of(images), dtype=np.float32))
    return ScoredImages(kept, np.concatenate(logits), skipped)


def score_images(model: MultiLabelCLIP, paths: Sequence[Path], batch_size: int = 32,
                 progress: Progress = None) -> ScoredImages:
    """Logits of every decodable image (see `_score_files`)."""
    backbone = model.backbone
    # uint8 to the device, normalised there: a quarter of the bytes of float32 over the bus.
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)
    normalize = Normalize255(backbone.mean, backbone.std).to(backbone.device)
    model.eval()
    with torch.no_grad():
        text = model.text_features()

        def logits_of(images):
            batch = normalize(torch.stack(images).to(backbone.device))
            return model(batch, text).logits.float().cpu().numpy()

        return _score_files(paths, batch_size, len(model.classnames), transform, logits_of, progress)


def score_ensemble(spec: str, paths: Sequence[Path], batch_size: int = 32, device: str = "cpu"
                   ) -> Tuple[ScoredImages, List[str]]:
    """score_images for an ensemble spec (.json from zero_shot_eval --save-ensemble): its
    calibrated combined logits, and its class names."""
    from clipml.engine.ensemble import ImageScorer

    scorer = ImageScorer(spec, device=device)
    scored = _score_files(paths, batch_size, len(scorer.classnames), lambda image: image, scorer.logits)
    return scored, scorer.classnames


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


def write_predictions(path: str, scored: ScoredImages, classnames: Sequence[str],
                      labels: List[List[Tuple[str, float]]]) -> None:
    """CSV (image, labels, one probability column per class) or JSON (one record per image)."""
    check_output(path)
    probabilities = scored.probabilities
    if Path(path).suffix.lower() == ".json":
        records = [{"image": str(image), "labels": [name for name, _ in listed],
                    "probabilities": {c: round(float(p), 5) for c, p in zip(classnames, row)}}
                   for image, listed, row in zip(scored.paths, labels, probabilities)]
        Path(path).write_text(json.dumps(records, indent=1))
        return
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels", *classnames])
        for image, listed, row in zip(scored.paths, labels, probabilities):
            writer.writerow([str(image), ";".join(name for name, _ in listed), *[f"{p:.5f}" for p in row]])
