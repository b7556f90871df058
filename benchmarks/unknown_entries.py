"""How well trained runs score the *unknown* entries of their own training images (the entries
DSRB blends), against the lab's true labels: mAP over the unknown entries only, class by class,
beside the run's test mAP. Comparing two methods at one p says whether a gain is made where the
labels were missing or elsewhere. Reads the feature cache the runs were trained on.

    python benchmarks/unknown_entries.py runs/sweeps/lab_coco_vit_ablate/{sdm_csp,sdm_csp_dsrb}/p0.1/s*
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict

import numpy as np
import yaml

from clipml.config import config_from_dict
from clipml.data import load_split, readable_names
from clipml.engine.builders import build_backbone, build_cached_sources, build_splits
from clipml.engine.features import CachedFeatureSource
from clipml.engine.evaluate import predict
from clipml.engine.checkpoint import load_model
from clipml.experiment import ExperimentConfig
from clipml.metrics import average_precision


def unknown_entry_scores(run: Path) -> Dict[str, float]:
    """mAP (%) over the unknown training entries (per class, classes with a positive among them)
    and over the known ones, plus the run's own test mAP."""
    cfg = config_from_dict(ExperimentConfig, yaml.safe_load((run / "config.yaml").read_text()))
    train, val, test = build_splits(cfg)
    truth_split = load_split(cfg.data.dataset, cfg.data.root, cfg.data.train_split, **cfg.data.options)
    row = {item: i for i, item in enumerate(truth_split.items)}
    truth = truth_split.labels[[row[item] for item in train.items]]
    backbone = build_backbone(cfg)
    # The validation source reads the shared train/val cache at view 0 (the evaluation transform).
    shared = build_cached_sources(cfg, backbone, train, val, test)[1].cache
    source = CachedFeatureSource(train, shared, cfg.data.eval_batch_size, backbone.device)
    model = load_model(str(run / "prompts.safetensors"), readable_names(train), backbone)
    logits, partial = predict(model, source)
    result = {}
    for name, entries in (("unknown", partial < 0), ("known", partial >= 0)):
        aps = []
        for c in range(truth.shape[1]):
            rows = entries[:, c] & (truth[:, c] >= 0)
            if truth[rows, c].sum() > 0:
                aps.append(float(average_precision(logits[rows, c:c + 1], truth[rows, c:c + 1], cfg.eval.ap)[0]))
        result[f"{name}_mAP"] = 100 * float(np.mean(aps))
    result["test_mAP"] = float(json.loads((run / "summary.json").read_text())["test"]["mAP"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (config.yaml, prompts.safetensors)")
    args = parser.parse_args()
    by_method = defaultdict(list)
    print("| run | unknown-entry mAP | known-entry mAP | test mAP |\n|---|---|---|---|")
    for run in args.runs:
        scores = unknown_entry_scores(run)
        by_method[run.parent.parent.name, run.parent.name].append(scores)
        print(f"| {run} | {scores['unknown_mAP']:.2f} | {scores['known_mAP']:.2f} | {scores['test_mAP']:.2f} |")
    print("\n| method | p | unknown-entry mAP | known-entry mAP | test mAP |\n|---|---|---|---|---|")
    for (method, p), runs in by_method.items():
        means = {key: np.mean([r[key] for r in runs]) for key in runs[0]}
        print(f"| {method} | {p[1:]} | {means['unknown_mAP']:.2f} | {means['known_mAP']:.2f} | {means['test_mAP']:.2f} |")


if __name__ == "__main__":
    main()
