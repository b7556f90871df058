"""What `predict` lists on a trained run's test split, under two decision rules chosen on the
run's validation part (never on the test split):

- `f1`: the rule before issue 24: each class's F1-best logit threshold from however few validation
  positives it has, probabilities the plain sigmoid of the logits;
- `calibrated`: the rule now stored in checkpoints (clipml.engine.evaluate.choose_thresholds with
  the run's `eval` settings): a class needs `eval.threshold_min_positives` positives for a threshold
  of its own, none lies below calibrated probability `eval.threshold_floor`, and probabilities
  are Platt-calibrated on validation.

Per rule: labels listed per image, their precision and recall against the test labels, true
labels per image, classes per image shown at probability >= 0.999, and the lowest threshold;
plus the run's test mAP and the class-map correlation of its attention (mean over test images).

    python benchmarks/predict_labels.py runs/demo [more run folders] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

import numpy as np
import yaml

from clipml.config import config_from_dict
from clipml.data import readable_names
from clipml.engine.builders import build_backbone, build_sources, build_splits
from clipml.engine.evaluate import choose_thresholds, class_thresholds, evaluate, predict
from clipml.engine.inference import checkpoint_calibration, choose_labels
from clipml.engine.checkpoint import load_model
from clipml.experiment import ExperimentConfig
from clipml.known_scores import KnownScores
from clipml.metrics import f1_thresholds


def listed_stats(logits: np.ndarray, thresholds: np.ndarray, labels: np.ndarray, classnames) -> Dict[str, float]:
    """Labels listed per image and their precision / recall (test entries known as 1 or 0)."""
    listed = choose_labels(logits, thresholds, classnames)
    index = {name: c for c, name in enumerate(classnames)}
    chosen = np.zeros(labels.shape, dtype=bool)
    for row, names in enumerate(listed):
        chosen[row, [index[name] for name, _ in names]] = True
    known = labels != -1
    truth = labels == 1
    hits = (chosen & truth & known).sum()
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    return {
        "listed_per_image": round(float(chosen.sum(axis=1).mean()), 3),
        "precision": round(float(hits / max((chosen & known).sum(), 1)), 4),
        "recall": round(float(hits / max(truth.sum(), 1)), 4),
        "true_per_image": round(float(truth.sum(axis=1).mean()), 3),
        "shown_at_0.999_per_image": round(float((probabilities >= 0.999).sum(axis=1).mean()), 3),
        "lowest_threshold_logit": round(float(thresholds.min()), 3),
    }


def run_report(run: Path) -> Dict[str, object]:
    cfg = config_from_dict(ExperimentConfig, yaml.safe_load((run / "config.yaml").read_text()))
    train, val, test = build_splits(cfg)
    backbone = build_backbone(cfg)
    classnames = readable_names(test)
    model = load_model(str(run / "prompts.safetensors"), classnames, backbone)
    _, val_source, test_source = build_sources(cfg, backbone, train, val, test)
    val_logits, val_labels = predict(model, val_source)
    val_logits = val_logits.astype(np.float64)
    logits, labels = (array.astype(np.float64) for array in predict(model, test_source))
    metrics = evaluate(model, test_source)

    old, _, _ = f1_thresholds(val_logits, val_labels)
    stored = choose_thresholds(KnownScores.from_dense(val_logits, val_labels), classnames, cfg.eval)
    calibration, _ = checkpoint_calibration({"thresholds": stored})
    new = calibration.apply(class_thresholds(stored, classnames))
    val_positives = (val_labels == 1).sum(axis=0)
    return {
        "run": str(run),
        "test_mAP": round(100 * float(metrics["mAP"]), 2),
        "class_map_correlation": metrics.get("class_map_correlation"),
        "pointing_game": None if "pointing_game" not in metrics else round(100 * metrics["pointing_game"], 2),
        "val_images": len(val),
        "val_positives_per_class_median": float(np.median(val_positives)),
        "classes_with_own_threshold": {"f1": int((val_positives >= 1).sum()), "calibrated": len(stored["per_class"])},
        "calibration": stored["calibration"],
        "f1": listed_stats(logits, old, labels, classnames),
        "calibrated": listed_stats(calibration.apply(logits), new, labels, classnames),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml, prompts.safetensors)")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args()
    reports = [run_report(run) for run in args.runs]
    for report in reports:
        print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
