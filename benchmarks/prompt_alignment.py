"""Alignment of learned prompts with the dense map (seed 002's claim for conditional transport):
the pointing game and mass inside of each class's cosine map softmax_j(20 · cos(z_j, t_c)) on
the test split, for the text features t_c of trained runs (DualCoOp: its positive prompts;
TaI-DPT: its local ones) and of the hand-written zero-shot prompt. Reads the test split's features
the way the runs were evaluated (their feature cache when they used one).

    python benchmarks/prompt_alignment.py runs/sweeps/lab_coco_vit/{sdm_csp,sdm_csp_ct}/p0.1/s*
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import yaml

from clipml.config import config_from_dict
from clipml.data import readable_names
from clipml.decoupler import dense_pool_scores
from clipml.engine.builders import build_backbone, build_sources, build_splits
from clipml.engine.checkpoint import load_model
from clipml.experiment import ExperimentConfig
from clipml.localization import localize_image, summarize_localization
from clipml.model import ModelConfig, MultiLabelCLIP


def cosine_map_localisation(model: MultiLabelCLIP, source) -> Dict[str, float]:
    """Pointing game and mass inside (%) of the softmax-pooled cosine maps of `model`'s prompts."""
    split = source.split
    hits, mass = np.full((2, len(split), len(model.classnames)), np.nan)
    with torch.no_grad():
        text = model.text_features()
        if isinstance(text, tuple):  # DualCoOp (positive, negative), TaI-DPT (global, local)
            text = text[1] if model.config.method == "taidpt" else text[0]
        for dense, _, index in source.batches():
            _, attention = dense_pool_scores(dense.tokens, text)
            for row, i in zip(attention.numpy(), index.tolist()):
                hits[i], mass[i] = localize_image(row, dense.grid, split.instances(i))
    summary = summarize_localization(hits, mass)
    return {"pointing_game": 100 * summary["pointing_game"], "mass_inside": 100 * summary["mass_inside"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (config.yaml, prompts.safetensors)")
    args = parser.parse_args()
    sources, rows = {}, defaultdict(list)
    for run in args.runs:
        cfg = config_from_dict(ExperimentConfig, yaml.safe_load((run / "config.yaml").read_text()))
        key = repr((cfg.backbone, cfg.data.dataset, cfg.data.test_split, sorted(cfg.data.options.items())))
        if key not in sources:
            backbone = build_backbone(cfg)
            source = build_sources(cfg, backbone, *build_splits(cfg))[2]  # the test split, as the run scored it
            zero_shot = MultiLabelCLIP(backbone, readable_names(source.split), ModelConfig.of(method="zero_shot"))
            sources[key] = (backbone, source)
            rows["zero-shot prompt", run.parent.parent.parent.name].append(cosine_map_localisation(zero_shot, source))
        backbone, source = sources[key]
        model = load_model(str(run / "prompts.safetensors"), readable_names(source.split), backbone)
        rows[f"{run.parent.parent.name} p={cfg.data.known_ratio:g}", run.parent.parent.parent.name].append(
            cosine_map_localisation(model, source))
    print("| prompts | sweep | runs | pointing game | mass inside |\n|---|---|---|---|---|")
    for (name, sweep), values in rows.items():
        pg, mi = np.mean([v["pointing_game"] for v in values]), np.mean([v["mass_inside"] for v in values])
        print(f"| {name} | {sweep} | {len(values)} | {pg:.1f} | {mi:.1f} |")


if __name__ == "__main__":
    main()
